//! Socket activation: the listening socket a service manager passes (systemd's `LISTEN_PID`
//! and `LISTEN_FDS`, the socket itself as descriptor 3).
//!
//! This module owns reading those variables and taking descriptor 3. It takes it only when
//! `LISTEN_PID` names this process (the variables may be inherited from a parent they were
//! meant for) and only once, marks it close-on-exec, and accepts only what the proxy can serve:
//! one listening Unix stream socket (a socket unit with one `ListenStream=` and `Accept=no`).
//! It must never close or touch descriptor 3 when the variables are not for this process. Its
//! one `unsafe` block adopts the descriptor.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{getsockopt, sockopt, SockType};

/// The first passed descriptor (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: i32 = 3;

/// Descriptor 3 was taken (it can be owned once).
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Socket-activation variables that are meant for this process but unusable.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("socket activation: {name}={value:?} is not a number")]
    Malformed { name: &'static str, value: String },
    #[error(
        "socket activation: LISTEN_FDS={0}: expected exactly one socket (give the socket unit a \
         single ListenStream=)"
    )]
    Count(usize),
    #[error("socket activation: descriptor 3 is not open ({0})")]
    NotOpen(io::Error),
    #[error(
        "socket activation: descriptor 3 is not a listening Unix stream socket: {0} (the socket \
         unit needs ListenStream=PATH and Accept=no)"
    )]
    NotAListener(String),
    #[error("socket activation: descriptor 3 was already taken")]
    Taken,
}

/// How many descriptors the service manager passed to the process `own_pid`, from the values
/// of `LISTEN_PID` and `LISTEN_FDS`: 0 when the variables are unset or meant for another
/// process.
pub fn passed_fds(
    own_pid: u32,
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
) -> Result<usize, ActivationError> {
    let number = |name: &'static str, value: &str| {
        value
            .parse::<u64>()
            .map_err(|_| ActivationError::Malformed {
                name,
                value: value.to_string(),
            })
    };
    let Some(pid) = listen_pid else {
        return Ok(0);
    };
    if number("LISTEN_PID", pid)? != u64::from(own_pid) {
        return Ok(0);
    }
    let Some(fds) = listen_fds else {
        return Ok(0);
    };
    let n = number("LISTEN_FDS", fds)?;
    usize::try_from(n).map_err(|_| ActivationError::Count(usize::MAX))
}

/// A listening socket passed by socket activation.
#[derive(Debug)]
pub struct Activated {
    pub listener: UnixListener,
    /// Its path, for the logs (`None` for an abstract or unnamed socket).
    pub path: Option<PathBuf>,
}

impl Activated {
    /// The socket as the logs name it: its path, or what it is without one.
    pub fn name(&self) -> String {
        self.path.as_deref().map_or_else(
            || "the socket-activated socket (no path)".to_string(),
            |p| p.display().to_string(),
        )
    }
}

/// The listening socket passed to this process by socket activation, if it was started that
/// way (`Ok(None)` otherwise).
pub fn listener() -> Result<Option<Activated>, ActivationError> {
    let var = |name| std::env::var(name).ok();
    let n = passed_fds(
        std::process::id(),
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
    )?;
    match n {
        0 => Ok(None),
        1 => take().map(Some),
        n => Err(ActivationError::Count(n)),
    }
}

/// Adopts descriptor 3 and checks that it is a listening Unix stream socket.
fn take() -> Result<Activated, ActivationError> {
    // SAFETY: fcntl(F_GETFD) takes no pointer and reads no memory; on a descriptor that is not
    // open it only fails with EBADF.
    if unsafe { libc::fcntl(LISTEN_FDS_START, libc::F_GETFD) } < 0 {
        return Err(ActivationError::NotOpen(io::Error::last_os_error()));
    }
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(ActivationError::Taken);
    }
    // SAFETY: descriptor 3 is open (checked above), and LISTEN_PID names this process, so the
    // service manager put it there for this process before exec; nothing in the process owns
    // it (descriptors the process opens itself cannot be 3 while 3 is open), and TAKEN makes
    // this the only owner.
    let fd = unsafe { OwnedFd::from_raw_fd(LISTEN_FDS_START) };
    // Programs the proxy might start must not inherit the socket.
    fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map_err(|e| ActivationError::NotOpen(e.into()))?;
    let not = |what: String| ActivationError::NotAListener(what);
    match getsockopt(&fd, sockopt::SockType) {
        Ok(SockType::Stream) => {}
        Ok(other) => return Err(not(format!("a {other:?} socket"))),
        Err(e) => return Err(not(format!("not a socket ({e})"))),
    }
    match getsockopt(&fd, sockopt::AcceptConn) {
        Ok(true) => {}
        Ok(false) => return Err(not("a socket that does not listen (Accept=yes?)".into())),
        Err(e) => return Err(not(e.to_string())),
    }
    let listener = UnixListener::from(fd);
    let addr = listener
        .local_addr()
        .map_err(|e| not(format!("not a Unix socket ({e})")))?;
    Ok(Activated {
        path: addr.as_pathname().map(PathBuf::from),
        listener,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_variables_for_this_process_count() {
        assert_eq!(passed_fds(42, None, None).unwrap(), 0);
        assert_eq!(passed_fds(42, None, Some("1")).unwrap(), 0);
        assert_eq!(passed_fds(42, Some("41"), Some("1")).unwrap(), 0);
        assert_eq!(passed_fds(42, Some("42"), None).unwrap(), 0);
        assert_eq!(passed_fds(42, Some("42"), Some("0")).unwrap(), 0);
        assert_eq!(passed_fds(42, Some("42"), Some("1")).unwrap(), 1);
        assert_eq!(passed_fds(42, Some("42"), Some("2")).unwrap(), 2);
    }

    #[test]
    fn malformed_variables_are_errors() {
        let e = passed_fds(42, Some("x"), Some("1")).unwrap_err();
        assert!(
            matches!(
                e,
                ActivationError::Malformed {
                    name: "LISTEN_PID",
                    ..
                }
            ),
            "{e}"
        );
        let e = passed_fds(42, Some("42"), Some("-1")).unwrap_err();
        assert!(
            matches!(
                e,
                ActivationError::Malformed {
                    name: "LISTEN_FDS",
                    ..
                }
            ),
            "{e}"
        );
        // Malformed variables meant for another process are not ours to judge.
        assert_eq!(passed_fds(42, Some("41"), Some("x")).unwrap(), 0);
    }
}
