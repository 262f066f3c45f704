//! Unit tests of `channel.rs`: RECEIVE, the fds it admits, and hang-ups.

use std::io::{self as stdio, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
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
    connected_with(t, FdPolicy::default_for(2))
}

fn connected_with(t: &TestEnv, policy: FdPolicy) -> (Channel, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let conn = OneSocket {
        sock: Mutex::new(Some(a.into())),
        asked: Mutex::default(),
    };
    let path = Path::new("/run/x.sock");
    let chan = Channel::connect(&conn, t.shared.epoll(), 3, 2, path, 5, policy).unwrap();
    assert_eq!(
        *conn.asked.lock().unwrap(),
        [(2, PathBuf::from("/run/x.sock"))]
    );
    let err = Channel::connect(&conn, t.shared.epoll(), 3, 2, path, 5, policy);
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
    let mem =
        nix::sys::memfd::memfd_create(c"chan-test", nix::sys::memfd::MFdFlags::empty()).unwrap();
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
        let mem = nix::sys::memfd::memfd_create(c"c", nix::sys::memfd::MFdFlags::empty()).unwrap();
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

#[test]
fn a_unix_socket_becomes_a_type_7_item_where_the_policy_carries_sockets() {
    let mut t = TestEnv::new();
    let (mut chan, host) = connected_with(&t, FdPolicy::default_for(0x12));
    let ring = t.sg(RING, &[0u8; 4096]);
    let mut items = ItemTable::default();
    let (s, _peer) = UnixStream::pair().unwrap();
    let mem = nix::sys::memfd::memfd_create(c"c", nix::sys::memfd::MFdFlags::empty()).unwrap();
    let fds = [mem.as_raw_fd(), s.as_raw_fd()];
    let turn = deliver_with(&mut t, &mut chan, &host, &fds, &mut items, &ring);
    assert_eq!(turn, Turn::Served);
    let (msg, _) = received(&t);
    assert_eq!(msg.num_identifiers, 2);
    assert_eq!(msg.identifiers[..2], [2, 3]);
    assert_eq!(
        msg.identifier_types[..2],
        [ID_TYPE_VIRTGPU_BLOB, ID_TYPE_SOCKET]
    );
    assert_eq!(msg.identifier_sizes[..2], [0, 0]);
    assert!(matches!(items.get(3), Some(Item::Socket(_))));
}

#[test]
fn a_kind_the_policy_does_not_carry_hangs_the_channel_up() {
    let (s, _peer) = UnixStream::pair().unwrap();
    let efd = nix::sys::eventfd::EventFd::new().unwrap();
    let mem = nix::sys::memfd::memfd_create(c"c", nix::sys::memfd::MFdFlags::empty()).unwrap();
    let cases = [
        (FdPolicy::default_for(2), s.as_raw_fd()),
        (FdPolicy::NONE, mem.as_raw_fd()),
        ("memory+pipe".parse().unwrap(), efd.as_raw_fd()),
    ];
    for (policy, fd) in cases {
        let mut t = TestEnv::new();
        let (mut chan, host) = connected_with(&t, policy);
        let ring = t.sg(RING, &[0u8; 4096]);
        let mut items = ItemTable::default();
        let turn = deliver_with(&mut t, &mut chan, &host, &[fd], &mut items, &ring);
        assert_hung_up(&mut t, &mut chan, &host, turn, &items, 0);
    }
}

#[test]
fn a_short_read_without_fds_waits_for_the_next_edge_and_oob_data_turns_that_off() {
    let mut t = TestEnv::new();
    let (mut chan, mut host) = connected(&t);
    let ring = t.sg(RING, &[0u8; 4096]);
    let mut items = ItemTable::default();
    host.write_all(b"one").unwrap();
    chan.on_event(&mut t.env(), 3, true, false);
    assert_eq!(
        chan.deliver(&mut t.env(), WHO, &mut items, &ring),
        Turn::Served
    );
    assert!(
        !chan.readable,
        "a short read without fds drained the socket"
    );
    // Bytes that arrive later raise a new edge; without it the channel does not read.
    host.write_all(b"two").unwrap();
    assert_eq!(
        chan.deliver(&mut t.env(), WHO, &mut items, &ring),
        Turn::Idle
    );
    assert!(!t.ready().is_empty(), "the new bytes raised an edge");
    chan.on_event(&mut t.env(), 3, true, false);
    assert_eq!(
        chan.deliver(&mut t.env(), WHO, &mut items, &ring),
        Turn::Served
    );
    assert_eq!(received(&t).1, b"two");
    // Out-of-band data (or a hang-up) makes short reads untrustworthy for good.
    chan.note_events(EpollFlags::EPOLLIN | EpollFlags::EPOLLPRI);
    host.write_all(b"three").unwrap();
    chan.on_event(&mut t.env(), 3, true, false);
    assert_eq!(
        chan.deliver(&mut t.env(), WHO, &mut items, &ring),
        Turn::Served
    );
    assert!(chan.readable, "read until EAGAIN from now on");
    assert_eq!(
        chan.deliver(&mut t.env(), WHO, &mut items, &ring),
        Turn::Idle
    );
    assert!(!chan.readable);
}
