//! Blobs mapped into the proxy: [`KernelMapping`], an `mmap` of a virtgpu buffer object on the
//! DRM file, and its bounds-checked volatile copies.
//!
//! This module owns the mapping's lifetime (`mmap` in `KernelMapping::new`, `munmap` on drop)
//! and must never hand out a reference or slice into the memory: the host shares it and may
//! change it at any time, so every access is a checked, volatile copy.

use std::ffi::c_void;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

use vm_memory::VolatileSlice;

use crate::device::{BlobMapping, DeviceError};

/// A blob mapped with `mmap` on the DRM file; unmapped on drop.
#[derive(Debug)]
pub struct KernelMapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl KernelMapping {
    /// Maps `size` bytes of the DRM file `fd` at `offset` (what DRM_IOCTL_VIRTGPU_MAP returned
    /// for a buffer object), shared and read-write.
    pub(super) fn new(fd: BorrowedFd<'_>, offset: u64, size: usize) -> Result<Self, DeviceError> {
        let offset = libc::off_t::try_from(offset)
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
                fd.as_raw_fd(),
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
        // SAFETY: `ptr`/`len` describe a mapping created by `mmap` in `KernelMapping::new` and
        // owned by this value alone; no slice into it outlives `self`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast::<c_void>(), self.len);
        }
    }
}
