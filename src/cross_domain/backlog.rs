//! Output waiting for a slow host peer (a channel socket or a write pipe).
//!
//! When a `sendmsg`/`writev` towards a host peer comes back short or with `EAGAIN`, the rest of
//! the guest's SEND or WRITE waits here, in order, until the peer's fd is writable again. This
//! module owns that queue and decides nothing about policy; [`super::Context`] chooses, per
//! message, one of two ways to keep the bytes:
//!
//! - **Held in guest memory** ([`Backlog::push_held`]): the chunk refers to the guest's request
//!   buffers and carries the request's [`HoldToken`]; the device does not complete that request
//!   until the chunk went out (or was dropped). No copy, no allocation of the payload, and the
//!   guest is throttled the way a full virtqueue throttles any driver.
//! - **Copied** ([`Backlog::push_owned`]): the request completes at once. Used where holding is
//!   not possible (fenced submissions, whose completion order the fence timeline fixes) and
//!   beyond the per-peer budget of held requests; bounded by the caller (`MAX_BACKLOG_BYTES`).
//!
//! On a stream socket a flush sends up to [`MAX_GATHER`] consecutive fd-less chunks in one
//! `sendmsg`; a chunk with fds always goes alone.
//!
//! Every chunk that holds a request hands its token back in the `released` list when it is
//! sent completely or discarded; the virtio-gpu layer completes the request once all chunks
//! that hold it are released. The token means nothing here: it only travels.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use super::io::{self as cdio, CmsgBuf, MAX_FDS};
use crate::guest_mem::{GuestMem, SgList};

/// "This request may complete": an opaque token the device lends with a request it may leave
/// uncompleted while bytes of it wait in guest memory, and gets back once no queued chunk
/// holds that request any more. Its value means nothing to the cross-domain layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HoldToken(u64);

impl HoldToken {
    /// A token with the value the device chooses (the device maps it back to its request).
    pub const fn new(value: u64) -> Self {
        HoldToken(value)
    }

    /// The device's value.
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// Where a queued chunk's bytes are.
enum Bytes {
    /// A copy; the request it came from has been completed.
    Owned(Vec<u8>),
    /// Still in the guest request `sg`, starting at byte `start` of it.
    Guest { sg: SgList, start: usize },
}

/// One queued message (or the unsent rest of one).
struct Chunk {
    bytes: Bytes,
    len: usize,
    sent: usize,
    /// Travel with the chunk's first byte; cleared once that byte is out.
    fds: Vec<OwnedFd>,
    /// The guest request whose buffers hold the bytes, which this chunk holds uncompleted.
    holds: Option<HoldToken>,
}

/// Most chunks one gathered `sendmsg` carries.
pub const MAX_GATHER: usize = 64;
/// A gathered `sendmsg` takes no further chunk once it carries this many bytes.
pub const MAX_GATHER_BYTES: usize = 1 << 20;
/// A gathered `sendmsg` takes no further chunk once it has this many iovecs (the kernel's
/// `IOV_MAX` is 1024; one chunk may add several).
const MAX_GATHER_IOVECS: usize = 512;

/// Outcome of flushing a backlog.
#[derive(Debug, PartialEq, Eq)]
pub enum Flush {
    /// Everything went out.
    Done,
    /// The peer is full again; wait for writability.
    Pending,
}

/// The queue towards one host peer.
#[derive(Default)]
pub struct Backlog {
    chunks: VecDeque<Chunk>,
    /// Bytes of `Owned` chunks not yet sent: the daemon's own memory at stake.
    owned_bytes: usize,
    /// Chunks that hold a guest request.
    held: usize,
    /// Several fd-less chunks may go out in one call (see [`Backlog::set_gather`]).
    gather: bool,
}

impl Backlog {
    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Unsent bytes copied into daemon memory (held chunks do not count: they are guest
    /// memory, and the queue size bounds them).
    pub fn owned_bytes(&self) -> usize {
        self.owned_bytes
    }

    /// Number of queued chunks that hold a guest request.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Queue a copy of `data`; `fds` go out with its first byte.
    pub fn push_owned(&mut self, data: Vec<u8>, fds: Vec<OwnedFd>) {
        let len = data.len();
        self.owned_bytes += len;
        self.chunks.push_back(Chunk {
            bytes: Bytes::Owned(data),
            len,
            sent: 0,
            fds,
            holds: None,
        });
    }

    /// Queue bytes `[start, start + len)` of the guest request `sg`, held uncompleted under
    /// `token` until this chunk is released.
    pub fn push_held(
        &mut self,
        sg: SgList,
        start: usize,
        len: usize,
        fds: Vec<OwnedFd>,
        token: HoldToken,
    ) {
        self.held += 1;
        self.chunks.push_back(Chunk {
            bytes: Bytes::Guest { sg, start },
            len,
            sent: 0,
            fds,
            holds: Some(token),
        });
    }

    fn pop_front(&mut self, released: &mut Vec<HoldToken>) {
        if let Some(chunk) = self.chunks.pop_front() {
            self.forget(&chunk, released);
        }
    }

    fn forget(&mut self, chunk: &Chunk, released: &mut Vec<HoldToken>) {
        if matches!(chunk.bytes, Bytes::Owned(_)) {
            self.owned_bytes -= chunk.len - chunk.sent;
        }
        if let Some(token) = chunk.holds {
            self.held -= 1;
            released.push(token);
        }
    }

    /// Drop everything queued (the peer is gone, or the item or context is closed). Held
    /// requests are released; their bytes are lost, as bytes a socket accepted are when the
    /// peer closes before reading them.
    pub fn discard(&mut self, released: &mut Vec<HoldToken>) {
        while !self.chunks.is_empty() {
            self.pop_front(released);
        }
    }

    /// Let [`Backlog::flush`] gather consecutive fd-less chunks into one `sendmsg` (a stream
    /// socket only: on a datagram or seqpacket socket every chunk is one message).
    pub fn set_gather(&mut self, gather: bool) {
        self.gather = gather;
    }

    /// Send as much as the peer takes, with `sendmsg` (sockets, fds attached) or `writev`
    /// (pipes). Guest chunks are read from `mem` afresh (the memory table may have changed
    /// since they were queued); a chunk whose guest memory is gone is dropped and logged.
    /// With [`Backlog::set_gather`], up to [`MAX_GATHER`] fd-less chunks (at most
    /// [`MAX_GATHER_BYTES`]) go out in one call; a chunk with fds always goes alone, so its fds
    /// arrive with its bytes only, as they would on their own.
    pub fn flush(
        &mut self,
        fd: BorrowedFd<'_>,
        socket: bool,
        mem: &GuestMem,
        iov: &mut Vec<libc::iovec>,
        cmsg: &mut CmsgBuf,
        released: &mut Vec<HoldToken>,
    ) -> io::Result<Flush> {
        while !self.chunks.is_empty() {
            iov.clear();
            // Chunks in this call, their bytes, and whether the first one's memory is gone.
            let mut count = 0;
            let mut bytes = 0;
            let mut gone = None;
            for chunk in &self.chunks {
                if count > 0
                    && (!self.gather
                        || !chunk.fds.is_empty()
                        || count >= MAX_GATHER
                        || bytes >= MAX_GATHER_BYTES
                        || iov.len() >= MAX_GATHER_IOVECS)
                {
                    break;
                }
                let rest = chunk.len - chunk.sent;
                let before = iov.len();
                match &chunk.bytes {
                    Bytes::Owned(data) => iov.push(libc::iovec {
                        iov_base: data[chunk.sent..].as_ptr() as *mut libc::c_void,
                        iov_len: rest,
                    }),
                    Bytes::Guest { sg, start } => {
                        if let Err(e) = sg.iovecs(mem, start + chunk.sent, rest, iov) {
                            iov.truncate(before);
                            if count == 0 {
                                gone = Some((rest, e));
                            }
                            // A later chunk is dropped when it comes first.
                            break;
                        }
                    }
                }
                count += 1;
                bytes += rest;
                if !chunk.fds.is_empty() {
                    break;
                }
            }
            if let Some((rest, e)) = gone {
                log::warn!("dropping {rest} queued bytes: guest memory changed: {e}");
                self.pop_front(released);
                continue;
            }
            let first_fds = self.chunks.front().map_or(&[][..], |c| &c.fds[..]);
            let res = if socket {
                let mut raw: [RawFd; MAX_FDS] = [-1; MAX_FDS];
                let n = first_fds.len().min(MAX_FDS);
                for (slot, f) in raw.iter_mut().zip(first_fds) {
                    *slot = f.as_raw_fd();
                }
                match cdio::send_with_fds(fd, iov, &raw[..n], cmsg) {
                    Ok(n) => Some(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                    Err(e) => {
                        iov.clear();
                        return Err(e);
                    }
                }
            } else {
                match cdio::writev(fd, iov) {
                    Ok(r) => r,
                    Err(e) => {
                        iov.clear();
                        return Err(e);
                    }
                }
            };
            iov.clear();
            let Some(n) = res else {
                return Ok(Flush::Pending);
            };
            // Hand the `n` bytes taken to the chunks in order; release the complete ones.
            let mut left = n;
            for i in 0..count {
                let Some(chunk) = self.chunks.front_mut() else {
                    break;
                };
                if i == 0 && (n > 0 || chunk.len == chunk.sent) {
                    // The fds went out with the first byte.
                    chunk.fds.clear();
                }
                let take = left.min(chunk.len - chunk.sent);
                chunk.sent += take;
                left -= take;
                if matches!(chunk.bytes, Bytes::Owned(_)) {
                    self.owned_bytes -= take;
                }
                if chunk.sent < chunk.len {
                    break;
                }
                // `forget` must not count the sent bytes again: they are already subtracted.
                if let Some(c) = self.chunks.pop_front() {
                    if let Some(token) = c.holds {
                        self.held -= 1;
                        released.push(token);
                    }
                }
            }
            if n == 0 && bytes > 0 {
                return Ok(Flush::Pending);
            }
        }
        Ok(Flush::Done)
    }
}

impl Drop for Backlog {
    fn drop(&mut self) {
        // Every path that drops queued chunks must release their requests first, or the guest
        // would wait for them forever.
        debug_assert_eq!(self.held, 0, "backlog dropped with held guest requests");
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    use vm_memory::{Bytes as _, GuestAddress, GuestMemoryMmap};

    use super::*;

    fn tok(v: u16) -> HoldToken {
        HoldToken::new(u64::from(v))
    }

    /// The values of released tokens, in order.
    fn vals(rel: &[HoldToken]) -> Vec<u16> {
        rel.iter().map(|t| t.get() as u16).collect()
    }

    fn mem() -> GuestMem {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0x1000), 0x4000)]).unwrap()
    }

    #[test]
    fn held_and_owned_chunks_go_out_in_order_and_release_their_requests() {
        let m = mem();
        m.write_slice(b"xxhello", GuestAddress(0x1000)).unwrap();
        m.write_slice(b" world", GuestAddress(0x2000)).unwrap();
        let mut sg = SgList::new();
        sg.push(GuestAddress(0x1000), 7);
        sg.push(GuestAddress(0x2000), 6);
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut q = Backlog::default();
        q.push_owned(b"<".to_vec(), Vec::new());
        q.push_held(sg, 2, 11, Vec::new(), tok(7));
        q.push_owned(b">".to_vec(), Vec::new());
        assert_eq!((q.held(), q.owned_bytes()), (1, 2));
        let (mut iov, mut cmsg, mut rel) = (Vec::new(), CmsgBuf::default(), Vec::new());
        let r = q.flush(a.as_fd(), true, &m, &mut iov, &mut cmsg, &mut rel);
        assert_eq!(r.unwrap(), Flush::Done);
        assert_eq!(vals(&rel), [7]);
        assert!(q.is_empty() && q.held() == 0 && q.owned_bytes() == 0);
        let mut got = [0u8; 13];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"<hello world>");
    }

    #[test]
    fn a_full_peer_keeps_the_rest_and_discard_releases_it() {
        let m = mem();
        let mut sg = SgList::new();
        sg.push(GuestAddress(0x1000), 0x4000);
        let (a, _b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut q = Backlog::default();
        let (mut iov, mut cmsg, mut rel) = (Vec::new(), CmsgBuf::default(), Vec::new());
        // Far more than a socket buffer: the peer never reads.
        for head in 0..200u16 {
            q.push_held(sg.clone(), 0, 0x4000, Vec::new(), tok(head));
        }
        let r = q.flush(a.as_fd(), true, &m, &mut iov, &mut cmsg, &mut rel);
        assert_eq!(r.unwrap(), Flush::Pending);
        assert!(
            !rel.is_empty() && rel.len() < 200,
            "some, not all, went out"
        );
        assert_eq!(
            vals(&rel),
            (0..rel.len() as u16).collect::<Vec<_>>(),
            "in order"
        );
        let done = rel.len();
        q.discard(&mut rel);
        assert_eq!(rel.len(), 200, "every held request released exactly once");
        assert_eq!(vals(&rel[done..]), (done as u16..200).collect::<Vec<_>>());
        assert_eq!(q.held(), 0);
    }

    #[test]
    fn a_chunk_whose_guest_memory_vanished_is_dropped_and_released() {
        let m = mem();
        let mut gone = SgList::new();
        gone.push(GuestAddress(0x9000), 16);
        let mut ok = SgList::new();
        ok.push(GuestAddress(0x1000), 2);
        m.write_slice(b"ok", GuestAddress(0x1000)).unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut q = Backlog::default();
        q.push_held(gone, 0, 16, Vec::new(), tok(1));
        q.push_held(ok, 0, 2, Vec::new(), tok(2));
        let (mut iov, mut cmsg, mut rel) = (Vec::new(), CmsgBuf::default(), Vec::new());
        let r = q.flush(a.as_fd(), true, &m, &mut iov, &mut cmsg, &mut rel);
        assert_eq!(r.unwrap(), Flush::Done);
        assert_eq!(vals(&rel), [1, 2]);
        let mut got = [0u8; 2];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ok");
    }

    #[test]
    fn pipes_use_write_and_errors_leave_the_rest_for_discard() {
        let m = mem();
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        drop(r);
        let mut q = Backlog::default();
        q.push_owned(vec![1; 10], Vec::new());
        let mut sg = SgList::new();
        sg.push(GuestAddress(0x1000), 4);
        q.push_held(sg, 0, 4, Vec::new(), tok(9));
        let (mut iov, mut cmsg, mut rel) = (Vec::new(), CmsgBuf::default(), Vec::new());
        // (The Rust runtime ignores SIGPIPE, so the write fails with EPIPE.)
        assert!(q
            .flush(w.as_fd(), false, &m, &mut iov, &mut cmsg, &mut rel)
            .is_err());
        assert!(rel.is_empty());
        q.discard(&mut rel);
        assert_eq!(vals(&rel), [9]);
        assert_eq!(q.owned_bytes(), 0);
    }

    #[test]
    fn gathered_chunks_cut_anywhere_keep_order_and_accounting() {
        let m = mem();
        let pattern: Vec<u8> = (0..0x4000u32).map(|i| (i % 253) as u8).collect();
        m.write_slice(&pattern, GuestAddress(0x1000)).unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut q = Backlog::default();
        q.set_gather(true);
        let mut expected = Vec::new();
        for head in 0..150u16 {
            let (start, len) = (usize::from(head) * 7, 0x4000 - usize::from(head) * 11);
            let mut sg = SgList::new();
            sg.push(GuestAddress(0x1000), 0x4000);
            q.push_held(sg, start, len - start, Vec::new(), tok(head));
            expected.extend_from_slice(&pattern[start..len]);
            let owned = vec![head as u8; usize::from(head) + 1];
            expected.extend_from_slice(&owned);
            q.push_owned(owned, Vec::new());
        }
        let total = expected.len();
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; total];
            b.read_exact(&mut got).unwrap();
            got
        });
        let (mut iov, mut cmsg, mut rel) = (Vec::new(), CmsgBuf::default(), Vec::new());
        let mut rounds = 0;
        while q
            .flush(a.as_fd(), true, &m, &mut iov, &mut cmsg, &mut rel)
            .unwrap()
            == Flush::Pending
        {
            rounds += 1;
            assert!(rounds < 100_000, "never drained");
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        assert_eq!(
            vals(&rel),
            (0..150).collect::<Vec<_>>(),
            "each once, in order"
        );
        assert!(q.is_empty() && q.held() == 0 && q.owned_bytes() == 0);
        assert!(
            reader.join().unwrap() == expected,
            "bytes reordered or lost"
        );
    }

    #[test]
    fn a_chunk_with_fds_goes_alone_even_when_gathering() {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        let m = mem();
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let (r, _w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut q = Backlog::default();
        q.set_gather(true);
        q.push_owned(b"a".to_vec(), Vec::new());
        q.push_owned(b"b".to_vec(), vec![r]);
        q.push_owned(b"c".to_vec(), Vec::new());
        q.push_owned(b"d".to_vec(), Vec::new());
        let (mut iov, mut cmsg, mut rel) = (Vec::new(), CmsgBuf::default(), Vec::new());
        let r = q.flush(a.as_fd(), true, &m, &mut iov, &mut cmsg, &mut rel);
        assert_eq!(r.unwrap(), Flush::Done);
        // A read stops right after the bytes that carried fds: those of "b" alone.
        let mut reads = Vec::new();
        for _ in 0..2 {
            let mut buf = [0u8; 16];
            let mut space = nix::cmsg_space!([RawFd; 4]);
            let mut v = [std::io::IoSliceMut::new(&mut buf)];
            let msg =
                recvmsg::<()>(b.as_raw_fd(), &mut v, Some(&mut space), MsgFlags::empty()).unwrap();
            let mut fds = 0;
            for c in msg.cmsgs().unwrap() {
                if let ControlMessageOwned::ScmRights(v) = c {
                    for fd in &v {
                        // SAFETY: the kernel just installed it for us; closed once here.
                        drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(*fd) });
                    }
                    fds += v.len();
                }
            }
            let n = msg.bytes;
            reads.push((buf[..n].to_vec(), fds));
        }
        assert_eq!(reads, [(b"ab".to_vec(), 1), (b"cd".to_vec(), 0)]);
    }
}
