//! Command-line behaviour of the real binary: rejected configurations exit with status 2 and an
//! error naming the flag and the value; `--help`, `--version` and `--print-capabilities` work.
//!
//! None of these tests lets the daemon start serving: every accepted command line here stops
//! before serving (`--help`, `--version`, `--print-capabilities`), and every other one is
//! invalid. The socket path points into a directory that does not exist, so even a daemon
//! started by mistake could not listen, and each run is killed after a deadline rather than
//! hanging the test suite.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-cross-domain");
const SOCKET: &str = "/nonexistent-vhost-user-cross-domain-test/gpu.sock";
const DEADLINE: Duration = Duration::from_secs(20);

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str]) -> Outcome {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the daemon binary");
    let stdout = drain(child.stdout.take().expect("stdout pipe"));
    let stderr = drain(child.stderr.take().expect("stderr pipe"));
    let code = wait_with_deadline(&mut child, args);
    Outcome {
        code,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        // A read error leaves what was read so far; the assertions then show it.
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn wait_with_deadline(child: &mut Child, args: &[&str]) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for the daemon binary") {
            return status.code();
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{BIN} {args:?} still running after {DEADLINE:?}: it must not start serving");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Runs with a valid `--socket-path` plus `args`, and checks the configuration is rejected with
/// exit status 2 and one error line naming `flag` and `value`.
fn assert_rejected(args: &[&str], flag: &str, value: &str) -> String {
    let mut all = vec!["--socket-path", SOCKET];
    all.extend_from_slice(args);
    let out = run(&all);
    assert_eq!(out.code, Some(2), "{all:?}: stderr: {}", out.stderr);
    assert!(
        out.stderr.starts_with("vhost-user-cross-domain: error: "),
        "{all:?}: stderr: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains(flag),
        "{all:?}: flag {flag} missing: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!("'{value}'")),
        "{all:?}: value '{value}' missing: {}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "{all:?}: stdout: {}", out.stdout);
    out.stderr
}

#[test]
fn channel_without_colon() {
    let err = assert_rejected(&["--channel", "2"], "--channel", "2");
    assert!(err.contains("TYPE:PATH"), "{err}");
    assert_rejected(
        &["--channel", "/run/portal.sock"],
        "--channel",
        "/run/portal.sock",
    );
}

#[test]
fn unparsable_channel_type() {
    let err = assert_rejected(&["--channel", "foo:/x"], "--channel", "foo:/x");
    assert!(err.contains("unknown channel type 'foo'"), "{err}");
    assert!(err.contains("wayland"), "names are listed: {err}");
    assert_rejected(&["--channel", "0xzz:/x"], "--channel", "0xzz:/x");
    assert_rejected(&["--channel", ":/x"], "--channel", ":/x");
}

#[test]
fn channel_type_too_large() {
    assert_rejected(
        &["--channel", "4294967296:/x"],
        "--channel",
        "4294967296:/x",
    );
    assert_rejected(
        &["--channel", "0x100000000:/x"],
        "--channel",
        "0x100000000:/x",
    );
}

#[test]
fn channel_type_zero() {
    let err = assert_rejected(&["--channel", "0:/x"], "--channel", "0:/x");
    assert!(err.contains("reserved"), "{err}");
    assert_rejected(&["--channel", "0x0:/x"], "--channel", "0x0:/x");
}

#[test]
fn channel_type_all_ones() {
    let err = assert_rejected(
        &["--channel", "0xFFFFFFFF:/x"],
        "--channel",
        "0xFFFFFFFF:/x",
    );
    assert!(err.contains("reserved"), "{err}");
    assert_rejected(
        &["--channel", "4294967295:/x"],
        "--channel",
        "4294967295:/x",
    );
}

#[test]
fn same_channel_type_twice() {
    let err = assert_rejected(
        &["--channel", "2:/a", "--channel", "2:/b"],
        "--channel",
        "2:/b",
    );
    assert!(err.contains("channel type 2 is given twice"), "{err}");
    // By name and by number.
    assert_rejected(
        &["--channel", "wayland:/a", "--channel", "1:/b"],
        "--channel",
        "1:/b",
    );
    assert_rejected(
        &["--channel", "0x10:/a", "--channel", "pipewire:/b"],
        "--channel",
        "pipewire:/b",
    );
}

#[test]
fn wayland_sock_conflicts_with_channel_1() {
    for channel in ["1:/b", "wayland:/b", "0x1:/b"] {
        let err = assert_rejected(
            &["--wayland-sock", "/w", "--channel", channel],
            "--wayland-sock",
            "/w",
        );
        assert!(err.contains("channel type 1 is given twice"), "{err}");
    }
}

#[test]
fn empty_paths() {
    let err = assert_rejected(&["--channel", "2:"], "--channel", "2:");
    assert!(err.contains("empty"), "{err}");
    assert_rejected(&["--channel", "wayland:"], "--channel", "wayland:");
    assert_rejected(&["--wayland-sock", ""], "--wayland-sock", "");

    let out = run(&["--socket-path", ""]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("--socket-path ''"), "{}", out.stderr);
}

#[test]
fn scanouts_out_of_range() {
    let err = assert_rejected(&["--scanouts", "17"], "--scanouts", "17");
    assert!(err.contains("0 to 16"), "{err}");
    assert_rejected(&["--scanouts", "many"], "--scanouts", "many");
    assert_rejected(&["--scanouts=-1"], "--scanouts", "-1");
}

#[test]
fn a_vhost_user_socket_is_required() {
    let out = run(&["--channel", "2:/run/portal.sock"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert_eq!(
        out.stderr.trim_end(),
        "vhost-user-cross-domain: error: no vhost-user socket given: pass --socket-path PATH or \
         --fd N, or start the daemon through socket activation (LISTEN_FDS)"
    );
}

#[test]
fn socket_path_and_fd_conflict() {
    let out = run(&["--socket-path", SOCKET, "--fd", "3"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("'--socket-path <PATH>' cannot be used with '--fd <N>'"),
        "{}",
        out.stderr
    );
}

/// Runs with `args` (no --socket-path) and checks the rejection names `flag` and `value`.
fn assert_rejected_alone(args: &[&str], flag: &str, value: &str) -> String {
    let out = run(args);
    assert_eq!(out.code, Some(2), "{args:?}: stderr: {}", out.stderr);
    assert!(
        out.stderr.starts_with(&format!(
            "vhost-user-cross-domain: error: {flag} '{value}': "
        )),
        "{args:?}: stderr: {}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "{args:?}: stdout: {}", out.stdout);
    out.stderr
}

#[test]
fn bad_fd() {
    for v in ["x", "-1", "3.0", "0x3", "99999999999"] {
        let arg = format!("--fd={v}");
        let err = assert_rejected_alone(&[&arg], "--fd", v);
        assert!(err.contains("expected a file descriptor number"), "{err}");
    }
    // Far above anything the test harness leaves open.
    let err = assert_rejected_alone(&["--fd", "1000000"], "--fd", "1000000");
    assert!(err.contains("not an open file descriptor"), "{err}");
    // Standard input is /dev/null here.
    let err = assert_rejected_alone(&["--fd", "0"], "--fd", "0");
    assert!(err.contains("not a socket"), "{err}");
}

#[test]
fn bad_shm_size() {
    let err = assert_rejected(&["--shm-size", "0"], "--shm-size", "0");
    assert!(err.contains("must not be zero"), "{err}");
    let err = assert_rejected(&["--shm-size", "5000"], "--shm-size", "5000");
    assert!(err.contains("multiple of the host page size"), "{err}");
    let err = assert_rejected(&["--shm-size", "8T"], "--shm-size", "8T");
    assert!(err.contains("K, M or G"), "{err}");
    assert_rejected(&["--shm-size", "lots"], "--shm-size", "lots");
    assert_rejected(&["--shm-size=-4K"], "--shm-size", "-4K");
    let err = assert_rejected(
        &["--shm-size", "17179869184G"],
        "--shm-size",
        "17179869184G",
    );
    assert!(err.contains("64 bits"), "{err}");
}

#[test]
fn bad_sandbox_and_seccomp() {
    let err = assert_rejected(&["--sandbox", "off"], "--sandbox", "off");
    assert!(err.contains("'on'") && err.contains("'none'"), "{err}");
    assert_rejected(&["--sandbox", ""], "--sandbox", "");
    let err = assert_rejected(&["--seccomp", "trap"], "--seccomp", "trap");
    assert!(err.contains("'kill'") && err.contains("'log'"), "{err}");
    assert_rejected(&["--sandbox", "none", "--seccomp", "x"], "--seccomp", "x");
}

#[test]
fn print_capabilities_ignores_everything_else() {
    for args in [
        &["--print-capabilities"][..],
        &["--fd", "x", "--print-capabilities", "--bogus"],
    ] {
        let out = run(args);
        assert_eq!(out.code, Some(0), "{args:?}: {}", out.stderr);
        assert_eq!(
            out.stdout, "{\n  \"type\": \"gpu\",\n  \"features\": []\n}\n",
            "{args:?}"
        );
        assert!(out.stderr.is_empty(), "{args:?}: {}", out.stderr);
    }
}

#[test]
fn help() {
    let out = run(&["--help"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for needle in [
        "--socket-path",
        "--fd <N>",
        "--print-capabilities",
        "--shm-size",
        "LISTEN_FDS",
        "NOTIFY_SOCKET",
        "SIGTERM",
        "--channel",
        "--wayland-sock",
        "--scanouts",
        "--version",
        "--channel 2:/run/portal.sock",
        "crosvm run --vhost-user gpu,socket=",
        "vhost-user-test-device-pci",
        "RUST_LOG",
        "pipewire (0x10)",
        "--sandbox <MODE>",
        "--seccomp <ACTION>",
        "docs/security.md",
        "--channels-file <FILE>",
        "SIGHUP",
    ] {
        assert!(
            out.stdout.contains(needle),
            "--help lacks {needle:?}:\n{}",
            out.stdout
        );
    }

    let short = run(&["-h"]);
    assert_eq!(short.code, Some(0), "{}", short.stderr);
    assert!(
        short.stdout.contains("--channel <TYPE:PATH>"),
        "{}",
        short.stdout
    );
}

#[test]
fn version() {
    let out = run(&["--version"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        format!("vhost-user-cross-domain {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn socket_path_in_a_missing_directory() {
    let out = run(&["--socket-path", SOCKET]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "vhost-user-cross-domain: error: --socket-path '{SOCKET}': the directory \
             /nonexistent-vhost-user-cross-domain-test does not exist"
        )),
        "{}",
        out.stderr
    );
}

#[test]
fn unknown_socket_group() {
    let err = assert_rejected(
        &["--socket-group", "no-such-group-vucd"],
        "--socket-group",
        "no-such-group-vucd",
    );
    assert!(err.contains("no such group"), "{err}");
    assert_rejected(&["--socket-group", ""], "--socket-group", "");
}

#[test]
fn crosvm_wayland_sock_names_are_refused_clearly() {
    let err = assert_rejected(
        &["--wayland-sock", "/w,name=mojo"],
        "--wayland-sock",
        "/w,name=mojo",
    );
    assert!(err.contains("a named socket (name=mojo)"), "{err}");
    let err = assert_rejected(
        &["--wayland-sock", "/w,mode=0"],
        "--wayland-sock",
        "/w,mode=0",
    );
    assert!(err.contains("unknown option 'mode=0'"), "{err}");
    assert!(err.contains("PATH[,name=NAME]"), "{err}");
}

#[test]
fn negative_numbers_name_their_flag() {
    let err = assert_rejected(&["--scanouts", "-1"], "--scanouts", "-1");
    assert!(err.contains("0 to 16"), "{err}");
    assert_rejected(&["--shm-size", "-1"], "--shm-size", "-1");
    let err = assert_rejected_alone(&["--fd", "-1"], "--fd", "-1");
    assert!(err.contains("expected a file descriptor number"), "{err}");
}

#[test]
fn shm_size_range() {
    let err = assert_rejected(&["--shm-size", "2048G"], "--shm-size", "2048G");
    assert!(err.contains("at most 1024G (1 TiB)"), "{err}");
    let err = assert_rejected(&["--shm-size", "8GB"], "--shm-size", "8GB");
    assert!(err.contains("K, M or G"), "{err}");
}

#[test]
fn channel_fds_option_errors() {
    let cases = [
        (
            "2:/run/x.sock,fds=memory+bogus",
            "unknown fd kind 'bogus' (expected memory, pipe, eventfd, socket, or none alone)",
        ),
        (
            "2:/run/x.sock,fds=",
            "the fd list is empty (use 'none' for a channel without fds)",
        ),
        (
            "2:/run/x.sock,fds=pipe+pipe",
            "fd kind 'pipe' is listed twice",
        ),
        (
            "2:/run/x.sock,fds=none+memory",
            "'none' cannot be combined with other kinds",
        ),
        (
            "2:/run/x.sock,fds=none,fds=memory",
            "the option 'fds=' is given twice",
        ),
        (
            "2:/run/x.sock,fds=none,mode=0600",
            "unknown channel option 'mode=0600' (the options are fds=LIST and ring=SIZE; a \
             path that contains ',' can only be given with --channel)",
        ),
    ];
    for (value, reason) in cases {
        let err = assert_rejected(&["--channel", value], "--channel", value);
        assert_eq!(
            err.trim_end(),
            format!("vhost-user-cross-domain: error: --channel '{value}': {reason}"),
        );
    }
    // The channel part is checked as without the option; errors name the whole value.
    let value = "0xFFFFFFFF:/run/x.sock,fds=socket";
    assert_rejected(&["--channel", value], "--channel", value);
    // The same option in a channels file, named by its line.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vm.channels");
    let file_arg = file.to_str().unwrap();
    std::fs::write(&file, "2:/a,fds=memory+bogus\n").unwrap();
    let err = assert_rejected(
        &["--channels-file", file_arg],
        "--channels-file",
        "2:/a,fds=memory+bogus",
    );
    assert_eq!(
        err.trim_end(),
        format!(
            "vhost-user-cross-domain: error: --channels-file {file_arg}:1: \
             '2:/a,fds=memory+bogus': unknown fd kind 'bogus' (expected memory, pipe, eventfd, \
             socket, or none alone)"
        )
    );
}

#[test]
fn channels_file_errors_name_the_file_and_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vm.channels");
    let file_arg = file.to_str().unwrap();

    std::fs::write(&file, "# portal\n2:/run/portal.sock\nbogus\n").unwrap();
    let err = assert_rejected(&["--channels-file", file_arg], "--channels-file", "bogus");
    assert!(
        err.starts_with(&format!(
            "vhost-user-cross-domain: error: --channels-file {file_arg}:3: 'bogus': expected \
             TYPE:PATH"
        )),
        "{err}"
    );

    // A type in the file and on the command line: the line and the flag are named.
    std::fs::write(&file, "2:/run/portal.sock\n").unwrap();
    let err = assert_rejected(
        &[
            "--channel",
            "2:/run/other.sock",
            "--channels-file",
            file_arg,
        ],
        "--channels-file",
        "2:/run/portal.sock",
    );
    assert!(
        err.contains(&format!(
            "{file_arg}:1: '2:/run/portal.sock': channel type 2 is already given by --channel \
             '2:/run/other.sock'"
        )),
        "{err}"
    );
    std::fs::write(&file, "1:/a\n").unwrap();
    let err = assert_rejected(
        &["--wayland-sock", "/w", "--channels-file", file_arg],
        "--channels-file",
        "1:/a",
    );
    assert!(
        err.contains("already given by --wayland-sock '/w'"),
        "{err}"
    );
    // Twice in the file.
    std::fs::write(&file, "2:/a\n\nwayland:/w\n0x2:/b\n").unwrap();
    let err = assert_rejected(&["--channels-file", file_arg], "--channels-file", "0x2:/b");
    assert!(
        err.contains(":4: '0x2:/b': channel type 2 is already given on line 1"),
        "{err}"
    );
    // Options are reserved.
    std::fs::write(&file, "2:/a,x\n").unwrap();
    let err = assert_rejected(&["--channels-file", file_arg], "--channels-file", "2:/a,x");
    assert!(err.contains("unknown channel option 'x'"), "{err}");

    // A file that cannot be read.
    let missing = dir.path().join("missing.channels");
    let out = run(&[
        "--socket-path",
        SOCKET,
        "--channels-file",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert_eq!(
        out.stderr.trim_end(),
        format!(
            "vhost-user-cross-domain: error: --channels-file {}: cannot read it: No such file or \
             directory (os error 2)",
            missing.display()
        )
    );
    let out = run(&["--socket-path", SOCKET, "--channels-file", ""]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("--channels-file '': the file name is empty"),
        "{}",
        out.stderr
    );
}

#[test]
fn bad_max_mappings_and_partial_pages() {
    let err = assert_rejected(&["--max-mappings", "0"], "--max-mappings", "0");
    assert!(
        err.contains("--max-mappings '0': expected a number from 1 to 32764"),
        "{err}"
    );
    let err = assert_rejected(&["--partial-pages", "yes"], "--partial-pages", "yes");
    assert!(
        err.contains("--partial-pages 'yes': expected 'refuse'"),
        "{err}"
    );
}

/// `--partial-pages udmabuf` needs `/dev/udmabuf` at start-up: without it (as on these build
/// machines, whose kernel lacks CONFIG_UDMABUF) the configuration is rejected, naming the flag,
/// the value, the device and the errno. `auto` is never rejected for it.
#[test]
fn partial_pages_udmabuf_without_the_device() {
    let err = assert_rejected(
        &["--partial-pages", "map,udmabuf"],
        "--partial-pages",
        "map,udmabuf",
    );
    assert!(err.contains("'udmabuf'") && err.contains("'auto'"), "{err}");
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/udmabuf");
    let Err(open_error) = opened else {
        eprintln!("skipped: /dev/udmabuf opens on this host, so 'udmabuf' is accepted");
        return;
    };
    let err = assert_rejected(
        &["--partial-pages", "udmabuf"],
        "--partial-pages",
        "udmabuf",
    );
    assert!(
        err.contains(&format!(
            "--partial-pages 'udmabuf': cannot open /dev/udmabuf: {open_error}"
        )),
        "{err}"
    );
    // auto falls back to refuse: the daemon gets as far as the socket path.
    let out = run(&["--socket-path", SOCKET, "--partial-pages", "auto"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("partial pages: refuse (auto)")
            && out.stderr.contains("error: --socket-path"),
        "{}",
        out.stderr
    );
}
