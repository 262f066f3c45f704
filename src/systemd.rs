//! The service manager's side channels: socket activation (`LISTEN_PID`, `LISTEN_FDS`,
//! `LISTEN_FDNAMES`) and readiness notification (`NOTIFY_SOCKET`: `READY=1`, `STATUS=…`,
//! `RELOADING=1`, `STOPPING=1`).
//!
//! This module owns reading those variables and sending notifications. Socket activation comes
//! from the `sd-notify` crate. Notifications are sent here, on one datagram socket connected to
//! `NOTIFY_SOCKET` by [`connect_notify_socket`] before the sandbox (which forbids connecting);
//! a path or an abstract-namespace name (`@name`), as sd_notify(3) allows. Without
//! `NOTIFY_SOCKET` every notification is a no-op, so the daemon behaves the same outside
//! systemd. Notification failures are logged and never stop the daemon.

use std::ffi::OsStr;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::OnceLock;

use log::warn;
use sd_notify::NotifyState;

/// The environment variable naming the service manager's notification socket.
const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// The notification socket connected by [`connect_notify_socket`] (`None`: not set, or the
/// connection failed and was reported).
static NOTIFY: OnceLock<Option<UnixDatagram>> = OnceLock::new();

/// The socket a service manager passed to this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation {
    /// Its descriptor (3).
    pub fd: RawFd,
    /// Its name (`LISTEN_FDNAMES`, by default the socket unit's name; "unknown" if unset).
    pub name: String,
}

/// Socket-activation variables that are set for this process but unusable.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// `LISTEN_PID`, `LISTEN_FDS` or `LISTEN_FDNAMES` is malformed, or a passed descriptor is
    /// not open.
    #[error("cannot use LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES: {0}")]
    Environment(io::Error),
    /// More than one socket was passed.
    #[error(
        "LISTEN_FDS={0}: expected exactly one socket (give the socket unit a single \
         ListenStream=)"
    )]
    TooMany(usize),
}

/// The socket passed by socket activation, if this process was started that way.
///
/// `None` when `LISTEN_PID` is unset or names another process (the variables were inherited,
/// not meant for us), or when `LISTEN_FDS` is 0. The descriptor is marked close-on-exec; what
/// kind of socket it is, is left to [`crate::inherited::inspect`].
pub fn activation() -> Result<Option<Activation>, ActivationError> {
    let fds: Vec<(RawFd, String)> = sd_notify::listen_fds_with_names()
        .map_err(ActivationError::Environment)?
        .collect();
    match fds.len() {
        0 => Ok(None),
        1 => {
            let (fd, name) = fds.into_iter().next().unwrap_or((3, String::new()));
            Ok(Some(Activation { fd, name }))
        }
        n => Err(ActivationError::TooMany(n)),
    }
}

/// `READY=1` with a status line: the daemon serves VMMs from now on.
pub fn notify_ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A new status line (shown by `systemctl status`).
pub fn notify_status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// `RELOADING=1` with the current time (`MONOTONIC_USEC`, which systemd 253 and later require
/// with it): the daemon has begun to reload its channel table; [`notify_reloaded`] ends it.
pub fn notify_reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        // Without the time systemd would fail the reload, and with it the service.
        Err(e) => warn!("cannot read the monotonic clock for RELOADING=1: {e}"),
    }
}

/// `READY=1`: the reload [`notify_reloading`] announced is over (whatever its outcome, which
/// the log tells; the status line stays the one about the VMM).
pub fn notify_reloaded() {
    send(&[NotifyState::Ready]);
}

/// `STOPPING=1`: the daemon has begun to shut down.
pub fn notify_stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Connects the notification socket `NOTIFY_SOCKET` names, once, for all later notifications.
/// Call it before the sandbox; without it each notification connects a socket of its own,
/// which the sandbox refuses.
pub fn connect_notify_socket() {
    NOTIFY.get_or_init(|| {
        let path = std::env::var_os(NOTIFY_SOCKET)?;
        match connect(&path) {
            Ok(socket) => Some(socket),
            Err(e) => {
                warn!(
                    "cannot connect to the service manager's notification socket {}: {e}",
                    path.to_string_lossy()
                );
                None
            }
        }
    });
}

/// A datagram socket connected to `path`: a file-system path, or `@name` for the abstract
/// namespace.
fn connect(path: &OsStr) -> io::Result<UnixDatagram> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::SocketAddr;

    let socket = UnixDatagram::unbound()?;
    match path.as_encoded_bytes().strip_prefix(b"@") {
        Some(name) => socket.connect_addr(&SocketAddr::from_abstract_name(name)?)?,
        None => socket.connect(path)?,
    }
    Ok(socket)
}

fn send(states: &[NotifyState]) {
    let Some(path) = std::env::var_os(NOTIFY_SOCKET) else {
        return;
    };
    let result = match NOTIFY.get() {
        Some(Some(socket)) => send_on(socket, states),
        _ => connect(&path).and_then(|socket| send_on(&socket, states)),
    };
    if let Err(e) = result {
        let text: Vec<String> = states.iter().map(ToString::to_string).collect();
        warn!(
            "cannot notify the service manager ({}): {e}",
            text.join(", ")
        );
    }
}

fn send_on(socket: &UnixDatagram, states: &[NotifyState]) -> io::Result<()> {
    let message: String = states.iter().map(|s| format!("{s}\n")).collect();
    let sent = socket.send(message.as_bytes())?;
    if sent != message.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "incomplete notification",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::SocketAddr;

    #[test]
    fn abstract_notify_socket() {
        let name = format!("vhost-user-cross-domain-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&addr).unwrap();
        let socket = connect(OsStr::new(&format!("@{name}"))).unwrap();
        send_on(&socket, &[NotifyState::Ready, NotifyState::Status("x")]).unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=x\n");
    }
}
