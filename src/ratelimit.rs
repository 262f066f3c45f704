//! Rate-limited logging of guest-caused problems: a hostile guest can trigger errors at line
//! rate, and the log must stay readable and bounded.

use std::time::{Duration, Instant};

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

/// Log a warning about a rejected guest request through a [`RateLimiter`].
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
}
