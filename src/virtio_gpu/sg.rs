//! Scatter-gather lists over guest memory: the readable and writable halves of a descriptor
//! chain, and the backing pages of guest blobs (rings). Every access is bounds-checked against
//! the list and against guest memory; nothing here trusts a guest-supplied address or length.

use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

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
            let mut done = 0usize;
            for slice in mem.get_slices(start, take) {
                let slice =
                    slice.map_err(|_| SgError::BadAddress(start.0.wrapping_add(done as u64)))?;
                done += slice.len();
                f(slice)?;
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

/// Check that `[addr, addr + len)` is backed by guest memory, without overflow.
pub fn range_is_valid(mem: &GuestMem, addr: u64, len: usize) -> bool {
    if len == 0 {
        return false;
    }
    match addr.checked_add(len as u64 - 1) {
        Some(_) => {
            let mut covered = 0usize;
            for s in mem.get_slices(GuestAddress(addr), len) {
                match s {
                    Ok(s) => covered += s.len(),
                    Err(_) => return false,
                }
            }
            covered == len
        }
        None => false,
    }
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
