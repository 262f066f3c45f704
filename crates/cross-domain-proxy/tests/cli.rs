//! The `cross-domain-proxy` binary's command line: help, argument errors and exit codes, the
//! message on a machine without a virtio-gpu render node, and socket activation. The session
//! logic is tested against the daemon in the root package's `tests/proxy.rs`.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

const BIN: &str = env!("CARGO_BIN_EXE_cross-domain-proxy");

fn run_bin(args: &[&str]) -> (Option<i32>, String, String) {
    let child = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cross-domain-proxy");
    let out = wait_with_deadline(child, args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli() {
    let (code, out, _) = run_bin(&["--help"]);
    assert_eq!(code, Some(0));
    for flag in ["--channel", "--listen", "--device", "--skip-capset-check"] {
        assert!(out.contains(flag), "--help mentions {flag}: {out}");
    }
    let (code, _, err) = run_bin(&["--channel", "bogus", "--listen", "/tmp/x.sock"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("bogus"), "{err}");
    let (code, _, err) = run_bin(&["--listen", "/tmp/x.sock"]);
    assert_eq!(code, Some(2), "--channel is required: {err}");
    let (code, _, err) = run_bin(&[
        "--channel",
        "dbus-session",
        "--listen",
        "/nonexistent-cross-domain-proxy-test/p.sock",
        "--device",
        "/nonexistent-cross-domain-proxy-test/renderD128",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("/nonexistent-cross-domain-proxy-test/renderD128"),
        "{err}"
    );
}

/// What the proxy says on a machine without a virtio-gpu render node (the host, or a guest
/// without the virtio_gpu driver).
const GUEST_HINT: &str = "run this inside the guest, with the virtio_gpu driver loaded";

/// Runs the proxy with `args` (a `--channel` and `--listen` in `dir` are added), expecting it
/// to stop at the device check.
fn device_error(dir: &Path, args: &[&str]) -> String {
    let listen = dir.join("p.sock");
    let mut all = vec!["--channel", "2", "--listen", listen.to_str().unwrap()];
    all.extend_from_slice(args);
    let (code, _, err) = run_bin(&all);
    assert_eq!(code, Some(1), "{all:?}: {err}");
    assert!(!listen.exists(), "no socket before the device is checked");
    err
}

#[test]
fn without_a_render_node_it_says_what_is_missing_and_where_to_run() {
    let tmp = tempfile::tempdir().unwrap();
    // No render node at all: an empty DRI directory (the test machine's /dev/dri may not exist
    // either, but an empty directory of our own makes the outcome independent of it).
    let dri = tmp.path().join("dri");
    std::fs::create_dir(&dri).unwrap();
    let err = device_error(tmp.path(), &["--dri-dir", dri.to_str().unwrap()]);
    let expected = format!(
        "cross-domain-proxy: error: no virtio-gpu render node ({}/renderD*): {GUEST_HINT}\n",
        dri.display()
    );
    assert_eq!(err, expected);

    // A render node by name that is not a DRM device is named, with the same advice.
    std::fs::write(dri.join("renderD128"), b"").unwrap();
    let err = device_error(tmp.path(), &["--dri-dir", dri.to_str().unwrap()]);
    let node = dri.join("renderD128");
    assert!(
        err.contains(&format!("{} is not a DRM device", node.display())),
        "{err}"
    );
    assert!(err.trim_end().ends_with(GUEST_HINT), "{err}");

    // --device naming a path that does not exist.
    let missing = tmp.path().join("renderD200");
    let err = device_error(tmp.path(), &["--device", missing.to_str().unwrap()]);
    assert_eq!(
        err,
        format!(
            "cross-domain-proxy: error: no virtio-gpu render node: --device {} does not exist: \
             {GUEST_HINT}\n",
            missing.display()
        )
    );

    // --device naming something that is not a render node.
    let file = tmp.path().join("not-a-node");
    std::fs::write(&file, b"x").unwrap();
    let err = device_error(tmp.path(), &["--device", file.to_str().unwrap()]);
    assert!(
        err.starts_with(&format!(
            "cross-domain-proxy: error: no virtio-gpu render node: --device {} is not a DRM device",
            file.display()
        )),
        "{err}"
    );
    assert!(err.trim_end().ends_with(GUEST_HINT), "{err}");
}

/// What a socket-activated run is given as descriptor 3.
enum Fd3<'a> {
    Pass(BorrowedFd<'a>),
    Closed,
}

/// Runs the proxy as a service manager would start it: `fd3` as descriptor 3, `LISTEN_FDS`
/// as given and `LISTEN_PID` the proxy's own pid (or `listen_pid` when given). A shell sets
/// `LISTEN_PID=$$` and then execs the proxy, which keeps the shell's pid.
fn run_activated(
    fd3: Fd3<'_>,
    listen_fds: &str,
    listen_pid: Option<&str>,
    args: &[&str],
) -> (Option<i32>, String) {
    let pid = listen_pid.unwrap_or("$$");
    let script = format!("LISTEN_PID={pid} LISTEN_FDS={listen_fds} exec \"$0\" \"$@\"");
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(script)
        .arg(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let raw = match fd3 {
        Fd3::Pass(fd) => fd.as_raw_fd(),
        Fd3::Closed => -1,
    };
    // SAFETY: between fork and exec the closure only calls dup2, fcntl or close, which are
    // async-signal-safe, on descriptors that stay open in the parent for the whole spawn.
    unsafe {
        cmd.pre_exec(move || {
            let r = if raw == 3 {
                // Already in place (dup2 onto itself would keep close-on-exec).
                libc::fcntl(3, libc::F_SETFD, 0)
            } else if raw >= 0 {
                // dup2 leaves the new descriptor without close-on-exec.
                libc::dup2(raw, 3)
            } else {
                // Nothing may be at 3 (close of a descriptor that is not open is harmless).
                libc::close(3);
                0
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn sh");
    let out = wait_with_deadline(child, args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits up to `T` for the proxy started with `args` to exit, and collects its output.
fn wait_with_deadline(mut child: Child, args: &[&str]) -> Output {
    let deadline = Instant::now() + T;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("cross-domain-proxy {args:?} did not exit");
        }
        thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn socket_activation_takes_the_listening_socket_from_descriptor_3() {
    let tmp = tempfile::tempdir().unwrap();
    let dri = tmp.path().join("dri");
    std::fs::create_dir(&dri).unwrap();
    let dri_arg = dri.to_str().unwrap();
    let sock = tmp.path().join("client.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let no_node = format!("no virtio-gpu render node ({}/renderD*)", dri.display());

    // Taken: the proxy names the socket it was given, then stops at the device check (no
    // virtio-gpu node in the empty DRI directory).
    let (code, err) = run_activated(
        Fd3::Pass(listener.as_fd()),
        "1",
        None,
        &["--channel", "2", "--dri-dir", dri_arg],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "socket activation: listening socket {}",
            sock.display()
        )),
        "{err}"
    );
    assert!(err.contains(&no_node), "{err}");
    assert!(sock.exists(), "the socket unit's socket stays");

    // Variables for another process are not for the proxy: it has no socket then.
    let (code, err) = run_activated(
        Fd3::Pass(listener.as_fd()),
        "1",
        Some("1"),
        &["--channel", "2", "--dri-dir", dri_arg],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no socket to listen on"), "{err}");

    // Socket activation and --listen at once.
    let other = tmp.path().join("other.sock");
    let (code, err) = run_activated(
        Fd3::Pass(listener.as_fd()),
        "1",
        None,
        &["--channel", "2", "--listen", other.to_str().unwrap()],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--listen") && err.contains("socket activation (LISTEN_FDS) both"),
        "{err}"
    );
    assert!(!other.exists());

    // More than one socket.
    let (code, err) = run_activated(Fd3::Pass(listener.as_fd()), "2", None, &["--channel", "2"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("LISTEN_FDS=2: expected exactly one socket"),
        "{err}"
    );
}

#[test]
fn socket_activation_refuses_what_it_cannot_serve() {
    let tmp = tempfile::tempdir().unwrap();
    // A connected socket (Accept=yes passes those), not a listening one.
    let (a, _b) = UnixStream::pair().unwrap();
    let (code, err) = run_activated(Fd3::Pass(a.as_fd()), "1", None, &["--channel", "2"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("descriptor 3 is not a listening Unix stream socket"),
        "{err}"
    );
    assert!(err.contains("Accept=no"), "{err}");

    // Not a socket at all.
    let file = std::fs::File::create(tmp.path().join("f")).unwrap();
    let (code, err) = run_activated(Fd3::Pass(file.as_fd()), "1", None, &["--channel", "2"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not a socket"), "{err}");

    // Nothing at descriptor 3.
    let (code, err) = run_activated(Fd3::Closed, "1", None, &["--channel", "2"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("descriptor 3 is not open"), "{err}");
}
