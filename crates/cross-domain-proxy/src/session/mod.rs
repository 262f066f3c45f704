//! One client connection: a cross-domain context on its own DRM file, and the loop that
//! forwards bytes and file descriptors between the client socket and the host channel.
//!
//! Setup follows what sommelier and muvm do (docs/protocol.md §9): feature checks, the capset,
//! CONTEXT_INIT (capset 5, two rings, ring 1 polled), two one-page guest blobs as query and
//! channel ring, then INIT. Where the capset's fifth word says the channel offers large rings
//! (a project extension, docs/protocol.md "Large channel rings"), the channel ring is 1 MiB
//! and INIT asks for it, so that each POLL brings up to 1 MiB instead of 3744 bytes. The loop then waits with `poll(2)` on the client socket, the DRM file
//! (fence events), the pipes it relays and the eventfds the client may signal, and keeps exactly
//! one POLL outstanding whenever it can take a message: a message is copied out of the channel
//! ring before the next POLL lets the host overwrite it, and the next POLL waits until the
//! previous message was handed on, so a client that does not read slows the host down instead
//! of making the proxy buffer without bound.
//!
//! This file owns the session's state machine: setup, the loop, when a POLL may be submitted,
//! and when the session is over. The work each event triggers is split by concern:
//! - `to_host.rs`: client → host (SENDs, and which client descriptors become which
//!   identifiers);
//! - `to_client.rs`: host → client (fence events, channel messages, RECEIVEs to the client);
//! - `pipes.rs`: the pipes relayed in either direction (READ and WRITE);
//! - `eventfds.rs`: the eventfds the host passes, and which way each carries wake-ups;
//! - `blobs.rs`: memory (HOST3D blobs from host identifiers, snapshots of client files, image
//!   requirements);
//! - `sockets.rs`: sockets the host passes, each served by a session of its own on a new
//!   context that adopts it, and the limits on their nesting.
//!
//! Nothing in the session touches the kernel directly: every device operation goes through
//! [`VirtGpuDevice`], so the tests run it against the daemon through a fake device.
#![forbid(unsafe_code)]

mod blobs;
mod eventfds;
mod pipes;
mod sockets;
mod to_client;
mod to_host;

pub use sockets::{ClientId, SocketError, MAX_SOCKET_DEPTH, MAX_SOCKET_SESSIONS};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use log::warn;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use vm_memory::ByteValued;

use super::device::{
    context_param, param, BlobCreate, BlobMapping, DeviceError, VirtGpuDevice,
    BLOB_FLAG_USE_MAPPABLE, BLOB_MEM_GUEST, CAPSET_CROSS_DOMAIN,
};
use super::wire::{self, WireError};
use cross_domain_protocol::channel::CHANNEL_TYPE_INTERNAL_SOCKET;
use cross_domain_protocol::wire::{Capabilities, CHANNEL_RING};

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
    #[error(
        "the host did not adopt the parked socket: it refused ASSIGN_SOCKET_UUID or the 36-byte \
         INIT (the host's log says why)"
    )]
    SocketNotAdopted,
    #[error(
        "cannot pass host socket {id:#x} to the client: {source}; the client's connection is \
         closed rather than given the message without it"
    )]
    Socket {
        id: u32,
        #[source]
        source: SocketError,
    },
    #[error(
        "cannot pass {what} to the {to}: {reason}; the client's connection is closed rather than \
         the message delivered without it"
    )]
    FdRefused {
        /// "host" or "client": where the message was going.
        to: &'static str,
        /// The descriptor or identifier, for the log.
        what: String,
        reason: String,
    },
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
    /// The capset's fifth word, `large_ring_channels` (docs/protocol.md, "Large channel
    /// rings"): bit `t` when channel type `t` offers large rings; 0 from a host without it.
    pub large_ring_channels: u32,
}

impl DeviceInfo {
    /// Whether `channel_type` offers large rings.
    pub fn large_ring(&self, channel_type: u32) -> bool {
        1u32.checked_shl(channel_type)
            .is_some_and(|bit| self.large_ring_channels & bit != 0)
    }
}

/// Checks that the device can carry the configured channel (docs/protocol.md §9.1 steps 2–3).
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
    // Room for the fifth word: the kernel copies what the host's capset has (16 bytes from a
    // host without large rings), and the rest stays zero.
    let mut caps = [0u8; cross_domain_protocol::wire::CAPSET_SIZE_LARGE_RINGS];
    dev.get_caps(CAPSET_CROSS_DOMAIN, 0, &mut caps)?;
    let mut capabilities = Capabilities::default();
    let (four, fifth) = caps.split_at(capabilities.as_slice().len());
    capabilities.as_mut_slice().copy_from_slice(four);
    let large_ring_channels = u32::from_le_bytes([fifth[0], fifth[1], fifth[2], fifth[3]]);
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
        large_ring_channels,
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
    /// Host sockets passed to the client (each also counts in `fds_to_client`).
    pub sockets_to_client: u64,
    /// Counter values the client added to an eventfd, sent to the host.
    pub wakeups_to_host: u64,
    /// Counter values the host's eventfds produced, added for the client.
    pub wakeups_to_client: u64,
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

/// A context before its INIT (see [`Session::prepare`]).
struct Prepared<D: VirtGpuDevice> {
    dev: D,
    info: DeviceInfo,
    query: Ring<D::Mapping>,
    channel: Ring<D::Mapping>,
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
    /// A local eventfd the client may signal, by the host's id.
    Eventfd(u32),
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
    client_id: ClientId,
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
    client_pipes: BTreeMap<u32, pipes::ClientPipe>,
    /// READ_PIPE ids whose client pipe was closed early (its reader went away): the host's
    /// further READs for them are dropped quietly until its hang-up.
    dropped_pipes: HashSet<u32>,
    host_pipes: BTreeMap<u32, OwnedFd>,
    /// The host's eventfds by id, and their local stand-ins.
    eventfds: BTreeMap<u32, eventfds::LocalEventfd>,
    to_client: Option<to_client::Outgoing>,
    poll_pending: bool,
    /// The client shut down its sending side (or closed).
    client_eof: bool,
    /// The client is gone: nothing can be read from or written to it.
    client_gone: bool,
    host_closed: bool,
    client_shut: bool,
    page_size: u64,
    stats: Stats,
    /// How to pass the host's sockets on; `None` until [`Session::pass_sockets`].
    sockets: Option<sockets::Sockets>,
}

impl<D: VirtGpuDevice> Session<D> {
    /// Sets up the context for `client` on `dev` (one DRM file per client: CONTEXT_INIT works
    /// once per file).
    pub fn open(
        client_id: u64,
        cfg: ProxyConfig,
        dev: D,
        client: UnixStream,
    ) -> Result<Self, SessionError> {
        let id = ClientId {
            client: client_id,
            socket: 0,
        };
        let prepared = Self::prepare(&cfg, dev)?;
        Self::start(prepared, id, cfg, client, None)
    }

    /// The part of the setup that involves no host channel: the device checks, CONTEXT_INIT
    /// and the rings. A passed socket's context gets this far before the socket is parked, so
    /// that local failures never leave a parked socket behind.
    fn prepare(cfg: &ProxyConfig, mut dev: D) -> Result<Prepared<D>, SessionError> {
        let info = probe(&mut dev, cfg)?;
        dev.context_init(&[
            (context_param::CAPSET_ID, u64::from(CAPSET_CROSS_DOMAIN)),
            (context_param::NUM_RINGS, 2),
            (context_param::POLL_RINGS_MASK, 1 << CHANNEL_RING),
        ])?;
        let query = Self::ring(&mut dev, wire::RING_SIZE)?;
        // A large channel ring where the host offers it on the channel: its RECEIVEs and
        // READs then carry up to 1 MiB per POLL instead of 3744 and 4072 bytes.
        let channel_size = if info.large_ring(cfg.channel_type) {
            wire::LARGE_RING_SIZE
        } else {
            wire::RING_SIZE
        };
        let channel = Self::ring(&mut dev, channel_size)?;
        Ok(Prepared {
            dev,
            info,
            query,
            channel,
        })
    }

    /// The rest of the setup: INIT on `cfg`'s channel, or with `adopt` on the socket the host
    /// parked under that uuid (`cfg` then names channel 0xFFFFFFFF), and its confirmation.
    fn start(
        prepared: Prepared<D>,
        client_id: ClientId,
        cfg: ProxyConfig,
        client: UnixStream,
        adopt: Option<[u8; 16]>,
    ) -> Result<Self, SessionError> {
        let Prepared {
            mut dev,
            info,
            query,
            channel,
        } = prepared;
        let large_ring = channel.map.len() > wire::RING_SIZE;
        let init = match adopt {
            None => wire::init_with(query.res, channel.res, cfg.channel_type, large_ring),
            Some(uuid) => wire::init_adopt(query.res, channel.res, uuid),
        };
        dev.execbuffer(&init, None, &[])?;
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
            eventfds: BTreeMap::new(),
            to_client: None,
            poll_pending: false,
            client_eof: false,
            client_gone: false,
            host_closed: false,
            client_shut: false,
            page_size: cross_domain_protocol::page_size(),
            stats: Stats::default(),
            sockets: None,
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
            if self.cfg.channel_type == CHANNEL_TYPE_INTERNAL_SOCKET {
                return Err(SessionError::SocketNotAdopted);
            }
            return Err(SessionError::ChannelRefused(self.cfg.channel_type));
        }
        self.image_requirements.insert(width, (r.blob_id, r.size));
        Ok(())
    }

    fn ring(dev: &mut D, size: usize) -> Result<Ring<D::Mapping>, DeviceError> {
        let blob = dev.create_blob(&BlobCreate {
            blob_mem: BLOB_MEM_GUEST,
            blob_flags: BLOB_FLAG_USE_MAPPABLE,
            size: size as u64,
            blob_id: 0,
        })?;
        let map = dev.map(blob.bo_handle, size)?;
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
            if self.conversation_over() && !self.eventfds.is_empty() {
                self.release_eventfds();
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
                    Source::Eventfd(id) => self.on_local_eventfd(id, ev)?,
                }
            }
            if self.eventfd_retry_at().is_some_and(|t| t <= Instant::now()) {
                self.on_eventfd_retries()?;
            }
        }
    }

    /// The conversation ended on one side: the client is gone, or the host closed the channel
    /// and the client has everything the host sent.
    fn conversation_over(&self) -> bool {
        self.client_gone || (self.host_closed && self.to_client.is_none())
    }

    /// The session is over: the conversation ended and no pipe is in flight. Eventfds do not
    /// count: they have no end of file, and are released when the conversation ends.
    fn finished(&self) -> bool {
        self.conversation_over() && self.client_pipes.is_empty() && self.host_pipes.is_empty()
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

    /// `poll(2)` on everything this session waits for, until a held eventfd value is due;
    /// fills `ready`.
    fn wait(&mut self, ready: &mut Vec<(Source, PollFlags)>) -> Result<(), SessionError> {
        ready.clear();
        let mut sources = Vec::with_capacity(
            2 + self.client_pipes.len() + self.host_pipes.len() + self.eventfds.len(),
        );
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
        for (&id, e) in &self.eventfds {
            if let Some(fd) = e.client_signals() {
                sources.push(Source::Eventfd(id));
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
            }
        }
        let timeout = match self.eventfd_retry_at() {
            None => PollTimeout::NONE,
            Some(t) => {
                // Rounded up, so that the loop does not spin through the last millisecond.
                let ms = t
                    .saturating_duration_since(Instant::now())
                    .as_micros()
                    .div_ceil(1000);
                PollTimeout::from(u16::try_from(ms).unwrap_or(u16::MAX))
            }
        };
        loop {
            match nix::poll::poll(&mut fds, timeout) {
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

    /// Closes a GEM handle the session no longer needs; a failure only leaks the handle.
    fn close_bo(&mut self, bo: u32) {
        if let Err(e) = self.dev.gem_close(bo) {
            warn!("client {}: {e}", self.client_id);
        }
    }
}
