//! The guest side of the cross-domain wire format: the commands the proxy submits (INIT in its
//! 20-byte form and the 36-byte form that adopts a parked socket, POLL, SEND, WRITE,
//! GET_IMAGE_REQUIREMENTS, for eventfds READ_EVENTFD_NEW and libkrun's READ_EVENTFD_DESTROY, and
//! magma's ASSIGN_SOCKET_UUID) and the channel-ring messages it reads (RECEIVE, READ).
//!
//! Layouts are the [`cross_domain_protocol::wire`] structs the daemon uses too (28 identifiers
//! per SEND/RECEIVE, docs/protocol.md §3), so both sides share one pinned definition. Everything
//! read from a ring is checked against the ring's size before use: the host writes it.
#![forbid(unsafe_code)]

use std::mem::size_of;

use vm_memory::ByteValued;

use cross_domain_protocol::channel::CHANNEL_TYPE_INTERNAL_SOCKET;
use cross_domain_protocol::wire::{
    AssignSocketUuid, CmdHeader, GetImageRequirements, ImageRequirements, Init, ReadEventfd,
    ReadWrite, SendReceive, ASSIGN_SOCKET_UUID_SIZE, CMD_ASSIGN_SOCKET_UUID,
    CMD_GET_IMAGE_REQUIREMENTS, CMD_INIT, CMD_POLL, CMD_READ, CMD_READ_EVENTFD_DESTROY,
    CMD_READ_EVENTFD_NEW, CMD_RECEIVE, CMD_SEND, CMD_WRITE, EVENTFD_COUNTER_MAX,
    EVENTFD_VALUE_SIZE, ID_TYPE_EVENTFD_LIBKRUN, ID_TYPE_EVENT_MAGMA, INIT_SIZE_UUID,
    INIT_UUID_OFFSET, MAX_IDENTIFIERS, READ_PIPE_ID_BASE,
};

/// Size of each ring (a guest blob of one 4096-byte page, as every guest uses).
pub const RING_SIZE: usize = 4096;
/// Size of the channel ring on a channel that offers large rings (docs/protocol.md, "Large
/// channel rings"): the most the host fills.
pub const LARGE_RING_SIZE: usize = cross_domain_protocol::wire::LARGE_RING_MAX_SIZE;
/// SEND/RECEIVE header with 28 identifiers.
pub const SEND_HEADER: usize = size_of::<SendReceive>();
/// Most data bytes per SEND: what fits a 4096-byte ring after the header (the host reads
/// RECEIVEs of at most this size too).
pub const MAX_SEND_DATA: usize = RING_SIZE - SEND_HEADER;
/// READ/WRITE header.
pub const RW_HEADER: usize = size_of::<ReadWrite>();
/// Most data bytes per WRITE.
pub const MAX_WRITE_DATA: usize = RING_SIZE - RW_HEADER;
/// Size of the GET_IMAGE_REQUIREMENTS reply in the query ring.
pub const IMAGE_REQUIREMENTS_SIZE: usize = size_of::<ImageRequirements>();
/// DRM fourcc `R8  `: one byte per pixel, so a `width × 1` image is `width` bytes.
pub const DRM_FORMAT_R8: u32 = u32::from_le_bytes(*b"R8  ");

/// One identifier of a SEND or RECEIVE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identifier {
    pub id: u32,
    /// `ID_TYPE_*`.
    pub kind: u32,
    /// Size in bytes (memory identifiers in RECEIVE; informational in SEND).
    pub size: u32,
}

/// A malformed message in the channel ring or query ring.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("the ring buffer of {0} bytes is shorter than a message header")]
    Short(usize),
    #[error("RECEIVE with {0} identifiers (at most 28)")]
    TooManyIdentifiers(u32),
    #[error("{what} with {size} data bytes does not fit a {ring}-byte ring")]
    DataTooLong {
        what: &'static str,
        size: u32,
        ring: usize,
    },
    #[error("{0} data bytes do not fit one command")]
    CommandTooLong(usize),
}

/// The header of a command of `cmd_size` bytes (the guest never sets `ring_idx`: the ring is
/// chosen by EXECBUFFER).
fn fixed_header(cmd: u8, cmd_size: u16) -> CmdHeader {
    CmdHeader {
        cmd,
        ring_idx: 0,
        cmd_size,
        pad: 0,
    }
}

/// The header of a command of `size` bytes, which must fit the 16-bit size field.
fn header(cmd: u8, size: usize) -> Result<CmdHeader, WireError> {
    let cmd_size = u16::try_from(size).map_err(|_| WireError::CommandTooLong(size))?;
    Ok(fixed_header(cmd, cmd_size))
}

/// INIT in the 20-byte form: query ring, channel ring, channel type.
pub fn init(query_ring: u32, channel_ring: u32, channel_type: u32) -> Vec<u8> {
    init_with(query_ring, channel_ring, channel_type, false)
}

/// [`init`], asking for large rings when `large_ring` (bit 0 of the header's padding word,
/// docs/protocol.md "Large channel rings"): the host then fills the whole channel ring.
pub fn init_with(
    query_ring: u32,
    channel_ring: u32,
    channel_type: u32,
    large_ring: bool,
) -> Vec<u8> {
    let mut hdr = fixed_header(CMD_INIT, size_of::<Init>() as u16);
    if large_ring {
        hdr.pad = cross_domain_protocol::wire::INIT_FLAG_LARGE_RING;
    }
    let cmd = Init {
        hdr,
        query_ring_id: query_ring,
        channel_ring_id: channel_ring,
        channel_type,
    };
    cmd.as_slice().to_vec()
}

/// INIT in magma's 36-byte form with channel type 0xFFFFFFFF (docs/protocol.md §3.3): the
/// context's channel is the socket parked under `uuid` by ASSIGN_SOCKET_UUID.
pub fn init_adopt(query_ring: u32, channel_ring: u32, uuid: [u8; 16]) -> Vec<u8> {
    let cmd = Init {
        hdr: fixed_header(CMD_INIT, INIT_SIZE_UUID as u16),
        query_ring_id: query_ring,
        channel_ring_id: channel_ring,
        channel_type: CHANNEL_TYPE_INTERNAL_SOCKET,
    };
    let mut v = cmd.as_slice().to_vec();
    v.extend_from_slice(&uuid);
    debug_assert_eq!(v.len(), INIT_SIZE_UUID);
    debug_assert_eq!(&v[INIT_UUID_OFFSET..], &uuid);
    v
}

/// ASSIGN_SOCKET_UUID (command 13, 32 bytes, docs/protocol.md §3.10): park the socket item `id`
/// (a RECEIVE identifier of type 7) under `uuid`, for a new context's [`init_adopt`].
pub fn assign_socket_uuid(uuid: [u8; 16], id: u32) -> Vec<u8> {
    let cmd = AssignSocketUuid {
        hdr: fixed_header(CMD_ASSIGN_SOCKET_UUID, ASSIGN_SOCKET_UUID_SIZE as u16),
        uuid,
        id,
        pad: 0,
    };
    cmd.as_slice().to_vec()
}

/// POLL: the header and a zero u64, 16 bytes as every guest sends it.
pub fn poll() -> Vec<u8> {
    let hdr = fixed_header(CMD_POLL, 16);
    let mut v = hdr.as_slice().to_vec();
    v.extend_from_slice(&0u64.to_le_bytes());
    v
}

/// GET_IMAGE_REQUIREMENTS for a linear `width × height` image of `drm_format`.
pub fn get_image_requirements(width: u32, height: u32, drm_format: u32) -> Vec<u8> {
    let cmd = GetImageRequirements {
        hdr: fixed_header(
            CMD_GET_IMAGE_REQUIREMENTS,
            size_of::<GetImageRequirements>() as u16,
        ),
        width,
        height,
        drm_format,
        flags: 0,
    };
    cmd.as_slice().to_vec()
}

/// SEND of `data` (at most [`MAX_SEND_DATA`] bytes) with up to 28 identifiers.
pub fn send(ids: &[Identifier], data: &[u8]) -> Result<Vec<u8>, WireError> {
    if ids.len() > MAX_IDENTIFIERS {
        return Err(WireError::TooManyIdentifiers(ids.len() as u32));
    }
    if data.len() > MAX_SEND_DATA {
        return Err(WireError::CommandTooLong(data.len()));
    }
    let mut cmd = SendReceive {
        hdr: header(CMD_SEND, SEND_HEADER + data.len())?,
        num_identifiers: ids.len() as u32,
        opaque_data_size: data.len() as u32,
        ..Default::default()
    };
    for (i, ident) in ids.iter().enumerate() {
        cmd.identifiers[i] = ident.id;
        cmd.identifier_types[i] = ident.kind;
        cmd.identifier_sizes[i] = ident.size;
    }
    let mut v = Vec::with_capacity(SEND_HEADER + data.len());
    v.extend_from_slice(cmd.as_slice());
    v.extend_from_slice(data);
    Ok(v)
}

/// WRITE of `data` (at most [`MAX_WRITE_DATA`] bytes) into the host pipe `id`.
pub fn write(id: u32, data: &[u8], hang_up: bool) -> Result<Vec<u8>, WireError> {
    if data.len() > MAX_WRITE_DATA {
        return Err(WireError::CommandTooLong(data.len()));
    }
    let cmd = ReadWrite {
        hdr: header(CMD_WRITE, RW_HEADER + data.len())?,
        identifier: id,
        hang_up: u32::from(hang_up),
        opaque_data_size: data.len() as u32,
        pad: 0,
    };
    let mut v = Vec::with_capacity(RW_HEADER + data.len());
    v.extend_from_slice(cmd.as_slice());
    v.extend_from_slice(data);
    Ok(v)
}

/// Whether a RECEIVE identifier of type `kind` is an eventfd. The two host families number it
/// differently (docs/protocol.md §5.1): 6 on libkrun and after its 24-byte INIT, 5 (magma's
/// EVENT) otherwise, which is what this proxy's 20-byte INIT gets from the daemon. In a
/// RECEIVE neither number means anything else, so both are taken.
pub fn is_eventfd(kind: u32) -> bool {
    kind == ID_TYPE_EVENT_MAGMA || kind == ID_TYPE_EVENTFD_LIBKRUN
}

/// A command shaped like READ_EVENTFD_NEW: the header and the item id (16 bytes).
fn eventfd_command(cmd: u8, id: u32) -> Vec<u8> {
    let c = ReadEventfd {
        hdr: fixed_header(cmd, size_of::<ReadEventfd>() as u16),
        id,
        pad: 0,
    };
    c.as_slice().to_vec()
}

/// READ_EVENTFD_NEW (command 11, docs/protocol.md §3.9): the host starts watching eventfd item
/// `id` and sends a READ of its counter each time it becomes readable.
pub fn read_eventfd_new(id: u32) -> Vec<u8> {
    eventfd_command(CMD_READ_EVENTFD_NEW, id)
}

/// libkrun's READ_EVENTFD_DESTROY (command 12 in 16 bytes; 32 bytes would be magma's
/// IMPORT_VIRTIOFS_HANDLE, docs/protocol.md §3.2): the host stops watching eventfd item `id`
/// and drops it.
pub fn read_eventfd_destroy(id: u32) -> Vec<u8> {
    eventfd_command(CMD_READ_EVENTFD_DESTROY, id)
}

/// WRITE of one counter value to eventfd item `id`: exactly 8 bytes, little-endian, which the
/// host adds to its counter (docs/protocol.md §3.7). `value` is capped at what a counter holds,
/// as hosts refuse more.
pub fn write_eventfd(id: u32, value: u64) -> Vec<u8> {
    let cmd = ReadWrite {
        hdr: fixed_header(CMD_WRITE, (RW_HEADER + EVENTFD_VALUE_SIZE) as u16),
        identifier: id,
        hang_up: 0,
        opaque_data_size: EVENTFD_VALUE_SIZE as u32,
        pad: 0,
    };
    let mut v = Vec::with_capacity(RW_HEADER + EVENTFD_VALUE_SIZE);
    v.extend_from_slice(cmd.as_slice());
    v.extend_from_slice(&value.min(EVENTFD_COUNTER_MAX).to_le_bytes());
    v
}

/// The counter value a READ from a watched eventfd carries: exactly 8 bytes, little-endian;
/// `None` for any other size (a malformed READ).
pub fn eventfd_value(data: &[u8]) -> Option<u64> {
    let bytes: [u8; EVENTFD_VALUE_SIZE] = data.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// A message the host wrote into the channel ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelMessage {
    /// RECEIVE: bytes and identifiers from the host socket. No identifiers and no data means
    /// the host service closed the channel.
    Receive { ids: Vec<Identifier>, data: Vec<u8> },
    /// READ: data from a host pipe the guest asked to read (a READ_PIPE identifier), or the
    /// counter value of a watched eventfd; `hang_up` means the host's write end was closed.
    Read {
        id: u32,
        hang_up: bool,
        data: Vec<u8>,
    },
    /// The header is still zero: the fence signalled without a message (the host refused the
    /// POLL, or the context is going away).
    Nothing,
    /// A command this proxy does not handle.
    Other(u8),
}

/// Copies a `T` out of the start of `bytes` (which may be unaligned).
fn read_struct<T: ByteValued + Default>(bytes: &[u8]) -> Result<T, WireError> {
    let mut v = T::default();
    let n = size_of::<T>();
    let src = bytes.get(..n).ok_or(WireError::Short(bytes.len()))?;
    v.as_mut_slice().copy_from_slice(src);
    Ok(v)
}

/// The `size` data bytes after a message's `header`-byte header, copied out of the ring; a size
/// the host wrote that runs past the ring is an error, never a short read.
fn payload(
    ring: &[u8],
    header: usize,
    size: u32,
    what: &'static str,
) -> Result<Vec<u8>, WireError> {
    ring.get(header..)
        .and_then(|rest| rest.get(..size as usize))
        .map(<[u8]>::to_vec)
        .ok_or(WireError::DataTooLong {
            what,
            size,
            ring: ring.len(),
        })
}

/// How many bytes from the start of a `ring_len`-byte channel ring the message whose first
/// [`SEND_HEADER`] bytes (or fewer, in a smaller ring) are `head` spans, as its header says,
/// at most `ring_len`: what a large ring's reader copies out, rather than the whole ring.
pub fn message_len(head: &[u8], ring_len: usize) -> usize {
    let word = |off: usize| {
        head.get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let len = match head.first() {
        Some(&CMD_RECEIVE) => word(12).map(|n| SEND_HEADER.saturating_add(n)),
        Some(&CMD_READ) => word(16).map(|n| RW_HEADER.saturating_add(n)),
        _ => None,
    };
    len.unwrap_or(head.len()).max(head.len()).min(ring_len)
}

/// Decodes the channel ring (the whole ring, `ring.len()` bytes).
pub fn decode_channel(ring: &[u8]) -> Result<ChannelMessage, WireError> {
    let hdr: CmdHeader = read_struct(ring)?;
    match hdr.cmd {
        0 => Ok(ChannelMessage::Nothing),
        CMD_RECEIVE => {
            let r: SendReceive = read_struct(ring)?;
            let n = r.num_identifiers;
            if n as usize > MAX_IDENTIFIERS {
                return Err(WireError::TooManyIdentifiers(n));
            }
            let data = payload(ring, SEND_HEADER, r.opaque_data_size, "RECEIVE")?;
            let ids = (0..n as usize)
                .map(|i| Identifier {
                    id: r.identifiers[i],
                    kind: r.identifier_types[i],
                    size: r.identifier_sizes[i],
                })
                .collect();
            Ok(ChannelMessage::Receive { ids, data })
        }
        CMD_READ => {
            let r: ReadWrite = read_struct(ring)?;
            let data = payload(ring, RW_HEADER, r.opaque_data_size, "READ")?;
            Ok(ChannelMessage::Read {
                id: r.identifier,
                hang_up: r.hang_up != 0,
                data,
            })
        }
        other => Ok(ChannelMessage::Other(other)),
    }
}

/// Decodes the GET_IMAGE_REQUIREMENTS reply at the start of the query ring.
pub fn decode_image_requirements(ring: &[u8]) -> Result<ImageRequirements, WireError> {
    read_struct(ring)
}

/// The guest's copy of the host's read-pipe counter (docs/protocol.md §5.2): ids are predicted, and the
/// host refuses a SEND whose READ_PIPE id is not the next one.
#[derive(Clone, Copy, Debug)]
pub struct ReadPipeIds {
    last: u32,
}

impl Default for ReadPipeIds {
    fn default() -> Self {
        ReadPipeIds {
            last: READ_PIPE_ID_BASE,
        }
    }
}

impl ReadPipeIds {
    /// The id the host will give the next read pipe: incremented before use, and brought back
    /// to 0x80000000 if it wraps below it. The first is 0x80000001.
    pub fn next_id(&mut self) -> u32 {
        self.last = self.last.wrapping_add(1).max(READ_PIPE_ID_BASE);
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cross_domain_protocol::wire::{ID_TYPE_READ_PIPE, ID_TYPE_VIRTGPU_BLOB};

    fn le32(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    #[test]
    fn sizes() {
        assert_eq!(SEND_HEADER, 352);
        assert_eq!(MAX_SEND_DATA, 3744);
        assert_eq!(RW_HEADER, 24);
        assert_eq!(MAX_WRITE_DATA, 4072);
        assert_eq!(IMAGE_REQUIREMENTS_SIZE, 64);
        assert_eq!(DRM_FORMAT_R8, 0x2020_3852);
    }

    #[test]
    fn init_poll_and_image_requirements_encode_as_the_spec_says() {
        let i = init(7, 8, 0x12);
        assert_eq!(i.len(), 20);
        assert_eq!(&i[..4], &[1, 0, 20, 0]);
        assert_eq!((le32(&i, 8), le32(&i, 12), le32(&i, 16)), (7, 8, 0x12));
        let p = poll();
        assert_eq!(p, [3, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let g = get_image_requirements(8192, 1, DRM_FORMAT_R8);
        assert_eq!(g.len(), 24);
        assert_eq!(&g[..4], &[2, 0, 24, 0]);
        assert_eq!(
            (le32(&g, 8), le32(&g, 12), le32(&g, 16), le32(&g, 20)),
            (8192, 1, DRM_FORMAT_R8, 0)
        );
    }

    #[test]
    fn send_layout() {
        let ids = [
            Identifier {
                id: 0x8000_0001,
                kind: ID_TYPE_READ_PIPE,
                size: 0,
            },
            Identifier {
                id: 9,
                kind: ID_TYPE_VIRTGPU_BLOB,
                size: 4096,
            },
        ];
        let s = send(&ids, b"hello").unwrap();
        assert_eq!(s.len(), 352 + 5);
        assert_eq!(s[0], 4);
        assert_eq!(u16::from_le_bytes([s[2], s[3]]), 357);
        assert_eq!((le32(&s, 8), le32(&s, 12)), (2, 5));
        assert_eq!((le32(&s, 16), le32(&s, 20)), (0x8000_0001, 9));
        assert_eq!((le32(&s, 128), le32(&s, 132)), (3, 1));
        assert_eq!(le32(&s, 244), 4096);
        assert_eq!(&s[352..], b"hello");
        assert!(send(&[], &[0; MAX_SEND_DATA]).is_ok());
        assert!(send(&[], &[0; MAX_SEND_DATA + 1]).is_err());
        assert!(send(&[ids[0]; 29], b"x").is_err());
    }

    #[test]
    fn socket_commands_encode_as_the_spec_says() {
        let uuid: [u8; 16] = std::array::from_fn(|i| i as u8 + 1);
        let a = assign_socket_uuid(uuid, 0x0203);
        assert_eq!(a.len(), 32);
        assert_eq!(&a[..4], &[13, 0, 32, 0]);
        assert_eq!(&a[8..24], &uuid);
        assert_eq!((le32(&a, 24), le32(&a, 28)), (0x0203, 0));
        let i = init_adopt(7, 8, uuid);
        assert_eq!(i.len(), 36);
        assert_eq!(&i[..4], &[1, 0, 36, 0]);
        assert_eq!((le32(&i, 8), le32(&i, 12), le32(&i, 16)), (7, 8, u32::MAX));
        assert_eq!(&i[20..], &uuid);
    }

    #[test]
    fn write_layout() {
        let w = write(0x42, b"abc", true).unwrap();
        assert_eq!(w.len(), 27);
        assert_eq!(&w[..4], &[7, 0, 27, 0]);
        assert_eq!((le32(&w, 8), le32(&w, 12), le32(&w, 16)), (0x42, 1, 3));
        assert_eq!(&w[24..], b"abc");
        assert!(write(1, &[0; MAX_WRITE_DATA + 1], false).is_err());
    }

    #[test]
    fn eventfd_commands_encode_as_the_spec_says() {
        let n = read_eventfd_new(0x1234_5678);
        assert_eq!(
            n,
            [11, 0, 16, 0, 0, 0, 0, 0, 0x78, 0x56, 0x34, 0x12, 0, 0, 0, 0]
        );
        let d = read_eventfd_destroy(7);
        assert_eq!(d, [12, 0, 16, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]);
        assert_ne!(
            d.len(),
            32,
            "32 bytes would be magma's IMPORT_VIRTIOFS_HANDLE"
        );
        let w = write_eventfd(5, 0x0102_0304_0506_0708);
        assert_eq!(w.len(), 32);
        assert_eq!(&w[..4], &[7, 0, 32, 0]);
        assert_eq!((le32(&w, 8), le32(&w, 12), le32(&w, 16)), (5, 0, 8));
        assert_eq!(&w[24..], &[8, 7, 6, 5, 4, 3, 2, 1], "little-endian");
        // u64::MAX cannot be added to any counter: hosts refuse it.
        let w = write_eventfd(5, u64::MAX);
        assert_eq!(&w[24..], &(u64::MAX - 1).to_le_bytes());
    }

    #[test]
    fn eventfd_reads_and_types_decode() {
        assert!(is_eventfd(5) && is_eventfd(6));
        for kind in [0, 1, 2, 3, 4, 7, 8] {
            assert!(!is_eventfd(kind), "{kind}");
        }
        assert_eq!(
            eventfd_value(&[3, 0, 0, 0, 0, 0, 0, 1]),
            Some(0x0100_0000_0000_0003)
        );
        for len in [0, 1, 7, 9, 16] {
            assert_eq!(eventfd_value(&vec![1; len]), None, "{len} bytes");
        }
        // A READ from an eventfd as the daemon writes it.
        let mut ring = vec![0u8; RING_SIZE];
        ring[0] = 6;
        ring[2..4].copy_from_slice(&32u16.to_le_bytes());
        ring[8..12].copy_from_slice(&2u32.to_le_bytes());
        ring[16..20].copy_from_slice(&8u32.to_le_bytes());
        ring[24..32].copy_from_slice(&42u64.to_le_bytes());
        let ChannelMessage::Read { id, hang_up, data } = decode_channel(&ring).unwrap() else {
            panic!("not a READ");
        };
        assert_eq!((id, hang_up, eventfd_value(&data)), (2, false, Some(42)));
    }

    #[test]
    fn channel_messages_decode_and_are_bounded() {
        let mut ring = vec![0u8; RING_SIZE];
        assert_eq!(decode_channel(&ring), Ok(ChannelMessage::Nothing));
        // RECEIVE with one identifier and 3 bytes.
        ring[0] = 5;
        ring[8..12].copy_from_slice(&1u32.to_le_bytes());
        ring[12..16].copy_from_slice(&3u32.to_le_bytes());
        ring[16..20].copy_from_slice(&2u32.to_le_bytes());
        ring[128..132].copy_from_slice(&4u32.to_le_bytes());
        ring[352..355].copy_from_slice(b"abc");
        assert_eq!(
            decode_channel(&ring),
            Ok(ChannelMessage::Receive {
                ids: vec![Identifier {
                    id: 2,
                    kind: 4,
                    size: 0
                }],
                data: b"abc".to_vec()
            })
        );
        ring[12..16].copy_from_slice(&3745u32.to_le_bytes());
        assert!(decode_channel(&ring).is_err(), "data past the ring");
        ring[12..16].copy_from_slice(&0u32.to_le_bytes());
        ring[8..12].copy_from_slice(&29u32.to_le_bytes());
        assert_eq!(
            decode_channel(&ring),
            Err(WireError::TooManyIdentifiers(29))
        );
        // READ.
        let mut ring = vec![0u8; RING_SIZE];
        ring[0] = 6;
        ring[8..12].copy_from_slice(&0x8000_0001u32.to_le_bytes());
        ring[12..16].copy_from_slice(&1u32.to_le_bytes());
        ring[16..20].copy_from_slice(&2u32.to_le_bytes());
        ring[24..26].copy_from_slice(b"hi");
        assert_eq!(
            decode_channel(&ring),
            Ok(ChannelMessage::Read {
                id: 0x8000_0001,
                hang_up: true,
                data: b"hi".to_vec()
            })
        );
        ring[16..20].copy_from_slice(&4073u32.to_le_bytes());
        assert!(decode_channel(&ring).is_err());
        ring[0] = 9;
        assert_eq!(decode_channel(&ring), Ok(ChannelMessage::Other(9)));
        assert!(decode_channel(&ring[..4]).is_err());
    }

    #[test]
    fn read_pipe_ids_follow_the_host_counter() {
        let mut ids = ReadPipeIds::default();
        assert_eq!(ids.next_id(), 0x8000_0001);
        assert_eq!(ids.next_id(), 0x8000_0002);
        let mut ids = ReadPipeIds { last: u32::MAX - 1 };
        assert_eq!(ids.next_id(), u32::MAX);
        assert_eq!(ids.next_id(), 0x8000_0000, "wraps back to the base");
        assert_eq!(ids.next_id(), 0x8000_0001);
    }

    #[test]
    fn init_asks_for_large_rings_in_the_header_padding() {
        let plain = init(3, 4, 2);
        assert_eq!(init_with(3, 4, 2, false), plain);
        let large = init_with(3, 4, 2, true);
        assert_eq!(large.len(), plain.len());
        assert_eq!(large[4..8], 1u32.to_le_bytes());
        assert_eq!(large[..4], plain[..4]);
        assert_eq!(large[8..], plain[8..]);
    }

    #[test]
    fn message_len_follows_the_header_within_the_ring() {
        let mut head = vec![0u8; SEND_HEADER];
        head[0] = CMD_RECEIVE;
        head[12..16].copy_from_slice(&100_000u32.to_le_bytes());
        assert_eq!(message_len(&head, LARGE_RING_SIZE), SEND_HEADER + 100_000);
        head[12..16].copy_from_slice(&10u32.to_le_bytes());
        assert_eq!(message_len(&head, LARGE_RING_SIZE), SEND_HEADER + 10);
        head[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            message_len(&head, LARGE_RING_SIZE),
            LARGE_RING_SIZE,
            "bounded by the ring"
        );
        head[0] = CMD_READ;
        head[16..20].copy_from_slice(&70_000u32.to_le_bytes());
        assert_eq!(message_len(&head, LARGE_RING_SIZE), RW_HEADER + 70_000);
        head[16..20].copy_from_slice(&5u32.to_le_bytes());
        assert_eq!(
            message_len(&head, LARGE_RING_SIZE),
            SEND_HEADER,
            "never less than read"
        );
        head[0] = 0;
        assert_eq!(message_len(&head, LARGE_RING_SIZE), SEND_HEADER);
        assert_eq!(message_len(&head[..8], 8), 8);
    }
}
