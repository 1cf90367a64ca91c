//! The `shard-spread` report: per phase (single Redis, Redis Cluster) the
//! load's figures and every process's CPU; the comparison of the two; the
//! one-screen summary and the markdown.
//!
//! Invariants: every derived figure is computed here from the measured
//! ones (so the JSON carries both and a reader can check); a phase that
//! did not run is `null`, and every figure built from it `null` or `-`.
//!
//! Jobs: this file (the run's report and the comparison of the phases);
//! `phase` (one phase's figures); `render` (the summary and the markdown).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::options::{SpreadArgs, Topo};

mod phase;
mod render;

pub(super) use phase::fill_shares;
pub use phase::{Phase, PhaseIn, ProcFig, RedisFig};

/// Single Redis against the cluster's primaries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    /// The single Redis's CPU seconds per 1,000 publications.
    pub single_cpu_secs_per_1k_pub: f64,
    /// The sum over the primaries.
    pub primaries_cpu_secs_per_1k_pub: f64,
    /// The sum over the primaries and the replicas.
    pub cluster_cpu_secs_per_1k_pub: f64,
    /// primaries / single.
    pub primaries_over_single: f64,
    /// The single Redis's CPU seconds per 1,000 publications above idle.
    pub single_busy_cpu_secs_per_1k_pub: f64,
    /// The sum over the primaries, above idle.
    pub primaries_busy_cpu_secs_per_1k_pub: f64,
    /// Publications/s at which the single Redis fills one core.
    pub single_bound_pub_per_sec: Option<f64>,
    /// Publications/s at which the first primary fills its core (each
    /// primary on a core of its own).
    pub cluster_bound_pub_per_sec: Option<f64>,
    /// cluster bound / single bound.
    pub bound_ratio: Option<f64>,
}

/// The options a run used (for the report).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    /// Channels.
    pub channels: u64,
    /// Subscribers per gateway node.
    pub subscribers_per_node: u64,
    /// Publishing time per topology, s.
    pub duration_secs: f64,
    /// `ws` or `http`.
    pub via: String,
    /// Publishers per node.
    pub publishers_per_node: u64,
    /// Publications in flight per publisher.
    pub window: usize,
    /// Asked publications/s (0 = flat out).
    pub rate: f64,
    /// Payload bytes.
    pub payload: usize,
    /// History namespace (EVALSHA publish.lua) instead of plain pub/sub.
    pub history: bool,
    /// Gateway runtime threads (0 = default).
    pub worker_threads: usize,
    /// Largest primaries' CPU spread (max/min) that passes.
    pub max_spread: f64,
    /// Replicas per primary in the Redis Cluster.
    #[serde(default)]
    pub cluster_replicas: usize,
}

/// What a run is (the input of [`SpreadReport::new`]).
pub(super) struct RunIn<'a> {
    pub(super) date: String,
    pub(super) commit: String,
    pub(super) machine: Value,
    pub(super) load_before: String,
    pub(super) load_after: String,
    pub(super) args: &'a SpreadArgs,
    pub(super) duration_secs: f64,
    pub(super) logs: String,
}

/// The `shard-spread` report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpreadReport {
    /// "shard-spread".
    pub scenario: String,
    /// `YYYY-MM-DDTHHMMSSZ`.
    pub date: String,
    /// Commit of the checkout.
    pub commit: String,
    /// The machine.
    pub machine: Value,
    /// Load average before and after.
    pub load_before: String,
    /// See `load_before`.
    pub load_after: String,
    /// The options.
    pub params: Params,
    /// One redis-server.
    pub single: Option<Phase>,
    /// Redis Cluster.
    pub cluster: Option<Phase>,
    /// Both, when both ran.
    pub comparison: Option<Comparison>,
    /// Phases that failed to run.
    pub failures: Vec<String>,
    /// Whole run, s.
    pub duration_secs: f64,
    /// Gateway and Redis logs.
    pub logs: String,
    /// Every phase asked for ran and passed its checks.
    pub ok: bool,
}

impl SpreadReport {
    pub(super) fn new(
        run: RunIn<'_>,
        single: Option<Phase>,
        cluster: Option<Phase>,
        failures: Vec<String>,
    ) -> SpreadReport {
        let a = run.args;
        let comparison = match (&single, &cluster) {
            (Some(s), Some(c)) => Some(Comparison {
                single_cpu_secs_per_1k_pub: s.primaries_cpu_secs_per_1k_pub,
                primaries_cpu_secs_per_1k_pub: c.primaries_cpu_secs_per_1k_pub,
                cluster_cpu_secs_per_1k_pub: c.primaries_cpu_secs_per_1k_pub
                    + c.replicas_cpu_secs_per_1k_pub,
                primaries_over_single: c.primaries_cpu_secs_per_1k_pub
                    / s.primaries_cpu_secs_per_1k_pub.max(1e-12),
                single_busy_cpu_secs_per_1k_pub: s.primaries_busy_cpu_secs_per_1k_pub,
                primaries_busy_cpu_secs_per_1k_pub: c.primaries_busy_cpu_secs_per_1k_pub,
                single_bound_pub_per_sec: s.redis_bound_pub_per_sec,
                cluster_bound_pub_per_sec: c.redis_bound_pub_per_sec,
                bound_ratio: match (s.redis_bound_pub_per_sec, c.redis_bound_pub_per_sec) {
                    (Some(x), Some(y)) if x > 0.0 => Some(y / x),
                    _ => None,
                },
            }),
            _ => None,
        };
        let ran_ok = |p: &Option<Phase>, t: Topo| {
            !a.topologies.contains(&t) || p.as_ref().is_some_and(|p| p.ok)
        };
        let ok =
            failures.is_empty() && ran_ok(&single, Topo::Single) && ran_ok(&cluster, Topo::Cluster);
        SpreadReport {
            scenario: "shard-spread".into(),
            date: run.date,
            commit: run.commit,
            machine: run.machine,
            load_before: run.load_before,
            load_after: run.load_after,
            params: Params {
                channels: a.channels,
                subscribers_per_node: a.subscribers_per_node,
                duration_secs: a.duration_secs,
                via: format!("{:?}", a.via).to_lowercase(),
                publishers_per_node: a.publishers_per_node,
                window: a.window,
                rate: a.rate,
                payload: a.payload,
                history: a.history,
                worker_threads: a.worker_threads,
                max_spread: a.max_spread,
                cluster_replicas: a.cluster_replicas,
            },
            single,
            cluster,
            comparison,
            failures,
            duration_secs: run.duration_secs,
            logs: run.logs,
            ok,
        }
    }

    fn phases(&self) -> impl Iterator<Item = &Phase> {
        self.single.iter().chain(self.cluster.iter())
    }
}
