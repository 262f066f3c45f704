//! Receiving file descriptors on a Unix socket: `recvmsg` with `SCM_RIGHTS`, once for every
//! program of the workspace. The daemon receives on channel sockets, on the VMM's socket
//! (the `--fd` relay) and from its connection broker; the guest proxy, from its clients.
//!
//! Why one implementation: a received descriptor is a resource the kernel has just installed
//! in this process, and the rules for taking it over must not differ between callers:
//! - every descriptor arrives close-on-exec (`MSG_CMSG_CLOEXEC`), so none leaks into a child
//!   process between `recvmsg` and the caller's next step;
//! - every descriptor the kernel installed is adopted as an [`OwnedFd`] exactly once, also
//!   when the sender attached more than the control buffer holds (`MSG_CTRUNC`: the kernel
//!   closes the ones that did not fit), so none is ever leaked or closed twice;
//! - truncation is reported ([`Received::fds_truncated`]), never turned into an error here,
//!   because what it means is the caller's business (a warning for a channel, the end of a
//!   vhost-user session);
//! - `EINTR` is retried; `EAGAIN` comes back as an error of kind
//!   [`io::ErrorKind::WouldBlock`], which means "nothing yet" on a non-blocking receive and
//!   "timed out" on a socket with a receive timeout;
//! - the caller sizes the control buffer ([`CmsgBuf::new`]) and chooses whether to wait
//!   ([`Wait`]); reading whole messages or exact frames stays in the caller.
//!
//! This crate must never interpret the bytes or descriptors it receives, keep state, or
//! depend on the daemon or the proxy. Sending is left to the callers: each needs different
//! flags and framing, and a send cannot leak a descriptor.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Bytes of control buffer one `SCM_RIGHTS` message with `fds` descriptors takes
/// (`CMSG_SPACE`).
pub fn cmsg_space(fds: usize) -> usize {
    let payload = fds.saturating_mul(std::mem::size_of::<RawFd>());
    let payload = u32::try_from(payload).unwrap_or(u32::MAX);
    // SAFETY: CMSG_SPACE only computes a size from its argument.
    unsafe { libc::CMSG_SPACE(payload) as usize }
}

/// A control-message buffer with room for one `SCM_RIGHTS` message of up to
/// [`max_fds`](Self::max_fds) descriptors. It is `u64`-aligned, as `cmsghdr` requires.
/// Allocated once and reused for every receive on a socket.
#[derive(Debug)]
pub struct CmsgBuf {
    buf: Vec<u64>,
    max_fds: usize,
}

impl CmsgBuf {
    /// A buffer for up to `max_fds` descriptors per message.
    pub fn new(max_fds: usize) -> CmsgBuf {
        CmsgBuf {
            buf: vec![0u64; cmsg_space(max_fds).div_ceil(8)],
            max_fds,
        }
    }

    /// Descriptors per message the buffer was sized for. Rounding to whole `u64`s can leave
    /// room for one more; the kernel closes whatever does not fit.
    pub fn max_fds(&self) -> usize {
        self.max_fds
    }

    /// Size of the buffer in bytes.
    pub fn capacity(&self) -> usize {
        self.buf.len() * 8
    }

    /// The buffer, for a caller that builds its own `sendmsg` control message in it (at most
    /// [`capacity`](Self::capacity) bytes).
    pub fn as_mut_ptr(&mut self) -> *mut libc::c_void {
        self.buf.as_mut_ptr().cast()
    }
}

/// Whether a receive waits for data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// As the socket is set up: block on a blocking socket (up to its receive timeout, if it
    /// has one).
    Block,
    /// Never block (`MSG_DONTWAIT`), whatever the socket's mode.
    DontWait,
}

/// What one receive brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes read. 0 with no descriptors means the peer closed its end (on a stream socket).
    pub len: usize,
    /// The sender attached more descriptors than the buffer holds; the kernel closed the rest.
    pub fds_truncated: bool,
}

/// `recvmsg` into the buffers `iov` describes, appending the descriptors that came with the
/// bytes to `fds` (in order, close-on-exec). See the crate documentation for the rules.
///
/// # Safety
///
/// Every `iovec` in `iov` must describe memory that is valid for writes of `iov_len` bytes
/// for the duration of the call, and that nothing else reads or writes meanwhile (the kernel
/// writes the received bytes there).
pub unsafe fn recv_iovecs(
    sock: BorrowedFd<'_>,
    iov: &[libc::iovec],
    fds: &mut Vec<OwnedFd>,
    cmsg: &mut CmsgBuf,
    wait: Wait,
) -> io::Result<Received> {
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr().cast_mut();
    msg.msg_iovlen = iov.len() as _;
    msg.msg_control = cmsg.as_mut_ptr();
    msg.msg_controllen = cmsg.capacity() as _;
    let flags = match wait {
        Wait::Block => libc::MSG_CMSG_CLOEXEC,
        Wait::DontWait => libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT,
    };
    let len = loop {
        // SAFETY: the iovecs are valid for writes (the caller's guarantee); the control buffer
        // is ours, `msg_controllen` bytes long, and borrowed mutably for this call.
        let r = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) };
        if r >= 0 {
            break r as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    // SAFETY: the kernel filled the first `msg_controllen` bytes of our buffer with complete
    // cmsghdrs (on truncation it shortens `cmsg_len` to what it wrote); CMSG_FIRSTHDR and
    // CMSG_NXTHDR never step outside msg_control/msg_controllen. An SCM_RIGHTS payload holds
    // (cmsg_len - CMSG_LEN(0)) / 4 descriptors, each just installed in this process for this
    // message and known to nobody else, so wrapping each in an OwnedFd once is sound. The data
    // may be unaligned for an int, hence read_unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                let payload = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                for i in 0..payload / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(Received {
        len,
        fds_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

/// [`recv_iovecs`] into one byte buffer.
pub fn recv(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    cmsg: &mut CmsgBuf,
    wait: Wait,
) -> io::Result<Received> {
    let iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    // SAFETY: the one iovec covers `buf`, which is borrowed mutably for the whole call.
    unsafe { recv_iovecs(sock, &iov, fds, cmsg, wait) }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    /// Sends `data` with `fds` attached, as a host service or a guest client would.
    fn send(sock: &UnixStream, data: &[u8], fds: &[RawFd]) {
        let mut cmsg = CmsgBuf::new(fds.len());
        let iov = [libc::iovec {
            iov_base: data.as_ptr().cast_mut().cast(),
            iov_len: data.len(),
        }];
        // SAFETY: msghdr is plain data; all-zero is a valid empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_ptr().cast_mut();
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr();
        msg.msg_controllen = cmsg_space(fds.len()) as _;
        // SAFETY: the control buffer holds one cmsghdr with `fds.len()` descriptors
        // (cmsg_space above); we write exactly that many ints into its data area.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(c).cast::<RawFd>(),
                fds.len(),
            );
        }
        // SAFETY: `msg` points at `iov` and the control buffer, both live for the call.
        let r = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) };
        assert_eq!(r, data.len() as isize, "{}", io::Error::last_os_error());
    }

    fn cloexec(fd: &OwnedFd) -> bool {
        // SAFETY: F_GETFD takes no pointer argument.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        flags >= 0 && flags & libc::FD_CLOEXEC != 0
    }

    #[test]
    fn bytes_and_descriptors_arrive_close_on_exec() {
        let (a, b) = UnixStream::pair().unwrap();
        let null = std::fs::File::open("/dev/null").unwrap();
        send(&a, b"hello", &[null.as_raw_fd(), null.as_raw_fd()]);
        let mut buf = [0u8; 16];
        let mut fds = Vec::new();
        let mut cmsg = CmsgBuf::new(4);
        let r = recv(b.as_fd(), &mut buf, &mut fds, &mut cmsg, Wait::DontWait).unwrap();
        assert_eq!(
            r,
            Received {
                len: 5,
                fds_truncated: false
            }
        );
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(fds.len(), 2);
        assert!(fds.iter().all(cloexec));
        // Appended, not replaced.
        send(&a, b"x", &[null.as_raw_fd()]);
        recv(b.as_fd(), &mut buf, &mut fds, &mut cmsg, Wait::DontWait).unwrap();
        assert_eq!(fds.len(), 3);
    }

    #[test]
    fn nothing_to_read_and_end_of_stream() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut buf = [0u8; 4];
        let mut fds = Vec::new();
        let mut cmsg = CmsgBuf::new(1);
        let e = recv(b.as_fd(), &mut buf, &mut fds, &mut cmsg, Wait::DontWait).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        // A blocking socket with a receive timeout reports the timeout the same way.
        b.set_read_timeout(Some(std::time::Duration::from_millis(10)))
            .unwrap();
        let e = recv(b.as_fd(), &mut buf, &mut fds, &mut cmsg, Wait::Block).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        (&a).write_all(b"ab").unwrap();
        drop(a);
        let r = recv(b.as_fd(), &mut buf, &mut fds, &mut cmsg, Wait::Block).unwrap();
        assert_eq!(r.len, 2);
        let r = recv(b.as_fd(), &mut buf, &mut fds, &mut cmsg, Wait::Block).unwrap();
        assert_eq!(r.len, 0);
        assert!(fds.is_empty());
    }

    /// More descriptors than the buffer holds: the ones that fit are adopted, the kernel closes
    /// the rest, the truncation is reported, and no copy is left open behind our back (checked
    /// with a pipe's write end: its read end sees end of file once every copy is closed).
    #[test]
    fn truncation_is_reported_and_leaks_nothing() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut pipe = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into the array it is given.
        let created = unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
        assert_eq!(created, 0);
        // SAFETY: pipe2 just created both descriptors; each is adopted once.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
        send(&a, b"m", &[w.as_raw_fd(); 5]);
        drop(w);
        let mut buf = [0u8; 4];
        let mut fds = Vec::new();
        let mut cmsg = CmsgBuf::new(2);
        assert_eq!(cmsg.max_fds(), 2);
        let r_msg = recv(b.as_fd(), &mut buf, &mut fds, &mut cmsg, Wait::DontWait).unwrap();
        assert_eq!(r_msg.len, 1);
        assert!(r_msg.fds_truncated);
        // Rounded up to whole u64s, the buffer may hold one more than asked (3 with a 12-byte
        // cmsghdr), never all 5.
        assert!((2..5).contains(&fds.len()), "{}", fds.len());
        let read_end = |r: &OwnedFd| {
            let mut byte = 0u8;
            // SAFETY: reads at most one byte into a local.
            unsafe { libc::read(r.as_raw_fd(), std::ptr::from_mut(&mut byte).cast(), 1) }
        };
        assert_eq!(read_end(&r), -1, "a write end is still open: EAGAIN");
        drop(fds);
        assert_eq!(read_end(&r), 0, "every write end is closed");
    }

    #[test]
    fn into_several_buffers() {
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(b"abcdef").unwrap();
        let (mut x, mut y) = ([0u8; 2], [0u8; 8]);
        let iov = [
            libc::iovec {
                iov_base: x.as_mut_ptr().cast(),
                iov_len: x.len(),
            },
            libc::iovec {
                iov_base: y.as_mut_ptr().cast(),
                iov_len: y.len(),
            },
        ];
        let mut fds = Vec::new();
        // SAFETY: both iovecs cover local arrays that live across the call and are not
        // otherwise used during it.
        let r = unsafe {
            recv_iovecs(
                b.as_fd(),
                &iov,
                &mut fds,
                &mut CmsgBuf::new(0),
                Wait::DontWait,
            )
        }
        .unwrap();
        assert_eq!(r.len, 6);
        assert_eq!(&x, b"ab");
        assert_eq!(&y[..4], b"cdef");
    }
}
