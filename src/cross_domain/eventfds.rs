//! Eventfds a host service passed over a channel (docs/protocol.md §3.9, §5.7): PipeWire's
//! wake-ups (`ClientNode.Transport`, `ClientNode.SetActivation`).
//!
//! A received eventfd becomes an item ([`Eventfd`]) announced in RECEIVE with the eventfd
//! identifier type of the context's guest family (6 after libkrun's 24-byte INIT, 5 otherwise,
//! §8.2). Then:
//!
//! - READ_EVENTFD_NEW (command 11, [`watch`]) starts watching it: each time it is readable,
//!   its turn in the delivery rotation reads the 8-byte counter and writes one READ of 8 bytes
//!   (the value, little-endian) into the channel ring.
//! - WRITE adds exactly 8 bytes (a little-endian value) to the counter ([`Eventfd::add`]);
//!   `hang_up` then drops the item (the caller does).
//! - libkrun's READ_EVENTFD_DESTROY (command 12 of any size but magma's 32, [`destroy`]) stops
//!   watching it and drops it.
//!
//! Nothing here grows with what the host does: a counter holds any number of wake-ups in 8
//! bytes and is read whole, and a WRITE that would overflow it fails (`EAGAIN`, nothing is
//! queued). This module owns the eventfd and its two messages; it never allocates ids (the item
//! table does) and never chooses which source speaks next (the rotation does).

use std::io as stdio;
use std::os::fd::{AsFd, OwnedFd};

use log::debug;
use nix::sys::epoll::EpollEvent;

use super::context::Cmd;
use super::delivery::{token, Rotation, Source, Turn, SOURCE_EVENTS};
use super::env::Env;
use super::error::CtxError;
use super::hostpoll::HostPoll;
use super::io as cdio;
use super::items::{Item, ItemTable};
use super::protocol::{CmdHeader, ReadEventfd, ReadWrite, CMD_READ};
use crate::guest_mem::SgList;
use crate::guest_warn;

/// The bytes of a counter value in READ and WRITE.
const COUNTER_SIZE: usize = 8;

/// An eventfd received from the host.
pub(super) struct Eventfd {
    fd: OwnedFd,
    /// Registered with epoll: the guest asked for its wake-ups (READ_EVENTFD_NEW).
    watched: bool,
    /// Epoll reported it readable and it has not returned `EAGAIN` since.
    readable: bool,
}

impl Eventfd {
    /// Make a received eventfd usable (non-blocking, so neither a read of a zero counter nor a
    /// write to a full one can stop the daemon) before it gets an id. `O_NONBLOCK` is a flag
    /// of the open file description, shared with the host service; PipeWire makes its
    /// eventfds non-blocking itself.
    pub fn prepare(fd: &OwnedFd) -> stdio::Result<()> {
        cdio::set_nonblocking(fd.as_fd())
    }

    /// A received eventfd, not watched until the guest asks.
    pub fn new(fd: OwnedFd) -> Self {
        Eventfd {
            fd,
            watched: false,
            readable: false,
        }
    }

    /// Epoll reported it readable.
    pub fn on_readable(&mut self) {
        self.readable = self.watched;
    }

    /// Its turn in the rotation: read the counter and write it into the channel `ring` as one
    /// READ for item `id`. A zero counter (`EAGAIN`) stays idle until epoll says otherwise.
    pub fn deliver(&mut self, env: &mut Env<'_>, ring: &SgList, ctx_id: u32, id: u32) -> Turn {
        if !self.readable {
            return Turn::Idle;
        }
        let value = match cdio::read_eventfd(self.fd.as_fd()) {
            Ok(Some(v)) => v,
            Ok(None) => {
                self.readable = false;
                return Turn::Idle;
            }
            Err(e) => {
                // Not expected of an eventfd; wait for the next edge rather than spin.
                debug!("ctx {ctx_id}: eventfd {id:#x} read failed: {e}");
                self.readable = false;
                return Turn::Idle;
            }
        };
        let hdr_len = std::mem::size_of::<ReadWrite>();
        let msg = ReadWrite {
            hdr: CmdHeader {
                cmd: CMD_READ,
                ring_idx: 0,
                cmd_size: (hdr_len + COUNTER_SIZE) as u16,
                pad: 0,
            },
            identifier: id,
            hang_up: 0,
            opaque_data_size: COUNTER_SIZE as u32,
            pad: 0,
        };
        // The ring holds at least CHANNEL_RING_MIN_SIZE bytes (checked at INIT).
        let written = ring
            .write_obj(env.mem, 0, &msg)
            .and_then(|()| ring.write_at(env.mem, hdr_len, &value.to_le_bytes()));
        if let Err(e) = written {
            guest_warn!(env.limiter, "ctx {ctx_id}: channel ring write failed: {e}");
        }
        Turn::Served
    }

    /// WRITE: add the value in the `len` bytes at `off` of the request `stream` to the
    /// counter. Exactly 8 bytes (a little-endian u64, as magma reads them); anything else is
    /// refused with nothing written. A counter that would pass its maximum is refused too:
    /// the host service is not reading it, and nothing is queued.
    pub fn add(
        &self,
        env: &Env<'_>,
        id: u32,
        stream: &SgList,
        off: usize,
        len: usize,
    ) -> Result<(), CtxError> {
        if len != COUNTER_SIZE {
            return Err(CtxError::EventfdWriteSize { id, len });
        }
        let mut bytes = [0u8; COUNTER_SIZE];
        stream.read_at(env.mem, off, &mut bytes)?;
        match cdio::write_eventfd(self.fd.as_fd(), u64::from_le_bytes(bytes)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == stdio::ErrorKind::WouldBlock => Err(CtxError::EventfdFull(id)),
            Err(e) => Err(CtxError::HostIo(e)),
        }
    }

    /// Start watching it as item `id` of context `ctx_id` (once; again is a no-op).
    fn watch(&mut self, epoll: &HostPoll, ctx_id: u32, id: u32) -> Result<(), CtxError> {
        if self.watched {
            return Ok(());
        }
        epoll
            .add(&self.fd, EpollEvent::new(SOURCE_EVENTS, token(ctx_id, id)))
            .map_err(|e| CtxError::HostIo(e.into()))?;
        self.watched = true;
        // A counter that is already non-zero reports its edge at once.
        self.readable = true;
        Ok(())
    }

    /// Stop watching it (it closes when dropped).
    pub fn close(&mut self, epoll: &HostPoll) {
        if self.watched {
            let _ = epoll.delete(&self.fd);
            self.watched = false;
        }
    }
}

/// READ_EVENTFD_NEW (command 11): start watching the eventfd item named by `cmd` and give it
/// its place in the delivery rotation. An unknown id, or an item that is not an eventfd, is
/// an error.
pub(super) fn watch(
    env: &mut Env<'_>,
    cmd: &Cmd<'_>,
    ctx_id: u32,
    items: &mut ItemTable,
    delivery: &mut Rotation<Source>,
) -> Result<(), CtxError> {
    let c: ReadEventfd = cmd.read(env)?;
    let Some(Item::Eventfd(efd)) = items.get_mut(c.id) else {
        return Err(CtxError::UnknownItem(c.id));
    };
    efd.watch(env.epoll, ctx_id, c.id)?;
    delivery.add(Source::Eventfd(c.id));
    Ok(())
}

/// libkrun's READ_EVENTFD_DESTROY (command 12 shaped like command 11): the id of the eventfd
/// item to drop (the caller removes it, which stops the watch). An unknown id, or an item that
/// is not an eventfd, is an error.
pub(super) fn destroy(env: &Env<'_>, cmd: &Cmd<'_>, items: &ItemTable) -> Result<u32, CtxError> {
    let c: ReadEventfd = cmd.read(env)?;
    match items.get(c.id) {
        Some(Item::Eventfd(_)) => Ok(c.id),
        _ => Err(CtxError::UnknownItem(c.id)),
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::cross_domain::env::TestEnv;

    const RING: u64 = 0x1_8000;

    fn eventfd() -> (Eventfd, OwnedFd) {
        let efd = nix::sys::eventfd::EventFd::new().unwrap();
        let host: OwnedFd = efd.into();
        let ours = host.try_clone().unwrap();
        Eventfd::prepare(&ours).unwrap();
        (Eventfd::new(ours), host)
    }

    fn counter(host: &OwnedFd) -> Option<u64> {
        cdio::read_eventfd(host.as_fd()).unwrap()
    }

    #[test]
    fn a_watched_eventfd_delivers_its_counter_once_per_turn() {
        let mut t = TestEnv::new();
        let ring = t.sg(RING, &[0u8; 4096]);
        let (mut efd, host) = eventfd();
        // Not watched: readiness is ignored.
        cdio::write_eventfd(host.as_fd(), 3).unwrap();
        efd.on_readable();
        assert_eq!(efd.deliver(&mut t.env(), &ring, 4, 2), Turn::Idle);
        efd.watch(t.epoll(), 4, 2).unwrap();
        efd.watch(t.epoll(), 4, 2).unwrap();
        cdio::write_eventfd(host.as_fd(), 0x1_0000_0000).unwrap();
        assert_eq!(efd.deliver(&mut t.env(), &ring, 4, 2), Turn::Served);
        let msg: ReadWrite = t.mem.read_obj(GuestAddress(RING)).unwrap();
        assert_eq!(
            (msg.hdr.cmd, msg.hdr.cmd_size, msg.identifier, msg.hang_up),
            (CMD_READ, 32, 2, 0)
        );
        assert_eq!(msg.opaque_data_size, 8);
        let mut value = [0u8; 8];
        t.mem
            .read_slice(&mut value, GuestAddress(RING + 24))
            .unwrap();
        assert_eq!(
            u64::from_le_bytes(value),
            0x1_0000_0003,
            "both writes, once"
        );
        // Drained: the next turn finds EAGAIN and waits for epoll.
        assert_eq!(efd.deliver(&mut t.env(), &ring, 4, 2), Turn::Idle);
        assert!(!efd.readable);
        cdio::write_eventfd(host.as_fd(), 1).unwrap();
        assert!(t.ready().iter().any(|&(tok, _)| tok == token(4, 2)));
        efd.on_readable();
        assert_eq!(efd.deliver(&mut t.env(), &ring, 4, 2), Turn::Served);
        efd.close(t.epoll());
        cdio::write_eventfd(host.as_fd(), 1).unwrap();
        assert!(t.ready().is_empty(), "no longer watched");
    }

    #[test]
    fn a_write_adds_exactly_eight_bytes_to_the_counter() {
        let mut t = TestEnv::new();
        let (efd, host) = eventfd();
        let stream = t.sg(0x1_0000, &[7, 0, 0, 0, 0, 0, 0, 1, 9]);
        let env = t.env();
        efd.add(&env, 2, &stream, 0, 8).unwrap();
        assert_eq!(counter(&host), Some(0x0100_0000_0000_0007));
        for len in [0, 4, 7, 9] {
            assert!(matches!(
                efd.add(&env, 2, &stream, 0, len),
                Err(CtxError::EventfdWriteSize { id: 2, .. })
            ));
        }
        assert_eq!(counter(&host), None, "nothing written");
        // A host service that never reads: the counter fills, further WRITEs fail.
        let full = t.sg(0x1_0100, &(u64::MAX - 1).to_le_bytes());
        let one = t.sg(0x1_0200, &1u64.to_le_bytes());
        let env = t.env();
        efd.add(&env, 2, &full, 0, 8).unwrap();
        assert!(matches!(
            efd.add(&env, 2, &one, 0, 8),
            Err(CtxError::EventfdFull(2))
        ));
        assert_eq!(counter(&host), Some(u64::MAX - 1));
    }
}
