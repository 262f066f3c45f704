//! The device across VMM lifecycle events, driven message for message as QEMU and as crosvm
//! drive it (see `TestVm::pause`, `resume`, `guest_reset`, `reprobe` and docs/vmm-lifecycle.md):
//!
//! - a VM pause (QEMU `stop`/`cont`, crosvm `suspend --full`/`resume --full`) keeps every
//!   context, host connection, resource, mapping and held request: the guest carries on as if
//!   nothing happened;
//! - a guest reset drops all guest-visible state, and the mappings the VMM still holds
//!   (crosvm keeps them) never make a later SHMEM_MAP overlap one: crosvm ends the VM on any
//!   refused request;
//! - repeating both does not grow the daemon's fds or memory.
//!
//! Every scenario runs once per VMM.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use support::*;
use vhost::vhost_user::message::VhostUserProtocolFeatures as P;
use vhost::vhost_user::VhostUserFrontend;
use vhost::VhostBackend;

const T: Duration = Duration::from_secs(10);
const HOST_FLAGS: u32 = BLOB_FLAG_USE_MAPPABLE | BLOB_FLAG_USE_SHAREABLE;
const XR24: u32 = u32::from_le_bytes(*b"XR24");

struct Fx {
    daemon: Daemon,
    vm: TestVm,
    listener: UnixListener,
}

fn setup(kind: VmmKind) -> Fx {
    let dir = temp_dir();
    let (path, listener) = channel_listener(dir.path());
    let daemon = Daemon::start_in(
        dir,
        ["--channel".to_string(), format!("2:{}", path.display())],
    );
    let vm = TestVm::builder()
        .vmm(kind)
        .qemu_mem_table_updates(kind == VmmKind::Qemu)
        .connect(daemon.socket_path());
    assert!(vm.shm_size().is_some(), "a host-visible region");
    Fx {
        daemon,
        vm,
        listener,
    }
}

impl Fx {
    /// A cross-domain context on channel 2 and the host service's end of its connection.
    fn open(&mut self, ctx_id: u32) -> (CrossDomainContext, UnixStream) {
        let ctx = CrossDomainContext::open(&mut self.vm, ctx_id, 2);
        let host = accept_timeout(&self.listener, T).expect("channel connection");
        host.set_nonblocking(false).unwrap();
        (ctx, host)
    }

    /// A 64×64 XR24 host blob of `ctx`, mapped at `offset`; returns its resource id and size.
    fn mapped_blob(&mut self, ctx: &CrossDomainContext, offset: u64) -> (u32, u64) {
        let r = ctx
            .image_requirements(&mut self.vm, 64, 64, XR24, 0)
            .expect("image requirements");
        let res = self.vm.next_resource_id();
        assert_ok(
            &self
                .vm
                .create_host_blob(ctx.ctx_id, res, r.blob_id.into(), r.size, HOST_FLAGS),
            "CREATE_BLOB",
        );
        assert_ok(&self.vm.ctx_attach(ctx.ctx_id, res), "attach");
        let resp = self.vm.resource_map_blob(res, offset);
        assert_resp(&resp, RESP_OK_MAP_INFO, "RESOURCE_MAP_BLOB");
        (res, r.size)
    }

    /// Nothing the VMM would refuse, nor anything QEMU would crash on, was sent.
    fn assert_no_refusals(&self, what: &str) {
        let s = self.vm.shm_stats();
        assert_eq!(
            (s.refused, s.violations, s.bad_requests),
            (0, 0, 0),
            "{what}: SHMEM requests refused (last: {:?})",
            self.vm.shm_last_refusal()
        );
        assert_eq!(self.vm.shm_fatal(), None, "{what}");
    }
}

/// Byte-exact comparison that reports where it differs rather than both buffers.
fn same_bytes(got: &[u8], want: &[u8], what: &str) {
    let first_diff = got.iter().zip(want).position(|(a, b)| a != b);
    assert!(
        got.len() == want.len() && first_diff.is_none(),
        "{what}: {} bytes, {} expected, first difference at {first_diff:?}",
        got.len(),
        want.len()
    );
}

// ---- guest reset with live mappings ---------------------------------------------------------

fn guest_reset_then_map_at_the_same_offset(kind: VmmKind) {
    let mut fx = setup(kind);
    let (ctx, mut host) = fx.open(1);
    let (res, size) = fx.mapped_blob(&ctx, 0);
    fx.vm.shm_write(0, b"before the reset");
    let _held = ctx.poll_next(&mut fx.vm);

    fx.vm.guest_reset();
    fx.vm.reprobe();
    let log = fx.vm.take_lifecycle_log();
    eprintln!("{kind:?} guest reset:\n  {}", log.join("\n  "));

    // Guest-visible state is gone: the host connection closes, ids are free again.
    assert_eq!(
        read_to_end_timeout(&mut host, T),
        b"",
        "channel closed by the reset"
    );
    assert_resp(
        &fx.vm.ctx_destroy(1),
        RESP_ERR_INVALID_CONTEXT_ID,
        "the old context after the reset",
    );
    assert_resp(
        &fx.vm.resource_unref(res),
        RESP_ERR_INVALID_RESOURCE_ID,
        "the old resource after the reset",
    );
    // Stale mappings do not outlive the restart (crosvm kept them: the daemon unmaps them).
    assert!(
        fx.vm.shm_wait_unmapped(0, T),
        "{kind:?}: the old mapping is still in the region: {:?}",
        fx.vm.shm_mappings()
    );

    // The re-probed driver allocates from the start of the region again.
    let (ctx, mut host) = fx.open(1);
    let (_res, size2) = fx.mapped_blob(&ctx, 0);
    assert_eq!(size2, size);
    let m = fx.vm.shm_mapping_at(0).expect("mapped again");
    assert_eq!((m.offset, m.len), (0, size));
    assert_eq!(
        fx.vm.shm_read(0, 16),
        [0u8; 16],
        "a fresh blob, not the old one"
    );
    fx.vm.shm_write(0, b"after the reset");
    assert_eq!(fx.vm.shm_read(0, 15), b"after the reset");
    assert_eq!(fx.vm.shm_mappings().len(), 1);
    // And the device works as before.
    ctx.send(&mut fx.vm, b"hello again", &[]);
    assert_eq!(read_exact_timeout(&mut host, 11, T), b"hello again");
    fx.assert_no_refusals("guest reset");
}

#[test]
fn crosvm_guest_reset_then_map_at_the_same_offset() {
    guest_reset_then_map_at_the_same_offset(VmmKind::Crosvm);
}

#[test]
fn qemu_guest_reset_then_map_at_the_same_offset() {
    guest_reset_then_map_at_the_same_offset(VmmKind::Qemu);
}

// ---- pause and resume -------------------------------------------------------------------------

fn pause_resume_keeps_everything(kind: VmmKind) {
    let mut fx = setup(kind);
    let (ctx, mut host) = fx.open(1);
    let offset = 16 * 4096;
    let (res, size) = fx.mapped_blob(&ctx, offset);
    let content = pattern(size as usize, 7);
    fx.vm.shm_write(offset, &content);
    let held = ctx.poll_next(&mut fx.vm);
    let stats_before = fx.vm.shm_stats();

    let bases = fx.vm.pause();
    assert!(bases[0] > 0, "the control queue moved: {bases:?}");
    // Data arriving while the VM is paused waits for it; nothing completes meanwhile.
    let first = pattern(3000, 1);
    host.write_all(&first).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !fx.vm.is_done(CONTROLQ, held),
        "{kind:?}: the device completed a request while the VMM had it stopped"
    );
    fx.vm.resume();
    let log = fx.vm.take_lifecycle_log();
    eprintln!("{kind:?} pause/resume:\n  {}", log.join("\n  "));

    // The POLL held across the pause completes with the bytes, exactly.
    match ctx.wait_poll(&mut fx.vm, held, T) {
        Some(ChannelMsg::Receive { data, ids }) => {
            assert!(ids.is_empty());
            same_bytes(&data, &first, "received across the pause");
        }
        other => panic!("{kind:?}: the POLL held across the pause got {other:?}"),
    }
    // The connection, the context and the mapping are the same as before.
    ctx.send(&mut fx.vm, b"after the pause", &[]);
    assert_eq!(read_exact_timeout(&mut host, 15, T), b"after the pause");
    let second = pattern(2000, 2);
    host.write_all(&second).unwrap();
    match ctx.recv(&mut fx.vm, T) {
        ChannelMsg::Receive { data, .. } => same_bytes(&data, &second, "after the pause"),
        other => panic!("{kind:?}: expected RECEIVE, got {other:?}"),
    }
    same_bytes(
        &fx.vm.shm_read(offset, content.len()),
        &content,
        "the mapped blob after the pause",
    );
    let s = fx.vm.shm_stats();
    assert_eq!(
        (s.maps, s.unmaps, s.dropped_at_reset),
        (stats_before.maps, stats_before.unmaps, 0),
        "{kind:?}: a pause does not touch the mappings"
    );
    assert_ok(
        &fx.vm.resource_unmap_blob(res),
        "UNMAP_BLOB after the pause",
    );
    assert_ok(&ctx.destroy(&mut fx.vm), "CTX_DESTROY after the pause");
    fx.assert_no_refusals("pause/resume");
}

#[test]
fn crosvm_pause_resume_keeps_everything() {
    pause_resume_keeps_everything(VmmKind::Crosvm);
}

#[test]
fn qemu_pause_resume_keeps_everything() {
    pause_resume_keeps_everything(VmmKind::Qemu);
}

/// A 3744-byte SEND payload carrying its sequence number.
fn numbered(i: u32) -> Vec<u8> {
    let mut m = vec![(i % 251) as u8; 3744];
    m[..4].copy_from_slice(&i.to_le_bytes());
    m
}

/// SENDs held for a host service that does not read (their bytes wait in guest memory) stay
/// held across a pause: nothing is flushed or completed while the VM is paused, and after the
/// resume every byte reaches the host in order and every held request completes.
fn pause_resume_with_held_requests(kind: VmmKind) {
    const BURST: u32 = 200;
    let mut fx = setup(kind);
    let (ctx, mut host) = fx.open(1);
    let heads: Vec<u16> = (0..BURST)
        .map(|i| fx.vm.submit_3d(1, &cd_send(&numbered(i), &[]), None))
        .collect();
    // The daemon processes the control queue in order: an answered request behind the
    // SENDs means all of them were seen.
    assert_resp(&fx.vm.get_display_info(), RESP_OK_DISPLAY_INFO, "barrier");
    let held: Vec<u16> = heads
        .iter()
        .copied()
        .filter(|&h| !fx.vm.is_done(CONTROLQ, h))
        .collect();
    assert!(
        !held.is_empty(),
        "{kind:?}: some SENDs held for the full host"
    );

    fx.vm.pause();
    let total = BURST as usize * 3744;
    let reader = std::thread::spawn(move || {
        let got = read_exact_timeout(&mut host, total, Duration::from_secs(30));
        (got, host)
    });
    std::thread::sleep(Duration::from_millis(300));
    for &h in &held {
        assert!(
            !fx.vm.is_done(CONTROLQ, h),
            "{kind:?}: a held request completed while the VM was paused"
        );
    }
    fx.vm.resume();
    let (got, mut host) = reader.join().expect("host reader");
    for (k, c) in got.chunks(3744).enumerate() {
        assert!(
            c == numbered(k as u32).as_slice(),
            "message {k} corrupted or out of order"
        );
    }
    for h in held {
        let r = fx.vm.wait_for(CONTROLQ, h, T).expect("held SEND completes");
        assert_ok(&r, "held SEND after the resume");
    }
    ctx.send(&mut fx.vm, b"after", &[]);
    assert_eq!(read_exact_timeout(&mut host, 5, T), b"after");
    fx.assert_no_refusals("held requests across a pause");
}

#[test]
fn crosvm_pause_resume_with_held_requests() {
    pause_resume_with_held_requests(VmmKind::Crosvm);
}

#[test]
fn qemu_pause_resume_with_held_requests() {
    pause_resume_with_held_requests(VmmKind::Qemu);
}

// ---- what else counts as a reset ----------------------------------------------------------

/// Same rings and base, but the features changed meanwhile: a new driver, so a reset.
fn features_renegotiated_at_restart_is_a_reset(kind: VmmKind) {
    let mut fx = setup(kind);
    let (_ctx, mut host) = fx.open(1);
    fx.vm.pause();
    let other = fx.vm.acked_features() & !VIRTIO_GPU_F_RESOURCE_UUID;
    fx.vm.frontend().set_features(other).expect("SET_FEATURES");
    fx.vm.resume();
    assert_eq!(read_to_end_timeout(&mut host, T), b"", "channel closed");
    assert_resp(
        &fx.vm.ctx_destroy(1),
        RESP_ERR_INVALID_CONTEXT_ID,
        "the context after the features changed",
    );
    fx.assert_no_refusals("features renegotiated");
}

#[test]
fn crosvm_features_renegotiated_at_restart_is_a_reset() {
    features_renegotiated_at_restart_is_a_reset(VmmKind::Crosvm);
}

#[test]
fn qemu_features_renegotiated_at_restart_is_a_reset() {
    features_renegotiated_at_restart_is_a_reset(VmmKind::Qemu);
}

/// RESET_DEVICE between the stop and the start (a frontend that resets the device instead
/// of, or besides, re-laying the rings) is a reset even if the rings continue.
#[test]
fn reset_device_between_stop_and_start_is_a_reset() {
    let dir = temp_dir();
    let (path, listener) = channel_listener(dir.path());
    let daemon = Daemon::start_in(
        dir,
        ["--channel".to_string(), format!("2:{}", path.display())],
    );
    let mask = P::CONFIG | P::REPLY_ACK | P::MQ | P::BACKEND_REQ | P::SHMEM | P::RESET_DEVICE;
    let vm = TestVm::builder()
        .vmm(VmmKind::Qemu)
        .protocol_features(mask.bits())
        .connect(daemon.socket_path());
    assert_ne!(
        vm.acked_protocol_features() & P::RESET_DEVICE.bits(),
        0,
        "RESET_DEVICE offered"
    );
    let mut fx = Fx {
        daemon,
        vm,
        listener,
    };
    let (_ctx, mut host) = fx.open(1);
    fx.vm.pause();
    fx.vm.frontend().reset_device().expect("RESET_DEVICE");
    fx.vm.resume();
    assert_eq!(read_to_end_timeout(&mut host, T), b"", "channel closed");
    assert_resp(
        &fx.vm.ctx_destroy(1),
        RESP_ERR_INVALID_CONTEXT_ID,
        "the context after RESET_DEVICE",
    );
}

// ---- repeated pauses and resets ---------------------------------------------------------------

/// The daemon's fd count once it stopped changing (the device finishes a reset on its worker
/// thread, after the VMM's last message was answered), or as soon as it equals `want`.
fn settled_fd_count(pid: u32, want: Option<usize>) -> usize {
    let mut last = fd_count(pid);
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(50));
        let now = fd_count(pid);
        if Some(now) == want || (want.is_none() && now == last) {
            return now;
        }
        last = now;
    }
    last
}

fn many_pauses_and_resets_stay_flat(kind: VmmKind) {
    let mut fx = setup(kind);
    let cycle = |fx: &mut Fx, i: usize| {
        let (ctx, mut host) = fx.open(1);
        let (_res, _size) = fx.mapped_blob(&ctx, 0);
        fx.vm.shm_write(0, &(i as u64).to_le_bytes());
        let held = ctx.poll_next(&mut fx.vm);
        fx.vm.pause();
        let msg = pattern(1000 + i, i as u32);
        host.write_all(&msg).unwrap();
        fx.vm.resume();
        match ctx.wait_poll(&mut fx.vm, held, T) {
            Some(ChannelMsg::Receive { data, .. }) => same_bytes(&data, &msg, "held POLL"),
            other => panic!("{kind:?} cycle {i}: the POLL held across the pause got {other:?}"),
        }
        assert_eq!(fx.vm.shm_read(0, 8), (i as u64).to_le_bytes());
        let _held = ctx.poll_next(&mut fx.vm);
        fx.vm.guest_reset();
        fx.vm.reprobe();
        assert_eq!(read_to_end_timeout(&mut host, T), b"", "cycle {i}");
        fx.vm.take_lifecycle_log();
    };
    for i in 0..3 {
        cycle(&mut fx, i);
    }
    let pid = fx.daemon.pid();
    let (fds, rss) = (settled_fd_count(pid, None), rss_kib(pid));
    for i in 3..60 {
        cycle(&mut fx, i);
    }
    let (fds2, rss2) = (settled_fd_count(pid, Some(fds)), rss_kib(pid));
    eprintln!("{kind:?}: daemon fds {fds} -> {fds2}, RSS {rss} KiB -> {rss2} KiB");
    assert_eq!(fds2, fds, "{kind:?}: fd count changed");
    assert!(
        rss2 <= rss + 2048,
        "{kind:?}: RSS grew from {rss} KiB to {rss2} KiB over 57 cycles"
    );
    fx.assert_no_refusals("many pauses and resets");
}

#[test]
fn crosvm_many_pauses_and_resets_stay_flat() {
    many_pauses_and_resets_stay_flat(VmmKind::Crosvm);
}

#[test]
fn qemu_many_pauses_and_resets_stay_flat() {
    many_pauses_and_resets_stay_flat(VmmKind::Qemu);
}
