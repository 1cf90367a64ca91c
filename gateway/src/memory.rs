//! Giving freed memory back to the system after a burst. glibc keeps what
//! a thread freed in that thread's arena for reuse, so after a burst of
//! sockets (a slowloris attack, a reconnect storm, thousands of clients
//! leaving at once) the node's RSS stays at the burst's peak although the
//! memory is free: 35 MiB after 2,000 slowloris sockets against an 8 MiB
//! baseline (docs/security.md). A tracked task samples the node's sockets
//! (open connections plus sockets in the handshake, whose peak the edge
//! records as it admits them) every [`TICK`]; when they fell by at least
//! [`DROP`] since the last trim, it calls glibc's `malloc_trim(0)` on a
//! blocking thread, counted in `gateway_memory_trims_total`. Elsewhere
//! (musl, other allocators) it does nothing.

use std::sync::Arc;
use std::time::Duration;

use crate::node::Node;

/// Trims so far (counter).
pub const TRIMS: &str = "gateway_memory_trims_total";

/// How often the node's socket count is sampled.
pub const TICK: Duration = Duration::from_secs(5);

/// The fall in sockets since the last trim that makes a trim worth its
/// walk over the allocator's arenas.
pub const DROP: usize = 500;

/// Describe the metric and export it at 0.
pub fn describe_metrics() {
    metrics::describe_counter!(
        TRIMS,
        "Times freed memory was given back to the system after a burst of sockets ended."
    );
    metrics::counter!(TRIMS).absolute(0);
}

/// Ask the allocator to give the free pages of every arena back; whether
/// it gave any.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release() -> bool {
    // SAFETY: malloc_trim takes no pointer and only rearranges glibc's own
    // free lists, under glibc's own arena locks.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Ask the allocator to give the free pages of every arena back; whether
/// it gave any (never, off glibc).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release() -> bool {
    false
}

/// The trimming task, until shutdown.
pub async fn run(node: Arc<Node>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Sockets at the last sample.
    let mut last = 0usize;
    loop {
        tokio::select! {
            _ = node.shutdown.token.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = node.hub.connection_count() + node.edge.pending();
        // The handshake-phase peak in between: a burst shorter than a tick.
        let peak = node.edge.take_pending_peak().max(last);
        last = now;
        if peak >= now.saturating_add(DROP) {
            let released = tokio::task::spawn_blocking(release).await.unwrap_or(false);
            metrics::counter!(TRIMS).increment(1);
            tracing::debug!(
                peak,
                now,
                released,
                "freed memory given back after a burst of sockets"
            );
        }
    }
}
