//! The daemon's validated configuration.
//!
//! This module owns [`Config`], the channel table (which host Unix socket serves which
//! cross-domain channel type), [`Listen`] (how the VMM reaches the daemon: exactly one of
//! `--socket-path`, `--fd` and socket activation), the parsers for the command-line values that
//! fill them, and [`ConfigError`]. Everything here runs once at start-up, before any VMM
//! connects.
//!
//! It must never touch the file system or the network: a path is checked for being present and
//! non-empty, not for existing, because host services may start after the daemon. (What kind of
//! socket an inherited file descriptor is, is checked by [`crate::inherited`].) It must never
//! panic on user input; every rejection is a [`ConfigError`] whose message names the flag and
//! the value the user gave.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cross_domain_protocol::channel::{self, channel_name_list, ChannelTypeError};
// Channel names accepted in place of numbers in `--channel NAME:PATH` (the guest proxy accepts
// the same), and the reasons a type is reserved.
pub use cross_domain_protocol::channel::{channel_name, ReservedReason, CHANNEL_NAMES};

use crate::inherited::FdError;

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
/// How socket activation is named in messages (it has no flag; `LISTEN_FDS` is its variable).
pub const ACTIVATION_SOURCE: &str = "socket activation (LISTEN_FDS)";

/// Channel type `--wayland-sock PATH` stands for.
const WAYLAND_CHANNEL_TYPE: u32 = 1;

/// Everything the daemon needs to serve one VMM.
#[derive(Debug, Clone)]
pub struct Config {
    /// How the VMM's vhost-user connection reaches the daemon.
    pub listen: Listen,
    /// Channel type → host Unix socket.
    pub channels: ChannelTable,
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

/// Parses `--sandbox MODE`: `on` or `none`.
pub fn parse_sandbox(s: &str) -> Result<SandboxMode, ConfigError> {
    match s {
        "on" => Ok(SandboxMode::On),
        "none" => Ok(SandboxMode::None),
        _ => Err(ConfigError::InvalidSandbox {
            flag: SANDBOX_FLAG,
            value: s.to_owned(),
        }),
    }
}

/// Parses `--seccomp ACTION`: `kill` or `log`.
pub fn parse_seccomp(s: &str) -> Result<SeccompMode, ConfigError> {
    match s {
        "kill" => Ok(SeccompMode::Kill),
        "log" => Ok(SeccompMode::Log),
        _ => Err(ConfigError::InvalidSeccomp {
            flag: SECCOMP_FLAG,
            value: s.to_owned(),
        }),
    }
}

/// Default size of the host-visible region: 8 GiB, as crosvm.
pub const DEFAULT_SHM_SIZE: u64 = 8 << 30;

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

/// Which host Unix socket a cross-domain context is connected to for each channel type.
///
/// Invariants kept by [`ChannelTable::insert`]: no type 0 or 0xFFFFFFFF, each type at most once,
/// no empty path.
#[derive(Debug, Clone, Default)]
pub struct ChannelTable {
    paths: BTreeMap<u32, PathBuf>,
}

impl ChannelTable {
    /// An empty table: guests can still create query-only contexts, but INIT with any channel
    /// type fails.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `channel_type` to the host socket at `path`.
    ///
    /// Rejects the reserved types 0 and 0xFFFFFFFF, a type that is already in the table, and an
    /// empty path. Errors are reported as if the pair came from `--channel TYPE:PATH`.
    pub fn insert(&mut self, channel_type: u32, path: PathBuf) -> Result<(), ConfigError> {
        let value = format!("{channel_type}:{}", path.display());
        check_reserved(channel_type).map_err(|e| e.in_argument(CHANNEL_FLAG, &value))?;
        if path.as_os_str().is_empty() {
            return Err(ConfigError::EmptyPath {
                flag: CHANNEL_FLAG,
                value,
            });
        }
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(ConfigError::PathTooLong {
                flag: CHANNEL_FLAG,
                value,
            });
        }
        if self.paths.contains_key(&channel_type) {
            return Err(ConfigError::DuplicateChannel {
                flag: CHANNEL_FLAG,
                value,
                channel_type,
            });
        }
        self.paths.insert(channel_type, path);
        Ok(())
    }

    /// Parses one `--channel TYPE:PATH` argument and adds it to the table.
    pub fn add_channel_arg(&mut self, arg: &str) -> Result<(), ConfigError> {
        let (channel_type, path) = parse_channel_spec(arg)?;
        self.insert(channel_type, path)
            .map_err(|e| e.in_argument(CHANNEL_FLAG, arg))
    }

    /// Adds a `--channel` argument parsed by [`ChannelSpec::parse`]; errors name the argument
    /// as given.
    pub fn add_spec(&mut self, spec: &ChannelSpec) -> Result<(), ConfigError> {
        self.insert(spec.channel_type, spec.path.clone())
            .map_err(|e| e.in_argument(CHANNEL_FLAG, &spec.arg))
    }

    /// Adds a `--wayland-sock PATH` argument, which means `--channel 1:PATH`.
    pub fn add_wayland_sock_arg(&mut self, path: &Path) -> Result<(), ConfigError> {
        let value = path.display().to_string();
        self.insert(WAYLAND_CHANNEL_TYPE, path.to_path_buf())
            .map_err(|e| e.in_argument(WAYLAND_SOCK_FLAG, &value))
    }

    /// The host socket configured for `channel_type`, if any.
    pub fn get(&self, channel_type: u32) -> Option<&Path> {
        self.paths.get(&channel_type).map(PathBuf::as_path)
    }

    /// The capset's `supported_channels` word: bit `t` set for every configured type `t < 32`.
    pub fn capset_mask(&self) -> u32 {
        self.paths
            .keys()
            .filter_map(|&t| 1u32.checked_shl(t))
            .fold(0, |mask, bit| mask | bit)
    }

    /// All configured channels, in increasing type order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Path)> {
        self.paths.iter().map(|(&t, p)| (t, p.as_path()))
    }

    /// Number of configured channels.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// True if no channel is configured.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Configured types the capset's 32-bit mask cannot advertise (type >= 32). A guest that
    /// knows such a number can still INIT with it.
    pub fn unadvertised(&self) -> impl Iterator<Item = u32> + '_ {
        self.paths.range(u32::BITS..).map(|(&t, _)| t)
    }
}

/// Parses the TYPE part of `--channel TYPE:PATH`: a decimal number, a `0x`/`0X` hexadecimal
/// number, or a name from [`CHANNEL_NAMES`] (any case). Rejects 0 and 0xFFFFFFFF, which are
/// reserved (query-only contexts and magma's internal sockets). The syntax is
/// [`channel::parse_channel_type`]'s; this reports its errors against `--channel`.
pub fn parse_channel_type(s: &str) -> Result<u32, ConfigError> {
    let (flag, value) = (CHANNEL_FLAG, s.to_owned());
    channel::parse_channel_type(s).map_err(|e| match e {
        ChannelTypeError::Empty => ConfigError::EmptyChannelType { flag, value },
        ChannelTypeError::Unknown(type_text) => ConfigError::UnknownChannelType {
            flag,
            value,
            type_text,
        },
        ChannelTypeError::OutOfRange(type_text) => ConfigError::ChannelTypeOutOfRange {
            flag,
            value,
            type_text,
        },
        ChannelTypeError::Reserved {
            channel_type,
            reason,
        } => ConfigError::ReservedChannelType {
            flag,
            value,
            channel_type,
            reason,
        },
    })
}

/// Parses a whole `--channel TYPE:PATH` value. The split is at the first `:`, so the path may
/// contain colons.
pub fn parse_channel_spec(s: &str) -> Result<(u32, PathBuf), ConfigError> {
    let Some((type_text, path)) = s.split_once(':') else {
        return Err(ConfigError::MissingSeparator {
            flag: CHANNEL_FLAG,
            value: s.to_owned(),
        });
    };
    let channel_type = parse_channel_type(type_text).map_err(|e| e.in_argument(CHANNEL_FLAG, s))?;
    if path.is_empty() {
        return Err(ConfigError::EmptyPath {
            flag: CHANNEL_FLAG,
            value: s.to_owned(),
        });
    }
    Ok((channel_type, PathBuf::from(path)))
}

/// One `--channel TYPE:PATH` argument, parsed; whether its type is already taken is checked
/// when it is added to a table ([`ChannelTable::add_spec`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSpec {
    /// The channel type (never 0 or 0xFFFFFFFF).
    pub channel_type: u32,
    /// The host socket (never empty).
    pub path: PathBuf,
    /// The argument as given, for messages.
    pub arg: String,
}

impl ChannelSpec {
    /// Parses a `--channel TYPE:PATH` value (see [`parse_channel_spec`]).
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let (channel_type, path) = parse_channel_spec(s)?;
        Ok(Self {
            channel_type,
            path,
            arg: s.to_owned(),
        })
    }
}

/// Parses `--wayland-sock PATH[,name=NAME]`, crosvm's form. Only the default, unnamed socket
/// (no `name=`, or an empty one) is the Wayland channel; crosvm's named sockets belong to its
/// virtio-wl device, so a name is refused, and so is any other option. The split is at the
/// first `,`: a path containing one can be given as `--channel 1:PATH`.
pub fn parse_wayland_sock(arg: &OsStr) -> Result<PathBuf, ConfigError> {
    let value = || arg.to_string_lossy().into_owned();
    let bytes = arg.as_bytes();
    let (path, options) = match bytes.iter().position(|&b| b == b',') {
        Some(comma) => (&bytes[..comma], Some(&bytes[comma + 1..])),
        None => (bytes, None),
    };
    for option in options.into_iter().flat_map(|o| o.split(|&b| b == b',')) {
        match option.strip_prefix(b"name=") {
            Some(b"") => {}
            Some(name) => {
                return Err(ConfigError::NamedWaylandSock {
                    flag: WAYLAND_SOCK_FLAG,
                    value: value(),
                    name: String::from_utf8_lossy(name).into_owned(),
                })
            }
            None => {
                return Err(ConfigError::WaylandSockOption {
                    flag: WAYLAND_SOCK_FLAG,
                    value: value(),
                    option: String::from_utf8_lossy(option).into_owned(),
                })
            }
        }
    }
    if path.is_empty() {
        return Err(ConfigError::EmptyPath {
            flag: WAYLAND_SOCK_FLAG,
            value: value(),
        });
    }
    Ok(PathBuf::from(OsStr::from_bytes(path)))
}

/// Parses `--scanouts N`: a decimal number from 0 to [`MAX_SCANOUTS`].
pub fn parse_scanouts(s: &str) -> Result<u32, ConfigError> {
    s.parse::<u32>()
        .ok()
        .filter(|n| (0..=MAX_SCANOUTS).contains(n) && s.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| ConfigError::InvalidScanouts {
            flag: SCANOUTS_FLAG,
            value: s.to_owned(),
        })
}

/// Checks the `--socket-path PATH` value (present and non-empty; the daemon creates the socket).
pub fn parse_socket_path(path: &Path) -> Result<PathBuf, ConfigError> {
    if path.as_os_str().is_empty() {
        return Err(ConfigError::EmptyPath {
            flag: SOCKET_PATH_FLAG,
            value: String::new(),
        });
    }
    Ok(path.to_path_buf())
}

/// Parses `--fd N`: a decimal file descriptor number. Whether N is an open, connected Unix
/// stream socket is checked separately ([`crate::inherited::inspect`]).
pub fn parse_fd(s: &str) -> Result<RawFd, ConfigError> {
    s.parse::<RawFd>()
        .ok()
        .filter(|&fd| fd >= 0 && s.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| ConfigError::InvalidFd {
            flag: FD_FLAG,
            value: s.to_owned(),
        })
}

/// An `--fd N` whose descriptor cannot be served (not open, not a connected Unix stream socket).
pub fn unusable_fd(fd: RawFd, reason: FdError) -> ConfigError {
    ConfigError::UnusableFd {
        flag: FD_FLAG,
        value: fd.to_string(),
        reason,
    }
}

/// Largest `--shm-size`: 1 TiB. The VMM reserves the region in guest physical address space,
/// where more than this rarely fits (and no guest needs it).
pub const MAX_SHM_SIZE: u64 = 1 << 40;

/// Parses `--shm-size SIZE`: a byte count with an optional binary suffix `K`, `M` or `G`, also
/// written `KiB`, `MiB`, `GiB` (any case; `8G` is 8 << 30). It must be a multiple of the host
/// page size, from one page to [`MAX_SHM_SIZE`].
pub fn parse_shm_size(s: &str) -> Result<u64, ConfigError> {
    parse_shm_size_with_page(s, cross_domain_protocol::page_size())
}

fn parse_shm_size_with_page(s: &str, page_size: u64) -> Result<u64, ConfigError> {
    let err = |reason| ConfigError::InvalidShmSize {
        flag: SHM_SIZE_FLAG,
        value: s.to_owned(),
        reason,
    };
    // `KiB`, `MiB`, `GiB`: drop the `iB` after a unit letter (the three bytes are ASCII, so
    // the slice is on a character boundary).
    let b = s.as_bytes();
    let s_unit = match b.len().checked_sub(3).map(|i| (b[i], &b[i + 1..])) {
        Some((b'k' | b'K' | b'm' | b'M' | b'g' | b'G', ib)) if ib.eq_ignore_ascii_case(b"ib") => {
            &s[..s.len() - 2]
        }
        _ => s,
    };
    let (digits, shift) = match s_unit.as_bytes().last() {
        Some(b'k' | b'K') => (&s_unit[..s_unit.len() - 1], 10),
        Some(b'm' | b'M') => (&s_unit[..s_unit.len() - 1], 20),
        Some(b'g' | b'G') => (&s_unit[..s_unit.len() - 1], 30),
        _ => (s_unit, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(ShmSizeProblem::Syntax));
    }
    let size = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or(err(ShmSizeProblem::TooLarge))?;
    if size == 0 {
        return Err(err(ShmSizeProblem::Zero));
    }
    if size > MAX_SHM_SIZE {
        return Err(err(ShmSizeProblem::AboveMaximum));
    }
    if size % page_size != 0 {
        return Err(err(ShmSizeProblem::NotPageMultiple { page_size }));
    }
    Ok(size)
}

/// Why a `--shm-size` value was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShmSizeProblem {
    /// Not digits with an optional K, M or G.
    Syntax,
    /// Above 2^64 - 1 bytes.
    TooLarge,
    /// Zero.
    Zero,
    /// Above [`MAX_SHM_SIZE`].
    AboveMaximum,
    /// Not a multiple of the host page size.
    NotPageMultiple {
        /// The host page size in bytes.
        page_size: u64,
    },
}

impl fmt::Display for ShmSizeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax => f.write_str(
                "expected a byte count with an optional K, M or G suffix (binary units), \
                 for example 8G",
            ),
            Self::TooLarge => f.write_str("the size does not fit in 64 bits"),
            Self::Zero => f.write_str("the size must not be zero"),
            Self::AboveMaximum => f.write_str("the size must be at most 1024G (1 TiB)"),
            Self::NotPageMultiple { page_size } => write!(
                f,
                "the size must be a multiple of the host page size ({page_size} bytes)"
            ),
        }
    }
}

fn check_reserved(channel_type: u32) -> Result<(), ConfigError> {
    match channel::reserved_reason(channel_type) {
        None => Ok(()),
        Some(reason) => Err(ConfigError::ReservedChannelType {
            flag: CHANNEL_FLAG,
            value: channel_type.to_string(),
            channel_type,
            reason,
        }),
    }
}

/// A rejected configuration. Each message starts with the flag and the value as given, e.g.
/// `--channel '2:/a': channel type 2 is given twice`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--channel` without a `:`.
    #[error("{flag} '{value}': expected TYPE:PATH, for example 2:/run/portal.sock")]
    MissingSeparator { flag: &'static str, value: String },

    /// `--channel :PATH`.
    #[error("{flag} '{value}': the channel type before ':' is missing")]
    EmptyChannelType { flag: &'static str, value: String },

    /// A TYPE that is neither a number nor a known name.
    #[error(
        "{flag} '{value}': unknown channel type '{type_text}' (expected a number, 0x-hex, or one of {})",
        channel_name_list()
    )]
    UnknownChannelType {
        flag: &'static str,
        value: String,
        type_text: String,
    },

    /// A numeric TYPE above 0xFFFFFFFF.
    #[error("{flag} '{value}': channel type '{type_text}' does not fit in 32 bits")]
    ChannelTypeOutOfRange {
        flag: &'static str,
        value: String,
        type_text: String,
    },

    /// TYPE 0 or 0xFFFFFFFF.
    #[error("{flag} '{value}': {reason}")]
    ReservedChannelType {
        flag: &'static str,
        value: String,
        channel_type: u32,
        reason: ReservedReason,
    },

    /// An empty PATH (`--channel 2:`, `--wayland-sock ''`, `--socket-path ''`).
    #[error("{flag} '{value}': the socket path is empty")]
    EmptyPath { flag: &'static str, value: String },

    /// A PATH longer than a Unix socket address can hold.
    #[error("{flag} '{value}': the socket path is longer than {MAX_SOCKET_PATH} bytes, the limit of a Unix socket address")]
    PathTooLong { flag: &'static str, value: String },

    /// The same channel type twice, by number, by name or through `--wayland-sock`.
    #[error(
        "{flag} '{value}': channel type {channel_type} is given twice{}",
        duplicate_hint(flag)
    )]
    DuplicateChannel {
        flag: &'static str,
        value: String,
        channel_type: u32,
    },

    /// `--wayland-sock PATH,name=NAME` with a name.
    #[error(
        "{flag} '{value}': a named socket (name={name}) belongs to crosvm's virtio-wl device; \
         this device connects only the unnamed Wayland socket, as channel 1: drop \
         ',name={name}', or connect another service with --channel TYPE:PATH"
    )]
    NamedWaylandSock {
        flag: &'static str,
        value: String,
        name: String,
    },

    /// `--wayland-sock PATH,OPTION` with an option other than `name=`.
    #[error(
        "{flag} '{value}': unknown option '{option}' (crosvm's form is PATH[,name=NAME]; a \
         path that contains ',' can be given as --channel 1:PATH)"
    )]
    WaylandSockOption {
        flag: &'static str,
        value: String,
        option: String,
    },

    /// `--scanouts` not a number in 0..=16.
    #[error("{flag} '{value}': expected a number from 0 to {MAX_SCANOUTS}")]
    InvalidScanouts { flag: &'static str, value: String },

    /// `--fd` not a decimal number.
    #[error("{flag} '{value}': expected a file descriptor number, for example 3")]
    InvalidFd { flag: &'static str, value: String },

    /// `--fd N` that is not an open, connected Unix stream socket.
    #[error("{flag} '{value}': {reason}")]
    UnusableFd {
        flag: &'static str,
        value: String,
        reason: FdError,
    },

    /// `--shm-size` not a non-zero, page-aligned byte count.
    #[error("{flag} '{value}': {reason}")]
    InvalidShmSize {
        flag: &'static str,
        value: String,
        reason: ShmSizeProblem,
    },

    /// `--sandbox` neither `on` nor `none`.
    #[error("{flag} '{value}': expected 'on' (the default) or 'none' (no sandbox, for debugging)")]
    InvalidSandbox { flag: &'static str, value: String },

    /// `--seccomp` neither `kill` nor `log`.
    #[error(
        "{flag} '{value}': expected 'kill' (the default) or 'log' (log calls outside the \
         allow-list instead of killing the daemon)"
    )]
    InvalidSeccomp { flag: &'static str, value: String },

    /// `--socket-group` names no group.
    #[error("{flag} '{value}': no such group")]
    UnknownGroup { flag: &'static str, value: String },

    /// `--socket-group` where the daemon does not create the socket.
    #[error(
        "{flag} '{value}': only with --socket-path, where the daemon creates the socket; with \
         {other} the socket exists already{hint}"
    )]
    SocketGroupWithoutPath {
        flag: &'static str,
        value: String,
        other: &'static str,
        hint: &'static str,
    },

    /// `--log-level` not one of the five levels.
    #[error("{flag} '{value}': expected one of error, warn, info, debug, trace")]
    InvalidLogLevel { flag: &'static str, value: String },

    /// The socket-activation variables are malformed or pass something the daemon cannot serve.
    #[error("socket activation: {reason}")]
    Activation { reason: String },

    /// No way to reach the VMM was given.
    #[error(
        "no vhost-user socket given: pass --socket-path PATH or --fd N, or start the daemon \
         through socket activation (LISTEN_FDS)"
    )]
    NoListenSocket,

    /// More than one way to reach the VMM was given.
    #[error(
        "{first} and {second} both give the vhost-user socket: use exactly one of \
         --socket-path, --fd and socket activation"
    )]
    ListenConflict {
        first: &'static str,
        second: &'static str,
    },
}

impl ConfigError {
    /// The same error, reported against `flag` with the whole argument `value`.
    fn in_argument(mut self, new_flag: &'static str, new_value: &str) -> Self {
        match &mut self {
            Self::MissingSeparator { flag, value }
            | Self::EmptyChannelType { flag, value }
            | Self::UnknownChannelType { flag, value, .. }
            | Self::ChannelTypeOutOfRange { flag, value, .. }
            | Self::ReservedChannelType { flag, value, .. }
            | Self::EmptyPath { flag, value }
            | Self::PathTooLong { flag, value }
            | Self::DuplicateChannel { flag, value, .. }
            | Self::InvalidScanouts { flag, value }
            | Self::InvalidFd { flag, value }
            | Self::UnusableFd { flag, value, .. }
            | Self::InvalidShmSize { flag, value, .. }
            | Self::InvalidSandbox { flag, value }
            | Self::InvalidSeccomp { flag, value }
            | Self::InvalidLogLevel { flag, value }
            | Self::UnknownGroup { flag, value }
            | Self::NamedWaylandSock { flag, value, .. }
            | Self::WaylandSockOption { flag, value, .. }
            | Self::SocketGroupWithoutPath { flag, value, .. } => {
                *flag = new_flag;
                new_value.clone_into(value);
            }
            Self::Activation { .. } | Self::NoListenSocket | Self::ListenConflict { .. } => {}
        }
        self
    }
}

fn duplicate_hint(flag: &str) -> &'static str {
    if flag == WAYLAND_SOCK_FLAG {
        " (--wayland-sock PATH is the same as --channel 1:PATH)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(specs: &[&str]) -> Result<ChannelTable, ConfigError> {
        let mut t = ChannelTable::new();
        for s in specs {
            t.add_channel_arg(s)?;
        }
        Ok(t)
    }

    #[test]
    fn socket_path_length() {
        let ok = format!("2:/{}", "a".repeat(MAX_SOCKET_PATH - 1));
        assert!(table(&[&ok]).is_ok());
        let long = format!("2:/{}", "a".repeat(MAX_SOCKET_PATH));
        let e = table(&[&long]).unwrap_err();
        assert!(matches!(e, ConfigError::PathTooLong { .. }), "{e:?}");
        assert!(e.to_string().starts_with("--channel '2:/aaa"), "{e}");
    }

    #[test]
    fn decimal_types() {
        assert_eq!(parse_channel_type("1").unwrap(), 1);
        assert_eq!(parse_channel_type("2").unwrap(), 2);
        assert_eq!(parse_channel_type("007").unwrap(), 7);
        assert_eq!(parse_channel_type("4294967294").unwrap(), 0xFFFF_FFFE);
    }

    #[test]
    fn hex_types() {
        assert_eq!(parse_channel_type("0x10").unwrap(), 0x10);
        assert_eq!(parse_channel_type("0X11").unwrap(), 0x11);
        assert_eq!(parse_channel_type("0xaB").unwrap(), 0xab);
        assert_eq!(parse_channel_type("0xFFFFFFFE").unwrap(), 0xFFFF_FFFE);
    }

    #[test]
    fn names_in_any_case() {
        for &(name, t) in CHANNEL_NAMES {
            assert_eq!(parse_channel_type(name).unwrap(), t);
            assert_eq!(parse_channel_type(&name.to_uppercase()).unwrap(), t);
        }
        assert_eq!(parse_channel_type("Wayland").unwrap(), 1);
        assert_eq!(parse_channel_type("DBus-Session").unwrap(), 0x12);
    }

    #[test]
    fn channel_names() {
        assert_eq!(channel_name(1), Some("wayland"));
        assert_eq!(channel_name(0x13), Some("dbus-system"));
        assert_eq!(channel_name(3), None);
    }

    #[test]
    fn unknown_types() {
        for s in [
            "foo",
            "-1",
            "+1",
            " 1",
            "1 ",
            "0x",
            "0xg",
            "0x+1",
            "1_000",
            "wayland0",
            "dbus_session",
        ] {
            let e = parse_channel_type(s).unwrap_err();
            assert!(
                matches!(e, ConfigError::UnknownChannelType { .. }),
                "{s}: {e:?}"
            );
        }
        let e = parse_channel_spec("foo:/x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--channel 'foo:/x': unknown channel type 'foo' (expected a number, 0x-hex, or one of \
             wayland, camera, pipewire, x11, dbus-session, dbus-system)"
        );
    }

    #[test]
    fn overflowing_types() {
        for s in ["4294967296", "0x100000000", "99999999999999999999999"] {
            let e = parse_channel_type(s).unwrap_err();
            assert!(
                matches!(e, ConfigError::ChannelTypeOutOfRange { .. }),
                "{s}: {e:?}"
            );
        }
        let e = parse_channel_spec("4294967296:/x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--channel '4294967296:/x': channel type '4294967296' does not fit in 32 bits"
        );
    }

    #[test]
    fn reserved_types() {
        for s in ["0", "0x0", "00", "4294967295", "0xFFFFFFFF", "0xffffffff"] {
            let e = parse_channel_type(s).unwrap_err();
            assert!(
                matches!(e, ConfigError::ReservedChannelType { .. }),
                "{s}: {e:?}"
            );
        }
        let e = parse_channel_spec("0:/x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--channel '0:/x': channel type 0 is reserved: it means 'no channel' (a query-only \
             context)"
        );
        let e = parse_channel_spec("0xFFFFFFFF:/x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--channel '0xFFFFFFFF:/x': channel type 0xffffffff is reserved for internal \
             sockets, never a host path"
        );
        let mut t = ChannelTable::new();
        assert!(matches!(
            t.insert(0, "/x".into()),
            Err(ConfigError::ReservedChannelType {
                channel_type: 0,
                ..
            })
        ));
        assert!(matches!(
            t.insert(u32::MAX, "/x".into()),
            Err(ConfigError::ReservedChannelType { .. })
        ));
        assert!(t.is_empty());
    }

    #[test]
    fn specs() {
        assert_eq!(
            parse_channel_spec("2:/run/portal.sock").unwrap(),
            (2, "/run/portal.sock".into())
        );
        assert_eq!(
            parse_channel_spec("wayland:/run/user/1000/wayland-0")
                .unwrap()
                .0,
            1
        );
        assert_eq!(
            parse_channel_spec("0x10:rel/pw").unwrap(),
            (0x10, "rel/pw".into())
        );
        // Split at the first ':'; the path keeps the rest.
        assert_eq!(
            parse_channel_spec("2:/a:b:c").unwrap(),
            (2, "/a:b:c".into())
        );
    }

    #[test]
    fn missing_separator() {
        for s in ["2", "/run/portal.sock", "wayland", ""] {
            let e = parse_channel_spec(s).unwrap_err();
            assert!(
                matches!(e, ConfigError::MissingSeparator { .. }),
                "{s}: {e:?}"
            );
        }
        assert_eq!(
            parse_channel_spec("2").unwrap_err().to_string(),
            "--channel '2': expected TYPE:PATH, for example 2:/run/portal.sock"
        );
    }

    #[test]
    fn empty_type() {
        let e = parse_channel_spec(":/x").unwrap_err();
        assert!(matches!(e, ConfigError::EmptyChannelType { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "--channel ':/x': the channel type before ':' is missing"
        );
        assert!(matches!(
            parse_channel_type(""),
            Err(ConfigError::EmptyChannelType { .. })
        ));
    }

    #[test]
    fn empty_path() {
        let e = parse_channel_spec("2:").unwrap_err();
        assert!(matches!(e, ConfigError::EmptyPath { .. }), "{e:?}");
        assert_eq!(e.to_string(), "--channel '2:': the socket path is empty");
        let mut t = ChannelTable::new();
        assert!(matches!(
            t.insert(2, PathBuf::new()),
            Err(ConfigError::EmptyPath { .. })
        ));
        let e = t.add_wayland_sock_arg(Path::new("")).unwrap_err();
        assert_eq!(e.to_string(), "--wayland-sock '': the socket path is empty");
        assert!(t.is_empty());
        let e = parse_socket_path(Path::new("")).unwrap_err();
        assert_eq!(e.to_string(), "--socket-path '': the socket path is empty");
        assert_eq!(
            parse_socket_path(Path::new("/tmp/g.sock")).unwrap(),
            Path::new("/tmp/g.sock")
        );
    }

    #[test]
    fn duplicates() {
        let e = table(&["2:/a", "2:/b"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--channel '2:/b': channel type 2 is given twice"
        );
        // The same type through a name and a number, or through hex.
        let e = table(&["wayland:/a", "1:/b"]).unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::DuplicateChannel {
                    channel_type: 1,
                    ..
                }
            ),
            "{e:?}"
        );
        let e = table(&["0x10:/a", "PipeWire:/b"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--channel 'PipeWire:/b': channel type 16 is given twice"
        );
        let e = table(&["16:/a", "0x10:/a"]).unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::DuplicateChannel {
                    channel_type: 16,
                    ..
                }
            ),
            "{e:?}"
        );
        // --wayland-sock is --channel 1:PATH.
        let mut t = table(&["1:/a"]).unwrap();
        let e = t.add_wayland_sock_arg(Path::new("/w")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--wayland-sock '/w': channel type 1 is given twice (--wayland-sock PATH is the same \
             as --channel 1:PATH)"
        );
        let mut t = ChannelTable::new();
        t.add_wayland_sock_arg(Path::new("/w")).unwrap();
        let e = t.add_channel_arg("wayland:/a").unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::DuplicateChannel {
                    channel_type: 1,
                    ..
                }
            ),
            "{e:?}"
        );
        // The first mapping is kept.
        assert_eq!(t.get(1), Some(Path::new("/w")));
        assert_eq!(t.len(), 1);
        // Different types may share a path.
        assert_eq!(table(&["1:/a", "2:/a"]).unwrap().len(), 2);
    }

    #[test]
    fn lookup_and_iteration() {
        let t = table(&["0x11:/x11", "wayland:/wl", "2:/portal"]).unwrap();
        assert_eq!(t.len(), 3);
        assert!(!t.is_empty());
        assert_eq!(t.get(1), Some(Path::new("/wl")));
        assert_eq!(t.get(2), Some(Path::new("/portal")));
        assert_eq!(t.get(0x11), Some(Path::new("/x11")));
        assert_eq!(t.get(3), None);
        let all: Vec<(u32, &Path)> = t.iter().collect();
        assert_eq!(
            all,
            [
                (1, Path::new("/wl")),
                (2, Path::new("/portal")),
                (0x11, Path::new("/x11"))
            ]
        );
        assert!(ChannelTable::new().is_empty());
        assert_eq!(ChannelTable::new().len(), 0);
    }

    #[test]
    fn capset_mask_values() {
        assert_eq!(ChannelTable::new().capset_mask(), 0);
        assert_eq!(table(&["wayland:/a"]).unwrap().capset_mask(), 0x2);
        assert_eq!(table(&["camera:/a"]).unwrap().capset_mask(), 0x4);
        assert_eq!(table(&["pipewire:/a"]).unwrap().capset_mask(), 0x1_0000);
        assert_eq!(table(&["x11:/a"]).unwrap().capset_mask(), 0x2_0000);
        assert_eq!(table(&["dbus-session:/a"]).unwrap().capset_mask(), 0x4_0000);
        assert_eq!(table(&["dbus-system:/a"]).unwrap().capset_mask(), 0x8_0000);
        assert_eq!(table(&["31:/a"]).unwrap().capset_mask(), 0x8000_0000);
        assert_eq!(
            table(&["1:/a", "2:/b", "0x10:/c"]).unwrap().capset_mask(),
            0x1_0006
        );
    }

    #[test]
    fn types_from_32_are_accepted_but_not_advertised() {
        let t = table(&["32:/a", "1:/w", "0xFFFFFFFE:/b", "31:/c"]).unwrap();
        assert_eq!(t.get(32), Some(Path::new("/a")));
        assert_eq!(t.get(0xFFFF_FFFE), Some(Path::new("/b")));
        assert_eq!(t.capset_mask(), 0x8000_0002);
        assert_eq!(t.unadvertised().collect::<Vec<_>>(), [32, 0xFFFF_FFFE]);
        assert_eq!(table(&["1:/w"]).unwrap().unadvertised().count(), 0);
    }

    #[test]
    fn wayland_socks() {
        let ok = |s: &str| parse_wayland_sock(OsStr::new(s)).unwrap();
        assert_eq!(
            ok("/run/user/1000/wayland-0"),
            Path::new("/run/user/1000/wayland-0")
        );
        // crosvm's form, with its default (empty) name.
        assert_eq!(ok("/w,name="), Path::new("/w"));
        assert_eq!(ok("rel/w"), Path::new("rel/w"));
        let e = parse_wayland_sock(OsStr::new("/w,name=mojo")).unwrap_err();
        assert!(matches!(e, ConfigError::NamedWaylandSock { .. }), "{e:?}");
        assert!(
            e.to_string().starts_with(
                "--wayland-sock '/w,name=mojo': a named socket (name=mojo) belongs to crosvm's \
                 virtio-wl device"
            ),
            "{e}"
        );
        for s in ["/w,mode=0", "/w,", "/a,b", "/w,name=,x"] {
            let e = parse_wayland_sock(OsStr::new(s)).unwrap_err();
            assert!(
                matches!(e, ConfigError::WaylandSockOption { .. }),
                "{s}: {e:?}"
            );
            assert!(e.to_string().contains("PATH[,name=NAME]"), "{e}");
        }
        for s in ["", ",name="] {
            let e = parse_wayland_sock(OsStr::new(s)).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("--wayland-sock '{s}': the socket path is empty")
            );
        }
    }

    #[test]
    fn scanouts() {
        for n in 0..=MAX_SCANOUTS {
            assert_eq!(parse_scanouts(&n.to_string()).unwrap(), n);
        }
        assert_eq!(parse_scanouts("01").unwrap(), 1);
        for s in ["17", "-1", "+1", "", "one", "0x1", "4294967296", " 1"] {
            let e = parse_scanouts(s).unwrap_err();
            assert!(
                matches!(e, ConfigError::InvalidScanouts { .. }),
                "{s}: {e:?}"
            );
        }
        assert_eq!(
            parse_scanouts("17").unwrap_err().to_string(),
            "--scanouts '17': expected a number from 0 to 16"
        );
    }

    #[test]
    fn shm_sizes() {
        let page = 4096;
        let ok = |s: &str| parse_shm_size_with_page(s, page).unwrap();
        assert_eq!(ok("8G"), 8 << 30);
        assert_eq!(ok("8g"), 8 << 30);
        assert_eq!(ok("512M"), 512 << 20);
        assert_eq!(ok("512m"), 512 << 20);
        assert_eq!(ok("4K"), 4096);
        assert_eq!(ok("64k"), 64 << 10);
        assert_eq!(ok("4096"), 4096);
        assert_eq!(ok("8589934592"), 8 << 30);
        assert_eq!(ok("016M"), 16 << 20);
        // The largest value allowed, and the binary unit spellings.
        assert_eq!(ok("1024G"), MAX_SHM_SIZE);
        assert_eq!(ok("8GiB"), 8 << 30);
        assert_eq!(ok("8gib"), 8 << 30);
        assert_eq!(ok("512MiB"), 512 << 20);
        assert_eq!(ok("64KiB"), 64 << 10);
        assert_eq!(ok("4kIB"), 4096);
        // Page size 16 KiB (some arm64 hosts).
        assert_eq!(parse_shm_size_with_page("16K", 16384).unwrap(), 16384);
        // The default is a valid value.
        assert_eq!(ok("8G"), DEFAULT_SHM_SIZE);
        // The real host page size divides the default.
        assert_eq!(parse_shm_size("8G").unwrap(), DEFAULT_SHM_SIZE);
    }

    #[test]
    fn bad_shm_sizes() {
        let problem = |s: &str| match parse_shm_size_with_page(s, 4096).unwrap_err() {
            ConfigError::InvalidShmSize { reason, value, .. } => {
                assert_eq!(value, s);
                reason
            }
            e => panic!("{s}: {e:?}"),
        };
        for s in [
            "", "G", "x", "8T", "8GB", "8 G", " 8G", "-1", "+4096", "0x1000", "1.5G", "8Gg", "8iB",
            "GiB", "8 GiB", "8GiBB", "8TiB", "8Bi",
        ] {
            assert_eq!(problem(s), ShmSizeProblem::Syntax, "{s:?}");
        }
        for s in ["0", "0G", "000K"] {
            assert_eq!(problem(s), ShmSizeProblem::Zero, "{s:?}");
        }
        for s in [
            "17179869184G",
            "18446744073709551616",
            "99999999999999999999999M",
        ] {
            assert_eq!(problem(s), ShmSizeProblem::TooLarge, "{s:?}");
        }
        // Fits in 64 bits, but is more than any guest needs.
        for s in ["1025G", "17179869183G", "1048577M", "1099511631872"] {
            assert_eq!(problem(s), ShmSizeProblem::AboveMaximum, "{s:?}");
        }
        assert_eq!(
            parse_shm_size_with_page("2048GiB", 4096)
                .unwrap_err()
                .to_string(),
            "--shm-size '2048GiB': the size must be at most 1024G (1 TiB)"
        );
        for s in ["1", "4095", "1K", "6K", "4097"] {
            assert_eq!(
                problem(s),
                ShmSizeProblem::NotPageMultiple { page_size: 4096 },
                "{s:?}"
            );
        }
        assert!(parse_shm_size_with_page("8K", 16384).is_err());
        assert_eq!(
            parse_shm_size_with_page("5000", 4096)
                .unwrap_err()
                .to_string(),
            "--shm-size '5000': the size must be a multiple of the host page size (4096 bytes)"
        );
        assert_eq!(
            parse_shm_size_with_page("0", 4096).unwrap_err().to_string(),
            "--shm-size '0': the size must not be zero"
        );
        assert_eq!(
            parse_shm_size_with_page("8T", 4096)
                .unwrap_err()
                .to_string(),
            "--shm-size '8T': expected a byte count with an optional K, M or G suffix (binary \
             units), for example 8G"
        );
    }

    #[test]
    fn fds() {
        assert_eq!(parse_fd("0").unwrap(), 0);
        assert_eq!(parse_fd("3").unwrap(), 3);
        assert_eq!(parse_fd("0042").unwrap(), 42);
        assert_eq!(parse_fd("2147483647").unwrap(), i32::MAX);
        for s in ["", "-1", "+3", " 3", "3 ", "x", "0x3", "2147483648", "3.0"] {
            let e = parse_fd(s).unwrap_err();
            assert!(matches!(e, ConfigError::InvalidFd { .. }), "{s}: {e:?}");
        }
        assert_eq!(
            parse_fd("x").unwrap_err().to_string(),
            "--fd 'x': expected a file descriptor number, for example 3"
        );
        assert_eq!(
            unusable_fd(9, FdError::NotOpen).to_string(),
            "--fd '9': not an open file descriptor"
        );
    }

    #[test]
    fn sandbox_modes() {
        assert_eq!(parse_sandbox("on").unwrap(), SandboxMode::On);
        assert_eq!(parse_sandbox("none").unwrap(), SandboxMode::None);
        assert_eq!(SandboxMode::default(), SandboxMode::On);
        for bad in ["", "off", "None", "ON", "no", " none"] {
            let e = parse_sandbox(bad).unwrap_err();
            assert!(
                matches!(e, ConfigError::InvalidSandbox { .. }),
                "{bad}: {e:?}"
            );
            let text = e.to_string();
            assert!(text.starts_with(&format!("--sandbox '{bad}': ")), "{text}");
        }
    }

    #[test]
    fn seccomp_modes() {
        assert_eq!(parse_seccomp("kill").unwrap(), SeccompMode::Kill);
        assert_eq!(parse_seccomp("log").unwrap(), SeccompMode::Log);
        assert_eq!(SeccompMode::default(), SeccompMode::Kill);
        for bad in ["", "trap", "allow", "Kill", "errno"] {
            let e = parse_seccomp(bad).unwrap_err();
            assert!(
                matches!(e, ConfigError::InvalidSeccomp { .. }),
                "{bad}: {e:?}"
            );
            let text = e.to_string();
            assert!(text.starts_with(&format!("--seccomp '{bad}': ")), "{text}");
        }
    }

    #[test]
    fn exactly_one_listen() {
        let path = || Listen::Path("/run/g.sock".into());
        let e = select_listen(Vec::new()).unwrap_err();
        assert!(matches!(e, ConfigError::NoListenSocket));
        assert_eq!(
            e.to_string(),
            "no vhost-user socket given: pass --socket-path PATH or --fd N, or start the daemon \
             through socket activation (LISTEN_FDS)"
        );
        match select_listen(vec![("--socket-path", path())]).unwrap() {
            Listen::Path(p) => assert_eq!(p, Path::new("/run/g.sock")),
            other => panic!("{other:?}"),
        }
        let e = select_listen(vec![("--socket-path", path()), (ACTIVATION_SOURCE, path())])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--socket-path and socket activation (LISTEN_FDS) both give the vhost-user socket: \
             use exactly one of --socket-path, --fd and socket activation"
        );
        assert_eq!(path().to_string(), "/run/g.sock");
    }
}
