//! What a context borrows from the device for one operation ([`Env`]), what it may see of the
//! device's resources ([`ResourceView`]), how it reaches host services ([`Connector`]), and
//! the reusable buffers of the per-message path ([`Scratch`]).
//!
//! This module only describes the interface between the device and its contexts; it holds no
//! state of either.

use std::io as stdio;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sys::epoll::Epoll;

use super::backlog::{Backlog, Flush};
use super::io::CmsgBuf;
use crate::config::ChannelTable;
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
pub struct Scratch {
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

/// What an [`Env`] borrows, owned, for the unit tests of the files that take one.
#[cfg(test)]
pub(super) struct TestEnv {
    pub mem: GuestMem,
    pub epoll: Epoll,
    pub channels: ChannelTable,
    pub scratch: Scratch,
    pub limiter: GuestLog,
    pub released: Vec<u16>,
}

#[cfg(test)]
impl TestEnv {
    /// 64 KiB of guest memory at 0x10000, no channels configured.
    pub fn new() -> Self {
        use vm_memory::{GuestAddress, GuestMemoryMmap};
        TestEnv {
            mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0x1_0000), 0x1_0000)]).unwrap(),
            epoll: Epoll::new(nix::sys::epoll::EpollCreateFlags::EPOLL_CLOEXEC).unwrap(),
            channels: ChannelTable::new(),
            scratch: Scratch::default(),
            limiter: GuestLog::new(1),
            released: Vec::new(),
        }
    }

    /// An operation that may hold its request under `hold`.
    pub fn env(&mut self, hold: Option<u16>) -> Env<'_> {
        Env {
            mem: &self.mem,
            epoll: &self.epoll,
            channels: &self.channels,
            scratch: &mut self.scratch,
            limiter: &mut self.limiter,
            hold,
            holds: 0,
            released: &mut self.released,
            images_left: 0,
        }
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
            .epoll
            .wait(&mut evs, nix::sys::epoll::EpollTimeout::ZERO)
            .unwrap();
        evs[..n].iter().map(|e| (e.data(), e.events())).collect()
    }
}
