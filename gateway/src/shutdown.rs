//! Process lifecycle: the shutdown signal and the tracker of every spawned
//! task.
//!
//! `token` is cancelled when the node starts draining; long-lived loops
//! (`run`) select on it. Every task is spawned on `tracker`, so the drain
//! sequence can wait until all of them have finished (axum's graceful
//! shutdown does not wait for upgraded WebSocket tasks, tokio-rs/axum#3003).

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The node's shutdown signal and task tracker.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Cancelled when draining starts.
    pub token: CancellationToken,
    /// Every task the node spawns.
    pub tracker: TaskTracker,
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the node");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
