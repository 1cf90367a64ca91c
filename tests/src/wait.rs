//! Bounded polling: the harness's replacement for sleeps.
//!
//! A condition is re-checked every few milliseconds until it holds or the
//! deadline passes; the error names the condition so a failing test says
//! what it was waiting for.

use std::future::Future;
use std::time::Duration;

use anyhow::{bail, Result};
use tokio::time::Instant;

/// Interval between two checks of a condition.
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Polls `check` until it returns `true`, for at most `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_some(timeout, what, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// Polls `check` until it returns `Some(value)`, for at most `timeout`, and
/// returns the value.
pub async fn eventually_some<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // A single check may itself hang (an HTTP call to a stuck server):
        // bound it by what is left of the deadline.
        if let Ok(Some(value)) = tokio::time::timeout(left.max(POLL_INTERVAL), check()).await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("condition not met within {timeout:?}: {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
