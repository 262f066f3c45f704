//! The cross-domain context type (capset 5): command-stream parsing, the per-context item
//! table, channel sockets and pipes, and the messages written into the guest's rings.
//!
//! This module owns everything a context holds on the host (sockets, pipes, received fds) and
//! must never block: every host fd is non-blocking and watched through the device's epoll.
//! It never touches virtqueues or fences directly; it tells the virtio-gpu layer which POLL
//! fence a delivered message completes.

mod backlog;
mod context;
pub mod image;
pub mod io;
pub mod protocol;

pub use context::{
    capabilities, token_parts, Context, CtxError, Env, Lookup, ResourceView, Scratch,
    MAX_BACKLOG_BYTES, MAX_HELD_PER_PEER, MAX_IMAGE_REQUIREMENTS, MAX_IMAGE_REQUIREMENTS_PER_VM,
    MAX_ITEMS,
};
