//! The host-service side of every case, shared by the three systems so that each pays exactly
//! the same host costs: drain a stream, write messages, echo, pass fds with flow control.

use std::io::{self, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Instant;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

/// Size of the buffer a host service reads with.
pub const DRAIN_BUF: usize = 64 * 1024;
/// Most messages with fds a sender keeps ahead of the receiver (fds in flight count against
/// RLIMIT_NOFILE).
pub const FD_WINDOW: usize = 16;

/// Reads `total` bytes (in `DRAIN_BUF` pieces) and returns when the last one arrived.
pub fn drain(mut r: impl Read, total: u64) -> io::Result<Instant> {
    let mut buf = vec![0u8; DRAIN_BUF];
    let mut got = 0u64;
    while got < total {
        match r.read(&mut buf) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF after {got} of {total} bytes"),
                ))
            }
            Ok(n) => got += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Instant::now())
}

/// Reads to EOF; returns the byte count and when EOF was seen.
pub fn drain_to_eof(mut r: impl Read) -> io::Result<(u64, Instant)> {
    let mut buf = vec![0u8; DRAIN_BUF];
    let mut got = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok((got, Instant::now())),
            Ok(n) => got += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A thread that drains `total` bytes from `r`.
pub fn spawn_drain<R: Read + Send + 'static>(r: R, total: u64) -> JoinHandle<io::Result<Instant>> {
    thread::spawn(move || drain(r, total))
}

/// A thread that writes `msg` `n` times to `w` (one `write_all` per message).
pub fn spawn_writer<W: Write + Send + 'static>(
    mut w: W,
    msg: Vec<u8>,
    n: usize,
) -> JoinHandle<io::Result<()>> {
    thread::spawn(move || {
        for _ in 0..n {
            w.write_all(&msg)?;
        }
        Ok(())
    })
}

/// A thread that echoes `n` messages of `size` bytes.
pub fn spawn_echo(mut s: UnixStream, size: usize, n: usize) -> JoinHandle<io::Result<()>> {
    thread::spawn(move || {
        let mut buf = vec![0u8; size];
        for _ in 0..n {
            s.read_exact(&mut buf)?;
            s.write_all(&buf)?;
        }
        Ok(())
    })
}

/// One blocking `recvmsg`: bytes into `buf`, descriptors appended to `fds`.
pub fn recv_fds(s: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut space = nix::cmsg_space!([RawFd; 8]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        s.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(v) = c {
            // SAFETY: the kernel installed these descriptors for this process just now; each is
            // wrapped exactly once.
            fds.extend(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    Ok(msg.bytes)
}

/// The host side of a READ_PIPE transfer: receive the pipe's write end on `host`, write `bytes`
/// bytes into it, close it.
pub fn spawn_pipe_filler(host: UnixStream, bytes: usize) -> JoinHandle<io::Result<()>> {
    thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut fds = Vec::new();
        recv_fds(&host, &mut buf, &mut fds)?;
        let fd = fds.pop().ok_or_else(|| io::Error::other("no fd"))?;
        std::fs::File::from(fd).write_all(&vec![0x5a; bytes])
    })
}

/// A thread that receives `n` messages and closes every descriptor that came with them.
pub fn spawn_fd_sink(s: UnixStream, n: usize) -> JoinHandle<io::Result<()>> {
    thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut fds = Vec::with_capacity(4);
        for i in 0..n {
            let got = recv_fds(&s, &mut buf, &mut fds)?;
            if got == 0 && fds.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF after {i} of {n} messages"),
                ));
            }
            fds.clear();
        }
        Ok(())
    })
}

/// Receiver-paced sending: the sender waits for a credit before running more than
/// [`FD_WINDOW`] messages ahead.
///
/// A bounded channel of FD_WINDOW slots, allocated once: the receiver gives one credit per
/// message it got, and it cannot have got more than FD_WINDOW messages beyond the credits the
/// sender took, so giving never blocks, and never allocates (an unbounded channel allocates a
/// block every few dozen messages, which would count against the guest driver that gives).
pub struct Credits {
    tx: mpsc::SyncSender<()>,
}

impl Credits {
    /// Returns one message's credit to the sender.
    pub fn give(&self) {
        let _ = self.tx.send(());
    }
}

/// A thread that sends `data` with `fd` attached `n` times, at most [`FD_WINDOW`] messages
/// ahead of the credits returned through the [`Credits`].
pub fn spawn_fd_source(
    s: UnixStream,
    data: &'static [u8],
    fd: OwnedFd,
    n: usize,
) -> (Credits, JoinHandle<io::Result<()>>) {
    let (tx, rx) = mpsc::sync_channel::<()>(FD_WINDOW);
    let h = thread::spawn(move || {
        for i in 0..n {
            if i >= FD_WINDOW && rx.recv().is_err() {
                return Err(io::Error::other("the receiver gave up"));
            }
            support::send_with_fds(&s, data, &[fd.as_raw_fd()]);
        }
        Ok(())
    });
    (Credits { tx }, h)
}

/// Joins a service thread, turning its panic or error into a message.
pub fn join<T>(h: JoinHandle<io::Result<T>>, what: &str) -> Result<T, String> {
    match h.join() {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: thread panicked")),
    }
}
