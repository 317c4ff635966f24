//! Token-bucket arithmetic, in integers: a bucket holds `requests` tokens and refills
//! continuously at `requests / interval_seconds` per second. Pure: the caller passes the
//! time in microseconds.

use crate::event::RateLimit;

/// Tokens are counted in millionths so that continuous refill needs no floats.
const SCALE: u128 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    /// Millionths of a token.
    tokens: u128,
    updated_at_micros: i64,
}

/// What one request's check decided, with what the response headers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    pub allowed: bool,
    pub limit: u32,
    /// Whole tokens left after this request.
    pub remaining: u32,
    /// Epoch seconds at which the bucket is full again.
    pub reset_at_seconds: i64,
    /// Seconds until one token is available (0 when allowed).
    pub retry_after_seconds: u64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(limit: RateLimit, now_micros: i64) -> TokenBucket {
        TokenBucket { tokens: u128::from(limit.requests) * SCALE, updated_at_micros: now_micros }
    }

    /// Refills for the time elapsed, then takes one token if there is one.
    pub fn take(&mut self, limit: RateLimit, now_micros: i64) -> RateDecision {
        let capacity = u128::from(limit.requests) * SCALE;
        let interval_micros = u128::from(limit.interval_seconds.max(1)) * 1_000_000;
        let elapsed = u128::try_from(now_micros.saturating_sub(self.updated_at_micros)).unwrap_or(0);
        // tokens gained = elapsed * requests / interval, in millionths of a token.
        let gained = elapsed.saturating_mul(u128::from(limit.requests)).saturating_mul(SCALE) / interval_micros;
        self.tokens = self.tokens.saturating_add(gained).min(capacity);
        self.updated_at_micros = self.updated_at_micros.max(now_micros);
        let allowed = self.tokens >= SCALE;
        if allowed {
            self.tokens -= SCALE;
        }
        // Micro-seconds to refill `missing` millionths of a token.
        let micros_for = |missing: u128| -> u128 {
            (missing.saturating_mul(interval_micros)).div_ceil(u128::from(limit.requests).saturating_mul(SCALE).max(1))
        };
        let until_full = micros_for(capacity - self.tokens);
        let retry_after_seconds = if allowed { 0 } else { micros_for(SCALE - self.tokens).div_ceil(1_000_000) as u64 };
        RateDecision {
            allowed,
            limit: limit.requests,
            remaining: u32::try_from(self.tokens / SCALE).unwrap_or(u32::MAX),
            reset_at_seconds: (now_micros + i64::try_from(until_full).unwrap_or(i64::MAX / 2)).div_euclid(1_000_000)
                + i64::from(until_full % 1_000_000 != 0),
            retry_after_seconds: retry_after_seconds.max(u64::from(!allowed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECOND: i64 = 1_000_000;

    #[test]
    fn a_full_bucket_allows_requests_then_refuses() {
        let limit = RateLimit { requests: 3, interval_seconds: 60 };
        let mut bucket = TokenBucket::full(limit, 0);
        let remaining: Vec<u32> = (0..3).map(|_| bucket.take(limit, 0).remaining).collect();
        assert_eq!(remaining, vec![2, 1, 0]);
        let refused = bucket.take(limit, 0);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_seconds, 20, "one token per 20 s");
        assert_eq!(refused.reset_at_seconds, 60);
    }

    #[test]
    fn refill_is_continuous() {
        let limit = RateLimit { requests: 60, interval_seconds: 60 };
        let mut bucket = TokenBucket::full(limit, 0);
        for _ in 0..60 {
            assert!(bucket.take(limit, 0).allowed);
        }
        assert!(!bucket.take(limit, 0).allowed);
        assert!(!bucket.take(limit, SECOND / 2).allowed);
        assert!(bucket.take(limit, SECOND).allowed, "one token per second");
        assert!(!bucket.take(limit, SECOND).allowed);
    }

    proptest! {
        /// Over any window, allowed requests never exceed capacity plus what the window
        /// refills.
        #[test]
        fn never_allows_more_than_capacity_plus_refill(
            requests in 1u32..100,
            interval_seconds in 1u32..120,
            gaps in proptest::collection::vec(0i64..2 * SECOND, 1..300),
        ) {
            let limit = RateLimit { requests, interval_seconds };
            let mut bucket = TokenBucket::full(limit, 0);
            let mut now = 0;
            let mut allowed = 0u64;
            for gap in gaps {
                now += gap;
                if bucket.take(limit, now).allowed {
                    allowed += 1;
                }
            }
            let refill = (now as u128 * u128::from(requests) / (u128::from(interval_seconds) * 1_000_000)) as u64;
            prop_assert!(allowed <= u64::from(requests) + refill);
        }
    }
}
