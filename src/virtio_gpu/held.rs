//! Requests held on the virtio-gpu side while their bytes wait for a slow host peer.
//!
//! A SUBMIT_3D whose SEND or WRITE bytes a host peer did not take at once is left uncompleted:
//! the queued chunks refer to its buffers in guest memory (see `cross_domain::backlog`), so the
//! guest must not reuse them. Its response is already written; it completes once every chunk
//! went out or was dropped. This module owns that bookkeeping (which requests are held, by how
//! many chunks, the requests the cross-domain layer reports released) and the budget of
//! descriptors that may be held at once. It must never decide whether a request is eligible
//! (the coordinator does), touch guest memory, or complete a request any other way than through
//! the `done` callback it is given.

use log::debug;

use crate::cross_domain::HoldToken;
use crate::idmap::IdMap;

/// The token a request travels as through the cross-domain layer: its control-queue head.
/// The cross-domain layer never reads it; only [`head_of`] turns it back.
fn token(head: u16) -> HoldToken {
    HoldToken::new(u64::from(head))
}

/// The head of the request `t` stands for (`None` for a token this module never made).
fn head_of(t: HoldToken) -> Option<u16> {
    u16::try_from(t.get()).ok()
}

/// Control-queue size assumed until the VMM sets one (QEMU's vhost-user-test-device default).
const DEFAULT_QUEUE_SIZE: u16 = 64;

/// Descriptors that may be held at once for a control queue of `size` entries: a quarter.
fn budget(size: u16) -> usize {
    usize::from(size) / 4
}

/// A request left uncompleted while bytes of it wait, in guest memory, for a slow host peer.
struct Held {
    /// Queued chunks still referring to the request.
    refs: u32,
    /// Bytes written into the response buffer.
    len: u32,
    /// Descriptors of the request (counted against the budget).
    descs: usize,
}

/// The held requests, the released heads not yet accounted, and the chain being processed.
pub(super) struct HeldRequests {
    /// Requests held for slow host peers, by control-queue head.
    requests: IdMap<u16, Held>,
    /// Requests whose queued chunks went out or were dropped, not yet accounted in
    /// `requests` (one token per chunk).
    released: Vec<HoldToken>,
    /// While a chain is processed: its head, if it may be held.
    current: Option<u16>,
    /// While a chain is processed: chunks queued that hold it.
    current_refs: u32,
    /// Most descriptors held at once, over all contexts (see
    /// [`HeldRequests::set_queue_size`]).
    budget: usize,
    /// Descriptors of the requests in `requests`.
    descs: usize,
}

impl Default for HeldRequests {
    fn default() -> Self {
        HeldRequests {
            requests: IdMap::default(),
            released: Vec::new(),
            current: None,
            current_refs: 0,
            budget: budget(DEFAULT_QUEUE_SIZE),
            descs: 0,
        }
    }
}

impl HeldRequests {
    /// Size the budget for a control queue of `size` entries (see
    /// [`Gpu::set_control_queue_size`](super::Gpu::set_control_queue_size) for why a quarter).
    pub(super) fn set_queue_size(&mut self, size: u16) {
        self.budget = budget(size);
    }

    /// Chain `head` of `ndesc` descriptors is about to be processed. It may be held if it is
    /// `eligible` and the budget has room for its descriptors.
    pub(super) fn begin(&mut self, head: u16, ndesc: usize, eligible: bool) {
        self.current = (eligible && self.descs + ndesc <= self.budget).then_some(head);
        self.current_refs = 0;
    }

    /// The token of the chain being processed, when it may be held.
    pub(super) fn current(&self) -> Option<HoldToken> {
        self.current.map(token)
    }

    /// `refs` more queued chunks hold the chain being processed.
    pub(super) fn add_refs(&mut self, refs: u32) {
        self.current_refs += refs;
    }

    /// Where the cross-domain layer reports the tokens of held requests whose queued chunks
    /// went out or were dropped.
    pub(super) fn released(&mut self) -> &mut Vec<HoldToken> {
        &mut self.released
    }

    /// Processing of chain `head` ended: the queued chunks that still hold it (those that went
    /// out while it was processed are taken off the release list here).
    pub(super) fn end(&mut self, head: u16) -> u32 {
        self.current = None;
        let mut refs = std::mem::take(&mut self.current_refs);
        if refs > 0 {
            // Chunks of this very request that already went out while it was processed.
            let this = token(head);
            self.released.retain(|&t| {
                if t == this && refs > 0 {
                    refs -= 1;
                    false
                } else {
                    true
                }
            });
        }
        refs
    }

    /// Hold request `head` (`ndesc` descriptors, `len` bytes of response) until `refs` queued
    /// chunks are released.
    pub(super) fn hold(&mut self, head: u16, refs: u32, len: u32, ndesc: usize) {
        self.requests.insert(
            head,
            Held {
                refs,
                len,
                descs: ndesc,
            },
        );
        self.descs += ndesc;
    }

    /// Account released chunks; requests with none left are completed through `done(head,
    /// len)`.
    pub(super) fn settle(&mut self, mut done: impl FnMut(u16, u32)) {
        for t in self.released.drain(..) {
            let held = head_of(t).and_then(|head| Some((head, self.requests.get_mut(&head)?)));
            let Some((head, h)) = held else {
                debug!("released request {} is not held", t.get());
                continue;
            };
            h.refs -= 1;
            if h.refs == 0 {
                let (len, descs) = (h.len, h.descs);
                self.requests.remove(&head);
                self.descs -= descs;
                done(head, len);
            }
        }
    }

    /// Shutdown: complete every request still held through `done(head, len)`.
    pub(super) fn complete_all(&mut self, mut done: impl FnMut(u16, u32)) {
        for (head, h) in self.requests.drain() {
            // Not reachable: every held chunk belongs to a context torn down before.
            debug!("completing request {head} still held after shutdown");
            done(head, h.len);
        }
        self.descs = 0;
    }

    /// Forget every held request and release (their queue is gone).
    pub(super) fn clear(&mut self) {
        self.requests.clear();
        self.descs = 0;
        self.released.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settled(h: &mut HeldRequests) -> Vec<(u16, u32)> {
        let mut done = Vec::new();
        h.settle(|head, len| done.push((head, len)));
        done
    }

    #[test]
    fn the_budget_is_a_quarter_of_the_queue() {
        let mut h = HeldRequests::default();
        assert_eq!(h.budget, 16);
        h.set_queue_size(256);
        assert_eq!(h.budget, 64);
        h.set_queue_size(3);
        assert_eq!(h.budget, 0);
    }

    #[test]
    fn only_eligible_chains_within_the_budget_may_be_held() {
        let mut h = HeldRequests::default();
        h.set_queue_size(16);
        h.begin(1, 4, false);
        assert_eq!(h.current(), None);
        h.begin(1, 5, true);
        assert_eq!(h.current(), None);
        h.begin(1, 3, true);
        assert_eq!(h.current(), Some(token(1)));
        h.add_refs(1);
        assert_eq!(h.end(1), 1);
        assert_eq!(h.current(), None);
        h.hold(1, 1, 24, 3);
        // One descriptor left in the budget.
        h.begin(2, 2, true);
        assert_eq!(h.current(), None);
        h.begin(2, 1, true);
        assert_eq!(h.current(), Some(token(2)));
        assert_eq!(h.end(2), 0);
    }

    #[test]
    fn chunks_released_during_processing_do_not_hold() {
        let mut h = HeldRequests::default();
        h.begin(7, 2, true);
        h.add_refs(2);
        h.released().extend([7, 3, 7].map(token));
        // Both chunks already went out; the other head's release stays for `settle`.
        assert_eq!(h.end(7), 0);
        assert_eq!(h.released, [token(3)]);
        h.begin(8, 2, true);
        h.add_refs(3);
        h.released().push(token(8));
        assert_eq!(h.end(8), 2);
    }

    #[test]
    fn a_request_completes_when_its_last_chunk_is_released() {
        let mut h = HeldRequests::default();
        h.hold(4, 2, 24, 3);
        h.hold(5, 1, 32, 2);
        assert_eq!(h.descs, 5);
        h.released().extend([4, 9].map(token));
        assert!(settled(&mut h).is_empty());
        h.released().extend([5, 4].map(token));
        assert_eq!(settled(&mut h), [(5, 32), (4, 24)]);
        assert_eq!(h.descs, 0);
        assert!(h.requests.is_empty());
    }

    #[test]
    fn shutdown_completes_and_clear_forgets() {
        let mut h = HeldRequests::default();
        h.hold(4, 2, 24, 3);
        let mut done = Vec::new();
        h.complete_all(|head, len| done.push((head, len)));
        assert_eq!(done, [(4, 24)]);
        assert_eq!(h.descs, 0);
        h.hold(5, 1, 24, 3);
        h.released().push(token(5));
        h.clear();
        assert!(settled(&mut h).is_empty());
        assert_eq!(h.descs, 0);
    }
}
