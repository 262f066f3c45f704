//! Channel types as people write them: the well-known names (`wayland` is 1) and the syntax of
//! a channel type on a command line (decimal, `0x` hexadecimal, or a name), shared by the
//! daemon's `--channel TYPE:PATH` and the guest proxy's `--channel TYPE` so that both accept
//! and print the same spellings.
//!
//! The numbers themselves mean nothing to the protocol: the guest names one in INIT and the
//! two endpoints agree on what flows over it. Two are reserved and never name a host socket
//! ([`CHANNEL_TYPE_NONE`], [`CHANNEL_TYPE_INTERNAL_SOCKET`]).

use std::fmt;

/// Channel names accepted in place of numbers, with their numbers.
///
/// The numbers are the ones existing guests and hosts already use for these services. `camera`
/// is defined by the protocol but no known guest uses it.
pub const CHANNEL_NAMES: &[(&str, u32)] = &[
    ("wayland", 1),
    ("camera", 2),
    ("pipewire", 0x10),
    ("x11", 0x11),
    ("dbus-session", 0x12),
    ("dbus-system", 0x13),
];

/// Channel type 0: "no channel". A guest INITs with it to get a query-only context, so it can
/// never name a host socket.
pub const CHANNEL_TYPE_NONE: u32 = 0;

/// Channel type 0xFFFFFFFF: magma's "internal socket" (a socket parked by UUID inside the host),
/// never a configured path.
pub const CHANNEL_TYPE_INTERNAL_SOCKET: u32 = u32::MAX;

/// The well-known name of a channel type, if it has one (`1` → `"wayland"`).
pub fn channel_name(channel_type: u32) -> Option<&'static str> {
    CHANNEL_NAMES
        .iter()
        .find(|&&(_, t)| t == channel_type)
        .map(|&(name, _)| name)
}

/// The names of [`CHANNEL_NAMES`], comma-separated, for messages.
pub fn channel_name_list() -> String {
    let names: Vec<&str> = CHANNEL_NAMES.iter().map(|&(name, _)| name).collect();
    names.join(", ")
}

/// Why a channel type can never name a host socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservedReason {
    /// Type 0: a guest INITs with it to get a query-only context.
    NoChannel,
    /// Type 0xFFFFFFFF: magma's internal sockets, handed over inside the host by UUID.
    InternalSocket,
}

impl fmt::Display for ReservedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoChannel => {
                "channel type 0 is reserved: it means 'no channel' (a query-only context)"
            }
            Self::InternalSocket => {
                "channel type 0xffffffff is reserved for internal sockets, never a host path"
            }
        })
    }
}

/// Why `channel_type` is reserved, or `None` if it may name a host socket.
pub fn reserved_reason(channel_type: u32) -> Option<ReservedReason> {
    match channel_type {
        CHANNEL_TYPE_NONE => Some(ReservedReason::NoChannel),
        CHANNEL_TYPE_INTERNAL_SOCKET => Some(ReservedReason::InternalSocket),
        _ => None,
    }
}

/// A channel type that [`parse_channel_type`] rejects. The messages name the text but not the
/// flag it came with: each program adds that itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelTypeError {
    /// An empty string.
    #[error("the channel type is missing")]
    Empty,
    /// Neither a number nor a known name.
    #[error(
        "unknown channel type '{0}' (expected a number, 0x-hex, or one of {names})",
        names = channel_name_list()
    )]
    Unknown(String),
    /// A number above 0xFFFFFFFF.
    #[error("channel type '{0}' does not fit in 32 bits")]
    OutOfRange(String),
    /// 0 or 0xFFFFFFFF.
    #[error("{reason}")]
    Reserved {
        channel_type: u32,
        reason: ReservedReason,
    },
}

/// Parses a channel type: a decimal number, a `0x`/`0X` hexadecimal number, or a name from
/// [`CHANNEL_NAMES`] (any case). Rejects 0 and 0xFFFFFFFF, which are reserved (query-only
/// contexts and magma's internal sockets).
pub fn parse_channel_type(s: &str) -> Result<u32, ChannelTypeError> {
    if s.is_empty() {
        return Err(ChannelTypeError::Empty);
    }
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (s, 10),
    };
    let channel_type = if !digits.is_empty() && digits.chars().all(|c| c.is_digit(radix)) {
        // Only digits are left, so the one way this can fail is a value above u32::MAX.
        u32::from_str_radix(digits, radix)
            .map_err(|_| ChannelTypeError::OutOfRange(s.to_owned()))?
    } else if radix == 10 {
        CHANNEL_NAMES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s))
            .map(|&(_, t)| t)
            .ok_or_else(|| ChannelTypeError::Unknown(s.to_owned()))?
    } else {
        return Err(ChannelTypeError::Unknown(s.to_owned()));
    };
    if let Some(reason) = reserved_reason(channel_type) {
        return Err(ChannelTypeError::Reserved {
            channel_type,
            reason,
        });
    }
    Ok(channel_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_names() {
        assert_eq!(parse_channel_type("2"), Ok(2));
        assert_eq!(parse_channel_type("0x12"), Ok(0x12));
        assert_eq!(parse_channel_type("X11"), Ok(0x11));
        assert_eq!(channel_name(0x10), Some("pipewire"));
        assert_eq!(channel_name(3), None);
        for &(name, t) in CHANNEL_NAMES {
            assert_eq!(parse_channel_type(name), Ok(t));
            assert_eq!(channel_name(t), Some(name));
        }
    }

    #[test]
    fn rejections() {
        assert_eq!(parse_channel_type(""), Err(ChannelTypeError::Empty));
        assert_eq!(
            parse_channel_type("0xg"),
            Err(ChannelTypeError::Unknown("0xg".into()))
        );
        assert_eq!(
            parse_channel_type("4294967296"),
            Err(ChannelTypeError::OutOfRange("4294967296".into()))
        );
        assert_eq!(
            parse_channel_type("0xffffffff"),
            Err(ChannelTypeError::Reserved {
                channel_type: u32::MAX,
                reason: ReservedReason::InternalSocket
            })
        );
        assert_eq!(
            parse_channel_type("bogus").unwrap_err().to_string(),
            "unknown channel type 'bogus' (expected a number, 0x-hex, or one of wayland, camera, \
             pipewire, x11, dbus-session, dbus-system)"
        );
    }
}
