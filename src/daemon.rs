//! The daemon's life cycle: where VMM connections come from, one session per connection,
//! readiness notification and shutdown. The process lives as long as its service unit; one
//! process serves one VM.
//!
//! This module owns:
//! - the serve loops. On a listening socket (`--socket-path`, or the one socket activation
//!   passes) the daemon serves one VMM at a time and, after it disconnects, drops all device
//!   state and accepts the next. On a socket already connected to the VMM (`--fd N`, or socket
//!   activation with `Accept=yes`) it serves that one session through [`crate::relay`] and
//!   returns when the VMM disconnects;
//! - one session: a fresh [`Backend`] and `VhostUserDaemon`, torn down when it ends;
//! - readiness: `READY=1` once the socket listens (or the single session is being served), and
//!   status lines, through [`crate::systemd`];
//! - the order of start-up: the socket first, then the sandbox ([`crate::sandbox`]), then
//!   threads (see [`run`]);
//! - reload: SIGHUP, read by the same thread, re-reads `--channels-file` ([`crate::reload`]);
//!   SIGUSR1 logs the per-channel counters ([`crate::counters`]);
//! - shutdown: SIGTERM and SIGINT are blocked in every thread and read from a signalfd by a
//!   dedicated thread, which sends `STOPPING=1`, stops accepting (removes the `--socket-path`
//!   socket and its lock file, see [`crate::socket_path`]), asks the current session's backend to complete every pending fence and close its
//!   channels ([`Backend::quiesce`], at most [`QUIESCE_TIMEOUT`]), and exits the process with
//!   status 0. Exiting closes the vhost-user connection, guest memory and everything else.
//!
//! [`run`] therefore owns the process: call it once, from `main`, before starting any other
//! thread (the signal mask is inherited from the calling thread).

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use log::{debug, error, info, warn};
use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserDaemon, VringEpollHandler};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use crate::config::{Config, Listen};
use crate::device::{Backend, HOST_EVENT, SHUTDOWN_EVENT};
use crate::relay::{self, Relay, RelayError};
use crate::reload::Reloader;
use crate::socket_path::{self, SocketClaim, SocketPathError};
use crate::{counters, sandbox, systemd};

/// How long shutdown waits for the current session to complete its pending fences and close
/// its channels before the process exits anyway.
pub const QUIESCE_TIMEOUT: Duration = Duration::from_millis(500);

/// Errors that end the daemon.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be created at `--socket-path` (a configuration error: the path is
    /// in use, not a socket, in a missing directory…).
    #[error(transparent)]
    SocketPath(#[from] SocketPathError),
    /// An inherited socket could not be used.
    #[error("cannot use {what}: {source}")]
    Socket { what: String, source: io::Error },
    /// Signal handling could not be set up.
    #[error("cannot set up SIGTERM/SIGINT handling: {0}")]
    Signals(Errno),
    /// The signal thread could not be started.
    #[error("cannot start the signal thread: {0}")]
    SignalThread(io::Error),
    /// The private socket behind `--fd` could not be created.
    #[error("cannot create the private socket for the relayed session: {0}")]
    PrivateSocket(io::Error),
    /// Device state could not be set up.
    #[error("cannot create the device: {0}")]
    Device(io::Error),
    /// The vhost-user library failed outside a single session.
    #[error("vhost-user: {0}")]
    VhostUser(vhost_user_backend::Error),
    /// The only session (`--fd`) ended with an error rather than a disconnect.
    #[error("the session ended with an error: {0}")]
    Session(vhost_user_backend::Error),
    /// The relay of the only session (`--fd`) ended it because of a malformed message or an
    /// I/O error.
    #[error("the session ended with an error: {0}")]
    Relay(RelayError),
    /// The sandbox could not be set up (`--sandbox none` runs without one).
    #[error("cannot set up the sandbox: {0}")]
    Sandbox(sandbox::SandboxError),
}

/// Where the VMM's connection comes from, opened before the sandbox.
enum Endpoint {
    /// A listening socket (`--socket-path`, or socket activation); `place` names it in logs.
    /// `claim` is the `--socket-path` the daemon created, removed at shutdown.
    Listener {
        listener: Listener,
        place: String,
        claim: Option<SocketClaim>,
    },
    /// A socket connected to the VMM (`--fd`, or socket activation with `Accept=yes`), with
    /// the private connection its relay serves the session on.
    Connected {
        vmm: UnixStream,
        private: UnixListener,
        daemon_end: UnixStream,
        origin: String,
    },
}

impl Endpoint {
    fn open(config: &Config) -> Result<Endpoint, Error> {
        match &config.listen {
            Listen::Path(path) => {
                let group = config.socket_group.as_ref();
                let (claim, listener) = socket_path::claim(path, group)?;
                let place = path.display().to_string();
                let access = match group {
                    Some(g) => format!(", group {} (gid {}), mode 0660", g.name, g.gid),
                    None => String::new(),
                };
                info!(
                    "listening on {place} for the VMM's vhost-user connection (lock file {}{access})",
                    claim.lock_path().display()
                );
                Ok(Endpoint::Listener {
                    listener: Listener::from(listener),
                    place,
                    claim: Some(claim),
                })
            }
            listen @ Listen::Listener { fd, .. } => {
                let what = listen.to_string();
                let listener = fd
                    .try_clone()
                    .map(UnixListener::from)
                    .and_then(|l| l.set_nonblocking(false).map(|()| l))
                    .map_err(|source| Error::Socket {
                        what: what.clone(),
                        source,
                    })?;
                info!("socket activation: listening on {what} for the VMM's vhost-user connection");
                Ok(Endpoint::Listener {
                    listener: Listener::from(listener),
                    place: what,
                    claim: None,
                })
            }
            Listen::Connected { fd, origin } => {
                let vmm = fd
                    .try_clone()
                    .map(UnixStream::from)
                    .map_err(|source| Error::Socket {
                        what: format!("the socket from {origin}"),
                        source,
                    })?;
                let (private, daemon_end) =
                    relay::private_connection().map_err(Error::PrivateSocket)?;
                Ok(Endpoint::Connected {
                    vmm,
                    private,
                    daemon_end,
                    origin: origin.clone(),
                })
            }
        }
    }
}

/// Serve VMM connections as configured, until a fatal error, or until the only session ends
/// (`Listen::Connected`). SIGTERM and SIGINT exit the process with status 0 (see the module
/// documentation).
///
/// Order: SIGTERM and SIGINT are blocked first (a service manager may stop the daemon as soon
/// as its socket appears; the signal then waits for the signal thread instead of killing the
/// daemon with its socket left behind), the vhost-user socket is opened (and everything else
/// that needs the file system or `connect`: the relay's private connection, the notification
/// socket), the sandbox is entered ([`crate::sandbox::enter`]), and only then do threads
/// start, so that every one of them is confined.
pub fn run(config: &Config) -> Result<(), Error> {
    raise_fd_limit();
    let signals = block_signals()?;
    let mut endpoint = Endpoint::open(config)?;
    systemd::connect_notify_socket();
    let socket = match &mut endpoint {
        Endpoint::Listener { claim, .. } => claim.take(),
        Endpoint::Connected { .. } => None,
    };
    sandbox::enter(&sandbox::Plan {
        mode: config.sandbox,
        seccomp: config.seccomp,
        channels: &config.channels.load(),
        sources: &config.channel_sources,
        socket_path: socket.as_ref().map(SocketClaim::path),
        udmabuf: config.partial_pages.udmabuf_fd(),
    })
    .map_err(Error::Sandbox)?;
    sandbox::self_test();

    let shutdown = Arc::new(Shutdown {
        current: Mutex::new(None),
        socket,
    });
    start_signal_thread(shutdown.clone(), Reloader::new(config), signals)?;
    let outcome = match endpoint {
        Endpoint::Listener {
            listener, place, ..
        } => serve_listener(listener, &place, config, &shutdown),
        Endpoint::Connected {
            vmm,
            private,
            daemon_end,
            origin,
        } => serve_connected(vmm, private, daemon_end, &origin, config, &shutdown),
    };
    // The signal thread still holds the claim: remove the socket here, as no VMM will be
    // served on it any more.
    if let Some(socket) = &shutdown.socket {
        socket.release();
    }
    outcome
}

/// Serves one VMM after another on `listener`; `place` names it in logs and status lines.
fn serve_listener(
    mut listener: Listener,
    place: &str,
    config: &Config,
    shutdown: &Shutdown,
) -> Result<(), Error> {
    systemd::notify_ready(&format!("waiting for a VMM on {place}"));
    let mut number = 0u64;
    loop {
        number += 1;
        let mut session = Session::new(config, number)?;
        session
            .daemon
            .start(&mut listener)
            .map_err(Error::VhostUser)?;
        info!("session {number}: VMM connected");
        counters::set_status(
            &format!("serving a VMM on {place} (session {number})"),
            true,
        );
        // Whatever the outcome, the daemon goes on with the next VMM.
        let _ = session.serve(shutdown);
        session.finish();
        info!("session {number}: device state cleared; waiting for the next VMM");
        counters::set_status(&format!("waiting for a VMM on {place}"), false);
    }
}

/// Serves the one VMM connected on `vmm`, through a relay (see [`crate::relay`] for why) from
/// `daemon_end`, the connection waiting on `private`.
fn serve_connected(
    vmm: UnixStream,
    private: UnixListener,
    daemon_end: UnixStream,
    origin: &str,
    config: &Config,
    shutdown: &Shutdown,
) -> Result<(), Error> {
    let mut session = Session::new(config, 1)?;
    let mut listener = Listener::from(private);
    // Accepts the connection `private_connection` already made; does not wait.
    session
        .daemon
        .start(&mut listener)
        .map_err(Error::VhostUser)?;
    drop(listener);
    let relay = Relay::start(vmm, daemon_end).map_err(|source| Error::Socket {
        what: format!("the socket from {origin}"),
        source,
    })?;
    info!("serving the VMM on the socket from {origin}; the daemon exits when it disconnects");
    let status = format!("serving the VMM on the socket from {origin}");
    systemd::notify_ready(&status);
    counters::set_status(&status, true);
    let outcome = session.serve(shutdown);
    let relayed = relay.join();
    session.finish();
    relayed.map_err(Error::Relay)?;
    outcome.map_err(Error::Session)?;
    info!("the only session is over; exiting");
    Ok(())
}

/// One VMM connection's device and vhost-user state.
struct Session {
    number: u64,
    backend: Arc<Backend>,
    daemon: VhostUserDaemon<Arc<Backend>>,
    handlers: Vec<Arc<VringEpollHandler<Arc<Backend>>>>,
}

impl Session {
    fn new(config: &Config, number: u64) -> Result<Self, Error> {
        let backend = Arc::new(Backend::new(config).map_err(Error::Device)?);
        let daemon = VhostUserDaemon::new(
            "vhost-user-cross-domain".to_string(),
            backend.clone(),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(Error::VhostUser)?;
        let handlers = daemon.get_epoll_handlers();
        if let [only] = handlers.as_slice() {
            // One worker: host fds go straight into its epoll set.
            backend
                .attach_event_loop(only.as_raw_fd())
                .map_err(Error::Device)?;
        }
        for h in &handlers {
            h.register_listener(backend.host_epoll_fd(), EventSet::IN, u64::from(HOST_EVENT))
                .map_err(Error::Device)?;
            h.register_listener(
                backend.shutdown_fd(),
                EventSet::IN,
                u64::from(SHUTDOWN_EVENT),
            )
            .map_err(Error::Device)?;
        }
        Ok(Session {
            number,
            backend,
            daemon,
            handlers,
        })
    }

    /// Waits for the connected session to end, with the backend published to the signal
    /// thread meanwhile. `Ok` if the VMM disconnected, the error if the session ended on one.
    fn serve(&mut self, shutdown: &Shutdown) -> Result<(), vhost_user_backend::Error> {
        let number = self.number;
        shutdown.set_current(Some(self.backend.clone()));
        let result = self.daemon.wait();
        shutdown.set_current(None);
        match result {
            Ok(()) => {
                info!("session {number}: VMM disconnected");
                Ok(())
            }
            Err(e) if is_disconnect(&e) => {
                info!("session {number}: VMM disconnected ({e})");
                Ok(())
            }
            Err(e) => {
                error!("session {number}: ended with an error: {e}");
                Err(e)
            }
        }
    }

    /// Stops the worker threads and drops all device state (contexts, resources, host
    /// sockets).
    fn finish(self) {
        for h in &self.handlers {
            h.send_exit_event();
        }
        self.backend.reset();
        drop(self.daemon);
        // Only now are the worker threads joined; see Backend::close_exit_event_fds.
        self.backend.close_exit_event_fds();
    }
}

/// True for the ways a session ends when the VMM goes away.
fn is_disconnect(e: &vhost_user_backend::Error) -> bool {
    use vhost::vhost_user::Error as VuError;
    matches!(
        e,
        vhost_user_backend::Error::HandleRequest(
            VuError::Disconnected | VuError::PartialMessage | VuError::SocketBroken(_)
        )
    )
}

/// What the signal thread needs to shut down.
struct Shutdown {
    /// The backend of the session being served, if a VMM is connected.
    current: Mutex<Option<Arc<Backend>>>,
    /// The socket the daemon created (`--socket-path`) and its lock file, removed at shutdown.
    socket: Option<SocketClaim>,
}

impl Shutdown {
    fn set_current(&self, backend: Option<Arc<Backend>>) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = backend;
    }

    fn current(&self) -> Option<Arc<Backend>> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Shuts down for `signal` and exits the process with status 0.
    fn exit(&self, signal: &str) -> ! {
        info!("{signal} received: shutting down");
        systemd::notify_stopping();
        if let Some(socket) = &self.socket {
            // No new VMM can connect from now on.
            socket.release();
        }
        if let Some(backend) = self.current() {
            if backend.quiesce(QUIESCE_TIMEOUT) {
                info!("pending fences completed and channels closed");
            } else {
                warn!(
                    "the device did not finish its pending work within {QUIESCE_TIMEOUT:?}; \
                     exiting anyway"
                );
            }
        }
        info!("stopped");
        std::process::exit(0);
    }
}

/// Raises the soft limit on open files to the hard limit. Every context may hold up to
/// `MAX_ITEMS` (1024) fds from host services, and service managers commonly start programs
/// with a soft limit of 1024 (systemd's default `LimitNOFILE=1024:524288`), which one busy
/// context could exhaust. The daemon never uses `select(2)`, the reason for that default.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => debug!("open-file limit raised from {soft} to {hard}"),
            Err(e) => warn!("cannot raise the open-file limit from {soft} to {hard}: {e}"),
        },
        Ok(_) => {}
        Err(e) => warn!("cannot read the open-file limit: {e}"),
    }
}

/// Blocks SIGTERM, SIGINT, SIGHUP and SIGUSR1 in the calling thread (and so in every thread
/// started after it) and returns the signalfd that receives them.
fn block_signals() -> Result<SignalFd, Error> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGHUP);
    mask.add(Signal::SIGUSR1);
    mask.thread_block().map_err(Error::Signals)?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC).map_err(Error::Signals)
}

/// Starts the thread that reads the signals from `signals`: SIGTERM and SIGINT shut down,
/// SIGHUP reloads the channel table through `reloader`, SIGUSR1 logs the channel counters.
fn start_signal_thread(
    shutdown: Arc<Shutdown>,
    reloader: Reloader,
    signals: SignalFd,
) -> Result<(), Error> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            match signals.read_signal() {
                Ok(Some(info)) => match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGHUP) => reloader.reload(),
                    Ok(Signal::SIGUSR1) => counters::log_all(),
                    Ok(signal) => shutdown.exit(signal.as_str()),
                    Err(_) => shutdown.exit("signal"),
                },
                Ok(None) | Err(Errno::EINTR) => {}
                Err(e) => {
                    // Not expected; avoid spinning if it persists.
                    error!("reading signals failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
        .map_err(Error::SignalThread)?;
    Ok(())
}
