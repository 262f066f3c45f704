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
//! With `--channels-file`, the broker is also the one that re-reads the file on a reload
//! (SIGHUP): the daemon may not open files, and must not be the one to tell the broker what
//! it may connect to. So the daemon asks the broker to reload; the broker reads the file,
//! builds the new table from it and the command line's channels, checks that every path lies
//! beneath the directories it was allowed to connect to at start-up ([`startup_dirs_rule`]),
//! and then either puts the table in force for its own connections and sends the file's text
//! back, from which the daemon builds the same table, or keeps its table and sends back why.
//!
//! Protocol, on a `SOCK_SEQPACKET` socketpair (little endian): a request is 12 bytes, `{op:
//! u32, channel_type: u32, sequence: u32}`, `op` [`OP_CONNECT`] or [`OP_RELOAD`] (whose
//! `channel_type` is 0). The reply starts with 8 bytes, `{sequence: u32, errno: i32}`: to a
//! connect, with the connected socket attached as `SCM_RIGHTS` when `errno` is 0; to a reload,
//! followed by the file's text when `errno` is 0 and by the reason (UTF-8) otherwise. The daemon
//! makes one request at a time (under a mutex); the sequence number lets it discard a late
//! reply to a request it gave up on (after [`REPLY_TIMEOUT`]).
//!
//! The broker sandboxes itself too (no new privileges, no capabilities, Landlock with nothing
//! but connecting beneath the channel directories and reading beneath the directory of the
//! channels file, and a short seccomp allow-list), and exits when the daemon closes its end, or
//! dies (`PR_SET_PDEATHSIG`).
//!
//! Without a sandbox (`--sandbox none`) there is no broker: [`connect_channel`] connects
//! directly, and the daemon reads the channels file itself.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use cross_domain_fdpass::{self as fdpass, CmsgBuf};
use log::{debug, error, info, warn};
use nix::errno::Errno;
use nix::sys::signal::{SigHandler, Signal};
use nix::sys::socket::{
    recv, send, sendmsg, setsockopt, socketpair, sockopt, AddressFamily, ControlMessage, MsgFlags,
    SockFlag, SockType,
};
use nix::sys::time::TimeVal;
use nix::unistd::{fork, ForkResult, Pid};

use super::{caps, landlock, seccomp};
use crate::config::{ChannelSources, ChannelTable, SeccompMode, MAX_CHANNELS_FILE};

/// How long the daemon waits for the broker's answer. The broker connects without blocking,
/// and reads a small file on a reload, so an answer takes microseconds to milliseconds; this
/// only bounds a broker that is stopped or gone.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Request: connect the channel type's socket.
pub const OP_CONNECT: u32 = 1;
/// Request: re-read the channels file.
pub const OP_RELOAD: u32 = 2;

/// Length of a request.
const REQUEST_LEN: usize = 12;
/// Length of a reply's header.
const REPLY_HEADER_LEN: usize = 8;
/// Longest reason the broker sends for a refused reload.
const MAX_REASON: usize = 4096;

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
                    let mut buf = [0u8; REPLY_HEADER_LEN];
                    let reply = request(sock, OP_CONNECT, channel_type, *sequence, &mut buf)?;
                    match (reply.errno, reply.fd) {
                        _ if reply.len != REPLY_HEADER_LEN => Err(malformed()),
                        (0, Some(fd)) => Ok(fd),
                        (0, None) => Err(io::Error::other("the connection broker sent no socket")),
                        (errno, _) => Err(io::Error::from_raw_os_error(errno)),
                    }
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

/// The broker's answer to a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// There is no broker (no sandbox): the daemon reads the channels file itself.
    NoBroker,
    /// The broker re-read the file and connects by the table it gives from now on; this is the
    /// text it read, from which the daemon builds the same table.
    Reloaded(Vec<u8>),
    /// The broker kept its table, for this reason (the file and line, and what is wrong).
    Refused(String),
}

/// Asks the broker to re-read the channels file (see the module documentation).
pub fn reload() -> io::Result<Reload> {
    let Some(connector) = CONNECTOR.get() else {
        return Ok(Reload::NoBroker);
    };
    let mut connector = connector.lock().unwrap_or_else(|p| p.into_inner());
    let Connector::Broker { sock, sequence } = &mut *connector else {
        return Err(io::Error::other(
            "the sandbox started no connection broker, which alone may read the channels file",
        ));
    };
    *sequence = sequence.wrapping_add(1);
    let mut buf = vec![0u8; REPLY_HEADER_LEN + MAX_CHANNELS_FILE.max(MAX_REASON)];
    let reply = request(sock, OP_RELOAD, 0, *sequence, &mut buf)?;
    let payload = &buf[REPLY_HEADER_LEN..reply.len];
    match reply.errno {
        0 => Ok(Reload::Reloaded(payload.to_vec())),
        libc::EINVAL => Ok(Reload::Refused(
            String::from_utf8_lossy(payload).into_owned(),
        )),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// A reply from the broker to the request just made.
struct Reply {
    /// 0, or the error of the request.
    errno: i32,
    /// Length of the reply (header and payload) in the caller's buffer.
    len: usize,
    /// The socket attached.
    fd: Option<OwnedFd>,
}

fn malformed() -> io::Error {
    io::Error::other("malformed reply from the connection broker")
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

/// Sends one request and waits for its reply, which is received into `reply` (header and
/// payload; a longer one is cut to its length).
fn request(
    sock: &OwnedFd,
    op: u32,
    channel_type: u32,
    sequence: u32,
    reply: &mut [u8],
) -> io::Result<Reply> {
    let mut msg = [0u8; REQUEST_LEN];
    msg[..4].copy_from_slice(&op.to_le_bytes());
    msg[4..8].copy_from_slice(&channel_type.to_le_bytes());
    msg[8..].copy_from_slice(&sequence.to_le_bytes());
    send(sock.as_raw_fd(), &msg, MsgFlags::MSG_NOSIGNAL)
        .map_err(|e| broker_gone(io::Error::from(e)))?;
    // A reply carries at most one socket.
    let mut cmsg = CmsgBuf::new(1);
    loop {
        let mut fds = Vec::new();
        // Blocking, up to the socket's receive timeout (REPLY_TIMEOUT), which ends in EAGAIN.
        let msg = match fdpass::recv(
            sock.as_fd(),
            reply,
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
        let len = msg.len.min(reply.len());
        if len == 0 {
            return Err(broker_gone(io::Error::from(io::ErrorKind::UnexpectedEof)));
        }
        if len < REPLY_HEADER_LEN {
            return Err(malformed());
        }
        let got = u32::from_le_bytes(reply[..4].try_into().unwrap_or_default());
        let errno = i32::from_le_bytes(reply[4..8].try_into().unwrap_or_default());
        if got != sequence {
            // A late answer to a request that timed out (a longer one is cut to the buffer);
            // its socket (if any) is dropped.
            debug!("discarding a stale reply from the connection broker");
            continue;
        }
        return Ok(Reply {
            errno,
            len,
            fd: fds.pop(),
        });
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

/// Forks the broker for `channels`, the table in force at start-up, which `sources` gave, and
/// routes [`connect_channel`] and [`reload`] through it; with no channels and no channels file,
/// makes [`connect_channel`] refuse instead. Returns the broker's pid.
///
/// # Safety
///
/// The process must have a single thread: the child of a fork runs only the calling thread,
/// and would deadlock on any lock another thread held.
pub unsafe fn start(
    channels: &ChannelTable,
    sources: &ChannelSources,
    seccomp: SeccompMode,
) -> Result<Option<Pid>, BrokerError> {
    if channels.is_empty() && sources.file().is_none() {
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
            let state = State {
                table: channels.clone(),
                sources: sources.clone(),
                dirs: startup_dirs(channels),
            };
            child_main(theirs, state, parent, seccomp)
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

/// What the broker knows.
struct State {
    /// The table it connects by.
    table: ChannelTable,
    /// Where a reload takes the table from.
    sources: ChannelSources,
    /// The directories it may connect beneath ([`startup_dirs`]).
    dirs: Vec<PathBuf>,
}

/// The directories of the channel sockets of `channels`, the table in force at start-up, each
/// once: those the broker's Landlock ruleset lets it connect beneath.
pub fn startup_dirs(channels: &ChannelTable) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = channels
        .iter()
        .map(|(_, p)| landlock::dir_of(p).to_path_buf())
        .collect();
    dirs.sort_unstable();
    dirs.dedup();
    dirs
}

/// The rule a reloaded path must pass with the sandbox on: its socket lies beneath one of
/// `dirs` (the [`startup_dirs`]), named without `..`. Landlock rules are fixed when the broker
/// starts, and from ABI 9 on they are what lets it connect at all; the rule is applied on every
/// kernel, so that a channels file that reloads on one host reloads on all.
pub fn startup_dirs_rule(dirs: &[PathBuf]) -> impl Fn(&Path) -> Result<(), String> + '_ {
    move |path| {
        let dir = landlock::dir_of(path);
        let climbs = path.components().any(|c| c == Component::ParentDir);
        if !climbs && dirs.iter().any(|allowed| dir.starts_with(allowed)) {
            return Ok(());
        }
        if climbs {
            return Err(
                "the path contains '..': with the sandbox on, a reload must name the socket \
                 without it, beneath a directory of the channels configured at start-up"
                    .to_owned(),
            );
        }
        let allowed = if dirs.is_empty() {
            "none: no channel was configured at start-up".to_owned()
        } else {
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        Err(format!(
            "{} is not beneath a directory of the channels configured at start-up ({allowed}); \
             with the sandbox on, the connection broker may only connect there until the daemon \
             restarts",
            dir.display()
        ))
    }
}

/// The broker process: set up, serve, and `_exit` (never run the parent's exit handlers or
/// destructors, whose state this copy only shares by accident of the fork).
fn child_main(sock: OwnedFd, mut state: State, parent: Pid, seccomp: SeccompMode) -> ! {
    let code = match setup(&sock, &state, parent, seccomp) {
        Ok(()) => serve(&sock, &mut state),
        Err(e) => {
            error!("connection broker: {e}");
            1
        }
    };
    // SAFETY: _exit ends the process at once; nothing runs after it.
    unsafe { libc::_exit(code) }
}

fn setup(sock: &OwnedFd, state: &State, parent: Pid, seccomp_mode: SeccompMode) -> io::Result<()> {
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
    // SIGHUP and SIGUSR1 are requests to the daemon (reload, counters); one sent to the whole
    // service (`systemctl kill` without --kill-whom=main) must not end the broker. Ignored
    // before anything is unblocked, so that one already pending is discarded, not delivered.
    for signal in [Signal::SIGHUP, Signal::SIGUSR1] {
        // SAFETY: ignoring a signal installs no handler, so no code runs in signal context.
        unsafe { nix::sys::signal::signal(signal, SigHandler::SigIgn) }.map_err(io::Error::from)?;
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
        landlock::restrict_broker(&state.dirs, state.sources.file()).map_err(io::Error::other)?;
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
fn serve(sock: &OwnedFd, state: &mut State) -> i32 {
    loop {
        let mut msg = [0u8; REQUEST_LEN];
        let len = match recv(sock.as_raw_fd(), &mut msg, MsgFlags::empty()) {
            Ok(0) => return 0,
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                error!("connection broker: reading a request: {e}");
                return 1;
            }
        };
        let word = |i: usize| u32::from_le_bytes(msg[i..i + 4].try_into().unwrap_or_default());
        let (op, channel_type, sequence) = (word(0), word(4), word(8));
        // (errno, the socket to attach, the payload)
        let (errno, fd, payload) = match op {
            _ if len != msg.len() => (libc::EINVAL, None, Vec::new()),
            OP_CONNECT => match connect_by_type(&state.table, channel_type) {
                Ok(fd) => (0, Some(fd), Vec::new()),
                Err(errno) => (errno, None, Vec::new()),
            },
            OP_RELOAD => match reload_table(state) {
                Ok(text) => (0, None, text),
                Err(reason) => (libc::EINVAL, None, reason),
            },
            _ => (libc::EINVAL, None, Vec::new()),
        };
        let mut header = [0u8; REPLY_HEADER_LEN];
        header[..4].copy_from_slice(&sequence.to_le_bytes());
        header[4..].copy_from_slice(&errno.to_le_bytes());
        let iov = [IoSlice::new(&header), IoSlice::new(&payload)];
        let raw = fd.as_ref().map(AsRawFd::as_raw_fd);
        let raw_fds = raw.as_slice();
        let with_fd = [ControlMessage::ScmRights(raw_fds)];
        let cmsgs: &[ControlMessage<'_>] = if raw.is_some() { &with_fd } else { &[] };
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(_) => {}
            Err(Errno::EPIPE) | Err(Errno::ECONNRESET) => return 0,
            Err(e) => {
                error!("connection broker: sending a reply: {e}");
                return 1;
            }
        }
        // `fd` (the connected socket) is closed here: the daemon has its copy.
    }
}

fn connect_by_type(table: &ChannelTable, channel_type: u32) -> Result<OwnedFd, i32> {
    match table.get(channel_type) {
        None => Err(libc::ENOENT),
        Some(path) => connect_unix(path).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

/// Re-reads the channels file; on success the new table is the broker's, and the file's text
/// is returned, otherwise the reason (at most [`MAX_REASON`] bytes).
fn reload_table(state: &mut State) -> Result<Vec<u8>, Vec<u8>> {
    let outcome = match state.sources.file() {
        None => Err("there is no channels file to reload".to_owned()),
        Some(file) => crate::reload::read_channels_file(file)
            .map_err(|e| e.to_string())
            .and_then(|text| {
                let table = state
                    .sources
                    .table(&text, startup_dirs_rule(&state.dirs))
                    .map_err(|e| e.to_string())?;
                Ok((text, table))
            }),
    };
    match outcome {
        Ok((text, table)) => {
            info!(
                "connection broker: channel table reloaded ({} channels)",
                table.len()
            );
            state.table = table;
            Ok(text)
        }
        Err(mut reason) => {
            if reason.len() > MAX_REASON {
                let mut end = MAX_REASON;
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                reason.truncate(end);
            }
            Err(reason.into_bytes())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reloaded_paths_stay_beneath_the_start_up_directories() {
        let mut t = ChannelTable::new();
        t.add_channel_arg("1:/run/user/1000/wayland-0").unwrap();
        t.add_channel_arg("2:/run/portal.sock").unwrap();
        t.add_channel_arg("3:/run/user/1000/other").unwrap();
        let dirs = startup_dirs(&t);
        assert_eq!(
            dirs,
            [PathBuf::from("/run"), PathBuf::from("/run/user/1000")]
        );
        let rule = startup_dirs_rule(&dirs);
        assert!(rule(Path::new("/run/new.sock")).is_ok());
        assert!(rule(Path::new("/run/vm1/agent.sock")).is_ok());
        let e = rule(Path::new("/srv/agent.sock")).unwrap_err();
        assert!(
            e.starts_with(
                "/srv is not beneath a directory of the channels configured at start-up (/run, \
                 /run/user/1000)"
            ),
            "{e}"
        );
        // Lexically beneath, but not really.
        let e = rule(Path::new("/run/../srv/agent.sock")).unwrap_err();
        assert!(e.starts_with("the path contains '..'"), "{e}");
        // A prefix of a name is not a directory above it.
        assert!(rule(Path::new("/running/x.sock")).is_err());
        let none = startup_dirs_rule(&[]);
        assert!(none(Path::new("/run/x.sock"))
            .unwrap_err()
            .contains("(none: no channel was configured at start-up)"));
    }
}
