//! SENDs that reach the daemon in one pass of the control queue (published together, one
//! kick): fd-less ones to a stream channel go out gathered, and nothing of what a SEND
//! promises changes: bytes in order, fds with their own message's bytes, every request
//! completed once, a slow host throttling as before, a dead host reported as before.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(10);

struct Setup {
    _daemon: Daemon,
    vm: TestVm,
    listener: UnixListener,
}

/// A daemon with channel 2, and a VM with a control queue of `queue` entries.
fn setup(queue: u16) -> Setup {
    let dir = temp_dir();
    let (path, listener): (PathBuf, UnixListener) = channel_listener(dir.path());
    let daemon = Daemon::start_in(
        dir,
        vec!["--channel".into(), format!("2:{}", path.display())],
    );
    let vm = TestVm::builder()
        .queue_size(queue)
        .connect(daemon.socket_path());
    Setup {
        _daemon: daemon,
        vm,
        listener,
    }
}

impl Setup {
    fn open(&mut self, ctx_id: u32) -> (CrossDomainContext, UnixStream) {
        let ctx = CrossDomainContext::open(&mut self.vm, ctx_id, 2);
        let host = accept_timeout(&self.listener, T).expect("the daemon did not connect");
        host.set_nonblocking(false).unwrap();
        (ctx, host)
    }

    /// SUBMIT_3Ds of `cmds` on context `ctx_id`, all found by the daemon in one pass.
    fn in_one_pass(&mut self, ctx_id: u32, cmds: &[Vec<u8>]) -> Vec<u16> {
        self.vm.batch(CONTROLQ, |vm| {
            cmds.iter().map(|c| vm.submit_3d(ctx_id, c, None)).collect()
        })
    }
}

/// A payload of `len` bytes carrying its sequence number `i`.
fn numbered(i: u32, len: usize) -> Vec<u8> {
    let mut m = vec![(i % 251) as u8; len];
    m[..4].copy_from_slice(&i.to_le_bytes());
    m
}

fn wait_ok(vm: &mut TestVm, heads: &[u16], what: &str) {
    for &h in heads {
        let r = vm
            .wait_for(CONTROLQ, h, T)
            .unwrap_or_else(|| panic!("{what}: request {h} never completed"));
        assert_ok(&r, what);
    }
}

/// Lengths that vary, so that message ends fall anywhere in a gathered write.
fn len_of(i: u32) -> usize {
    [5, 3744, 100, 4000, 17, 65_000][i as usize % 6]
}

#[test]
fn many_sends_in_one_pass_arrive_whole_and_in_order() {
    let mut s = setup(1024);
    let (_ctx, mut host) = s.open(1);
    let n = 200;
    let msgs: Vec<Vec<u8>> = (0..n).map(|i| numbered(i, len_of(i))).collect();
    let total: usize = msgs.iter().map(Vec::len).sum();
    let reader = std::thread::spawn(move || read_exact_timeout(&mut host, total, T));
    let cmds: Vec<Vec<u8>> = msgs.iter().map(|m| cd_send(m, &[])).collect();
    let heads = s.in_one_pass(1, &cmds);
    wait_ok(&mut s.vm, &heads, "gathered SEND");
    let got = reader.join().unwrap();
    assert_eq!(got, msgs.concat(), "bytes reordered, lost or repeated");
}

#[test]
fn a_send_with_an_fd_inside_a_pass_carries_the_fd_with_its_own_bytes() {
    let mut s = setup(256);
    let (_ctx, host) = s.open(1);
    let pipe_id = CD_READ_PIPE_ID_BASE + 1;
    let mut cmds: Vec<Vec<u8>> = (0..5).map(|i| cd_send(&numbered(i, 100), &[])).collect();
    cmds.push(cd_send(b"with-fd", &[(pipe_id, CD_ID_TYPE_READ_PIPE)]));
    cmds.extend((5..10).map(|i| cd_send(&numbered(i, 100), &[])));
    let heads = s.in_one_pass(1, &cmds);
    wait_ok(&mut s.vm, &heads, "SEND around one with an fd");
    let before: Vec<u8> = (0..5).flat_map(|i| numbered(i, 100)).collect();
    let after: Vec<u8> = (5..10).flat_map(|i| numbered(i, 100)).collect();
    // Read until the fd comes: the read that brings it ends with the fd's message.
    let mut got = Vec::new();
    let fds = loop {
        let (data, fds) = recv_with_fds(&host, 1 << 16, T);
        assert!(!data.is_empty(), "channel closed early");
        got.extend_from_slice(&data);
        if !fds.is_empty() {
            break fds;
        }
    };
    assert_eq!(fds.len(), 1, "the write end of the pipe, once");
    let mut expected = before.clone();
    expected.extend_from_slice(b"with-fd");
    assert_eq!(
        got, expected,
        "the fd came with other bytes than its SEND's"
    );
    let mut host = host;
    assert_eq!(read_exact_timeout(&mut host, after.len(), T), after);
}

/// The host does not read: the pass fills its socket, the rest is held (up to the per-peer
/// budget, then copied), and everything arrives in order once it reads, every request OK.
#[test]
fn a_full_host_mid_pass_holds_the_rest_and_delivers_it_in_order() {
    const HELD: usize = 64; // MAX_HELD_PER_PEER
    let mut s = setup(2048);
    let (_ctx, mut host) = s.open(1);
    let n = 400;
    let cmds: Vec<Vec<u8>> = (0..n).map(|i| cd_send(&numbered(i, 3744), &[])).collect();
    let heads = s.in_one_pass(1, &cmds);
    assert_resp(
        &s.vm.get_display_info(),
        RESP_OK_DISPLAY_INFO,
        "GET_DISPLAY_INFO behind the SENDs",
    );
    let pending: Vec<u16> = heads
        .iter()
        .copied()
        .filter(|&h| !s.vm.is_done(CONTROLQ, h))
        .collect();
    assert_eq!(
        pending.len(),
        HELD,
        "requests held for a host that does not read"
    );
    let expected: Vec<u8> = (0..n).flat_map(|i| numbered(i, 3744)).collect();
    let got = read_exact_timeout(&mut host, expected.len(), T);
    assert!(got == expected, "bytes reordered, lost or repeated");
    wait_ok(&mut s.vm, &heads, "SEND to a slow host");
}

/// A host that hung up: every SEND of the pass gets the error a lone SEND gets.
#[test]
fn sends_in_one_pass_to_a_closed_host_each_fail_as_a_lone_send_does() {
    let mut s = setup(256);
    let (ctx, host) = s.open(1);
    drop(host);
    let lone = ctx.try_send(&mut s.vm, b"lone", &[]);
    assert!(
        resp_type(&lone) != RESP_OK_NODATA,
        "a SEND to a closed host"
    );
    let cmds: Vec<Vec<u8>> = (0..20).map(|i| cd_send(&numbered(i, 100), &[])).collect();
    let heads = s.in_one_pass(1, &cmds);
    for h in heads {
        let r = s.vm.wait_for(CONTROLQ, h, T).expect("SEND completes");
        assert_eq!(resp_type(&r), resp_type(&lone), "request {h}");
    }
}

/// SENDs then CTX_DESTROY in one pass: the SENDs' bytes reach the host before it closes.
#[test]
fn a_context_destroyed_in_the_same_pass_sends_its_gathered_bytes_first() {
    let mut s = setup(256);
    let (_ctx, mut host) = s.open(1);
    let msgs: Vec<Vec<u8>> = (0..30).map(|i| numbered(i, 1000)).collect();
    let heads = s.vm.batch(CONTROLQ, |vm| {
        let mut heads: Vec<u16> = msgs
            .iter()
            .map(|m| vm.submit_3d(1, &cd_send(m, &[]), None))
            .collect();
        heads.push(vm.submit(CONTROLQ, &[&req_ctx_destroy(1)], &[HDR_SIZE as u32]));
        heads
    });
    wait_ok(&mut s.vm, &heads, "SENDs and CTX_DESTROY");
    assert_eq!(read_to_end_timeout(&mut host, T), msgs.concat());
}

/// A socket the host hands over may keep message boundaries (`SOCK_SEQPACKET`): adopted as a
/// channel, SENDs of one pass still reach it one message each.
#[test]
fn an_adopted_seqpacket_socket_gets_one_message_per_send() {
    use nix::sys::socket::{recv, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
    use std::os::fd::AsRawFd;
    const DBUS: u32 = 0x12;
    let dir = temp_dir();
    let (path, listener) = channel_listener(dir.path());
    let daemon = Daemon::builder().dir(dir).channel(DBUS, &path).spawn();
    let mut vm = TestVm::builder()
        .queue_size(256)
        .connect(daemon.socket_path());
    let ctx = CrossDomainContext::open(&mut vm, 1, DBUS);
    let host = accept_timeout(&listener, T).expect("channel");
    host.set_nonblocking(false).unwrap();
    let (theirs, remote) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    send_with_fds(&host, b"here", &[theirs.as_raw_fd()]);
    drop(theirs);
    let id = match ctx.recv(&mut vm, T) {
        ChannelMsg::Receive { ids, .. } => {
            assert_eq!(ids.len(), 1);
            assert_eq!(ids[0].1, CD_ID_TYPE_SOCKET);
            ids[0].0
        }
        other => panic!("expected RECEIVE, got {other:?}"),
    };
    let uuid = [0x33u8; 16];
    assert_ok(
        &ctx.submit(&mut vm, &cd_assign_socket_uuid(uuid, id)),
        "ASSIGN",
    );
    let adopted = CrossDomainContext::create(&mut vm, 2);
    let init = cd_init_36(
        adopted.query_ring.res_id,
        adopted.channel_ring.res_id,
        CD_CHANNEL_INTERNAL_SOCKET,
        uuid,
    );
    assert_ok(&adopted.submit(&mut vm, &init), "adopt");
    let msgs: Vec<Vec<u8>> = (0..8).map(|i| numbered(i, 10 + i as usize)).collect();
    let heads = vm.batch(CONTROLQ, |vm| {
        msgs.iter()
            .map(|m| vm.submit_3d(2, &cd_send(m, &[]), None))
            .collect::<Vec<_>>()
    });
    wait_ok(&mut vm, &heads, "SEND on an adopted seqpacket socket");
    for m in &msgs {
        let mut buf = [0u8; 256];
        let n = recv(remote.as_raw_fd(), &mut buf, MsgFlags::empty()).unwrap();
        assert_eq!(&buf[..n], &m[..], "one message per SEND");
    }
}
