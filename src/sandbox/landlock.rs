//! Landlock: the file system (and TCP, and scoped IPC) after start-up.
//!
//! Each ruleset handles every file-system access right the `landlock` crate knows (through
//! ABI 9 here, which adds connecting to pathname Unix sockets) and grants back only what
//! the process needs; on an older kernel the crate drops the rights that kernel does not know
//! (best effort), and on a kernel without Landlock nothing is enforced and the caller warns.
//!
//! - The daemon: no right at all, except removing files beneath the directory of its own
//!   `--socket-path` socket, which it does at shutdown. That right covers the whole directory
//!   (Landlock rules are per directory hierarchy, not per name): the daemon could remove other
//!   files there that its user may remove. It never needs to connect to a socket path (the
//!   broker does, and the notification socket is connected before the sandbox).
//! - The broker: no right at all, except (from ABI 9) connecting to Unix sockets beneath the
//!   directories of the channel sockets configured at start-up, and, with `--channels-file`,
//!   reading files beneath the directory of that file (to re-read it on a reload). Directories
//!   rather than the socket files, because a host service may create its socket after the
//!   daemon starts, or re-create it. The rules are fixed for the life of the broker: a reload
//!   can only name sockets beneath those directories (see `broker::startup_dirs_rule`).
//!
//! Both also handle TCP bind and connect (ABI 4) with no port allowed, and scope abstract Unix
//! sockets and signals (ABI 6) to their own Landlock domain: they cannot connect to an abstract
//! socket, or signal a process, outside their sandbox.
//!
//! What a kernel with ABI 1 to 8 does not govern: connecting to (or sending to) a pathname
//! Unix socket. The daemon's seccomp filter refuses `connect` instead, and only the broker
//! connects, to configured channels only. Landlock never governs reading the target of a
//! symbolic link (the daemon reads `/proc/self/fd/N`), `stat` of a path, or operations on fds
//! already open.

use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, AccessNet, CompatLevel, Compatible, LandlockStatus, PathBeneath, PathFd,
    RestrictionStatus, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetError, RulesetStatus,
    Scope, ABI,
};

/// The newest ABI whose rights the rulesets use. Newer kernels are asked for no more than
/// this, so behaviour only changes when this constant (and the review it needs) changes.
const TARGET_ABI: ABI = ABI::V9;

/// What Landlock enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The Landlock ABI of the running kernel (0: no Landlock).
    pub abi: i32,
    /// Whether every requested restriction is enforced (`Full`), some are (`Partial`, on a
    /// kernel older than the targeted ABI, V9), or none (`None`).
    pub enforced: Enforced,
}

/// How much of a ruleset the kernel enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforced {
    /// Everything requested.
    Full,
    /// What the kernel's ABI supports.
    Partial,
    /// Nothing: the kernel has no Landlock (or it is disabled).
    None,
}

fn outcome(status: RestrictionStatus) -> Outcome {
    let abi = match status.landlock {
        LandlockStatus::Available {
            effective_abi,
            kernel_abi,
        } => kernel_abi.unwrap_or(effective_abi as i32),
        _ => 0,
    };
    let enforced = match status.ruleset {
        RulesetStatus::FullyEnforced => Enforced::Full,
        RulesetStatus::PartiallyEnforced => Enforced::Partial,
        RulesetStatus::NotEnforced => Enforced::None,
    };
    Outcome { abi, enforced }
}

fn base_ruleset() -> Result<landlock::RulesetCreated, RulesetError> {
    Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(TARGET_ABI))?
        .handle_access(AccessNet::from_all(TARGET_ABI))?
        .scope(Scope::from_all(TARGET_ABI))?
        .create()
}

/// Errors setting up Landlock (an unsupported kernel is not one of them).
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    /// A directory named in a rule could not be opened.
    #[error("cannot open {path} for a Landlock rule: {source}")]
    Path {
        path: String,
        source: landlock::PathFdError,
    },
    /// The kernel refused the ruleset.
    #[error("Landlock: {0}")]
    Ruleset(#[from] RulesetError),
}

/// The directory of `path` (`.` for a bare file name): what a rule about `path` names.
pub fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn open_dir(dir: &Path) -> Result<PathFd, LandlockError> {
    PathFd::new(dir).map_err(|source| LandlockError::Path {
        path: dir.display().to_string(),
        source,
    })
}

/// Restricts the calling thread (and the threads it starts) to the daemon's needs: removing
/// files beneath the directory of `socket_path`, if given, and nothing else.
pub fn restrict_daemon(socket_path: Option<&Path>) -> Result<Outcome, LandlockError> {
    let mut ruleset = base_ruleset()?;
    if let Some(path) = socket_path {
        let dir = open_dir(dir_of(path))?;
        ruleset = ruleset.add_rule(PathBeneath::new(dir, AccessFs::RemoveFile))?;
    }
    Ok(outcome(ruleset.restrict_self()?))
}

/// Restricts the calling thread to the broker's needs: connecting to Unix sockets beneath
/// `dirs`, the directories of the channel sockets (a right kernels before ABI 9 do not know;
/// there connecting is not restricted by Landlock), and, with a channels file, reading files
/// beneath its directory. A directory that does not exist yet cannot be named in a rule; its
/// channels then only work on kernels that do not enforce the right, and the returned list names
/// it so the caller can warn.
pub fn restrict_broker(
    dirs: &[PathBuf],
    channels_file: Option<&Path>,
) -> Result<(Outcome, Vec<String>), LandlockError> {
    let mut ruleset = base_ruleset()?;
    let mut missing = Vec::new();
    for dir in dirs {
        match PathFd::new(dir) {
            Ok(fd) => {
                ruleset = ruleset.add_rule(PathBeneath::new(fd, AccessFs::ResolveUnix))?;
            }
            Err(_) => missing.push(dir.display().to_string()),
        }
    }
    if let Some(file) = channels_file {
        // The directory rather than the file: editors replace a file by renaming a new one
        // over it, which a rule on the old file would not cover. This lets the broker read the
        // other files there too (the channels files of other VMs, typically).
        let dir = open_dir(dir_of(file))?;
        ruleset = ruleset.add_rule(PathBeneath::new(dir, AccessFs::ReadFile))?;
    }
    Ok((outcome(ruleset.restrict_self()?), missing))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};

    /// On a thread of its own (a Landlock domain applies to the thread that enters it and the
    /// threads it starts): files cannot be opened, created or removed, except removal beneath
    /// the socket's directory.
    #[test]
    fn daemon_ruleset() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let sock = dir.path().join("gpu.sock");
        let victim = dir.path().join("old");
        let outside = other.path().join("file");
        std::fs::write(&victim, b"x").unwrap();
        std::fs::write(&outside, b"x").unwrap();
        let _listener = UnixListener::bind(&sock).unwrap();
        let peer_path = other.path().join("peer.sock");
        let _peer = UnixListener::bind(&peer_path).unwrap();
        let name = format!("vucd-landlock-test-{}", std::process::id());
        let abstract_addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let _abstract_peer = UnixListener::bind_addr(&abstract_addr).unwrap();
        let (outcome, read, create, remove_outside, remove_sock, connect, connect_abstract) = {
            let sock = sock.clone();
            let outside = outside.clone();
            std::thread::spawn(move || {
                let outcome = restrict_daemon(Some(&sock)).unwrap();
                let read = std::fs::read("/etc/hostname").map(|_| ());
                let create = std::fs::write(sock.with_file_name("new"), b"x");
                let remove_outside = std::fs::remove_file(&outside);
                let remove_sock = std::fs::remove_file(&sock);
                let connect = UnixStream::connect(&peer_path).map(|_| ());
                let connect_abstract = UnixStream::connect_addr(&abstract_addr).map(|_| ());
                (
                    outcome,
                    read,
                    create,
                    remove_outside,
                    remove_sock,
                    connect,
                    connect_abstract,
                )
            })
            .join()
            .unwrap()
        };
        if outcome.enforced == Enforced::None {
            eprintln!("no Landlock on this kernel: nothing to check");
            return;
        }
        let denied =
            |r: &std::io::Result<()>| matches!(r, Err(e) if e.raw_os_error() == Some(libc::EACCES));
        assert!(denied(&read), "{read:?}");
        assert!(denied(&create), "{create:?}");
        assert!(denied(&remove_outside), "{remove_outside:?}");
        assert!(remove_sock.is_ok(), "{remove_sock:?}");
        assert!(victim.exists());
        // Connecting to a pathname socket is governed from ABI 9 on only.
        if outcome.abi >= 9 {
            assert!(denied(&connect), "{connect:?}");
        } else {
            assert!(connect.is_ok(), "{connect:?}");
        }
        // Abstract sockets outside the sandbox are out of reach from ABI 6 on.
        if outcome.abi >= 6 {
            assert!(
                matches!(&connect_abstract, Err(e) if e.raw_os_error() == Some(libc::EPERM)),
                "{connect_abstract:?}"
            );
        }
    }
}
