//! A host peer: one host fd the guest's bytes go to (the channel socket, or a write pipe the
//! host handed over), and the one path by which they get there:
//!
//! 1. flush what already waits (the peer may have drained since the last `EPOLLOUT`),
//! 2. write the new bytes directly if nothing waits,
//! 3. queue whatever the peer did not take, held in guest memory or copied (the policy is
//!    here: [`MAX_HELD_PER_PEER`], [`MAX_BACKLOG_BYTES`]; the queue is [`Backlog`]),
//! 4. watch the fd for `EPOLLOUT` while anything waits, and stop once it is flushed.
//!
//! On a stream socket, fd-less messages of one pass of the control queue after the first are
//! gathered (held, as a slow peer's are) and go out in one `sendmsg` at the end of the pass
//! ([`Peer::flush_batch`]), or before the next message that cannot join them: one system
//! call for a burst of SENDs instead of one each. A message with fds is never gathered with
//! others, and a socket that may keep message boundaries never gathers.
//!
//! This module owns the fd's output side and its epoll registration. It never reads from the
//! fd and never decides that the peer is gone: it reports [`PeerError::Broken`] and the
//! caller closes the channel or the pipe.

use std::io as stdio;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::epoll::{EpollEvent, EpollFlags};

use super::backlog::{Backlog, Flush, HoldToken, MAX_GATHER, MAX_GATHER_BYTES};
use super::env::{Env, Submission};
use super::error::CtxError;
use super::hostpoll::HostPoll;
use super::io as cdio;
use crate::guest_mem::SgList;

/// Most bytes copied into daemon memory for one slow host peer (channel socket or pipe).
pub const MAX_BACKLOG_BYTES: usize = 8 << 20;
/// Most guest requests held (left uncompleted, their bytes in guest memory) for one slow host
/// peer; beyond it, further messages are copied (up to [`MAX_BACKLOG_BYTES`]) and completed.
/// Keeps one stalled host service from occupying the whole control queue, which every context
/// of the VM shares.
pub const MAX_HELD_PER_PEER: usize = 64;

/// A socket's queue, which gathers fd-less messages into one `sendmsg`.
fn gathering() -> Backlog {
    let mut out = Backlog::default();
    out.set_gather(true);
    out
}

/// Why bytes did not reach a peer.
#[derive(Debug)]
pub(super) enum PeerError {
    /// The peer failed (closed, reset, broken pipe). Its queue has been discarded; the caller
    /// logs and decides what becomes of the peer.
    Broken(stdio::Error),
    /// The message was refused (guest memory unreadable, backlog full, epoll failure); the
    /// peer itself is fine.
    Refused(CtxError),
}

impl From<CtxError> for PeerError {
    fn from(e: CtxError) -> Self {
        PeerError::Refused(e)
    }
}

/// The output side of one host fd.
pub(super) struct Peer {
    fd: OwnedFd,
    /// `sendmsg` with fds (a socket) or `writev` (a pipe).
    socket: bool,
    token: u64,
    /// The events the fd is registered for while nothing waits; `None` when it is then not
    /// registered at all (a write pipe; the channel once it hung up).
    idle: Option<EpollFlags>,
    out: Backlog,
    /// Registered for `EPOLLOUT`.
    armed: bool,
    /// A stream socket: fd-less messages may be gathered into one `sendmsg`.
    coalesce: bool,
    /// A message went out directly in this pass of the control queue: the next fd-less ones
    /// are gathered until the end of the pass.
    primed: bool,
    /// `out` holds only messages gathered in this pass, not yet tried (and the fd is not
    /// armed for them); their bytes so far.
    batch: Option<usize>,
}

impl Peer {
    /// A socket peer, already registered with epoll for `idle` under `token`.
    pub fn socket(fd: OwnedFd, token: u64, idle: EpollFlags) -> Self {
        Peer {
            fd,
            socket: true,
            token,
            idle: Some(idle),
            out: gathering(),
            armed: false,
            coalesce: true,
            primed: false,
            batch: None,
        }
    }

    /// Never gather messages on this socket (one the host made, which may keep message
    /// boundaries: `SOCK_SEQPACKET`); asking its type costs a `getsockopt` the sandbox does
    /// not allow.
    pub fn keep_boundaries(&mut self) {
        self.coalesce = false;
        self.out.set_gather(false);
    }

    /// A pipe peer, not registered with epoll until something waits.
    pub fn pipe(fd: OwnedFd, token: u64) -> Self {
        Peer {
            fd,
            socket: false,
            token,
            idle: None,
            out: Backlog::default(),
            armed: false,
            coalesce: false,
            primed: false,
            batch: None,
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// True while bytes wait for the peer.
    pub fn has_backlog(&self) -> bool {
        !self.out.is_empty()
    }

    /// True while the fd is registered with epoll.
    fn registered(&self) -> bool {
        self.idle.is_some() || self.armed
    }

    /// Send `[off, off + len)` of the request `stream` of submission `sub`, with `fds`
    /// attached to its first byte (sockets only; `fds` is emptied either way).
    ///
    /// Gathering (stream sockets, when `sub.coalesce`): once a message went out directly in
    /// this pass of the control queue, the next fd-less ones of requests that may be held are
    /// queued, held, and sent together by [`Peer::flush_batch`] at the end of the pass (or
    /// before the next message that cannot join them). The first one of a pass is always
    /// written at once, so a peer that is gone is reported for it as without gathering.
    pub fn send(
        &mut self,
        env: &mut Env<'_>,
        sub: &mut Submission,
        stream: &SgList,
        off: usize,
        len: usize,
        fds: &mut Vec<OwnedFd>,
    ) -> Result<(), PeerError> {
        let joins = self.coalesce
            && sub.coalesce
            && fds.is_empty()
            && len > 0
            && self.out.held() < MAX_HELD_PER_PEER;
        if let (true, Some(token)) = (joins, sub.hold) {
            let open = match self.batch {
                Some(bytes) => self.out.held() < MAX_GATHER && bytes + len <= MAX_GATHER_BYTES,
                None => self.primed && self.out.is_empty(),
            };
            if open {
                self.out
                    .push_held(stream.clone(), off, len, Vec::new(), token);
                sub.held_chunks += 1;
                sub.coalesced = true;
                self.batch = Some(self.batch.unwrap_or(0) + len);
                return Ok(());
            }
        }
        // Anything else goes the one ordinary way, behind a batch (tried now) if one waits.
        self.batch = None;
        if !self.out.is_empty() {
            if let Err(e) = env.flush(&mut self.out, self.fd.as_fd(), self.socket) {
                self.out.discard(env.released);
                return Err(PeerError::Broken(e));
            }
        }
        if !self.out.is_empty() {
            // Behind what waits; nothing may overtake it.
            if len > 0 {
                self.queue(env, sub, stream, off, len, std::mem::take(fds), true)?;
            }
        } else if len > 0 {
            let sent = self.write_direct(env, stream, off, len, fds)?;
            if sent == len && self.coalesce && sub.coalesce {
                // Later fd-less messages of this pass may be gathered; the device ends the
                // pass with `flush_batch`, which unprimes.
                self.primed = true;
                sub.coalesced = true;
            }
            if sent < len {
                // The fds went out with the first byte, if any byte went out.
                let fds = if sent == 0 {
                    std::mem::take(fds)
                } else {
                    Vec::new()
                };
                // Part of the message is out: the rest must follow, so no byte limit.
                self.queue(env, sub, stream, off + sent, len - sent, fds, sent == 0)?;
            }
        }
        fds.clear();
        if !self.out.is_empty() && !self.armed {
            self.arm(env.epoll)?;
        }
        Ok(())
    }

    /// The end of a pass of the control queue: send the messages gathered in it (what the
    /// peer does not take waits, armed for `EPOLLOUT`, as any slow peer's output does).
    /// On `Err` the batch was discarded (its held requests released) as a failed flush's is.
    pub fn flush_batch(&mut self, env: &mut Env<'_>) -> Result<(), PeerError> {
        self.primed = false;
        if self.batch.take().is_none() || self.out.is_empty() {
            return Ok(());
        }
        match env.flush(&mut self.out, self.fd.as_fd(), self.socket) {
            Ok(Flush::Done) => Ok(()),
            Ok(Flush::Pending) => {
                if self.armed {
                    return Ok(());
                }
                if let Err(e) = self.arm(env.epoll) {
                    // Unwatched, the rest would never go: drop it rather than hold the
                    // requests forever.
                    self.out.discard(env.released);
                    return Err(PeerError::Refused(e));
                }
                Ok(())
            }
            Err(e) => {
                self.out.discard(env.released);
                self.disarm(env.epoll);
                Err(PeerError::Broken(e))
            }
        }
    }

    /// One `sendmsg`/`writev` of the bytes straight from guest memory; the number taken.
    fn write_direct(
        &mut self,
        env: &mut Env<'_>,
        stream: &SgList,
        off: usize,
        len: usize,
        fds: &[OwnedFd],
    ) -> Result<usize, PeerError> {
        let scratch = &mut *env.scratch;
        scratch.iov.clear();
        stream
            .iovecs(env.mem, off, len, &mut scratch.iov)
            .map_err(CtxError::from)?;
        let res = if self.socket {
            scratch.raw.clear();
            scratch.raw.extend(fds.iter().map(|f| f.as_raw_fd()));
            match cdio::send_with_fds(
                self.fd.as_fd(),
                &scratch.iov,
                &scratch.raw,
                &mut scratch.cmsg,
            ) {
                Ok(n) => Ok(n),
                Err(e) if e.kind() == stdio::ErrorKind::WouldBlock => Ok(0),
                Err(e) => Err(e),
            }
        } else {
            cdio::writev(self.fd.as_fd(), &scratch.iov).map(|n| n.unwrap_or(0))
        };
        scratch.iov.clear();
        res.map_err(PeerError::Broken)
    }

    /// Queue `[off, off + len)` of the request `stream` behind a slow peer: held in guest
    /// memory while the submission may be held and the peer's budget allows, copied otherwise
    /// (refused past [`MAX_BACKLOG_BYTES`] when `limit` is set; the unsent rest of a partly
    /// sent message is never refused, as its start is already out).
    #[allow(clippy::too_many_arguments)]
    fn queue(
        &mut self,
        env: &mut Env<'_>,
        sub: &mut Submission,
        stream: &SgList,
        off: usize,
        len: usize,
        fds: Vec<OwnedFd>,
        limit: bool,
    ) -> Result<(), CtxError> {
        let out = &mut self.out;
        if let Some(token) = sub.hold {
            if out.held() < MAX_HELD_PER_PEER {
                out.push_held(stream.clone(), off, len, fds, token);
                sub.held_chunks += 1;
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

    /// The fd reported `EPOLLOUT` (or an error): send what waits. Once everything is out the
    /// fd is no longer watched for writability; on an error the queue is discarded.
    pub fn on_writable(&mut self, env: &mut Env<'_>) -> stdio::Result<Flush> {
        if !self.armed {
            return Ok(Flush::Done);
        }
        // A batch of this pass, if any, goes now.
        self.batch = None;
        match env.flush(&mut self.out, self.fd.as_fd(), self.socket) {
            Ok(Flush::Pending) => Ok(Flush::Pending),
            Ok(Flush::Done) => {
                self.disarm(env.epoll);
                Ok(Flush::Done)
            }
            Err(e) => {
                self.out.discard(env.released);
                self.disarm(env.epoll);
                Err(e)
            }
        }
    }

    fn arm(&mut self, epoll: &HostPoll) -> Result<(), CtxError> {
        let r = match self.idle {
            Some(idle) => {
                let mut ev = EpollEvent::new(idle | EpollFlags::EPOLLOUT, self.token);
                epoll.modify(&self.fd, &mut ev)
            }
            None => epoll.add(
                &self.fd,
                EpollEvent::new(EpollFlags::EPOLLOUT | EpollFlags::EPOLLET, self.token),
            ),
        };
        r.map_err(|e| CtxError::HostIo(e.into()))?;
        self.armed = true;
        Ok(())
    }

    fn disarm(&mut self, epoll: &HostPoll) {
        if !self.armed {
            return;
        }
        // Best effort: a failure leaves a spurious EPOLLOUT, which finds nothing to send.
        match self.idle {
            Some(idle) => {
                let _ = epoll.modify(&self.fd, &mut EpollEvent::new(idle, self.token));
            }
            None => {
                let _ = epoll.delete(&self.fd);
            }
        }
        self.armed = false;
    }

    /// The fd will not be read any more (the channel hung up): keep it registered only while
    /// output waits.
    pub fn stop_reading(&mut self, epoll: &HostPoll) {
        if self.idle.take().is_some() && !self.armed {
            let _ = epoll.delete(&self.fd);
        }
    }

    /// Drop what waits (its held requests are released) and stop watching the fd. The fd
    /// itself closes when the peer is dropped.
    pub fn close(&mut self, epoll: &HostPoll, released: &mut Vec<HoldToken>) {
        self.out.discard(released);
        self.batch = None;
        self.primed = false;
        if self.registered() {
            let _ = epoll.delete(&self.fd);
        }
        self.idle = None;
        self.armed = false;
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::cross_domain::env::{submission, TestEnv};

    /// A socket peer whose other end never reads until the test says so.
    fn socket_peer(t: &TestEnv, token: u64) -> (Peer, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let fd = OwnedFd::from(a);
        t.epoll()
            .add(&fd, EpollEvent::new(EpollFlags::EPOLLIN, token))
            .unwrap();
        (Peer::socket(fd, token, EpollFlags::EPOLLIN), b)
    }

    /// Send `msg` until the peer stops taking bytes directly.
    fn fill(peer: &mut Peer, t: &mut TestEnv, stream: &SgList) -> usize {
        let mut sent = 0;
        while !peer.has_backlog() {
            peer.send(
                &mut t.env(),
                &mut submission(None),
                stream,
                0,
                stream.len(),
                &mut Vec::new(),
            )
            .unwrap();
            sent += 1;
        }
        sent
    }

    #[test]
    fn a_reading_peer_gets_the_bytes_directly_and_is_not_watched() {
        let mut t = TestEnv::new();
        let (mut peer, mut other) = socket_peer(&t, 7);
        let stream = t.sg(0x1_0000, b"hello");
        let mut sub = submission(Some(1));
        peer.send(&mut t.env(), &mut sub, &stream, 1, 4, &mut Vec::new())
            .unwrap();
        assert_eq!(sub.held_chunks, 0);
        assert!(!peer.has_backlog() && !peer.armed);
        let mut got = [0u8; 4];
        other.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ello");
    }

    #[test]
    fn a_full_peer_holds_the_request_arms_epollout_and_releases_it_once_drained() {
        let mut t = TestEnv::new();
        let (mut peer, mut other) = socket_peer(&t, 7);
        let stream = t.sg(0x1_0000, &[5u8; 0x8000]);
        fill(&mut peer, &mut t, &stream);
        assert!(peer.armed, "watching for EPOLLOUT");
        // The next message, from a request that may be held, waits in guest memory.
        let mut sub = submission(Some(42));
        peer.send(&mut t.env(), &mut sub, &stream, 0, 100, &mut Vec::new())
            .unwrap();
        assert_eq!(sub.held_chunks, 1, "held, not copied");
        assert_eq!(peer.out.held(), 1);
        // Drain the other end; EPOLLOUT fires and the flush sends everything.
        let reader = std::thread::spawn(move || {
            let mut sink = vec![0u8; 1 << 16];
            let mut total = 0;
            while let Ok(n) = other.read(&mut sink) {
                if n == 0 {
                    break;
                }
                total += n;
            }
            total
        });
        let mut rounds = 0;
        while peer.has_backlog() {
            rounds += 1;
            assert!(rounds < 10_000, "never drained");
            std::thread::sleep(std::time::Duration::from_millis(1));
            if t.ready()
                .iter()
                .any(|(_, e)| e.contains(EpollFlags::EPOLLOUT))
            {
                let _ = peer.on_writable(&mut t.env()).unwrap();
            }
        }
        assert!(!peer.armed, "back to the idle events");
        assert_eq!(t.released(), [42], "the held request is released once");
        drop(peer);
        assert!(reader.join().unwrap() > 100);
    }

    #[test]
    fn without_a_hold_bytes_are_copied_up_to_the_limit() {
        let mut t = TestEnv::new();
        let (mut peer, _other) = socket_peer(&t, 7);
        let stream = t.sg(0x1_0000, &[1u8; 0x8000]);
        fill(&mut peer, &mut t, &stream);
        let owned = peer.out.owned_bytes();
        let mut queued = 0;
        loop {
            match peer.send(
                &mut t.env(),
                &mut submission(None),
                &stream,
                0,
                0x8000,
                &mut Vec::new(),
            ) {
                Ok(()) => queued += 1,
                Err(PeerError::Refused(CtxError::BacklogFull(n))) => {
                    assert_eq!(n, owned + queued * 0x8000);
                    assert!(n + 0x8000 > MAX_BACKLOG_BYTES);
                    break;
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        assert!(t.released.is_empty() && peer.out.held() == 0);
    }

    #[test]
    fn beyond_the_held_budget_requests_are_copied() {
        let mut t = TestEnv::new();
        let (mut peer, _other) = socket_peer(&t, 7);
        let stream = t.sg(0x1_0000, &[1u8; 0x100]);
        fill(&mut peer, &mut t, &stream);
        for head in 0..MAX_HELD_PER_PEER as u16 + 3 {
            let mut sub = submission(Some(head.into()));
            peer.send(&mut t.env(), &mut sub, &stream, 0, 0x100, &mut Vec::new())
                .unwrap();
        }
        assert_eq!(peer.out.held(), MAX_HELD_PER_PEER);
        // Closing releases every held request exactly once.
        peer.close(t.shared.epoll(), &mut t.released);
        assert_eq!(t.released.len(), MAX_HELD_PER_PEER);
        assert!(!peer.has_backlog() && !peer.registered());
    }

    #[test]
    fn a_broken_pipe_is_reported_and_its_backlog_released() {
        let mut t = TestEnv::new();
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        cdio::set_nonblocking(w.as_fd()).unwrap();
        let mut peer = Peer::pipe(w, 9);
        let stream = t.sg(0x1_0000, &[3u8; 0x8000]);
        while !peer.has_backlog() {
            peer.send(
                &mut t.env(),
                &mut submission(Some(1)),
                &stream,
                0,
                0x8000,
                &mut Vec::new(),
            )
            .unwrap();
        }
        assert!(
            peer.armed && t.ready().is_empty(),
            "pipe full: no EPOLLOUT yet"
        );
        drop(r);
        // The reader is gone: epoll reports the pipe and the flush fails.
        assert!(t.ready().iter().any(|&(tok, _)| tok == 9));
        assert!(peer.on_writable(&mut t.env()).is_err());
        assert_eq!(t.released(), [1]);
        assert!(!peer.has_backlog() && !peer.registered());
        // A later send finds the pipe broken at once.
        let r = peer.send(
            &mut t.env(),
            &mut submission(None),
            &stream,
            0,
            1,
            &mut Vec::new(),
        );
        assert!(matches!(r, Err(PeerError::Broken(_))), "{r:?}");
    }

    /// `sub` of a request that may be held, in a pass that gathers.
    fn gathering_sub(head: u64) -> Submission {
        let mut sub = submission(Some(head));
        sub.coalesce = true;
        sub
    }

    #[test]
    fn after_a_direct_send_fd_less_sends_of_the_pass_go_out_together_at_its_end() {
        let mut t = TestEnv::new();
        let (mut peer, mut other) = socket_peer(&t, 7);
        other.set_nonblocking(true).unwrap();
        let stream = t.sg(0x1_0000, b"abcdefghij");
        let mut first = gathering_sub(1);
        peer.send(&mut t.env(), &mut first, &stream, 0, 2, &mut Vec::new())
            .unwrap();
        assert!(first.coalesced && first.held_chunks == 0, "written at once");
        let mut subs = [gathering_sub(2), gathering_sub(3)];
        for (k, sub) in subs.iter_mut().enumerate() {
            peer.send(&mut t.env(), sub, &stream, 2 + 4 * k, 4, &mut Vec::new())
                .unwrap();
            assert_eq!(sub.held_chunks, 1, "held until the end of the pass");
        }
        let mut got = [0u8; 16];
        assert_eq!(other.read(&mut got).unwrap(), 2, "only the first is out");
        assert!(!peer.armed, "a batch is not a slow peer");
        peer.flush_batch(&mut t.env()).unwrap();
        assert_eq!(other.read(&mut got).unwrap(), 8);
        assert_eq!(&got[..8], b"cdefghij");
        assert_eq!(t.released(), [2, 3]);
        assert!(!peer.has_backlog() && !peer.primed);
        // The next pass starts with a direct write again.
        let mut next = gathering_sub(4);
        peer.send(&mut t.env(), &mut next, &stream, 0, 1, &mut Vec::new())
            .unwrap();
        assert_eq!(next.held_chunks, 0);
        assert_eq!(other.read(&mut got).unwrap(), 1);
    }

    #[test]
    fn a_socket_that_keeps_boundaries_never_gathers() {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let mut t = TestEnv::new();
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        t.epoll()
            .add(&a, EpollEvent::new(EpollFlags::EPOLLIN, 7))
            .unwrap();
        let mut peer = Peer::socket(a, 7, EpollFlags::EPOLLIN);
        peer.keep_boundaries();
        let stream = t.sg(0x1_0000, b"abcdefghij");
        for k in 0..3 {
            let mut sub = gathering_sub(k);
            peer.send(
                &mut t.env(),
                &mut sub,
                &stream,
                3 * k as usize,
                3,
                &mut Vec::new(),
            )
            .unwrap();
            assert!(
                sub.held_chunks == 0 && !sub.coalesced,
                "message {k} sent alone"
            );
        }
        peer.flush_batch(&mut t.env()).unwrap();
        for want in [&b"abc"[..], b"def", b"ghi"] {
            let mut got = [0u8; 16];
            let n = nix::unistd::read(&b, &mut got).unwrap();
            assert_eq!(&got[..n], want, "one message per SEND");
        }
    }
}
