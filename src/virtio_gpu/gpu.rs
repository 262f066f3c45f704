//! The coordinator: takes a descriptor chain through split ([`chain`]), decode
//! ([`command`]), execution and response ([`super::response`]), and decides what happens to
//! the request afterwards (completed now, deferred on a fence timeline, or held for a slow
//! host peer). It owns the epoll set of host fds and hands host events to the contexts, and it
//! is the one place that logs a refused request and borrows the cross-domain layer's `Env`
//! (from `cross_domain::Shared`, which makes every one).
//! Each piece of state lives in its own module (resources, contexts, scanouts, fences, held
//! requests); this file must never grow their rules back, only call them in the order that
//! fixes which error a bad request gets. Everything here runs on the device's single
//! event-loop thread; nothing blocks.

use std::sync::Arc;

use log::{debug, info};
use std::os::fd::OwnedFd;

use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags, EpollTimeout};

use super::chain;
use super::command::{self, Command, Queue};
use super::contexts::Contexts;
use super::error::GpuError;
use super::fences::Fences;
use super::held::HeldRequests;
use super::protocol::*;
use super::resources::Resources;
use super::response::{response_size, Resp};
use super::scanouts::{check_rect, Scanouts};
use super::{Limits, ShmMapper};
use crate::config::ChannelView;
use crate::cross_domain::{self, image, protocol as cd, Connector, HostEvent, Shared, Submission};
use crate::guest_mem::{GuestMem, SgList};
use crate::guest_warn;
use crate::ratelimit::GuestLog;

/// Most entries returned by one epoll poll of the device's own sources.
const EVENTS_PER_POLL: usize = 64;

/// The device: resources, contexts, fence timelines and the epoll set of host fds.
pub struct Gpu {
    resources: Resources,
    contexts: Contexts,
    scanouts: Scanouts,
    /// Deferred fenced responses and completed responses to publish.
    fences: Fences,
    /// What every cross-domain context shares: the epoll set of host fds, the channel table,
    /// the connector, scratch buffers.
    cd: Shared,
    events: Vec<EpollEvent>,
    /// Events of directly watched host fds that waited while the device was stopped.
    deferred: Vec<HostEvent>,
    limiter: GuestLog,
    req: SgList,
    resp: SgList,
    /// Requests held for slow host peers.
    held: HeldRequests,
    /// Image requirements stored by all contexts (see `MAX_IMAGE_REQUIREMENTS_PER_VM`).
    images: usize,
    /// Contexts with SENDs gathered in this pass of the control queue (see
    /// [`Gpu::end_pass`]); a few at most, so a list.
    coalesced: Vec<u32>,
    /// Whether the capset has its fifth word (`large_ring_channels`): fixed when the device is
    /// made, from the channels configured then, because a guest sizes its capset buffer once
    /// (GET_CAPSET_INFO at probe). A reload that adds `ring=` to a device made without one
    /// takes effect for contexts that ask, but cannot be advertised.
    large_ring_capset: bool,
}

impl Gpu {
    /// A device with no resources or contexts, whose contexts reach the host services of
    /// `channels` through `connector`.
    pub fn new(
        channels: impl Into<ChannelView>,
        connector: Arc<dyn Connector>,
        num_scanouts: u32,
        shm_size: u64,
        limits: Limits,
    ) -> std::io::Result<Self> {
        let mut cd = Shared::new(channels, connector, limits.partial_pages)?;
        let large_ring_capset = cd.channels().has_large_rings();
        Ok(Gpu {
            large_ring_capset,
            resources: Resources::new(shm_size, image::host_page_size(), limits),
            contexts: Contexts::new(limits),
            scanouts: Scanouts::new(num_scanouts),
            fences: Fences::default(),
            cd,
            events: vec![EpollEvent::empty(); EVENTS_PER_POLL],
            deferred: Vec::new(),
            limiter: GuestLog::new(limits.max_contexts),
            req: SgList::new(),
            resp: SgList::new(),
            held: HeldRequests::default(),
            images: 0,
            coalesced: Vec::new(),
        })
    }

    /// Size the hold budget for a control queue of `size` entries: held requests (SEND and
    /// WRITE bytes waiting for a slow host peer) may take at most a quarter of its
    /// descriptors (an indirect table counts with its entries: conservative), so that the
    /// guest always finds free entries for the POLLs and other requests that let slow host
    /// services make progress. Holding the whole queue would deadlock a guest that blocks on a
    /// full queue (Linux does) against a host service that stops reading while its own writes
    /// towards the guest are blocked (an echo service, most request/event protocols).
    pub fn set_control_queue_size(&mut self, size: u16) {
        self.held.set_queue_size(size);
    }

    /// The device's own epoll set of host sources (channel sockets, pipes): those not watched
    /// directly by the event loop (see [`Gpu::attach_event_loop`]). Readable when
    /// [`Gpu::handle_host_events`] has work.
    pub fn epoll(&self) -> &Epoll {
        self.cd.epoll().nested()
    }

    /// Watch host fds registered from now on directly in the event loop's epoll set `epoll`
    /// (a duplicate of its fd), under event ids `first..=u16::MAX`; their events come to
    /// [`Gpu::handle_host_slot`]. Saves the second `epoll_wait` a nested set costs per wake-up.
    pub fn attach_event_loop(&mut self, epoll: OwnedFd, first: u16) {
        self.cd.epoll().attach(epoll, first);
    }

    /// Readiness `events` of the directly watched host fd under event id `slot`: as
    /// [`Gpu::handle_host_events`] does for the nested set's events.
    pub fn handle_host_slot(&mut self, mem: &GuestMem, slot: u16, events: EpollFlags) {
        // A slot freed since the event loop took this event from epoll: nothing to do.
        if let Some(token) = self.cd.epoll().token(slot) {
            self.host_event(mem, token, events);
            self.settle_released();
        }
    }

    /// Keep the events of direct `slot` until [`Gpu::handle_deferred`] (the device is
    /// stopped: no guest memory may be written).
    pub fn defer_host_slot(&mut self, slot: u16, events: EpollFlags) {
        self.cd.epoll().defer(slot, events);
    }

    /// Whether [`Gpu::handle_deferred`] has work.
    pub fn has_deferred(&self) -> bool {
        self.cd.epoll().has_deferred()
    }

    /// Handle the events kept while the device was stopped.
    pub fn handle_deferred(&mut self, mem: &GuestMem) {
        let mut evs = std::mem::take(&mut self.deferred);
        self.cd.epoll().take_deferred(&mut evs);
        for &(token, events) in &evs {
            self.host_event(mem, token, events);
        }
        evs.clear();
        self.deferred = evs;
        self.settle_released();
    }

    /// One readiness event of the host source with `token`: the context takes note, then
    /// delivers a message if a POLL waits.
    fn host_event(&mut self, mem: &GuestMem, token: u64, events: EpollFlags) {
        let (ctx_id, src) = cross_domain::token_parts(token);
        let Some(ctx) = self.contexts.get_mut(ctx_id) else {
            return;
        };
        let mut env = self.cd.env(mem, &mut self.limiter, self.held.released());
        ctx.cd.on_event(&mut env, src, events);
        if let Some(f) = ctx.cd.try_deliver(&mut env) {
            self.fences.signal((ctx_id, cd::CHANNEL_RING), f);
        }
    }

    /// Number of live contexts.
    pub fn context_count(&self) -> usize {
        self.contexts.len()
    }

    /// Drop every resource and context (device reset or VMM disconnect). Pending fenced
    /// responses are forgotten: their queue is gone.
    pub fn reset(&mut self) {
        for id in self.contexts.ids() {
            if let Some(mut ctx) = self.contexts.remove(id) {
                ctx.cd.teardown(self.cd.epoll(), self.held.released());
            }
        }
        self.resources.clear();
        self.cd.purge_parked_sockets();
        self.fences.clear();
        self.scanouts.clear();
        self.held.clear();
        self.images = 0;
        self.limiter.limits.clear();
    }

    /// Shutdown with a live VMM: complete every pending fenced response (so the guest does not
    /// wait forever), close every context's host sockets and pipes, and drop all resources.
    /// The completions are left in [`Gpu::take_completions`] for the caller to publish.
    pub fn complete_all_and_reset(&mut self) {
        for id in self.contexts.ids() {
            if let Some(mut ctx) = self.contexts.remove(id) {
                ctx.cd.teardown(self.cd.epoll(), self.held.released());
            }
            self.fences.complete_context(id);
        }
        self.settle_released();
        self.held
            .complete_all(|head, len| self.fences.complete(head, len));
        self.fences.complete_all();
        self.cd.purge_parked_sockets();
        self.resources.clear();
        self.images = 0;
        self.scanouts.clear();
        self.limiter.limits.clear();
    }

    /// Completed deferred responses (control queue heads and lengths) to publish.
    pub fn take_completions(&mut self) -> std::vec::Drain<'_, (u16, u32)> {
        self.fences.take()
    }

    /// True when deferred responses are waiting to be published.
    pub fn has_completions(&self) -> bool {
        self.fences.has_completions()
    }

    /// Process one descriptor chain. Returns the number of bytes written into the chain when it
    /// is complete now, or `None` when its response is deferred until a fence signals (it then
    /// shows up in [`Gpu::take_completions`]).
    pub fn process_chain<I>(
        &mut self,
        mem: &GuestMem,
        head: u16,
        descs: I,
        cursor: bool,
        mapper: &dyn ShmMapper,
    ) -> Option<u32>
    where
        I: Iterator<Item = virtio_queue::desc::split::Descriptor>,
    {
        let ndesc = match chain::split(mem, descs, &mut self.req, &mut self.resp) {
            Ok(n) => n,
            Err(e @ chain::ChainError::ShortRequest { .. }) => {
                // No header to echo: answer with a zeroed one carrying the error.
                guest_warn!(self.limiter, "chain {head}: {e}; answering ERR_UNSPEC");
                let hdr = CtrlHdr::default();
                let count = self.scanouts.count();
                return Some(
                    Resp::NoData
                        .write(mem, &self.resp, &hdr, RESP_ERR_UNSPEC, count)
                        .unwrap_or(0),
                );
            }
            Err(e) => {
                guest_warn!(self.limiter, "dropping descriptor chain {head}: {e}");
                return Some(0);
            }
        };
        let hdr: CtrlHdr = match self.req.read_obj(mem, 0) {
            Ok(h) => h,
            Err(_) => return Some(0),
        };
        if hdr.type_ != CMD_SUBMIT_3D {
            // Whatever it does (destroy a context, reset), SENDs gathered so far came first.
            self.end_pass(mem);
        }
        let mut need = response_size(hdr.type_);
        if hdr.type_ == CMD_GET_CAPSET && self.large_ring_capset {
            need += cd::CAPSET_SIZE_LARGE_RINGS - std::mem::size_of::<cd::Capabilities>();
        }
        // Only SUBMIT_3D queues output. It may be held unless it is fenced on a context ring,
        // whose timeline fixes when it completes. Unfenced (Linux >= 6.6) and globally fenced
        // (older kernels fence every execbuffer) ones may: a global fence is signalled at once
        // by this device anyway, and holding the request keeps its buffer, not its fence.
        let may_hold = !cursor && hdr.type_ == CMD_SUBMIT_3D && hdr.flags & FLAG_INFO_RING_IDX == 0;
        self.held.begin(head, ndesc, may_hold);
        let result = if self.resp.len() < need {
            Err(GpuError::InvalidParameter("response buffer too small"))
        } else if hdr.flags & FLAG_FENCE != 0
            && hdr.flags & FLAG_INFO_RING_IDX != 0
            && hdr.ring_idx > cd::CHANNEL_RING
        {
            Err(GpuError::BadRing(hdr.ring_idx))
        } else {
            let queue = if cursor {
                Queue::Cursor
            } else {
                Queue::Control
            };
            match command::decode(mem, &hdr, &self.req, queue) {
                Ok(cmd) => self.execute(mem, &hdr, cmd, mapper),
                Err(e) => Err(e.into()),
            }
        };
        let (resp_type, body) = match result {
            Ok(body) => (body.response_type(), body),
            Err(e) => {
                self.log_refusal(&hdr, &e);
                (e.response(), Resp::NoData)
            }
        };
        let written = body.write(mem, &self.resp, &hdr, resp_type, self.scanouts.count());
        let refs = self.held.end(head);
        self.settle_released();
        let len = match &written {
            Ok(len) => *len,
            Err(e) => {
                guest_warn!(
                    self.limiter,
                    "chain {head}: writing the response failed: {e}"
                );
                0
            }
        };
        if refs > 0 {
            // Its bytes wait in its buffers for a slow host peer: complete it once they went
            // out (`settle_released`). Never on a ring timeline (see `may_hold`).
            self.held.hold(head, refs, len, ndesc);
            return None;
        }
        if written.is_err() {
            return Some(0);
        }
        let ok = resp_type < RESP_ERR_UNSPEC;
        if ok && hdr.flags & FLAG_FENCE != 0 && !cursor {
            return self.create_fence(mem, &hdr, head, len);
        }
        Some(len)
    }

    fn create_fence(&mut self, mem: &GuestMem, hdr: &CtrlHdr, head: u16, len: u32) -> Option<u32> {
        if hdr.flags & FLAG_INFO_RING_IDX == 0 || hdr.ring_idx == cd::QUERY_RING {
            // Global timeline and the query ring: the work is already done.
            return Some(len);
        }
        let Some(ctx) = self.contexts.get_mut(hdr.ctx_id) else {
            return Some(len);
        };
        let timeline = (hdr.ctx_id, hdr.ring_idx);
        self.fences.defer(timeline, hdr.fence_id, head, len);
        ctx.cd.arm_poll(hdr.fence_id);
        let mut env = self.cd.env(mem, &mut self.limiter, self.held.released());
        if let Some(f) = ctx.cd.try_deliver(&mut env) {
            self.fences.signal(timeline, f);
        }
        self.settle_released();
        None
    }

    /// The end of a pass of the control queue (and before any request other than SUBMIT_3D):
    /// send the SENDs each context gathered since (see `cross_domain::Peer::send`); requests
    /// whose bytes all went out complete (see [`Gpu::take_completions`]), the rest stay held
    /// for their slow peer as any held request.
    pub fn end_pass(&mut self, mem: &GuestMem) {
        if self.coalesced.is_empty() {
            return;
        }
        let mut ids = std::mem::take(&mut self.coalesced);
        for &id in &ids {
            if let Some(ctx) = self.contexts.get_mut(id) {
                let mut env = self.cd.env(mem, &mut self.limiter, self.held.released());
                ctx.cd.flush_coalesced(&mut env);
            }
        }
        ids.clear();
        self.coalesced = ids;
        self.settle_released();
    }

    /// Account released chunks; requests with none left are completed.
    fn settle_released(&mut self) {
        self.held
            .settle(|head, len| self.fences.complete(head, len));
    }

    /// Handle readiness of host fds (channel sockets, pipes): deliver messages to contexts with
    /// a pending POLL, flush output backlogs. Never blocks.
    pub fn handle_host_events(&mut self, mem: &GuestMem) {
        loop {
            let n = match self.cd.epoll().wait(&mut self.events, EpollTimeout::ZERO) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    log::error!("epoll_wait on host fds failed: {e}");
                    return;
                }
            };
            for i in 0..n {
                let ev = self.events[i];
                self.host_event(mem, ev.data(), ev.events());
            }
            self.settle_released();
            if n < self.events.len() {
                return;
            }
        }
    }

    /// Execute one decoded command.
    fn execute(
        &mut self,
        mem: &GuestMem,
        hdr: &CtrlHdr,
        cmd: Command,
        mapper: &dyn ShmMapper,
    ) -> Result<Resp, GpuError> {
        match cmd {
            Command::GetDisplayInfo => Ok(Resp::DisplayInfo),
            Command::GetEdid => Err(GpuError::Unsupported("GET_EDID: F_EDID is not offered")),
            Command::ResourceCreate2d(b) => {
                self.resources.create_2d(&b)?;
                Ok(Resp::NoData)
            }
            Command::ResourceUnref(b) => {
                let id = b.resource_id;
                self.resources.unref(id, mapper, &mut self.limiter)?;
                self.contexts.forget_resource(id);
                self.scanouts.forget_resource(id);
                Ok(Resp::NoData)
            }
            Command::SetScanout(b) => {
                self.scanouts.check(b.scanout_id)?;
                if b.resource_id != 0 {
                    let (w, h) = self.resources.dims_2d(b.resource_id)?;
                    check_rect(&b.r, w, h)?;
                }
                self.scanouts.set(b.scanout_id, b.resource_id)?;
                Ok(Resp::NoData)
            }
            Command::ResourceFlush(b) => {
                self.resources.check_exists(b.resource_id)?;
                Ok(Resp::NoData)
            }
            Command::TransferToHost2d(b) => {
                let (w, h) = self.resources.dims_2d(b.resource_id)?;
                check_rect(&b.r, w, h)?;
                Ok(Resp::NoData)
            }
            Command::ResourceAttachBacking { body, entries } => {
                self.resources
                    .attach_backing(mem, &self.req, body.resource_id, entries)?;
                Ok(Resp::NoData)
            }
            Command::ResourceDetachBacking(b) => {
                self.resources.detach_backing(b.resource_id)?;
                Ok(Resp::NoData)
            }
            Command::GetCapsetInfo(b) => {
                if b.capset_index != 0 {
                    return Err(GpuError::InvalidParameter("capset index out of range"));
                }
                Ok(Resp::CapsetInfo(RespCapsetInfo {
                    capset_id: CAPSET_CROSS_DOMAIN,
                    capset_max_version: 0,
                    capset_max_size: if self.large_ring_capset {
                        cd::CAPSET_SIZE_LARGE_RINGS as u32
                    } else {
                        std::mem::size_of::<cd::Capabilities>() as u32
                    },
                    ..Default::default()
                }))
            }
            Command::GetCapset(b) => {
                if b.capset_id != CAPSET_CROSS_DOMAIN {
                    return Err(GpuError::InvalidParameter("unknown capset id"));
                }
                let large = self.large_ring_capset;
                let channels = self.cd.channels();
                let mask = large.then(|| channels.large_ring_mask());
                Ok(Resp::Capset(cross_domain::capabilities(channels), mask))
            }
            Command::ResourceAssignUuid(b) => {
                self.resources.check_exists(b.resource_id)?;
                let mut uuid = [0u8; 16];
                uuid[12..].copy_from_slice(&b.resource_id.to_be_bytes());
                Ok(Resp::Uuid(uuid))
            }
            Command::ResourceCreateBlob { body, entries } => {
                let contexts = &mut self.contexts;
                let take_host = |blob_id, size| {
                    let ctx = contexts.live(hdr.ctx_id)?;
                    Ok(ctx.cd.take_blob(blob_id, size)?)
                };
                self.resources
                    .create_blob(mem, &self.req, &body, entries, take_host)?;
                Ok(Resp::NoData)
            }
            Command::SetScanoutBlob(b) => {
                self.scanouts.check(b.scanout_id)?;
                if b.resource_id != 0 {
                    self.resources.check_exists(b.resource_id)?;
                }
                self.scanouts.set(b.scanout_id, b.resource_id)?;
                Ok(Resp::NoData)
            }
            Command::CtxCreate(b) => {
                self.contexts.create(hdr.ctx_id, &b)?;
                Ok(Resp::NoData)
            }
            Command::CtxDestroy => {
                self.destroy_context(hdr.ctx_id)?;
                Ok(Resp::NoData)
            }
            Command::CtxAttachResource(b) => {
                self.resources.check_exists(b.resource_id)?;
                self.contexts.attach(hdr.ctx_id, b.resource_id)?;
                Ok(Resp::NoData)
            }
            Command::CtxDetachResource(b) => {
                self.contexts.detach(hdr.ctx_id, b.resource_id)?;
                Ok(Resp::NoData)
            }
            Command::ResourceCreate3d => {
                Err(GpuError::Unsupported("RESOURCE_CREATE_3D: no 3D renderer"))
            }
            Command::TransferToHost3d | Command::TransferFromHost3d => {
                Err(GpuError::Unsupported("3D transfers: no 3D renderer"))
            }
            Command::Submit3d { offset, len } => {
                self.submit_3d(mem, hdr, offset, len)?;
                Ok(Resp::NoData)
            }
            Command::ResourceMapBlob(b) => {
                let map_info = self.resources.map(b.resource_id, b.offset, mapper)?;
                Ok(Resp::MapInfo(map_info))
            }
            Command::ResourceUnmapBlob(b) => {
                self.resources.check_exists(b.resource_id)?;
                self.resources.unmap(b.resource_id, mapper)?;
                Ok(Resp::NoData)
            }
            Command::UpdateCursor(b) => {
                self.scanouts.check(b.pos.scanout_id)?;
                if b.resource_id != 0 {
                    self.resources.check_exists(b.resource_id)?;
                }
                Ok(Resp::NoData)
            }
            Command::MoveCursor(b) => {
                self.scanouts.check(b.pos.scanout_id)?;
                Ok(Resp::NoData)
            }
        }
    }

    fn destroy_context(&mut self, ctx_id: u32) -> Result<(), GpuError> {
        let mut ctx = self
            .contexts
            .remove(ctx_id)
            .ok_or(GpuError::InvalidContext(ctx_id))?;
        ctx.cd.teardown(self.cd.epoll(), self.held.released());
        self.images = self.images.saturating_sub(ctx.cd.image_count());
        self.fences.complete_context(ctx_id);
        self.limiter.limits.forget(ctx_id);
        debug!("ctx {}: destroyed", ctx_id);
        Ok(())
    }

    /// Log a refused request: a limit once per context (see [`GuestLog::limit_hit`]; requests
    /// naming no live context count as context 0), anything else through the rate limiter.
    fn log_refusal(&mut self, hdr: &CtrlHdr, e: &GpuError) {
        let cmd = command_name(hdr.type_);
        match e.limit() {
            Some((kind, value)) => {
                let ctx = if self.contexts.contains(hdr.ctx_id) {
                    hdr.ctx_id
                } else {
                    0
                };
                let what = format_args!("{cmd} (ctx {}): {e}", hdr.ctx_id);
                self.limiter.limit_hit(ctx, kind, value, what);
            }
            None => guest_warn!(self.limiter, "{cmd} (ctx {}): {e}", hdr.ctx_id),
        }
    }

    /// SUBMIT_3D: hand the command stream (`len` bytes at `start` of the request, checked by
    /// [`command::decode`]) to the context.
    fn submit_3d(
        &mut self,
        mem: &GuestMem,
        hdr: &CtrlHdr,
        start: usize,
        len: usize,
    ) -> Result<(), GpuError> {
        let ctx = self.contexts.live(hdr.ctx_id)?;
        let view = self.resources.view(&ctx.attached);
        let mut sub = Submission {
            hold: self.held.current(),
            held_chunks: 0,
            images_left: cross_domain::MAX_IMAGE_REQUIREMENTS_PER_VM.saturating_sub(self.images),
            coalesce: true,
            coalesced: false,
        };
        let mut env = self.cd.env(mem, &mut self.limiter, self.held.released());
        let images_before = ctx.cd.image_count();
        let res = ctx
            .cd
            .submit(&mut env, &mut sub, &view, &self.req, start, len);
        self.held.add_refs(sub.held_chunks);
        if sub.coalesced && !self.coalesced.contains(&hdr.ctx_id) {
            self.coalesced.push(hdr.ctx_id);
        }
        // Submissions only add image requirements; destruction and reset remove them.
        self.images += ctx.cd.image_count().saturating_sub(images_before);
        res?;
        Ok(())
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        if !self.contexts.is_empty() {
            info!("dropping {} context(s)", self.contexts.len());
        }
        self.reset();
    }
}
