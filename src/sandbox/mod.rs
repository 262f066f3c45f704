//! The sandbox: what the daemon may still do once its vhost-user socket is open.
//!
//! [`enter`] runs once, from [`crate::daemon::run`], after the vhost-user socket exists (bound,
//! inherited, or with `--fd` the relay's private connection made), after the notification
//! socket is connected, and before any other thread starts. In order:
//!
//! 1. [`broker`]: forks the connection broker, the only process that connects channel sockets
//!    from then on (the daemon asks it by channel type), and that re-reads `--channels-file`
//!    on a reload. Forking needs a single thread, which [`enter`] checks.
//! 2. [`caps`]: `PR_SET_NO_NEW_PRIVS`, then every capability set emptied.
//! 3. [`landlock`]: no file-system access except removing the daemon's own socket at shutdown;
//!    no TCP; abstract Unix sockets and signals scoped to the sandbox. A kernel without
//!    Landlock gets a warning, not an error.
//! 4. [`seccomp`]: the allow-list, on every thread (TSYNC), last because it forbids the calls
//!    the steps before it make; with `/dev/udmabuf` open, [`udmabuf`] widens its `ioctl`
//!    rule by exactly `UDMABUF_CREATE` on that fd.
//!
//! Threads started later inherit all of it. Any failure but a missing Landlock is an error
//! that stops the daemon (exit status 1). `--sandbox none` skips everything (and there is then
//! no broker: channel sockets are connected in the daemon).
//!
//! [`self_test`] is a hidden hook for the tests: `VUCD_SANDBOX_SELFTEST` makes the daemon try
//! forbidden things right after [`enter`] and log the outcomes.
//!
//! What each layer does and does not enforce, and why: docs/security.md.

pub mod broker;
pub mod caps;
pub mod landlock;
pub mod seccomp;
pub mod udmabuf;

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use log::{info, warn};

use crate::config::{ChannelSources, ChannelTable, SandboxMode, SeccompMode};
use crate::cross_domain::Connector;
pub use broker::connect_channel;

/// The daemon's [`Connector`]: [`connect_channel`], through the broker once the sandbox is
/// entered, directly otherwise.
#[derive(Debug, Clone, Copy, Default)]
pub struct BrokerConnector;

impl Connector for BrokerConnector {
    fn connect(&self, channel_type: u32, path: &Path) -> io::Result<std::os::fd::OwnedFd> {
        connect_channel(channel_type, path)
    }
}

/// The self-test hook's environment variable: a comma-separated list of `open:PATH`,
/// `connect:PATH` and `execve` (which tries to run a program that does not exist).
pub const SELFTEST_ENV: &str = "VUCD_SANDBOX_SELFTEST";

/// The program the `execve` self-test tries to run: one that cannot exist, so that the
/// attempt is harmless wherever the call is allowed.
const SELFTEST_EXECVE: &str = "/nonexistent/vhost-user-cross-domain-sandbox-self-test";

/// What to confine, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Plan<'a> {
    /// `--sandbox`.
    pub mode: SandboxMode,
    /// `--seccomp`.
    pub seccomp: SeccompMode,
    /// The channels the broker may connect: the table in force at start-up.
    pub channels: &'a ChannelTable,
    /// Where that table came from, for the broker's reloads.
    pub sources: &'a ChannelSources,
    /// The `--socket-path` socket, removed at shutdown.
    pub socket_path: Option<&'a Path>,
    /// The `/dev/udmabuf` fd opened at start-up (`--partial-pages`), on which the daemon may
    /// make `UDMABUF_CREATE` ([`udmabuf`]).
    pub udmabuf: Option<RawFd>,
}

/// Why the sandbox could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Other threads run already, so forking the broker is unsafe and Landlock would not
    /// cover them.
    #[error("the sandbox must be set up before any other thread starts, but {0} threads run")]
    Threads(usize),
    /// The broker could not be started.
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    /// `PR_SET_NO_NEW_PRIVS` failed.
    #[error("cannot set no-new-privileges: {0}")]
    NoNewPrivs(io::Error),
    /// Capabilities could not be dropped.
    #[error("cannot drop capabilities: {0}")]
    Capabilities(io::Error),
    /// The Landlock ruleset could not be built or applied.
    #[error(transparent)]
    Landlock(#[from] landlock::LandlockError),
    /// The seccomp filter could not be built or installed.
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
}

/// Number of threads of this process, if `/proc` says.
fn thread_count() -> Option<usize> {
    std::fs::read_dir("/proc/self/task")
        .ok()
        .map(|dir| dir.count())
}

/// Confines the process as `plan` says (see the module documentation). Call it once, from the
/// only thread of the process.
pub fn enter(plan: &Plan<'_>) -> Result<(), SandboxError> {
    if plan.mode == SandboxMode::None {
        warn!(
            "--sandbox none: no seccomp filter, no Landlock, capabilities kept; a compromised \
             daemon has all the access of its user"
        );
        return Ok(());
    }
    let threads = thread_count();
    match threads {
        Some(1) => {}
        Some(n) => return Err(SandboxError::Threads(n)),
        None => warn!("cannot count threads (/proc/self/task unreadable); assuming one"),
    }
    // SAFETY: the process has one thread (checked just above, or /proc cannot tell and the
    // documented contract of `daemon::run` holds: it runs before any thread is started).
    let broker = unsafe { broker::start(plan.channels, plan.sources, plan.seccomp) }?;
    caps::no_new_privs().map_err(SandboxError::NoNewPrivs)?;
    let dropped = caps::drop_all().map_err(SandboxError::Capabilities)?;
    let landlock = landlock::restrict_daemon(plan.socket_path)?;
    let mut allowed = seccomp::daemon_syscalls();
    if let Some(fd) = plan.udmabuf {
        udmabuf::allow_udmabuf(&mut allowed, fd);
    }
    let programs = seccomp::build(
        &allowed,
        seccomp::DAEMON_REFUSED,
        plan.seccomp,
        std::process::id(),
    )?;
    seccomp::install(&programs)?;

    let seccomp_text = match plan.seccomp {
        SeccompMode::Kill => "other calls kill the daemon",
        SeccompMode::Log => "other calls are logged by the kernel (--seccomp log)",
    };
    let landlock_text = match landlock.enforced {
        landlock::Enforced::Full => format!("Landlock ABI {}", landlock.abi),
        landlock::Enforced::Partial => format!(
            "Landlock ABI {} (what this kernel supports; see docs/security.md)",
            landlock.abi
        ),
        landlock::Enforced::None => "no Landlock".to_owned(),
    };
    let caps_text = if dropped.had_any {
        "capabilities dropped"
    } else {
        "no capabilities"
    };
    let broker_text = match broker {
        Some(pid) => format!("channel sockets connected by the broker (pid {pid})"),
        None => "no channels, no broker".to_owned(),
    };
    let udmabuf_text = match plan.udmabuf {
        Some(fd) => format!(", ioctl UDMABUF_CREATE on /dev/udmabuf (fd {fd})"),
        None => String::new(),
    };
    info!(
        "sandbox: seccomp allow-list of {} system calls{udmabuf_text} ({seccomp_text}); \
         {landlock_text}; no new privileges; {caps_text}; {broker_text}",
        seccomp::allowed_count(&allowed)
    );
    if landlock.enforced == landlock::Enforced::None {
        warn!(
            "this kernel has no Landlock (or it is disabled): the file system is not restricted \
             beyond what the seccomp filter allows"
        );
    }
    Ok(())
}

/// The hidden test hook: if [`SELFTEST_ENV`] is set, tries each action it lists and logs the
/// outcome (`sandbox self-test: open /etc/hostname: Permission denied (os error 13)`), then
/// returns. With `--seccomp kill` an `execve` kills the daemon.
pub fn self_test() {
    let Some(spec) = std::env::var_os(SELFTEST_ENV) else {
        return;
    };
    let spec = spec.to_string_lossy().into_owned();
    for item in spec.split(',').filter(|i| !i.is_empty()) {
        let (action, arg) = item.split_once(':').unwrap_or((item, ""));
        let outcome = match action {
            "open" => std::fs::File::open(arg).map(drop),
            "connect" => UnixStream::connect(arg).map(drop),
            "execve" => {
                info!("sandbox self-test: trying execve {SELFTEST_EXECVE}");
                execve_nonexistent()
            }
            _ => {
                warn!("sandbox self-test: unknown action '{item}'");
                continue;
            }
        };
        let shown = if action == "execve" {
            SELFTEST_EXECVE
        } else {
            arg
        };
        match outcome {
            Ok(()) => info!("sandbox self-test: {action} {shown}: allowed"),
            Err(e) => info!("sandbox self-test: {action} {shown}: {e}"),
        }
    }
}

fn execve_nonexistent() -> io::Result<()> {
    let path = CString::new(SELFTEST_EXECVE).map_err(io::Error::other)?;
    let argv = [path.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null()];
    // SAFETY: `path`, `argv` and `envp` are NUL-terminated and outlive the call. The program
    // does not exist, so where the call is allowed it fails and returns.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Err(io::Error::last_os_error())
}
