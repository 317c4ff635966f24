//! Where a node gets the time. Everything that decides by time (the writer's `now`, expiry
//! of keys, sessions, tokens and holds, rate limits) reads one injected `Clock`, so tests
//! move time forward instead of sleeping.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, TimeDelta, Utc};

pub trait Clock: Debug + Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The system clock plus an offset that only grows: a test clock for a whole running node
/// (`bahi serve --test-clock`). Time keeps flowing, so background work behaves as it does
/// in production, and a test skips ahead instead of waiting.
#[derive(Debug, Default)]
pub struct OffsetClock {
    offset_micros: AtomicI64,
}

/// The most one call to `advance` moves the clock: a year.
pub const MAX_ADVANCE_SECONDS: i64 = 366 * 24 * 3600;

impl OffsetClock {
    /// Moves the clock forward by `seconds` (1 to `MAX_ADVANCE_SECONDS`); returns the new time.
    pub fn advance(&self, seconds: i64) -> Result<DateTime<Utc>, String> {
        if !(1..=MAX_ADVANCE_SECONDS).contains(&seconds) {
            return Err(format!("seconds must be 1 to {MAX_ADVANCE_SECONDS}"));
        }
        self.offset_micros.fetch_add(seconds * 1_000_000, Ordering::SeqCst);
        Ok(self.now())
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> DateTime<Utc> {
        let offset = TimeDelta::microseconds(self.offset_micros.load(Ordering::SeqCst));
        Utc::now().checked_add_signed(offset).unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// A clock that stands still until moved: for in-process tests.
#[derive(Debug)]
pub struct ManualClock {
    now: parking_lot::Mutex<DateTime<Utc>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> ManualClock {
        ManualClock { now: parking_lot::Mutex::new(start) }
    }

    pub fn advance(&self, by: TimeDelta) {
        let mut now = self.now.lock();
        *now = now.checked_add_signed(by).expect("a test moved the clock past chrono's range");
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_clock_only_moves_forward_and_within_a_year() {
        let clock = OffsetClock::default();
        let before = clock.now();
        let after = clock.advance(3600).unwrap();
        assert!(after - before >= TimeDelta::seconds(3600));
        assert!(clock.advance(0).is_err());
        assert!(clock.advance(-5).is_err());
        assert!(clock.advance(MAX_ADVANCE_SECONDS + 1).is_err());
    }

    #[test]
    fn a_manual_clock_stands_still_until_moved() {
        let start = Utc::now();
        let clock = ManualClock::new(start);
        assert_eq!(clock.now(), start);
        clock.advance(TimeDelta::seconds(2));
        assert_eq!(clock.now(), start + TimeDelta::seconds(2));
    }
}
