//! A hostile host service: odd fds, too many fds, a huge memfd, a hang-up in the middle of a
//! stream, a flood faster than the guest polls, eventfds in floods, eventfds it never reads,
//! and a close in the middle of eventfd traffic. The daemon stays bounded, never delivers a
//! message short of an fd (it hangs the channel up instead, docs/protocol-decisions.md §6),
//! and the guest sees well-formed messages or an EOF.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};
use support::*;

const T: Duration = Duration::from_secs(10);

/// `MAX_ITEMS` (src/cross_domain/items.rs).
const MAX_ITEMS: usize = 1024;

struct Fx {
    daemon: Daemon,
    vm: TestVm,
    listener: UnixListener,
}

fn setup(log: &str) -> Fx {
    let dir = temp_dir();
    let (path, listener) = channel_listener(dir.path());
    let daemon = Daemon::builder()
        .dir(dir)
        .rust_log(log)
        .args(["--channel".to_string(), format!("2:{}", path.display())])
        .spawn();
    let vm = TestVm::connect(daemon.socket_path());
    Fx {
        daemon,
        vm,
        listener,
    }
}

impl Fx {
    /// A context on channel 2 (muvm's 24-byte INIT) and the host's end of it.
    fn open(&mut self, ctx_id: u32) -> (CrossDomainContext, UnixStream) {
        let ctx = CrossDomainContext::create(&mut self.vm, ctx_id);
        let init = cd_init_v24(ctx.query_ring.res_id, ctx.channel_ring.res_id, 2, 1);
        assert_ok(&ctx.submit(&mut self.vm, &init), "INIT");
        let host = accept_timeout(&self.listener, T).expect("channel");
        host.set_nonblocking(false).unwrap();
        (ctx, host)
    }
}

/// Waits until the daemon has at most `n` fds open.
fn wait_fds_at_most(pid: u32, n: usize) -> usize {
    let deadline = Instant::now() + T;
    while fd_count(pid) > n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    fd_count(pid)
}

fn eventfd() -> OwnedFd {
    EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
        .unwrap()
        .into()
}

/// The channel was hung up: one empty RECEIVE, the host reads end of file, and the next POLL
/// waits for ever.
fn assert_hung_up(vm: &mut TestVm, ctx: &CrossDomainContext, host: &mut UnixStream, what: &str) {
    match ctx.recv(vm, T) {
        ChannelMsg::Receive { ids, data } => {
            assert!(
                ids.is_empty() && data.is_empty(),
                "{what}: {ids:?} {data:?}"
            )
        }
        other => panic!("{what}: expected the empty RECEIVE, got {other:?}"),
    }
    host.set_read_timeout(Some(T)).unwrap();
    let mut rest = Vec::new();
    assert_eq!(
        host.read_to_end(&mut rest).unwrap(),
        0,
        "{what}: host reads EOF"
    );
    let head = ctx.poll_next(vm);
    assert!(
        ctx.wait_poll(vm, head, Duration::from_millis(200))
            .is_none(),
        "{what}: a second message after the hang-up"
    );
}

#[test]
fn odd_fds_too_many_fds_a_huge_memfd_a_flood_and_a_hang_up() {
    let mut fx = setup("warn");
    let pid = fx.daemon.pid();
    let fds_before = fd_count(pid);

    // 40 fds in one message: pipes' write ends, a directory, sockets, an eventfd, read ends,
    // and a sparse 1 GiB memfd. A RECEIVE holds 28: none of the message is delivered, the
    // channel hangs up.
    let (odd, mut odd_host) = fx.open(1);
    let huge = memfd_with(b"");
    huge.set_len(1 << 30).unwrap();
    let dir = std::fs::File::open("/").unwrap();
    let efd = nix::sys::eventfd::EventFd::new().unwrap();
    let (sa, _sb) = UnixStream::pair().unwrap();
    let mut keep = Vec::new();
    let mut raw = vec![
        huge.as_raw_fd(),
        dir.as_raw_fd(),
        efd.as_raw_fd(),
        sa.as_raw_fd(),
    ];
    for _ in 0..18 {
        let (r, w) = pipe();
        raw.push(w.as_raw_fd());
        raw.push(r.as_raw_fd());
        keep.push((r, w));
    }
    assert_eq!(raw.len(), 40);
    send_many_fds(&odd_host, b"many", &raw);
    assert_hung_up(&mut fx.vm, &odd, &mut odd_host, "40 fds");
    assert!(fx.daemon.wait_for_log("more than 28 fds", T));

    // 28 usable fds, the sparse 1 GiB memfd first: all arrive.
    let (ctx, host) = fx.open(2);
    keep.extend((0..9).map(|_| pipe()));
    let mut raw = vec![huge.as_raw_fd()];
    raw.extend(keep.iter().map(|(_, w)| w.as_raw_fd()));
    assert_eq!(raw.len(), CD_MAX_IDENTIFIERS);
    send_with_fds(&host, b"many", &raw);
    match ctx.recv(&mut fx.vm, T) {
        ChannelMsg::Receive { ids, data } => {
            assert_eq!(data, b"many");
            assert_eq!(ids.len(), CD_MAX_IDENTIFIERS);
            assert_eq!(ids[0].1, CD_ID_TYPE_VIRTGPU_BLOB);
            assert_eq!(ids[0].2, 1 << 30, "the sparse 1 GiB memfd");
            assert!(
                ids[1..]
                    .iter()
                    .all(|&(_, ty, _)| ty == CD_ID_TYPE_WRITE_PIPE),
                "{ids:?}"
            );
        }
        other => panic!("expected RECEIVE, got {other:?}"),
    }

    // A flood: 64 MiB written as fast as the socket takes it while the guest polls slowly.
    let rss_before = rss_kib(pid);
    let mut flood_host = host.try_clone().unwrap();
    let flooder = std::thread::spawn(move || {
        let chunk = vec![0x5au8; 65536];
        let mut sent = 0usize;
        while sent < 64 << 20 {
            match flood_host.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        sent
    });
    let mut got = 0usize;
    while got < 4 << 20 {
        match ctx.recv(&mut fx.vm, T) {
            ChannelMsg::Receive { data, .. } => {
                assert!(data.len() <= 3744);
                assert!(data.iter().all(|&b| b == 0x5a));
                got += data.len();
            }
            other => panic!("expected RECEIVE, got {other:?}"),
        }
        if got % (1 << 20) < 3744 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let rss_flood = rss_kib(pid);
    // The daemon reads only what the guest polls for: the rest waits in the host's socket.
    assert!(
        rss_flood < rss_before + 2048,
        "RSS grew from {rss_before} to {rss_flood} KiB during the flood"
    );
    // The host hangs up in the middle of its stream (the flooder's clone closes when it is
    // done): the guest drains what was sent, then sees exactly one EOF.
    drop(host);
    let mut eof = false;
    let mut more = 0usize;
    while !eof {
        match ctx.recv(&mut fx.vm, T) {
            ChannelMsg::Receive { data, ids } if data.is_empty() && ids.is_empty() => eof = true,
            ChannelMsg::Receive { data, .. } => {
                more += data.len();
                if more > (64 << 20) {
                    panic!("more data than was sent");
                }
            }
            other => panic!("expected RECEIVE, got {other:?}"),
        }
    }
    let sent = flooder.join().unwrap();
    assert_eq!(
        got + more,
        sent,
        "every flooded byte arrives once, in order"
    );
    drop(keep);
    // Everything the daemon refused or took is released with the contexts.
    assert_ok(&fx.vm.ctx_destroy(1), "CTX_DESTROY");
    assert_ok(&fx.vm.ctx_destroy(2), "CTX_DESTROY");
    let after = wait_fds_at_most(pid, fds_before);
    assert_eq!(after, fds_before, "fds left behind");
}

/// `sendmsg` of more fds than the test helpers allow (the kernel takes up to 253).
fn send_many_fds(host: &UnixStream, data: &[u8], fds: &[i32]) {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let iov = [std::io::IoSlice::new(data)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let n = sendmsg::<()>(host.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None).unwrap();
    assert_eq!(n, data.len());
}

/// Every kind of fd a channel cannot carry hangs it up, whatever good fds come with it, and
/// nothing of the message (bytes or fds) stays in the daemon.
#[test]
fn every_fd_the_guest_cannot_be_given_hangs_up_its_channel() {
    let mut fx = setup("warn");
    let pid = fx.daemon.pid();
    let fds_before = fd_count(pid);
    let mem = memfd_with(&[1u8; 100]);
    let mem_path = format!("/proc/self/fd/{}", mem.as_raw_fd());
    let (sa, _sb) = UnixStream::pair().unwrap();
    let (pr, _pw) = pipe();
    let fifo_rw = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/self/fd/{}", pr.as_raw_fd()))
        .unwrap();
    let write_only = std::fs::OpenOptions::new()
        .write(true)
        .open(&mem_path)
        .unwrap();
    let o_path = nix::fcntl::open(
        mem_path.as_str(),
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    let cases: [(&str, i32); 8] = [
        ("socket", sa.as_raw_fd()),
        ("directory", std::fs::File::open("/").unwrap().into_raw()),
        ("pipe read end", pr.as_raw_fd()),
        ("pipe read end", fifo_rw.as_raw_fd()),
        (
            "device node",
            std::fs::File::open("/dev/null").unwrap().into_raw(),
        ),
        ("write-only file", write_only.as_raw_fd()),
        ("file that cannot be read (O_PATH)", o_path.as_raw_fd()),
        ("unsupported fd type", epoll_fd()),
    ];
    for (i, (kind, bad)) in cases.into_iter().enumerate() {
        let (ctx, mut host) = fx.open(i as u32 + 1);
        let efd = eventfd();
        let (_r, w) = pipe();
        send_with_fds(
            &host,
            b"msg",
            &[mem.as_raw_fd(), bad, efd.as_raw_fd(), w.as_raw_fd()],
        );
        assert_hung_up(&mut fx.vm, &ctx, &mut host, kind);
        let line = format!("sent a {kind}, which the guest cannot be given; hung up the channel");
        assert!(fx.daemon.wait_for_log(&line, T), "{kind}");
        // SENDs on it fail; the context lives on until the guest destroys it.
        assert_resp(
            &ctx.try_send(&mut fx.vm, b"late", &[]),
            RESP_ERR_UNSPEC,
            "SEND after the daemon hung up",
        );
        assert_ok(&ctx.destroy(&mut fx.vm), "CTX_DESTROY");
    }
    let after = wait_fds_at_most(pid, fds_before);
    assert_eq!(after, fds_before, "fds left behind");
}

/// An fd of a kind no test helper opens: an epoll instance (an anonymous inode that is not an
/// eventfd or a dma-buf). Leaked on purpose; the test process ends soon.
fn epoll_fd() -> i32 {
    let ep = nix::sys::epoll::Epoll::new(nix::sys::epoll::EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
    ep.0.into_raw()
}

trait IntoRaw {
    fn into_raw(self) -> i32;
}

impl<T: Into<OwnedFd>> IntoRaw for T {
    fn into_raw(self) -> i32 {
        use std::os::fd::IntoRawFd;
        self.into().into_raw_fd()
    }
}

/// A host that sends eventfds without end: they count against the item table like every fd;
/// once it is full the channel hangs up (docs/protocol-decisions.md §6). While the flood
/// lasts, watched eventfds signalled without pause give one READ per POLL, and the daemon's
/// memory does not grow with the signals.
#[test]
fn an_eventfd_flood_fills_the_item_table_then_hangs_up() {
    let mut fx = setup("warn");
    let pid = fx.daemon.pid();
    let fds_before = fd_count(pid);
    let (ctx, mut host) = fx.open(1);
    // The host keeps its copies of the first 28 to signal them; the rest it closes at once.
    let signalled: Vec<OwnedFd> = (0..28).map(|_| eventfd()).collect();
    let raw: Vec<_> = signalled.iter().map(|f| f.as_raw_fd()).collect();
    send_with_fds(&host, b"e", &raw);
    let ChannelMsg::Receive { ids, .. } = ctx.recv(&mut fx.vm, T) else {
        panic!("expected RECEIVE");
    };
    assert!(
        ids.iter().all(|&(_, ty, size)| (ty, size) == (6, 0)),
        "{ids:?}"
    );
    for &(id, ..) in &ids {
        let mut cmd = cd_header(11, 16).to_vec();
        cmd.extend_from_slice(&id.to_le_bytes());
        cmd.extend_from_slice(&[0; 4]);
        assert_ok(&ctx.submit(&mut fx.vm, &cmd), "READ_EVENTFD_NEW");
    }
    let mut held = ids.len();
    while held < MAX_ITEMS {
        let n = (MAX_ITEMS - held).min(28);
        let efds: Vec<_> = (0..n).map(|_| eventfd()).collect();
        let raw: Vec<_> = efds.iter().map(|f| f.as_raw_fd()).collect();
        send_with_fds(&host, b"e", &raw);
        drop(efds);
        // Signals without pause meanwhile: each POLL gets one message.
        for f in &signalled {
            nix::unistd::write(f, &1u64.to_ne_bytes()).unwrap();
        }
        loop {
            match ctx.recv(&mut fx.vm, T) {
                ChannelMsg::Read { data, .. } => assert_eq!(data.len(), 8),
                ChannelMsg::Receive { ids, .. } => {
                    assert_eq!(ids.len(), n, "after {held} items");
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        held += n;
    }
    let rss_full = rss_kib(pid);
    // Thousands of signals more cost nothing: a counter holds them all.
    for _ in 0..2000 {
        for f in &signalled {
            nix::unistd::write(f, &1u64.to_ne_bytes()).unwrap();
        }
    }
    let mut total = 0u64;
    for _ in 0..28 {
        match ctx.recv(&mut fx.vm, T) {
            ChannelMsg::Read { data, .. } => total += u64::from_le_bytes(data.try_into().unwrap()),
            other => panic!("expected READ, got {other:?}"),
        }
    }
    assert!(total >= 28 * 2000, "every signal counted: {total}");
    assert!(rss_kib(pid) < rss_full + 1024, "RSS grew with the signals");
    // One eventfd more: no room, so the channel hangs up rather than drop it. (The watched
    // eventfds may still have a READ or two to give first.)
    let one = eventfd();
    send_with_fds(&host, b"e", &[one.as_raw_fd()]);
    loop {
        match ctx.recv(&mut fx.vm, T) {
            ChannelMsg::Read { .. } => {}
            ChannelMsg::Receive { ids, data } => {
                assert!(ids.is_empty() && data.is_empty(), "{ids:?}");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    host.set_read_timeout(Some(T)).unwrap();
    assert_eq!(host.read(&mut [0u8; 8]).unwrap(), 0, "the host reads EOF");
    assert!(fx.daemon.wait_for_log("item table has no room", T));
    assert_ok(&ctx.destroy(&mut fx.vm), "CTX_DESTROY");
    assert_eq!(
        wait_fds_at_most(pid, fds_before),
        fds_before,
        "fds left behind"
    );
}

/// The host signals its eventfds and writes data, then closes everything in the middle: the
/// guest gets what was sent, one end of stream, and the eventfds it still holds stay usable
/// (the daemon keeps its own copies) until the context goes.
#[test]
fn a_host_that_closes_in_the_middle_of_eventfd_traffic() {
    let mut fx = setup("warn");
    let pid = fx.daemon.pid();
    let fds_before = fd_count(pid);
    let (ctx, host) = fx.open(1);
    let (a, b) = (eventfd(), eventfd());
    send_with_fds(&host, b"e", &[a.as_raw_fd(), b.as_raw_fd()]);
    let ChannelMsg::Receive { ids, .. } = ctx.recv(&mut fx.vm, T) else {
        panic!("expected RECEIVE");
    };
    let (ia, ib) = (ids[0].0, ids[1].0);
    let mut cmd = cd_header(11, 16).to_vec();
    cmd.extend_from_slice(&ia.to_le_bytes());
    cmd.extend_from_slice(&[0; 4]);
    assert_ok(&ctx.submit(&mut fx.vm, &cmd), "READ_EVENTFD_NEW");
    nix::unistd::write(&a, &5u64.to_ne_bytes()).unwrap();
    (&host).write_all(b"last words").unwrap();
    drop(host);
    drop(a);
    // What was sent arrives (in the rotation's order), then one end of stream.
    let (mut data, mut value, mut eof) = (Vec::new(), 0, false);
    while !eof {
        match ctx.recv(&mut fx.vm, T) {
            ChannelMsg::Receive { ids, data: d } if d.is_empty() && ids.is_empty() => eof = true,
            ChannelMsg::Receive { data: d, .. } => data.extend(d),
            ChannelMsg::Read { id, data: d, .. } => {
                assert_eq!(id, ia);
                value += u64::from_le_bytes(d.try_into().unwrap());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((data.as_slice(), value), (&b"last words"[..], 5));
    // The host closed its copy of `a`; the guest's WRITE to `b` still reaches the host's copy.
    ctx.write(&mut fx.vm, ib, &3u64.to_le_bytes(), false);
    let mut v = [0u8; 8];
    nix::unistd::read(&b, &mut v).unwrap();
    assert_eq!(u64::from_ne_bytes(v), 3);
    ctx.write(&mut fx.vm, ia, &1u64.to_le_bytes(), false);
    assert_ok(&ctx.destroy(&mut fx.vm), "CTX_DESTROY");
    assert_eq!(
        wait_fds_at_most(pid, fds_before),
        fds_before,
        "fds left behind"
    );
}
