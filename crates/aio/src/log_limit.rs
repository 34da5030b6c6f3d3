//! Rate limiting of log lines caused by a peer's input: a hostile
//! initiator or guest must not be able to flood the log (or the disk under
//! it) by sending bad input in a loop. Each source of such lines (a
//! connection, a controller, a listener) has its own [`LogLimit`]; the lines
//! it drops are counted and the count is reported with the next line let
//! through.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// At most one line per period; the others are counted.
#[derive(Debug)]
pub struct LogLimit {
    epoch: Instant,
    period_ms: u64,
    /// When the last line was let through (ms since `epoch`, plus one period
    /// so that the first line always passes).
    last: AtomicU64,
    /// Lines dropped since the last one let through.
    suppressed: AtomicU64,
    /// Lines dropped in all.
    suppressed_total: AtomicU64,
}

impl Default for LogLimit {
    fn default() -> Self {
        LogLimit::new(Duration::from_secs(1))
    }
}

impl LogLimit {
    /// A limit of one line per `period`.
    pub fn new(period: Duration) -> LogLimit {
        LogLimit {
            epoch: Instant::now(),
            period_ms: period.as_millis().max(1) as u64,
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            suppressed_total: AtomicU64::new(0),
        }
    }

    /// Whether a line may be logged now: `Some(n)` with the number of lines
    /// dropped since the last one logged (to be logged with it), or `None`
    /// (the line is dropped and counted).
    pub fn allow(&self) -> Option<u64> {
        let now = self.epoch.elapsed().as_millis() as u64 + self.period_ms;
        let last = self.last.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= self.period_ms
            && self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            self.suppressed_total.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Lines dropped since the last one let through, now counted as
    /// reported (for a closing line: "N more not logged").
    pub fn take_suppressed(&self) -> u64 {
        self.suppressed.swap(0, Ordering::Relaxed)
    }

    /// Lines dropped since this limit was made.
    pub fn suppressed_total(&self) -> u64 {
        self.suppressed_total.load(Ordering::Relaxed)
    }
}

/// `tracing::warn!` through a [`LogLimit`]: logs with a `suppressed` field
/// (lines dropped since the previous one), or counts the line as dropped.
#[macro_export]
macro_rules! warn_limited {
    ($limit:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $limit.allow() {
            ::tracing::warn!(suppressed, $($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_and_the_rest_counted() {
        let l = LogLimit::new(Duration::from_millis(200));
        assert_eq!(l.allow(), Some(0), "the first line passes");
        for _ in 0..1000 {
            assert_eq!(l.allow(), None);
        }
        assert_eq!(l.suppressed_total(), 1000);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(l.allow(), Some(1000), "the next line reports what was dropped");
        assert_eq!(l.allow(), None);
        assert_eq!(l.suppressed_total(), 1001);
    }
}
