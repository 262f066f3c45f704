//! Why a cross-domain command was refused ([`CtxError`]), and which limit a refusal reports.
//!
//! This module owns the error values only. It never logs (the device logs a refusal once, at
//! the edge) and never chooses the guest-visible response code (the virtio-gpu layer maps
//! these errors to its `RESP_ERR_*` codes).

use std::io as stdio;
use std::path::PathBuf;

use super::blobs::{MAX_IMAGE_REQUIREMENTS, MAX_IMAGE_REQUIREMENTS_PER_VM};
use super::image::ImageError;
use super::items::MAX_ITEMS;
use super::peer::MAX_BACKLOG_BYTES;
use super::policy::{FdClass, FdPolicy};
use super::protocol::MAX_IDENTIFIERS;
use super::sockets::{SocketUuid, MAX_PARKED_SOCKETS};
use super::unserved::Unserved;
use crate::guest_mem::SgError;
use crate::limitlog::LimitKind;

/// Why a cross-domain command was refused.
#[derive(Debug, thiserror::Error)]
pub enum CtxError {
    /// A command's `cmd_size` is too small for its header or struct, runs past the end of the
    /// command stream, or does not match its payload. `offset` is where the command starts,
    /// in bytes from the start of the command stream (the SUBMIT_3D payload); `remaining` is
    /// what the stream holds from there (for a command too short for its own struct, its
    /// `cmd_size`).
    #[error("command at offset {offset}: cmd_size {size} is invalid (remaining {remaining})")]
    BadCmdSize {
        offset: usize,
        size: usize,
        remaining: usize,
    },
    #[error("unknown cross-domain command {0}")]
    UnknownCommand(u8),
    #[error("command {0} is not supported by this device")]
    Unsupported(&'static str),
    #[error("INIT was already processed")]
    AlreadyInitialized,
    #[error("INIT has not been processed")]
    NotInitialized,
    #[error("context has no channel (channel_type 0)")]
    NoChannel,
    #[error("channel has been closed by the host")]
    ChannelClosed,
    #[error("ring resource {0} is not attached to this context")]
    RingNotAttached(u32),
    #[error("ring resource {id} has no guest backing or is {size} bytes (need {need})")]
    RingTooSmall { id: u32, size: usize, need: usize },
    #[error("channel type {0:#x} is not configured")]
    ChannelNotConfigured(u32),
    #[error("connecting channel {channel_type:#x} to {path}: {source}")]
    Connect {
        channel_type: u32,
        path: PathBuf,
        source: stdio::Error,
    },
    #[error("{0} identifiers (at most {MAX_IDENTIFIERS})")]
    TooManyIdentifiers(u32),
    #[error("identifier type {0} is not supported")]
    UnsupportedIdentifierType(u32),
    #[error("read pipe id {got:#x} does not match the expected {expected:#x}")]
    ReadPipeIdMismatch { expected: u32, got: u32 },
    #[error("resource {0} is not attached to this context")]
    ResourceNotAttached(u32),
    #[error("resource {0} has no host memory and cannot be sent")]
    NotSendable(u32),
    #[error("unknown or wrong-type item {0:#x}")]
    UnknownItem(u32),
    #[error("{0}: not served by this device")]
    Unserved(Unserved),
    #[error("WRITE of {len} bytes to eventfd {id:#x}: exactly 8 are added to its counter")]
    EventfdWriteSize { id: u32, len: usize },
    #[error(
        "eventfd {0:#x}: its counter would overflow (the host does not read it); nothing written"
    )]
    EventfdFull(u32),
    #[error(
        "received memory {id:#x} of {size} bytes is not a page multiple, cannot grow and is not \
         write-sealed: a copy would not be shared, and the VMM is not known to map past the end \
         of a file; refused"
    )]
    UnshareableMemory { id: u32, size: u64 },
    #[error("image requirements: {0}")]
    Image(#[from] ImageError),
    #[error("blob id {0:#x} names no image requirements or received memory")]
    UnknownBlob(u32),
    #[error("blob size {got} does not match the {expected} bytes of blob id {id:#x}")]
    BlobSize { id: u32, expected: u64, got: u64 },
    #[error("the channel does not carry {class} fds (its fds are: {policy})")]
    NotCarried { class: FdClass, policy: FdPolicy },
    #[error("a socket is already parked under uuid {0}")]
    SocketUuidInUse(SocketUuid),
    #[error("no socket is parked under uuid {0}")]
    UnknownSocketUuid(SocketUuid),
    #[error("too many parked sockets in this VM (limit {MAX_PARKED_SOCKETS})")]
    TooManyParkedSockets,
    #[error("file descriptors must travel with at least one data byte")]
    FdsWithoutData,
    #[error("too many items in this context (limit {MAX_ITEMS})")]
    TooManyItems,
    #[error(
        "too many distinct image requirements in this context (limit {MAX_IMAGE_REQUIREMENTS})"
    )]
    TooManyImageRequirements,
    #[error(
        "too many distinct image requirements in this VM (limit {MAX_IMAGE_REQUIREMENTS_PER_VM})"
    )]
    VmImageRequirementsExhausted,
    #[error("host peer is not reading: {0} bytes already queued")]
    BacklogFull(usize),
    #[error("host I/O: {0}")]
    HostIo(stdio::Error),
    #[error("guest memory: {0}")]
    Memory(#[from] SgError),
}

impl CtxError {
    /// The limit this error reports, with its value; `None` for other errors. Limits are
    /// logged once per context (see [`crate::ratelimit::GuestLog::limit_hit`]).
    pub fn limit(&self) -> Option<(LimitKind, usize)> {
        match self {
            CtxError::TooManyItems => Some((LimitKind::ItemsPerContext, MAX_ITEMS)),
            CtxError::TooManyImageRequirements => Some((
                LimitKind::ImageRequirementsPerContext,
                MAX_IMAGE_REQUIREMENTS,
            )),
            CtxError::VmImageRequirementsExhausted => Some((
                LimitKind::ImageRequirementsPerVm,
                MAX_IMAGE_REQUIREMENTS_PER_VM,
            )),
            CtxError::BacklogFull(_) => Some((LimitKind::QueuedBytes, MAX_BACKLOG_BYTES)),
            CtxError::TooManyParkedSockets => {
                Some((LimitKind::ParkedSocketsPerVm, MAX_PARKED_SOCKETS))
            }
            _ => None,
        }
    }
}
