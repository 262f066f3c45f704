//! The virtio-gpu layer: decodes control- and cursor-queue requests, owns resources, contexts
//! and fence timelines, and encodes responses. It knows nothing about vhost-user; the device
//! module feeds it descriptor chains and publishes the completions it produces.
//!
//! A chain is split into request and response buffers (`chain`), its request decoded into a
//! typed command (`command`), executed by the coordinator (`gpu`) against the state each
//! file owns — resources and the host-visible region (`resources`), contexts (`contexts`),
//! scanouts (`scanouts`), fence timelines (`fences`), requests held for slow host peers
//! (`held`) — and answered (`response`); refusals are [`GpuError`]s.

mod chain;
mod command;
mod contexts;
mod error;
mod fences;
mod gpu;
mod held;
pub mod protocol;
mod resources;
mod response;
mod scanouts;

pub use error::GpuError;
pub use gpu::Gpu;

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

/// Bounds on what a guest may make the device hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_contexts: usize,
    pub max_resources: usize,
    /// Backing entries of one resource.
    pub max_entries_per_resource: usize,
    /// Backing entries over all resources.
    pub max_total_entries: usize,
    /// Resources attached to one context (contexts x resources would otherwise be the bound).
    pub max_attached_per_context: usize,
    /// Blobs mapped in the host-visible region at once. Below the VMM's own limit, which it
    /// would enforce by refusing SHMEM_MAP (crosvm then ends the VM): crosvm spends one KVM
    /// memory slot per mapping, and x86 KVM has 32 764 of them for user memory.
    pub max_mappings: usize,
    /// Whether the VMM maps a file past its end (crosvm) or not (QEMU); what received memory
    /// that is not whole pages becomes. Not a limit, but a fact about the VMM the device
    /// needs as early.
    pub partial_pages: crate::cross_domain::PartialPages,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_contexts: 1024,
            max_resources: 65536,
            max_entries_per_resource: 1 << 18,
            max_total_entries: 1 << 22,
            max_attached_per_context: 16384,
            max_mappings: 16384,
            partial_pages: crate::cross_domain::PartialPages::Refuse,
        }
    }
}
