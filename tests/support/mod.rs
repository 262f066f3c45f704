//! Test frontend: a fake VMM and a tiny virtio-gpu guest driver that talk to the daemon only
//! through vhost-user, as a VMM would.
//!
//! - [`daemon`]: start the real daemon binary on a temporary socket; host channel sockets.
//! - [`vmm`]: `TestVm` — guest memory (memfd), the vhost-user handshake, queue plumbing,
//!   config space and hand-written messages (GPU_SET_SOCKET).
//! - [`host`]: the host service's side of a channel: fds over `SCM_RIGHTS`, memfds, pipes.
//! - [`shm`]: host-visible shared memory (protocol feature SHMEM): the region the VMM
//!   reserves and the thread serving SHMEM_MAP/UNMAP on the backend request channel.
//! - [`virtq`]: split virtqueues written in guest memory, with descriptor/buffer recycling.
//! - [`gpu`]: virtio-gpu and cross-domain request encoders, response decoders and the
//!   `CrossDomainContext` helper.
//!
//! It is a crate of its own (`vucd-test-frontend`, never published), which the integration
//! tests and the benchmark program use as the dev-dependency `support`. It must never depend on
//! the daemon's library: it reaches the daemon only through vhost-user and its binary, as a VMM
//! would.

pub mod daemon;
pub mod gpu;
pub mod host;
pub mod shm;
pub mod virtq;
pub mod vmm;

pub use daemon::*;
pub use gpu::*;
pub use host::*;
pub use shm::*;
pub use virtq::*;
pub use vmm::*;
