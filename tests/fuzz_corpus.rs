//! Replays the fuzz corpora and every crash the fuzzers ever found (`fuzz/corpus/<target>/`,
//! `fuzz/regressions/<target>/`) through the same entry points the fuzz targets use, on stable.
//!
//! The entry points are behind the `fuzzing` feature (Cargo.toml makes it a required feature of
//! this test), so the replay runs with `cargo test --all-targets --features fuzzing`.
//! `VUCD_WRITE_SEEDS=1 cargo test --features fuzzing --test fuzz_corpus` (re)writes the seed
//! inputs, built from the same requests the integration tests send, into `fuzz/corpus/`.

use std::path::{Path, PathBuf};

use support::*;
use vhost_user_cross_domain::fuzz_harness as h;

/// A fuzz target's name and entry point.
type Target = (&'static str, fn(&[u8]));

const TARGETS: [Target; 4] = [
    ("cross_domain", h::cross_domain_commands),
    ("control_queue", h::control_queue),
    ("virtqueue", h::virtqueue),
    ("config", h::config_parsers),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn corpora_and_regressions_replay_cleanly() {
    if std::env::var_os("VUCD_WRITE_SEEDS").is_some() {
        write_seeds();
    }
    let mut total = 0;
    for (name, run) in TARGETS {
        let mut n = 0;
        for kind in ["corpus", "regressions"] {
            for f in files(&root().join(kind).join(name)) {
                let data = std::fs::read(&f).unwrap();
                run(&data);
                n += 1;
            }
        }
        assert!(n > 0, "no seeds for fuzz target {name}");
        total += n;
    }
    eprintln!("replayed {total} fuzz inputs");
}

#[test]
fn harnesses_survive_edge_inputs() {
    for (_, run) in TARGETS {
        run(&[]);
        run(&[0]);
        run(&[0xff; 3]);
        run(&vec![0u8; 70_000]);
        run(&vec![0xffu8; 70_000]);
        run(&pattern(100_000, 1));
    }
}

// ---- seeds --------------------------------------------------------------------------------

fn op(kind: u8, bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend((bytes.len() as u16).to_le_bytes());
    v.extend_from_slice(bytes);
    v
}

fn cd_seeds() -> Vec<Vec<u8>> {
    let mut blob = 5u32.to_le_bytes().to_vec();
    blob.extend(4096u64.to_le_bytes());
    let event = |src: u32, ev: u32| {
        let mut v = src.to_le_bytes().to_vec();
        v.extend(ev.to_le_bytes());
        v
    };
    let xr24 = u32::from_le_bytes(*b"XR24");
    vec![
        [
            op(0, &cd_init(1, 2, 2)),
            op(1, &[]),
            op(0, &cd_send(b"hello", &[])),
        ]
        .concat(),
        [op(0, &cd_init_legacy(2, 2)), op(0, &cd_poll()), op(1, &[])].concat(),
        [
            op(0, &cd_init_v24(1, 2, 2, 1)),
            op(0, &cd_send(b"fds", &[(5, 1)])),
        ]
        .concat(),
        [
            op(0, &cd_init_36(1, 2, 2, [9; 16])),
            op(0, &cd_send(b"p", &[(0x8000_0001, 3)])),
            op(2, &event(0x8000_0001, 1)),
            op(1, &[]),
        ]
        .concat(),
        [
            op(0, &cd_init(1, 2, 0)),
            op(0, &cd_image_requirements(64, 64, xr24, 0x11)),
            op(3, &{
                let mut v = 2u32.to_le_bytes().to_vec();
                v.extend(16384u64.to_le_bytes());
                v
            }),
        ]
        .concat(),
        [op(0, &cd_init(1, 3, 2)), op(0, &cd_init(1, 2, 3))].concat(),
        [
            op(0, &cd_init(1, 2, 2)),
            op(0, &cd_write(2, b"data", true)),
            op(2, &event(0, 0x2011)),
            op(1, &[]),
            op(3, &blob),
        ]
        .concat(),
        [
            op(
                0,
                &[cd_init(1, 2, 2), cd_send(&pattern(3744, 3), &[]), cd_poll()].concat(),
            ),
            op(2, &event(0, 4)),
        ]
        .concat(),
        // Channel 4 is the harness's own host service: eventfds (ids 2, 3, 4), READ_EVENTFD_NEW,
        // signals, READs, WRITEs of good and bad sizes, both forms of command 12.
        [
            op(0, &cd_init_v24(1, 2, 4, 1)),
            op(4, &[3, 0, b'e']),
            op(1, &[]),
            op(0, &cmd_eventfd(11, 2, 16)),
            op(5, &[0, 1, 7, 0, 0, 0, 0, 0, 0, 0]),
            op(1, &[]),
            op(0, &cd_write(3, &5u64.to_le_bytes(), false)),
            op(0, &cd_write(3, b"four", false)),
            op(5, &[1, 0]),
            op(0, &cmd_eventfd(12, 2, 16)),
            op(0, &cmd_eventfd(12, 4, 32)),
            op(0, &cd_write(4, &1u64.to_le_bytes(), true)),
            op(1, &[]),
        ]
        .concat(),
        // Every kind of host fd, a sealed odd-sized memfd among them, then a blob from it.
        [
            op(0, &cd_init(1, 2, 4)),
            op(4, &[2, 0b0001_1011, b'm']),
            op(1, &[]),
            op(4, &[5, 0b1010_1100, b'x']),
            op(1, &[]),
            op(3, &{
                let mut v = 2u32.to_le_bytes().to_vec();
                v.extend(4096u64.to_le_bytes());
                v
            }),
        ]
        .concat(),
        // Channel 0x12 is a host service too, whose policy carries sockets: two sockets (ids 2
        // and 3), ASSIGN_SOCKET_UUID (a duplicate and an unknown id among them), then the
        // second context (ops with the top bit) adopts one with a 36-byte INIT and SENDs on it.
        [
            op(0, &cd_init(1, 2, 0x12)),
            op(4, &[2, 0b0011_0110, b's']),
            op(1, &[]),
            op(0, &cd_assign_socket_uuid([0x11; 16], 2)),
            op(0, &cd_assign_socket_uuid([0x11; 16], 3)),
            op(0, &cd_assign_socket_uuid([0x22; 16], 9)),
            op(
                0x80,
                &cd_init_36(1, 2, CD_CHANNEL_INTERNAL_SOCKET, [0x33; 16]),
            ),
            op(
                0x80,
                &cd_init_36(1, 2, CD_CHANNEL_INTERNAL_SOCKET, [0x11; 16]),
            ),
            op(0x80, &cd_send(b"hi", &[(0x8000_0001, 3)])),
            op(0x81, &[]),
            op(0, &cd_assign_socket_uuid([0x44; 16], 3)),
        ]
        .concat(),
        // Channel 4 offers large rings (`ring=64K`): an INIT that asks for one (flag bit 0 of
        // the header's padding word) on the 64 KiB ring, resource 6; host messages and POLLs.
        [
            op(0, &{
                let mut init = cd_init(1, 6, 4);
                init[4..8].copy_from_slice(&1u32.to_le_bytes());
                init
            }),
            op(4, &[3, 0, b'e']),
            op(1, &[]),
            op(4, &[2, 0b0001_1011, b'm']),
            op(1, &[]),
        ]
        .concat(),
    ]
}

/// Command 11 or 12 of `size` bytes naming item `id`.
fn cmd_eventfd(cmd: u8, id: u32, size: u16) -> Vec<u8> {
    let mut v = cd_header(cmd, size).to_vec();
    v.resize(usize::from(size), 0);
    v[8..12].copy_from_slice(&id.to_le_bytes());
    v
}

/// A control-queue input: a memory image with `reqs` at 2 KiB steps and one two-descriptor
/// chain (request, 1 KiB response) per request.
fn cq_seed(reqs: &[Vec<u8>]) -> Vec<u8> {
    let mut image = vec![0u8; 0x1_0000];
    let mut chains = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        let off = i * 0x800;
        assert!(r.len() <= 0x400 && off + 0x800 <= image.len());
        image[off..off + r.len()].copy_from_slice(r);
        chains.push(2u8);
        chains.extend((off as u32).to_le_bytes());
        chains.extend((r.len() as u32).to_le_bytes());
        chains.push(0);
        chains.extend((off as u32 + 0x400).to_le_bytes());
        chains.extend(0x400u32.to_le_bytes());
        chains.push(1);
    }
    [image, chains].concat()
}

fn blob_req(
    res: u32,
    ctx: u32,
    mem: u32,
    blob_id: u64,
    size: u64,
    entries: &[(u64, u32)],
) -> Vec<u8> {
    CreateBlob {
        ctx_id: ctx,
        res_id: res,
        blob_mem: mem,
        blob_flags: 3,
        blob_id,
        size,
        entries: entries.to_vec(),
        nr_entries: None,
    }
    .encode()
}

fn cq_seeds() -> Vec<Vec<u8>> {
    // Guest memory base of the harness is 0x10000; blob pages live above the image.
    let page = |n: u64| 0x1_0000 + 0x2_0000 + n * 0x1000;
    let session = vec![
        req_get_display_info(),
        req_get_capset_info(0),
        req_get_capset(5, 0),
        req_ctx_create(1, 5, b"seed"),
        blob_req(10, 0, 1, 0, 4096, &[(page(0), 4096)]),
        blob_req(11, 0, 1, 0, 8192, &[(page(2), 4096), (page(1), 4096)]),
        req_ctx_attach(1, 10),
        req_ctx_attach(1, 11),
        req_submit_3d(1, &cd_init(10, 11, 0), None),
        req_submit_3d(
            1,
            &cd_image_requirements(16, 16, u32::from_le_bytes(*b"AR24"), 0),
            Some((1, Some(0))),
        ),
        blob_req(12, 1, 2, 2, 4096, &[]),
        req_resource_map_blob(12, 0),
        req_resource_map_blob(12, 4096),
        req_resource_assign_uuid(12),
        req_resource_unmap_blob(12),
        req_submit_3d(1, &cd_poll(), Some((2, Some(1)))),
        req_ctx_detach(1, 10),
        req_resource_unref(12),
        req_ctx_destroy(1),
    ];
    let twod = {
        let mut v = Vec::new();
        let w = |cmd: u32, words: &[u32]| {
            let mut r = hdr(cmd, 0, 0, 0, 0).to_vec();
            for x in words {
                r.extend(x.to_le_bytes());
            }
            r
        };
        v.push(w(0x0101, &[5, 2, 64, 32]));
        let mut ab = w(0x0106, &[5, 1]);
        ab.extend(page(4).to_le_bytes());
        ab.extend([0u8, 0x20, 0, 0, 0, 0, 0, 0]);
        v.push(ab);
        v.push(w(0x0103, &[0, 0, 64, 32, 0, 5]));
        v.push(w(0x0105, &[0, 0, 64, 32, 0, 0, 5, 0]));
        v.push(w(0x0104, &[0, 0, 64, 32, 5, 0]));
        v.push(w(0x0300, &[0, 1, 1, 0, 5, 0, 0, 0]));
        v.push(w(0x0107, &[5, 0]));
        v.push(w(0x0102, &[5, 0]));
        v
    };
    vec![
        cq_seed(&session),
        cq_seed(&twod),
        cq_seed(&[hdr(0x999, 1, 7, 3, 9).to_vec()]),
    ]
}

fn vq_seeds() -> Vec<Vec<u8>> {
    // Descriptor table (16 x 16 bytes), avail ring, memory image at +0x3000 of the base.
    let base = 0x1_0000u64;
    let req = req_get_capset_info(0);
    let mut table = vec![0u8; 256];
    let d = |t: &mut Vec<u8>, i: usize, addr: u64, len: u32, flags: u16, next: u16| {
        t[i * 16..i * 16 + 8].copy_from_slice(&addr.to_le_bytes());
        t[i * 16 + 8..i * 16 + 12].copy_from_slice(&len.to_le_bytes());
        t[i * 16 + 12..i * 16 + 14].copy_from_slice(&flags.to_le_bytes());
        t[i * 16 + 14..i * 16 + 16].copy_from_slice(&next.to_le_bytes());
    };
    d(&mut table, 0, base + 0x3000, req.len() as u32, 1, 1);
    d(&mut table, 1, base + 0x3800, 64, 2, 0);
    d(&mut table, 2, base + 0x3000, req.len() as u32, 1, 2); // a loop
    let mut avail = vec![0u8, 0];
    avail.extend(2u16.to_le_bytes());
    avail.extend(0u16.to_le_bytes());
    avail.extend(2u16.to_le_bytes());
    avail.resize(4 + 32, 0);
    vec![[table, avail, req].concat()]
}

fn config_seeds() -> Vec<Vec<u8>> {
    [
        "2:/run/portal.sock",
        "wayland:/run/user/1000/wayland-0",
        "0x12:/tmp/dbus\n0X13:/tmp/sys",
        "dbus-session:",
        ":/x",
        "4294967295:/x",
        "8G",
        "64M",
        "1",
        "16",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn write_seeds() {
    for (name, seeds) in [
        ("cross_domain", cd_seeds()),
        ("control_queue", cq_seeds()),
        ("virtqueue", vq_seeds()),
        ("config", config_seeds()),
    ] {
        let dir = root().join("corpus").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), s).unwrap();
        }
    }
}
