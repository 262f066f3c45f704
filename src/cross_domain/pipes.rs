//! Pipes between the guest and host services (docs/protocol.md §3.7, §5.6):
//!
//! - **Write pipes** ([`WritePipe`]): a pipe write end a host service sent; the guest WRITEs
//!   into it (through the [`Peer`] path) and closes it with `hang_up`.
//! - **Read pipes** ([`ReadPipe`]): created for a guest SEND that names a READ_PIPE id; the
//!   write end goes to the host service with the SEND, the read end is watched here and its
//!   data streamed back to the guest as READ messages, ending with one `hang_up`.
//!
//! This module owns the pipe fds and the READ and WRITE messages. It never allocates ids (the
//! item table does) and never chooses which source speaks next (the delivery rotation does).

use std::io as stdio;
use std::os::fd::{AsFd, OwnedFd};

use log::debug;
use nix::sys::epoll::EpollEvent;

use super::backlog::Flush;
use super::backlog::HoldToken;
use super::delivery::{token, Turn, SOURCE_EVENTS};
use super::env::{Env, Submission};
use super::error::CtxError;
use super::hostpoll::HostPoll;
use super::io as cdio;
use super::peer::{Peer, PeerError};
use super::protocol::{CmdHeader, ReadWrite, CHANNEL_RING_MIN_SIZE, CMD_READ};
use crate::guest_mem::SgList;
use crate::guest_warn;

/// A pipe write end received from the host.
pub(super) struct WritePipe {
    peer: Peer,
    /// The guest hung up while bytes still waited: close once they are out.
    close_when_flushed: bool,
}

impl WritePipe {
    /// A received write end, made non-blocking, for item `id` of context `ctx_id`.
    pub fn new(ctx_id: u32, id: u32, fd: OwnedFd) -> Self {
        WritePipe {
            peer: Peer::pipe(fd, token(ctx_id, id)),
            close_when_flushed: false,
        }
    }

    /// Make a received write end usable (non-blocking) before it gets an id.
    pub fn prepare(fd: &OwnedFd) -> stdio::Result<()> {
        cdio::set_nonblocking(fd.as_fd())
    }

    /// WRITE: pass `[off, off + len)` of the request `stream` on. `Ok(true)` when the pipe is
    /// to be closed now (the guest hung up and nothing waits); on [`PeerError::Broken`] the
    /// caller closes it.
    pub fn write(
        &mut self,
        env: &mut Env<'_>,
        sub: &mut Submission,
        stream: &SgList,
        off: usize,
        len: usize,
        hang_up: bool,
    ) -> Result<bool, PeerError> {
        self.peer
            .send(env, sub, stream, off, len, &mut Vec::new())?;
        if !hang_up {
            return Ok(false);
        }
        if self.peer.has_backlog() {
            self.close_when_flushed = true;
            return Ok(false);
        }
        Ok(true)
    }

    /// The pipe turned writable (or failed). `true` when it is to be closed now: flushed after
    /// the guest hung up, or broken.
    pub fn on_writable(&mut self, env: &mut Env<'_>, ctx_id: u32, id: u32) -> bool {
        match self.peer.on_writable(env) {
            Ok(Flush::Pending) => false,
            Ok(Flush::Done) => self.close_when_flushed,
            Err(e) => {
                debug!("ctx {ctx_id}: write pipe {id:#x} closed: {e}");
                true
            }
        }
    }

    /// Drop what waits and stop watching the pipe (it closes when dropped).
    pub fn close(&mut self, epoll: &HostPoll, released: &mut Vec<HoldToken>) {
        self.peer.close(epoll, released);
    }
}

/// The read end of a pipe whose write end went to a host service.
pub(super) struct ReadPipe {
    fd: OwnedFd,
    /// Epoll reported it readable and it has not returned `EAGAIN` since.
    pub readable: bool,
}

impl ReadPipe {
    /// A new pipe for a READ_PIPE identifier: (read end, non-blocking; write end, to send).
    pub fn create() -> Result<(OwnedFd, OwnedFd), CtxError> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| CtxError::HostIo(e.into()))?;
        cdio::set_nonblocking(r.as_fd()).map_err(CtxError::HostIo)?;
        Ok((r, w))
    }

    /// [`ReadPipe::create`] for a context whose READs fill up to `ring_limit` bytes of its
    /// ring: past the 4096 bytes of every peer (a large ring), the pipe's buffer is asked to
    /// hold as much, so that one READ can carry it, where a default pipe holds 64 KiB. Best
    /// effort: the host's limits (`pipe-max-size`, the user's pipe quota) may refuse it, and
    /// the pipe then works as any other.
    pub fn create_for_ring(ring_limit: usize) -> Result<(OwnedFd, OwnedFd), CtxError> {
        let (r, w) = Self::create()?;
        if ring_limit > CHANNEL_RING_MIN_SIZE {
            if let Err(e) = cdio::set_pipe_size(r.as_fd(), ring_limit) {
                debug!("read pipe buffer of {ring_limit} bytes refused: {e}");
            }
        }
        Ok((r, w))
    }

    /// Start watching the read end `fd` of item `id` of context `ctx_id`.
    pub fn watch(epoll: &HostPoll, ctx_id: u32, id: u32, fd: OwnedFd) -> Result<Self, CtxError> {
        epoll
            .add(&fd, EpollEvent::new(SOURCE_EVENTS, token(ctx_id, id)))
            .map_err(|e| CtxError::HostIo(e.into()))?;
        Ok(ReadPipe { fd, readable: true })
    }

    /// Its turn in the rotation: read what the pipe holds into the channel `ring` as one READ
    /// for item `id`. A pipe that is empty (`EAGAIN`) stays idle until epoll says otherwise; at
    /// end of file (or on an error) it writes the READ with `hang_up` and is done.
    #[cfg(test)]
    pub fn deliver(&mut self, env: &mut Env<'_>, ring: &SgList, ctx_id: u32, id: u32) -> Turn {
        self.deliver_up_to(env, ring, CHANNEL_RING_MIN_SIZE, ctx_id, id)
    }

    /// [`ReadPipe::deliver`] into at most `limit` bytes of the ring (a context with a large
    /// ring, docs/protocol.md "Large channel rings"; never less than 4096).
    pub fn deliver_up_to(
        &mut self,
        env: &mut Env<'_>,
        ring: &SgList,
        limit: usize,
        ctx_id: u32,
        id: u32,
    ) -> Turn {
        if !self.readable {
            return Turn::Idle;
        }
        let hdr_len = std::mem::size_of::<ReadWrite>();
        // A READ fills at most a minimum-size ring, whatever the ring's real size, unless the
        // context has a large ring.
        let cap = ring.len().min(limit.max(CHANNEL_RING_MIN_SIZE)) - hdr_len;
        let scratch = &mut *env.scratch;
        scratch.iov.clear();
        if let Err(e) = ring.iovecs(env.mem, hdr_len, cap, &mut scratch.iov) {
            guest_warn!(env.limiter, "ctx {ctx_id}: channel ring unusable: {e}");
            self.readable = false;
            return Turn::Idle;
        }
        let res = cdio::readv(self.fd.as_fd(), &scratch.iov);
        scratch.iov.clear();
        let (len, hang_up) = match res {
            Ok(None) => {
                self.readable = false;
                return Turn::Idle;
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
                // Past 64 KiB (large rings only) `cmd_size` saturates.
                cmd_size: u16::try_from(hdr_len + len).unwrap_or(u16::MAX),
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
            Turn::ServedLast
        } else {
            Turn::Served
        }
    }

    /// Stop watching the pipe (it closes when dropped).
    pub fn close(&mut self, epoll: &HostPoll) {
        let _ = epoll.delete(&self.fd);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::cross_domain::env::{submission, TestEnv};

    const RING: u64 = 0x1_8000;

    fn read_msg(t: &TestEnv) -> (ReadWrite, Vec<u8>) {
        let msg: ReadWrite = t.mem.read_obj(GuestAddress(RING)).unwrap();
        let mut data = vec![0u8; msg.opaque_data_size as usize];
        t.mem
            .read_slice(&mut data, GuestAddress(RING + 24))
            .unwrap();
        (msg, data)
    }

    #[test]
    fn a_read_pipe_streams_reads_then_one_hang_up() {
        let mut t = TestEnv::new();
        // A ring larger than the minimum: a READ still fills at most 4096 bytes.
        let ring = t.sg(RING, &[0u8; 8192]);
        let (r, w) = ReadPipe::create().unwrap();
        let mut pipe = ReadPipe::watch(t.shared.epoll(), 3, 0x8000_0001, r).unwrap();
        let mut w = std::fs::File::from(w);
        assert_eq!(
            pipe.deliver(&mut t.env(), &ring, 3, 0x8000_0001),
            Turn::Idle
        );
        assert!(!pipe.readable, "EAGAIN: wait for epoll");
        w.write_all(&[7u8; 5000]).unwrap();
        pipe.readable = true;
        assert_eq!(
            pipe.deliver(&mut t.env(), &ring, 3, 0x8000_0001),
            Turn::Served
        );
        let (msg, data) = read_msg(&t);
        assert_eq!(
            (msg.hdr.cmd, msg.identifier, msg.hang_up),
            (CMD_READ, 0x8000_0001, 0)
        );
        assert_eq!((data.len(), usize::from(msg.hdr.cmd_size)), (4072, 4096));
        assert_eq!(
            pipe.deliver(&mut t.env(), &ring, 3, 0x8000_0001),
            Turn::Served
        );
        assert_eq!(read_msg(&t).1.len(), 5000 - 4072);
        drop(w);
        assert_eq!(
            pipe.deliver(&mut t.env(), &ring, 3, 0x8000_0001),
            Turn::ServedLast
        );
        let (msg, data) = read_msg(&t);
        assert_eq!((msg.hang_up, data.len()), (1, 0));
    }

    #[test]
    fn a_write_pipe_closes_on_hang_up_once_flushed() {
        let mut t = TestEnv::new();
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        WritePipe::prepare(&w).unwrap();
        let mut pipe = WritePipe::new(3, 2, w);
        let stream = t.sg(0x1_0000, b"abc");
        let close = pipe
            .write(&mut t.env(), &mut submission(None), &stream, 0, 3, false)
            .unwrap();
        assert!(!close);
        assert!(pipe
            .write(&mut t.env(), &mut submission(None), &stream, 1, 2, true)
            .unwrap());
        let mut got = Vec::new();
        drop(pipe);
        std::fs::File::from(r).read_to_end(&mut got).unwrap();
        assert_eq!(got, b"abcbc");
    }

    #[test]
    fn a_write_pipe_with_a_backlog_closes_only_after_the_flush() {
        let mut t = TestEnv::new();
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        WritePipe::prepare(&w).unwrap();
        let mut pipe = WritePipe::new(3, 2, w);
        let stream = t.sg(0x1_0000, &[9u8; 0x8000]);
        while !pipe.peer.has_backlog() {
            assert!(!pipe
                .write(
                    &mut t.env(),
                    &mut submission(Some(5)),
                    &stream,
                    0,
                    0x8000,
                    false
                )
                .unwrap());
        }
        // Hang up with bytes waiting: closed only once they are out.
        assert!(!pipe
            .write(&mut t.env(), &mut submission(Some(6)), &stream, 0, 1, true)
            .unwrap());
        let mut r = std::fs::File::from(r);
        let mut sink = vec![0u8; 1 << 20];
        loop {
            let _ = r.read(&mut sink).unwrap();
            if pipe.on_writable(&mut t.env(), 3, 2) {
                break;
            }
        }
        assert_eq!(t.released(), [5, 6]);
    }
}
