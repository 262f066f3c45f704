//! Where host fds are watched: [`HostPoll`], the one registry every context registers its
//! channel sockets, pipes and eventfds with.
//!
//! Two tiers. Once the device is attached to its event-loop thread ([`HostPoll::attach`]), an
//! fd goes straight into that thread's epoll set — the one that also watches the queue kicks —
//! under a small *slot* number, because the event loop (vhost-user-backend's) passes only 16
//! bits of an event's data on: one `epoll_wait` then reports a kick and a readable socket
//! alike, where a nested set needs a second `epoll_wait` to learn which host fd is ready. The
//! slot table maps the slot back to the source's token (`delivery::token`). When every slot is
//! taken, or before an attachment (unit tests, the fuzzer), fds go into the device's own epoll
//! set, which the event loop watches as one fd and drains with [`HostPoll::wait`].
//!
//! While the device is stopped, events of the direct tier must wait, as the nested set's do
//! behind its gate: [`HostPoll::defer`] keeps them, one merged mask per slot (every source is
//! edge-triggered, so a dropped event would be lost), until [`HostPoll::take_deferred`].
//!
//! This module owns the registrations and the slot table. It never reads an fd and never
//! interprets an event: it hands back tokens and masks.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

/// A token and the events epoll reported for it.
pub type HostEvent = (u64, EpollFlags);

/// The device's registry of watched host fds.
pub struct HostPoll {
    nested: Epoll,
    direct: RefCell<Option<Direct>>,
}

/// The direct tier: the event-loop thread's epoll set and the slots we use in it.
struct Direct {
    epoll: Epoll,
    /// The first slot: event data below it belong to the event loop (queues, control events).
    first: u16,
    /// Slot `first + i` watches the source with token `tokens[i]`; `None` when free.
    tokens: Vec<Option<u64>>,
    /// Events that came while the device was stopped, per slot (empty: none).
    deferred: Vec<EpollFlags>,
    /// Slots with deferred events, in arrival order.
    deferred_order: Vec<u16>,
    free: Vec<u16>,
    by_fd: HashMap<RawFd, u16>,
}

impl Direct {
    fn index(&self, slot: u16) -> Option<usize> {
        let i = usize::from(slot.checked_sub(self.first)?);
        (i < self.tokens.len()).then_some(i)
    }

    fn release(&mut self, slot: u16) {
        if let Some(i) = self.index(slot) {
            self.tokens[i] = None;
            self.deferred[i] = EpollFlags::empty();
            self.free.push(slot);
        }
    }
}

impl HostPoll {
    /// A registry with its own epoll set only (until [`HostPoll::attach`]).
    pub fn new() -> std::io::Result<Self> {
        Ok(HostPoll {
            nested: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
            direct: RefCell::new(None),
        })
    }

    /// Register further fds directly with `epoll` (the event loop's set, a duplicate of its
    /// fd), under slots `first..=u16::MAX`. Fds registered before stay where they are.
    pub fn attach(&self, epoll: OwnedFd, first: u16) {
        *self.direct.borrow_mut() = Some(Direct {
            epoll: Epoll(epoll),
            first,
            tokens: Vec::new(),
            deferred: Vec::new(),
            deferred_order: Vec::new(),
            // Freed slots are reused first; new ones are added up to `u16::MAX`.
            free: Vec::new(),
            by_fd: HashMap::new(),
        });
    }

    /// The device's own epoll set: readable when [`HostPoll::wait`] has events.
    pub fn nested(&self) -> &Epoll {
        &self.nested
    }

    /// Watch `fd` for `event`'s flags under its data (a source token).
    pub fn add<Fd: AsFd>(&self, fd: Fd, event: EpollEvent) -> nix::Result<()> {
        let raw = fd.as_fd().as_raw_fd();
        let mut direct = self.direct.borrow_mut();
        let Some(d) = direct.as_mut() else {
            return self.nested.add(fd, event);
        };
        // A stale entry: the fd was closed without a delete (epoll forgot it with the file).
        if let Some(old) = d.by_fd.remove(&raw) {
            d.release(old);
        }
        let slot = match d.free.pop() {
            Some(s) => s,
            None => {
                let next = usize::from(d.first) + d.tokens.len();
                match u16::try_from(next) {
                    Ok(s) => {
                        d.tokens.push(None);
                        d.deferred.push(EpollFlags::empty());
                        s
                    }
                    // Every slot is taken: the nested set has room for any number.
                    Err(_) => return self.nested.add(fd, event),
                }
            }
        };
        let r = d
            .epoll
            .add(fd, EpollEvent::new(event.events(), u64::from(slot)));
        match r {
            Ok(()) => {
                if let Some(i) = d.index(slot) {
                    d.tokens[i] = Some(event.data());
                }
                d.by_fd.insert(raw, slot);
                Ok(())
            }
            Err(e) => {
                d.free.push(slot);
                Err(e)
            }
        }
    }

    /// Change what `fd` is watched for (and its token).
    pub fn modify<Fd: AsFd>(&self, fd: Fd, event: &mut EpollEvent) -> nix::Result<()> {
        let raw = fd.as_fd().as_raw_fd();
        let mut direct = self.direct.borrow_mut();
        let Some((d, slot)) = direct
            .as_mut()
            .and_then(|d| d.by_fd.get(&raw).copied().map(|s| (d, s)))
        else {
            return self.nested.modify(fd, event);
        };
        let mut ev = EpollEvent::new(event.events(), u64::from(slot));
        d.epoll.modify(fd, &mut ev)?;
        if let Some(i) = d.index(slot) {
            d.tokens[i] = Some(event.data());
        }
        Ok(())
    }

    /// Stop watching `fd`.
    pub fn delete<Fd: AsFd>(&self, fd: Fd) -> nix::Result<()> {
        let raw = fd.as_fd().as_raw_fd();
        let mut direct = self.direct.borrow_mut();
        let Some((d, slot)) = direct
            .as_mut()
            .and_then(|d| d.by_fd.remove(&raw).map(|s| (d, s)))
        else {
            return self.nested.delete(fd);
        };
        // The slot is free at once: an event for it still in the event loop's current batch
        // reaches the slot's next owner as a spurious readiness, which every source tolerates
        // (it reads `EAGAIN`).
        d.release(slot);
        d.epoll.delete(fd)
    }

    /// Events ready in the device's own set (the direct tier is the event loop's to wait on).
    pub fn wait(&self, events: &mut [EpollEvent], timeout: EpollTimeout) -> nix::Result<usize> {
        self.nested.wait(events, timeout)
    }

    /// The token watched under direct `slot`, if the slot is in use.
    pub fn token(&self, slot: u16) -> Option<u64> {
        let direct = self.direct.borrow();
        let d = direct.as_ref()?;
        d.tokens.get(d.index(slot)?).copied().flatten()
    }

    /// Keep the events of direct `slot` for later (the device is stopped).
    pub fn defer(&self, slot: u16, events: EpollFlags) {
        let mut direct = self.direct.borrow_mut();
        let Some(d) = direct.as_mut() else {
            return;
        };
        let Some(i) = d.index(slot) else {
            return;
        };
        if d.tokens[i].is_none() {
            return;
        }
        if d.deferred[i].is_empty() {
            d.deferred_order.push(slot);
        }
        d.deferred[i] |= events;
    }

    /// Whether events wait in [`HostPoll::defer`]'s store.
    pub fn has_deferred(&self) -> bool {
        self.direct
            .borrow()
            .as_ref()
            .is_some_and(|d| !d.deferred_order.is_empty())
    }

    /// Move the deferred events, as (token, events), into `out`.
    pub fn take_deferred(&self, out: &mut Vec<HostEvent>) {
        let mut direct = self.direct.borrow_mut();
        let Some(d) = direct.as_mut() else {
            return;
        };
        let order = std::mem::take(&mut d.deferred_order);
        for &slot in &order {
            if let Some(i) = d.index(slot) {
                let ev = std::mem::replace(&mut d.deferred[i], EpollFlags::empty());
                if let (Some(tok), false) = (d.tokens[i], ev.is_empty()) {
                    out.push((tok, ev));
                }
            }
        }
        // Keep the vector's buffer for the next stop.
        let mut order = order;
        order.clear();
        d.deferred_order = order;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn ready(ep: &Epoll) -> Vec<(u64, EpollFlags)> {
        let mut evs = [EpollEvent::empty(); 8];
        let n = ep.wait(&mut evs, EpollTimeout::ZERO).unwrap();
        evs[..n].iter().map(|e| (e.data(), e.events())).collect()
    }

    #[test]
    fn direct_slots_map_back_to_tokens_and_are_reused() {
        let hp = HostPoll::new().unwrap();
        let outer = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
        hp.attach(outer.0.try_clone().unwrap(), 10);
        let (a, mut a_peer) = UnixStream::pair().unwrap();
        let (b, _b_peer) = UnixStream::pair().unwrap();
        hp.add(&a, EpollEvent::new(EpollFlags::EPOLLIN, 0xaa_0000_0000))
            .unwrap();
        hp.add(&b, EpollEvent::new(EpollFlags::EPOLLIN, 0xbb_0000_0001))
            .unwrap();
        std::io::Write::write_all(&mut a_peer, b"x").unwrap();
        let got = ready(&outer);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, 10, "the first slot");
        assert_eq!(hp.token(10), Some(0xaa_0000_0000));
        assert_eq!(hp.token(11), Some(0xbb_0000_0001));
        assert!(ready(hp.nested()).is_empty(), "not in the nested set");
        // Modify keeps the slot; delete frees it for the next fd.
        hp.modify(&a, &mut EpollEvent::new(EpollFlags::EPOLLIN, 0xcc))
            .unwrap();
        assert_eq!(hp.token(10), Some(0xcc));
        hp.delete(&a).unwrap();
        assert_eq!(hp.token(10), None);
        assert!(ready(&outer).is_empty(), "no longer watched");
        let (c, _c_peer) = UnixStream::pair().unwrap();
        hp.add(&c, EpollEvent::new(EpollFlags::EPOLLIN, 0xdd))
            .unwrap();
        assert_eq!(hp.token(10), Some(0xdd));
    }

    #[test]
    fn past_the_last_slot_fds_go_to_the_nested_set() {
        let hp = HostPoll::new().unwrap();
        let outer = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
        hp.attach(outer.0.try_clone().unwrap(), u16::MAX);
        let (a, _ap) = UnixStream::pair().unwrap();
        let (b, mut bp) = UnixStream::pair().unwrap();
        hp.add(&a, EpollEvent::new(EpollFlags::EPOLLIN, 1)).unwrap();
        hp.add(&b, EpollEvent::new(EpollFlags::EPOLLIN, 2)).unwrap();
        std::io::Write::write_all(&mut bp, b"x").unwrap();
        assert_eq!(ready(hp.nested()), [(2, EpollFlags::EPOLLIN)]);
        hp.delete(&b).unwrap();
        assert!(ready(hp.nested()).is_empty());
        assert_eq!(hp.token(u16::MAX), Some(1));
    }

    #[test]
    fn deferred_events_merge_per_slot_and_forget_freed_slots() {
        let hp = HostPoll::new().unwrap();
        let outer = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
        hp.attach(outer.0.try_clone().unwrap(), 5);
        let (a, _ap) = UnixStream::pair().unwrap();
        let (b, _bp) = UnixStream::pair().unwrap();
        hp.add(&a, EpollEvent::new(EpollFlags::EPOLLIN, 100))
            .unwrap();
        hp.add(&b, EpollEvent::new(EpollFlags::EPOLLIN, 200))
            .unwrap();
        hp.defer(6, EpollFlags::EPOLLIN);
        hp.defer(5, EpollFlags::EPOLLIN);
        hp.defer(6, EpollFlags::EPOLLOUT);
        hp.defer(99, EpollFlags::EPOLLIN); // never used: ignored
        assert!(hp.has_deferred());
        let mut out = Vec::new();
        hp.take_deferred(&mut out);
        assert_eq!(
            out,
            [
                (200, EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT),
                (100, EpollFlags::EPOLLIN)
            ]
        );
        assert!(!hp.has_deferred());
        hp.defer(5, EpollFlags::EPOLLIN);
        hp.delete(&a).unwrap();
        out.clear();
        hp.take_deferred(&mut out);
        assert!(out.is_empty(), "the slot's source is gone");
    }
}
