//! Decoding of control- and cursor-queue requests into typed [`Command`]s.
//!
//! Owns the mapping from a request's command type to its body struct and the structural checks
//! on a request: the body is present and readable, the command is allowed on its queue, a
//! SUBMIT_3D command stream lies inside the request. It must never look at device state
//! (resources, contexts, limits), write a response or log: the executor in `gpu.rs` does that,
//! mapping a [`DecodeError`] to the same [`GpuError`] (and so the same response code and log
//! line) a refused request has always had.

use std::mem::size_of;

use vm_memory::ByteValued;

use super::error::GpuError;
use super::protocol::*;
use crate::guest_mem::{GuestMem, SgList};

/// The queue a request came from: the cursor queue takes cursor commands only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Queue {
    Control,
    Cursor,
}

/// Where a request's backing entries ([`MemEntry`] array) start, and how many the guest says
/// there are. They are read by the executor: validating them needs the device's limits and
/// comes after the resource checks, whose errors take precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BackingEntries {
    /// Byte offset of the first entry in the request.
    pub offset: usize,
    /// The guest's `nr_entries` (not yet checked against anything).
    pub count: u32,
}

/// One decoded request: a variant per command the device answers, with its body.
#[derive(Debug, Clone, Copy)]
pub(super) enum Command {
    GetDisplayInfo,
    GetEdid,
    ResourceCreate2d(ResourceCreate2d),
    ResourceUnref(ResourceId),
    SetScanout(SetScanout),
    ResourceFlush(ResourceFlush),
    TransferToHost2d(TransferToHost2d),
    ResourceAttachBacking {
        body: ResourceAttachBacking,
        entries: BackingEntries,
    },
    ResourceDetachBacking(ResourceId),
    GetCapsetInfo(GetCapsetInfo),
    GetCapset(GetCapset),
    ResourceAssignUuid(ResourceId),
    ResourceCreateBlob {
        body: ResourceCreateBlob,
        entries: BackingEntries,
    },
    SetScanoutBlob(SetScanoutBlob),
    CtxCreate(CtxCreate),
    CtxDestroy,
    CtxAttachResource(ResourceId),
    CtxDetachResource(ResourceId),
    // The 3D commands' bodies are decoded (a short one is refused as such) but not kept: the
    // device has no 3D renderer and refuses them whatever they say.
    ResourceCreate3d,
    TransferToHost3d,
    TransferFromHost3d,
    /// The cross-domain command stream is `len` bytes at byte `offset` of the request (checked
    /// to lie inside it, with no in-fences).
    Submit3d {
        offset: usize,
        len: usize,
    },
    ResourceMapBlob(ResourceMapBlob),
    ResourceUnmapBlob(ResourceId),
    UpdateCursor(UpdateCursor),
    MoveCursor(UpdateCursor),
}

/// Why a request could not be decoded into a [`Command`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum DecodeError {
    /// Not a command the device knows, or not one allowed on its queue.
    #[error("unknown command {0:#x}")]
    UnknownCommand(u32),
    #[error("request of {have} bytes is shorter than the {need} its command needs")]
    ShortBody { have: usize, need: usize },
    /// The body lies in the request's buffers but could not be read from guest memory.
    #[error("request not readable")]
    Unreadable,
    /// SUBMIT_3D with a non-zero in-fence count (the field older headers call padding).
    #[error("in-fences are not supported")]
    InFences,
    /// SUBMIT_3D whose `size` runs past the end of the request.
    #[error("command stream size exceeds the request")]
    StreamTooLong,
}

impl From<DecodeError> for GpuError {
    /// The error (response code and log text) each decode failure has always been reported as.
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::UnknownCommand(cmd) => GpuError::UnknownCommand(cmd),
            DecodeError::ShortBody { have, need } => GpuError::ShortRequest { have, need },
            DecodeError::Unreadable => GpuError::InvalidParameter("request not readable"),
            DecodeError::InFences => GpuError::InvalidParameter("in-fences are not supported"),
            DecodeError::StreamTooLong => {
                GpuError::InvalidParameter("command stream size exceeds the request")
            }
        }
    }
}

/// Decode the request `req` (starting with the already read header `hdr`) from `queue`.
pub(super) fn decode(
    mem: &GuestMem,
    hdr: &CtrlHdr,
    req: &SgList,
    queue: Queue,
) -> Result<Command, DecodeError> {
    if queue == Queue::Cursor && !matches!(hdr.type_, CMD_UPDATE_CURSOR | CMD_MOVE_CURSOR) {
        return Err(DecodeError::UnknownCommand(hdr.type_));
    }
    let h = size_of::<CtrlHdr>();
    Ok(match hdr.type_ {
        CMD_GET_DISPLAY_INFO => Command::GetDisplayInfo,
        CMD_GET_EDID => Command::GetEdid,
        CMD_RESOURCE_CREATE_2D => Command::ResourceCreate2d(body(mem, req)?),
        CMD_RESOURCE_UNREF => Command::ResourceUnref(body(mem, req)?),
        CMD_SET_SCANOUT => Command::SetScanout(body(mem, req)?),
        CMD_RESOURCE_FLUSH => Command::ResourceFlush(body(mem, req)?),
        CMD_TRANSFER_TO_HOST_2D => Command::TransferToHost2d(body(mem, req)?),
        CMD_RESOURCE_ATTACH_BACKING => {
            let body: ResourceAttachBacking = body(mem, req)?;
            Command::ResourceAttachBacking {
                body,
                entries: BackingEntries {
                    offset: h + size_of::<ResourceAttachBacking>(),
                    count: body.nr_entries,
                },
            }
        }
        CMD_RESOURCE_DETACH_BACKING => Command::ResourceDetachBacking(body(mem, req)?),
        CMD_GET_CAPSET_INFO => Command::GetCapsetInfo(body(mem, req)?),
        CMD_GET_CAPSET => Command::GetCapset(body(mem, req)?),
        CMD_RESOURCE_ASSIGN_UUID => Command::ResourceAssignUuid(body(mem, req)?),
        CMD_RESOURCE_CREATE_BLOB => {
            let body: ResourceCreateBlob = body(mem, req)?;
            Command::ResourceCreateBlob {
                body,
                entries: BackingEntries {
                    offset: h + size_of::<ResourceCreateBlob>(),
                    count: body.nr_entries,
                },
            }
        }
        CMD_SET_SCANOUT_BLOB => Command::SetScanoutBlob(body(mem, req)?),
        CMD_CTX_CREATE => Command::CtxCreate(body(mem, req)?),
        CMD_CTX_DESTROY => Command::CtxDestroy,
        CMD_CTX_ATTACH_RESOURCE => Command::CtxAttachResource(body(mem, req)?),
        CMD_CTX_DETACH_RESOURCE => Command::CtxDetachResource(body(mem, req)?),
        CMD_RESOURCE_CREATE_3D => {
            body::<ResourceCreate3d>(mem, req)?;
            Command::ResourceCreate3d
        }
        CMD_TRANSFER_TO_HOST_3D => {
            body::<Transfer3d>(mem, req)?;
            Command::TransferToHost3d
        }
        CMD_TRANSFER_FROM_HOST_3D => {
            body::<Transfer3d>(mem, req)?;
            Command::TransferFromHost3d
        }
        CMD_SUBMIT_3D => {
            let body: Submit3d = body(mem, req)?;
            if body.padding != 0 {
                return Err(DecodeError::InFences);
            }
            let offset = h + size_of::<Submit3d>();
            let len = body.size as usize;
            // `body` succeeded, so the request holds at least `offset` bytes.
            if len > req.len() - offset {
                return Err(DecodeError::StreamTooLong);
            }
            Command::Submit3d { offset, len }
        }
        CMD_RESOURCE_MAP_BLOB => Command::ResourceMapBlob(body(mem, req)?),
        CMD_RESOURCE_UNMAP_BLOB => Command::ResourceUnmapBlob(body(mem, req)?),
        CMD_UPDATE_CURSOR => Command::UpdateCursor(body(mem, req)?),
        CMD_MOVE_CURSOR => Command::MoveCursor(body(mem, req)?),
        other => return Err(DecodeError::UnknownCommand(other)),
    })
}

/// The body of type `T` right after the header.
fn body<T: ByteValued + Default>(mem: &GuestMem, req: &SgList) -> Result<T, DecodeError> {
    let need = size_of::<CtrlHdr>() + size_of::<T>();
    if req.len() < need {
        return Err(DecodeError::ShortBody {
            have: req.len(),
            need,
        });
    }
    req.read_obj(mem, size_of::<CtrlHdr>())
        .map_err(|_| DecodeError::Unreadable)
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::*;

    const BASE: u64 = 0x1000;

    fn mem() -> GuestMem {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(BASE), 0x4000)]).unwrap()
    }

    /// A request of `type_` whose body is `body`, followed by `tail` bytes, in one buffer.
    fn request(m: &GuestMem, type_: u32, body: &[u8], tail: usize) -> (CtrlHdr, SgList) {
        let hdr = CtrlHdr {
            type_,
            ..Default::default()
        };
        m.write_obj(hdr, GuestAddress(BASE)).unwrap();
        let h = size_of::<CtrlHdr>() as u64;
        m.write_slice(body, GuestAddress(BASE + h)).unwrap();
        let mut req = SgList::new();
        req.push(GuestAddress(BASE), h as usize + body.len() + tail);
        (hdr, req)
    }

    fn decode_body<T: ByteValued>(
        type_: u32,
        body: T,
        tail: usize,
    ) -> Result<Command, DecodeError> {
        let m = mem();
        let (hdr, req) = request(&m, type_, body.as_slice(), tail);
        decode(&m, &hdr, &req, Queue::Control)
    }

    fn rid(resource_id: u32) -> ResourceId {
        ResourceId {
            resource_id,
            padding: 0,
        }
    }

    #[test]
    fn every_command_decodes_from_a_well_formed_request() {
        use Command as C;
        let ok = |type_, body: &[u8]| {
            let m = mem();
            let (hdr, req) = request(&m, type_, body, 0);
            decode(&m, &hdr, &req, Queue::Control).unwrap()
        };
        let id = rid(7);
        let id = id.as_slice();
        assert!(matches!(ok(CMD_GET_DISPLAY_INFO, &[]), C::GetDisplayInfo));
        assert!(matches!(ok(CMD_GET_EDID, &[]), C::GetEdid));
        assert!(matches!(ok(CMD_CTX_DESTROY, &[]), C::CtxDestroy));
        let b = ResourceCreate2d {
            resource_id: 3,
            format: 1,
            width: 4,
            height: 5,
        };
        assert!(matches!(
            ok(CMD_RESOURCE_CREATE_2D, b.as_slice()),
            C::ResourceCreate2d(ResourceCreate2d {
                resource_id: 3,
                format: 1,
                width: 4,
                height: 5
            })
        ));
        assert!(matches!(
            ok(CMD_RESOURCE_UNREF, id),
            C::ResourceUnref(ResourceId { resource_id: 7, .. })
        ));
        let b = SetScanout {
            scanout_id: 1,
            resource_id: 2,
            ..Default::default()
        };
        assert!(matches!(
            ok(CMD_SET_SCANOUT, b.as_slice()),
            C::SetScanout(SetScanout {
                scanout_id: 1,
                resource_id: 2,
                ..
            })
        ));
        let b = ResourceFlush {
            resource_id: 9,
            ..Default::default()
        };
        assert!(matches!(
            ok(CMD_RESOURCE_FLUSH, b.as_slice()),
            C::ResourceFlush(ResourceFlush { resource_id: 9, .. })
        ));
        let b = TransferToHost2d {
            resource_id: 9,
            ..Default::default()
        };
        assert!(matches!(
            ok(CMD_TRANSFER_TO_HOST_2D, b.as_slice()),
            C::TransferToHost2d(TransferToHost2d { resource_id: 9, .. })
        ));
        let b = ResourceAttachBacking {
            resource_id: 4,
            nr_entries: 2,
        };
        match ok(CMD_RESOURCE_ATTACH_BACKING, b.as_slice()) {
            C::ResourceAttachBacking { body, entries } => {
                assert_eq!(body.resource_id, 4);
                assert_eq!(
                    entries,
                    BackingEntries {
                        offset: size_of::<CtrlHdr>() + size_of::<ResourceAttachBacking>(),
                        count: 2,
                    }
                );
            }
            c => panic!("{c:?}"),
        }
        assert!(matches!(
            ok(CMD_RESOURCE_DETACH_BACKING, id),
            C::ResourceDetachBacking(ResourceId { resource_id: 7, .. })
        ));
        let b = GetCapsetInfo {
            capset_index: 1,
            padding: 0,
        };
        assert!(matches!(
            ok(CMD_GET_CAPSET_INFO, b.as_slice()),
            C::GetCapsetInfo(GetCapsetInfo {
                capset_index: 1,
                ..
            })
        ));
        let b = GetCapset {
            capset_id: 5,
            capset_version: 0,
        };
        assert!(matches!(
            ok(CMD_GET_CAPSET, b.as_slice()),
            C::GetCapset(GetCapset { capset_id: 5, .. })
        ));
        assert!(matches!(
            ok(CMD_RESOURCE_ASSIGN_UUID, id),
            C::ResourceAssignUuid(ResourceId { resource_id: 7, .. })
        ));
        let b = ResourceCreateBlob {
            resource_id: 8,
            nr_entries: 3,
            ..Default::default()
        };
        match ok(CMD_RESOURCE_CREATE_BLOB, b.as_slice()) {
            C::ResourceCreateBlob { body, entries } => {
                assert_eq!(body.resource_id, 8);
                assert_eq!(
                    entries,
                    BackingEntries {
                        offset: size_of::<CtrlHdr>() + size_of::<ResourceCreateBlob>(),
                        count: 3,
                    }
                );
            }
            c => panic!("{c:?}"),
        }
        let b = SetScanoutBlob {
            scanout_id: 0,
            resource_id: 8,
            ..Default::default()
        };
        assert!(matches!(
            ok(CMD_SET_SCANOUT_BLOB, b.as_slice()),
            C::SetScanoutBlob(SetScanoutBlob { resource_id: 8, .. })
        ));
        let mut b = CtxCreate {
            nlen: 3,
            context_init: CAPSET_CROSS_DOMAIN,
            ..Default::default()
        };
        b.debug_name[..3].copy_from_slice(b"abc");
        match ok(CMD_CTX_CREATE, b.as_slice()) {
            C::CtxCreate(c) => {
                assert_eq!((c.nlen, c.context_init), (3, CAPSET_CROSS_DOMAIN));
                assert_eq!(&c.debug_name[..3], b"abc");
            }
            c => panic!("{c:?}"),
        }
        assert!(matches!(
            ok(CMD_CTX_ATTACH_RESOURCE, id),
            C::CtxAttachResource(ResourceId { resource_id: 7, .. })
        ));
        assert!(matches!(
            ok(CMD_CTX_DETACH_RESOURCE, id),
            C::CtxDetachResource(ResourceId { resource_id: 7, .. })
        ));
        let b = ResourceCreate3d {
            resource_id: 6,
            ..Default::default()
        };
        assert!(matches!(
            ok(CMD_RESOURCE_CREATE_3D, b.as_slice()),
            C::ResourceCreate3d
        ));
        let b = Transfer3d {
            resource_id: 6,
            ..Default::default()
        };
        assert!(matches!(
            ok(CMD_TRANSFER_TO_HOST_3D, b.as_slice()),
            C::TransferToHost3d
        ));
        assert!(matches!(
            ok(CMD_TRANSFER_FROM_HOST_3D, b.as_slice()),
            C::TransferFromHost3d
        ));
        let b = ResourceMapBlob {
            resource_id: 8,
            padding: 0,
            offset: 0x2000,
        };
        assert!(matches!(
            ok(CMD_RESOURCE_MAP_BLOB, b.as_slice()),
            C::ResourceMapBlob(ResourceMapBlob {
                resource_id: 8,
                offset: 0x2000,
                ..
            })
        ));
        assert!(matches!(
            ok(CMD_RESOURCE_UNMAP_BLOB, id),
            C::ResourceUnmapBlob(ResourceId { resource_id: 7, .. })
        ));
        let b = UpdateCursor {
            resource_id: 2,
            ..Default::default()
        };
        assert!(matches!(
            ok(CMD_UPDATE_CURSOR, b.as_slice()),
            C::UpdateCursor(UpdateCursor { resource_id: 2, .. })
        ));
        assert!(matches!(
            ok(CMD_MOVE_CURSOR, b.as_slice()),
            C::MoveCursor(UpdateCursor { resource_id: 2, .. })
        ));
    }

    #[test]
    fn submit_3d_carries_its_command_stream() {
        let b = Submit3d {
            size: 16,
            padding: 0,
        };
        let offset = size_of::<CtrlHdr>() + size_of::<Submit3d>();
        match decode_body(CMD_SUBMIT_3D, b, 16) {
            Ok(Command::Submit3d { offset: o, len }) => assert_eq!((o, len), (offset, 16)),
            r => panic!("{r:?}"),
        }
        // An empty stream is well formed (the context decides what it means).
        let b = Submit3d {
            size: 0,
            padding: 0,
        };
        assert!(matches!(
            decode_body(CMD_SUBMIT_3D, b, 0),
            Ok(Command::Submit3d { len: 0, .. })
        ));
    }

    #[test]
    fn submit_3d_stream_past_the_request_is_refused() {
        let b = Submit3d {
            size: 17,
            padding: 0,
        };
        assert_eq!(
            decode_body(CMD_SUBMIT_3D, b, 16).unwrap_err(),
            DecodeError::StreamTooLong
        );
        let b = Submit3d {
            size: u32::MAX,
            padding: 0,
        };
        assert_eq!(
            decode_body(CMD_SUBMIT_3D, b, 0).unwrap_err(),
            DecodeError::StreamTooLong
        );
    }

    #[test]
    fn submit_3d_in_fences_are_refused_before_the_size() {
        let b = Submit3d {
            size: 1000,
            padding: 1,
        };
        assert_eq!(
            decode_body(CMD_SUBMIT_3D, b, 0).unwrap_err(),
            DecodeError::InFences
        );
    }

    #[test]
    fn short_bodies_are_refused_with_their_sizes() {
        let h = size_of::<CtrlHdr>();
        for (type_, size) in [
            (CMD_RESOURCE_CREATE_2D, size_of::<ResourceCreate2d>()),
            (CMD_RESOURCE_UNREF, size_of::<ResourceId>()),
            (
                CMD_RESOURCE_ATTACH_BACKING,
                size_of::<ResourceAttachBacking>(),
            ),
            (CMD_RESOURCE_CREATE_BLOB, size_of::<ResourceCreateBlob>()),
            (CMD_CTX_CREATE, size_of::<CtxCreate>()),
            (CMD_RESOURCE_CREATE_3D, size_of::<ResourceCreate3d>()),
            (CMD_TRANSFER_FROM_HOST_3D, size_of::<Transfer3d>()),
            (CMD_SUBMIT_3D, size_of::<Submit3d>()),
            (CMD_RESOURCE_MAP_BLOB, size_of::<ResourceMapBlob>()),
            (CMD_UPDATE_CURSOR, size_of::<UpdateCursor>()),
        ] {
            let m = mem();
            let short = vec![0u8; size - 1];
            let (hdr, req) = request(&m, type_, &short, 0);
            assert_eq!(
                decode(&m, &hdr, &req, Queue::Control).unwrap_err(),
                DecodeError::ShortBody {
                    have: h + size - 1,
                    need: h + size,
                },
                "{}",
                command_name(type_)
            );
        }
    }

    #[test]
    fn commands_without_a_body_need_only_the_header() {
        let m = mem();
        for type_ in [CMD_GET_DISPLAY_INFO, CMD_GET_EDID, CMD_CTX_DESTROY] {
            let (hdr, req) = request(&m, type_, &[], 0);
            assert!(decode(&m, &hdr, &req, Queue::Control).is_ok());
        }
    }

    #[test]
    fn unknown_types_are_refused() {
        let m = mem();
        for type_ in [0, 0x10e, 0x20a, 0x302, CMD_GET_DISPLAY_INFO | 0x8000_0000] {
            let (hdr, req) = request(&m, type_, &[0; 64], 0);
            assert_eq!(
                decode(&m, &hdr, &req, Queue::Control).unwrap_err(),
                DecodeError::UnknownCommand(type_)
            );
        }
    }

    #[test]
    fn the_cursor_queue_takes_cursor_commands_only() {
        let m = mem();
        let b = UpdateCursor::default();
        for type_ in [CMD_UPDATE_CURSOR, CMD_MOVE_CURSOR] {
            let (hdr, req) = request(&m, type_, b.as_slice(), 0);
            assert!(decode(&m, &hdr, &req, Queue::Cursor).is_ok());
        }
        for type_ in [CMD_GET_DISPLAY_INFO, CMD_SUBMIT_3D, CMD_CTX_DESTROY] {
            let (hdr, req) = request(&m, type_, &[0; 64], 0);
            assert_eq!(
                decode(&m, &hdr, &req, Queue::Cursor).unwrap_err(),
                DecodeError::UnknownCommand(type_)
            );
        }
    }

    #[test]
    fn decode_errors_keep_their_response_codes_and_text() {
        let cases = [
            (
                DecodeError::UnknownCommand(0x99),
                RESP_ERR_UNSPEC,
                "unknown command 0x99",
            ),
            (
                DecodeError::ShortBody { have: 24, need: 32 },
                RESP_ERR_INVALID_PARAMETER,
                "request of 24 bytes is shorter than the 32 its command needs",
            ),
            (
                DecodeError::Unreadable,
                RESP_ERR_INVALID_PARAMETER,
                "invalid parameter: request not readable",
            ),
            (
                DecodeError::InFences,
                RESP_ERR_INVALID_PARAMETER,
                "invalid parameter: in-fences are not supported",
            ),
            (
                DecodeError::StreamTooLong,
                RESP_ERR_INVALID_PARAMETER,
                "invalid parameter: command stream size exceeds the request",
            ),
        ];
        for (e, code, text) in cases {
            let g = GpuError::from(e);
            assert_eq!(g.response(), code, "{e:?}");
            assert_eq!(g.to_string(), text);
        }
    }
}
