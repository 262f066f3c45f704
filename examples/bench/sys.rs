//! Operating-system helpers: CPU affinity, memory and CPU accounting, the machine description,
//! and finding (or building) the daemon binary. Per-process costs over a span of traffic are
//! in `counters.rs`.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

/// CPUs the calling thread may run on.
pub fn affinity() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: we pass the size of `set` and a pointer to it; the kernel writes at most that many
    // bytes.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let max = 8 * std::mem::size_of_val(&set);
    // SAFETY: CPU_ISSET only reads bit `c` of `set`, and `c` is below the set's bit count.
    Ok((0..max)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Restricts the calling thread to `cpus`. Threads and processes it creates afterwards inherit
/// the mask.
pub fn set_affinity(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let max = 8 * std::mem::size_of_val(&set);
    for &c in cpus {
        if c >= max {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: `c` is below the set's bit count, so CPU_SET writes inside `set`.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size we pass; the kernel only reads it.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Resident memory of a process, from /proc/PID/status, in KiB.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rss {
    pub total: u64,
    pub anon: u64,
}

pub fn rss(pid: u32) -> io::Result<Rss> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(Rss {
        total: field("VmRSS:"),
        anon: field("RssAnon:"),
    })
}

/// CPU time (ns) of this process (all threads, exited ones included) plus its waited-for
/// children.
pub fn self_cpu_ns() -> u64 {
    let get = |who| {
        // SAFETY: rusage is plain data; getrusage fills it.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `ru` is a valid, writable rusage.
        unsafe { libc::getrusage(who, &mut ru) };
        let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    };
    get(libc::RUSAGE_SELF) + get(libc::RUSAGE_CHILDREN)
}

/// One line describing the machine: CPUs, model, kernel.
pub fn machine() -> (usize, String, String) {
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|r| r.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown kernel".into());
    (nproc, cpu, kernel)
}

/// Newest modification time under `path` (recursively for directories).
fn newest(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| newest(&e.path()))
        .max()
}

/// The daemon binary to benchmark.
///
/// `$VHOST_USER_CROSS_DOMAIN_BIN` wins (it may be a wrapper script, e.g. one that runs the daemon
/// under callgrind or strace). Otherwise the binary of this example's own profile
/// (`target/<profile>/examples/bench` → `target/<profile>/vhost-user-cross-domain`), built with
/// `$CARGO build` when it is missing or older than the package sources.
pub fn daemon_binary(name: &str) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("VHOST_USER_CROSS_DOMAIN_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("cannot derive the target directory from {}", exe.display()))?;
    let bin = profile_dir.join(name);
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sources = [
        manifest.join("src"),
        // The workspace's other crates, which the daemon links (cross-domain-protocol,
        // cross-domain-fdpass).
        manifest.join("crates"),
        manifest.join("Cargo.toml"),
        manifest.join("Cargo.lock"),
    ];
    let newest_source = sources.iter().filter_map(|p| newest(p)).max();
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    let stale = match (built, newest_source) {
        (None, _) => true,
        (Some(b), Some(s)) => b < s,
        (Some(_), None) => false,
    };
    if !stale {
        return Ok(bin);
    }
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    if !release {
        eprintln!("bench: warning: not a release build; numbers from a debug build mean little");
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    // Built together with this example, the binary shares its feature resolution (dev-only
    // features of shared dependencies add code the daemon does not call), so the library
    // and every dependency compiled for the example are reused: seconds instead of minutes.
    cmd.args(["build", "--bin", name, "--example", "bench"])
        .current_dir(manifest);
    if release {
        cmd.arg("--release");
    }
    // The same features as this example, or cargo would rebuild it without them.
    if cfg!(feature = "bench-peer") {
        cmd.args(["--features", "bench-peer"]);
    }
    eprintln!(
        "bench: {} is {}; building it",
        bin.display(),
        if built.is_some() {
            "older than the sources"
        } else {
            "missing"
        }
    );
    let ok = cmd.status().map(|s| s.success()).unwrap_or(false);
    if ok && bin.exists() {
        Ok(bin)
    } else if bin.exists() {
        eprintln!(
            "bench: warning: building the daemon failed; measuring the existing {}",
            bin.display()
        );
        Ok(bin)
    } else {
        Err(format!(
            "no daemon binary at {} and building it failed",
            bin.display()
        ))
    }
}
