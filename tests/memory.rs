//! Shared memory through vhost-user: the host-visible region (SHMEM_MAP/UNMAP answered by the
//! test frontend), HOST3D blobs from received memfds and from image requirements, read-only
//! mappings, and the errors a hostile guest can provoke.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(10);
const PAGE: u64 = 4096;
const HOST_FLAGS: u32 = BLOB_FLAG_USE_MAPPABLE | BLOB_FLAG_USE_SHAREABLE;

struct Fx {
    daemon: Daemon,
    vm: TestVm,
    ctx: CrossDomainContext,
    host: UnixStream,
    _listener: UnixListener,
}

fn setup() -> Fx {
    let dir = temp_dir();
    let (path, l) = channel_listener(dir.path());
    let daemon = Daemon::start_in(
        dir,
        ["--channel".to_string(), format!("2:{}", path.display())],
    );
    let mut vm = TestVm::connect(daemon.socket_path());
    assert!(
        vm.shm_size().is_some(),
        "the device offers a host-visible region"
    );
    let ctx = CrossDomainContext::open(&mut vm, 1, 2);
    let host = accept_timeout(&l, T).expect("channel");
    host.set_nonblocking(false).unwrap();
    Fx {
        daemon,
        vm,
        ctx,
        host,
        _listener: l,
    }
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

fn map_blob(vm: &mut TestVm, res: u32, offset: u64) -> u32 {
    let r = vm.resource_map_blob(res, offset);
    assert_resp(&r, RESP_OK_MAP_INFO, "RESOURCE_MAP_BLOB");
    le32(&r, 24)
}

/// Host sends `fd` with one data byte; returns the identifier the guest received.
fn host_sends_fd(fx: &mut Fx, fd: i32) -> (u32, u32, u32) {
    send_with_fds(&fx.host, b"m", &[fd]);
    match fx.ctx.recv(&mut fx.vm, T) {
        ChannelMsg::Receive { ids, data } => {
            assert_eq!(data, b"m");
            assert_eq!(ids.len(), 1, "one identifier");
            ids[0]
        }
        other => panic!("expected RECEIVE, got {other:?}"),
    }
}

#[test]
fn shmem_config_reports_the_region() {
    let d = Daemon::start(["--shm-size", "64M"]);
    let vm = TestVm::connect(d.socket_path());
    assert_eq!(vm.shm_size(), Some(64 << 20));
    let d = Daemon::start(Vec::<&str>::new());
    let vm = TestVm::connect(d.socket_path());
    assert_eq!(vm.shm_size(), Some(8 << 30), "default 8 GiB");
}

#[test]
fn host_memfd_is_shared_with_the_guest_both_ways() {
    let mut fx = setup();
    let content = pattern(10_000, 42);
    let memfd = memfd_with(&content);
    let (id, ty, size) = host_sends_fd(&mut fx, memfd.as_raw_fd());
    assert_eq!((ty, size), (CD_ID_TYPE_VIRTGPU_BLOB, 10_000));
    let res = fx.vm.next_resource_id();
    let blob_size = round_up(10_000, PAGE);
    assert_ok(
        &fx.vm
            .create_host_blob(fx.ctx.ctx_id, res, id.into(), blob_size, HOST_FLAGS),
        "CREATE_BLOB HOST3D from the memfd",
    );
    assert_ok(&fx.vm.ctx_attach(fx.ctx.ctx_id, res), "attach");
    let offset = 16 * PAGE;
    assert_eq!(map_blob(&mut fx.vm, res, offset), 1, "map_info CACHED");
    let m = fx.vm.shm_mapping_at(offset).expect("mapped in the region");
    assert!(m.writable, "an O_RDWR unsealed memfd maps writable");
    assert_eq!(m.len, blob_size);
    // 10 000 bytes are not a page multiple: the daemon grew the memfd with zeros so the VMM can
    // map whole pages (QEMU refuses to map past the end of a file).
    assert_eq!(memfd.metadata().unwrap().len(), blob_size);
    // The guest reads exactly what the host wrote ...
    assert_eq!(fx.vm.shm_read(offset, content.len()), content);
    // ... and sees host writes made after the mapping (shared, not copied) ...
    memfd.write_at(b"HOST", 5000).unwrap();
    assert_eq!(fx.vm.shm_read(offset + 5000, 4), b"HOST");
    // ... and the host sees the guest's writes.
    fx.vm.shm_write(offset + 100, b"guest was here");
    let mut buf = [0u8; 14];
    memfd.read_at(&mut buf, 100).unwrap();
    assert_eq!(&buf, b"guest was here");
    // The received item was consumed: a second blob from the same id is refused.
    let res2 = fx.vm.next_resource_id();
    assert_resp(
        &fx.vm
            .create_host_blob(fx.ctx.ctx_id, res2, id.into(), blob_size, HOST_FLAGS),
        RESP_ERR_INVALID_PARAMETER,
        "CREATE_BLOB from a consumed id",
    );
    // Unmap, unref.
    assert_ok(&fx.vm.resource_unmap_blob(res), "UNMAP_BLOB");
    assert!(fx.vm.shm_mapping_at(offset).is_none());
    assert_ok(&fx.vm.resource_unref(res), "UNREF");
    assert_eq!(fx.vm.shm_stats().violations, 0);
}

#[test]
fn sealed_or_read_only_memory_maps_read_only() {
    let mut fx = setup();
    // A write-sealed memfd.
    let fd = nix::sys::memfd::memfd_create(
        c"sealed",
        nix::sys::memfd::MFdFlags::MFD_CLOEXEC | nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING,
    )
    .unwrap();
    let mut sealed = File::from(fd);
    sealed.write_all(&pattern(4096, 1)).unwrap();
    assert_eq!(
        // SAFETY: plain fcntl on an fd we own.
        unsafe { libc::fcntl(sealed.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_WRITE) },
        0
    );
    // An O_RDONLY view of an ordinary memfd.
    let plain = memfd_with(&pattern(4096, 2));
    let ro = File::open(format!("/proc/self/fd/{}", plain.as_raw_fd())).unwrap();
    for (i, (f, seed)) in [(&sealed, 1u32), (&ro, 2)].into_iter().enumerate() {
        let (id, _, size) = host_sends_fd(&mut fx, f.as_raw_fd());
        assert_eq!(size, 4096);
        let res = fx.vm.next_resource_id();
        assert_ok(
            &fx.vm
                .create_host_blob(fx.ctx.ctx_id, res, id.into(), 4096, HOST_FLAGS),
            "CREATE_BLOB read-only",
        );
        let off = i as u64 * PAGE;
        map_blob(&mut fx.vm, res, off);
        let m = fx.vm.shm_mapping_at(off).unwrap();
        assert!(!m.writable, "mapping {i} must be read-only");
        assert!(
            !fx.vm.shm_try_write(off, b"x"),
            "guest write must be impossible"
        );
        assert_eq!(fx.vm.shm_read(off, 4096), pattern(4096, seed));
    }
}

/// Independent reading of docs/protocol.md §7.2: (bytes per pixel, hsub, vsub) per plane.
fn planes(fourcc: &[u8; 4]) -> Vec<(u32, u32, u32)> {
    match fourcc {
        b"R8  " => vec![(1, 1, 1)],
        b"RG16" => vec![(2, 1, 1)],
        b"BG24" => vec![(3, 1, 1)],
        b"AB4H" => vec![(8, 1, 1)],
        b"NV12" => vec![(1, 1, 1), (2, 2, 2)],
        b"YV12" => vec![(1, 1, 1), (1, 2, 2), (1, 2, 2)],
        _ => vec![(4, 1, 1)],
    }
}

const FORMATS: [&[u8; 4]; 14] = [
    b"R8  ", b"RG16", b"BG24", b"XR24", b"XB24", b"AR24", b"AB24", b"XR30", b"XB30", b"AR30",
    b"AB30", b"AB4H", b"NV12", b"YV12",
];

#[test]
fn image_requirements_blobs_for_every_format_reach_the_host() {
    let mut fx = setup();
    let mut offset = 0u64;
    let mut blob_ids = Vec::new();
    for fourcc in FORMATS {
        let code = u32::from_le_bytes(*fourcc);
        for (w, h) in [(1u32, 1u32), (17, 9), (1920, 1080)] {
            let what = format!("{} {w}x{h}", String::from_utf8_lossy(fourcc));
            let r = fx
                .ctx
                .image_requirements(&mut fx.vm, w, h, code, 0x11)
                .unwrap_or_else(|resp| panic!("{what}: {resp:x?}"));
            // Expected layout, computed here from docs/protocol.md §7.2.
            let mut strides = [0u32; 4];
            let mut offsets = [0u32; 4];
            let mut total = 0u64;
            for (p, (bpp, hs, vs)) in planes(fourcc).into_iter().enumerate() {
                strides[p] = bpp * (w / hs);
                offsets[p] = total as u32;
                total += u64::from(h / vs) * u64::from(strides[p]);
            }
            assert_eq!(r.strides, strides, "{what} strides");
            assert_eq!(r.offsets, offsets, "{what} offsets");
            assert_eq!(r.size, round_up(total, PAGE), "{what} size");
            assert_eq!((r.modifier, r.map_info), (0, 1), "{what}");
            assert_eq!((r.memory_idx, r.physical_device_idx), (-1, -1), "{what}");
            assert!(!blob_ids.contains(&r.blob_id), "{what}: fresh blob_id");
            blob_ids.push(r.blob_id);
            // Allocate, map, write a pattern as the guest, send the blob to the host.
            let res = fx.vm.next_resource_id();
            assert_ok(
                &fx.vm
                    .create_host_blob(fx.ctx.ctx_id, res, r.blob_id.into(), r.size, HOST_FLAGS),
                &what,
            );
            assert_ok(&fx.vm.ctx_attach(fx.ctx.ctx_id, res), &what);
            map_blob(&mut fx.vm, res, offset);
            // A pattern at the start and a different one in the last 64 bytes; they never
            // overlap (a one-page blob gets a shorter head).
            let head = pattern(4096.min(r.size as usize - 64), code ^ w);
            let tail = pattern(64, code ^ h);
            fx.vm.shm_write(offset, &head);
            fx.vm.shm_write(offset + r.size - 64, &tail);
            fx.ctx
                .send(&mut fx.vm, b"buffer", &[(res, CD_ID_TYPE_VIRTGPU_BLOB)]);
            let (data, fds) = recv_with_fds(&fx.host, 64, T);
            assert_eq!(data, b"buffer", "{what}");
            assert_eq!(fds.len(), 1, "{what}: the blob's fd in the same message");
            let f = File::from(fds.into_iter().next().unwrap());
            assert_eq!(f.metadata().unwrap().len(), r.size, "{what}: memfd size");
            let mut got = vec![0u8; head.len()];
            f.read_exact_at(&mut got, 0).unwrap();
            assert_eq!(got, head, "{what}: host sees the guest's pattern");
            let mut got = vec![0u8; 64];
            f.read_exact_at(&mut got, r.size - 64).unwrap();
            assert_eq!(got, tail, "{what}: tail");
            // Reusable blob_id: a second allocation with the same id works.
            let res2 = fx.vm.next_resource_id();
            assert_ok(
                &fx.vm
                    .create_host_blob(fx.ctx.ctx_id, res2, r.blob_id.into(), r.size, HOST_FLAGS),
                &format!("{what}: blob_id reused"),
            );
            assert_ok(&fx.vm.resource_unref(res2), &what);
            assert_ok(&fx.vm.resource_unmap_blob(res), &what);
            assert_ok(&fx.vm.resource_unref(res), &what);
            offset += r.size;
        }
    }
    assert_eq!(fx.vm.shm_stats().violations, 0);
}

#[test]
fn image_requirements_errors() {
    let mut fx = setup();
    let p010 = u32::from_le_bytes(*b"P010");
    let xr24 = u32::from_le_bytes(*b"XR24");
    for (what, w, h, f) in [
        ("unsupported format", 16, 16, p010),
        ("overflowing size", 65536, 65536, xr24),
        ("zero width", 0, 16, xr24),
    ] {
        let r = fx.ctx.image_requirements(&mut fx.vm, w, h, f, 0);
        assert!(r.is_err(), "{what} must fail");
    }
    // Before INIT there is no query ring.
    let c = CrossDomainContext::create(&mut fx.vm, 9);
    assert!(c.image_requirements(&mut fx.vm, 4, 4, xr24, 0).is_err());
}

#[test]
fn mapping_errors_leave_the_device_serving() {
    let mut fx = setup();
    let region = fx.vm.shm_size().unwrap();
    let xr24 = u32::from_le_bytes(*b"XR24");
    let r = fx
        .ctx
        .image_requirements(&mut fx.vm, 64, 64, xr24, 0)
        .unwrap();
    let mk = |fx: &mut Fx| {
        let res = fx.vm.next_resource_id();
        assert_ok(
            &fx.vm
                .create_host_blob(fx.ctx.ctx_id, res, r.blob_id.into(), r.size, HOST_FLAGS),
            "CREATE_BLOB",
        );
        res
    };
    let a = mk(&mut fx);
    let b = mk(&mut fx);
    for (what, res, off) in [
        ("MAP outside the region", a, region),
        ("MAP straddling the end", a, region - PAGE),
        ("MAP at an unaligned offset", a, 100),
        ("MAP at an overflowing offset", a, u64::MAX - PAGE + 1),
        ("MAP of a guest blob", fx.ctx.query_ring.res_id, 0),
        ("MAP of an unknown resource", 0xabcd, 0),
    ] {
        let resp = fx.vm.resource_map_blob(res, off);
        assert_ne!(resp_type(&resp), RESP_OK_MAP_INFO, "{what}");
        assert!(resp_type(&resp) >= RESP_ERR_UNSPEC, "{what}");
    }
    map_blob(&mut fx.vm, a, 0);
    assert_resp(
        &fx.vm.resource_map_blob(a, 64 * PAGE),
        RESP_ERR_INVALID_PARAMETER,
        "MAP twice",
    );
    assert_resp(
        &fx.vm.resource_map_blob(b, 0),
        RESP_ERR_INVALID_PARAMETER,
        "overlapping MAP",
    );
    assert_resp(
        &fx.vm.resource_map_blob(b, r.size - PAGE),
        RESP_ERR_INVALID_PARAMETER,
        "MAP overlapping the tail of a live mapping",
    );
    assert_resp(
        &fx.vm.resource_unmap_blob(b),
        RESP_ERR_INVALID_PARAMETER,
        "UNMAP of an unmapped blob",
    );
    // The VMM refuses a map: an error, and the next one works.
    fx.vm.shm_refuse_next(1);
    assert_resp(
        &fx.vm.resource_map_blob(b, r.size),
        RESP_ERR_UNSPEC,
        "MAP refused by the VMM",
    );
    map_blob(&mut fx.vm, b, r.size);
    // CREATE_BLOB errors.
    for (what, blob_id, size, mem, expected) in [
        (
            "size mismatch",
            u64::from(r.blob_id),
            r.size + PAGE,
            BLOB_MEM_HOST3D,
            RESP_ERR_INVALID_PARAMETER,
        ),
        (
            "unknown blob_id",
            0x7777,
            r.size,
            BLOB_MEM_HOST3D,
            RESP_ERR_INVALID_PARAMETER,
        ),
        (
            "blob_id above 32 bits",
            1 << 40,
            r.size,
            BLOB_MEM_HOST3D,
            RESP_ERR_INVALID_PARAMETER,
        ),
        (
            "HOST3D_GUEST",
            u64::from(r.blob_id),
            r.size,
            BLOB_MEM_HOST3D_GUEST,
            RESP_ERR_UNSPEC,
        ),
    ] {
        let res = fx.vm.next_resource_id();
        let resp = fx.vm.create_blob_raw(&CreateBlob {
            ctx_id: fx.ctx.ctx_id,
            res_id: res,
            blob_mem: mem,
            blob_flags: HOST_FLAGS,
            blob_id,
            size,
            entries: vec![],
            nr_entries: None,
        });
        assert_resp(&resp, expected, what);
    }
    let res = fx.vm.next_resource_id();
    assert_resp(
        &fx.vm
            .create_host_blob(77, res, r.blob_id.into(), r.size, HOST_FLAGS),
        RESP_ERR_INVALID_CONTEXT_ID,
        "HOST3D blob in an unknown context",
    );
    // Still serving: a channel round trip.
    fx.ctx.send(&mut fx.vm, b"alive", &[]);
    assert_eq!(read_exact_timeout(&mut fx.host, 5, T), b"alive");
    // UNREF of a mapped blob unmaps it first.
    let unmaps = fx.vm.shm_stats().unmaps;
    assert_ok(&fx.vm.resource_unref(a), "UNREF mapped");
    assert_eq!(fx.vm.shm_stats().unmaps, unmaps + 1);
    assert!(fx.vm.shm_mapping_at(0).is_none());
    assert_eq!(fx.vm.shm_stats().violations, 0);
}

#[test]
fn a_thousand_blobs_leak_no_fd() {
    let mut fx = setup();
    let r8 = u32::from_le_bytes(*b"R8  ");
    let r = fx
        .ctx
        .image_requirements(&mut fx.vm, 4096, 1, r8, 0)
        .unwrap();
    assert_eq!(r.size, PAGE);
    let warm = fx.vm.next_resource_id();
    assert_ok(
        &fx.vm
            .create_host_blob(fx.ctx.ctx_id, warm, r.blob_id.into(), r.size, HOST_FLAGS),
        "warm-up",
    );
    assert_ok(&fx.vm.resource_unref(warm), "warm-up unref");
    let before = fd_count(fx.daemon.pid());
    for i in 0..1000u64 {
        let res = fx.vm.next_resource_id();
        assert_ok(
            &fx.vm
                .create_host_blob(fx.ctx.ctx_id, res, r.blob_id.into(), r.size, HOST_FLAGS),
            "CREATE_BLOB",
        );
        assert_ok(&fx.vm.ctx_attach(fx.ctx.ctx_id, res), "attach");
        map_blob(&mut fx.vm, res, (i % 16) * PAGE);
        fx.vm.shm_write((i % 16) * PAGE, &i.to_le_bytes());
        assert_ok(&fx.vm.resource_unmap_blob(res), "UNMAP");
        assert_ok(&fx.vm.ctx_detach(fx.ctx.ctx_id, res), "detach");
        assert_ok(&fx.vm.resource_unref(res), "UNREF");
    }
    let after = fd_count(fx.daemon.pid());
    eprintln!("daemon fds: {before} before, {after} after 1000 blobs");
    assert_eq!(after, before, "fd count changed: {before} -> {after}");
    let st = fx.vm.shm_stats();
    assert_eq!((st.maps, st.unmaps, st.violations), (1000, 1000, 0));
}

#[test]
fn guest_reset_drops_mappings_without_requests_to_a_stopped_vmm() {
    let mut fx = setup();
    let xr24 = u32::from_le_bytes(*b"XR24");
    let r = fx
        .ctx
        .image_requirements(&mut fx.vm, 32, 32, xr24, 0)
        .unwrap();
    let res = fx.vm.next_resource_id();
    assert_ok(
        &fx.vm
            .create_host_blob(fx.ctx.ctx_id, res, r.blob_id.into(), r.size, HOST_FLAGS),
        "CREATE_BLOB",
    );
    map_blob(&mut fx.vm, res, 0);
    let before = fx.vm.shm_stats();
    fx.vm.stop_queues();
    std::thread::sleep(Duration::from_millis(200));
    fx.vm.start_queues();
    let after = fx.vm.shm_stats();
    assert_eq!(after.violations, 0, "no SHMEM request while stopped");
    assert_eq!(
        after.unmaps, before.unmaps,
        "mappings are dropped, not unmapped"
    );
    // The device starts clean: the old resource is gone and offset 0 is free again.
    assert_resp(
        &fx.vm.resource_unref(res),
        RESP_ERR_INVALID_RESOURCE_ID,
        "resource after reset",
    );
    let ctx = CrossDomainContext::open(&mut fx.vm, 1, 2);
    let r = ctx.image_requirements(&mut fx.vm, 32, 32, xr24, 0).unwrap();
    let res = fx.vm.next_resource_id();
    assert_ok(
        &fx.vm
            .create_host_blob(ctx.ctx_id, res, r.blob_id.into(), r.size, HOST_FLAGS),
        "CREATE_BLOB after reset",
    );
    map_blob(&mut fx.vm, res, 0);
}

#[test]
fn memory_table_sent_again_while_running_like_qemu() {
    // QEMU 11.1.3 sends SET_MEM_TABLE (with NEED_REPLY) after each SHMEM_MAP/UNMAP, with the
    // mapping added as an extra region; the device must accept it while running.
    let mut fx = setup();
    let xr24 = u32::from_le_bytes(*b"XR24");
    let r = fx
        .ctx
        .image_requirements(&mut fx.vm, 64, 64, xr24, 0)
        .unwrap();
    for round in 0..5u64 {
        let res = fx.vm.next_resource_id();
        assert_ok(
            &fx.vm
                .create_host_blob(fx.ctx.ctx_id, res, r.blob_id.into(), r.size, HOST_FLAGS),
            "CREATE_BLOB",
        );
        map_blob(&mut fx.vm, res, round * r.size);
        fx.vm.set_mem_table_with_shm();
        fx.ctx.send(&mut fx.vm, b"still here", &[]);
        assert_eq!(read_exact_timeout(&mut fx.host, 10, T), b"still here");
        assert_ok(&fx.vm.resource_unmap_blob(res), "UNMAP");
        fx.vm.set_mem_table_with_shm();
        fx.host.write_all(b"and back").unwrap();
        match fx.ctx.recv(&mut fx.vm, T) {
            ChannelMsg::Receive { data, .. } => assert_eq!(data, b"and back"),
            other => panic!("expected RECEIVE, got {other:?}"),
        }
    }
    fx.vm.shm_assert_no_violations();
}

#[test]
fn odd_sized_sealed_memory_like_a_keymap_is_copied_into_whole_pages() {
    let mut fx = setup();
    let fd = nix::sys::memfd::memfd_create(
        c"keymap",
        nix::sys::memfd::MFdFlags::MFD_CLOEXEC | nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING,
    )
    .unwrap();
    let mut keymap = File::from(fd);
    let content = pattern(70_000, 11);
    keymap.write_all(&content).unwrap();
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    assert_eq!(
        // SAFETY: plain fcntl on an fd we own.
        unsafe { libc::fcntl(keymap.as_raw_fd(), libc::F_ADD_SEALS, seals) },
        0
    );
    let (id, ty, size) = host_sends_fd(&mut fx, keymap.as_raw_fd());
    assert_eq!((ty, size), (CD_ID_TYPE_VIRTGPU_BLOB, 70_000));
    let res = fx.vm.next_resource_id();
    let blob_size = round_up(70_000, PAGE);
    assert_ok(
        &fx.vm
            .create_host_blob(fx.ctx.ctx_id, res, id.into(), blob_size, HOST_FLAGS),
        "CREATE_BLOB from a sealed odd-sized memfd",
    );
    map_blob(&mut fx.vm, res, 0);
    let m = fx.vm.shm_mapping_at(0).unwrap();
    assert_eq!(m.len, blob_size);
    assert!(!m.writable);
    assert_eq!(fx.vm.shm_read(0, content.len()), content);
    assert_eq!(
        fx.vm.shm_read(70_000, (blob_size - 70_000) as usize),
        vec![0u8; (blob_size - 70_000) as usize],
        "zeros after the end"
    );
    assert_eq!(
        keymap.metadata().unwrap().len(),
        70_000,
        "the host's memfd is untouched"
    );
    assert_eq!(fx.vm.shm_stats().refused, 0);
}
