//! Reloading the channel table of the running binary: `--channels-file` re-read on SIGHUP, with
//! the default sandbox on (so through the connection broker), as `systemctl reload` does it.
//! New contexts use the new table, connected contexts keep their connections, a file with an
//! error keeps the table in force, and SIGHUP without a channels file is only logged.

use std::io::Write;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use support::*;

const T: Duration = Duration::from_secs(5);

/// Writes the channels file `path` in one step (a new file renamed over the old one, as editors
/// do), so the daemon never reads half of it.
fn write_channels(path: &Path, lines: &[String]) {
    let tmp = path.with_extension("new");
    let mut text = String::from("# written by the test\n");
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn line(channel_type: u32, path: &Path) -> String {
    format!("{channel_type}:{}", path.display())
}

/// A daemon in `dir` whose channels come from `dir/vm.channels`, holding `lines`.
fn start(dir: tempfile::TempDir, lines: &[String], extra: &[&str]) -> (Daemon, PathBuf) {
    let file = dir.path().join("vm.channels");
    write_channels(&file, lines);
    let d = Daemon::builder()
        .dir(dir)
        .arg("--channels-file")
        .arg(&file)
        .args(extra)
        .spawn();
    (d, file)
}

/// SIGHUP, then waits for `needle` in the log.
#[track_caller]
fn reload(d: &mut Daemon, needle: &str) {
    d.signal(Signal::SIGHUP);
    assert!(
        d.wait_for_log(needle, T),
        "no '{needle}' after SIGHUP:\n{}",
        d.log()
    );
    d.assert_running();
}

/// Opens context `ctx_id` on `channel_type` and checks that `host` gets the connection.
fn open(
    vm: &mut TestVm,
    host: &UnixListener,
    ctx_id: u32,
    channel_type: u32,
) -> (CrossDomainContext, UnixStream) {
    let ctx = CrossDomainContext::open(vm, ctx_id, channel_type);
    let conn = accept_timeout(host, T).expect("the daemon did not connect the channel");
    (ctx, conn)
}

/// A round trip on a connected context: guest to host, host to guest.
fn round_trip(vm: &mut TestVm, ctx: &CrossDomainContext, conn: &mut UnixStream, what: &str) {
    let ping = format!("ping {what}");
    ctx.send(vm, ping.as_bytes(), &[]);
    assert_eq!(read_exact_timeout(conn, ping.len(), T), ping.as_bytes());
    let pong = format!("pong {what}");
    conn.write_all(pong.as_bytes()).unwrap();
    match ctx.recv(vm, T) {
        ChannelMsg::Receive { data, .. } => assert_eq!(data, pong.as_bytes()),
        other => panic!("expected RECEIVE, got {other:?}"),
    }
}

/// INIT on `channel_type` is refused: the type is not in the table.
#[track_caller]
fn assert_not_configured(vm: &mut TestVm, ctx_id: u32, channel_type: u32) {
    let ctx = CrossDomainContext::create(vm, ctx_id);
    let r = ctx.submit(
        vm,
        &cd_init(ctx.query_ring.res_id, ctx.channel_ring.res_id, channel_type),
    );
    assert_resp(
        &r,
        RESP_ERR_INVALID_PARAMETER,
        "INIT on a type not in the table",
    );
}

#[test]
fn reload_adds_a_channel_that_a_new_context_uses() {
    let dir = temp_dir();
    let (p2, host2) = channel_listener(dir.path());
    let (p3, host3) = channel_listener(dir.path());
    let (mut d, file) = start(dir, &[line(2, &p2)], &[]);
    assert!(d.log().contains("which SIGHUP re-reads"), "{}", d.log());
    let mut vm = TestVm::connect(d.socket_path());
    let (ctx, mut conn) = open(&mut vm, &host2, 1, 2);
    round_trip(&mut vm, &ctx, &mut conn, "before");
    assert_not_configured(&mut vm, 2, 3);

    write_channels(&file, &[line(2, &p2), line(3, &p3)]);
    // The daemon's summary line comes last (the broker's "table reloaded" comes first).
    reload(&mut d, "contexts opened from now on use this table");
    let log = d.log();
    assert!(
        log.contains(&format!(
            "reload: channel 3: added: {} (fds: memory+pipe+eventfd)",
            p3.display()
        )),
        "{log}"
    );
    assert!(
        log.contains("connection broker: channel table reloaded (2 channels)"),
        "the broker re-read the file itself:\n{log}"
    );
    // The VMM session goes on; a new context reaches the new channel.
    let (ctx3, mut conn3) = open(&mut vm, &host3, 3, 3);
    round_trip(&mut vm, &ctx3, &mut conn3, "added");
    round_trip(&mut vm, &ctx, &mut conn, "after");
}

#[test]
fn a_connected_context_keeps_its_connection_when_its_channel_is_removed() {
    let dir = temp_dir();
    let (p2, host2) = channel_listener(dir.path());
    let (mut d, file) = start(dir, &[line(2, &p2)], &[]);
    let mut vm = TestVm::connect(d.socket_path());
    let (ctx, mut conn) = open(&mut vm, &host2, 1, 2);

    write_channels(&file, &[]);
    reload(&mut d, "reload: channel 2 (camera): removed");
    round_trip(&mut vm, &ctx, &mut conn, "after removal");
    // A new context can no longer name it.
    assert_not_configured(&mut vm, 2, 2);
    round_trip(&mut vm, &ctx, &mut conn, "still");
}

#[test]
fn a_file_with_an_error_keeps_the_table_in_force() {
    let dir = temp_dir();
    let (p2, host2) = channel_listener(dir.path());
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(T)).unwrap();
    let file = dir.path().join("vm.channels");
    write_channels(&file, &[line(2, &p2)]);
    let mut d = Daemon::builder()
        .dir(dir)
        .arg("--channels-file")
        .arg(&file)
        .env("NOTIFY_SOCKET", &notify_path)
        .spawn();

    // Line 1 is the comment write_channels puts first.
    write_channels(&file, &[line(2, &p2), "bogus".to_owned()]);
    let expected = format!(
        "reload failed, the channel table is unchanged: {}:3: 'bogus': expected TYPE:PATH",
        file.display()
    );
    reload(&mut d, &expected);
    let mut vm = TestVm::connect(d.socket_path());
    let (ctx, mut conn) = open(&mut vm, &host2, 1, 2);
    round_trip(&mut vm, &ctx, &mut conn, "old table");

    // The service manager saw the reload begin and end.
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let reloaded = |seen: &str| {
        seen.find("RELOADING=1")
            .is_some_and(|i| seen[i..].contains("READY=1"))
    };
    while !reloaded(&seen) {
        let n = notify
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("{e}; notifications so far: {seen}"));
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("MONOTONIC_USEC="), "{seen}");

    // A missing file is an error of the same kind.
    std::fs::remove_file(&file).unwrap();
    reload(&mut d, "cannot read it: No such file or directory");
    let (ctx2, mut conn2) = open(&mut vm, &host2, 2, 2);
    round_trip(&mut vm, &ctx2, &mut conn2, "still the old table");
}

#[test]
fn sighup_without_a_channels_file_is_logged_not_fatal() {
    let dir = temp_dir();
    let (p2, host2) = channel_listener(dir.path());
    let mut d = Daemon::start_in(dir, ["--channel".into(), line(2, &p2)]);
    reload(
        &mut d,
        "SIGHUP: nothing to reload (no --channels-file given)",
    );
    assert!(d.socket_path().exists());
    let mut vm = TestVm::connect(d.socket_path());
    let (ctx, mut conn) = open(&mut vm, &host2, 1, 2);
    round_trip(&mut vm, &ctx, &mut conn, "after SIGHUP");
    drop(vm);
    let st = d.terminate(T).expect("exit after SIGTERM");
    assert_eq!(st.code(), Some(0), "{}", d.log());
}

#[test]
fn with_the_sandbox_a_reload_stays_in_the_start_up_directories() {
    let dir = temp_dir();
    let (p2, _host2) = channel_listener(dir.path());
    let elsewhere = temp_dir();
    let (p3, host3) = channel_listener(elsewhere.path());
    // A subdirectory of a start-up directory is fine.
    let sub = temp_dir_in(dir.path());
    let (p4, host4) = channel_listener(&sub);
    let (mut d, file) = start(dir, &[line(2, &p2)], &[]);

    write_channels(&file, &[line(2, &p2), line(3, &p3)]);
    let expected = format!(
        "{}:3: '3:{}': {} is not beneath a directory of the channels configured at start-up",
        file.display(),
        p3.display(),
        elsewhere.path().display()
    );
    reload(&mut d, &expected);
    write_channels(&file, &[line(2, &p2), line(4, &p4)]);
    reload(&mut d, "reload: channel 4: added");
    let mut vm = TestVm::connect(d.socket_path());
    assert_not_configured(&mut vm, 1, 3);
    let (ctx, mut conn) = open(&mut vm, &host4, 2, 4);
    round_trip(&mut vm, &ctx, &mut conn, "subdirectory");
    drop(host3);
}

#[test]
fn without_the_sandbox_a_reload_may_name_any_directory() {
    let dir = temp_dir();
    let elsewhere = temp_dir();
    let (p3, host3) = channel_listener(elsewhere.path());
    let (mut d, file) = start(dir, &[], &["--sandbox", "none"]);
    assert!(d.log().contains("no channel configured yet"), "{}", d.log());
    write_channels(&file, &[line(3, &p3)]);
    reload(&mut d, "reload: channel 3: added");
    let mut vm = TestVm::connect(d.socket_path());
    let (ctx, mut conn) = open(&mut vm, &host3, 1, 3);
    round_trip(&mut vm, &ctx, &mut conn, "no sandbox");
}

/// A fresh temporary directory inside `parent`.
fn temp_dir_in(parent: &Path) -> PathBuf {
    let dir = parent.join("sub");
    std::fs::create_dir(&dir).unwrap();
    dir
}

#[test]
fn the_shipped_unit_reloads_and_its_example_channels_file_is_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let service =
        std::fs::read_to_string(root.join("docs/systemd/vhost-user-cross-domain@.service"))
            .unwrap();
    assert!(
        service.contains("\nExecReload=/bin/kill -HUP $MAINPID\n"),
        "{service}"
    );
    assert!(
        service.contains("--channels-file /etc/vhost-user-cross-domain/%i.channels"),
        "{service}"
    );
    let example = root.join("docs/systemd/vm1.channels.example");
    let d = Daemon::builder()
        .arg("--channels-file")
        .arg(&example)
        .arg("--sandbox")
        .arg("none")
        .spawn();
    let log = d.log();
    assert!(
        log.contains("channel 1 (wayland): /run/user/1000/wayland-0 (fds: memory+pipe+eventfd)"),
        "{log}"
    );
    assert!(
        log.contains("channel 2 (camera): /run/portal.sock (fds: memory+pipe+eventfd)"),
        "{log}"
    );
}

#[test]
fn sighup_and_sigusr1_sent_to_the_whole_service_leave_the_broker_running() {
    let dir = temp_dir();
    let (p2, host2) = channel_listener(dir.path());
    let (d, _file) = start(dir, &[line(2, &p2)], &[]);
    assert!(
        d.wait_for_log("connected by the broker (pid ", T),
        "{}",
        d.log()
    );
    let log = d.log();
    let pid: i32 = log
        .split("connected by the broker (pid ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no broker pid in:\n{log}"));
    // As `systemctl kill` does by default: the main process and the broker.
    for sig in [Signal::SIGHUP, Signal::SIGUSR1] {
        for target in [pid, d.pid() as i32] {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(target), sig).unwrap();
        }
    }
    assert!(d.wait_for_log("counters: ", T), "{}", d.log());
    assert!(d.wait_for_log("reloaded ", T), "{}", d.log());
    let mut vm = TestVm::connect(d.socket_path());
    let (ctx, mut conn) = open(&mut vm, &host2, 1, 2);
    round_trip(&mut vm, &ctx, &mut conn, "broker alive");
}
