//! The host-service side of a channel: send and receive bytes with `SCM_RIGHTS` fds, make
//! memfds and pipes, read a stream to its end.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// `sendmsg` of `data` with `fds` attached; asserts everything was sent.
pub fn send_with_fds(stream: &UnixStream, data: &[u8], fds: &[RawFd]) {
    let iov = [IoSlice::new(data)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    let n =
        sendmsg::<()>(stream.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None).expect("sendmsg");
    assert_eq!(n, data.len(), "short sendmsg");
}

/// One `recvmsg` (blocking, with a timeout): the bytes and the fds that came with them.
pub fn recv_with_fds(
    stream: &UnixStream,
    max: usize,
    timeout: Duration,
) -> (Vec<u8>, Vec<OwnedFd>) {
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = vec![0u8; max];
    let mut space = nix::cmsg_space!([RawFd; 32]);
    let (n, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .expect("recvmsg");
        let mut fds = Vec::new();
        for c in msg.cmsgs().expect("cmsgs") {
            if let ControlMessageOwned::ScmRights(v) = c {
                // SAFETY: the kernel just installed these descriptors for us; each is owned
                // exactly once here.
                fds.extend(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        (msg.bytes, fds)
    };
    buf.truncate(n);
    (buf, fds)
}

/// Read exactly `len` bytes (panics after `timeout`).
pub fn read_exact_timeout(stream: &mut UnixStream, len: usize, timeout: Duration) -> Vec<u8> {
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut out = vec![0u8; len];
    stream
        .read_exact(&mut out)
        .expect("read_exact from channel");
    out
}

/// Read until EOF (panics after `timeout`).
pub fn read_to_end_timeout(r: &mut impl Read, timeout: Duration) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        assert!(Instant::now() < deadline, "no EOF within {timeout:?}");
        match r.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// A memfd holding `content`.
pub fn memfd_with(content: &[u8]) -> std::fs::File {
    let fd = nix::sys::memfd::memfd_create(c"host-memfd", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .expect("memfd_create");
    let mut f = std::fs::File::from(fd);
    f.write_all(content).unwrap();
    f
}

/// A pipe as (read end, write end) files.
pub fn pipe() -> (std::fs::File, std::fs::File) {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe2");
    (std::fs::File::from(r), std::fs::File::from(w))
}

/// Deterministic test data.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Number of open fds of process `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Resident memory (VmRSS) of process `pid` in KiB, 0 if unreadable.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
