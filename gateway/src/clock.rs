//! Wall-clock readings shared by every module: publish timestamps (for the
//! delivery-lag metric) and the expiry times stored in Redis. Durations and
//! deadlines use `tokio::time::Instant` instead, so tests can pause time.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch (0 if the clock is before it).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    now_us() / 1_000
}
