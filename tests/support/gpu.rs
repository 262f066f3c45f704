//! A tiny virtio-gpu guest driver: requests encoded byte by byte from the protocol spec
//! (docs/protocol.md §1.4–1.7, §3–§5), deliberately independent
//! of the daemon's own wire structs.
//!
//! Requests that Linux sends as several scatter-gather entries (SUBMIT_3D: header + command
//! stream; RESOURCE_CREATE_BLOB: body + memory entries) are sent the same way here, so the
//! device's handling of requests split across descriptors is exercised by every test.

use std::time::Duration;

use super::vmm::{TestVm, CONTROLQ};

// ---- virtio-gpu control header and codes (§1.4, §1.6) -------------------------------------

pub const CMD_GET_DISPLAY_INFO: u32 = 0x0100;
pub const CMD_RESOURCE_CREATE_2D: u32 = 0x0101;
pub const CMD_RESOURCE_UNREF: u32 = 0x0102;
pub const CMD_SET_SCANOUT: u32 = 0x0103;
pub const CMD_RESOURCE_FLUSH: u32 = 0x0104;
pub const CMD_TRANSFER_TO_HOST_2D: u32 = 0x0105;
pub const CMD_RESOURCE_ATTACH_BACKING: u32 = 0x0106;
pub const CMD_RESOURCE_DETACH_BACKING: u32 = 0x0107;
pub const CMD_GET_CAPSET_INFO: u32 = 0x0108;
pub const CMD_GET_CAPSET: u32 = 0x0109;
pub const CMD_GET_EDID: u32 = 0x010a;
pub const CMD_RESOURCE_ASSIGN_UUID: u32 = 0x010b;
pub const CMD_RESOURCE_CREATE_BLOB: u32 = 0x010c;
pub const CMD_SET_SCANOUT_BLOB: u32 = 0x010d;
pub const CMD_CTX_CREATE: u32 = 0x0200;
pub const CMD_CTX_DESTROY: u32 = 0x0201;
pub const CMD_CTX_ATTACH_RESOURCE: u32 = 0x0202;
pub const CMD_CTX_DETACH_RESOURCE: u32 = 0x0203;
pub const CMD_RESOURCE_CREATE_3D: u32 = 0x0204;
pub const CMD_TRANSFER_TO_HOST_3D: u32 = 0x0205;
pub const CMD_TRANSFER_FROM_HOST_3D: u32 = 0x0206;
pub const CMD_SUBMIT_3D: u32 = 0x0207;
pub const CMD_RESOURCE_MAP_BLOB: u32 = 0x0208;
pub const CMD_RESOURCE_UNMAP_BLOB: u32 = 0x0209;
pub const CMD_UPDATE_CURSOR: u32 = 0x0300;
pub const CMD_MOVE_CURSOR: u32 = 0x0301;

pub const RESP_OK_NODATA: u32 = 0x1100;
pub const RESP_OK_DISPLAY_INFO: u32 = 0x1101;
pub const RESP_OK_CAPSET_INFO: u32 = 0x1102;
pub const RESP_OK_CAPSET: u32 = 0x1103;
pub const RESP_OK_EDID: u32 = 0x1104;
pub const RESP_OK_RESOURCE_UUID: u32 = 0x1105;
pub const RESP_OK_MAP_INFO: u32 = 0x1106;
pub const RESP_OK_RESOURCE_PLANE_INFO: u32 = 0x11ff;
pub const RESP_ERR_UNSPEC: u32 = 0x1200;
pub const RESP_ERR_OUT_OF_MEMORY: u32 = 0x1201;
pub const RESP_ERR_INVALID_SCANOUT_ID: u32 = 0x1202;
pub const RESP_ERR_INVALID_RESOURCE_ID: u32 = 0x1203;
pub const RESP_ERR_INVALID_CONTEXT_ID: u32 = 0x1204;
pub const RESP_ERR_INVALID_PARAMETER: u32 = 0x1205;

pub const FLAG_FENCE: u32 = 1;
pub const FLAG_INFO_RING_IDX: u32 = 2;

pub const BLOB_MEM_GUEST: u32 = 1;
pub const BLOB_MEM_HOST3D: u32 = 2;
pub const BLOB_MEM_HOST3D_GUEST: u32 = 3;
pub const BLOB_FLAG_USE_MAPPABLE: u32 = 1;
pub const BLOB_FLAG_USE_SHAREABLE: u32 = 2;
pub const BLOB_FLAG_USE_CROSS_DEVICE: u32 = 4;

pub const CAPSET_CROSS_DOMAIN: u32 = 5;
pub const CONTEXT_INIT_CAPSET_ID_MASK: u32 = 0xff;

/// Response sizes.
pub const HDR_SIZE: usize = 24;
pub const DISPLAY_INFO_SIZE: u32 = 408;
pub const CAPSET_INFO_SIZE: u32 = 40;
pub const EDID_RESP_SIZE: u32 = 1056;
pub const MAP_INFO_SIZE: u32 = 32;
pub const UUID_RESP_SIZE: u32 = 40;

// ---- cross-domain (§3–§5) ----------------------------------------------------------------

pub const CD_CMD_INIT: u8 = 1;
pub const CD_CMD_GET_IMAGE_REQUIREMENTS: u8 = 2;
pub const CD_CMD_POLL: u8 = 3;
pub const CD_CMD_SEND: u8 = 4;
pub const CD_CMD_RECEIVE: u8 = 5;
pub const CD_CMD_READ: u8 = 6;
pub const CD_CMD_WRITE: u8 = 7;

pub const CD_ID_TYPE_VIRTGPU_BLOB: u32 = 1;
pub const CD_ID_TYPE_VIRTGPU_SYNC: u32 = 2;
pub const CD_ID_TYPE_READ_PIPE: u32 = 3;
pub const CD_ID_TYPE_WRITE_PIPE: u32 = 4;
/// magma's SOCKET: a Unix socket from the host (§5.1).
pub const CD_ID_TYPE_SOCKET: u32 = 7;
/// ASSIGN_SOCKET_UUID (§3.10).
pub const CD_CMD_ASSIGN_SOCKET_UUID: u8 = 13;
/// The channel type a 36-byte INIT names to adopt a parked socket (§3.3).
pub const CD_CHANNEL_INTERNAL_SOCKET: u32 = 0xFFFF_FFFF;

pub const CD_QUERY_RING: u8 = 0;
pub const CD_CHANNEL_RING: u8 = 1;
pub const CD_MAX_IDENTIFIERS: usize = 28;
/// Offsets inside SEND/RECEIVE (N = 28).
pub const CD_SR_NUM_IDS: usize = 8;
pub const CD_SR_DATA_SIZE: usize = 12;
pub const CD_SR_IDS: usize = 16;
pub const CD_SR_TYPES: usize = 128;
pub const CD_SR_SIZES: usize = 240;
pub const CD_SR_DATA: usize = 352;
/// READ/WRITE header size; data follows.
pub const CD_RW_HEADER: usize = 24;
/// Ring pages are 4096 bytes; RECEIVE carries at most this much data.
pub const CD_RING_SIZE: u64 = 4096;
pub const CD_MAX_RECEIVE_DATA: usize = 4096 - CD_SR_DATA;
/// First id of the read-pipe namespace (the first read pipe is `CD_READ_PIPE_ID_BASE + 1`).
pub const CD_READ_PIPE_ID_BASE: u32 = 0x8000_0000;
/// Size of the GET_IMAGE_REQUIREMENTS reply in the query ring.
pub const CD_IMAGE_REQUIREMENTS_SIZE: usize = 64;

/// Written over the channel ring header before each POLL so an untouched ring is detectable.
const RING_POISON: [u8; 8] = [0xee; 8];

// ---- encoding helpers ----------------------------------------------------------------------

fn put32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}

fn put64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}

/// Little-endian u32 at `off`.
pub fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

/// Little-endian u64 at `off`.
pub fn le64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// The 24-byte control header.
pub fn hdr(type_: u32, flags: u32, fence_id: u64, ctx_id: u32, ring_idx: u8) -> [u8; 24] {
    let mut h = [0u8; 24];
    h[0..4].copy_from_slice(&type_.to_le_bytes());
    h[4..8].copy_from_slice(&flags.to_le_bytes());
    h[8..16].copy_from_slice(&fence_id.to_le_bytes());
    h[16..20].copy_from_slice(&ctx_id.to_le_bytes());
    h[20] = ring_idx;
    h
}

/// A decoded control header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtrlHdr {
    pub type_: u32,
    pub flags: u32,
    pub fence_id: u64,
    pub ctx_id: u32,
    pub ring_idx: u8,
}

/// Decodes the header of a response (panics if shorter than 24 bytes).
pub fn parse_hdr(resp: &[u8]) -> CtrlHdr {
    assert!(
        resp.len() >= HDR_SIZE,
        "response of {} bytes is shorter than the 24-byte header: {resp:02x?}",
        resp.len()
    );
    CtrlHdr {
        type_: le32(resp, 0),
        flags: le32(resp, 4),
        fence_id: le64(resp, 8),
        ctx_id: le32(resp, 16),
        ring_idx: resp[20],
    }
}

/// The response type (panics if shorter than 4 bytes).
pub fn resp_type(resp: &[u8]) -> u32 {
    assert!(
        resp.len() >= 4,
        "response of {} bytes has no type: {resp:02x?}",
        resp.len()
    );
    le32(resp, 0)
}

/// Name of a response code, for messages.
pub fn resp_name(t: u32) -> &'static str {
    match t {
        RESP_OK_NODATA => "OK_NODATA",
        RESP_OK_DISPLAY_INFO => "OK_DISPLAY_INFO",
        RESP_OK_CAPSET_INFO => "OK_CAPSET_INFO",
        RESP_OK_CAPSET => "OK_CAPSET",
        RESP_OK_EDID => "OK_EDID",
        RESP_OK_RESOURCE_UUID => "OK_RESOURCE_UUID",
        RESP_OK_MAP_INFO => "OK_MAP_INFO",
        RESP_OK_RESOURCE_PLANE_INFO => "OK_RESOURCE_PLANE_INFO",
        RESP_ERR_UNSPEC => "ERR_UNSPEC",
        RESP_ERR_OUT_OF_MEMORY => "ERR_OUT_OF_MEMORY",
        RESP_ERR_INVALID_SCANOUT_ID => "ERR_INVALID_SCANOUT_ID",
        RESP_ERR_INVALID_RESOURCE_ID => "ERR_INVALID_RESOURCE_ID",
        RESP_ERR_INVALID_CONTEXT_ID => "ERR_INVALID_CONTEXT_ID",
        RESP_ERR_INVALID_PARAMETER => "ERR_INVALID_PARAMETER",
        _ => "unknown",
    }
}

/// Panics unless `resp` has type `expected`.
#[track_caller]
pub fn assert_resp(resp: &[u8], expected: u32, what: &str) {
    let got = resp_type(resp);
    assert!(
        got == expected,
        "{what}: expected {} ({expected:#x}), got {} ({got:#x}); response {resp:02x?}",
        resp_name(expected),
        resp_name(got)
    );
}

/// Panics unless `resp` is OK_NODATA.
#[track_caller]
pub fn assert_ok(resp: &[u8], what: &str) {
    assert_resp(resp, RESP_OK_NODATA, what);
}

/// Header flags and ring for an optional fence: `(fence_id, Some(ring))` selects a
/// per-context ring timeline, `(fence_id, None)` the global one.
pub fn fence_fields(fence: Option<(u64, Option<u8>)>) -> (u32, u64, u8) {
    match fence {
        None => (0, 0, 0),
        Some((id, None)) => (FLAG_FENCE, id, 0),
        Some((id, Some(ring))) => (FLAG_FENCE | FLAG_INFO_RING_IDX, id, ring),
    }
}

// ---- request encoders (§1.7) ---------------------------------------------------------------

pub fn req_get_display_info() -> Vec<u8> {
    hdr(CMD_GET_DISPLAY_INFO, 0, 0, 0, 0).to_vec()
}

pub fn req_get_capset_info(index: u32) -> Vec<u8> {
    let mut v = hdr(CMD_GET_CAPSET_INFO, 0, 0, 0, 0).to_vec();
    put32(&mut v, index);
    put32(&mut v, 0);
    v
}

pub fn req_get_capset(id: u32, version: u32) -> Vec<u8> {
    let mut v = hdr(CMD_GET_CAPSET, 0, 0, 0, 0).to_vec();
    put32(&mut v, id);
    put32(&mut v, version);
    v
}

pub fn req_get_edid(scanout: u32) -> Vec<u8> {
    let mut v = hdr(CMD_GET_EDID, 0, 0, 0, 0).to_vec();
    put32(&mut v, scanout);
    put32(&mut v, 0);
    v
}

/// CTX_CREATE (96 bytes): nlen @24, context_init @28, debug_name[64] @32.
pub fn req_ctx_create(ctx_id: u32, context_init: u32, name: &[u8]) -> Vec<u8> {
    assert!(name.len() <= 64, "debug name longer than 64 bytes");
    let mut v = hdr(CMD_CTX_CREATE, 0, 0, ctx_id, 0).to_vec();
    put32(&mut v, name.len() as u32);
    put32(&mut v, context_init);
    let mut n = [0u8; 64];
    n[..name.len()].copy_from_slice(name);
    v.extend_from_slice(&n);
    v
}

pub fn req_ctx_destroy(ctx_id: u32) -> Vec<u8> {
    hdr(CMD_CTX_DESTROY, 0, 0, ctx_id, 0).to_vec()
}

/// Requests with a resource id @24 and padding @28 (32 bytes).
pub fn req_resource(cmd: u32, ctx_id: u32, res_id: u32) -> Vec<u8> {
    let mut v = hdr(cmd, 0, 0, ctx_id, 0).to_vec();
    put32(&mut v, res_id);
    put32(&mut v, 0);
    v
}

pub fn req_ctx_attach(ctx_id: u32, res_id: u32) -> Vec<u8> {
    req_resource(CMD_CTX_ATTACH_RESOURCE, ctx_id, res_id)
}

pub fn req_ctx_detach(ctx_id: u32, res_id: u32) -> Vec<u8> {
    req_resource(CMD_CTX_DETACH_RESOURCE, ctx_id, res_id)
}

pub fn req_resource_unref(res_id: u32) -> Vec<u8> {
    req_resource(CMD_RESOURCE_UNREF, 0, res_id)
}

pub fn req_resource_assign_uuid(res_id: u32) -> Vec<u8> {
    req_resource(CMD_RESOURCE_ASSIGN_UUID, 0, res_id)
}

pub fn req_resource_unmap_blob(res_id: u32) -> Vec<u8> {
    req_resource(CMD_RESOURCE_UNMAP_BLOB, 0, res_id)
}

/// RESOURCE_MAP_BLOB (40 bytes): resource_id @24, pad @28, offset @32.
pub fn req_resource_map_blob(res_id: u32, offset: u64) -> Vec<u8> {
    let mut v = req_resource(CMD_RESOURCE_MAP_BLOB, 0, res_id);
    put64(&mut v, offset);
    v
}

/// Parameters of RESOURCE_CREATE_BLOB.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CreateBlob {
    /// Header ctx_id (0 for guest blobs from Linux; the context for HOST3D blobs).
    pub ctx_id: u32,
    pub res_id: u32,
    pub blob_mem: u32,
    pub blob_flags: u32,
    pub blob_id: u64,
    pub size: u64,
    /// Guest memory entries (addr, length).
    pub entries: Vec<(u64, u32)>,
    /// Value for `nr_entries`; `None` = `entries.len()` (set it to lie about the count).
    pub nr_entries: Option<u32>,
}

impl CreateBlob {
    /// The 56-byte body: resource_id @24, blob_mem @28, blob_flags @32, nr_entries @36,
    /// blob_id @40, size @48.
    pub fn body(&self) -> Vec<u8> {
        let mut v = hdr(CMD_RESOURCE_CREATE_BLOB, 0, 0, self.ctx_id, 0).to_vec();
        put32(&mut v, self.res_id);
        put32(&mut v, self.blob_mem);
        put32(&mut v, self.blob_flags);
        put32(&mut v, self.nr_entries.unwrap_or(self.entries.len() as u32));
        put64(&mut v, self.blob_id);
        put64(&mut v, self.size);
        v
    }

    /// The memory entries: {addr u64, length u32, pad u32} each.
    pub fn entries_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16 * self.entries.len());
        for &(addr, len) in &self.entries {
            put64(&mut v, addr);
            put32(&mut v, len);
            put32(&mut v, 0);
        }
        v
    }

    /// Body and entries in one buffer.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.body();
        v.extend_from_slice(&self.entries_bytes());
        v
    }
}

/// SUBMIT_3D header part (32 bytes): hdr, size @24, padding @28; the stream follows.
pub fn req_submit_3d_hdr(ctx_id: u32, cmds_len: u32, fence: Option<(u64, Option<u8>)>) -> Vec<u8> {
    let (flags, fence_id, ring) = fence_fields(fence);
    let mut v = hdr(CMD_SUBMIT_3D, flags, fence_id, ctx_id, ring).to_vec();
    put32(&mut v, cmds_len);
    put32(&mut v, 0);
    v
}

/// Whole SUBMIT_3D request in one buffer.
pub fn req_submit_3d(ctx_id: u32, cmds: &[u8], fence: Option<(u64, Option<u8>)>) -> Vec<u8> {
    let mut v = req_submit_3d_hdr(ctx_id, cmds.len() as u32, fence);
    v.extend_from_slice(cmds);
    v
}

// ---- cross-domain command encoders (§3) ----------------------------------------------------

/// The 8-byte cross-domain command header: cmd @0, ring_idx @1 (0), cmd_size @2, pad @4.
pub fn cd_header(cmd: u8, cmd_size: u16) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[0] = cmd;
    h[2..4].copy_from_slice(&cmd_size.to_le_bytes());
    h
}

/// INIT, 20-byte form: query_ring_id @8, channel_ring_id @12, channel_type @16.
pub fn cd_init(query_ring: u32, channel_ring: u32, channel_type: u32) -> Vec<u8> {
    let mut v = cd_header(CD_CMD_INIT, 20).to_vec();
    put32(&mut v, query_ring);
    put32(&mut v, channel_ring);
    put32(&mut v, channel_type);
    v
}

/// INIT, legacy 16-byte form: query_ring_id @8, channel_type @12.
pub fn cd_init_legacy(ring: u32, channel_type: u32) -> Vec<u8> {
    let mut v = cd_header(CD_CMD_INIT, 16).to_vec();
    put32(&mut v, ring);
    put32(&mut v, channel_type);
    v
}

/// INIT, libkrun 24-byte form: 20-byte form + protocol_version @20.
pub fn cd_init_v24(
    query_ring: u32,
    channel_ring: u32,
    channel_type: u32,
    protocol_version: u32,
) -> Vec<u8> {
    let mut v = cd_init(query_ring, channel_ring, channel_type);
    v[2..4].copy_from_slice(&24u16.to_le_bytes());
    put32(&mut v, protocol_version);
    v
}

/// INIT, magma 36-byte form: 20-byte form + internal_socket_uuid[16] @20.
pub fn cd_init_36(
    query_ring: u32,
    channel_ring: u32,
    channel_type: u32,
    uuid: [u8; 16],
) -> Vec<u8> {
    let mut v = cd_init(query_ring, channel_ring, channel_type);
    v[2..4].copy_from_slice(&36u16.to_le_bytes());
    v.extend_from_slice(&uuid);
    v
}

/// ASSIGN_SOCKET_UUID (32 bytes): socket_uuid[16] @8, id @24, pad @28.
pub fn cd_assign_socket_uuid(uuid: [u8; 16], id: u32) -> Vec<u8> {
    let mut v = cd_header(CD_CMD_ASSIGN_SOCKET_UUID, 32).to_vec();
    v.extend_from_slice(&uuid);
    put32(&mut v, id);
    put32(&mut v, 0);
    v
}

/// POLL (16 bytes: header + u64 0).
pub fn cd_poll() -> Vec<u8> {
    let mut v = cd_header(CD_CMD_POLL, 16).to_vec();
    put64(&mut v, 0);
    v
}

/// SEND with N = 28: num_identifiers @8, opaque_data_size @12, identifiers @16,
/// identifier_types @128, identifier_sizes @240 (zero), data @352; cmd_size = 352 + len.
pub fn cd_send(data: &[u8], ids: &[(u32, u32)]) -> Vec<u8> {
    assert!(
        ids.len() <= CD_MAX_IDENTIFIERS,
        "{} identifiers > {CD_MAX_IDENTIFIERS}",
        ids.len()
    );
    let size = CD_SR_DATA + data.len();
    assert!(
        size <= usize::from(u16::MAX),
        "SEND of {size} bytes overflows cmd_size"
    );
    let mut v = vec![0u8; size];
    v[..8].copy_from_slice(&cd_header(CD_CMD_SEND, size as u16));
    v[CD_SR_NUM_IDS..CD_SR_NUM_IDS + 4].copy_from_slice(&(ids.len() as u32).to_le_bytes());
    v[CD_SR_DATA_SIZE..CD_SR_DATA_SIZE + 4].copy_from_slice(&(data.len() as u32).to_le_bytes());
    for (i, &(id, ty)) in ids.iter().enumerate() {
        v[CD_SR_IDS + 4 * i..CD_SR_IDS + 4 * i + 4].copy_from_slice(&id.to_le_bytes());
        v[CD_SR_TYPES + 4 * i..CD_SR_TYPES + 4 * i + 4].copy_from_slice(&ty.to_le_bytes());
    }
    v[CD_SR_DATA..].copy_from_slice(data);
    v
}

/// WRITE: identifier @8, hang_up @12, opaque_data_size @16, pad @20, data @24.
pub fn cd_write(id: u32, data: &[u8], hang_up: bool) -> Vec<u8> {
    let size = CD_RW_HEADER + data.len();
    assert!(
        size <= usize::from(u16::MAX),
        "WRITE of {size} bytes overflows cmd_size"
    );
    let mut v = cd_header(CD_CMD_WRITE, size as u16).to_vec();
    put32(&mut v, id);
    put32(&mut v, u32::from(hang_up));
    put32(&mut v, data.len() as u32);
    put32(&mut v, 0);
    v.extend_from_slice(data);
    v
}

/// GET_IMAGE_REQUIREMENTS (24 bytes): width @8, height @12, drm_format @16, flags @20.
pub fn cd_image_requirements(width: u32, height: u32, fourcc: u32, flags: u32) -> Vec<u8> {
    let mut v = cd_header(CD_CMD_GET_IMAGE_REQUIREMENTS, 24).to_vec();
    put32(&mut v, width);
    put32(&mut v, height);
    put32(&mut v, fourcc);
    put32(&mut v, flags);
    v
}

// ---- decoders --------------------------------------------------------------------------------

/// GET_CAPSET_INFO answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapsetInfo {
    pub capset_id: u32,
    pub max_version: u32,
    pub max_size: u32,
}

/// Decodes OK_CAPSET_INFO (panics on another type or a short response).
pub fn parse_capset_info(resp: &[u8]) -> CapsetInfo {
    assert_resp(resp, RESP_OK_CAPSET_INFO, "GET_CAPSET_INFO");
    assert!(resp.len() >= 36, "OK_CAPSET_INFO of {} bytes", resp.len());
    CapsetInfo {
        capset_id: le32(resp, 24),
        max_version: le32(resp, 28),
        max_size: le32(resp, 32),
    }
}

/// The cross-domain GET_IMAGE_REQUIREMENTS reply (64 bytes, §3.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

pub fn parse_image_requirements(b: &[u8]) -> ImageRequirements {
    assert!(b.len() >= CD_IMAGE_REQUIREMENTS_SIZE);
    let arr = |off: usize| {
        [
            le32(b, off),
            le32(b, off + 4),
            le32(b, off + 8),
            le32(b, off + 12),
        ]
    };
    ImageRequirements {
        strides: arr(0),
        offsets: arr(16),
        modifier: le64(b, 32),
        size: le64(b, 40),
        blob_id: le32(b, 48),
        map_info: le32(b, 52),
        memory_idx: le32(b, 56) as i32,
        physical_device_idx: le32(b, 60) as i32,
    }
}

/// A message the device wrote into the channel ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelMsg {
    /// RECEIVE: identifiers as (id, type, size) and the opaque data.
    Receive {
        ids: Vec<(u32, u32, u32)>,
        data: Vec<u8>,
    },
    /// READ from a read pipe (or eventfd).
    Read {
        id: u32,
        hang_up: bool,
        data: Vec<u8>,
    },
    /// Any other command id.
    Other(u8),
    /// The fence completed but the ring header still holds the poison written before POLL.
    Untouched,
}

/// Decodes the channel ring contents (at least the header; usually the whole page).
/// Panics on a RECEIVE/READ whose counts do not fit the ring — that is a device bug.
pub fn decode_channel_msg(ring: &[u8]) -> ChannelMsg {
    assert!(ring.len() >= 8, "channel ring shorter than a header");
    if ring[..8] == RING_POISON {
        return ChannelMsg::Untouched;
    }
    match ring[0] {
        CD_CMD_RECEIVE => {
            assert!(
                ring.len() >= CD_SR_DATA,
                "RECEIVE header does not fit the ring"
            );
            let n = le32(ring, CD_SR_NUM_IDS) as usize;
            let size = le32(ring, CD_SR_DATA_SIZE) as usize;
            assert!(
                n <= CD_MAX_IDENTIFIERS,
                "RECEIVE with {n} identifiers (max {CD_MAX_IDENTIFIERS})"
            );
            assert!(
                CD_SR_DATA + size <= ring.len(),
                "RECEIVE with {size} data bytes does not fit a ring of {} bytes",
                ring.len()
            );
            let ids = (0..n)
                .map(|i| {
                    (
                        le32(ring, CD_SR_IDS + 4 * i),
                        le32(ring, CD_SR_TYPES + 4 * i),
                        le32(ring, CD_SR_SIZES + 4 * i),
                    )
                })
                .collect();
            ChannelMsg::Receive {
                ids,
                data: ring[CD_SR_DATA..CD_SR_DATA + size].to_vec(),
            }
        }
        CD_CMD_READ => {
            assert!(
                ring.len() >= CD_RW_HEADER,
                "READ header does not fit the ring"
            );
            let size = le32(ring, 16) as usize;
            assert!(
                CD_RW_HEADER + size <= ring.len(),
                "READ with {size} data bytes does not fit a ring of {} bytes",
                ring.len()
            );
            ChannelMsg::Read {
                id: le32(ring, 8),
                hang_up: le32(ring, 12) != 0,
                data: ring[CD_RW_HEADER..CD_RW_HEADER + size].to_vec(),
            }
        }
        other => ChannelMsg::Other(other),
    }
}

// ---- guest blobs -----------------------------------------------------------------------------

/// A GUEST blob resource: its id and the guest memory behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestBlob {
    pub res_id: u32,
    pub size: u64,
    /// Scatter list as sent in CREATE_BLOB (addr, len); not necessarily ascending.
    pub entries: Vec<(u64, u32)>,
}

impl GuestBlob {
    /// Guest address of the first entry.
    pub fn gpa(&self) -> u64 {
        self.entries[0].0
    }

    /// Guest address of byte `offset` of the blob.
    pub fn gpa_at(&self, mut offset: u64) -> u64 {
        for &(addr, len) in &self.entries {
            if offset < u64::from(len) {
                return addr + offset;
            }
            offset -= u64::from(len);
        }
        panic!("offset past the end of blob {}", self.res_id);
    }
}

// ---- driver operations on the fake VM ------------------------------------------------------

impl TestVm {
    /// Number of scatter entries for guest blobs larger than one page.
    pub fn set_blob_pieces(&mut self, n: usize) {
        self.blob_pieces = n.max(1);
    }

    pub fn get_display_info(&mut self) -> Vec<u8> {
        self.ctrl(&req_get_display_info(), DISPLAY_INFO_SIZE)
    }

    pub fn get_capset_info(&mut self, index: u32) -> Vec<u8> {
        self.ctrl(&req_get_capset_info(index), CAPSET_INFO_SIZE)
    }

    /// GET_CAPSET with room for a 64-byte capset (the cross-domain one is 16).
    pub fn get_capset(&mut self, id: u32, version: u32) -> Vec<u8> {
        self.ctrl(&req_get_capset(id, version), (HDR_SIZE + 64) as u32)
    }

    pub fn get_edid(&mut self, scanout: u32) -> Vec<u8> {
        self.ctrl(&req_get_edid(scanout), EDID_RESP_SIZE)
    }

    /// CTX_CREATE with debug name "vhost-test".
    pub fn ctx_create(&mut self, ctx_id: u32, context_init: u32) -> Vec<u8> {
        self.ctx_create_named(ctx_id, context_init, b"vhost-test")
    }

    pub fn ctx_create_named(&mut self, ctx_id: u32, context_init: u32, name: &[u8]) -> Vec<u8> {
        self.ctrl(&req_ctx_create(ctx_id, context_init, name), HDR_SIZE as u32)
    }

    pub fn ctx_destroy(&mut self, ctx_id: u32) -> Vec<u8> {
        self.ctrl(&req_ctx_destroy(ctx_id), HDR_SIZE as u32)
    }

    pub fn ctx_attach(&mut self, ctx_id: u32, res_id: u32) -> Vec<u8> {
        self.ctrl(&req_ctx_attach(ctx_id, res_id), HDR_SIZE as u32)
    }

    pub fn ctx_detach(&mut self, ctx_id: u32, res_id: u32) -> Vec<u8> {
        self.ctrl(&req_ctx_detach(ctx_id, res_id), HDR_SIZE as u32)
    }

    pub fn resource_unref(&mut self, res_id: u32) -> Vec<u8> {
        self.ctrl(&req_resource_unref(res_id), HDR_SIZE as u32)
    }

    pub fn resource_assign_uuid(&mut self, res_id: u32) -> Vec<u8> {
        self.ctrl(&req_resource_assign_uuid(res_id), UUID_RESP_SIZE)
    }

    pub fn resource_map_blob(&mut self, res_id: u32, offset: u64) -> Vec<u8> {
        self.ctrl(&req_resource_map_blob(res_id, offset), MAP_INFO_SIZE)
    }

    pub fn resource_unmap_blob(&mut self, res_id: u32) -> Vec<u8> {
        self.ctrl(&req_resource_unmap_blob(res_id), HDR_SIZE as u32)
    }

    /// RESOURCE_CREATE_BLOB sent like Linux does: body and entries as two buffers (one
    /// buffer when there are no entries). Returns the raw response.
    pub fn create_blob_raw(&mut self, b: &CreateBlob) -> Vec<u8> {
        let body = b.body();
        let entries = b.entries_bytes();
        // Room for OK_RESOURCE_PLANE_INFO in case the device sends it.
        let resp_len = 128;
        if entries.is_empty() {
            self.request_sg(CONTROLQ, &[&body], resp_len)
        } else {
            self.request_sg(CONTROLQ, &[&body, &entries], resp_len)
        }
    }

    /// Allocates `size` bytes of guest memory for a blob: one entry up to a page, otherwise
    /// `blob_pieces` page-multiple entries allocated separately and listed in descending
    /// address order, so a device that assumes contiguity reads the wrong memory.
    pub fn alloc_blob_memory(&mut self, size: u64) -> Vec<(u64, u32)> {
        assert!(size > 0, "blob size 0");
        let pieces = if size > 4096 {
            self.blob_pieces.min(size.div_ceil(4096) as usize)
        } else {
            1
        };
        let per = (size.div_ceil(pieces as u64)).div_ceil(4096) * 4096;
        let mut lens = Vec::new();
        let mut left = size;
        for _ in 0..pieces {
            let l = left.min(per);
            lens.push(l);
            left -= l;
        }
        assert_eq!(left, 0);
        // Allocate the last piece first: ascending allocation + reversed listing.
        let mut entries = vec![(0u64, 0u32); pieces];
        for i in (0..pieces).rev() {
            let len = lens[i];
            let addr = self.alloc(len, 4096);
            self.write_mem(addr, &vec![0u8; len as usize]);
            entries[i] = (addr, u32::try_from(len).expect("blob entry exceeds 4 GiB"));
        }
        entries
    }

    /// Creates a GUEST blob (blob_mem GUEST, USE_MAPPABLE, ctx_id 0 like Linux) backed by
    /// fresh zeroed guest memory; asserts OK_NODATA.
    pub fn create_guest_blob(&mut self, res_id: u32, size: u64) -> GuestBlob {
        self.create_guest_blob_in(0, res_id, size)
    }

    /// [`Self::create_guest_blob`] with a header ctx_id.
    pub fn create_guest_blob_in(&mut self, ctx_id: u32, res_id: u32, size: u64) -> GuestBlob {
        let entries = self.alloc_blob_memory(size);
        let resp = self.create_blob_raw(&CreateBlob {
            ctx_id,
            res_id,
            blob_mem: BLOB_MEM_GUEST,
            blob_flags: BLOB_FLAG_USE_MAPPABLE,
            blob_id: 0,
            size,
            entries: entries.clone(),
            nr_entries: None,
        });
        assert_ok(&resp, "RESOURCE_CREATE_BLOB (guest)");
        GuestBlob {
            res_id,
            size,
            entries,
        }
    }

    /// HOST3D blob from a context item (`blob_id`), no entries; returns the raw response.
    pub fn create_host_blob(
        &mut self,
        ctx_id: u32,
        res_id: u32,
        blob_id: u64,
        size: u64,
        flags: u32,
    ) -> Vec<u8> {
        self.create_blob_raw(&CreateBlob {
            ctx_id,
            res_id,
            blob_mem: BLOB_MEM_HOST3D,
            blob_flags: flags,
            blob_id,
            size,
            entries: Vec::new(),
            nr_entries: None,
        })
    }

    /// Frees the guest memory of a blob (after RESOURCE_UNREF).
    pub fn free_blob_memory(&mut self, blob: &GuestBlob) {
        for &(addr, _) in &blob.entries {
            self.free(addr);
        }
    }

    /// Reads `len` bytes at `offset` of a guest blob, following its scatter list.
    pub fn read_blob(&self, blob: &GuestBlob, offset: u64, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        let mut skip = offset;
        for &(addr, elen) in &blob.entries {
            let elen = u64::from(elen);
            if skip >= elen {
                skip -= elen;
                continue;
            }
            let take = ((elen - skip) as usize).min(len - out.len());
            out.extend_from_slice(&self.read_mem(addr + skip, take));
            skip = 0;
            if out.len() == len {
                break;
            }
        }
        assert_eq!(out.len(), len, "read past the end of blob {}", blob.res_id);
        out
    }

    /// Writes `data` at `offset` of a guest blob, following its scatter list.
    pub fn write_blob(&self, blob: &GuestBlob, offset: u64, data: &[u8]) {
        let mut done = 0;
        let mut skip = offset;
        for &(addr, elen) in &blob.entries {
            let elen = u64::from(elen);
            if skip >= elen {
                skip -= elen;
                continue;
            }
            let take = ((elen - skip) as usize).min(data.len() - done);
            self.write_mem(addr + skip, &data[done..done + take]);
            done += take;
            skip = 0;
            if done == data.len() {
                break;
            }
        }
        assert_eq!(
            done,
            data.len(),
            "write past the end of blob {}",
            blob.res_id
        );
    }

    /// SUBMIT_3D, sent like Linux (32-byte header buffer + command-stream buffer), without
    /// waiting. `fence`: `(fence_id, Some(ring))` → FENCE|INFO_RING_IDX + ring_idx;
    /// `(fence_id, None)` → FENCE on the global timeline. Returns the head.
    pub fn submit_3d(&mut self, ctx_id: u32, cmds: &[u8], fence: Option<(u64, Option<u8>)>) -> u16 {
        let h = req_submit_3d_hdr(ctx_id, cmds.len() as u32, fence);
        if cmds.is_empty() {
            self.submit(CONTROLQ, &[&h], &[HDR_SIZE as u32])
        } else {
            self.submit(CONTROLQ, &[&h, cmds], &[HDR_SIZE as u32])
        }
    }

    /// [`Self::submit_3d`] and wait (up to `self.timeout`) for the response.
    pub fn submit_3d_wait(
        &mut self,
        ctx_id: u32,
        cmds: &[u8],
        fence: Option<(u64, Option<u8>)>,
    ) -> Vec<u8> {
        let head = self.submit_3d(ctx_id, cmds, fence);
        let timeout = self.timeout;
        self.wait_for(CONTROLQ, head, timeout).unwrap_or_else(|| {
            panic!("SUBMIT_3D (ctx {ctx_id}, fence {fence:?}) got no response within {timeout:?}")
        })
    }
}

// ---- cross-domain context helper -----------------------------------------------------------

/// A cross-domain context set up the way sommelier does it (docs/protocol.md §9.1): CTX_CREATE with
/// context_init 5, a query ring and a channel ring (4096-byte GUEST blobs, each created and
/// attached), then INIT (20-byte form).
#[derive(Clone, Debug)]
pub struct CrossDomainContext {
    pub ctx_id: u32,
    pub query_ring: GuestBlob,
    pub channel_ring: GuestBlob,
}

impl CrossDomainContext {
    /// CTX_CREATE + both rings + attach, without INIT (for tests of INIT itself).
    pub fn create(vm: &mut TestVm, ctx_id: u32) -> Self {
        assert_ok(&vm.ctx_create(ctx_id, CAPSET_CROSS_DOMAIN), "CTX_CREATE");
        let q = vm.next_resource_id();
        let query_ring = vm.create_guest_blob(q, CD_RING_SIZE);
        assert_ok(
            &vm.ctx_attach(ctx_id, q),
            "CTX_ATTACH_RESOURCE (query ring)",
        );
        let c = vm.next_resource_id();
        let channel_ring = vm.create_guest_blob(c, CD_RING_SIZE);
        assert_ok(
            &vm.ctx_attach(ctx_id, c),
            "CTX_ATTACH_RESOURCE (channel ring)",
        );
        CrossDomainContext {
            ctx_id,
            query_ring,
            channel_ring,
        }
    }

    /// [`Self::create`] + INIT(query ring, channel ring, channel_type), asserting OK.
    pub fn open(vm: &mut TestVm, ctx_id: u32, channel_type: u32) -> Self {
        let ctx = Self::create(vm, ctx_id);
        let init = cd_init(ctx.query_ring.res_id, ctx.channel_ring.res_id, channel_type);
        assert_ok(&ctx.submit(vm, &init), "cross-domain INIT");
        ctx
    }

    /// Unfenced SUBMIT_3D of `cmds` on this context; returns the response.
    pub fn submit(&self, vm: &mut TestVm, cmds: &[u8]) -> Vec<u8> {
        vm.submit_3d_wait(self.ctx_id, cmds, None)
    }

    /// POLL fenced on ring 1 with `fence_id`; poisons the channel ring header first.
    /// Returns the head to pass to [`Self::wait_poll`].
    pub fn poll(&self, vm: &mut TestVm, fence_id: u64) -> u16 {
        vm.write_mem(self.channel_ring.gpa(), &RING_POISON);
        vm.submit_3d(
            self.ctx_id,
            &cd_poll(),
            Some((fence_id, Some(CD_CHANNEL_RING))),
        )
    }

    /// POLL with the next fence id of the VM's global counter.
    pub fn poll_next(&self, vm: &mut TestVm) -> u16 {
        let f = vm.next_fence_id();
        self.poll(vm, f)
    }

    /// Waits for the POLL's fenced response (asserting OK_NODATA) and decodes the channel
    /// ring. `None` on timeout (the POLL stays outstanding).
    pub fn wait_poll(&self, vm: &mut TestVm, head: u16, timeout: Duration) -> Option<ChannelMsg> {
        let resp = vm.wait_for(CONTROLQ, head, timeout)?;
        assert_ok(&resp, "POLL fence");
        Some(self.read_channel(vm))
    }

    /// Decodes whatever is in the channel ring now.
    pub fn read_channel(&self, vm: &TestVm) -> ChannelMsg {
        decode_channel_msg(&vm.read_blob(&self.channel_ring, 0, CD_RING_SIZE as usize))
    }

    /// POLL + wait; panics on timeout.
    pub fn recv(&self, vm: &mut TestVm, timeout: Duration) -> ChannelMsg {
        let head = self.poll_next(vm);
        self.wait_poll(vm, head, timeout)
            .unwrap_or_else(|| panic!("ctx {}: no channel message within {timeout:?}", self.ctx_id))
    }

    /// SEND (unfenced), asserting OK.
    pub fn send(&self, vm: &mut TestVm, data: &[u8], ids: &[(u32, u32)]) {
        assert_ok(&self.try_send(vm, data, ids), "cross-domain SEND");
    }

    /// SEND (unfenced); returns the response.
    pub fn try_send(&self, vm: &mut TestVm, data: &[u8], ids: &[(u32, u32)]) -> Vec<u8> {
        self.submit(vm, &cd_send(data, ids))
    }

    /// WRITE (unfenced), asserting OK.
    pub fn write(&self, vm: &mut TestVm, id: u32, data: &[u8], hang_up: bool) {
        assert_ok(&self.try_write(vm, id, data, hang_up), "cross-domain WRITE");
    }

    pub fn try_write(&self, vm: &mut TestVm, id: u32, data: &[u8], hang_up: bool) -> Vec<u8> {
        self.submit(vm, &cd_write(id, data, hang_up))
    }

    /// GET_IMAGE_REQUIREMENTS fenced on ring 0 (like sommelier), then reads the 64-byte
    /// reply from the query ring. `Err(response)` if the submit did not return OK.
    pub fn image_requirements(
        &self,
        vm: &mut TestVm,
        width: u32,
        height: u32,
        fourcc: u32,
        flags: u32,
    ) -> Result<ImageRequirements, Vec<u8>> {
        let fence = vm.next_fence_id();
        let resp = vm.submit_3d_wait(
            self.ctx_id,
            &cd_image_requirements(width, height, fourcc, flags),
            Some((fence, Some(CD_QUERY_RING))),
        );
        if resp_type(&resp) != RESP_OK_NODATA {
            return Err(resp);
        }
        let b = vm.read_blob(&self.query_ring, 0, CD_IMAGE_REQUIREMENTS_SIZE);
        Ok(parse_image_requirements(&b))
    }

    /// CTX_DESTROY; returns the response.
    pub fn destroy(self, vm: &mut TestVm) -> Vec<u8> {
        vm.ctx_destroy(self.ctx_id)
    }
}
