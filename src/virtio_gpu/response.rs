//! Response encoding: the body each command answers with, the response type it reports and
//! the bytes it takes in the guest's response buffer.
//!
//! It must never decide whether a request succeeded (the executor in `gpu.rs` does) nor write
//! past the response buffer: every write goes through the buffer's bounds-checked
//! [`SgList`].

use size_of;

use super::protocol::*;
use crate::cross_domain::protocol as cd;
use crate::guest_mem::{GuestMem, SgError, SgList};

/// A response body following the header.
pub(super) enum Resp {
    NoData,
    DisplayInfo,
    CapsetInfo(RespCapsetInfo),
    /// The capset, and its fifth word `large_ring_channels` where the capset has one.
    Capset(cd::Capabilities, Option<u32>),
    Uuid([u8; 16]),
    MapInfo(u32),
}

impl Resp {
    /// The `RESP_OK_*` type of a response with this body.
    pub(super) fn response_type(&self) -> u32 {
        match self {
            Resp::NoData => RESP_OK_NODATA,
            Resp::DisplayInfo => RESP_OK_DISPLAY_INFO,
            Resp::CapsetInfo(_) => RESP_OK_CAPSET_INFO,
            Resp::Capset(..) => RESP_OK_CAPSET,
            Resp::Uuid(_) => RESP_OK_RESOURCE_UUID,
            Resp::MapInfo(_) => RESP_OK_MAP_INFO,
        }
    }

    /// Write the response of type `type_` to request `req`, with this body, into `out`;
    /// returns the bytes written. A fenced request's response carries its fence (and ring).
    pub(super) fn write(
        &self,
        mem: &GuestMem,
        out: &SgList,
        req: &CtrlHdr,
        type_: u32,
        num_scanouts: u32,
    ) -> Result<u32, SgError> {
        let mut hdr = CtrlHdr {
            type_,
            ..Default::default()
        };
        if req.flags & FLAG_FENCE != 0 {
            hdr.flags = req.flags & (FLAG_FENCE | FLAG_INFO_RING_IDX);
            hdr.fence_id = req.fence_id;
            hdr.ctx_id = req.ctx_id;
            hdr.ring_idx = req.ring_idx;
        }
        let h = size_of::<CtrlHdr>();
        let total = match self {
            Resp::NoData => {
                out.write_obj(mem, 0, &hdr)?;
                h
            }
            Resp::DisplayInfo => {
                let mut r = RespDisplayInfo {
                    hdr,
                    ..Default::default()
                };
                if num_scanouts > 0 {
                    r.pmodes[0].r = Rect {
                        x: 0,
                        y: 0,
                        width: 1024,
                        height: 768,
                    };
                }
                out.write_obj(mem, 0, &r)?;
                size_of::<RespDisplayInfo>()
            }
            Resp::CapsetInfo(info) => {
                let r = RespCapsetInfo { hdr, ..*info };
                out.write_obj(mem, 0, &r)?;
                size_of::<RespCapsetInfo>()
            }
            Resp::Capset(caps, large_rings) => {
                out.write_obj(mem, 0, &hdr)?;
                out.write_obj(mem, h, caps)?;
                match large_rings {
                    Some(mask) => {
                        out.write_obj(mem, h + size_of::<cd::Capabilities>(), mask)?;
                        h + cd::CAPSET_SIZE_LARGE_RINGS
                    }
                    None => h + size_of::<cd::Capabilities>(),
                }
            }
            Resp::Uuid(uuid) => {
                let r = RespResourceUuid { hdr, uuid: *uuid };
                out.write_obj(mem, 0, &r)?;
                size_of::<RespResourceUuid>()
            }
            Resp::MapInfo(map_info) => {
                let r = RespMapInfo {
                    hdr,
                    map_info: *map_info,
                    padding: 0,
                };
                out.write_obj(mem, 0, &r)?;
                size_of::<RespMapInfo>()
            }
        };
        Ok(total as u32)
    }
}

/// Bytes the response to `cmd` needs.
pub(super) fn response_size(cmd: u32) -> usize {
    let h = size_of::<CtrlHdr>();
    match cmd {
        CMD_GET_DISPLAY_INFO => size_of::<RespDisplayInfo>(),
        CMD_GET_CAPSET_INFO => size_of::<RespCapsetInfo>(),
        CMD_GET_CAPSET => h + size_of::<cd::Capabilities>(),
        CMD_RESOURCE_ASSIGN_UUID => size_of::<RespResourceUuid>(),
        CMD_RESOURCE_MAP_BLOB => size_of::<RespMapInfo>(),
        _ => h,
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::*;

    fn out() -> SgList {
        let mut sg = SgList::new();
        sg.push(GuestAddress(0x1000), 0x1000);
        sg
    }

    #[test]
    fn a_fenced_response_carries_its_fence_and_nothing_else() {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0x1000), 0x1000)]).unwrap();
        let req = CtrlHdr {
            type_: CMD_SUBMIT_3D,
            flags: FLAG_FENCE | FLAG_INFO_RING_IDX | 0x80,
            fence_id: 9,
            ctx_id: 3,
            ring_idx: 1,
            padding: [7; 3],
        };
        let n = Resp::NoData
            .write(&m, &out(), &req, RESP_OK_NODATA, 1)
            .unwrap();
        assert_eq!(n as usize, size_of::<CtrlHdr>());
        let hdr: CtrlHdr = m.read_obj(GuestAddress(0x1000)).unwrap();
        let want = CtrlHdr {
            type_: RESP_OK_NODATA,
            flags: FLAG_FENCE | FLAG_INFO_RING_IDX,
            fence_id: 9,
            ctx_id: 3,
            ring_idx: 1,
            padding: [0; 3],
        };
        assert_eq!(hdr, want);
        // Unfenced: a bare header, whatever the request said.
        let req = CtrlHdr {
            fence_id: 9,
            ctx_id: 3,
            ..Default::default()
        };
        Resp::MapInfo(0x3)
            .write(&m, &out(), &req, RESP_OK_MAP_INFO, 1)
            .unwrap();
        let r: RespMapInfo = m.read_obj(GuestAddress(0x1000)).unwrap();
        assert_eq!(r.hdr.type_, RESP_OK_MAP_INFO);
        assert_eq!((r.hdr.flags, r.hdr.fence_id, r.hdr.ctx_id), (0, 0, 0));
        assert_eq!(r.map_info, 0x3);
    }

    #[test]
    fn display_info_reports_one_mode_when_there_is_a_scanout() {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0x1000), 0x1000)]).unwrap();
        let req = CtrlHdr::default();
        for (scanouts, width) in [(1, 1024), (0, 0)] {
            let n = Resp::DisplayInfo
                .write(&m, &out(), &req, RESP_OK_DISPLAY_INFO, scanouts)
                .unwrap();
            assert_eq!(n as usize, size_of::<RespDisplayInfo>());
            let r: RespDisplayInfo = m.read_obj(GuestAddress(0x1000)).unwrap();
            assert_eq!(r.pmodes[0].r.width, width);
        }
    }

    #[test]
    fn response_sizes() {
        assert_eq!(
            response_size(CMD_GET_DISPLAY_INFO),
            size_of::<RespDisplayInfo>()
        );
        assert_eq!(
            response_size(CMD_RESOURCE_MAP_BLOB),
            size_of::<RespMapInfo>()
        );
        assert_eq!(response_size(CMD_SUBMIT_3D), size_of::<CtrlHdr>());
        assert_eq!(response_size(0xdead), size_of::<CtrlHdr>());
    }
}
