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

/// Install the SIGTERM/SIGINT handlers now and return a future that
/// resolves on the first of them. Call it before announcing the listener:
/// a signal that arrives before the handlers exist kills the process
/// without a drain.
pub fn signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let term = {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        if let Err(e) = &term {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the node");
        }
        term.ok()
    };
    #[cfg(unix)]
    let int = {
        use tokio::signal::unix::{signal, SignalKind};
        signal(SignalKind::interrupt()).ok()
    };
    async move {
        #[cfg(unix)]
        {
            let mut term = term;
            let mut int = int;
            let on_term = async {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let on_int = async {
                match int.as_mut() {
                    Some(i) => {
                        i.recv().await;
                    }
                    None => {
                        let _ = tokio::signal::ctrl_c().await;
                    }
                }
            };
            tokio::select! {
                _ = on_term => tracing::info!("SIGTERM received"),
                _ = on_int => tracing::info!("SIGINT received"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
