//! File descriptors the daemon is handed when it starts: `--fd N` and the socket that socket
//! activation passes as fd 3.
//!
//! This module owns the checks of what such a descriptor is (an open Unix stream socket, either
//! listening or connected) and taking ownership of it. It runs once at start-up, before the
//! daemon starts any thread, so that a wrong descriptor is reported as a configuration error
//! (exit status 2) instead of failing later.

use std::fmt;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::UnixAddr;

/// What an inherited Unix stream socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    /// Listening (`listen(2)` was called): connections are accepted from it.
    Listening,
    /// Connected to a peer: vhost-user messages are read and written on it.
    Connected,
}

/// Why an inherited descriptor cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FdError {
    /// No such descriptor in this process.
    #[error("not an open file descriptor")]
    NotOpen,
    /// A file, pipe, device…
    #[error("not a socket")]
    NotSocket,
    /// A socket of another family (IP, netlink…).
    #[error("not a Unix socket")]
    NotUnix,
    /// A Unix datagram or seqpacket socket.
    #[error("not a stream socket (vhost-user needs SOCK_STREAM)")]
    NotStream,
    /// A stream socket that is neither listening nor connected.
    #[error("a Unix stream socket that is not connected")]
    NotConnected,
    /// A listening socket where a connected one was expected (`--fd`).
    #[error(
        "a listening socket; --fd takes a socket already connected to the VMM (a listening \
         socket is passed through socket activation instead)"
    )]
    Listening,
    /// A system call failed for another reason.
    #[error("cannot inspect it: {0}")]
    Os(Errno),
}

/// Checks that `fd` is an open Unix stream socket and tells whether it is listening or
/// connected. Does not change the descriptor.
pub fn inspect(fd: RawFd) -> Result<SocketKind, FdError> {
    if fd < 0 {
        return Err(FdError::NotOpen);
    }
    // SAFETY: `struct stat` is plain old data, for which all-zero bytes are a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat only writes into `st`, a valid, writable `struct stat` we own; a descriptor
    // that is not open makes it fail with EBADF.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(match Errno::last() {
            Errno::EBADF => FdError::NotOpen,
            e => FdError::Os(e),
        });
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(FdError::NotSocket);
    }
    if int_sockopt(fd, libc::SO_DOMAIN)? != libc::AF_UNIX {
        return Err(FdError::NotUnix);
    }
    if int_sockopt(fd, libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err(FdError::NotStream);
    }
    if int_sockopt(fd, libc::SO_ACCEPTCONN)? != 0 {
        return Ok(SocketKind::Listening);
    }
    // A connected socket has a peer.
    // SAFETY: `sockaddr_un` is plain old data, for which all-zero bytes are a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: getpeername writes at most `len` bytes into `addr`, a sockaddr_un we own, and
    // updates `len`; both pointers are valid for those sizes.
    let r = unsafe {
        libc::getpeername(
            fd,
            (&mut addr as *mut libc::sockaddr_un).cast::<libc::sockaddr>(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(match Errno::last() {
            Errno::ENOTCONN => FdError::NotConnected,
            e => FdError::Os(e),
        });
    }
    Ok(SocketKind::Connected)
}

fn int_sockopt(fd: RawFd, opt: libc::c_int) -> Result<libc::c_int, FdError> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the option is an int-sized SOL_SOCKET option; getsockopt writes at most `len`
    // bytes into `value`, which we own.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut value as *mut libc::c_int).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(FdError::Os(Errno::last()));
    }
    Ok(value)
}

/// The address `fd`, a Unix socket, is bound to, for messages: its path, `@name` for the
/// abstract namespace, or `None` for an unnamed socket (or one that cannot be asked).
pub fn local_address(fd: BorrowedFd<'_>) -> Option<String> {
    let addr: UnixAddr = nix::sys::socket::getsockname(fd.as_raw_fd()).ok()?;
    if let Some(path) = addr.path() {
        return Some(path.display().to_string());
    }
    addr.as_abstract()
        .map(|name| format!("@{}", String::from_utf8_lossy(name)))
}

/// Takes ownership of the inherited socket `fd` and marks it close-on-exec.
///
/// # Safety
///
/// `fd` must be open (checked with [`inspect`]) and owned by nothing else in this process:
/// the descriptor was inherited and given to the daemon by number (`--fd N`, or fd 3 under
/// socket activation), and this is called once per number.
pub unsafe fn take(fd: RawFd) -> OwnedFd {
    // SAFETY: the caller guarantees `fd` is open and unowned.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // Best effort: the daemon never executes another program, so a missing FD_CLOEXEC would
    // only matter to a future change.
    // SAFETY: F_SETFD on a descriptor we now own; no memory is passed.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    owned
}

impl fmt::Display for SocketKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SocketKind::Listening => "listening",
            SocketKind::Connected => "connected",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};

    #[test]
    fn kinds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sock");
        let listener = UnixListener::bind(&path).unwrap();
        assert_eq!(inspect(listener.as_raw_fd()), Ok(SocketKind::Listening));
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(inspect(a.as_raw_fd()), Ok(SocketKind::Connected));
        let client = UnixStream::connect(&path).unwrap();
        assert_eq!(inspect(client.as_raw_fd()), Ok(SocketKind::Connected));
        let (d, _e) = UnixDatagram::pair().unwrap();
        assert_eq!(inspect(d.as_raw_fd()), Err(FdError::NotStream));
        let file = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(inspect(file.as_raw_fd()), Err(FdError::NotSocket));
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(inspect(tcp.as_raw_fd()), Err(FdError::NotUnix));
        assert_eq!(inspect(-1), Err(FdError::NotOpen));
        // A number far above anything this test process has open.
        assert_eq!(inspect(1_000_000), Err(FdError::NotOpen));
    }

    #[test]
    fn addresses() {
        use std::os::fd::AsFd;
        use std::os::linux::net::SocketAddrExt;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sock");
        let listener = UnixListener::bind(&path).unwrap();
        assert_eq!(
            local_address(listener.as_fd()),
            Some(path.display().to_string())
        );
        // An accepted connection has the listening socket's address.
        let _client = UnixStream::connect(&path).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert_eq!(
            local_address(accepted.as_fd()),
            Some(path.display().to_string())
        );
        let name = format!("vucd-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let abstract_listener = UnixListener::bind_addr(&addr).unwrap();
        assert_eq!(
            local_address(abstract_listener.as_fd()),
            Some(format!("@{name}"))
        );
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(local_address(a.as_fd()), None);
    }

    #[test]
    fn unconnected_stream() {
        // SAFETY: plain socket(2) call; the result is checked and wrapped at once.
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0);
        // SAFETY: `fd` was just created and is owned by nothing else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        assert_eq!(inspect(owned.as_raw_fd()), Err(FdError::NotConnected));
    }
}
