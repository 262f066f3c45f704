//! What a context borrows from the device for one operation ([`Env`]), what it may see of the
//! device's resources ([`ResourceView`]), and the reusable buffers of the per-message path
//! ([`Scratch`]).
//!
//! This module only describes the interface between the device and its contexts; it holds no
//! state of either.

use std::io as stdio;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};

use nix::sys::epoll::Epoll;

use super::backlog::{Backlog, Flush};
use super::io::CmsgBuf;
use crate::config::ChannelTable;
use crate::ratelimit::GuestLog;
use crate::virtio_gpu::sg::{GuestMem, SgList};

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
