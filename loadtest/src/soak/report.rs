//! The `soak` report and its human summary.

use std::collections::BTreeMap;

use serde::Serialize;

use super::sampler::{Counts, ProcOut, Sample};

/// The `soak` report.
#[derive(Debug, Clone, Serialize)]
pub struct SoakOut {
    /// "soak".
    pub scenario: &'static str,
    /// Churn phase, s.
    pub duration_secs: f64,
    /// Asked cycle rate.
    pub rate: f64,
    /// Cycles started.
    pub cycles: u64,
    /// Cycles that connected, subscribed, published and left.
    pub cycles_ok: u64,
    /// Failed cycles by kind (expected around the faults).
    pub errors: BTreeMap<String, u64>,
    /// One message per error kind.
    pub sample_errors: BTreeMap<String, String>,
    /// Client publishes sent and acknowledged with `published`.
    pub publishes: u64,
    /// Acknowledged.
    pub published: u64,
    /// Events (Redis restart, node kill, node restart) with their time, s.
    pub events: Vec<(String, f64)>,
    /// RSS, fd and thread samples of every gateway process.
    pub samples: Vec<Sample>,
    /// Per-process RSS figures.
    pub procs: Vec<ProcOut>,
    /// Final clients connected per node (the truth).
    pub final_truth: Vec<u64>,
    /// `gateway_connections` per node with the final clients connected.
    pub final_connections: Vec<f64>,
    /// `gateway_subscriptions` per node with the final clients connected
    /// (each final client holds 2 subscriptions).
    pub final_subscriptions: Vec<f64>,
    /// The gauges matched the truth.
    pub gauges_exact: bool,
    /// `gateway_connections`, `gateway_subscriptions`, `gateway_channels`
    /// per node after every client left.
    pub empty_gauges: Vec<[f64; 3]>,
    /// They were all 0.
    pub gauges_zero: bool,
    /// Descriptors and threads per node after start-up and a warm-up round
    /// (the restarted node's figure is its first process's).
    pub counts_before: Vec<Counts>,
    /// Descriptors and threads per node after every client left.
    pub counts_after: Vec<Counts>,
    /// No node has more descriptors (other than Redis connections) or
    /// threads after than before.
    pub no_leak: bool,
    /// Task gauges the gateway exports (none known today).
    pub task_gauges: BTreeMap<String, f64>,
    /// Gauges right, nothing leaked, the victim restarted.
    pub ok: bool,
}

impl SoakOut {
    /// Human summary.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "soak: {:.0} s, {} cycles ({} ok), {} of {} publishes acknowledged, errors {:?}\n",
            self.duration_secs,
            self.cycles,
            self.cycles_ok,
            self.published,
            self.publishes,
            self.errors
        );
        s += &format!("  events {:?}\n", self.events);
        for p in &self.procs {
            s += &format!(
                "  node {} pid {}: RSS {:?} -> {:?} KiB (max {:?}), slope {} KiB/min over {} samples\n",
                p.node,
                p.pid,
                p.rss_first_kib,
                p.rss_last_kib,
                p.rss_max_kib,
                p.rss_slope_kib_per_min
                    .map_or("n/a".to_owned(), |v| format!("{v:+.1}")),
                p.samples
            );
        }
        s += &format!(
            "  final: truth {:?}, connections {:?}, subscriptions {:?}: {}\n",
            self.final_truth,
            self.final_connections,
            self.final_subscriptions,
            if self.gauges_exact { "exact" } else { "WRONG" }
        );
        s += &format!(
            "  after all left (conns, subs, channels) {:?}: {}\n",
            self.empty_gauges,
            if self.gauges_zero { "0" } else { "NOT 0" }
        );
        s += &format!(
            "  fds/threads before {:?} after {:?}: {}; task gauges {:?}\n",
            self.counts_before,
            self.counts_after,
            if self.no_leak { "no leak" } else { "LEAK" },
            self.task_gauges
        );
        s += if self.ok { "  OK" } else { "  NOT OK" };
        s
    }
}
