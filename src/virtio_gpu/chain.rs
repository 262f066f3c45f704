//! Splitting a descriptor chain into its request and response buffers.
//!
//! Owns the structural rules of a chain: every buffer lies in guest memory, device-readable
//! buffers come before device-writable ones, and both sides have room for a control header.
//! It must never read the request or write the response (decoding and encoding do that), nor
//! log: the coordinator logs a refused chain once, through the rate limiter.

use virtio_queue::desc::split::Descriptor;

use super::protocol::CtrlHdr;
use crate::guest_mem::{range_is_valid, GuestMem, SgList};

/// Why a chain is dropped without a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum ChainError {
    #[error("buffer {addr:#x}+{len} is outside guest memory")]
    OutsideMemory { addr: u64, len: usize },
    #[error("readable buffer after a writable one")]
    ReadableAfterWritable,
    #[error("request {req} bytes, response buffer {resp} bytes")]
    TooShort { req: usize, resp: usize },
    /// The request is shorter than a control header but the response buffer holds one: the
    /// coordinator answers `RESP_ERR_UNSPEC` (as QEMU and crosvm do) instead of dropping it.
    #[error("request {req} bytes is shorter than a control header")]
    ShortRequest { req: usize },
}

/// Split `descs` into the request (`req`) and response (`resp`) buffers, both cleared first.
/// Returns how many descriptors the chain has (empty ones included: they count against the
/// hold budget like any other).
pub(super) fn split(
    mem: &GuestMem,
    descs: impl Iterator<Item = Descriptor>,
    req: &mut SgList,
    resp: &mut SgList,
) -> Result<usize, ChainError> {
    req.clear();
    resp.clear();
    let mut writable = false;
    let mut ndesc = 0usize;
    for d in descs {
        ndesc += 1;
        let len = d.len() as usize;
        if len == 0 {
            continue;
        }
        if !range_is_valid(mem, d.addr().0, len) {
            return Err(ChainError::OutsideMemory {
                addr: d.addr().0,
                len,
            });
        }
        if d.is_write_only() {
            writable = true;
            resp.push(d.addr(), len);
        } else if writable {
            return Err(ChainError::ReadableAfterWritable);
        } else {
            req.push(d.addr(), len);
        }
    }
    let hdr_len = std::mem::size_of::<CtrlHdr>();
    if req.len() < hdr_len && resp.len() >= hdr_len {
        return Err(ChainError::ShortRequest { req: req.len() });
    }
    if req.len() < hdr_len || resp.len() < hdr_len {
        return Err(ChainError::TooShort {
            req: req.len(),
            resp: resp.len(),
        });
    }
    Ok(ndesc)
}

#[cfg(test)]
mod tests {
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    use super::*;

    fn mem() -> GuestMem {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0x1000), 0x4000)]).unwrap()
    }

    fn rd(addr: u64, len: u32) -> Descriptor {
        Descriptor::new(addr, len, 0, 0)
    }

    fn wr(addr: u64, len: u32) -> Descriptor {
        Descriptor::new(addr, len, VRING_DESC_F_WRITE as u16, 0)
    }

    fn run(descs: Vec<Descriptor>) -> (Result<usize, ChainError>, SgList, SgList) {
        let (mut req, mut resp) = (SgList::new(), SgList::new());
        // Left-overs of a previous chain must not leak into this one.
        req.push(GuestAddress(0x1000), 8);
        resp.push(GuestAddress(0x1000), 8);
        let r = split(&mem(), descs.into_iter(), &mut req, &mut resp);
        (r, req, resp)
    }

    #[test]
    fn readable_then_writable() {
        let (r, req, resp) = run(vec![
            rd(0x1000, 24),
            rd(0x2000, 0),
            rd(0x2000, 16),
            wr(0x3000, 24),
            wr(0x3100, 8),
        ]);
        assert_eq!(r, Ok(5));
        assert_eq!((req.len(), req.segments()), (40, 2));
        assert_eq!((resp.len(), resp.segments()), (32, 2));
    }

    #[test]
    fn buffers_outside_memory_are_refused() {
        let (r, ..) = run(vec![rd(0x1000, 24), wr(0x4ff0, 24)]);
        assert_eq!(
            r,
            Err(ChainError::OutsideMemory {
                addr: 0x4ff0,
                len: 24
            })
        );
        assert_eq!(
            r.unwrap_err().to_string(),
            "buffer 0x4ff0+24 is outside guest memory"
        );
        let (r, ..) = run(vec![rd(u64::MAX, 2), wr(0x3000, 24)]);
        assert!(matches!(r, Err(ChainError::OutsideMemory { .. })));
    }

    #[test]
    fn readable_after_writable_is_refused() {
        let (r, ..) = run(vec![rd(0x1000, 24), wr(0x3000, 24), rd(0x2000, 8)]);
        assert_eq!(r, Err(ChainError::ReadableAfterWritable));
    }

    #[test]
    fn both_sides_need_a_header() {
        let (r, ..) = run(vec![rd(0x1000, 23), wr(0x3000, 24)]);
        assert_eq!(r, Err(ChainError::ShortRequest { req: 23 }));
        let (r, ..) = run(vec![rd(0x1000, 23), wr(0x3000, 23)]);
        assert_eq!(r, Err(ChainError::TooShort { req: 23, resp: 23 }));
        let (r, ..) = run(vec![rd(0x1000, 24)]);
        assert_eq!(r, Err(ChainError::TooShort { req: 24, resp: 0 }));
        assert_eq!(
            r.unwrap_err().to_string(),
            "request 24 bytes, response buffer 0 bytes"
        );
    }
}
