//! A hostile guest: malformed requests get an error response (or, for broken descriptor
//! chains, are dropped) and the next valid request is answered correctly. Nothing leaks.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(10);

struct Fixture {
    daemon: Daemon,
    vm: TestVm,
    ctx: CrossDomainContext,
    host: UnixStream,
    /// Keeps channel 2 listening: later INITs in a test connect to it.
    _listener: UnixListener,
}

/// A daemon with channel 2, a VM, one working context and its host end.
fn setup() -> Fixture {
    let dir = temp_dir();
    let (path, l) = channel_listener(dir.path());
    let daemon = Daemon::start_in(
        dir,
        ["--channel".to_string(), format!("2:{}", path.display())],
    );
    let mut vm = TestVm::connect(daemon.socket_path());
    let ctx = CrossDomainContext::open(&mut vm, 1, 2);
    let mut host = accept_timeout(&l, T).expect("channel");
    host.set_nonblocking(false).unwrap();
    // Sanity: the context works before anything bad happens.
    ctx.send(&mut vm, b"ok", &[]);
    assert_eq!(read_exact_timeout(&mut host, 2, T), b"ok");
    Fixture {
        daemon,
        vm,
        ctx,
        host,
        _listener: l,
    }
}

/// The device still works: a control query and a round trip on the context.
fn still_serving(vm: &mut TestVm, ctx: &CrossDomainContext, host: &mut UnixStream, tag: &str) {
    assert_resp(
        &vm.get_capset_info(0),
        RESP_OK_CAPSET_INFO,
        &format!("GET_CAPSET_INFO after {tag}"),
    );
    let msg = format!("after {tag}");
    ctx.send(vm, msg.as_bytes(), &[]);
    assert_eq!(read_exact_timeout(host, msg.len(), T), msg.as_bytes());
    host.write_all(b"pong").unwrap();
    match ctx.recv(vm, T) {
        ChannelMsg::Receive { data, .. } => assert_eq!(data, b"pong", "{tag}"),
        other => panic!("{tag}: expected RECEIVE, got {other:?}"),
    }
}

fn submit(vm: &mut TestVm, ctx_id: u32, cmds: &[u8]) -> Vec<u8> {
    vm.submit_3d_wait(ctx_id, cmds, None)
}

#[test]
fn bad_cross_domain_command_streams() {
    let Fixture {
        daemon: _d,
        mut vm,
        ctx,
        mut host,
        _listener: _l,
    } = setup();
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        (
            "cmd_size 0",
            cd_header(CD_CMD_POLL, 0).to_vec(),
            RESP_ERR_INVALID_PARAMETER,
        ),
        (
            "cmd_size 7",
            cd_header(CD_CMD_POLL, 7).to_vec(),
            RESP_ERR_INVALID_PARAMETER,
        ),
        (
            "cmd_size past the buffer",
            cd_header(CD_CMD_POLL, 100).to_vec(),
            RESP_ERR_INVALID_PARAMETER,
        ),
        (
            "truncated header",
            vec![CD_CMD_POLL, 0, 16],
            RESP_ERR_INVALID_PARAMETER,
        ),
        (
            "unknown command",
            {
                let mut v = cd_header(99, 16).to_vec();
                v.extend([0u8; 8]);
                v
            },
            RESP_ERR_INVALID_PARAMETER,
        ),
        (
            "INIT twice",
            cd_init(ctx.query_ring.res_id, ctx.channel_ring.res_id, 2),
            RESP_ERR_INVALID_PARAMETER,
        ),
        (
            "SEND with 29 identifiers",
            {
                let mut v = cd_send(b"x", &[]);
                v[CD_SR_NUM_IDS..CD_SR_NUM_IDS + 4].copy_from_slice(&29u32.to_le_bytes());
                v
            },
            RESP_ERR_INVALID_PARAMETER,
        ),
        (
            "SEND with data past cmd_size",
            {
                let mut v = cd_send(b"abc", &[]);
                v[CD_SR_DATA_SIZE..CD_SR_DATA_SIZE + 4].copy_from_slice(&4000u32.to_le_bytes());
                v
            },
            RESP_ERR_INVALID_PARAMETER,
        ),
        (
            "SEND shorter than its header",
            cd_send(b"", &[])[..100].to_vec(),
            RESP_ERR_INVALID_PARAMETER,
        ),
        (
            "SEND of an unattached resource",
            cd_send(b"x", &[(0x999, CD_ID_TYPE_VIRTGPU_BLOB)]),
            RESP_ERR_INVALID_RESOURCE_ID,
        ),
        (
            "SEND of a guest blob (no host fd)",
            cd_send(b"x", &[(ctx.query_ring.res_id, CD_ID_TYPE_VIRTGPU_BLOB)]),
            RESP_ERR_INVALID_RESOURCE_ID,
        ),
        (
            "SEND with VIRTGPU_SYNC",
            cd_send(b"x", &[(1, CD_ID_TYPE_VIRTGPU_SYNC)]),
            RESP_ERR_INVALID_PARAMETER,
        ),
        (
            "SEND with identifier type 5",
            cd_send(b"x", &[(1, 5)]),
            RESP_ERR_INVALID_PARAMETER,
        ),
        (
            "SEND with a mispredicted read pipe",
            cd_send(b"x", &[(CD_READ_PIPE_ID_BASE + 7, CD_ID_TYPE_READ_PIPE)]),
            RESP_ERR_INVALID_PARAMETER,
        ),
        (
            "WRITE to an unknown item",
            cd_write(12345, b"data", false),
            RESP_ERR_INVALID_PARAMETER,
        ),
        (
            "WRITE with data past cmd_size",
            {
                let mut v = cd_write(2, b"data", false);
                v[16..20].copy_from_slice(&100u32.to_le_bytes());
                v
            },
            RESP_ERR_INVALID_PARAMETER,
        ),
    ];
    for (what, cmds, expected) in cases {
        let r = submit(&mut vm, ctx.ctx_id, &cmds);
        assert_resp(&r, expected, what);
        still_serving(&mut vm, &ctx, &mut host, what);
    }
    // A mispredicted read pipe consumed no id: the right prediction still works.
    ctx.send(
        &mut vm,
        b"p",
        &[(CD_READ_PIPE_ID_BASE + 1, CD_ID_TYPE_READ_PIPE)],
    );
    let (data, fds) = recv_with_fds(&host, 16, T);
    assert_eq!((data.as_slice(), fds.len()), (b"p".as_slice(), 1));
}

#[test]
fn bad_init() {
    let Fixture {
        daemon: _d,
        mut vm,
        ctx,
        mut host,
        _listener: _l,
    } = setup();
    // Rings not attached to the context.
    let a = CrossDomainContext::create(&mut vm, 2);
    let q = vm.next_resource_id();
    let _unattached = vm.create_guest_blob(q, 4096);
    assert_resp(
        &submit(&mut vm, 2, &cd_init(q, a.channel_ring.res_id, 2)),
        RESP_ERR_INVALID_RESOURCE_ID,
        "INIT with an unattached query ring",
    );
    assert_resp(
        &submit(&mut vm, 2, &cd_init(a.query_ring.res_id, 0xdead, 2)),
        RESP_ERR_INVALID_RESOURCE_ID,
        "INIT with an unknown channel ring",
    );
    // A channel ring too small for one message.
    let small = vm.next_resource_id();
    vm.create_guest_blob(small, 1024);
    assert_ok(&vm.ctx_attach(2, small), "attach small ring");
    assert_resp(
        &submit(&mut vm, 2, &cd_init(a.query_ring.res_id, small, 2)),
        RESP_ERR_INVALID_PARAMETER,
        "INIT with a 1 KiB channel ring",
    );
    // INIT sizes other than 16, 20, 24, 36.
    let mut odd = cd_init(a.query_ring.res_id, a.channel_ring.res_id, 2);
    odd.extend([0u8; 8]);
    odd[2..4].copy_from_slice(&28u16.to_le_bytes());
    assert_resp(
        &submit(&mut vm, 2, &odd),
        RESP_ERR_INVALID_PARAMETER,
        "INIT of 28 bytes",
    );
    // A channel type that is not configured.
    let dead = CrossDomainContext::create(&mut vm, 3);
    assert_resp(
        &submit(
            &mut vm,
            3,
            &cd_init(dead.query_ring.res_id, dead.channel_ring.res_id, 0x12),
        ),
        RESP_ERR_INVALID_PARAMETER,
        "INIT on an unconfigured channel",
    );
    // Context after all those failures still INITs fine.
    assert_ok(
        &submit(
            &mut vm,
            2,
            &cd_init(a.query_ring.res_id, a.channel_ring.res_id, 0),
        ),
        "INIT after failures",
    );
    still_serving(&mut vm, &ctx, &mut host, "bad INITs");
}

#[test]
fn channel_socket_gone_is_reported() {
    let dir = temp_dir();
    let path = dir.path().join("nobody-listens.sock");
    let d = Daemon::start_in(
        dir,
        ["--channel".to_string(), format!("2:{}", path.display())],
    );
    let mut vm = TestVm::connect(d.socket_path());
    let ctx = CrossDomainContext::create(&mut vm, 1);
    let r = submit(
        &mut vm,
        1,
        &cd_init(ctx.query_ring.res_id, ctx.channel_ring.res_id, 2),
    );
    assert_resp(&r, RESP_ERR_UNSPEC, "INIT when the host socket is missing");
    assert!(
        d.wait_for_log("nobody-listens.sock", T),
        "connect failure logged"
    );
}

#[test]
fn bad_control_requests() {
    let Fixture {
        daemon: _d,
        mut vm,
        ctx,
        mut host,
        _listener: _l,
    } = setup();
    let unknown = hdr(0x0999, 0, 0, 0, 0);
    assert_resp(&vm.ctrl(&unknown, 64), RESP_ERR_UNSPEC, "unknown command");
    assert_resp(
        &vm.ctx_attach(ctx.ctx_id, 0x4242),
        RESP_ERR_INVALID_RESOURCE_ID,
        "attach of an unknown resource",
    );
    assert_resp(
        &vm.ctx_attach(77, ctx.query_ring.res_id),
        RESP_ERR_INVALID_CONTEXT_ID,
        "attach to an unknown context",
    );
    assert_resp(
        &vm.ctx_create(ctx.ctx_id, CAPSET_CROSS_DOMAIN),
        RESP_ERR_INVALID_CONTEXT_ID,
        "CTX_CREATE of an existing id",
    );
    assert_resp(
        &vm.ctx_create(0, CAPSET_CROSS_DOMAIN),
        RESP_ERR_INVALID_CONTEXT_ID,
        "CTX_CREATE of id 0",
    );
    assert_resp(
        &vm.ctx_create(9, 4),
        RESP_ERR_INVALID_PARAMETER,
        "CTX_CREATE with capset 4",
    );
    assert_resp(
        &vm.ctx_destroy(55),
        RESP_ERR_INVALID_CONTEXT_ID,
        "destroy unknown",
    );
    assert_resp(
        &vm.submit_3d_wait(55, &cd_poll(), None),
        RESP_ERR_INVALID_CONTEXT_ID,
        "SUBMIT_3D to an unknown context",
    );
    // SUBMIT_3D whose size exceeds the request, and with in-fences.
    let mut r = req_submit_3d(ctx.ctx_id, &cd_poll(), None);
    r[24..28].copy_from_slice(&1000u32.to_le_bytes());
    assert_resp(
        &vm.ctrl(&r, 24),
        RESP_ERR_INVALID_PARAMETER,
        "SUBMIT_3D size",
    );
    let mut r = req_submit_3d(ctx.ctx_id, &cd_poll(), None);
    r[28..32].copy_from_slice(&1u32.to_le_bytes());
    assert_resp(
        &vm.ctrl(&r, 24),
        RESP_ERR_INVALID_PARAMETER,
        "SUBMIT_3D in-fences",
    );
    // A request shorter than its command's body.
    assert_resp(
        &vm.ctrl(&hdr(CMD_CTX_ATTACH_RESOURCE, 0, 0, 1, 0), 24),
        RESP_ERR_INVALID_PARAMETER,
        "short CTX_ATTACH_RESOURCE",
    );
    // Fence on ring 2: cross-domain has rings 0 and 1 only.
    let f = vm.next_fence_id();
    assert_resp(
        &vm.submit_3d_wait(ctx.ctx_id, &cd_poll(), Some((f, Some(2)))),
        RESP_ERR_INVALID_PARAMETER,
        "fence on ring 2",
    );
    // Fences on ring 0 and on the global timeline complete at once.
    let f = vm.next_fence_id();
    assert_ok(
        &vm.submit_3d_wait(ctx.ctx_id, &cd_poll(), Some((f, Some(0)))),
        "ring 0 fence",
    );
    let f = vm.next_fence_id();
    assert_ok(
        &vm.submit_3d_wait(ctx.ctx_id, &cd_poll(), Some((f, None))),
        "global fence",
    );
    // 3D commands have no renderer.
    let mut c3d = hdr(CMD_RESOURCE_CREATE_3D, 0, 0, 0, 0).to_vec();
    c3d.extend([0u8; 48]);
    assert_resp(&vm.ctrl(&c3d, 24), RESP_ERR_UNSPEC, "RESOURCE_CREATE_3D");
    // Mapping a guest blob: there is no host memory to map.
    assert_ne!(
        resp_type(&vm.resource_map_blob(ctx.query_ring.res_id, 0)),
        RESP_OK_MAP_INFO,
        "MAP_BLOB of a guest blob"
    );
    still_serving(&mut vm, &ctx, &mut host, "bad control requests");
}

#[test]
fn bad_blobs() {
    let Fixture {
        daemon: _d,
        mut vm,
        ctx,
        mut host,
        _listener: _l,
    } = setup();
    let good = vm.alloc(8192, 4096);
    let base = CreateBlob {
        ctx_id: 0,
        res_id: 0x500,
        blob_mem: BLOB_MEM_GUEST,
        blob_flags: BLOB_FLAG_USE_MAPPABLE,
        blob_id: 0,
        size: 4096,
        entries: vec![(good, 4096)],
        nr_entries: None,
    };
    let end = vm.mem_end();
    let cases: Vec<(&str, CreateBlob, u32)> = vec![
        (
            "entry outside guest memory",
            CreateBlob {
                entries: vec![(end + 4096, 4096)],
                ..base.clone()
            },
            RESP_ERR_INVALID_PARAMETER,
        ),
        (
            "entry straddling the end of memory",
            CreateBlob {
                entries: vec![(end - 2048, 4096)],
                ..base.clone()
            },
            RESP_ERR_INVALID_PARAMETER,
        ),
        (
            "entry whose end overflows",
            CreateBlob {
                entries: vec![(u64::MAX - 100, 4096)],
                ..base.clone()
            },
            RESP_ERR_INVALID_PARAMETER,
        ),
        (
            "zero-length entry",
            CreateBlob {
                entries: vec![(good, 0)],
                ..base.clone()
            },
            RESP_ERR_INVALID_PARAMETER,
        ),
        (
            "nr_entries past the request",
            CreateBlob {
                nr_entries: Some(1000),
                ..base.clone()
            },
            RESP_ERR_INVALID_PARAMETER,
        ),
        (
            "huge nr_entries",
            CreateBlob {
                nr_entries: Some(u32::MAX),
                ..base.clone()
            },
            RESP_ERR_OUT_OF_MEMORY,
        ),
        (
            "no entries",
            CreateBlob {
                entries: vec![],
                ..base.clone()
            },
            RESP_ERR_INVALID_PARAMETER,
        ),
        (
            "size larger than the entries",
            CreateBlob {
                size: 8192,
                ..base.clone()
            },
            RESP_ERR_INVALID_PARAMETER,
        ),
        (
            "resource id 0",
            CreateBlob {
                res_id: 0,
                ..base.clone()
            },
            RESP_ERR_INVALID_RESOURCE_ID,
        ),
        (
            "existing resource id",
            CreateBlob {
                res_id: ctx.query_ring.res_id,
                ..base.clone()
            },
            RESP_ERR_INVALID_RESOURCE_ID,
        ),
        (
            "unknown blob_mem",
            CreateBlob {
                blob_mem: 9,
                ..base.clone()
            },
            RESP_ERR_INVALID_PARAMETER,
        ),
        (
            "unknown blob flags",
            CreateBlob {
                blob_flags: 0x80,
                ..base.clone()
            },
            RESP_ERR_INVALID_PARAMETER,
        ),
    ];
    for (what, blob, expected) in cases {
        assert_resp(&vm.create_blob_raw(&blob), expected, what);
        still_serving(&mut vm, &ctx, &mut host, what);
    }
    assert_ok(&vm.create_blob_raw(&base), "the valid blob");
}

#[test]
fn broken_descriptor_chains_are_dropped() {
    let Fixture {
        daemon: _d,
        mut vm,
        ctx,
        mut host,
        _listener: _l,
    } = setup();
    let end = vm.mem_end();
    let req_gpa = vm.alloc(4096, 4096);
    vm.write_mem(req_gpa, &req_get_capset_info(0));
    let resp_gpa = vm.alloc(4096, 4096);
    // Response buffer outside guest memory.
    let head = vm.submit_descs(
        CONTROLQ,
        &[
            RawDesc::readable(req_gpa, 32, Some(1)),
            RawDesc::writable(end + 0x10000, 40, None),
        ],
    );
    let used = vm.wait_for_used(CONTROLQ, head, T).expect("chain returned");
    assert_eq!(used.len, 0, "dropped chain reports 0 bytes");
    still_serving(&mut vm, &ctx, &mut host, "response outside memory");
    // Request buffer whose address overflows.
    let head = vm.submit_descs(
        CONTROLQ,
        &[
            RawDesc::readable(u64::MAX - 8, 32, Some(1)),
            RawDesc::writable(resp_gpa, 40, None),
        ],
    );
    assert_eq!(vm.wait_for_used(CONTROLQ, head, T).unwrap().len, 0);
    // Readable after writable.
    let head = vm.submit_descs(
        CONTROLQ,
        &[
            RawDesc::writable(resp_gpa, 40, Some(1)),
            RawDesc::readable(req_gpa, 32, None),
        ],
    );
    assert_eq!(vm.wait_for_used(CONTROLQ, head, T).unwrap().len, 0);
    // Response buffer too small for any header.
    let head = vm.submit_descs(
        CONTROLQ,
        &[
            RawDesc::readable(req_gpa, 32, Some(1)),
            RawDesc::writable(resp_gpa, 8, None),
        ],
    );
    assert_eq!(vm.wait_for_used(CONTROLQ, head, T).unwrap().len, 0);
    // Response buffer with room for a header but not for the answer: an error header.
    let head = vm.submit_descs(
        CONTROLQ,
        &[
            RawDesc::readable(req_gpa, 32, Some(1)),
            RawDesc::writable(resp_gpa, 24, None),
        ],
    );
    let used = vm.wait_for_used(CONTROLQ, head, T).unwrap();
    assert_eq!(used.len, 24);
    assert_eq!(resp_type(&used.data), RESP_ERR_INVALID_PARAMETER);
    // A request shorter than a control header, with room for the answer: ERR_UNSPEC, as
    // QEMU and crosvm answer it.
    let head = vm.submit_descs(
        CONTROLQ,
        &[
            RawDesc::readable(req_gpa, 23, Some(1)),
            RawDesc::writable(resp_gpa, 24, None),
        ],
    );
    let used = vm.wait_for_used(CONTROLQ, head, T).unwrap();
    assert_eq!(used.len, 24, "a short request gets a header-sized answer");
    assert_eq!(resp_type(&used.data), RESP_ERR_UNSPEC);
    // No request bytes at all, same answer.
    let head = vm.submit_descs(CONTROLQ, &[RawDesc::writable(resp_gpa, 24, None)]);
    let used = vm.wait_for_used(CONTROLQ, head, T).unwrap();
    assert_eq!(resp_type(&used.data), RESP_ERR_UNSPEC);
    // No response buffer at all.
    let head = vm.submit_descs(CONTROLQ, &[RawDesc::readable(req_gpa, 32, None)]);
    assert_eq!(vm.wait_for_used(CONTROLQ, head, T).unwrap().len, 0);
    still_serving(&mut vm, &ctx, &mut host, "broken chains");
}

#[test]
fn contexts_and_pipes_do_not_leak_fds() {
    let Fixture {
        daemon: d,
        mut vm,
        ctx,
        mut host,
        _listener: _l,
    } = setup();
    still_serving(&mut vm, &ctx, &mut host, "warm-up");
    let before = fd_count(d.pid());
    for round in 0..20u32 {
        let id = 100 + round;
        let c = CrossDomainContext::create(&mut vm, id);
        // INIT on channel 2 connects a new socket; the host side is accepted below.
        assert_ok(
            &c.submit(
                &mut vm,
                &cd_init(c.query_ring.res_id, c.channel_ring.res_id, 2),
            ),
            "INIT",
        );
        c.send(
            &mut vm,
            b"r",
            &[(CD_READ_PIPE_ID_BASE + 1, CD_ID_TYPE_READ_PIPE)],
        );
        // A pending POLL and a bad request before the context goes away.
        let _p = c.poll_next(&mut vm);
        let _ = c.try_write(&mut vm, 999, b"x", false);
        assert_ok(&vm.ctx_destroy(id), "CTX_DESTROY");
        assert_ok(&vm.resource_unref(c.query_ring.res_id), "unref q");
        assert_ok(&vm.resource_unref(c.channel_ring.res_id), "unref c");
    }
    still_serving(&mut vm, &ctx, &mut host, "20 contexts");
    let after = fd_count(d.pid());
    assert_eq!(after, before, "daemon fds before {before}, after {after}");
}

#[test]
fn attaching_is_bounded_per_context() {
    let Fixture {
        daemon: _d,
        mut vm,
        ctx,
        mut host,
        _listener: _l,
    } = setup();
    // One small resource attached 16384 times over would be a no-op; distinct ones count.
    let gpa = vm.alloc(4096, 4096);
    let mut refused = None;
    for i in 0..16_400u32 {
        let res = 0x10_0000 + i;
        let blob = CreateBlob {
            ctx_id: 0,
            res_id: res,
            blob_mem: BLOB_MEM_GUEST,
            blob_flags: BLOB_FLAG_USE_MAPPABLE,
            blob_id: 0,
            size: 4096,
            entries: vec![(gpa, 4096)],
            nr_entries: None,
        };
        assert_ok(&vm.create_blob_raw(&blob), "CREATE_BLOB");
        let r = vm.ctx_attach(ctx.ctx_id, res);
        if resp_type(&r) != RESP_OK_NODATA {
            refused = Some((i, resp_type(&r)));
            break;
        }
    }
    // The context already had its two rings attached.
    assert_eq!(
        refused,
        Some((16_384 - 2, RESP_ERR_OUT_OF_MEMORY)),
        "the 16385th attachment is refused"
    );
    still_serving(&mut vm, &ctx, &mut host, "the attachment limit");
}
