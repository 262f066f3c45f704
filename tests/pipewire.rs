//! A host service that behaves like PipeWire towards a `pw-cat` client (docs/pipewire.md):
//! `Core.AddMem` with a 2312-byte memfd sealed against growing and shrinking (the node
//! activation record), `ClientNode.SetActivation` with one eventfd and `ClientNode.Transport`
//! with two, then wake-ups both ways. Mostly through the test frontend mapping like QEMU 11 (no
//! mapping past the end of a file), with the daemon's default `PartialPages::Refuse`; and
//! through the frontend mapping like crosvm (the last page may run past the end of a file)
//! with `--partial-pages map`, where the activation record is shared for real; and, where the
//! host has `/dev/udmabuf`, through the frontend mapping like QEMU with `--partial-pages
//! udmabuf`, where it is shared through a udmabuf (skipped, and saying so, elsewhere).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};
use support::*;

const T: Duration = Duration::from_secs(10);
const PAGE: u64 = 4096;
/// `sizeof(struct pw_node_activation)` as PipeWire 1.4 sends it.
const ACTIVATION_SIZE: usize = 2312;
/// muvm's eventfd identifier type (after its 24-byte INIT).
const EVENTFD: u32 = 6;

struct Fx {
    daemon: Daemon,
    vm: TestVm,
    ctx: CrossDomainContext,
    host: UnixStream,
    _listener: UnixListener,
}

/// A daemon with a PipeWire channel (0x10) and a context opened as muvm's bridge does.
fn setup() -> Fx {
    setup_with(VmmKind::Qemu, &[])
}

/// As [`setup`], with the frontend imitating `vmm` and extra daemon arguments.
fn setup_with(vmm: VmmKind, args: &[&str]) -> Fx {
    let dir = temp_dir();
    let (path, listener) = channel_listener(dir.path());
    let daemon = Daemon::builder()
        .dir(dir)
        .rust_log("debug")
        .channel(0x10, &path)
        .args(args)
        .spawn();
    let mut vm = TestVm::builder().vmm(vmm).connect(daemon.socket_path());
    let ctx = CrossDomainContext::create(&mut vm, 1);
    let init = cd_init_v24(ctx.query_ring.res_id, ctx.channel_ring.res_id, 0x10, 1);
    assert_ok(&ctx.submit(&mut vm, &init), "INIT");
    let host = accept_timeout(&listener, T).expect("channel");
    host.set_nonblocking(false).unwrap();
    Fx {
        daemon,
        vm,
        ctx,
        host,
        _listener: listener,
    }
}

/// The node activation record: a memfd of exactly 2312 bytes, sealed as PipeWire's
/// `pw_mempool_alloc` seals it.
fn activation_record() -> std::fs::File {
    let fd = nix::sys::memfd::memfd_create(
        c"pipewire-memfd",
        nix::sys::memfd::MFdFlags::MFD_CLOEXEC | nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING,
    )
    .unwrap();
    let f = std::fs::File::from(fd);
    f.set_len(ACTIVATION_SIZE as u64).unwrap();
    f.write_all_at(&pattern(ACTIVATION_SIZE, 3), 0).unwrap();
    let seals = libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    // SAFETY: plain fcntl on an fd we own.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, seals) };
    assert_eq!(r, 0);
    f
}

fn eventfd() -> OwnedFd {
    EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
        .unwrap()
        .into()
}

/// One PipeWire message with `fds`; the identifiers the guest gets.
fn message(fx: &mut Fx, what: &[u8], fds: &[i32]) -> Vec<(u32, u32, u32)> {
    send_with_fds(&fx.host, what, fds);
    match fx.ctx.recv(&mut fx.vm, T) {
        ChannelMsg::Receive { ids, data } => {
            assert_eq!(data, what);
            ids
        }
        other => panic!("expected RECEIVE, got {other:?}"),
    }
}

fn watch(fx: &mut Fx, id: u32) {
    let mut cmd = cd_header(11, 16).to_vec();
    cmd.extend_from_slice(&id.to_le_bytes());
    cmd.extend_from_slice(&[0; 4]);
    assert_ok(&fx.ctx.submit(&mut fx.vm, &cmd), "READ_EVENTFD_NEW");
}

fn counter(efd: &OwnedFd) -> Option<u64> {
    let mut b = [0u8; 8];
    match nix::unistd::read(efd, &mut b) {
        Ok(8) => Some(u64::from_ne_bytes(b)),
        Err(nix::errno::Errno::EAGAIN) => None,
        other => panic!("eventfd read: {other:?}"),
    }
}

#[test]
fn every_fd_pipewire_sends_arrives_in_place_and_wakeups_cross_both_ways() {
    let mut fx = setup();
    let record = activation_record();
    let add_mem = message(&mut fx, b"Core.AddMem", &[record.as_raw_fd()]);
    assert_eq!(
        add_mem,
        [(2, CD_ID_TYPE_VIRTGPU_BLOB, ACTIVATION_SIZE as u32)]
    );
    let peer = eventfd();
    let set_activation = message(&mut fx, b"ClientNode.SetActivation", &[peer.as_raw_fd()]);
    assert_eq!(set_activation, [(3, EVENTFD, 0)]);
    let (readfd, writefd) = (eventfd(), eventfd());
    let transport = message(
        &mut fx,
        b"ClientNode.Transport",
        &[readfd.as_raw_fd(), writefd.as_raw_fd()],
    );
    assert_eq!(transport, [(4, EVENTFD, 0), (5, EVENTFD, 0)]);
    // As muvm's bridge: watch the server→client eventfd, write the others.
    let (read_id, write_id, peer_id) = (4, 5, 3);
    watch(&mut fx, read_id);
    for round in 1..=1000u64 {
        // The server wakes the client ...
        nix::unistd::write(&readfd, &round.to_ne_bytes()).unwrap();
        match fx.ctx.recv(&mut fx.vm, T) {
            ChannelMsg::Read { id, hang_up, data } => {
                assert_eq!((id, hang_up), (read_id, false));
                assert_eq!(u64::from_le_bytes(data.try_into().unwrap()), round);
            }
            other => panic!("round {round}: expected READ, got {other:?}"),
        }
        // ... and the client wakes the server and its peer.
        fx.ctx
            .write(&mut fx.vm, write_id, &round.to_le_bytes(), false);
        fx.ctx
            .write(&mut fx.vm, peer_id, &1u64.to_le_bytes(), false);
        assert_eq!(counter(&writefd), Some(round), "round {round}");
    }
    assert_eq!(counter(&peer), Some(1000));
}

/// The activation record cannot be shared through a VMM that refuses mappings past the end of
/// a file, and a copy would be a snapshot of state both sides write: refused, with a clear
/// error, and nothing mapped.
#[test]
fn the_activation_record_is_refused_never_copied() {
    let mut fx = setup();
    let record = activation_record();
    let ids = message(&mut fx, b"Core.AddMem", &[record.as_raw_fd()]);
    let id = ids[0].0;
    for _ in 0..2 {
        let res = fx.vm.next_resource_id();
        let r = fx.vm.create_host_blob(
            fx.ctx.ctx_id,
            res,
            id.into(),
            PAGE,
            BLOB_FLAG_USE_MAPPABLE | BLOB_FLAG_USE_SHAREABLE,
        );
        // Refused each time (the item is not consumed by a refusal).
        assert_resp(
            &r,
            RESP_ERR_UNSPEC,
            "CREATE_BLOB from the activation record",
        );
    }
    assert!(fx.daemon.wait_for_log(
        "of 2312 bytes is not a page multiple, cannot grow and is not write-sealed",
        T
    ));
    assert_eq!(fx.vm.shm_stats().maps, 0, "nothing mapped");
    assert_eq!(record.metadata().unwrap().len(), ACTIVATION_SIZE as u64);
    assert!(
        !fx.daemon.log().contains("the guest gets a copy"),
        "no snapshot handed out"
    );
    // The channel goes on.
    send_with_fds(&fx.host, b"next", &[]);
    assert!(matches!(
        fx.ctx.recv(&mut fx.vm, T),
        ChannelMsg::Receive { data, .. } if data == b"next"
    ));
}

/// What stays as it was: memory the daemon can make whole pages is shared (grown in place) or,
/// as a read-only view the host handed over (wlroots sends keymaps so), copied with a warning.
#[test]
fn growable_memory_is_shared_and_read_only_views_are_copied() {
    let mut fx = setup();
    let flags = BLOB_FLAG_USE_MAPPABLE | BLOB_FLAG_USE_SHAREABLE;
    // Unsealed and read-write: grown to a page and shared.
    let buffer = memfd_with(&pattern(ACTIVATION_SIZE, 5));
    let id = message(&mut fx, b"AddMem", &[buffer.as_raw_fd()])[0].0;
    let res = fx.vm.next_resource_id();
    assert_ok(
        &fx.vm
            .create_host_blob(fx.ctx.ctx_id, res, id.into(), PAGE, flags),
        "CREATE_BLOB from growable memory",
    );
    let r = fx.vm.resource_map_blob(res, 0);
    assert_resp(&r, RESP_OK_MAP_INFO, "MAP_BLOB");
    buffer.write_at(b"live", 10).unwrap();
    assert_eq!(fx.vm.shm_read(10, 4), b"live");
    assert_eq!(buffer.metadata().unwrap().len(), PAGE);
    // A read-only view of unsealed memory: copied, the host's object untouched.
    let keymap = memfd_with(&pattern(5000, 6));
    let ro = std::fs::File::open(format!("/proc/self/fd/{}", keymap.as_raw_fd())).unwrap();
    let id = message(&mut fx, b"keymap", &[ro.as_raw_fd()])[0].0;
    let res = fx.vm.next_resource_id();
    assert_ok(
        &fx.vm
            .create_host_blob(fx.ctx.ctx_id, res, id.into(), 2 * PAGE, flags),
        "CREATE_BLOB from a read-only view",
    );
    assert!(fx.daemon.wait_for_log("the guest gets a copy", T));
    assert_eq!(keymap.metadata().unwrap().len(), 5000);
}

/// Where the host and the guest exchange values in the activation record (inside its 2312
/// bytes, not page aligned, away from both ends).
const SLOT: u64 = 1000;
/// Rounds of the coherence test.
const ROUNDS: u64 = 5000;

/// With `--partial-pages map` and a VMM that maps the last page past the end of the file
/// (crosvm), the sealed 2312-byte activation record is the guest's memory itself: for
/// thousands of rounds the host changes it and wakes the guest, the guest reads the value
/// through its mapping, changes it and wakes the host, which reads the guest's value from its
/// own memfd. Never grown, never copied.
/// As muvm's bridge does with the activation record (item `mem_id`): a mappable HOST3D blob of
/// one page from it, mapped at `base` of the host-visible region, writable, holding the record
/// as the host wrote it. Returns the resource id.
fn map_record(fx: &mut Fx, mem_id: u32, base: u64, what: &str) -> u32 {
    let res = fx.vm.next_resource_id();
    assert_ok(
        &fx.vm.create_host_blob(
            fx.ctx.ctx_id,
            res,
            mem_id.into(),
            PAGE,
            BLOB_FLAG_USE_MAPPABLE | BLOB_FLAG_USE_SHAREABLE,
        ),
        "CREATE_BLOB from the activation record",
    );
    assert_resp(&fx.vm.resource_map_blob(res, base), RESP_OK_MAP_INFO, what);
    let m = fx.vm.shm_mapping_at(base).expect("mapped");
    assert_eq!((m.len, m.writable), (PAGE, true));
    assert_eq!(
        fx.vm.shm_read(base, ACTIVATION_SIZE),
        pattern(ACTIVATION_SIZE, 3)
    );
    res
}

/// [`ROUNDS`] rounds of PipeWire's pattern on the record mapped at `base`: the server writes
/// [`SLOT`] of its memfd and signals `readfd` (watched by the guest as `read_id`); the guest
/// reads the value in place, answers in place and signals `write_id` (the host's `writefd`);
/// the server reads the answer from its own memfd. Both sides must see every write.
fn coherent_rounds(
    fx: &mut Fx,
    record: &std::fs::File,
    (readfd, writefd): (&OwnedFd, &OwnedFd),
    (read_id, write_id): (u32, u32),
    base: u64,
) {
    watch(fx, read_id);
    for round in 1..=ROUNDS {
        // The server changes the record and wakes the client ...
        let value = round.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        record.write_all_at(&value.to_le_bytes(), SLOT).unwrap();
        nix::unistd::write(readfd, &1u64.to_ne_bytes()).unwrap();
        match fx.ctx.recv(&mut fx.vm, T) {
            ChannelMsg::Read { id, hang_up, data } => {
                assert_eq!((id, hang_up), (read_id, false), "round {round}");
                assert_eq!(data, 1u64.to_le_bytes(), "round {round}");
            }
            other => panic!("round {round}: expected READ, got {other:?}"),
        }
        // ... which reads the server's value in place, answers in place and wakes the server ...
        let seen = u64::from_le_bytes(fx.vm.shm_read(base + SLOT, 8).try_into().unwrap());
        assert_eq!(
            seen, value,
            "round {round}: the guest sees the host's write"
        );
        let answer = value.wrapping_add(1);
        fx.vm.shm_write(base + SLOT, &answer.to_le_bytes());
        fx.ctx
            .write(&mut fx.vm, write_id, &1u64.to_le_bytes(), false);
        // ... which reads the client's answer from its own memfd.
        assert_eq!(counter(writefd), Some(1), "round {round}");
        let mut got = [0u8; 8];
        record.read_exact_at(&mut got, SLOT).unwrap();
        assert_eq!(
            u64::from_le_bytes(got),
            answer,
            "round {round}: the host sees the guest's write"
        );
    }
}

#[test]
fn the_activation_record_is_shared_both_ways_under_crosvm_with_partial_pages_map() {
    let mut fx = setup_with(VmmKind::Crosvm, &["--partial-pages", "map"]);
    let record = activation_record();
    let add_mem = message(&mut fx, b"Core.AddMem", &[record.as_raw_fd()]);
    assert_eq!(
        add_mem,
        [(2, CD_ID_TYPE_VIRTGPU_BLOB, ACTIVATION_SIZE as u32)]
    );
    let peer = eventfd();
    let set_activation = message(&mut fx, b"ClientNode.SetActivation", &[peer.as_raw_fd()]);
    assert_eq!(set_activation, [(3, EVENTFD, 0)]);
    let (readfd, writefd) = (eventfd(), eventfd());
    let transport = message(
        &mut fx,
        b"ClientNode.Transport",
        &[readfd.as_raw_fd(), writefd.as_raw_fd()],
    );
    assert_eq!(transport, [(4, EVENTFD, 0), (5, EVENTFD, 0)]);
    let (mem_id, read_id, write_id) = (2u32, 4u32, 5u32);
    // As muvm's bridge: a mappable HOST3D blob of whole pages from the record, mapped.
    let base = 3 * PAGE;
    let res = map_record(&mut fx, mem_id, base, "MAP_BLOB of the activation record");
    // The guest sees the record as the host wrote it, and zeros after its end.
    let tail = (PAGE as usize) - ACTIVATION_SIZE;
    assert_eq!(
        fx.vm.shm_read(base + ACTIVATION_SIZE as u64, tail),
        vec![0; tail]
    );
    let start = Instant::now();
    coherent_rounds(
        &mut fx,
        &record,
        (&readfd, &writefd),
        (read_id, write_id),
        base,
    );
    let took = start.elapsed();
    eprintln!("{ROUNDS} coherent rounds in {took:?}");
    // The rest of the record is as the host made it: only the slot changed.
    let mut all = vec![0u8; ACTIVATION_SIZE];
    record.read_exact_at(&mut all, 0).unwrap();
    let mut expected = pattern(ACTIVATION_SIZE, 3);
    expected[SLOT as usize..SLOT as usize + 8].copy_from_slice(
        &ROUNDS
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(1)
            .to_le_bytes(),
    );
    assert_eq!(all, expected);
    assert_eq!(fx.vm.shm_read(base, ACTIVATION_SIZE), expected);
    assert_eq!(
        record.metadata().unwrap().len(),
        ACTIVATION_SIZE as u64,
        "never grown"
    );
    assert!(
        !fx.daemon.log().contains("the guest gets a copy"),
        "no snapshot handed out"
    );
    assert_eq!(fx.vm.shm_fatal(), None);
    let st = fx.vm.shm_stats();
    assert_eq!((st.maps, st.refused, st.violations), (1, 0, 0));
    assert_ok(&fx.vm.resource_unmap_blob(res), "UNMAP_BLOB");
    assert_ok(&fx.vm.resource_unref(res), "UNREF");
}

/// `--partial-pages map` is for VMMs that map a file's last page past its end; QEMU 11 refuses
/// such a mapping (its backing store size check), so under QEMU the blob is created but its
/// mapping fails with an error, nothing is mapped, and the record is still neither grown nor
/// copied.
#[test]
fn partial_pages_map_under_qemu_fails_the_mapping_not_the_device() {
    let mut fx = setup_with(VmmKind::Qemu, &["--partial-pages", "map"]);
    let record = activation_record();
    let id = message(&mut fx, b"Core.AddMem", &[record.as_raw_fd()])[0].0;
    let res = fx.vm.next_resource_id();
    assert_ok(
        &fx.vm.create_host_blob(
            fx.ctx.ctx_id,
            res,
            id.into(),
            PAGE,
            BLOB_FLAG_USE_MAPPABLE | BLOB_FLAG_USE_SHAREABLE,
        ),
        "CREATE_BLOB from the activation record",
    );
    let r = fx.vm.resource_map_blob(res, 0);
    assert_ne!(resp_type(&r), RESP_OK_MAP_INFO, "QEMU refuses the mapping");
    let st = fx.vm.shm_stats();
    assert_eq!((st.maps, st.refused), (0, 1));
    assert!(
        fx.vm
            .shm_last_refusal()
            .is_some_and(|m| m.contains("QEMU refuses")),
        "{:?}",
        fx.vm.shm_last_refusal()
    );
    assert_eq!(record.metadata().unwrap().len(), ACTIVATION_SIZE as u64);
    assert!(!fx.daemon.log().contains("the guest gets a copy"));
    // The channel goes on.
    send_with_fds(&fx.host, b"next", &[]);
    assert!(matches!(
        fx.ctx.recv(&mut fx.vm, T),
        ChannelMsg::Receive { data, .. } if data == b"next"
    ));
}

/// The start-up log says which partial-page mode is in effect.
#[test]
fn the_start_up_log_names_the_partial_page_mode() {
    let fx = setup();
    assert_log(&fx, "partial pages: refuse: ");
    let fx = setup_with(VmmKind::Crosvm, &["--partial-pages", "map"]);
    assert_log(&fx, "partial pages: map: ");
    let fx = setup_with(VmmKind::Qemu, &["--partial-pages", "auto"]);
    if udmabuf_unavailable().is_some() {
        assert_log(&fx, "partial pages: refuse (auto): ");
    } else {
        assert_log(&fx, "partial pages: udmabuf (auto): ");
    }
}

fn assert_log(fx: &Fx, needle: &str) {
    assert!(
        fx.daemon.wait_for_log(needle, T),
        "{needle:?} missing from:\n{}",
        fx.daemon.log()
    );
}

/// Why `/dev/udmabuf` cannot be used here, if it cannot.
fn udmabuf_unavailable() -> Option<std::io::Error> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/udmabuf")
        .err()
}

/// With `--partial-pages udmabuf` and a VMM that refuses mappings past the end of a file
/// (QEMU 11), the sealed 2312-byte activation record reaches the guest as a udmabuf over its
/// page: whole pages, so the mapping is accepted, and the memfd's own page, so for thousands of
/// rounds each side reads what the other wrote. Never grown, never copied. Runs only where
/// the host kernel has the udmabuf device (these build machines have none: CONFIG_UDMABUF is
/// unset), and otherwise says why it skipped.
#[test]
fn the_activation_record_is_shared_both_ways_under_qemu_through_a_udmabuf() {
    if let Some(e) = udmabuf_unavailable() {
        eprintln!(
            "skipped: /dev/udmabuf cannot be opened ({e}); the host kernel needs CONFIG_UDMABUF"
        );
        return;
    }
    let mut fx = setup_with(VmmKind::Qemu, &["--partial-pages", "udmabuf"]);
    assert_log(&fx, "partial pages: udmabuf: ");
    let record = activation_record();
    let add_mem = message(&mut fx, b"Core.AddMem", &[record.as_raw_fd()]);
    assert_eq!(
        add_mem,
        [(2, CD_ID_TYPE_VIRTGPU_BLOB, ACTIVATION_SIZE as u32)]
    );
    let (readfd, writefd) = (eventfd(), eventfd());
    let transport = message(
        &mut fx,
        b"ClientNode.Transport",
        &[readfd.as_raw_fd(), writefd.as_raw_fd()],
    );
    assert_eq!(transport, [(3, EVENTFD, 0), (4, EVENTFD, 0)]);
    let (mem_id, read_id, write_id) = (2u32, 3u32, 4u32);
    let base = 5 * PAGE;
    let res = map_record(
        &mut fx,
        mem_id,
        base,
        "MAP_BLOB of the activation record (a udmabuf QEMU accepts)",
    );
    coherent_rounds(
        &mut fx,
        &record,
        (&readfd, &writefd),
        (read_id, write_id),
        base,
    );
    assert_eq!(
        record.metadata().unwrap().len(),
        ACTIVATION_SIZE as u64,
        "never grown"
    );
    assert!(!fx.daemon.log().contains("the guest gets a copy"));
    assert_eq!(fx.vm.shm_fatal(), None);
    let st = fx.vm.shm_stats();
    assert_eq!((st.maps, st.refused, st.violations), (1, 0, 0));
    assert_ok(&fx.vm.resource_unmap_blob(res), "UNMAP_BLOB");
    assert_ok(&fx.vm.resource_unref(res), "UNREF");
}
