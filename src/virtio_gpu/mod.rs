//! The virtio-gpu layer: decodes control- and cursor-queue requests, owns resources, contexts
//! and fence timelines, and encodes responses. It knows nothing about vhost-user; the device
//! module feeds it descriptor chains and publishes the completions it produces.

mod chain;
mod command;
mod error;
mod fences;
mod gpu;
mod held;
pub mod protocol;
mod resources;
mod response;
pub mod sg;

pub use error::GpuError;
pub use gpu::{Gpu, Limits};

use std::os::fd::BorrowedFd;

/// Places host memory into the VMM's host-visible region (shmid 1). Implemented by the
/// vhost-user layer (SHMEM_MAP/UNMAP on the backend channel); the virtio-gpu layer decides what
/// is mapped where and checks every guest-supplied offset first.
pub trait ShmMapper {
    /// Map `len` bytes of `fd` (from offset 0) at `offset` in the region.
    fn map(&self, fd: BorrowedFd<'_>, offset: u64, len: u64, writable: bool)
        -> std::io::Result<()>;
    /// Remove the mapping of `len` bytes at `offset`.
    fn unmap(&self, offset: u64, len: u64) -> std::io::Result<()>;
}
