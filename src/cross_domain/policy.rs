//! Which kinds of file descriptor a channel carries ([`FdPolicy`]), in both directions
//! (docs/protocol.md §5.3, §5.4, §6).
//!
//! A guest family understands only the identifier types its own host line writes: sommelier
//! and muvm's X11 bridge know nothing of sockets (type 7), which only magma's D-Bus guests
//! read (§5.9). So each channel says what it carries: host fds of a kind it does not allow
//! hang the channel up (as any fd the guest cannot be given, §5.3.1), and guest blobs or read
//! pipes it does not allow fail the SEND with an error response.
//!
//! This module owns the policy value, its defaults per channel type and its text form
//! (`memory+pipe+eventfd`, `none`). It never decides where a channel's policy comes from:
//! that is one place, `Env::policy`.

use std::fmt;
use std::str::FromStr;

/// One kind of fd a channel may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdClass {
    /// Memory: host memfds and dma-bufs (RECEIVE type 1), guest blobs (SEND type 1).
    Memory,
    /// Pipes: host write ends (RECEIVE type 4), guest read pipes (SEND type 3).
    Pipe,
    /// Eventfds from the host (RECEIVE type 5 or 6).
    Eventfd,
    /// Unix sockets from the host (RECEIVE type 7), which the guest may park and adopt
    /// (§3.10).
    Socket,
}

impl FdClass {
    /// Every class, in the order the text form lists them.
    pub const ALL: [FdClass; 4] = [
        FdClass::Memory,
        FdClass::Pipe,
        FdClass::Eventfd,
        FdClass::Socket,
    ];

    /// Its name in the text form.
    pub fn name(self) -> &'static str {
        match self {
            FdClass::Memory => "memory",
            FdClass::Pipe => "pipe",
            FdClass::Eventfd => "eventfd",
            FdClass::Socket => "socket",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for FdClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The kinds of fd one channel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdPolicy(u8);

/// The D-Bus channel types (docs/protocol.md §6), whose guests take sockets by default.
const DBUS_SESSION: u32 = 0x12;
const DBUS_SYSTEM: u32 = 0x13;

impl FdPolicy {
    /// A pure byte channel: no fd either way.
    pub const NONE: FdPolicy = FdPolicy(0);
    /// What every channel carries unless told otherwise: memory, pipes and eventfds.
    pub const BASIC: FdPolicy = FdPolicy(0b0111);
    /// Everything, sockets included.
    pub const ALL: FdPolicy = FdPolicy(0b1111);

    /// The policy of a channel of `channel_type` when the command line says nothing: memory,
    /// pipes and eventfds everywhere, and sockets too on D-Bus's 0x12 and 0x13, the one place a
    /// guest that understands type 7 is known to connect (docs/protocol-decisions.md).
    pub fn default_for(channel_type: u32) -> FdPolicy {
        match channel_type {
            DBUS_SESSION | DBUS_SYSTEM => FdPolicy::ALL,
            _ => FdPolicy::BASIC,
        }
    }

    /// Whether the channel carries fds of `class`.
    pub fn allows(self, class: FdClass) -> bool {
        self.0 & class.bit() != 0
    }

    /// This policy with `class` added.
    pub const fn with(self, class: FdClass) -> FdPolicy {
        FdPolicy(self.0 | 1 << (class as u8))
    }
}

impl fmt::Display for FdPolicy {
    /// `none`, or the allowed classes joined by `+` (`memory+pipe+eventfd`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == FdPolicy::NONE {
            return f.write_str("none");
        }
        let mut first = true;
        for class in FdClass::ALL.into_iter().filter(|&c| self.allows(c)) {
            if !first {
                f.write_str("+")?;
            }
            f.write_str(class.name())?;
            first = false;
        }
        Ok(())
    }
}

/// Why a policy's text form was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FdPolicyError {
    #[error("the fd list is empty (use 'none' for a channel without fds)")]
    Empty,
    #[error("unknown fd kind '{0}' (expected memory, pipe, eventfd, socket, or none alone)")]
    Unknown(String),
    #[error("fd kind '{0}' is listed twice")]
    Repeated(String),
    #[error("'none' cannot be combined with other kinds")]
    NoneCombined,
}

impl FromStr for FdPolicy {
    type Err = FdPolicyError;

    /// `none`, or kinds joined by `+` (`memory+pipe`), each at most once. `+` cannot clash with
    /// the `,` between the options of a `--channel` value.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(FdPolicyError::Empty);
        }
        if s == "none" {
            return Ok(FdPolicy::NONE);
        }
        let mut policy = FdPolicy::NONE;
        for word in s.split('+') {
            if word == "none" {
                return Err(FdPolicyError::NoneCombined);
            }
            let class = FdClass::ALL
                .into_iter()
                .find(|c| c.name() == word)
                .ok_or_else(|| FdPolicyError::Unknown(word.to_owned()))?;
            if policy.allows(class) {
                return Err(FdPolicyError::Repeated(word.to_owned()));
            }
            policy = policy.with(class);
        }
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_add_sockets_on_dbus_only() {
        for t in [1, 2, 0x10, 0x11, 0x20, 0xFFFF_FFFE] {
            let p = FdPolicy::default_for(t);
            assert_eq!(p.to_string(), "memory+pipe+eventfd", "{t:#x}");
            assert!(!p.allows(FdClass::Socket));
        }
        for t in [0x12, 0x13] {
            assert_eq!(
                FdPolicy::default_for(t).to_string(),
                "memory+pipe+eventfd+socket"
            );
        }
    }

    #[test]
    fn the_text_form_round_trips_and_refuses_nonsense() {
        for s in [
            "none",
            "memory",
            "pipe+socket",
            "memory+pipe+eventfd+socket",
        ] {
            assert_eq!(s.parse::<FdPolicy>().unwrap().to_string(), s);
        }
        let p: FdPolicy = "socket+memory".parse().unwrap();
        assert!(p.allows(FdClass::Memory) && p.allows(FdClass::Socket));
        assert!(!p.allows(FdClass::Pipe) && !p.allows(FdClass::Eventfd));
        let bad = [
            ("", FdPolicyError::Empty),
            ("file", FdPolicyError::Unknown("file".into())),
            ("memory+", FdPolicyError::Unknown("".into())),
            ("Memory", FdPolicyError::Unknown("Memory".into())),
            ("pipe+pipe", FdPolicyError::Repeated("pipe".into())),
            ("none+memory", FdPolicyError::NoneCombined),
            ("memory,pipe", FdPolicyError::Unknown("memory,pipe".into())),
        ];
        for (s, e) in bad {
            assert_eq!(s.parse::<FdPolicy>(), Err(e), "{s:?}");
        }
    }
}
