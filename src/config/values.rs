//! The parsers of the flag values other than channels: `--sandbox`, `--seccomp`, `--scanouts`,
//! `--socket-path`, `--fd`, `--shm-size` and `--max-mappings`, each into its typed value
//! (`--partial-pages` is in `partial_pages.rs`).
//!
//! Each parser takes the text as given and either returns the value or a [`ConfigError`]
//! naming the flag and the text; none touches the file system, and none panics on any input.

use std::fmt;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use super::{
    ConfigError, SandboxMode, SeccompMode, CHANNELS_FILE_FLAG, FD_FLAG, MAX_MAPPINGS_FLAG,
    MAX_SCANOUTS, SANDBOX_FLAG, SCANOUTS_FLAG, SECCOMP_FLAG, SHM_SIZE_FLAG, SOCKET_PATH_FLAG,
};
use crate::inherited::FdError;

/// Parses `--sandbox MODE`: `on` or `none`.
pub fn parse_sandbox(s: &str) -> Result<SandboxMode, ConfigError> {
    match s {
        "on" => Ok(SandboxMode::On),
        "none" => Ok(SandboxMode::None),
        _ => Err(ConfigError::InvalidSandbox {
            flag: SANDBOX_FLAG,
            value: s.to_owned(),
        }),
    }
}

/// Parses `--seccomp ACTION`: `kill` or `log`.
pub fn parse_seccomp(s: &str) -> Result<SeccompMode, ConfigError> {
    match s {
        "kill" => Ok(SeccompMode::Kill),
        "log" => Ok(SeccompMode::Log),
        _ => Err(ConfigError::InvalidSeccomp {
            flag: SECCOMP_FLAG,
            value: s.to_owned(),
        }),
    }
}

/// Default size of the host-visible region: 8 GiB, as crosvm.
pub const DEFAULT_SHM_SIZE: u64 = 8 << 30;

/// Parses `--scanouts N`: a decimal number from 0 to [`MAX_SCANOUTS`].
pub fn parse_scanouts(s: &str) -> Result<u32, ConfigError> {
    s.parse::<u32>()
        .ok()
        .filter(|n| (0..=MAX_SCANOUTS).contains(n) && s.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| ConfigError::InvalidScanouts {
            flag: SCANOUTS_FLAG,
            value: s.to_owned(),
        })
}

/// Highest `--max-mappings`: x86 KVM has 32 764 memory slots for user memory, and crosvm spends
/// one per mapping (and refusing a mapping ends a crosvm VM), so more can never be served.
pub const MAX_MAPPINGS_LIMIT: usize = 32764;

/// Parses `--max-mappings N`: 1 to [`MAX_MAPPINGS_LIMIT`].
pub fn parse_max_mappings(s: &str) -> Result<usize, ConfigError> {
    s.parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_MAPPINGS_LIMIT).contains(n) && s.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| ConfigError::InvalidMaxMappings {
            flag: MAX_MAPPINGS_FLAG,
            value: s.to_owned(),
            max: MAX_MAPPINGS_LIMIT,
        })
}

/// Checks the `--socket-path PATH` value (present and non-empty; the daemon creates the socket).
pub fn parse_socket_path(path: &Path) -> Result<PathBuf, ConfigError> {
    if path.as_os_str().is_empty() {
        return Err(ConfigError::EmptyPath {
            flag: SOCKET_PATH_FLAG,
            value: String::new(),
        });
    }
    Ok(path.to_path_buf())
}

/// Checks the `--channels-file FILE` value (present and non-empty; it is read by the caller).
pub fn parse_channels_file(path: &Path) -> Result<PathBuf, ConfigError> {
    if path.as_os_str().is_empty() {
        return Err(ConfigError::EmptyFileName {
            flag: CHANNELS_FILE_FLAG,
            value: String::new(),
        });
    }
    Ok(path.to_path_buf())
}

/// Parses `--fd N`: a decimal file descriptor number. Whether N is an open, connected Unix
/// stream socket is checked separately ([`crate::inherited::inspect`]).
pub fn parse_fd(s: &str) -> Result<RawFd, ConfigError> {
    s.parse::<RawFd>()
        .ok()
        .filter(|&fd| fd >= 0 && s.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| ConfigError::InvalidFd {
            flag: FD_FLAG,
            value: s.to_owned(),
        })
}

/// An `--fd N` whose descriptor cannot be served (not open, not a connected Unix stream socket).
pub fn unusable_fd(fd: RawFd, reason: FdError) -> ConfigError {
    ConfigError::UnusableFd {
        flag: FD_FLAG,
        value: fd.to_string(),
        reason,
    }
}

/// Largest `--shm-size`: 1 TiB. The VMM reserves the region in guest physical address space,
/// where more than this rarely fits (and no guest needs it).
pub const MAX_SHM_SIZE: u64 = 1 << 40;

/// Parses `--shm-size SIZE`: a byte count with an optional binary suffix `K`, `M` or `G`, also
/// written `KiB`, `MiB`, `GiB` (any case; `8G` is 8 << 30). It must be a multiple of the host
/// page size, from one page to [`MAX_SHM_SIZE`].
pub fn parse_shm_size(s: &str) -> Result<u64, ConfigError> {
    parse_shm_size_with_page(s, cross_domain_protocol::page_size())
}

fn parse_shm_size_with_page(s: &str, page_size: u64) -> Result<u64, ConfigError> {
    let err = |reason| ConfigError::InvalidShmSize {
        flag: SHM_SIZE_FLAG,
        value: s.to_owned(),
        reason,
    };
    // `KiB`, `MiB`, `GiB`: drop the `iB` after a unit letter (the three bytes are ASCII, so
    // the slice is on a character boundary).
    let b = s.as_bytes();
    let s_unit = match b.len().checked_sub(3).map(|i| (b[i], &b[i + 1..])) {
        Some((b'k' | b'K' | b'm' | b'M' | b'g' | b'G', ib)) if ib.eq_ignore_ascii_case(b"ib") => {
            &s[..s.len() - 2]
        }
        _ => s,
    };
    let (digits, shift) = match s_unit.as_bytes().last() {
        Some(b'k' | b'K') => (&s_unit[..s_unit.len() - 1], 10),
        Some(b'm' | b'M') => (&s_unit[..s_unit.len() - 1], 20),
        Some(b'g' | b'G') => (&s_unit[..s_unit.len() - 1], 30),
        _ => (s_unit, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(ShmSizeProblem::Syntax));
    }
    let size = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or(err(ShmSizeProblem::TooLarge))?;
    if size == 0 {
        return Err(err(ShmSizeProblem::Zero));
    }
    if size > MAX_SHM_SIZE {
        return Err(err(ShmSizeProblem::AboveMaximum));
    }
    if size % page_size != 0 {
        return Err(err(ShmSizeProblem::NotPageMultiple { page_size }));
    }
    Ok(size)
}

/// Why a `--shm-size` value was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShmSizeProblem {
    /// Not digits with an optional K, M or G.
    Syntax,
    /// Above 2^64 - 1 bytes.
    TooLarge,
    /// Zero.
    Zero,
    /// Above [`MAX_SHM_SIZE`].
    AboveMaximum,
    /// Not a multiple of the host page size.
    NotPageMultiple {
        /// The host page size in bytes.
        page_size: u64,
    },
}

impl fmt::Display for ShmSizeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax => f.write_str(
                "expected a byte count with an optional K, M or G suffix (binary units), \
                 for example 8G",
            ),
            Self::TooLarge => f.write_str("the size does not fit in 64 bits"),
            Self::Zero => f.write_str("the size must not be zero"),
            Self::AboveMaximum => f.write_str("the size must be at most 1024G (1 TiB)"),
            Self::NotPageMultiple { page_size } => write!(
                f,
                "the size must be a multiple of the host page size ({page_size} bytes)"
            ),
        }
    }
}

#[cfg(test)]
mod tests;
