//! The host kernel's udmabuf device (`/dev/udmabuf`, `CONFIG_UDMABUF`): a dma-buf made of a
//! memfd's own pages, so that received memory whose size is not a whole number of pages can
//! still be mapped by a VMM that insists the file covers the whole mapping (QEMU 11's size
//! check on SHMEM_MAP; docs/pipewire.md).
//!
//! This module owns the opened device and the one request the daemon makes of it,
//! `UDMABUF_CREATE` over `[0, whole pages)` of a memfd. It never copies memory, never maps
//! anything and never opens the device after start-up: [`UdmabufDevice::open`] runs before the
//! sandbox, and the seccomp filter allows exactly this request on exactly this fd
//! (`sandbox::seccomp::udmabuf_ioctl`).
//!
//! Kernel facts this relies on (Linux 6.1 to 7.x, drivers/dma-buf/udmabuf.c): the offset and
//! size must be page-aligned; the memfd must carry `F_SEAL_SHRINK` and neither `F_SEAL_WRITE`
//! nor (since late 2024) `F_SEAL_FUTURE_WRITE`; a page is refused only when it starts at or past
//! the end of the file, so the page holding the end of a 2312-byte memfd is accepted (the
//! reasoning is in docs/pipewire.md). The dma-buf's size is the whole pages, which is what a
//! VMM's size check sees.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Where the device lives.
pub const UDMABUF_PATH: &str = "/dev/udmabuf";

/// `struct udmabuf_create` of include/uapi/linux/udmabuf.h: 24 bytes, no padding.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdmabufCreate {
    /// The memfd whose pages make the dma-buf.
    pub memfd: u32,
    /// [`UDMABUF_FLAGS_CLOEXEC`] or 0.
    pub flags: u32,
    /// Byte offset into the memfd; page-aligned.
    pub offset: u64,
    /// Length in bytes; page-aligned and not zero.
    pub size: u64,
}

/// The new dma-buf fd is close-on-exec.
pub const UDMABUF_FLAGS_CLOEXEC: u32 = 0x01;

/// The `_IOW(type, nr, size)` request encoding of asm-generic/ioctl.h (x86, arm64, riscv:
/// direction in bits 30-31, size in bits 16-29, type in 8-15, number in 0-7).
const fn iow(ty: u8, nr: u8, size: usize) -> u32 {
    const IOC_WRITE: u32 = 1;
    (IOC_WRITE << 30) | ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32
}

/// `UDMABUF_CREATE`: `_IOW('u', 0x42, struct udmabuf_create)`.
pub const UDMABUF_CREATE: u32 = iow(b'u', 0x42, std::mem::size_of::<UdmabufCreate>());

/// The opened `/dev/udmabuf`. Opened once at start-up and kept for the life of the process
/// ([`UdmabufDevice::leak`]), so that every context can borrow it without a lock.
#[derive(Debug)]
pub struct UdmabufDevice {
    fd: OwnedFd,
}

impl UdmabufDevice {
    /// Opens [`UDMABUF_PATH`] read-write and close-on-exec.
    pub fn open() -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(UDMABUF_PATH)?;
        Ok(Self { fd: file.into() })
    }

    /// Keeps the device open for the rest of the process and returns the lasting reference
    /// [`super::PartialPages::Udmabuf`] carries.
    pub fn leak(self) -> &'static Self {
        Box::leak(Box::new(self))
    }

    /// The device's fd number, which the seccomp rule names.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// A dma-buf of the first `size` bytes of `memfd` (`size` a multiple of the host page
    /// size; it may run into the page that holds the end of the file, never past it). The
    /// dma-buf maps the memfd's own pages: writes through either are seen through the other.
    pub fn create(&self, memfd: BorrowedFd<'_>, size: u64) -> io::Result<OwnedFd> {
        let memfd = u32::try_from(memfd.as_raw_fd())
            .map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        let arg = UdmabufCreate {
            memfd,
            flags: UDMABUF_FLAGS_CLOEXEC,
            offset: 0,
            size,
        };
        // SAFETY: UDMABUF_CREATE reads one `struct udmabuf_create` (24 bytes, `arg` has its
        // layout, checked by the tests) from the pointer and writes nothing through it; `arg`
        // outlives the call. The request type is `c_ulong` with glibc and `c_int` with musl,
        // hence the inferred cast.
        let r = unsafe {
            libc::ioctl(
                self.fd.as_fd().as_raw_fd(),
                UDMABUF_CREATE as _,
                &arg as *const UdmabufCreate,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: on success the ioctl returns a new fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(r) })
    }
}

#[cfg(test)]
impl UdmabufDevice {
    /// A stand-in that is not the udmabuf device (`/dev/null`): every request fails with
    /// `ENOTTY`, as a kernel refusal would, wherever the tests run.
    pub(crate) fn for_tests() -> &'static Self {
        let file = std::fs::File::open("/dev/null").expect("/dev/null");
        Self::from_fd(file.into()).leak()
    }

    /// A stand-in around any fd (tests of the configuration).
    pub(crate) fn from_fd(fd: OwnedFd) -> Self {
        Self { fd }
    }
}

impl PartialEq for UdmabufDevice {
    fn eq(&self, other: &Self) -> bool {
        self.raw_fd() == other.raw_fd()
    }
}

impl Eq for UdmabufDevice {}

#[cfg(test)]
mod tests {
    use std::mem::{align_of, offset_of, size_of};

    use super::*;

    #[test]
    fn the_request_matches_the_uapi_header() {
        assert_eq!(size_of::<UdmabufCreate>(), 24);
        assert_eq!(align_of::<UdmabufCreate>(), 8);
        assert_eq!(
            (
                offset_of!(UdmabufCreate, memfd),
                offset_of!(UdmabufCreate, flags),
                offset_of!(UdmabufCreate, offset),
                offset_of!(UdmabufCreate, size)
            ),
            (0, 4, 8, 16)
        );
        // _IOW('u', 0x42, 24 bytes), as the header defines it.
        assert_eq!(UDMABUF_CREATE, 0x4018_7542);
        assert_eq!(UDMABUF_FLAGS_CLOEXEC, 1);
    }

    #[test]
    fn without_the_device_opening_fails_with_an_errno() {
        // These build machines have no /dev/udmabuf; where one exists, it opens.
        match UdmabufDevice::open() {
            Ok(dev) => assert!(dev.raw_fd() >= 0),
            Err(e) => assert!(e.raw_os_error().is_some(), "{e}"),
        }
    }
}
