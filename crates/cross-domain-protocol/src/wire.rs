//! Cross-domain wire format (capset 5): the command stream inside SUBMIT_3D, the messages the
//! device writes into the guest's rings, and the capability set. Layouts follow the project's
//! `docs/protocol.md` §2–§5; offsets are pinned by the tests below.

use vm_memory::ByteValued;

// Command ids (one byte on the wire).
pub const CMD_INIT: u8 = 1;
pub const CMD_GET_IMAGE_REQUIREMENTS: u8 = 2;
pub const CMD_POLL: u8 = 3;
pub const CMD_SEND: u8 = 4;
pub const CMD_RECEIVE: u8 = 5;
pub const CMD_READ: u8 = 6;
pub const CMD_WRITE: u8 = 7;
// Extensions of libkrun and magma (`docs/protocol.md` §3.2): futexes / atomic memory sentinels,
// eventfds, and magma's virtio-fs files and internal sockets.
pub const CMD_FUTEX_NEW: u8 = 8;
pub const CMD_FUTEX_SIGNAL: u8 = 9;
pub const CMD_FUTEX_DESTROY: u8 = 10;
/// READ_EVENTFD_NEW (libkrun) / READ_CREATE_EVENT (magma): watch an eventfd item.
pub const CMD_READ_EVENTFD_NEW: u8 = 11;
/// Two meanings told apart by `cmd_size`: [`IMPORT_VIRTIOFS_HANDLE_SIZE`] bytes is magma's
/// IMPORT_VIRTIOFS_HANDLE, any other size libkrun's READ_EVENTFD_DESTROY (`docs/protocol.md`
/// §8.2).
pub const CMD_READ_EVENTFD_DESTROY: u8 = 12;
pub const CMD_ASSIGN_SOCKET_UUID: u8 = 13;
/// The `cmd_size` of magma's IMPORT_VIRTIOFS_HANDLE (command 12).
pub const IMPORT_VIRTIOFS_HANDLE_SIZE: usize = 32;

/// Ring indices (fence timelines) of a cross-domain context.
pub const QUERY_RING: u8 = 0;
pub const CHANNEL_RING: u8 = 1;

/// Identifiers per SEND/RECEIVE (every current guest uses 28).
pub const MAX_IDENTIFIERS: usize = 28;

// Identifier types.
pub const ID_TYPE_VIRTGPU_BLOB: u32 = 1;
pub const ID_TYPE_VIRTGPU_SYNC: u32 = 2;
pub const ID_TYPE_READ_PIPE: u32 = 3;
pub const ID_TYPE_WRITE_PIPE: u32 = 4;
/// Type 5: in RECEIVE magma's EVENT (an eventfd); in SEND libkrun's SHM (a futex's file).
pub const ID_TYPE_EVENT_MAGMA: u32 = 5;
pub const ID_TYPE_SHM_LIBKRUN: u32 = 5;
/// Type 6: in RECEIVE libkrun's EVENTFD; in SEND magma's VIRTIO_FS_BLOB (an imported file).
pub const ID_TYPE_EVENTFD_LIBKRUN: u32 = 6;
pub const ID_TYPE_VIRTIO_FS_BLOB: u32 = 6;
/// Type 7: magma's SOCKET (RECEIVE only).
pub const ID_TYPE_SOCKET: u32 = 7;

/// Read-pipe ids live above this value (`docs/protocol.md` §5.2).
pub const READ_PIPE_ID_BASE: u32 = 0x8000_0000;

/// Size of the channel ring message the guest must be able to hold.
pub const CHANNEL_RING_MIN_SIZE: usize = 4096;

/// Project extension (`docs/protocol.md`, "Large channel rings"): bit 0 of INIT's header `pad`
/// word asks that RECEIVE and READ fill the whole channel ring, up to [`LARGE_RING_MAX_SIZE`]
/// bytes, where the host's channel offers it. Every known guest sends 0 there.
pub const INIT_FLAG_LARGE_RING: u32 = 1;
/// The largest channel ring a host fills under [`INIT_FLAG_LARGE_RING`]: 1 MiB.
pub const LARGE_RING_MAX_SIZE: usize = 1 << 20;
/// Size of the capset when the host offers large rings on some channel: the four words of
/// [`Capabilities`] and `large_ring_channels` (bit `t`: channel type `t` offers them).
pub const CAPSET_SIZE_LARGE_RINGS: usize = std::mem::size_of::<Capabilities>() + 4;

/// Accepted INIT sizes: legacy (single ring), crosvm/sommelier, libkrun/muvm, magma.
pub const INIT_SIZE_LEGACY: usize = 16;
pub const INIT_SIZE_V1: usize = 20;
pub const INIT_SIZE_PROTOCOL_VERSION: usize = 24;
pub const INIT_SIZE_UUID: usize = 36;

/// Header of every cross-domain command.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CmdHeader {
    pub cmd: u8,
    /// Called `fence_ctx_idx` by sommelier/muvm; no host uses it.
    pub ring_idx: u8,
    pub cmd_size: u16,
    pub pad: u32,
}

/// INIT in its 20-byte form; the 16-byte legacy form lacks `channel_ring_id` (its second word is
/// the channel type), the 24- and 36-byte forms append fields the device does not need.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Init {
    pub hdr: CmdHeader,
    pub query_ring_id: u32,
    pub channel_ring_id: u32,
    pub channel_type: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct InitLegacy {
    pub hdr: CmdHeader,
    pub ring_id: u32,
    pub channel_type: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GetImageRequirements {
    pub hdr: CmdHeader,
    pub width: u32,
    pub height: u32,
    pub drm_format: u32,
    pub flags: u32,
}

/// Reply to GET_IMAGE_REQUIREMENTS, written at offset 0 of the query ring.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ImageRequirements {
    pub strides: [u32; 4],
    pub offsets: [u32; 4],
    pub modifier: u64,
    pub size: u64,
    pub blob_id: u32,
    pub map_info: u32,
    pub memory_idx: i32,
    pub physical_device_idx: i32,
}

/// SEND (guest→host) and RECEIVE (host→guest); opaque data follows the struct.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SendReceive {
    pub hdr: CmdHeader,
    pub num_identifiers: u32,
    pub opaque_data_size: u32,
    pub identifiers: [u32; MAX_IDENTIFIERS],
    pub identifier_types: [u32; MAX_IDENTIFIERS],
    pub identifier_sizes: [u32; MAX_IDENTIFIERS],
}

impl Default for SendReceive {
    fn default() -> Self {
        SendReceive {
            hdr: CmdHeader::default(),
            num_identifiers: 0,
            opaque_data_size: 0,
            identifiers: [0; MAX_IDENTIFIERS],
            identifier_types: [0; MAX_IDENTIFIERS],
            identifier_sizes: [0; MAX_IDENTIFIERS],
        }
    }
}

/// READ (host→guest) and WRITE (guest→host); opaque data follows the struct.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadWrite {
    pub hdr: CmdHeader,
    pub identifier: u32,
    pub hang_up: u32,
    pub opaque_data_size: u32,
    pub pad: u32,
}

/// READ_EVENTFD_NEW (command 11), and libkrun's READ_EVENTFD_DESTROY (command 12) shaped like
/// it: the eventfd item to watch or drop.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadEventfd {
    pub hdr: CmdHeader,
    pub id: u32,
    pub pad: u32,
}

/// ASSIGN_SOCKET_UUID (command 13, magma): park the socket item `id` under `uuid`, for a
/// later 36-byte INIT with channel type 0xFFFFFFFF to adopt.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AssignSocketUuid {
    pub hdr: CmdHeader,
    pub uuid: [u8; 16],
    pub id: u32,
    pub pad: u32,
}

/// Size of ASSIGN_SOCKET_UUID.
pub const ASSIGN_SOCKET_UUID_SIZE: usize = 32;

/// Where the 36-byte INIT carries its internal-socket uuid (16 bytes).
pub const INIT_UUID_OFFSET: usize = INIT_SIZE_V1;
/// The data of a READ from a watched eventfd and of a WRITE to an eventfd item: one counter
/// value, a little-endian u64 (`docs/protocol.md` §3.7, §3.9).
pub const EVENTFD_VALUE_SIZE: usize = 8;
/// The largest value a Linux eventfd counter holds (`eventfd(2)`): a WRITE of more, or one that
/// would take the counter past it, is refused.
pub const EVENTFD_COUNTER_MAX: u64 = u64::MAX - 1;

/// The capability set returned by GET_CAPSET(5).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub version: u32,
    pub supported_channels: u32,
    pub supports_dmabuf: u32,
    pub supports_external_gpu_memory: u32,
}

/// Largest RECEIVE payload: a 4096-byte ring minus the SEND/RECEIVE header.
pub const MAX_RECEIVE_DATA: usize = CHANNEL_RING_MIN_SIZE - std::mem::size_of::<SendReceive>();

// SAFETY: all types below are `#[repr(C)]` structs of integers/integer arrays without implicit
// padding (pinned by the layout tests), so any bit pattern is a valid value.
unsafe impl ByteValued for CmdHeader {}
// SAFETY: see above.
unsafe impl ByteValued for Init {}
// SAFETY: see above.
unsafe impl ByteValued for InitLegacy {}
// SAFETY: see above.
unsafe impl ByteValued for GetImageRequirements {}
// SAFETY: see above.
unsafe impl ByteValued for ImageRequirements {}
// SAFETY: see above.
unsafe impl ByteValued for SendReceive {}
// SAFETY: see above.
unsafe impl ByteValued for ReadWrite {}
// SAFETY: see above.
unsafe impl ByteValued for ReadEventfd {}
// SAFETY: see above.
unsafe impl ByteValued for AssignSocketUuid {}
// SAFETY: see above.
unsafe impl ByteValued for Capabilities {}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn command_layouts() {
        assert_eq!(size_of::<CmdHeader>(), 8);
        assert_eq!(offset_of!(CmdHeader, ring_idx), 1);
        assert_eq!(offset_of!(CmdHeader, cmd_size), 2);
        assert_eq!(size_of::<InitLegacy>(), INIT_SIZE_LEGACY);
        assert_eq!(offset_of!(InitLegacy, channel_type), 12);
        assert_eq!(size_of::<Init>(), INIT_SIZE_V1);
        assert_eq!(offset_of!(Init, query_ring_id), 8);
        assert_eq!(offset_of!(Init, channel_ring_id), 12);
        assert_eq!(offset_of!(Init, channel_type), 16);
        assert_eq!(size_of::<GetImageRequirements>(), 24);
        assert_eq!(offset_of!(GetImageRequirements, drm_format), 16);
        assert_eq!(offset_of!(GetImageRequirements, flags), 20);
        assert_eq!(size_of::<SendReceive>(), 352);
        assert_eq!(offset_of!(SendReceive, num_identifiers), 8);
        assert_eq!(offset_of!(SendReceive, opaque_data_size), 12);
        assert_eq!(offset_of!(SendReceive, identifiers), 16);
        assert_eq!(offset_of!(SendReceive, identifier_types), 128);
        assert_eq!(offset_of!(SendReceive, identifier_sizes), 240);
        assert_eq!(size_of::<ReadWrite>(), 24);
        assert_eq!(offset_of!(ReadWrite, identifier), 8);
        assert_eq!(offset_of!(ReadWrite, hang_up), 12);
        assert_eq!(offset_of!(ReadWrite, opaque_data_size), 16);
        assert_eq!(MAX_RECEIVE_DATA, 3744);
        assert_eq!(size_of::<ReadEventfd>(), 16);
        assert_eq!(offset_of!(ReadEventfd, id), 8);
        assert_eq!(size_of::<AssignSocketUuid>(), ASSIGN_SOCKET_UUID_SIZE);
        assert_eq!(offset_of!(AssignSocketUuid, uuid), 8);
        assert_eq!(offset_of!(AssignSocketUuid, id), 24);
        assert_eq!(INIT_UUID_OFFSET + 16, INIT_SIZE_UUID);
        assert_eq!(offset_of!(ReadEventfd, pad), 12);
        // A READ or WRITE carrying one eventfd counter value is 32 bytes.
        assert_eq!(size_of::<ReadWrite>() + EVENTFD_VALUE_SIZE, 32);
        assert_eq!(EVENTFD_VALUE_SIZE, size_of::<u64>());
    }

    #[test]
    fn reply_layouts() {
        assert_eq!(size_of::<ImageRequirements>(), 64);
        assert_eq!(offset_of!(ImageRequirements, offsets), 16);
        assert_eq!(offset_of!(ImageRequirements, modifier), 32);
        assert_eq!(offset_of!(ImageRequirements, size), 40);
        assert_eq!(offset_of!(ImageRequirements, blob_id), 48);
        assert_eq!(offset_of!(ImageRequirements, map_info), 52);
        assert_eq!(offset_of!(ImageRequirements, memory_idx), 56);
        assert_eq!(offset_of!(ImageRequirements, physical_device_idx), 60);
        assert_eq!(size_of::<Capabilities>(), 16);
        assert_eq!(offset_of!(Capabilities, supported_channels), 4);
        assert_eq!(offset_of!(Capabilities, supports_dmabuf), 8);
        assert_eq!(offset_of!(Capabilities, supports_external_gpu_memory), 12);
    }
}
