//! The connection broker: a small process, forked before the sandbox, that connects channel
//! sockets for the daemon.
//!
//! Why: on kernels before Landlock ABI 9 nothing path-based can stop a process from connecting
//! to any Unix socket it has permission for (the session bus, an ssh or gpg agent, a container
//! engine's socket). A daemon taken over through a bug would inherit all of them. So the
//! sandboxed daemon may not `connect` at all (its seccomp filter refuses it), and asks the
//! broker instead, by channel *type*: the broker looks the path up in its own copy of the
//! channel table, connects, and sends back the socket. Whatever the daemon asks, it can only
//! ever get sockets connected to configured channels.
//!
//! Protocol, on a `SOCK_SEQPACKET` socketpair: a request is 8 bytes, `{channel_type: u32,
//! sequence: u32}` (little endian); the reply is 8 bytes, `{sequence: u32, errno: i32}`, with
//! the connected socket attached as `SCM_RIGHTS` when `errno` is 0. The daemon makes one
//! request at a time (under a mutex); the sequence number lets it discard a late reply to a
//! request it gave up on (after [`REPLY_TIMEOUT`]).
//!
//! The broker sandboxes itself too (no new privileges, no capabilities, Landlock with nothing
//! but connecting beneath the channel directories, and a short seccomp allow-list),
//! and exits when the daemon closes its end, or dies (`PR_SET_PDEATHSIG`).
//!
//! Without a sandbox (`--sandbox none`) there is no broker and [`connect_channel`] connects
//! directly.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use cross_domain_fdpass::{self as fdpass, CmsgBuf};
use log::{debug, error, warn};
use nix::errno::Errno;
use nix::sys::socket::{
    recv, send, sendmsg, setsockopt, socketpair, sockopt, AddressFamily, ControlMessage, MsgFlags,
    SockFlag, SockType,
};
use nix::sys::time::TimeVal;
use nix::unistd::{fork, ForkResult, Pid};

use super::{caps, landlock, seccomp};
use crate::config::{ChannelTable, SeccompMode};

/// How long the daemon waits for the broker's answer. The broker connects without blocking,
/// so an answer takes microseconds; this only bounds a broker that is stopped or gone.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// How the daemon connects channel sockets.
enum Connector {
    /// Through the broker, on this socket.
    Broker { sock: OwnedFd, sequence: u32 },
    /// Not at all: sandboxed without channels, so no broker.
    Refuse,
}

static CONNECTOR: OnceLock<Mutex<Connector>> = OnceLock::new();

/// Connects a new non-blocking, close-on-exec socket to the host service of `channel_type`,
/// which the channel table maps to `path`. Sandboxed, the broker does it; otherwise it is done
/// here.
pub fn connect_channel(channel_type: u32, path: &Path) -> io::Result<OwnedFd> {
    let result = match CONNECTOR.get() {
        None => connect_unix(path),
        Some(connector) => {
            let mut connector = connector.lock().unwrap_or_else(|p| p.into_inner());
            match &mut *connector {
                Connector::Refuse => Err(io::Error::from_raw_os_error(libc::EACCES)),
                Connector::Broker { sock, sequence } => {
                    *sequence = sequence.wrapping_add(1);
                    request(sock, channel_type, *sequence)
                }
            }
        }
    };
    result.map_err(|e| {
        if e.raw_os_error() == Some(libc::EAGAIN) {
            io::Error::other("the service's listen backlog is full")
        } else {
            e
        }
    })
}

/// A non-blocking, close-on-exec Unix stream socket connected to `path`.
pub fn connect_unix(path: &Path) -> io::Result<OwnedFd> {
    use nix::sys::socket::{connect, socket, UnixAddr};
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    connect(fd.as_raw_fd(), &addr)?;
    Ok(fd)
}

fn request(sock: &OwnedFd, channel_type: u32, sequence: u32) -> io::Result<OwnedFd> {
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&channel_type.to_le_bytes());
    msg[4..].copy_from_slice(&sequence.to_le_bytes());
    send(sock.as_raw_fd(), &msg, MsgFlags::MSG_NOSIGNAL)
        .map_err(|e| broker_gone(io::Error::from(e)))?;
    // A reply carries at most one socket.
    let mut cmsg = CmsgBuf::new(1);
    loop {
        let mut reply = [0u8; 8];
        let mut fds = Vec::new();
        // Blocking, up to the socket's receive timeout (REPLY_TIMEOUT), which ends in EAGAIN.
        let msg = match fdpass::recv(
            sock.as_fd(),
            &mut reply,
            &mut fds,
            &mut cmsg,
            fdpass::Wait::Block,
        ) {
            Ok(msg) => msg,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the connection broker did not answer",
                ))
            }
            Err(e) => return Err(broker_gone(e)),
        };
        // More descriptors than a reply carries (the kernel closed the rest): not an answer
        // from our broker.
        if msg.fds_truncated {
            return Err(io::Error::from(Errno::ENOBUFS));
        }
        let len = msg.len;
        if len == 0 {
            return Err(broker_gone(io::Error::from(io::ErrorKind::UnexpectedEof)));
        }
        if len != reply.len() {
            return Err(io::Error::other(
                "malformed reply from the connection broker",
            ));
        }
        let got = u32::from_le_bytes(reply[..4].try_into().unwrap_or_default());
        let errno = i32::from_le_bytes(reply[4..].try_into().unwrap_or_default());
        if got != sequence {
            // A late answer to a request that timed out; its socket (if any) is dropped.
            debug!("discarding a stale reply from the connection broker");
            continue;
        }
        return match (errno, fds.pop()) {
            (0, Some(fd)) => Ok(fd),
            (0, None) => Err(io::Error::other("the connection broker sent no socket")),
            (errno, _) => Err(io::Error::from_raw_os_error(errno)),
        };
    }
}

fn broker_gone(e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("the connection broker is gone ({e})"))
}

/// Errors starting the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The socketpair, its timeout, or the fork failed.
    #[error("cannot start the connection broker: {0}")]
    Start(io::Error),
}

/// Forks the broker for `channels` and routes [`connect_channel`] through it; with no
/// channels, makes [`connect_channel`] refuse instead. Returns the broker's pid.
///
/// # Safety
///
/// The process must have a single thread: the child of a fork runs only the calling thread,
/// and would deadlock on any lock another thread held.
pub unsafe fn start(
    channels: &ChannelTable,
    seccomp: SeccompMode,
) -> Result<Option<Pid>, BrokerError> {
    if channels.is_empty() {
        let _ = CONNECTOR.set(Mutex::new(Connector::Refuse));
        return Ok(None);
    }
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| BrokerError::Start(e.into()))?;
    let timeout = TimeVal::new(REPLY_TIMEOUT.as_secs() as _, 0);
    setsockopt(&ours, sockopt::ReceiveTimeout, &timeout)
        .map_err(|e| BrokerError::Start(e.into()))?;
    let parent = Pid::this();
    // SAFETY: the caller guarantees a single thread; the child only runs `child_main`, which
    // never returns.
    match unsafe { fork() }.map_err(|e| BrokerError::Start(e.into()))? {
        ForkResult::Child => {
            drop(ours);
            child_main(theirs, channels, parent, seccomp)
        }
        ForkResult::Parent { child } => {
            drop(theirs);
            let _ = CONNECTOR.set(Mutex::new(Connector::Broker {
                sock: ours,
                sequence: 0,
            }));
            Ok(Some(child))
        }
    }
}

/// The broker process: set up, serve, and `_exit` (never run the parent's exit handlers or
/// destructors, whose state this copy only shares by accident of the fork).
fn child_main(sock: OwnedFd, channels: &ChannelTable, parent: Pid, seccomp: SeccompMode) -> ! {
    let code = match setup(&sock, channels, parent, seccomp) {
        Ok(()) => serve(&sock, channels),
        Err(e) => {
            error!("connection broker: {e}");
            1
        }
    };
    // SAFETY: _exit ends the process at once; nothing runs after it.
    unsafe { libc::_exit(code) }
}

fn setup(
    sock: &OwnedFd,
    channels: &ChannelTable,
    parent: Pid,
    seccomp_mode: SeccompMode,
) -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG and PR_SET_NAME take an integer and a NUL-terminated string.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        libc::prctl(
            libc::PR_SET_NAME,
            c"vucd-broker".as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        );
    }
    // The daemon may have died before PR_SET_PDEATHSIG took effect.
    if nix::unistd::getppid() != parent {
        return Err(io::Error::other("the daemon is already gone"));
    }
    // The daemon blocks SIGTERM and SIGINT to read them from a signalfd, which the broker does
    // not have: let them end the broker as they would any process.
    nix::sys::signal::SigSet::all()
        .thread_unblock()
        .map_err(io::Error::from)?;
    close_other_fds(sock.as_raw_fd())?;
    caps::no_new_privs()?;
    caps::drop_all()?;
    let (outcome, missing) =
        landlock::restrict_broker(channels.iter().map(|(_, p)| p)).map_err(io::Error::other)?;
    if outcome.abi >= 9 {
        for dir in missing {
            warn!(
                "connection broker: {dir} does not exist, so Landlock cannot allow connecting \
                 to sockets beneath it; channels there will fail until the daemon restarts"
            );
        }
    }
    let programs = seccomp::build(
        &seccomp::broker_syscalls(),
        seccomp::BROKER_REFUSED,
        seccomp_mode,
        std::process::id(),
    )
    .map_err(io::Error::other)?;
    seccomp::install(&programs).map_err(io::Error::other)?;
    Ok(())
}

/// Closes every descriptor but stdin, stdout, stderr and `keep`: the broker must not hold the
/// VMM's socket, the listening socket or anything else the daemon has open.
fn close_other_fds(keep: RawFd) -> io::Result<()> {
    let keep = keep as libc::c_uint;
    // `keep` is below 3 only if the daemon was started with stdio closed.
    let ranges = [
        (3, keep.saturating_sub(1)),
        ((keep + 1).max(3), libc::c_uint::MAX),
    ];
    for (first, last) in ranges {
        if first > last {
            continue;
        }
        // SAFETY: close_range takes integers. The descriptors it closes belong to the parent's
        // objects, copied by fork; this process never uses or drops those objects (it ends in
        // `_exit`).
        let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOSYS) {
                return Err(e);
            }
            // Linux before 5.9: one by one, up to the descriptor limit.
            let mut rlim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes the struct it is given.
            let limit = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlim) } == 0 {
                rlim.rlim_cur.min(u64::from(libc::c_uint::MAX)) as libc::c_uint
            } else {
                1 << 20
            };
            for fd in first..=last.min(limit) {
                // SAFETY: as above; EBADF for descriptors that are not open is ignored.
                unsafe { libc::close(fd as RawFd) };
            }
        }
    }
    Ok(())
}

/// Answers requests until the daemon closes its end. Returns the exit status.
fn serve(sock: &OwnedFd, channels: &ChannelTable) -> i32 {
    loop {
        let mut msg = [0u8; 8];
        let len = match recv(sock.as_raw_fd(), &mut msg, MsgFlags::empty()) {
            Ok(0) => return 0,
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                error!("connection broker: reading a request: {e}");
                return 1;
            }
        };
        let channel_type = u32::from_le_bytes(msg[..4].try_into().unwrap_or_default());
        let sequence = u32::from_le_bytes(msg[4..].try_into().unwrap_or_default());
        let result = if len != msg.len() {
            Err(libc::EINVAL)
        } else {
            match channels.get(channel_type) {
                None => Err(libc::ENOENT),
                Some(path) => connect_unix(path).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO)),
            }
        };
        let mut reply = [0u8; 8];
        reply[..4].copy_from_slice(&sequence.to_le_bytes());
        let errno = result.as_ref().err().copied().unwrap_or(0);
        reply[4..].copy_from_slice(&errno.to_le_bytes());
        let iov = [IoSlice::new(&reply)];
        let fds = [result.as_ref().map(|fd| fd.as_raw_fd()).unwrap_or(-1)];
        let with_fd = [ControlMessage::ScmRights(&fds)];
        let cmsgs: &[ControlMessage<'_>] = if result.is_ok() { &with_fd } else { &[] };
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(_) => {}
            Err(Errno::EPIPE) | Err(Errno::ECONNRESET) => return 0,
            Err(e) => {
                error!("connection broker: sending a reply: {e}");
                return 1;
            }
        }
        // `result` (the connected socket) is closed here: the daemon has its copy.
    }
}
