//! Scatter-gather lists over guest memory: the readable and writable halves of a descriptor
//! chain, and the backing pages of guest blobs (rings). Every access is bounds-checked against
//! the list and against guest memory; nothing here trusts a guest-supplied address or length.
//!
//! Shared by the virtio-gpu layer (requests, responses, resource backing) and the cross-domain
//! layer (command streams, rings, bytes held for slow host peers), so that neither depends on
//! the other for it. It knows nothing of virtqueues or of either protocol.

use vm_memory::{
    Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress, VolatileSlice,
};

/// Guest memory as the device sees it.
pub type GuestMem = GuestMemoryMmap<()>;

/// Errors from scatter-gather access.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SgError {
    /// The access runs past the end of the list.
    #[error("access of {len} bytes at offset {offset} exceeds the {size}-byte buffer")]
    OutOfBounds {
        offset: usize,
        len: usize,
        size: usize,
    },
    /// A segment names memory the guest does not have (e.g. after a memory table change).
    #[error("guest address {0:#x} is not backed by guest memory")]
    BadAddress(u64),
}

/// An ordered list of guest-memory segments treated as one byte buffer.
#[derive(Clone, Debug, Default)]
pub struct SgList {
    segs: Vec<(GuestAddress, usize)>,
    len: usize,
}

impl SgList {
    /// An empty list.
    pub fn new() -> Self {
        SgList::default()
    }

    /// Remove all segments (keeps the allocation for reuse).
    pub fn clear(&mut self) {
        self.segs.clear();
        self.len = 0;
    }

    /// Append a segment. The caller has checked it against guest memory; zero-length segments
    /// are skipped.
    pub fn push(&mut self, addr: GuestAddress, len: usize) {
        if len > 0 {
            self.segs.push((addr, len));
            self.len += len;
        }
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the list holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of segments.
    pub fn segments(&self) -> usize {
        self.segs.len()
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), SgError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(SgError::OutOfBounds {
                offset,
                len,
                size: self.len,
            }),
        }
    }

    /// Visit the guest slices covering `[offset, offset + len)` in order.
    fn for_each_slice<F>(
        &self,
        mem: &GuestMem,
        offset: usize,
        len: usize,
        mut f: F,
    ) -> Result<(), SgError>
    where
        F: FnMut(VolatileSlice<'_, ()>) -> Result<(), SgError>,
    {
        self.check(offset, len)?;
        let mut skip = offset;
        let mut left = len;
        for &(addr, seg_len) in &self.segs {
            if left == 0 {
                break;
            }
            if skip >= seg_len {
                skip -= seg_len;
                continue;
            }
            let take = (seg_len - skip).min(left);
            // `skip < seg_len` and segments were validated when pushed, but memory may have been
            // replaced since: resolve every piece again.
            let start = addr
                .checked_add(skip as u64)
                .ok_or(SgError::BadAddress(addr.0))?;
            if let Some(slice) = one_region(mem, start, take) {
                f(slice)?;
            } else {
                // Spans regions, or part of it is not guest memory: the general iterator splits
                // it at region boundaries and reports the first hole.
                let mut done = 0usize;
                for slice in mem.get_slices(start, take) {
                    let slice = slice
                        .map_err(|_| SgError::BadAddress(start.0.wrapping_add(done as u64)))?;
                    done += slice.len();
                    f(slice)?;
                }
            }
            skip = 0;
            left -= take;
        }
        Ok(())
    }

    /// Copy `buf.len()` bytes starting at `offset` into `buf`.
    pub fn read_at(&self, mem: &GuestMem, offset: usize, buf: &mut [u8]) -> Result<(), SgError> {
        let mut pos = 0usize;
        self.for_each_slice(mem, offset, buf.len(), |s| {
            let n = s.len();
            s.copy_to(&mut buf[pos..pos + n]);
            pos += n;
            Ok(())
        })
    }

    /// Copy `buf` into the list starting at `offset`.
    pub fn write_at(&self, mem: &GuestMem, offset: usize, buf: &[u8]) -> Result<(), SgError> {
        let mut pos = 0usize;
        self.for_each_slice(mem, offset, buf.len(), |s| {
            let n = s.len();
            s.copy_from(&buf[pos..pos + n]);
            pos += n;
            Ok(())
        })
    }

    /// Read a plain-data object at `offset`.
    pub fn read_obj<T: vm_memory::ByteValued + Default>(
        &self,
        mem: &GuestMem,
        offset: usize,
    ) -> Result<T, SgError> {
        let mut val = T::default();
        self.read_at(mem, offset, val.as_mut_slice())?;
        Ok(val)
    }

    /// Write a plain-data object at `offset`.
    pub fn write_obj<T: vm_memory::ByteValued>(
        &self,
        mem: &GuestMem,
        offset: usize,
        val: &T,
    ) -> Result<(), SgError> {
        self.write_at(mem, offset, val.as_slice())
    }

    /// Append to `out` one `iovec` per guest slice covering `[offset, offset + len)`.
    ///
    /// The pointers stay valid only while `mem` (the caller's guard on the memory map) is alive;
    /// callers hand them straight to one `sendmsg`/`recvmsg`/`readv` and drop them.
    pub fn iovecs(
        &self,
        mem: &GuestMem,
        offset: usize,
        len: usize,
        out: &mut Vec<libc::iovec>,
    ) -> Result<(), SgError> {
        self.for_each_slice(mem, offset, len, |s| {
            out.push(libc::iovec {
                iov_base: s.ptr_guard_mut().as_ptr().cast(),
                iov_len: s.len(),
            });
            Ok(())
        })
    }
}

/// The slice of `len` bytes at `addr` when one region of `mem` holds all of them: the common
/// case, resolved with one region lookup instead of vm-memory's general slice iterator (which
/// looks the region up again and wraps every piece in a `Result`). `None` when `addr` is not in
/// guest memory or the range runs past the end of its region; callers then fall back to the
/// general iterator, which splits the range at region boundaries or reports the hole.
///
/// Nothing is cached: the lookup is made in the `mem` of this call, so a memory table replaced
/// between requests is always the one used. Bounds: `find_region` puts `addr` inside the region,
/// the comparison keeps `addr + len` within its end, and `get_slice` checks the range against
/// the mapping once more.
#[inline]
fn one_region(mem: &GuestMem, addr: GuestAddress, len: usize) -> Option<VolatileSlice<'_, ()>> {
    let region = mem.find_region(addr)?;
    let offset = addr.checked_offset_from(region.start_addr())?;
    let room = region.len().checked_sub(offset)?;
    if u64::try_from(len).ok()? > room {
        return None;
    }
    region.get_slice(MemoryRegionAddress(offset), len).ok()
}

/// Check that `[addr, addr + len)` is backed by guest memory, without overflow.
pub fn range_is_valid(mem: &GuestMem, addr: u64, len: usize) -> bool {
    if len == 0 {
        return false;
    }
    if addr.checked_add(len as u64 - 1).is_none() {
        return false;
    }
    if one_region(mem, GuestAddress(addr), len).is_some() {
        return true;
    }
    // Several regions (or a hole): every piece must be there and together cover `len`.
    let mut covered = 0usize;
    for s in mem.get_slices(GuestAddress(addr), len) {
        match s {
            Ok(s) => covered += s.len(),
            Err(_) => return false,
        }
    }
    covered == len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMem {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0x1000), 0x4000)]).unwrap()
    }

    #[test]
    fn read_write_across_segments() {
        let m = mem();
        let mut sg = SgList::new();
        sg.push(GuestAddress(0x1000), 3);
        sg.push(GuestAddress(0x2000), 5);
        sg.push(GuestAddress(0x3000), 0);
        assert_eq!(sg.len(), 8);
        assert_eq!(sg.segments(), 2);
        sg.write_at(&m, 1, &[1, 2, 3, 4, 5]).unwrap();
        let mut out = [0u8; 8];
        sg.read_at(&m, 0, &mut out).unwrap();
        assert_eq!(out, [0, 1, 2, 3, 4, 5, 0, 0]);
        let mut iov = Vec::new();
        sg.iovecs(&m, 2, 4, &mut iov).unwrap();
        assert_eq!(iov.len(), 2);
        assert_eq!(iov[0].iov_len + iov[1].iov_len, 4);
    }

    #[test]
    fn bounds_are_checked() {
        let m = mem();
        let mut sg = SgList::new();
        sg.push(GuestAddress(0x1000), 16);
        let mut out = [0u8; 8];
        assert!(sg.read_at(&m, 9, &mut out).is_err());
        assert!(sg.read_at(&m, usize::MAX, &mut out).is_err());
        let mut bad = SgList::new();
        bad.push(GuestAddress(0x9000), 16);
        assert!(matches!(
            bad.read_at(&m, 0, &mut out),
            Err(SgError::BadAddress(_))
        ));
    }

    /// Two regions back to back, a hole, a third region: [0x1000, 0x2000) [0x2000, 0x3000),
    /// nothing in [0x3000, 0x5000), [0x5000, 0x6000). Each region is its own mapping, so bytes
    /// adjacent in guest memory are not adjacent on the host.
    fn split_mem() -> GuestMem {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0x1000), 0x1000),
            (GuestAddress(0x2000), 0x1000),
            (GuestAddress(0x5000), 0x1000),
        ])
        .unwrap()
    }

    #[test]
    fn segment_spanning_adjacent_regions() {
        use vm_memory::Bytes;
        let m = split_mem();
        let mut sg = SgList::new();
        sg.push(GuestAddress(0x1ff0), 0x20);
        let data: Vec<u8> = (1..=0x20).collect();
        sg.write_at(&m, 0, &data).unwrap();
        let mut direct = [0u8; 0x20];
        m.read_slice(&mut direct, GuestAddress(0x1ff0)).unwrap();
        assert_eq!(&direct[..], &data[..]);
        let mut back = [0u8; 0x20];
        sg.read_at(&m, 0, &mut back).unwrap();
        assert_eq!(back, direct);
        // An object straddling the boundary (bytes 12..20 of the segment: 0x1ffc..0x2004).
        let v: u64 = sg.read_obj(&m, 12).unwrap();
        assert_eq!(v, u64::from_le_bytes(data[12..20].try_into().unwrap()));
        sg.write_obj(&m, 12, &0x1122_3344_5566_7788u64).unwrap();
        assert_eq!(
            m.read_obj::<u64>(GuestAddress(0x1ffc)).unwrap(),
            0x1122_3344_5566_7788
        );
        // One iovec per region touched, pointing into each region's own mapping.
        let mut iov = Vec::new();
        sg.iovecs(&m, 0, 0x20, &mut iov).unwrap();
        assert_eq!(iov.len(), 2);
        assert_eq!((iov[0].iov_len, iov[1].iov_len), (0x10, 0x10));
        assert_eq!(
            iov[1].iov_base.cast::<u8>(),
            m.get_host_address(GuestAddress(0x2000)).unwrap()
        );
        iov.clear();
        sg.iovecs(&m, 0x10, 0x10, &mut iov).unwrap();
        assert_eq!(iov.len(), 1);
        assert!(range_is_valid(&m, 0x1ff0, 0x20));
        assert!(range_is_valid(&m, 0x1000, 0x2000));
        assert!(!range_is_valid(&m, 0x1000, 0x2001));
    }

    #[test]
    fn addresses_in_a_gap_are_refused() {
        let m = split_mem();
        for (addr, len) in [
            (0x3000, 1),      // in the hole
            (0x4fff, 2),      // starts in the hole, ends in a region
            (0x2ff0, 0x20),   // starts in a region, ends in the hole
            (0x1000, 0x5000), // covers the hole
            (0x6000, 1),      // past the end
            (0x0fff, 2),      // starts below guest memory
        ] {
            assert!(!range_is_valid(&m, addr, len), "{addr:#x}+{len:#x}");
        }
        assert!(range_is_valid(&m, 0x5000, 0x1000));
        assert!(range_is_valid(&m, 0x5fff, 1));
        let mut out = [0u8; 16];
        // A segment that was valid when pushed but whose tail is now in a hole: the part in the
        // region reads, the rest fails at the hole's first address.
        let mut sg = SgList::new();
        sg.push(GuestAddress(0x2ff8), 16);
        sg.read_at(&m, 0, &mut out[..8]).unwrap();
        assert_eq!(
            sg.read_at(&m, 0, &mut out),
            Err(SgError::BadAddress(0x3000))
        );
        assert_eq!(
            sg.read_at(&m, 8, &mut out[..8]),
            Err(SgError::BadAddress(0x3000))
        );
        let mut iov = Vec::new();
        assert!(sg.iovecs(&m, 8, 8, &mut iov).is_err());
        let mut hole = SgList::new();
        hole.push(GuestAddress(0x4000), 4);
        assert_eq!(
            hole.write_at(&m, 0, &[1, 2, 3, 4]),
            Err(SgError::BadAddress(0x4000))
        );
    }

    /// The one-region fast path answers exactly as vm-memory's general iterator does, around
    /// every region edge and the ends of the address space.
    #[test]
    fn fast_path_agrees_with_the_general_iterator() {
        let m = split_mem();
        let general = |addr: u64, len: usize| {
            addr.checked_add(len as u64 - 1).is_some()
                && m.get_slices(GuestAddress(addr), len)
                    .try_fold(0usize, |n, s| s.map(|s| n + s.len()))
                    .is_ok_and(|n| n == len)
        };
        let edges = [0x1000u64, 0x2000, 0x3000, 0x5000, 0x6000];
        let mut addrs = vec![0, u64::MAX - 1, u64::MAX];
        for e in edges {
            addrs.extend([e - 2, e - 1, e, e + 1]);
        }
        let lens = [
            1usize, 2, 3, 0xfff, 0x1000, 0x1001, 0x1fff, 0x2000, 0x2001, 0x5000,
        ];
        let mut buf = vec![0u8; 0x5000];
        for &addr in &addrs {
            for &len in &lens {
                let want = general(addr, len);
                assert_eq!(range_is_valid(&m, addr, len), want, "{addr:#x}+{len:#x}");
                let mut sg = SgList::new();
                sg.push(GuestAddress(addr), len);
                assert_eq!(
                    sg.read_at(&m, 0, &mut buf[..len]).is_ok(),
                    want,
                    "read {addr:#x}+{len:#x}"
                );
            }
        }
    }

    #[test]
    fn ranges() {
        let m = mem();
        assert!(range_is_valid(&m, 0x1000, 0x4000));
        assert!(!range_is_valid(&m, 0x1000, 0x4001));
        assert!(!range_is_valid(&m, 0x0, 16));
        assert!(!range_is_valid(&m, u64::MAX - 4, 16));
        assert!(!range_is_valid(&m, 0x1000, 0));
    }
}
