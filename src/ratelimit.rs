//! Logging of guest-caused problems: a hostile guest can trigger errors at line rate, and the
//! log must stay readable and bounded.
//!
//! Two rules, both held by [`GuestLog`] (one per device, i.e. per VMM session):
//! - every warning about a guest request goes through a [`RateLimiter`]
//!   ([`guest_warn!`](crate::guest_warn));
//! - a request refused by a resource limit is a warning only the first time that limit is hit
//!   in that context, and a debug line after that ([`GuestLog::limit_hit`], with the record
//!   kept by [`LimitLog`]).

use std::fmt;
use std::time::{Duration, Instant};

use crate::limitlog::{LimitKind, LimitLog};

/// Allows `burst` messages per `period`, then counts what it suppressed and reports the count
/// with the next message that is let through.
#[derive(Debug)]
pub struct RateLimiter {
    period: Duration,
    burst: u32,
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter::new(Duration::from_secs(1), 10)
    }
}

impl RateLimiter {
    /// `burst` messages per `period`.
    pub fn new(period: Duration, burst: u32) -> Self {
        RateLimiter {
            period,
            burst,
            window_start: None,
            in_window: 0,
            suppressed: 0,
        }
    }

    /// Returns `Some(n)` when a message may be logged now (`n` = messages suppressed since the
    /// last one that was let through), `None` when it must be dropped.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        let start = *self.window_start.get_or_insert(now);
        if now.duration_since(start) >= self.period {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window < self.burst {
            self.in_window += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// Everything the device needs to log guest-caused problems: the rate limiter for all warnings
/// and the record of limits already reported.
#[derive(Debug)]
pub struct GuestLog {
    pub rate: RateLimiter,
    pub limits: LimitLog,
}

impl GuestLog {
    /// For a device with at most `max_contexts` contexts (bounds the [`LimitLog`]).
    pub fn new(max_contexts: usize) -> Self {
        GuestLog {
            rate: RateLimiter::default(),
            limits: LimitLog::new(max_contexts),
        }
    }

    /// [`RateLimiter::allow`] of the rate limiter, so [`guest_warn!`](crate::guest_warn) takes
    /// a `GuestLog`.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        self.rate.allow(now)
    }

    /// Logs a request refused by limit `kind` (of `value`) in context `ctx_id` (0: the request
    /// named no live context): a warning through the rate limiter the first time `kind` is hit
    /// in that context, a debug line afterwards. `what` describes the refused request. Returns
    /// true for the first hit.
    pub fn limit_hit(
        &mut self,
        ctx_id: u32,
        kind: LimitKind,
        value: usize,
        what: fmt::Arguments<'_>,
    ) -> bool {
        let first = self.limits.first_hit(ctx_id, kind);
        let scope = Scope(ctx_id);
        if first {
            crate::guest_warn!(
                self,
                "{what}; limit \"{kind}\" is {value}; further hits {scope} are logged at debug \
                 level"
            );
        } else {
            log::debug!("{what} (limit \"{kind}\" hit again {scope})");
        }
        first
    }
}

/// "by ctx N", or "outside a live context" for context 0.
struct Scope(u32);

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => f.write_str("outside a live context"),
            id => write!(f, "by ctx {id}"),
        }
    }
}

/// Log a warning about a rejected guest request through a [`RateLimiter`] (or a [`GuestLog`]).
#[macro_export]
macro_rules! guest_warn {
    ($limiter:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $limiter.allow(std::time::Instant::now()) {
            if suppressed > 0 {
                log::warn!("({} similar messages suppressed)", suppressed);
            }
            log::warn!($($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_suppresses_then_reports() {
        let mut rl = RateLimiter::new(Duration::from_secs(1), 3);
        let t0 = Instant::now();
        assert_eq!(rl.allow(t0), Some(0));
        assert_eq!(rl.allow(t0), Some(0));
        assert_eq!(rl.allow(t0), Some(0));
        assert_eq!(rl.allow(t0), None);
        assert_eq!(rl.allow(t0), None);
        let t1 = t0 + Duration::from_millis(1500);
        assert_eq!(rl.allow(t1), Some(2));
        assert_eq!(rl.allow(t1), Some(0));
    }

    #[test]
    fn limit_hits_record_per_context() {
        let mut log = GuestLog::new(8);
        let hit = |log: &mut GuestLog, ctx| {
            log.limit_hit(ctx, LimitKind::ItemsPerContext, 1024, format_args!("test"))
        };
        assert!(hit(&mut log, 1));
        assert!(!hit(&mut log, 1));
        assert!(hit(&mut log, 0));
        assert!(!hit(&mut log, 0));
        log.limits.forget(1);
        assert!(hit(&mut log, 1));
    }

    #[test]
    fn scope_names_the_context() {
        assert_eq!(Scope(7).to_string(), "by ctx 7");
        assert_eq!(Scope(0).to_string(), "outside a live context");
    }
}
