//! virtio-gpu wire format: command and response codes, flags, and every request/response
//! struct the device reads or writes (virtio spec "GPU device", Linux `virtio_gpu.h`).
//!
//! All structs are `#[repr(C)]` with natural alignment and no implicit padding, read and
//! written as little-endian (the crate refuses to build on big-endian hosts). Field offsets are
//! pinned by the unit tests at the bottom; changing a layout here changes the guest ABI.

use vm_memory::ByteValued;

#[cfg(target_endian = "big")]
compile_error!("the virtio-gpu wire structs are read as native little-endian values");

// 2D commands.
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
// 3D commands.
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
// Cursor queue.
pub const CMD_UPDATE_CURSOR: u32 = 0x0300;
pub const CMD_MOVE_CURSOR: u32 = 0x0301;

// Success responses.
pub const RESP_OK_NODATA: u32 = 0x1100;
pub const RESP_OK_DISPLAY_INFO: u32 = 0x1101;
pub const RESP_OK_CAPSET_INFO: u32 = 0x1102;
pub const RESP_OK_CAPSET: u32 = 0x1103;
pub const RESP_OK_EDID: u32 = 0x1104;
pub const RESP_OK_RESOURCE_UUID: u32 = 0x1105;
pub const RESP_OK_MAP_INFO: u32 = 0x1106;
// Error responses.
pub const RESP_ERR_UNSPEC: u32 = 0x1200;
pub const RESP_ERR_OUT_OF_MEMORY: u32 = 0x1201;
pub const RESP_ERR_INVALID_SCANOUT_ID: u32 = 0x1202;
pub const RESP_ERR_INVALID_RESOURCE_ID: u32 = 0x1203;
pub const RESP_ERR_INVALID_CONTEXT_ID: u32 = 0x1204;
pub const RESP_ERR_INVALID_PARAMETER: u32 = 0x1205;

/// `CtrlHdr::flags`: the request carries a fence.
pub const FLAG_FENCE: u32 = 1 << 0;
/// `CtrlHdr::flags`: the fence belongs to the `(ctx_id, ring_idx)` timeline.
pub const FLAG_INFO_RING_IDX: u32 = 1 << 1;

/// Device feature bits (virtio-gpu specific).
pub const F_VIRGL: u64 = 1 << 0;
pub const F_EDID: u64 = 1 << 1;
pub const F_RESOURCE_UUID: u64 = 1 << 2;
pub const F_RESOURCE_BLOB: u64 = 1 << 3;
pub const F_CONTEXT_INIT: u64 = 1 << 4;

/// `ResourceCreateBlob::blob_mem` values.
pub const BLOB_MEM_GUEST: u32 = 1;
pub const BLOB_MEM_HOST3D: u32 = 2;
pub const BLOB_MEM_HOST3D_GUEST: u32 = 3;
/// `ResourceCreateBlob::blob_flags` bits.
pub const BLOB_FLAG_USE_MAPPABLE: u32 = 1;
pub const BLOB_FLAG_USE_SHAREABLE: u32 = 2;
pub const BLOB_FLAG_USE_CROSS_DEVICE: u32 = 4;

/// Capset ids: the cross-domain one is the only one this device offers.
pub use cross_domain_protocol::CAPSET_CROSS_DOMAIN;
/// `CtxCreate::context_init` bits holding the capset id.
pub const CONTEXT_INIT_CAPSET_ID_MASK: u32 = 0xff;

/// The spec allows at most 16 scanouts.
pub use cross_domain_protocol::MAX_SCANOUTS;

/// Control header that starts every request and every response.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtrlHdr {
    pub type_: u32,
    pub flags: u32,
    pub fence_id: u64,
    pub ctx_id: u32,
    pub ring_idx: u8,
    pub padding: [u8; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DisplayOne {
    pub r: Rect,
    pub enabled: u32,
    pub flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RespDisplayInfo {
    pub hdr: CtrlHdr,
    pub pmodes: [DisplayOne; MAX_SCANOUTS],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ResourceCreate2d {
    pub resource_id: u32,
    pub format: u32,
    pub width: u32,
    pub height: u32,
}

/// Body shared by every request that names one resource and a padding word
/// (RESOURCE_UNREF, RESOURCE_DETACH_BACKING, RESOURCE_ASSIGN_UUID, CTX_ATTACH/DETACH_RESOURCE,
/// RESOURCE_UNMAP_BLOB).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ResourceId {
    pub resource_id: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SetScanout {
    pub r: Rect,
    pub scanout_id: u32,
    pub resource_id: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ResourceFlush {
    pub r: Rect,
    pub resource_id: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TransferToHost2d {
    pub r: Rect,
    pub offset: u64,
    pub resource_id: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ResourceAttachBacking {
    pub resource_id: u32,
    pub nr_entries: u32,
}

/// One guest-memory extent of a resource's backing store.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemEntry {
    pub addr: u64,
    pub length: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GetCapsetInfo {
    pub capset_index: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RespCapsetInfo {
    pub hdr: CtrlHdr,
    pub capset_id: u32,
    pub capset_max_version: u32,
    pub capset_max_size: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GetCapset {
    pub capset_id: u32,
    pub capset_version: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RespResourceUuid {
    pub hdr: CtrlHdr,
    pub uuid: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ResourceCreateBlob {
    pub resource_id: u32,
    pub blob_mem: u32,
    pub blob_flags: u32,
    pub nr_entries: u32,
    pub blob_id: u64,
    pub size: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SetScanoutBlob {
    pub r: Rect,
    pub scanout_id: u32,
    pub resource_id: u32,
    pub width: u32,
    pub height: u32,
    pub format: u32,
    pub padding: u32,
    pub strides: [u32; 4],
    pub offsets: [u32; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CtxCreate {
    pub nlen: u32,
    pub context_init: u32,
    pub debug_name: [u8; 64],
}

impl Default for CtxCreate {
    fn default() -> Self {
        CtxCreate {
            nlen: 0,
            context_init: 0,
            debug_name: [0; 64],
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ResourceCreate3d {
    pub resource_id: u32,
    pub target: u32,
    pub format: u32,
    pub bind: u32,
    pub width: u32,
    pub height: u32,
    pub depth: u32,
    pub array_size: u32,
    pub last_level: u32,
    pub nr_samples: u32,
    pub flags: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Box3d {
    pub x: u32,
    pub y: u32,
    pub z: u32,
    pub w: u32,
    pub h: u32,
    pub d: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Transfer3d {
    pub box_: Box3d,
    pub offset: u64,
    pub resource_id: u32,
    pub level: u32,
    pub stride: u32,
    pub layer_stride: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Submit3d {
    pub size: u32,
    /// Reinterpreted by crosvm/libkrun as `num_in_fences`; Linux always sends 0.
    pub padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ResourceMapBlob {
    pub resource_id: u32,
    pub padding: u32,
    pub offset: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RespMapInfo {
    pub hdr: CtrlHdr,
    pub map_info: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CursorPos {
    pub scanout_id: u32,
    pub x: u32,
    pub y: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UpdateCursor {
    pub pos: CursorPos,
    pub resource_id: u32,
    pub hot_x: u32,
    pub hot_y: u32,
    pub padding: u32,
}

/// Device configuration space as seen by the driver. `blob_alignment` is only meaningful with
/// `VIRTIO_GPU_F_BLOB_ALIGNMENT`, which this device does not offer; it reads as 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VirtioGpuConfig {
    pub events_read: u32,
    pub events_clear: u32,
    pub num_scanouts: u32,
    pub num_capsets: u32,
    pub blob_alignment: u32,
    pub padding: u32,
}

// SAFETY: every type below is `#[repr(C)]`, made only of integers and integer arrays (or other
// such structs), has no implicit padding (pinned by the layout tests), and therefore every bit
// pattern is a valid value.
unsafe impl ByteValued for CtrlHdr {}
// SAFETY: see above.
unsafe impl ByteValued for Rect {}
// SAFETY: see above.
unsafe impl ByteValued for DisplayOne {}
// SAFETY: see above.
unsafe impl ByteValued for RespDisplayInfo {}
// SAFETY: see above.
unsafe impl ByteValued for ResourceCreate2d {}
// SAFETY: see above.
unsafe impl ByteValued for ResourceId {}
// SAFETY: see above.
unsafe impl ByteValued for SetScanout {}
// SAFETY: see above.
unsafe impl ByteValued for ResourceFlush {}
// SAFETY: see above.
unsafe impl ByteValued for TransferToHost2d {}
// SAFETY: see above.
unsafe impl ByteValued for ResourceAttachBacking {}
// SAFETY: see above.
unsafe impl ByteValued for MemEntry {}
// SAFETY: see above.
unsafe impl ByteValued for GetCapsetInfo {}
// SAFETY: see above.
unsafe impl ByteValued for RespCapsetInfo {}
// SAFETY: see above.
unsafe impl ByteValued for GetCapset {}
// SAFETY: see above.
unsafe impl ByteValued for RespResourceUuid {}
// SAFETY: see above.
unsafe impl ByteValued for ResourceCreateBlob {}
// SAFETY: see above.
unsafe impl ByteValued for SetScanoutBlob {}
// SAFETY: see above.
unsafe impl ByteValued for CtxCreate {}
// SAFETY: see above.
unsafe impl ByteValued for ResourceCreate3d {}
// SAFETY: see above.
unsafe impl ByteValued for Box3d {}
// SAFETY: see above.
unsafe impl ByteValued for Transfer3d {}
// SAFETY: see above.
unsafe impl ByteValued for Submit3d {}
// SAFETY: see above.
unsafe impl ByteValued for ResourceMapBlob {}
// SAFETY: see above.
unsafe impl ByteValued for RespMapInfo {}
// SAFETY: see above.
unsafe impl ByteValued for CursorPos {}
// SAFETY: see above.
unsafe impl ByteValued for UpdateCursor {}
// SAFETY: see above.
unsafe impl ByteValued for VirtioGpuConfig {}

/// Name of a control command for log lines.
pub fn command_name(cmd: u32) -> &'static str {
    match cmd {
        CMD_GET_DISPLAY_INFO => "GET_DISPLAY_INFO",
        CMD_RESOURCE_CREATE_2D => "RESOURCE_CREATE_2D",
        CMD_RESOURCE_UNREF => "RESOURCE_UNREF",
        CMD_SET_SCANOUT => "SET_SCANOUT",
        CMD_RESOURCE_FLUSH => "RESOURCE_FLUSH",
        CMD_TRANSFER_TO_HOST_2D => "TRANSFER_TO_HOST_2D",
        CMD_RESOURCE_ATTACH_BACKING => "RESOURCE_ATTACH_BACKING",
        CMD_RESOURCE_DETACH_BACKING => "RESOURCE_DETACH_BACKING",
        CMD_GET_CAPSET_INFO => "GET_CAPSET_INFO",
        CMD_GET_CAPSET => "GET_CAPSET",
        CMD_GET_EDID => "GET_EDID",
        CMD_RESOURCE_ASSIGN_UUID => "RESOURCE_ASSIGN_UUID",
        CMD_RESOURCE_CREATE_BLOB => "RESOURCE_CREATE_BLOB",
        CMD_SET_SCANOUT_BLOB => "SET_SCANOUT_BLOB",
        CMD_CTX_CREATE => "CTX_CREATE",
        CMD_CTX_DESTROY => "CTX_DESTROY",
        CMD_CTX_ATTACH_RESOURCE => "CTX_ATTACH_RESOURCE",
        CMD_CTX_DETACH_RESOURCE => "CTX_DETACH_RESOURCE",
        CMD_RESOURCE_CREATE_3D => "RESOURCE_CREATE_3D",
        CMD_TRANSFER_TO_HOST_3D => "TRANSFER_TO_HOST_3D",
        CMD_TRANSFER_FROM_HOST_3D => "TRANSFER_FROM_HOST_3D",
        CMD_SUBMIT_3D => "SUBMIT_3D",
        CMD_RESOURCE_MAP_BLOB => "RESOURCE_MAP_BLOB",
        CMD_RESOURCE_UNMAP_BLOB => "RESOURCE_UNMAP_BLOB",
        CMD_UPDATE_CURSOR => "UPDATE_CURSOR",
        CMD_MOVE_CURSOR => "MOVE_CURSOR",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn header_layout() {
        assert_eq!(size_of::<CtrlHdr>(), 24);
        assert_eq!(offset_of!(CtrlHdr, type_), 0);
        assert_eq!(offset_of!(CtrlHdr, flags), 4);
        assert_eq!(offset_of!(CtrlHdr, fence_id), 8);
        assert_eq!(offset_of!(CtrlHdr, ctx_id), 16);
        assert_eq!(offset_of!(CtrlHdr, ring_idx), 20);
    }

    // Offsets below are relative to the start of the body, i.e. the offset in the
    // virtio specification (docs/protocol.md §1.7) minus 24.
    #[test]
    fn request_layouts() {
        assert_eq!(size_of::<Rect>(), 16);
        assert_eq!(size_of::<ResourceCreate2d>(), 40 - 24);
        assert_eq!(offset_of!(ResourceCreate2d, height), 36 - 24);
        assert_eq!(size_of::<ResourceId>(), 8);
        assert_eq!(size_of::<SetScanout>(), 48 - 24);
        assert_eq!(offset_of!(SetScanout, scanout_id), 40 - 24);
        assert_eq!(offset_of!(SetScanout, resource_id), 44 - 24);
        assert_eq!(size_of::<ResourceFlush>(), 48 - 24);
        assert_eq!(offset_of!(ResourceFlush, resource_id), 40 - 24);
        assert_eq!(size_of::<TransferToHost2d>(), 56 - 24);
        assert_eq!(offset_of!(TransferToHost2d, offset), 40 - 24);
        assert_eq!(offset_of!(TransferToHost2d, resource_id), 48 - 24);
        assert_eq!(size_of::<ResourceAttachBacking>(), 32 - 24);
        assert_eq!(size_of::<MemEntry>(), 16);
        assert_eq!(offset_of!(MemEntry, length), 8);
        assert_eq!(size_of::<GetCapsetInfo>(), 8);
        assert_eq!(size_of::<GetCapset>(), 8);
        assert_eq!(size_of::<ResourceCreateBlob>(), 56 - 24);
        assert_eq!(offset_of!(ResourceCreateBlob, blob_mem), 28 - 24);
        assert_eq!(offset_of!(ResourceCreateBlob, blob_flags), 32 - 24);
        assert_eq!(offset_of!(ResourceCreateBlob, nr_entries), 36 - 24);
        assert_eq!(offset_of!(ResourceCreateBlob, blob_id), 40 - 24);
        assert_eq!(offset_of!(ResourceCreateBlob, size), 48 - 24);
        assert_eq!(size_of::<SetScanoutBlob>(), 96 - 24);
        assert_eq!(offset_of!(SetScanoutBlob, strides), 64 - 24);
        assert_eq!(offset_of!(SetScanoutBlob, offsets), 80 - 24);
        assert_eq!(size_of::<CtxCreate>(), 96 - 24);
        assert_eq!(offset_of!(CtxCreate, context_init), 28 - 24);
        assert_eq!(offset_of!(CtxCreate, debug_name), 32 - 24);
        assert_eq!(size_of::<ResourceCreate3d>(), 72 - 24);
        assert_eq!(size_of::<Transfer3d>(), 72 - 24);
        assert_eq!(offset_of!(Transfer3d, offset), 48 - 24);
        assert_eq!(offset_of!(Transfer3d, resource_id), 56 - 24);
        assert_eq!(offset_of!(Transfer3d, layer_stride), 68 - 24);
        assert_eq!(size_of::<Submit3d>(), 8);
        assert_eq!(size_of::<ResourceMapBlob>(), 40 - 24);
        assert_eq!(offset_of!(ResourceMapBlob, offset), 32 - 24);
        assert_eq!(size_of::<UpdateCursor>(), 56 - 24);
        assert_eq!(offset_of!(UpdateCursor, resource_id), 40 - 24);
        assert_eq!(offset_of!(UpdateCursor, hot_y), 48 - 24);
    }

    #[test]
    fn response_layouts() {
        assert_eq!(size_of::<DisplayOne>(), 24);
        assert_eq!(offset_of!(DisplayOne, enabled), 16);
        assert_eq!(size_of::<RespDisplayInfo>(), 408);
        assert_eq!(size_of::<RespCapsetInfo>(), 40);
        assert_eq!(offset_of!(RespCapsetInfo, capset_id), 24);
        assert_eq!(offset_of!(RespCapsetInfo, capset_max_version), 28);
        assert_eq!(offset_of!(RespCapsetInfo, capset_max_size), 32);
        assert_eq!(size_of::<RespResourceUuid>(), 40);
        assert_eq!(offset_of!(RespResourceUuid, uuid), 24);
        assert_eq!(size_of::<RespMapInfo>(), 32);
        assert_eq!(offset_of!(RespMapInfo, map_info), 24);
        assert_eq!(size_of::<VirtioGpuConfig>(), 24);
        assert_eq!(offset_of!(VirtioGpuConfig, num_scanouts), 8);
        assert_eq!(offset_of!(VirtioGpuConfig, num_capsets), 12);
        assert_eq!(offset_of!(VirtioGpuConfig, blob_alignment), 16);
    }
}
