//! Eventfds host → guest through vhost-user (docs/protocol.md §3.9, §5.7): the identifier type
//! by INIT form, READ_EVENTFD_NEW (command 11) and the READs of exact counter values, WRITE
//! adding to the host's counter, libkrun's eventfd destroy and magma's import (both command
//! 12), the refusals, fairness with channel data and read pipes, and no fd left behind.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use nix::sys::eventfd::{EfdFlags, EventFd};
use support::*;

const T: Duration = Duration::from_secs(10);
/// Long enough for a POLL that should stay pending to show it does.
const QUIET: Duration = Duration::from_millis(300);

const CMD_READ_EVENTFD_NEW: u8 = 11;
const CMD_12: u8 = 12;
/// Eventfd identifier types: 6 after libkrun's 24-byte INIT, 5 otherwise.
const EVENTFD_LIBKRUN: u32 = 6;
const EVENT_MAGMA: u32 = 5;

/// READ_EVENTFD_NEW{id} (16 bytes).
fn cd_read_eventfd_new(id: u32) -> Vec<u8> {
    let mut v = cd_header(CMD_READ_EVENTFD_NEW, 16).to_vec();
    v.extend_from_slice(&id.to_le_bytes());
    v.extend_from_slice(&[0; 4]);
    v
}

/// Command 12 of `size` bytes with `id` at offset 8 (16: libkrun's destroy; 32: magma's
/// IMPORT_VIRTIOFS_HANDLE, whose id is at 24).
fn cd_cmd12(id: u32, size: u16) -> Vec<u8> {
    let mut v = cd_header(CMD_12, size).to_vec();
    v.resize(usize::from(size), 0);
    v[8..12].copy_from_slice(&id.to_le_bytes());
    v
}

struct Fx {
    daemon: Daemon,
    vm: TestVm,
    listener: UnixListener,
}

fn setup() -> Fx {
    let dir = temp_dir();
    let (path, listener) = channel_listener(dir.path());
    let daemon = Daemon::builder()
        .dir(dir)
        .rust_log("debug")
        .channel(2, &path)
        .spawn();
    let vm = TestVm::connect(daemon.socket_path());
    Fx {
        daemon,
        vm,
        listener,
    }
}

impl Fx {
    /// A context after an INIT of `init` (built from the ring ids) on channel 2.
    fn open_with(
        &mut self,
        ctx_id: u32,
        init: impl Fn(u32, u32) -> Vec<u8>,
    ) -> (CrossDomainContext, UnixStream) {
        let ctx = CrossDomainContext::create(&mut self.vm, ctx_id);
        let cmd = init(ctx.query_ring.res_id, ctx.channel_ring.res_id);
        assert_ok(&ctx.submit(&mut self.vm, &cmd), "INIT");
        let host = accept_timeout(&self.listener, T).expect("channel");
        host.set_nonblocking(false).unwrap();
        (ctx, host)
    }

    /// A context with muvm's 24-byte INIT.
    fn open(&mut self, ctx_id: u32) -> (CrossDomainContext, UnixStream) {
        self.open_with(ctx_id, |q, c| cd_init_v24(q, c, 2, 1))
    }

    fn submit(&mut self, ctx: &CrossDomainContext, cmd: &[u8]) -> Vec<u8> {
        ctx.submit(&mut self.vm, cmd)
    }
}

/// A non-blocking eventfd, as PipeWire makes them.
fn eventfd() -> OwnedFd {
    EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
        .unwrap()
        .into()
}

fn signal(efd: &OwnedFd, v: u64) {
    nix::unistd::write(efd, &v.to_ne_bytes()).unwrap();
}

/// The counter of the host's eventfd, reset by the read; `None` when it is zero.
fn counter(efd: &OwnedFd) -> Option<u64> {
    let mut b = [0u8; 8];
    match nix::unistd::read(efd, &mut b) {
        Ok(8) => Some(u64::from_ne_bytes(b)),
        Err(nix::errno::Errno::EAGAIN) => None,
        other => panic!("eventfd read: {other:?}"),
    }
}

/// The host sends `efds` with one byte; returns the guest's identifiers.
fn pass(
    fx: &mut Fx,
    ctx: &CrossDomainContext,
    host: &UnixStream,
    efds: &[&OwnedFd],
) -> Vec<(u32, u32, u32)> {
    let raw: Vec<_> = efds.iter().map(|f| f.as_raw_fd()).collect();
    send_with_fds(host, b"e", &raw);
    match ctx.recv(&mut fx.vm, T) {
        ChannelMsg::Receive { ids, data } => {
            assert_eq!(data, b"e");
            ids
        }
        other => panic!("expected RECEIVE, got {other:?}"),
    }
}

fn expect_read(msg: ChannelMsg, id: u32) -> u64 {
    match msg {
        ChannelMsg::Read {
            id: got,
            hang_up,
            data,
        } => {
            assert_eq!(
                (got, hang_up, data.len()),
                (id, false, 8),
                "READ of a counter"
            );
            u64::from_le_bytes(data.try_into().unwrap())
        }
        other => panic!("expected READ of {id:#x}, got {other:?}"),
    }
}

#[test]
fn the_eventfd_identifier_type_follows_the_init_form() {
    let mut fx = setup();
    type Init = fn(u32, u32) -> Vec<u8>;
    let forms: [(&str, Init, u32); 4] = [
        (
            "24-byte (libkrun, muvm)",
            |q, c| cd_init_v24(q, c, 2, 1),
            EVENTFD_LIBKRUN,
        ),
        (
            "20-byte (sommelier, magma)",
            |q, c| cd_init(q, c, 2),
            EVENT_MAGMA,
        ),
        (
            "36-byte (magma)",
            |q, c| cd_init_36(q, c, 2, [7; 16]),
            EVENT_MAGMA,
        ),
        // One ring for both: the channel ring, where the test reads.
        ("16-byte (legacy)", |_, c| cd_init_legacy(c, 2), EVENT_MAGMA),
    ];
    for (i, (what, init, ty)) in forms.into_iter().enumerate() {
        let (ctx, host) = fx.open_with(i as u32 + 1, init);
        let (a, b) = (eventfd(), eventfd());
        let mem = memfd_with(b"m");
        let raw = [a.as_raw_fd(), mem.as_raw_fd(), b.as_raw_fd()];
        send_with_fds(&host, b"e", &raw);
        let ChannelMsg::Receive { ids, .. } = ctx.recv(&mut fx.vm, T) else {
            panic!("{what}: expected RECEIVE");
        };
        assert_eq!(
            ids,
            [(2, ty, 0), (3, CD_ID_TYPE_VIRTGPU_BLOB, 1), (4, ty, 0)],
            "{what}"
        );
    }
}

#[test]
fn watched_eventfds_deliver_exact_counter_values_one_per_poll() {
    let mut fx = setup();
    let (ctx, host) = fx.open(1);
    let (a, b) = (eventfd(), eventfd());
    let ids = pass(&mut fx, &ctx, &host, &[&a, &b]);
    let (ia, ib) = (ids[0].0, ids[1].0);
    // Not watched yet: a signal wakes nobody.
    signal(&a, 7);
    let head = ctx.poll_next(&mut fx.vm);
    assert!(
        ctx.wait_poll(&mut fx.vm, head, QUIET).is_none(),
        "READ before READ_EVENTFD_NEW"
    );
    // Watching it delivers what is already there, to the POLL already waiting.
    assert_ok(
        &fx.submit(&ctx, &cd_read_eventfd_new(ia)),
        "READ_EVENTFD_NEW",
    );
    assert_eq!(
        expect_read(ctx.wait_poll(&mut fx.vm, head, T).unwrap(), ia),
        7
    );
    // Several signals before a POLL add up into one READ.
    signal(&a, 1);
    signal(&a, 0x1_0000_0000);
    assert_eq!(expect_read(ctx.recv(&mut fx.vm, T), ia), 0x1_0000_0001);
    assert_eq!(counter(&a), None, "the daemon consumed the counter");
    // Watching twice is harmless; the other eventfd is watched on its own.
    assert_ok(
        &fx.submit(&ctx, &cd_read_eventfd_new(ia)),
        "READ_EVENTFD_NEW again",
    );
    assert_ok(
        &fx.submit(&ctx, &cd_read_eventfd_new(ib)),
        "READ_EVENTFD_NEW",
    );
    signal(&b, 3);
    assert_eq!(expect_read(ctx.recv(&mut fx.vm, T), ib), 3);
    // Nothing pending: the next POLL waits, then the next signal completes it.
    let head = ctx.poll_next(&mut fx.vm);
    assert!(ctx.wait_poll(&mut fx.vm, head, QUIET).is_none());
    signal(&a, u64::MAX - 1);
    assert_eq!(
        expect_read(ctx.wait_poll(&mut fx.vm, head, T).unwrap(), ia),
        u64::MAX - 1
    );
    // Channel data still flows around them.
    (&host).write_all(b"bytes").unwrap();
    match ctx.recv(&mut fx.vm, T) {
        ChannelMsg::Receive { data, .. } => assert_eq!(data, b"bytes"),
        other => panic!("expected RECEIVE, got {other:?}"),
    }
}

#[test]
fn a_write_adds_eight_bytes_to_the_hosts_counter_and_hang_up_drops_the_item() {
    let mut fx = setup();
    let (ctx, host) = fx.open(1);
    let efd = eventfd();
    let id = pass(&mut fx, &ctx, &host, &[&efd])[0].0;
    ctx.write(&mut fx.vm, id, &5u64.to_le_bytes(), false);
    ctx.write(
        &mut fx.vm,
        id,
        &0x0102_0304_0506_0708u64.to_le_bytes(),
        false,
    );
    assert_eq!(counter(&efd), Some(0x0102_0304_0506_070d));
    // Every size but 8 is refused, and nothing reaches the counter.
    for len in [0usize, 1, 4, 7, 9, 16] {
        assert_resp(
            &ctx.try_write(&mut fx.vm, id, &vec![1u8; len], false),
            RESP_ERR_INVALID_PARAMETER,
            &format!("WRITE of {len} bytes to an eventfd"),
        );
    }
    assert_eq!(counter(&efd), None, "nothing written");
    // u64::MAX is refused by the eventfd itself.
    assert_resp(
        &ctx.try_write(&mut fx.vm, id, &u64::MAX.to_le_bytes(), false),
        RESP_ERR_UNSPEC,
        "WRITE of u64::MAX",
    );
    // hang_up adds the value, then drops the item; the host's eventfd lives on.
    ctx.write(&mut fx.vm, id, &9u64.to_le_bytes(), true);
    assert_eq!(counter(&efd), Some(9));
    assert_resp(
        &ctx.try_write(&mut fx.vm, id, &1u64.to_le_bytes(), false),
        RESP_ERR_INVALID_PARAMETER,
        "WRITE after hang_up",
    );
    assert_resp(
        &fx.submit(&ctx, &cd_read_eventfd_new(id)),
        RESP_ERR_INVALID_PARAMETER,
        "READ_EVENTFD_NEW after hang_up",
    );
    signal(&efd, 1);
    assert_eq!(counter(&efd), Some(1));
}

#[test]
fn a_host_that_never_reads_gets_a_full_counter_not_a_growing_daemon() {
    let mut fx = setup();
    let (ctx, host) = fx.open(1);
    let efd = eventfd();
    let id = pass(&mut fx, &ctx, &host, &[&efd])[0].0;
    ctx.write(&mut fx.vm, id, &(u64::MAX - 2).to_le_bytes(), false);
    ctx.write(&mut fx.vm, id, &1u64.to_le_bytes(), false);
    // Full: refused, not queued. Again and again, nothing changes.
    for _ in 0..100 {
        assert_resp(
            &ctx.try_write(&mut fx.vm, id, &1u64.to_le_bytes(), false),
            RESP_ERR_UNSPEC,
            "WRITE to a full eventfd",
        );
    }
    assert_eq!(counter(&efd), Some(u64::MAX - 1), "exactly what fitted");
    // Once the host reads, WRITEs work again.
    ctx.write(&mut fx.vm, id, &2u64.to_le_bytes(), false);
    assert_eq!(counter(&efd), Some(2));
}

#[test]
fn commands_11_and_12_refuse_unknown_ids_and_other_kinds() {
    let mut fx = setup();
    let (ctx, host) = fx.open(1);
    let mem = memfd_with(b"memory");
    let (_r, w) = pipe();
    send_with_fds(&host, b"x", &[mem.as_raw_fd(), w.as_raw_fd()]);
    let ChannelMsg::Receive { ids, .. } = ctx.recv(&mut fx.vm, T) else {
        panic!("expected RECEIVE");
    };
    let (memory, write_pipe) = (ids[0].0, ids[1].0);
    let cases = [
        (
            "READ_EVENTFD_NEW of an unknown id",
            cd_read_eventfd_new(999),
        ),
        ("READ_EVENTFD_NEW of memory", cd_read_eventfd_new(memory)),
        (
            "READ_EVENTFD_NEW of a write pipe",
            cd_read_eventfd_new(write_pipe),
        ),
        (
            "READ_EVENTFD_NEW of a read-pipe id",
            cd_read_eventfd_new(CD_READ_PIPE_ID_BASE + 1),
        ),
        (
            "READ_EVENTFD_NEW shorter than its struct",
            cd_read_eventfd_new(memory)[..12].to_vec(),
        ),
        ("eventfd destroy of an unknown id", cd_cmd12(999, 16)),
        ("eventfd destroy of memory", cd_cmd12(memory, 16)),
        ("eventfd destroy of a write pipe", cd_cmd12(write_pipe, 16)),
        ("command 12 shorter than its struct", cd_cmd12(memory, 12)),
    ];
    for (what, mut cmd) in cases {
        if cmd.len() < 16 {
            let n = cmd.len() as u16;
            cmd[2..4].copy_from_slice(&n.to_le_bytes());
        }
        assert_resp(&fx.submit(&ctx, &cmd), RESP_ERR_INVALID_PARAMETER, what);
    }
    // The items named are untouched: the memory still makes a blob.
    let res = fx.vm.next_resource_id();
    assert_ok(
        &fx.vm.create_blob_raw(&CreateBlob {
            ctx_id: ctx.ctx_id,
            res_id: res,
            blob_mem: BLOB_MEM_HOST3D,
            blob_flags: BLOB_FLAG_USE_MAPPABLE,
            blob_id: u64::from(memory),
            size: 4096,
            entries: Vec::new(),
            nr_entries: None,
        }),
        "CREATE_BLOB from the memory named by the refused commands",
    );
}

#[test]
fn command_12_destroys_an_eventfd_or_is_magmas_refused_import() {
    let mut fx = setup();
    let (ctx, host) = fx.open(1);
    let (a, b) = (eventfd(), eventfd());
    let ids = pass(&mut fx, &ctx, &host, &[&a, &b]);
    let (ia, ib) = (ids[0].0, ids[1].0);
    for id in [ia, ib] {
        assert_ok(
            &fx.submit(&ctx, &cd_read_eventfd_new(id)),
            "READ_EVENTFD_NEW",
        );
    }
    // libkrun's destroy (any size but 32; shaped like command 11): unwatched and dropped.
    assert_ok(&fx.submit(&ctx, &cd_cmd12(ia, 16)), "READ_EVENTFD_DESTROY");
    signal(&a, 1);
    let head = ctx.poll_next(&mut fx.vm);
    assert!(
        ctx.wait_poll(&mut fx.vm, head, QUIET).is_none(),
        "a destroyed eventfd spoke"
    );
    assert_resp(
        &ctx.try_write(&mut fx.vm, ia, &1u64.to_le_bytes(), false),
        RESP_ERR_INVALID_PARAMETER,
        "WRITE to a destroyed eventfd",
    );
    // A larger libkrun-style destroy works as well; the other one still speaks meanwhile.
    signal(&b, 4);
    assert_eq!(
        expect_read(ctx.wait_poll(&mut fx.vm, head, T).unwrap(), ib),
        4
    );
    assert_ok(
        &fx.submit(&ctx, &cd_cmd12(ib, 24)),
        "READ_EVENTFD_DESTROY of 24 bytes",
    );
    assert_resp(
        &fx.submit(&ctx, &cd_cmd12(ib, 16)),
        RESP_ERR_INVALID_PARAMETER,
        "destroy twice",
    );
    // 32 bytes is magma's IMPORT_VIRTIOFS_HANDLE: refused, the reason logged once.
    for _ in 0..3 {
        assert_resp(
            &fx.submit(&ctx, &cd_cmd12(0, 32)),
            RESP_ERR_INVALID_PARAMETER,
            "IMPORT_VIRTIOFS_HANDLE",
        );
    }
    let once = "the guest uses command 12 of 32 bytes (magma IMPORT_VIRTIOFS_HANDLE), which this \
                daemon cannot serve: it needs the virtio-fs export table";
    assert!(fx.daemon.wait_for_log(once, T));
    assert_eq!(
        fx.daemon.log().matches(once).count(),
        1,
        "logged once per context"
    );
    // Nothing watched is left: the POLL waits for channel data.
    let head = ctx.poll_next(&mut fx.vm);
    signal(&a, 1);
    signal(&b, 1);
    assert!(ctx.wait_poll(&mut fx.vm, head, QUIET).is_none());
    (&host).write_all(b"z").unwrap();
    assert!(matches!(
        ctx.wait_poll(&mut fx.vm, head, T),
        Some(ChannelMsg::Receive { .. })
    ));
}

#[test]
fn unserved_send_identifiers_fail_the_send_and_are_logged_once_per_context() {
    let mut fx = setup();
    let (ctx, mut host) = fx.open(1);
    let cases = [
        (
            CD_ID_TYPE_VIRTGPU_SYNC,
            "SEND identifier type 2 (VIRTGPU_SYNC)",
        ),
        (5, "SEND identifier type 5 (libkrun SHM, a futex file)"),
        (6, "SEND identifier type 6 (magma VIRTIO_FS_BLOB)"),
    ];
    // Two refusals of each kind: three warnings per kind stay within the log's rate limit.
    for (ty, what) in cases {
        for _ in 0..2 {
            assert_resp(
                &ctx.try_send(&mut fx.vm, b"lost", &[(1, ty)]),
                RESP_ERR_INVALID_PARAMETER,
                what,
            );
        }
        let line = format!("the guest uses {what}, which this daemon cannot serve");
        assert!(fx.daemon.wait_for_log(&line, T), "{what}");
        assert_eq!(
            fx.daemon.log().matches(&line).count(),
            1,
            "{what} logged once"
        );
    }
    // The whole SEND failed: nothing reached the host. The next one does.
    ctx.send(&mut fx.vm, b"ok", &[]);
    assert_eq!(read_exact_timeout(&mut host, 2, T), b"ok");
    // A new context is told again.
    let (ctx2, _host2) = fx.open(2);
    assert_resp(
        &ctx2.try_send(&mut fx.vm, b"x", &[(1, 5)]),
        RESP_ERR_INVALID_PARAMETER,
        "type 5 in another context",
    );
    let line = "the guest uses SEND identifier type 5";
    let deadline = std::time::Instant::now() + T;
    while fx.daemon.log().matches(line).count() < 2 {
        assert!(std::time::Instant::now() < deadline, "ctx 2 was not told");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One message per POLL, the sources in turn: channel data, a read pipe and an eventfd that
/// always have something each get the ring at least once in every three messages.
#[test]
fn eventfds_channel_data_and_a_read_pipe_take_turns() {
    let mut fx = setup();
    let (ctx, mut host) = fx.open(1);
    let efd = eventfd();
    let id = pass(&mut fx, &ctx, &host, &[&efd])[0].0;
    assert_ok(
        &fx.submit(&ctx, &cd_read_eventfd_new(id)),
        "READ_EVENTFD_NEW",
    );
    let pipe_id = CD_READ_PIPE_ID_BASE + 1;
    ctx.send(&mut fx.vm, b"p", &[(pipe_id, CD_ID_TYPE_READ_PIPE)]);
    let (_, mut fds) = recv_with_fds(&host, 1, T);
    let mut pipe_w = std::fs::File::from(fds.remove(0));
    // Far more than one message's worth of pipe and channel data.
    pipe_w.write_all(&[1u8; 40_000]).unwrap();
    host.write_all(&[2u8; 40_000]).unwrap();
    let mut last = [0usize; 3];
    let mut counts = [0usize; 3];
    let mut signalled = 0u64;
    let mut read = 0u64;
    for n in 1..=30 {
        // The eventfd is signalled before every POLL: it always has something.
        signal(&efd, 1);
        signalled += 1;
        let src = match ctx.recv(&mut fx.vm, T) {
            ChannelMsg::Receive { data, .. } => {
                assert!(!data.is_empty() && data.iter().all(|&b| b == 2));
                0
            }
            ChannelMsg::Read { id: got, data, .. } if got == pipe_id => {
                assert!(!data.is_empty() && data.iter().all(|&b| b == 1));
                1
            }
            msg => {
                read += expect_read(msg, id);
                2
            }
        };
        counts[src] += 1;
        for (s, l) in last.iter().enumerate() {
            assert!(
                n - l <= 3,
                "source {s} waited since message {l} (now {n}): {counts:?}"
            );
        }
        last[src] = n;
    }
    assert_eq!(counts, [10, 10, 10]);
    // Every signal arrived, added up in the READs or still in the counter.
    assert_eq!(read + counter(&efd).unwrap_or(0), signalled);
}

#[test]
fn eventfds_leave_no_fd_behind() {
    let mut fx = setup();
    let pid = fx.daemon.pid();
    let before = fd_count(pid);
    for round in 0..3u32 {
        let (ctx, host) = fx.open(round + 1);
        let efds: Vec<_> = (0..20).map(|_| eventfd()).collect();
        let refs: Vec<_> = efds.iter().collect();
        let ids = pass(&mut fx, &ctx, &host, &refs);
        // Some watched, some destroyed, some dropped by hang_up, the rest left to the teardown.
        for (i, &(id, ..)) in ids.iter().enumerate() {
            match i % 4 {
                0 => assert_ok(&fx.submit(&ctx, &cd_read_eventfd_new(id)), "watch"),
                1 => assert_ok(&fx.submit(&ctx, &cd_cmd12(id, 16)), "destroy"),
                2 => ctx.write(&mut fx.vm, id, &1u64.to_le_bytes(), true),
                _ => {}
            }
        }
        signal(&efds[0], 1);
        assert!(matches!(ctx.recv(&mut fx.vm, T), ChannelMsg::Read { .. }));
        drop(efds);
        drop(host);
        assert_ok(&ctx.destroy(&mut fx.vm), "CTX_DESTROY");
    }
    let deadline = std::time::Instant::now() + T;
    while fd_count(pid) > before && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(fd_count(pid), before, "fds left behind");
}
