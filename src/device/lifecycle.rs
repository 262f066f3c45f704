//! Pause or guest reset: what a stop of the rings turns out to be.
//!
//! Both VMMs stop a vhost-user device the same way for a VM pause (QEMU `stop`, crosvm
//! `suspend --full`) and for a guest reset (virtio status 0): SET_VRING_ENABLE 0 and
//! GET_VRING_BASE per queue, nothing else (docs/vmm-lifecycle.md). At the stop the backend
//! cannot tell them apart; the next start shows which it was:
//!
//! - the control queue continues where it stopped — the same ring addresses, the base the
//!   backend reported, the used index it last wrote — and nothing renegotiated the features
//!   or reset the device meanwhile: a **resume**. Everything stays, held requests included;
//! - anything else — rings re-laid from index 0 or at other addresses, a SET_FEATURES with a
//!   different set, RESET_DEVICE: a **guest reset**. Guest-visible state goes.
//!
//! [`Lifecycle`] owns that decision and nothing else: it never touches device state and never
//! talks to the VMM. It is shared by the vhost-user request thread (stops, features, resets)
//! and the worker (starts), behind a mutex that is never held across a VMM round trip.

use virtio_queue::{Queue, QueueT};

/// Where the control queue stands: what must be unchanged for a start to continue a stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingMark {
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    /// The next available index to process: what GET_VRING_BASE reports, and what
    /// SET_VRING_BASE sets again at a resume.
    pub next_avail: u16,
    /// The next used index: at SET_VRING_ADDR the vhost-user library reads it back from the
    /// used ring in guest memory, so it only matches if the guest kept the ring.
    pub next_used: u16,
}

impl RingMark {
    /// The mark of `queue` as it is now.
    pub fn of(queue: &Queue) -> RingMark {
        RingMark {
            desc_table: queue.desc_table(),
            avail_ring: queue.avail_ring(),
            used_ring: queue.used_ring(),
            next_avail: queue.next_avail(),
            next_used: queue.next_used(),
        }
    }
}

/// What a start of the control queue is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// The first start of the session: no state to keep or drop.
    First,
    /// The rings continue where they stopped: a VM pause ended.
    Resume,
    /// The guest reset the device since the stop.
    Reset,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Never started in this session.
    Idle,
    /// Started; the device processes requests and may send SHMEM requests.
    Running,
    /// Stopped, with the control queue's mark at the stop (`None`: whatever the next start
    /// looks like, it is a reset).
    Stopped(Option<RingMark>),
}

/// The device's lifecycle as the VMM drives it.
#[derive(Debug)]
pub struct Lifecycle {
    phase: Phase,
    /// The features of the last SET_FEATURES.
    features: Option<u64>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            phase: Phase::Idle,
            features: None,
        }
    }
}

impl Lifecycle {
    /// True between a start and the next stop.
    pub fn running(&self) -> bool {
        self.phase == Phase::Running
    }

    /// The VMM stopped the control queue (GET_VRING_BASE); `mark` is where it stood, `None`
    /// if unknown. A second stop before a start keeps the first mark.
    pub fn stop(&mut self, mark: Option<RingMark>) {
        match self.phase {
            Phase::Stopped(_) => {}
            Phase::Idle | Phase::Running => self.phase = Phase::Stopped(mark),
        }
    }

    /// The VMM reset the device (RESET_DEVICE): the next start is a reset whatever the rings
    /// look like.
    pub fn reset(&mut self) {
        if self.phase != Phase::Idle {
            self.phase = Phase::Stopped(None);
        }
    }

    /// SET_FEATURES. The same set again is no news (QEMU sends it at every start); a
    /// different one means a new driver negotiated: the next start is a reset. Returns true
    /// when the device was running, i.e. it must stop now.
    pub fn features(&mut self, features: u64) -> bool {
        let changed = self.features.is_some_and(|f| f != features);
        self.features = Some(features);
        if !changed {
            return false;
        }
        let was_running = self.running();
        self.reset();
        was_running
    }

    /// The control queue is ready again, standing at `now`: decide what the start is and
    /// enter the running phase. `None` if the device is running already.
    pub fn start(&mut self, now: RingMark) -> Option<Start> {
        let start = match self.phase {
            Phase::Running => return None,
            Phase::Idle => Start::First,
            Phase::Stopped(Some(mark)) if mark == now => Start::Resume,
            Phase::Stopped(_) => Start::Reset,
        };
        self.phase = Phase::Running;
        Some(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(next_avail: u16) -> RingMark {
        RingMark {
            desc_table: 0x1000,
            avail_ring: 0x2000,
            used_ring: 0x3000,
            next_avail,
            next_used: next_avail,
        }
    }

    #[test]
    fn same_rings_resume_anything_else_resets() {
        let mut l = Lifecycle::default();
        assert_eq!(l.start(mark(0)), Some(Start::First));
        assert_eq!(l.start(mark(5)), None, "already running");
        l.stop(Some(mark(7)));
        assert!(!l.running());
        assert_eq!(l.start(mark(7)), Some(Start::Resume));
        l.stop(Some(mark(9)));
        assert_eq!(l.start(mark(0)), Some(Start::Reset), "re-laid from 0");
        l.stop(Some(mark(3)));
        let moved = RingMark {
            used_ring: 0x4000,
            ..mark(3)
        };
        assert_eq!(l.start(moved), Some(Start::Reset), "other addresses");
        l.stop(Some(mark(3)));
        let used = RingMark {
            next_used: 0,
            ..mark(3)
        };
        assert_eq!(l.start(used), Some(Start::Reset), "used ring zeroed");
        l.stop(None);
        assert_eq!(l.start(mark(3)), Some(Start::Reset), "unknown mark");
    }

    #[test]
    fn a_second_stop_keeps_the_first_mark() {
        let mut l = Lifecycle::default();
        l.start(mark(0));
        l.stop(Some(mark(4)));
        l.stop(Some(mark(0)));
        assert_eq!(l.start(mark(4)), Some(Start::Resume));
    }

    #[test]
    fn features_and_reset_device() {
        let mut l = Lifecycle::default();
        assert!(!l.features(0x1));
        l.start(mark(0));
        assert!(!l.features(0x1), "the same set again (QEMU, every start)");
        assert!(l.running());
        l.stop(Some(mark(2)));
        assert!(!l.features(0x3), "changed while stopped");
        assert_eq!(l.start(mark(2)), Some(Start::Reset));
        assert!(l.features(0x1), "changed while running: stop now");
        assert_eq!(l.start(mark(2)), Some(Start::Reset));
        l.stop(Some(mark(2)));
        l.reset();
        assert_eq!(l.start(mark(2)), Some(Start::Reset), "RESET_DEVICE");
        let mut fresh = Lifecycle::default();
        fresh.reset();
        assert_eq!(fresh.start(mark(0)), Some(Start::First));
    }
}
