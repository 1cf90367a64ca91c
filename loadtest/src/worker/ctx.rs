//! A worker's shared state: what its spec says, the signals from the
//! command loop (stop, refused publications), and the counters every client
//! task updates; and the reports read from those counters.
//!
//! Invariants: counters are updated with relaxed atomics (or short mutex
//! sections) and read into a report only once the tasks are quiet (after a
//! connect phase ends, after the finish settle, after the stop), so a
//! report is consistent; `live_tasks` counts client tasks still running
//! (see `client::TaskGuard`); a poisoned mutex is still used (a counter is
//! worth more than a panic).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;
use tokio::sync::{mpsc, watch};

use super::protocol::{ConnectReport, Ev, Mode, SeqReport, StopReport, WorkerSpec};
use crate::common::{hist_pairs, new_hist, Node};
use crate::wire::ConnectError;

/// Latency histograms in Seq mode (clients record into `idx % shards`).
pub(super) const HIST_SHARDS: usize = 8;

/// Refused publications: (channel, lane, seq).
pub(super) type Refused = Vec<(u64, u64, u64)>;

pub(super) struct Ctx {
    pub(super) spec: WorkerSpec,
    pub(super) nodes: Vec<Node>,
    pub(super) ev: mpsc::UnboundedSender<Ev>,
    pub(super) stop: watch::Receiver<bool>,
    pub(super) refused: watch::Receiver<Option<Arc<Refused>>>,
    pub(super) expected: Vec<u64>,
    pub(super) attempted: AtomicU64,
    pub(super) connected: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) clean_closes: AtomicU64,
    pub(super) live_tasks: AtomicU64,
    pub(super) first_attempt_us: AtomicU64,
    pub(super) last_setup_us: AtomicU64,
    pub(super) errors: Mutex<BTreeMap<String, u64>>,
    pub(super) sample_error: Mutex<Option<String>>,
    pub(super) closes: Mutex<BTreeMap<String, u64>>,
    pub(super) setup: Mutex<Histogram<u64>>,
    // Seq mode.
    pub(super) expected_total: AtomicU64,
    pub(super) remaining: AtomicU64,
    pub(super) distinct: AtomicU64,
    pub(super) deliveries: AtomicU64,
    pub(super) duplicates: AtomicU64,
    pub(super) out_of_order: AtomicU64,
    pub(super) unexpected: AtomicU64,
    pub(super) refused_missing: AtomicU64,
    pub(super) refused_delivered: AtomicU64,
    /// Per gateway node: expected, distinct, refused-missing deliveries.
    pub(super) by_node: Vec<[AtomicU64; 3]>,
    pub(super) first_delivery_us: AtomicU64,
    pub(super) last_delivery_us: AtomicU64,
    pub(super) latency: Vec<Mutex<Histogram<u64>>>,
    // Bcast mode.
    pub(super) bcast: Mutex<HashMap<u64, (u64, u64)>>,
    pub(super) bcast_done: Mutex<HashSet<u64>>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts a failure by kind and keeps the first message.
pub(super) fn note_error(
    errors: &mut BTreeMap<String, u64>,
    sample: &mut Option<String>,
    e: &ConnectError,
) {
    *errors.entry(e.kind.clone()).or_default() += 1;
    if sample.is_none() {
        *sample = Some(e.to_string());
    }
}

impl Ctx {
    /// The state of a fresh worker: every counter zero.
    pub(super) fn new(
        spec: WorkerSpec,
        nodes: Vec<Node>,
        ev: mpsc::UnboundedSender<Ev>,
        stop: watch::Receiver<bool>,
        refused: watch::Receiver<Option<Arc<Refused>>>,
    ) -> Ctx {
        let expected = match &spec.mode {
            Mode::Seq { expected, .. } => expected.clone(),
            _ => Vec::new(),
        };
        Ctx {
            nodes,
            ev,
            stop,
            refused,
            expected,
            attempted: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            clean_closes: AtomicU64::new(0),
            live_tasks: AtomicU64::new(0),
            first_attempt_us: AtomicU64::new(0),
            last_setup_us: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            sample_error: Mutex::new(None),
            closes: Mutex::new(BTreeMap::new()),
            setup: Mutex::new(new_hist()),
            expected_total: AtomicU64::new(0),
            remaining: AtomicU64::new(0),
            distinct: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            unexpected: AtomicU64::new(0),
            refused_missing: AtomicU64::new(0),
            refused_delivered: AtomicU64::new(0),
            by_node: (0..spec.ep.urls.len().max(1))
                .map(|_| [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)])
                .collect(),
            first_delivery_us: AtomicU64::new(u64::MAX),
            last_delivery_us: AtomicU64::new(0),
            latency: (0..HIST_SHARDS).map(|_| Mutex::new(new_hist())).collect(),
            bcast: Mutex::new(HashMap::new()),
            bcast_done: Mutex::new(HashSet::new()),
            spec,
        }
    }

    pub(super) fn fail(&self, e: &ConnectError) {
        note_error(&mut lock(&self.errors), &mut lock(&self.sample_error), e);
    }

    pub(super) fn ended(&self, how: &str) {
        self.dropped.fetch_add(1, Relaxed);
        *lock(&self.closes).entry(how.to_owned()).or_default() += 1;
    }

    /// Per-node tallies of client `idx`.
    pub(super) fn node(&self, idx: u64) -> &[AtomicU64; 3] {
        &self.by_node[(idx % self.by_node.len() as u64) as usize]
    }

    pub(super) fn live(&self) -> u64 {
        self.connected
            .load(Relaxed)
            .saturating_sub(self.dropped.load(Relaxed))
    }

    /// Connect progress (sent every 250 ms while connecting or churning).
    pub(super) fn progress(&self, connected: u64, failed: u64) {
        let _ = self.ev.send(Ev::Progress { connected, failed });
    }

    pub(super) fn connect_report(&self) -> ConnectReport {
        ConnectReport {
            attempted: self.attempted.load(Relaxed),
            connected: self.connected.load(Relaxed),
            failed: self.failed.load(Relaxed),
            live: self.live(),
            errors: lock(&self.errors).clone(),
            sample_error: lock(&self.sample_error).clone(),
            first_us: self.first_attempt_us.load(Relaxed),
            last_us: self.last_setup_us.load(Relaxed),
            setup: hist_pairs(&lock(&self.setup)),
        }
    }

    pub(super) fn seq_report(&self) -> SeqReport {
        let mut h = new_hist();
        for shard in &self.latency {
            let _ = h.add(&*lock(shard));
        }
        let first = self.first_delivery_us.load(Relaxed);
        SeqReport {
            subscribers: self.connected.load(Relaxed),
            expected: self.expected_total.load(Relaxed),
            distinct: self.distinct.load(Relaxed),
            deliveries: self.deliveries.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
            out_of_order: self.out_of_order.load(Relaxed),
            unexpected: self.unexpected.load(Relaxed),
            incomplete: self.remaining.load(Relaxed),
            refused_missing: self.refused_missing.load(Relaxed),
            refused_delivered: self.refused_delivered.load(Relaxed),
            by_node: self
                .by_node
                .iter()
                .map(|n| (n[0].load(Relaxed), n[1].load(Relaxed), n[2].load(Relaxed)))
                .collect(),
            dropped: self.dropped.load(Relaxed),
            closes: lock(&self.closes).clone(),
            first_us: if first == u64::MAX { 0 } else { first },
            last_us: self.last_delivery_us.load(Relaxed),
            latency: hist_pairs(&h),
        }
    }

    /// `live`: clients alive when the stop came (read before stopping).
    pub(super) fn stop_report(&self, live: u64) -> StopReport {
        StopReport {
            live,
            dropped: self.dropped.load(Relaxed),
            closes: lock(&self.closes).clone(),
            clean_closes: self.clean_closes.load(Relaxed),
        }
    }
}
