//! The host half of the end-to-end test (tests/e2e/run.sh): the services behind the daemon's
//! channels 2 and 0x12. It plays its part of the exchange described in tests/e2e/protocol.rs
//! with the guest client (examples/e2e_guest_client.rs), compares every byte that comes back
//! from the guest, and prints one verdict per check on standard output:
//!
//! ```text
//! PASS a: channel 2: 1048576 bytes echoed and returned intact
//! FAIL b: host pipe: byte 4096 differs (got 0x00, want 0x5e)
//! ```
//!
//! Check (l) hands the guest a connected socket on channel 0x12 and judges the traffic across it
//! (tests/e2e/protocol.rs). Progress goes to standard error. It serves one connection per socket and exits when both
//! sessions are over.
//!
//! With `--qmp SOCKET` (QEMU's monitor) it also pauses the VM in the middle of channel 2's first
//! transfer: `stop`, two seconds, `cont`, over QMP, while it keeps echoing into the paused VM.
//! Check (j) is that QEMU paused and ran again; check (a) that the transfer came through intact
//! all the same.
//!
//! ```text
//! e2e_host_service --c2 /tmp/c2.sock --c12 /tmp/c12.sock [--qmp /tmp/qmp.sock]
//! ```

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

#[path = "../tests/e2e/protocol.rs"]
mod protocol;

use protocol::*;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// How long a session waits for the guest at any one step.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long each channel waits, in the middle of its first transfer, for the other one.
const OVERLAP_TIMEOUT: Duration = Duration::from_secs(60);
/// Where "the middle of the first transfer" is.
const MIDDLE: usize = 64 << 10;

static START: OnceLock<Instant> = OnceLock::new();
/// QEMU's QMP socket, if the VM is to be paused during channel 2's first transfer.
static QMP: OnceLock<String> = OnceLock::new();
/// The thread that pauses and resumes the VM, joined before channel 2's session goes on.
static PAUSER: Mutex<Option<std::thread::JoinHandle<()>>> = Mutex::new(None);
/// How long the VM stays paused.
const PAUSE: Duration = Duration::from_secs(2);
/// Where in channel 2's first transfer the VM is paused: well past the overlap check's middle.
const PAUSE_AT: usize = C2_BYTES / 2;

macro_rules! log {
    ($($arg:tt)*) => {{
        let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
        eprintln!("[{t:7.2}s] {}", format!($($arg)*));
    }};
}

fn verdict(id: &str, ok: bool, text: &str) {
    println!("{} {id}: {text}", if ok { "PASS" } else { "FAIL" });
    log!("{} {id}: {text}", if ok { "PASS" } else { "FAIL" });
}

/// `first_difference` as a verdict.
fn compare(id: &str, what: &str, got: &[u8], want: &[u8]) {
    match first_difference(got, want) {
        None => verdict(id, true, &format!("{what}: {} bytes intact", want.len())),
        Some(d) => verdict(id, false, &format!("{what}: {d}")),
    }
}

/// Evidence for check (d): both channels in the middle of their first transfer at one time.
#[derive(Default)]
struct Overlap {
    /// Per side: 0 not started, 1 in the middle, 2 past it.
    state: Mutex<([u8; 2], bool)>,
    cv: Condvar,
}

impl Overlap {
    /// `side` is in the middle of its transfer: note an overlap if the other one is too, and wait
    /// a while for one if not (the waiting side stops reading, so it stays in the middle).
    fn middle(&self, side: usize) {
        let mut s = self.state.lock().unwrap();
        s.0[side] = 1;
        if s.0[1 - side] == 1 {
            s.1 = true;
        }
        self.cv.notify_all();
        let (s, _) = self
            .cv
            .wait_timeout_while(s, OVERLAP_TIMEOUT, |s| !s.1 && s.0[1 - side] != 2)
            .unwrap();
        if !s.1 {
            log!("channel side {side}: the other channel was not busy at the same time");
        }
    }

    fn past(&self, side: usize) {
        self.state.lock().unwrap().0[side] = 2;
        self.cv.notify_all();
    }

    fn seen(&self) -> bool {
        self.state.lock().unwrap().1
    }
}

const SIDE_C2: usize = 0;
const SIDE_C12: usize = 1;

/// One QMP command and its `return` (events before it are skipped); the reply line.
fn qmp_command(conn: &mut std::io::BufReader<UnixStream>, cmd: &str) -> Result<String> {
    use std::io::BufRead;
    conn.get_mut()
        .write_all(format!("{{\"execute\": \"{cmd}\"}}\n").as_bytes())?;
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line)? == 0 {
            return Err(format!("QMP closed the connection after {cmd}").into());
        }
        if line.contains("\"return\"") {
            return Ok(line);
        }
        if line.contains("\"error\"") {
            return Err(format!("QMP {cmd}: {}", line.trim()).into());
        }
    }
}

/// Whether a `query-status` reply says `"running": want`.
fn running(reply: &str, want: bool) -> bool {
    let compact: String = reply.chars().filter(|c| !c.is_whitespace()).collect();
    compact.contains(&format!("\"running\":{want}"))
}

/// Check (j): `stop`, [`PAUSE`], `cont` through QEMU's monitor, confirming each state with
/// `query-status`.
fn pause_vm(qmp: &str) -> Result<String> {
    use std::io::BufRead;
    let sock = UnixStream::connect(qmp)?;
    sock.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut conn = std::io::BufReader::new(sock);
    let mut greeting = String::new();
    conn.read_line(&mut greeting)?;
    if !greeting.contains("QMP") {
        return Err(format!("not a QMP greeting: {}", greeting.trim()).into());
    }
    qmp_command(&mut conn, "qmp_capabilities")?;
    qmp_command(&mut conn, "stop")?;
    let t0 = Instant::now();
    if !running(&qmp_command(&mut conn, "query-status")?, false) {
        return Err("query-status after stop: the VM still runs".into());
    }
    log!("channel 2: VM paused (QMP stop)");
    std::thread::sleep(PAUSE);
    qmp_command(&mut conn, "cont")?;
    if !running(&qmp_command(&mut conn, "query-status")?, true) {
        return Err("query-status after cont: the VM does not run".into());
    }
    log!("channel 2: VM running again (QMP cont)");
    Ok(format!(
        "QEMU paused (stop) and resumed (cont) through QMP in the middle of channel 2's \
         transfer, {:.1} s apart",
        t0.elapsed().as_secs_f64()
    ))
}

/// Starts the pause of check (j) on its own thread, so that echoing goes on meanwhile.
fn start_pause() {
    let Some(qmp) = QMP.get().cloned() else {
        return;
    };
    let t = std::thread::spawn(move || match pause_vm(&qmp) {
        Ok(text) => verdict("j", true, &text),
        Err(e) => verdict("j", false, &format!("QEMU stop/cont: {e}")),
    });
    *PAUSER.lock().unwrap() = Some(t);
}

/// Waits for the pause of check (j), if one was started.
fn join_pause() {
    if let Some(t) = PAUSER.lock().unwrap().take() {
        let _ = t.join();
    }
}

/// Reads `len` bytes and echoes each chunk as it arrives; `overlap.middle` once past `MIDDLE`.
/// Channel 2 pauses the VM once past `PAUSE_AT` (when `--qmp` is given).
fn echo(conn: &mut FdStream, len: usize, side: usize, overlap: &Overlap) -> Result<Vec<u8>> {
    let mut got = vec![0; len];
    let mut off = 0;
    let mut noted = false;
    let mut paused = false;
    while off < len {
        let end = (off + (32 << 10)).min(len);
        conn.read_exact(&mut got[off..end])?;
        conn.send(&got[off..end], None)?;
        off = end;
        if !noted && off >= MIDDLE {
            noted = true;
            overlap.middle(side);
        }
        if side == SIDE_C2 && !paused && off >= PAUSE_AT {
            paused = true;
            start_pause();
        }
    }
    overlap.past(side);
    Ok(got)
}

/// The first exchange of both channels; returns whether both copies were intact.
fn round_trip(
    conn: &mut FdStream,
    what: &str,
    seed: u64,
    len: usize,
    side: usize,
    overlap: &Overlap,
) -> Result<Option<String>> {
    let want = pattern(seed, len);
    let first = echo(conn, len, side, overlap);
    let first = match first {
        Ok(v) => v,
        Err(e) => {
            overlap.past(side);
            return Err(e);
        }
    };
    log!("{what}: {len} bytes received and echoed");
    let second = conn.read_vec(len)?;
    log!("{what}: {len} bytes returned");
    Ok(first_difference(&first, &want)
        .map(|d| format!("guest to host: {d}"))
        .or_else(|| first_difference(&second, &want).map(|d| format!("after the echo: {d}"))))
}

/// Writes all of `data` to `f`, which may be non-blocking.
fn write_all_nonblocking(mut f: &File, mut data: &[u8]) -> Result<()> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    while !data.is_empty() {
        match f.write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err("not writable for too long".into());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads `fd` to end of file in another thread, waiting at most `STEP_TIMEOUT`.
fn read_to_eof(fd: OwnedFd) -> Result<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let r = File::from(fd).read_to_end(&mut v).map(|_| v);
        let _ = tx.send(r);
    });
    match rx.recv_timeout(STEP_TIMEOUT) {
        Ok(r) => Ok(r?),
        Err(_) => Err(format!("no end of file within {} s", STEP_TIMEOUT.as_secs()).into()),
    }
}

/// The guest's answer to `MEMF`/`MCHG`: the bytes it saw, or why it saw none.
fn mapped_answer(conn: &mut FdStream) -> Result<std::result::Result<Vec<u8>, String>> {
    let h = conn.read_header()?;
    let body = conn.read_vec(h.len as usize)?;
    match h.tag {
        MDAT => Ok(Ok(body)),
        GERR => Ok(Err(String::from_utf8_lossy(&body).into_owned())),
        _ => Err(format!("expected MDAT or GERR, got {}", h.tag_text()).into()),
    }
}

/// Sends a memfd of `len` bytes holding `pattern(seed)` and judges what the guest saw.
fn memfd_check(
    conn: &mut FdStream,
    id: &str,
    what: &str,
    seed: u64,
    len: usize,
) -> Result<OwnedFd> {
    let memfd = sys::memfd(c"e2e-host")?;
    let want = pattern(seed, len);
    File::from(memfd.try_clone()?).write_all(&want)?;
    conn.send_header(MEMF, len, Some(memfd.as_fd()))?;
    match mapped_answer(conn)? {
        Ok(got) => compare(id, what, &got, &want),
        Err(e) => verdict(
            id,
            false,
            &format!("{what}: the guest could not read it: {e}"),
        ),
    }
    Ok(memfd)
}

fn session_c2(conn: &mut FdStream, overlap: &Overlap, step: &mut &'static str) -> Result<()> {
    *step = "a";
    let r = round_trip(conn, "channel 2", SEED_C2, C2_BYTES, SIDE_C2, overlap);
    join_pause();
    match r? {
        None => verdict(
            "a",
            true,
            &format!("channel 2: {C2_BYTES} bytes echoed through the guest and returned intact"),
        ),
        Some(d) => verdict("a", false, &format!("channel 2: {d}")),
    }

    *step = "b";
    let (r, w) = sys::pipe()?;
    conn.send_header(PIPE, PIPE_BYTES, Some(w.as_fd()))?;
    drop(w);
    match read_to_eof(r) {
        Ok(got) => compare(
            "b",
            "host pipe written by the guest, then end of file",
            &got,
            &pattern(SEED_PIPE, PIPE_BYTES),
        ),
        Err(e) => verdict("b", false, &format!("host pipe: {e}")),
    }

    *step = "c";
    let memfd = memfd_check(
        conn,
        "c",
        "host memfd as the guest mapped it",
        SEED_MEMFD,
        MEMFD_BYTES,
    )?;

    *step = "i";
    File::from(memfd).write_all_at(&pattern(SEED_MEMFD_LIVE, MEMFD_BYTES), 0)?;
    conn.send_header(MCHG, MEMFD_BYTES, None)?;
    let what = "host memfd rewritten after it was sent, as the guest maps it again";
    match mapped_answer(conn)? {
        Ok(got) => compare("i", what, &got, &pattern(SEED_MEMFD_LIVE, MEMFD_BYTES)),
        Err(e) => verdict(
            "i",
            false,
            &format!("{what}: the guest could not read it: {e}"),
        ),
    }

    *step = "f";
    conn.send_header(GPIP, GUEST_PIPE_BYTES, None)?;
    let h = conn.expect(GPIP)?;
    // The guest waits for end of file on its pipe and then answers GPDT, whatever happens here.
    let written = match conn.take_fd() {
        None => Err("the guest's GPIP arrived without a file descriptor".to_string()),
        Some(fd) => {
            let pipe = File::from(fd);
            if !pipe.metadata()?.file_type().is_fifo() {
                Err("the descriptor that came with GPIP is not a pipe".to_string())
            } else {
                write_all_nonblocking(&pipe, &pattern(SEED_GUEST_PIPE, h.len as usize))
                    .map_err(|e| format!("writing into it: {e}"))
            }
        }
    };
    let h = conn.expect(GPDT)?;
    let got = conn.read_vec(h.len as usize)?;
    let what = "guest pipe written by the host, read by the guest to end of file";
    match written {
        Ok(()) => compare("f", what, &got, &pattern(SEED_GUEST_PIPE, GUEST_PIPE_BYTES)),
        Err(e) => verdict("f", false, &format!("{what}: {e}")),
    }

    *step = "g";
    conn.send_header(GMEM, GUEST_MEMFD_BYTES, None)?;
    let h = conn.expect(GMEM)?;
    let what = "guest memfd as the host maps it";
    match conn.take_fd() {
        None => verdict(
            "g",
            false,
            &format!("{what}: no file descriptor came with GMEM"),
        ),
        Some(fd) => {
            let size = File::from(fd.try_clone()?).metadata()?.len();
            if size < u64::from(h.len) {
                verdict(
                    "g",
                    false,
                    &format!("{what}: {size} bytes, fewer than {}", h.len),
                );
            } else {
                let got = sys::read_mapped(fd.as_fd(), h.len as usize)?;
                compare(
                    "g",
                    &format!("{what} (a {size}-byte descriptor)"),
                    &got,
                    &pattern(SEED_GUEST_MEMFD, GUEST_MEMFD_BYTES),
                );
            }
        }
    }

    // Last, in case a failure here spoils the context for what follows.
    *step = "h";
    memfd_check(
        conn,
        "h",
        &format!(
            "host memfd of {ODD_MEMFD_BYTES} bytes (not a page multiple), as the guest mapped it"
        ),
        SEED_ODD_MEMFD,
        ODD_MEMFD_BYTES,
    )?;

    *step = "end";
    conn.send_header(DONE, 0, None)?;
    conn.expect(BYE)?;
    Ok(())
}

fn session_c12(conn: &mut FdStream, overlap: &Overlap, step: &mut &'static str) -> Result<()> {
    *step = "d";
    let r = round_trip(conn, "channel 0x12", SEED_C12, C12_BYTES, SIDE_C12, overlap)?;
    match (r, overlap.seen()) {
        (None, true) => verdict(
            "d",
            true,
            &format!(
                "channel 0x12: {C12_BYTES} bytes echoed and returned intact, \
                 while channel 2 was in the middle of its own transfer"
            ),
        ),
        (None, false) => verdict(
            "d",
            false,
            "channel 0x12: intact, but channels 2 and 0x12 were never busy at the same time",
        ),
        (Some(d), _) => verdict("d", false, &format!("channel 0x12: {d}")),
    }
    *step = "l";
    socket_check(conn)?;
    *step = "end";
    conn.send_header(DONE, 0, None)?;
    conn.expect(BYE)?;
    Ok(())
}

/// Check (l): hands the guest one end of a connected socket pair, as a portal hands out a
/// PipeWire remote, then moves bytes both ways and a descriptor each way across it.
fn socket_check(conn: &mut FdStream) -> Result<()> {
    let (ours, theirs) = UnixStream::pair()?;
    conn.send_header(SOCK, SOCK_BYTES, Some(theirs.as_fd()))?;
    // Only the guest's copy may keep the socket open.
    drop(theirs);
    let h = conn.read_header()?;
    match h.tag {
        SOCK => log!("channel 0x12: the guest got the socket"),
        GERR => {
            let why = conn.read_vec(h.len as usize)?;
            let why = String::from_utf8_lossy(&why);
            verdict(
                "l",
                false,
                &format!("passed socket: the guest got none: {why}"),
            );
            return Ok(());
        }
        _ => return Err(format!("expected SOCK or GERR, got {}", h.tag_text()).into()),
    }
    ours.set_read_timeout(Some(STEP_TIMEOUT))?;
    ours.set_write_timeout(Some(STEP_TIMEOUT))?;
    let mut sock = FdStream::new(ours);
    let mut failures = Vec::new();

    // Bytes both ways at once, then the guest returns what it received.
    let down = pattern(SEED_SOCK_DOWN, SOCK_BYTES);
    let mut writer = sock.sock.try_clone()?;
    let up = std::thread::scope(|s| {
        let w = s.spawn(|| writer.write_all(&down));
        let up = sock.read_vec(SOCK_BYTES);
        let sent = w.join().expect("writer thread");
        sent?;
        up
    })?;
    let back = sock.read_vec(SOCK_BYTES)?;
    log!("passed socket: {SOCK_BYTES} bytes each way, and returned");
    if let Some(d) = first_difference(&up, &pattern(SEED_SOCK_UP, SOCK_BYTES)) {
        failures.push(format!("guest to host: {d}"));
    }
    if let Some(d) = first_difference(&back, &down) {
        failures.push(format!("host to guest: {d}"));
    }

    // A guest memfd across it.
    let h = sock.expect(SMEM)?;
    match sock.take_fd() {
        None => failures.push("SMEM came without a descriptor".to_string()),
        Some(fd) => {
            let size = File::from(fd.try_clone()?).metadata()?.len();
            if size < u64::from(h.len) {
                failures.push(format!("guest memfd: {size} bytes, fewer than {}", h.len));
            } else {
                let got = sys::read_mapped(fd.as_fd(), h.len as usize)?;
                let want = pattern(SEED_SOCK_MEMFD, SOCK_MEMFD_BYTES);
                if let Some(d) = first_difference(&got, &want) {
                    failures.push(format!("guest memfd: {d}"));
                }
            }
        }
    }

    // A host pipe across it, the other way.
    let (r, w) = sys::pipe()?;
    sock.send_header(SPIP, SOCK_PIPE_BYTES, Some(w.as_fd()))?;
    drop(w);
    match read_to_eof(r) {
        Ok(got) => {
            if let Some(d) = first_difference(&got, &pattern(SEED_SOCK_PIPE, SOCK_PIPE_BYTES)) {
                failures.push(format!("host pipe: {d}"));
            }
        }
        Err(e) => failures.push(format!("host pipe: {e}")),
    }

    sock.send_header(DONE, 0, None)?;
    sock.expect(BYE)?;
    if failures.is_empty() {
        verdict(
            "l",
            true,
            &format!(
                "passed socket (channel 0x12): {SOCK_BYTES} bytes each way, a \
                 {SOCK_MEMFD_BYTES}-byte guest memfd and a {SOCK_PIPE_BYTES}-byte host pipe \
                 across it intact"
            ),
        );
    } else {
        verdict(
            "l",
            false,
            &format!("passed socket: {}", failures.join("; ")),
        );
    }
    Ok(())
}

type Session = fn(&mut FdStream, &Overlap, &mut &'static str) -> Result<()>;

fn serve(name: &str, listener: UnixListener, session: Session, overlap: &Overlap) {
    let conn = match listener.accept() {
        Ok((c, _)) => c,
        Err(e) => {
            log!("{name}: accept: {e}");
            return;
        }
    };
    log!("{name}: the daemon connected");
    let setup = |c: &UnixStream| -> std::io::Result<()> {
        c.set_read_timeout(Some(STEP_TIMEOUT))?;
        c.set_write_timeout(Some(STEP_TIMEOUT))
    };
    if let Err(e) = setup(&conn) {
        log!("{name}: {e}");
        return;
    }
    let mut conn = FdStream::new(conn);
    let mut step = "start";
    match session(&mut conn, overlap, &mut step) {
        Ok(()) => log!("{name}: session complete"),
        Err(e) => {
            if step != "end" {
                verdict(step, false, &format!("{name}: aborted: {e}"));
            } else {
                log!("{name}: at the end: {e}");
            }
        }
    }
}

fn main() {
    START.get_or_init(Instant::now);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let (Some(c2), Some(c12)) = (arg("--c2"), arg("--c12")) else {
        eprintln!("usage: e2e_host_service --c2 SOCKET --c12 SOCKET [--qmp SOCKET]");
        std::process::exit(2);
    };
    if let Some(qmp) = arg("--qmp") {
        let _ = QMP.set(qmp);
    }
    let bind = |path: &str| {
        let _ = std::fs::remove_file(path);
        UnixListener::bind(path).unwrap_or_else(|e| {
            eprintln!("e2e_host_service: cannot listen on {path}: {e}");
            std::process::exit(1);
        })
    };
    // Channel 0x12's socket last: run.sh waits for it to know that both are listening.
    let l2 = bind(&c2);
    let l12 = bind(&c12);
    log!("listening on {c2} (channel 2) and {c12} (channel 0x12)");
    let overlap = Overlap::default();
    std::thread::scope(|s| {
        s.spawn(|| serve("channel 2", l2, session_c2, &overlap));
        s.spawn(|| serve("channel 0x12", l12, session_c12, &overlap));
    });
}
