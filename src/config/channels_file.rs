//! `--channels-file FILE`: channels kept in a file, re-read on SIGHUP, and how they combine
//! with the `--channel` and `--wayland-sock` flags.
//!
//! This file owns the file's syntax and [`ChannelSources`], which builds the channel table from
//! the flags (fixed for the life of the process) and the text of the file (read at start-up,
//! and again at every reload). The syntax, one channel a line:
//!
//! ```text
//! # Wayland, and a portal service on channel 2.
//! wayland:/run/user/1000/wayland-0
//! 2:/run/portal.sock
//! ```
//!
//! - `TYPE:PATH`, TYPE as in `--channel` (a number, `0x` hex, or a name), the split at the
//!   first `:`. In the file a `,` ends the path: `TYPE:PATH,OPTION…` is the place of
//!   per-channel options, as in `--channel` (`fds=LIST`); a path that contains a `,` can only
//!   be given with `--channel`.
//! - Blank lines and lines whose first non-blank character is `#` are ignored; blanks at either
//!   end of a line are dropped. A line must be UTF-8; the file at most
//!   [`MAX_CHANNELS_FILE`] bytes.
//! - A type is given once: twice in the file, or in the file and by a flag, is an error that
//!   names the line (and the flag). Flags and file never override each other, so that what a
//!   reload changes is always what the file says.
//!
//! It must never read the file itself (the caller does, at start-up in the daemon, on reload
//! in the connection broker when sandboxed) and never touch the file system: the same text
//! always gives the same table, in whichever process it is parsed.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::{ChannelSpec, ChannelTable, ConfigError};

/// The largest channels file read, in bytes.
pub const MAX_CHANNELS_FILE: usize = 64 << 10;

/// Where the channel table comes from: the flags, and the channels file if there is one.
#[derive(Debug, Clone, Default)]
pub struct ChannelSources {
    /// The channels of `--channel` and `--wayland-sock`.
    flags: ChannelTable,
    /// How each type of `flags` was given (`--channel '2:/a'`), for messages.
    flag_args: BTreeMap<u32, String>,
    /// `--channels-file`.
    file: Option<PathBuf>,
}

impl ChannelSources {
    /// Channels given by flags only.
    pub fn new(flags: ChannelTable) -> Self {
        let flag_args = flags
            .iter()
            .map(|(t, p)| (t, format!("--channel '{t}:{}'", p.display())))
            .collect();
        ChannelSources {
            flags,
            flag_args,
            file: None,
        }
    }

    /// Names how channel type `channel_type` was given on the command line, for messages
    /// (`--channel 'wayland:/a'`, `--wayland-sock '/w'`).
    pub fn set_flag_arg(&mut self, channel_type: u32, arg: String) {
        self.flag_args.insert(channel_type, arg);
    }

    /// Reads more channels from `file` (`--channels-file`).
    pub fn with_file(mut self, file: PathBuf) -> Self {
        self.file = Some(file);
        self
    }

    /// `--channels-file`, if given.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The channels the flags give.
    pub fn flags(&self) -> &ChannelTable {
        &self.flags
    }

    /// The table the flags and `text`, the content of the channels file, give together; every
    /// path of the file must also pass `allowed` (which says why not), a rule of the caller's
    /// such as the sandbox's directories. Errors name the file and the line.
    pub fn table(
        &self,
        text: &[u8],
        allowed: impl Fn(&Path) -> Result<(), String>,
    ) -> Result<ChannelTable, ChannelsFileError> {
        let file = self.file.clone().unwrap_or_default();
        let error = |line, reason| ChannelsFileError {
            file: file.clone(),
            line,
            reason,
        };
        if text.len() > MAX_CHANNELS_FILE {
            return Err(error(
                None,
                format!("larger than {MAX_CHANNELS_FILE} bytes, the most a channels file may be"),
            ));
        }
        let mut table = self.flags.clone();
        let mut lines_of: BTreeMap<u32, usize> = BTreeMap::new();
        for (index, raw) in text.split(|&b| b == b'\n').enumerate() {
            let number = index + 1;
            let Ok(line) = std::str::from_utf8(raw) else {
                return Err(error(Some(number), "not valid UTF-8".to_owned()));
            };
            let Some(spec) = parse_line(line).map_err(|r| error(Some(number), r))? else {
                continue;
            };
            let quoted = format!("'{}'", spec.arg);
            let t = spec.channel_type;
            if let Some(first) = lines_of.get(&t) {
                return Err(error(
                    Some(number),
                    format!("{quoted}: channel type {t} is already given on line {first}"),
                ));
            }
            if self.flags.get(t).is_some() {
                let by = self.flag_args.get(&t).map_or("a flag", String::as_str);
                return Err(error(
                    Some(number),
                    format!(
                        "{quoted}: channel type {t} is already given by {by} (give each type \
                         either on the command line or in the file)"
                    ),
                ));
            }
            allowed(&spec.path).map_err(|why| error(Some(number), format!("{quoted}: {why}")))?;
            table
                .add_spec(&spec)
                .map_err(|e| error(Some(number), problem(e, &spec.arg)))?;
            lines_of.insert(t, number);
        }
        Ok(table)
    }
}

/// One line of a channels file: `None` for a blank line or a comment.
fn parse_line(line: &str) -> Result<Option<ChannelSpec>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (channel, options) = match line.split_once(',') {
        Some((channel, options)) => (channel, Some(options)),
        None => (line, None),
    };
    let spec = ChannelSpec::parse_channel(channel, line).map_err(|e| problem(e, line))?;
    match options {
        Some(options) => spec.with_options(options).map(Some),
        None => Ok(Some(spec)),
    }
    .map_err(|e| problem(e, line))
}

/// `e`'s message about the line `text` without the flag it would name (`'TEXT': problem`).
fn problem(e: ConfigError, text: &str) -> String {
    e.in_argument("", text).to_string().trim_start().to_owned()
}

/// A channels file that cannot be used: where (the file, and the line if one is to blame) and
/// why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelsFileError {
    /// The file.
    pub file: PathBuf,
    /// The line to blame, counted from 1; `None` if the whole file is.
    pub line: Option<usize>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ChannelsFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file.display(), self.reason),
            None => write!(f, "{}: {}", self.file.display(), self.reason),
        }
    }
}

impl std::error::Error for ChannelsFileError {}

#[cfg(test)]
mod tests;
