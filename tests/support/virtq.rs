//! Split virtqueues (virtio 1.x, little-endian) laid out by the test driver in guest memory.
//!
//! This is the guest side of a queue: it writes descriptor chains and the available ring,
//! kicks the device through the kick eventfd, and collects the used ring after the device
//! signals the call eventfd. It owns the descriptor slots and a data arena for the buffers of
//! chains it builds, and recycles both when a chain completes, so a queue can carry any number
//! of requests as long as the caller collects (or discards) completions.
//!
//! Completion handling is strict on purpose: the used ring is only scanned after the call
//! eventfd fired, so a device that completes a chain without signalling shows up as a timeout,
//! which [`VirtQueue::wait_for`] then reports as "completed but never signalled".

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_CLOEXEC, EFD_NONBLOCK};

/// Descriptor continues via the `next` field.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Buffer is device-writable.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Buffer holds an indirect descriptor table (never produced by this driver).
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Used-ring flag: the device asks the driver not to kick.
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;

/// Size of one split-ring descriptor.
pub const DESC_SIZE: u64 = 16;
/// Byte written into device-writable buffers before they are offered, so bytes the device
/// claims to have written but did not are recognisable.
pub const WRITABLE_POISON: u8 = 0xa5;

const PAGE: u64 = 4096;
const MIN_BLOCK: u64 = 64;
const POW2_LIMIT: u64 = 1 << 20;

/// One descriptor as laid out by [`VirtQueue::submit_descs`] (and `TestVm::submit_descs`).
///
/// `next` is an index into the slice passed to `submit_descs` and is translated to the
/// descriptor slot chosen for that entry; a value `>= slice.len()` is written unchanged, so
/// e.g. `0xffff` or the queue size points outside the descriptor table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawDesc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl RawDesc {
    pub fn new(addr: u64, len: u32, flags: u16, next: u16) -> Self {
        RawDesc {
            addr,
            len,
            flags,
            next,
        }
    }

    /// Device-readable buffer; chain to `next` (slice index) when given.
    pub fn readable(addr: u64, len: u32, next: Option<u16>) -> Self {
        let (flags, next) = match next {
            Some(n) => (VIRTQ_DESC_F_NEXT, n),
            None => (0, 0),
        };
        Self::new(addr, len, flags, next)
    }

    /// Device-writable buffer; chain to `next` (slice index) when given.
    pub fn writable(addr: u64, len: u32, next: Option<u16>) -> Self {
        let mut d = Self::readable(addr, len, next);
        d.flags |= VIRTQ_DESC_F_WRITE;
        d
    }
}

/// A completed chain as collected from the used ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Used {
    /// Head descriptor index (what `submit` returned).
    pub head: u16,
    /// `len` from the used element: bytes the device says it wrote.
    pub len: u32,
    /// The bytes of the chain's writable buffers, concatenated and truncated to `len`.
    pub data: Vec<u8>,
}

/// Counters for one queue (useful to benchmarks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Chains placed on the available ring.
    pub submitted: u64,
    /// Used elements collected.
    pub completed: u64,
    /// Kicks written to the kick eventfd.
    pub kicks: u64,
    /// Kicks skipped because the device suppressed them (NO_NOTIFY / avail_event).
    pub kicks_suppressed: u64,
    /// Times the call eventfd was found signalled.
    pub interrupts: u64,
}

/// Power-of-two size-class allocator over a range of guest addresses.
///
/// Blocks are never split or merged; freed blocks go on a per-size free list. That is all
/// the test traffic needs (the same few sizes over and over) and makes alloc/free O(1).
pub struct Arena {
    start: u64,
    end: u64,
    next: u64,
    free: HashMap<u64, Vec<u64>>,
    live: HashMap<u64, u64>,
}

impl Arena {
    pub fn new(start: u64, len: u64) -> Self {
        Arena {
            start,
            end: start + len,
            next: start,
            free: HashMap::new(),
            live: HashMap::new(),
        }
    }

    /// First guest address of the arena.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// One past the last guest address of the arena.
    pub fn end(&self) -> u64 {
        self.end
    }

    fn block_size(len: u64, align: u64) -> u64 {
        let len = len.max(MIN_BLOCK);
        let block = if len <= POW2_LIMIT {
            len.next_power_of_two()
        } else {
            align_up(len, PAGE)
        };
        block.max(align)
    }

    /// Allocates `len` bytes aligned to `align` (a power of two); `None` when exhausted.
    pub fn alloc(&mut self, len: u64, align: u64) -> Option<u64> {
        let align = align.max(1);
        assert!(
            align.is_power_of_two(),
            "alignment {align} is not a power of two"
        );
        let block = Self::block_size(len, align);
        if let Some(list) = self.free.get_mut(&block) {
            if let Some(pos) = list.iter().rposition(|a| a % align == 0) {
                let addr = list.swap_remove(pos);
                self.live.insert(addr, block);
                return Some(addr);
            }
        }
        let natural = if block.is_power_of_two() {
            block.min(PAGE)
        } else {
            PAGE
        };
        let addr = align_up(self.next, natural.max(align));
        let end = addr.checked_add(block)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        self.live.insert(addr, block);
        Some(addr)
    }

    /// Returns a block to its free list; `false` if `addr` is not a live allocation.
    pub fn free(&mut self, addr: u64) -> bool {
        match self.live.remove(&addr) {
            Some(block) => {
                self.free.entry(block).or_default().push(addr);
                true
            }
            None => false,
        }
    }

    /// Forgets every allocation.
    pub fn reset(&mut self) {
        self.next = self.start;
        self.free.clear();
        self.live.clear();
    }

    /// Number of live allocations.
    pub fn live(&self) -> usize {
        self.live.len()
    }
}

/// Rounds `v` up to a multiple of the power of two `align`.
pub fn align_up(v: u64, align: u64) -> u64 {
    (v + align - 1) & !(align - 1)
}

/// Offsets of the three parts of a split ring of `size` entries, relative to its start, and
/// the total (page-rounded) size: `(desc, avail, used, total)`.
pub fn ring_layout(size: u16) -> (u64, u64, u64, u64) {
    let n = u64::from(size);
    let desc = 0;
    let avail = align_up(desc + DESC_SIZE * n, PAGE);
    // flags, idx, ring[n], used_event
    let used = align_up(avail + 4 + 2 * n + 2, PAGE);
    // flags, idx, ring[n] of {id u32, len u32}, avail_event
    let total = align_up(used + 4 + 8 * n + 2, PAGE);
    (desc, avail, used, total)
}

struct Buf {
    addr: u64,
    len: u32,
    writable: bool,
    /// Allocated from the queue's data arena (freed on completion).
    owned: bool,
}

struct Chain {
    slots: Vec<u16>,
    bufs: Vec<Buf>,
    /// Built by `submit_descs`: no length checks on completion.
    raw: bool,
    /// Nobody will collect the completion: recycle everything when it arrives.
    discard: bool,
}

/// The driver side of one split virtqueue.
pub struct VirtQueue {
    index: usize,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    ring_len: u64,
    data: Arena,
    free_slots: Vec<u16>,
    /// Outstanding chains by head slot.
    chains: Vec<Option<Chain>>,
    /// Completed but not yet collected, by head; their head slot stays reserved.
    done: HashMap<u16, Used>,
    order: VecDeque<u16>,
    next_avail: u16,
    last_used: u16,
    kick: EventFd,
    call: EventFd,
    event_idx: bool,
    always_kick: bool,
    /// Publish without kicking until [`VirtQueue::kick`] (see [`VirtQueue::hold_kicks`]).
    kicks_held: bool,
    stats: QueueStats,
    /// State of fixed chains by head slot (see [`FixedChain`]).
    fixed: Vec<FixedState>,
}

fn new_eventfd() -> EventFd {
    EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC).expect("eventfd")
}

impl VirtQueue {
    /// A queue whose rings start at `ring_gpa` (see [`ring_layout`]) and whose buffers come
    /// from `data`. Call [`VirtQueue::reset`] before handing it to a device.
    pub fn new(
        index: usize,
        size: u16,
        ring_gpa: u64,
        data: Arena,
        event_idx: bool,
        always_kick: bool,
    ) -> Self {
        assert!(
            size.is_power_of_two(),
            "queue size {size} is not a power of two"
        );
        let (d, a, u, total) = ring_layout(size);
        VirtQueue {
            index,
            size,
            desc: ring_gpa + d,
            avail: ring_gpa + a,
            used: ring_gpa + u,
            ring_len: total,
            data,
            free_slots: (0..size).rev().collect(),
            chains: (0..size).map(|_| None).collect(),
            done: HashMap::new(),
            order: VecDeque::new(),
            next_avail: 0,
            last_used: 0,
            kick: new_eventfd(),
            call: new_eventfd(),
            event_idx,
            always_kick,
            kicks_held: false,
            stats: QueueStats::default(),
            fixed: vec![FixedState::None; usize::from(size)],
        }
    }

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    /// Guest addresses of the descriptor table, available ring and used ring.
    pub fn addrs(&self) -> (u64, u64, u64) {
        (self.desc, self.avail, self.used)
    }

    pub fn kick_fd(&self) -> &EventFd {
        &self.kick
    }

    pub fn call_fd(&self) -> &EventFd {
        &self.call
    }

    pub fn set_event_idx(&mut self, on: bool) {
        self.event_idx = on;
    }

    pub fn stats(&self) -> QueueStats {
        self.stats
    }

    /// Chains offered to the device and not yet seen in the used ring.
    pub fn in_flight(&self) -> usize {
        self.chains.iter().filter(|c| c.is_some()).count()
    }

    /// Completions seen but not yet collected.
    pub fn uncollected(&self) -> usize {
        self.done.len()
    }

    /// Zeroes the rings, forgets all chains and completions and makes fresh eventfds (like a
    /// driver re-initialising the queue after a reset).
    pub fn reset(&mut self, mem: &GuestMemoryMmap) {
        let zeros = vec![0u8; self.ring_len as usize];
        mem.write_slice(&zeros, GuestAddress(self.desc))
            .expect("zero ring memory");
        self.data.reset();
        self.free_slots = (0..self.size).rev().collect();
        self.chains = (0..self.size).map(|_| None).collect();
        self.done.clear();
        self.order.clear();
        self.next_avail = 0;
        self.last_used = 0;
        self.kick = new_eventfd();
        self.call = new_eventfd();
        self.fixed.fill(FixedState::None);
    }

    fn take_slots(&mut self, mem: &GuestMemoryMmap, n: usize) -> Vec<u16> {
        assert!(n > 0, "a chain needs at least one descriptor");
        assert!(
            n <= usize::from(self.size),
            "queue {}: a chain of {n} descriptors does not fit a queue of {}",
            self.index,
            self.size
        );
        if self.free_slots.len() < n {
            self.scan_used(mem);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.free_slots.len() < n && self.in_flight() > 0 {
            if !self.wait_signal(deadline) {
                break;
            }
            self.scan_used(mem);
        }
        if self.free_slots.len() < n {
            panic!(
                "queue {}: no free descriptors ({n} needed, {} free, {} chains in flight, \
                 {} completions not collected — collect them with wait_for/wait_used or \
                 discard them)",
                self.index,
                self.free_slots.len(),
                self.in_flight(),
                self.done.len()
            );
        }
        let at = self.free_slots.len() - n;
        let mut slots = self.free_slots.split_off(at);
        slots.reverse();
        slots
    }

    fn alloc_data(&mut self, len: usize) -> u64 {
        match self.data.alloc(len as u64, 16) {
            Some(a) => a,
            None => panic!(
                "queue {}: data arena exhausted allocating {len} bytes ({} buffers live)",
                self.index,
                self.data.live()
            ),
        }
    }

    fn write_desc(&self, mem: &GuestMemoryMmap, slot: u16, d: &RawDesc) {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&d.addr.to_le_bytes());
        b[8..12].copy_from_slice(&d.len.to_le_bytes());
        b[12..14].copy_from_slice(&d.flags.to_le_bytes());
        b[14..16].copy_from_slice(&d.next.to_le_bytes());
        let at = self.desc + u64::from(slot) * DESC_SIZE;
        mem.write_slice(&b, GuestAddress(at))
            .expect("write descriptor");
    }

    /// Copies each readable buffer into fresh queue memory, offers writable buffers of the
    /// given lengths (pre-filled with [`WRITABLE_POISON`]), chains them readable-first, puts
    /// the head on the available ring and kicks. Returns the head index.
    pub fn submit(&mut self, mem: &GuestMemoryMmap, readable: &[&[u8]], writable: &[u32]) -> u16 {
        let n = readable.len() + writable.len();
        let slots = self.take_slots(mem, n);
        let mut bufs = Vec::with_capacity(n);
        for r in readable {
            let addr = self.alloc_data(r.len());
            mem.write_slice(r, GuestAddress(addr))
                .expect("write readable buffer");
            bufs.push(Buf {
                addr,
                len: r.len() as u32,
                writable: false,
                owned: true,
            });
        }
        for &w in writable {
            let addr = self.alloc_data(w as usize);
            let poison = vec![WRITABLE_POISON; w as usize];
            mem.write_slice(&poison, GuestAddress(addr))
                .expect("poison writable buffer");
            bufs.push(Buf {
                addr,
                len: w,
                writable: true,
                owned: true,
            });
        }
        for (i, b) in bufs.iter().enumerate() {
            let mut flags = if b.writable { VIRTQ_DESC_F_WRITE } else { 0 };
            let mut next = 0;
            if i + 1 < n {
                flags |= VIRTQ_DESC_F_NEXT;
                next = slots[i + 1];
            }
            self.write_desc(mem, slots[i], &RawDesc::new(b.addr, b.len, flags, next));
        }
        let head = slots[0];
        self.chains[usize::from(head)] = Some(Chain {
            slots,
            bufs,
            raw: false,
            discard: false,
        });
        self.publish(mem, head);
        head
    }

    /// Lays out `descs` verbatim (see [`RawDesc`] for how `next` is translated), offers the
    /// first one as the head and kicks. Buffers are not allocated or freed by the queue.
    pub fn submit_descs(&mut self, mem: &GuestMemoryMmap, descs: &[RawDesc]) -> u16 {
        let slots = self.take_slots(mem, descs.len());
        let mut bufs = Vec::new();
        for (i, d) in descs.iter().enumerate() {
            let mut d = *d;
            if usize::from(d.next) < descs.len() {
                d.next = slots[usize::from(d.next)];
            }
            self.write_desc(mem, slots[i], &d);
            if d.flags & VIRTQ_DESC_F_WRITE != 0 {
                bufs.push(Buf {
                    addr: d.addr,
                    len: d.len,
                    writable: true,
                    owned: false,
                });
            }
        }
        let head = slots[0];
        self.chains[usize::from(head)] = Some(Chain {
            slots,
            bufs,
            raw: true,
            discard: false,
        });
        self.publish(mem, head);
        head
    }

    /// Puts `head` on the available ring and kicks unless the device suppressed kicks.
    pub fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let n = u64::from(self.size);
        let slot = u64::from(self.next_avail) % n;
        mem.write_obj(head.to_le(), GuestAddress(self.avail + 4 + 2 * slot))
            .expect("write avail ring");
        let old = self.next_avail;
        self.next_avail = self.next_avail.wrapping_add(1);
        fence(Ordering::Release);
        mem.store(
            self.next_avail.to_le(),
            GuestAddress(self.avail + 2),
            Ordering::Release,
        )
        .expect("write avail idx");
        self.stats.submitted += 1;
        // The device's suppression hints must be read after the index is visible.
        fence(Ordering::SeqCst);
        let need_kick = if self.event_idx {
            let event: u16 = u16::from_le(
                mem.load(GuestAddress(self.used + 4 + 8 * n), Ordering::Acquire)
                    .expect("read avail_event"),
            );
            // virtio 1.x vring_need_event(event, new, old)
            self.next_avail.wrapping_sub(event).wrapping_sub(1) < self.next_avail.wrapping_sub(old)
        } else {
            let flags: u16 = u16::from_le(
                mem.load(GuestAddress(self.used), Ordering::Acquire)
                    .expect("read used flags"),
            );
            flags & VIRTQ_USED_F_NO_NOTIFY == 0
        };
        if self.kicks_held {
            self.stats.kicks_suppressed += 1;
        } else if need_kick || self.always_kick {
            self.kick.write(1).expect("kick");
            self.stats.kicks += 1;
        } else {
            self.stats.kicks_suppressed += 1;
        }
    }

    /// While `on`, publish chains without kicking, so that the device finds all of them in
    /// one pass at the next [`VirtQueue::kick`].
    pub fn hold_kicks(&mut self, on: bool) {
        self.kicks_held = on;
    }

    /// Kicks unconditionally (e.g. to poke a device after re-enabling a queue).
    pub fn kick(&mut self) {
        self.kick.write(1).expect("kick");
        self.stats.kicks += 1;
    }

    /// Waits until the call eventfd fires or `deadline` passes; clears it. `true` if fired.
    pub fn wait_signal(&mut self, deadline: Instant) -> bool {
        loop {
            let now = Instant::now();
            let ms = if deadline > now {
                let left = deadline - now;
                // Round up so we never spin with a 0 ms timeout before the deadline.
                (left.as_micros().div_ceil(1000)).min(i32::MAX as u128) as i32
            } else {
                0
            };
            let mut pfd = libc::pollfd {
                fd: self.call.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `pfd` is a valid pollfd for the duration of the call and we pass a count
            // of exactly one entry.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                panic!("poll on call eventfd: {e}");
            }
            if r > 0 && pfd.revents & libc::POLLIN != 0 {
                // Non-blocking: a concurrent reader cannot exist, but tolerate EAGAIN anyway.
                let _ = self.call.read();
                self.stats.interrupts += 1;
                return true;
            }
            if ms == 0 {
                return false;
            }
        }
    }

    /// Reads every new used element, moving completed chains to the completion map.
    pub fn scan_used(&mut self, mem: &GuestMemoryMmap) {
        let n = u64::from(self.size);
        loop {
            let used_idx: u16 = u16::from_le(
                mem.load(GuestAddress(self.used + 2), Ordering::Acquire)
                    .expect("read used idx"),
            );
            while self.last_used != used_idx {
                let at = self.used + 4 + 8 * (u64::from(self.last_used) % n);
                let id: u32 = u32::from_le(mem.read_obj(GuestAddress(at)).expect("read used id"));
                let len: u32 =
                    u32::from_le(mem.read_obj(GuestAddress(at + 4)).expect("read used len"));
                self.complete(mem, id, len);
                self.last_used = self.last_used.wrapping_add(1);
            }
            if !self.event_idx {
                return;
            }
            // Ask for an interrupt on the next element, then re-check so an element added
            // while we were updating used_event is not left unsignalled.
            mem.store(
                self.last_used.to_le(),
                GuestAddress(self.avail + 4 + 2 * n),
                Ordering::Release,
            )
            .expect("write used_event");
            fence(Ordering::SeqCst);
            let again: u16 = u16::from_le(
                mem.load(GuestAddress(self.used + 2), Ordering::Acquire)
                    .expect("read used idx"),
            );
            if again == self.last_used {
                return;
            }
        }
    }

    fn complete(&mut self, mem: &GuestMemoryMmap, id: u32, len: u32) {
        if self.complete_fixed(id, len) {
            return;
        }
        let q = self.index;
        let chain = usize::try_from(id)
            .ok()
            .and_then(|i| self.chains.get_mut(i))
            .and_then(Option::take)
            .unwrap_or_else(|| {
                panic!("queue {q}: device put id {id} on the used ring, which is not the head of an outstanding chain")
            });
        let head = id as u16;
        let capacity: u64 = chain
            .bufs
            .iter()
            .filter(|b| b.writable)
            .map(|b| u64::from(b.len))
            .sum();
        if !chain.raw && u64::from(len) > capacity {
            panic!(
                "queue {q}: device reported {len} bytes written to head {head}, but the chain \
                 has only {capacity} writable bytes"
            );
        }
        let mut data = Vec::new();
        if !chain.discard {
            let mut left = len as usize;
            for b in chain.bufs.iter().filter(|b| b.writable) {
                if left == 0 {
                    break;
                }
                let take = left.min(b.len as usize);
                let mut part = vec![0u8; take];
                if mem.read_slice(&mut part, GuestAddress(b.addr)).is_err() {
                    // Raw chains may point anywhere; nothing to collect there.
                    break;
                }
                data.extend_from_slice(&part);
                left -= take;
            }
        }
        for b in chain.bufs.iter().filter(|b| b.owned) {
            self.data.free(b.addr);
        }
        self.stats.completed += 1;
        if chain.discard {
            self.free_slots.extend_from_slice(&chain.slots);
            return;
        }
        // Keep the head slot until the completion is collected so heads stay unambiguous.
        self.free_slots
            .extend(chain.slots.iter().copied().filter(|&s| s != head));
        self.done.insert(head, Used { head, len, data });
        self.order.push_back(head);
    }

    fn collect(&mut self, head: u16) -> Option<Used> {
        let used = self.done.remove(&head)?;
        if let Some(pos) = self.order.iter().position(|&h| h == head) {
            self.order.remove(pos);
        }
        self.free_slots.push(head);
        Some(used)
    }

    /// After a timeout: a completion that is in the used ring without a signal is either in
    /// the short window between the device's used-ring write and its eventfd write (then the
    /// signal follows within the grace period and the completion counts), or a device bug.
    fn check_silent(&mut self, mem: &GuestMemoryMmap, head: Option<u16>) {
        let before = self.done.len();
        self.scan_used(mem);
        let arrived = match head {
            Some(h) => self.done.contains_key(&h),
            None => self.done.len() > before,
        };
        if arrived && !self.wait_signal(Instant::now() + Duration::from_millis(500)) {
            panic!(
                "queue {}: the device put a chain on the used ring but never signalled the call \
                 eventfd{}",
                self.index,
                if self.event_idx {
                    " (EVENT_IDX negotiated; used_event asked for it)"
                } else {
                    ""
                }
            );
        }
    }

    /// Waits (up to `timeout`) for the chain with head `head` and collects it.
    pub fn wait_for(
        &mut self,
        mem: &GuestMemoryMmap,
        head: u16,
        timeout: Duration,
    ) -> Option<Used> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(u) = self.collect(head) {
                return Some(u);
            }
            let q = self.index;
            if self
                .chains
                .get(usize::from(head))
                .is_none_or(|c| c.is_none())
            {
                panic!("queue {q}: head {head} is not an outstanding chain");
            }
            if !self.wait_signal(deadline) {
                self.check_silent(mem, Some(head));
                return self.collect(head);
            }
            self.scan_used(mem);
        }
    }

    /// Waits (up to `timeout`) for any completion and collects the oldest one.
    pub fn wait_any(&mut self, mem: &GuestMemoryMmap, timeout: Duration) -> Option<Used> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(&head) = self.order.front() {
                return self.collect(head);
            }
            if !self.wait_signal(deadline) {
                self.check_silent(mem, None);
                let head = *self.order.front()?;
                return self.collect(head);
            }
            self.scan_used(mem);
        }
    }

    /// Non-blocking: has the chain `head` completed (collected or not)?
    pub fn is_done(&mut self, mem: &GuestMemoryMmap, head: u16) -> bool {
        if self.wait_signal(Instant::now()) {
            self.scan_used(mem);
        }
        self.done.contains_key(&head)
    }

    /// Drops interest in `head`: an already-seen completion is discarded now, a pending one
    /// when it arrives.
    pub fn discard(&mut self, head: u16) {
        if self.collect(head).is_some() {
            return;
        }
        if let Some(Some(c)) = self.chains.get_mut(usize::from(head)) {
            c.discard = true;
        }
    }

    /// Frees the slots of an outstanding chain the device is known to have dropped (it will
    /// never appear on the used ring). If the device does complete it later, `scan_used`
    /// panics because the head is no longer outstanding.
    pub fn forget(&mut self, head: u16) {
        if let Some(c) = self
            .chains
            .get_mut(usize::from(head))
            .and_then(Option::take)
        {
            for b in c.bufs.iter().filter(|b| b.owned) {
                self.data.free(b.addr);
            }
            self.free_slots.extend_from_slice(&c.slots);
        }
    }
}

// ---- fixed chains: the benchmark's allocation-free path ------------------------------------

/// Where a fixed chain is in its cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FixedState {
    /// The slot is not the head of a fixed chain.
    None,
    /// Laid out and not offered (or completed and collected).
    Idle,
    Offered,
    /// On the used ring with this length, not yet collected.
    Done(u32),
}

/// A chain laid out once in descriptor slots it keeps until [`VirtQueue::release_fixed`], and
/// offered again and again with [`VirtQueue::offer_fixed`]: nothing is allocated, copied or
/// poisoned per request, and the caller reads responses straight from its own buffers in
/// guest memory. This is the benchmark's cheap guest driver (a real guest driver reuses its
/// buffers too); tests use [`VirtQueue::submit`], which checks more.
///
/// The chain's slots are not in the free list while it lives, and a completion of a fixed
/// chain that is not offered is a device bug, reported like any other unknown head.
#[derive(Debug)]
pub struct FixedChain {
    slots: Vec<u16>,
}

impl FixedChain {
    /// The head descriptor index (what the device puts on the used ring).
    pub fn head(&self) -> u16 {
        self.slots[0]
    }

    /// Number of descriptors.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

impl VirtQueue {
    /// Takes descriptor slots for `descs` and lays them out (`next` translated as for
    /// [`Self::submit_descs`]); nothing is offered yet.
    pub fn reserve_fixed(&mut self, mem: &GuestMemoryMmap, descs: &[RawDesc]) -> FixedChain {
        let slots = self.take_slots(mem, descs.len());
        for (i, d) in descs.iter().enumerate() {
            let mut d = *d;
            if usize::from(d.next) < descs.len() {
                d.next = slots[usize::from(d.next)];
            }
            self.write_desc(mem, slots[i], &d);
        }
        self.fixed[usize::from(slots[0])] = FixedState::Idle;
        FixedChain { slots }
    }

    /// Rewrites the length of descriptor `i` of an idle fixed chain (a request of another
    /// size in the same buffer).
    pub fn set_fixed_len(&mut self, mem: &GuestMemoryMmap, chain: &FixedChain, i: usize, len: u32) {
        let head = chain.head();
        assert_eq!(
            self.fixed[usize::from(head)],
            FixedState::Idle,
            "queue {}: fixed chain {head} is not idle",
            self.index
        );
        let at = self.desc + u64::from(chain.slots[i]) * DESC_SIZE + 8;
        mem.write_obj(len.to_le(), GuestAddress(at))
            .expect("write descriptor length");
    }

    /// Offers an idle fixed chain again (publish and kick as for any chain).
    pub fn offer_fixed(&mut self, mem: &GuestMemoryMmap, chain: &FixedChain) {
        let head = chain.head();
        let state = &mut self.fixed[usize::from(head)];
        assert_eq!(
            *state,
            FixedState::Idle,
            "queue {}: fixed chain {head} offered while not idle",
            self.index
        );
        *state = FixedState::Offered;
        self.publish(mem, head);
    }

    /// Waits (up to `timeout`) for an offered fixed chain to complete; returns the used
    /// length and makes the chain idle again. `None` on timeout (the chain stays offered).
    /// As for [`Self::wait_for`], a completion the device never signalled is a panic.
    pub fn wait_fixed(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: &FixedChain,
        timeout: Duration,
    ) -> Option<u32> {
        let head = usize::from(chain.head());
        let deadline = Instant::now() + timeout;
        loop {
            match self.fixed[head] {
                FixedState::Done(len) => {
                    self.fixed[head] = FixedState::Idle;
                    return Some(len);
                }
                FixedState::Offered => {}
                s => panic!(
                    "queue {}: waiting for fixed chain {head}, which is {s:?}",
                    self.index
                ),
            }
            if !self.wait_signal(deadline) {
                self.scan_used(mem);
                if let FixedState::Done(_) = self.fixed[head] {
                    if !self.wait_signal(Instant::now() + Duration::from_millis(500)) {
                        panic!(
                            "queue {}: the device put fixed chain {head} on the used ring but \
                             never signalled the call eventfd",
                            self.index
                        );
                    }
                    continue;
                }
                return None;
            }
            self.scan_used(mem);
        }
    }

    /// Gives an idle fixed chain's slots back to the queue.
    pub fn release_fixed(&mut self, chain: FixedChain) {
        let head = chain.head();
        assert_eq!(
            self.fixed[usize::from(head)],
            FixedState::Idle,
            "queue {}: fixed chain {head} released while not idle",
            self.index
        );
        self.fixed[usize::from(head)] = FixedState::None;
        self.free_slots.extend_from_slice(&chain.slots);
    }

    /// Used-ring element for a fixed chain: records it (no allocation) and returns true; false
    /// when `id` is not an offered fixed chain.
    fn complete_fixed(&mut self, id: u32, len: u32) -> bool {
        let Some(state) = usize::try_from(id).ok().and_then(|i| self.fixed.get_mut(i)) else {
            return false;
        };
        if *state != FixedState::Offered {
            return false;
        }
        *state = FixedState::Done(len);
        self.stats.completed += 1;
        true
    }
}
