//! The interface between the device and its contexts: what every context shares ([`Shared`]),
//! what one operation borrows from it ([`Env`], made in one place: [`Shared::env`]), what one
//! SUBMIT_3D lends besides ([`Submission`]), what a context may see of the device's resources
//! ([`ResourceView`]), how it reaches host services ([`Connector`]), and the reusable buffers
//! of the per-message path ([`Scratch`]).
//!
//! This module holds no per-context state, and nothing of the virtio-gpu layer: requests are
//! [`HoldToken`]s here, never virtqueue heads.

use std::io as stdio;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use super::backlog::{Backlog, Flush, HoldToken};
use super::blobs::PartialPages;
use super::hostpoll::HostPoll;
use super::io::CmsgBuf;
use super::policy::FdPolicy;
use super::sockets::ParkedSockets;
use crate::config::{ChannelTable, ChannelView};
use crate::guest_mem::{GuestMem, SgList};
use crate::ratelimit::GuestLog;

/// What a resource id means to a context.
pub enum Lookup<'a> {
    /// No such resource, or not attached to this context.
    NotAttached,
    /// Attached and backed by guest pages.
    Guest(&'a SgList),
    /// Attached, without guest pages (e.g. a 2D resource without backing).
    Unbacked,
    /// Attached and backed by host memory (a memfd or dma-buf) that can be passed on.
    Host(BorrowedFd<'a>),
}

/// The resources visible to one context (implemented by the virtio-gpu layer).
pub trait ResourceView {
    /// Look up `res_id` among the resources attached to this context.
    fn lookup(&self, res_id: u32) -> Lookup<'_>;
}

/// Connects channel sockets: the only way a context reaches a host service. The daemon's
/// implementation asks the connection broker when sandboxed (`crate::sandbox::BrokerConnector`);
/// tests and the fuzzer substitute their own.
pub trait Connector: Send + Sync {
    /// A new non-blocking, close-on-exec socket connected to the host service of
    /// `channel_type`, which the channel table maps to `path`.
    fn connect(&self, channel_type: u32, path: &Path) -> stdio::Result<OwnedFd>;
}

/// Reusable buffers so the per-message path does not allocate.
#[derive(Default)]
pub(super) struct Scratch {
    pub(super) iov: Vec<libc::iovec>,
    pub(super) fds: Vec<OwnedFd>,
    pub(super) raw: Vec<RawFd>,
    pub(super) pipes: Vec<(u32, OwnedFd)>,
    pub(super) cmsg: CmsgBuf,
}

// SAFETY: the iovec pointers in `Scratch::iov` are only meaningful during one call and are
// cleared before every use; holding stale values across threads is harmless because they are
// never dereferenced outside the call that set them.
unsafe impl Send for Scratch {}

/// What a context borrows from the device for one operation. Made only by
/// [`Shared::env`], so that every operation sees the same device-wide pieces.
pub struct Env<'a> {
    pub(super) mem: &'a GuestMem,
    pub(super) epoll: &'a HostPoll,
    pub(super) channels: &'a ChannelTable,
    pub(super) connector: &'a dyn Connector,
    pub(super) scratch: &'a mut Scratch,
    /// The VM's parked sockets (ASSIGN_SOCKET_UUID, adopted by a 36-byte INIT).
    pub(super) parked: &'a mut ParkedSockets,
    pub(super) limiter: &'a mut GuestLog,
    /// Tokens of held requests whose last queued bytes went out or were dropped.
    pub(super) released: &'a mut Vec<HoldToken>,
    /// What the VMM does with mappings past the end of a file.
    pub(super) partial_pages: PartialPages,
}

/// What one SUBMIT_3D request lends a context beyond the [`Env`]. Only the execution of a
/// command stream queues output or stores image requirements; host events and deliveries
/// never do, so they take no `Submission`.
#[derive(Debug)]
pub struct Submission {
    /// The token to hold the request with when its bytes must wait for a slow host peer
    /// (see [`HoldToken`]); `None` when it must complete now (fenced on a context ring, or
    /// the device's budget of held requests is spent): its waiting bytes are then copied.
    pub hold: Option<HoldToken>,
    /// Set by the context: how many queued chunks now hold the request.
    pub held_chunks: u32,
    /// How many more image requirements the VM may store (a VM-wide budget kept by the
    /// device); the context takes one for every one it stores.
    pub images_left: usize,
    /// Lent by the device: fd-less SENDs to a stream channel may be gathered until the end
    /// of the control queue's pass (the device then calls
    /// [`Context::flush_coalesced`](super::Context::flush_coalesced)). False where no one
    /// ends the pass: every SEND is then written at once.
    pub coalesce: bool,
    /// Set by the context: it has output or state to settle at the end of the pass.
    pub coalesced: bool,
}

/// What every context of a device shares, owned by the device and lent to one context at a
/// time as an [`Env`]: the epoll set of host fds, the channel table, the [`Connector`], the
/// VMM's [`PartialPages`] behaviour, the VM's [`ParkedSockets`] and the scratch buffers.
pub struct Shared {
    epoll: HostPoll,
    channels: ChannelView,
    connector: Arc<dyn Connector>,
    partial_pages: PartialPages,
    parked: ParkedSockets,
    scratch: Scratch,
}

impl Shared {
    /// The shared pieces of a device serving `channels`, connected through `connector`, for a
    /// VMM that treats mappings past the end of a file as `partial_pages` says.
    pub fn new(
        channels: impl Into<ChannelView>,
        connector: Arc<dyn Connector>,
        partial_pages: PartialPages,
    ) -> stdio::Result<Self> {
        Ok(Shared {
            epoll: HostPoll::new()?,
            channels: channels.into(),
            connector,
            partial_pages,
            parked: ParkedSockets::default(),
            scratch: Scratch::default(),
        })
    }

    /// The sockets parked now (ASSIGN_SOCKET_UUID) that no context adopted yet.
    pub fn parked_sockets(&self) -> usize {
        self.parked.len()
    }

    /// Close every parked socket: the device was reset or its VMM went, and no later context
    /// may adopt a socket a former guest parked.
    pub fn purge_parked_sockets(&mut self) {
        self.parked.purge();
    }

    /// The registry of every context's host fds; its events carry `token_parts` tokens.
    pub fn epoll(&self) -> &HostPoll {
        &self.epoll
    }

    /// The configured channels (the table in force now: a reload may have replaced it).
    pub fn channels(&mut self) -> &ChannelTable {
        self.channels.current()
    }

    /// The [`Env`] for one operation on guest memory `mem`, logging guest-caused problems to
    /// `limiter` and handing back released hold tokens in `released`.
    pub fn env<'a>(
        &'a mut self,
        mem: &'a GuestMem,
        limiter: &'a mut GuestLog,
        released: &'a mut Vec<HoldToken>,
    ) -> Env<'a> {
        Env {
            mem,
            epoll: &self.epoll,
            channels: self.channels.current(),
            connector: &*self.connector,
            scratch: &mut self.scratch,
            parked: &mut self.parked,
            limiter,
            released,
            partial_pages: self.partial_pages,
        }
    }
}

impl Env<'_> {
    /// The fd policy of the configured channel `channel_type`: the one place it is looked up.
    /// It is the table's (`fds=` on the command line or in the channels file, else the type's
    /// default); a socket parked from the channel keeps it for the context that adopts it.
    pub(super) fn policy(&self, channel_type: u32) -> FdPolicy {
        self.channels.policy(channel_type)
    }

    /// Send what `out` holds towards its peer `fd` (a socket when `socket`), with this
    /// operation's guest memory, scratch buffers and release list.
    pub(super) fn flush(
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

/// A device's shared pieces and the rest of an [`Env`], owned, for the unit tests of the
/// files that take one. No channels are configured and connecting is refused.
#[cfg(test)]
pub(super) struct TestEnv {
    pub mem: GuestMem,
    pub shared: Shared,
    pub limiter: GuestLog,
    pub released: Vec<HoldToken>,
}

#[cfg(test)]
struct Refuse;

#[cfg(test)]
impl Connector for Refuse {
    fn connect(&self, _: u32, _: &Path) -> stdio::Result<OwnedFd> {
        Err(stdio::Error::from_raw_os_error(libc::ECONNREFUSED))
    }
}

#[cfg(test)]
impl TestEnv {
    /// 64 KiB of guest memory at 0x10000.
    pub fn new() -> Self {
        Self::with(ChannelTable::new(), Arc::new(Refuse))
    }

    /// 64 KiB of guest memory at 0x10000, `channels` connected through `connector`.
    pub fn with(channels: ChannelTable, connector: Arc<dyn Connector>) -> Self {
        use vm_memory::{GuestAddress, GuestMemoryMmap};
        TestEnv {
            mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0x1_0000), 0x1_0000)]).unwrap(),
            shared: Shared::new(Arc::new(channels), connector, PartialPages::default()).unwrap(),
            limiter: GuestLog::new(1),
            released: Vec::new(),
        }
    }

    pub fn env(&mut self) -> Env<'_> {
        self.shared
            .env(&self.mem, &mut self.limiter, &mut self.released)
    }

    pub fn epoll(&self) -> &HostPoll {
        self.shared.epoll()
    }

    /// The released tokens' values, in order.
    pub fn released(&self) -> Vec<u64> {
        self.released.iter().map(|t| t.get()).collect()
    }

    /// `data` written to guest memory at `addr`, as a one-piece list.
    pub fn sg(&self, addr: u64, data: &[u8]) -> SgList {
        use vm_memory::{Bytes, GuestAddress};
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
        let mut sg = SgList::new();
        sg.push(GuestAddress(addr), data.len());
        sg
    }

    /// Events ready on the epoll set now: (token, events).
    pub fn ready(&self) -> Vec<(u64, nix::sys::epoll::EpollFlags)> {
        let mut evs = [nix::sys::epoll::EpollEvent::empty(); 8];
        let n = self
            .epoll()
            .wait(&mut evs, nix::sys::epoll::EpollTimeout::ZERO)
            .unwrap();
        evs[..n].iter().map(|e| (e.data(), e.events())).collect()
    }
}

/// A submission that may be held under `hold`, with no image budget.
#[cfg(test)]
pub(super) fn submission(hold: Option<u64>) -> Submission {
    Submission {
        hold: hold.map(HoldToken::new),
        held_chunks: 0,
        images_left: 0,
        coalesce: false,
        coalesced: false,
    }
}
