//! The channel table and the `TYPE:PATH` syntax that fills it.
//!
//! This file owns [`ChannelTable`] (channel type → host Unix socket, with its invariants: no
//! reserved type, each type once, a non-empty path that fits a socket address) and the parsers
//! of `--channel TYPE:PATH[,fds=LIST][,ring=SIZE]` and `--wayland-sock PATH[,name=NAME]`.
//! Per-channel options (`TYPE:PATH,OPTION…`: `fds=`, the channel's [`FdPolicy`]; `ring=`, the
//! most of a large channel ring a message fills) belong here too, next to the syntax they
//! extend. It must never look at the file system: whether a socket
//! exists is for the connection, not for the table.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use cross_domain_protocol::channel::{self, ChannelTypeError};

#[cfg(doc)]
use super::CHANNEL_NAMES;
use crate::cross_domain::FdPolicy;

use super::{ConfigError, CHANNEL_FLAG, MAX_SOCKET_PATH, WAYLAND_CHANNEL_TYPE, WAYLAND_SOCK_FLAG};

/// Which host Unix socket a cross-domain context is connected to for each channel type.
///
/// Invariants kept by [`ChannelTable::insert`]: no type 0 or 0xFFFFFFFF, each type at most once,
/// no empty path. A channel given with `fds=` keeps that policy; the others have their type's
/// default ([`FdPolicy::default_for`]).
#[derive(Debug, Clone, Default)]
pub struct ChannelTable {
    paths: BTreeMap<u32, PathBuf>,
    /// The policies given with `fds=`, only for types in `paths`.
    fds: BTreeMap<u32, FdPolicy>,
    /// The ring sizes given with `ring=`, only for types in `paths`.
    rings: BTreeMap<u32, usize>,
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

    /// Parses one `--channel TYPE:PATH[,fds=LIST]` argument and adds it to the table.
    pub fn add_channel_arg(&mut self, arg: &str) -> Result<(), ConfigError> {
        self.add_spec(&ChannelSpec::parse(arg)?)
    }

    /// Adds a `--channel` argument parsed by [`ChannelSpec::parse`], with its `fds=` policy if
    /// it has one; errors name the argument as given.
    pub fn add_spec(&mut self, spec: &ChannelSpec) -> Result<(), ConfigError> {
        self.insert(spec.channel_type, spec.path.clone())
            .map_err(|e| e.in_argument(CHANNEL_FLAG, &spec.arg))?;
        if let Some(policy) = spec.fds {
            self.fds.insert(spec.channel_type, policy);
        }
        if let Some(size) = spec.ring {
            self.rings.insert(spec.channel_type, size);
        }
        Ok(())
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

    /// The fd policy of channel `channel_type`: the one given with `fds=`, or else the type's
    /// default ([`FdPolicy::default_for`]), also for a type that is not in the table.
    pub fn policy(&self, channel_type: u32) -> FdPolicy {
        self.fds
            .get(&channel_type)
            .copied()
            .unwrap_or_else(|| FdPolicy::default_for(channel_type))
    }

    /// The most of a channel ring one RECEIVE or READ of channel `channel_type` may fill for a
    /// context that asks for large rings (`ring=`): `None` when the channel offers none, and
    /// every context gets the 4096-byte messages of every peer.
    pub fn large_ring(&self, channel_type: u32) -> Option<usize> {
        self.rings.get(&channel_type).copied()
    }

    /// True when some channel offers large rings (the capset then has its fifth word).
    pub fn has_large_rings(&self) -> bool {
        !self.rings.is_empty()
    }

    /// The capset's `large_ring_channels` word: bit `t` set for every type `t < 32` with `ring=`.
    pub fn large_ring_mask(&self) -> u32 {
        self.rings
            .keys()
            .filter_map(|&t| 1u32.checked_shl(t))
            .fold(0, |mask, bit| mask | bit)
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

/// One `--channel TYPE:PATH[,fds=LIST][,ring=SIZE]` argument, parsed; whether its type is already taken is
/// checked when it is added to a table ([`ChannelTable::add_spec`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSpec {
    /// The channel type (never 0 or 0xFFFFFFFF).
    pub channel_type: u32,
    /// The host socket (never empty).
    pub path: PathBuf,
    /// The policy `fds=` gives, if given.
    pub fds: Option<FdPolicy>,
    /// The ring size `ring=` gives, if given (within [`MIN_RING`]..=[`MAX_RING`]).
    pub ring: Option<usize>,
    /// The argument as given, for messages.
    pub arg: String,
}

/// What starts the options of a `--channel` value: see [`ChannelSpec::parse`].
const FDS_OPTION: &str = "fds=";
/// The large-ring option.
const RING_OPTION: &str = "ring=";
/// The smallest `ring=`: the ring every peer fills (4096 bytes).
pub const MIN_RING: usize = crate::cross_domain::protocol::CHANNEL_RING_MIN_SIZE;
/// The largest `ring=` (1 MiB), which bounds what one message may take of guest memory.
pub const MAX_RING: usize = crate::cross_domain::protocol::LARGE_RING_MAX_SIZE;

/// Parses a `ring=` size: bytes, or a number with `K` or `M` (KiB, MiB), within
/// [`MIN_RING`]..=[`MAX_RING`].
pub fn parse_ring_size(s: &str) -> Result<usize, String> {
    let (digits, unit) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 1 << 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 1 << 20),
        _ => (s, 1),
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("ring size '{s}' is not a number of bytes (or of K or M)"))?;
    match n.checked_mul(unit) {
        Some(size) if (MIN_RING..=MAX_RING).contains(&size) => Ok(size),
        _ => Err(format!(
            "ring size '{s}' is outside {MIN_RING} bytes to 1M (the ring every peer fills, \
             and the most one message may take)"
        )),
    }
}

impl ChannelSpec {
    /// Parses a `--channel TYPE:PATH[,fds=LIST][,ring=SIZE]` value. The path ends at the
    /// first `,fds=` or `,ring=`; the options follow, `,`-separated
    /// ([`ChannelSpec::with_options`]). A path that contains `,` but neither is taken whole,
    /// as it always was (see [`parse_channel_spec`]).
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let first = [FDS_OPTION, RING_OPTION]
            .iter()
            .filter_map(|o| s.find(&format!(",{o}")))
            .min();
        let (channel, options) = match first {
            Some(comma) => (&s[..comma], Some(&s[comma + 1..])),
            None => (s, None),
        };
        let spec = Self::parse_channel(channel, s)?;
        match options {
            Some(options) => spec.with_options(options),
            None => Ok(spec),
        }
    }

    /// Parses the `TYPE:PATH` part `channel` of the argument `arg` (errors name `arg`), with
    /// no options yet.
    pub fn parse_channel(channel: &str, arg: &str) -> Result<Self, ConfigError> {
        let (channel_type, path) =
            parse_channel_spec(channel).map_err(|e| e.in_argument(CHANNEL_FLAG, arg))?;
        Ok(Self {
            channel_type,
            path,
            fds: None,
            ring: None,
            arg: arg.to_owned(),
        })
    }

    /// This channel with the `,`-separated `options` (the text after the path's `,`): `fds=LIST`
    /// and `ring=SIZE`, each at most once. Any other option is refused.
    pub fn with_options(mut self, options: &str) -> Result<Self, ConfigError> {
        let (flag, value) = (CHANNEL_FLAG, self.arg.clone());
        for option in options.split(',') {
            if let Some(size) = option.strip_prefix(RING_OPTION) {
                if self.ring.is_some() {
                    return Err(ConfigError::RepeatedChannelOption {
                        flag,
                        value,
                        option: RING_OPTION,
                    });
                }
                let size = parse_ring_size(size).map_err(|reason| ConfigError::InvalidRing {
                    flag,
                    value: value.clone(),
                    reason,
                })?;
                self.ring = Some(size);
                continue;
            }
            let Some(list) = option.strip_prefix(FDS_OPTION) else {
                return Err(ConfigError::UnknownChannelOption {
                    flag,
                    value,
                    option: option.to_owned(),
                });
            };
            if self.fds.is_some() {
                return Err(ConfigError::RepeatedChannelOption {
                    flag,
                    value,
                    option: FDS_OPTION,
                });
            }
            let policy = list
                .parse::<FdPolicy>()
                .map_err(|reason| ConfigError::InvalidFds {
                    flag,
                    value: value.clone(),
                    reason,
                })?;
            self.fds = Some(policy);
        }
        Ok(self)
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

#[cfg(test)]
mod tests;
