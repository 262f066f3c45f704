//! The channel socket of a context: connected at INIT to the host service configured for the
//! channel type, written by SEND (through its [`Peer`]), and read into RECEIVE messages, whose
//! fds become items (docs/protocol.md §3.6, §4.5, §5.3, §5.3.1).
//!
//! A message is delivered whole or not at all: if one of its fds cannot become an identifier
//! (a kind the guest cannot be given, more fds than a RECEIVE holds, no room in the item
//! table), the channel hangs up instead — the host service's connection is closed and the guest
//! gets the one empty RECEIVE of end of stream — because guests pair identifiers with the inner
//! protocol's fds by position, and a message short of one desynchronises everything after it.
//!
//! This module owns the socket and what a RECEIVE carries. It never interprets the bytes, and
//! it never chooses when to read: the delivery rotation gives it its turns.

use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use log::info;
use nix::sys::epoll::{Epoll, EpollEvent};

use super::backlog::HoldToken;
use super::delivery::{token, Turn, CHANNEL_TOKEN, SOURCE_EVENTS};
use super::env::{Connector, Env, Submission};
use super::error::CtxError;
use super::eventfds::Eventfd;
use super::io::{self as cdio, FdKind, Received};
use super::items::{Item, ItemTable, MAX_ITEMS};
use super::peer::{Peer, PeerError};
use super::pipes::WritePipe;
use super::protocol::{
    SendReceive, CMD_RECEIVE, ID_TYPE_VIRTGPU_BLOB, ID_TYPE_WRITE_PIPE, MAX_IDENTIFIERS,
    MAX_RECEIVE_DATA,
};
use crate::guest_mem::SgList;
use crate::guest_warn;
use crate::limitlog::LimitKind;

/// A context's connection to its host service.
pub(super) struct Channel {
    peer: Peer,
    channel_type: u32,
    path: PathBuf,
    /// The identifier type an eventfd gets in RECEIVE (docs/protocol.md §8.2).
    eventfd_type: u32,
    /// Epoll reported it readable and it has not returned `EAGAIN` since.
    readable: bool,
    /// The service hung up (or the socket failed, or the daemon hung up); nothing more is read.
    eof: bool,
    /// The daemon hung the channel up (a message it could not deliver whole): SENDs fail.
    closed_here: bool,
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
}

impl fmt::Display for Undeliverable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Undeliverable::Fd(what) => write!(f, "a {what}, which the guest cannot be given"),
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
    /// start watching it. Received eventfds will be announced as `eventfd_type`.
    pub fn connect(
        connector: &dyn Connector,
        epoll: &Epoll,
        ctx_id: u32,
        channel_type: u32,
        path: &Path,
        eventfd_type: u32,
    ) -> Result<Self, CtxError> {
        let sock = connector
            .connect(channel_type, path)
            .map_err(|source| CtxError::Connect {
                channel_type,
                path: path.to_path_buf(),
                source,
            })?;
        let tok = token(ctx_id, CHANNEL_TOKEN);
        epoll
            .add(&sock, EpollEvent::new(SOURCE_EVENTS, tok))
            .map_err(|e| CtxError::HostIo(e.into()))?;
        Ok(Channel {
            peer: Peer::socket(sock, tok, SOURCE_EVENTS),
            channel_type,
            path: path.to_path_buf(),
            eventfd_type,
            readable: true,
            eof: false,
            closed_here: false,
        })
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
            Ok(()) => Ok(()),
            Err(PeerError::Refused(e)) => Err(e),
            Err(PeerError::Broken(e)) => {
                // The host service closed the channel or broke; the socket stays until the
                // hang-up is read (or the context ends).
                info!(
                    "ctx {} ({}): channel {:#x} ({}) send failed: {e}",
                    who.ctx_id,
                    who.name,
                    self.channel_type,
                    self.path.display()
                );
                Err(CtxError::HostIo(e))
            }
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
                    self.path.display()
                );
            }
        }
    }

    /// Its turn in the rotation: `recvmsg` one message straight into the channel `ring` as a
    /// RECEIVE, its fds stored in `items`. At end of file (or on an error, or when the message
    /// cannot be delivered whole) the RECEIVE is the one empty message of docs/protocol.md
    /// §4.5 and the channel is done.
    pub fn deliver(
        &mut self,
        env: &mut Env<'_>,
        who: Who<'_>,
        items: &mut ItemTable,
        ring: &SgList,
    ) -> Turn {
        let ctx_id = who.ctx_id;
        if !self.readable || self.eof {
            return Turn::Idle;
        }
        let hdr_len = std::mem::size_of::<SendReceive>();
        let cap = MAX_RECEIVE_DATA.min(ring.len() - hdr_len);
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
                let mut fds = std::mem::take(&mut env.scratch.fds);
                let admitted = self.admit(env, ctx_id, items, &mut msg, &mut fds, truncated_fds);
                // Whatever was not admitted closes here.
                fds.clear();
                env.scratch.fds = fds;
                match admitted {
                    Ok(()) => {
                        msg.opaque_data_size = len as u32;
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
        msg.hdr.cmd_size = (hdr_len + msg.opaque_data_size as usize) as u16;
        if let Err(e) = ring.write_obj(env.mem, 0, &msg) {
            guest_warn!(env.limiter, "ctx {ctx_id}: channel ring write failed: {e}");
        }
        turn
    }

    fn hung_up(&mut self, who: Who<'_>, what: fmt::Arguments<'_>) {
        info!(
            "ctx {} ({}): channel {:#x} ({}) {what}",
            who.ctx_id,
            who.name,
            self.channel_type,
            self.path.display()
        );
        self.eof = true;
        self.readable = false;
    }

    /// Hang the channel up because a message could not be delivered whole: close the host
    /// service's connection (it reads end of file, its writes fail) and drop what waits for
    /// it. The guest gets the empty RECEIVE of end of stream from the caller.
    fn refuse(&mut self, env: &mut Env<'_>, who: Who<'_>, why: Undeliverable) {
        let ctx_id = who.ctx_id;
        let what = format_args!(
            "ctx {ctx_id} ({}): channel {:#x} ({}) sent {why}; hung up the channel rather than \
             deliver the message without it",
            who.name,
            self.channel_type,
            self.path.display()
        );
        if why == Undeliverable::ItemTableFull {
            let limit = LimitKind::ItemsPerContext;
            env.limiter.limit_hit(ctx_id, limit, MAX_ITEMS, what);
        } else {
            guest_warn!(env.limiter, "{what}");
        }
        self.hung_up(who, format_args!("hung up by the daemon"));
        if let Err(e) = cdio::shutdown(self.peer.fd()) {
            info!(
                "ctx {ctx_id}: shutdown of channel {}: {e}",
                self.path.display()
            );
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
            let ready = match cdio::classify(fd.as_fd()) {
                FdKind::Refused(what) => return Err(Undeliverable::Fd(what)),
                FdKind::Memory { size } => {
                    *kind = Admitted::Memory(size);
                    Ok(())
                }
                FdKind::WritePipe => {
                    *kind = Admitted::WritePipe;
                    WritePipe::prepare(fd)
                }
                FdKind::Eventfd => {
                    *kind = Admitted::Eventfd;
                    Eventfd::prepare(fd)
                }
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
            };
            let item = |id| match kind {
                Admitted::Memory(size) => Item::Memory { fd, size },
                Admitted::WritePipe => Item::WritePipe(WritePipe::new(ctx_id, id, fd)),
                Admitted::Eventfd => Item::Eventfd(Eventfd::new(fd)),
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
    pub fn close(&mut self, epoll: &Epoll, released: &mut Vec<HoldToken>, who: Who<'_>) {
        self.peer.close(epoll, released);
        info!(
            "ctx {} ({}): closing channel {:#x} ({})",
            who.ctx_id,
            who.name,
            self.channel_type,
            self.path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use std::io::{self as stdio, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::sync::Mutex;

    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::cross_domain::env::TestEnv;
    use crate::cross_domain::protocol::ID_TYPE_WRITE_PIPE;

    /// Hands out the prepared socket once, and records what it was asked for.
    struct OneSocket {
        sock: Mutex<Option<OwnedFd>>,
        asked: Mutex<Vec<(u32, PathBuf)>>,
    }

    impl Connector for OneSocket {
        fn connect(&self, channel_type: u32, path: &Path) -> stdio::Result<OwnedFd> {
            self.asked
                .lock()
                .unwrap()
                .push((channel_type, path.to_path_buf()));
            self.sock
                .lock()
                .unwrap()
                .take()
                .ok_or_else(|| stdio::Error::from_raw_os_error(libc::ECONNREFUSED))
        }
    }

    const RING: u64 = 0x1_8000;
    const WHO: Who<'static> = Who {
        ctx_id: 3,
        name: "test",
    };

    fn connected(t: &TestEnv) -> (Channel, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let conn = OneSocket {
            sock: Mutex::new(Some(a.into())),
            asked: Mutex::default(),
        };
        let chan =
            Channel::connect(&conn, t.shared.epoll(), 3, 2, Path::new("/run/x.sock"), 5).unwrap();
        assert_eq!(
            *conn.asked.lock().unwrap(),
            [(2, PathBuf::from("/run/x.sock"))]
        );
        let err = Channel::connect(&conn, t.shared.epoll(), 3, 2, Path::new("/run/x.sock"), 5);
        assert!(matches!(
            err,
            Err(CtxError::Connect {
                channel_type: 2,
                ..
            })
        ));
        (chan, b)
    }

    fn received(t: &TestEnv) -> (SendReceive, Vec<u8>) {
        let msg: SendReceive = t.mem.read_obj(GuestAddress(RING)).unwrap();
        let hdr = std::mem::size_of::<SendReceive>();
        let mut data = vec![0u8; msg.opaque_data_size as usize];
        t.mem
            .read_slice(&mut data, GuestAddress(RING + hdr as u64))
            .unwrap();
        assert_eq!(usize::from(msg.hdr.cmd_size), hdr + data.len());
        (msg, data)
    }

    #[test]
    fn a_message_and_its_fds_become_one_receive_and_the_hang_up_one_empty_receive() {
        let mut t = TestEnv::new();
        let (mut chan, host) = connected(&t);
        let ring = t.sg(RING, &[0u8; 4096]);
        let mut items = ItemTable::default();
        // Nothing sent yet: the turn passes.
        assert_eq!(
            chan.deliver(&mut t.env(), WHO, &mut items, &ring),
            Turn::Idle
        );
        let mem = nix::sys::memfd::memfd_create(c"chan-test", nix::sys::memfd::MFdFlags::empty())
            .unwrap();
        std::fs::File::from(mem.try_clone().unwrap())
            .write_all(&[1u8; 300])
            .unwrap();
        let (_r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let efd = nix::sys::eventfd::EventFd::new().unwrap();
        let iov = [libc::iovec {
            iov_base: b"hi".as_ptr() as *mut _,
            iov_len: 2,
        }];
        let raw = [mem.as_raw_fd(), efd.as_raw_fd(), w.as_raw_fd()];
        let mut cmsg = cdio::CmsgBuf::default();
        cdio::send_with_fds(host.as_fd(), &iov, &raw, &mut cmsg).unwrap();
        // Epoll said readable: the next turn reads the message.
        chan.on_event(&mut t.env(), 3, true, false);
        assert_eq!(
            chan.deliver(&mut t.env(), WHO, &mut items, &ring),
            Turn::Served
        );
        let (msg, data) = received(&t);
        assert_eq!((msg.hdr.cmd, data.as_slice()), (CMD_RECEIVE, &b"hi"[..]));
        // Ids 2, 3 and 4, in order; the eventfd with the type of the context's INIT form.
        assert_eq!(msg.num_identifiers, 3);
        assert_eq!(msg.identifiers[..3], [2, 3, 4]);
        assert_eq!(
            msg.identifier_types[..3],
            [ID_TYPE_VIRTGPU_BLOB, 5, ID_TYPE_WRITE_PIPE]
        );
        assert_eq!(msg.identifier_sizes[..3], [300, 0, 0]);
        assert!(matches!(items.get(2), Some(Item::Memory { size: 300, .. })));
        assert!(matches!(items.get(3), Some(Item::Eventfd(_))));
        assert!(matches!(items.get(4), Some(Item::WritePipe(_))));
        // Drained: idle again, until the host hangs up.
        assert_eq!(
            chan.deliver(&mut t.env(), WHO, &mut items, &ring),
            Turn::Idle
        );
        drop(host);
        chan.on_event(&mut t.env(), 3, true, false);
        assert_eq!(
            chan.deliver(&mut t.env(), WHO, &mut items, &ring),
            Turn::ServedLast
        );
        let (msg, data) = received(&t);
        assert_eq!(
            (msg.num_identifiers, data.len()),
            (0, 0),
            "one empty RECEIVE"
        );
        // And only one: the channel reads nothing more.
        chan.on_event(&mut t.env(), 3, true, false);
        assert_eq!(
            chan.deliver(&mut t.env(), WHO, &mut items, &ring),
            Turn::Idle
        );
        assert!(t.ready().is_empty(), "no longer watched");
    }

    /// Send "x" with `fds` from the host, and give the channel its turn.
    fn deliver_with(
        t: &mut TestEnv,
        chan: &mut Channel,
        host: &UnixStream,
        fds: &[i32],
        items: &mut ItemTable,
        ring: &SgList,
    ) -> Turn {
        let iov = [libc::iovec {
            iov_base: b"x".as_ptr() as *mut _,
            iov_len: 1,
        }];
        let mut cmsg = cdio::CmsgBuf::default();
        cdio::send_with_fds(host.as_fd(), &iov, fds, &mut cmsg).unwrap();
        chan.on_event(&mut t.env(), 3, true, false);
        chan.deliver(&mut t.env(), WHO, items, ring)
    }

    /// The message is not delivered, the host's connection is closed, the guest gets the
    /// empty RECEIVE of end of stream, SENDs fail and nothing stays behind.
    fn assert_hung_up(
        t: &mut TestEnv,
        chan: &mut Channel,
        host: &UnixStream,
        turn: Turn,
        items: &ItemTable,
        before: usize,
    ) {
        assert_eq!(turn, Turn::ServedLast);
        let (msg, data) = received(t);
        assert_eq!(
            (msg.num_identifiers, data.len()),
            (0, 0),
            "one empty RECEIVE"
        );
        assert_eq!(items.fd_items(), before, "no item added");
        let mut buf = [0u8; 4];
        assert_eq!(
            nix::unistd::read(host, &mut buf),
            Ok(0),
            "the host reads EOF"
        );
        let stream = t.sg(0x1_0000, b"late");
        let r = chan.send(
            &mut t.env(),
            &mut crate::cross_domain::env::submission(None),
            WHO,
            &stream,
            0,
            4,
            &mut Vec::new(),
        );
        assert!(matches!(r, Err(CtxError::ChannelClosed)), "{r:?}");
        assert!(t.ready().is_empty(), "no longer watched");
    }

    #[test]
    fn an_fd_the_guest_cannot_be_given_hangs_the_channel_up() {
        let (sock, _peer) = UnixStream::pair().unwrap();
        let dir = std::fs::File::open("/").unwrap();
        let (r, _w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let null = std::fs::File::open("/dev/null").unwrap();
        for bad in [
            sock.as_raw_fd(),
            dir.as_raw_fd(),
            r.as_raw_fd(),
            null.as_raw_fd(),
        ] {
            let mut t = TestEnv::new();
            let (mut chan, host) = connected(&t);
            let ring = t.sg(RING, &[0u8; 4096]);
            let mut items = ItemTable::default();
            // Good fds around the bad one: none of them becomes an item either.
            let mem =
                nix::sys::memfd::memfd_create(c"c", nix::sys::memfd::MFdFlags::empty()).unwrap();
            let efd = nix::sys::eventfd::EventFd::new().unwrap();
            let fds = [mem.as_raw_fd(), bad, efd.as_raw_fd()];
            let turn = deliver_with(&mut t, &mut chan, &host, &fds, &mut items, &ring);
            assert_hung_up(&mut t, &mut chan, &host, turn, &items, 0);
        }
    }

    #[test]
    fn a_full_item_table_hangs_the_channel_up() {
        let mut t = TestEnv::new();
        let (mut chan, host) = connected(&t);
        let ring = t.sg(RING, &[0u8; 4096]);
        let mut items = ItemTable::default();
        for _ in 0..MAX_ITEMS - 1 {
            items
                .add_received(|_| Item::Memory {
                    fd: nix::unistd::dup(&host).unwrap(),
                    size: 0,
                })
                .unwrap();
        }
        // One fd still fits.
        let (_r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let turn = deliver_with(
            &mut t,
            &mut chan,
            &host,
            &[w.as_raw_fd()],
            &mut items,
            &ring,
        );
        assert_eq!(turn, Turn::Served);
        assert_eq!(items.fd_items(), MAX_ITEMS);
        // Two do not: neither is dropped alone.
        let (_r2, w2) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let efd = nix::sys::eventfd::EventFd::new().unwrap();
        items.remove(2);
        let turn = deliver_with(
            &mut t,
            &mut chan,
            &host,
            &[w2.as_raw_fd(), efd.as_raw_fd()],
            &mut items,
            &ring,
        );
        assert_hung_up(&mut t, &mut chan, &host, turn, &items, MAX_ITEMS - 1);
    }

    #[test]
    fn more_fds_than_a_receive_holds_hang_the_channel_up() {
        let mut t = TestEnv::new();
        let (mut chan, host) = connected(&t);
        let ring = t.sg(RING, &[0u8; 4096]);
        let mut items = ItemTable::default();
        let pipes: Vec<_> = (0..MAX_IDENTIFIERS + 1)
            .map(|_| nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap())
            .collect();
        let raw: Vec<_> = pipes.iter().map(|(_, w)| w.as_raw_fd()).collect();
        // `cdio::send_with_fds` refuses more than 28; nix does not.
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        let iov = [std::io::IoSlice::new(b"x")];
        let cmsg = [ControlMessage::ScmRights(&raw)];
        sendmsg::<()>(host.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None).unwrap();
        chan.on_event(&mut t.env(), 3, true, false);
        let turn = chan.deliver(&mut t.env(), WHO, &mut items, &ring);
        assert_hung_up(&mut t, &mut chan, &host, turn, &items, 0);
    }
}
