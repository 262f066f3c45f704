//! Eventfds the host passes (docs/protocol.md §3.9, §5.7): each becomes a local eventfd that the
//! client gets in its place, and wake-ups cross between the two counters.
//!
//! The protocol can only *move* counter values: READ_EVENTFD_NEW makes the host take its
//! counter whenever it becomes readable and send the value as a READ, and a WRITE adds a value
//! to the host's counter. The protocol cannot look at a counter without taking it, and `poll`
//! only says non-zero, so the proxy cannot tell a value the client added to the local counter
//! from one it added itself, nor a value the host service wrote for the guest from one the
//! daemon's watch took before the service could read it. Hence the rule (docs/guest-proxy.md,
//! "Eventfds"): an eventfd carries wake-ups one way, and the first wake-up decides which:
//!
//! - **to the client**, when a READ comes first: each value is added to the local counter,
//!   which only the client reads (the proxy no longer polls it). Linux does show a counter
//!   without taking it (`eventfd-count` in `/proc/self/fdinfo`): if, at a later READ, the local
//!   counter holds more than the proxy put there and the client has not taken, the client
//!   signals this eventfd as well, and the READs were host wake-ups meant for the host side
//!   (a host node that both guest and host clients signal): the eventfd is turned around to
//!   the host, the whole local counter and the READ with it;
//! - **to the host**, when the client signals first (the local counter turns readable before
//!   any READ): the proxy takes the local counter and sends it as one WRITE. A READ for such an
//!   eventfd carries a value the daemon's watch took before the host service read it; it goes
//!   back with a WRITE — at once for the first [`IMMEDIATE_RETURNS`] after each client signal,
//!   then after a delay that doubles up to [`MAX_RETRY`], held meanwhile in one u64 that also
//!   goes with the client's next signal. So a value is never lost or duplicated, and a host
//!   service that stops reading costs a few WRITEs a second, not a spinning loop.
//!
//! This module owns the table of local eventfds, that rule, and releasing them (libkrun's
//! READ_EVENTFD_DESTROY) once the conversation is over. It must never hold more than one u64
//! per eventfd, keep more than [`MAX_EVENTFDS`], or let an eventfd keep a session alive: an
//! eventfd has no end of file, so the proxy cannot learn when the client is done with one.
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use log::{debug, warn};
use nix::errno::Errno;
use nix::poll::PollFlags;
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::{Refusal, Session, SessionError};
use crate::device::{DeviceError, VirtGpuDevice};
use crate::wire;
use cross_domain_protocol::wire::EVENTFD_COUNTER_MAX;

/// Most eventfds a session keeps: the daemon's item limit per context (docs/protocol.md §5.2),
/// which each host eventfd counts against until it is destroyed.
pub const MAX_EVENTFDS: usize = 1024;
/// Values the daemon's watch took back that return to the host at once after a client signal.
/// They arrive right after a POLL completed and go back before the next one is submitted, when
/// the daemon cannot take them again before the host service reads.
pub const IMMEDIATE_RETURNS: u8 = 2;
/// The first delay before a value that keeps coming back is returned again.
pub const FIRST_RETRY: Duration = Duration::from_millis(1);
/// The longest delay between two returns of a value the host service does not read.
pub const MAX_RETRY: Duration = Duration::from_secs(1);

/// Which way an eventfd carries wake-ups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Direction {
    /// Nobody has signalled it yet.
    Undecided,
    /// The host signalled first: host values go into the local counter, for the client.
    ToClient,
    /// The client signalled first: the local counter goes to the host.
    ToHost,
}

/// A host eventfd's local stand-in.
pub(super) struct LocalEventfd {
    /// The proxy's copy; the client holds another descriptor of the same eventfd.
    fd: EventFd,
    direction: Direction,
    /// To the host: values the daemon's watch took back, not yet returned.
    held: u64,
    /// Returns that may still go at once.
    immediate: u8,
    /// The delay before the next delayed return.
    retry_in: Duration,
    /// When the held value goes back.
    retry_at: Option<Instant>,
    /// To the client: what the local counter holds at most if the client only reads it (the
    /// proxy's additions it has not taken).
    unread: u64,
    /// The client's counter was once too full to take a value (it does not read it).
    warned_full: bool,
}

/// The counter of the eventfd `fd` without taking it: `eventfd-count` (hexadecimal) in
/// `/proc/self/fdinfo`, shown since Linux 3.8. `None` without `/proc`.
fn peek_counter(fd: BorrowedFd<'_>) -> Option<u64> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    parse_eventfd_count(&info)
}

fn parse_eventfd_count(fdinfo: &str) -> Option<u64> {
    let v = fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("eventfd-count:"))?;
    u64::from_str_radix(v.trim(), 16).ok()
}

impl LocalEventfd {
    fn new(fd: EventFd) -> Self {
        LocalEventfd {
            fd,
            direction: Direction::Undecided,
            held: 0,
            immediate: IMMEDIATE_RETURNS,
            retry_in: FIRST_RETRY,
            retry_at: None,
            unread: 0,
            warned_full: false,
        }
    }

    /// A host value is about to be added for the client: whether the local counter shows that
    /// the client adds to it too (more than the proxy's additions it has not taken). A client
    /// that only reads leaves either nothing or all of them, as a read takes the whole counter.
    fn client_adds_too(&mut self) -> bool {
        let Some(count) = peek_counter(self.fd.as_fd()) else {
            return false;
        };
        if count > self.unread {
            return true;
        }
        self.unread = count;
        false
    }

    /// The descriptor to poll for the client's signals, unless the eventfd carries wake-ups
    /// to the client (then the proxy's own writes make it readable, and only the client reads
    /// it).
    pub(super) fn client_signals(&self) -> Option<BorrowedFd<'_>> {
        (self.direction != Direction::ToClient).then(|| self.fd.as_fd())
    }

    /// When the held value is due to go back to the host.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// A value the daemon's watch took back from a to-host eventfd: returned at once while
    /// `immediate` lasts, else held until the retry (armed here) or the client's next signal.
    /// Returns what to send now.
    fn taken_back(&mut self, value: u64, now: Instant) -> Option<u64> {
        self.held = self.held.saturating_add(value).min(EVENTFD_COUNTER_MAX);
        if self.immediate > 0 {
            self.immediate -= 1;
            return Some(std::mem::take(&mut self.held));
        }
        if self.retry_at.is_none() {
            self.retry_at = Some(now + self.retry_in);
            self.retry_in = (self.retry_in * 2).min(MAX_RETRY);
        }
        None
    }

    /// The client signalled `value`: it goes to the host with whatever was held, and the
    /// return budget starts afresh.
    fn client_signal(&mut self, value: u64) -> u64 {
        self.direction = Direction::ToHost;
        self.immediate = IMMEDIATE_RETURNS;
        self.retry_in = FIRST_RETRY;
        self.retry_at = None;
        value
            .saturating_add(std::mem::take(&mut self.held))
            .min(EVENTFD_COUNTER_MAX)
    }

    /// The retry is due at `now`: what to send (the held value), with one immediate return
    /// for the case the daemon takes it yet again.
    fn retry_due(&mut self, now: Instant) -> Option<u64> {
        if self.retry_at.is_none_or(|t| t > now) {
            return None;
        }
        self.retry_at = None;
        self.immediate = 1;
        Some(std::mem::take(&mut self.held)).filter(|&v| v > 0)
    }
}

/// Sends one counter value to the host's eventfd item `id`.
fn send_value<D: VirtGpuDevice>(dev: &mut D, id: u32, value: u64) -> Result<(), DeviceError> {
    dev.execbuffer(&wire::write_eventfd(id, value), None, &[])
}

impl<D: VirtGpuDevice> Session<D> {
    /// A host eventfd (a RECEIVE identifier of type 5 or 6): a new local eventfd, of which the
    /// client gets a descriptor, and READ_EVENTFD_NEW so that the host's wake-ups come as READs.
    pub(super) fn host_eventfd(&mut self, id: u32) -> Result<OwnedFd, Refusal> {
        if !self.eventfds.contains_key(&id) && self.eventfds.len() >= MAX_EVENTFDS {
            return Err(Refusal::Kind(
                "an eventfd beyond the 1024 a session keeps (the host's item limit)",
            ));
        }
        // Non-blocking, as the proxy must never wait on it (the flag is shared with the
        // client's descriptor; PipeWire makes its eventfds non-blocking too).
        let fd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
            .map_err(io::Error::from)?;
        let client = fd.as_fd().try_clone_to_owned()?;
        self.dev
            .execbuffer(&wire::read_eventfd_new(id), None, &[])?;
        if self.eventfds.insert(id, LocalEventfd::new(fd)).is_some() {
            warn!(
                "client {}: the host reused eventfd id {id:#x}; closing the older eventfd",
                self.client_id
            );
        }
        self.stats.fds_to_client += 1;
        Ok(client)
    }

    /// A READ for eventfd `id` (which the table holds): a counter value the host's watch took.
    pub(super) fn on_eventfd_read(
        &mut self,
        id: u32,
        hang_up: bool,
        data: &[u8],
    ) -> Result<(), SessionError> {
        let client_id = self.client_id;
        let Some(e) = self.eventfds.get_mut(&id) else {
            return Ok(());
        };
        if hang_up {
            // Hosts never hang up an eventfd; if one does, the item is gone there.
            debug!("client {client_id}: the host hung up eventfd {id:#x}");
            self.eventfds.remove(&id);
            return Ok(());
        }
        let Some(value) = wire::eventfd_value(data) else {
            warn!(
                "client {client_id}: READ of {} bytes for eventfd {id:#x} (a counter value has \
                 8); releasing the eventfd",
                data.len()
            );
            self.release_eventfd(id);
            return Ok(());
        };
        if value == 0 {
            return Ok(());
        }
        if e.direction != Direction::ToHost && e.client_adds_too() {
            // The client signals this eventfd (before the proxy saw it, or besides the host):
            // what the local counter holds and this READ belong to the host side.
            debug!("client {client_id}: eventfd {id:#x} turns out to carry wake-ups to the host");
            // Empty (EAGAIN) only if the client took its counter in the meantime.
            let local: u64 = e.fd.read().unwrap_or_default();
            let v = e
                .client_signal(local)
                .saturating_add(value)
                .min(EVENTFD_COUNTER_MAX);
            self.stats.wakeups_to_host += 1;
            send_value(&mut self.dev, id, v)?;
            return Ok(());
        }
        match e.direction {
            Direction::Undecided | Direction::ToClient => {
                if e.direction == Direction::Undecided {
                    debug!("client {client_id}: eventfd {id:#x} carries wake-ups to the client");
                    e.direction = Direction::ToClient;
                }
                self.stats.wakeups_to_client += 1;
                match e.fd.write(value) {
                    Ok(_) => e.unread = e.unread.saturating_add(value),
                    Err(Errno::EAGAIN) => {
                        // Only a client that never reads fills a counter; nothing is queued.
                        if !e.warned_full {
                            e.warned_full = true;
                            warn!(
                                "client {client_id}: eventfd {id:#x} is too full to add the \
                                 host's {value} (the client does not read it); dropped"
                            );
                        }
                    }
                    Err(err) => {
                        warn!("client {client_id}: writing eventfd {id:#x}: {err}; releasing it");
                        self.release_eventfd(id);
                    }
                }
            }
            Direction::ToHost => {
                if let Some(v) = e.taken_back(value, Instant::now()) {
                    debug!("client {client_id}: returning {v} to the host's eventfd {id:#x}");
                    send_value(&mut self.dev, id, v)?;
                }
            }
        }
        Ok(())
    }

    /// A local eventfd the client may signal is readable (or broken).
    pub(super) fn on_local_eventfd(&mut self, id: u32, ev: PollFlags) -> Result<(), SessionError> {
        let client_id = self.client_id;
        let Some(e) = self.eventfds.get_mut(&id) else {
            return Ok(());
        };
        if e.direction == Direction::ToClient {
            // A READ in the same round decided it; the value stays for the client.
            return Ok(());
        }
        if !ev.contains(PollFlags::POLLIN) {
            if ev.intersects(PollFlags::POLLERR | PollFlags::POLLNVAL) {
                warn!("client {client_id}: eventfd {id:#x} reports {ev:?}; releasing it");
                self.release_eventfd(id);
            }
            return Ok(());
        }
        let value = match e.fd.read() {
            Ok(v) => v,
            // The client took its own signal first (it reads this eventfd too).
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => return Ok(()),
            Err(err) => {
                warn!("client {client_id}: reading eventfd {id:#x}: {err}; releasing it");
                self.release_eventfd(id);
                return Ok(());
            }
        };
        if e.direction == Direction::Undecided {
            debug!("client {client_id}: eventfd {id:#x} carries wake-ups to the host");
        }
        let v = e.client_signal(value);
        self.stats.wakeups_to_host += 1;
        send_value(&mut self.dev, id, v)?;
        Ok(())
    }

    /// The earliest held value due to go back to the host.
    pub(super) fn eventfd_retry_at(&self) -> Option<Instant> {
        self.eventfds
            .values()
            .filter_map(LocalEventfd::retry_at)
            .min()
    }

    /// Returns the held values whose retry is due.
    pub(super) fn on_eventfd_retries(&mut self) -> Result<(), SessionError> {
        let now = Instant::now();
        for (&id, e) in self.eventfds.iter_mut() {
            if let Some(v) = e.retry_due(now) {
                debug!(
                    "client {}: returning {v} to the host's eventfd {id:#x} again",
                    self.client_id
                );
                send_value(&mut self.dev, id, v)?;
            }
        }
        Ok(())
    }

    /// Stops serving eventfd `id`: the host drops its item (READ_EVENTFD_DESTROY) and the local
    /// eventfd closes (the client's descriptor stays valid but is no longer connected).
    fn release_eventfd(&mut self, id: u32) {
        if self.eventfds.remove(&id).is_some() {
            self.destroy_host_eventfd(id);
        }
    }

    /// The conversation is over: every eventfd is released, so the host drops its items now
    /// rather than when the context goes (which pipes still in flight may delay).
    pub(super) fn release_eventfds(&mut self) {
        let ids: Vec<u32> = self.eventfds.keys().copied().collect();
        self.eventfds.clear();
        for id in ids {
            self.destroy_host_eventfd(id);
        }
    }

    fn destroy_host_eventfd(&mut self, id: u32) {
        // Hosts other than this daemon may refuse command 12 (libkrun declares it without
        // handling it, magma reads it as its import); the item then lives as long as the
        // context, and the kernel does not report the refusal anyway.
        if let Err(e) = self
            .dev
            .execbuffer(&wire::read_eventfd_destroy(id), None, &[])
        {
            debug!(
                "client {}: READ_EVENTFD_DESTROY {id:#x}: {e}",
                self.client_id
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> LocalEventfd {
        LocalEventfd::new(EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap())
    }

    #[test]
    fn values_taken_back_return_at_once_then_with_a_doubling_delay() {
        let mut e = local();
        let t0 = Instant::now();
        assert_eq!(e.client_signal(1), 1);
        assert_eq!(e.direction, Direction::ToHost);
        // Right after a client signal: back at once, twice.
        assert_eq!(e.taken_back(1, t0), Some(1));
        assert_eq!(e.taken_back(1, t0), Some(1));
        // Then held, with a retry armed once.
        assert_eq!(e.taken_back(1, t0), None);
        assert_eq!(e.retry_at(), Some(t0 + FIRST_RETRY));
        assert_eq!(e.taken_back(2, t0 + FIRST_RETRY / 2), None);
        assert_eq!(e.retry_at(), Some(t0 + FIRST_RETRY), "not re-armed");
        assert_eq!(e.retry_due(t0), None, "not yet");
        let t1 = t0 + FIRST_RETRY;
        assert_eq!(e.retry_due(t1), Some(3), "both values, once");
        assert_eq!(e.retry_at(), None);
        // The retry earns one immediate return; after that the delay has doubled.
        assert_eq!(e.taken_back(3, t1), Some(3));
        assert_eq!(e.taken_back(3, t1), None);
        assert_eq!(e.retry_at(), Some(t1 + 2 * FIRST_RETRY));
        // The delay stops growing at MAX_RETRY.
        let mut t = t1 + 2 * FIRST_RETRY;
        let mut gap = Duration::ZERO;
        for _ in 0..20 {
            assert_eq!(e.retry_due(t), Some(3));
            assert_eq!(e.taken_back(3, t), Some(3));
            assert_eq!(e.taken_back(3, t), None);
            let next = e.retry_at().unwrap();
            assert!(next - t >= gap && next - t <= MAX_RETRY);
            gap = next - t;
            t = next;
        }
        assert_eq!(gap, MAX_RETRY);
        // The client's next signal carries what is held and starts afresh.
        assert_eq!(e.client_signal(4), 7);
        assert_eq!(
            (e.held, e.retry_at(), e.immediate),
            (0, None, IMMEDIATE_RETURNS)
        );
        assert_eq!(e.retry_in, FIRST_RETRY);
    }

    #[test]
    fn a_client_that_only_reads_is_never_taken_for_one_that_signals() {
        let mut e = local();
        assert_eq!(
            parse_eventfd_count("pos:\t0\neventfd-count:               2a\n"),
            Some(42)
        );
        assert_eq!(parse_eventfd_count("pos:\t0\n"), None);
        if peek_counter(e.fd.as_fd()).is_none() {
            eprintln!("no eventfd-count in /proc/self/fdinfo: nothing to check");
            return;
        }
        // The proxy adds, the client reads (all of it), in any interleaving.
        assert!(!e.client_adds_too());
        e.fd.write(3).unwrap();
        e.unread += 3;
        assert!(!e.client_adds_too(), "not read yet");
        e.fd.write(4).unwrap();
        e.unread += 4;
        assert_eq!(e.fd.read().unwrap(), 7, "the client takes the counter");
        assert!(!e.client_adds_too());
        assert_eq!(e.unread, 0);
        // The client adds 1 besides the proxy's 5.
        e.fd.write(5).unwrap();
        e.unread += 5;
        e.fd.write(1).unwrap();
        assert!(e.client_adds_too());
    }

    #[test]
    fn held_values_saturate_at_what_a_counter_holds() {
        let mut e = local();
        e.client_signal(1);
        e.immediate = 0;
        assert_eq!(e.taken_back(u64::MAX - 5, Instant::now()), None);
        assert_eq!(e.taken_back(100, Instant::now()), None);
        assert_eq!(e.held, EVENTFD_COUNTER_MAX);
        assert_eq!(e.client_signal(u64::MAX), EVENTFD_COUNTER_MAX);
    }

    #[test]
    fn only_eventfds_that_may_carry_client_signals_are_polled() {
        let mut e = local();
        assert!(e.client_signals().is_some(), "undecided");
        e.direction = Direction::ToClient;
        assert!(
            e.client_signals().is_none(),
            "the proxy's own writes would wake it"
        );
        e.direction = Direction::ToHost;
        assert!(e.client_signals().is_some());
    }
}
