//! Memory crossing the channel, as virtio-gpu blobs.
//!
//! Host to client: a VIRTGPU_BLOB identifier becomes a HOST3D blob made from it and exported as
//! a dma-buf, shared with the host. Client to host: a regular file or memfd is copied once into
//! a HOST3D blob made from image requirements (a snapshot, docs/protocol.md §9.1 step 10), and a
//! dma-buf of this GPU in host memory is passed as its resource. This module also owns the
//! GET_IMAGE_REQUIREMENTS query on the query ring and the answers the session keeps.
//!
//! It must never leak a GEM handle on an error path (every blob it creates is closed or handed
//! back for closing), and never trusts a size from the host or the client without a bound.
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use nix::errno::Errno;

use super::{Refusal, Session, SessionError};
use crate::device::{
    Blob, BlobCreate, BlobMapping, VirtGpuDevice, BLOB_FLAG_USE_MAPPABLE, BLOB_FLAG_USE_SHAREABLE,
    BLOB_MEM_HOST3D, BLOB_MEM_HOST3D_GUEST,
};
use crate::wire::{self, Identifier};
use cross_domain_protocol::wire::{ImageRequirements, ID_TYPE_VIRTGPU_BLOB, QUERY_RING};

/// The most of a client's file copied per read.
const MIB: usize = 1 << 20;

fn round_up(v: u64, to: u64) -> Option<u64> {
    v.checked_next_multiple_of(to)
}

impl<D: VirtGpuDevice> Session<D> {
    /// A host memory descriptor: a HOST3D blob made from the identifier, exported as a dma-buf.
    pub(super) fn host_memory(&mut self, ident: &Identifier) -> Result<OwnedFd, Refusal> {
        if ident.size == 0 {
            // The host cannot make a blob of nothing; an empty memfd is the same to the client.
            let fd = nix::sys::memfd::memfd_create(
                c"cross-domain-empty",
                nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
            )
            .map_err(io::Error::from)?;
            return Ok(fd);
        }
        if !self.info.host_visible {
            return Err(Refusal::NoHostVisible);
        }
        let size = round_up(u64::from(ident.size), self.page_size)
            .ok_or(Refusal::TooLarge(u64::from(ident.size)))?;
        let blob = self.dev.create_blob(&BlobCreate {
            blob_mem: BLOB_MEM_HOST3D,
            blob_flags: BLOB_FLAG_USE_MAPPABLE | BLOB_FLAG_USE_SHAREABLE,
            size,
            blob_id: u64::from(ident.id),
        })?;
        let fd = self.dev.export_fd(blob.bo_handle);
        self.close_bo(blob.bo_handle);
        let fd = fd?;
        self.stats.fds_to_client += 1;
        Ok(fd)
    }

    /// A regular file or memfd from the client: a snapshot of its `len` bytes in a host blob,
    /// whose GEM handle goes into `close_after` (closed after the SEND).
    pub(super) fn client_file(
        &mut self,
        fd: BorrowedFd<'_>,
        len: u64,
        close_after: &mut Vec<u32>,
    ) -> Result<Identifier, Refusal> {
        let blob = self.snapshot(fd, len)?;
        close_after.push(blob.bo_handle);
        Ok(Identifier {
            id: blob.res_handle,
            kind: ID_TYPE_VIRTGPU_BLOB,
            size: u32::try_from(len).unwrap_or(u32::MAX),
        })
    }

    /// Perhaps a dma-buf of this GPU (e.g. memory this proxy received from the host and the
    /// client passes back): pass the resource itself, which the host already has. Its GEM
    /// handle goes into `close_after`.
    pub(super) fn client_dmabuf(
        &mut self,
        fd: BorrowedFd<'_>,
        close_after: &mut Vec<u32>,
    ) -> Result<Identifier, Refusal> {
        let bo = self
            .dev
            .import_fd(fd)
            .map_err(|_| Refusal::Kind("not a pipe, memory or a dma-buf of this GPU"))?;
        let info = match self.dev.resource_info(bo) {
            Ok(info) => info,
            Err(e) => {
                self.close_bo(bo);
                return Err(e.into());
            }
        };
        if !matches!(info.blob_mem, BLOB_MEM_HOST3D | BLOB_MEM_HOST3D_GUEST) {
            self.close_bo(bo);
            return Err(Refusal::Kind(
                "a dma-buf in guest memory, which the host cannot see",
            ));
        }
        close_after.push(bo);
        Ok(Identifier {
            id: info.res_handle,
            kind: ID_TYPE_VIRTGPU_BLOB,
            size: info.size,
        })
    }

    /// Copies `len` bytes of a guest memory file into a fresh host blob (docs/protocol.md §9.1 step 10):
    /// image requirements for an R8 image of `len` (page-rounded) × 1, a HOST3D blob with the
    /// reply's blob id, mapped and filled once.
    fn snapshot(&mut self, fd: BorrowedFd<'_>, len: u64) -> Result<Blob, Refusal> {
        if !self.info.host_visible {
            return Err(Refusal::NoHostVisible);
        }
        let width = round_up(len.max(1), self.page_size)
            .and_then(|w| u32::try_from(w).ok())
            .ok_or(Refusal::TooLarge(len))?;
        let (blob_id, size) = match self.image_requirements.get(&width) {
            Some(&r) => r,
            None => {
                let r = self.query_requirements(width)?;
                if r.size < len || r.blob_id == 0 || r.size > usize::MAX as u64 {
                    return Err(Refusal::BadRequirements {
                        size: r.size,
                        blob_id: r.blob_id,
                    });
                }
                self.image_requirements.insert(width, (r.blob_id, r.size));
                (r.blob_id, r.size)
            }
        };
        let blob = self.dev.create_blob(&BlobCreate {
            blob_mem: BLOB_MEM_HOST3D,
            blob_flags: BLOB_FLAG_USE_MAPPABLE | BLOB_FLAG_USE_SHAREABLE,
            size,
            blob_id: u64::from(blob_id),
        })?;
        match self.fill(blob.bo_handle, size as usize, fd, len) {
            Ok(()) => Ok(blob),
            Err(e) => {
                self.close_bo(blob.bo_handle);
                Err(e)
            }
        }
    }

    /// GET_IMAGE_REQUIREMENTS for an R8 image of `width` × 1, fenced on the query ring and
    /// waited for. A refused query leaves the zeroed reply in place.
    pub(super) fn query_requirements(
        &mut self,
        width: u32,
    ) -> Result<ImageRequirements, SessionError> {
        self.query
            .map
            .write(0, &[0u8; wire::IMAGE_REQUIREMENTS_SIZE])?;
        self.dev.execbuffer(
            &wire::get_image_requirements(width, 1, wire::DRM_FORMAT_R8),
            Some(u32::from(QUERY_RING)),
            &[self.query.bo],
        )?;
        self.dev.wait(self.query.bo)?;
        let mut reply = [0u8; wire::IMAGE_REQUIREMENTS_SIZE];
        self.query.map.read(0, &mut reply)?;
        Ok(wire::decode_image_requirements(&reply)?)
    }

    /// Copies `len` bytes of `fd` into the blob `bo` (mapped for the copy, `size` bytes).
    fn fill(&mut self, bo: u32, size: usize, fd: BorrowedFd<'_>, len: u64) -> Result<(), Refusal> {
        let map = self.dev.map(bo, size)?;
        let mut buf = vec![0u8; MIB.min(size)];
        let mut off: u64 = 0;
        while off < len {
            let want = buf.len().min((len - off) as usize);
            let n = match nix::sys::uio::pread(fd, &mut buf[..want], off as libc::off_t) {
                Ok(0) => break, // the file shrank: the rest stays zero
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(Refusal::Io(e.into())),
            };
            map.write(off as usize, &buf[..n])?;
            off += n as u64;
        }
        Ok(())
    }
}
