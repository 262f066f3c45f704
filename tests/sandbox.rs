//! The sandbox seen from outside: forbidden actions fail inside the sandboxed daemon and
//! succeed with `--sandbox none` (through the hidden `VUCD_SANDBOX_SELFTEST` hook);
//! `--seccomp kill` kills the daemon on a forbidden system call and `--seccomp log` does not;
//! every thread of the daemon and its connection broker are confined; channels still work
//! through the broker, which goes away with the daemon.
//!
//! The rest of the integration suite runs sandboxed too, since the sandbox is the default.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use support::*;

const T: Duration = Duration::from_secs(10);
const SELFTEST_ENV: &str = "VUCD_SANDBOX_SELFTEST";
const EXECVE_PATH: &str = "/nonexistent/vhost-user-cross-domain-sandbox-self-test";

/// What the self-test logged for `action target`: the text after `sandbox self-test: action
/// target: `.
fn selftest_outcome(daemon: &Daemon, action: &str, target: &str) -> String {
    let prefix = format!("sandbox self-test: {action} {target}: ");
    assert!(
        daemon.wait_for_log(&prefix, T),
        "no self-test line for {action} {target}:\n{}",
        daemon.log()
    );
    let log = daemon.log();
    let line = log
        .lines()
        .find(|l| l.contains(&prefix))
        .expect("self-test line");
    line[line.find(&prefix).unwrap_or(0) + prefix.len()..].to_owned()
}

/// `/proc/PID/status` (or `/proc/PID/task/TID/status`) as name → value.
fn status(path: &Path) -> HashMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// The broker's pid, from the daemon's `sandbox:` log line.
fn broker_pid(daemon: &Daemon) -> u32 {
    assert!(
        daemon.wait_for_log("the broker (pid ", T),
        "{}",
        daemon.log()
    );
    let log = daemon.log();
    let start = log.find("the broker (pid ").expect("broker line") + "the broker (pid ".len();
    let end = start + log[start..].find(')').expect("closing parenthesis");
    log[start..end].parse().expect("broker pid")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Asserts that the task behind `status_path` is confined: seccomp filter mode, no new
/// privileges, no capabilities (and, started as root, an empty bounding set).
fn assert_confined(status_path: &Path) {
    let st = status(status_path);
    let what = format!("{}: {st:?}", status_path.display());
    assert_eq!(st["Seccomp"], "2", "{what}");
    assert_eq!(st["NoNewPrivs"], "1", "{what}");
    for set in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(st[set], "0000000000000000", "{set} of {what}");
    }
    if is_root() {
        assert_eq!(st["CapBnd"], "0000000000000000", "{what}");
    }
}

/// True once `pid` is gone (or a zombie nobody reaped yet).
fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(stat)
                if stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z') =>
            {
                return true
            }
            Ok(_) => {}
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A guest context on channel 2 reaches `listener` and carries bytes both ways. Returns the VM,
/// still connected.
fn channel_round_trip(daemon: &Daemon, listener: &std::os::unix::net::UnixListener) -> TestVm {
    let mut vm = TestVm::connect(daemon.socket_path());
    let ctx = CrossDomainContext::open(&mut vm, 1, 2);
    let mut host = accept_timeout(listener, T).expect("the channel was not connected");
    host.set_read_timeout(Some(T)).unwrap();
    ctx.send(&mut vm, b"ping", &[]);
    let mut got = [0u8; 4];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    host.write_all(b"pong").unwrap();
    match ctx.recv(&mut vm, T) {
        ChannelMsg::Receive { data, .. } => assert_eq!(data, b"pong"),
        other => panic!("expected RECEIVE, got {other:?}"),
    }
    vm
}

#[test]
fn forbidden_actions_fail_inside_the_sandbox() {
    let dir = temp_dir();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, b"not for the daemon").unwrap();
    let (configured, configured_l) = channel_listener(dir.path());
    let (other, other_l) = channel_listener(dir.path());
    let spec = format!(
        "open:{},open:/etc/passwd,connect:{},connect:{}",
        secret.display(),
        other.display(),
        configured.display()
    );
    let mut daemon = Daemon::builder()
        .dir(dir)
        .channel(2, &configured)
        .env(SELFTEST_ENV, &spec)
        .spawn();

    let denied = "Permission denied (os error 13)";
    assert_eq!(
        selftest_outcome(&daemon, "open", &secret.display().to_string()),
        denied
    );
    assert_eq!(selftest_outcome(&daemon, "open", "/etc/passwd"), denied);
    assert_eq!(
        selftest_outcome(&daemon, "connect", &other.display().to_string()),
        denied
    );
    // Not even a configured channel: only the broker connects.
    assert_eq!(
        selftest_outcome(&daemon, "connect", &configured.display().to_string()),
        denied
    );
    assert!(accept_timeout(&other_l, Duration::from_millis(200)).is_none());
    assert!(accept_timeout(&configured_l, Duration::from_millis(200)).is_none());
    daemon.assert_running();

    // What the daemon needs still works: channels (through the broker) and, at shutdown,
    // removing its socket.
    channel_round_trip(&daemon, &configured_l);
    let socket = daemon.socket_path().to_owned();
    let st = daemon.terminate(T).expect("the daemon did not stop");
    assert_eq!(st.code(), Some(0), "{st}\n{}", daemon.log());
    assert!(!socket.exists(), "the socket was not removed at shutdown");
}

#[test]
fn the_same_actions_succeed_without_the_sandbox() {
    let dir = temp_dir();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, b"readable without a sandbox").unwrap();
    let (configured, configured_l) = channel_listener(dir.path());
    let (other, other_l) = channel_listener(dir.path());
    let spec = format!(
        "open:{},connect:{},connect:{}",
        secret.display(),
        other.display(),
        configured.display()
    );
    let mut daemon = Daemon::builder()
        .dir(dir)
        .channel(2, &configured)
        .args(["--sandbox", "none"])
        .env(SELFTEST_ENV, &spec)
        .spawn();

    let allowed = "allowed";
    assert_eq!(
        selftest_outcome(&daemon, "open", &secret.display().to_string()),
        allowed
    );
    assert_eq!(
        selftest_outcome(&daemon, "connect", &other.display().to_string()),
        allowed
    );
    assert_eq!(
        selftest_outcome(&daemon, "connect", &configured.display().to_string()),
        allowed
    );
    assert!(accept_timeout(&other_l, T).is_some());
    assert!(accept_timeout(&configured_l, T).is_some());
    assert!(daemon.log().contains("--sandbox none"), "{}", daemon.log());
    assert!(!daemon.log().contains("broker"), "{}", daemon.log());
    let st = status(Path::new(&format!("/proc/{}/status", daemon.pid())));
    assert_eq!(st["Seccomp"], "0", "{st:?}");

    channel_round_trip(&daemon, &configured_l);
    let st = daemon.terminate(T).expect("the daemon did not stop");
    assert_eq!(st.code(), Some(0), "{st}\n{}", daemon.log());
}

#[test]
fn every_thread_and_the_broker_are_confined() {
    let dir = temp_dir();
    let (configured, configured_l) = channel_listener(dir.path());
    let mut daemon = Daemon::builder().dir(dir).channel(2, &configured).spawn();
    // A VMM session and a channel: the vhost-user and worker threads exist, the broker has
    // connected once.
    let _vm = channel_round_trip(&daemon, &configured_l);
    daemon.assert_running();

    let pid = daemon.pid();
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(tasks.len() >= 3, "only {} threads", tasks.len());
    for task in &tasks {
        assert_confined(&task.join("status"));
    }
    assert!(daemon.log().contains("sandbox: seccomp allow-list of "));

    let broker = broker_pid(&daemon);
    let broker_status = format!("/proc/{broker}/status");
    assert_confined(Path::new(&broker_status));
    assert_eq!(status(Path::new(&broker_status))["PPid"], pid.to_string());
    // stdin, stdout, stderr and its socket to the daemon: nothing of the daemon's. (A channel
    // socket it is handing over exists for a moment; wait for a quiet moment.)
    let links = |pid: u32| -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.flatten()
                    .map(|e| {
                        std::fs::read_link(e.path())
                            .map(|l| l.display().to_string())
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let deadline = Instant::now() + T;
    let mut fds = links(broker);
    while fds.len() != 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        fds = links(broker);
    }
    assert_eq!(fds.len(), 4, "the broker holds {fds:?}");

    // The broker goes away with the daemon, even when the daemon is killed.
    daemon.signal(nix::sys::signal::Signal::SIGKILL);
    daemon.wait_exit(T).expect("the daemon did not die");
    assert!(wait_gone(broker, T), "the broker outlived the daemon");
}

/// Keeps a daemon killed by SIGSYS from writing a core file.
fn no_core_dumps() {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads the struct; lowering a limit needs no privilege.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) }, 0);
}

#[test]
fn seccomp_kill_kills_on_a_forbidden_system_call() {
    no_core_dumps();
    let dir = temp_dir();
    let (configured, _configured_l) = channel_listener(dir.path());
    let mut daemon = Daemon::builder()
        .dir(dir)
        .channel(2, &configured)
        .env(SELFTEST_ENV, "execve")
        .no_wait()
        .spawn();
    let st = daemon.wait_exit(T).expect("the daemon survived execve");
    assert_eq!(st.signal(), Some(libc::SIGSYS), "{st}\n{}", daemon.log());
    let log = daemon.log();
    assert!(
        log.contains(&format!("sandbox self-test: trying execve {EXECVE_PATH}")),
        "{log}"
    );
    assert!(!log.contains("No such file"), "{log}");
    // Its broker goes away too.
    assert!(
        wait_gone(broker_pid(&daemon), T),
        "the broker outlived the daemon"
    );
}

#[test]
fn seccomp_log_logs_a_forbidden_system_call_and_lets_it_run() {
    let mut daemon = Daemon::builder()
        .args(["--seccomp", "log"])
        .env(SELFTEST_ENV, "execve,open:/etc/passwd")
        .spawn();
    // The call ran (and failed: the program does not exist); the daemon goes on.
    assert_eq!(
        selftest_outcome(&daemon, "execve", EXECVE_PATH),
        "No such file or directory (os error 2)"
    );
    // Refused calls stay refused in log mode.
    assert_eq!(
        selftest_outcome(&daemon, "open", "/etc/passwd"),
        "Permission denied (os error 13)"
    );
    assert!(
        daemon
            .log()
            .contains("are logged by the kernel (--seccomp log)"),
        "{}",
        daemon.log()
    );
    daemon.assert_running();
    let st = daemon.terminate(T).expect("the daemon did not stop");
    assert_eq!(st.code(), Some(0), "{st}\n{}", daemon.log());
}

#[test]
fn seccomp_is_ignored_without_a_sandbox() {
    let mut daemon = Daemon::builder()
        .args(["--sandbox", "none", "--seccomp", "kill"])
        .env(SELFTEST_ENV, "execve")
        .spawn();
    assert_eq!(
        selftest_outcome(&daemon, "execve", EXECVE_PATH),
        "No such file or directory (os error 2)"
    );
    assert!(daemon
        .log()
        .contains("--seccomp has no effect with --sandbox none"));
    let st = daemon.terminate(T).expect("the daemon did not stop");
    assert_eq!(st.code(), Some(0), "{st}\n{}", daemon.log());
}

/// The notification socket is connected before the sandbox, so notifications still arrive,
/// even on an abstract socket (which Landlock's scoping would refuse to a new connection).
#[test]
fn notifications_reach_an_abstract_socket_through_the_sandbox() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};

    let name = format!("vucd-sandbox-notify-{}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let receiver = UnixDatagram::bind_addr(&addr).unwrap();
    receiver.set_read_timeout(Some(T)).unwrap();
    let mut daemon = Daemon::builder()
        .env("NOTIFY_SOCKET", format!("@{name}"))
        .spawn();
    let mut buf = [0u8; 512];
    let n = receiver.recv(&mut buf).expect("no READY=1");
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(text.starts_with("READY=1\n"), "{text}");
    assert!(
        daemon.log().contains("sandbox: seccomp"),
        "{}",
        daemon.log()
    );
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    let n = receiver.recv(&mut buf).expect("no STOPPING=1");
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(text.starts_with("STOPPING=1\n"), "{text}");
    let st = daemon.wait_exit(T).expect("the daemon did not stop");
    assert_eq!(st.code(), Some(0), "{st}\n{}", daemon.log());
    assert!(!daemon.log().contains("cannot notify"), "{}", daemon.log());
}
