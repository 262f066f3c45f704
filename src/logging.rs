//! Where the daemon's messages go and what they look like.
//!
//! This module owns the logger set-up (`--log-level`, `RUST_LOG`, the journal format), the
//! line that reports a fatal error, and the start-up summary. Log records go to standard error
//! through `env_logger`. When standard error is the systemd journal (`JOURNAL_STREAM` names
//! the very stream the daemon has as its standard error, see systemd.exec(5)), each line starts
//! with its syslog priority (`<3>` error … `<7>` debug, sd-daemon(3)) and carries no timestamp
//! of its own, so that `journalctl -p err` selects by level and the journal's own timestamps are
//! the only ones.
//!
//! A fatal error is not a log record: [`fatal`] writes it to standard error whatever the log
//! filter says, so that a daemon started with `RUST_LOG=off` (or a filter that matches nothing)
//! still says why it stopped. This module must never decide the exit status; `main` does.

use std::fmt::{self, Display};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::OnceLock;

use log::{info, Level, LevelFilter};

use crate::config::{ChannelTable, Config, ConfigError, SandboxMode, SeccompMode};

/// The program name that starts every fatal-error line.
pub const PROGRAM: &str = "vhost-user-cross-domain";

/// `--log-level`: the least severe level that is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// The default: start-up, sessions, shutdown, warnings, errors.
    Info,
    /// Every request the daemon refused and why, every channel connection.
    Debug,
    /// Everything, including each message relayed.
    Trace,
}

/// The `--log-level` values, as typed.
const LOG_LEVELS: [(&str, LogLevel); 5] = [
    ("error", LogLevel::Error),
    ("warn", LogLevel::Warn),
    ("info", LogLevel::Info),
    ("debug", LogLevel::Debug),
    ("trace", LogLevel::Trace),
];

/// Parses `--log-level LEVEL`: `error`, `warn`, `info`, `debug` or `trace`.
pub fn parse_log_level(s: &str) -> Result<LogLevel, ConfigError> {
    LOG_LEVELS
        .iter()
        .find(|(name, _)| *name == s)
        .map(|&(_, level)| level)
        .ok_or_else(|| ConfigError::InvalidLogLevel {
            flag: "--log-level",
            value: s.to_owned(),
        })
}

impl From<LogLevel> for LevelFilter {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Error => LevelFilter::Error,
            LogLevel::Warn => LevelFilter::Warn,
            LogLevel::Info => LevelFilter::Info,
            LogLevel::Debug => LevelFilter::Debug,
            LogLevel::Trace => LevelFilter::Trace,
        }
    }
}

/// Sets up the logger. `level` (`--log-level`) wins over `RUST_LOG` when given; otherwise
/// `RUST_LOG` is read as an `env_logger` filter, and without it the level is `info`.
pub fn init(level: Option<LogLevel>) {
    let mut builder = match level {
        Some(level) => {
            let mut b = env_logger::Builder::new();
            b.filter_level(level.into());
            b
        }
        None => env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")),
    };
    if to_journal() {
        builder
            .write_style(env_logger::WriteStyle::Never)
            .format(|buf, record| writeln!(buf, "<{}>{}", priority(record.level()), record.args()));
    }
    builder.init();
}

/// Writes `message` as a fatal error, `vhost-user-cross-domain: error: MESSAGE`, to standard
/// error, whatever the log filter (with the error priority prefix under the journal).
pub fn fatal(message: impl Display) {
    let prefix = if to_journal() { "<3>" } else { "" };
    // Nothing is left to report a failed write of the last words to.
    let _ = writeln!(std::io::stderr(), "{prefix}{PROGRAM}: error: {message}");
}

/// Writes clap's usage error `text` (several lines) to standard error, each line with the
/// error priority prefix under the journal.
pub fn usage_error(text: &str) {
    let mut err = std::io::stderr().lock();
    for line in text.lines() {
        let _ = if to_journal() && !line.is_empty() {
            writeln!(err, "<3>{line}")
        } else {
            writeln!(err, "{line}")
        };
    }
}

/// True if standard error is the journal: `JOURNAL_STREAM` is `DEVICE:INODE` of standard error.
/// (A child started with the variable but with standard error redirected elsewhere, as in a
/// shell started from a unit, must not use the journal's format.)
pub fn to_journal() -> bool {
    static JOURNAL: OnceLock<bool> = OnceLock::new();
    *JOURNAL.get_or_init(|| {
        let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
            return false;
        };
        let Ok(meta) = std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .and_then(|fd| std::fs::File::from(fd).metadata())
        else {
            return false;
        };
        journal_stream_is(&value.to_string_lossy(), meta.dev(), meta.ino())
    })
}

fn journal_stream_is(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.split_once(':') else {
        return false;
    };
    d.parse() == Ok(dev) && i.parse() == Ok(ino)
}

/// The syslog priority of a log level (sd-daemon(3)'s `SD_ERR` … `SD_DEBUG`).
fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// Logs what this daemon is: its version, `--shm-size`, the scanouts, the sandbox mode, and
/// the channel table one line per channel (type, name, host socket, fd policy).
pub fn log_startup(config: &Config) {
    let channels = config.channels.load();
    info!(
        "{PROGRAM} {} starting: --shm-size {}, --scanouts {}, --sandbox {}, {} channel{}",
        env!("CARGO_PKG_VERSION"),
        Bytes(config.shm_size),
        config.num_scanouts,
        describe_sandbox(config.sandbox, config.seccomp),
        channels.len(),
        if channels.len() == 1 { "" } else { "s" },
    );
    if let Some(file) = config.channel_sources.file() {
        info!(
            "channels from the command line ({}) and from {} ({}), which SIGHUP re-reads",
            config.channel_sources.flags().len(),
            file.display(),
            channels.len() - config.channel_sources.flags().len(),
        );
    }
    log_channels(&channels, config.channel_sources.file().is_some());
}

fn describe_sandbox(sandbox: SandboxMode, seccomp: SeccompMode) -> &'static str {
    match (sandbox, seccomp) {
        (SandboxMode::On, SeccompMode::Kill) => "on",
        (SandboxMode::On, SeccompMode::Log) => {
            "on (--seccomp log: calls outside the list are logged)"
        }
        (SandboxMode::None, _) => "none (no confinement, for debugging only)",
    }
}

fn log_channels(channels: &ChannelTable, from_file: bool) {
    if channels.is_empty() {
        if from_file {
            log::warn!(
                "no channel configured yet: guests can only open query-only contexts until a \
                 reload adds one"
            );
        } else {
            log::warn!("no --channel given: guests can only open query-only contexts");
        }
        return;
    }
    for (t, path) in channels.iter() {
        let about = channel_label(t);
        // `ring=` shows only where given, so that the line reads as before without it.
        let ring = match channels.large_ring(t) {
            Some(size) => format!(", large rings up to {} KiB", size >> 10),
            None => String::new(),
        };
        info!(
            "channel {t}{about}: {} (fds: {}{ring})",
            path.display(),
            channels.policy(t)
        );
        for problem in path_warnings(path, true) {
            log::warn!("channel {t}{about}: {}: {problem}", path.display());
        }
    }
    info!("capset channel mask {:#x}", channels.capset_mask());
    if channels.has_large_rings() {
        info!(
            "capset large-ring channel mask {:#x} (a fifth capset word: docs/protocol.md, \
             \"Large channel rings\")",
            channels.large_ring_mask()
        );
    }
    for t in channels.unadvertised() {
        log::warn!(
            "channel type {t} ({t:#x}) cannot be advertised in the capset's 32-bit channel mask; \
             a guest that knows the number can still use it"
        );
    }
}

/// How channel type `t` is described after its number in logs: its name, and from 10 up its
/// number in hexadecimal, the way such numbers are usually written (` (0x10, pipewire)`).
pub fn channel_label(t: u32) -> String {
    match (t, crate::config::channel_name(t)) {
        (0..=9, Some(name)) => format!(" ({name})"),
        (_, Some(name)) => format!(" ({t:#x}, {name})"),
        (0..=9, None) => String::new(),
        (_, None) => format!(" ({t:#x})"),
    }
}

/// What may keep a channel's host socket from being reached, said at start-up and on reload.
/// Not errors: the socket is connected only when a guest asks, and its service may create it
/// later. `look` says whether the directory may be examined (`stat`); the sandboxed daemon may
/// not, so after start-up only what the path itself says is checked there.
pub fn path_warnings(path: &Path, look: bool) -> Vec<String> {
    let mut problems = Vec::new();
    if path.is_relative() {
        let cwd = std::env::current_dir()
            .map(|d| format!(" ({})", d.display()))
            .unwrap_or_default();
        problems.push(format!(
            "a relative path, resolved against the daemon's working directory{cwd} each time a \
             guest opens the channel; give an absolute path"
        ));
    }
    if !look {
        return problems;
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => problems.push(format!("{} is not a directory", dir.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => problems.push(format!(
            "the directory {} does not exist (yet); guests asking for this channel fail until \
             it does and the service listens there",
            dir.display()
        )),
        // Not being allowed to look does not mean the service is unreachable.
        Err(_) => {}
    }
    problems
}

/// A byte count in the largest binary unit that divides it (`8 GiB`, `1536 MiB`, `4096 bytes`).
struct Bytes(u64);

impl Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if n != 0 && n % (1u64 << shift) == 0 {
                return write!(f, "{} {unit}", n >> shift);
            }
        }
        write!(f, "{n} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        for (name, level) in LOG_LEVELS {
            assert_eq!(parse_log_level(name).unwrap(), level);
        }
        for bad in ["", "INFO", "warning", "off", "3"] {
            let e = parse_log_level(bad).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("--log-level '{bad}': expected one of error, warn, info, debug, trace")
            );
        }
        assert_eq!(LevelFilter::from(LogLevel::Warn), LevelFilter::Warn);
    }

    #[test]
    fn priorities() {
        assert_eq!(priority(Level::Error), 3);
        assert_eq!(priority(Level::Warn), 4);
        assert_eq!(priority(Level::Info), 6);
        assert_eq!(priority(Level::Debug), 7);
        assert_eq!(priority(Level::Trace), 7);
    }

    #[test]
    fn journal_stream_values() {
        assert!(journal_stream_is("8:1234", 8, 1234));
        assert!(!journal_stream_is("8:1234", 8, 1235));
        assert!(!journal_stream_is("9:1234", 8, 1234));
        assert!(!journal_stream_is("", 8, 1234));
        assert!(!journal_stream_is("8", 8, 1234));
        assert!(!journal_stream_is("8:x", 8, 1234));
    }

    #[test]
    fn channel_path_warnings() {
        let dir = tempfile::tempdir().unwrap();
        assert!(path_warnings(&dir.path().join("x.sock"), true).is_empty());
        let missing = path_warnings(&dir.path().join("no/x.sock"), true);
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert!(missing[0].contains("does not exist"), "{missing:?}");
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let not_dir = path_warnings(&file.join("x.sock"), true);
        assert!(not_dir[0].contains("is not a directory"), "{not_dir:?}");
        let relative = path_warnings(Path::new("x.sock"), true);
        assert_eq!(relative.len(), 1, "{relative:?}");
        assert!(relative[0].contains("relative path"), "{relative:?}");
        // Without looking, only what the path says.
        assert!(path_warnings(&dir.path().join("no/x.sock"), false).is_empty());
        assert_eq!(path_warnings(Path::new("x.sock"), false), relative);
    }

    #[test]
    fn byte_counts() {
        assert_eq!(Bytes(8 << 30).to_string(), "8 GiB");
        assert_eq!(Bytes(1536 << 20).to_string(), "1536 MiB");
        assert_eq!(Bytes(64 << 10).to_string(), "64 KiB");
        assert_eq!(Bytes(5000).to_string(), "5000 bytes");
        assert_eq!(Bytes(0).to_string(), "0 bytes");
    }
}
