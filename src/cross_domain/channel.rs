//! The channel socket of a context: connected at INIT to the host service configured for the
//! channel type, written by SEND (through its [`Peer`]), and read into RECEIVE messages, whose
//! fds become items (docs/protocol.md §3.6, §4.5, §5.3, §5.3.1).
//!
//! A context's channel is either connected at INIT to the configured host service
//! ([`Channel::connect`]) or a parked socket adopted by a 36-byte INIT ([`Channel::adopt`],
//! `sockets.rs`); both carry the kinds of fd their [`FdPolicy`] names.
//!
//! A message is delivered whole or not at all: if one of its fds cannot become an identifier
//! (a kind the guest cannot be given or the channel does not carry, more fds than a RECEIVE
//! holds, no room in the item table), the channel hangs up instead — the host service's connection is closed and the guest
//! gets the one empty RECEIVE of end of stream — because guests pair identifiers with the inner
//! protocol's fds by position, and a message short of one desynchronises everything after it.
//!
//! This module owns the socket and what a RECEIVE carries. It never interprets the bytes, and
//! it never chooses when to read: the delivery rotation gives it its turns.

use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use log::info;
use nix::sys::epoll::{EpollEvent, EpollFlags};

use super::backlog::HoldToken;
use super::delivery::{token, Turn, CHANNEL_EVENTS, CHANNEL_TOKEN};
use super::env::{Connector, Env, Submission};
use super::error::CtxError;
use super::eventfds::Eventfd;
use super::hostpoll::HostPoll;
use super::io::{self as cdio, FdKind, Received};
use super::items::{Item, ItemTable, MAX_ITEMS};
use super::peer::{Peer, PeerError};
use super::pipes::WritePipe;
use super::policy::{FdClass, FdPolicy};
use super::protocol::{
    SendReceive, CHANNEL_RING_MIN_SIZE, CMD_RECEIVE, ID_TYPE_SOCKET, ID_TYPE_VIRTGPU_BLOB,
    ID_TYPE_WRITE_PIPE, MAX_IDENTIFIERS,
};
use super::sockets::{Parked, SocketUuid};
use crate::counters::{self, ChannelCounters, OpenContext};
use crate::guest_mem::SgList;
use crate::guest_warn;
use crate::limitlog::LimitKind;

/// A context's connection to its host service.
pub(super) struct Channel {
    peer: Peer,
    /// The context's channel type (0xFFFFFFFF for an adopted socket).
    channel_type: u32,
    /// What the socket reaches, for logs: the configured path, or the parked socket's uuid.
    host: String,
    /// The kinds of fd the channel carries.
    policy: FdPolicy,
    /// The configured channel type the socket came from (`channel_type` unless adopted).
    origin: u32,
    /// The identifier type an eventfd gets in RECEIVE (docs/protocol.md §8.2).
    eventfd_type: u32,
    /// Epoll reported it readable and it has not been found drained since (`EAGAIN`, or a
    /// short read that [`Channel::drained_by`] trusts).
    readable: bool,
    /// Read until `EAGAIN`: a short read may leave bytes behind (see
    /// [`Channel::drained_by`]). Set for an adopted socket, which may pass credentials, and
    /// for good once epoll reported out-of-band data, a hang-up or an error.
    read_to_eagain: bool,
    /// The service hung up (or the socket failed, or the daemon hung up); nothing more is read.
    eof: bool,
    /// The daemon hung the channel up (a message it could not deliver whole): SENDs fail.
    closed_here: bool,
    /// The channel type's counters, this context counted as open.
    stats: OpenContext,
}

/// Who a log line is about: the context's id and the guest's name for it.
#[derive(Clone, Copy)]
pub(super) struct Who<'a> {
    pub ctx_id: u32,
    pub name: &'a str,
}

/// Why a received message cannot be delivered whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Undeliverable {
    /// An fd of a kind the guest cannot be given.
    Fd(&'static str),
    /// An fd of a kind the channel does not carry.
    NotCarried(FdClass, FdPolicy),
    /// More fds than a RECEIVE has identifiers (the kernel dropped the rest).
    TooManyFds,
    /// The item table has no room for the message's fds.
    ItemTableFull,
}

/// What a received fd becomes, once classified.
#[derive(Debug, Clone, Copy)]
enum Admitted {
    /// Memory of this many bytes.
    Memory(u64),
    WritePipe,
    Eventfd,
    Socket,
}

impl Admitted {
    fn class(self) -> FdClass {
        match self {
            Admitted::Memory(_) => FdClass::Memory,
            Admitted::WritePipe => FdClass::Pipe,
            Admitted::Eventfd => FdClass::Eventfd,
            Admitted::Socket => FdClass::Socket,
        }
    }
}

impl fmt::Display for Undeliverable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Undeliverable::Fd(what) => write!(f, "a {what}, which the guest cannot be given"),
            // Worded as for a kind no channel carries (the guest of this channel cannot be
            // given it either); the policy follows in the log line (`refuse`).
            Undeliverable::NotCarried(class, _) => {
                let what = match class {
                    FdClass::Memory => "memory fd",
                    FdClass::Pipe => "pipe write end",
                    FdClass::Eventfd => "eventfd",
                    FdClass::Socket => "socket",
                };
                let a = if *class == FdClass::Eventfd {
                    "an"
                } else {
                    "a"
                };
                write!(f, "{a} {what}, which the guest cannot be given")
            }
            Undeliverable::TooManyFds => {
                write!(f, "more than {MAX_IDENTIFIERS} fds in one message")
            }
            Undeliverable::ItemTableFull => write!(
                f,
                "fds for which the context's item table has no room (limit {MAX_ITEMS})"
            ),
        }
    }
}

impl Channel {
    /// Connect the channel of `channel_type`, configured at `path`, for context `ctx_id` and
    /// start watching it. Received eventfds will be announced as `eventfd_type`; the channel
    /// carries the fds `policy` names.
    pub fn connect(
        connector: &dyn Connector,
        epoll: &HostPoll,
        ctx_id: u32,
        channel_type: u32,
        path: &Path,
        eventfd_type: u32,
        policy: FdPolicy,
    ) -> Result<Self, CtxError> {
        let sock = connector.connect(channel_type, path).map_err(|source| {
            counters::for_type(channel_type).error();
            CtxError::Connect {
                channel_type,
                path: path.to_path_buf(),
                source,
            }
        })?;
        let host = path.display().to_string();
        Self::watch(
            epoll,
            ctx_id,
            sock,
            channel_type,
            host,
            eventfd_type,
            (channel_type, policy),
        )
    }

    /// Make the parked socket `parked`, adopted under `uuid` by a 36-byte INIT of context
    /// `ctx_id`, its channel (type 0xFFFFFFFF), carrying what its first channel carried.
    pub fn adopt(
        epoll: &HostPoll,
        ctx_id: u32,
        channel_type: u32,
        uuid: SocketUuid,
        parked: Parked,
        eventfd_type: u32,
    ) -> Result<Self, CtxError> {
        // Received sockets are left as the host service made them until used: the channel
        // path needs a non-blocking one, as the connector's are.
        cdio::set_nonblocking(parked.fd.as_fd()).map_err(CtxError::HostIo)?;
        let host = format!("internal socket {uuid} from channel {:#x}", parked.origin);
        // Counted, and served, as the channel the socket came from: the internal-socket type
        // is the same for every adopted socket and says nothing about its traffic.
        let mut chan = Self::watch(
            epoll,
            ctx_id,
            parked.fd,
            channel_type,
            host,
            eventfd_type,
            (parked.origin, parked.policy),
        )?;
        // Its maker may have turned credential passing on (or may do so later, through a
        // copy it kept), and asking costs a `getsockopt` the sandbox does not allow: read it
        // until EAGAIN.
        chan.read_to_eagain = true;
        chan.peer.keep_boundaries();
        Ok(chan)
    }

    fn watch(
        epoll: &HostPoll,
        ctx_id: u32,
        sock: OwnedFd,
        channel_type: u32,
        host: String,
        eventfd_type: u32,
        (origin, policy): (u32, FdPolicy),
    ) -> Result<Self, CtxError> {
        let tok = token(ctx_id, CHANNEL_TOKEN);
        epoll
            .add(&sock, EpollEvent::new(CHANNEL_EVENTS, tok))
            .map_err(|e| CtxError::HostIo(e.into()))?;
        Ok(Channel {
            peer: Peer::socket(sock, tok, CHANNEL_EVENTS),
            channel_type,
            host,
            policy,
            origin,
            eventfd_type,
            readable: true,
            // The daemon's own sockets never pass credentials; a parked socket may (the host
            // service made it, and may still hold it): see `adopt`.
            read_to_eagain: false,
            eof: false,
            closed_here: false,
            stats: counters::for_type(origin).open(),
        })
    }

    /// The channel type's counters.
    pub fn stats(&self) -> &ChannelCounters {
        &self.stats
    }

    /// The kinds of fd the channel carries.
    pub fn policy(&self) -> FdPolicy {
        self.policy
    }

    /// Replace the policy (unit tests of other files: the command line cannot set one yet).
    #[cfg(test)]
    pub fn set_policy(&mut self, policy: FdPolicy) {
        self.policy = policy;
    }

    /// The configured channel type its socket came from.
    pub fn origin(&self) -> u32 {
        self.origin
    }

    /// What the socket reaches, for logs.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// SEND: pass `[off, off + len)` of the request `stream` of submission `sub` on, with
    /// `fds` (emptied).
    #[allow(clippy::too_many_arguments)]
    pub fn send(
        &mut self,
        env: &mut Env<'_>,
        sub: &mut Submission,
        who: Who<'_>,
        stream: &SgList,
        off: usize,
        len: usize,
        fds: &mut Vec<OwnedFd>,
    ) -> Result<(), CtxError> {
        if self.closed_here {
            fds.clear();
            return Err(CtxError::ChannelClosed);
        }
        match self.peer.send(env, sub, stream, off, len, fds) {
            Ok(()) => Ok(()), // counted by the caller, which knows the kinds of the fds
            Err(PeerError::Refused(e)) => Err(e),
            Err(PeerError::Broken(e)) => {
                // The host service closed the channel or broke; the socket stays until the
                // hang-up is read (or the context ends).
                info!(
                    "ctx {} ({}): channel {:#x} ({}) send failed: {e}",
                    who.ctx_id, who.name, self.channel_type, self.host
                );
                Err(CtxError::HostIo(e))
            }
        }
    }

    /// The end of a pass of the control queue: send the SENDs gathered in it (see
    /// [`Peer::send`]). A failure is logged as a failed flush of a slow peer's output is: the
    /// requests were already answered, and the hang-up is read from the socket.
    pub fn flush_coalesced(&mut self, env: &mut Env<'_>, who: Who<'_>) {
        match self.peer.flush_batch(env) {
            Ok(()) => {}
            Err(PeerError::Broken(e)) => info!(
                "ctx {} ({}): channel {:#x} ({}) hung up while sending: {e}",
                who.ctx_id, who.name, self.channel_type, self.host
            ),
            Err(PeerError::Refused(e)) => info!(
                "ctx {} ({}): channel {:#x} ({}): gathered SENDs dropped: {e}",
                who.ctx_id, who.name, self.channel_type, self.host
            ),
        }
    }

    /// An epoll event on the socket.
    pub fn on_event(&mut self, env: &mut Env<'_>, ctx_id: u32, readable: bool, writable: bool) {
        if readable && !self.eof {
            self.readable = true;
        }
        if writable {
            if let Err(e) = self.peer.on_writable(env) {
                info!(
                    "ctx {ctx_id}: channel {} hung up while sending: {e}",
                    self.host
                );
            }
        }
    }

    /// Epoll's event mask for the socket, before [`Channel::on_event`]: out-of-band data
    /// (`EPOLLPRI`), a hang-up or an error make short reads untrustworthy for good.
    pub fn note_events(&mut self, events: EpollFlags) {
        if events.intersects(
            EpollFlags::EPOLLPRI
                | EpollFlags::EPOLLRDHUP
                | EpollFlags::EPOLLHUP
                | EpollFlags::EPOLLERR,
        ) {
            self.read_to_eagain = true;
        }
    }

    /// Whether a `recvmsg` that returned `len` bytes of a buffer of `cap`, with `fds` fds,
    /// left the socket empty, so that the next read would only find `EAGAIN` and the channel
    /// can wait for epoll's next edge instead.
    ///
    /// A Unix stream `recvmsg` returns less than asked while bytes remain queued only when it
    /// stops at a message boundary the kernel keeps: after a message that carried fds (then
    /// `fds` is not empty, or the fds were cut off), before another sender's credentials (only
    /// on a socket that passes credentials), or at an out-of-band mark (reported as
    /// `EPOLLPRI`). Outside those cases a short read consumed everything queued when it ran,
    /// and anything queued later raises a new edge-triggered event: no byte waits unseen.
    fn drained_by(&self, len: usize, cap: usize, fds: usize, truncated: bool) -> bool {
        !self.read_to_eagain && len < cap && fds == 0 && !truncated
    }

    /// Its turn in the rotation: `recvmsg` one message straight into the channel `ring` as a
    /// RECEIVE, its fds stored in `items`. At end of file (or on an error, or when the message
    /// cannot be delivered whole) the RECEIVE is the one empty message of docs/protocol.md
    /// §4.5 and the channel is done. The message fills at most a 4096-byte ring, as every
    /// peer's: [`Channel::deliver_up_to`] for a large ring.
    #[cfg(test)]
    pub fn deliver(
        &mut self,
        env: &mut Env<'_>,
        who: Who<'_>,
        items: &mut ItemTable,
        ring: &SgList,
    ) -> Turn {
        self.deliver_up_to(env, who, items, ring, CHANNEL_RING_MIN_SIZE)
    }

    /// [`Channel::deliver`] into at most `limit` bytes of the ring (a context with a large
    /// ring, docs/protocol.md "Large channel rings"; never less than 4096).
    pub fn deliver_up_to(
        &mut self,
        env: &mut Env<'_>,
        who: Who<'_>,
        items: &mut ItemTable,
        ring: &SgList,
        limit: usize,
    ) -> Turn {
        let ctx_id = who.ctx_id;
        if !self.readable || self.eof {
            return Turn::Idle;
        }
        let hdr_len = std::mem::size_of::<SendReceive>();
        let cap = ring.len().min(limit.max(CHANNEL_RING_MIN_SIZE)) - hdr_len;
        let scratch = &mut *env.scratch;
        scratch.iov.clear();
        if let Err(e) = ring.iovecs(env.mem, hdr_len, cap, &mut scratch.iov) {
            guest_warn!(env.limiter, "ctx {ctx_id}: channel ring unusable: {e}");
            return Turn::Idle;
        }
        scratch.fds.clear();
        let res = cdio::recv_with_fds(
            self.peer.fd(),
            &scratch.iov,
            &mut scratch.fds,
            &mut scratch.cmsg,
        );
        scratch.iov.clear();
        let mut msg = SendReceive::default();
        msg.hdr.cmd = CMD_RECEIVE;
        let turn = match res {
            Ok(Received::WouldBlock) => {
                self.readable = false;
                return Turn::Idle;
            }
            Ok(Received::Data { len, truncated_fds }) => {
                if self.drained_by(len, cap, env.scratch.fds.len(), truncated_fds) {
                    // Saves the `recvmsg` that would only return EAGAIN at the next POLL.
                    self.readable = false;
                }
                let mut fds = std::mem::take(&mut env.scratch.fds);
                let admitted = self.admit(env, ctx_id, items, &mut msg, &mut fds, truncated_fds);
                // Whatever was not admitted closes here.
                fds.clear();
                env.scratch.fds = fds;
                match admitted {
                    Ok(()) => {
                        msg.opaque_data_size = len as u32;
                        let n = msg.num_identifiers as usize;
                        self.stats.from_host(len, &msg.identifier_types[..n]);
                        Turn::Served
                    }
                    Err(why) => {
                        self.refuse(env, who, why);
                        Turn::ServedLast
                    }
                }
            }
            Ok(Received::Eof) => {
                self.hung_up(who, format_args!("hung up"));
                self.peer.stop_reading(env.epoll);
                Turn::ServedLast
            }
            Err(e) => {
                self.hung_up(who, format_args!("failed: {e}; treating as hang-up"));
                self.peer.close(env.epoll, env.released);
                Turn::ServedLast
            }
        };
        // Past 64 KiB (large rings only) `cmd_size` saturates: `opaque_data_size` counts.
        msg.hdr.cmd_size =
            u16::try_from(hdr_len + msg.opaque_data_size as usize).unwrap_or(u16::MAX);
        if let Err(e) = ring.write_obj(env.mem, 0, &msg) {
            guest_warn!(env.limiter, "ctx {ctx_id}: channel ring write failed: {e}");
        }
        turn
    }

    fn hung_up(&mut self, who: Who<'_>, what: fmt::Arguments<'_>) {
        info!(
            "ctx {} ({}): channel {:#x} ({}) {what}",
            who.ctx_id, who.name, self.channel_type, self.host
        );
        self.eof = true;
        self.readable = false;
        self.stats.hang_up();
    }

    /// Hang the channel up because a message could not be delivered whole: close the host
    /// service's connection (it reads end of file, its writes fail) and drop what waits for
    /// it. The guest gets the empty RECEIVE of end of stream from the caller.
    fn refuse(&mut self, env: &mut Env<'_>, who: Who<'_>, why: Undeliverable) {
        let ctx_id = who.ctx_id;
        self.stats.refused_fd();
        let carried = match why {
            Undeliverable::NotCarried(class, policy) => {
                format!(" (this channel does not carry {class} fds: its fds are {policy})")
            }
            _ => String::new(),
        };
        let what = format_args!(
            "ctx {ctx_id} ({}): channel {:#x} ({}) sent {why}; hung up the channel rather than \
             deliver the message without it{carried}",
            who.name, self.channel_type, self.host
        );
        if why == Undeliverable::ItemTableFull {
            let limit = LimitKind::ItemsPerContext;
            env.limiter.limit_hit(ctx_id, limit, MAX_ITEMS, what);
        } else {
            guest_warn!(env.limiter, "{what}");
        }
        // SENDs gathered in this pass came before: they go first, as they would have.
        let _ = self.peer.flush_batch(env);
        self.hung_up(who, format_args!("hung up by the daemon"));
        if let Err(e) = cdio::shutdown(self.peer.fd()) {
            info!("ctx {ctx_id}: shutdown of channel {}: {e}", self.host);
        }
        self.peer.close(env.epoll, env.released);
        self.closed_here = true;
    }

    /// Turn the fds just received into identifiers of `msg`, in order, all or none: every fd
    /// is classified and made ready, and room for all is checked, before the first becomes an
    /// item. On `Err` no item was added and `fds` still holds what the caller closes.
    fn admit(
        &self,
        env: &mut Env<'_>,
        ctx_id: u32,
        items: &mut ItemTable,
        msg: &mut SendReceive,
        fds: &mut Vec<OwnedFd>,
        truncated: bool,
    ) -> Result<(), Undeliverable> {
        if truncated || fds.len() > MAX_IDENTIFIERS {
            return Err(Undeliverable::TooManyFds);
        }
        let mut kinds = [Admitted::Memory(0); MAX_IDENTIFIERS];
        for (kind, fd) in kinds.iter_mut().zip(fds.iter()) {
            *kind = match cdio::classify(fd.as_fd()) {
                FdKind::Refused(what) => return Err(Undeliverable::Fd(what)),
                FdKind::Memory { size } => Admitted::Memory(size),
                FdKind::WritePipe => Admitted::WritePipe,
                FdKind::Eventfd => Admitted::Eventfd,
                FdKind::Socket => Admitted::Socket,
            };
            if !self.policy.allows(kind.class()) {
                return Err(Undeliverable::NotCarried(kind.class(), self.policy));
            }
            let ready = match kind {
                Admitted::WritePipe => WritePipe::prepare(fd),
                Admitted::Eventfd => Eventfd::prepare(fd),
                // A socket is not used here; an adopting context makes it non-blocking.
                Admitted::Memory(_) | Admitted::Socket => Ok(()),
            };
            if let Err(e) = ready {
                guest_warn!(env.limiter, "ctx {ctx_id}: cannot use a received fd: {e}");
                return Err(Undeliverable::Fd("fd that cannot be made non-blocking"));
            }
        }
        if !items.has_room_for(fds.len()) {
            return Err(Undeliverable::ItemTableFull);
        }
        let n = fds.len();
        for (i, (fd, kind)) in fds.drain(..).zip(kinds).enumerate() {
            let (ty, size) = match kind {
                Admitted::Memory(size) => (ID_TYPE_VIRTGPU_BLOB, size),
                Admitted::WritePipe => (ID_TYPE_WRITE_PIPE, 0),
                Admitted::Eventfd => (self.eventfd_type, 0),
                Admitted::Socket => (ID_TYPE_SOCKET, 0),
            };
            let item = |id| match kind {
                Admitted::Memory(size) => Item::Memory { fd, size },
                Admitted::WritePipe => Item::WritePipe(WritePipe::new(ctx_id, id, fd)),
                Admitted::Eventfd => Item::Eventfd(Eventfd::new(fd)),
                Admitted::Socket => Item::Socket(fd),
            };
            let Ok(id) = items.add_received(item) else {
                // Not while the room check holds (ids are plentiful); undo, to stay whole.
                for &id in &msg.identifiers[..i] {
                    items.remove(id);
                }
                return Err(Undeliverable::ItemTableFull);
            };
            msg.identifiers[i] = id;
            msg.identifier_types[i] = ty;
            // `classify` refuses memory larger than u32::MAX bytes.
            msg.identifier_sizes[i] = size as u32;
        }
        msg.num_identifiers = n as u32;
        Ok(())
    }

    /// Stop watching the socket and drop what waits for it (it closes when dropped).
    pub fn close(&mut self, epoll: &HostPoll, released: &mut Vec<HoldToken>, who: Who<'_>) {
        self.peer.close(epoll, released);
        info!(
            "ctx {} ({}): closing channel {:#x} ({})",
            who.ctx_id, who.name, self.channel_type, self.host
        );
    }
}

#[cfg(test)]
mod tests;
