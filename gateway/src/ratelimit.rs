//! Per-connection token bucket for client frames, plus the abuse rule:
//! more than `burst` refused frames within one 10 s window closes the
//! connection (code 4501). Work a frame causes beyond itself (a history
//! replay) is charged to the same bucket with [`RateLimiter::charge`].

use std::time::Duration;

use tokio::time::Instant;

const ABUSE_WINDOW: Duration = Duration::from_secs(10);

/// What the limiter says about one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Process it.
    Allow,
    /// Refuse it with `rate_limited`.
    Refuse,
    /// Refuse it and close the connection as abusive.
    Abuse,
}

/// A token bucket of `burst` tokens refilled at `rate` per second.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    window_start: Instant,
    refused_in_window: u32,
}

impl RateLimiter {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32) -> Self {
        let now = Instant::now();
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: now,
            window_start: now,
            refused_in_window: 0,
        }
    }

    /// Take a token for one frame.
    pub fn check(&mut self) -> Verdict {
        self.check_refill();
        let now = self.last;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        if now.duration_since(self.window_start) > ABUSE_WINDOW {
            self.window_start = now;
            self.refused_in_window = 0;
        }
        self.refused_in_window += 1;
        if f64::from(self.refused_in_window) > self.burst {
            Verdict::Abuse
        } else {
            Verdict::Refuse
        }
    }
}

impl RateLimiter {
    /// Charge `tokens` more for work a frame caused (a replay): the bucket
    /// may go below zero, down to `-burst`, and the next frames wait for
    /// the refill.
    pub fn charge(&mut self, tokens: f64) {
        self.check_refill();
        self.tokens = (self.tokens - tokens).max(-self.burst);
    }

    fn check_refill(&mut self) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_then_refuse_then_refill_then_abuse() {
        let mut rl = RateLimiter::new(10, 5);
        for _ in 0..5 {
            assert_eq!(rl.check(), Verdict::Allow);
        }
        assert_eq!(rl.check(), Verdict::Refuse);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(rl.check(), Verdict::Allow);
        for _ in 0..4 {
            assert_eq!(rl.check(), Verdict::Refuse);
        }
        assert_eq!(rl.check(), Verdict::Abuse);
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_spread_over_windows_are_not_abuse() {
        let mut rl = RateLimiter::new(1, 2);
        rl.check();
        rl.check();
        for _ in 0..3 {
            assert_eq!(rl.check(), Verdict::Refuse);
            tokio::time::advance(ABUSE_WINDOW + Duration::from_millis(1)).await;
            rl.check();
            rl.check();
        }
    }
}
