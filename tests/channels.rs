//! Cross-domain channels end to end through vhost-user: bytes, pipes and fds both ways, host
//! hang-up, several contexts, and VMM reconnects.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(10);

struct Setup {
    daemon: Daemon,
    vm: TestVm,
    listeners: Vec<(u32, UnixListener)>,
}

/// A daemon with one host listener per channel type, and a connected VM.
fn setup(types: &[u32]) -> Setup {
    setup_with(types, TestVm::builder())
}

fn setup_with(types: &[u32], vm: TestVmBuilder) -> Setup {
    let dir = temp_dir();
    let mut args: Vec<String> = Vec::new();
    let mut listeners = Vec::new();
    for &t in types {
        let (path, l): (PathBuf, UnixListener) = channel_listener(dir.path());
        args.push("--channel".into());
        args.push(format!("{t}:{}", path.display()));
        listeners.push((t, l));
    }
    let daemon = Daemon::start_in(dir, args);
    let vm = vm.connect(daemon.socket_path());
    Setup {
        daemon,
        vm,
        listeners,
    }
}

impl Setup {
    /// Opens a context on `channel_type` and accepts the daemon's connection on the host side.
    fn open(&mut self, ctx_id: u32, channel_type: u32) -> (CrossDomainContext, UnixStream) {
        let ctx = CrossDomainContext::open(&mut self.vm, ctx_id, channel_type);
        let l = &self
            .listeners
            .iter()
            .find(|(t, _)| *t == channel_type)
            .expect("listener")
            .1;
        let host = accept_timeout(l, T).expect("the daemon did not connect the channel");
        host.set_nonblocking(false).unwrap();
        (ctx, host)
    }
}

fn expect_receive(msg: ChannelMsg) -> (Vec<(u32, u32, u32)>, Vec<u8>) {
    match msg {
        ChannelMsg::Receive { ids, data } => (ids, data),
        other => panic!("expected RECEIVE, got {other:?}"),
    }
}

#[test]
fn bytes_guest_to_host_in_order() {
    let mut s = setup(&[2]);
    let (ctx, mut host) = s.open(1, 2);
    let mut expected = Vec::new();
    for (i, len) in [1usize, 100, 3744, 1, 3744, 100].into_iter().enumerate() {
        let data = pattern(len, i as u32);
        ctx.send(&mut s.vm, &data, &[]);
        expected.extend_from_slice(&data);
    }
    let got = read_exact_timeout(&mut host, expected.len(), T);
    assert_eq!(got, expected);
}

#[test]
fn bytes_host_to_guest_lock_step() {
    let mut s = setup(&[2]);
    let (ctx, mut host) = s.open(1, 2);
    for (i, len) in [1usize, 100, 3744, 1, 3744, 100].into_iter().enumerate() {
        let data = pattern(len, 100 + i as u32);
        host.write_all(&data).unwrap();
        let (ids, got) = expect_receive(ctx.recv(&mut s.vm, T));
        assert!(ids.is_empty());
        assert_eq!(got, data, "message {i} of {len} bytes");
    }
}

#[test]
fn bytes_host_to_guest_stream_is_split_at_3744() {
    let mut s = setup(&[2]);
    let (ctx, mut host) = s.open(1, 2);
    let data = pattern(50_000, 7);
    host.write_all(&data).unwrap();
    let mut got = Vec::new();
    while got.len() < data.len() {
        let (ids, chunk) = expect_receive(ctx.recv(&mut s.vm, T));
        assert!(ids.is_empty());
        assert!(
            !chunk.is_empty() && chunk.len() <= 3744,
            "chunk of {}",
            chunk.len()
        );
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, data);
}

#[test]
fn poll_waits_until_the_host_writes() {
    let mut s = setup(&[2]);
    let (ctx, mut host) = s.open(1, 2);
    let head = ctx.poll_next(&mut s.vm);
    std::thread::sleep(Duration::from_millis(200));
    assert!(!s.vm.is_done(CONTROLQ, head), "POLL completed without data");
    // Other requests are served while the POLL is pending.
    assert_resp(
        &s.vm.get_capset_info(0),
        RESP_OK_CAPSET_INFO,
        "GET_CAPSET_INFO during POLL",
    );
    host.write_all(b"late").unwrap();
    let (_, data) = expect_receive(ctx.wait_poll(&mut s.vm, head, T).expect("POLL"));
    assert_eq!(data, b"late");
}

#[test]
fn read_pipe_streams_one_mib_to_the_guest() {
    let mut s = setup(&[2]);
    let (ctx, host) = s.open(1, 2);
    let pipe_id = CD_READ_PIPE_ID_BASE + 1;
    ctx.send(
        &mut s.vm,
        b"give me data",
        &[(pipe_id, CD_ID_TYPE_READ_PIPE)],
    );
    let (data, mut fds) = recv_with_fds(&host, 4096, T);
    assert_eq!(data, b"give me data");
    assert_eq!(fds.len(), 1, "the write end of the pipe");
    let payload = pattern(1 << 20, 3);
    let writer = {
        let fd: OwnedFd = fds.pop().unwrap();
        let payload = payload.clone();
        std::thread::spawn(move || {
            let mut w = std::fs::File::from(fd);
            w.write_all(&payload).unwrap();
        })
    };
    let mut got = Vec::new();
    loop {
        match ctx.recv(&mut s.vm, T) {
            ChannelMsg::Read { id, hang_up, data } => {
                assert_eq!(id, pipe_id);
                assert!(data.len() <= 4072);
                got.extend_from_slice(&data);
                if hang_up {
                    assert!(data.is_empty());
                    break;
                }
            }
            other => panic!("expected READ, got {other:?}"),
        }
    }
    writer.join().unwrap();
    assert_eq!(got.len(), payload.len());
    assert_eq!(got, payload);
    // The next read pipe gets the next id; a wrong prediction is refused.
    let r = ctx.try_send(&mut s.vm, b"x", &[(pipe_id + 5, CD_ID_TYPE_READ_PIPE)]);
    assert_resp(&r, RESP_ERR_INVALID_PARAMETER, "mispredicted read pipe id");
}

#[test]
fn write_pipe_carries_one_mib_to_the_host() {
    let mut s = setup(&[2]);
    let (ctx, host) = s.open(1, 2);
    let (mut r, w) = pipe();
    send_with_fds(&host, b"here is a pipe", &[w.as_raw_fd()]);
    drop(w);
    let (ids, data) = expect_receive(ctx.recv(&mut s.vm, T));
    assert_eq!(data, b"here is a pipe");
    assert_eq!(ids.len(), 1);
    let (id, ty, size) = ids[0];
    assert_eq!(ty, CD_ID_TYPE_WRITE_PIPE, "write pipes are type 4");
    assert_eq!(size, 0);
    assert_eq!(id, 2, "first item id");
    let payload = pattern(1 << 20, 9);
    let reader = std::thread::spawn(move || read_to_end_timeout(&mut r, T));
    let chunks: Vec<&[u8]> = payload.chunks(4072).collect();
    for (i, c) in chunks.iter().enumerate() {
        ctx.write(&mut s.vm, id, c, i == chunks.len() - 1);
    }
    let got = reader.join().unwrap();
    assert_eq!(got.len(), payload.len());
    assert_eq!(got, payload);
    // The item is gone after hang_up.
    assert_resp(
        &ctx.try_write(&mut s.vm, id, b"more", false),
        RESP_ERR_INVALID_PARAMETER,
        "WRITE after hang_up",
    );
}

#[test]
fn host_fds_become_identifiers_in_order() {
    let mut s = setup(&[2]);
    let (ctx, host) = s.open(1, 2);
    let mem = memfd_with(&pattern(5000, 1));
    let (_r, w) = pipe();
    let efd = nix::sys::eventfd::EventFd::new().unwrap();
    send_with_fds(
        &host,
        b"fds",
        &[mem.as_raw_fd(), efd.as_raw_fd(), w.as_raw_fd()],
    );
    let (ids, data) = expect_receive(ctx.recv(&mut s.vm, T));
    assert_eq!(data, b"fds");
    // After the 20-byte INIT an eventfd is type 5 (tests/eventfds.rs has the other forms).
    assert_eq!(
        ids,
        vec![
            (2, CD_ID_TYPE_VIRTGPU_BLOB, 5000),
            (3, 5, 0),
            (4, CD_ID_TYPE_WRITE_PIPE, 0)
        ]
    );
}

/// docs/protocol-decisions.md §6: a message with an fd the guest cannot be given is not
/// delivered without it; the channel hangs up instead (tests/hostile_host.rs has every kind).
#[test]
fn an_fd_the_guest_cannot_be_given_hangs_the_channel_up() {
    let mut s = setup(&[2]);
    let (ctx, mut host) = s.open(1, 2);
    let mem = memfd_with(&pattern(5000, 1));
    let (sa, _sb) = UnixStream::pair().unwrap();
    send_with_fds(&host, b"fds", &[mem.as_raw_fd(), sa.as_raw_fd()]);
    let (ids, data) = expect_receive(ctx.recv(&mut s.vm, T));
    assert!(ids.is_empty() && data.is_empty(), "one empty RECEIVE");
    assert!(s.daemon.wait_for_log("sent a socket", T));
    host.set_read_timeout(Some(T)).unwrap();
    assert_eq!(read_to_end_timeout(&mut host, T), b"", "the host reads EOF");
    // A new context on the same channel works.
    let (ctx2, mut host2) = s.open(2, 2);
    ctx2.send(&mut s.vm, b"again", &[]);
    assert_eq!(read_exact_timeout(&mut host2, 5, T), b"again");
}

#[test]
fn host_hang_up_gives_one_empty_receive_then_the_device_keeps_serving() {
    let mut s = setup(&[2]);
    let (ctx, host) = s.open(1, 2);
    drop(host);
    let (ids, data) = expect_receive(ctx.recv(&mut s.vm, T));
    assert!(ids.is_empty() && data.is_empty(), "one empty RECEIVE");
    // No endless stream of empty messages: the next POLL stays pending.
    let head = ctx.poll_next(&mut s.vm);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !s.vm.is_done(CONTROLQ, head),
        "second POLL after EOF completed"
    );
    assert!(s.daemon.log().contains("hung up"));
    // Destroying the context completes the pending POLL; a new context works.
    assert_ok(&s.vm.ctx_destroy(ctx.ctx_id), "CTX_DESTROY");
    assert_ok(
        &s.vm
            .wait_for(CONTROLQ, head, T)
            .expect("POLL completed by destroy"),
        "POLL after destroy",
    );
    let (ctx2, mut host2) = s.open(2, 2);
    ctx2.send(&mut s.vm, b"again", &[]);
    assert_eq!(read_exact_timeout(&mut host2, 5, T), b"again");
}

#[test]
fn two_contexts_on_two_channels_interleaved() {
    let mut s = setup(&[2, 0x12]);
    let (a, mut ha) = s.open(1, 2);
    let (b, mut hb) = s.open(2, 0x12);
    for i in 0..20u32 {
        let da = pattern(10 + i as usize, i);
        let db = pattern(3000 + i as usize, 1000 + i);
        a.send(&mut s.vm, &da, &[]);
        b.send(&mut s.vm, &db, &[]);
        assert_eq!(read_exact_timeout(&mut hb, db.len(), T), db);
        assert_eq!(read_exact_timeout(&mut ha, da.len(), T), da);
        // Host replies cross over: both POLLs pending at once.
        let pa = a.poll_next(&mut s.vm);
        let pb = b.poll_next(&mut s.vm);
        hb.write_all(&db[..100]).unwrap();
        ha.write_all(&da).unwrap();
        let (_, gb) = expect_receive(b.wait_poll(&mut s.vm, pb, T).unwrap());
        let (_, ga) = expect_receive(a.wait_poll(&mut s.vm, pa, T).unwrap());
        assert_eq!(ga, da);
        assert_eq!(gb, &db[..100]);
    }
}

#[test]
fn query_only_context_and_unconfigured_channel() {
    let mut s = setup(&[2]);
    let ctx = CrossDomainContext::create(&mut s.vm, 1);
    assert_ok(
        &ctx.submit(
            &mut s.vm,
            &cd_init(ctx.query_ring.res_id, ctx.channel_ring.res_id, 0),
        ),
        "INIT channel_type 0",
    );
    assert_resp(
        &ctx.try_send(&mut s.vm, b"x", &[]),
        RESP_ERR_INVALID_PARAMETER,
        "SEND on a query-only context",
    );
    let other = CrossDomainContext::create(&mut s.vm, 2);
    let r = other.submit(
        &mut s.vm,
        &cd_init(other.query_ring.res_id, other.channel_ring.res_id, 3),
    );
    assert_resp(
        &r,
        RESP_ERR_INVALID_PARAMETER,
        "INIT on an unconfigured type",
    );
    assert!(s
        .daemon
        .log()
        .contains("channel type 0x3 is not configured"));
}

#[test]
fn init_forms_16_24_and_36_bytes() {
    let mut s = setup(&[2]);
    let a = CrossDomainContext::create(&mut s.vm, 1);
    assert_ok(
        &a.submit(&mut s.vm, &cd_init_legacy(a.channel_ring.res_id, 2)),
        "16-byte INIT",
    );
    let b = CrossDomainContext::create(&mut s.vm, 2);
    assert_ok(
        &b.submit(
            &mut s.vm,
            &cd_init_v24(b.query_ring.res_id, b.channel_ring.res_id, 2, 1),
        ),
        "24-byte INIT (muvm)",
    );
    let c = CrossDomainContext::create(&mut s.vm, 3);
    assert_ok(
        &c.submit(
            &mut s.vm,
            &cd_init_36(c.query_ring.res_id, c.channel_ring.res_id, 2, [7; 16]),
        ),
        "36-byte INIT (magma)",
    );
    let l = &s.listeners[0].1;
    let mut hosts: Vec<UnixStream> = (0..3).map(|_| accept_timeout(l, T).unwrap()).collect();
    for h in &mut hosts {
        h.set_nonblocking(false).unwrap();
    }
    // Each works, including the legacy one whose single ring is both query and channel ring.
    for (ctx, msg) in [(&a, b"legacy" as &[u8]), (&b, b"muvm"), (&c, b"magma")] {
        ctx.send(&mut s.vm, msg, &[]);
    }
    let mut got: Vec<Vec<u8>> = hosts
        .iter_mut()
        .map(|h| {
            let mut buf = [0u8; 16];
            h.set_read_timeout(Some(T)).unwrap();
            let n = h.read(&mut buf).unwrap();
            buf[..n].to_vec()
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![b"legacy".to_vec(), b"magma".to_vec(), b"muvm".to_vec()]
    );
    hosts[0].write_all(b"back").unwrap();
    // Whichever context owns hosts[0], exactly one of them has a message now.
    let mut delivered = 0;
    for ctx in [&a, &b, &c] {
        let head = ctx.poll_next(&mut s.vm);
        if let Some(msg) = ctx.wait_poll(&mut s.vm, head, Duration::from_millis(500)) {
            let (_, data) = expect_receive(msg);
            assert_eq!(data, b"back");
            delivered += 1;
        }
    }
    assert_eq!(delivered, 1);
}

#[test]
fn vmm_disconnect_and_reconnect() {
    let dir = temp_dir();
    let (path, l) = channel_listener(dir.path());
    let daemon = Daemon::start_in(
        dir,
        ["--channel".to_string(), format!("2:{}", path.display())],
    );
    for session in 1..=3u32 {
        let mut vm = TestVm::connect(daemon.socket_path());
        let ctx = CrossDomainContext::open(&mut vm, 1, 2);
        let mut host = accept_timeout(&l, T).expect("channel connection");
        host.set_nonblocking(false).unwrap();
        let msg = format!("session {session}");
        ctx.send(&mut vm, msg.as_bytes(), &[]);
        assert_eq!(read_exact_timeout(&mut host, msg.len(), T), msg.as_bytes());
        // Leave a POLL in flight and a context open when the VMM goes away.
        let _pending = ctx.poll_next(&mut vm);
        vm.disconnect();
        // The daemon drops the session's state: the host sees the channel close.
        assert_eq!(read_to_end_timeout(&mut host, T), b"");
        assert!(daemon.wait_for_log(&format!("session {session}: device state cleared"), T));
    }
}

#[test]
fn event_idx_traffic_both_ways() {
    let mut s = setup_with(&[2], TestVm::builder().event_idx(true).queue_size(64));
    assert!(s.vm.event_idx());
    let (ctx, mut host) = s.open(1, 2);
    for i in 0..500u32 {
        let out = pattern(1 + (i as usize * 37) % 3744, i);
        ctx.send(&mut s.vm, &out, &[]);
        assert_eq!(read_exact_timeout(&mut host, out.len(), T), out);
        let back = pattern(1 + (i as usize * 53) % 3744, 10_000 + i);
        host.write_all(&back).unwrap();
        let (_, got) = expect_receive(ctx.recv(&mut s.vm, T));
        assert_eq!(got, back, "round {i}");
    }
}

#[test]
fn one_message_completes_every_pending_poll_up_to_its_fence() {
    let mut s = setup(&[2]);
    let (ctx, mut host) = s.open(1, 2);
    let f1 = s.vm.next_fence_id();
    let f2 = s.vm.next_fence_id();
    let h1 = ctx.poll(&mut s.vm, f1);
    let h2 = ctx.poll(&mut s.vm, f2);
    std::thread::sleep(Duration::from_millis(100));
    assert!(!s.vm.is_done(CONTROLQ, h1) && !s.vm.is_done(CONTROLQ, h2));
    host.write_all(b"one").unwrap();
    let r2 = s.vm.wait_for(CONTROLQ, h2, T).expect("newer POLL");
    let r1 =
        s.vm.wait_for(CONTROLQ, h1, T)
            .expect("older POLL, same timeline");
    let h = parse_hdr(&r1);
    assert_eq!((h.fence_id, h.ring_idx), (f1, 1), "fence echoed");
    assert_eq!(parse_hdr(&r2).fence_id, f2);
    let (_, data) = expect_receive(ctx.read_channel(&s.vm));
    assert_eq!(data, b"one");
    // Exactly one message was consumed: the next POLL gets the next bytes.
    host.write_all(b"two").unwrap();
    let (_, data) = expect_receive(ctx.recv(&mut s.vm, T));
    assert_eq!(data, b"two");
}

#[test]
fn guest_reset_drops_contexts_and_closes_channels() {
    let mut s = setup(&[2]);
    let (ctx, mut host) = s.open(1, 2);
    let _pending = ctx.poll_next(&mut s.vm);
    // A stop alone may be a VM pause (docs/vmm-lifecycle.md): the restart with re-laid rings
    // is what shows the reset.
    s.vm.stop_queues();
    s.vm.start_queues();
    assert_eq!(
        read_to_end_timeout(&mut host, T),
        b"",
        "channel closed by the reset"
    );
    assert_resp(
        &s.vm.ctx_destroy(1),
        RESP_ERR_INVALID_CONTEXT_ID,
        "the old context is gone",
    );
    let (ctx, mut host) = s.open(1, 2);
    ctx.send(&mut s.vm, b"fresh", &[]);
    assert_eq!(read_exact_timeout(&mut host, 5, T), b"fresh");
}

/// A 3744-byte SEND payload carrying its sequence number, to check order at the host.
fn numbered(i: u32) -> Vec<u8> {
    let mut m = vec![(i % 251) as u8; 3744];
    m[..4].copy_from_slice(&i.to_le_bytes());
    m
}

fn check_numbered(got: &[u8], first: u32) {
    for (k, c) in got.chunks(3744).enumerate() {
        let i = first + k as u32;
        assert!(
            c == numbered(i).as_slice(),
            "message {i} corrupted or out of order"
        );
    }
}

/// The requests among `heads` still outstanding once the daemon has processed all of them:
/// it processes the control queue in order, so a GET_DISPLAY_INFO answered after them is the
/// barrier.
fn still_held(vm: &mut TestVm, heads: &[u16]) -> Vec<u16> {
    assert_resp(
        &vm.get_display_info(),
        RESP_OK_DISPLAY_INFO,
        "GET_DISPLAY_INFO behind the requests",
    );
    heads
        .iter()
        .copied()
        .filter(|&h| !vm.is_done(CONTROLQ, h))
        .collect()
}

/// Waits for every request in `heads` to complete (with any response).
fn wait_all(vm: &mut TestVm, heads: Vec<u16>, what: &str) {
    for h in heads {
        assert!(vm.wait_for(CONTROLQ, h, T).is_some(), "{what}: request {h}");
    }
}

/// SENDs to a host service that does not read: once its socket is full, the requests are held
/// (left uncompleted, their bytes in guest memory) up to the per-peer budget, further ones are
/// copied and completed up to the byte budget, then refused; the device keeps serving other
/// requests throughout, and when the host reads, everything arrives in order and every held
/// request completes with OK.
#[test]
fn slow_host_service_holds_requests_then_copies_then_refuses() {
    const HELD: usize = 64; // MAX_HELD_PER_PEER
    const BURST: u32 = 300;
    let mut s = setup_with(&[2], TestVm::builder().queue_size(2048));
    let (ctx, mut host) = s.open(1, 2);
    let heads: Vec<u16> = (0..BURST)
        .map(|i| s.vm.submit_3d(1, &cd_send(&numbered(i), &[]), None))
        .collect();
    let pending = still_held(&mut s.vm, &heads);
    assert_eq!(
        pending.len(),
        HELD,
        "requests held for a host that does not read"
    );
    for &h in &heads {
        if !pending.contains(&h) {
            assert_ok(
                &s.vm.wait_for(CONTROLQ, h, T).unwrap(),
                "SEND beyond the held budget",
            );
        }
    }
    // Beyond the held budget the daemon copies, and its copies are bounded.
    let mut i = BURST;
    let err = loop {
        let r = ctx.try_send(&mut s.vm, &numbered(i), &[]);
        if resp_type(&r) != RESP_OK_NODATA {
            break r;
        }
        i += 1;
        assert!(i < 20_000, "no bound on copied bytes");
    };
    assert_resp(
        &err,
        RESP_ERR_OUT_OF_MEMORY,
        "SEND to a host that does not read",
    );
    // Accepted = in the socket buffer + held + copied; the copies stop within one message of
    // 8 MiB and a socket buffer holds well under 2 MiB.
    let unheld = (i as usize - HELD) * 3744;
    assert!(
        ((8 << 20) - 3744..=10 << 20).contains(&unheld),
        "the copy budget is 8 MiB, got {unheld} bytes copied or in the socket"
    );
    // The host drains: every accepted message arrives once, in order ...
    let got = read_exact_timeout(&mut host, i as usize * 3744, T);
    check_numbered(&got, 0);
    // ... and the held requests complete.
    for h in pending {
        let r =
            s.vm.wait_for(CONTROLQ, h, T)
                .expect("held SEND completes once sent");
        assert_ok(&r, "held SEND");
    }
    ctx.send(&mut s.vm, b"after", &[]);
    assert_eq!(read_exact_timeout(&mut host, 5, T), b"after");
}

/// A slow reader throttles a pipelined sender instead of failing it: 16 MiB (far beyond the
/// 8 MiB copy budget) with 256 SENDs in flight reach a host that reads in small sips.
#[test]
fn slow_host_service_throttles_the_guest_without_errors() {
    let mut s = setup_with(&[2], TestVm::builder().queue_size(1024));
    let (ctx, mut host) = s.open(1, 2);
    let total: u32 = (16 << 20) / 3744;
    let reader = std::thread::spawn(move || {
        let mut got = Vec::with_capacity(total as usize * 3744);
        let mut buf = vec![0u8; 16 << 10];
        while got.len() < total as usize * 3744 {
            let n = host.read(&mut buf).expect("host read");
            assert!(n > 0, "channel closed early");
            got.extend_from_slice(&buf[..n]);
            std::thread::sleep(Duration::from_micros(200));
        }
        got
    });
    let mut in_flight = std::collections::VecDeque::new();
    for i in 0..total {
        if in_flight.len() == 256 {
            let h = in_flight.pop_front().unwrap();
            assert_ok(
                &s.vm.wait_for(CONTROLQ, h, T).expect("SEND completes"),
                "SEND",
            );
        }
        in_flight.push_back(s.vm.submit_3d(1, &cd_send(&numbered(i), &[]), None));
    }
    for h in in_flight {
        assert_ok(
            &s.vm.wait_for(CONTROLQ, h, T).expect("SEND completes"),
            "SEND",
        );
    }
    check_numbered(&reader.join().unwrap(), 0);
    let _ = ctx;
}

/// Held requests take at most a quarter of the control queue's descriptors, over all
/// contexts: a guest that blocks on a full queue (Linux does) must still find room for the
/// POLLs that let a host service, which stopped reading while its writes to the guest are
/// blocked, make progress. With 64 entries and 3 descriptors per request: 5 held at most.
#[test]
fn held_requests_leave_room_in_a_small_queue() {
    let mut s = setup_with(&[2], TestVm::builder().queue_size(64));
    let (ctx, mut host) = s.open(1, 2);
    let (ctx2, mut host2) = s.open(2, 2);
    let mut heads = Vec::new();
    for i in 0..12 {
        heads.push(s.vm.submit_3d(1, &cd_send(&[i as u8; 60_000], &[]), None));
        if i % 2 == 1 {
            // Reap what completed so the small queue does not run out of descriptors.
            let _ = s.vm.get_display_info();
        }
    }
    for i in 0..12 {
        heads.push(s.vm.submit_3d(2, &cd_send(&[i as u8; 60_000], &[]), None));
        if i % 2 == 1 {
            let _ = s.vm.get_display_info();
        }
    }
    let pending = still_held(&mut s.vm, &heads);
    assert_eq!(
        pending.len(),
        5,
        "a quarter of 64 descriptors, 3 per request"
    );
    // The host services write towards the guest without reading: the guest still polls.
    host.write_all(b"event").unwrap();
    let (_, data) = expect_receive(ctx.recv(&mut s.vm, T));
    assert_eq!(data, b"event");
    host2.write_all(b"event2").unwrap();
    let (_, data) = expect_receive(ctx2.recv(&mut s.vm, T));
    assert_eq!(data, b"event2");
    // Both drain; every request completes and every byte arrives in order.
    let r1 = std::thread::spawn(move || read_exact_timeout(&mut host, 12 * 60_000, T));
    let r2 = std::thread::spawn(move || read_exact_timeout(&mut host2, 12 * 60_000, T));
    for h in pending {
        assert_ok(
            &s.vm.wait_for(CONTROLQ, h, T).expect("held SEND completes"),
            "SEND",
        );
    }
    for got in [r1.join().unwrap(), r2.join().unwrap()] {
        for (i, c) in got.chunks(60_000).enumerate() {
            assert!(c.iter().all(|&b| b == i as u8), "message {i} out of order");
        }
    }
}

/// Which SENDs may be held: globally fenced ones (older kernels fence every execbuffer) are, as
/// unfenced ones; ones fenced on a context ring are copied and complete at once, since their
/// timeline fixes when they complete.
#[test]
fn fenced_sends_to_a_full_host() {
    let mut s = setup_with(&[2], TestVm::builder().queue_size(1024));
    let (_c1, mut host1) = s.open(1, 2);
    let mut heads = Vec::new();
    for i in 0..150 {
        let f = s.vm.next_fence_id();
        heads.push(s.vm.submit_3d(1, &cd_send(&numbered(i), &[]), Some((f, None))));
    }
    assert!(
        !still_held(&mut s.vm, &heads).is_empty(),
        "globally fenced SENDs are held for a full host"
    );
    let got = read_exact_timeout(&mut host1, 150 * 3744, T);
    check_numbered(&got, 0);
    for h in heads {
        assert_ok(
            &s.vm.wait_for(CONTROLQ, h, T).expect("held SEND completes"),
            "SEND",
        );
    }
    let (_c2, mut host2) = s.open(2, 2);
    let mut heads = Vec::new();
    for i in 0..150 {
        let f = s.vm.next_fence_id();
        heads.push(s.vm.submit_3d(2, &cd_send(&numbered(i), &[]), Some((f, Some(0)))));
    }
    assert!(
        still_held(&mut s.vm, &heads).is_empty(),
        "ring-fenced SENDs are copied, not held"
    );
    for &h in &heads {
        assert_ok(&s.vm.wait_for(CONTROLQ, h, T).unwrap(), "ring-fenced SEND");
    }
    check_numbered(&read_exact_timeout(&mut host2, 150 * 3744, T), 0);
}

/// Held requests are released, not lost, when their peer goes away: the host closing the
/// channel, the host closing a write pipe, and the guest destroying the context each complete
/// every held request.
#[test]
fn held_requests_complete_when_the_peer_or_the_context_goes_away() {
    let mut s = setup_with(&[2], TestVm::builder().queue_size(1024));
    // 1. The host service hangs up without reading.
    let (_ctx, host) = s.open(1, 2);
    let heads: Vec<u16> = (0..150)
        .map(|i| s.vm.submit_3d(1, &cd_send(&numbered(i), &[]), None))
        .collect();
    assert!(!still_held(&mut s.vm, &heads).is_empty(), "some SENDs held");
    drop(host);
    wait_all(&mut s.vm, heads, "held SEND completed after hang-up");
    // 2. A write pipe whose reader closes.
    let (ctx, host) = s.open(2, 2);
    let (r, w) = pipe();
    send_with_fds(&host, b"pipe", &[w.as_raw_fd()]);
    drop(w);
    let (ids, _) = expect_receive(ctx.recv(&mut s.vm, T));
    let id = ids[0].0;
    let heads: Vec<u16> = (0..40)
        .map(|_| s.vm.submit_3d(2, &cd_write(id, &[7u8; 4072], false), None))
        .collect();
    assert!(
        !still_held(&mut s.vm, &heads).is_empty(),
        "some WRITEs held"
    );
    drop(r);
    // The next WRITE finds the pipe broken; the held ones complete.
    let _ = ctx.try_write(&mut s.vm, id, b"x", false);
    wait_all(&mut s.vm, heads, "held WRITE completed after EPIPE");
    // 3. The guest destroys a context with held requests.
    let (ctx3, _host3) = s.open(3, 2);
    let heads: Vec<u16> = (0..150)
        .map(|i| s.vm.submit_3d(3, &cd_send(&numbered(i), &[]), None))
        .collect();
    assert!(!still_held(&mut s.vm, &heads).is_empty(), "some SENDs held");
    assert_ok(&ctx3.destroy(&mut s.vm), "CTX_DESTROY with held SENDs");
    wait_all(&mut s.vm, heads, "held SEND completed by CTX_DESTROY");
    // The device still serves.
    let (ctx, mut host) = s.open(4, 2);
    ctx.send(&mut s.vm, b"fresh", &[]);
    assert_eq!(read_exact_timeout(&mut host, 5, T), b"fresh");
}
