//! The cross-domain context type (capset 5): command-stream parsing, the per-context item
//! table, channel sockets and pipes, and the messages written into the guest's rings.
//!
//! This module owns everything a context holds on the host (sockets, pipes, received fds) and
//! must never block: every host fd is non-blocking and watched through the device's epoll.
//! It never touches virtqueues or fences directly: it tells the virtio-gpu layer which POLL
//! fence a delivered message completes, and hands back the opaque [`HoldToken`]s of requests
//! that may now complete. It knows nothing of virtio-gpu response codes or virtqueue heads.
//!
//! Files, one concern each: `context.rs` (command dispatch, INIT, SEND, delivery scheduling,
//! teardown), `channel.rs` (the channel socket, RECEIVE), `peer.rs` (writing to a slow host
//! peer), `backlog.rs` (its queue), `items.rs` (the item table and id ranges), `pipes.rs`
//! (READ and WRITE), `eventfds.rs` (eventfds: commands 11 and 12, their READ and WRITE),
//! `sockets.rs` (received sockets, command 13 and the VM's parked sockets), `policy.rs` (which
//! kinds of fd a channel carries), `hostpoll.rs` (where host fds are watched),
//! `blobs.rs` (blob memory, image requirements), `delivery.rs` (the rotation over sources,
//! epoll tokens), `env.rs` (what the device lends a context), `unserved.rs` (what the daemon
//! cannot serve, logged once per context), `error.rs`, and the leaf modules [`image`], [`io`],
//! [`protocol`] and [`udmabuf`].

mod backlog;
mod blobs;
mod channel;
mod context;
mod delivery;
mod env;
mod error;
mod eventfds;
mod hostpoll;
pub mod image;
pub mod io;
mod items;
mod peer;
mod pipes;
mod policy;
pub mod protocol;
mod sockets;
pub mod udmabuf;
mod unserved;

pub use backlog::HoldToken;
pub use blobs::{PartialPages, MAX_IMAGE_REQUIREMENTS, MAX_IMAGE_REQUIREMENTS_PER_VM};
pub use context::{capabilities, Context};
pub use delivery::token_parts;
pub use env::{Connector, Env, Lookup, ResourceView, Shared, Submission};
pub use error::CtxError;
pub use hostpoll::{HostEvent, HostPoll};
pub use items::MAX_ITEMS;
pub use peer::{MAX_BACKLOG_BYTES, MAX_HELD_PER_PEER};
pub use policy::{FdClass, FdPolicy, FdPolicyError};
pub use sockets::{ParkedSockets, SocketUuid, MAX_PARKED_SOCKETS};
pub use udmabuf::UdmabufDevice;
pub use unserved::Unserved;
