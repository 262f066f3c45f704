//! Which host source speaks next: the epoll tokens of a context's sources, and the rotation
//! that shares the guest's channel ring among them.
//!
//! A context writes one message per POLL fence into its channel ring (docs/protocol.md §4.3).
//! Several sources may have data at once (the channel socket, every read pipe, every watched
//! eventfd); [`Rotation`] offers each one the ring in turn, and the one served goes to the back,
//! so a busy source cannot starve the others. This module owns that order and the token
//! layout; it never reads a source or writes the ring (the context does).

use std::collections::VecDeque;

use nix::sys::epoll::EpollFlags;

/// A host source of messages for the guest's channel ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// The channel socket (RECEIVE).
    Channel,
    /// The read pipe with this item id (READ).
    ReadPipe(u32),
    /// The watched eventfd with this item id (READ of its counter).
    Eventfd(u32),
}

/// The low half of the epoll token of the channel socket. Every other watched fd (read and
/// write pipes, eventfds) uses its item id, and 0 is never an item id (see `items::HOST_IDS`), so
/// the two cannot collide (docs/protocol.md §4.3).
pub(super) const CHANNEL_TOKEN: u32 = 0;

/// The events a source (the channel socket, a read pipe, an eventfd) is watched for: edge-triggered, so
/// a source reports readiness once and is then read until `EAGAIN` on its turns.
pub(super) const SOURCE_EVENTS: EpollFlags = EpollFlags::EPOLLIN
    .union(EpollFlags::EPOLLRDHUP)
    .union(EpollFlags::EPOLLET);

/// The events the channel socket is watched for: those of every source, and out-of-band data
/// (`EPOLLPRI`), at whose mark a read stops short (see `Channel::drained_by`).
pub(super) const CHANNEL_EVENTS: EpollFlags = SOURCE_EVENTS.union(EpollFlags::EPOLLPRI);

/// The epoll token of source `src` (the channel's [`CHANNEL_TOKEN`] or an item id) of
/// context `ctx_id`.
pub(super) fn token(ctx_id: u32, src: u32) -> u64 {
    (u64::from(ctx_id) << 32) | u64::from(src)
}

/// Split an epoll token into (context id, source).
pub fn token_parts(t: u64) -> (u32, u32) {
    ((t >> 32) as u32, t as u32)
}

/// What a source did with its turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Turn {
    /// Nothing to say now; the next source gets the turn.
    Idle,
    /// Wrote one message; the source goes to the back of the rotation.
    Served,
    /// Wrote its last message (a hang-up); the source leaves the rotation.
    ServedLast,
}

/// A round-robin order over sources. Sources join at the back; [`Rotation::serve`] offers
/// the turn from the front and moves the source served to the back.
#[derive(Debug)]
pub(super) struct Rotation<K> {
    order: VecDeque<K>,
}

impl<K> Default for Rotation<K> {
    fn default() -> Self {
        Rotation {
            order: VecDeque::new(),
        }
    }
}

impl<K: Copy + PartialEq> Rotation<K> {
    /// Add `k` at the back (its first turn comes after every source already waiting); a
    /// source already present keeps its place.
    pub fn add(&mut self, k: K) {
        if !self.order.contains(&k) {
            self.order.push_back(k);
        }
    }

    /// Take `k` out of the rotation; the others keep their order. Returns whether it was in.
    pub fn remove(&mut self, k: K) -> bool {
        match self.order.iter().position(|&x| x == k) {
            Some(i) => {
                self.order.remove(i);
                true
            }
            None => false,
        }
    }

    /// Number of sources in the rotation.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Offer the turn to each source in order until one is served: that one moves to the
    /// back (or leaves, on [`Turn::ServedLast`]) and is returned. `None` when every source
    /// was idle; the order is then unchanged.
    pub fn serve(&mut self, mut offer: impl FnMut(K) -> Turn) -> Option<K> {
        for i in 0..self.order.len() {
            let k = self.order[i];
            match offer(k) {
                Turn::Idle => continue,
                Turn::Served => {
                    self.order.remove(i);
                    self.order.push_back(k);
                    return Some(k);
                }
                Turn::ServedLast => {
                    self.order.remove(i);
                    return Some(k);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serve once with `ready` sources having data; returns who was served.
    fn serve(r: &mut Rotation<u32>, ready: &[u32]) -> Option<u32> {
        r.serve(|k| {
            if ready.contains(&k) {
                Turn::Served
            } else {
                Turn::Idle
            }
        })
    }

    fn rotation(ks: &[u32]) -> Rotation<u32> {
        let mut r = Rotation::default();
        for &k in ks {
            r.add(k);
        }
        r
    }

    #[test]
    fn busy_sources_take_turns_in_order() {
        let mut r = rotation(&[0, 1, 2]);
        let got: Vec<_> = (0..7).map(|_| serve(&mut r, &[0, 1, 2]).unwrap()).collect();
        assert_eq!(got, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn no_ready_source_starves_behind_an_always_ready_one() {
        // Source 0 always has data; each other source becomes ready once and must be served
        // within len() turns of becoming ready.
        let mut r = rotation(&[0, 1, 2, 3]);
        for late in 1..4u32 {
            let mut waited = 0;
            loop {
                let served = serve(&mut r, &[0, late]).unwrap();
                waited += 1;
                if served == late {
                    break;
                }
                assert!(waited < r.len(), "source {late} starved");
            }
        }
        // And over many rounds with everyone ready, each gets the same share.
        let mut counts = [0usize; 4];
        for _ in 0..400 {
            counts[serve(&mut r, &[0, 1, 2, 3]).unwrap() as usize] += 1;
        }
        assert_eq!(counts, [100; 4]);
    }

    #[test]
    fn the_channel_and_a_pipe_alternate_when_both_have_data() {
        // The two-source case the context had before (channel first, then the pipe).
        let mut r = Rotation::default();
        r.add(Source::Channel);
        r.add(Source::ReadPipe(0x8000_0001));
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(r.serve(|_| Turn::Served).unwrap());
        }
        let pipe = Source::ReadPipe(0x8000_0001);
        assert_eq!(got, [Source::Channel, pipe, Source::Channel, pipe]);
    }

    #[test]
    fn the_channel_a_pipe_and_eventfds_share_the_ring_fairly() {
        // Every kind of source in one rotation: while all have data, each is served once per
        // round, in the order they joined.
        let pipe = Source::ReadPipe(0x8000_0001);
        let (e1, e2) = (Source::Eventfd(2), Source::Eventfd(3));
        let mut r = Rotation::default();
        for s in [Source::Channel, e1, pipe, e2] {
            r.add(s);
        }
        let got: Vec<_> = (0..8).map(|_| r.serve(|_| Turn::Served).unwrap()).collect();
        assert_eq!(
            got,
            [Source::Channel, e1, pipe, e2, Source::Channel, e1, pipe, e2]
        );
        // An eventfd with nothing to say passes its turn; the pipe's hang-up takes it out.
        let got = r.serve(|s| match s {
            Source::Eventfd(_) | Source::Channel => Turn::Idle,
            Source::ReadPipe(_) => Turn::ServedLast,
        });
        assert_eq!(got, Some(pipe));
        assert_eq!(r.order, [Source::Channel, e1, e2]);
    }

    #[test]
    fn idle_rounds_leave_the_order_alone() {
        let mut r = rotation(&[5, 6, 7]);
        assert_eq!(serve(&mut r, &[]), None);
        assert_eq!(serve(&mut r, &[]), None);
        assert_eq!(serve(&mut r, &[5, 6, 7]), Some(5));
        assert_eq!(serve(&mut r, &[7]), Some(7));
        assert_eq!(r.order, [6, 5, 7]);
    }

    #[test]
    fn a_source_that_hangs_up_leaves_and_the_rest_keep_their_order() {
        let mut r = rotation(&[1, 2, 3]);
        let served = r.serve(|k| if k == 1 { Turn::ServedLast } else { Turn::Idle });
        assert_eq!(served, Some(1));
        assert_eq!(r.order, [2, 3]);
        assert_eq!(serve(&mut r, &[2, 3]), Some(2));
        assert_eq!(serve(&mut r, &[2, 3]), Some(3));
    }

    #[test]
    fn removal_between_turns_is_safe() {
        let mut r = rotation(&[1, 2, 3, 4]);
        assert_eq!(serve(&mut r, &[1, 2, 3, 4]), Some(1)); // [2, 3, 4, 1]
        assert!(r.remove(3));
        assert!(!r.remove(3), "already gone");
        assert!(!r.remove(9), "never there");
        assert_eq!(serve(&mut r, &[1, 2, 3, 4]), Some(2));
        assert_eq!(serve(&mut r, &[1, 2, 3, 4]), Some(4));
        assert_eq!(serve(&mut r, &[1, 2, 3, 4]), Some(1));
        // Removing the one at the front hands the turn to the next.
        assert!(r.remove(2));
        assert_eq!(serve(&mut r, &[1, 2, 4]), Some(4));
        // Removing everything leaves nothing to serve; re-adding works.
        assert!(r.remove(4) && r.remove(1));
        assert_eq!(serve(&mut r, &[1, 2, 3, 4]), None);
        r.add(2);
        assert_eq!(serve(&mut r, &[2]), Some(2));
    }

    #[test]
    fn adding_twice_keeps_one_place_and_new_sources_wait_their_turn() {
        let mut r = rotation(&[1, 2]);
        r.add(1);
        assert_eq!(r.len(), 2);
        r.add(3);
        assert_eq!(serve(&mut r, &[3, 1]), Some(1));
        assert_eq!(serve(&mut r, &[3, 1]), Some(3));
    }

    #[test]
    fn tokens_round_trip() {
        let t = token(0xdead_beef, 0x8000_0001);
        assert_eq!(token_parts(t), (0xdead_beef, 0x8000_0001));
        assert_eq!(token_parts(token(7, CHANNEL_TOKEN)), (7, 0));
    }
}
