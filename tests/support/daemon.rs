//! Starting the real daemon binary on a temporary socket, and host-side channel services.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Name of the daemon executable.
pub const DAEMON_NAME: &str = "vhost-user-cross-domain";

/// Path of the daemon binary.
///
/// Order: `$VHOST_USER_CROSS_DOMAIN_BIN`, then the binary next to this program's target
/// directory (`target/<profile>/{deps,examples}/x` → `target/<profile>/vhost-user-cross-domain`;
/// cargo builds it before it runs the root package's integration tests). Cargo's
/// `CARGO_BIN_EXE_…` cannot help here: it is set only when compiling the tests of the package
/// that owns the binary, and this crate is a package of its own.
pub fn daemon_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VHOST_USER_CROSS_DOMAIN_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(DAEMON_NAME))
        .expect("cannot derive the daemon path from current_exe")
}

/// A `Command` for the daemon binary with `RUST_LOG=debug` (for tests that run it by hand,
/// e.g. to check argument errors).
pub fn daemon_command() -> Command {
    let mut c = Command::new(daemon_bin());
    c.env("RUST_LOG", "debug").stdin(Stdio::null());
    c
}

/// A fresh temporary directory (short path, so socket paths stay under 108 bytes).
pub fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("vucd-")
        .tempdir()
        .expect("create temp dir")
}

/// Options for [`Daemon`]; start with [`Daemon::builder`].
pub struct DaemonBuilder {
    bin: PathBuf,
    dir: Option<TempDir>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    rust_log: String,
    wait_socket: bool,
    socket_timeout: Duration,
}

impl DaemonBuilder {
    /// Use another binary.
    pub fn bin(mut self, bin: impl Into<PathBuf>) -> Self {
        self.bin = bin.into();
        self
    }

    /// Run in this directory (socket and log go there). Default: a fresh temp dir.
    pub fn dir(mut self, dir: TempDir) -> Self {
        self.dir = Some(dir);
        self
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// `--channel TYPE:PATH`.
    pub fn channel(self, channel_type: u32, path: impl AsRef<Path>) -> Self {
        let spec = format!("{channel_type}:{}", path.as_ref().display());
        self.arg("--channel").arg(spec)
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.env
            .push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }

    /// `RUST_LOG` for the daemon (default `debug`; benchmarks want `warn`).
    pub fn rust_log(mut self, filter: &str) -> Self {
        self.rust_log = filter.to_owned();
        self
    }

    /// Do not wait for the socket to appear (for daemons expected to fail at startup).
    pub fn no_wait(mut self) -> Self {
        self.wait_socket = false;
        self
    }

    /// How long to wait for the socket (default 10 s).
    pub fn socket_timeout(mut self, t: Duration) -> Self {
        self.socket_timeout = t;
        self
    }

    /// Spawns `BIN --socket-path DIR/gpu.sock ARGS…` with stdout and stderr going to
    /// `DIR/daemon.log`, and waits until the socket exists.
    pub fn spawn(self) -> Daemon {
        let dir = self.dir.unwrap_or_else(temp_dir);
        let socket = dir.path().join("gpu.sock");
        let log_path = dir.path().join("daemon.log");
        let log = File::create(&log_path).expect("create daemon log");
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--socket-path")
            .arg(&socket)
            .args(&self.args)
            .env("RUST_LOG", &self.rust_log)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
        let mut d = Daemon {
            child,
            dir,
            socket,
            log_path,
            status: None,
        };
        if self.wait_socket {
            d.wait_socket(self.socket_timeout);
        }
        d
    }
}

/// A running daemon process. Dropping it kills the process; if the thread is panicking the
/// daemon's log is printed to stderr first.
pub struct Daemon {
    child: Child,
    dir: TempDir,
    socket: PathBuf,
    log_path: PathBuf,
    status: Option<ExitStatus>,
}

impl Daemon {
    pub fn builder() -> DaemonBuilder {
        DaemonBuilder {
            bin: daemon_bin(),
            dir: None,
            args: Vec::new(),
            env: Vec::new(),
            rust_log: "debug".to_owned(),
            wait_socket: true,
            socket_timeout: Duration::from_secs(10),
        }
    }

    /// Starts the daemon in a fresh temp dir with `extra_args` (e.g. `["--channel", "2:/x"]`).
    pub fn start<I, S>(extra_args: I) -> Daemon
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::builder().args(extra_args).spawn()
    }

    /// Starts the daemon in `dir` (where the test may already have created channel sockets).
    pub fn start_in<I, S>(dir: TempDir, extra_args: I) -> Daemon
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::builder().dir(dir).args(extra_args).spawn()
    }

    fn wait_socket(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.socket.exists() {
            if let Some(st) = self.try_status() {
                panic!(
                    "daemon exited ({st}) before creating {}\n{}",
                    self.socket.display(),
                    self.log_banner()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "daemon did not create {} within {timeout:?}\n{}",
                    self.socket.display(),
                    self.log_banner()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The vhost-user socket path.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The daemon's working temp dir (socket and log live here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the daemon wrote to stdout/stderr so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Polls the log until it contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Exit status if the process has exited (non-blocking).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Panics (with the log) if the daemon has exited, e.g. crashed during the test.
    #[track_caller]
    pub fn assert_running(&mut self) {
        if let Some(st) = self.try_status() {
            panic!("daemon is not running ({st})\n{}", self.log_banner());
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_status() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `sig` to the daemon.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, sig).expect("kill");
    }

    /// SIGTERM, then wait up to `timeout` for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(st) = self.try_status() {
            return Some(st);
        }
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait_exit(timeout)
    }

    fn log_banner(&self) -> String {
        format!(
            "==== daemon log (pid {}, {}) ====\n{}==== end of daemon log ====",
            self.child.id(),
            self.log_path.display(),
            self.log()
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() || std::env::var_os("VHOST_TEST_SHOW_LOG").is_some() {
            eprintln!("{}", self.log_banner());
        }
    }
}

/// Creates a listening host "channel service" socket in `dir` with a unique name.
pub fn channel_listener(dir: &Path) -> (PathBuf, UnixListener) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("channel-{}-{n}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
    (path, listener)
}

/// Accepts one connection on `listener` within `timeout` (the daemon connects at INIT).
pub fn accept_timeout(
    listener: &UnixListener,
    timeout: Duration,
) -> Option<std::os::unix::net::UnixStream> {
    listener.set_nonblocking(true).expect("set_nonblocking");
    let deadline = Instant::now() + timeout;
    let r = loop {
        match listener.accept() {
            Ok((s, _)) => break Some(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    listener.set_nonblocking(false).expect("set_nonblocking");
    if let Some(s) = &r {
        s.set_nonblocking(false).expect("set_nonblocking");
    }
    r
}
