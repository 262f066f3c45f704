//! The device's error type: why a request was refused, and the `RESP_ERR_*` code and limit
//! each refusal reports. It must never log or build responses itself; the coordinator in
//! `gpu.rs` does both, once per refused request.

use super::protocol::*;
use crate::cross_domain::image::ImageError;
use crate::cross_domain::CtxError;
use crate::limitlog::LimitKind;

/// Why a request was refused; each maps to a `RESP_ERR_*` code.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("request of {have} bytes is shorter than the {need} its command needs")]
    ShortRequest { have: usize, need: usize },
    #[error("unknown command {0:#x}")]
    UnknownCommand(u32),
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("invalid resource id {0}")]
    InvalidResource(u32),
    #[error("resource id {0} already exists")]
    ResourceExists(u32),
    #[error("invalid context id {0}")]
    InvalidContext(u32),
    #[error("context id {0} already exists")]
    ContextExists(u32),
    #[error("invalid scanout id {0}")]
    InvalidScanout(u32),
    #[error("invalid parameter: {0}")]
    InvalidParameter(&'static str),
    #[error("backing entry {index} ({addr:#x}+{len}) is not guest memory")]
    BadEntry { index: usize, addr: u64, len: u32 },
    #[error("limit reached: {0} ({1})")]
    Limit(LimitKind, usize),
    #[error("fence on ring {0}: cross-domain contexts have rings 0 and 1 only")]
    BadRing(u8),
    #[error("cross-domain: {0}")]
    CrossDomain(#[from] CtxError),
    #[error("host-visible region: {0}")]
    Map(std::io::Error),
}

impl GpuError {
    /// The response type reported to the guest.
    pub fn response(&self) -> u32 {
        match self {
            GpuError::InvalidResource(_) | GpuError::ResourceExists(_) => {
                RESP_ERR_INVALID_RESOURCE_ID
            }
            GpuError::InvalidContext(_) | GpuError::ContextExists(_) => RESP_ERR_INVALID_CONTEXT_ID,
            GpuError::InvalidScanout(_) => RESP_ERR_INVALID_SCANOUT_ID,
            GpuError::Limit(..) => RESP_ERR_OUT_OF_MEMORY,
            GpuError::UnknownCommand(_) | GpuError::Unsupported(_) | GpuError::Map(_) => {
                RESP_ERR_UNSPEC
            }
            GpuError::CrossDomain(e) => cross_domain_response(e),
            _ => RESP_ERR_INVALID_PARAMETER,
        }
    }

    /// The limit this error reports, with its value; `None` for other errors. Limits are
    /// logged once per context (see [`GuestLog::limit_hit`](crate::ratelimit::GuestLog::limit_hit)).
    pub fn limit(&self) -> Option<(LimitKind, usize)> {
        match self {
            GpuError::Limit(kind, value) => Some((*kind, *value)),
            GpuError::CrossDomain(e) => e.limit(),
            _ => None,
        }
    }
}

/// The response type for a refused cross-domain command: the cross-domain layer knows nothing
/// of virtio-gpu response codes, so the mapping lives here.
fn cross_domain_response(e: &CtxError) -> u32 {
    match e {
        CtxError::RingNotAttached(_)
        | CtxError::ResourceNotAttached(_)
        | CtxError::NotSendable(_) => RESP_ERR_INVALID_RESOURCE_ID,
        CtxError::Image(ImageError::UnsupportedFormat(_)) => RESP_ERR_INVALID_PARAMETER,
        CtxError::Image(_) => RESP_ERR_OUT_OF_MEMORY,
        CtxError::TooManyItems
        | CtxError::TooManyImageRequirements
        | CtxError::VmImageRequirementsExhausted
        | CtxError::TooManyParkedSockets
        | CtxError::BacklogFull(_) => RESP_ERR_OUT_OF_MEMORY,
        // A SEND of a kind the channel does not carry, a uuid parked twice or never: the
        // guest asked for something this channel or VM does not have.
        CtxError::NotCarried { .. }
        | CtxError::SocketUuidInUse(_)
        | CtxError::UnknownSocketUuid(_) => RESP_ERR_INVALID_PARAMETER,
        CtxError::Connect { .. }
        | CtxError::HostIo(_)
        | CtxError::ChannelClosed
        | CtxError::Unsupported(_)
        | CtxError::EventfdFull(_)
        | CtxError::UnshareableMemory { .. } => RESP_ERR_UNSPEC,
        _ => RESP_ERR_INVALID_PARAMETER,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes a refused cross-domain command gets, pinned so that moving the mapping (it
    /// was `CtxError::response` in the cross-domain layer) changed none of them.
    #[test]
    fn cross_domain_refusals_keep_their_response_codes() {
        let io = || std::io::Error::from_raw_os_error(libc::EPIPE);
        let cases = [
            (CtxError::RingNotAttached(1), RESP_ERR_INVALID_RESOURCE_ID),
            (
                CtxError::ResourceNotAttached(1),
                RESP_ERR_INVALID_RESOURCE_ID,
            ),
            (CtxError::NotSendable(1), RESP_ERR_INVALID_RESOURCE_ID),
            (
                CtxError::Image(ImageError::UnsupportedFormat(0)),
                RESP_ERR_INVALID_PARAMETER,
            ),
            (
                CtxError::Image(ImageError::Overflow {
                    width: 1,
                    height: 1,
                }),
                RESP_ERR_OUT_OF_MEMORY,
            ),
            (CtxError::TooManyItems, RESP_ERR_OUT_OF_MEMORY),
            (CtxError::TooManyImageRequirements, RESP_ERR_OUT_OF_MEMORY),
            (
                CtxError::VmImageRequirementsExhausted,
                RESP_ERR_OUT_OF_MEMORY,
            ),
            (CtxError::BacklogFull(1), RESP_ERR_OUT_OF_MEMORY),
            (
                CtxError::Connect {
                    channel_type: 2,
                    path: "/x".into(),
                    source: io(),
                },
                RESP_ERR_UNSPEC,
            ),
            (CtxError::HostIo(io()), RESP_ERR_UNSPEC),
            (CtxError::ChannelClosed, RESP_ERR_UNSPEC),
            (CtxError::Unsupported("x"), RESP_ERR_UNSPEC),
            (CtxError::EventfdFull(2), RESP_ERR_UNSPEC),
            (
                CtxError::UnshareableMemory { id: 2, size: 2312 },
                RESP_ERR_UNSPEC,
            ),
            (
                CtxError::Unserved(crate::cross_domain::Unserved::VirtioFsImport),
                RESP_ERR_INVALID_PARAMETER,
            ),
            (
                CtxError::EventfdWriteSize { id: 2, len: 4 },
                RESP_ERR_INVALID_PARAMETER,
            ),
            (
                CtxError::BadCmdSize {
                    offset: 0,
                    size: 0,
                    remaining: 0,
                },
                RESP_ERR_INVALID_PARAMETER,
            ),
            (CtxError::UnknownItem(2), RESP_ERR_INVALID_PARAMETER),
            (CtxError::TooManyParkedSockets, RESP_ERR_OUT_OF_MEMORY),
            (
                CtxError::NotCarried {
                    class: crate::cross_domain::FdClass::Pipe,
                    policy: crate::cross_domain::FdPolicy::NONE,
                },
                RESP_ERR_INVALID_PARAMETER,
            ),
            (
                CtxError::SocketUuidInUse(crate::cross_domain::SocketUuid([1; 16])),
                RESP_ERR_INVALID_PARAMETER,
            ),
            (
                CtxError::UnknownSocketUuid(crate::cross_domain::SocketUuid([1; 16])),
                RESP_ERR_INVALID_PARAMETER,
            ),
            (CtxError::NotInitialized, RESP_ERR_INVALID_PARAMETER),
        ];
        for (e, code) in cases {
            assert_eq!(GpuError::CrossDomain(e).response(), code);
        }
    }
}
