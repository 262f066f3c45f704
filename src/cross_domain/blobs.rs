//! Host memory for HOST3D blobs (docs/protocol.md §3.4, §5.5, §7): image requirements the
//! guest queries and later allocates from, and memory fds received from host services,
//! handed to the virtio-gpu layer as the backing of a RESOURCE_CREATE_BLOB.
//!
//! This module owns the stored image requirements (one [`super::items::Item::Image`] each,
//! plus the query → id cache) and the rules for turning an item into blob memory: a fresh
//! memfd for image requirements, the received fd itself for received memory (grown, copied,
//! wrapped in a udmabuf or refused when it is not whole pages and the VMM cannot map past its
//! end, [`PartialPages`]). It never maps anything (the virtio-gpu layer does), and it never
//! hands out a copy of memory both sides may write.

use std::collections::HashMap;
use std::io as stdio;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use log::{debug, warn};

use super::error::CtxError;
use super::image;
use super::io as cdio;
use super::items::{Item, ItemTable};
use super::protocol::GetImageRequirements;
use super::udmabuf::UdmabufDevice;
use crate::guest_mem::{GuestMem, SgList};
use crate::ratelimit::RateLimiter;

/// Most distinct image requirements (GET_IMAGE_REQUIREMENTS replies, kept for any number of
/// CREATE_BLOBs) one context may hold. Identical queries share one entry; a guest allocator
/// such as sommelier's asks once per distinct (width, height, format), e.g. once per shm pool
/// size, for the life of the context.
pub const MAX_IMAGE_REQUIREMENTS: usize = 4096;
/// Most image requirements all contexts of a VM may hold together (about 50 bytes each).
pub const MAX_IMAGE_REQUIREMENTS_PER_VM: usize = 65536;

/// What the VMM does with a mapping whose last page runs past the end of its file, which is
/// what received memory that is not a whole number of pages needs (docs/protocol.md §5.5.1,
/// docs/pipewire.md). The daemon cannot find out; the operator says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PartialPages {
    /// The VMM refuses such a mapping (QEMU 11 checks the file size on SHMEM_MAP), or it is
    /// not known to accept it. Received memory that is not whole pages is grown in place when
    /// it may grow, copied when a copy is exact (write-sealed) or when the host handed over a
    /// read-only view, and otherwise refused at RESOURCE_CREATE_BLOB: shared read-write memory
    /// that cannot grow (a PipeWire activation record) would only be a snapshot. The default,
    /// because it never sends the VMM a mapping it might refuse (crosvm stops the VM on a
    /// refused backend request).
    #[default]
    Refuse,
    /// The VMM maps the original fd in whole pages, the last one running past the end of the
    /// file (crosvm, libkrun): every received memory fd is shared as it is, never grown or
    /// copied.
    MapPastEnd,
    /// As [`PartialPages::Refuse`], except that shared read-write memory that cannot grow is
    /// handed to the VMM as a udmabuf over its whole pages (the memfd's own pages, so still
    /// shared, and whole pages, so QEMU's size check passes). Where the kernel refuses the
    /// udmabuf (wrong seals, not a memfd), the memory is refused as with `Refuse`.
    Udmabuf(&'static UdmabufDevice),
}

impl PartialPages {
    /// The opened `/dev/udmabuf` the sandbox must let the daemon use, if any.
    pub fn udmabuf_fd(&self) -> Option<std::os::fd::RawFd> {
        match self {
            Self::Udmabuf(dev) => Some(dev.raw_fd()),
            Self::Refuse | Self::MapPastEnd => None,
        }
    }

    /// The mode's name as `--partial-pages` spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Refuse => "refuse",
            Self::MapPastEnd => "map",
            Self::Udmabuf(_) => "udmabuf",
        }
    }
}

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
/// named by `blob_id` (consumed, unless it is refused). Returns the fd, its `map_info` cache
/// type and whether it may be mapped writable.
pub(super) fn take_blob(
    ctx_id: u32,
    items: &mut ItemTable,
    blob_id: u32,
    size: u64,
    pages: PartialPages,
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
            let Some(Item::Memory { fd, .. }) = items.get(blob_id) else {
                return Err(CtxError::UnknownBlob(blob_id));
            };
            let writable = cdio::memory_writable(fd.as_fd());
            let seals = cdio::seals(fd.as_fd());
            let backing = match route(have, limit, writable, seals, pages) {
                Route::Original => Backing::Original { writable },
                Route::Grow => grow(ctx_id, fd.as_fd(), blob_id, have, limit, pages)?,
                Route::Udmabuf(dev) => udmabuf(ctx_id, dev, fd.as_fd(), blob_id, have, limit)?,
                Route::Copy => copy(ctx_id, fd.as_fd(), have, limit, seals)?,
                Route::Refuse => {
                    return Err(CtxError::UnshareableMemory {
                        id: blob_id,
                        size: have,
                    })
                }
            };
            // Consumed only now: a refusal leaves the item as it was.
            let Some(Item::Memory { fd, .. }) = items.remove(blob_id) else {
                return Err(CtxError::UnknownBlob(blob_id));
            };
            Ok(match backing {
                Backing::Original { writable } => (fd, image::MAP_CACHE_CACHED, writable),
                Backing::Copy(copy) => (copy, image::MAP_CACHE_CACHED, false),
                // The received fd is dropped: the dma-buf holds its pages.
                Backing::Udmabuf(buf) => (buf, image::MAP_CACHE_CACHED, true),
            })
        }
        _ => Err(CtxError::UnknownBlob(blob_id)),
    }
}

/// Rate limit of the "kernel refused a udmabuf" line.
static UDMABUF_LOG: LazyLock<Mutex<RateLimiter>> =
    LazyLock::new(|| Mutex::new(RateLimiter::new(Duration::from_secs(1), 1)));

/// What a blob made from received memory maps.
enum Backing {
    /// The received fd itself (shared), writable or not.
    Original { writable: bool },
    /// A copy of its contents in a new memfd of whole pages, mapped read-only.
    Copy(OwnedFd),
    /// A udmabuf over its pages, rounded up to whole pages: shared, writable.
    Udmabuf(OwnedFd),
}

/// How received memory of `size` bytes (`rounded` up to whole host pages) becomes blob memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Map the received fd as it is: whole pages already, or a VMM that maps past the end.
    Original,
    /// Grow it in place with zeros to whole pages, then map it (still shared).
    Grow,
    /// Map a udmabuf over its pages.
    Udmabuf(&'static UdmabufDevice),
    /// Map a read-only copy (exact for write-sealed memory; for a read-only view, later host
    /// writes do not reach the guest, which is logged).
    Copy,
    /// Refuse it: shared read-write memory that could only be handed out as a snapshot.
    Refuse,
}

/// The decision for received memory that is `size` bytes (`rounded` up to whole pages),
/// writable or not, with `seals`, under `pages` (docs/pipewire.md has the table):
///
/// - whole pages, or [`PartialPages::MapPastEnd`]: the original;
/// - writable and not sealed against growing: grown (every mode but `MapPastEnd`);
/// - writable and sealed against growing (a PipeWire activation record): a udmabuf under
///   [`PartialPages::Udmabuf`], refused otherwise, as a copy would be a snapshot where both
///   sides expect to share state;
/// - read-only (write-sealed, or a read-only view the host handed over): a copy.
fn route(size: u64, rounded: u64, writable: bool, seals: i32, pages: PartialPages) -> Route {
    if size == rounded || pages == PartialPages::MapPastEnd {
        return Route::Original;
    }
    if !writable {
        return Route::Copy;
    }
    if seals & libc::F_SEAL_GROW == 0 {
        return Route::Grow;
    }
    match pages {
        PartialPages::Udmabuf(dev) => Route::Udmabuf(dev),
        PartialPages::Refuse | PartialPages::MapPastEnd => Route::Refuse,
    }
}

/// [`Route::Grow`]: received memory `id` of `size` bytes grown in place to `rounded`. If the
/// kernel refuses (a seal added since, an odd file), a udmabuf is tried under
/// [`PartialPages::Udmabuf`], and otherwise the memory is refused.
fn grow(
    ctx_id: u32,
    fd: BorrowedFd<'_>,
    id: u32,
    size: u64,
    rounded: u64,
    pages: PartialPages,
) -> Result<Backing, CtxError> {
    let len = i64::try_from(rounded)
        .map_err(|_| CtxError::HostIo(stdio::ErrorKind::InvalidInput.into()))?;
    match nix::unistd::ftruncate(fd, len) {
        Ok(()) => Ok(Backing::Original { writable: true }),
        Err(e) => {
            debug!("ctx {ctx_id}: cannot grow received memory to {rounded} bytes: {e}");
            match pages {
                PartialPages::Udmabuf(dev) => udmabuf(ctx_id, dev, fd, id, size, rounded),
                PartialPages::Refuse | PartialPages::MapPastEnd => {
                    Err(CtxError::UnshareableMemory { id, size })
                }
            }
        }
    }
}

/// [`Route::Udmabuf`]: a udmabuf over the `rounded` bytes of received memory `id` (`size`
/// bytes). Never a copy: if the kernel refuses, the memory is refused exactly as under
/// [`PartialPages::Refuse`], and the log says why.
fn udmabuf(
    ctx_id: u32,
    dev: &UdmabufDevice,
    fd: BorrowedFd<'_>,
    id: u32,
    size: u64,
    rounded: u64,
) -> Result<Backing, CtxError> {
    match dev.create(fd, rounded) {
        Ok(buf) => {
            debug!(
                "ctx {ctx_id}: received memory {id:#x} of {size} bytes shared as a udmabuf of \
                 {rounded}"
            );
            Ok(Backing::Udmabuf(buf))
        }
        Err(e) => {
            // The guest may retry CREATE_BLOB on the item it keeps: one line per second at
            // most for the whole process (the refusal itself is logged with the error
            // response, rate-limited by the GPU layer).
            let allowed = UDMABUF_LOG
                .lock()
                .map(|mut l| l.allow(std::time::Instant::now()))
                .unwrap_or(None);
            if let Some(suppressed) = allowed {
                let more = if suppressed > 0 {
                    format!(" ({suppressed} more such refusals not logged)")
                } else {
                    String::new()
                };
                warn!(
                    "ctx {ctx_id}: the kernel refused a udmabuf over received memory {id:#x} of \
                     {size} bytes (seals {:#x}): {e}; refused{more}",
                    cdio::seals(fd)
                );
            }
            Err(CtxError::UnshareableMemory { id, size })
        }
    }
}

/// [`Route::Copy`]: read-only received memory of `size` bytes copied once into a new memfd of
/// `rounded` bytes, mapped read-only. Exact for write-sealed memory (it cannot change); for a
/// read-only view the host handed over (wlroots sends keymaps as `O_RDONLY` shm files) later
/// host writes would not reach the guest, which is logged.
fn copy(
    ctx_id: u32,
    fd: BorrowedFd<'_>,
    size: u64,
    rounded: u64,
    seals: i32,
) -> Result<Backing, CtxError> {
    if seals & (libc::F_SEAL_WRITE | libc::F_SEAL_FUTURE_WRITE) == 0 {
        warn!(
            "ctx {ctx_id}: received read-only memory of {size} bytes is not a page multiple; \
             the guest gets a copy, later host writes will not reach it"
        );
    }
    let copy = new_memfd(rounded).map_err(CtxError::HostIo)?;
    cdio::copy_contents(fd, copy.as_fd(), size).map_err(CtxError::HostIo)?;
    Ok(Backing::Copy(copy))
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
            let (fd, map_info, writable) =
                take_blob(1, &mut items, 2, size, PartialPages::Refuse).unwrap();
            assert_eq!(
                (size_of(&fd), map_info, writable),
                (size, first.map_info, true)
            );
        }
        assert!(matches!(
            take_blob(1, &mut items, 2, size + 1, PartialPages::Refuse),
            Err(CtxError::BlobSize { .. })
        ));
        assert!(matches!(
            take_blob(1, &mut items, 99, size, PartialPages::Refuse),
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
            take_blob(1, &mut items, id, page + 1, PartialPages::Refuse),
            Err(CtxError::BlobSize { .. })
        ));
        let (fd, map_info, writable) =
            take_blob(1, &mut items, id, page, PartialPages::Refuse).unwrap();
        assert_eq!(
            (size_of(&fd), map_info, writable),
            (page, image::MAP_CACHE_CACHED, true)
        );
        assert!(items.get(id).is_none(), "consumed");
        assert!(matches!(
            take_blob(1, &mut items, id, page, PartialPages::Refuse),
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
        let seals = cdio::seals(fd.as_fd());
        assert_eq!(
            route(10, page, false, seals, PartialPages::Refuse),
            Route::Copy
        );
        let Backing::Copy(copy) = copy(1, fd.as_fd(), 10, page, seals).unwrap() else {
            panic!("write-sealed memory is copied");
        };
        assert_eq!(size_of(&copy), page);
        let mut head = [0u8; 11];
        nix::sys::uio::pread(&copy, &mut head, 0).unwrap();
        assert_eq!(head, [9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 0]);
    }

    /// A PipeWire activation record: 2312 bytes, read-write, sealed against growing and
    /// shrinking (docs/pipewire.md).
    fn activation_record() -> OwnedFd {
        use nix::sys::memfd::MFdFlags;
        let fd = memfd(
            &[5u8; 2312],
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        );
        let seals = libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
        // SAFETY: plain fcntl on an fd we own.
        let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) };
        assert_eq!(r, 0);
        fd
    }

    #[test]
    fn shared_memory_that_cannot_grow_is_refused_never_copied() {
        let page = image::host_page_size();
        let mut items = ItemTable::default();
        let fd = activation_record();
        let id = items
            .add_received(|_| Item::Memory { fd, size: 2312 })
            .unwrap();
        let r = take_blob(1, &mut items, id, page, PartialPages::Refuse);
        assert!(
            matches!(r, Err(CtxError::UnshareableMemory { id: i, size: 2312 }) if i == id),
            "{r:?}"
        );
        assert!(
            matches!(items.get(id), Some(Item::Memory { .. })),
            "a refusal leaves the item"
        );
    }

    #[test]
    fn a_vmm_that_maps_past_the_end_gets_the_original_memory() {
        let page = image::host_page_size();
        let mut items = ItemTable::default();
        let fd = activation_record();
        let ino = nix::sys::stat::fstat(&fd).unwrap().st_ino;
        let id = items
            .add_received(|_| Item::Memory { fd, size: 2312 })
            .unwrap();
        let (got, map_info, writable) =
            take_blob(1, &mut items, id, page, PartialPages::MapPastEnd).unwrap();
        let st = nix::sys::stat::fstat(&got).unwrap();
        assert_eq!(
            (st.st_ino, st.st_size),
            (ino, 2312),
            "the original, not grown"
        );
        assert_eq!((map_info, writable), (image::MAP_CACHE_CACHED, true));
        assert!(items.get(id).is_none(), "consumed");
        // Unsealed memory is not grown either: the host's object is left as it came.
        let fd = memfd(&[1u8; 100], nix::sys::memfd::MFdFlags::MFD_CLOEXEC);
        let id = items
            .add_received(|_| Item::Memory { fd, size: 100 })
            .unwrap();
        let (got, _, writable) =
            take_blob(1, &mut items, id, page, PartialPages::MapPastEnd).unwrap();
        assert_eq!((size_of(&got), writable), (100, true));
    }

    #[test]
    fn a_read_only_view_is_copied_and_the_original_left_alone() {
        let page = image::host_page_size();
        let mut items = ItemTable::default();
        let rw = memfd(&[3u8; 100], nix::sys::memfd::MFdFlags::MFD_CLOEXEC);
        let ro: OwnedFd = std::fs::File::open(format!("/proc/self/fd/{}", rw.as_raw_fd()))
            .unwrap()
            .into();
        let id = items
            .add_received(|_| Item::Memory { fd: ro, size: 100 })
            .unwrap();
        let (got, _, writable) = take_blob(1, &mut items, id, page, PartialPages::Refuse).unwrap();
        assert_eq!((size_of(&got), writable, size_of(&rw)), (page, false, 100));
    }

    /// Which received memory goes which way in each mode (docs/pipewire.md's table).
    #[test]
    fn each_mode_routes_memory_as_documented() {
        let dev = UdmabufDevice::for_tests();
        let modes = [
            PartialPages::Refuse,
            PartialPages::MapPastEnd,
            PartialPages::Udmabuf(dev),
        ];
        let (grow_sealed, write_sealed) = (
            libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL,
            libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK,
        );
        for mode in modes {
            // Whole pages: always the original, writable or not, sealed or not.
            for (writable, seals) in [(true, 0), (true, grow_sealed), (false, write_sealed)] {
                assert_eq!(route(8192, 8192, writable, seals, mode), Route::Original);
            }
            let expect = |r: Route| {
                if mode == PartialPages::MapPastEnd {
                    Route::Original
                } else {
                    r
                }
            };
            // Not whole pages, writable and free to grow: grown (the original, under map).
            assert_eq!(route(100, 4096, true, 0, mode), expect(Route::Grow));
            assert_eq!(
                route(100, 4096, true, libc::F_SEAL_SHRINK, mode),
                expect(Route::Grow)
            );
            // Read-only (write-sealed, or a read-only view): copied, exact or logged.
            assert_eq!(
                route(100, 4096, false, write_sealed, mode),
                expect(Route::Copy)
            );
            assert_eq!(route(100, 4096, false, 0, mode), expect(Route::Copy));
        }
        // The PipeWire activation record: writable, sealed against growing.
        assert_eq!(
            route(2312, 4096, true, grow_sealed, PartialPages::Refuse),
            Route::Refuse
        );
        assert_eq!(
            route(2312, 4096, true, grow_sealed, PartialPages::MapPastEnd),
            Route::Original
        );
        assert_eq!(
            route(2312, 4096, true, grow_sealed, PartialPages::Udmabuf(dev)),
            Route::Udmabuf(dev)
        );
        // Sealed against growing without F_SEAL_SHRINK: the kernel refuses the udmabuf, and
        // the daemon then refuses the memory (tested below); the route is still tried.
        assert_eq!(
            route(
                2312,
                4096,
                true,
                libc::F_SEAL_GROW,
                PartialPages::Udmabuf(dev)
            ),
            Route::Udmabuf(dev)
        );
    }

    /// A kernel that refuses the udmabuf (here: the "device" is not /dev/udmabuf, as these
    /// machines have none) leaves the memory refused exactly as `refuse` does: the same error,
    /// the item kept, nothing copied, the host's memfd untouched.
    #[test]
    fn a_refused_udmabuf_refuses_the_memory_never_copies_it() {
        let page = image::host_page_size();
        let mut items = ItemTable::default();
        let fd = activation_record();
        let id = items
            .add_received(|_| Item::Memory { fd, size: 2312 })
            .unwrap();
        let mode = PartialPages::Udmabuf(UdmabufDevice::for_tests());
        let r = take_blob(1, &mut items, id, page, mode);
        assert!(
            matches!(r, Err(CtxError::UnshareableMemory { id: i, size: 2312 }) if i == id),
            "{r:?}"
        );
        let Some(Item::Memory { fd, .. }) = items.get(id) else {
            panic!("a refusal leaves the item");
        };
        assert_eq!(size_of(fd), 2312, "never grown");
        // Memory that may grow is still grown in udmabuf mode: no udmabuf needed.
        let fd = memfd(&[1u8; 100], nix::sys::memfd::MFdFlags::MFD_CLOEXEC);
        let id = items
            .add_received(|_| Item::Memory { fd, size: 100 })
            .unwrap();
        let (got, _, writable) = take_blob(1, &mut items, id, page, mode).unwrap();
        assert_eq!((size_of(&got), writable), (page, true));
    }

    #[test]
    fn the_mode_names_its_udmabuf_fd() {
        let dev = UdmabufDevice::for_tests();
        assert_eq!(PartialPages::Refuse.udmabuf_fd(), None);
        assert_eq!(PartialPages::MapPastEnd.udmabuf_fd(), None);
        assert_eq!(PartialPages::Udmabuf(dev).udmabuf_fd(), Some(dev.raw_fd()));
        assert_eq!(
            [
                PartialPages::Refuse,
                PartialPages::MapPastEnd,
                PartialPages::Udmabuf(dev)
            ]
            .map(|p| p.name()),
            ["refuse", "map", "udmabuf"]
        );
    }
}
