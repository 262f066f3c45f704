//! The listening socket the daemon creates at `--socket-path`, and the lock file next to it.
//!
//! This module owns claiming that path at start-up and giving it back at shutdown. Claiming
//! takes an exclusive `flock` on `PATH.lock` (created if missing) first, so that two daemons
//! started with the same path at once cannot both go on; then it looks at what is at PATH:
//! nothing, or a stale socket (one nothing accepts connections on: `connect` is refused), is
//! replaced by the new socket. Anything else is refused with a [`SocketPathError`] naming the
//! flag and the value: a live socket ("already in use by another process"), a regular file, a
//! directory, a missing parent directory. With `--socket-group` the socket is created with mode
//! 0660 and given to that group.
//!
//! It must never remove anything but a stale socket at PATH, the socket it created itself and
//! its own lock file, and it removes those two only while it holds the lock.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use log::info;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::stat::{umask, Mode};
use nix::unistd::Group;

use crate::config::{ConfigError, SocketGroup};

/// How often claiming retries when the lock file it locked was removed or replaced meanwhile
/// (a daemon that owned it was exiting).
const LOCK_ATTEMPTS: usize = 5;

/// A rejected `--socket-path` (or `--socket-group`): the message names the flag and the value
/// as given.
#[derive(Debug, thiserror::Error)]
#[error("{flag} '{value}': {problem}")]
pub struct SocketPathError {
    /// `--socket-path`, or `--socket-group` if the group could not be given to the socket.
    pub flag: &'static str,
    /// The value as given.
    pub value: String,
    /// What is wrong with it.
    pub problem: Problem,
}

/// Why the daemon cannot create its socket at `--socket-path`.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// The directory that would hold the socket does not exist.
    #[error("the directory {0} does not exist (the daemon creates the socket, not its directory)")]
    NoDirectory(String),
    /// The would-be parent directory is something else.
    #[error("{0} is not a directory")]
    ParentNotDirectory(String),
    /// Another daemon holds the lock file.
    #[error("already in use by another process (it holds the lock file {0})")]
    Locked(String),
    /// A program accepts connections on the socket at the path.
    #[error("already in use by another process (it accepts connections on the socket)")]
    Live,
    /// Not a socket: never removed.
    #[error(
        "it is {0}, not a socket; the daemon replaces only a stale socket, so remove it or \
         choose another path"
    )]
    NotSocket(&'static str),
    /// The socket could not be given to the `--socket-group` group.
    #[error(
        "cannot give the socket {path} to group {gid}: {source} (the daemon must run as root \
         or as a member of the group)"
    )]
    Chown {
        /// The socket.
        path: String,
        /// The group id.
        gid: u32,
        /// Why it failed.
        source: io::Error,
    },
    /// A system call failed.
    #[error("cannot {action}: {source}")]
    Io {
        /// What the daemon was doing.
        action: String,
        /// Why it failed.
        source: io::Error,
    },
}

/// The socket path and lock file the daemon owns, removed by [`SocketClaim::release`] or when
/// dropped. The lock is held as long as this lives (and released by the kernel when the process
/// ends, however it ends).
#[derive(Debug)]
pub struct SocketClaim {
    path: PathBuf,
    lock_path: PathBuf,
    _lock: Flock<File>,
}

impl SocketClaim {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lock file's path (`PATH.lock`).
    pub fn lock_path(&self) -> &Path {
        &self.lock_path
    }

    /// Removes the socket (no VMM can connect from now on) and then the lock file. Call it
    /// at shutdown; dropping the claim does the same.
    pub fn release(&self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

impl Drop for SocketClaim {
    fn drop(&mut self) {
        self.release();
    }
}

/// Claims `path` (see the module documentation) and returns the listening socket created
/// there, with mode 0660 and group `group` if one is given.
///
/// Call it before any other thread starts: with a group, it changes the process's umask for the
/// time of the `bind`.
pub fn claim(
    path: &Path,
    group: Option<&SocketGroup>,
) -> Result<(SocketClaim, UnixListener), SocketPathError> {
    let fail = |problem| SocketPathError {
        flag: "--socket-path",
        value: path.display().to_string(),
        problem,
    };
    check_directory(path).map_err(fail)?;
    let lock_path = lock_path_for(path);
    let lock = lock(&lock_path).map_err(fail)?;
    // From here on, no other daemon using the same path gets past `lock`.
    match clear_stale(path).and_then(|()| bind(path, group)) {
        Ok(listener) => Ok((
            SocketClaim {
                path: path.to_path_buf(),
                lock_path,
                _lock: lock,
            },
            listener,
        )),
        Err(problem) => {
            // Whatever is at the path stays; only the lock file goes, while still locked.
            let _ = std::fs::remove_file(&lock_path);
            drop(lock);
            Err(match (&problem, group) {
                (Problem::Chown { .. }, Some(group)) => SocketPathError {
                    flag: "--socket-group",
                    value: group.name.clone(),
                    problem,
                },
                _ => fail(problem),
            })
        }
    }
}

/// Looks up `--socket-group GROUP`: a group name, or else a decimal group id.
pub fn lookup_group(name: &str) -> Result<SocketGroup, ConfigError> {
    let unknown = || ConfigError::UnknownGroup {
        flag: "--socket-group",
        value: name.to_owned(),
    };
    if name.is_empty() || name.contains('\0') {
        return Err(unknown());
    }
    let gid = match Group::from_name(name) {
        Ok(Some(group)) => group.gid.as_raw(),
        // Not a name (or the group database cannot be read): a number still works.
        _ => name
            .parse::<u32>()
            .ok()
            .filter(|_| name.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(unknown)?,
    };
    Ok(SocketGroup {
        name: name.to_owned(),
        gid,
    })
}

/// `PATH.lock`.
pub fn lock_path_for(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// The socket's directory must exist: the daemon does not create directories.
fn check_directory(path: &Path) -> Result<(), Problem> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(Problem::ParentNotDirectory(dir.display().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(Problem::NoDirectory(dir.display().to_string()))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
            Err(Problem::ParentNotDirectory(dir.display().to_string()))
        }
        Err(source) => Err(Problem::Io {
            action: format!("look at the directory {}", dir.display()),
            source,
        }),
    }
}

/// Opens (creating it if needed) and locks `lock_path` without waiting.
fn lock(lock_path: &Path) -> Result<Flock<File>, Problem> {
    let shown = || lock_path.display().to_string();
    for _ in 0..LOCK_ATTEMPTS {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(lock_path)
            .map_err(|source| Problem::Io {
                action: format!("open the lock file {}", shown()),
                source,
            })?;
        let locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((_, Errno::EWOULDBLOCK)) => return Err(Problem::Locked(shown())),
            Err((_, e)) => {
                return Err(Problem::Io {
                    action: format!("lock {}", shown()),
                    source: e.into(),
                })
            }
        };
        // A daemon that held the lock may have removed the file between our open and our
        // lock; then the lock is on a file nobody else will ever open, and we start over.
        if same_file(&locked, lock_path) {
            return Ok(locked);
        }
    }
    Err(Problem::Locked(shown()))
}

/// True if `path` still names the file open as `file`.
fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

/// Removes a stale socket at `path`; refuses anything else that is there.
fn clear_stale(path: &Path) -> Result<(), Problem> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Problem::Io {
                action: "look at the path".into(),
                source,
            })
        }
    };
    let kind = meta.file_type();
    if !kind.is_socket() {
        return Err(Problem::NotSocket(describe(&kind)));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(Problem::Live),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            info!(
                "removing the stale socket {} (nothing accepts connections on it)",
                path.display()
            );
            std::fs::remove_file(path).map_err(|source| Problem::Io {
                action: "remove the stale socket".into(),
                source,
            })
        }
        Err(source) => Err(Problem::Io {
            action: "tell whether a program accepts connections on the socket there".into(),
            source,
        }),
    }
}

/// Creates the socket. With a group, the umask makes its mode 0660 from the start (a socket's
/// mode cannot be changed through its descriptor, and a `chmod` by path afterwards would leave
/// a moment with the mode the umask gives), and `lchown` then gives it to the group.
fn bind(path: &Path, group: Option<&SocketGroup>) -> Result<UnixListener, Problem> {
    let bound = match group {
        None => UnixListener::bind(path),
        Some(_) => {
            let old = umask(Mode::from_bits_truncate(0o117));
            let bound = UnixListener::bind(path);
            umask(old);
            bound
        }
    };
    let listener = bound.map_err(|source| match source.raw_os_error() {
        // Something appeared at the path after it was checked.
        Some(libc::EADDRINUSE) => Problem::Live,
        _ => Problem::Io {
            action: "create the socket".into(),
            source,
        },
    })?;
    if let Some(group) = group {
        if let Err(source) = std::os::unix::fs::lchown(path, None, Some(group.gid)) {
            let _ = std::fs::remove_file(path);
            return Err(Problem::Chown {
                path: path.display().to_string(),
                gid: group.gid,
                source,
            });
        }
    }
    Ok(listener)
}

fn describe(kind: &std::fs::FileType) -> &'static str {
    if kind.is_dir() {
        "a directory"
    } else if kind.is_file() {
        "a regular file"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else {
        "something else"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(path: &Path) -> Problem {
        claim(path, None).unwrap_err().problem
    }

    #[test]
    fn fresh_path_is_claimed_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpu.sock");
        let (c, listener) = claim(&path, None).unwrap();
        assert!(path.exists());
        assert!(c.lock_path().exists());
        assert_eq!(c.lock_path(), dir.path().join("gpu.sock.lock"));
        UnixStream::connect(&path).unwrap();
        drop(listener);
        drop(c);
        assert!(!path.exists());
        assert!(!dir.path().join("gpu.sock.lock").exists());
    }

    #[test]
    fn second_claim_is_refused_by_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpu.sock");
        let (_c, _l) = claim(&path, None).unwrap();
        let e = claim(&path, None).unwrap_err();
        assert!(matches!(e.problem, Problem::Locked(_)), "{e}");
        assert!(
            e.to_string().contains("already in use by another process"),
            "{e}"
        );
        // The refused claim removed nothing.
        assert!(path.exists());
        assert!(dir.path().join("gpu.sock.lock").exists());
    }

    #[test]
    fn live_and_stale_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpu.sock");
        let other = UnixListener::bind(&path).unwrap();
        assert!(matches!(problem(&path), Problem::Live));
        assert!(path.exists());
        assert!(
            !lock_path_for(&path).exists(),
            "the lock file is cleaned up"
        );
        drop(other);
        // Stale now: nothing accepts on it.
        let (_c, _l) = claim(&path, None).unwrap();
        UnixStream::connect(&path).unwrap();
    }

    #[test]
    fn other_things_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "keep me").unwrap();
        let e = claim(&file, None).unwrap_err();
        assert!(
            matches!(e.problem, Problem::NotSocket("a regular file")),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");

        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let e = claim(&sub, None).unwrap_err();
        assert!(
            matches!(e.problem, Problem::NotSocket("a directory")),
            "{e}"
        );
        assert!(!e.to_string().contains("Address already in use"), "{e}");
        assert!(sub.is_dir());

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(matches!(
            problem(&link),
            Problem::NotSocket("a symbolic link")
        ));

        let e = claim(&dir.path().join("missing/gpu.sock"), None).unwrap_err();
        assert!(matches!(e.problem, Problem::NoDirectory(_)), "{e}");
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(matches!(
            problem(&file.join("gpu.sock")),
            Problem::ParentNotDirectory(_)
        ));
    }

    #[test]
    fn groups() {
        use std::os::unix::fs::PermissionsExt;

        let e = lookup_group("no-such-group-vucd").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--socket-group 'no-such-group-vucd': no such group"
        );
        assert!(lookup_group("").is_err());
        assert!(lookup_group("-1").is_err());
        assert_eq!(lookup_group("root").unwrap().gid, 0);
        assert_eq!(lookup_group("4242").unwrap().gid, 4242);

        // The caller's own group always works, root or not.
        let gid = nix::unistd::getegid().as_raw();
        let group = SocketGroup {
            name: gid.to_string(),
            gid,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpu.sock");
        let (_c, _l) = claim(&path, Some(&group)).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.gid(), gid);
        assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    }
}
