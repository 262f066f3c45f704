//! Reloading the channel table: `--channels-file` read at start-up and again on SIGHUP.
//!
//! This module owns reading the channels file ([`read_channels_file`], used at start-up by
//! `main`, on a reload by the daemon without a sandbox and by the connection broker with one)
//! and the reload itself ([`Reloader::reload`], run by the signal thread of
//! [`crate::daemon`]): the new table comes from the file and the command line's channels
//! ([`crate::config::ChannelSources`]); the broker, when sandboxed, reads the file and adopts
//! the table first ([`crate::sandbox::broker::reload`]); then the table is put in force for
//! every device ([`LiveChannels::replace`]) and what changed is logged.
//!
//! What a reload changes: the channel type a context names at INIT is looked up in the new
//! table from then on. It never touches a context that is already connected (it keeps its
//! socket), nor any other option, nor the capset's channel mask a running guest has already
//! read (its driver reads it once). A reload must never stop the daemon: a file that cannot be
//! read or has an error leaves the table in force as it was, and the reason is logged with the
//! file and the line.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use log::{error, info, warn};

use crate::config::{
    ChannelSources, ChannelTable, ChannelsFileError, Config, LiveChannels, SandboxMode,
    MAX_CHANNELS_FILE,
};
use crate::logging::{channel_label, path_warnings};
use crate::sandbox::broker;
use crate::systemd;

/// The text of the channels file `path`: at most [`MAX_CHANNELS_FILE`] bytes are taken, and one
/// more, so that the parser can tell a file that is too large.
///
/// The file is opened non-blocking, so that a FIFO put in its place cannot stall the caller
/// (the signal thread, or the broker).
pub fn read_channels_file(path: &Path) -> Result<Vec<u8>, ChannelsFileError> {
    let fail = |e: std::io::Error| ChannelsFileError {
        file: path.to_path_buf(),
        line: None,
        reason: format!("cannot read it: {e}"),
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(fail)?;
    let mut text = Vec::new();
    // Through `Take`, the read is plain `read` calls (no `statx` for a size hint, which the
    // broker's seccomp filter does not allow).
    file.take(MAX_CHANNELS_FILE as u64 + 1)
        .read_to_end(&mut text)
        .map_err(fail)?;
    Ok(text)
}

/// Reloads the channel table on request (SIGHUP).
pub struct Reloader {
    sources: ChannelSources,
    live: LiveChannels,
    sandbox: SandboxMode,
}

impl Reloader {
    /// A reloader of `config`'s channel table.
    pub fn new(config: &Config) -> Self {
        Reloader {
            sources: config.channel_sources.clone(),
            live: config.channels.clone(),
            sandbox: config.sandbox,
        }
    }

    /// Re-reads the channels file and puts the table it gives in force, or logs why not (see
    /// the module documentation). Without a channels file, only logs that there is nothing to
    /// reload.
    pub fn reload(&self) {
        let Some(file) = self.sources.file() else {
            info!("SIGHUP: nothing to reload (no --channels-file given)");
            return;
        };
        info!("SIGHUP: reloading the channels from {}", file.display());
        systemd::notify_reloading();
        match self.new_table(file) {
            Ok(table) => {
                let old = self.live.replace(table);
                let new = self.live.load();
                log_changes(file, &old, &new, self.sandbox == SandboxMode::None);
            }
            Err(reason) => {
                error!("reload failed, the channel table is unchanged: {reason}")
            }
        }
        systemd::notify_reloaded();
    }

    /// The table after a reload, or why there is none.
    fn new_table(&self, file: &Path) -> Result<ChannelTable, String> {
        let text = match broker::reload() {
            Ok(broker::Reload::NoBroker) => read_channels_file(file).map_err(|e| e.to_string())?,
            Ok(broker::Reload::Reloaded(text)) => text,
            Ok(broker::Reload::Refused(reason)) => return Err(reason),
            Err(e) => return Err(format!("the connection broker: {e}")),
        };
        // With a broker, it has checked its rule and adopted the same table already; parsing
        // the same text the same way cannot fail here.
        self.sources
            .table(&text, |_| Ok(()))
            .map_err(|e| e.to_string())
    }
}

/// Logs what a reload from `file` changed between `old` and `new`; `look` says whether the new
/// paths may be examined (not in the sandbox, which forbids `stat`).
fn log_changes(file: &Path, old: &ChannelTable, new: &ChannelTable, look: bool) {
    let mut changed = 0;
    for (t, path) in new.iter() {
        let label = channel_label(t);
        let fds = new.policy(t);
        match old.get(t) {
            Some(before) if before == path && old.policy(t) == fds => continue,
            Some(before) => info!(
                "reload: channel {t}{label}: now {} (fds: {fds}) (was {} (fds: {}); contexts \
                 already connected keep their connection)",
                path.display(),
                before.display(),
                old.policy(t)
            ),
            None => info!(
                "reload: channel {t}{label}: added: {} (fds: {fds})",
                path.display()
            ),
        }
        changed += 1;
        for problem in path_warnings(path, look) {
            warn!("reload: channel {t}{label}: {}: {problem}", path.display());
        }
    }
    for (t, path) in old.iter().filter(|&(t, _)| new.get(t).is_none()) {
        changed += 1;
        info!(
            "reload: channel {t}{}: removed (was {}; contexts already connected keep their \
             connection)",
            channel_label(t),
            path.display()
        );
    }
    if changed == 0 {
        info!(
            "reloaded {}: no change ({} channels)",
            file.display(),
            new.len()
        );
        return;
    }
    info!(
        "reloaded {}: {} channels, {changed} changed; contexts opened from now on use this table",
        file.display(),
        new.len()
    );
    let (before, after) = (old.capset_mask(), new.capset_mask());
    if before != after {
        info!(
            "capset channel mask now {after:#x} (was {before:#x}); a running guest keeps the mask \
             its driver read when it started"
        );
    }
}
