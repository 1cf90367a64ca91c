//! Exponential backoff with jitter between reconnection attempts (the
//! pub/sub connection of single mode, the shard connections of cluster
//! mode).

use std::time::Duration;

use rand::Rng;

/// Shortest and longest pause between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Exponential backoff with jitter between reconnection attempts.
#[derive(Default)]
pub(crate) struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next pause: uniform in [d/2, d] with d doubling up to the cap.
    pub(crate) fn next(&mut self) -> Duration {
        let full = BACKOFF_MIN
            .saturating_mul(1u32 << self.attempt.min(10))
            .min(BACKOFF_MAX);
        self.attempt = self.attempt.saturating_add(1);
        let ms = u64::try_from(full.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_cap_with_jitter() {
        let mut b = Backoff::default();
        let first = b.next();
        assert!(first >= BACKOFF_MIN / 2 && first <= BACKOFF_MIN);
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            last = b.next();
            assert!(last <= BACKOFF_MAX);
        }
        assert!(last >= BACKOFF_MAX / 2);
        b.reset();
        assert!(b.next() <= BACKOFF_MIN);
    }
}
