//! Host memory for HOST3D blobs (docs/protocol.md §3.4, §5.5, §7): image requirements the
//! guest queries and later allocates from, and memory fds received from host services,
//! handed to the virtio-gpu layer as the backing of a RESOURCE_CREATE_BLOB.
//!
//! This module owns the stored image requirements (one [`super::items::Item::Image`] each,
//! plus the query → id cache) and the rules for turning an item into blob memory: a fresh
//! memfd for image requirements, the received fd itself (grown or copied to whole pages) for
//! received memory. It never maps anything; the virtio-gpu layer does.

use std::collections::HashMap;
use std::io as stdio;
use std::os::fd::{AsFd, OwnedFd};

use log::{debug, warn};

use super::error::CtxError;
use super::image;
use super::io as cdio;
use super::items::{Item, ItemTable};
use super::protocol::GetImageRequirements;
use crate::guest_mem::{GuestMem, SgList};

/// Most distinct image requirements (GET_IMAGE_REQUIREMENTS replies, kept for any number of
/// CREATE_BLOBs) one context may hold. Identical queries share one entry; a guest allocator
/// such as sommelier's asks once per distinct (width, height, format), e.g. once per shm pool
/// size, for the life of the context.
pub const MAX_IMAGE_REQUIREMENTS: usize = 4096;
/// Most image requirements all contexts of a VM may hold together (about 50 bytes each).
pub const MAX_IMAGE_REQUIREMENTS_PER_VM: usize = 65536;

/// A stored GET_IMAGE_REQUIREMENTS reply: any number of blobs of exactly `size` bytes.
#[derive(Debug, Clone, Copy)]
pub(super) struct StoredImage {
    pub size: u64,
    pub map_info: u32,
}

/// The blob id already given for each (width, height, drm_format) query of a context.
/// (96-bit keys: std's hasher, as `IdMap` takes at most 64 bits; not on a per-message path.)
#[derive(Default)]
pub(super) struct ImageQueries {
    ids: HashMap<(u32, u32, u32), u32>,
}

impl ImageQueries {
    /// GET_IMAGE_REQUIREMENTS: write the reply for `q` into the query `ring`. A query seen
    /// before gets the same blob id; a new one is stored in `items` under a fresh id, taking
    /// one of the VM's `images_left`.
    pub fn answer(
        &mut self,
        items: &mut ItemTable,
        images_left: &mut usize,
        q: &GetImageRequirements,
        mem: &GuestMem,
        ring: &SgList,
    ) -> Result<(), CtxError> {
        let mut reqs =
            image::requirements(q.width, q.height, q.drm_format, image::host_page_size())?;
        // The reply depends on nothing but the key: a repeated query gets the same blob id.
        let key = (q.width, q.height, q.drm_format);
        if let Some(&id) = self.ids.get(&key) {
            reqs.blob_id = id;
            ring.write_obj(mem, 0, &reqs)?;
            return Ok(());
        }
        if items.images() >= MAX_IMAGE_REQUIREMENTS {
            return Err(CtxError::TooManyImageRequirements);
        }
        if *images_left == 0 {
            return Err(CtxError::VmImageRequirementsExhausted);
        }
        *images_left -= 1;
        let id = items.next_host_id()?;
        reqs.blob_id = id;
        ring.write_obj(mem, 0, &reqs)?;
        items.insert(
            id,
            Item::Image(StoredImage {
                size: reqs.size,
                map_info: reqs.map_info,
            }),
        );
        self.ids.insert(key, id);
        Ok(())
    }
}

/// The host memory for RESOURCE_CREATE_BLOB(HOST3D, `blob_id`, `size`) in context `ctx_id`:
/// a new memfd for stored image requirements (which stay valid), or the received memory fd
/// named by `blob_id` (consumed). Returns the fd, its `map_info` cache type and whether it may
/// be mapped writable.
pub(super) fn take_blob(
    ctx_id: u32,
    items: &mut ItemTable,
    blob_id: u32,
    size: u64,
) -> Result<(OwnedFd, u32, bool), CtxError> {
    match items.get(blob_id) {
        Some(&Item::Image(StoredImage {
            size: expected,
            map_info,
        })) => {
            if size != expected {
                return Err(CtxError::BlobSize {
                    id: blob_id,
                    expected,
                    got: size,
                });
            }
            let fd = new_memfd(size).map_err(CtxError::HostIo)?;
            Ok((fd, map_info, true))
        }
        Some(&Item::Memory { size: have, .. }) => {
            let page = image::host_page_size();
            let limit = have.div_ceil(page) * page;
            if size == 0 || size > limit {
                return Err(CtxError::BlobSize {
                    id: blob_id,
                    expected: have,
                    got: size,
                });
            }
            let Some(Item::Memory { fd, .. }) = items.remove(blob_id) else {
                return Err(CtxError::UnknownBlob(blob_id));
            };
            let writable = cdio::memory_writable(fd.as_fd());
            let (fd, writable) = whole_pages(ctx_id, fd, have, limit, writable)?;
            Ok((fd, image::MAP_CACHE_CACHED, writable))
        }
        _ => Err(CtxError::UnknownBlob(blob_id)),
    }
}

/// Make received memory of `size` bytes hold whole host pages (`rounded` bytes): VMMs map blobs
/// in whole pages and QEMU refuses a mapping that runs past the end of its file (a Wayland
/// keymap is rarely a page multiple; docs/protocol.md §5.5.1).
///
/// - Writable and not sealed against growing: grown in place with zeros, still shared.
/// - Otherwise copied once into a new memfd: exact for write-sealed memory (it cannot change),
///   a snapshot for a read-only view of memory someone else may still write (logged).
fn whole_pages(
    ctx_id: u32,
    fd: OwnedFd,
    size: u64,
    rounded: u64,
    writable: bool,
) -> Result<(OwnedFd, bool), CtxError> {
    if size == rounded {
        return Ok((fd, writable));
    }
    let seals = cdio::seals(fd.as_fd());
    if writable && seals & libc::F_SEAL_GROW == 0 {
        let len = i64::try_from(rounded)
            .map_err(|_| CtxError::HostIo(stdio::ErrorKind::InvalidInput.into()))?;
        match nix::unistd::ftruncate(&fd, len) {
            Ok(()) => return Ok((fd, true)),
            Err(e) => debug!("ctx {ctx_id}: cannot grow received memory to {rounded} bytes: {e}"),
        }
    }
    if seals & (libc::F_SEAL_WRITE | libc::F_SEAL_FUTURE_WRITE) == 0 {
        warn!(
            "ctx {ctx_id}: received memory of {size} bytes is not a page multiple and cannot \
             grow; the guest gets a copy, later host writes will not reach it"
        );
    }
    let copy = new_memfd(rounded).map_err(CtxError::HostIo)?;
    cdio::copy_contents(fd.as_fd(), copy.as_fd(), size).map_err(CtxError::HostIo)?;
    Ok((copy, false))
}

/// A sealable memfd of `size` bytes for a blob created from image requirements.
fn new_memfd(size: u64) -> stdio::Result<OwnedFd> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let fd = memfd_create(
        c"vhost-user-cross-domain-blob",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let len = i64::try_from(size).map_err(|_| stdio::Error::from_raw_os_error(libc::EFBIG))?;
    nix::unistd::ftruncate(&fd, len)?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;

    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::*;
    use crate::cross_domain::protocol::ImageRequirements;

    fn size_of(fd: &OwnedFd) -> u64 {
        nix::sys::stat::fstat(fd).unwrap().st_size as u64
    }

    fn memfd(data: &[u8], flags: nix::sys::memfd::MFdFlags) -> OwnedFd {
        let fd = nix::sys::memfd::memfd_create(c"blobs-test", flags).unwrap();
        std::fs::File::from(fd.try_clone().unwrap())
            .write_all(data)
            .unwrap();
        fd
    }

    fn query(width: u32) -> GetImageRequirements {
        GetImageRequirements {
            width,
            height: 10,
            drm_format: u32::from_le_bytes(*b"XR24"),
            ..Default::default()
        }
    }

    #[test]
    fn a_query_is_stored_once_and_its_blob_id_reused() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0x1000), 0x1000)]).unwrap();
        let mut ring = SgList::new();
        ring.push(GuestAddress(0x1000), 0x1000);
        let (mut items, mut q, mut left) = (ItemTable::default(), ImageQueries::default(), 2);
        let reply = |mem: &GuestMem| mem.read_obj::<ImageRequirements>(GuestAddress(0x1000));
        q.answer(&mut items, &mut left, &query(10), &mem, &ring)
            .unwrap();
        let first = reply(&mem).unwrap();
        assert_eq!((first.blob_id, left, items.images()), (2, 1, 1));
        q.answer(&mut items, &mut left, &query(10), &mem, &ring)
            .unwrap();
        assert_eq!(reply(&mem).unwrap().blob_id, 2, "same query, same id");
        assert_eq!((left, items.images()), (1, 1));
        q.answer(&mut items, &mut left, &query(20), &mem, &ring)
            .unwrap();
        assert_eq!(reply(&mem).unwrap().blob_id, 3);
        assert!(matches!(
            q.answer(&mut items, &mut left, &query(30), &mem, &ring),
            Err(CtxError::VmImageRequirementsExhausted)
        ));
        // Image requirements make any number of fresh blobs of exactly their size.
        let size = first.size;
        for _ in 0..2 {
            let (fd, map_info, writable) = take_blob(1, &mut items, 2, size).unwrap();
            assert_eq!(
                (size_of(&fd), map_info, writable),
                (size, first.map_info, true)
            );
        }
        assert!(matches!(
            take_blob(1, &mut items, 2, size + 1),
            Err(CtxError::BlobSize { .. })
        ));
        assert!(matches!(
            take_blob(1, &mut items, 99, size),
            Err(CtxError::UnknownBlob(99))
        ));
    }

    #[test]
    fn received_memory_is_consumed_and_grown_to_whole_pages() {
        let page = image::host_page_size();
        let mut items = ItemTable::default();
        let fd = memfd(&[7u8; 100], nix::sys::memfd::MFdFlags::MFD_CLOEXEC);
        let id = items
            .add_received(|_| Item::Memory { fd, size: 100 })
            .unwrap();
        assert!(matches!(
            take_blob(1, &mut items, id, page + 1),
            Err(CtxError::BlobSize { .. })
        ));
        let (fd, map_info, writable) = take_blob(1, &mut items, id, page).unwrap();
        assert_eq!(
            (size_of(&fd), map_info, writable),
            (page, image::MAP_CACHE_CACHED, true)
        );
        assert!(items.get(id).is_none(), "consumed");
        assert!(matches!(
            take_blob(1, &mut items, id, page),
            Err(CtxError::UnknownBlob(_))
        ));
    }

    #[test]
    fn sealed_memory_is_copied_to_whole_pages() {
        use nix::sys::memfd::MFdFlags;
        let page = image::host_page_size();
        let fd = memfd(
            &[9u8; 10],
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        );
        // SAFETY: plain fcntl on an fd we own.
        let r = unsafe {
            libc::fcntl(
                fd.as_raw_fd(),
                libc::F_ADD_SEALS,
                libc::F_SEAL_GROW | libc::F_SEAL_WRITE,
            )
        };
        assert_eq!(r, 0);
        let (copy, writable) = whole_pages(1, fd, 10, page, false).unwrap();
        assert_eq!((size_of(&copy), writable), (page, false));
        let mut head = [0u8; 11];
        nix::sys::uio::pread(&copy, &mut head, 0).unwrap();
        assert_eq!(head, [9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 0]);
    }
}
