//! `vhost-user-cross-domain`: a vhost-user virtio-gpu device that implements only the
//! cross-domain context type (capset 5) and connects each context to the host Unix socket
//! configured for the channel type the guest names in INIT.
//!
//! Module map:
//! - [`config`]: the validated configuration and the channel table (`TYPE:PATH`).
//! - [`daemon`]: listening socket and the serve loop that re-listens after a VMM disconnect.
//! - [`device`]: the vhost-user backend (features, config space, queue events).
//! - [`virtio_gpu`]: virtio-gpu wire structs, control-queue dispatch, resources and fences.
//! - [`cross_domain`]: cross-domain wire structs, contexts, items and channel I/O.

pub mod config;
pub mod cross_domain;
pub mod daemon;
pub mod device;
#[doc(hidden)]
pub mod fuzz_harness;
pub mod ratelimit;
pub mod virtio_gpu;

pub use config::Config;
pub use daemon::{run, Error};
