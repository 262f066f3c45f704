//! The limit: the same messages moved by two threads over a bare Unix socketpair or pipe(2)
//! (two processes for the round trip), with the same host-service code as the other systems.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::cases::*;
use crate::service;
use crate::stats::{mb_per_s, percentile};
use support::{memfd_with, pipe};

fn err(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

pub fn run(case: Case, p: &Params) -> RepResult {
    match case {
        Case::GuestToHost => guest_to_host(p.msgs),
        Case::HostToGuest => host_to_guest(p.msgs),
        Case::RoundTrip => round_trip(p.rtts),
        Case::PipeRead => pipe_read(p.pipe_bytes),
        Case::PipeWrite => pipe_write(p.pipe_bytes),
        Case::FdPipeToGuest => fd_pipe_to_guest(p.fd_msgs),
        Case::FdPipeToHost => fd_pipe_to_host(p.fd_msgs),
        Case::FdMemfd => fd_memfd(p.memfd_msgs),
        Case::BulkToGuest => bulk_to_guest(p.bulk_bytes),
        Case::BulkToHost => bulk_to_host(p.bulk_bytes),
        Case::Memory => {
            let mut o = Outcome::new(Vec::new(), 0);
            o.values = vec![Err("n/a (no process of its own)".into()); 4];
            Ok(o)
        }
    }
}

/// Writer thread → reader thread, `n` writes of MSG bytes.
fn guest_to_host(n: usize) -> RepResult {
    let (mut a, b) = UnixStream::pair().map_err(err("socketpair"))?;
    let total = (n * MSG) as u64;
    let reader = service::spawn_drain(b, total);
    let msg = vec![0x5au8; MSG];
    let t0 = Instant::now();
    for _ in 0..n {
        a.write_all(&msg).map_err(err("write"))?;
    }
    let t1 = service::join(reader, "reader")?;
    Ok(Outcome::new(
        vec![mb_per_s(total, (t1 - t0).as_secs_f64())],
        n,
    ))
}

/// Streaming (writer runs ahead, reader takes ≤ MSG per read) and lock-step (MSG bytes, then a
/// 1-byte acknowledgement, like one message per POLL fence).
fn host_to_guest(n: usize) -> RepResult {
    let total = (n * MSG) as u64;
    // Streaming.
    let (a, mut b) = UnixStream::pair().map_err(err("socketpair"))?;
    let writer = service::spawn_writer(a, vec![0x5a; MSG], n);
    let mut buf = vec![0u8; MSG];
    let t0 = Instant::now();
    let mut got = 0u64;
    while got < total {
        let k = b.read(&mut buf).map_err(err("read"))?;
        if k == 0 {
            return Err("unexpected EOF".into());
        }
        got += k as u64;
    }
    let streaming = mb_per_s(total, t0.elapsed().as_secs_f64());
    service::join(writer, "writer")?;
    // Lock-step.
    let (mut a, mut b) = UnixStream::pair().map_err(err("socketpair"))?;
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let msg = vec![0x5au8; MSG];
        let mut ack = [0u8; 1];
        for _ in 0..n {
            a.write_all(&msg)?;
            a.read_exact(&mut ack)?;
        }
        Ok(())
    });
    let t0 = Instant::now();
    for _ in 0..n {
        b.read_exact(&mut buf).map_err(err("read"))?;
        b.write_all(&[1]).map_err(err("ack"))?;
    }
    let lock_step = mb_per_s(total, t0.elapsed().as_secs_f64());
    service::join(writer, "writer")?;
    Ok(Outcome::new(vec![streaming, lock_step], n))
}

/// Ping-pong with an echo process (this program re-run with `--echo-child`, the socket as its
/// stdin).
fn round_trip(n: usize) -> RepResult {
    let (mut a, b) = UnixStream::pair().map_err(err("socketpair"))?;
    let exe = std::env::current_exe().map_err(err("current_exe"))?;
    let mut child = Command::new(exe)
        .arg("--echo-child")
        .stdin(Stdio::from(OwnedFd::from(b)))
        .stdout(Stdio::null())
        .spawn()
        .map_err(err("spawn echo process"))?;
    let mut msg = [0x5au8; RTT_MSG];
    let mut samples = Vec::with_capacity(n);
    let warm = n / 10;
    for i in 0..n + warm {
        let t0 = Instant::now();
        a.write_all(&msg).map_err(err("write"))?;
        a.read_exact(&mut msg).map_err(err("read"))?;
        if i >= warm {
            samples.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    drop(a);
    let _ = child.wait();
    let p50 = percentile(&mut samples, 50.0);
    let p99 = percentile(&mut samples, 99.0);
    Ok(Outcome::new(vec![p50, p99], n + warm))
}

/// The `--echo-child` process: echo RTT_MSG-byte messages on stdin until EOF.
pub fn echo_child() {
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .expect("dup stdin");
    let mut s = UnixStream::from(fd);
    let mut buf = [0u8; RTT_MSG];
    while s.read_exact(&mut buf).is_ok() {
        if s.write_all(&buf).is_err() {
            break;
        }
    }
}

/// pipe(2): a writer thread writes `bytes`, the reader reads PIPE_CHUNK at a time.
fn pipe_read(bytes: usize) -> RepResult {
    let (mut r, w) = pipe();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut w = w;
        w.write_all(&vec![0x5au8; bytes])
    });
    let t0 = Instant::now();
    let mut buf = vec![0u8; PIPE_CHUNK];
    let mut got = 0usize;
    loop {
        match r.read(&mut buf).map_err(err("read"))? {
            0 => break,
            k => got += k,
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    service::join(writer, "writer")?;
    if got != bytes {
        return Err(format!("read {got} of {bytes} bytes"));
    }
    Ok(Outcome::new(
        vec![mb_per_s(bytes as u64, secs)],
        bytes.div_ceil(PIPE_CHUNK),
    ))
}

/// pipe(2): PIPE_CHUNK-byte writes, a reader thread drains to EOF.
fn pipe_write(bytes: usize) -> RepResult {
    let (r, mut w) = pipe();
    let reader = std::thread::spawn(move || service::drain_to_eof(r));
    let data = vec![0x5au8; bytes];
    let t0 = Instant::now();
    for c in data.chunks(PIPE_CHUNK) {
        w.write_all(c).map_err(err("write"))?;
    }
    drop(w);
    let (got, t1) = service::join(reader, "reader")?;
    if got != bytes as u64 {
        return Err(format!("read {got} of {bytes} bytes"));
    }
    Ok(Outcome::new(
        vec![mb_per_s(bytes as u64, (t1 - t0).as_secs_f64())],
        bytes.div_ceil(PIPE_CHUNK),
    ))
}

/// A sender thread passes one pipe write end per message; the receiver closes it.
fn fd_pipe_to_guest(n: usize) -> RepResult {
    let (a, b) = UnixStream::pair().map_err(err("socketpair"))?;
    let (_r, w) = pipe();
    let (credits, sender) = service::spawn_fd_source(a, b"p", OwnedFd::from(w), n);
    let mut buf = [0u8; 64];
    let mut fds = Vec::new();
    let t0 = Instant::now();
    for _ in 0..n {
        service::recv_fds(&b, &mut buf, &mut fds).map_err(err("recvmsg"))?;
        if fds.len() != 1 {
            return Err(format!("{} fds in a message", fds.len()));
        }
        fds.clear();
        credits.give();
    }
    let secs = t0.elapsed().as_secs_f64();
    service::join(sender, "sender")?;
    Ok(Outcome::new(vec![n as f64 / secs], n))
}

/// Per message: the sender makes a pipe, passes its write end, closes its copy and waits for
/// EOF on the read end (the receiver closed the write end): the same cycle as SEND with a
/// READ_PIPE identifier followed by the guest's READ with hang_up.
fn fd_pipe_to_host(n: usize) -> RepResult {
    let (a, b) = UnixStream::pair().map_err(err("socketpair"))?;
    let sink = service::spawn_fd_sink(b, n);
    let mut buf = [0u8; 16];
    let t0 = Instant::now();
    for _ in 0..n {
        let (mut r, w) = pipe();
        support::send_with_fds(&a, b"p", &[w.as_raw_fd()]);
        drop(w);
        if r.read(&mut buf).map_err(err("read"))? != 0 {
            return Err("data on an empty pipe".into());
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    service::join(sink, "receiver")?;
    Ok(Outcome::new(vec![n as f64 / secs], n))
}

/// A sender thread passes a memfd per message; the receiver maps it, unmaps it, closes it.
fn fd_memfd(n: usize) -> RepResult {
    let (a, b) = UnixStream::pair().map_err(err("socketpair"))?;
    let memfd = memfd_with(&vec![0u8; MEMFD_SIZE as usize]);
    let (credits, sender) = service::spawn_fd_source(a, b"m", OwnedFd::from(memfd), n);
    let mut buf = [0u8; 64];
    let mut fds = Vec::new();
    let t0 = Instant::now();
    for _ in 0..n {
        service::recv_fds(&b, &mut buf, &mut fds).map_err(err("recvmsg"))?;
        let fd = fds.pop().ok_or("no fd in the message")?;
        // SAFETY: a fresh shared mapping of MEMFD_SIZE bytes of a memfd of that size; nothing
        // else refers to the address range, and it is unmapped right below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MEMFD_SIZE as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: `p` is the mapping created above, of exactly this length.
        unsafe { libc::munmap(p, MEMFD_SIZE as usize) };
        drop(fd);
        credits.give();
    }
    let secs = t0.elapsed().as_secs_f64();
    service::join(sender, "sender")?;
    Ok(Outcome::new(vec![n as f64 / secs], n))
}

/// The bulk host→guest limits, in the order of the case's metrics: a socketpair streamed by a
/// writer thread and read in pieces of what one RECEIVE carries (a 4 KiB ring, then a 1 MiB
/// one), and a pipe read in pieces of what one READ carries (the second with a 1 MiB buffer,
/// as the daemon gives a large-ring context's read pipes).
fn bulk_to_guest(bytes: usize) -> RepResult {
    let mut values = Vec::new();
    for read in [MSG, LARGE_RING - 352] {
        let (a, mut b) = UnixStream::pair().map_err(err("socketpair"))?;
        const CHUNK: usize = 1 << 20;
        let writer = service::spawn_writer(a, vec![0x5a; CHUNK], bytes.div_ceil(CHUNK));
        let total = (bytes.div_ceil(CHUNK) * CHUNK) as u64;
        let mut buf = vec![0u8; read];
        let t0 = Instant::now();
        let mut got = 0u64;
        while got < total {
            match b.read(&mut buf).map_err(err("read"))? {
                0 => return Err("unexpected EOF".into()),
                k => got += k as u64,
            }
        }
        values.push(mb_per_s(total, t0.elapsed().as_secs_f64()));
        service::join(writer, "writer")?;
    }
    for read in [PIPE_CHUNK, LARGE_RING - 24] {
        let (mut r, w) = pipe();
        if read > PIPE_CHUNK {
            // As the daemon does for a large-ring context's read pipe: a buffer the size of
            // the ring, so that the comparison is with the same pipe.
            // SAFETY: F_SETPIPE_SZ takes an int, no pointer; `r` is an open pipe.
            let set = unsafe { libc::fcntl(r.as_raw_fd(), libc::F_SETPIPE_SZ, LARGE_RING as i32) };
            if set < 0 {
                return Err(format!("F_SETPIPE_SZ: {}", std::io::Error::last_os_error()));
            }
        }
        let writer = std::thread::spawn(move || -> std::io::Result<()> {
            let mut w = w;
            w.write_all(&vec![0x5au8; bytes])
        });
        let mut buf = vec![0u8; read];
        let t0 = Instant::now();
        let mut got = 0usize;
        loop {
            match r.read(&mut buf).map_err(err("read"))? {
                0 => break,
                k => got += k,
            }
        }
        values.push(mb_per_s(bytes as u64, t0.elapsed().as_secs_f64()));
        service::join(writer, "writer")?;
        if got != bytes {
            return Err(format!("read {got} of {bytes} bytes"));
        }
    }
    Ok(Outcome::new(values, 0))
}

/// The bulk guest→host limits: writes of [`MSG`] and [`BULK_MSG`] bytes into a socketpair a
/// reader thread drains, and of [`PIPE_CHUNK`] and [`BULK_MSG`] bytes into a pipe.
fn bulk_to_host(bytes: usize) -> RepResult {
    let mut values = Vec::new();
    for size in [MSG, BULK_MSG] {
        let (mut a, b) = UnixStream::pair().map_err(err("socketpair"))?;
        let n = bytes / size;
        let total = (n * size) as u64;
        let reader = service::spawn_drain(b, total);
        let msg = vec![0x5au8; size];
        let t0 = Instant::now();
        for _ in 0..n {
            a.write_all(&msg).map_err(err("write"))?;
        }
        let t1 = service::join(reader, "reader")?;
        values.push(mb_per_s(total, (t1 - t0).as_secs_f64()));
    }
    for size in [PIPE_CHUNK, BULK_MSG] {
        let (r, mut w) = pipe();
        let reader = std::thread::spawn(move || service::drain_to_eof(r));
        let data = vec![0x5au8; bytes];
        let t0 = Instant::now();
        for c in data.chunks(size) {
            w.write_all(c).map_err(err("write"))?;
        }
        drop(w);
        let (got, t1) = service::join(reader, "reader")?;
        if got != bytes as u64 {
            return Err(format!("read {got} of {bytes} bytes"));
        }
        values.push(mb_per_s(bytes as u64, (t1 - t0).as_secs_f64()));
    }
    Ok(Outcome::new(values, 0))
}
