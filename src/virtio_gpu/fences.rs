//! Fence timelines and the responses ready to publish.
//!
//! Owns the fenced responses deferred on each `(ctx_id, ring_idx)` timeline and the list of
//! completed responses (control-queue head, bytes written) the device layer publishes. A fence
//! signalled with id `f` completes every response on its timeline fenced at or below `f`. It
//! must never decide which requests are fenced or when a fence signals (the coordinator in
//! `gpu.rs` and the cross-domain context do), nor touch guest memory or a virtqueue.

use std::collections::VecDeque;

use crate::idmap::IdMap;

/// A fence timeline: a context and one of its rings.
pub(super) type Timeline = (u32, u8);

/// A fenced response waiting for its fence.
struct Pending {
    fence_id: u64,
    head: u16,
    len: u32,
}

/// Deferred fenced responses per timeline, and the responses ready to publish.
#[derive(Default)]
pub(super) struct Fences {
    pending: IdMap<Timeline, VecDeque<Pending>>,
    completions: Vec<(u16, u32)>,
}

impl Fences {
    /// Defer the response of `len` bytes to request `head` until `fence_id` signals on
    /// `timeline`.
    pub(super) fn defer(&mut self, timeline: Timeline, fence_id: u64, head: u16, len: u32) {
        self.pending
            .entry(timeline)
            .or_default()
            .push_back(Pending {
                fence_id,
                head,
                len,
            });
    }

    /// `fence_id` signalled on `timeline`: complete every response fenced at or below it.
    pub(super) fn signal(&mut self, timeline: Timeline, fence_id: u64) {
        let completions = &mut self.completions;
        if let Some(q) = self.pending.get_mut(&timeline) {
            q.retain(|p| {
                if p.fence_id <= fence_id {
                    completions.push((p.head, p.len));
                    false
                } else {
                    true
                }
            });
            // An empty queue stays: the next POLL on this timeline reuses its allocation.
            // Timelines are bounded (3 rings per live context) and go with their context.
        }
    }

    /// Context `ctx_id` is gone: complete everything deferred on its timelines and drop them.
    pub(super) fn complete_context(&mut self, ctx_id: u32) {
        let keys: Vec<Timeline> = self
            .pending
            .keys()
            .filter(|(c, _)| *c == ctx_id)
            .copied()
            .collect();
        for k in keys {
            self.signal(k, u64::MAX);
            self.pending.remove(&k);
        }
    }

    /// Complete everything deferred on every timeline and drop the timelines (shutdown).
    pub(super) fn complete_all(&mut self) {
        let leftovers: Vec<Timeline> = self.pending.keys().copied().collect();
        for k in leftovers {
            self.signal(k, u64::MAX);
        }
        self.pending.clear();
    }

    /// The response of `len` bytes to request `head` is ready (a request that was held, not
    /// fenced).
    pub(super) fn complete(&mut self, head: u16, len: u32) {
        self.completions.push((head, len));
    }

    /// Completed responses to publish.
    pub(super) fn take(&mut self) -> std::vec::Drain<'_, (u16, u32)> {
        self.completions.drain(..)
    }

    /// True when completed responses wait to be published.
    pub(super) fn has_completions(&self) -> bool {
        !self.completions.is_empty()
    }

    /// Forget everything: the queue the responses belonged to is gone.
    pub(super) fn clear(&mut self) {
        self.pending.clear();
        self.completions.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(f: &mut Fences) -> Vec<(u16, u32)> {
        f.take().collect()
    }

    #[test]
    fn a_fence_completes_its_timeline_up_to_its_id() {
        let mut f = Fences::default();
        f.defer((1, 1), 5, 10, 24);
        f.defer((1, 1), 6, 11, 24);
        f.defer((1, 1), 8, 12, 24);
        f.defer((1, 2), 5, 13, 24);
        f.defer((2, 1), 5, 14, 24);
        assert!(!f.has_completions());
        f.signal((1, 1), 6);
        assert_eq!(taken(&mut f), [(10, 24), (11, 24)]);
        // Another timeline's fence leaves this one alone; an old id completes nothing new.
        f.signal((1, 1), 4);
        f.signal((3, 1), 100);
        assert!(!f.has_completions());
        f.signal((1, 1), 9);
        assert_eq!(taken(&mut f), [(12, 24)]);
    }

    #[test]
    fn a_destroyed_context_completes_its_timelines_only() {
        let mut f = Fences::default();
        f.defer((1, 1), 5, 10, 24);
        f.defer((1, 2), 9, 11, 24);
        f.defer((2, 1), 5, 12, 24);
        f.complete_context(1);
        let mut done = taken(&mut f);
        done.sort_unstable();
        assert_eq!(done, [(10, 24), (11, 24)]);
        // Its timelines are gone: a late fence completes nothing.
        f.signal((1, 1), u64::MAX);
        assert!(!f.has_completions());
        f.complete_all();
        assert_eq!(taken(&mut f), [(12, 24)]);
        f.complete_all();
        assert!(!f.has_completions());
    }

    #[test]
    fn held_completions_and_clear() {
        let mut f = Fences::default();
        f.complete(3, 40);
        f.defer((1, 1), 1, 4, 24);
        assert_eq!(taken(&mut f), [(3, 40)]);
        f.complete(5, 24);
        f.clear();
        assert!(!f.has_completions());
        f.signal((1, 1), 1);
        assert!(!f.has_completions());
    }
}
