//! The guest half of the end-to-end test (tests/e2e/run.sh): runs inside the test VM, statically
//! linked, and talks to the host service (examples/e2e_host_service.rs) through two
//! `cross-domain-proxy` instances, one per channel. The exchange is described in
//! tests/e2e/protocol.rs (on channel 0x12 this includes a socket the host hands out, which
//! the proxy bridges through a context of its own); the host judges it, this program only does its part and reports
//! errors on the console (lines starting with `E2E-GUEST:`).
//!
//! ```text
//! e2e_guest_client --c2 /run/c2.sock --c12 /run/c12.sock
//! e2e_guest_client --boot-only      # only check that the render node is virtio-gpu's
//! ```

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

#[path = "../tests/e2e/protocol.rs"]
mod protocol;

use protocol::*;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

macro_rules! say {
    ($($arg:tt)*) => {{
        println!("E2E-GUEST: {}", format!($($arg)*));
    }};
}

/// Connects to a proxy's socket, retrying while it is not listening yet.
fn connect(path: &str) -> Result<FdStream> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match UnixStream::connect(path) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(200)))?;
                return Ok(FdStream::new(s));
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(format!("cannot connect to {path}: {e}").into()),
        }
    }
}

/// Sends `data` from a second thread while this one reads as many bytes back: the proxy and the
/// host service move the echo while the rest is still being sent.
fn send_and_read_echo(conn: &mut FdStream, data: &[u8]) -> Result<Vec<u8>> {
    let mut writer = conn.sock.try_clone()?;
    let echo = std::thread::scope(|s| {
        let w = s.spawn(move || writer.write_all(data));
        let echo = conn.read_vec(data.len());
        let sent = w.join().expect("writer thread");
        sent?;
        echo
    })?;
    Ok(echo)
}

/// Both channels start with the same exchange: a pattern out, its echo back, the echo out again.
fn round_trip(conn: &mut FdStream, what: &str, seed: u64, len: usize) -> Result<()> {
    let t = Instant::now();
    let data = pattern(seed, len);
    let echo = send_and_read_echo(conn, &data)?;
    if let Some(d) = first_difference(&echo, &data) {
        say!("{what}: the echo differs from what was sent: {d} (the host compares too)");
    }
    conn.send(&echo, None)?;
    say!(
        "{what}: {len} bytes sent, echoed and returned in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn finish(conn: &mut FdStream, what: &str) -> Result<()> {
    conn.expect(DONE)?;
    conn.send_header(BYE, 0, None)?;
    say!("{what}: done");
    Ok(())
}

/// Answers a `MEMF` or `MCHG`: what the first `len` bytes of `fd` look like through a mapping.
fn answer_mapped(conn: &FdStream, fd: Option<&OwnedFd>, len: usize) -> Result<()> {
    let bytes = match fd {
        None => Err("no file descriptor came with the request".to_string()),
        Some(fd) => sys::read_mapped(fd.as_fd(), len).map_err(|e| format!("mmap: {e}")),
    };
    match bytes {
        Ok(b) => {
            conn.send_header(MDAT, b.len(), None)?;
            conn.send(&b, None)?;
        }
        Err(e) => {
            say!("cannot read the memory: {e}");
            conn.send_header(GERR, e.len(), None)?;
            conn.send(e.as_bytes(), None)?;
        }
    }
    Ok(())
}

/// Reads `r` to end of file, for at most `GUEST_WAIT`.
fn read_pipe(r: OwnedFd) -> Vec<u8> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut f = File::from(r);
        let mut buf = [0u8; 16384];
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    say!("GPIP: reading the pipe: {e}");
                    break;
                }
            }
        }
    });
    let deadline = Instant::now() + GUEST_WAIT;
    let mut got = Vec::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(chunk) => got.extend(chunk),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                say!(
                    "GPIP: read {} bytes from the host, then end of file",
                    got.len()
                );
                return got;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                say!("GPIP: no end of file after {} bytes", got.len());
                return got;
            }
        }
    }
}

/// After the first exchange the host leads: it sends requests, this answers each.
fn channel_2(path: &str) -> Result<()> {
    let mut conn = connect(path)?;
    round_trip(&mut conn, "channel 2", SEED_C2, C2_BYTES)?;
    let mut memfd: Option<OwnedFd> = None;
    loop {
        let h = conn.read_header()?;
        let len = h.len as usize;
        let fd = conn.take_fd();
        say!(
            "request {} ({len}){}",
            h.tag_text(),
            if fd.is_some() {
                " with a descriptor"
            } else {
                ""
            }
        );
        match h.tag {
            PIPE => match fd {
                Some(fd) => match File::from(fd).write_all(&pattern(SEED_PIPE, len)) {
                    // Dropping the file closed the write end: the host sees end of file.
                    Ok(()) => say!("PIPE: wrote {len} bytes into the host's pipe and closed it"),
                    Err(e) => say!("PIPE: writing: {e}"),
                },
                None => say!("PIPE: no file descriptor came with the request"),
            },
            MEMF => {
                if let Some(fd) = &fd {
                    let size = File::from(fd.try_clone()?).metadata()?.len();
                    say!("MEMF: the descriptor is {size} bytes, reading {len}");
                }
                answer_mapped(&conn, fd.as_ref(), len)?;
                memfd = fd;
            }
            MCHG => answer_mapped(&conn, memfd.as_ref(), len)?,
            GPIP => {
                let (r, w) = sys::pipe()?;
                conn.send_header(GPIP, len, Some(w.as_fd()))?;
                // Only the copy the proxy received may keep the pipe open, or no end of file.
                drop(w);
                let got = read_pipe(r);
                conn.send_header(GPDT, got.len(), None)?;
                conn.send(&got, None)?;
            }
            GMEM => {
                let mut f = File::from(sys::memfd(c"e2e-guest")?);
                f.write_all(&pattern(SEED_GUEST_MEMFD, len))?;
                conn.send_header(GMEM, len, Some(f.as_fd()))?;
                say!("GMEM: sent a {len}-byte memfd");
            }
            DONE => {
                conn.send_header(BYE, 0, None)?;
                say!("channel 2: done");
                return Ok(());
            }
            _ => return Err(format!("unknown request {}", h.tag_text()).into()),
        }
    }
}

fn channel_0x12(path: &str) -> Result<()> {
    let mut conn = connect(path)?;
    round_trip(&mut conn, "channel 0x12", SEED_C12, C12_BYTES)?;
    let passed = passed_socket(&mut conn);
    if let Err(e) = &passed {
        say!("passed socket: {e}");
    }
    finish(&mut conn, "channel 0x12")?;
    passed
}

/// The socket the host hands out on channel 0x12 (check (l)): what arrives in its place must be
/// a socket, which then carries bytes both ways and a descriptor each way.
fn passed_socket(conn: &mut FdStream) -> Result<()> {
    conn.expect(SOCK)?;
    let sock = match conn.take_fd() {
        None => Err("no file descriptor came with SOCK".to_string()),
        Some(fd) => match File::from(fd.try_clone()?).metadata() {
            Ok(m) if m.file_type().is_socket() => Ok(UnixStream::from(fd)),
            Ok(m) => Err(format!(
                "the descriptor is not a socket ({:?})",
                m.file_type()
            )),
            Err(e) => Err(format!("fstat: {e}")),
        },
    };
    let sock = match sock {
        Ok(s) => s,
        Err(e) => {
            conn.send_header(GERR, e.len(), None)?;
            conn.send(e.as_bytes(), None)?;
            return Err(e.into());
        }
    };
    conn.send_header(SOCK, 0, None)?;
    sock.set_read_timeout(Some(Duration::from_secs(200)))?;
    // Dropped on every path out, so that the host sees end of file instead of waiting.
    let mut s = FdStream::new(sock);
    let t = Instant::now();
    let down = send_and_read_echo(&mut s, &pattern(SEED_SOCK_UP, SOCK_BYTES))?;
    if let Some(d) = first_difference(&down, &pattern(SEED_SOCK_DOWN, SOCK_BYTES)) {
        say!("passed socket: the host's bytes differ: {d} (the host compares too)");
    }
    s.send(&down, None)?;
    say!(
        "passed socket: {SOCK_BYTES} bytes each way and returned in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let mut f = File::from(sys::memfd(c"e2e-guest-socket")?);
    f.write_all(&pattern(SEED_SOCK_MEMFD, SOCK_MEMFD_BYTES))?;
    s.send_header(SMEM, SOCK_MEMFD_BYTES, Some(f.as_fd()))?;
    let h = s.expect(SPIP)?;
    match s.take_fd() {
        // Dropping the file closes the write end: the host sees end of file.
        Some(fd) => File::from(fd).write_all(&pattern(SEED_SOCK_PIPE, h.len as usize))?,
        None => say!("passed socket: SPIP came without a descriptor"),
    }
    s.expect(DONE)?;
    s.send_header(BYE, 0, None)?;
    say!("passed socket: done");
    Ok(())
}

/// `DRM_IOCTL_VERSION`: the name of the driver behind `fd`.
fn drm_driver_name(fd: &File) -> Result<String> {
    #[repr(C)]
    struct DrmVersion {
        major: i32,
        minor: i32,
        patchlevel: i32,
        name_len: usize,
        name: *mut u8,
        date_len: usize,
        date: *mut u8,
        desc_len: usize,
        desc: *mut u8,
    }
    // _IOWR('d', 0x00, struct drm_version)
    const DRM_IOCTL_VERSION: std::ffi::c_ulong = (3 << 30)
        | ((std::mem::size_of::<DrmVersion>() as std::ffi::c_ulong) << 16)
        | ((b'd' as std::ffi::c_ulong) << 8);
    let mut name = [0u8; 64];
    let mut v = DrmVersion {
        major: 0,
        minor: 0,
        patchlevel: 0,
        name_len: name.len(),
        name: name.as_mut_ptr(),
        date_len: 0,
        date: std::ptr::null_mut(),
        desc_len: 0,
        desc: std::ptr::null_mut(),
    };
    extern "C" {
        fn ioctl(fd: i32, request: std::ffi::c_ulong, ...) -> i32;
    }
    // SAFETY: `v` is a valid drm_version whose only non-null buffer is `name`, `name_len` bytes
    // long; the kernel writes at most that many bytes into it.
    if unsafe { ioctl(fd.as_raw_fd(), DRM_IOCTL_VERSION, &mut v as *mut DrmVersion) } < 0 {
        return Err(format!("DRM_IOCTL_VERSION: {}", std::io::Error::last_os_error()).into());
    }
    let n = v.name_len.min(name.len());
    Ok(String::from_utf8_lossy(&name[..n]).into_owned())
}

fn boot_only() -> Result<()> {
    let node = "/dev/dri/renderD128";
    let f = File::options().read(true).write(true).open(node)?;
    say!("{node}: driver {}", drm_driver_name(&f)?);
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let outcome = if args.iter().any(|a| a == "--boot-only") {
        boot_only()
    } else if let (Some(c2), Some(c12)) = (arg("--c2"), arg("--c12")) {
        // Both channels at once: check (d) wants the two contexts busy at the same time.
        let t = std::thread::spawn(move || channel_0x12(&c12));
        let r2 = channel_2(&c2);
        let r12 = t.join().expect("channel 0x12 thread");
        if let Err(e) = &r12 {
            say!("channel 0x12 failed: {e}");
        }
        r2.map_err(|e| format!("channel 2 failed: {e}").into())
            .and(r12)
    } else {
        eprintln!("usage: e2e_guest_client --c2 SOCKET --c12 SOCKET | --boot-only");
        std::process::exit(2);
    };
    match outcome {
        Ok(()) => say!("all exchanges done"),
        Err(e) => {
            say!("error: {e}");
            std::process::exit(1);
        }
    }
}
