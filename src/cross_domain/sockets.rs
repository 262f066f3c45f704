//! Sockets a host service passed over a channel, and the VM's table of parked ("internal")
//! sockets (docs/protocol.md §3.3, §3.10, §5.9): what the Camera and ScreenCast portals hand
//! out over D-Bus (a connected PipeWire socket).
//!
//! A received `AF_UNIX` stream or seqpacket socket becomes an item ([`Item::Socket`]) announced
//! in RECEIVE with identifier type 7, size 0, on a channel whose policy carries sockets. Then:
//!
//! - ASSIGN_SOCKET_UUID (command 13, [`assign`]) moves it out of the context into the device's
//!   [`ParkedSockets`], under the guest's 16-byte uuid, with the fd policy and channel type of
//!   the channel it came from.
//! - A 36-byte INIT with channel type 0xFFFFFFFF and that uuid ([`ParkedSockets::take`]) takes
//!   it out again, once, and the new context uses it as its channel.
//!
//! Where magma loses a socket or overwrites an entry (§3.10), this module refuses instead: the
//! item's type is checked before it is taken (a wrong type keeps the item), a uuid already
//! parked is refused, and the table holds at most [`MAX_PARKED_SOCKETS`] (each is an open fd
//! of the daemon's). The device purges it on reset and when the VMM goes
//! ([`ParkedSockets::purge`]). This module never reads or writes a socket: once adopted, it is
//! a channel like any other (`channel.rs`).

use std::collections::HashMap;
use std::fmt;
use std::os::fd::OwnedFd;

use log::info;

use super::context::Cmd;
use super::env::Env;
use super::error::CtxError;
use super::items::{Item, ItemTable};
use super::policy::FdPolicy;
use super::protocol::{AssignSocketUuid, ASSIGN_SOCKET_UUID_SIZE};

/// Most sockets parked at once in one VM; further ASSIGN_SOCKET_UUIDs are refused.
pub const MAX_PARKED_SOCKETS: usize = 64;

/// The guest's name for a parked socket (16 bytes, random in the one guest known, §5.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketUuid(pub [u8; 16]);

impl fmt::Display for SocketUuid {
    /// 32 hex digits, in wire order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// A parked socket, with what its first channel said about it.
#[derive(Debug)]
pub(super) struct Parked {
    pub fd: OwnedFd,
    /// The fd policy of the channel it came from: an adopting context's channel carries the
    /// same kinds.
    pub policy: FdPolicy,
    /// The configured channel type it came from (through any number of adoptions), for logs.
    pub origin: u32,
}

/// The parked sockets of one VM, keyed by uuid; owned by the device (`Shared`), so that any
/// context of the VM may adopt what another parked.
#[derive(Debug, Default)]
pub struct ParkedSockets {
    map: HashMap<SocketUuid, Parked>,
}

impl ParkedSockets {
    /// Number of sockets parked now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no socket is parked.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Close every parked socket (device reset, VMM gone). Returns how many there were.
    pub fn purge(&mut self) -> usize {
        let n = self.map.len();
        if n > 0 {
            info!("closing {n} parked socket(s) no context adopted");
        }
        self.map.clear();
        n
    }

    /// Take the socket parked under `uuid` (one-shot).
    pub(super) fn take(&mut self, uuid: SocketUuid) -> Result<Parked, CtxError> {
        self.map
            .remove(&uuid)
            .ok_or(CtxError::UnknownSocketUuid(uuid))
    }

    /// Whether a socket may be parked under `uuid`: not when the uuid is already parked (never
    /// overwritten) or the table is full.
    fn check_room(&self, uuid: SocketUuid) -> Result<(), CtxError> {
        if self.map.contains_key(&uuid) {
            return Err(CtxError::SocketUuidInUse(uuid));
        }
        if self.map.len() >= MAX_PARKED_SOCKETS {
            return Err(CtxError::TooManyParkedSockets);
        }
        Ok(())
    }
}

/// ASSIGN_SOCKET_UUID (command 13, 32 bytes): move the socket item named by `cmd` from `items`
/// into the VM's parked sockets, with the `policy` and `origin` channel type of the context's
/// channel. Every check comes before the item is taken: an unknown id or one that is not a
/// socket, a uuid already parked, a full table — each is an error and changes nothing.
pub(super) fn assign(
    env: &mut Env<'_>,
    cmd: &Cmd<'_>,
    ctx_id: u32,
    items: &mut ItemTable,
    policy: FdPolicy,
    origin: u32,
) -> Result<(), CtxError> {
    if cmd.size != ASSIGN_SOCKET_UUID_SIZE {
        return Err(cmd.bad_size());
    }
    let c: AssignSocketUuid = cmd.read(env)?;
    let uuid = SocketUuid(c.uuid);
    if !matches!(items.get(c.id), Some(Item::Socket(_))) {
        return Err(CtxError::UnknownItem(c.id));
    }
    env.parked.check_room(uuid)?;
    // Checked above: the item is a socket, so nothing else is ever taken here.
    let Some(Item::Socket(fd)) = items.remove(c.id) else {
        return Err(CtxError::UnknownItem(c.id));
    };
    info!(
        "ctx {ctx_id}: socket {:#x} parked as {uuid} ({} parked)",
        c.id,
        env.parked.len() + 1
    );
    env.parked.map.insert(uuid, Parked { fd, policy, origin });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock() -> OwnedFd {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.into()
    }

    #[test]
    fn a_uuid_is_parked_once_and_taken_once() {
        let mut p = ParkedSockets::default();
        let u = SocketUuid([1; 16]);
        p.check_room(u).unwrap();
        p.map.insert(
            u,
            Parked {
                fd: sock(),
                policy: FdPolicy::ALL,
                origin: 0x12,
            },
        );
        assert!(matches!(p.check_room(u), Err(CtxError::SocketUuidInUse(x)) if x == u));
        let got = p.take(u).unwrap();
        assert_eq!((got.policy, got.origin), (FdPolicy::ALL, 0x12));
        assert!(matches!(p.take(u), Err(CtxError::UnknownSocketUuid(_))));
        assert!(p.is_empty());
    }

    #[test]
    fn the_table_is_bounded_and_purged() {
        let mut p = ParkedSockets::default();
        for i in 0..MAX_PARKED_SOCKETS {
            let u = SocketUuid([i as u8; 16]);
            p.check_room(u).unwrap();
            p.map.insert(
                u,
                Parked {
                    fd: sock(),
                    policy: FdPolicy::BASIC,
                    origin: 2,
                },
            );
        }
        assert!(matches!(
            p.check_room(SocketUuid([0xEE; 16])),
            Err(CtxError::TooManyParkedSockets)
        ));
        assert_eq!(p.purge(), MAX_PARKED_SOCKETS);
        assert_eq!(p.len(), 0);
        assert_eq!(
            SocketUuid([0xab; 16]).to_string(),
            "abababababababababababababababab"
        );
    }
}
