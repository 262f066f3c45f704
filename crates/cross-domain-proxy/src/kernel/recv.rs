//! Receiving from the client socket: bytes plus `SCM_RIGHTS` descriptors, through the
//! workspace's one `recvmsg` (`cross-domain-fdpass`).
//!
//! This module owns the proxy's limit on descriptors per message ([`MAX_FDS`], what one SEND
//! can carry) and must never block: the session's loop calls it only when `poll` said the
//! socket is readable, and `EAGAIN` comes back as [`io::ErrorKind::WouldBlock`].
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use cross_domain_fdpass as fdpass;

/// One message read with `recvmsg` (non-blocking, close-on-exec descriptors).
#[derive(Debug)]
pub struct Received {
    /// Bytes read into the buffer.
    pub len: usize,
    /// The descriptors that came with them.
    pub fds: Vec<OwnedFd>,
    /// The sender attached more descriptors than [`MAX_FDS`]; the kernel closed the rest.
    pub fds_truncated: bool,
}

/// Most descriptors [`recv_with_fds`] accepts with one message: a SEND carries at most 28
/// identifiers.
pub const MAX_FDS: usize = cross_domain_protocol::wire::MAX_IDENTIFIERS;

/// Non-blocking `recvmsg` on a stream socket into `buf`, accepting up to [`MAX_FDS`]
/// descriptors; `EAGAIN` is an error of kind [`io::ErrorKind::WouldBlock`].
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    let mut cmsg = fdpass::CmsgBuf::new(MAX_FDS);
    let mut fds = Vec::new();
    let r = fdpass::recv(sock, buf, &mut fds, &mut cmsg, fdpass::Wait::DontWait)?;
    Ok(Received {
        len: r.len,
        fds,
        fds_truncated: r.fds_truncated,
    })
}
#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, AsRawFd};

    use nix::sys::socket::MsgFlags;

    use super::*;

    #[test]
    fn recv_with_fds_adopts_descriptors() {
        use std::io::Write;
        use std::os::unix::net::UnixStream;
        let (a, b) = UnixStream::pair().unwrap();
        let (r, _w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let iov = [std::io::IoSlice::new(b"x")];
        let fds = [r.as_raw_fd()];
        nix::sys::socket::sendmsg::<()>(
            a.as_raw_fd(),
            &iov,
            &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        (&a).write_all(b"yz").unwrap();
        let mut buf = [0u8; 16];
        let got = recv_with_fds(b.as_fd(), &mut buf).unwrap();
        assert_eq!(
            got.len, 1,
            "a message with fds is not merged with what follows"
        );
        assert_eq!(got.fds.len(), 1);
        assert!(!got.fds_truncated);
        let got = recv_with_fds(b.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..got.len], b"yz");
        assert!(got.fds.is_empty());
        let e = recv_with_fds(b.as_fd(), &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    /// A message with more than MAX_FDS descriptors delivers its bytes and the first MAX_FDS
    /// descriptors, and says that the rest were dropped (docs/guest-proxy.md, "What is
    /// forwarded").
    #[test]
    fn recv_with_fds_reports_dropped_descriptors() {
        use std::os::unix::net::UnixStream;
        let (a, b) = UnixStream::pair().unwrap();
        let null = std::fs::File::open("/dev/null").unwrap();
        let fds = [null.as_raw_fd(); MAX_FDS + 2];
        nix::sys::socket::sendmsg::<()>(
            a.as_raw_fd(),
            &[std::io::IoSlice::new(b"many")],
            &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let mut buf = [0u8; 16];
        let got = recv_with_fds(b.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..got.len], b"many");
        assert_eq!(got.fds.len(), MAX_FDS);
        assert!(got.fds_truncated);
    }
}
