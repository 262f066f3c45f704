//! What a process of the system under test costs over a span of traffic: CPU time, wake-ups
//! and (in the separate counted pass only) system calls; and the CPU time of the thread that
//! drives the guest.
//!
//! - CPU time: `/proc/PID/task/*/schedstat` (exact nanoseconds, unlike the tick-based
//!   `/proc/PID/stat`).
//! - Wake-ups: `voluntary_ctxt_switches` of `/proc/PID/task/*/status`, the times a thread
//!   blocked, each of which needs a wake-up to continue; and, next to them, preemptions
//!   (`nonvoluntary_ctxt_switches`): on one CPU a thread that wakes another is often switched
//!   out before it blocks, and then finds work when it runs again instead of sleeping. Reading
//!   them costs the measured process nothing, so they are taken in every recorded repetition.
//! - System calls: Linux keeps no per-process syscall counter in /proc. A perf counter on the
//!   `raw_syscalls:sys_enter` tracepoint, opened by the bench for every thread of the process
//!   (`perf_event_open`, counting only, `inherit` for threads created later), counts them
//!   exactly, without ptrace stops (strace costs microseconds per call and changes the timing).
//!   An enabled syscall tracepoint still sends every syscall through the kernel's slow entry
//!   path and a per-task counter costs something on every context switch, so the counters
//!   are attached only in one extra repetition, after the recorded ones, whose times are not
//!   used.
//!
//! Only reads /proc and opens counting perf events; never writes to or signals the process.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// CPU time (ns), voluntary and involuntary context switches of every live thread of `pid`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Snapshot {
    pub cpu_ns: u64,
    pub wakeups: u64,
    pub preemptions: u64,
}

pub fn snapshot(pid: u32) -> Snapshot {
    let mut s = Snapshot::default();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return s;
    };
    for t in dir.filter_map(Result::ok) {
        let path = t.path();
        if let Some(ns) = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|st| st.split_whitespace().next()?.parse::<u64>().ok())
        {
            s.cpu_ns += ns;
        }
        if let Ok(st) = std::fs::read_to_string(path.join("status")) {
            let field = |name: &str| {
                st.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            s.wakeups += field("voluntary_ctxt_switches:");
            s.preemptions += field("nonvoluntary_ctxt_switches:");
        }
    }
    s
}

/// CPU time (ns) of the calling thread.
pub fn thread_cpu_ns() -> u64 {
    // SAFETY: timespec is plain data; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time (ns) of this process's threads, live and exited (not of its children).
pub fn process_self_cpu_ns() -> u64 {
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// `struct perf_event_attr` in its first published size (PERF_ATTR_SIZE_VER0, 64 bytes),
/// which every kernel accepts; the fields after `config1` are implicitly zero.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    /// Bit field: bit 0 `disabled`, bit 1 `inherit`, ...
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_ATTR_FLAG_INHERIT: u64 = 1 << 1;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;

/// The tracepoint id of `raw_syscalls:sys_enter`, from tracefs.
fn sys_enter_id() -> Result<u64, String> {
    let paths = [
        "/sys/kernel/tracing/events/raw_syscalls/sys_enter/id",
        "/sys/kernel/debug/tracing/events/raw_syscalls/sys_enter/id",
    ];
    let mut last = String::new();
    for p in paths {
        match std::fs::read_to_string(p) {
            Ok(s) => return s.trim().parse().map_err(|e| format!("{p}: {e}")),
            Err(e) => last = format!("{p}: {e}"),
        }
    }
    Err(format!("n/a (no raw_syscalls tracepoint: {last})"))
}

/// Counts the system calls of every thread of a process (and of threads they create) from
/// the moment it is attached.
pub struct SyscallCounter {
    events: Vec<OwnedFd>,
}

impl SyscallCounter {
    pub fn attach(pid: u32) -> Result<SyscallCounter, String> {
        let id = sys_enter_id()?;
        let tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map_err(|e| format!("n/a (/proc/{pid}/task: {e})"))?
            .filter_map(Result::ok)
            .filter_map(|t| t.file_name().to_str()?.parse().ok())
            .collect();
        let mut events = Vec::with_capacity(tids.len());
        for tid in tids {
            let attr = PerfEventAttr {
                type_: PERF_TYPE_TRACEPOINT,
                size: std::mem::size_of::<PerfEventAttr>() as u32,
                config: id,
                flags: PERF_ATTR_FLAG_INHERIT,
                ..Default::default()
            };
            // SAFETY: perf_event_open reads `attr` (valid for the call, `size` bytes) and
            // returns a new descriptor or -1; it touches no other memory of ours.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_perf_event_open,
                    &attr as *const PerfEventAttr,
                    tid,
                    -1i32,
                    -1i32,
                    PERF_FLAG_FD_CLOEXEC,
                )
            };
            if fd < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ESRCH) {
                    continue; // the thread exited meanwhile
                }
                return Err(format!(
                    "n/a (perf_event_open on raw_syscalls:sys_enter for thread {tid}: {e}; \
                     needs the right to trace the process, e.g. root or CAP_PERFMON)"
                ));
            }
            // SAFETY: perf_event_open returned a fresh descriptor that nothing else owns.
            events.push(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        }
        if events.is_empty() {
            return Err(format!("n/a (process {pid} has no threads)"));
        }
        Ok(SyscallCounter { events })
    }

    /// System calls counted so far, over all threads.
    pub fn read(&self) -> Result<u64, String> {
        let mut total = 0;
        for e in &self.events {
            let mut v = 0u64;
            // SAFETY: reads at most 8 bytes into `v`, a valid u64.
            let n = unsafe {
                libc::read(
                    e.as_raw_fd(),
                    (&mut v as *mut u64).cast(),
                    std::mem::size_of::<u64>(),
                )
            };
            if n != std::mem::size_of::<u64>() as isize {
                return Err(format!(
                    "n/a (reading a perf counter: {})",
                    io::Error::last_os_error()
                ));
            }
            total += v;
        }
        Ok(total)
    }
}

/// What one process and the driving thread cost over a span of traffic.
#[derive(Clone, Debug, Default)]
pub struct SpanCosts {
    /// This process (all threads) plus the device process, ns.
    pub total_ns: u64,
    /// The device process (our daemon, the relay's device), ns.
    pub device_ns: u64,
    pub device_wakeups: u64,
    pub device_preemptions: u64,
    /// Only in the counted pass.
    pub device_syscalls: Option<Result<u64, String>>,
    /// The thread that drives the guest, ns.
    pub driver_ns: u64,
}

/// Measures from `start` to `stop`: the bench process, a device process `pid`, the calling
/// thread, and (when `count_syscalls`) the device's system calls.
pub struct Span {
    pid: u32,
    own: u64,
    device: Snapshot,
    driver: u64,
    syscalls: Option<Result<(SyscallCounter, u64), String>>,
}

impl Span {
    pub fn start(pid: u32, count_syscalls: bool) -> Span {
        // Attach first: the counter's own setup is then not inside the CPU span.
        let syscalls = count_syscalls.then(|| {
            let c = SyscallCounter::attach(pid)?;
            let v = c.read()?;
            Ok((c, v))
        });
        Span {
            pid,
            own: process_self_cpu_ns(),
            device: snapshot(pid),
            driver: thread_cpu_ns(),
            syscalls,
        }
    }

    pub fn stop(self) -> SpanCosts {
        let driver = thread_cpu_ns() - self.driver;
        let own = process_self_cpu_ns().saturating_sub(self.own);
        let device = snapshot(self.pid);
        let device_ns = device.cpu_ns.saturating_sub(self.device.cpu_ns);
        SpanCosts {
            total_ns: own + device_ns,
            device_ns,
            device_wakeups: device.wakeups.saturating_sub(self.device.wakeups),
            device_preemptions: device.preemptions.saturating_sub(self.device.preemptions),
            device_syscalls: self
                .syscalls
                .map(|r| r.and_then(|(c, v0)| Ok(c.read()?.saturating_sub(v0)))),
            driver_ns: driver,
        }
    }
}
