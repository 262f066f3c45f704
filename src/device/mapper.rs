//! What the VMM has mapped in the host-visible region, and the SHMEM_MAP/UNMAP requests that
//! change it.
//!
//! [`VmmMappings`] records every range the VMM accepted and has not unmapped, whichever guest
//! (before or after a reset) asked for it. It outlives guest resets on purpose: crosvm keeps
//! its mappings across a reset (one KVM memory slot each, and it refuses an overlapping one,
//! which ends the VM), QEMU drops them. After a reset [`VmmMappings::reconcile`] removes the
//! old guest's ranges before the new guest maps anything; [`VmmMapper::map`] never sends a map
//! over a recorded range and never exceeds the bound.
//!
//! Never does: send a request while the device is stopped (QEMU 11.1.3 crashes on one, crosvm
//! does not read its channel then), or hold a lock across a request — QEMU sends SET_MEM_TABLE
//! (handled by [`VmmMappings::memory_table`] on the vhost-user thread) before it acknowledges a
//! map.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use log::{debug, info, warn};
use vhost::vhost_user::message::{VhostUserMMap, VhostUserMMapFlags};
use vhost::vhost_user::{Backend as BackendChannel, VhostUserFrontendReqHandler};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::{lock, SHMID_HOST_VISIBLE};
use crate::virtio_gpu::ShmMapper;

/// Device and inode of a file: how the daemon recognises a blob of its own in the VMM's
/// memory table.
type FileId = (u64, u64);

fn file_id(fd: BorrowedFd<'_>) -> Option<FileId> {
    nix::sys::stat::fstat(fd).ok().map(|s| (s.st_dev, s.st_ino))
}

struct Held {
    len: u64,
    file: Option<FileId>,
}

/// The VMM's mappings as the daemon knows them (see the module docs).
pub struct VmmMappings {
    held: Mutex<BTreeMap<u64, Held>>,
    /// Files of the VMM's latest memory table.
    table: Mutex<Vec<FileId>>,
    /// The VMM listed one of the daemon's mappings in its memory table (QEMU does, after each
    /// map): a range missing from the table is one it no longer holds.
    lists_mappings: AtomicBool,
    /// Most simultaneous mappings (see `Limits::max_mappings`).
    max: usize,
}

impl VmmMappings {
    pub fn new(max: usize) -> Self {
        VmmMappings {
            held: Mutex::new(BTreeMap::new()),
            table: Mutex::new(Vec::new()),
            lists_mappings: AtomicBool::new(false),
            max,
        }
    }

    /// Number of ranges the VMM holds.
    fn len(&self) -> usize {
        lock(&self.held).len()
    }

    /// The VMM went away: it holds nothing any more.
    pub fn clear(&self) {
        lock(&self.held).clear();
        lock(&self.table).clear();
    }

    /// A new memory table (SET_MEM_TABLE, ADD/REM_MEM_REG). Runs on the vhost-user thread.
    pub fn memory_table(&self, mem: &GuestMemoryMmap<()>) {
        let files: Vec<FileId> = mem
            .iter()
            .filter_map(|r| r.file_offset().and_then(|f| file_id(f.file().as_fd())))
            .collect();
        let held = lock(&self.held);
        if held
            .values()
            .any(|h| h.file.is_some_and(|f| files.contains(&f)))
            && !self.lists_mappings.swap(true, Ordering::Relaxed)
        {
            debug!("the VMM describes shared memory mappings in its memory table");
        }
        drop(held);
        *lock(&self.table) = files;
    }

    /// The ranges overlapping `[offset, end)`.
    fn overlapping(&self, offset: u64, end: u64) -> Vec<(u64, u64)> {
        let held = lock(&self.held);
        let mut v: Vec<(u64, u64)> = held
            .range(..end)
            .rev()
            .take_while(|(o, h)| **o + h.len > offset)
            .map(|(o, h)| (*o, h.len))
            .collect();
        // Ranges never overlap each other, so walking back stops at the first one that ends
        // before `offset`; anything further back ends even earlier.
        v.reverse();
        v
    }

    /// After a guest reset, with the device started: remove every range the old guest had
    /// mapped. Ranges the VMM provably dropped itself (QEMU drops its mappings at a reset and
    /// lists the live ones in its memory table) are forgotten without a request; the others
    /// are unmapped. A refused unmap means the VMM did not hold the range: forgotten too.
    pub fn reconcile(&self, channel: Option<&BackendChannel>) {
        let stale: Vec<(u64, Held)> = std::mem::take(&mut *lock(&self.held)).into_iter().collect();
        if stale.is_empty() {
            return;
        }
        let lists = self.lists_mappings.load(Ordering::Relaxed);
        let table = lock(&self.table).clone();
        let (mut unmapped, mut dropped) = (0, 0);
        for (offset, h) in stale {
            if lists && !h.file.is_some_and(|f| table.contains(&f)) {
                dropped += 1;
                continue;
            }
            let Some(ch) = channel else {
                continue;
            };
            match ch.shmem_unmap(&request(offset, h.len, false)) {
                Ok(_) => unmapped += 1,
                Err(e) => debug!(
                    "stale mapping [{offset:#x}, +{:#x}): the VMM refused to unmap it ({e}); \
                     it no longer held it",
                    h.len
                ),
            }
        }
        info!(
            "guest reset: {unmapped} mapping(s) of the previous guest unmapped, {dropped} \
             already dropped by the VMM"
        );
    }
}

fn request(offset: u64, len: u64, writable: bool) -> VhostUserMMap {
    VhostUserMMap {
        shmid: SHMID_HOST_VISIBLE,
        fd_offset: 0,
        shm_offset: offset,
        len,
        flags: if writable {
            VhostUserMMapFlags::WRITABLE.bits()
        } else {
            0
        },
        ..Default::default()
    }
}

/// Maps blobs into the VMM's host-visible region over the vhost-user backend channel, for
/// the duration of one batch of queue work.
pub struct VmmMapper<'a> {
    pub channel: Option<&'a BackendChannel>,
    pub started: &'a AtomicBool,
    pub mappings: &'a VmmMappings,
}

impl VmmMapper<'_> {
    fn channel(&self) -> io::Result<&BackendChannel> {
        if !self.started.load(Ordering::Acquire) {
            return Err(io::Error::other("the device is stopped"));
        }
        self.channel.ok_or_else(|| {
            io::Error::other("the VMM gave no backend channel (BACKEND_REQ and SHMEM needed)")
        })
    }

    fn unmap_request(&self, ch: &BackendChannel, offset: u64, len: u64) -> io::Result<()> {
        let r = ch.shmem_unmap(&request(offset, len, false));
        // Refused or not, the VMM does not hold the range afterwards (a refusal: it had not).
        lock(&self.mappings.held).remove(&offset);
        r.map(|_| ())
            .map_err(|e| io::Error::other(format!("SHMEM_UNMAP refused: {e}")))
    }
}

impl ShmMapper for VmmMapper<'_> {
    fn map(&self, fd: BorrowedFd<'_>, offset: u64, len: u64, writable: bool) -> io::Result<()> {
        let ch = self.channel()?;
        let end = offset.saturating_add(len);
        // The guest's own mappings never overlap (the virtio-gpu layer checks); anything
        // recorded here is left over from before a reset that `reconcile` could not remove.
        for (o, l) in self.mappings.overlapping(offset, end) {
            warn!("unmapping the stale mapping [{o:#x}, +{l:#x}) before mapping over it");
            let _ = self.unmap_request(ch, o, l);
        }
        if self.mappings.len() >= self.mappings.max {
            return Err(io::Error::other(format!(
                "{} mappings live, the bound is {}",
                self.mappings.len(),
                self.mappings.max
            )));
        }
        ch.shmem_map(&request(offset, len, writable), &fd)
            .map_err(|e| io::Error::other(format!("SHMEM_MAP refused: {e}")))?;
        lock(&self.mappings.held).insert(
            offset,
            Held {
                len,
                file: file_id(fd),
            },
        );
        Ok(())
    }

    fn unmap(&self, offset: u64, len: u64) -> io::Result<()> {
        let ch = self.channel()?;
        self.unmap_request(ch, offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_finds_every_range_that_intersects() {
        let m = VmmMappings::new(8);
        for (o, l) in [(0x0, 0x1000), (0x2000, 0x2000), (0x5000, 0x1000)] {
            lock(&m.held).insert(o, Held { len: l, file: None });
        }
        assert_eq!(m.overlapping(0x1000, 0x2000), vec![]);
        assert_eq!(m.overlapping(0x0, 0x1000), vec![(0x0, 0x1000)]);
        assert_eq!(
            m.overlapping(0x0fff, 0x5001),
            vec![(0x0, 0x1000), (0x2000, 0x2000), (0x5000, 0x1000)]
        );
        assert_eq!(m.overlapping(0x3000, 0x3001), vec![(0x2000, 0x2000)]);
        assert_eq!(m.overlapping(0x6000, 0x9000), vec![]);
    }

    #[test]
    fn a_memory_table_listing_a_mapping_is_noticed() {
        let m = VmmMappings::new(8);
        let fd = nix::sys::memfd::memfd_create("t", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .expect("memfd");
        nix::unistd::ftruncate(&fd, 4096).expect("ftruncate");
        lock(&m.held).insert(
            0,
            Held {
                len: 4096,
                file: file_id(fd.as_fd()),
            },
        );
        let file = std::fs::File::from(fd);
        let ram =
            GuestMemoryMmap::<()>::from_ranges(&[(vm_memory::GuestAddress(0), 4096)]).expect("ram");
        m.memory_table(&ram);
        assert!(
            !m.lists_mappings.load(Ordering::Relaxed),
            "anonymous RAM only"
        );
        let with = GuestMemoryMmap::<()>::from_ranges_with_files([(
            vm_memory::GuestAddress(1 << 30),
            4096,
            Some(vm_memory::FileOffset::new(file, 0)),
        )])
        .expect("mapping");
        m.memory_table(&with);
        assert!(m.lists_mappings.load(Ordering::Relaxed));
    }
}
