//! A guest that runs into a limit over and over: every refused request gets its error
//! response, the device keeps serving, and the daemon warns once per limit per context (later
//! hits are debug lines) instead of once per request. Likewise for fds a host service sends
//! into a full item table.

mod support;

use std::os::fd::AsRawFd;
use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(10);

/// `MAX_ITEMS` (src/cross_domain/context.rs): items one context may hold.
const MAX_ITEMS: usize = 1024;
/// `Limits::default().max_contexts` (src/virtio_gpu/gpu.rs).
const MAX_CONTEXTS: u32 = 1024;
/// Refused requests per context: more than the rate limiter's 10 messages per second, so
/// per-request warnings would show.
const HITS: usize = 20;

fn xr24_requirements() -> Vec<u8> {
    cd_image_requirements(64, 64, u32::from_le_bytes(*b"XR24"), 0)
}

/// Log lines at `level` ("WARN", "DEBUG") that contain `needle`.
fn count(log: &str, level: &str, needle: &str) -> usize {
    let level = format!(" {level} ");
    log.lines()
        .filter(|l| l.contains(&level) && l.contains(needle))
        .count()
}

/// A query-only context (channel type 0) whose item table is full: GET_IMAGE_REQUIREMENTS
/// stores one item per call, 1024 of them in one command stream.
fn full_context(vm: &mut TestVm, ctx_id: u32) -> CrossDomainContext {
    let ctx = CrossDomainContext::open(vm, ctx_id, 0);
    fill_items(vm, &ctx);
    ctx
}

fn fill_items(vm: &mut TestVm, ctx: &CrossDomainContext) {
    let ctx_id = ctx.ctx_id;
    assert_ok(
        &ctx.submit(vm, &xr24_requirements().repeat(MAX_ITEMS)),
        &format!("ctx {ctx_id}: {MAX_ITEMS} GET_IMAGE_REQUIREMENTS"),
    );
}

/// `n` more GET_IMAGE_REQUIREMENTS, each refused with ERR_OUT_OF_MEMORY.
fn hit_items_limit(vm: &mut TestVm, ctx: &CrossDomainContext, n: usize) {
    for i in 0..n {
        assert_resp(
            &ctx.submit(vm, &xr24_requirements()),
            RESP_ERR_OUT_OF_MEMORY,
            &format!(
                "ctx {}: GET_IMAGE_REQUIREMENTS {i} past the item limit",
                ctx.ctx_id
            ),
        );
    }
}

#[test]
fn items_limit_is_warned_about_once_per_context() {
    let daemon = Daemon::builder().rust_log("debug").spawn();
    let mut vm = TestVm::connect(daemon.socket_path());

    let ctx1 = full_context(&mut vm, 1);
    hit_items_limit(&mut vm, &ctx1, HITS);
    let ctx2 = full_context(&mut vm, 2);
    hit_items_limit(&mut vm, &ctx2, HITS);

    // The daemon logs a refusal before it answers, so the log is complete here.
    let refused = |ctx: u32| format!("SUBMIT_3D (ctx {ctx}): cross-domain: too many items");
    let first = |ctx: u32| {
        format!(
            "limit \"items per context\" is {MAX_ITEMS}; further hits by ctx {ctx} are logged \
             at debug level"
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

    // A destroyed context is forgotten: a new context with the same id is reported again.
    assert_ok(&ctx1.destroy(&mut vm), "CTX_DESTROY 1");
    let ctx1 = full_context(&mut vm, 1);
    hit_items_limit(&mut vm, &ctx1, 3);
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
    hit_items_limit(&mut vm, &ctx2, 1);
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
fn fds_received_into_a_full_item_table_are_warned_about_once() {
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
    fill_items(&mut vm, &ctx);

    // The host sends memfds the context has no room for: the data arrives, the fds are closed.
    let memfds: Vec<_> = (0..3).map(|_| memfd_with(b"x")).collect();
    let raw: Vec<_> = memfds.iter().map(|f| f.as_raw_fd()).collect();
    let rounds = HITS.div_ceil(raw.len());
    for round in 0..rounds {
        send_with_fds(&host, b"fds", &raw);
        match ctx.recv(&mut vm, T) {
            ChannelMsg::Receive { ids, data } => {
                assert_eq!(data, b"fds", "round {round}");
                assert!(ids.is_empty(), "round {round}: {ids:?}");
            }
            other => panic!("round {round}: expected RECEIVE, got {other:?}"),
        }
    }
    let dropped = "dropped a received fd";
    let log = daemon.log();
    assert_eq!(count(&log, "WARN", dropped), 1, "{log}");
    assert_eq!(
        count(
            &log,
            "WARN",
            "limit \"items per context\" is 1024; further hits by ctx 1 are logged at debug level"
        ),
        1,
        "{log}"
    );
    assert_eq!(
        count(&log, "DEBUG", dropped),
        rounds * raw.len() - 1,
        "{log}"
    );

    // A GET_IMAGE_REQUIREMENTS refused by the same limit in the same context is not warned
    // about again, and the channel still carries data.
    hit_items_limit(&mut vm, &ctx, 1);
    assert_eq!(count(&daemon.log(), "WARN", "items per context"), 1);
    send_with_fds(&host, b"still here", &[]);
    match ctx.recv(&mut vm, T) {
        ChannelMsg::Receive { data, .. } => assert_eq!(data, b"still here"),
        other => panic!("expected RECEIVE, got {other:?}"),
    }
}
