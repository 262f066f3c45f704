//! Per-channel counters of the running binary: SIGUSR1 logs one line per channel type, and the
//! service manager's status line carries the number of open channel contexts.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use nix::sys::signal::Signal;
use support::*;

const T: Duration = Duration::from_secs(5);

/// Reads notifications until one line is `needle`; returns everything read.
#[track_caller]
fn wait_notification(socket: &UnixDatagram, needle: &str) -> String {
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no '{needle}' ({e}); seen: {seen}"));
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        seen.push_str(&text);
        seen.push('|');
        if text.lines().any(|l| l == needle) {
            return seen;
        }
    }
}

/// SIGUSR1, then the counters line of channel 2 once it says `expected`.
#[track_caller]
fn report(d: &Daemon, expected: &str) {
    let before = d.log().matches("counters: channel 2 (camera): ").count();
    d.signal(Signal::SIGUSR1);
    let needle = format!("counters: channel 2 (camera): {expected}");
    let deadline = std::time::Instant::now() + T;
    loop {
        let log = d.log();
        if log.matches("counters: channel 2 (camera): ").count() > before {
            assert!(log.contains(&needle), "expected '{needle}' in:\n{log}");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no counters line after SIGUSR1:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigusr1_logs_each_channel_and_the_status_counts_open_contexts() {
    let dir = temp_dir();
    let (path, host) = channel_listener(dir.path());
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(T)).unwrap();
    let mut d = Daemon::builder()
        .dir(dir)
        .channel(2, &path)
        .env("NOTIFY_SOCKET", &notify_path)
        .spawn();
    d.signal(Signal::SIGUSR1);
    assert!(
        d.wait_for_log("counters: no channel context has been opened yet", T),
        "{}",
        d.log()
    );

    let mut vm = TestVm::connect(d.socket_path());
    let place = d.socket_path().display().to_string();
    wait_notification(
        &notify,
        &format!("STATUS=serving a VMM on {place} (session 1); 0 channel contexts open"),
    );
    let ctx = CrossDomainContext::open(&mut vm, 1, 2);
    let mut conn = accept_timeout(&host, T).expect("the daemon did not connect the channel");
    wait_notification(
        &notify,
        &format!("STATUS=serving a VMM on {place} (session 1); 1 channel context open"),
    );

    // Guest to host: 4 bytes. Host to guest: 5 bytes and a memory fd, then 3 bytes.
    ctx.send(&mut vm, b"ping", &[]);
    assert_eq!(read_exact_timeout(&mut conn, 4, T), b"ping");
    let mem = memfd_with(&[7u8; 4096]);
    send_with_fds(&conn, b"hello", &[mem.as_raw_fd()]);
    assert!(matches!(ctx.recv(&mut vm, T), ChannelMsg::Receive { .. }));
    conn.write_all(b"abc").unwrap();
    assert!(matches!(ctx.recv(&mut vm, T), ChannelMsg::Receive { .. }));
    // A SEND naming a resource that is not attached is answered with an error.
    assert_resp(
        &ctx.try_send(&mut vm, b"x", &[(99, 1)]),
        RESP_ERR_INVALID_RESOURCE_ID,
        "SEND with an unknown blob",
    );
    report(
        &d,
        "contexts 1 opened, 1 open; guest to host 1 messages, 4 bytes, fds 0 memory, 0 pipe; \
         host to guest 2 messages, 8 bytes, fds 1 memory, 0 pipe, 0 eventfd, 0 refused; 0 hang-ups; \
         1 errors",
    );

    // The host service hangs up; the guest then closes the context.
    drop(conn);
    assert!(matches!(ctx.recv(&mut vm, T), ChannelMsg::Receive { .. }));
    assert_ok(&vm.ctx_destroy(1), "CTX_DESTROY");
    wait_notification(
        &notify,
        &format!("STATUS=serving a VMM on {place} (session 1); 0 channel contexts open"),
    );
    report(
        &d,
        "contexts 1 opened, 0 open; guest to host 1 messages, 4 bytes",
    );
    assert!(d.log().contains("; 1 hang-ups; 1 errors"), "{}", d.log());
    d.assert_running();
}
