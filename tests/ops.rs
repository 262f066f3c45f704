//! Running the real binary as a system service: socket activation (without systemd: the test
//! creates the listening socket and sets LISTEN_FDS/LISTEN_PID itself), `--fd` over a
//! socketpair, `--print-capabilities`, readiness notification (`NOTIFY_SOCKET`), shutdown on
//! SIGTERM/SIGINT, and the "exactly one of --socket-path, --fd and socket activation" rule.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::*;

const T: Duration = Duration::from_secs(5);
/// How fast the daemon must exit on SIGTERM.
const EXIT_DEADLINE: Duration = Duration::from_secs(1);

/// Channel type the exchanges use.
const CHANNEL: u32 = 2;

/// A daemon started by hand, with inherited descriptors (the `Daemon` helper always passes
/// `--socket-path`). Killed on drop; its log is printed if the test fails.
struct Proc {
    child: Child,
    log_path: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.status.is_none() {
                self.status = self.child.try_wait().expect("try_wait");
            }
            if self.status.is_some() || Instant::now() > deadline {
                return self.status;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the exit and returns the exit code, panicking with the log otherwise.
    #[track_caller]
    fn exit_code(&mut self, timeout: Duration) -> i32 {
        match self.wait_exit(timeout) {
            Some(st) => st
                .code()
                .unwrap_or_else(|| panic!("killed by a signal: {st}\n{}", self.log())),
            None => panic!("still running after {timeout:?}\n{}", self.log()),
        }
    }

    fn signal(&self, sig: Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, sig).expect("kill");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.wait_exit(Duration::ZERO).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() || std::env::var_os("VHOST_TEST_SHOW_LOG").is_some() {
            eprintln!("==== daemon log ====\n{}==== end ====", self.log());
        }
    }
}

/// Makes `fd` the child's descriptor `target`, inherited across exec.
fn pass_fd(cmd: &mut Command, fd: RawFd, target: RawFd) {
    // SAFETY: the closure runs between fork and exec and only calls dup2 and fcntl, which are
    // async-signal-safe, and `last_os_error`, which does not allocate.
    unsafe {
        cmd.pre_exec(move || {
            let r = if fd == target {
                // dup2 onto itself would keep FD_CLOEXEC; clear it instead.
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                // The new descriptor does not inherit FD_CLOEXEC.
                libc::dup2(fd, target)
            };
            if r == -1 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        });
    }
}

/// `BIN ARGS…` with its log in `dir`; `activated` runs it through `/bin/sh` so that
/// `LISTEN_PID` is the daemon's own pid (exec keeps the shell's pid).
fn command(dir: &Path, args: &[OsString], activated: bool) -> (Command, PathBuf) {
    let log_path = dir.join("daemon.log");
    let log = File::create(&log_path).expect("create log");
    let mut cmd = if activated {
        let mut c = Command::new("/bin/sh");
        c.arg("-c")
            .arg(r#"LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@""#)
            .arg(daemon_bin());
        c
    } else {
        Command::new(daemon_bin())
    };
    cmd.args(args)
        .env("RUST_LOG", "debug")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log);
    (cmd, log_path)
}

fn spawn(mut cmd: Command, log_path: PathBuf) -> Proc {
    let child = cmd.spawn().expect("spawn the daemon");
    Proc {
        child,
        log_path,
        status: None,
    }
}

/// Spawns the daemon under socket activation with `fds` as descriptors 3, 4, …
fn spawn_activated(dir: &Path, fds: &[RawFd], args: &[OsString]) -> Proc {
    let (mut cmd, log_path) = command(dir, args, true);
    cmd.env("LISTEN_FDS", fds.len().to_string());
    let names: Vec<String> = (0..fds.len()).map(|i| format!("vm{i}")).collect();
    cmd.env("LISTEN_FDNAMES", names.join(":"));
    for (i, &fd) in fds.iter().enumerate() {
        pass_fd(&mut cmd, fd, 3 + i as RawFd);
    }
    spawn(cmd, log_path)
}

fn channel_args(path: &Path) -> Vec<OsString> {
    vec![
        "--channel".into(),
        format!("{CHANNEL}:{}", path.display()).into(),
    ]
}

/// A cross-domain round trip: the guest SENDs, the host service reads it and answers, the
/// guest RECEIVEs the answer.
fn exchange(vm: &mut TestVm, host: &UnixListener, round: u32) {
    let ctx = CrossDomainContext::open(vm, 1, CHANNEL);
    let mut conn = accept_timeout(host, T).expect("the daemon did not connect the channel");
    let ping = format!("ping {round}");
    ctx.send(vm, ping.as_bytes(), &[]);
    assert_eq!(
        read_exact_timeout(&mut conn, ping.len(), T),
        ping.as_bytes()
    );
    let pong = format!("pong {round}");
    conn.write_all(pong.as_bytes()).unwrap();
    match ctx.recv(vm, T) {
        ChannelMsg::Receive { data, ids } => {
            assert_eq!(data, pong.as_bytes());
            assert!(ids.is_empty());
        }
        other => panic!("expected RECEIVE, got {other:?}"),
    }
}

/// A datagram socket standing in for systemd's notification socket.
fn notify_socket(dir: &Path) -> (UnixDatagram, OsString) {
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    socket.set_read_timeout(Some(T)).unwrap();
    (socket, path.into_os_string())
}

/// Reads notifications until one contains `needle`; returns everything read.
#[track_caller]
fn wait_notification(socket: &UnixDatagram, needle: &str) -> String {
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    loop {
        match socket.recv(&mut buf) {
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                seen.push_str(&text);
                seen.push('|');
                if text.lines().any(|l| l == needle) {
                    return seen;
                }
            }
            Err(e) => panic!("no {needle} notification ({e}); got: {seen}"),
        }
    }
}

#[test]
fn socket_activation_serves_one_vmm_after_another() {
    let dir = temp_dir();
    let (channel_path, host) = channel_listener(dir.path());
    let socket_path = dir.path().join("activated.sock");
    let listener = UnixListener::bind(&socket_path).unwrap();
    let mut d = spawn_activated(
        dir.path(),
        &[listener.as_raw_fd()],
        &channel_args(&channel_path),
    );
    // The daemon owns the listening socket now.
    drop(listener);
    for round in 0..2 {
        let mut vm = TestVm::connect(&socket_path);
        exchange(&mut vm, &host, round);
        vm.disconnect();
    }
    assert!(d.wait_exit(Duration::ZERO).is_none(), "{}", d.log());
    let log = d.log();
    assert!(log.contains("socket activation"), "{log}");
    assert!(log.contains("'vm0'"), "LISTEN_FDNAMES is logged: {log}");
    // The daemon did not create or remove anything at the socket's path.
    d.signal(Signal::SIGTERM);
    assert_eq!(d.exit_code(EXIT_DEADLINE), 0);
    assert!(
        socket_path.exists(),
        "the service manager's socket must stay"
    );
}

#[test]
fn socket_activation_with_a_connected_socket_serves_one_session() {
    // `Accept=yes`: the service manager passes one connection as fd 3.
    let dir = temp_dir();
    let (channel_path, host) = channel_listener(dir.path());
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut d = spawn_activated(
        dir.path(),
        &[theirs.as_raw_fd()],
        &channel_args(&channel_path),
    );
    drop(theirs);
    let mut vm = TestVm::builder().connect_stream(ours).expect("handshake");
    exchange(&mut vm, &host, 0);
    vm.disconnect();
    assert_eq!(d.exit_code(T), 0);
}

#[test]
fn fd_serves_one_session_and_exits_0() {
    let dir = temp_dir();
    let (channel_path, host) = channel_listener(dir.path());
    let (notify, notify_path) = notify_socket(dir.path());
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut args: Vec<OsString> = vec!["--fd".into(), "5".into()];
    args.extend(channel_args(&channel_path));
    let (mut cmd, log_path) = command(dir.path(), &args, false);
    cmd.env("NOTIFY_SOCKET", &notify_path);
    pass_fd(&mut cmd, theirs.as_raw_fd(), 5);
    let mut d = spawn(cmd, log_path);
    drop(theirs);
    let seen = wait_notification(&notify, "READY=1");
    assert!(seen.contains("STATUS=serving the VMM"), "{seen}");
    let mut vm = TestVm::builder().connect_stream(ours).expect("handshake");
    exchange(&mut vm, &host, 0);
    // Several contexts and messages go through the same relayed session.
    let ctx = CrossDomainContext::open(&mut vm, 2, CHANNEL);
    let mut conn = accept_timeout(&host, T).expect("second channel connection");
    for i in 0..20u32 {
        let data = pattern(100 + i as usize, i);
        ctx.send(&mut vm, &data, &[]);
        assert_eq!(read_exact_timeout(&mut conn, data.len(), T), data);
    }
    vm.disconnect();
    assert_eq!(d.exit_code(T), 0);
    let log = d.log();
    assert!(log.contains("VMM disconnected"), "{log}");
}

#[test]
fn fd_session_ending_on_a_protocol_error_exits_1() {
    let dir = temp_dir();
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    let args: Vec<OsString> = vec!["--fd".into(), "4".into()];
    let (mut cmd, log_path) = command(dir.path(), &args, false);
    pass_fd(&mut cmd, theirs.as_raw_fd(), 4);
    let mut d = spawn(cmd, log_path);
    drop(theirs);
    // A header with a request code vhost-user does not have (0xffff), flags 1, no payload.
    let mut msg = Vec::new();
    for word in [0xffffu32, 1, 0] {
        msg.extend_from_slice(&word.to_ne_bytes());
    }
    ours.write_all(&msg).unwrap();
    assert_eq!(d.exit_code(T), 1);
    let log = d.log();
    assert!(log.contains("the session ended with an error"), "{log}");
}

#[test]
fn print_capabilities() {
    // Other options, even invalid ones, are ignored.
    let out = Command::new(daemon_bin())
        .args([
            "--channel",
            "bogus",
            "--print-capabilities",
            "--scanouts",
            "99",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run the daemon");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(v["type"], "gpu");
    let features = v["features"].as_array().expect("a features array");
    // The schema's GPU features are render-node and virgl; the device has neither.
    assert!(features.is_empty(), "{v}");
    assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
}

#[test]
fn vhost_user_descriptor_and_units_agree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text =
        std::fs::read_to_string(root.join("docs/vhost-user/50-vhost-user-cross-domain.json"))
            .expect("read the descriptor");
    let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(v["type"], "gpu");
    assert!(!v["description"].as_str().unwrap_or("").is_empty(), "{v}");
    let binary = v["binary"].as_str().expect("binary");
    assert!(binary.ends_with("/vhost-user-cross-domain"), "{binary}");
    let service =
        std::fs::read_to_string(root.join("docs/systemd/vhost-user-cross-domain@.service"))
            .expect("read the service unit");
    assert!(
        service.contains(&format!("ExecStart={binary} ")),
        "the unit and the descriptor name the same binary"
    );
    assert!(service.contains("Type=notify"), "{service}");
    let socket = std::fs::read_to_string(root.join("docs/systemd/vhost-user-cross-domain@.socket"))
        .expect("read the socket unit");
    assert!(socket.contains("ListenStream="), "{socket}");
}

#[test]
fn ready_after_listening_and_stopping_on_sigterm() {
    let dir = temp_dir();
    let (notify, notify_path) = notify_socket(dir.path());
    let mut d = Daemon::builder()
        .dir(dir)
        .env("NOTIFY_SOCKET", &notify_path)
        .no_wait()
        .spawn();
    let seen = wait_notification(&notify, "READY=1");
    assert!(seen.contains("STATUS=waiting for a VMM on"), "{seen}");
    // READY=1 came after the socket was listening: a connection succeeds at once.
    assert!(d.socket_path().exists(), "READY=1 before the socket exists");
    UnixStream::connect(d.socket_path()).expect("connect right after READY=1");
    d.signal(Signal::SIGTERM);
    wait_notification(&notify, "STOPPING=1");
    let st = d.wait_exit(EXIT_DEADLINE).expect("exit after SIGTERM");
    assert_eq!(st.code(), Some(0), "{}", d.log());
}

#[test]
fn sigterm_completes_a_pending_poll_and_exits_0() {
    let dir = temp_dir();
    let (channel_path, host) = channel_listener(dir.path());
    let mut d = Daemon::start_in(dir, channel_args(&channel_path));
    let mut vm = TestVm::connect(d.socket_path());
    let ctx = CrossDomainContext::open(&mut vm, 1, CHANNEL);
    let _conn = accept_timeout(&host, T).expect("the daemon did not connect the channel");
    let head = ctx.poll_next(&mut vm);
    // The host service says nothing, so the POLL stays pending.
    assert!(
        vm.wait_for(CONTROLQ, head, Duration::from_millis(200))
            .is_none(),
        "the POLL completed without data"
    );
    let start = Instant::now();
    d.signal(Signal::SIGTERM);
    let resp = vm
        .wait_for(CONTROLQ, head, EXIT_DEADLINE)
        .unwrap_or_else(|| {
            panic!(
                "the POLL's fence was not completed at shutdown\n{}",
                d.log()
            )
        });
    assert_ok(&resp, "POLL completed at shutdown");
    let st = d
        .wait_exit(EXIT_DEADLINE)
        .expect("no exit within 1 s of SIGTERM");
    assert_eq!(st.code(), Some(0), "{}", d.log());
    assert!(start.elapsed() < EXIT_DEADLINE, "{:?}", start.elapsed());
    let log = d.log();
    assert!(log.contains("pending fences completed"), "{log}");
}

#[test]
fn sigterm_and_sigint_while_idle_exit_0_promptly() {
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let mut d = Daemon::start(Vec::<String>::new());
        let start = Instant::now();
        d.signal(sig);
        let st = d.wait_exit(EXIT_DEADLINE).expect("no exit within 1 s");
        assert_eq!(st.code(), Some(0), "{sig}: {}", d.log());
        assert!(start.elapsed() < EXIT_DEADLINE);
        assert!(!d.socket_path().exists(), "{sig}: the socket is removed");
    }
}

/// Waits for the daemon to reject its configuration: exit status 2, an error naming `needles`.
#[track_caller]
fn assert_exit_2(mut d: Proc, needles: &[&str]) {
    assert_eq!(d.exit_code(T), 2);
    let log = d.log();
    assert!(log.contains("vhost-user-cross-domain: error: "), "{log}");
    for n in needles {
        assert!(log.contains(n), "{n:?} missing from: {log}");
    }
}

#[test]
fn socket_path_and_socket_activation_conflict() {
    let dir = temp_dir();
    let listener = UnixListener::bind(dir.path().join("a.sock")).unwrap();
    let args: Vec<OsString> = vec!["--socket-path".into(), dir.path().join("b.sock").into()];
    let d = spawn_activated(dir.path(), &[listener.as_raw_fd()], &args);
    assert_exit_2(
        d,
        &["--socket-path and socket activation", "exactly one of"],
    );
}

#[test]
fn fd_and_socket_activation_conflict() {
    let dir = temp_dir();
    let listener = UnixListener::bind(dir.path().join("a.sock")).unwrap();
    let (_ours, theirs) = UnixStream::pair().unwrap();
    let args: Vec<OsString> = vec!["--fd".into(), "7".into()];
    let (mut cmd, log_path) = command(dir.path(), &args, true);
    cmd.env("LISTEN_FDS", "1");
    pass_fd(&mut cmd, listener.as_raw_fd(), 3);
    pass_fd(&mut cmd, theirs.as_raw_fd(), 7);
    let d = spawn(cmd, log_path);
    assert_exit_2(d, &["--fd and socket activation", "exactly one of"]);
}

#[test]
fn socket_activation_errors() {
    let dir = temp_dir();
    // Two sockets.
    let a = UnixListener::bind(dir.path().join("a.sock")).unwrap();
    let b = UnixListener::bind(dir.path().join("b.sock")).unwrap();
    let d = spawn_activated(dir.path(), &[a.as_raw_fd(), b.as_raw_fd()], &[]);
    assert_exit_2(d, &["LISTEN_FDS=2", "exactly one socket"]);

    // A datagram socket.
    let dir = temp_dir();
    let (dgram, _other) = UnixDatagram::pair().unwrap();
    let d = spawn_activated(dir.path(), &[dgram.as_raw_fd()], &[]);
    assert_exit_2(d, &["socket activation", "fd 3", "not a stream socket"]);

    // LISTEN_PID of another process: the variables are not for us, so no socket is given.
    let dir = temp_dir();
    let (mut cmd, log_path) = command(dir.path(), &[], false);
    cmd.env("LISTEN_FDS", "1").env("LISTEN_PID", "1");
    pass_fd(&mut cmd, a.as_raw_fd(), 3);
    assert_exit_2(spawn(cmd, log_path), &["no vhost-user socket given"]);
}

#[test]
fn fd_must_be_a_connected_unix_stream_socket() {
    let dir = temp_dir();
    let listener = UnixListener::bind(dir.path().join("a.sock")).unwrap();
    let args: Vec<OsString> = vec!["--fd".into(), "6".into()];
    let (mut cmd, log_path) = command(dir.path(), &args, false);
    pass_fd(&mut cmd, listener.as_raw_fd(), 6);
    assert_exit_2(spawn(cmd, log_path), &["--fd '6'", "a listening socket"]);

    let dir = temp_dir();
    let (mut cmd, log_path) = command(dir.path(), &args, false);
    let file = File::open("/dev/null").unwrap();
    pass_fd(&mut cmd, file.as_raw_fd(), 6);
    assert_exit_2(spawn(cmd, log_path), &["--fd '6'", "not a socket"]);
}

/// Started with a soft open-file limit of 256 (below what one context may hold), the daemon
/// raises it to the hard limit before it serves.
#[test]
fn open_file_limit_is_raised_to_the_hard_limit() {
    let dir = temp_dir();
    let sock = dir.path().join("gpu.sock");
    let (mut cmd, log_path) = command(
        dir.path(),
        &["--socket-path".into(), sock.clone().into()],
        false,
    );
    // SAFETY: the closure runs between fork and exec and only calls getrlimit/setrlimit, which
    // are async-signal-safe, and `last_os_error`, which does not allocate.
    unsafe {
        cmd.pre_exec(|| {
            let mut r = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
                return Err(io::Error::last_os_error());
            }
            r.rlim_cur = 256.min(r.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let d = spawn(cmd, log_path);
    let deadline = Instant::now() + T;
    while !sock.exists() {
        assert!(Instant::now() < deadline, "no socket\n{}", d.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.child.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let fields: Vec<&str> = line.split_whitespace().collect();
    // "Max open files <soft> <hard> files"
    let (soft, hard) = (fields[3], fields[4]);
    assert_eq!(soft, hard, "soft limit raised to the hard limit: {line}");
    if hard != "256" {
        assert!(
            d.log().contains("open-file limit raised from 256 to"),
            "{}",
            d.log()
        );
    }
}

/// Runs `--socket-path PATH` (with its log in a directory of its own) and expects exit 2 with a
/// message naming the flag, the value and `needles`; returns the message.
#[track_caller]
fn assert_socket_path_refused(path: &Path, needles: &[&str]) -> String {
    let logs = temp_dir();
    let (cmd, log_path) = command(logs.path(), &["--socket-path".into(), path.into()], false);
    let mut d = spawn(cmd, log_path);
    assert_eq!(d.exit_code(T), 2, "{}", d.log());
    let log = d.log();
    let value = format!("--socket-path '{}': ", path.display());
    assert!(
        log.contains(&format!("vhost-user-cross-domain: error: {value}")),
        "{log}"
    );
    for n in needles {
        assert!(log.contains(n), "{n:?} missing from: {log}");
    }
    log
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    name.into()
}

#[test]
fn socket_path_of_a_running_daemon_is_refused_and_it_keeps_serving() {
    let dir = temp_dir();
    let (channel_path, host) = channel_listener(dir.path());
    let first = Daemon::start_in(dir, channel_args(&channel_path));
    let path = first.socket_path().to_path_buf();
    assert!(
        lock_path(&path).exists(),
        "the lock file is next to the socket"
    );
    assert_socket_path_refused(&path, &["already in use by another process", ".lock"]);
    // The first daemon's socket and lock file are where they were, and it serves the next VMM.
    assert!(path.exists());
    assert!(lock_path(&path).exists());
    let mut vm = TestVm::connect(&path);
    exchange(&mut vm, &host, 0);
    vm.disconnect();
    let log = first.log();
    assert!(log.contains("session 1: VMM connected"), "{log}");
    assert!(
        !log.contains("session 2: VMM connected"),
        "the refused daemon connected to the first one: {log}"
    );
}

#[test]
fn socket_path_where_another_program_listens_is_refused() {
    let dir = temp_dir();
    let path = dir.path().join("gpu.sock");
    let other = UnixListener::bind(&path).unwrap();
    assert_socket_path_refused(&path, &["already in use by another process"]);
    assert!(path.exists());
    assert!(!lock_path(&path).exists(), "the lock file is cleaned up");
    // The program still has its socket.
    UnixStream::connect(&path).expect("the other program's socket still works");
    drop(other);
}

#[test]
fn socket_path_that_is_a_regular_file_is_left_alone() {
    let dir = temp_dir();
    let path = dir.path().join("gpu.sock");
    std::fs::write(&path, "not a socket").unwrap();
    assert_socket_path_refused(&path, &["a regular file, not a socket"]);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
    assert!(!lock_path(&path).exists(), "the lock file is cleaned up");
}

#[test]
fn socket_path_that_is_a_directory_is_refused() {
    let dir = temp_dir();
    let path = dir.path().join("gpu.sock");
    std::fs::create_dir(&path).unwrap();
    let log = assert_socket_path_refused(&path, &["a directory, not a socket"]);
    assert!(!log.contains("Address already in use"), "{log}");
    assert!(path.is_dir());
}

#[test]
fn socket_path_in_a_missing_directory_is_refused() {
    let dir = temp_dir();
    let missing = dir.path().join("vm1");
    let path = missing.join("gpu.sock");
    assert_socket_path_refused(
        &path,
        &[&format!(
            "the directory {} does not exist",
            missing.display()
        )],
    );
    assert!(!missing.exists(), "the daemon creates no directory");
}

#[test]
fn stale_socket_is_replaced_and_removed_at_shutdown() {
    let dir = temp_dir();
    let path = dir.path().join("gpu.sock");
    // A socket nothing accepts on any more, as a daemon killed with SIGKILL leaves behind.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let (cmd, log_path) = command(
        dir.path(),
        &["--socket-path".into(), path.clone().into()],
        false,
    );
    let mut d = spawn(cmd, log_path);
    let deadline = Instant::now() + T;
    while !d.log().contains("listening on") {
        assert!(Instant::now() < deadline, "not listening\n{}", d.log());
        assert!(d.wait_exit(Duration::ZERO).is_none(), "exited\n{}", d.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(d.log().contains("removing the stale socket"), "{}", d.log());
    let vm = TestVm::connect(&path);
    vm.disconnect();
    d.signal(Signal::SIGTERM);
    assert_eq!(d.exit_code(EXIT_DEADLINE), 0);
    assert!(!path.exists(), "the socket is removed at shutdown");
    assert!(
        !lock_path(&path).exists(),
        "the lock file is removed at shutdown"
    );
}

/// `JOURNAL_STREAM` naming `log_path`, the way systemd names the journal stream it gives a
/// service as standard error.
fn journal_stream(log_path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(log_path).expect("stat the log");
    format!("{}:{}", meta.dev(), meta.ino())
}

/// Waits until the daemon's log contains `needle`.
#[track_caller]
fn wait_log(d: &mut Proc, needle: &str) {
    let deadline = Instant::now() + T;
    while !d.log().contains(needle) {
        assert!(Instant::now() < deadline, "no {needle:?} in:\n{}", d.log());
        assert!(
            d.wait_exit(Duration::ZERO).is_none(),
            "exited:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn journal_lines_carry_priorities_and_no_timestamps() {
    let dir = temp_dir();
    let sock = dir.path().join("gpu.sock");
    // No channel: the start-up warning shows the warning priority.
    let (mut cmd, log_path) = command(
        dir.path(),
        &["--socket-path".into(), sock.clone().into()],
        false,
    );
    cmd.env("JOURNAL_STREAM", journal_stream(&log_path))
        .env("RUST_LOG", "info");
    let mut d = spawn(cmd, log_path);
    wait_log(&mut d, "listening on");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.exit_code(EXIT_DEADLINE), 0);
    let log = d.log();
    for line in log.lines() {
        assert!(
            ["<3>", "<4>", "<6>", "<7>"]
                .iter()
                .any(|p| line.starts_with(p)),
            "line without a priority prefix: {line:?}\n{log}"
        );
        assert!(!line.contains("[20"), "a timestamp of its own: {line:?}");
    }
    assert!(log.contains("<4>no --channel given"), "{log}");
    assert!(log.contains("<6>listening on"), "{log}");
    assert!(log.contains("<6>SIGTERM received"), "{log}");

    // A fatal error has the error priority.
    let dir = temp_dir();
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let (mut cmd, log_path) = command(dir.path(), &["--socket-path".into(), file.into()], false);
    cmd.env("JOURNAL_STREAM", journal_stream(&log_path));
    let mut d = spawn(cmd, log_path);
    assert_eq!(d.exit_code(T), 2);
    assert!(
        d.log()
            .contains("<3>vhost-user-cross-domain: error: --socket-path '"),
        "{}",
        d.log()
    );

    // JOURNAL_STREAM naming another stream (inherited by a program whose standard error goes
    // elsewhere): the usual format.
    let dir = temp_dir();
    let (mut cmd, log_path) = command(dir.path(), &["--fd".into(), "x".into()], false);
    cmd.env("JOURNAL_STREAM", "1:1");
    let mut d = spawn(cmd, log_path);
    assert_eq!(d.exit_code(T), 2);
    assert!(
        d.log()
            .starts_with("vhost-user-cross-domain: error: --fd 'x': "),
        "{}",
        d.log()
    );
}

#[test]
fn fatal_errors_are_printed_whatever_the_log_filter() {
    for filter in ["off", "bogus"] {
        // A configuration error found at start-up (exit 2).
        let dir = temp_dir();
        let sock = dir.path().join("missing/gpu.sock");
        let (mut cmd, log_path) =
            command(dir.path(), &["--socket-path".into(), sock.into()], false);
        cmd.env("RUST_LOG", filter);
        let mut d = spawn(cmd, log_path);
        assert_eq!(d.exit_code(T), 2, "{filter}");
        let log = d.log();
        assert!(
            log.contains("vhost-user-cross-domain: error: --socket-path '")
                && log.contains("does not exist"),
            "RUST_LOG={filter}: {log:?}"
        );

        // A failure while running (exit 1).
        let dir = temp_dir();
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        let (mut cmd, log_path) = command(dir.path(), &["--fd".into(), "4".into()], false);
        cmd.env("RUST_LOG", filter);
        pass_fd(&mut cmd, theirs.as_raw_fd(), 4);
        let mut d = spawn(cmd, log_path);
        drop(theirs);
        let mut msg = Vec::new();
        for word in [0xffffu32, 1, 0] {
            msg.extend_from_slice(&word.to_ne_bytes());
        }
        ours.write_all(&msg).unwrap();
        assert_eq!(d.exit_code(T), 1);
        let log = d.log();
        assert_eq!(
            log.lines().count(),
            1,
            "RUST_LOG={filter}: only the fatal error: {log:?}"
        );
        assert!(
            log.starts_with("vhost-user-cross-domain: error: the session ended with an error"),
            "RUST_LOG={filter}: {log:?}"
        );
    }
}

#[test]
fn log_level_flag_wins_over_rust_log() {
    // --log-level warn: warnings, no info lines, whatever RUST_LOG says.
    let dir = temp_dir();
    let sock = dir.path().join("gpu.sock");
    let args: Vec<OsString> = vec![
        "--socket-path".into(),
        sock.clone().into(),
        "--log-level".into(),
        "warn".into(),
    ];
    let (mut cmd, log_path) = command(dir.path(), &args, false);
    cmd.env("RUST_LOG", "trace");
    let mut d = spawn(cmd, log_path);
    wait_log(&mut d, "no --channel given");
    let deadline = Instant::now() + T;
    while !sock.exists() {
        assert!(Instant::now() < deadline, "no socket\n{}", d.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    d.signal(Signal::SIGTERM);
    assert_eq!(d.exit_code(EXIT_DEADLINE), 0);
    let log = d.log();
    assert!(!log.contains("INFO"), "{log}");
    assert!(!log.contains("DEBUG"), "{log}");
    assert!(log.contains("WARN"), "{log}");

    // --log-level debug under RUST_LOG=off.
    let dir = temp_dir();
    let sock = dir.path().join("gpu.sock");
    let args: Vec<OsString> = vec![
        "--socket-path".into(),
        sock.clone().into(),
        "--log-level".into(),
        "debug".into(),
    ];
    let (mut cmd, log_path) = command(dir.path(), &args, false);
    cmd.env("RUST_LOG", "off");
    let mut d = spawn(cmd, log_path);
    wait_log(&mut d, "listening on");
    // A VMM's feature negotiation is logged at debug level.
    let vm = TestVm::connect(&sock);
    vm.disconnect();
    wait_log(&mut d, "acked features");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.exit_code(EXIT_DEADLINE), 0);
    let log = d.log();
    assert!(log.contains("INFO"), "{log}");
    assert!(log.contains("DEBUG"), "{log}");

    // A level that does not exist.
    let dir = temp_dir();
    let (cmd, log_path) = command(dir.path(), &["--log-level".into(), "loud".into()], false);
    assert_exit_2(
        spawn(cmd, log_path),
        &["--log-level 'loud'", "error, warn, info"],
    );
}

#[test]
fn start_up_lines_describe_the_configuration() {
    let dir = temp_dir();
    let sock = dir.path().join("gpu.sock");
    let args: Vec<OsString> = vec![
        "--socket-path".into(),
        sock.into(),
        // crosvm's form, with its default (empty) name.
        "--wayland-sock".into(),
        "/run/w-0,name=".into(),
        "--channel".into(),
        "0x14:/run/agent.sock".into(),
        "--shm-size".into(),
        "512MiB".into(),
        "--scanouts".into(),
        "0".into(),
        "--sandbox".into(),
        "none".into(),
    ];
    let (mut cmd, log_path) = command(dir.path(), &args, false);
    cmd.env("RUST_LOG", "info");
    let mut d = spawn(cmd, log_path);
    wait_log(&mut d, "listening on");
    let log = d.log();
    for needle in [
        &format!(
            "vhost-user-cross-domain {} starting",
            env!("CARGO_PKG_VERSION")
        )[..],
        "--shm-size 512 MiB",
        "--scanouts 0",
        "--sandbox none",
        "2 channels",
        "channel 1 (wayland): /run/w-0 (fds: memory+pipe+eventfd)",
        "channel 20 (0x14): /run/agent.sock (fds: memory+pipe+eventfd)",
    ] {
        assert!(log.contains(needle), "{needle:?} missing from:\n{log}");
    }
}

/// A group the daemon may give its socket to: as root one that exists on Debian and is not
/// root's own, otherwise the test's own group.
fn other_group() -> (String, u32) {
    if nix::unistd::geteuid().is_root() {
        for name in ["nogroup", "daemon"] {
            if let Ok(Some(g)) = nix::unistd::Group::from_name(name) {
                return (name.to_owned(), g.gid.as_raw());
            }
        }
    }
    let gid = nix::unistd::getegid().as_raw();
    (gid.to_string(), gid)
}

#[test]
fn socket_group_gives_the_socket_to_the_group_with_mode_0660() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    let (name, gid) = other_group();
    let d = Daemon::builder()
        .args(["--socket-group", name.as_str()])
        .spawn();
    // The socket exists from its bind on; the group is given right after, before this line.
    assert!(d.wait_for_log("listening on", T), "{}", d.log());
    let meta = std::fs::symlink_metadata(d.socket_path()).unwrap();
    assert_eq!(meta.gid(), gid, "{}", d.log());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    assert!(
        d.log()
            .contains(&format!("group {name} (gid {gid}), mode 0660")),
        "{}",
        d.log()
    );
    // The VMM still connects.
    let vm = TestVm::connect(d.socket_path());
    vm.disconnect();
}

#[test]
fn socket_group_needs_socket_path() {
    let dir = temp_dir();
    let (_ours, theirs) = UnixStream::pair().unwrap();
    let args: Vec<OsString> = vec![
        "--fd".into(),
        "5".into(),
        "--socket-group".into(),
        "daemon".into(),
    ];
    let (mut cmd, log_path) = command(dir.path(), &args, false);
    pass_fd(&mut cmd, theirs.as_raw_fd(), 5);
    assert_exit_2(
        spawn(cmd, log_path),
        &[
            "--socket-group 'daemon': only with --socket-path",
            "with --fd",
        ],
    );

    let dir = temp_dir();
    let listener = UnixListener::bind(dir.path().join("a.sock")).unwrap();
    let args: Vec<OsString> = vec!["--socket-group".into(), "daemon".into()];
    let d = spawn_activated(dir.path(), &[listener.as_raw_fd()], &args);
    assert_exit_2(
        d,
        &[
            "--socket-group 'daemon': only with --socket-path",
            "socket activation",
            "SocketGroup=",
        ],
    );
}

#[test]
fn channel_paths_that_cannot_work_yet_are_warned_about() {
    let dir = temp_dir();
    let sock = dir.path().join("gpu.sock");
    let missing = dir.path().join("not-yet");
    let args: Vec<OsString> = vec![
        "--socket-path".into(),
        sock.into(),
        "--channel".into(),
        "5:relative/portal.sock".into(),
        "--channel".into(),
        format!("3:{}/agent.sock", missing.display()).into(),
        "--sandbox".into(),
        "none".into(),
    ];
    let (mut cmd, log_path) = command(dir.path(), &args, false);
    cmd.env("RUST_LOG", "info");
    let mut d = spawn(cmd, log_path);
    // Warnings, not errors: the daemon serves.
    wait_log(&mut d, "listening on");
    let log = d.log();
    assert!(
        log.contains("channel 5: relative/portal.sock: a relative path"),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "channel 3: {}/agent.sock: the directory {} does not exist",
            missing.display(),
            missing.display()
        )),
        "{log}"
    );
    assert!(log.contains("WARN"), "{log}");
}

#[test]
fn socket_activation_logs_the_socket_path() {
    // Without LISTEN_FDNAMES the service manager's name for the socket is "unknown".
    let dir = temp_dir();
    let socket_path = dir.path().join("activated.sock");
    let listener = UnixListener::bind(&socket_path).unwrap();
    let (mut cmd, log_path) = command(dir.path(), &[], true);
    cmd.env("LISTEN_FDS", "1");
    pass_fd(&mut cmd, listener.as_raw_fd(), 3);
    let mut d = spawn(cmd, log_path);
    drop(listener);
    wait_log(&mut d, "socket activation: listening on");
    let log = d.log();
    assert!(
        log.contains(&format!(
            "socket activation: listening on the socket-activated socket {} for",
            socket_path.display()
        )),
        "{log}"
    );
    assert!(!log.contains("unknown"), "{log}");
}
