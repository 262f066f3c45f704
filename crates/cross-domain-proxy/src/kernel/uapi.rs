//! The kernel's DRM and virtgpu user-space ABI, as far as the proxy uses it: ioctl numbers and
//! the argument structs of `include/uapi/drm/drm.h` and `include/uapi/drm/virtgpu_drm.h`.
//!
//! This module owns the layouts and numbers only; it makes no system calls and must never hold
//! logic (the calls are in [`super::KernelDevice`]). The ioctl numbers are computed with the
//! kernel's `_IOC` encoding (direction in bits 30–31, size in bits 16–29, type `'d'` in bits
//! 8–15, number in bits 0–7); the unit tests pin both the struct layouts and the resulting
//! numbers, so a field typo cannot reach a real kernel.

use std::mem::size_of;

// ---- ioctl numbers ----------------------------------------------------------------------

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

/// `DRM_IOWR(DRM_COMMAND_BASE + nr, T)`: a virtgpu (driver-specific) ioctl.
const fn virtgpu_iowr(nr: u8, size: usize) -> u64 {
    drm_iowr(DRM_COMMAND_BASE + nr, size)
}

pub const DRM_IOCTL_VERSION: u64 = drm_iowr(DRM_VERSION_NR, size_of::<DrmVersion>());
pub const DRM_IOCTL_GEM_CLOSE: u64 = drm_iow(DRM_GEM_CLOSE_NR, size_of::<DrmGemClose>());
pub const DRM_IOCTL_PRIME_HANDLE_TO_FD: u64 =
    drm_iowr(DRM_PRIME_HANDLE_TO_FD_NR, size_of::<DrmPrimeHandle>());
pub const DRM_IOCTL_PRIME_FD_TO_HANDLE: u64 =
    drm_iowr(DRM_PRIME_FD_TO_HANDLE_NR, size_of::<DrmPrimeHandle>());
pub const DRM_IOCTL_VIRTGPU_MAP: u64 = virtgpu_iowr(DRM_VIRTGPU_MAP, size_of::<DrmVirtgpuMap>());
pub const DRM_IOCTL_VIRTGPU_EXECBUFFER: u64 =
    virtgpu_iowr(DRM_VIRTGPU_EXECBUFFER, size_of::<DrmVirtgpuExecbuffer>());
pub const DRM_IOCTL_VIRTGPU_GETPARAM: u64 =
    virtgpu_iowr(DRM_VIRTGPU_GETPARAM, size_of::<DrmVirtgpuGetparam>());
pub const DRM_IOCTL_VIRTGPU_RESOURCE_INFO: u64 = virtgpu_iowr(
    DRM_VIRTGPU_RESOURCE_INFO,
    size_of::<DrmVirtgpuResourceInfo>(),
);
pub const DRM_IOCTL_VIRTGPU_WAIT: u64 =
    virtgpu_iowr(DRM_VIRTGPU_WAIT, size_of::<DrmVirtgpu3dWait>());
pub const DRM_IOCTL_VIRTGPU_GET_CAPS: u64 =
    virtgpu_iowr(DRM_VIRTGPU_GET_CAPS, size_of::<DrmVirtgpuGetCaps>());
pub const DRM_IOCTL_VIRTGPU_RESOURCE_CREATE_BLOB: u64 = virtgpu_iowr(
    DRM_VIRTGPU_RESOURCE_CREATE_BLOB,
    size_of::<DrmVirtgpuResourceCreateBlob>(),
);
pub const DRM_IOCTL_VIRTGPU_CONTEXT_INIT: u64 =
    virtgpu_iowr(DRM_VIRTGPU_CONTEXT_INIT, size_of::<DrmVirtgpuContextInit>());

/// `VIRTGPU_EXECBUF_RING_IDX`: `ring_idx` is valid (a per-context ring timeline).
pub const VIRTGPU_EXECBUF_RING_IDX: u32 = 0x04;

/// `DRM_CLOEXEC` and `DRM_RDWR` for PRIME export.
pub const DRM_CLOEXEC: u32 = libc::O_CLOEXEC as u32;
pub const DRM_RDWR: u32 = libc::O_RDWR as u32;

// ---- ioctl structs ----------------------------------------------------------------------

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

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

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
}
