//! The fan-out workers between a backplane's receive path and the hub.
//!
//! The Redis reader only reads and decodes; it hands every envelope to
//! [`FanOut::deliver`], which never blocks: it hashes the envelope's routing
//! key (channel, user or connection id) to one of a fixed set of workers and
//! `try_send`s it on that worker's bounded queue. A worker task calls
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

struct Worker {
    tx: mpsc::Sender<Envelope>,
    /// Keys whose envelopes were dropped, not yet acted on.
    lost: Mutex<HashSet<Lost>>,
    /// `lost` is not empty (checked by the worker before every delivery).
    flagged: AtomicBool,
}

/// The fan-out workers of one node. See the module docs.
pub struct FanOut {
    workers: Vec<Worker>,
    hub: Arc<Hub>,
    /// When an overflow was last logged at warn (ms since the Unix epoch).
    warned_ms: AtomicU64,
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
        Envelope::User { user, .. } | Envelope::DisconnectUser { user, .. } => user,
        Envelope::Conn { conn, .. } | Envelope::DisconnectConn { conn, .. } => conn,
        Envelope::Broadcast { .. } => "",
    }
}

impl FanOut {
    /// Start `workers` workers (at least 1) with queues of `queue`
    /// envelopes (at least 1) each, on `tracker`; they stop on `cancel` or
    /// when the fan-out is dropped.
    pub fn start(
        hub: Arc<Hub>,
        workers: usize,
        queue: usize,
        tracker: &TaskTracker,
        cancel: &CancellationToken,
    ) -> Arc<Self> {
        let mut receivers = Vec::new();
        let workers = (0..workers.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(queue.max(1));
                receivers.push(rx);
                Worker {
                    tx,
                    lost: Mutex::new(HashSet::new()),
                    flagged: AtomicBool::new(false),
                }
            })
            .collect();
        let fanout = Arc::new(Self {
            workers,
            hub,
            warned_ms: AtomicU64::new(0),
        });
        for (i, rx) in receivers.into_iter().enumerate() {
            tracker.spawn(run(Arc::downgrade(&fanout), i, rx, cancel.clone()));
        }
        fanout
    }

    /// Envelopes waiting in the queues now (for the scrape-time gauge).
    pub fn queued(&self) -> usize {
        self.workers
            .iter()
            .map(|w| w.tx.max_capacity() - w.tx.capacity())
            .sum()
    }

    /// Close the connections a lost envelope was for.
    fn act(&self, lost: HashSet<Lost>) {
        let reason = CloseReason::new(close::MISSED_MESSAGES, "missed_messages");
        let mut closed = 0;
        for l in &lost {
            closed += match l {
                Lost::Channel(c) => self.hub.close_subscribers(c, &reason),
                Lost::User(u) => self.hub.close_user(u, &reason),
                Lost::Conn(c) => self.hub.close_conn(c, &reason),
            };
        }
        // Logged at warn at most once a second (every overflow is counted
        // in the metric; the rest go to debug).
        let now = crate::clock::now_ms();
        let last = self.warned_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1_000
            && self
                .warned_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                keys = lost.len(),
                connections = closed,
                "fan-out queue was full: closed the affected connections with missed_messages (further ones this second at debug)"
            );
        } else {
            tracing::debug!(
                keys = lost.len(),
                connections = closed,
                "fan-out queue was full"
            );
        }
    }

    fn overflow(&self, worker: &Worker, envelope: Envelope) {
        metrics::counter!(m::FANOUT_OVERFLOW, "kind" => envelope.kind()).increment(1);
        let lost = match envelope {
            Envelope::Message(p) => Lost::Channel(p.channel),
            Envelope::Join(e) | Envelope::Leave(e) => Lost::Channel(e.channel),
            Envelope::User { user, .. } => Lost::User(user),
            Envelope::Conn { conn, .. } => Lost::Conn(conn),
            Envelope::DisconnectUser { .. } | Envelope::DisconnectConn { .. } => {
                self.hub.deliver(envelope);
                return;
            }
            Envelope::Broadcast { .. } => {
                // Counted above; logged like the others.
                self.act(HashSet::new());
                return;
            }
        };
        let mut set = worker.lost.lock();
        if set.insert(lost) && set.len() == 1 {
            worker.flagged.store(true, Ordering::Release);
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

/// One worker: deliver in queue order; act on recorded overflows first.
async fn run(
    fanout: std::sync::Weak<FanOut>,
    i: usize,
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
        let Some(fanout) = fanout.upgrade() else {
            break;
        };
        let Some(worker) = fanout.workers.get(i) else {
            break;
        };
        if worker.flagged.load(Ordering::Acquire) {
            let lost = {
                let mut set = worker.lost.lock();
                worker.flagged.store(false, Ordering::Release);
                std::mem::take(&mut *set)
            };
            fanout.act(lost);
        }
        fanout.hub.deliver(envelope);
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
