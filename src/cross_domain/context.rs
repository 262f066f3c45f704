//! One cross-domain context: INIT, SEND, WRITE, POLL delivery (RECEIVE/READ), teardown.

use std::collections::HashMap;
use std::io as stdio;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use log::{debug, info, warn};
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use vm_memory::ByteValued;

use super::backlog::{Backlog, Flush};
use super::io::{self as cdio, CmsgBuf, FdKind, Received};
use super::protocol::*;
use crate::config::ChannelTable;
use crate::guest_warn;
use crate::idmap::IdMap;
use crate::limitlog::LimitKind;
use crate::ratelimit::GuestLog;
use crate::virtio_gpu::protocol as gpu;
use crate::virtio_gpu::sg::{GuestMem, SgError, SgList};

/// Most items (received fds, pipes) one context may hold; further fds are refused.
pub const MAX_ITEMS: usize = 1024;
/// Most distinct image requirements (GET_IMAGE_REQUIREMENTS replies, kept for any number of
/// CREATE_BLOBs) one context may hold. Identical queries share one entry; a guest allocator
/// such as sommelier's asks once per distinct (width, height, format), e.g. once per shm pool
/// size, for the life of the context.
pub const MAX_IMAGE_REQUIREMENTS: usize = 4096;
/// Most image requirements all contexts of a VM may hold together (about 50 bytes each).
pub const MAX_IMAGE_REQUIREMENTS_PER_VM: usize = 65536;
/// Most bytes copied into daemon memory for one slow host peer (channel socket or pipe).
pub const MAX_BACKLOG_BYTES: usize = 8 << 20;
/// Most guest requests held (left uncompleted, their bytes in guest memory) for one slow host
/// peer; beyond it, further messages are copied (up to [`MAX_BACKLOG_BYTES`]) and completed.
/// Keeps one stalled host service from occupying the whole control queue, which every context
/// of the VM shares.
pub const MAX_HELD_PER_PEER: usize = 64;

/// epoll token source for the channel socket; other sources are item ids.
const SRC_CHANNEL: u32 = 0;

fn token(ctx_id: u32, src: u32) -> u64 {
    (u64::from(ctx_id) << 32) | u64::from(src)
}

/// Split an epoll token into (context id, source).
pub fn token_parts(t: u64) -> (u32, u32) {
    ((t >> 32) as u32, t as u32)
}

/// The capset payload for the configured channels.
pub fn capabilities(channels: &ChannelTable) -> Capabilities {
    Capabilities {
        version: 1,
        supported_channels: channels.capset_mask(),
        supports_dmabuf: 0,
        supports_external_gpu_memory: 0,
    }
}

/// Why a cross-domain command was refused. Each maps to a virtio-gpu error response.
#[derive(Debug, thiserror::Error)]
pub enum CtxError {
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
    #[error("image requirements: {0}")]
    Image(#[from] super::image::ImageError),
    #[error("blob id {0:#x} names no image requirements or received memory")]
    UnknownBlob(u32),
    #[error("blob size {got} does not match the {expected} bytes of blob id {id:#x}")]
    BlobSize { id: u32, expected: u64, got: u64 },
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
    /// The virtio-gpu response type for this error.
    pub fn response(&self) -> u32 {
        match self {
            CtxError::RingNotAttached(_)
            | CtxError::ResourceNotAttached(_)
            | CtxError::NotSendable(_) => gpu::RESP_ERR_INVALID_RESOURCE_ID,
            CtxError::Image(super::image::ImageError::UnsupportedFormat(_)) => {
                gpu::RESP_ERR_INVALID_PARAMETER
            }
            CtxError::Image(_) => gpu::RESP_ERR_OUT_OF_MEMORY,
            CtxError::TooManyItems
            | CtxError::TooManyImageRequirements
            | CtxError::VmImageRequirementsExhausted
            | CtxError::BacklogFull(_) => gpu::RESP_ERR_OUT_OF_MEMORY,
            CtxError::Connect { .. }
            | CtxError::HostIo(_)
            | CtxError::ChannelClosed
            | CtxError::Unsupported(_) => gpu::RESP_ERR_UNSPEC,
            _ => gpu::RESP_ERR_INVALID_PARAMETER,
        }
    }

    /// The limit this error reports, with its value; `None` for other errors. Limits are
    /// logged once per context (see [`GuestLog::limit_hit`]).
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
            _ => None,
        }
    }
}

/// What a resource id means to a context.
pub enum Lookup<'a> {
    /// No such resource, or not attached to this context.
    NotAttached,
    /// Attached and backed by guest pages.
    Guest(&'a SgList),
    /// Attached, without guest pages (e.g. a 2D resource without backing).
    Unbacked,
    /// Attached and backed by host memory (a memfd or dma-buf) that can be passed on.
    Host(std::os::fd::BorrowedFd<'a>),
}

/// The resources visible to one context (implemented by the virtio-gpu layer).
pub trait ResourceView {
    /// Look up `res_id` among the resources attached to this context.
    fn lookup(&self, res_id: u32) -> Lookup<'_>;
}

/// Reusable buffers so the per-message path does not allocate.
#[derive(Default)]
pub struct Scratch {
    iov: Vec<libc::iovec>,
    fds: Vec<OwnedFd>,
    raw: Vec<RawFd>,
    pipes: Vec<(u32, OwnedFd)>,
    cmsg: CmsgBuf,
}

// SAFETY: the iovec pointers in `Scratch::iov` are only meaningful during one call and are
// cleared before every use; holding stale values across threads is harmless because they are
// never dereferenced outside the call that set them.
unsafe impl Send for Scratch {}

/// What a context needs from the device for one operation.
pub struct Env<'a> {
    pub mem: &'a GuestMem,
    pub epoll: &'a Epoll,
    pub channels: &'a ChannelTable,
    pub scratch: &'a mut Scratch,
    pub limiter: &'a mut GuestLog,
    /// Control-queue head of the request being processed, when it may be held (left
    /// uncompleted while its bytes wait for a slow host peer); `None` when it must complete
    /// now (fenced submissions, host events).
    pub hold: Option<u16>,
    /// Set by the context: how many queued chunks now hold the request `hold`.
    pub holds: u32,
    /// Heads of held requests whose last queued bytes went out or were dropped.
    pub released: &'a mut Vec<u16>,
    /// How many more image requirements the VM may store (a VM-wide budget kept by the
    /// device); the context takes one for every one it stores.
    pub images_left: usize,
}

impl Env<'_> {
    /// Send what `out` holds towards its peer `fd` (a socket when `socket`), with this
    /// operation's guest memory, scratch buffers and release list.
    fn flush(
        &mut self,
        out: &mut Backlog,
        fd: BorrowedFd<'_>,
        socket: bool,
    ) -> stdio::Result<Flush> {
        out.flush(
            fd,
            socket,
            self.mem,
            &mut self.scratch.iov,
            &mut self.scratch.cmsg,
            self.released,
        )
    }
}

struct Channel {
    sock: OwnedFd,
    path: PathBuf,
    readable: bool,
    eof: bool,
    out: Backlog,
    out_armed: bool,
}

struct Connection {
    /// Receives GET_IMAGE_REQUIREMENTS replies.
    query_ring: SgList,
    channel_ring: SgList,
    channel_type: u32,
    channel: Option<Channel>,
}

enum Item {
    /// Seekable memory received from the host (memfd, dma-buf), waiting to become a blob.
    Memory { fd: OwnedFd, size: u64 },
    /// A pipe write end received from the host; the guest WRITEs into it.
    WritePipe {
        fd: OwnedFd,
        out: Backlog,
        armed: bool,
        close_when_flushed: bool,
    },
    /// The read end of a pipe created for a guest READ_PIPE; streamed back as READ.
    ReadPipe { fd: OwnedFd, readable: bool },
}

/// A stored GET_IMAGE_REQUIREMENTS reply.
#[derive(Clone, Copy)]
struct StoredImage {
    size: u64,
    map_info: u32,
}

/// One cross-domain context.
pub struct Context {
    id: u32,
    name: String,
    conn: Option<Connection>,
    items: IdMap<u32, Item>,
    /// Stored GET_IMAGE_REQUIREMENTS replies by blob id: any number of blobs of exactly `size`
    /// bytes, with `map_info`. Ids come from the items' id space.
    images: IdMap<u32, StoredImage>,
    /// The blob id already given for a (width, height, drm_format) query (96-bit keys: std's
    /// hasher, as `IdMap` takes at most 64 bits; not on a per-message path).
    image_ids: HashMap<(u32, u32, u32), u32>,
    last_item_id: u32,
    last_read_pipe_id: u32,
    poll_fence: Option<u64>,
    channel_first: bool,
}

const CHANNEL_EVENTS: EpollFlags = EpollFlags::EPOLLIN
    .union(EpollFlags::EPOLLRDHUP)
    .union(EpollFlags::EPOLLET);

impl Context {
    /// A new, uninitialised context.
    pub fn new(id: u32, name: String) -> Self {
        Context {
            id,
            name,
            conn: None,
            items: IdMap::default(),
            images: IdMap::default(),
            image_ids: HashMap::new(),
            last_item_id: 1,
            last_read_pipe_id: READ_PIPE_ID_BASE,
            poll_fence: None,
            channel_first: true,
        }
    }

    /// The guest's debug name for this context.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of items held (for limits and tests).
    pub fn item_count(&self) -> usize {
        self.items.len()
    }

    /// Number of image requirements stored (counted against the VM-wide budget).
    pub fn image_count(&self) -> usize {
        self.images.len()
    }

    /// Process the command stream `[start, start + len)` of a SUBMIT_3D request.
    pub fn submit(
        &mut self,
        env: &mut Env<'_>,
        res: &dyn ResourceView,
        stream: &SgList,
        start: usize,
        len: usize,
    ) -> Result<(), CtxError> {
        let end = start + len;
        let mut off = start;
        while off < end {
            let remaining = end - off;
            if remaining < std::mem::size_of::<CmdHeader>() {
                return Err(CtxError::BadCmdSize {
                    offset: off - start,
                    size: remaining,
                    remaining,
                });
            }
            let hdr: CmdHeader = stream.read_obj(env.mem, off)?;
            let size = usize::from(hdr.cmd_size);
            if size < std::mem::size_of::<CmdHeader>() || size > remaining {
                return Err(CtxError::BadCmdSize {
                    offset: off - start,
                    size,
                    remaining,
                });
            }
            match hdr.cmd {
                CMD_INIT => self.init(env, res, stream, off, size)?,
                CMD_GET_IMAGE_REQUIREMENTS => self.image_requirements(env, stream, off, size)?,
                CMD_POLL => {} // the accompanying ring-1 fence does the work
                CMD_SEND => self.send(env, res, stream, off, size)?,
                CMD_WRITE => self.write(env, stream, off, size)?,
                other => return Err(CtxError::UnknownCommand(other)),
            }
            off += size;
        }
        Ok(())
    }

    fn fixed<T: ByteValued + Default>(
        env: &Env<'_>,
        stream: &SgList,
        off: usize,
        size: usize,
    ) -> Result<T, CtxError> {
        if size < std::mem::size_of::<T>() {
            return Err(CtxError::BadCmdSize {
                offset: off,
                size,
                remaining: size,
            });
        }
        Ok(stream.read_obj(env.mem, off)?)
    }

    fn ring(res: &dyn ResourceView, id: u32, need: usize) -> Result<SgList, CtxError> {
        match res.lookup(id) {
            Lookup::NotAttached => Err(CtxError::RingNotAttached(id)),
            Lookup::Guest(sg) if sg.len() >= need => Ok(sg.clone()),
            Lookup::Guest(sg) => Err(CtxError::RingTooSmall {
                id,
                size: sg.len(),
                need,
            }),
            Lookup::Unbacked | Lookup::Host(_) => Err(CtxError::RingTooSmall { id, size: 0, need }),
        }
    }

    fn init(
        &mut self,
        env: &mut Env<'_>,
        res: &dyn ResourceView,
        stream: &SgList,
        off: usize,
        size: usize,
    ) -> Result<(), CtxError> {
        if self.conn.is_some() {
            return Err(CtxError::AlreadyInitialized);
        }
        let (query_id, channel_id, channel_type) = match size {
            INIT_SIZE_LEGACY => {
                let i: InitLegacy = Self::fixed(env, stream, off, size)?;
                (i.ring_id, i.ring_id, i.channel_type)
            }
            INIT_SIZE_V1 | INIT_SIZE_PROTOCOL_VERSION | INIT_SIZE_UUID => {
                let i: Init = Self::fixed(env, stream, off, size)?;
                if size == INIT_SIZE_PROTOCOL_VERSION {
                    let v: u32 = stream.read_obj(env.mem, off + INIT_SIZE_V1)?;
                    debug!("ctx {}: INIT protocol_version {v}", self.id);
                }
                (i.query_ring_id, i.channel_ring_id, i.channel_type)
            }
            _ => {
                return Err(CtxError::BadCmdSize {
                    offset: off,
                    size,
                    remaining: size,
                })
            }
        };
        let query_ring = Self::ring(res, query_id, std::mem::size_of::<ImageRequirements>())?;
        if channel_type == 0 {
            info!(
                "ctx {} ({}): INIT query-only (channel type 0)",
                self.id, self.name
            );
            self.conn = Some(Connection {
                channel_ring: query_ring.clone(),
                query_ring,
                channel_type,
                channel: None,
            });
            return Ok(());
        }
        let channel_ring = Self::ring(res, channel_id, CHANNEL_RING_MIN_SIZE)?;
        let path = env
            .channels
            .get(channel_type)
            .ok_or(CtxError::ChannelNotConfigured(channel_type))?;
        // Sandboxed, the connection broker makes the connection (see crate::sandbox::broker).
        let sock = crate::sandbox::connect_channel(channel_type, path).map_err(|source| {
            CtxError::Connect {
                channel_type,
                path: path.to_path_buf(),
                source,
            }
        })?;
        env.epoll
            .add(
                &sock,
                EpollEvent::new(CHANNEL_EVENTS, token(self.id, SRC_CHANNEL)),
            )
            .map_err(|e| CtxError::HostIo(e.into()))?;
        info!(
            "ctx {} ({}): INIT channel {:#x} -> {}",
            self.id,
            self.name,
            channel_type,
            path.display()
        );
        self.conn = Some(Connection {
            query_ring,
            channel_ring,
            channel_type,
            channel: Some(Channel {
                sock,
                path: path.to_path_buf(),
                readable: true,
                eof: false,
                out: Backlog::default(),
                out_armed: false,
            }),
        });
        Ok(())
    }

    fn send(
        &mut self,
        env: &mut Env<'_>,
        res: &dyn ResourceView,
        stream: &SgList,
        off: usize,
        size: usize,
    ) -> Result<(), CtxError> {
        let hdr: SendReceive = Self::fixed(env, stream, off, size)?;
        let hdr_len = std::mem::size_of::<SendReceive>();
        let count = hdr.num_identifiers as usize;
        if count > MAX_IDENTIFIERS {
            return Err(CtxError::TooManyIdentifiers(hdr.num_identifiers));
        }
        let data_len = hdr.opaque_data_size as usize;
        if data_len > size - hdr_len {
            return Err(CtxError::BadCmdSize {
                offset: off,
                size,
                remaining: size,
            });
        }
        let ctx_id = self.id;
        let Some(conn) = self.conn.as_mut() else {
            return Err(CtxError::NotInitialized);
        };
        let Some(chan) = conn.channel.as_mut() else {
            return Err(CtxError::NoChannel);
        };

        // Resolve identifiers into fds to pass.
        let scratch = &mut *env.scratch;
        scratch.fds.clear();
        // Read ends of pipes created for READ_PIPE identifiers, registered once the SEND went
        // well. The scratch vector lends its capacity; on an error return this local is
        // dropped, closing the pipes.
        let mut read_pipes = std::mem::take(&mut scratch.pipes);
        read_pipes.clear();
        let mut next_pipe = self.last_read_pipe_id;
        for i in 0..count {
            let id = hdr.identifiers[i];
            match hdr.identifier_types[i] {
                ID_TYPE_READ_PIPE => {
                    let expected = next_pipe.wrapping_add(1).max(READ_PIPE_ID_BASE);
                    if id != expected {
                        return Err(CtxError::ReadPipeIdMismatch { expected, got: id });
                    }
                    if self.items.len() + i >= MAX_ITEMS {
                        return Err(CtxError::TooManyItems);
                    }
                    next_pipe = expected;
                    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                        .map_err(|e| CtxError::HostIo(e.into()))?;
                    cdio::set_nonblocking(r.as_fd()).map_err(CtxError::HostIo)?;
                    scratch.fds.push(w);
                    read_pipes.push((id, r));
                }
                ID_TYPE_VIRTGPU_BLOB => match res.lookup(id) {
                    Lookup::NotAttached => return Err(CtxError::ResourceNotAttached(id)),
                    Lookup::Guest(_) | Lookup::Unbacked => return Err(CtxError::NotSendable(id)),
                    Lookup::Host(fd) => {
                        let fd = fd.try_clone_to_owned().map_err(CtxError::HostIo)?;
                        scratch.fds.push(fd);
                    }
                },
                other => return Err(CtxError::UnsupportedIdentifierType(other)),
            }
        }
        // Read-pipe ids are consumed once the SEND is well-formed, as the guest's counter is.
        self.last_read_pipe_id = next_pipe;
        if data_len == 0 && !scratch.fds.is_empty() {
            return Err(CtxError::FdsWithoutData);
        }

        let data_off = off + hdr_len;
        if !chan.out.is_empty() {
            // The peer may have drained since the last EPOLLOUT: try before queueing behind.
            if let Err(e) = env.flush(&mut chan.out, chan.sock.as_fd(), true) {
                chan.out.discard(env.released);
                return Err(send_failed(
                    ctx_id,
                    &self.name,
                    conn.channel_type,
                    &chan.path,
                    e,
                ));
            }
        }
        if chan.out.is_empty() {
            let scratch = &mut *env.scratch;
            scratch.iov.clear();
            stream.iovecs(env.mem, data_off, data_len, &mut scratch.iov)?;
            scratch.raw.clear();
            scratch
                .raw
                .extend(scratch.fds.iter().map(|f| f.as_raw_fd()));
            let sent = match cdio::send_with_fds(
                chan.sock.as_fd(),
                &scratch.iov,
                &scratch.raw,
                &mut scratch.cmsg,
            ) {
                Ok(n) => n,
                Err(e) if e.kind() == stdio::ErrorKind::WouldBlock => 0,
                Err(e) => {
                    scratch.iov.clear();
                    return Err(send_failed(
                        ctx_id,
                        &self.name,
                        conn.channel_type,
                        &chan.path,
                        e,
                    ));
                }
            };
            scratch.iov.clear();
            if sent < data_len {
                // The fds went out with the first byte, if any byte went out.
                let fds = if sent == 0 {
                    std::mem::take(&mut scratch.fds)
                } else {
                    Vec::new()
                };
                // Part of the message is out: the rest must follow, so no byte limit.
                queue(
                    &mut chan.out,
                    env,
                    stream,
                    data_off + sent,
                    data_len - sent,
                    fds,
                    sent == 0,
                )?;
            }
        } else {
            let fds = std::mem::take(&mut env.scratch.fds);
            queue(&mut chan.out, env, stream, data_off, data_len, fds, true)?;
        }
        let scratch = &mut *env.scratch;
        scratch.fds.clear();
        if !chan.out.is_empty() && !chan.out_armed {
            let mut ev = EpollEvent::new(
                CHANNEL_EVENTS | EpollFlags::EPOLLOUT,
                token(ctx_id, SRC_CHANNEL),
            );
            if !chan.eof {
                env.epoll
                    .modify(&chan.sock, &mut ev)
                    .map_err(|e| CtxError::HostIo(e.into()))?;
            } else {
                env.epoll
                    .add(&chan.sock, ev)
                    .map_err(|e| CtxError::HostIo(e.into()))?;
            }
            chan.out_armed = true;
        }
        for (id, fd) in read_pipes.drain(..) {
            env.epoll
                .add(&fd, EpollEvent::new(CHANNEL_EVENTS, token(ctx_id, id)))
                .map_err(|e| CtxError::HostIo(e.into()))?;
            self.items.insert(id, Item::ReadPipe { fd, readable: true });
        }
        env.scratch.pipes = read_pipes;
        Ok(())
    }

    fn write(
        &mut self,
        env: &mut Env<'_>,
        stream: &SgList,
        off: usize,
        size: usize,
    ) -> Result<(), CtxError> {
        let rw: ReadWrite = Self::fixed(env, stream, off, size)?;
        let hdr_len = std::mem::size_of::<ReadWrite>();
        let data_len = rw.opaque_data_size as usize;
        if data_len > size - hdr_len {
            return Err(CtxError::BadCmdSize {
                offset: off,
                size,
                remaining: size,
            });
        }
        let id = rw.identifier;
        let Some(Item::WritePipe {
            fd,
            out,
            armed,
            close_when_flushed,
        }) = self.items.get_mut(&id)
        else {
            return Err(CtxError::UnknownItem(id));
        };
        let data_off = off + hdr_len;
        if !out.is_empty() {
            // The reader may have drained since the last EPOLLOUT: try before queueing behind.
            if let Err(e) = env.flush(out, fd.as_fd(), false) {
                debug!("ctx {}: write pipe {id:#x} failed: {e}", self.id);
                self.remove_item(env.epoll, id, env.released);
                return Err(CtxError::HostIo(e));
            }
        }
        if out.is_empty() && data_len > 0 {
            let scratch = &mut *env.scratch;
            scratch.iov.clear();
            stream.iovecs(env.mem, data_off, data_len, &mut scratch.iov)?;
            let res = cdio::writev(fd.as_fd(), &scratch.iov);
            scratch.iov.clear();
            let written = match res {
                Ok(Some(n)) => n,
                Ok(None) => 0,
                Err(e) => {
                    debug!("ctx {}: write pipe {id:#x} failed: {e}", self.id);
                    self.remove_item(env.epoll, id, env.released);
                    return Err(CtxError::HostIo(e));
                }
            };
            if written < data_len {
                let rest = data_len - written;
                queue(
                    out,
                    env,
                    stream,
                    data_off + written,
                    rest,
                    Vec::new(),
                    written == 0,
                )?;
            }
        } else if data_len > 0 {
            queue(out, env, stream, data_off, data_len, Vec::new(), true)?;
        }
        if !out.is_empty() && !*armed {
            env.epoll
                .add(
                    &*fd,
                    EpollEvent::new(
                        EpollFlags::EPOLLOUT | EpollFlags::EPOLLET,
                        token(self.id, id),
                    ),
                )
                .map_err(|e| CtxError::HostIo(e.into()))?;
            *armed = true;
        }
        if rw.hang_up != 0 {
            if out.is_empty() {
                self.remove_item(env.epoll, id, env.released);
            } else {
                *close_when_flushed = true;
            }
        }
        Ok(())
    }

    fn image_requirements(
        &mut self,
        env: &mut Env<'_>,
        stream: &SgList,
        off: usize,
        size: usize,
    ) -> Result<(), CtxError> {
        let q: GetImageRequirements = Self::fixed(env, stream, off, size)?;
        let Some(conn) = self.conn.as_ref() else {
            return Err(CtxError::NotInitialized);
        };
        let mut reqs = super::image::requirements(
            q.width,
            q.height,
            q.drm_format,
            super::image::host_page_size(),
        )?;
        // The reply depends on nothing but the key: a repeated query gets the same blob id.
        let key = (q.width, q.height, q.drm_format);
        if let Some(&id) = self.image_ids.get(&key) {
            reqs.blob_id = id;
            conn.query_ring.write_obj(env.mem, 0, &reqs)?;
            return Ok(());
        }
        if self.images.len() >= MAX_IMAGE_REQUIREMENTS {
            return Err(CtxError::TooManyImageRequirements);
        }
        if env.images_left == 0 {
            return Err(CtxError::VmImageRequirementsExhausted);
        }
        env.images_left -= 1;
        let id = next_item_id(&mut self.last_item_id, |id| {
            self.items.contains_key(&id) || self.images.contains_key(&id)
        });
        reqs.blob_id = id;
        conn.query_ring.write_obj(env.mem, 0, &reqs)?;
        self.images.insert(
            id,
            StoredImage {
                size: reqs.size,
                map_info: reqs.map_info,
            },
        );
        self.image_ids.insert(key, id);
        Ok(())
    }

    /// The host memory for RESOURCE_CREATE_BLOB(HOST3D, `blob_id`, `size`): a new memfd for
    /// stored image requirements (which stay valid), or the received memory fd named by
    /// `blob_id` (consumed). Returns the fd, its `map_info` cache type and whether it may be
    /// mapped writable.
    pub fn take_blob(&mut self, blob_id: u32, size: u64) -> Result<(OwnedFd, u32, bool), CtxError> {
        if let Some(&StoredImage {
            size: expected,
            map_info,
        }) = self.images.get(&blob_id)
        {
            if size != expected {
                return Err(CtxError::BlobSize {
                    id: blob_id,
                    expected,
                    got: size,
                });
            }
            let fd = new_memfd(size).map_err(CtxError::HostIo)?;
            return Ok((fd, map_info, true));
        }
        match self.items.get(&blob_id) {
            Some(Item::Memory { size: have, .. }) => {
                let page = super::image::host_page_size();
                let limit = have.div_ceil(page) * page;
                if size == 0 || size > limit {
                    return Err(CtxError::BlobSize {
                        id: blob_id,
                        expected: *have,
                        got: size,
                    });
                }
                let have = *have;
                let Some(Item::Memory { fd, .. }) = self.items.remove(&blob_id) else {
                    return Err(CtxError::UnknownBlob(blob_id));
                };
                let writable = cdio::memory_writable(fd.as_fd());
                let (fd, writable) = whole_pages(self.id, fd, have, limit, writable)?;
                Ok((fd, super::image::MAP_CACHE_CACHED, writable))
            }
            _ => Err(CtxError::UnknownBlob(blob_id)),
        }
    }

    fn remove_item(&mut self, epoll: &Epoll, id: u32, released: &mut Vec<u16>) {
        if let Some(mut item) = self.items.remove(&id) {
            if let Item::WritePipe { out, .. } = &mut item {
                out.discard(released);
            }
            match &item {
                Item::ReadPipe { fd, .. } => {
                    let _ = epoll.delete(fd);
                }
                Item::WritePipe {
                    fd, armed: true, ..
                } => {
                    let _ = epoll.delete(fd);
                }
                _ => {}
            }
        }
    }

    /// A POLL fence on the channel ring: the next message completes it. A newer fence replaces
    /// an older one (completing the newer completes both on the guest's timeline).
    pub fn arm_poll(&mut self, fence_id: u64) {
        self.poll_fence = Some(fence_id);
    }

    /// The POLL fence waiting for a message, if any.
    pub fn pending_poll(&self) -> Option<u64> {
        self.poll_fence
    }

    /// An epoll event for this context's source `src`.
    pub fn on_event(&mut self, env: &mut Env<'_>, src: u32, events: EpollFlags) {
        let readable = events.intersects(
            EpollFlags::EPOLLIN
                | EpollFlags::EPOLLHUP
                | EpollFlags::EPOLLRDHUP
                | EpollFlags::EPOLLERR,
        );
        let writable = events.intersects(EpollFlags::EPOLLOUT | EpollFlags::EPOLLERR);
        if src == SRC_CHANNEL {
            let ctx_id = self.id;
            let Some(chan) = self.conn.as_mut().and_then(|c| c.channel.as_mut()) else {
                return;
            };
            if readable && !chan.eof {
                chan.readable = true;
            }
            if writable && chan.out_armed {
                match env.flush(&mut chan.out, chan.sock.as_fd(), true) {
                    Ok(Flush::Pending) => {}
                    Ok(Flush::Done) => {
                        chan.out_armed = false;
                        if chan.eof {
                            let _ = env.epoll.delete(&chan.sock);
                        } else {
                            let mut ev =
                                EpollEvent::new(CHANNEL_EVENTS, token(ctx_id, SRC_CHANNEL));
                            let _ = env.epoll.modify(&chan.sock, &mut ev);
                        }
                    }
                    Err(e) => {
                        info!(
                            "ctx {ctx_id}: channel {} hung up while sending: {e}",
                            chan.path.display()
                        );
                        chan.out.discard(env.released);
                        chan.out_armed = false;
                        if chan.eof {
                            let _ = env.epoll.delete(&chan.sock);
                        } else {
                            let mut ev =
                                EpollEvent::new(CHANNEL_EVENTS, token(ctx_id, SRC_CHANNEL));
                            let _ = env.epoll.modify(&chan.sock, &mut ev);
                        }
                    }
                }
            }
            return;
        }
        let mut remove = false;
        match self.items.get_mut(&src) {
            Some(Item::ReadPipe { readable: r, .. }) if readable => *r = true,
            Some(Item::WritePipe {
                fd,
                out,
                armed,
                close_when_flushed,
            }) if writable => match env.flush(out, fd.as_fd(), false) {
                Ok(Flush::Pending) => {}
                Ok(Flush::Done) => {
                    let _ = env.epoll.delete(&*fd);
                    *armed = false;
                    remove = *close_when_flushed;
                }
                Err(e) => {
                    debug!("ctx {}: write pipe {src:#x} closed: {e}", self.id);
                    remove = true;
                }
            },
            _ => {}
        }
        if remove {
            self.remove_item(env.epoll, src, env.released);
        }
    }

    /// If a POLL is pending and a source has data, write one message into the channel ring and
    /// return the fence it completes.
    pub fn try_deliver(&mut self, env: &mut Env<'_>) -> Option<u64> {
        self.poll_fence?;
        self.conn.as_ref()?;
        let channel_first = self.channel_first;
        self.channel_first = !self.channel_first;
        let order = if channel_first {
            [true, false]
        } else {
            [false, true]
        };
        let delivered = order.into_iter().any(|channel| {
            if channel {
                self.try_channel(env)
            } else {
                self.try_pipes(env)
            }
        });
        if delivered {
            self.poll_fence.take()
        } else {
            None
        }
    }

    fn try_channel(&mut self, env: &mut Env<'_>) -> bool {
        let ctx_id = self.id;
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        let Some(chan) = conn.channel.as_mut() else {
            return false;
        };
        if !chan.readable || chan.eof {
            return false;
        }
        let ring = &conn.channel_ring;
        let hdr_len = std::mem::size_of::<SendReceive>();
        let cap = MAX_RECEIVE_DATA.min(ring.len() - hdr_len);
        let scratch = &mut *env.scratch;
        scratch.iov.clear();
        if let Err(e) = ring.iovecs(env.mem, hdr_len, cap, &mut scratch.iov) {
            guest_warn!(env.limiter, "ctx {ctx_id}: channel ring unusable: {e}");
            return false;
        }
        scratch.fds.clear();
        let res = cdio::recv_with_fds(
            chan.sock.as_fd(),
            &scratch.iov,
            &mut scratch.fds,
            &mut scratch.cmsg,
        );
        scratch.iov.clear();
        let mut msg = SendReceive::default();
        msg.hdr.cmd = CMD_RECEIVE;
        match res {
            Ok(Received::WouldBlock) => {
                chan.readable = false;
                return false;
            }
            Ok(Received::Data { len, truncated_fds }) => {
                if truncated_fds {
                    warn!(
                        "ctx {ctx_id}: host sent more than {MAX_IDENTIFIERS} fds in one message; extra fds were dropped"
                    );
                }
                msg.opaque_data_size = len as u32;
                let mut n = 0usize;
                let fds = std::mem::take(&mut scratch.fds);
                for fd in fds {
                    let kind = cdio::classify(fd.as_fd());
                    let (ty, size, item) = match kind {
                        FdKind::Memory { size } => {
                            (ID_TYPE_VIRTGPU_BLOB, size as u32, Item::Memory { fd, size })
                        }
                        FdKind::WritePipe => {
                            if let Err(e) = cdio::set_nonblocking(fd.as_fd()) {
                                warn!("ctx {ctx_id}: refusing write pipe: {e}");
                                continue;
                            }
                            (
                                ID_TYPE_WRITE_PIPE,
                                0,
                                Item::WritePipe {
                                    fd,
                                    out: Backlog::default(),
                                    armed: false,
                                    close_when_flushed: false,
                                },
                            )
                        }
                        FdKind::Refused(what) => {
                            guest_warn!(
                                env.limiter,
                                "ctx {ctx_id}: refused a {what} from channel {}; closed it",
                                chan.path.display()
                            );
                            continue;
                        }
                    };
                    // Allocate after classification so refused fds consume no id.
                    let Ok(id) = alloc_item_id(&mut self.last_item_id, &self.items, &self.images)
                    else {
                        env.limiter.limit_hit(
                            ctx_id,
                            LimitKind::ItemsPerContext,
                            MAX_ITEMS,
                            format_args!("ctx {ctx_id}: item table full; dropped a received fd"),
                        );
                        continue;
                    };
                    self.items.insert(id, item);
                    msg.identifiers[n] = id;
                    msg.identifier_types[n] = ty;
                    msg.identifier_sizes[n] = size;
                    n += 1;
                }
                msg.num_identifiers = n as u32;
            }
            Ok(Received::Eof) => {
                info!(
                    "ctx {ctx_id} ({}): channel {:#x} ({}) hung up",
                    self.name,
                    conn.channel_type,
                    chan.path.display()
                );
                chan.eof = true;
                chan.readable = false;
                if !chan.out_armed {
                    let _ = env.epoll.delete(&chan.sock);
                }
            }
            Err(e) => {
                info!(
                    "ctx {ctx_id} ({}): channel {:#x} ({}) failed: {e}; treating as hang-up",
                    self.name,
                    conn.channel_type,
                    chan.path.display()
                );
                chan.eof = true;
                chan.readable = false;
                let _ = env.epoll.delete(&chan.sock);
                chan.out.discard(env.released);
                chan.out_armed = false;
            }
        }
        msg.hdr.cmd_size = (hdr_len + msg.opaque_data_size as usize) as u16;
        if let Err(e) = ring.write_obj(env.mem, 0, &msg) {
            guest_warn!(env.limiter, "ctx {ctx_id}: channel ring write failed: {e}");
        }
        true
    }

    fn try_pipes(&mut self, env: &mut Env<'_>) -> bool {
        let ctx_id = self.id;
        loop {
            let Some(id) = self
                .items
                .iter()
                .find(|(_, it)| matches!(it, Item::ReadPipe { readable: true, .. }))
                .map(|(id, _)| *id)
            else {
                return false;
            };
            let Some(conn) = self.conn.as_ref() else {
                return false;
            };
            let Some(Item::ReadPipe { fd, readable }) = self.items.get_mut(&id) else {
                return false;
            };
            let ring = &conn.channel_ring;
            let hdr_len = std::mem::size_of::<ReadWrite>();
            let cap = ring.len() - hdr_len;
            let cap = cap.min(CHANNEL_RING_MIN_SIZE - hdr_len);
            let scratch = &mut *env.scratch;
            scratch.iov.clear();
            if let Err(e) = ring.iovecs(env.mem, hdr_len, cap, &mut scratch.iov) {
                guest_warn!(env.limiter, "ctx {ctx_id}: channel ring unusable: {e}");
                *readable = false;
                return false;
            }
            let res = cdio::readv(fd.as_fd(), &scratch.iov);
            scratch.iov.clear();
            let (len, hang_up) = match res {
                Ok(None) => {
                    *readable = false;
                    continue;
                }
                Ok(Some(0)) => (0, true),
                Ok(Some(n)) => (n, false),
                Err(e) => {
                    debug!("ctx {ctx_id}: read pipe {id:#x} failed: {e}");
                    (0, true)
                }
            };
            let msg = ReadWrite {
                hdr: CmdHeader {
                    cmd: CMD_READ,
                    ring_idx: 0,
                    cmd_size: (hdr_len + len) as u16,
                    pad: 0,
                },
                identifier: id,
                hang_up: u32::from(hang_up),
                opaque_data_size: len as u32,
                pad: 0,
            };
            if let Err(e) = ring.write_obj(env.mem, 0, &msg) {
                guest_warn!(env.limiter, "ctx {ctx_id}: channel ring write failed: {e}");
            }
            if hang_up {
                self.remove_item(env.epoll, id, env.released);
            }
            return true;
        }
    }

    /// Stop watching everything and close all host fds. Returns the pending POLL fence, which
    /// the caller completes so the guest does not hang; the heads of requests held for unsent
    /// output go to `released`.
    pub fn teardown(&mut self, epoll: &Epoll, released: &mut Vec<u16>) -> Option<u64> {
        if let Some(conn) = self.conn.take() {
            if let Some(mut chan) = conn.channel {
                chan.out.discard(released);
                if !chan.eof || chan.out_armed {
                    let _ = epoll.delete(&chan.sock);
                }
                info!(
                    "ctx {} ({}): closing channel {:#x} ({})",
                    self.id,
                    self.name,
                    conn.channel_type,
                    chan.path.display()
                );
            }
        }
        let ids: Vec<u32> = self.items.keys().copied().collect();
        for id in ids {
            self.remove_item(epoll, id, released);
        }
        self.poll_fence.take()
    }
}

/// Queue `[off, off + len)` of the request `stream` behind a slow host peer: held in guest
/// memory while the request may be held and the peer's budget allows, copied otherwise
/// (refused past [`MAX_BACKLOG_BYTES`] when `limit` is set; the unsent rest of a partly sent
/// message is never refused, as its start is already out).
fn queue(
    out: &mut Backlog,
    env: &mut Env<'_>,
    stream: &SgList,
    off: usize,
    len: usize,
    fds: Vec<OwnedFd>,
    limit: bool,
) -> Result<(), CtxError> {
    if let Some(head) = env.hold {
        if out.held() < MAX_HELD_PER_PEER {
            out.push_guest(stream.clone(), off, len, fds, head);
            env.holds += 1;
            return Ok(());
        }
    }
    if limit && out.owned_bytes() + len > MAX_BACKLOG_BYTES {
        return Err(CtxError::BacklogFull(out.owned_bytes()));
    }
    let mut data = vec![0u8; len];
    stream.read_at(env.mem, off, &mut data)?;
    out.push_owned(data, fds);
    Ok(())
}

/// Next free id for a non-read-pipe item: 2.. below the read-pipe range (first id 2, as
/// libkrun and magma), skipping ids still in use after a wrap.
fn alloc_item_id(
    last: &mut u32,
    items: &IdMap<u32, Item>,
    images: &IdMap<u32, StoredImage>,
) -> Result<u32, CtxError> {
    if items.len() >= MAX_ITEMS {
        return Err(CtxError::TooManyItems);
    }
    Ok(next_item_id(last, |id| {
        items.contains_key(&id) || images.contains_key(&id)
    }))
}

/// The id after `last` in 2.. below the read-pipe range that `in_use` does not claim. Ends:
/// the two tables hold at most MAX_ITEMS + MAX_IMAGE_REQUIREMENTS ids of the ~2^31 in range.
fn next_item_id(last: &mut u32, in_use: impl Fn(u32) -> bool) -> u32 {
    loop {
        let mut id = last.wrapping_add(1);
        if !(2..READ_PIPE_ID_BASE).contains(&id) {
            id = 2;
        }
        *last = id;
        if !in_use(id) {
            return id;
        }
    }
}

/// Make received memory of `size` bytes hold whole host pages (`rounded` bytes): VMMs map blobs
/// in whole pages and QEMU refuses a mapping that runs past the end of its file (a Wayland
/// keymap is rarely a page multiple).
///
/// - Writable and not sealed against growing: grown in place with zeros, still shared.
/// - Otherwise copied once into a new memfd: exact for write-sealed memory (it cannot change),
///   a snapshot for a read-only view of memory someone else may still write (logged).
fn whole_pages(
    ctx_id: u32,
    fd: OwnedFd,
    size: u64,
    rounded: u64,
    writable: bool,
) -> Result<(OwnedFd, bool), CtxError> {
    if size == rounded {
        return Ok((fd, writable));
    }
    let seals = cdio::seals(fd.as_fd());
    if writable && seals & libc::F_SEAL_GROW == 0 {
        let len = i64::try_from(rounded)
            .map_err(|_| CtxError::HostIo(stdio::ErrorKind::InvalidInput.into()))?;
        match nix::unistd::ftruncate(&fd, len) {
            Ok(()) => return Ok((fd, true)),
            Err(e) => debug!("ctx {ctx_id}: cannot grow received memory to {rounded} bytes: {e}"),
        }
    }
    if seals & (libc::F_SEAL_WRITE | libc::F_SEAL_FUTURE_WRITE) == 0 {
        warn!(
            "ctx {ctx_id}: received memory of {size} bytes is not a page multiple and cannot \
             grow; the guest gets a copy, later host writes will not reach it"
        );
    }
    let copy = new_memfd(rounded).map_err(CtxError::HostIo)?;
    cdio::copy_contents(fd.as_fd(), copy.as_fd(), size).map_err(CtxError::HostIo)?;
    Ok((copy, false))
}

/// Log a failed send on a channel (the host service closed it or broke) and make the error.
fn send_failed(
    ctx_id: u32,
    name: &str,
    channel_type: u32,
    path: &Path,
    e: stdio::Error,
) -> CtxError {
    info!(
        "ctx {ctx_id} ({name}): channel {channel_type:#x} ({}) send failed: {e}",
        path.display()
    );
    CtxError::HostIo(e)
}

/// A sealable memfd of `size` bytes for a blob created from image requirements.
fn new_memfd(size: u64) -> stdio::Result<OwnedFd> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let fd = memfd_create(
        c"vhost-user-cross-domain-blob",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let len = i64::try_from(size).map_err(|_| stdio::Error::from_raw_os_error(libc::EFBIG))?;
    nix::unistd::ftruncate(&fd, len)?;
    Ok(fd)
}
