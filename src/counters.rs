//! Per-channel counters: what each channel type has carried since the daemon started, logged
//! on SIGUSR1, and the number of open channel contexts in the service manager's status line.
//!
//! This module owns the counters of every channel type ([`for_type`]), the handle a context
//! holds while it is connected ([`OpenContext`]), the SIGUSR1 report ([`log_all`]) and the
//! `STATUS=` line that carries the number of open contexts ([`set_status`]). The counters are
//! cumulative over every VMM session; they count the channel socket's traffic (SEND and
//! RECEIVE), not the bytes of pipes.
//!
//! Cost: the data path only adds to atomic integers with relaxed ordering (one context's
//! counters are only ever touched by the device's thread; the report reads them without
//! stopping it, so one line may mix values from either side of a message). The map of channel
//! types is locked only when a context connects. It must never block the data path, and never
//! grow with what a guest asks: only types that were configured when a context connected get
//! counters.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use log::info;

use crate::cross_domain::protocol::{
    ID_TYPE_EVENTFD_LIBKRUN, ID_TYPE_EVENT_MAGMA, ID_TYPE_VIRTGPU_BLOB, ID_TYPE_WRITE_PIPE,
};
use crate::logging::channel_label;
use crate::systemd;

/// What one channel type has carried.
#[derive(Debug, Default)]
pub struct ChannelCounters {
    /// Contexts connected to the channel's socket.
    opened: AtomicU64,
    /// Of those, still open.
    open: AtomicU64,
    /// SENDs passed to the host service, and their bytes.
    to_host_messages: AtomicU64,
    to_host_bytes: AtomicU64,
    /// Descriptors passed with them: memory (blobs) and the write ends of read pipes.
    to_host_memory: AtomicU64,
    to_host_pipes: AtomicU64,
    /// Messages read from the host service into RECEIVEs, and their bytes.
    from_host_messages: AtomicU64,
    from_host_bytes: AtomicU64,
    /// Descriptors received with them: memory, write pipes, eventfds, and those refused (the
    /// channel was hung up instead of delivering the message without them).
    from_host_memory: AtomicU64,
    from_host_pipes: AtomicU64,
    from_host_eventfds: AtomicU64,
    from_host_refused: AtomicU64,
    /// Times the host service hung up (or its socket failed).
    hang_ups: AtomicU64,
    /// Requests of the channel's contexts answered with an error, connecting included.
    errors: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl ChannelCounters {
    /// A context connected: counted until the returned handle is dropped.
    pub fn open(self: &Arc<Self>) -> OpenContext {
        add(&self.opened, 1);
        add(&self.open, 1);
        refresh_status();
        OpenContext(self.clone())
    }

    /// A SEND of `bytes` passed on, with `memory` memory descriptors and `pipes` pipe ends.
    pub fn to_host(&self, bytes: usize, memory: usize, pipes: usize) {
        add(&self.to_host_messages, 1);
        add(&self.to_host_bytes, bytes as u64);
        add(&self.to_host_memory, memory as u64);
        add(&self.to_host_pipes, pipes as u64);
    }

    /// A message of `bytes` received, whose descriptors became identifiers of `types`.
    pub fn from_host(&self, bytes: usize, types: &[u32]) {
        add(&self.from_host_messages, 1);
        add(&self.from_host_bytes, bytes as u64);
        for &t in types {
            match t {
                ID_TYPE_VIRTGPU_BLOB => add(&self.from_host_memory, 1),
                ID_TYPE_WRITE_PIPE => add(&self.from_host_pipes, 1),
                ID_TYPE_EVENT_MAGMA | ID_TYPE_EVENTFD_LIBKRUN => add(&self.from_host_eventfds, 1),
                _ => {}
            }
        }
    }

    /// A message from the host service refused for a descriptor it carried (the channel hangs
    /// up; nothing of the message reaches the guest).
    pub fn refused_fd(&self) {
        add(&self.from_host_refused, 1);
    }

    /// The host service hung up.
    pub fn hang_up(&self) {
        add(&self.hang_ups, 1);
    }

    /// A request answered to the guest with an error.
    pub fn error(&self) {
        add(&self.errors, 1);
    }

    /// The report line of channel type `t`.
    fn line(&self, t: u32) -> String {
        format!(
            "channel {t}{}: contexts {} opened, {} open; guest to host {} messages, {} bytes, \
             fds {} memory, {} pipe; host to guest {} messages, {} bytes, fds {} memory, {} pipe, \
             {} eventfd, {} refused; {} hang-ups; {} errors",
            channel_label(t),
            get(&self.opened),
            get(&self.open),
            get(&self.to_host_messages),
            get(&self.to_host_bytes),
            get(&self.to_host_memory),
            get(&self.to_host_pipes),
            get(&self.from_host_messages),
            get(&self.from_host_bytes),
            get(&self.from_host_memory),
            get(&self.from_host_pipes),
            get(&self.from_host_eventfds),
            get(&self.from_host_refused),
            get(&self.hang_ups),
            get(&self.errors),
        )
    }
}

/// A connected context of a channel type: counted as open while it lives.
#[derive(Debug)]
pub struct OpenContext(Arc<ChannelCounters>);

impl std::ops::Deref for OpenContext {
    type Target = ChannelCounters;
    fn deref(&self) -> &ChannelCounters {
        &self.0
    }
}

impl Drop for OpenContext {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        refresh_status();
    }
}

fn registry() -> &'static Mutex<BTreeMap<u32, Arc<ChannelCounters>>> {
    static REGISTRY: OnceLock<Mutex<BTreeMap<u32, Arc<ChannelCounters>>>> = OnceLock::new();
    REGISTRY.get_or_init(Mutex::default)
}

/// The counters of channel type `t`, created the first time. Only for configured types (the
/// caller connects, or tries to, the type's socket), so the map stays as small as the tables.
pub fn for_type(t: u32) -> Arc<ChannelCounters> {
    let mut map = registry().lock().unwrap_or_else(|p| p.into_inner());
    map.entry(t).or_default().clone()
}

/// Contexts connected to a channel now, all types together.
pub fn open_contexts() -> u64 {
    let map = registry().lock().unwrap_or_else(|p| p.into_inner());
    map.values().map(|c| get(&c.open)).sum()
}

/// Logs one line per channel type that has had a context (SIGUSR1).
pub fn log_all() {
    let lines: Vec<String> = {
        let map = registry().lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(&t, c)| c.line(t)).collect()
    };
    if lines.is_empty() {
        info!("counters: no channel context has been opened yet");
    }
    for line in lines {
        info!("counters: {line}");
    }
}

/// The daemon's status line without the count, and whether a VMM is being served.
static STATUS: Mutex<Option<(String, bool)>> = Mutex::new(None);

/// Sets the status line (`STATUS=` of sd_notify) to `status`, followed while `serving` by the
/// number of open channel contexts, which is kept up to date from then on.
pub fn set_status(status: &str, serving: bool) {
    *STATUS.lock().unwrap_or_else(|p| p.into_inner()) = Some((status.to_owned(), serving));
    refresh_status();
}

/// The status line as it should read now.
fn status_line() -> Option<String> {
    let status = STATUS.lock().unwrap_or_else(|p| p.into_inner());
    let (base, serving) = status.as_ref()?;
    let mut line = base.clone();
    if *serving {
        let n = open_contexts();
        let _ = write!(
            line,
            "; {n} channel context{} open",
            if n == 1 { "" } else { "s" }
        );
    }
    Some(line)
}

fn refresh_status() {
    if let Some(line) = status_line() {
        systemd::notify_status(&line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_open_contexts() {
        // A type of its own: other tests of this process may count too.
        let t = 0x7e57_0001;
        let c = for_type(t);
        let a = c.open();
        let b = for_type(t).open();
        assert_eq!(get(&c.open), 2);
        assert!(open_contexts() >= 2);
        a.to_host(5, 1, 2);
        b.from_host(
            7,
            &[
                ID_TYPE_VIRTGPU_BLOB,
                ID_TYPE_WRITE_PIPE,
                ID_TYPE_WRITE_PIPE,
                ID_TYPE_EVENTFD_LIBKRUN,
                ID_TYPE_EVENT_MAGMA,
            ],
        );
        b.refused_fd();
        b.hang_up();
        a.error();
        drop(a);
        assert_eq!(get(&c.open), 1);
        assert_eq!(
            c.line(t),
            format!(
                "channel {t}{}: contexts 2 opened, 1 open; guest to host 1 messages, 5 bytes, fds \
                 1 memory, 2 pipe; host to guest 1 messages, 7 bytes, fds 1 memory, 2 pipe, 2 \
                 eventfd, 1 refused; 1 hang-ups; 1 errors",
                channel_label(t)
            )
        );
        drop(b);
        assert_eq!(get(&c.open), 0);
    }
}
