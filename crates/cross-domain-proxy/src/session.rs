//! One client connection: a cross-domain context on its own DRM file, and the loop that
//! forwards bytes and file descriptors between the client socket and the host channel.
//!
//! Setup follows what sommelier and muvm do (spec §9): feature checks, the capset, CONTEXT_INIT
//! (capset 5, two rings, ring 1 polled), two one-page guest blobs as query and channel ring,
//! then INIT. The loop then waits with `poll(2)` on the client socket, the DRM file (fence
//! events) and the pipes it relays, and keeps exactly one POLL outstanding whenever it can take
//! a message: a message is copied out of the channel ring before the next POLL lets the host
//! overwrite it, and the next POLL waits until the previous message was handed on, so a client
//! that does not read slows the host down instead of making the proxy buffer without bound.
//!
//! Descriptors, client to host: a pipe write end becomes a READ_PIPE identifier (the host
//! creates a pipe, gives its service the write end, and what the service writes comes back as
//! READ messages that the proxy writes into the client's pipe); a regular file or memfd is
//! copied once into a host blob made from image requirements (a snapshot); a dma-buf of this
//! GPU that is host memory is passed as its resource. Host to client: VIRTGPU_BLOB identifiers
//! become HOST3D blobs exported as dma-bufs, WRITE_PIPE identifiers become local pipes whose
//! write end the client gets and whose read end the proxy forwards with WRITE.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use log::{debug, info, warn};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use nix::sys::stat::{fstat, SFlag};
use vm_memory::ByteValued;

use super::device::{
    context_param, param, Blob, BlobCreate, BlobMapping, DeviceError, VirtGpuDevice,
    BLOB_FLAG_USE_MAPPABLE, BLOB_FLAG_USE_SHAREABLE, BLOB_MEM_GUEST, BLOB_MEM_HOST3D,
    BLOB_MEM_HOST3D_GUEST, CAPSET_CROSS_DOMAIN, EVENT_FENCE_SIGNALED,
};
use super::kernel::recv_with_fds;
use super::wire::{self, ChannelMessage, Identifier, WireError};
use cross_domain_protocol::wire::{
    Capabilities, CHANNEL_RING, ID_TYPE_READ_PIPE, ID_TYPE_VIRTGPU_BLOB, ID_TYPE_WRITE_PIPE,
    QUERY_RING,
};

/// What the proxy serves: one channel type for every client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The cross-domain channel type every client's context INITs with.
    pub channel_type: u32,
    /// Do not require the channel's bit in the capset's `supported_channels` (needed for types
    /// 32 and above, which the 32-bit mask cannot carry).
    pub skip_capset_check: bool,
}

/// Why a client's session could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("the virtio-gpu device lacks {0} (VIRTGPU_PARAM {1} is 0)")]
    MissingFeature(&'static str, u64),
    #[error(
        "the virtio-gpu device does not offer the cross-domain capset (capset id mask {0:#x}); \
         is the host running vhost-user-cross-domain?"
    )]
    NoCrossDomainCapset(u64),
    #[error(
        "the host does not advertise channel type {channel_type:#x} (supported_channels \
         {supported:#x}); configure it on the host with --channel, or pass --skip-capset-check"
    )]
    ChannelNotAdvertised { channel_type: u32, supported: u32 },
    #[error(
        "channel type {0:#x} cannot appear in the capset's 32-bit channel mask; pass \
         --skip-capset-check to use it"
    )]
    ChannelNotAdvertisable(u32),
    #[error(
        "the host refused to open channel type {0:#x}: it is not configured there, or its \
         service is not listening (the host's log says which)"
    )]
    ChannelRefused(u32),
    #[error("malformed message from the host: {0}")]
    Wire(#[from] WireError),
    #[error(
        "the host completed a POLL without a message: it refused the context's commands (is \
         channel type {0:#x} configured on the host, and its service listening?) or the device \
         is shutting down"
    )]
    PollWithoutMessage(u32),
    #[error("poll: {0}")]
    Poll(#[source] io::Error),
    #[error("sending a command: {0}")]
    Encode(WireError),
}

/// What the proxy learned from the device's parameters and capset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// HOST3D blobs can be mapped (memory descriptors can cross).
    pub host_visible: bool,
    /// `VIRTGPU_PARAM_SUPPORTED_CAPSET_IDs`.
    pub capset_ids: u64,
    /// The cross-domain capset.
    pub capabilities: Capabilities,
}

/// Checks that the device can carry the configured channel (spec §9.1 steps 2–3).
pub fn probe<D: VirtGpuDevice>(dev: &mut D, cfg: &ProxyConfig) -> Result<DeviceInfo, SessionError> {
    for (what, p) in [
        ("3D support (VIRGL)", param::FEATURES_3D),
        ("blob resources", param::RESOURCE_BLOB),
        ("context initialisation", param::CONTEXT_INIT),
    ] {
        if dev.get_param(p)? == 0 {
            return Err(SessionError::MissingFeature(what, p));
        }
    }
    let host_visible = dev.get_param(param::HOST_VISIBLE)? != 0;
    let capset_ids = dev.get_param(param::SUPPORTED_CAPSET_IDS)?;
    if capset_ids & (1 << CAPSET_CROSS_DOMAIN) == 0 {
        return Err(SessionError::NoCrossDomainCapset(capset_ids));
    }
    let mut capabilities = Capabilities::default();
    dev.get_caps(CAPSET_CROSS_DOMAIN, 0, capabilities.as_mut_slice())?;
    if !cfg.skip_capset_check {
        let t = cfg.channel_type;
        if t >= 32 {
            return Err(SessionError::ChannelNotAdvertisable(t));
        }
        if capabilities.supported_channels & (1 << t) == 0 {
            return Err(SessionError::ChannelNotAdvertised {
                channel_type: t,
                supported: capabilities.supported_channels,
            });
        }
    }
    Ok(DeviceInfo {
        host_visible,
        capset_ids,
        capabilities,
    })
}

/// Traffic counters, for the closing log line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub bytes_to_host: u64,
    pub bytes_to_client: u64,
    pub fds_to_host: u64,
    pub fds_to_client: u64,
    pub fds_refused: u64,
}

/// How a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The client closed its connection.
    ClientClosed,
    /// The host service closed the channel (and the proxy closed the client's connection).
    HostClosed,
}

/// A guest blob used as a ring.
struct Ring<M> {
    bo: u32,
    res: u32,
    map: M,
}

/// A pipe write end the client passed (READ_PIPE): host data goes into it.
struct ClientPipe {
    fd: OwnedFd,
    pending: Vec<u8>,
    written: usize,
    /// Close after `pending` is written.
    hang_up: bool,
}

/// A RECEIVE on its way to the client.
struct Outgoing {
    data: Vec<u8>,
    /// Sent with the first byte, then dropped.
    fds: Vec<OwnedFd>,
    sent: usize,
}

/// Something `poll` reported.
#[derive(Clone, Copy, Debug)]
enum Source {
    Drm,
    Client,
    /// A READ_PIPE target (client's write end), by id.
    ClientPipe(u32),
    /// A WRITE_PIPE source (our read end), by id.
    HostPipe(u32),
}

/// A descriptor the proxy will not pass on.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("{0}")]
    Kind(&'static str),
    #[error("the device has no host-visible memory, so memory cannot be passed")]
    NoHostVisible,
    #[error("{0} bytes is too large for one blob")]
    TooLarge(u64),
    #[error("the host answered GET_IMAGE_REQUIREMENTS with size {size} and blob id {blob_id}")]
    BadRequirements { size: u64, blob_id: u32 },
    #[error("{0}")]
    Device(#[from] DeviceError),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Session(#[from] SessionError),
}

/// One client's cross-domain context and forwarding state.
pub struct Session<D: VirtGpuDevice> {
    client_id: u64,
    cfg: ProxyConfig,
    dev: D,
    info: DeviceInfo,
    client: UnixStream,
    query: Ring<D::Mapping>,
    channel: Ring<D::Mapping>,
    read_pipe_ids: wire::ReadPipeIds,
    /// GET_IMAGE_REQUIREMENTS answers by width (blob id, size): the host keeps them for the
    /// context's life.
    image_requirements: HashMap<u32, (u32, u64)>,
    client_pipes: BTreeMap<u32, ClientPipe>,
    /// READ_PIPE ids whose client pipe was closed early (its reader went away): the host's
    /// further READs for them are dropped quietly until its hang-up.
    dropped_pipes: HashSet<u32>,
    host_pipes: BTreeMap<u32, OwnedFd>,
    to_client: Option<Outgoing>,
    poll_pending: bool,
    /// The client shut down its sending side (or closed).
    client_eof: bool,
    /// The client is gone: nothing can be read from or written to it.
    client_gone: bool,
    host_closed: bool,
    client_shut: bool,
    page_size: u64,
    stats: Stats,
}

const MIB: usize = 1 << 20;

fn round_up(v: u64, to: u64) -> Option<u64> {
    v.checked_next_multiple_of(to)
}

impl<D: VirtGpuDevice> Session<D> {
    /// Sets up the context for `client` on `dev` (one DRM file per client: CONTEXT_INIT works
    /// once per file).
    pub fn open(
        client_id: u64,
        cfg: ProxyConfig,
        mut dev: D,
        client: UnixStream,
    ) -> Result<Self, SessionError> {
        let info = probe(&mut dev, &cfg)?;
        dev.context_init(&[
            (context_param::CAPSET_ID, u64::from(CAPSET_CROSS_DOMAIN)),
            (context_param::NUM_RINGS, 2),
            (context_param::POLL_RINGS_MASK, 1 << CHANNEL_RING),
        ])?;
        let query = Self::ring(&mut dev)?;
        let channel = Self::ring(&mut dev)?;
        dev.execbuffer(
            &wire::init(query.res, channel.res, cfg.channel_type),
            None,
            &[],
        )?;
        client
            .set_nonblocking(true)
            .map_err(|e| DeviceError::new("client socket", e))?;
        let mut session = Session {
            client_id,
            cfg,
            dev,
            info,
            client,
            query,
            channel,
            read_pipe_ids: wire::ReadPipeIds::default(),
            image_requirements: HashMap::new(),
            client_pipes: BTreeMap::new(),
            dropped_pipes: HashSet::new(),
            host_pipes: BTreeMap::new(),
            to_client: None,
            poll_pending: false,
            client_eof: false,
            client_gone: false,
            host_closed: false,
            client_shut: false,
            page_size: cross_domain_protocol::page_size(),
            stats: Stats::default(),
        };
        session.confirm_channel()?;
        Ok(session)
    }

    /// EXECBUFFER does not report what the host refused, so INIT's outcome is learned from a
    /// query that needs it: GET_IMAGE_REQUIREMENTS answers only on an initialised context. The
    /// answer (a one-page R8 image) is kept for memory snapshots of up to a page.
    fn confirm_channel(&mut self) -> Result<(), SessionError> {
        let width = u32::try_from(self.page_size).unwrap_or(4096);
        let r = self.query_requirements(width)?;
        if r.blob_id == 0 || r.size == 0 {
            return Err(SessionError::ChannelRefused(self.cfg.channel_type));
        }
        self.image_requirements.insert(width, (r.blob_id, r.size));
        Ok(())
    }

    fn ring(dev: &mut D) -> Result<Ring<D::Mapping>, DeviceError> {
        let blob = dev.create_blob(&BlobCreate {
            blob_mem: BLOB_MEM_GUEST,
            blob_flags: BLOB_FLAG_USE_MAPPABLE,
            size: wire::RING_SIZE as u64,
            blob_id: 0,
        })?;
        let map = dev.map(blob.bo_handle, wire::RING_SIZE)?;
        Ok(Ring {
            bo: blob.bo_handle,
            res: blob.res_handle,
            map,
        })
    }

    /// What the device reported at setup.
    pub fn device_info(&self) -> DeviceInfo {
        self.info
    }

    /// Forwards until the client or the host closes (and the pipes in flight are done).
    pub fn run(mut self) -> (Result<End, SessionError>, Stats) {
        let r = self.run_loop();
        (r, self.stats)
    }

    fn run_loop(&mut self) -> Result<End, SessionError> {
        let mut ready: Vec<(Source, PollFlags)> = Vec::new();
        loop {
            if self.host_closed
                && self.to_client.is_none()
                && !self.client_gone
                && !self.client_shut
            {
                // The client sees end of file, as it would from the service directly.
                let _ = self.client.shutdown(std::net::Shutdown::Write);
                self.client_shut = true;
            }
            if self.finished() {
                return Ok(if self.host_closed {
                    End::HostClosed
                } else {
                    End::ClientClosed
                });
            }
            if !self.poll_pending && !self.blocked() {
                self.submit_poll()?;
            }
            self.wait(&mut ready)?;
            for &(src, ev) in &ready {
                match src {
                    Source::Drm => self.on_drm(ev)?,
                    Source::Client => self.on_client(ev)?,
                    Source::ClientPipe(id) => self.on_client_pipe(id, ev),
                    Source::HostPipe(id) => self.on_host_pipe(id)?,
                }
            }
        }
    }

    /// The session is over: the conversation ended on one side and no pipe is in flight.
    fn finished(&self) -> bool {
        let conversation_over = self.client_gone || (self.host_closed && self.to_client.is_none());
        conversation_over && self.client_pipes.is_empty() && self.host_pipes.is_empty()
    }

    /// A message is still being handed on: the next POLL waits for it.
    fn blocked(&self) -> bool {
        self.to_client.is_some() || self.client_pipes.values().any(|p| !p.pending.is_empty())
    }

    fn submit_poll(&mut self) -> Result<(), SessionError> {
        // A zero header marks the ring as not yet written.
        self.channel.map.write(0, &[0u8; 8])?;
        self.dev
            .execbuffer(&wire::poll(), Some(u32::from(CHANNEL_RING)), &[])?;
        self.poll_pending = true;
        Ok(())
    }

    /// `poll(2)` on everything this session waits for; fills `ready`.
    fn wait(&mut self, ready: &mut Vec<(Source, PollFlags)>) -> Result<(), SessionError> {
        ready.clear();
        let mut sources = Vec::with_capacity(2 + self.client_pipes.len() + self.host_pipes.len());
        let mut fds = Vec::with_capacity(sources.capacity());
        sources.push(Source::Drm);
        fds.push(PollFd::new(self.dev.event_fd(), PollFlags::POLLIN));
        if !self.client_gone {
            let mut ev = PollFlags::empty();
            if !self.client_eof && !self.host_closed {
                ev |= PollFlags::POLLIN;
            }
            if self.to_client.is_some() {
                ev |= PollFlags::POLLOUT;
            }
            sources.push(Source::Client);
            fds.push(PollFd::new(self.client.as_fd(), ev));
        }
        for (&id, p) in &self.client_pipes {
            // POLLERR (the reader went away) is reported even without POLLOUT.
            let ev = if p.pending.is_empty() {
                PollFlags::empty()
            } else {
                PollFlags::POLLOUT
            };
            sources.push(Source::ClientPipe(id));
            fds.push(PollFd::new(p.fd.as_fd(), ev));
        }
        for (&id, fd) in &self.host_pipes {
            sources.push(Source::HostPipe(id));
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
        }
        loop {
            match nix::poll::poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(SessionError::Poll(e.into())),
            }
        }
        for (src, fd) in sources.into_iter().zip(&fds) {
            if let Some(ev) = fd.revents().filter(|ev| !ev.is_empty()) {
                ready.push((src, ev));
            }
        }
        Ok(())
    }

    // ---- host → client ----------------------------------------------------------------

    fn on_drm(&mut self, ev: PollFlags) -> Result<(), SessionError> {
        if ev.intersects(PollFlags::POLLERR | PollFlags::POLLNVAL) {
            return Err(DeviceError::new(
                "poll (DRM file)",
                io::Error::other(format!("unexpected events {ev:?}")),
            )
            .into());
        }
        let mut events = Vec::new();
        self.dev.read_events(&mut events)?;
        for ty in events {
            if ty != EVENT_FENCE_SIGNALED {
                debug!("client {}: ignoring DRM event {ty:#x}", self.client_id);
                continue;
            }
            if !self.poll_pending {
                debug!("client {}: fence event without a POLL", self.client_id);
                continue;
            }
            self.poll_pending = false;
            self.on_channel_message()?;
        }
        Ok(())
    }

    fn on_channel_message(&mut self) -> Result<(), SessionError> {
        let mut ring = vec![0u8; wire::RING_SIZE];
        self.channel.map.read(0, &mut ring)?;
        match wire::decode_channel(&ring)? {
            ChannelMessage::Nothing => {
                return Err(SessionError::PollWithoutMessage(self.cfg.channel_type))
            }
            ChannelMessage::Receive { ids, data } if ids.is_empty() && data.is_empty() => {
                info!(
                    "client {}: the host service closed the channel",
                    self.client_id
                );
                self.host_closed = true;
            }
            ChannelMessage::Receive { ids, data } => self.on_receive(&ids, data),
            ChannelMessage::Read { id, hang_up, data } => match self.client_pipes.get_mut(&id) {
                Some(p) => {
                    self.stats.bytes_to_client += data.len() as u64;
                    p.pending = data;
                    p.written = 0;
                    p.hang_up = hang_up;
                    if hang_up && p.pending.is_empty() {
                        self.client_pipes.remove(&id);
                    }
                }
                None if self.dropped_pipes.contains(&id) => {
                    if hang_up {
                        self.dropped_pipes.remove(&id);
                    }
                }
                None => warn!(
                    "client {}: READ for unknown pipe {id:#x} ({} bytes) dropped",
                    self.client_id,
                    data.len()
                ),
            },
            ChannelMessage::Other(cmd) => warn!(
                "client {}: ignoring channel message with command {cmd}",
                self.client_id
            ),
        }
        Ok(())
    }

    fn on_receive(&mut self, ids: &[Identifier], data: Vec<u8>) {
        if self.client_gone {
            debug!(
                "client {}: dropping {} bytes from the host: the client is gone",
                self.client_id,
                data.len()
            );
            return;
        }
        let mut fds = Vec::with_capacity(ids.len());
        for ident in ids {
            let r = match ident.kind {
                ID_TYPE_VIRTGPU_BLOB => self.host_memory(ident),
                ID_TYPE_WRITE_PIPE => self.host_write_pipe(ident.id),
                _ => Err(Refusal::Kind(
                    "an identifier type this proxy does not handle",
                )),
            };
            match r {
                Ok(fd) => fds.push(fd),
                Err(e) => {
                    self.stats.fds_refused += 1;
                    warn!(
                        "client {}: dropping host identifier {:#x} (type {}, size {}): {e}",
                        self.client_id, ident.id, ident.kind, ident.size
                    );
                }
            }
        }
        if data.is_empty() {
            // A stream socket cannot carry descriptors without a byte; the host never sends
            // this (its stream has the same rule).
            if !fds.is_empty() {
                warn!(
                    "client {}: dropping {} descriptors that came without data",
                    self.client_id,
                    fds.len()
                );
            }
            return;
        }
        self.to_client = Some(Outgoing { data, fds, sent: 0 });
        self.flush_to_client();
    }

    /// A host memory descriptor: a HOST3D blob made from the identifier, exported as a dma-buf.
    fn host_memory(&mut self, ident: &Identifier) -> Result<OwnedFd, Refusal> {
        if ident.size == 0 {
            // The host cannot make a blob of nothing; an empty memfd is the same to the client.
            let fd = nix::sys::memfd::memfd_create(
                c"cross-domain-empty",
                nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
            )
            .map_err(io::Error::from)?;
            return Ok(fd);
        }
        if !self.info.host_visible {
            return Err(Refusal::NoHostVisible);
        }
        let size = round_up(u64::from(ident.size), self.page_size)
            .ok_or(Refusal::TooLarge(u64::from(ident.size)))?;
        let blob = self.dev.create_blob(&BlobCreate {
            blob_mem: BLOB_MEM_HOST3D,
            blob_flags: BLOB_FLAG_USE_MAPPABLE | BLOB_FLAG_USE_SHAREABLE,
            size,
            blob_id: u64::from(ident.id),
        })?;
        let fd = self.dev.export_fd(blob.bo_handle);
        self.close_bo(blob.bo_handle);
        let fd = fd?;
        self.stats.fds_to_client += 1;
        Ok(fd)
    }

    /// A host pipe write end: the client gets the write end of a local pipe, the proxy reads
    /// the other end and forwards it with WRITE.
    fn host_write_pipe(&mut self, id: u32) -> Result<OwnedFd, Refusal> {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        fcntl(&r, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
        if let Some(old) = self.host_pipes.insert(id, r) {
            warn!(
                "client {}: the host reused pipe id {id:#x}; closing the older pipe",
                self.client_id
            );
            drop(old);
        }
        self.stats.fds_to_client += 1;
        Ok(w)
    }

    fn close_bo(&mut self, bo: u32) {
        if let Err(e) = self.dev.gem_close(bo) {
            warn!("client {}: {e}", self.client_id);
        }
    }

    /// Sends as much of the pending RECEIVE to the client as its socket takes.
    fn flush_to_client(&mut self) {
        let Some(out) = self.to_client.as_mut() else {
            return;
        };
        if self.client_gone {
            self.to_client = None;
            return;
        }
        while out.sent < out.data.len() {
            let raw: Vec<RawFd> = out.fds.iter().map(|f| f.as_raw_fd()).collect();
            let rights = [ControlMessage::ScmRights(&raw)];
            let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &rights };
            let iov = [IoSlice::new(&out.data[out.sent..])];
            match sendmsg::<()>(
                self.client.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
                None,
            ) {
                Ok(n) => {
                    out.sent += n;
                    self.stats.bytes_to_client += n as u64;
                    // The descriptors went with the first byte.
                    out.fds.clear();
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return,
                Err(e) => {
                    debug!("client {}: send failed: {e}", self.client_id);
                    self.client_gone = true;
                    break;
                }
            }
        }
        self.to_client = None;
    }

    fn on_client_pipe(&mut self, id: u32, ev: PollFlags) {
        let Some(p) = self.client_pipes.get_mut(&id) else {
            return;
        };
        if ev.intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL) {
            debug!(
                "client {}: the reader of pipe {id:#x} went away",
                self.client_id
            );
            self.drop_client_pipe(id);
            return;
        }
        if !ev.contains(PollFlags::POLLOUT) {
            return;
        }
        // POLLOUT means the pipe has a free buffer, which takes one write of up to a page
        // without blocking even if the client left the pipe blocking (READ data is smaller).
        let end = (p.written + 4096).min(p.pending.len());
        match nix::unistd::write(&p.fd, &p.pending[p.written..end]) {
            Ok(n) => p.written += n,
            Err(Errno::EINTR) | Err(Errno::EAGAIN) => return,
            Err(e) => {
                debug!("client {}: writing pipe {id:#x}: {e}", self.client_id);
                self.drop_client_pipe(id);
                return;
            }
        }
        if p.written >= p.pending.len() {
            p.pending.clear();
            p.written = 0;
            if p.hang_up {
                self.client_pipes.remove(&id);
            }
        }
    }

    /// Closes a client pipe before the host hung up on it.
    fn drop_client_pipe(&mut self, id: u32) {
        if let Some(p) = self.client_pipes.remove(&id) {
            if !p.hang_up {
                self.dropped_pipes.insert(id);
            }
        }
    }

    // ---- client → host ----------------------------------------------------------------

    fn on_client(&mut self, ev: PollFlags) -> Result<(), SessionError> {
        if ev.contains(PollFlags::POLLOUT) {
            self.flush_to_client();
        }
        let hup = ev.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL);
        if ev.contains(PollFlags::POLLIN) && !self.client_eof && !self.host_closed {
            let mut buf = vec![0u8; wire::MAX_SEND_DATA];
            match recv_with_fds(self.client.as_fd(), &mut buf) {
                Ok(r) if r.len == 0 && r.fds.is_empty() => {
                    self.client_eof = true;
                    if hup {
                        self.client_gone = true;
                    } else {
                        debug!("client {}: shut down its sending side", self.client_id);
                    }
                    return Ok(());
                }
                Ok(r) => {
                    if r.fds_truncated {
                        warn!(
                            "client {}: sent more than {} descriptors in one message; the \
                             kernel dropped the rest",
                            self.client_id,
                            super::kernel::MAX_FDS
                        );
                    }
                    buf.truncate(r.len);
                    return self.forward_to_host(&buf, r.fds);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
                Err(e) => {
                    debug!("client {}: receive failed: {e}", self.client_id);
                    self.client_eof = true;
                    self.client_gone = true;
                    return Ok(());
                }
            }
        }
        if hup {
            // Closed in both directions (or broken): nothing more can be read or written.
            self.client_eof = true;
            self.client_gone = true;
        }
        Ok(())
    }

    fn forward_to_host(&mut self, data: &[u8], fds: Vec<OwnedFd>) -> Result<(), SessionError> {
        if data.is_empty() {
            self.stats.fds_refused += fds.len() as u64;
            warn!(
                "client {}: dropping {} descriptors that came without data",
                self.client_id,
                fds.len()
            );
            return Ok(());
        }
        let mut ids = Vec::with_capacity(fds.len());
        let mut close_after = Vec::new();
        for fd in fds {
            match self.client_fd(fd, &mut close_after) {
                Ok(ident) => ids.push(ident),
                Err(e) => {
                    self.stats.fds_refused += 1;
                    warn!("client {}: refusing a file descriptor: {e}", self.client_id);
                }
            }
        }
        let cmd = wire::send(&ids, data).map_err(SessionError::Encode)?;
        let r = self.dev.execbuffer(&cmd, None, &[]);
        for bo in close_after {
            self.close_bo(bo);
        }
        r?;
        self.stats.bytes_to_host += data.len() as u64;
        self.stats.fds_to_host += ids.len() as u64;
        Ok(())
    }

    /// Turns one descriptor from the client into an identifier; GEM handles to close after
    /// the SEND go into `close_after`.
    fn client_fd(
        &mut self,
        fd: OwnedFd,
        close_after: &mut Vec<u32>,
    ) -> Result<Identifier, Refusal> {
        let st = fstat(&fd).map_err(io::Error::from)?;
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        if kind == SFlag::S_IFIFO {
            let fl = fcntl(&fd, FcntlArg::F_GETFL).map_err(io::Error::from)?;
            if OFlag::from_bits_truncate(fl) & OFlag::O_ACCMODE != OFlag::O_WRONLY {
                return Err(Refusal::Kind(
                    "a pipe read end (only write ends, which the host writes into, can cross)",
                ));
            }
            let id = self.read_pipe_ids.next_id();
            self.client_pipes.insert(
                id,
                ClientPipe {
                    fd,
                    pending: Vec::new(),
                    written: 0,
                    hang_up: false,
                },
            );
            return Ok(Identifier {
                id,
                kind: ID_TYPE_READ_PIPE,
                size: 0,
            });
        }
        if kind == SFlag::S_IFREG {
            let len = u64::try_from(st.st_size).unwrap_or(0);
            let blob = self.snapshot(fd.as_fd(), len)?;
            close_after.push(blob.bo_handle);
            return Ok(Identifier {
                id: blob.res_handle,
                kind: ID_TYPE_VIRTGPU_BLOB,
                size: u32::try_from(len).unwrap_or(u32::MAX),
            });
        }
        if kind == SFlag::S_IFSOCK {
            return Err(Refusal::Kind("a socket (only pipes and memory can cross)"));
        }
        // Perhaps a dma-buf of this GPU (e.g. memory this proxy received from the host and
        // the client passes back): pass the resource itself, which the host already has.
        let bo = self
            .dev
            .import_fd(fd.as_fd())
            .map_err(|_| Refusal::Kind("not a pipe, memory or a dma-buf of this GPU"))?;
        let info = match self.dev.resource_info(bo) {
            Ok(info) => info,
            Err(e) => {
                self.close_bo(bo);
                return Err(e.into());
            }
        };
        if !matches!(info.blob_mem, BLOB_MEM_HOST3D | BLOB_MEM_HOST3D_GUEST) {
            self.close_bo(bo);
            return Err(Refusal::Kind(
                "a dma-buf in guest memory, which the host cannot see",
            ));
        }
        close_after.push(bo);
        Ok(Identifier {
            id: info.res_handle,
            kind: ID_TYPE_VIRTGPU_BLOB,
            size: info.size,
        })
    }

    /// Copies `len` bytes of a guest memory file into a fresh host blob (spec §9.1 step 10):
    /// image requirements for an R8 image of `len` (page-rounded) × 1, a HOST3D blob with the
    /// reply's blob id, mapped and filled once.
    fn snapshot(&mut self, fd: BorrowedFd<'_>, len: u64) -> Result<Blob, Refusal> {
        if !self.info.host_visible {
            return Err(Refusal::NoHostVisible);
        }
        let width = round_up(len.max(1), self.page_size)
            .and_then(|w| u32::try_from(w).ok())
            .ok_or(Refusal::TooLarge(len))?;
        let (blob_id, size) = match self.image_requirements.get(&width) {
            Some(&r) => r,
            None => {
                let r = self.query_requirements(width)?;
                if r.size < len || r.blob_id == 0 || r.size > usize::MAX as u64 {
                    return Err(Refusal::BadRequirements {
                        size: r.size,
                        blob_id: r.blob_id,
                    });
                }
                self.image_requirements.insert(width, (r.blob_id, r.size));
                (r.blob_id, r.size)
            }
        };
        let blob = self.dev.create_blob(&BlobCreate {
            blob_mem: BLOB_MEM_HOST3D,
            blob_flags: BLOB_FLAG_USE_MAPPABLE | BLOB_FLAG_USE_SHAREABLE,
            size,
            blob_id: u64::from(blob_id),
        })?;
        match self.fill(blob.bo_handle, size as usize, fd, len) {
            Ok(()) => Ok(blob),
            Err(e) => {
                self.close_bo(blob.bo_handle);
                Err(e)
            }
        }
    }

    /// GET_IMAGE_REQUIREMENTS for an R8 image of `width` × 1, fenced on the query ring and
    /// waited for. A refused query leaves the zeroed reply in place.
    fn query_requirements(
        &mut self,
        width: u32,
    ) -> Result<cross_domain_protocol::wire::ImageRequirements, SessionError> {
        self.query
            .map
            .write(0, &[0u8; wire::IMAGE_REQUIREMENTS_SIZE])?;
        self.dev.execbuffer(
            &wire::get_image_requirements(width, 1, wire::DRM_FORMAT_R8),
            Some(u32::from(QUERY_RING)),
            &[self.query.bo],
        )?;
        self.dev.wait(self.query.bo)?;
        let mut reply = [0u8; wire::IMAGE_REQUIREMENTS_SIZE];
        self.query.map.read(0, &mut reply)?;
        Ok(wire::decode_image_requirements(&reply)?)
    }

    fn fill(&mut self, bo: u32, size: usize, fd: BorrowedFd<'_>, len: u64) -> Result<(), Refusal> {
        let map = self.dev.map(bo, size)?;
        let mut buf = vec![0u8; MIB.min(size)];
        let mut off: u64 = 0;
        while off < len {
            let want = buf.len().min((len - off) as usize);
            let n = match nix::sys::uio::pread(fd, &mut buf[..want], off as libc::off_t) {
                Ok(0) => break, // the file shrank: the rest stays zero
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(Refusal::Io(e.into())),
            };
            map.write(off as usize, &buf[..n])?;
            off += n as u64;
        }
        Ok(())
    }

    // ---- host pipes -------------------------------------------------------------------

    fn on_host_pipe(&mut self, id: u32) -> Result<(), SessionError> {
        let Some(fd) = self.host_pipes.get(&id) else {
            return Ok(());
        };
        let mut buf = vec![0u8; wire::MAX_WRITE_DATA];
        let (data, hang_up) = match nix::unistd::read(fd, &mut buf) {
            Ok(0) => (&buf[..0], true),
            Ok(n) => (&buf[..n], false),
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => return Ok(()),
            Err(e) => {
                warn!(
                    "client {}: reading the pipe for host pipe {id:#x}: {e}",
                    self.client_id
                );
                (&buf[..0], true)
            }
        };
        let cmd = wire::write(id, data, hang_up).map_err(SessionError::Encode)?;
        self.dev.execbuffer(&cmd, None, &[])?;
        self.stats.bytes_to_host += data.len() as u64;
        if hang_up {
            self.host_pipes.remove(&id);
        }
        Ok(())
    }
}
