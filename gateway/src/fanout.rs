//! The fan-out workers between a backplane's receive path and the hub.
//!
//! The Redis reader only reads and decodes; it hands every envelope to
//! [`FanOut::deliver`], which never blocks: it hashes the envelope's routing
//! key (channel, user or connection id) to one of a fixed set of workers and
//! `try_send`s it on that worker's bounded queue. A worker (a thread of its
//! own, see [`spawn_worker`]) calls
//! [`Hub::deliver`] for each envelope in queue order, so one channel's
//! publications (and its join/leave events) keep their order, and a large
//! fan-out stalls only its own worker, never the reader or the other workers.
//!
//! A full queue is counted (`gateway_fanout_overflow_total{kind}`) and
//! acted on, never silently dropped and never waited for:
//! - a channel publication or join/leave: every local subscriber of that
//!   channel is closed with `missed_messages` (4005) before anything later
//!   of that channel is delivered, so no subscriber sees a later offset and
//!   skips the lost one; the client reconnects and recovers with `since`;
//! - a message to a user or a connection: those connections are closed
//!   with 4005 the same way;
//! - a disconnect: carried out at once by the reader (it only closes
//!   handles), ahead of what is still queued;
//! - a broadcast: counted and logged (there is no history to recover it
//!   from, and closing every connection of the node would be worse).
//!
//! Invariant: after an overflow of key K is recorded, the worker acts on it
//! before it delivers any envelope dequeued later (the record happens
//! before any later `try_send` of K succeeds), so the affected connections
//! never receive an envelope of K that followed the lost one.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backplane::{Deliver, Envelope};
use crate::hub::Hub;
use crate::metrics as m;
use crate::protocol::{close, CloseReason};

/// Who must be told that an envelope for them was dropped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Lost {
    Channel(String),
    User(String),
    Conn(String),
}

/// What the reader recorded for one worker: keys whose envelopes it
/// dropped, not yet acted on.
#[derive(Default)]
struct Overflowed {
    lost: Mutex<HashSet<Lost>>,
    /// `lost` is not empty: one atomic load per delivery instead of a lock.
    flagged: AtomicBool,
}

impl Overflowed {
    fn record(&self, lost: Lost) {
        let mut set = self.lost.lock();
        if set.insert(lost) && set.len() == 1 {
            self.flagged.store(true, Ordering::Release);
        }
    }

    fn take(&self) -> Option<HashSet<Lost>> {
        if !self.flagged.load(Ordering::Acquire) {
            return None;
        }
        let mut set = self.lost.lock();
        self.flagged.store(false, Ordering::Release);
        Some(std::mem::take(&mut *set))
    }
}

struct Worker {
    tx: mpsc::Sender<Envelope>,
    overflowed: Arc<Overflowed>,
}

/// What every worker task shares with the reader side.
struct Shared {
    hub: Arc<Hub>,
    /// When an overflow was last logged at warn (ms since the Unix epoch).
    warned_ms: AtomicU64,
}

/// The fan-out workers of one node. See the module docs. Dropping it
/// closes the queues, which ends the workers.
pub struct FanOut {
    workers: Vec<Worker>,
    shared: Arc<Shared>,
}

/// The worker (of `workers`) that fans out envelopes routed by `key`:
/// FNV-1a, so the choice is the same on every node and in every run.
pub fn worker_for(key: &str, workers: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % workers.max(1) as u64) as usize
}

/// The routing key of an envelope (see [`worker_for`]).
fn key(envelope: &Envelope) -> &str {
    match envelope {
        Envelope::Message(p) => &p.channel,
        Envelope::Join(e) | Envelope::Leave(e) => &e.channel,
        Envelope::User { user, .. }
        | Envelope::DisconnectUser { user, .. }
        | Envelope::SubscribeUser { user, .. } => user,
        Envelope::Conn { conn, .. }
        | Envelope::DisconnectConn { conn, .. }
        | Envelope::SubscribeConn { conn, .. } => conn,
        Envelope::Broadcast { .. } => "",
    }
}

impl FanOut {
    /// Start `workers` worker threads (at least 1) with queues of `queue`
    /// envelopes (at least 1) each, their ends tracked on `tracker`; they
    /// stop on `cancel` or when the fan-out is dropped.
    pub fn start(
        hub: Arc<Hub>,
        workers: usize,
        queue: usize,
        tracker: &TaskTracker,
        cancel: &CancellationToken,
    ) -> Arc<Self> {
        let shared = Arc::new(Shared {
            hub,
            warned_ms: AtomicU64::new(0),
        });
        let workers = (0..workers.max(1))
            .map(|i| {
                let (tx, rx) = mpsc::channel(queue.max(1));
                let overflowed = Arc::new(Overflowed::default());
                spawn_worker(
                    i,
                    run(shared.clone(), overflowed.clone(), rx, cancel.clone()),
                    tracker,
                );
                Worker { tx, overflowed }
            })
            .collect();
        Arc::new(Self { workers, shared })
    }

    /// Envelopes waiting in the queues now (for the scrape-time gauge).
    pub fn queued(&self) -> usize {
        self.workers
            .iter()
            .map(|w| w.tx.max_capacity() - w.tx.capacity())
            .sum()
    }

    fn overflow(&self, worker: &Worker, envelope: Envelope) {
        metrics::counter!(m::FANOUT_OVERFLOW, "kind" => envelope.kind()).increment(1);
        let lost = match envelope {
            Envelope::Message(p) => Lost::Channel(p.channel),
            Envelope::Join(e) | Envelope::Leave(e) => Lost::Channel(e.channel),
            Envelope::User { user, .. } => Lost::User(user),
            Envelope::Conn { conn, .. } => Lost::Conn(conn),
            // Control, not data: handed on inline, like disconnects.
            Envelope::DisconnectUser { .. }
            | Envelope::DisconnectConn { .. }
            | Envelope::SubscribeUser { .. }
            | Envelope::SubscribeConn { .. } => {
                self.shared.hub.deliver(envelope);
                return;
            }
            Envelope::Broadcast { .. } => {
                self.shared
                    .log("a broadcast was dropped (no history holds it)", 0);
                return;
            }
        };
        worker.overflowed.record(lost);
    }
}

impl Shared {
    /// Close the connections a lost envelope was for.
    fn act(&self, lost: &HashSet<Lost>) {
        let reason = CloseReason::new(close::MISSED_MESSAGES, "missed_messages");
        let closed: usize = lost
            .iter()
            .map(|l| match l {
                Lost::Channel(c) => self.hub.close_subscribers(c, &reason),
                Lost::User(u) => self.hub.close_user(u, &reason),
                Lost::Conn(c) => self.hub.close_conn(c, &reason),
            })
            .sum();
        self.log(
            "closed the affected connections with missed_messages",
            closed,
        );
    }

    /// Log an overflow at warn at most once a second (every overflow is
    /// counted in the metric; the rest go to debug).
    fn log(&self, what: &'static str, connections: usize) {
        let now = crate::clock::now_ms();
        let last = self.warned_ms.load(Ordering::Relaxed);
        let warn = now.saturating_sub(last) >= 1_000
            && self
                .warned_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if warn {
            tracing::warn!(
                connections,
                "fan-out queue was full: {what} (further ones this second at debug)"
            );
        } else {
            tracing::debug!(connections, "fan-out queue was full: {what}");
        }
    }
}

impl Deliver for FanOut {
    fn deliver(&self, envelope: Envelope) {
        let i = worker_for(key(&envelope), self.workers.len());
        let Some(worker) = self.workers.get(i) else {
            return;
        };
        match worker.tx.try_send(envelope) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(envelope)) => self.overflow(worker, envelope),
            // The workers stopped (shutdown): nothing is delivered any more.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// Run one worker on a thread of its own (a current-thread runtime), and
/// track its end on `tracker`. A worker's [`Hub::deliver`] of one envelope
/// to thousands of subscribers is synchronous work: on the node's runtime
/// it would hold a runtime thread for the whole batch its queue receive
/// allows, and the tasks queued behind it (the Redis command connections'
/// drivers, HTTP handlers) would wait; measured, that made publishes of a
/// flat-out cluster fan-out time out (docs/performance.md). On a thread of
/// its own the kernel shares the cores between it and the runtime.
fn spawn_worker(
    i: usize,
    work: impl std::future::Future<Output = ()> + Send + 'static,
    tracker: &TaskTracker,
) {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name(format!("fanout-{i}"))
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread().build() {
                Ok(runtime) => runtime.block_on(work),
                Err(e) => tracing::error!(error = %e, "cannot build a fan-out worker's runtime"),
            }
            let _ = done_tx.send(());
        });
    match spawned {
        Ok(_) => {
            tracker.spawn(async move {
                let _ = done_rx.await;
            });
        }
        Err(e) => tracing::error!(worker = i, error = %e, "cannot start a fan-out worker"),
    }
}

/// One worker: deliver in queue order; act on recorded overflows first.
async fn run(
    shared: Arc<Shared>,
    overflowed: Arc<Overflowed>,
    mut rx: mpsc::Receiver<Envelope>,
    cancel: CancellationToken,
) {
    loop {
        let envelope = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            e = rx.recv() => match e {
                Some(e) => e,
                None => break,
            },
        };
        if let Some(lost) = overflowed.take() {
            shared.act(&lost);
        }
        shared.hub.deliver(envelope);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_choice_is_stable_and_in_range() {
        assert_eq!(worker_for("chat:a", 4), worker_for("chat:a", 4));
        assert!((0..1000).all(|i| worker_for(&format!("c{i}"), 3) < 3));
        assert_eq!(worker_for("anything", 1), 0);
        let used: HashSet<usize> = (0..100).map(|i| worker_for(&format!("c{i}"), 4)).collect();
        assert_eq!(used.len(), 4, "keys spread over every worker");
    }
}
