//! Soak: many context lifecycles and many VMM sessions against one daemon; its fd count and
//! resident memory must stay flat. The default counts keep the test quick; the full run of the
//! hardening brief (10^4 contexts, 10^3 VMM sessions) is
//! `VUCD_SOAK_FULL=1 cargo test --release --test soak -- --nocapture`.

use std::io::Write;
use std::time::{Duration, Instant};

use support::*;

const T: Duration = Duration::from_secs(10);

/// The daemon's fd count once it is steady (two readings 50 ms apart agree), or, with
/// `expect`, once it equals `expect` (giving up after 10 s and returning the last reading).
fn settled_fds(pid: u32, expect: Option<usize>) -> usize {
    let deadline = Instant::now() + T;
    let mut last = fd_count(pid);
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = fd_count(pid);
        let done = match expect {
            Some(e) => now == e,
            None => now == last,
        };
        if done || Instant::now() >= deadline {
            return now;
        }
        last = now;
    }
}

fn counts() -> (u32, u32) {
    if std::env::var_os("VUCD_SOAK_FULL").is_some() {
        (10_000, 1_000)
    } else {
        (1_500, 150)
    }
}

#[test]
fn contexts_and_sessions_keep_fds_and_memory_flat() {
    let (contexts, sessions) = counts();
    let dir = temp_dir();
    let (path, listener) = channel_listener(dir.path());
    let mut daemon = Daemon::builder()
        .dir(dir)
        .rust_log("warn")
        .args(["--channel".to_string(), format!("2:{}", path.display())])
        .spawn();
    let pid = daemon.pid();

    // Warm-up: one full cycle so lazily allocated state exists before the baseline.
    let cycle = |vm: &mut TestVm, ctx_id: u32, i: u32| {
        let ctx = CrossDomainContext::open(vm, ctx_id, 2);
        let mut host = accept_timeout(&listener, T).expect("channel");
        host.set_nonblocking(false).unwrap();
        let msg = i.to_le_bytes();
        ctx.send(
            vm,
            &msg,
            &[(CD_READ_PIPE_ID_BASE + 1, CD_ID_TYPE_READ_PIPE)],
        );
        let (data, fds) = recv_with_fds(&host, 16, T);
        assert_eq!((data.as_slice(), fds.len()), (msg.as_slice(), 1));
        host.write_all(&msg).unwrap();
        match ctx.recv(vm, T) {
            ChannelMsg::Receive { data, .. } => assert_eq!(data, msg),
            other => panic!("cycle {i}: {other:?}"),
        }
        assert_ok(&vm.ctx_destroy(ctx_id), "CTX_DESTROY");
        assert_ok(&vm.resource_unref(ctx.query_ring.res_id), "unref");
        assert_ok(&vm.resource_unref(ctx.channel_ring.res_id), "unref");
        vm.free_blob_memory(&ctx.query_ring);
        vm.free_blob_memory(&ctx.channel_ring);
    };
    {
        let mut vm = TestVm::connect(daemon.socket_path());
        cycle(&mut vm, 1, 0);
        vm.disconnect();
    }
    // Between sessions the daemon briefly holds fewer fds (one session torn down, the next not
    // yet set up): compare counts taken while it waits for a VMM.
    let fd0 = settled_fds(pid, None);
    let rss0 = rss_kib(pid);

    let start = Instant::now();
    let mut vm = TestVm::connect(daemon.socket_path());
    for i in 0..contexts {
        cycle(&mut vm, 2 + i % 1000, i);
    }
    vm.disconnect();
    let t_ctx = start.elapsed();
    let fd1 = settled_fds(pid, Some(fd0));
    let rss1 = rss_kib(pid);

    let start = Instant::now();
    for i in 0..sessions {
        let mut vm = TestVm::connect(daemon.socket_path());
        if i % 10 == 0 {
            cycle(&mut vm, 1, i);
        } else if i % 10 == 5 {
            // A session that leaves SENDs held for a host service that does not read.
            let _ctx = CrossDomainContext::open(&mut vm, 1, 2);
            let _host = accept_timeout(&listener, T).expect("channel");
            let big = vec![i as u8; 8192];
            for _ in 0..64 {
                vm.submit_3d(1, &cd_send(&big, &[]), None);
            }
            assert_resp(
                &vm.get_display_info(),
                RESP_OK_DISPLAY_INFO,
                "GET_DISPLAY_INFO behind held SENDs",
            );
        } else {
            // A session that leaves a context, a pending POLL and a channel behind.
            let ctx = CrossDomainContext::open(&mut vm, 1, 2);
            let _host = accept_timeout(&listener, T).expect("channel");
            let _poll = ctx.poll_next(&mut vm);
        }
        vm.disconnect();
    }
    let t_sess = start.elapsed();
    let fd2 = settled_fds(pid, Some(fd0));
    let rss2 = rss_kib(pid);
    eprintln!(
        "soak: {contexts} context cycles in {t_ctx:.1?}, {sessions} VMM sessions in {t_sess:.1?}"
    );
    eprintln!("soak: fds {fd0} -> {fd1} -> {fd2}; VmRSS {rss0} -> {rss1} -> {rss2} KiB");
    assert_eq!(fd1, fd0, "fds grew over {contexts} context cycles");
    assert_eq!(fd2, fd0, "fds grew over {sessions} VMM sessions");
    // Allocator noise is fine; growth proportional to the work is not.
    assert!(
        rss1 < rss0 + 4096,
        "RSS grew {rss0} -> {rss1} KiB over contexts"
    );
    assert!(
        rss2 < rss0 + 4096,
        "RSS grew {rss0} -> {rss2} KiB over sessions"
    );
    daemon.assert_running();
}
