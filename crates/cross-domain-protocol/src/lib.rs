//! The wire formats and numbers that both ends of a cross-domain channel need: the
//! `vhost-user-cross-domain` daemon on the host and `cross-domain-proxy` in the guest.
//!
//! This crate owns:
//! - [`wire`]: the cross-domain commands a guest writes (INIT, SEND, ...), the messages the
//!   device writes into the guest's rings, and the capability set, with their layouts pinned
//!   by tests;
//! - [`channel`]: the well-known channel-type names and how a channel type is written on a
//!   command line;
//! - the virtio-gpu numbers both sides use: [`CAPSET_CROSS_DOMAIN`], [`MAX_SCANOUTS`];
//! - [`page_size`], which both sides round blob sizes to.
//!
//! It must never do I/O, keep state or depend on either program: it holds types, constants and
//! pure functions only, so that the proxy can use them without linking the daemon and the
//! daemon without linking the proxy. (Receiving file descriptors, which both sides also share,
//! is I/O and lives in the `cross-domain-fdpass` crate.)

pub mod channel;
pub mod wire;

pub use channel::{
    channel_name, parse_channel_type, ChannelTypeError, ReservedReason, CHANNEL_NAMES,
};

/// The virtio-gpu capset id of the cross-domain context type (`docs/protocol.md` §2).
pub const CAPSET_CROSS_DOMAIN: u32 = 5;

/// Most scanouts a virtio-gpu device can describe: the length of GET_DISPLAY_INFO's array and
/// the highest `num_scanouts` in the configuration space (`docs/protocol.md` §1.3).
pub const MAX_SCANOUTS: usize = 16;

/// The page size of the machine this runs on (`sysconf(_SC_PAGESIZE)`), 4096 if the system
/// does not say. The daemon rounds host blobs to it; the proxy, guest blobs.
pub fn page_size() -> u64 {
    // SAFETY: sysconf only reads a system value; it has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    match u64::try_from(v) {
        Ok(n) if n > 0 => n,
        _ => 4096,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_is_a_power_of_two() {
        let p = page_size();
        assert!(p >= 4096 && p.is_power_of_two(), "{p}");
    }
}
