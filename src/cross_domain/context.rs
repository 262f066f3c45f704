//! One cross-domain context: the dispatch of its command stream (INIT and SEND here; the
//! other commands in the files that own what they touch: `blobs.rs`, `pipes.rs`,
//! `eventfds.rs`, `sockets.rs`; what it cannot serve in `unserved.rs`), the scheduling of host→guest
//! messages over its sources (one per POLL fence), the routing of host events, and teardown.
//!
//! What a context holds lives elsewhere, a file each: the channel socket (`channel.rs`), the
//! host peers its bytes go to (`peer.rs`), its items and their ids (`items.rs`), pipes
//! (`pipes.rs`), eventfds (`eventfds.rs`), blob memory and image requirements (`blobs.rs`),
//! the rotation over sources (`delivery.rs`). This file never reads or writes a host fd
//! itself.

use std::os::fd::OwnedFd;

use cross_domain_protocol::channel::CHANNEL_TYPE_INTERNAL_SOCKET;
use log::{debug, info};
use nix::sys::epoll::EpollFlags;
use vm_memory::ByteValued;

use super::backlog::HoldToken;
use super::blobs::{self, ImageQueries, PartialPages};
use super::channel::{Channel, Who};
use super::delivery::{Rotation, Source, Turn, CHANNEL_TOKEN};
use super::env::{Env, Lookup, ResourceView, Submission};
use super::error::CtxError;
use super::eventfds;
use super::hostpoll::HostPoll;
use super::items::{next_read_pipe_id, Item, ItemTable, MAX_ITEMS};
use super::peer::PeerError;
use super::pipes::ReadPipe;
use super::policy::{FdClass, FdPolicy};
use super::protocol::*;
use super::sockets::{self, SocketUuid};
use super::unserved::{Told, Unserved};
use crate::config::ChannelTable;
use crate::guest_mem::SgList;

/// The capset payload for the configured channels.
pub fn capabilities(channels: &ChannelTable) -> Capabilities {
    Capabilities {
        version: 1,
        supported_channels: channels.capset_mask(),
        supports_dmabuf: 0,
        supports_external_gpu_memory: 0,
    }
}

/// One command of a SUBMIT_3D command stream: `size` bytes at offset `off` of `stream`,
/// `rel` bytes after the start of the command stream.
pub(super) struct Cmd<'a> {
    pub stream: &'a SgList,
    pub off: usize,
    pub size: usize,
    rel: usize,
}

impl Cmd<'_> {
    /// The command's fixed-size struct `T` (its header included).
    pub fn read<T: ByteValued + Default>(&self, env: &Env<'_>) -> Result<T, CtxError> {
        if self.size < std::mem::size_of::<T>() {
            return Err(self.bad_size());
        }
        Ok(self.stream.read_obj(env.mem, self.off)?)
    }

    /// The offset in `stream` of `len` payload bytes that follow a `hdr_len`-byte struct,
    /// once they are known to lie inside the command.
    fn payload(&self, hdr_len: usize, len: usize) -> Result<usize, CtxError> {
        if len > self.size.saturating_sub(hdr_len) {
            return Err(self.bad_size());
        }
        Ok(self.off + hdr_len)
    }

    pub(super) fn bad_size(&self) -> CtxError {
        CtxError::BadCmdSize {
            offset: self.rel,
            size: self.size,
            remaining: self.size,
        }
    }
}

/// The rings a context writes into, and its channel (none for a query-only context).
struct Connection {
    /// Receives GET_IMAGE_REQUIREMENTS replies.
    query_ring: SgList,
    /// Receives RECEIVE and READ messages (the query ring again for a query-only context).
    channel_ring: SgList,
    /// The most of `channel_ring` one message fills: 4096 bytes, as every peer, unless the
    /// guest asked for a large ring and the channel offers one (docs/protocol.md "Large
    /// channel rings").
    ring_limit: usize,
    channel: Option<Channel>,
}

/// One cross-domain context.
pub struct Context {
    id: u32,
    name: String,
    conn: Option<Connection>,
    items: ItemTable,
    images: ImageQueries,
    poll_fence: Option<u64>,
    /// The sources that take turns writing into the channel ring.
    delivery: Rotation<Source>,
    /// What becomes of received memory that is not whole pages (the device's setting, taken
    /// at INIT).
    pages: PartialPages,
    /// The unserved features already logged for this context.
    told: Told,
}

impl Context {
    /// A new, uninitialised context.
    pub fn new(id: u32, name: String) -> Self {
        Context {
            id,
            name,
            conn: None,
            items: ItemTable::default(),
            images: ImageQueries::default(),
            poll_fence: None,
            delivery: Rotation::default(),
            pages: PartialPages::default(),
            told: Told::default(),
        }
    }

    /// The guest's debug name for this context.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of items held that count against [`MAX_ITEMS`] (for limits and tests).
    pub fn item_count(&self) -> usize {
        self.items.fd_items()
    }

    /// Number of image requirements stored (counted against the VM-wide budget).
    pub fn image_count(&self) -> usize {
        self.items.images()
    }

    fn who(&self) -> Who<'_> {
        Who {
            ctx_id: self.id,
            name: &self.name,
        }
    }

    /// Process the command stream `[start, start + len)` of a SUBMIT_3D request `sub`.
    pub fn submit(
        &mut self,
        env: &mut Env<'_>,
        sub: &mut Submission,
        res: &dyn ResourceView,
        stream: &SgList,
        start: usize,
        len: usize,
    ) -> Result<(), CtxError> {
        let result = self.run_commands(env, sub, res, stream, start, len);
        // Counted against the channel, once the context has one.
        if let (Err(_), Some(chan)) = (&result, self.conn.as_ref().and_then(|c| c.channel.as_ref()))
        {
            chan.stats().error();
        }
        result
    }

    fn run_commands(
        &mut self,
        env: &mut Env<'_>,
        sub: &mut Submission,
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
            let cmd = Cmd {
                stream,
                off,
                size,
                rel: off - start,
            };
            match hdr.cmd {
                CMD_INIT => self.init(env, res, &cmd)?,
                CMD_GET_IMAGE_REQUIREMENTS => self.image_requirements(env, sub, &cmd)?,
                CMD_POLL => {} // the accompanying ring-1 fence does the work
                CMD_SEND => self.send(env, sub, res, &cmd)?,
                CMD_WRITE => self.write(env, sub, &cmd)?,
                CMD_READ_EVENTFD_NEW => {
                    eventfds::watch(env, &cmd, self.id, &mut self.items, &mut self.delivery)?
                }
                CMD_READ_EVENTFD_DESTROY if size == IMPORT_VIRTIOFS_HANDLE_SIZE => {
                    return Err(self.unserved(Unserved::VirtioFsImport, env))
                }
                CMD_READ_EVENTFD_DESTROY => {
                    let id = eventfds::destroy(env, &cmd, &self.items)?;
                    self.remove_item(env.epoll, id, env.released);
                }
                CMD_FUTEX_NEW | CMD_FUTEX_SIGNAL | CMD_FUTEX_DESTROY => {
                    return Err(self.unserved(Unserved::Futex, env))
                }
                CMD_ASSIGN_SOCKET_UUID => {
                    // Without a channel there are no socket items, and `assign` says so.
                    let (policy, origin) = self
                        .channel()
                        .map_or((FdPolicy::NONE, 0), |c| (c.policy(), c.origin()));
                    sockets::assign(env, &cmd, self.id, &mut self.items, policy, origin)?
                }
                other => return Err(CtxError::UnknownCommand(other)),
            }
            off += size;
        }
        Ok(())
    }

    fn init(
        &mut self,
        env: &mut Env<'_>,
        res: &dyn ResourceView,
        cmd: &Cmd<'_>,
    ) -> Result<(), CtxError> {
        if self.conn.is_some() {
            return Err(CtxError::AlreadyInitialized);
        }
        // The eventfd identifier type is the one real per-family choice (docs/protocol.md
        // §8.2): libkrun-style guests (muvm) send the 24-byte INIT and read 6; magma's family
        // uses 5. No known guest checks it.
        let eventfd_type = if cmd.size == INIT_SIZE_PROTOCOL_VERSION {
            ID_TYPE_EVENTFD_LIBKRUN
        } else {
            ID_TYPE_EVENT_MAGMA
        };
        let (query_id, channel_id, channel_type) = match cmd.size {
            INIT_SIZE_LEGACY => {
                let i: InitLegacy = cmd.read(env)?;
                (i.ring_id, i.ring_id, i.channel_type)
            }
            INIT_SIZE_V1 | INIT_SIZE_PROTOCOL_VERSION | INIT_SIZE_UUID => {
                let i: Init = cmd.read(env)?;
                if cmd.size == INIT_SIZE_PROTOCOL_VERSION {
                    let v: u32 = cmd.stream.read_obj(env.mem, cmd.off + INIT_SIZE_V1)?;
                    debug!("ctx {}: INIT protocol_version {v}", self.id);
                }
                (i.query_ring_id, i.channel_ring_id, i.channel_type)
            }
            _ => return Err(cmd.bad_size()),
        };
        let hdr: CmdHeader = cmd.read(env)?;
        let large = hdr.pad & INIT_FLAG_LARGE_RING != 0;
        let query_ring = ring(res, query_id, std::mem::size_of::<ImageRequirements>())?;
        if channel_type == 0 {
            info!(
                "ctx {} ({}): INIT query-only (channel type 0)",
                self.id, self.name
            );
            self.conn = Some(Connection {
                channel_ring: query_ring.clone(),
                query_ring,
                ring_limit: CHANNEL_RING_MIN_SIZE,
                channel: None,
            });
            return Ok(());
        }
        let channel_ring = ring(res, channel_id, CHANNEL_RING_MIN_SIZE)?;
        // Only the 36-byte INIT names a parked socket; to the shorter forms 0xFFFFFFFF is a
        // type like any other, and the command line never configures it.
        let channel = if cmd.size == INIT_SIZE_UUID && channel_type == CHANNEL_TYPE_INTERNAL_SOCKET
        {
            let mut uuid = [0u8; 16];
            cmd.stream
                .read_at(env.mem, cmd.off + INIT_UUID_OFFSET, &mut uuid)?;
            let uuid = SocketUuid(uuid);
            // Every check that can fail on the guest's word is done: the socket is taken
            // (one-shot) only now.
            let parked = env.parked.take(uuid)?;
            Channel::adopt(env.epoll, self.id, channel_type, uuid, parked, eventfd_type)?
        } else {
            let path = env
                .channels
                .get(channel_type)
                .ok_or(CtxError::ChannelNotConfigured(channel_type))?;
            let policy = env.policy(channel_type);
            Channel::connect(
                env.connector,
                env.epoll,
                self.id,
                channel_type,
                path,
                eventfd_type,
                policy,
            )?
        };
        // The guest asks in the header's padding word; the channel (the one the socket came
        // from, for an adopted socket) must offer it; the ring's size bounds it.
        let ring_limit = match (large, env.channels.large_ring(channel.origin())) {
            (true, Some(max)) => max.min(channel_ring.len()).max(CHANNEL_RING_MIN_SIZE),
            _ => CHANNEL_RING_MIN_SIZE,
        };
        let ring_note = if ring_limit > CHANNEL_RING_MIN_SIZE {
            format!(", large ring: {ring_limit} bytes")
        } else if large {
            ", large ring asked for, not offered".to_owned()
        } else {
            String::new()
        };
        info!(
            "ctx {} ({}): INIT channel {:#x} -> {} (fds: {}{ring_note})",
            self.id,
            self.name,
            channel_type,
            channel.host(),
            channel.policy()
        );
        self.conn = Some(Connection {
            query_ring,
            channel_ring,
            ring_limit,
            channel: Some(channel),
        });
        self.pages = env.partial_pages;
        self.delivery.add(Source::Channel);
        Ok(())
    }

    /// The context's channel, once INIT connected one.
    fn channel(&self) -> Option<&Channel> {
        self.conn.as_ref().and_then(|c| c.channel.as_ref())
    }

    fn image_requirements(
        &mut self,
        env: &mut Env<'_>,
        sub: &mut Submission,
        cmd: &Cmd<'_>,
    ) -> Result<(), CtxError> {
        let q: GetImageRequirements = cmd.read(env)?;
        let Some(conn) = self.conn.as_ref() else {
            return Err(CtxError::NotInitialized);
        };
        self.images.answer(
            &mut self.items,
            &mut sub.images_left,
            &q,
            env.mem,
            &conn.query_ring,
        )
    }

    fn send(
        &mut self,
        env: &mut Env<'_>,
        sub: &mut Submission,
        res: &dyn ResourceView,
        cmd: &Cmd<'_>,
    ) -> Result<(), CtxError> {
        let hdr: SendReceive = cmd.read(env)?;
        if hdr.num_identifiers as usize > MAX_IDENTIFIERS {
            return Err(CtxError::TooManyIdentifiers(hdr.num_identifiers));
        }
        let data_len = hdr.opaque_data_size as usize;
        let data_off = cmd.payload(std::mem::size_of::<SendReceive>(), data_len)?;
        // The scratch vectors lend their capacity: the fds to pass, and the read ends of pipes
        // created for READ_PIPE identifiers (registered once the SEND went well; dropped,
        // closing them, otherwise).
        let mut fds = std::mem::take(&mut env.scratch.fds);
        let mut pipes = std::mem::take(&mut env.scratch.pipes);
        fds.clear();
        pipes.clear();
        let r = self.send_with(
            env, sub, res, &hdr, cmd.stream, data_off, &mut fds, &mut pipes,
        );
        fds.clear();
        pipes.clear();
        env.scratch.fds = fds;
        env.scratch.pipes = pipes;
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn send_with(
        &mut self,
        env: &mut Env<'_>,
        sub: &mut Submission,
        res: &dyn ResourceView,
        hdr: &SendReceive,
        stream: &SgList,
        data_off: usize,
        fds: &mut Vec<OwnedFd>,
        pipes: &mut Vec<(u32, OwnedFd)>,
    ) -> Result<(), CtxError> {
        let who = Who {
            ctx_id: self.id,
            name: &self.name,
        };
        let Some(conn) = self.conn.as_mut() else {
            return Err(CtxError::NotInitialized);
        };
        let ring_limit = conn.ring_limit;
        let Some(chan) = conn.channel.as_mut() else {
            return Err(CtxError::NoChannel);
        };
        let mut last_pipe = self.items.last_read_pipe();
        let count = hdr.num_identifiers as usize;
        let policy = chan.policy();
        let carried = |class| {
            if policy.allows(class) {
                Ok(())
            } else {
                Err(CtxError::NotCarried { class, policy })
            }
        };
        for i in 0..count {
            let id = hdr.identifiers[i];
            match hdr.identifier_types[i] {
                ID_TYPE_READ_PIPE => {
                    carried(FdClass::Pipe)?;
                    let expected = next_read_pipe_id(last_pipe);
                    if id != expected {
                        return Err(CtxError::ReadPipeIdMismatch { expected, got: id });
                    }
                    if self.items.fd_items() + i >= MAX_ITEMS {
                        return Err(CtxError::TooManyItems);
                    }
                    last_pipe = expected;
                    let (r, w) = ReadPipe::create_for_ring(ring_limit)?;
                    fds.push(w);
                    pipes.push((id, r));
                }
                ID_TYPE_VIRTGPU_BLOB => {
                    carried(FdClass::Memory)?;
                    match res.lookup(id) {
                        Lookup::NotAttached => return Err(CtxError::ResourceNotAttached(id)),
                        Lookup::Guest(_) | Lookup::Unbacked => {
                            return Err(CtxError::NotSendable(id))
                        }
                        Lookup::Host(fd) => {
                            fds.push(fd.try_clone_to_owned().map_err(CtxError::HostIo)?)
                        }
                    }
                }
                other => {
                    return Err(match Unserved::in_send(other) {
                        Some(what) => self.told.refuse(what, who.ctx_id, who.name, env.limiter),
                        None => CtxError::UnsupportedIdentifierType(other),
                    })
                }
            }
        }
        // Read-pipe ids are consumed once the SEND is well-formed, as the guest's counter is.
        self.items.set_last_read_pipe(last_pipe);
        let data_len = hdr.opaque_data_size as usize;
        if data_len == 0 && !fds.is_empty() {
            return Err(CtxError::FdsWithoutData);
        }
        chan.send(env, sub, who, stream, data_off, data_len, fds)?;
        chan.stats()
            .to_host(data_len, count - pipes.len(), pipes.len());
        for (id, fd) in pipes.drain(..) {
            let pipe = ReadPipe::watch(env.epoll, self.id, id, fd)?;
            if let Some(old) = self.items.insert(id, Item::ReadPipe(pipe)) {
                // The guest's counter came round to a pipe it never closed (2^31 pipes on).
                close_item(old, env.epoll, env.released);
            }
            self.delivery.add(Source::ReadPipe(id));
        }
        Ok(())
    }

    fn write(
        &mut self,
        env: &mut Env<'_>,
        sub: &mut Submission,
        cmd: &Cmd<'_>,
    ) -> Result<(), CtxError> {
        let rw: ReadWrite = cmd.read(env)?;
        let data_len = rw.opaque_data_size as usize;
        let data_off = cmd.payload(std::mem::size_of::<ReadWrite>(), data_len)?;
        let id = rw.identifier;
        let hang_up = rw.hang_up != 0;
        let pipe = match self.items.get_mut(id) {
            Some(Item::WritePipe(pipe)) => pipe,
            Some(Item::Eventfd(efd)) => {
                efd.add(env, id, cmd.stream, data_off, data_len)?;
                if hang_up {
                    self.remove_item(env.epoll, id, env.released);
                }
                return Ok(());
            }
            _ => return Err(CtxError::UnknownItem(id)),
        };
        match pipe.write(env, sub, cmd.stream, data_off, data_len, hang_up) {
            Ok(false) => Ok(()),
            Ok(true) => {
                self.remove_item(env.epoll, id, env.released);
                Ok(())
            }
            Err(PeerError::Refused(e)) => Err(e),
            Err(PeerError::Broken(e)) => {
                debug!("ctx {}: write pipe {id:#x} failed: {e}", self.id);
                self.remove_item(env.epoll, id, env.released);
                Err(CtxError::HostIo(e))
            }
        }
    }

    /// The host memory for RESOURCE_CREATE_BLOB(HOST3D, `blob_id`, `size`): a new memfd for
    /// stored image requirements (which stay valid), or the received memory fd named by
    /// `blob_id` (consumed). Returns the fd, its `map_info` cache type and whether it may be
    /// mapped writable.
    pub fn take_blob(&mut self, blob_id: u32, size: u64) -> Result<(OwnedFd, u32, bool), CtxError> {
        blobs::take_blob(self.id, &mut self.items, blob_id, size, self.pages)
    }

    /// Remove item `id`, take it out of the rotation, stop watching it and close it.
    fn remove_item(&mut self, epoll: &HostPoll, id: u32, released: &mut Vec<HoldToken>) {
        if let Some(item) = self.items.remove(id) {
            if let Some(src) = item.source(id) {
                self.delivery.remove(src);
            }
            close_item(item, epoll, released);
        }
    }

    /// The error refusing `what`, logged with what is missing once per context.
    fn unserved(&mut self, what: Unserved, env: &mut Env<'_>) -> CtxError {
        self.told.refuse(what, self.id, &self.name, env.limiter)
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

    /// An epoll event for this context's source `src` (see `delivery::token`).
    pub fn on_event(&mut self, env: &mut Env<'_>, src: u32, events: EpollFlags) {
        let readable = events.intersects(
            EpollFlags::EPOLLIN
                | EpollFlags::EPOLLHUP
                | EpollFlags::EPOLLRDHUP
                | EpollFlags::EPOLLERR,
        );
        let writable = events.intersects(EpollFlags::EPOLLOUT | EpollFlags::EPOLLERR);
        let ctx_id = self.id;
        if src == CHANNEL_TOKEN {
            if let Some(chan) = self.conn.as_mut().and_then(|c| c.channel.as_mut()) {
                chan.note_events(events);
                chan.on_event(env, ctx_id, readable, writable);
            }
            return;
        }
        let close = match self.items.get_mut(src) {
            Some(Item::ReadPipe(pipe)) => {
                if readable {
                    pipe.readable = true;
                }
                false
            }
            Some(Item::WritePipe(pipe)) if writable => pipe.on_writable(env, ctx_id, src),
            Some(Item::Eventfd(efd)) => {
                if readable {
                    efd.on_readable();
                }
                false
            }
            _ => false,
        };
        if close {
            self.remove_item(env.epoll, src, env.released);
        }
    }

    /// If a POLL is pending and a source has data, write one message into the channel ring and
    /// return the fence it completes. Sources take turns (see `delivery::Rotation`).
    pub fn try_deliver(&mut self, env: &mut Env<'_>) -> Option<u64> {
        self.poll_fence?;
        let conn = self.conn.as_mut()?;
        let who = Who {
            ctx_id: self.id,
            name: &self.name,
        };
        let items = &mut self.items;
        let mut finished_pipe = None;
        let served = self.delivery.serve(|src| match src {
            Source::Channel => match conn.channel.as_mut() {
                Some(chan) => {
                    chan.deliver_up_to(env, who, items, &conn.channel_ring, conn.ring_limit)
                }
                None => Turn::Idle,
            },
            Source::ReadPipe(id) => match items.get_mut(id) {
                Some(Item::ReadPipe(pipe)) => {
                    let ring = &conn.channel_ring;
                    let turn = pipe.deliver_up_to(env, ring, conn.ring_limit, who.ctx_id, id);
                    if turn == Turn::ServedLast {
                        finished_pipe = Some(id);
                    }
                    turn
                }
                _ => Turn::Idle,
            },
            Source::Eventfd(id) => match items.get_mut(id) {
                Some(Item::Eventfd(efd)) => efd.deliver(env, &conn.channel_ring, who.ctx_id, id),
                _ => Turn::Idle,
            },
        });
        if let Some(id) = finished_pipe {
            // Its READ with hang_up is written; it has left the rotation.
            self.remove_item(env.epoll, id, env.released);
        }
        served.and_then(|_| self.poll_fence.take())
    }

    /// The end of a pass of the control queue after a submission that set
    /// [`Submission::coalesced`]: send the SENDs gathered on the channel.
    pub fn flush_coalesced(&mut self, env: &mut Env<'_>) {
        let who = Who {
            ctx_id: self.id,
            name: &self.name,
        };
        if let Some(chan) = self.conn.as_mut().and_then(|c| c.channel.as_mut()) {
            chan.flush_coalesced(env, who);
        }
    }

    /// Stop watching everything and close all host fds. Returns the pending POLL fence, which
    /// the caller completes so the guest does not hang; the tokens of requests held for unsent
    /// output go to `released`. Stored image requirements stay (they hold no host resource)
    /// for [`Context::image_count`], which the device reads afterwards to return them to the
    /// VM's budget.
    pub fn teardown(&mut self, epoll: &HostPoll, released: &mut Vec<HoldToken>) -> Option<u64> {
        if let Some(conn) = self.conn.take() {
            if let Some(mut chan) = conn.channel {
                chan.close(epoll, released, self.who());
            }
        }
        for id in self.items.ids() {
            if !matches!(self.items.get(id), Some(Item::Image(_))) {
                self.remove_item(epoll, id, released);
            }
        }
        self.delivery = Rotation::default();
        self.poll_fence.take()
    }
}

/// Stop watching a removed item and close it (its queued output is dropped, releasing the
/// requests it held).
fn close_item(mut item: Item, epoll: &HostPoll, released: &mut Vec<HoldToken>) {
    match &mut item {
        Item::WritePipe(pipe) => pipe.close(epoll, released),
        Item::ReadPipe(pipe) => pipe.close(epoll),
        Item::Eventfd(efd) => efd.close(epoll),
        Item::Memory { .. } | Item::Image(_) | Item::Socket(_) => {}
    }
}

/// The guest-backed ring resource `id`, of at least `need` bytes.
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

#[cfg(test)]
mod tests;
