//! The daemon's validated configuration.
//!
//! This module owns [`Config`], [`Listen`] (how the VMM reaches the daemon: exactly one of
//! `--socket-path`, `--fd` and socket activation) and the sandbox modes; its files own the
//! rest, one concern each:
//! - [`channels`]: the channel table (which host Unix socket serves which cross-domain channel
//!   type) and the `TYPE:PATH` syntax that fills it;
//! - [`channels_file`]: `--channels-file`, its syntax and how it combines with the flags
//!   ([`ChannelSources`]);
//! - [`live`]: the channel table in force ([`LiveChannels`]), which a reload replaces;
//! - [`values`]: the parsers of the other flag values (`--shm-size`, `--scanouts`, `--fd`, …);
//! - [`error`]: [`ConfigError`], whose messages name the flag and the value the user gave.
//!
//! Everything here runs at start-up, before any VMM connects, except that the channels file is
//! parsed again on each reload (SIGHUP). It must never touch the file system or the network: a
//! path is checked for being present and non-empty, not for existing, because host services
//! may start after the daemon; the channels file is read by the caller. (What kind of socket an
//! inherited file descriptor is, is checked by [`crate::inherited`].) It must never panic on
//! user input; every rejection is a [`ConfigError`] (or, for the channels file, a
//! [`ChannelsFileError`]).

pub mod channels;
pub mod channels_file;
pub mod error;
pub mod live;
pub mod partial_pages;
pub mod values;

use std::fmt;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

// Channel names accepted in place of numbers in `--channel NAME:PATH` (the guest proxy accepts
// the same), and the reasons a type is reserved.
pub use cross_domain_protocol::channel::{channel_name, ReservedReason, CHANNEL_NAMES};

pub use channels::{
    parse_channel_spec, parse_channel_type, parse_wayland_sock, ChannelSpec, ChannelTable,
};
pub use channels_file::{ChannelSources, ChannelsFileError, MAX_CHANNELS_FILE};
pub use error::ConfigError;
pub use live::{ChannelView, LiveChannels};
pub use partial_pages::{parse_partial_pages, resolve_partial_pages, PartialPagesMode};
pub use values::{
    parse_channels_file, parse_fd, parse_max_mappings, parse_sandbox, parse_scanouts,
    parse_seccomp, parse_shm_size, parse_socket_path, unusable_fd, ShmSizeProblem,
    DEFAULT_SHM_SIZE, MAX_MAPPINGS_LIMIT, MAX_SHM_SIZE,
};

/// Highest `--scanouts` value: the virtio-gpu configuration space describes at most 16 scanouts
/// ([`cross_domain_protocol::MAX_SCANOUTS`], as the `u32` of the configuration space).
pub const MAX_SCANOUTS: u32 = cross_domain_protocol::MAX_SCANOUTS as u32;
/// Longest path a Unix socket address holds (`sun_path` is 108 bytes including the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// The flag whose values [`parse_channel_type`], [`parse_channel_spec`] and
/// [`ChannelTable::insert`] report in their errors.
const CHANNEL_FLAG: &str = "--channel";
const WAYLAND_SOCK_FLAG: &str = "--wayland-sock";
const SOCKET_PATH_FLAG: &str = "--socket-path";
const SCANOUTS_FLAG: &str = "--scanouts";
const FD_FLAG: &str = "--fd";
const SHM_SIZE_FLAG: &str = "--shm-size";
const SANDBOX_FLAG: &str = "--sandbox";
const SECCOMP_FLAG: &str = "--seccomp";
const MAX_MAPPINGS_FLAG: &str = "--max-mappings";
const PARTIAL_PAGES_FLAG: &str = "--partial-pages";
/// The flag that names the channels file.
pub const CHANNELS_FILE_FLAG: &str = "--channels-file";
/// How socket activation is named in messages (it has no flag; `LISTEN_FDS` is its variable).
pub const ACTIVATION_SOURCE: &str = "socket activation (LISTEN_FDS)";

/// Channel type `--wayland-sock PATH` stands for.
const WAYLAND_CHANNEL_TYPE: u32 = 1;

/// Everything the daemon needs to serve one VMM.
#[derive(Debug, Clone)]
pub struct Config {
    /// How the VMM's vhost-user connection reaches the daemon.
    pub listen: Listen,
    /// Channel type → host Unix socket: the table in force, shared with every device. It
    /// starts as `channel_sources` give it at start-up and is replaced on each reload.
    pub channels: LiveChannels,
    /// Where the channel table comes from: the flags, and `--channels-file`.
    pub channel_sources: ChannelSources,
    /// `num_scanouts` reported in the device configuration space (0..=[`MAX_SCANOUTS`]).
    pub num_scanouts: u32,
    /// Size in bytes of the host-visible shared memory region (shmid 1) offered to the VMM.
    pub shm_size: u64,
    /// Whether the daemon confines itself after start-up (`--sandbox`).
    pub sandbox: SandboxMode,
    /// What a system call outside the seccomp allow-list does (`--seccomp`); meaningless with
    /// [`SandboxMode::None`].
    pub seccomp: SeccompMode,
    /// The group the `--socket-path` socket is given to (`--socket-group`); only with
    /// [`Listen::Path`].
    pub socket_group: Option<SocketGroup>,
    /// Most blobs mapped in the host-visible region at once (`--max-mappings`).
    pub max_mappings: usize,
    /// Whether the VMM maps a file past its end (`--partial-pages`).
    pub partial_pages: crate::cross_domain::PartialPages,
}

/// `--socket-group GROUP`, looked up: the `--socket-path` socket gets this group and mode
/// 0660, so that a VMM running as another user in the group can connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketGroup {
    /// The name as given (a group name or a number), for messages.
    pub name: String,
    /// The group id.
    pub gid: u32,
}

/// `--sandbox MODE`: whether the daemon confines itself once its vhost-user socket is open
/// (see [`crate::sandbox`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SandboxMode {
    /// `on` (the default): seccomp filter, Landlock, no new privileges, no capabilities, and
    /// channel connections made by the connection broker.
    #[default]
    On,
    /// `none`: no confinement at all, for debugging.
    None,
}

/// `--seccomp ACTION`: what happens when a thread of the sandboxed daemon makes a system call
/// outside the allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompMode {
    /// `kill` (the default): the kernel kills the process with SIGSYS.
    #[default]
    Kill,
    /// `log`: the kernel logs the call (audit type 1326) and lets it run, to find missing
    /// entries in the allow-list.
    Log,
}

/// How the VMM's vhost-user connection reaches the daemon. Exactly one is configured; see
/// [`select_listen`].
#[derive(Debug, Clone)]
pub enum Listen {
    /// `--socket-path PATH`: the daemon creates a listening socket at PATH and serves VMMs one
    /// after another.
    Path(PathBuf),
    /// A listening socket passed by the service manager (socket activation, `Accept=no`): the
    /// daemon serves VMMs one after another on it. The socket belongs to the service manager,
    /// which keeps it open across restarts of the daemon.
    Listener {
        /// The socket (fd 3 when the daemon was started).
        fd: Arc<OwnedFd>,
        /// Its name from `LISTEN_FDNAMES` ("unknown" when that is not set), for the logs.
        name: String,
        /// Its address (a path, or `@name` in the abstract namespace), for the logs; `None`
        /// for an unnamed socket.
        address: Option<String>,
    },
    /// A socket already connected to the VMM: `--fd N`, or socket activation with
    /// `Accept=yes`. The daemon serves this one VMM and exits when it disconnects.
    Connected {
        /// The socket.
        fd: Arc<OwnedFd>,
        /// Where it came from, for the logs (`--fd 5`, `socket activation`).
        origin: String,
    },
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Path(path) => write!(f, "{}", path.display()),
            Listen::Listener { name, address, .. } => write!(
                f,
                "the socket-activated socket {}",
                describe_activated(address.as_deref(), name)
            ),
            Listen::Connected { origin, .. } => write!(f, "the connected socket from {origin}"),
        }
    }
}

/// A socket passed by socket activation, for messages: its address and its `LISTEN_FDNAMES`
/// name (`/run/vm1.sock ('vm1')`), leaving out whichever is unknown.
pub fn describe_activated(address: Option<&str>, name: &str) -> String {
    // sd_listen_fds_with_names(3) names every socket "unknown" when LISTEN_FDNAMES is unset.
    let name = (!name.is_empty() && name != "unknown").then_some(name);
    match (address, name) {
        (Some(address), Some(name)) => format!("{address} ('{name}')"),
        (Some(address), None) => address.to_owned(),
        (None, Some(name)) => format!("'{name}'"),
        (None, None) => "(unnamed)".to_owned(),
    }
}

/// Picks the one way to reach the VMM out of the `candidates` given, each named by its flag
/// (`--socket-path`, `--fd`, [`ACTIVATION_SOURCE`]). None, or more than one, is an error.
pub fn select_listen(candidates: Vec<(&'static str, Listen)>) -> Result<Listen, ConfigError> {
    let mut candidates = candidates.into_iter();
    let Some((first, listen)) = candidates.next() else {
        return Err(ConfigError::NoListenSocket);
    };
    if let Some((second, _)) = candidates.next() {
        return Err(ConfigError::ListenConflict { first, second });
    }
    Ok(listen)
}

#[cfg(test)]
mod tests;
