//! dma-bufs from host services: whether one can be offered to the guest as a mappable blob.
//!
//! A dma-buf reaches the guest only as a blob it maps through the host-visible region, and the
//! VMM maps it with `mmap` when the daemon asks (SHMEM_MAP). Not every exporter allows that:
//! a driver without an mmap operation for its buffers refuses (ENODEV, EINVAL, EPERM), and
//! crosvm ends the VM when a SHMEM_MAP is refused. So a received dma-buf is tried here first,
//! with the access its mapping will have, and refused like any other unusable fd if the probe
//! fails. This module only probes; it never keeps a mapping or touches the buffer's contents.

use std::os::fd::{AsRawFd, BorrowedFd};

use super::io::memory_writable;

/// Whether the VMM will be able to map `fd` (a dma-buf of `size` bytes): one shared mapping of
/// its first page, readable, and writable too when the blob will be mapped writable.
pub fn mappable(fd: BorrowedFd<'_>, size: u64) -> bool {
    let page = super::image::host_page_size();
    if size < page {
        // dma-bufs are whole pages; a smaller one cannot be mapped as a page.
        return false;
    }
    let mut prot = libc::PROT_READ;
    if memory_writable(fd) {
        prot |= libc::PROT_WRITE;
    }
    // SAFETY: a fresh mapping chosen by the kernel (no MAP_FIXED), so no existing memory is
    // affected; it is never accessed and unmapped right below with the same address and
    // length. `fd` is open for the duration of the call.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            page as usize,
            prot,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return false;
    }
    // SAFETY: `p` is the mapping of `page` bytes made above, unused by anything else.
    unsafe {
        libc::munmap(p, page as usize);
    }
    true
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn memory_maps_and_other_files_do_not() {
        let page = super::super::image::host_page_size();
        let fd = nix::sys::memfd::memfd_create(c"probe", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .expect("memfd");
        nix::unistd::ftruncate(&fd, page as i64).expect("ftruncate");
        assert!(mappable(fd.as_fd(), page));
        assert!(!mappable(fd.as_fd(), page - 1), "less than a page");
        // A character device without an mmap operation refuses, as such exporters do.
        let null = std::fs::File::open("/dev/null").expect("/dev/null");
        assert!(!mappable(null.as_fd(), page));
    }
}
