//! The device's error type: why a request was refused, and the `RESP_ERR_*` code and limit
//! each refusal reports. It must never log or build responses itself; the coordinator in
//! `gpu.rs` does both, once per refused request.

use super::protocol::*;
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
            GpuError::CrossDomain(e) => e.response(),
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
