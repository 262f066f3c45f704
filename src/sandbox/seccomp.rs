//! The seccomp filters: which system calls the sandboxed daemon and its connection broker may
//! still make.
//!
//! The allow-lists are data, reviewed here: [`daemon_syscalls`] for the daemon (every thread:
//! the main thread, the signal thread, the vhost-user request thread, the vring worker, the
//! `--fd` relay threads) and [`broker_syscalls`] for the connection broker process. Each entry
//! names the system call, the argument conditions under which it is allowed (none: any
//! arguments), and who needs it. A second list per process names the calls that fail with an error instead of
//! killing the process, because code the daemon links may try them and copes with a refusal
//! ([`DAEMON_REFUSED`]; the broker has none).
//! Anything else is a violation: with `--seccomp kill` the kernel kills the whole process with
//! SIGSYS (`SECCOMP_RET_KILL_PROCESS`), with `--seccomp log` it logs the call (audit record
//! type 1326, visible in `dmesg` or the audit log, `syscall=` giving its number) and lets it
//! run.
//!
//! To extend a list: run the daemon (or the test suite) with `--seccomp log`, read the numbers
//! from the kernel log (`ausyscall NUMBER`, or the `SYS_` constants of the `libc` crate, give
//! the names), find out which code makes the call, and add an entry here with the narrowest
//! conditions that still work and a note saying who needs it. docs/security.md lists the same
//! entries for readers; a unit test checks that it names every one.
//!
//! Architectures: x86_64 and aarch64 (the ones `seccompiler` supports besides riscv64). Calls
//! that exist only on x86_64 (`open`, `readlink`, `unlink`, `epoll_wait`...) are listed under
//! `cfg(target_arch = "x86_64")`; aarch64 has only their `*at` forms.
//!
//! How the filters combine: up to three BPF programs are installed, and for each call the
//! kernel applies the most restrictive verdict. The allow-list program allows the listed calls
//! and the refused ones and kills (or logs) everything else; one program per errno value
//! refuses the refused calls and allows everything else. The refusal programs are
//! installed first, the allow-list last, so the `seccomp` call itself never needs to be
//! allowed. All are installed with `SECCOMP_FILTER_FLAG_TSYNC`, so every thread of the process
//! has them.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::config::SeccompMode;

/// A condition on one argument of a system call (all arguments compared as 32-bit values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    /// Argument `.0` equals `.1`.
    Eq(u8, u64),
    /// Argument `.0` has none of the bits of `.1` set.
    Clear(u8, u64),
    /// Argument `.0` has all of the bits of `.1` set.
    Set(u8, u64),
    /// Argument `.0` is the process's own id (filled in when the filter is built).
    OwnPid(u8),
}

/// When a listed system call is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// With any arguments.
    Always,
    /// When every condition holds.
    All(&'static [Arg]),
    /// When argument `.0` is one of `.1`.
    OneOf(u8, &'static [u64]),
    /// When every condition of one of the lists holds.
    AnyOf(&'static [&'static [Arg]]),
}

/// One entry of an allow-list.
#[derive(Debug, Clone, Copy)]
pub struct Syscall {
    /// The system call's name, as in `man 2`.
    pub name: &'static str,
    /// Its number on this architecture.
    pub nr: i64,
    /// The argument conditions.
    pub when: When,
    /// Who makes it, and why.
    pub who: &'static str,
}

/// A system call that fails with `errno` instead of being a violation.
#[derive(Debug, Clone, Copy)]
pub struct Refused {
    /// The system call's name.
    pub name: &'static str,
    /// Its number on this architecture.
    pub nr: i64,
    /// The error it fails with.
    pub errno: i32,
    /// Why it is refused rather than killed.
    pub why: &'static str,
}

const fn allow(name: &'static str, nr: i64, who: &'static str) -> Syscall {
    Syscall {
        name,
        nr,
        when: When::Always,
        who,
    }
}

const fn allow_if(name: &'static str, nr: i64, when: When, who: &'static str) -> Syscall {
    Syscall {
        name,
        nr,
        when,
        who,
    }
}

const PROT_EXEC: u64 = libc::PROT_EXEC as u64;
const CLONE_THREAD: u64 = libc::CLONE_THREAD as u64;
const AF_UNIX: u64 = libc::AF_UNIX as u64;
const AT_EMPTY_PATH: u64 = libc::AT_EMPTY_PATH as u64;
const SOL_SOCKET: u64 = libc::SOL_SOCKET as u64;
/// `open` flags that write or create: never set in the broker's `openat`.
const OPEN_WRITE_FLAGS: u64 =
    (libc::O_WRONLY | libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND) as u64;

/// `fcntl` commands the daemon uses.
const FCNTL_COMMANDS: &[u64] = &[
    // Non-blocking mode of received and created fds; access mode of received fds.
    libc::F_GETFL as u64,
    libc::F_SETFL as u64,
    // std checks that an fd is open before closing it (debug builds).
    libc::F_GETFD as u64,
    // `try_clone` of sockets and fds (std, vmm-sys-util).
    libc::F_DUPFD_CLOEXEC as u64,
    // Write seals of memory fds from host services (mapped read-only if sealed).
    libc::F_GET_SEALS as u64,
    // The buffer of read pipes of contexts with large rings (`ReadPipe::create_for_ring`).
    libc::F_SETPIPE_SZ as u64,
];

/// `ioctl` requests the daemon uses.
// The request type is `c_ulong` with glibc but `c_int` with musl; the cast serves both.
#[allow(clippy::unnecessary_cast)]
const IOCTL_REQUESTS: &[u64] = &[
    // `set_nonblocking` of std's Unix sockets, and of pipes (`cross_domain::io::set_nonblocking`).
    libc::FIONBIO as u64,
];

/// `prctl` options the daemon's threads use.
const PRCTL_OPTIONS: &[u64] = &[
    // std names every new thread (`signals`, `relay-to-vmm`, the vhost-user worker names).
    libc::PR_SET_NAME as u64,
];

/// The daemon's calls that fail with an error instead of being violations.
pub const DAEMON_REFUSED: &[Refused] = &[
    Refused {
        name: "clone3",
        nr: libc::SYS_clone3,
        errno: libc::ENOSYS,
        why: "glibc creates threads with clone3 and falls back to clone on ENOSYS; clone's \
              flags can be checked (clone3 passes them in memory, out of the filter's reach)",
    },
    #[cfg(target_arch = "x86_64")]
    Refused {
        name: "open",
        nr: libc::SYS_open,
        errno: libc::EACCES,
        why: "the daemon opens no file after start-up; a library that tries (a panic backtrace \
              reading the executable) gets an error instead of killing the daemon",
    },
    Refused {
        name: "openat",
        nr: libc::SYS_openat,
        errno: libc::EACCES,
        why: "as open",
    },
    Refused {
        name: "openat2",
        nr: libc::SYS_openat2,
        errno: libc::EACCES,
        why: "as open",
    },
    #[cfg(target_arch = "x86_64")]
    Refused {
        name: "creat",
        nr: libc::SYS_creat,
        errno: libc::EACCES,
        why: "as open",
    },
    Refused {
        name: "getcwd",
        nr: libc::SYS_getcwd,
        errno: libc::EACCES,
        why: "std's panic backtrace asks for the working directory to shorten file names, and \
              prints full ones without it",
    },
    Refused {
        name: "socket",
        nr: libc::SYS_socket,
        errno: libc::EACCES,
        why: "the daemon creates no socket after start-up (the broker connects channels, the \
              notification socket is connected before the sandbox); an attempt fails as \
              'permission denied'",
    },
    Refused {
        name: "connect",
        nr: libc::SYS_connect,
        errno: libc::EACCES,
        why: "as socket: the daemon connects to nothing after start-up",
    },
];

/// The broker's calls that fail with an error: none, everything outside its list is a
/// violation.
pub const BROKER_REFUSED: &[Refused] = &[];

/// The daemon's allow-list.
pub fn daemon_syscalls() -> Vec<Syscall> {
    let mut list =
        vec![
        // Memory.
        allow(
            "brk",
            libc::SYS_brk,
            "glibc malloc grows the main heap",
        ),
        allow_if(
            "mmap",
            libc::SYS_mmap,
            When::All(&[Arg::Clear(2, PROT_EXEC)]),
            "guest memory from SET_MEM_TABLE, memory fds mapped for the guest, malloc, thread \
             stacks; never executable",
        ),
        allow_if(
            "mprotect",
            libc::SYS_mprotect,
            When::All(&[Arg::Clear(2, PROT_EXEC)]),
            "thread stack guard pages, malloc arenas; never executable",
        ),
        allow("munmap", libc::SYS_munmap, "unmapping all of the above"),
        allow("mremap", libc::SYS_mremap, "realloc of large buffers (glibc)"),
        allow(
            "madvise",
            libc::SYS_madvise,
            "glibc returns freed memory and the stacks of ended threads (MADV_DONTNEED)",
        ),
        // Threads and synchronisation.
        allow_if(
            "clone",
            libc::SYS_clone,
            When::All(&[Arg::Set(0, CLONE_THREAD)]),
            "new threads: per VMM session the vhost-user request thread and vring worker, the \
             --fd relay threads; CLONE_THREAD required, so never a new process",
        ),
        allow(
            "set_robust_list",
            libc::SYS_set_robust_list,
            "glibc, in every new thread",
        ),
        allow("rseq", libc::SYS_rseq, "glibc, in every new thread"),
        allow(
            "futex",
            libc::SYS_futex,
            "mutexes, condition variables, thread joins (every thread)",
        ),
        allow(
            "rt_sigprocmask",
            libc::SYS_rt_sigprocmask,
            "glibc blocks signals while it creates a thread",
        ),
        allow(
            "sigaltstack",
            libc::SYS_sigaltstack,
            "std's stack-overflow guard in every new and ending thread",
        ),
        allow(
            "rt_sigaction",
            libc::SYS_rt_sigaction,
            "std checks the SIGSEGV/SIGBUS handlers in new threads; glibc installs its \
             internal signal handlers when the first thread is created",
        ),
        allow(
            "sched_getaffinity",
            libc::SYS_sched_getaffinity,
            "glibc malloc counts CPUs on a thread's first allocation (arena limit)",
        ),
        allow(
            "rt_sigreturn",
            libc::SYS_rt_sigreturn,
            "return from std's SIGSEGV/SIGBUS handler",
        ),
        allow_if(
            "prctl",
            libc::SYS_prctl,
            When::OneOf(0, PRCTL_OPTIONS),
            "PR_SET_NAME only: std names every new thread",
        ),
        allow("gettid", libc::SYS_gettid, "glibc and std thread bookkeeping"),
        allow("getpid", libc::SYS_getpid, "glibc (abort, raise)"),
        allow_if(
            "tgkill",
            libc::SYS_tgkill,
            When::All(&[Arg::OwnPid(0)]),
            "abort() raising SIGABRT in the daemon itself; no other process",
        ),
        allow("exit", libc::SYS_exit, "a thread ends"),
        allow("exit_group", libc::SYS_exit_group, "the daemon exits"),
        // File descriptors: messages, events, memory.
        allow(
            "read",
            libc::SYS_read,
            "eventfds (queue kicks, control events), the signalfd, host pipes and channel \
             sockets",
        ),
        allow(
            "write",
            libc::SYS_write,
            "log lines to stderr, eventfds (interrupts to the VMM), host pipes and channel \
             sockets",
        ),
        allow(
            "readv",
            libc::SYS_readv,
            "host pipe data read straight into guest memory (a guest's read pipes)",
        ),
        allow(
            "writev",
            libc::SYS_writev,
            "log lines to stderr (env_logger); guest memory written straight to host pipes",
        ),
        allow(
            "pread64",
            libc::SYS_pread64,
            "copying received memory that is not a page multiple into whole pages",
        ),
        allow(
            "pwrite64",
            libc::SYS_pwrite64,
            "copying received memory that is not a page multiple into whole pages",
        ),
        allow("close", libc::SYS_close, "every fd the daemon is done with"),
        allow(
            "recvmsg",
            libc::SYS_recvmsg,
            "vhost-user messages with fds, channel sockets, the --fd relay, broker replies",
        ),
        allow(
            "sendmsg",
            libc::SYS_sendmsg,
            "vhost-user replies and backend requests with fds, channel sockets, the --fd \
             relay, broker requests",
        ),
        allow(
            "sendto",
            libc::SYS_sendto,
            "status lines on the connected notification socket, requests to the broker",
        ),
        allow(
            "shutdown",
            libc::SYS_shutdown,
            "the --fd relay ends both directions of a session; a channel the daemon hangs up",
        ),
        allow_if(
            "getsockopt",
            libc::SYS_getsockopt,
            When::AnyOf(&[
                &[Arg::Eq(1, SOL_SOCKET), Arg::Eq(2, libc::SO_DOMAIN as u64)],
                &[Arg::Eq(1, SOL_SOCKET), Arg::Eq(2, libc::SO_TYPE as u64)],
            ]),
            "SO_DOMAIN and SO_TYPE only: the vhost crate checks the backend request socket \
             the VMM sends (SET_BACKEND_REQ_FD)",
        ),
        allow(
            "pipe2",
            libc::SYS_pipe2,
            "read pipes a guest asks for in SEND: the daemon keeps the read end and passes the \
             write end to the host service",
        ),
        allow(
            "accept4",
            libc::SYS_accept4,
            "accepting the next VMM on the listening socket",
        ),
        allow(
            "epoll_create1",
            libc::SYS_epoll_create1,
            "per VMM session: the device's epoll set and the vring worker's",
        ),
        allow(
            "epoll_ctl",
            libc::SYS_epoll_ctl,
            "adding and removing channel sockets, pipes, kicks",
        ),
        allow(
            "eventfd2",
            libc::SYS_eventfd2,
            "per VMM session: the worker's exit and control events",
        ),
        allow_if(
            "fcntl",
            libc::SYS_fcntl,
            When::OneOf(1, FCNTL_COMMANDS),
            "F_GETFL, F_SETFL, F_GETFD, F_DUPFD_CLOEXEC, F_GET_SEALS, F_SETPIPE_SZ only: fd \
             flags, duplicates, memfd seals, large read pipes",
        ),
        allow_if(
            "ioctl",
            libc::SYS_ioctl,
            When::OneOf(1, IOCTL_REQUESTS),
            "FIONBIO only: non-blocking mode of sockets (std) and pipes",
        ),
        allow(
            "fstat",
            libc::SYS_fstat,
            "classifying fds from host services (memory, pipe, socket...)",
        ),
        allow_if(
            "newfstatat",
            libc::SYS_newfstatat,
            When::All(&[Arg::Set(3, AT_EMPTY_PATH)]),
            "fstat as glibc implements it; AT_EMPTY_PATH required, so an open fd, never a path",
        ),
        allow(
            "lseek",
            libc::SYS_lseek,
            "the size of memory fds from host services",
        ),
        allow(
            "ftruncate",
            libc::SYS_ftruncate,
            "sizing the memfd of a blob created from image requirements; growing received \
             memory that is not a page multiple to whole pages",
        ),
        allow(
            "memfd_create",
            libc::SYS_memfd_create,
            "memory of blobs created from image requirements",
        ),
        allow(
            "getrandom",
            libc::SYS_getrandom,
            "HashMap keys (std), once per thread",
        ),
        allow(
            "clock_gettime",
            libc::SYS_clock_gettime,
            "timestamps and timeouts when the vDSO cannot answer",
        ),
        allow(
            "clock_nanosleep",
            libc::SYS_clock_nanosleep,
            "std::thread::sleep (the signal thread's back-off, shutdown waits)",
        ),
    ];
    #[cfg(target_arch = "x86_64")]
    list.extend([
        allow(
            "readlink",
            libc::SYS_readlink,
            "classifying fds from host services by their /proc/self/fd link (dma-buf, \
             eventfd)",
        ),
        allow(
            "unlink",
            libc::SYS_unlink,
            "removing the --socket-path socket at shutdown (Landlock limits where)",
        ),
        allow(
            "epoll_wait",
            libc::SYS_epoll_wait,
            "the vring worker's event loop, the device's epoll set",
        ),
    ]);
    #[cfg(target_arch = "aarch64")]
    list.extend([
        allow(
            "readlinkat",
            libc::SYS_readlinkat,
            "classifying fds from host services by their /proc/self/fd link (dma-buf, \
             eventfd)",
        ),
        allow(
            "unlinkat",
            libc::SYS_unlinkat,
            "removing the --socket-path socket at shutdown (Landlock limits where)",
        ),
        allow(
            "epoll_pwait",
            libc::SYS_epoll_pwait,
            "the vring worker's event loop, the device's epoll set (glibc's epoll_wait)",
        ),
    ]);
    list
}

/// The connection broker's allow-list.
pub fn broker_syscalls() -> Vec<Syscall> {
    vec![
        allow(
            "recvfrom",
            libc::SYS_recvfrom,
            "reading a request from the daemon",
        ),
        allow(
            "sendmsg",
            libc::SYS_sendmsg,
            "the reply, with the connected socket",
        ),
        allow_if(
            "socket",
            libc::SYS_socket,
            When::All(&[Arg::Eq(0, AF_UNIX)]),
            "AF_UNIX only: a socket for a channel",
        ),
        allow(
            "connect",
            libc::SYS_connect,
            "connecting it to the configured path",
        ),
        allow("close", libc::SYS_close, "closing it once sent"),
        allow_if(
            "openat",
            libc::SYS_openat,
            When::All(&[Arg::Clear(2, OPEN_WRITE_FLAGS)]),
            "read-only: the channels file on a reload (Landlock limits where)",
        ),
        allow("read", libc::SYS_read, "the channels file on a reload"),
        allow_if(
            "fcntl",
            libc::SYS_fcntl,
            When::OneOf(1, &[libc::F_GETFD as u64]),
            "F_GETFD only: std checks an fd is open before closing it (debug builds)",
        ),
        allow("write", libc::SYS_write, "log lines to stderr"),
        allow(
            "writev",
            libc::SYS_writev,
            "log lines to stderr (env_logger)",
        ),
        allow(
            "brk",
            libc::SYS_brk,
            "heap allocations (nix builds control messages, log lines)",
        ),
        allow_if(
            "mmap",
            libc::SYS_mmap,
            When::All(&[Arg::Clear(2, PROT_EXEC)]),
            "as brk; never executable",
        ),
        allow("munmap", libc::SYS_munmap, "as brk"),
        allow(
            "exit_group",
            libc::SYS_exit_group,
            "exiting when the daemon is gone",
        ),
    ]
}

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter could not be compiled.
    #[error("cannot build the seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    /// The kernel refused it.
    #[error("cannot install the seccomp filter: {0}")]
    Install(#[from] seccompiler::Error),
}

/// The BPF programs for `allowed` and `refused`, in the order to install them.
pub fn build(
    allowed: &[Syscall],
    refused: &[Refused],
    mode: SeccompMode,
    pid: u32,
) -> Result<Vec<BpfProgram>, SeccompError> {
    build_with(allowed, refused, mismatch_action(mode), pid)
}

fn mismatch_action(mode: SeccompMode) -> SeccompAction {
    match mode {
        SeccompMode::Kill => SeccompAction::KillProcess,
        SeccompMode::Log => SeccompAction::Log,
    }
}

pub(super) fn build_with(
    allowed: &[Syscall],
    refused: &[Refused],
    mismatch: SeccompAction,
    pid: u32,
) -> Result<Vec<BpfProgram>, SeccompError> {
    let arch = target_arch()?;
    let mut programs = Vec::new();
    // One refusal program per errno value.
    let mut errnos: Vec<i32> = refused.iter().map(|r| r.errno).collect();
    errnos.sort_unstable();
    errnos.dedup();
    for errno in errnos {
        let rules: BTreeMap<i64, Vec<SeccompRule>> = refused
            .iter()
            .filter(|r| r.errno == errno)
            .map(|r| (r.nr, Vec::new()))
            .collect();
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(errno as u32),
            arch,
        )?;
        programs.push(filter.try_into()?);
    }
    // The allow-list, with the refused calls let through to the refusal programs.
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for s in allowed {
        let entry = rules.entry(s.nr).or_default();
        match s.when {
            When::Always => entry.clear(),
            When::All(args) => entry.push(SeccompRule::new(
                args.iter()
                    .map(|&a| condition(a, pid))
                    .collect::<Result<_, _>>()?,
            )?),
            When::OneOf(index, values) => {
                for &v in values {
                    entry.push(SeccompRule::new(vec![condition(Arg::Eq(index, v), pid)?])?);
                }
            }
            When::AnyOf(lists) => {
                for args in lists {
                    entry.push(SeccompRule::new(
                        args.iter()
                            .map(|&a| condition(a, pid))
                            .collect::<Result<_, _>>()?,
                    )?);
                }
            }
        }
    }
    for r in refused {
        rules.insert(r.nr, Vec::new());
    }
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)?;
    programs.push(filter.try_into()?);
    Ok(programs)
}

fn condition(arg: Arg, pid: u32) -> Result<SeccompCondition, seccompiler::BackendError> {
    let (index, op, value) = match arg {
        Arg::Eq(i, v) => (i, SeccompCmpOp::Eq, v),
        Arg::Clear(i, mask) => (i, SeccompCmpOp::MaskedEq(mask), 0),
        Arg::Set(i, mask) => (i, SeccompCmpOp::MaskedEq(mask), mask),
        Arg::OwnPid(i) => (i, SeccompCmpOp::Eq, u64::from(pid)),
    };
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value)
}

fn target_arch() -> Result<TargetArch, seccompiler::BackendError> {
    TargetArch::try_from(std::env::consts::ARCH)
}

/// Installs `programs` (from [`build`]) on every thread of the process.
pub fn install(programs: &[BpfProgram]) -> Result<(), SeccompError> {
    for program in programs {
        seccompiler::apply_filter_all_threads(program)?;
    }
    Ok(())
}

/// Number of distinct system calls `allowed` lets through (refused ones not counted).
pub fn allowed_count(allowed: &[Syscall]) -> usize {
    let mut nrs: Vec<i64> = allowed.iter().map(|s| s.nr).collect();
    nrs.sort_unstable();
    nrs.dedup();
    nrs.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, OwnedFd};

    #[test]
    fn lists_are_consistent() {
        for (list, refused) in [
            (daemon_syscalls(), DAEMON_REFUSED),
            (broker_syscalls(), BROKER_REFUSED),
        ] {
            let mut names: Vec<&str> = list.iter().map(|s| s.name).collect();
            names.sort_unstable();
            let n = names.len();
            names.dedup();
            assert_eq!(n, names.len(), "a system call is listed twice");
            for s in &list {
                assert!(!s.who.is_empty(), "{}: say who needs it", s.name);
                assert!(
                    refused.iter().all(|r| r.nr != s.nr),
                    "{} is both allowed and refused",
                    s.name
                );
            }
        }
        assert!(build(&daemon_syscalls(), DAEMON_REFUSED, SeccompMode::Kill, 1).is_ok());
        assert!(build(&broker_syscalls(), BROKER_REFUSED, SeccompMode::Log, 1).is_ok());
    }

    #[test]
    fn documented_in_security_md() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/security.md"))
            .expect("read docs/security.md");
        for s in daemon_syscalls().iter().chain(broker_syscalls().iter()) {
            assert!(
                doc.contains(&format!("`{}`", s.name)),
                "docs/security.md does not list `{}`",
                s.name
            );
        }
        // The counts in the text are those of x86_64.
        if cfg!(target_arch = "x86_64") {
            let daemon = format!(
                "The daemon ({} system calls on x86_64)",
                allowed_count(&daemon_syscalls())
            );
            let broker = format!(
                "The broker ({} system calls)",
                allowed_count(&broker_syscalls())
            );
            assert!(doc.contains(&daemon), "docs/security.md lacks '{daemon}'");
            assert!(doc.contains(&broker), "docs/security.md lacks '{broker}'");
        }
        for r in DAEMON_REFUSED.iter().chain(BROKER_REFUSED) {
            assert!(
                doc.contains(&format!("`{}`", r.name)),
                "docs/security.md does not list `{}`",
                r.name
            );
        }
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    /// The daemon's filter on one thread, with violations failing with EPERM instead of
    /// killing the test process: the argument conditions and the refusals do what they say.
    #[test]
    fn argument_conditions_and_refusals() {
        let programs = build_with(
            &daemon_syscalls(),
            DAEMON_REFUSED,
            SeccompAction::Errno(libc::EPERM as u32),
            std::process::id(),
        )
        .unwrap();
        let outcome = std::thread::spawn(move || {
            for p in &programs {
                // Only this thread: no TSYNC.
                seccompiler::apply_filter(p).unwrap();
            }
            let mut seen = Vec::new();
            // SAFETY: plain system calls on values owned by this closure; every fd returned is
            // wrapped in an OwnedFd at once, and the mapping is unmapped before returning.
            unsafe {
                let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
                seen.push(("open", fd, errno()));
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                seen.push(("socket", fd, errno()));
                let fd = libc::memfd_create(c"t".as_ptr(), libc::MFD_CLOEXEC);
                seen.push(("memfd_create", fd, errno()));
                let memfd = OwnedFd::from_raw_fd(fd);
                let r = libc::ftruncate(fd, 4096);
                seen.push(("ftruncate", r, errno()));
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_SHARED,
                    fd,
                    0,
                );
                seen.push(("mmap exec", (p != libc::MAP_FAILED) as i32, errno()));
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd,
                    0,
                );
                seen.push(("mmap rw", (p != libc::MAP_FAILED) as i32, errno()));
                if p != libc::MAP_FAILED {
                    libc::munmap(p, 4096);
                }
                drop(memfd);
                // A new process: clone without CLONE_THREAD.
                let r = libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0);
                if r == 0 {
                    libc::_exit(0);
                }
                seen.push(("clone process", r as i32, errno()));
                let r = libc::syscall(libc::SYS_clone3, 0, 0);
                seen.push(("clone3", r as i32, errno()));
                let r = libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
                seen.push(("prctl dumpable", r, errno()));
                let r = libc::kill(1, 0);
                seen.push(("kill init", r, errno()));
                let r = libc::fcntl(0, libc::F_SETOWN, 0);
                seen.push(("fcntl setown", r, errno()));
            }
            seen
        })
        .join()
        .unwrap();
        let get = |name: &str| *outcome.iter().find(|(n, ..)| *n == name).unwrap();
        assert_eq!(get("open"), ("open", -1, libc::EACCES));
        assert_eq!(get("socket"), ("socket", -1, libc::EACCES));
        assert!(get("memfd_create").1 >= 0, "{outcome:?}");
        assert_eq!(get("ftruncate").1, 0, "{outcome:?}");
        assert_eq!(get("mmap exec"), ("mmap exec", 0, libc::EPERM));
        assert_eq!(get("mmap rw").1, 1, "{outcome:?}");
        assert_eq!(get("clone process"), ("clone process", -1, libc::EPERM));
        assert_eq!(get("clone3"), ("clone3", -1, libc::ENOSYS));
        assert_eq!(get("prctl dumpable"), ("prctl dumpable", -1, libc::EPERM));
        assert_eq!(get("kill init"), ("kill init", -1, libc::EPERM));
        assert_eq!(get("fcntl setown"), ("fcntl setown", -1, libc::EPERM));
    }
}
