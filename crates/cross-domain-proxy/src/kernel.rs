//! The Linux side of the proxy: virtgpu and DRM ioctls, `mmap` of blobs, and receiving file
//! descriptors with `SCM_RIGHTS` (through the workspace's one `recvmsg`, `cross-domain-fdpass`).
//!
//! Every `unsafe` block of the proxy lives in this module (the other modules forbid unsafe
//! code). The structs below are the `include/uapi/drm/virtgpu_drm.h` and `drm.h` layouts; the
//! ioctl numbers are computed with the kernel's `_IOC` encoding (direction in bits 30–31, size
//! in bits 16–29, type `'d'` in bits 8–15, number in bits 0–7), and the unit tests pin both the
//! struct layouts and the resulting numbers.
//!
//! [`KernelDevice`] implements [`VirtGpuDevice`] on an open render node.

use std::ffi::c_void;
use std::fs::OpenOptions;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::ptr::NonNull;

use cross_domain_fdpass as fdpass;
use vm_memory::VolatileSlice;

use super::device::{Blob, BlobCreate, BlobMapping, DeviceError, ResourceInfo, VirtGpuDevice};

// ---- ioctl numbers -----------------------------------------------------------------------

/// `DRM_IOCTL_BASE`: the ioctl type of every DRM ioctl.
pub const DRM_IOCTL_BASE: u8 = b'd';
/// First driver-specific DRM ioctl number.
pub const DRM_COMMAND_BASE: u8 = 0x40;

/// virtgpu command numbers (added to [`DRM_COMMAND_BASE`]).
pub const DRM_VIRTGPU_MAP: u8 = 0x01;
pub const DRM_VIRTGPU_EXECBUFFER: u8 = 0x02;
pub const DRM_VIRTGPU_GETPARAM: u8 = 0x03;
pub const DRM_VIRTGPU_RESOURCE_CREATE: u8 = 0x04;
pub const DRM_VIRTGPU_RESOURCE_INFO: u8 = 0x05;
pub const DRM_VIRTGPU_TRANSFER_FROM_HOST: u8 = 0x06;
pub const DRM_VIRTGPU_TRANSFER_TO_HOST: u8 = 0x07;
pub const DRM_VIRTGPU_WAIT: u8 = 0x08;
pub const DRM_VIRTGPU_GET_CAPS: u8 = 0x09;
pub const DRM_VIRTGPU_RESOURCE_CREATE_BLOB: u8 = 0x0a;
pub const DRM_VIRTGPU_CONTEXT_INIT: u8 = 0x0b;

/// Generic DRM command numbers.
pub const DRM_VERSION_NR: u8 = 0x00;
pub const DRM_GEM_CLOSE_NR: u8 = 0x09;
pub const DRM_PRIME_HANDLE_TO_FD_NR: u8 = 0x2d;
pub const DRM_PRIME_FD_TO_HANDLE_NR: u8 = 0x2e;

const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

/// The kernel's `_IOC(dir, type, nr, size)` for the asm-generic layout (x86, arm64, riscv).
const fn ioc(dir: u64, nr: u8, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | ((DRM_IOCTL_BASE as u64) << 8) | nr as u64
}

/// `DRM_IOWR(nr, T)`.
const fn drm_iowr(nr: u8, size: usize) -> u64 {
    ioc(IOC_READ | IOC_WRITE, nr, size)
}

/// `DRM_IOW(nr, T)`.
const fn drm_iow(nr: u8, size: usize) -> u64 {
    ioc(IOC_WRITE, nr, size)
}

pub const DRM_IOCTL_VERSION: u64 = drm_iowr(DRM_VERSION_NR, size_of::<DrmVersion>());
pub const DRM_IOCTL_GEM_CLOSE: u64 = drm_iow(DRM_GEM_CLOSE_NR, size_of::<DrmGemClose>());
pub const DRM_IOCTL_PRIME_HANDLE_TO_FD: u64 =
    drm_iowr(DRM_PRIME_HANDLE_TO_FD_NR, size_of::<DrmPrimeHandle>());
pub const DRM_IOCTL_PRIME_FD_TO_HANDLE: u64 =
    drm_iowr(DRM_PRIME_FD_TO_HANDLE_NR, size_of::<DrmPrimeHandle>());
pub const DRM_IOCTL_VIRTGPU_MAP: u64 = drm_iowr(
    DRM_COMMAND_BASE + DRM_VIRTGPU_MAP,
    size_of::<DrmVirtgpuMap>(),
);
pub const DRM_IOCTL_VIRTGPU_EXECBUFFER: u64 = drm_iowr(
    DRM_COMMAND_BASE + DRM_VIRTGPU_EXECBUFFER,
    size_of::<DrmVirtgpuExecbuffer>(),
);
pub const DRM_IOCTL_VIRTGPU_GETPARAM: u64 = drm_iowr(
    DRM_COMMAND_BASE + DRM_VIRTGPU_GETPARAM,
    size_of::<DrmVirtgpuGetparam>(),
);
pub const DRM_IOCTL_VIRTGPU_RESOURCE_INFO: u64 = drm_iowr(
    DRM_COMMAND_BASE + DRM_VIRTGPU_RESOURCE_INFO,
    size_of::<DrmVirtgpuResourceInfo>(),
);
pub const DRM_IOCTL_VIRTGPU_WAIT: u64 = drm_iowr(
    DRM_COMMAND_BASE + DRM_VIRTGPU_WAIT,
    size_of::<DrmVirtgpu3dWait>(),
);
pub const DRM_IOCTL_VIRTGPU_GET_CAPS: u64 = drm_iowr(
    DRM_COMMAND_BASE + DRM_VIRTGPU_GET_CAPS,
    size_of::<DrmVirtgpuGetCaps>(),
);
pub const DRM_IOCTL_VIRTGPU_RESOURCE_CREATE_BLOB: u64 = drm_iowr(
    DRM_COMMAND_BASE + DRM_VIRTGPU_RESOURCE_CREATE_BLOB,
    size_of::<DrmVirtgpuResourceCreateBlob>(),
);
pub const DRM_IOCTL_VIRTGPU_CONTEXT_INIT: u64 = drm_iowr(
    DRM_COMMAND_BASE + DRM_VIRTGPU_CONTEXT_INIT,
    size_of::<DrmVirtgpuContextInit>(),
);

/// `VIRTGPU_EXECBUF_RING_IDX`: `ring_idx` is valid (a per-context ring timeline).
pub const VIRTGPU_EXECBUF_RING_IDX: u32 = 0x04;

/// `DRM_CLOEXEC` and `DRM_RDWR` for PRIME export.
const DRM_CLOEXEC: u32 = libc::O_CLOEXEC as u32;
const DRM_RDWR: u32 = libc::O_RDWR as u32;

// ---- ioctl structs -----------------------------------------------------------------------

/// `struct drm_version`.
#[repr(C)]
#[derive(Debug)]
pub struct DrmVersion {
    pub version_major: i32,
    pub version_minor: i32,
    pub version_patchlevel: i32,
    pub name_len: usize,
    pub name: u64,
    pub date_len: usize,
    pub date: u64,
    pub desc_len: usize,
    pub desc: u64,
}

/// `struct drm_gem_close`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct DrmGemClose {
    pub handle: u32,
    pub pad: u32,
}

/// `struct drm_prime_handle`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct DrmPrimeHandle {
    pub handle: u32,
    pub flags: u32,
    pub fd: i32,
}

/// `struct drm_virtgpu_map`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct DrmVirtgpuMap {
    /// Offset to pass to `mmap` on the DRM file.
    pub offset: u64,
    pub handle: u32,
    pub pad: u32,
}

/// `struct drm_virtgpu_execbuffer` (with the syncobj fields of current kernels; older kernels
/// read only the first 40 bytes, and the extra fields are zero).
#[repr(C)]
#[derive(Debug, Default)]
pub struct DrmVirtgpuExecbuffer {
    pub flags: u32,
    pub size: u32,
    /// Pointer to the command stream.
    pub command: u64,
    /// Pointer to `num_bo_handles` u32 GEM handles.
    pub bo_handles: u64,
    pub num_bo_handles: u32,
    pub fence_fd: i32,
    pub ring_idx: u32,
    pub syncobj_stride: u32,
    pub num_in_syncobjs: u32,
    pub num_out_syncobjs: u32,
    pub in_syncobjs: u64,
    pub out_syncobjs: u64,
}

/// `struct drm_virtgpu_getparam`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct DrmVirtgpuGetparam {
    pub param: u64,
    /// Pointer to where the kernel writes the value (an `int`).
    pub value: u64,
}

/// `struct drm_virtgpu_resource_info`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct DrmVirtgpuResourceInfo {
    pub bo_handle: u32,
    pub res_handle: u32,
    pub size: u32,
    pub blob_mem: u32,
}

/// `struct drm_virtgpu_3d_wait`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct DrmVirtgpu3dWait {
    pub handle: u32,
    pub flags: u32,
}

/// `struct drm_virtgpu_get_caps`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct DrmVirtgpuGetCaps {
    pub cap_set_id: u32,
    pub cap_set_ver: u32,
    /// Pointer to the output buffer.
    pub addr: u64,
    pub size: u32,
    pub pad: u32,
}

/// `struct drm_virtgpu_resource_create_blob`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct DrmVirtgpuResourceCreateBlob {
    pub blob_mem: u32,
    pub blob_flags: u32,
    pub bo_handle: u32,
    pub res_handle: u32,
    pub size: u64,
    pub pad: u32,
    pub cmd_size: u32,
    pub cmd: u64,
    pub blob_id: u64,
}

/// `struct drm_virtgpu_context_set_param`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct DrmVirtgpuContextSetParam {
    pub param: u64,
    pub value: u64,
}

/// `struct drm_virtgpu_context_init`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct DrmVirtgpuContextInit {
    pub num_params: u32,
    pub pad: u32,
    /// Pointer to `num_params` [`DrmVirtgpuContextSetParam`].
    pub ctx_set_params: u64,
}

/// `struct drm_event`, the header of every event read from a DRM file.
pub const DRM_EVENT_HEADER: usize = 8;

// ---- the device --------------------------------------------------------------------------

/// An open virtio-gpu DRM node (render node or primary node).
#[derive(Debug)]
pub struct KernelDevice {
    fd: OwnedFd,
}

/// Calls `ioctl(fd, request, arg)`, retrying on `EINTR`/`EAGAIN` as libdrm does.
///
/// # Safety
///
/// `arg` must point to a live value of the type `request` encodes, and every pointer inside it
/// must be valid for what the ioctl reads or writes through it.
unsafe fn drm_ioctl<T>(fd: BorrowedFd<'_>, request: u64, arg: &mut T) -> io::Result<()> {
    loop {
        // SAFETY: forwarded from the caller's contract: `arg` is a valid, exclusively borrowed
        // value of the request's struct type with valid inner pointers.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg as *mut T) };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) | Some(libc::EAGAIN) => continue,
            _ => return Err(e),
        }
    }
}

impl KernelDevice {
    /// Opens `path` read-write, close-on-exec and non-blocking (for event reads), and checks
    /// that its driver is `virtio_gpu` (so the driver-specific ioctls mean what we think).
    pub fn open(path: &Path) -> Result<KernelDevice, DeviceError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| DeviceError::new("open", e))?;
        let dev = KernelDevice {
            fd: OwnedFd::from(file),
        };
        let name = dev.driver_name()?;
        if name != "virtio_gpu" {
            return Err(DeviceError::new(
                "DRM_IOCTL_VERSION",
                io::Error::other(format!(
                    "{} is driven by {name:?}, not virtio_gpu",
                    path.display()
                )),
            ));
        }
        Ok(dev)
    }

    /// The DRM driver name (DRM_IOCTL_VERSION).
    pub fn driver_name(&self) -> Result<String, DeviceError> {
        let mut name = [0u8; 64];
        let mut v = DrmVersion {
            version_major: 0,
            version_minor: 0,
            version_patchlevel: 0,
            name_len: name.len(),
            name: name.as_mut_ptr() as u64,
            date_len: 0,
            date: 0,
            desc_len: 0,
            desc: 0,
        };
        // SAFETY: `v` is a drm_version; `name` points to `name_len` writable bytes that outlive
        // the call; date and desc have length 0 and are not written.
        unsafe { drm_ioctl(self.fd.as_fd(), DRM_IOCTL_VERSION, &mut v) }
            .map_err(|e| DeviceError::new("DRM_IOCTL_VERSION", e))?;
        // The kernel reports the full length but copies at most the buffer's size.
        let n = v.name_len.min(name.len());
        Ok(String::from_utf8_lossy(&name[..n]).into_owned())
    }
}

impl VirtGpuDevice for KernelDevice {
    type Mapping = KernelMapping;

    fn get_param(&mut self, param: u64) -> Result<u64, DeviceError> {
        // The kernel writes an `int` (4 bytes) whatever the parameter.
        let mut value: i32 = 0;
        let mut p = DrmVirtgpuGetparam {
            param,
            value: &mut value as *mut i32 as u64,
        };
        // SAFETY: `p` is a drm_virtgpu_getparam whose `value` points to a live i32, the size
        // the kernel writes.
        unsafe { drm_ioctl(self.fd.as_fd(), DRM_IOCTL_VIRTGPU_GETPARAM, &mut p) }
            .map_err(|e| DeviceError::new("DRM_IOCTL_VIRTGPU_GETPARAM", e))?;
        Ok(u64::from(value as u32))
    }

    fn get_caps(
        &mut self,
        capset_id: u32,
        version: u32,
        out: &mut [u8],
    ) -> Result<(), DeviceError> {
        let size = u32::try_from(out.len()).map_err(|_| {
            DeviceError::new(
                "DRM_IOCTL_VIRTGPU_GET_CAPS",
                io::Error::from_raw_os_error(libc::EINVAL),
            )
        })?;
        let mut c = DrmVirtgpuGetCaps {
            cap_set_id: capset_id,
            cap_set_ver: version,
            addr: out.as_mut_ptr() as u64,
            size,
            pad: 0,
        };
        // SAFETY: `c` is a drm_virtgpu_get_caps; `addr` points to `size` writable bytes that
        // outlive the call (the kernel copies at most `size`).
        unsafe { drm_ioctl(self.fd.as_fd(), DRM_IOCTL_VIRTGPU_GET_CAPS, &mut c) }
            .map_err(|e| DeviceError::new("DRM_IOCTL_VIRTGPU_GET_CAPS", e))
    }

    fn context_init(&mut self, params: &[(u64, u64)]) -> Result<(), DeviceError> {
        let mut set: Vec<DrmVirtgpuContextSetParam> = params
            .iter()
            .map(|&(param, value)| DrmVirtgpuContextSetParam { param, value })
            .collect();
        let mut c = DrmVirtgpuContextInit {
            num_params: set.len() as u32,
            pad: 0,
            ctx_set_params: set.as_mut_ptr() as u64,
        };
        // SAFETY: `c` is a drm_virtgpu_context_init pointing to `num_params` initialised
        // drm_virtgpu_context_set_param entries that outlive the call.
        unsafe { drm_ioctl(self.fd.as_fd(), DRM_IOCTL_VIRTGPU_CONTEXT_INIT, &mut c) }
            .map_err(|e| DeviceError::new("DRM_IOCTL_VIRTGPU_CONTEXT_INIT", e))
    }

    fn create_blob(&mut self, req: &BlobCreate) -> Result<Blob, DeviceError> {
        let mut c = DrmVirtgpuResourceCreateBlob {
            blob_mem: req.blob_mem,
            blob_flags: req.blob_flags,
            size: req.size,
            blob_id: req.blob_id,
            ..Default::default()
        };
        // SAFETY: `c` is a drm_virtgpu_resource_create_blob without a command buffer
        // (`cmd_size` 0, `cmd` null).
        unsafe {
            drm_ioctl(
                self.fd.as_fd(),
                DRM_IOCTL_VIRTGPU_RESOURCE_CREATE_BLOB,
                &mut c,
            )
        }
        .map_err(|e| DeviceError::new("DRM_IOCTL_VIRTGPU_RESOURCE_CREATE_BLOB", e))?;
        Ok(Blob {
            bo_handle: c.bo_handle,
            res_handle: c.res_handle,
        })
    }

    fn map(&mut self, bo_handle: u32, size: usize) -> Result<KernelMapping, DeviceError> {
        let mut m = DrmVirtgpuMap {
            handle: bo_handle,
            ..Default::default()
        };
        // SAFETY: `m` is a drm_virtgpu_map; it holds no pointers.
        unsafe { drm_ioctl(self.fd.as_fd(), DRM_IOCTL_VIRTGPU_MAP, &mut m) }
            .map_err(|e| DeviceError::new("DRM_IOCTL_VIRTGPU_MAP", e))?;
        let offset = libc::off_t::try_from(m.offset)
            .map_err(|_| DeviceError::new("mmap", io::Error::from_raw_os_error(libc::EOVERFLOW)))?;
        if size == 0 {
            return Err(DeviceError::new(
                "mmap",
                io::Error::from_raw_os_error(libc::EINVAL),
            ));
        }
        // SAFETY: a fresh shared mapping chosen by the kernel (no fixed address), so no
        // existing memory is affected; the result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.fd.as_raw_fd(),
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(DeviceError::new("mmap", io::Error::last_os_error()));
        }
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| DeviceError::new("mmap", io::Error::from_raw_os_error(libc::EFAULT)))?;
        Ok(KernelMapping { ptr, len: size })
    }

    fn execbuffer(
        &mut self,
        cmds: &[u8],
        ring: Option<u32>,
        bo_handles: &[u32],
    ) -> Result<(), DeviceError> {
        let inval = || {
            DeviceError::new(
                "DRM_IOCTL_VIRTGPU_EXECBUFFER",
                io::Error::from_raw_os_error(libc::EINVAL),
            )
        };
        let mut e = DrmVirtgpuExecbuffer {
            flags: if ring.is_some() {
                VIRTGPU_EXECBUF_RING_IDX
            } else {
                0
            },
            size: u32::try_from(cmds.len()).map_err(|_| inval())?,
            command: cmds.as_ptr() as u64,
            bo_handles: if bo_handles.is_empty() {
                0
            } else {
                bo_handles.as_ptr() as u64
            },
            num_bo_handles: u32::try_from(bo_handles.len()).map_err(|_| inval())?,
            fence_fd: -1,
            ring_idx: ring.unwrap_or(0),
            ..Default::default()
        };
        // SAFETY: `e` is a drm_virtgpu_execbuffer; `command` points to `size` readable bytes
        // and `bo_handles` to `num_bo_handles` u32s, both outliving the call; no fence fds
        // or syncobjs are requested.
        unsafe { drm_ioctl(self.fd.as_fd(), DRM_IOCTL_VIRTGPU_EXECBUFFER, &mut e) }
            .map_err(|e| DeviceError::new("DRM_IOCTL_VIRTGPU_EXECBUFFER", e))
    }

    fn wait(&mut self, bo_handle: u32) -> Result<(), DeviceError> {
        let mut w = DrmVirtgpu3dWait {
            handle: bo_handle,
            flags: 0,
        };
        // SAFETY: `w` is a drm_virtgpu_3d_wait; it holds no pointers.
        unsafe { drm_ioctl(self.fd.as_fd(), DRM_IOCTL_VIRTGPU_WAIT, &mut w) }
            .map_err(|e| DeviceError::new("DRM_IOCTL_VIRTGPU_WAIT", e))
    }

    fn resource_info(&mut self, bo_handle: u32) -> Result<ResourceInfo, DeviceError> {
        let mut r = DrmVirtgpuResourceInfo {
            bo_handle,
            ..Default::default()
        };
        // SAFETY: `r` is a drm_virtgpu_resource_info; it holds no pointers.
        unsafe { drm_ioctl(self.fd.as_fd(), DRM_IOCTL_VIRTGPU_RESOURCE_INFO, &mut r) }
            .map_err(|e| DeviceError::new("DRM_IOCTL_VIRTGPU_RESOURCE_INFO", e))?;
        Ok(ResourceInfo {
            res_handle: r.res_handle,
            size: r.size,
            blob_mem: r.blob_mem,
        })
    }

    fn export_fd(&mut self, bo_handle: u32) -> Result<OwnedFd, DeviceError> {
        let mut p = DrmPrimeHandle {
            handle: bo_handle,
            flags: DRM_CLOEXEC | DRM_RDWR,
            fd: -1,
        };
        // SAFETY: `p` is a drm_prime_handle; it holds no pointers.
        unsafe { drm_ioctl(self.fd.as_fd(), DRM_IOCTL_PRIME_HANDLE_TO_FD, &mut p) }
            .map_err(|e| DeviceError::new("DRM_IOCTL_PRIME_HANDLE_TO_FD", e))?;
        if p.fd < 0 {
            return Err(DeviceError::new(
                "DRM_IOCTL_PRIME_HANDLE_TO_FD",
                io::Error::from_raw_os_error(libc::EBADF),
            ));
        }
        // SAFETY: on success the kernel installed a new descriptor for this process in `fd`;
        // nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(p.fd) })
    }

    fn import_fd(&mut self, fd: BorrowedFd<'_>) -> Result<u32, DeviceError> {
        let mut p = DrmPrimeHandle {
            handle: 0,
            flags: 0,
            fd: fd.as_raw_fd(),
        };
        // SAFETY: `p` is a drm_prime_handle naming a descriptor that stays open (borrowed)
        // for the call.
        unsafe { drm_ioctl(self.fd.as_fd(), DRM_IOCTL_PRIME_FD_TO_HANDLE, &mut p) }
            .map_err(|e| DeviceError::new("DRM_IOCTL_PRIME_FD_TO_HANDLE", e))?;
        Ok(p.handle)
    }

    fn gem_close(&mut self, bo_handle: u32) -> Result<(), DeviceError> {
        let mut c = DrmGemClose {
            handle: bo_handle,
            pad: 0,
        };
        // SAFETY: `c` is a drm_gem_close; it holds no pointers.
        unsafe { drm_ioctl(self.fd.as_fd(), DRM_IOCTL_GEM_CLOSE, &mut c) }
            .map_err(|e| DeviceError::new("DRM_IOCTL_GEM_CLOSE", e))
    }

    fn event_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn read_events(&mut self, out: &mut Vec<u32>) -> Result<(), DeviceError> {
        let mut buf = [0u8; 1024];
        loop {
            let n = match nix::unistd::read(self.fd.as_fd(), &mut buf) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return Ok(()),
                Err(e) => return Err(DeviceError::new("read (DRM events)", e.into())),
            };
            parse_events(&buf[..n], out);
            if n == 0 {
                return Ok(());
            }
        }
    }
}

/// Appends the types of the `drm_event`s in `buf` (each `{u32 type; u32 length}` plus
/// payload, `length` covering both) to `out`. A malformed tail is ignored.
pub fn parse_events(buf: &[u8], out: &mut Vec<u32>) {
    let mut off = 0;
    while buf.len() - off >= DRM_EVENT_HEADER {
        let word = |at: usize| u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        let ty = word(off);
        let len = word(off + 4) as usize;
        if len < DRM_EVENT_HEADER || len > buf.len() - off {
            return;
        }
        out.push(ty);
        off += len;
    }
}

/// A blob mapped with `mmap` on the DRM file; unmapped on drop.
#[derive(Debug)]
pub struct KernelMapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl KernelMapping {
    fn slice(
        &self,
        offset: usize,
        len: usize,
        op: &'static str,
    ) -> Result<VolatileSlice<'_>, DeviceError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => {}
            _ => {
                return Err(DeviceError::new(
                    op,
                    io::Error::other(format!(
                        "range {offset}+{len} outside a mapping of {} bytes",
                        self.len
                    )),
                ))
            }
        }
        // SAFETY: [offset, offset + len) lies inside the live mapping of `self.len` bytes
        // (checked above), which stays mapped while `self` is borrowed. The memory is shared
        // with the host, so it is only accessed through volatile copies.
        Ok(unsafe { VolatileSlice::new(self.ptr.as_ptr().add(offset), len) })
    }
}

impl BlobMapping for KernelMapping {
    fn len(&self) -> usize {
        self.len
    }

    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.slice(offset, buf.len(), "read from a mapped blob")?
            .copy_to(buf);
        Ok(())
    }

    fn write(&self, offset: usize, data: &[u8]) -> Result<(), DeviceError> {
        self.slice(offset, data.len(), "write to a mapped blob")?
            .copy_from(data);
        Ok(())
    }
}

impl Drop for KernelMapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe a mapping created by `mmap` in `map` and owned by this
        // value alone; no slice into it outlives `self`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast::<c_void>(), self.len);
        }
    }
}

// ---- SCM_RIGHTS ----------------------------------------------------------------------------

/// One message read with `recvmsg` (non-blocking, close-on-exec descriptors).
#[derive(Debug)]
pub struct Received {
    /// Bytes read into the buffer.
    pub len: usize,
    /// The descriptors that came with them.
    pub fds: Vec<OwnedFd>,
    /// The sender attached more descriptors than [`MAX_FDS`]; the kernel closed the rest.
    pub fds_truncated: bool,
}

/// Most descriptors [`recv_with_fds`] accepts with one message: a SEND carries at most 28
/// identifiers.
pub const MAX_FDS: usize = cross_domain_protocol::wire::MAX_IDENTIFIERS;

/// Non-blocking `recvmsg` on a stream socket into `buf`, accepting up to [`MAX_FDS`]
/// descriptors; `EAGAIN` is an error of kind [`io::ErrorKind::WouldBlock`].
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    let mut cmsg = fdpass::CmsgBuf::new(MAX_FDS);
    let mut fds = Vec::new();
    let r = fdpass::recv(sock, buf, &mut fds, &mut cmsg, fdpass::Wait::DontWait)?;
    Ok(Received {
        len: r.len,
        fds,
        fds_truncated: r.fds_truncated,
    })
}

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

    use nix::sys::socket::MsgFlags;

    use super::*;

    #[test]
    fn struct_layouts_match_the_uapi_headers() {
        assert_eq!(size_of::<DrmVersion>(), 64);
        assert_eq!(offset_of!(DrmVersion, name_len), 16);
        assert_eq!(offset_of!(DrmVersion, name), 24);
        assert_eq!(size_of::<DrmGemClose>(), 8);
        assert_eq!(size_of::<DrmPrimeHandle>(), 12);
        assert_eq!(offset_of!(DrmPrimeHandle, fd), 8);
        assert_eq!(size_of::<DrmVirtgpuMap>(), 16);
        assert_eq!(offset_of!(DrmVirtgpuMap, handle), 8);
        assert_eq!(size_of::<DrmVirtgpuExecbuffer>(), 64);
        assert_eq!(offset_of!(DrmVirtgpuExecbuffer, command), 8);
        assert_eq!(offset_of!(DrmVirtgpuExecbuffer, bo_handles), 16);
        assert_eq!(offset_of!(DrmVirtgpuExecbuffer, num_bo_handles), 24);
        assert_eq!(offset_of!(DrmVirtgpuExecbuffer, fence_fd), 28);
        assert_eq!(offset_of!(DrmVirtgpuExecbuffer, ring_idx), 32);
        assert_eq!(offset_of!(DrmVirtgpuExecbuffer, syncobj_stride), 36);
        assert_eq!(offset_of!(DrmVirtgpuExecbuffer, in_syncobjs), 48);
        assert_eq!(offset_of!(DrmVirtgpuExecbuffer, out_syncobjs), 56);
        assert_eq!(size_of::<DrmVirtgpuGetparam>(), 16);
        assert_eq!(offset_of!(DrmVirtgpuGetparam, value), 8);
        assert_eq!(size_of::<DrmVirtgpuResourceInfo>(), 16);
        assert_eq!(offset_of!(DrmVirtgpuResourceInfo, res_handle), 4);
        assert_eq!(offset_of!(DrmVirtgpuResourceInfo, size), 8);
        assert_eq!(offset_of!(DrmVirtgpuResourceInfo, blob_mem), 12);
        assert_eq!(size_of::<DrmVirtgpu3dWait>(), 8);
        assert_eq!(size_of::<DrmVirtgpuGetCaps>(), 24);
        assert_eq!(offset_of!(DrmVirtgpuGetCaps, addr), 8);
        assert_eq!(offset_of!(DrmVirtgpuGetCaps, size), 16);
        assert_eq!(size_of::<DrmVirtgpuResourceCreateBlob>(), 48);
        assert_eq!(offset_of!(DrmVirtgpuResourceCreateBlob, bo_handle), 8);
        assert_eq!(offset_of!(DrmVirtgpuResourceCreateBlob, res_handle), 12);
        assert_eq!(offset_of!(DrmVirtgpuResourceCreateBlob, size), 16);
        assert_eq!(offset_of!(DrmVirtgpuResourceCreateBlob, cmd_size), 28);
        assert_eq!(offset_of!(DrmVirtgpuResourceCreateBlob, cmd), 32);
        assert_eq!(offset_of!(DrmVirtgpuResourceCreateBlob, blob_id), 40);
        assert_eq!(size_of::<DrmVirtgpuContextSetParam>(), 16);
        assert_eq!(size_of::<DrmVirtgpuContextInit>(), 16);
        assert_eq!(offset_of!(DrmVirtgpuContextInit, ctx_set_params), 8);
    }

    #[test]
    fn ioctl_numbers() {
        // _IOWR('d', 0x40 + nr, size) = 0xC000_0000 | size << 16 | 0x64 << 8 | nr.
        assert_eq!(DRM_IOCTL_VERSION, 0xc040_6400);
        assert_eq!(DRM_IOCTL_GEM_CLOSE, 0x4008_6409);
        assert_eq!(DRM_IOCTL_PRIME_HANDLE_TO_FD, 0xc00c_642d);
        assert_eq!(DRM_IOCTL_PRIME_FD_TO_HANDLE, 0xc00c_642e);
        assert_eq!(DRM_IOCTL_VIRTGPU_MAP, 0xc010_6441);
        assert_eq!(DRM_IOCTL_VIRTGPU_EXECBUFFER, 0xc040_6442);
        assert_eq!(DRM_IOCTL_VIRTGPU_GETPARAM, 0xc010_6443);
        assert_eq!(DRM_IOCTL_VIRTGPU_RESOURCE_INFO, 0xc010_6445);
        assert_eq!(DRM_IOCTL_VIRTGPU_WAIT, 0xc008_6448);
        assert_eq!(DRM_IOCTL_VIRTGPU_GET_CAPS, 0xc018_6449);
        assert_eq!(DRM_IOCTL_VIRTGPU_RESOURCE_CREATE_BLOB, 0xc030_644a);
        assert_eq!(DRM_IOCTL_VIRTGPU_CONTEXT_INIT, 0xc010_644b);
    }

    #[test]
    fn events_are_split_by_length() {
        let mut buf = Vec::new();
        for (ty, len) in [(0x9000_0000u32, 8u32), (0x01, 32), (0x9000_0000, 8)] {
            buf.extend_from_slice(&ty.to_ne_bytes());
            buf.extend_from_slice(&len.to_ne_bytes());
            buf.resize(buf.len() + len as usize - 8, 0);
        }
        // A truncated trailing header is ignored, as is a bogus length.
        buf.extend_from_slice(&[1, 2, 3]);
        let mut out = Vec::new();
        parse_events(&buf, &mut out);
        assert_eq!(out, vec![0x9000_0000, 0x01, 0x9000_0000]);
        let mut bad = Vec::new();
        bad.extend_from_slice(&7u32.to_ne_bytes());
        bad.extend_from_slice(&4u32.to_ne_bytes());
        out.clear();
        parse_events(&bad, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn recv_with_fds_adopts_descriptors() {
        use std::io::Write;
        use std::os::unix::net::UnixStream;
        let (a, b) = UnixStream::pair().unwrap();
        let (r, _w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let iov = [std::io::IoSlice::new(b"x")];
        let fds = [r.as_raw_fd()];
        nix::sys::socket::sendmsg::<()>(
            a.as_raw_fd(),
            &iov,
            &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        (&a).write_all(b"yz").unwrap();
        let mut buf = [0u8; 16];
        let got = recv_with_fds(b.as_fd(), &mut buf).unwrap();
        assert_eq!(
            got.len, 1,
            "a message with fds is not merged with what follows"
        );
        assert_eq!(got.fds.len(), 1);
        assert!(!got.fds_truncated);
        let got = recv_with_fds(b.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..got.len], b"yz");
        assert!(got.fds.is_empty());
        let e = recv_with_fds(b.as_fd(), &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    /// A message with more than MAX_FDS descriptors delivers its bytes and the first MAX_FDS
    /// descriptors, and says that the rest were dropped (docs/guest-proxy.md, "What is
    /// forwarded").
    #[test]
    fn recv_with_fds_reports_dropped_descriptors() {
        use std::os::unix::net::UnixStream;
        let (a, b) = UnixStream::pair().unwrap();
        let null = std::fs::File::open("/dev/null").unwrap();
        let fds = [null.as_raw_fd(); MAX_FDS + 2];
        nix::sys::socket::sendmsg::<()>(
            a.as_raw_fd(),
            &[std::io::IoSlice::new(b"many")],
            &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let mut buf = [0u8; 16];
        let got = recv_with_fds(b.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..got.len], b"many");
        assert_eq!(got.fds.len(), MAX_FDS);
        assert!(got.fds_truncated);
    }
}
