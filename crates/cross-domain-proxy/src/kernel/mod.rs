//! The Linux side of the proxy: [`KernelDevice`] implements [`VirtGpuDevice`] on an open
//! virtio-gpu render node with the virtgpu and DRM ioctls.
//!
//! Every `unsafe` block of the proxy's device code lives under this module (the session, wire
//! and device modules forbid unsafe code). It is split by concern:
//! - this file: opening the node and one safe wrapper per ioctl (the [`VirtGpuDevice`] impl);
//! - [`uapi`]: the kernel's ioctl numbers and argument structs, pinned by unit tests;
//! - [`mapping`]: `mmap` of a blob and the volatile copies in and out of it;
//! - [`events`]: splitting the DRM file's event queue into events;
//! - [`node`]: finding the render node at start-up, and saying why one is not usable;
//! - [`recv`]: `SCM_RIGHTS` reception from the client socket.
//!
//! Nothing here interprets the cross-domain protocol: that is the session's job.

pub mod events;
pub mod mapping;
pub mod node;
pub mod recv;
pub mod uapi;

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub use events::{parse_events, DRM_EVENT_HEADER};
pub use mapping::KernelMapping;
pub use recv::{recv_with_fds, Received, MAX_FDS};
use uapi::*;

use crate::device::{Blob, BlobCreate, DeviceError, ResourceInfo, VirtGpuDevice};

/// The DRM driver name of a virtio-gpu device (`DRM_IOCTL_VERSION`).
pub const VIRTIO_GPU_DRIVER: &str = "virtio_gpu";

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
        let dev = Self::open_unchecked(path)?;
        let name = dev.driver_name()?;
        if name != VIRTIO_GPU_DRIVER {
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

    /// Opens `path` as [`KernelDevice::open`] does, without asking the driver's name: only for
    /// asking it ([`node`] does, to say why a node is not the one it looks for).
    pub(crate) fn open_unchecked(path: &Path) -> Result<KernelDevice, DeviceError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| DeviceError::new("open", e))?;
        Ok(KernelDevice {
            fd: OwnedFd::from(file),
        })
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
        KernelMapping::new(self.fd.as_fd(), m.offset, size)
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
