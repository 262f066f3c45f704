//! The guest's virtio-gpu DRM device as the proxy sees it: the [`VirtGpuDevice`] trait.
//!
//! The proxy needs a dozen operations of one DRM file (one cross-domain context): parameter and
//! capset queries, CONTEXT_INIT, blob creation and mapping, EXECBUFFER, WAIT, PRIME export and
//! import, GEM_CLOSE and the file's event queue. [`crate::kernel::KernelDevice`]
//! implements them with the Linux virtgpu ioctls; the tests implement them on top of the
//! project's test VMM, so the session logic runs without a kernel.
//!
//! Every method maps to exactly one ioctl (or `mmap`/`read`) of the real device, and the
//! trait's contract is the kernel's: EXECBUFFER only queues the command stream (a command the
//! host refuses is not reported back), a fenced EXECBUFFER on a ring of the context's poll mask
//! produces one [`EVENT_FENCE_SIGNALED`] event when its fence signals, and WAIT blocks until the
//! fences attached to a buffer object have signalled.
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

/// `VIRTGPU_PARAM_*` values for [`VirtGpuDevice::get_param`].
pub mod param {
    /// The device offers VIRGL (3D): gates EXECBUFFER, CONTEXT_INIT and HOST3D blobs.
    pub const FEATURES_3D: u64 = 1;
    /// The driver copes with the capset query fix (always 1 on current kernels).
    pub const CAPSET_QUERY_FIX: u64 = 2;
    /// RESOURCE_CREATE_BLOB is available.
    pub const RESOURCE_BLOB: u64 = 3;
    /// The device has a host-visible memory region: HOST3D blobs can be mapped.
    pub const HOST_VISIBLE: u64 = 4;
    /// Cross-device resource sharing (RESOURCE_UUID).
    pub const CROSS_DEVICE: u64 = 5;
    /// CONTEXT_INIT is available.
    pub const CONTEXT_INIT: u64 = 6;
    /// Bit mask of the capset ids the device reported (bit 5 = cross-domain).
    pub const SUPPORTED_CAPSET_IDS: u64 = 7;
}

/// `VIRTGPU_CONTEXT_PARAM_*` keys for [`VirtGpuDevice::context_init`].
pub mod context_param {
    pub const CAPSET_ID: u64 = 1;
    pub const NUM_RINGS: u64 = 2;
    pub const POLL_RINGS_MASK: u64 = 3;
}

/// `VIRTGPU_BLOB_MEM_*`.
pub const BLOB_MEM_GUEST: u32 = 1;
pub const BLOB_MEM_HOST3D: u32 = 2;
pub const BLOB_MEM_HOST3D_GUEST: u32 = 3;

/// `VIRTGPU_BLOB_FLAG_USE_*`.
pub const BLOB_FLAG_USE_MAPPABLE: u32 = 1;
pub const BLOB_FLAG_USE_SHAREABLE: u32 = 2;

/// The DRM event type queued when a fence on a polled ring signals.
pub const EVENT_FENCE_SIGNALED: u32 = 0x9000_0000;

/// The cross-domain capset id.
pub use cross_domain_protocol::CAPSET_CROSS_DOMAIN;

/// A failed device operation: which one, and the OS error.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {source}")]
pub struct DeviceError {
    /// The operation, e.g. `"DRM_IOCTL_VIRTGPU_EXECBUFFER"`.
    pub op: &'static str,
    #[source]
    pub source: io::Error,
}

impl DeviceError {
    pub fn new(op: &'static str, source: io::Error) -> Self {
        DeviceError { op, source }
    }

    /// The OS error number, if there is one.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// Arguments of RESOURCE_CREATE_BLOB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobCreate {
    /// [`BLOB_MEM_GUEST`] or [`BLOB_MEM_HOST3D`].
    pub blob_mem: u32,
    /// `BLOB_FLAG_USE_*` bits.
    pub blob_flags: u32,
    /// Bytes; a multiple of the guest page size.
    pub size: u64,
    /// For HOST3D: the context-local object the host creates the resource from.
    pub blob_id: u64,
}

/// What RESOURCE_CREATE_BLOB returns: the GEM handle (local to the DRM file) and the virtio
/// resource id (what cross-domain commands name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blob {
    pub bo_handle: u32,
    pub res_handle: u32,
}

/// What RESOURCE_INFO returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResourceInfo {
    pub res_handle: u32,
    pub size: u32,
    pub blob_mem: u32,
}

/// A blob mapped into the proxy. The memory is shared with the host (or, for guest blobs,
/// written by it), so it is only accessed through copies.
pub trait BlobMapping {
    /// Mapped length in bytes.
    fn len(&self) -> usize;

    /// Whether the mapping is empty (never, for mappings the proxy creates).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies `buf.len()` bytes from `offset` into `buf`.
    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), DeviceError>;

    /// Copies `data` to `offset`.
    fn write(&self, offset: usize, data: &[u8]) -> Result<(), DeviceError>;
}

/// One virtio-gpu DRM file: the operations the proxy needs, one ioctl each.
pub trait VirtGpuDevice {
    /// A mapped blob.
    type Mapping: BlobMapping;

    /// GETPARAM: the value of a `VIRTGPU_PARAM_*` ([`param`]).
    fn get_param(&mut self, param: u64) -> Result<u64, DeviceError>;

    /// GET_CAPS: fills `out` with the first `out.len()` bytes of capset `capset_id`.
    fn get_caps(&mut self, capset_id: u32, version: u32, out: &mut [u8])
        -> Result<(), DeviceError>;

    /// CONTEXT_INIT with `(VIRTGPU_CONTEXT_PARAM_*, value)` pairs ([`context_param`]). Works once
    /// per file.
    fn context_init(&mut self, params: &[(u64, u64)]) -> Result<(), DeviceError>;

    /// RESOURCE_CREATE_BLOB. For HOST3D with [`BLOB_FLAG_USE_MAPPABLE`] the kernel also maps
    /// the blob into the host-visible region.
    fn create_blob(&mut self, req: &BlobCreate) -> Result<Blob, DeviceError>;

    /// MAP + `mmap` of `size` bytes of a mappable blob.
    fn map(&mut self, bo_handle: u32, size: usize) -> Result<Self::Mapping, DeviceError>;

    /// EXECBUFFER: queues `cmds` on the context. `ring`: `Some(idx)` sets
    /// `VIRTGPU_EXECBUF_RING_IDX` (a fenced submission on that ring's timeline); `bo_handles`
    /// get the submission's fence attached (see [`Self::wait`]).
    fn execbuffer(
        &mut self,
        cmds: &[u8],
        ring: Option<u32>,
        bo_handles: &[u32],
    ) -> Result<(), DeviceError>;

    /// WAIT: blocks until the fences attached to the buffer object have signalled.
    fn wait(&mut self, bo_handle: u32) -> Result<(), DeviceError>;

    /// RESOURCE_INFO of a GEM handle.
    fn resource_info(&mut self, bo_handle: u32) -> Result<ResourceInfo, DeviceError>;

    /// PRIME_HANDLE_TO_FD: a dma-buf of the blob (read-write, close-on-exec) that other
    /// processes can `mmap`.
    fn export_fd(&mut self, bo_handle: u32) -> Result<OwnedFd, DeviceError>;

    /// PRIME_FD_TO_HANDLE: the GEM handle of a dma-buf exported by this device.
    fn import_fd(&mut self, fd: BorrowedFd<'_>) -> Result<u32, DeviceError>;

    /// GEM_CLOSE: drops the file's handle (the resource lives on while exported or mapped).
    fn gem_close(&mut self, bo_handle: u32) -> Result<(), DeviceError>;

    /// The descriptor that polls readable when events are queued.
    fn event_fd(&self) -> BorrowedFd<'_>;

    /// Reads the queued events without blocking and appends their types to `out`.
    fn read_events(&mut self, out: &mut Vec<u32>) -> Result<(), DeviceError>;
}
