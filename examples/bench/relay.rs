//! The relay floor: the cheapest round trip any separate-process device can offer, measured
//! in the same run as ours. Three execution contexts in two processes, as with our daemon:
//!
//! - the guest (the bench thread) writes 64 bytes into shared memory, kicks an eventfd and
//!   waits for the call eventfd (`poll` + `read`, as the test frontend waits for interrupts);
//! - the device (this program re-run with `--relay-device`, a process of its own) waits in
//!   `epoll_wait` on the kick and on its Unix socket to the host service, reads the kick,
//!   writes the 64 bytes straight from the shared memory to the socket, reads the answer
//!   straight into the shared memory and writes the call eventfd: six system calls per round
//!   trip, no virtqueue, no protocol;
//! - the host service: the same echo thread (`service::spawn_echo`) ours talks to.
//!
//! It is the floor for the round trip only; the other cases are not run on it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_CLOEXEC, EFD_NONBLOCK};

use crate::alloc;
use crate::cases::*;
use crate::counters;
use crate::service;
use crate::stats::percentile;
use support::memfd_with;

/// How long any single wait may take before the case is declared broken.
const T: Duration = Duration::from_secs(10);
/// The shared "guest memory": the request at 0, the answer at ANSWER.
const SHM: usize = 4096;
const ANSWER: usize = 64;
/// Descriptor numbers in the device process.
const KICK: RawFd = 3;
const CALL: RawFd = 4;
const SOCK: RawFd = 5;
const MEM: RawFd = 6;

/// The argument that turns this program into the relay's device.
pub const DEVICE_ARG: &str = "--relay-device";

fn err(what: &str) -> impl Fn(io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

pub fn supports(case: Case) -> bool {
    case == Case::RoundTrip
}

pub fn run(case: Case, p: &Params) -> RepResult {
    match case {
        Case::RoundTrip => round_trip(p.rtts, p.count_syscalls),
        _ => Err("n/a (the relay is the floor of the round trip only)".into()),
    }
}

/// A shared mapping of a memfd, unmapped on drop.
struct Shared {
    ptr: *mut u8,
}

impl Shared {
    fn map(fd: RawFd) -> io::Result<Shared> {
        // SAFETY: a fresh shared mapping of SHM bytes of a memfd at least that large; the
        // kernel picks an address no other mapping uses.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SHM,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Shared { ptr: p.cast() })
    }

    /// Address of byte `off` (below SHM).
    fn at(&self, off: usize) -> *mut u8 {
        assert!(off < SHM);
        // SAFETY: `off` is inside the SHM-byte mapping.
        unsafe { self.ptr.add(off) }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, of exactly this length; nothing refers to it
        // after drop.
        unsafe { libc::munmap(self.ptr.cast(), SHM) };
    }
}

/// Waits until `call` is signalled (poll, then read, like the test frontend's
/// `VirtQueue::wait_signal`); false on timeout.
fn wait_call(call: &EventFd, timeout: Duration) -> Result<bool, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        let mut pfd = libc::pollfd {
            fd: call.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll on the call eventfd: {e}"));
        }
        if r > 0 {
            let _ = call.read();
            return Ok(true);
        }
        if ms == 0 {
            return Ok(false);
        }
    }
}

/// The device process; killed and reaped on drop.
struct Device(Child);

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the device with `fds` as its descriptors 3, 4, 5, 6.
fn spawn_device(fds: [RawFd; 4]) -> Result<Device, String> {
    // Copies above the target numbers first, so that placing one cannot overwrite another.
    let mut high = Vec::with_capacity(fds.len());
    for fd in fds {
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor we hold returns a new one or -1.
        let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 16) };
        if d < 0 {
            return Err(format!("dup: {}", io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor nothing else owns.
        high.push(unsafe { OwnedFd::from_raw_fd(d) });
    }
    let raw: Vec<RawFd> = high.iter().map(AsRawFd::as_raw_fd).collect();
    let exe = std::env::current_exe().map_err(err("current_exe"))?;
    let mut cmd = Command::new(exe);
    cmd.arg(DEVICE_ARG)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // SAFETY: the closure runs in the child between fork and exec and only calls dup2, which
    // is async-signal-safe; dup2 clears close-on-exec on the new descriptor.
    unsafe {
        cmd.pre_exec(move || {
            for (i, &fd) in raw.iter().enumerate() {
                if libc::dup2(fd, 3 + i as RawFd) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(err("spawn the relay device"))?;
    drop(high);
    Ok(Device(child))
}

fn round_trip(n: usize, count_syscalls: bool) -> RepResult {
    let kick = EventFd::new(EFD_CLOEXEC).map_err(err("eventfd"))?;
    let call = EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC).map_err(err("eventfd"))?;
    let (dev_sock, host) = UnixStream::pair().map_err(err("socketpair"))?;
    let memfd = memfd_with(&[0u8; SHM]);
    let shm = Shared::map(memfd.as_raw_fd()).map_err(err("mmap"))?;
    let device = spawn_device([
        kick.as_raw_fd(),
        call.as_raw_fd(),
        dev_sock.as_raw_fd(),
        memfd.as_raw_fd(),
    ])?;
    drop(dev_sock);
    drop(memfd);
    // The device signals the call eventfd once it is waiting: start-up is not measured.
    if !wait_call(&call, T)? {
        return Err("the relay device did not start".into());
    }
    let warm = n / 10;
    let echo = service::spawn_echo(host, RTT_MSG, n + warm);
    // The request is written once, as the lean driver's SEND is encoded once.
    // SAFETY: RTT_MSG bytes at offset 0 are inside the mapping; the device only reads them
    // while the guest waits.
    unsafe { std::ptr::write_bytes(shm.at(0), 0x5a, RTT_MSG) };
    let mut samples = Vec::with_capacity(n);
    let span = counters::Span::start(device.0.id(), count_syscalls);
    let allocs = alloc::Span::start();
    for i in 0..n + warm {
        let t0 = Instant::now();
        kick.write(1).map_err(err("kick"))?;
        if !wait_call(&call, T)? {
            return Err(format!("no answer from the relay device within {T:?}"));
        }
        // Read the answer, as the guest reads the channel ring.
        // SAFETY: ANSWER + RTT_MSG bytes are inside the mapping; the device wrote them before
        // signalling and does not touch them until the next kick. Volatile: another process
        // writes this memory.
        let answer: [u8; RTT_MSG] =
            unsafe { std::ptr::read_volatile(shm.at(ANSWER).cast::<[u8; RTT_MSG]>()) };
        let dt = t0.elapsed();
        if answer[0] != 0x5a {
            return Err("the relay answered other bytes".into());
        }
        if i >= warm {
            samples.push(dt.as_secs_f64() * 1e6);
        }
    }
    let allocs = allocs.stop();
    let costs = span.stop();
    service::join(echo, "host echo")?;
    drop(device);
    let p50 = percentile(&mut samples, 50.0);
    let p99 = percentile(&mut samples, 99.0);
    let mut o = Outcome::new(vec![p50, p99], n + warm).allocs(allocs);
    o.costs = Some(costs);
    Ok(o)
}

/// The `--relay-device` process: descriptors 3 (kick), 4 (call), 5 (socket to the host
/// service) and 6 (the shared memory) come from the bench. Returns at EOF on the socket.
pub fn device_main() -> Result<(), String> {
    let shm = Shared::map(MEM).map_err(err("mmap"))?;
    // SAFETY: epoll_create1 returns a new descriptor or -1.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(format!("epoll_create1: {}", io::Error::last_os_error()));
    }
    for (fd, token) in [(KICK, 0u64), (SOCK, 1u64)] {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` is valid for the call; the kernel copies it.
        if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            return Err(format!("epoll_ctl: {}", io::Error::last_os_error()));
        }
    }
    let one = 1u64.to_ne_bytes();
    let mut eight = [0u8; 8];
    // The raw calls below are plain reads and writes of descriptors we were given, from and
    // into buffers that are valid for their length (our stack, or inside the mapping).
    let signal = || {
        // SAFETY: writes the 8 bytes of `one` to the call eventfd.
        unsafe { libc::write(CALL, one.as_ptr().cast(), 8) == 8 }
    };
    if !signal() {
        return Err("signal ready".into());
    }
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 2];
    let mut got = 0usize;
    loop {
        // SAFETY: `events` has room for the 2 entries we allow.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("epoll_wait: {e}"));
        }
        for ev in &events[..n as usize] {
            if ev.u64 == 0 {
                // SAFETY: see above.
                if unsafe { libc::read(KICK, eight.as_mut_ptr().cast(), 8) } != 8 {
                    return Err("read kick".into());
                }
                let mut sent = 0;
                while sent < RTT_MSG {
                    // SAFETY: see above; `sent < RTT_MSG` keeps the range inside the mapping.
                    let w = unsafe { libc::write(SOCK, shm.at(sent).cast(), RTT_MSG - sent) };
                    if w <= 0 {
                        return Err(format!("write: {}", io::Error::last_os_error()));
                    }
                    sent += w as usize;
                }
            } else {
                // SAFETY: see above; `got < RTT_MSG` keeps the range inside the mapping.
                let r = unsafe { libc::read(SOCK, shm.at(ANSWER + got).cast(), RTT_MSG - got) };
                if r == 0 {
                    return Ok(());
                }
                if r < 0 {
                    return Err(format!("read: {}", io::Error::last_os_error()));
                }
                got += r as usize;
                if got == RTT_MSG {
                    got = 0;
                    if !signal() {
                        return Err("signal".into());
                    }
                }
            }
        }
    }
}
