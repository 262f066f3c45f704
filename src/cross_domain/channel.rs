//! The channel socket of a context: connected at INIT to the host service configured for the
//! channel type, written by SEND (through its [`Peer`]), and read into RECEIVE messages, whose
//! fds become items (docs/protocol.md §3.6, §4.5, §5.3).
//!
//! This module owns the socket and what a RECEIVE carries. It never interprets the bytes, and
//! it never chooses when to read: the delivery rotation gives it its turns.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use log::{info, warn};
use nix::sys::epoll::{Epoll, EpollEvent};

use super::backlog::HoldToken;
use super::delivery::{token, Turn, CHANNEL_TOKEN, SOURCE_EVENTS};
use super::env::{Connector, Env, Submission};
use super::error::CtxError;
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
    /// Epoll reported it readable and it has not returned `EAGAIN` since.
    readable: bool,
    /// The service hung up (or the socket failed); nothing more is read.
    eof: bool,
}

/// Who a log line is about: the context's id and the guest's name for it.
#[derive(Clone, Copy)]
pub(super) struct Who<'a> {
    pub ctx_id: u32,
    pub name: &'a str,
}

impl Channel {
    /// Connect the channel of `channel_type`, configured at `path`, for context `ctx_id` and
    /// start watching it.
    pub fn connect(
        connector: &dyn Connector,
        epoll: &Epoll,
        ctx_id: u32,
        channel_type: u32,
        path: &Path,
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
            readable: true,
            eof: false,
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
    /// RECEIVE, its fds stored in `items`. At end of file (or on an error) the RECEIVE is the
    /// one empty message of docs/protocol.md §4.5 and the channel is done.
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
                if truncated_fds {
                    warn!(
                        "ctx {ctx_id}: host sent more than {MAX_IDENTIFIERS} fds in one message; extra fds were dropped"
                    );
                }
                msg.opaque_data_size = len as u32;
                self.store_fds(env, ctx_id, items, &mut msg);
                Turn::Served
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

    fn hung_up(&mut self, who: Who<'_>, what: std::fmt::Arguments<'_>) {
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

    /// Turn the fds just received (in `env.scratch.fds`) into identifiers of `msg`, in order.
    /// An fd the guest cannot be given is closed and logged.
    fn store_fds(
        &self,
        env: &mut Env<'_>,
        ctx_id: u32,
        items: &mut ItemTable,
        msg: &mut SendReceive,
    ) {
        let mut n = 0usize;
        let fds = std::mem::take(&mut env.scratch.fds);
        for fd in fds {
            let (ty, size, pipe) = match cdio::classify(fd.as_fd()) {
                FdKind::Memory { size } => (ID_TYPE_VIRTGPU_BLOB, size, false),
                FdKind::WritePipe => {
                    if let Err(e) = WritePipe::prepare(&fd) {
                        warn!("ctx {ctx_id}: refusing write pipe: {e}");
                        continue;
                    }
                    (ID_TYPE_WRITE_PIPE, 0, true)
                }
                FdKind::Refused(what) => {
                    guest_warn!(
                        env.limiter,
                        "ctx {ctx_id}: refused a {what} from channel {}; closed it",
                        self.path.display()
                    );
                    continue;
                }
            };
            // Allocate after classification so refused fds consume no id.
            let item = |id| {
                if pipe {
                    Item::WritePipe(WritePipe::new(ctx_id, id, fd))
                } else {
                    Item::Memory { fd, size }
                }
            };
            let Ok(id) = items.add_received(item) else {
                env.limiter.limit_hit(
                    ctx_id,
                    LimitKind::ItemsPerContext,
                    MAX_ITEMS,
                    format_args!("ctx {ctx_id}: item table full; dropped a received fd"),
                );
                continue;
            };
            msg.identifiers[n] = id;
            msg.identifier_types[n] = ty;
            // `classify` refuses memory larger than u32::MAX bytes.
            msg.identifier_sizes[n] = size as u32;
            n += 1;
        }
        msg.num_identifiers = n as u32;
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
            Channel::connect(&conn, t.shared.epoll(), 3, 2, Path::new("/run/x.sock")).unwrap();
        assert_eq!(
            *conn.asked.lock().unwrap(),
            [(2, PathBuf::from("/run/x.sock"))]
        );
        let err = Channel::connect(&conn, t.shared.epoll(), 3, 2, Path::new("/run/x.sock"));
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
        let (sock, _) = UnixStream::pair().unwrap();
        let iov = [libc::iovec {
            iov_base: b"hi".as_ptr() as *mut _,
            iov_len: 2,
        }];
        let raw = [mem.as_raw_fd(), sock.as_raw_fd(), w.as_raw_fd()];
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
        // The socket is refused (closed, logged); the others get ids 2 and 3, in order.
        assert_eq!(msg.num_identifiers, 2);
        assert_eq!(msg.identifiers[..2], [2, 3]);
        assert_eq!(
            msg.identifier_types[..2],
            [ID_TYPE_VIRTGPU_BLOB, ID_TYPE_WRITE_PIPE]
        );
        assert_eq!(msg.identifier_sizes[..2], [300, 0]);
        assert!(matches!(items.get(2), Some(Item::Memory { size: 300, .. })));
        assert!(matches!(items.get(3), Some(Item::WritePipe(_))));
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

    #[test]
    fn a_full_item_table_drops_the_fd_but_delivers_the_message() {
        let mut t = TestEnv::new();
        let (mut chan, host) = connected(&t);
        let ring = t.sg(RING, &[0u8; 4096]);
        let mut items = ItemTable::default();
        for _ in 0..MAX_ITEMS {
            items
                .add_received(|_| Item::Memory {
                    fd: nix::unistd::dup(&host).unwrap(),
                    size: 0,
                })
                .unwrap();
        }
        let (_r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let iov = [libc::iovec {
            iov_base: b"x".as_ptr() as *mut _,
            iov_len: 1,
        }];
        let mut cmsg = cdio::CmsgBuf::default();
        cdio::send_with_fds(host.as_fd(), &iov, &[w.as_raw_fd()], &mut cmsg).unwrap();
        assert_eq!(
            chan.deliver(&mut t.env(), WHO, &mut items, &ring),
            Turn::Served
        );
        let (msg, data) = received(&t);
        assert_eq!((msg.num_identifiers, data.as_slice()), (0, &b"x"[..]));
    }
}
