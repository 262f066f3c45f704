//! A guest that runs into a limit over and over: every refused request gets its error
//! response, the device keeps serving, and the daemon warns once per limit per context (later
//! hits are debug lines) instead of once per request. Likewise for fds a host service sends
//! into a full item table (which hang the channel up).

use std::os::fd::AsRawFd;
use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(10);

/// `MAX_ITEMS` (src/cross_domain/items.rs): received fds and pipes one context may hold.
const MAX_ITEMS: usize = 1024;
/// `MAX_IMAGE_REQUIREMENTS` (src/cross_domain/blobs.rs): distinct image requirements one
/// context may store.
const MAX_IMAGES: usize = 4096;
/// `MAX_IMAGE_REQUIREMENTS_PER_VM`: the same for all contexts together.
const MAX_IMAGES_PER_VM: usize = 65536;
/// `Limits::default().max_contexts` (src/virtio_gpu/gpu.rs).
const MAX_CONTEXTS: u32 = 1024;
/// Refused requests per context: more than the rate limiter's 10 messages per second, so
/// per-request warnings would show.
const HITS: usize = 20;

const R8: u32 = u32::from_le_bytes(*b"R8  ");

/// GET_IMAGE_REQUIREMENTS for an R8 image `width` × 1: a distinct query for every width.
fn r8_requirements(width: u32) -> Vec<u8> {
    cd_image_requirements(width, 1, R8, 0)
}

/// Log lines at `level` ("WARN", "DEBUG") that contain `needle`.
fn count(log: &str, level: &str, needle: &str) -> usize {
    let level = format!(" {level} ");
    log.lines()
        .filter(|l| l.contains(&level) && l.contains(needle))
        .count()
}

/// A query-only context (channel type 0) with `MAX_IMAGES` distinct image requirements
/// stored (widths `base + 1 ..= base + MAX_IMAGES`), 1024 queries per command stream.
fn full_context(vm: &mut TestVm, ctx_id: u32, base: u32) -> CrossDomainContext {
    let ctx = CrossDomainContext::open(vm, ctx_id, 0);
    fill_images(vm, &ctx, base, MAX_IMAGES);
    ctx
}

fn fill_images(vm: &mut TestVm, ctx: &CrossDomainContext, base: u32, n: usize) {
    let ctx_id = ctx.ctx_id;
    for start in (0..n).step_by(1024) {
        let end = n.min(start + 1024);
        let stream: Vec<u8> = (start..end)
            .flat_map(|i| r8_requirements(base + i as u32 + 1))
            .collect();
        assert_ok(
            &ctx.submit(vm, &stream),
            &format!("ctx {ctx_id}: GET_IMAGE_REQUIREMENTS {start}..{end}"),
        );
    }
}

/// `n` more distinct GET_IMAGE_REQUIREMENTS, each refused with ERR_OUT_OF_MEMORY.
fn hit_images_limit(vm: &mut TestVm, ctx: &CrossDomainContext, n: usize) {
    for i in 0..n {
        assert_resp(
            &ctx.submit(vm, &r8_requirements(1_000_000 + i as u32)),
            RESP_ERR_OUT_OF_MEMORY,
            &format!(
                "ctx {}: GET_IMAGE_REQUIREMENTS {i} past the limit",
                ctx.ctx_id
            ),
        );
    }
}

#[test]
fn image_requirements_limit_is_warned_about_once_per_context() {
    let daemon = Daemon::builder().rust_log("debug").spawn();
    let mut vm = TestVm::connect(daemon.socket_path());

    let ctx1 = full_context(&mut vm, 1, 0);
    hit_images_limit(&mut vm, &ctx1, HITS);
    let ctx2 = full_context(&mut vm, 2, 0);
    hit_images_limit(&mut vm, &ctx2, HITS);

    // The daemon logs a refusal before it answers, so the log is complete here.
    let refused = |ctx: u32| {
        format!("SUBMIT_3D (ctx {ctx}): cross-domain: too many distinct image requirements")
    };
    let first = |ctx: u32| {
        format!(
            "limit \"image requirements per context\" is {MAX_IMAGES}; further hits by ctx \
             {ctx} are logged at debug level"
        )
    };
    let log = daemon.log();
    for ctx in [1, 2] {
        assert_eq!(count(&log, "WARN", &refused(ctx)), 1, "ctx {ctx}:\n{log}");
        assert_eq!(count(&log, "WARN", &first(ctx)), 1, "ctx {ctx}:\n{log}");
        assert_eq!(
            count(&log, "DEBUG", &refused(ctx)),
            HITS - 1,
            "ctx {ctx}: later hits are debug lines\n{log}"
        );
    }

    // A query the context already made is answered from its table, even when it is full.
    let again = ctx1
        .image_requirements(&mut vm, 17, 1, R8, 0)
        .expect("a repeated query in a full context");
    let again2 = ctx1
        .image_requirements(&mut vm, 17, 1, R8, 0)
        .expect("the same query once more");
    assert_eq!(
        again.blob_id, again2.blob_id,
        "a repeated query gets the same blob id"
    );

    // A destroyed context is forgotten: a new context with the same id is reported again.
    assert_ok(&ctx1.destroy(&mut vm), "CTX_DESTROY 1");
    let ctx1 = full_context(&mut vm, 1, 0);
    hit_images_limit(&mut vm, &ctx1, 3);
    let log = daemon.log();
    assert_eq!(count(&log, "WARN", &first(1)), 2, "{log}");
    assert_eq!(count(&log, "WARN", &first(2)), 1, "{log}");

    // The device keeps serving: control queries, and contexts below the limit.
    assert_resp(
        &vm.get_capset_info(0),
        RESP_OK_CAPSET_INFO,
        "GET_CAPSET_INFO after the limit hits",
    );
    let ctx3 = CrossDomainContext::open(&mut vm, 3, 0);
    ctx3.image_requirements(&mut vm, 64, 64, u32::from_le_bytes(*b"XR24"), 0)
        .expect("GET_IMAGE_REQUIREMENTS in a fresh context");
    hit_images_limit(&mut vm, &ctx2, 1);
}

/// All contexts together store at most `MAX_IMAGES_PER_VM` image requirements; a destroyed
/// context gives its share back.
#[test]
fn image_requirements_have_a_vm_wide_budget() {
    let daemon = Daemon::builder().rust_log("debug").spawn();
    let mut vm = TestVm::connect(daemon.socket_path());
    let full = (MAX_IMAGES_PER_VM / MAX_IMAGES) as u32;
    let ctxs: Vec<_> = (1..=full).map(|id| full_context(&mut vm, id, 0)).collect();
    let extra = CrossDomainContext::open(&mut vm, full + 1, 0);
    for i in 0..HITS as u32 {
        assert_resp(
            &extra.submit(&mut vm, &r8_requirements(i + 1)),
            RESP_ERR_OUT_OF_MEMORY,
            &format!("GET_IMAGE_REQUIREMENTS {i} past the VM-wide budget"),
        );
    }
    let log = daemon.log();
    assert_eq!(
        count(&log, "WARN", "limit \"image requirements per VM\" is 65536"),
        1,
        "{log}"
    );
    let [first, ..] = ctxs.as_slice() else {
        unreachable!()
    };
    assert_ok(&first.clone().destroy(&mut vm), "CTX_DESTROY");
    fill_images(&mut vm, &extra, 0, MAX_IMAGES);
}

#[test]
fn contexts_limit_is_warned_about_once_outside_a_live_context() {
    let daemon = Daemon::builder().rust_log("debug").spawn();
    let mut vm = TestVm::connect(daemon.socket_path());
    for id in 1..=MAX_CONTEXTS {
        assert_ok(
            &vm.ctx_create(id, CAPSET_CROSS_DOMAIN),
            &format!("CTX_CREATE {id}"),
        );
    }
    // Every refused CTX_CREATE names a new id: they all count as "no live context", so the
    // record stays bounded and the warning is not repeated per id.
    for id in MAX_CONTEXTS + 1..=MAX_CONTEXTS + HITS as u32 {
        assert_resp(
            &vm.ctx_create(id, CAPSET_CROSS_DOMAIN),
            RESP_ERR_OUT_OF_MEMORY,
            &format!("CTX_CREATE {id} past the context limit"),
        );
    }
    let log = daemon.log();
    let refused = "limit reached: contexts per VM";
    assert_eq!(count(&log, "WARN", refused), 1, "{log}");
    assert_eq!(
        count(
            &log,
            "WARN",
            "limit \"contexts per VM\" is 1024; further hits outside a live context are logged \
             at debug level"
        ),
        1,
        "{log}"
    );
    assert_eq!(count(&log, "DEBUG", refused), HITS - 1, "{log}");

    // Still serving: a freed slot can be used again.
    assert_ok(&vm.ctx_destroy(MAX_CONTEXTS), "CTX_DESTROY");
    assert_ok(
        &vm.ctx_create(MAX_CONTEXTS + 1, CAPSET_CROSS_DOMAIN),
        "CTX_CREATE into the freed slot",
    );
    assert_resp(
        &vm.get_capset_info(0),
        RESP_OK_CAPSET_INFO,
        "GET_CAPSET_INFO after the limit hits",
    );
}

#[test]
fn fds_received_into_a_full_item_table_hang_the_channel_up_with_one_warning() {
    let dir = temp_dir();
    let (path, l) = channel_listener(dir.path());
    let daemon = Daemon::builder()
        .dir(dir)
        .rust_log("debug")
        .channel(2, &path)
        .spawn();
    let mut vm = TestVm::connect(daemon.socket_path());
    let ctx = CrossDomainContext::open(&mut vm, 1, 2);
    let host = accept_timeout(&l, T).expect("channel");

    // The host fills the item table with memfds, 28 per message (the most one RECEIVE holds).
    let mut held = 0;
    while held < MAX_ITEMS {
        let n = (MAX_ITEMS - held).min(28);
        let memfds: Vec<_> = (0..n).map(|_| memfd_with(b"x")).collect();
        let raw: Vec<_> = memfds.iter().map(|f| f.as_raw_fd()).collect();
        send_with_fds(&host, b"fill", &raw);
        match ctx.recv(&mut vm, T) {
            ChannelMsg::Receive { ids, .. } => assert_eq!(ids.len(), n, "after {held} items"),
            other => panic!("expected RECEIVE, got {other:?}"),
        }
        held += n;
    }

    // Then sends memfds the context has no room for: the message is not delivered without
    // them (docs/protocol-decisions.md §6); the channel hangs up, with one warning.
    let memfds: Vec<_> = (0..3).map(|_| memfd_with(b"x")).collect();
    let raw: Vec<_> = memfds.iter().map(|f| f.as_raw_fd()).collect();
    send_with_fds(&host, b"fds", &raw);
    match ctx.recv(&mut vm, T) {
        ChannelMsg::Receive { ids, data } => {
            assert!(
                ids.is_empty() && data.is_empty(),
                "one empty RECEIVE: {ids:?}"
            )
        }
        other => panic!("expected RECEIVE, got {other:?}"),
    }
    assert!(daemon.wait_for_log("hung up the channel", T));
    let log = daemon.log();
    assert_eq!(
        count(
            &log,
            "WARN",
            "limit \"items per context\" is 1024; further hits by ctx 1 are logged at debug level"
        ),
        1,
        "{log}"
    );
    assert_eq!(count(&log, "WARN", "no room (limit 1024)"), 1, "{log}");

    // Image requirements have their own table: still answered.
    ctx.image_requirements(&mut vm, 64, 64, u32::from_le_bytes(*b"XR24"), 0)
        .expect("GET_IMAGE_REQUIREMENTS with a full item table");
}
