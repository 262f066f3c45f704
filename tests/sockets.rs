//! Sockets host → guest and internal sockets through vhost-user (docs/protocol.md §3.3, §3.10,
//! §5.9): a Unix socket from the host becomes identifier type 7 on D-Bus channels and hangs
//! other channels up; ASSIGN_SOCKET_UUID (command 13) parks it for the VM, refusing a wrong
//! type, a uuid parked twice and a 65th socket; a 36-byte INIT with channel type 0xFFFFFFFF
//! adopts it once and carries bytes and fds both ways; reset and disconnect close what is
//! parked.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};
use support::*;

const T: Duration = Duration::from_secs(10);
const DBUS: u32 = 0x12;
const PLAIN: u32 = 2;
const PARKED_MAX: usize = 64;

struct Fx {
    daemon: Daemon,
    vm: TestVm,
    dbus: UnixListener,
    plain: UnixListener,
}

fn setup() -> Fx {
    let dir = temp_dir();
    let (dbus_path, dbus) = channel_listener(dir.path());
    let plain_dir = temp_dir();
    let (plain_path, plain) = channel_listener(plain_dir.path());
    std::mem::forget(plain_dir);
    let daemon = Daemon::builder()
        .dir(dir)
        .rust_log("debug")
        .channel(DBUS, &dbus_path)
        .channel(PLAIN, &plain_path)
        .spawn();
    let vm = TestVm::connect(daemon.socket_path());
    Fx {
        daemon,
        vm,
        dbus,
        plain,
    }
}

impl Fx {
    /// A context on `channel_type` (20-byte INIT, as the D-Bus guest sends) and the host end.
    fn open(&mut self, ctx_id: u32, channel_type: u32) -> (CrossDomainContext, UnixStream) {
        let ctx = CrossDomainContext::open(&mut self.vm, ctx_id, channel_type);
        let l = if channel_type == DBUS {
            &self.dbus
        } else {
            &self.plain
        };
        let host = accept_timeout(l, T).expect("channel");
        host.set_nonblocking(false).unwrap();
        (ctx, host)
    }

    /// A new context that adopts the socket parked under `uuid`; the INIT's response.
    fn adopt(&mut self, ctx_id: u32, uuid: [u8; 16]) -> (CrossDomainContext, Vec<u8>) {
        let ctx = CrossDomainContext::create(&mut self.vm, ctx_id);
        let init = cd_init_36(
            ctx.query_ring.res_id,
            ctx.channel_ring.res_id,
            CD_CHANNEL_INTERNAL_SOCKET,
            uuid,
        );
        let r = ctx.submit(&mut self.vm, &init);
        (ctx, r)
    }

    fn assign(&mut self, ctx: &CrossDomainContext, uuid: [u8; 16], id: u32) -> Vec<u8> {
        ctx.submit(&mut self.vm, &cd_assign_socket_uuid(uuid, id))
    }
}

/// A connected Unix stream socket pair: (the end the host service passes, the end it keeps).
fn socket_pair() -> (UnixStream, UnixStream) {
    UnixStream::pair().unwrap()
}

fn eventfd() -> OwnedFd {
    EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
        .unwrap()
        .into()
}

/// The host sends `fds` with `data`; returns the guest's identifiers.
fn pass(
    fx: &mut Fx,
    ctx: &CrossDomainContext,
    host: &UnixStream,
    data: &[u8],
    fds: &[i32],
) -> Vec<(u32, u32, u32)> {
    send_with_fds(host, data, fds);
    match ctx.recv(&mut fx.vm, T) {
        ChannelMsg::Receive { ids, data: got } => {
            assert_eq!(got, data);
            ids
        }
        other => panic!("expected RECEIVE, got {other:?}"),
    }
}

/// The next message is the empty RECEIVE of a hang-up, and the host reads end of file.
fn assert_hung_up(fx: &mut Fx, ctx: &CrossDomainContext, host: &mut UnixStream) {
    assert_eq!(
        ctx.recv(&mut fx.vm, T),
        ChannelMsg::Receive {
            ids: vec![],
            data: vec![]
        },
        "one empty RECEIVE"
    );
    assert_eq!(read_to_end_timeout(host, T), b"", "the host reads EOF");
}

fn uuid(n: u32) -> [u8; 16] {
    let mut u = [0x5au8; 16];
    u[..4].copy_from_slice(&n.to_le_bytes());
    u
}

fn wait_fds(pid: u32, want: usize) -> usize {
    let deadline = Instant::now() + T;
    while fd_count(pid) > want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    fd_count(pid)
}

#[test]
fn a_host_socket_becomes_identifier_type_7_on_a_dbus_channel() {
    let mut fx = setup();
    let (ctx, host) = fx.open(1, DBUS);
    let (stream, _keep) = socket_pair();
    let (seq, _keep2) = nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    let mem = memfd_with(b"abc");
    let fds = [stream.as_raw_fd(), mem.as_raw_fd(), seq.as_raw_fd()];
    let ids = pass(&mut fx, &ctx, &host, b"portal reply", &fds);
    assert_eq!(
        ids,
        [
            (2, CD_ID_TYPE_SOCKET, 0),
            (3, CD_ID_TYPE_VIRTGPU_BLOB, 3),
            (4, CD_ID_TYPE_SOCKET, 0)
        ]
    );
}

#[test]
fn a_socket_on_a_channel_that_does_not_carry_sockets_hangs_it_up() {
    let mut fx = setup();
    let (ctx, mut host) = fx.open(1, PLAIN);
    let (s, _keep) = socket_pair();
    let mem = memfd_with(b"m");
    send_with_fds(&host, b"x", &[mem.as_raw_fd(), s.as_raw_fd()]);
    assert_hung_up(&mut fx, &ctx, &mut host);
    assert!(fx.daemon.wait_for_log(
        "does not carry socket fds: its fds are memory+pipe+eventfd",
        T
    ));
    // On D-Bus, a socket that is not a Unix stream or seqpacket socket hangs up too.
    let (ctx, mut host) = fx.open(2, DBUS);
    let (d, _e) = std::os::unix::net::UnixDatagram::pair().unwrap();
    send_with_fds(&host, b"x", &[d.as_raw_fd()]);
    assert_hung_up(&mut fx, &ctx, &mut host);
}

#[test]
fn assign_refuses_a_wrong_type_an_unknown_id_and_a_uuid_parked_twice() {
    let mut fx = setup();
    let (ctx, host) = fx.open(1, DBUS);
    let (a, _ka) = socket_pair();
    let (b, _kb) = socket_pair();
    let efd = eventfd();
    let fds = [a.as_raw_fd(), efd.as_raw_fd(), b.as_raw_fd()];
    let ids = pass(&mut fx, &ctx, &host, b"s", &fds);
    let (sa, ev, sb) = (ids[0].0, ids[1].0, ids[2].0);
    // Wrong type: refused, and the eventfd stays an item (READ_EVENTFD_NEW still finds it).
    let r = fx.assign(&ctx, uuid(1), ev);
    assert_resp(&r, RESP_ERR_INVALID_PARAMETER, "ASSIGN of an eventfd");
    let mut watch = cd_header(11, 16).to_vec();
    watch.extend_from_slice(&ev.to_le_bytes());
    watch.extend_from_slice(&[0; 4]);
    assert_ok(
        &ctx.submit(&mut fx.vm, &watch),
        "the eventfd is still there",
    );
    for id in [0, 1, 99, 0x8000_0001] {
        let r = fx.assign(&ctx, uuid(1), id);
        assert_resp(&r, RESP_ERR_INVALID_PARAMETER, "ASSIGN of an unknown id");
    }
    // Short or long command 13.
    let mut short = cd_assign_socket_uuid(uuid(1), sa);
    short.truncate(28);
    short[2..4].copy_from_slice(&28u16.to_le_bytes());
    assert_resp(
        &ctx.submit(&mut fx.vm, &short),
        RESP_ERR_INVALID_PARAMETER,
        "28-byte ASSIGN",
    );
    assert_ok(&fx.assign(&ctx, uuid(1), sa), "ASSIGN");
    // The item is gone from the context: assigning it again is an unknown id.
    let r = fx.assign(&ctx, uuid(2), sa);
    assert_resp(&r, RESP_ERR_INVALID_PARAMETER, "ASSIGN of a parked socket");
    // A uuid already parked is refused, never overwritten; the second socket stays.
    let r = fx.assign(&ctx, uuid(1), sb);
    assert_resp(&r, RESP_ERR_INVALID_PARAMETER, "duplicate uuid");
    assert_ok(&fx.assign(&ctx, uuid(2), sb), "ASSIGN under another uuid");
    // Both adopt, each the right one: a's peer hears what goes into the uuid-1 context.
    let (c1, r) = fx.adopt(2, uuid(1));
    assert_ok(&r, "adopt uuid 1");
    let (c2, r) = fx.adopt(3, uuid(2));
    assert_ok(&r, "adopt uuid 2");
    c1.send(&mut fx.vm, b"to a", &[]);
    c2.send(&mut fx.vm, b"to b", &[]);
    let (mut ka, mut kb) = (_ka, _kb);
    assert_eq!(read_exact_timeout(&mut ka, 4, T), b"to a");
    assert_eq!(read_exact_timeout(&mut kb, 4, T), b"to b");
}

#[test]
fn an_unknown_uuid_connects_nothing_and_adoption_is_one_shot() {
    let mut fx = setup();
    let (ctx, r) = fx.adopt(1, uuid(7));
    assert_resp(
        &r,
        RESP_ERR_INVALID_PARAMETER,
        "INIT-36 with an unknown uuid",
    );
    // Nothing connected: the context is still uninitialised and may INIT normally.
    let init = cd_init(ctx.query_ring.res_id, ctx.channel_ring.res_id, DBUS);
    assert_ok(&ctx.submit(&mut fx.vm, &init), "INIT after the failed one");
    let host = accept_timeout(&fx.dbus, T).expect("channel");
    host.set_nonblocking(false).unwrap();
    // 0xFFFFFFFF in the 20-, 24- and 16-byte forms is a type like any other: not configured.
    let other = CrossDomainContext::create(&mut fx.vm, 2);
    let (q, c) = (other.query_ring.res_id, other.channel_ring.res_id);
    for init in [
        cd_init(q, c, CD_CHANNEL_INTERNAL_SOCKET),
        cd_init_v24(q, c, CD_CHANNEL_INTERNAL_SOCKET, 1),
        cd_init_legacy(c, CD_CHANNEL_INTERNAL_SOCKET),
    ] {
        assert_resp(
            &other.submit(&mut fx.vm, &init),
            RESP_ERR_INVALID_PARAMETER,
            "0xFFFFFFFF without a uuid",
        );
    }
    // Park one, adopt it, and the uuid is gone.
    let (s, _keep) = socket_pair();
    let ids = pass(&mut fx, &ctx, &host, b"s", &[s.as_raw_fd()]);
    assert_ok(&fx.assign(&ctx, uuid(7), ids[0].0), "ASSIGN");
    let (_adopted, r) = fx.adopt(3, uuid(7));
    assert_ok(&r, "adopt");
    let (_again, r) = fx.adopt(4, uuid(7));
    assert_resp(&r, RESP_ERR_INVALID_PARAMETER, "adopt twice");
}

/// Hand the guest `n` sockets on `ctx` (28 per message); returns their ids and the host ends.
fn many_sockets(
    fx: &mut Fx,
    ctx: &CrossDomainContext,
    host: &UnixStream,
    n: usize,
) -> (Vec<u32>, Vec<UnixStream>) {
    let mut ids = Vec::new();
    let mut keep = Vec::new();
    while ids.len() < n {
        let k = (n - ids.len()).min(CD_MAX_IDENTIFIERS);
        let pairs: Vec<_> = (0..k).map(|_| socket_pair()).collect();
        let raw: Vec<_> = pairs.iter().map(|(s, _)| s.as_raw_fd()).collect();
        let got = pass(fx, ctx, host, b"n", &raw);
        ids.extend(got.iter().map(|&(id, ty, _)| {
            assert_eq!(ty, CD_ID_TYPE_SOCKET);
            id
        }));
        keep.extend(pairs.into_iter().map(|(_, k)| {
            // A socket the daemon never closes fails the test instead of hanging it.
            k.set_read_timeout(Some(T)).unwrap();
            k
        }));
    }
    (ids, keep)
}

#[test]
fn the_vm_parks_at_most_64_sockets() {
    let mut fx = setup();
    // Two contexts share the VM's table.
    let (c1, h1) = fx.open(1, DBUS);
    let (c2, h2) = fx.open(2, DBUS);
    let (ids1, _k1) = many_sockets(&mut fx, &c1, &h1, PARKED_MAX / 2);
    let (ids2, _k2) = many_sockets(&mut fx, &c2, &h2, PARKED_MAX / 2 + 2);
    for (i, &id) in ids1.iter().enumerate() {
        assert_ok(&fx.assign(&c1, uuid(i as u32), id), "ASSIGN");
    }
    for (i, &id) in ids2[..PARKED_MAX / 2].iter().enumerate() {
        assert_ok(&fx.assign(&c2, uuid(1000 + i as u32), id), "ASSIGN");
    }
    let extra = ids2[PARKED_MAX / 2];
    for _ in 0..2 {
        let r = fx.assign(&c2, uuid(5000), extra);
        assert_resp(&r, RESP_ERR_OUT_OF_MEMORY, "the 65th parked socket");
    }
    let warning = "limit \"parked sockets per VM\" is 64";
    assert!(fx.daemon.wait_for_log(warning, T));
    let log = fx.daemon.log();
    assert_eq!(log.matches(warning).count(), 1, "warned once:\n{log}");
    // Adopting one makes room; the refused socket was kept and now parks.
    let (_adopted, r) = fx.adopt(3, uuid(0));
    assert_ok(&r, "adopt");
    assert_ok(
        &fx.assign(&c2, uuid(5000), extra),
        "ASSIGN after room was made",
    );
}

#[test]
fn reset_and_disconnect_close_parked_sockets_and_leave_no_fd_behind() {
    let mut fx = setup();
    let pid = fx.daemon.pid();
    let before = fd_count(pid);
    let (ctx, host) = fx.open(1, DBUS);
    let (ids, mut keep) = many_sockets(&mut fx, &ctx, &host, 5);
    for (i, &id) in ids.iter().enumerate() {
        assert_ok(&fx.assign(&ctx, uuid(i as u32), id), "ASSIGN");
    }
    drop(host);
    // Guest reset (a stop alone may be a pause: the restart with re-laid rings shows the
    // reset): contexts go, and so does every parked socket.
    fx.vm.stop_queues();
    fx.vm.start_queues();
    for k in &mut keep {
        assert_eq!(
            read_to_end_timeout(k, T),
            b"",
            "a parked socket closed by the reset"
        );
    }
    assert_eq!(
        wait_fds(pid, before),
        before,
        "fds left behind by the reset"
    );
    let (_c, r) = fx.adopt(1, uuid(0));
    assert_resp(&r, RESP_ERR_INVALID_PARAMETER, "adopt after the reset");
    // VMM disconnect: the same, and the next VMM finds nothing parked.
    let (ctx, host) = fx.open(2, DBUS);
    let (ids, mut keep) = many_sockets(&mut fx, &ctx, &host, 3);
    for (i, &id) in ids.iter().enumerate() {
        assert_ok(&fx.assign(&ctx, uuid(i as u32), id), "ASSIGN");
    }
    drop(host);
    let Fx {
        daemon,
        vm,
        dbus,
        plain,
    } = fx;
    vm.disconnect();
    for k in &mut keep {
        assert_eq!(
            read_to_end_timeout(k, T),
            b"",
            "a parked socket closed at disconnect"
        );
    }
    let vm = TestVm::connect(daemon.socket_path());
    assert_eq!(
        wait_fds(pid, before),
        before,
        "fds left behind by the disconnect"
    );
    let mut fx = Fx {
        daemon,
        vm,
        dbus,
        plain,
    };
    let (_c, r) = fx.adopt(1, uuid(0));
    assert_resp(&r, RESP_ERR_INVALID_PARAMETER, "adopt in the next VMM");
}

#[test]
fn bytes_and_fds_cross_an_adopted_socket_both_ways() {
    let mut fx = setup();
    let (ctx, host) = fx.open(1, DBUS);
    let (theirs, mut remote) = socket_pair();
    let ids = pass(
        &mut fx,
        &ctx,
        &host,
        b"OpenPipeWireRemote",
        &[theirs.as_raw_fd()],
    );
    drop(theirs);
    assert_eq!(ids, [(2, CD_ID_TYPE_SOCKET, 0)]);
    assert_ok(&fx.assign(&ctx, uuid(9), 2), "ASSIGN");
    let (pw, r) = fx.adopt(2, uuid(9));
    assert_ok(&r, "adopt");
    // Guest → host: bytes, a read pipe (the host gets its write end) and a host blob.
    let data = pattern(3000, 1);
    let pipe_id = CD_READ_PIPE_ID_BASE + 1;
    pw.send(&mut fx.vm, &data, &[(pipe_id, CD_ID_TYPE_READ_PIPE)]);
    let (got, fds) = recv_with_fds(&remote, 4096, T);
    assert_eq!(got, data, "bytes exact on the host end");
    assert_eq!(fds.len(), 1);
    let mut w = std::fs::File::from(fds.into_iter().next().unwrap());
    w.write_all(b"through the pipe").unwrap();
    drop(w);
    let mut read = Vec::new();
    loop {
        match pw.recv(&mut fx.vm, T) {
            ChannelMsg::Read { id, hang_up, data } => {
                assert_eq!(id, pipe_id);
                read.extend_from_slice(&data);
                if hang_up {
                    break;
                }
            }
            other => panic!("expected READ, got {other:?}"),
        }
    }
    assert_eq!(read, b"through the pipe");
    // Host → guest: bytes with memory, an eventfd and a further socket (the policy of 0x12,
    // where the socket came from, carries them all).
    let mem = memfd_with(&pattern(100, 2));
    let efd = eventfd();
    let (s2, _k2) = socket_pair();
    let fds = [mem.as_raw_fd(), efd.as_raw_fd(), s2.as_raw_fd()];
    let ids = pass(&mut fx, &pw, &remote, b"node", &fds);
    let types: Vec<_> = ids.iter().map(|&(_, t, s)| (t, s)).collect();
    assert_eq!(
        types,
        [
            (CD_ID_TYPE_VIRTGPU_BLOB, 100),
            (5, 0),
            (CD_ID_TYPE_SOCKET, 0)
        ]
    );
    // The host end hangs up: one empty RECEIVE.
    remote.write_all(b"bye").unwrap();
    assert_eq!(
        pw.recv(&mut fx.vm, T),
        ChannelMsg::Receive {
            ids: vec![],
            data: b"bye".to_vec()
        }
    );
    drop(remote);
    assert_eq!(
        pw.recv(&mut fx.vm, T),
        ChannelMsg::Receive {
            ids: vec![],
            data: vec![]
        }
    );
    drop(host);
}

/// A context on an adopted socket counts as the channel the socket came from (SIGUSR1's
/// per-channel counters), never under the internal-socket type 0xffffffff.
#[test]
fn an_adopted_socket_counts_as_the_channel_it_came_from() {
    let mut fx = setup();
    let (ctx, host) = fx.open(1, DBUS);
    let (theirs, remote) = socket_pair();
    let ids = pass(&mut fx, &ctx, &host, b"remote", &[theirs.as_raw_fd()]);
    drop(theirs);
    assert_eq!(ids, [(2, CD_ID_TYPE_SOCKET, 0)]);
    assert_ok(&fx.assign(&ctx, uuid(3), 2), "ASSIGN");
    let (pw, r) = fx.adopt(2, uuid(3));
    assert_ok(&r, "adopt");
    pw.send(&mut fx.vm, &pattern(1234, 5), &[]);
    let (got, _) = recv_with_fds(&remote, 4096, T);
    assert_eq!(got.len(), 1234);
    fx.daemon.signal(nix::sys::signal::Signal::SIGUSR1);
    let line = "counters: channel 18 (0x12, dbus-session): contexts 2 opened, 2 open; guest to \
                host 1 messages, 1234 bytes";
    assert!(
        fx.daemon.wait_for_log(line, T),
        "no '{line}' in the log:\n{}",
        fx.daemon.log()
    );
    assert!(
        !fx.daemon.log().contains("counters: channel 4294967295"),
        "counted under the internal-socket type:\n{}",
        fx.daemon.log()
    );
    drop((host, remote));
}

/// A daemon whose channel 2 has the policy `fds`, given as `--channel 2:PATH,fds=LIST`, and one
/// context on it with its host end.
fn with_policy(fds: &str) -> (Daemon, TestVm, CrossDomainContext, UnixStream) {
    let dir = temp_dir();
    let (path, listener) = channel_listener(dir.path());
    let daemon = Daemon::builder()
        .dir(dir)
        .rust_log("debug")
        .arg("--channel")
        .arg(format!("{PLAIN}:{},fds={fds}", path.display()))
        .spawn();
    assert!(
        daemon.log().contains(&format!(
            "channel 2 (camera): {} (fds: {fds})",
            path.display()
        )),
        "{}",
        daemon.log()
    );
    let mut vm = TestVm::connect(daemon.socket_path());
    let ctx = CrossDomainContext::open(&mut vm, 1, PLAIN);
    let host = accept_timeout(&listener, T).expect("channel");
    host.set_nonblocking(false).unwrap();
    (daemon, vm, ctx, host)
}

#[test]
fn a_channel_with_fds_none_refuses_guest_fds_and_hangs_up_on_host_fds() {
    let (daemon, mut vm, ctx, mut host) = with_policy("none");
    // A blob and a read pipe are refused before anything is sent (a blob that is not even a
    // host blob: the policy is checked first, so the error is not INVALID_RESOURCE_ID).
    let blob = [(ctx.query_ring.res_id, CD_ID_TYPE_VIRTGPU_BLOB)];
    let pipe = [(CD_READ_PIPE_ID_BASE + 1, CD_ID_TYPE_READ_PIPE)];
    for ids in [&blob[..], &pipe[..]] {
        let r = ctx.try_send(&mut vm, b"refused", ids);
        assert_eq!(resp_type(&r), RESP_ERR_INVALID_PARAMETER, "{ids:?}");
    }
    assert!(daemon.wait_for_log("does not carry memory fds (its fds are: none)", T));
    // Bytes alone still go through, and nothing of the refused SENDs came before them.
    ctx.send(&mut vm, b"bytes only", &[]);
    let (got, fds) = recv_with_fds(&host, 64, T);
    assert_eq!((&got[..], fds.len()), (&b"bytes only"[..], 0));
    // A memfd from the host hangs the channel up.
    let mem = memfd_with(b"m");
    send_with_fds(&host, b"x", &[mem.as_raw_fd()]);
    assert_eq!(
        ctx.recv(&mut vm, T),
        ChannelMsg::Receive {
            ids: vec![],
            data: vec![]
        },
        "one empty RECEIVE"
    );
    assert_eq!(read_to_end_timeout(&mut host, T), b"", "the host reads EOF");
    assert!(daemon.wait_for_log("does not carry memory fds: its fds are none", T));
}

#[test]
fn fds_with_socket_lets_a_host_socket_through_on_a_non_dbus_channel() {
    let (_daemon, mut vm, ctx, host) = with_policy("memory+pipe+eventfd+socket");
    let (theirs, _keep) = socket_pair();
    let mem = memfd_with(b"abc");
    send_with_fds(&host, b"remote", &[theirs.as_raw_fd(), mem.as_raw_fd()]);
    match ctx.recv(&mut vm, T) {
        ChannelMsg::Receive { ids, data } => {
            assert_eq!(data, b"remote");
            assert_eq!(
                ids,
                [(2, CD_ID_TYPE_SOCKET, 0), (3, CD_ID_TYPE_VIRTGPU_BLOB, 3)]
            );
        }
        other => panic!("expected RECEIVE, got {other:?}"),
    }
}
