//! The virtio-gpu layer: decodes control- and cursor-queue requests, owns resources, contexts
//! and fence timelines, and encodes responses. It knows nothing about vhost-user; the device
//! module feeds it descriptor chains and publishes the completions it produces.

mod gpu;
pub mod protocol;
pub mod sg;

pub use gpu::{Gpu, GpuError, Limits};
