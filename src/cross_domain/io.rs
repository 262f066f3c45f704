//! Host-side I/O primitives for channels and pipes: `sendmsg`/`recvmsg` with `SCM_RIGHTS`
//! straight between guest memory and sockets, non-blocking `readv`/`writev`, and the
//! classification of file descriptors received from host services (docs/protocol.md §5.3).
//!
//! Every libc call of `cross_domain` is here (unit tests aside); the other files use libc's
//! types and constants only. `recvmsg` itself and the host page size come from the
//! workspace's shared crates.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use cross_domain_fdpass as fdpass;

/// Most file descriptors accepted in one RECEIVE (and sent in one SEND).
pub const MAX_FDS: usize = super::protocol::MAX_IDENTIFIERS;

/// Result of one non-blocking receive.
#[derive(Debug)]
pub enum Received {
    /// `n` bytes (possibly 0 when only fds came) and the fds, in order.
    Data { len: usize, truncated_fds: bool },
    /// The peer closed its end: 0 bytes and no fds.
    Eof,
    /// Nothing to read right now.
    WouldBlock,
}

/// Control-message buffer for [`MAX_FDS`] descriptors, u64-aligned as `cmsghdr` requires.
pub struct CmsgBuf(fdpass::CmsgBuf);

impl Default for CmsgBuf {
    fn default() -> Self {
        CmsgBuf(fdpass::CmsgBuf::new(MAX_FDS))
    }
}

/// `sendmsg(MSG_DONTWAIT | MSG_NOSIGNAL)` of `iov` with `fds` attached as one `SCM_RIGHTS`
/// message. Returns the number of bytes the kernel took (the fds travel with the first byte).
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    iov: &[libc::iovec],
    fds: &[RawFd],
    cmsg: &mut CmsgBuf,
) -> io::Result<usize> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len() as _;
    if !fds.is_empty() {
        let space = fdpass::cmsg_space(fds.len());
        debug_assert!(space <= cmsg.0.capacity());
        msg.msg_control = cmsg.0.as_mut_ptr();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` writable, aligned bytes, enough for one cmsghdr
        // carrying `fds.len()` descriptors (CMSG_SPACE above); CMSG_FIRSTHDR/CMSG_DATA stay
        // inside that buffer, and we copy exactly `fds.len()` ints into the data area.
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
    }
    loop {
        // SAFETY: `msg` references `iov` (valid iovecs supplied by the caller, live for this
        // call) and the control buffer set up above; the kernel only reads them.
        let r = unsafe {
            libc::sendmsg(
                sock.as_raw_fd(),
                &msg,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Non-blocking `recvmsg` into `iov`, collecting up to [`MAX_FDS`] descriptors into `fds`
/// (close-on-exec). Descriptors beyond that are discarded by the kernel (`MSG_CTRUNC`). The
/// receive itself is the workspace's one implementation, [`fdpass::recv_iovecs`].
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    iov: &[libc::iovec],
    fds: &mut Vec<OwnedFd>,
    cmsg: &mut CmsgBuf,
) -> io::Result<Received> {
    // SAFETY: `iov` describes writable memory owned by the caller for this call (guest ring
    // pages held by the caller's memory guard).
    let received =
        unsafe { fdpass::recv_iovecs(sock, iov, fds, &mut cmsg.0, fdpass::Wait::DontWait) };
    match received {
        Ok(r) if r.len == 0 && fds.is_empty() => Ok(Received::Eof),
        Ok(r) => Ok(Received::Data {
            len: r.len,
            truncated_fds: r.fds_truncated,
        }),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Received::WouldBlock),
        Err(e) => Err(e),
    }
}

/// `readv` that retries on EINTR; `Ok(None)` means EAGAIN.
pub fn readv(fd: BorrowedFd<'_>, iov: &[libc::iovec]) -> io::Result<Option<usize>> {
    retrying(|| {
        // SAFETY: `iov` describes writable memory valid for this call (caller's guarantee).
        unsafe { libc::readv(fd.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int) }
    })
}

/// `writev` that retries on EINTR; `Ok(None)` means EAGAIN.
pub fn writev(fd: BorrowedFd<'_>, iov: &[libc::iovec]) -> io::Result<Option<usize>> {
    retrying(|| {
        // SAFETY: `iov` describes readable memory valid for this call (caller's guarantee).
        unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int) }
    })
}

/// Runs a byte-count system call until it is not interrupted: the count, `None` for EAGAIN,
/// or the error.
fn retrying(mut call: impl FnMut() -> libc::ssize_t) -> io::Result<Option<usize>> {
    loop {
        let r = call();
        if r >= 0 {
            return Ok(Some(r as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// End both directions of a connected socket: the peer reads end of file and its writes fail,
/// although the fd stays open (until its owner drops it).
pub fn shutdown(sock: BorrowedFd<'_>) -> io::Result<()> {
    nix::sys::socket::shutdown(sock.as_raw_fd(), nix::sys::socket::Shutdown::Both)?;
    Ok(())
}

/// Ask for a pipe buffer of `size` bytes (`F_SETPIPE_SZ`; the kernel rounds up to a power of
/// two of pages and refuses more than `/proc/sys/fs/pipe-max-size` to an unprivileged process).
pub fn set_pipe_size(fd: BorrowedFd<'_>, size: usize) -> io::Result<()> {
    let size =
        libc::c_int::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: F_SETPIPE_SZ takes an int argument, no pointer; `fd` is a valid descriptor
    // (borrowed) and a failure leaves the pipe as it was.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Put an fd in non-blocking mode.
///
/// One `ioctl(FIONBIO)`, which sets `O_NONBLOCK` alone on the open file description and leaves
/// its other status flags (`O_APPEND`, `O_DIRECT`...) as they are: the same effect as
/// `F_GETFL` + `F_SETFL(flags | O_NONBLOCK)` in one call instead of two, and without their race
/// with a host service changing the flags of the description it shares with us in between.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: FIONBIO reads one `int` through its pointer argument; `on` is a live, aligned
    // `c_int` for the duration of the call, and `fd` is a valid descriptor (borrowed).
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONBIO, std::ptr::from_ref(&on)) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What a file descriptor received from a host service is, for the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdKind {
    /// Memory the VMM can map (memfd, dma-buf, regular file readable through this fd) of this
    /// many bytes.
    Memory { size: u64 },
    /// The write end of a pipe or FIFO.
    WritePipe,
    /// An eventfd.
    Eventfd,
    /// A Unix stream or seqpacket socket.
    Socket,
    /// Anything the guest cannot be given, with a short description for the log.
    Refused(&'static str),
}

/// Classify a received descriptor (docs/protocol.md §5.3): `fstat` for the file type, the
/// access mode for pipes and files, and the `/proc/self/fd/N` link for anonymous inodes
/// (dma-bufs, eventfds), which `fstat` shows without a file type. The link is the only test
/// that names an eventfd; reading it is allowed under the daemon's sandbox (seccomp allows
/// `readlink`, and Landlock does not govern it). Without `/proc` an eventfd is refused.
pub fn classify(fd: BorrowedFd<'_>) -> FdKind {
    let st = match nix::sys::stat::fstat(fd) {
        Ok(st) => st,
        Err(_) => return FdKind::Refused("unreadable fd"),
    };
    let fmt = st.st_mode & libc::S_IFMT;
    match fmt {
        libc::S_IFSOCK => classify_socket(fd),
        libc::S_IFDIR => FdKind::Refused("directory"),
        libc::S_IFCHR | libc::S_IFBLK => FdKind::Refused("device node"),
        libc::S_IFLNK => FdKind::Refused("symbolic link"),
        libc::S_IFIFO => {
            if access_mode(fd) == Some(libc::O_WRONLY) {
                FdKind::WritePipe
            } else {
                FdKind::Refused("pipe read end")
            }
        }
        // Regular files and memfds: fstat already has the size. The VMM maps them, which
        // needs read access through this very fd: a write-only or `O_PATH` descriptor is
        // not memory anyone can map.
        libc::S_IFREG => match access_mode(fd) {
            Some(libc::O_RDONLY | libc::O_RDWR) => match u32::try_from(st.st_size) {
                Ok(size) => FdKind::Memory {
                    size: u64::from(size),
                },
                Err(_) => FdKind::Refused("memory object larger than 4 GiB or of negative size"),
            },
            Some(libc::O_WRONLY) => FdKind::Refused("write-only file"),
            _ => FdKind::Refused("file that cannot be read (O_PATH)"),
        },
        _ => {
            let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            if link.starts_with("/dmabuf:") {
                match seekable_size(fd) {
                    FdKind::Memory { size } if !dmabuf_mappable(fd, size) => {
                        FdKind::Refused("dma-buf whose exporter does not allow mmap")
                    }
                    kind => kind,
                }
            } else if link == "anon_inode:[eventfd]" {
                FdKind::Eventfd
            } else {
                FdKind::Refused("unsupported fd type")
            }
        }
    }
}

/// A socket is one the guest can be given if it is `AF_UNIX` and carries a connection
/// (`SOCK_STREAM` or `SOCK_SEQPACKET`): what a channel is, and what D-Bus services hand out
/// (docs/protocol.md §5.9). `getsockopt(SOL_SOCKET, SO_DOMAIN | SO_TYPE)` is in the sandbox's
/// allow-list for exactly these two options.
fn classify_socket(fd: BorrowedFd<'_>) -> FdKind {
    match (
        sockopt_int(fd, libc::SO_DOMAIN),
        sockopt_int(fd, libc::SO_TYPE),
    ) {
        (Ok(libc::AF_UNIX), Ok(libc::SOCK_STREAM | libc::SOCK_SEQPACKET)) => FdKind::Socket,
        (Ok(libc::AF_UNIX), Ok(_)) => FdKind::Refused("Unix datagram socket"),
        (Ok(_), Ok(_)) => FdKind::Refused("socket that is not a Unix socket"),
        _ => FdKind::Refused("socket of unknown kind"),
    }
}

/// `getsockopt(SOL_SOCKET, opt)` of an `int` option.
fn sockopt_int(fd: BorrowedFd<'_>, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` is a live, aligned `c_int` and `len` says exactly its size; the kernel writes
    // at most `len` bytes through the pointer and updates `len`. `fd` is a valid descriptor.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            std::ptr::from_mut(&mut v).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// Whether the VMM will be able to map `fd`, a dma-buf of `size` bytes, into the host-visible
/// region: one shared mapping of its first page, readable, and writable too when the blob will
/// be mapped writable. A dma-buf reaches the guest only as a blob the VMM maps with `mmap` on
/// SHMEM_MAP, and not every exporter allows that (a driver without an mmap operation for its
/// buffers refuses); crosvm ends the VM when a SHMEM_MAP is refused, so such a dma-buf is
/// refused when it arrives instead. Only probes: the mapping is never accessed and is gone
/// when this returns.
pub fn dmabuf_mappable(fd: BorrowedFd<'_>, size: u64) -> bool {
    let page = super::image::host_page_size();
    if size < page {
        // dma-bufs are whole pages; a smaller one cannot be mapped as a page.
        return false;
    }
    let mut prot = libc::PROT_READ;
    if memory_writable(fd) {
        prot |= libc::PROT_WRITE;
    }
    // SAFETY: a fresh mapping chosen by the kernel (no MAP_FIXED), so no existing memory is
    // affected; it is never accessed and unmapped right below with the same address and
    // length. `fd` is open for the duration of the call.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            page as usize,
            prot,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return false;
    }
    // SAFETY: `p` is the mapping of `page` bytes made above, used by nothing else.
    unsafe {
        libc::munmap(p, page as usize);
    }
    true
}

/// The access mode (`O_RDONLY`, `O_WRONLY`, `O_RDWR`) of an fd; `None` for an `O_PATH` fd or
/// when `F_GETFL` fails.
fn access_mode(fd: BorrowedFd<'_>) -> Option<libc::c_int> {
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).ok()?;
    if flags & libc::O_PATH != 0 {
        return None;
    }
    Some(flags & libc::O_ACCMODE)
}

/// Read an eventfd's 8-byte counter (resetting it, or taking 1 from it in semaphore mode).
/// `Ok(None)` when it is zero (`EAGAIN`; the fd is non-blocking).
pub fn read_eventfd(fd: BorrowedFd<'_>) -> io::Result<Option<u64>> {
    let mut buf = [0u8; 8];
    loop {
        match nix::unistd::read(fd, &mut buf) {
            Ok(8) => return Ok(Some(u64::from_ne_bytes(buf))),
            Ok(n) => {
                return Err(io::Error::other(format!(
                    "eventfd read returned {n} bytes instead of 8"
                )))
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Add `value` to an eventfd's counter. `Err(WouldBlock)` when the counter would pass its
/// maximum (`EAGAIN`; the fd is non-blocking), `Err(InvalidInput)` for `u64::MAX`, which an
/// eventfd refuses.
pub fn write_eventfd(fd: BorrowedFd<'_>, value: u64) -> io::Result<()> {
    loop {
        match nix::unistd::write(fd, &value.to_ne_bytes()) {
            Ok(8) => return Ok(()),
            Ok(n) => {
                return Err(io::Error::other(format!(
                    "eventfd write took {n} bytes instead of 8"
                )))
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether memory behind `fd` may be mapped writable: opened read-write and not write-sealed
/// (`F_SEAL_WRITE` or `F_SEAL_FUTURE_WRITE`). Anything else is mapped read-only.
pub fn memory_writable(fd: BorrowedFd<'_>) -> bool {
    let rw = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)
        .map(|f| f & libc::O_ACCMODE == libc::O_RDWR)
        .unwrap_or(false);
    if !rw {
        return false;
    }
    // SAFETY: F_GET_SEALS takes no pointer argument; on fds without seal support it fails
    // with EINVAL, which means "no seals".
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    seals < 0 || seals & (libc::F_SEAL_WRITE | libc::F_SEAL_FUTURE_WRITE) == 0
}

/// The seals of a memfd (`F_GET_SEALS`); 0 for fds without seal support.
pub fn seals(fd: BorrowedFd<'_>) -> libc::c_int {
    // SAFETY: F_GET_SEALS takes no pointer argument; fds without seal support fail with EINVAL.
    let s = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    s.max(0)
}

/// Copy the first `len` bytes of `from` to the start of `to` with positioned I/O (the source's
/// file offset, shared with the host service, is left alone).
pub fn copy_contents(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let src = std::fs::File::from(from.try_clone_to_owned()?);
    let dst = std::fs::File::from(to.try_clone_to_owned()?);
    let mut buf = vec![0u8; (len.min(1 << 20)) as usize];
    let mut off = 0u64;
    while off < len {
        let want = ((len - off) as usize).min(buf.len());
        let n = src.read_at(&mut buf[..want], off)?;
        if n == 0 {
            break; // shrank meanwhile: the rest stays zero
        }
        dst.write_all_at(&buf[..n], off)?;
        off += n as u64;
    }
    Ok(())
}

fn seekable_size(fd: BorrowedFd<'_>) -> FdKind {
    match nix::unistd::lseek(fd, 0, nix::unistd::Whence::SeekEnd) {
        Ok(size) if size >= 0 && size <= u32::MAX as i64 => {
            let _ = nix::unistd::lseek(fd, 0, nix::unistd::Whence::SeekSet);
            FdKind::Memory { size: size as u64 }
        }
        Ok(_) => FdKind::Refused("memory object larger than 4 GiB"),
        Err(_) => FdKind::Refused("unseekable file"),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn dmabuf_probe_maps_memory_and_refuses_other_files() {
        let page = super::super::image::host_page_size();
        let f = tempfile_in_memory();
        f.set_len(page).unwrap();
        assert!(dmabuf_mappable(f.as_fd(), page));
        assert!(!dmabuf_mappable(f.as_fd(), page - 1), "less than a page");
        // A character device without an mmap operation refuses, as such exporters do.
        let null = std::fs::File::open("/dev/null").expect("/dev/null");
        assert!(!dmabuf_mappable(null.as_fd(), page));
    }

    #[test]
    fn classify_kinds() {
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(classify(a.as_fd()), FdKind::Socket);
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        assert_eq!(classify(w.as_fd()), FdKind::WritePipe);
        assert_eq!(classify(r.as_fd()), FdKind::Refused("pipe read end"));
        let mut f = tempfile_in_memory();
        f.write_all(&[7u8; 1234]).unwrap();
        assert_eq!(classify(f.as_fd()), FdKind::Memory { size: 1234 });
        assert!(memory_writable(f.as_fd()));
        // SAFETY: plain fcntl on an fd we own.
        let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_WRITE) };
        assert_eq!(
            r, -1,
            "memfd created without MFD_ALLOW_SEALING refuses seals"
        );
        let dir = std::fs::File::open("/").unwrap();
        assert_eq!(classify(dir.as_fd()), FdKind::Refused("directory"));
        let efd = nix::sys::eventfd::EventFd::new().unwrap();
        assert_eq!(classify(efd.as_fd()), FdKind::Eventfd);
    }

    #[test]
    fn only_connection_oriented_unix_sockets_are_sockets() {
        use nix::sys::socket::{socket, socketpair, AddressFamily, SockFlag, SockType};
        let (s, _t) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        assert_eq!(classify(s.as_fd()), FdKind::Socket);
        let (d, _e) = std::os::unix::net::UnixDatagram::pair().unwrap();
        assert_eq!(classify(d.as_fd()), FdKind::Refused("Unix datagram socket"));
        let udp = socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        assert_eq!(
            classify(udp.as_fd()),
            FdKind::Refused("socket that is not a Unix socket")
        );
    }

    /// Regular files are memory only through an fd that can read them: what the VMM maps.
    #[test]
    fn files_that_cannot_be_mapped_are_not_memory() {
        let mut mem = tempfile_in_memory();
        mem.write_all(&[1u8; 10]).unwrap();
        let path = format!("/proc/self/fd/{}", mem.as_raw_fd());
        let wo = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        assert_eq!(classify(wo.as_fd()), FdKind::Refused("write-only file"));
        let o_path = nix::fcntl::open(
            path.as_str(),
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        assert_eq!(
            classify(o_path.as_fd()),
            FdKind::Refused("file that cannot be read (O_PATH)")
        );
    }

    #[test]
    fn eventfd_counters_are_read_and_added_to() {
        let efd = nix::sys::eventfd::EventFd::from_value_and_flags(
            0,
            nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
        )
        .unwrap();
        assert_eq!(read_eventfd(efd.as_fd()).unwrap(), None, "zero: EAGAIN");
        write_eventfd(efd.as_fd(), 5).unwrap();
        write_eventfd(efd.as_fd(), 0x1_0000_0000).unwrap();
        assert_eq!(read_eventfd(efd.as_fd()).unwrap(), Some(0x1_0000_0005));
        assert_eq!(read_eventfd(efd.as_fd()).unwrap(), None, "read resets it");
        // The counter holds at most u64::MAX - 1; one more would block.
        write_eventfd(efd.as_fd(), u64::MAX - 1).unwrap();
        let e = write_eventfd(efd.as_fd(), 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        let e = write_eventfd(efd.as_fd(), u64::MAX).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(read_eventfd(efd.as_fd()).unwrap(), Some(u64::MAX - 1));
    }

    #[test]
    fn sealed_and_read_only_memory_is_not_writable() {
        let fd = nix::sys::memfd::memfd_create(
            c"sealed",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC | nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING,
        )
        .unwrap();
        let mut f = std::fs::File::from(fd);
        f.write_all(&[1u8; 4096]).unwrap();
        assert!(memory_writable(f.as_fd()));
        // SAFETY: plain fcntl on an fd we own.
        let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_WRITE) };
        assert_eq!(r, 0);
        assert!(!memory_writable(f.as_fd()));
        let ro = std::fs::File::open(format!("/proc/self/fd/{}", f.as_raw_fd())).unwrap();
        assert!(!memory_writable(ro.as_fd()));
    }

    /// `set_nonblocking` adds `O_NONBLOCK` to the open file description and changes nothing
    /// else, as the `F_GETFL` + `F_SETFL` pair it replaced did.
    #[test]
    fn set_nonblocking_sets_only_o_nonblocking() {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let flags =
            |fd: BorrowedFd<'_>| OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).unwrap());
        // Packet mode (O_DIRECT) is a status flag of each end's open file description.
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_DIRECT).unwrap();
        let before = flags(w.as_fd());
        assert!(before.contains(OFlag::O_DIRECT | OFlag::O_WRONLY));
        assert!(!before.contains(OFlag::O_NONBLOCK));
        set_nonblocking(w.as_fd()).unwrap();
        assert_eq!(flags(w.as_fd()), before | OFlag::O_NONBLOCK);
        set_nonblocking(w.as_fd()).unwrap();
        assert_eq!(flags(w.as_fd()), before | OFlag::O_NONBLOCK);
        // The read end is another open file description and stays blocking until asked.
        assert!(!flags(r.as_fd()).contains(OFlag::O_NONBLOCK));
        set_nonblocking(r.as_fd()).unwrap();
        assert_eq!(
            nix::unistd::read(&r, &mut [0u8; 4]),
            Err(nix::errno::Errno::EAGAIN)
        );
        // O_APPEND survives too.
        let mem = tempfile_in_memory();
        let append = std::fs::OpenOptions::new()
            .append(true)
            .open(format!("/proc/self/fd/{}", mem.as_raw_fd()))
            .unwrap();
        set_nonblocking(append.as_fd()).unwrap();
        let f = flags(append.as_fd());
        assert!(f.contains(OFlag::O_APPEND | OFlag::O_NONBLOCK | OFlag::O_WRONLY));
    }

    /// Pipes are classified by their access mode, read only for FIFOs; memory by `fstat` alone,
    /// whatever its access mode.
    #[test]
    fn classify_by_access_mode() {
        let (r, _w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        // A FIFO opened read-write is not a write end either.
        let rw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/self/fd/{}", r.as_raw_fd()))
            .unwrap();
        assert_eq!(classify(rw.as_fd()), FdKind::Refused("pipe read end"));
        let mut mem = tempfile_in_memory();
        mem.write_all(&[1u8; 100]).unwrap();
        let ro = std::fs::File::open(format!("/proc/self/fd/{}", mem.as_raw_fd())).unwrap();
        assert_eq!(classify(ro.as_fd()), FdKind::Memory { size: 100 });
        assert!(!memory_writable(ro.as_fd()));
        assert_eq!(classify(mem.as_fd()), FdKind::Memory { size: 100 });
        assert!(memory_writable(mem.as_fd()));
    }

    fn tempfile_in_memory() -> std::fs::File {
        let fd =
            nix::sys::memfd::memfd_create(c"classify-test", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                .unwrap();
        std::fs::File::from(fd)
    }

    #[test]
    fn fds_round_trip() {
        let (a, b) = UnixStream::pair().unwrap();
        let (_r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let data = b"hello";
        let iov = [libc::iovec {
            iov_base: data.as_ptr() as *mut _,
            iov_len: data.len(),
        }];
        let mut cmsg = CmsgBuf::default();
        assert_eq!(
            send_with_fds(a.as_fd(), &iov, &[w.as_raw_fd()], &mut cmsg).unwrap(),
            5
        );
        let mut buf = [0u8; 16];
        let riov = [libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        let mut fds = Vec::new();
        match recv_with_fds(b.as_fd(), &riov, &mut fds, &mut cmsg).unwrap() {
            Received::Data { len, truncated_fds } => {
                assert_eq!(len, 5);
                assert!(!truncated_fds);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(&buf[..5], data);
        assert_eq!(fds.len(), 1);
        assert_eq!(classify(fds[0].as_fd()), FdKind::WritePipe);
        assert!(matches!(
            recv_with_fds(b.as_fd(), &riov, &mut fds, &mut cmsg).unwrap(),
            Received::WouldBlock
        ));
        drop(a);
        fds.clear();
        assert!(matches!(
            recv_with_fds(b.as_fd(), &riov, &mut fds, &mut cmsg).unwrap(),
            Received::Eof
        ));
    }
}
