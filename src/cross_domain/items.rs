//! The item table of one context: every identifier the context has handed to the guest (or,
//! for read pipes, accepted from it), what it names, and how new ids are chosen
//! (docs/protocol.md §5.2).
//!
//! Ids come from disjoint ranges, one per id space:
//!
//! | range | space | numbered by |
//! |---|---|---|
//! | `0`, `1` | not ids (`0` is the channel's epoll token) | — |
//! | [`HOST_IDS`] `2..=0x3FFF_FFFF` | received fds of every kind (memory, write pipes, eventfds, sockets), image requirements | the device, in the order it hands them out |
//! | [`SENTINEL_IDS`] `0x4000_0000..=0x7FFF_FFFF` | never handed out | — |
//! | [`READ_PIPE_IDS`] `0x8000_0000..=0xFFFF_FFFF` | read pipes | the guest's own counter, which the device predicts |
//!
//! Received memory, write pipes, eventfds, sockets and stored image requirements share the host
//! counter, so the ids guests see stay what they were (the first fd of the first RECEIVE is 2,
//! the next 3; no guest depends on more than that and on read-pipe ids, §8.2). A new kind of
//! received fd is one more [`Item`] variant in [`HOST_IDS`], and, if it
//! speaks to the guest, one more `delivery::Source` ([`Item::source`]). A new kind
//! the guest numbers itself (magma's imports, futex ids, §3.8 and §3.10) gets a table of its
//! own keyed by the guest's id, as the spec recommends, and so never collides with these.
//!
//! This module owns the ids and the map, and never does I/O: removing an item hands it back to
//! the caller, which closes it (see `Context::remove_item`).

use std::os::fd::OwnedFd;

use super::blobs::StoredImage;
use super::delivery::Source;
use super::error::CtxError;
use super::eventfds::Eventfd;
use super::pipes::{ReadPipe, WritePipe};
use super::protocol::READ_PIPE_ID_BASE;
use crate::idmap::IdMap;

/// Most items (received fds, pipes) one context may hold; further fds are refused. Image
/// requirements have their own limit (`MAX_IMAGE_REQUIREMENTS`).
pub const MAX_ITEMS: usize = 1024;

/// An inclusive range of ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct IdRange {
    pub first: u32,
    pub last: u32,
}

impl IdRange {
    #[cfg(test)]
    pub const fn contains(&self, id: u32) -> bool {
        self.first <= id && id <= self.last
    }

    /// Number of ids in the range.
    pub const fn len(&self) -> u64 {
        (self.last - self.first) as u64 + 1
    }
}

/// Ids the device numbers itself: every received fd (memory, write pipes, eventfds, sockets)
/// and every stored image requirement. Starts at 2 as libkrun and magma do.
/// Ends below [`SENTINEL_IDS`]. (Before the id space had ranges, this counter ran on up to
/// `0x7FFF_FFFF` before wrapping; only a context handing out 2^30 ids could tell, and no
/// guest depends on where host ids wrap, docs/protocol.md §8.2 item 6.)
pub(super) const HOST_IDS: IdRange = IdRange {
    first: 2,
    last: SENTINEL_IDS.first - 1,
};

/// Never handed out. magma routes any id in this range as one of its atomic-memory sentinels
/// (docs/protocol.md §3.8), whose ids the guest chooses; keeping ours out of it means a
/// guest-chosen id there can never name one of our items, whatever table it lands in.
pub(super) const SENTINEL_IDS: IdRange = IdRange {
    first: 0x4000_0000,
    last: READ_PIPE_ID_BASE - 1,
};

/// Read pipes. The guest numbers them and the device checks its prediction
/// ([`next_read_pipe_id`]); `0x8000_0000` itself comes only after the counter wraps.
pub(super) const READ_PIPE_IDS: IdRange = IdRange {
    first: READ_PIPE_ID_BASE,
    last: u32::MAX,
};

/// The read-pipe id a guest uses after `prev` (docs/protocol.md §5.2): incremented, wrapping,
/// and clamped at [`READ_PIPE_ID_BASE`], so the first (after the initial `prev` of
/// `READ_PIPE_ID_BASE`) is `0x8000_0001` and the one after `0xFFFF_FFFF` is `0x8000_0000`.
pub(super) fn next_read_pipe_id(prev: u32) -> u32 {
    prev.wrapping_add(1).max(READ_PIPE_IDS.first)
}

/// Hands out the ids of one range in order, wrapping at its end and skipping ids still in use.
#[derive(Debug)]
pub(super) struct IdCounter {
    range: IdRange,
    /// The id handed out last (`range.first - 1` before the first).
    last: u32,
}

impl IdCounter {
    pub const fn new(range: IdRange) -> Self {
        IdCounter {
            range,
            last: range.first.wrapping_sub(1),
        }
    }

    /// The next id after the last one handed out that `in_use` does not claim; `None` when
    /// every id of the range is in use. Tries at most one id more than are in use.
    pub fn next(&mut self, in_use: impl Fn(u32) -> bool) -> Option<u32> {
        let mut id = self.last;
        for _ in 0..self.range.len() {
            id = if id < self.range.first || id >= self.range.last {
                self.range.first
            } else {
                id + 1
            };
            if !in_use(id) {
                self.last = id;
                return Some(id);
            }
        }
        None
    }
}

/// What an id names.
pub(super) enum Item {
    /// Seekable memory received from the host (memfd, dma-buf), waiting to become a blob.
    Memory { fd: OwnedFd, size: u64 },
    /// A stored GET_IMAGE_REQUIREMENTS reply; any number of blobs may be made from it.
    Image(StoredImage),
    /// A pipe write end received from the host; the guest WRITEs into it.
    WritePipe(WritePipe),
    /// The read end of a pipe created for a guest READ_PIPE; streamed back as READ.
    ReadPipe(ReadPipe),
    /// An eventfd received from the host; watched on READ_EVENTFD_NEW, added to by WRITE.
    Eventfd(Eventfd),
    /// A Unix socket received from the host, never read or written in this context; the
    /// guest may park it (ASSIGN_SOCKET_UUID, `sockets.rs`) for another context to adopt.
    Socket(OwnedFd),
}

impl Item {
    /// The delivery source of item `id`, for the kinds that write into the channel ring.
    pub fn source(&self, id: u32) -> Option<Source> {
        match self {
            Item::ReadPipe(_) => Some(Source::ReadPipe(id)),
            Item::Eventfd(_) => Some(Source::Eventfd(id)),
            Item::Memory { .. } | Item::Image(_) | Item::WritePipe(_) | Item::Socket(_) => None,
        }
    }
}

/// A context's items by id.
pub(super) struct ItemTable {
    map: IdMap<u32, Item>,
    /// How many of `map` are [`Item::Image`] (counted apart: they have their own limits).
    images: usize,
    host_ids: IdCounter,
    /// The read-pipe id the guest used last (see [`next_read_pipe_id`]).
    last_read_pipe: u32,
}

impl Default for ItemTable {
    fn default() -> Self {
        ItemTable {
            map: IdMap::default(),
            images: 0,
            host_ids: IdCounter::new(HOST_IDS),
            last_read_pipe: READ_PIPE_ID_BASE,
        }
    }
}

impl ItemTable {
    pub fn get(&self, id: u32) -> Option<&Item> {
        self.map.get(&id)
    }

    pub fn get_mut(&mut self, id: u32) -> Option<&mut Item> {
        self.map.get_mut(&id)
    }

    /// Items that count against [`MAX_ITEMS`]: everything but image requirements.
    pub fn fd_items(&self) -> usize {
        self.map.len() - self.images
    }

    /// Stored image requirements.
    pub fn images(&self) -> usize {
        self.images
    }

    /// Room for `n` more items that count against [`MAX_ITEMS`].
    pub fn has_room_for(&self, n: usize) -> bool {
        self.fd_items() + n <= MAX_ITEMS
    }

    /// Store the item `make` builds for a received fd under a fresh host id (`make` gets the
    /// id; it is not called when the table is full, and what it owns is dropped).
    pub fn add_received(&mut self, make: impl FnOnce(u32) -> Item) -> Result<u32, CtxError> {
        if self.fd_items() >= MAX_ITEMS {
            return Err(CtxError::TooManyItems);
        }
        let id = self.next_host_id()?;
        self.insert(id, make(id));
        Ok(id)
    }

    /// The next free host id, for an item the caller inserts with [`ItemTable::insert`]
    /// once it is sure to keep it.
    pub fn next_host_id(&mut self) -> Result<u32, CtxError> {
        let map = &self.map;
        // Cannot fail while the limits hold (MAX_ITEMS + MAX_IMAGE_REQUIREMENTS ids of 2^30).
        self.host_ids
            .next(|id| map.contains_key(&id))
            .ok_or(CtxError::TooManyItems)
    }

    /// The read-pipe id the guest used last.
    pub fn last_read_pipe(&self) -> u32 {
        self.last_read_pipe
    }

    /// Record that the guest's read-pipe counter is now at `id`.
    pub fn set_last_read_pipe(&mut self, id: u32) {
        self.last_read_pipe = id;
    }

    /// Put `item` under `id`, returning what was there (only possible for a read-pipe id the
    /// guest reused after its counter wrapped).
    pub fn insert(&mut self, id: u32, item: Item) -> Option<Item> {
        if matches!(item, Item::Image(_)) {
            self.images += 1;
        }
        let old = self.map.insert(id, item);
        if matches!(old, Some(Item::Image(_))) {
            self.images -= 1;
        }
        old
    }

    /// Take the item `id` out of the table.
    pub fn remove(&mut self, id: u32) -> Option<Item> {
        let item = self.map.remove(&id);
        if matches!(item, Some(Item::Image(_))) {
            self.images -= 1;
        }
        item
    }

    /// All ids in the table (for teardown).
    pub fn ids(&self) -> Vec<u32> {
        self.map.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::cross_domain::blobs::StoredImage;

    fn image() -> Item {
        Item::Image(StoredImage {
            size: 4096,
            map_info: 1,
        })
    }

    fn memory() -> Item {
        let fd = nix::sys::memfd::memfd_create(c"items-test", nix::sys::memfd::MFdFlags::empty())
            .unwrap();
        Item::Memory { fd, size: 0 }
    }

    #[test]
    fn ranges_are_disjoint_and_leave_the_sentinel_range_free() {
        let handed_out = [HOST_IDS, READ_PIPE_IDS];
        for (i, a) in handed_out.iter().enumerate() {
            assert!(!a.contains(0) && !a.contains(1), "{a:?} holds a non-id");
            for x in [SENTINEL_IDS.first, SENTINEL_IDS.last] {
                assert!(!a.contains(x), "{a:?} overlaps the sentinel range");
            }
            for b in &handed_out[i + 1..] {
                assert!(a.last < b.first || b.last < a.first, "{a:?} overlaps {b:?}");
            }
        }
        // The three ranges and the two non-ids cover the whole u32 space, in this order.
        assert_eq!(HOST_IDS.last + 1, SENTINEL_IDS.first);
        assert_eq!(SENTINEL_IDS.last + 1, READ_PIPE_IDS.first);
        assert_eq!(READ_PIPE_IDS.last, u32::MAX);
        assert_eq!(
            HOST_IDS.len() + SENTINEL_IDS.len() + READ_PIPE_IDS.len() + 2,
            1 << 32
        );
    }

    #[test]
    fn host_ids_start_at_2_and_are_shared_by_every_host_numbered_kind() {
        let mut t = ItemTable::default();
        assert_eq!(t.add_received(|_| memory()).unwrap(), 2);
        let id = t.next_host_id().unwrap();
        t.insert(id, image());
        assert_eq!(id, 3);
        assert_eq!(t.add_received(|_| memory()).unwrap(), 4);
        assert_eq!((t.fd_items(), t.images()), (2, 1));
        assert!(matches!(t.remove(3), Some(Item::Image(_))));
        assert_eq!((t.fd_items(), t.images()), (2, 0));
        // Removed ids are not handed out again until the counter comes round.
        assert_eq!(t.add_received(|_| memory()).unwrap(), 5);
    }

    #[test]
    fn the_counter_wraps_to_the_start_of_its_range_and_skips_ids_in_use() {
        let r = IdRange {
            first: 10,
            last: 14,
        };
        let mut c = IdCounter::new(r);
        let used: HashSet<u32> = [11, 14].into();
        let got: Vec<_> = (0..6)
            .map(|_| c.next(|id| used.contains(&id)).unwrap())
            .collect();
        assert_eq!(got, [10, 12, 13, 10, 12, 13]);
        // The real range wraps from its last id to 2, never into the sentinel range.
        let mut c = IdCounter::new(HOST_IDS);
        c.last = HOST_IDS.last - 1;
        assert_eq!(c.next(|_| false), Some(HOST_IDS.last));
        assert_eq!(c.next(|_| false), Some(2));
        assert_eq!(c.next(|id| id == 3), Some(4));
    }

    #[test]
    fn a_full_range_is_exhausted_not_looped_over_forever() {
        let r = IdRange { first: 2, last: 5 };
        let mut c = IdCounter::new(r);
        let mut used = HashSet::new();
        for want in 2..=5 {
            let id = c.next(|id| used.contains(&id)).unwrap();
            assert_eq!(id, want);
            used.insert(id);
        }
        assert_eq!(c.next(|id| used.contains(&id)), None);
        // Freeing one makes exactly that one available.
        used.remove(&3);
        assert_eq!(c.next(|id| used.contains(&id)), Some(3));
    }

    #[test]
    fn ids_in_use_are_never_handed_out_again() {
        // Fill the table, then run the counter all the way round: every id it hands out is
        // free at that moment, including across the wrap.
        let mut t = ItemTable::default();
        let mut live: Vec<u32> = (0..100)
            .map(|_| t.add_received(|_| memory()).unwrap())
            .collect();
        t.host_ids.last = HOST_IDS.last - 10;
        for i in 0..50 {
            // Free every other id, allocate one: it must not collide with a live one.
            if i % 2 == 0 {
                let gone = live.remove(0);
                assert!(t.remove(gone).is_some());
            }
            let id = t.add_received(|_| memory()).unwrap();
            assert!(HOST_IDS.contains(id));
            assert!(!live.contains(&id), "{id} handed out twice");
            live.push(id);
        }
        assert_eq!(t.fd_items(), live.len());
    }

    #[test]
    fn received_items_stop_at_max_items_and_images_do_not_count() {
        let mut t = ItemTable::default();
        for _ in 0..10 {
            let id = t.next_host_id().unwrap();
            t.insert(id, image());
        }
        for _ in 0..MAX_ITEMS {
            t.add_received(|_| memory()).unwrap();
        }
        assert!(matches!(
            t.add_received(|_| memory()),
            Err(CtxError::TooManyItems)
        ));
        assert_eq!((t.fd_items(), t.images()), (MAX_ITEMS, 10));
    }

    #[test]
    fn read_pipe_ids_follow_the_guests_counter() {
        let t = ItemTable::default();
        let first = next_read_pipe_id(t.last_read_pipe());
        assert_eq!(first, 0x8000_0001);
        assert_eq!(next_read_pipe_id(first), 0x8000_0002);
        assert_eq!(next_read_pipe_id(u32::MAX), 0x8000_0000, "wraps, clamped");
        assert_eq!(next_read_pipe_id(0x8000_0000), 0x8000_0001);
        for id in [first, u32::MAX, 0x8000_0000] {
            assert!(READ_PIPE_IDS.contains(id) && !HOST_IDS.contains(id));
        }
    }
}
