//! The `cross-domain-proxy` binary's command line: help, argument errors and exit codes. The
//! session logic is tested against the daemon in the root package's `tests/proxy.rs`.

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

const BIN: &str = env!("CARGO_BIN_EXE_cross-domain-proxy");

fn run_bin(args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cross-domain-proxy");
    let deadline = Instant::now() + T;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("cross-domain-proxy {args:?} did not exit");
        }
        thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
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
