//! The `shard-spread` report: per phase (single Redis, Redis Cluster) the
//! load's figures and every process's CPU; the comparison of the two; the
//! one-screen summary and the markdown.
//!
//! Invariants: every derived figure is computed here from the measured
//! ones (so the JSON carries both and a reader can check); a phase that
//! did not run is `null`, and every figure built from it `null` or `-`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::redis::Counters;
use super::{SpreadArgs, Topo};
use crate::common::Latency;

/// One gateway (or other non-Redis process) over the window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcFig {
    /// Its name.
    pub name: String,
    /// Its pid.
    pub pid: u32,
    /// utime + stime over the window, s.
    pub cpu_secs: f64,
    /// CPU seconds per 1,000 accepted publications.
    pub cpu_secs_per_1k_pub: f64,
    /// CPU seconds per second in the idle sample before publishing.
    pub idle_cpu_per_sec: f64,
}

/// One Redis process over the window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RedisFig {
    /// Data port.
    pub port: u16,
    /// Pid.
    pub pid: u32,
    /// `single`, `primary` or `replica`.
    pub role: String,
    /// A replica's primary (its data port).
    pub primary_port: Option<u16>,
    /// Channels whose key slot it serves (primaries; all for `single`).
    pub channels: Option<u64>,
    /// utime + stime over the window, s.
    pub cpu_secs: f64,
    /// CPU seconds per 1,000 accepted publications (of the whole run).
    pub cpu_secs_per_1k_pub: f64,
    /// CPU seconds per second in the idle sample before publishing.
    pub idle_cpu_per_sec: f64,
    /// CPU seconds per 1,000 publications above idle (the window's CPU
    /// less the idle rate times the window).
    pub busy_cpu_secs_per_1k_pub: f64,
    /// Publish calls it ran over the window (PUBLISH on one Redis,
    /// SPUBLISH on a cluster node, EVALSHA with history; a replica counts
    /// what its primary replicated to it).
    pub publish_calls: u64,
    /// Its share of the publish calls of the primaries (or single).
    pub publish_share: Option<f64>,
    /// INFO counter deltas over the window.
    pub counters: Counters,
}

/// Sets each primary's (or the single Redis's) share of the publish calls.
pub(super) fn fill_shares(figs: &mut [RedisFig]) {
    let total: u64 = figs
        .iter()
        .filter(|f| f.role != "replica")
        .map(|f| f.publish_calls)
        .sum();
    for f in figs.iter_mut().filter(|f| f.role != "replica") {
        f.publish_share = (total > 0).then(|| f.publish_calls as f64 / total as f64);
    }
}

/// What a phase measured (the input of [`Phase::new`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseIn {
    /// Subscriber connections asked for.
    pub subscribers: u64,
    /// Subscriber connections that subscribed to every channel.
    pub connected: u64,
    /// Why the others did not.
    pub subscribe_errors: Vec<String>,
    /// Subscriber tasks that did not report at the end.
    pub lost_subscribers: u64,
    /// Channels.
    pub channels: u64,
    /// Warm-up deliveries expected (accepted warm-up publications x
    /// subscribers) and received.
    pub warmup_expected: u64,
    /// See `warmup_expected`.
    pub warmup_delivered: u64,
    /// Publishers.
    pub publishers: u64,
    /// Publications accepted (published / 200).
    pub published: u64,
    /// Publications refused or failed.
    pub refused: u64,
    /// Refusals by kind.
    pub publish_errors: BTreeMap<String, u64>,
    /// From the start of publishing to the last reply, s.
    pub publish_secs: f64,
    /// The CPU window: publishing, then until the deliveries stopped, s.
    pub window_secs: f64,
    /// Deliveries received (over every subscriber and channel).
    pub delivered: u64,
    /// Accepted publications x subscribers.
    pub expected_deliveries: u64,
    /// Deliveries missing (per subscriber and channel: accepted - got).
    pub shortfall: u64,
    /// Deliveries beyond the accepted (refused publications that were
    /// executed anyway, or duplicates).
    pub extra: u64,
    /// Deliveries of ours on an unknown channel index.
    pub unexpected: u64,
    /// (subscriber, channel) pairs with a shortfall.
    pub short_pairs: u64,
    /// From the start of publishing to the last delivery, s.
    pub delivery_secs: f64,
    /// Subscribers that lost their connection, by how.
    pub drops: BTreeMap<String, u64>,
    /// Publish to receive.
    pub latency: Latency,
    /// Publish request to reply, as the publisher saw it.
    pub publish_rtt: Latency,
    /// Every Redis process.
    pub redis: Vec<RedisFig>,
    /// Every gateway.
    pub gateways: Vec<ProcFig>,
    /// This load generator (subscribers and publishers), s.
    pub loadtest_cpu_secs: f64,
}

/// One phase's report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Phase {
    /// `single` or `cluster`.
    pub topology: Topo,
    /// What was measured.
    #[serde(flatten)]
    pub input: PhaseIn,
    /// Accepted publications per second of publishing.
    pub publications_per_sec: f64,
    /// Deliveries per second (start of publishing to the last delivery).
    pub deliveries_per_sec: f64,
    /// CPU of every Redis process, s.
    pub redis_cpu_secs: f64,
    /// CPU of the primaries (the single Redis), s.
    pub primaries_cpu_secs: f64,
    /// CPU of the replicas, s.
    pub replicas_cpu_secs: f64,
    /// Primaries' (single Redis's) CPU seconds per 1,000 publications.
    pub primaries_cpu_secs_per_1k_pub: f64,
    /// Replicas' CPU seconds per 1,000 publications.
    pub replicas_cpu_secs_per_1k_pub: f64,
    /// Primaries' (single Redis's) CPU seconds per 1,000 publications
    /// above their idle CPU.
    pub primaries_busy_cpu_secs_per_1k_pub: f64,
    /// Replicas' CPU seconds per 1,000 publications above idle.
    pub replicas_busy_cpu_secs_per_1k_pub: f64,
    /// Gateways' CPU seconds per 1,000 publications.
    pub gateways_cpu_secs_per_1k_pub: f64,
    /// Max / min CPU over the primaries (cluster).
    pub cpu_spread: Option<f64>,
    /// Max / min publish calls over the primaries (cluster).
    pub share_spread: Option<f64>,
    /// Publications/s (over all channels) at which the first primary (the
    /// single Redis) would use one whole core: min over them of (1 - idle
    /// CPU/s) / (its CPU per publication above idle). Each Redis process
    /// on a core of its own is assumed.
    pub redis_bound_pub_per_sec: Option<f64>,
    /// Every subscriber got every accepted publication, nothing dropped,
    /// the warm-up complete, and (cluster) the CPU spread within
    /// `--max-spread` (2x).
    pub ok: bool,
}

fn max_min(v: &[f64]) -> Option<f64> {
    let max = v.iter().copied().fold(f64::NAN, f64::max);
    let min = v.iter().copied().fold(f64::NAN, f64::min);
    (v.len() > 1 && min > 0.0).then(|| max / min)
}

impl Phase {
    /// `max_spread`: the primaries' CPU must be within this factor of each
    /// other.
    pub(super) fn new(topology: Topo, max_spread: f64, input: PhaseIn) -> Phase {
        let per_1k = |s: f64| {
            if input.published > 0 {
                s * 1000.0 / input.published as f64
            } else {
                0.0
            }
        };
        let primaries: Vec<&RedisFig> =
            input.redis.iter().filter(|r| r.role != "replica").collect();
        let pcpu: Vec<f64> = primaries.iter().map(|r| r.cpu_secs).collect();
        let pcalls: Vec<f64> = primaries.iter().map(|r| r.publish_calls as f64).collect();
        // (`fold` from +0.0: an empty f64 `sum` is -0.0, printed "-0.00".)
        let primaries_cpu: f64 = pcpu.iter().fold(0.0, |a, b| a + b);
        let replicas_cpu: f64 = input
            .redis
            .iter()
            .filter(|r| r.role == "replica")
            .fold(0.0, |a, r| a + r.cpu_secs);
        let gw_cpu: f64 = input.gateways.iter().fold(0.0, |a, g| a + g.cpu_secs);
        let bound = primaries
            .iter()
            .filter(|r| r.busy_cpu_secs_per_1k_pub > 0.0)
            .map(|r| (1.0 - r.idle_cpu_per_sec).max(0.0) * 1000.0 / r.busy_cpu_secs_per_1k_pub)
            .fold(None, |m: Option<f64>, b| Some(m.map_or(b, |m| m.min(b))));
        let busy_sum = |replica: bool| -> f64 {
            input
                .redis
                .iter()
                .filter(|r| (r.role == "replica") == replica)
                .fold(0.0, |a, r| a + r.busy_cpu_secs_per_1k_pub)
        };
        let cpu_spread = if topology == Topo::Cluster {
            max_min(&pcpu)
        } else {
            None
        };
        let share_spread = if topology == Topo::Cluster {
            max_min(&pcalls)
        } else {
            None
        };
        let ok = input.published > 0
            && input.connected == input.subscribers
            && input.lost_subscribers == 0
            && input.drops.is_empty()
            && input.shortfall == 0
            && input.unexpected == 0
            && input.extra <= input.refused * input.connected
            && input.warmup_expected == input.channels * input.connected
            && input.warmup_delivered == input.warmup_expected
            && (topology == Topo::Single || cpu_spread.is_some_and(|s| s <= max_spread));
        Phase {
            topology,
            publications_per_sec: input.published as f64 / input.publish_secs.max(1e-9),
            deliveries_per_sec: if input.delivery_secs > 0.0 {
                input.delivered as f64 / input.delivery_secs
            } else {
                0.0
            },
            redis_cpu_secs: primaries_cpu + replicas_cpu,
            primaries_cpu_secs: primaries_cpu,
            replicas_cpu_secs: replicas_cpu,
            primaries_cpu_secs_per_1k_pub: per_1k(primaries_cpu),
            replicas_cpu_secs_per_1k_pub: per_1k(replicas_cpu),
            primaries_busy_cpu_secs_per_1k_pub: busy_sum(false),
            replicas_busy_cpu_secs_per_1k_pub: busy_sum(true),
            gateways_cpu_secs_per_1k_pub: per_1k(gw_cpu),
            cpu_spread,
            share_spread,
            redis_bound_pub_per_sec: bound,
            ok,
            input,
        }
    }

    fn label(&self) -> String {
        match self.topology {
            Topo::Single => "one redis-server".into(),
            Topo::Cluster => format!(
                "Redis Cluster, {} primaries + {} replicas",
                self.primaries().count(),
                self.replicas().count()
            ),
        }
    }

    fn primaries(&self) -> impl Iterator<Item = &RedisFig> {
        self.input.redis.iter().filter(|r| r.role != "replica")
    }

    fn replicas(&self) -> impl Iterator<Item = &RedisFig> {
        self.input.redis.iter().filter(|r| r.role == "replica")
    }
}

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

    fn header(&self) -> String {
        let p = &self.params;
        format!(
            "{} channels{}, {} subscribers per node on every channel, 3 gateway nodes, {} publish ({} publishers per node x {} in flight, {} B, {}), {} s per topology",
            p.channels,
            if p.history { " with history" } else { "" },
            p.subscribers_per_node,
            p.via,
            p.publishers_per_node,
            p.window,
            p.payload,
            if p.rate > 0.0 {
                format!("{} publications/s", n0(p.rate))
            } else {
                "flat out".into()
            },
            p.duration_secs
        )
    }

    /// The one-screen summary.
    pub fn summary(&self) -> String {
        let mut s = format!("shard-spread: {}\n", self.header());
        for ph in self.phases() {
            let i = &ph.input;
            s += &format!("{}:\n", ph.label());
            s += &format!(
                "  published {} in {:.1} s = {:.0}/s ({} refused {:?}); publish reply {}\n",
                i.published,
                i.publish_secs,
                ph.publications_per_sec,
                i.refused,
                i.publish_errors,
                pct(&i.publish_rtt)
            );
            s += &format!(
                "  delivered {} of {} (= published x {} subscribers; short {}, extra {}, dropped {:?}) = {:.0} deliveries/s; latency {}\n",
                i.delivered,
                i.expected_deliveries,
                i.connected,
                i.shortfall,
                i.extra,
                i.drops,
                ph.deliveries_per_sec,
                pct(&i.latency)
            );
            for r in &i.redis {
                s += &format!(
                    "  redis :{} {:<8} {:>6.2} s CPU = {:.4} s per 1,000 publications ({:.4} above idle {:.3} s/s){}{}\n",
                    r.port,
                    r.role,
                    r.cpu_secs,
                    r.cpu_secs_per_1k_pub,
                    r.busy_cpu_secs_per_1k_pub,
                    r.idle_cpu_per_sec,
                    r.channels
                        .map(|c| format!(", {c} channels"))
                        .unwrap_or_default(),
                    r.publish_share
                        .map(|x| format!(", {:.1}% of the publish calls", x * 100.0))
                        .unwrap_or_default()
                );
            }
            if ph.topology == Topo::Cluster {
                s += &format!(
                    "  primaries {:.2} s ({:.4} s per 1,000), replicas {:.2} s; spread max/min CPU {} (publish calls {})\n",
                    ph.primaries_cpu_secs,
                    ph.primaries_cpu_secs_per_1k_pub,
                    ph.replicas_cpu_secs,
                    ph.cpu_spread.map_or("-".into(), |x| format!("{x:.2}x")),
                    ph.share_spread.map_or("-".into(), |x| format!("{x:.2}x")),
                );
            }
            s += &format!(
                "  gateways {} s CPU ({:.4} s per 1,000); load generator {:.2} s; window {:.1} s: {}\n",
                i.gateways
                    .iter()
                    .map(|g| format!("{:.2}", g.cpu_secs))
                    .collect::<Vec<_>>()
                    .join(" / "),
                ph.gateways_cpu_secs_per_1k_pub,
                i.loadtest_cpu_secs,
                i.window_secs,
                if ph.ok { "OK" } else { "NOT OK" }
            );
        }
        if let Some(c) = &self.comparison {
            s += &format!(
                "Redis CPU per 1,000 publications: single {:.4} s, primaries summed {:.4} s (x{:.2}), with replicas {:.4} s; above idle: single {:.4} s, primaries {:.4} s\n",
                c.single_cpu_secs_per_1k_pub,
                c.primaries_cpu_secs_per_1k_pub,
                c.primaries_over_single,
                c.cluster_cpu_secs_per_1k_pub,
                c.single_busy_cpu_secs_per_1k_pub,
                c.primaries_busy_cpu_secs_per_1k_pub
            );
            s += &format!(
                "Redis-bound publications/s (first primary to fill a core of its own): single {}, cluster {} (x{})\n",
                opt0(c.single_bound_pub_per_sec),
                opt0(c.cluster_bound_pub_per_sec),
                c.bound_ratio.map_or("-".into(), |x| format!("{x:.2}"))
            );
        }
        for f in &self.failures {
            s += &format!("FAILED {f}\n");
        }
        s += if self.ok {
            "shard-spread: OK"
        } else {
            "shard-spread: NOT OK"
        };
        s
    }

    /// The markdown of the results file.
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut s = format!(
            "## shard-spread {}\n\nCommit {}, {} ({} cores), kernel {}; load average before {}, after {}; {:.0} s. {}.\n\n",
            self.date,
            self.commit,
            m["cpu"].as_str().unwrap_or("?"),
            m["cores"],
            m["kernel"].as_str().unwrap_or("?"),
            self.load_before,
            self.load_after,
            self.duration_secs,
            self.header()
        );
        s += "| | ";
        s += &self
            .phases()
            .map(Phase::label)
            .collect::<Vec<_>>()
            .join(" | ");
        s += " |\n|---|";
        s += &self.phases().map(|_| "---|").collect::<String>();
        s += "\n";
        let row = |name: &str, f: &dyn Fn(&Phase) -> String| -> String {
            format!(
                "| {name} | {} |\n",
                self.phases().map(f).collect::<Vec<_>>().join(" | ")
            )
        };
        s += &row("publications/s accepted", &|p| {
            format!(
                "{} ({} in {:.1} s, {} refused)",
                n0(p.publications_per_sec),
                n0(p.input.published as f64),
                p.input.publish_secs,
                p.input.refused
            )
        });
        s += &row("deliveries/s", &|p| n0(p.deliveries_per_sec));
        s += &row("deliveries / publications x subscribers", &|p| {
            format!(
                "{} / {} (short {}, extra {}, dropped {})",
                n0(p.input.delivered as f64),
                n0(p.input.expected_deliveries as f64),
                p.input.shortfall,
                p.input.extra,
                p.input.drops.values().sum::<u64>()
            )
        });
        s += &row("latency p50 / p99", &|p| {
            format!(
                "{:.1} / {:.1} ms",
                p.input.latency.p50_ms, p.input.latency.p99_ms
            )
        });
        s += &row("Redis CPU s (primaries; replicas)", &|p| {
            let pr: Vec<String> = p
                .primaries()
                .map(|r| format!("{:.2}", r.cpu_secs))
                .collect();
            let rp: Vec<String> = p.replicas().map(|r| format!("{:.2}", r.cpu_secs)).collect();
            if rp.is_empty() {
                pr.join(" / ")
            } else {
                format!("{}; {}", pr.join(" / "), rp.join(" / "))
            }
        });
        s += &row("Redis CPU s per 1,000 publications", &|p| {
            let pr: Vec<String> = p
                .primaries()
                .map(|r| format!("{:.4}", r.cpu_secs_per_1k_pub))
                .collect();
            if p.topology == Topo::Cluster {
                format!(
                    "{} (sum {:.4}; replicas {:.4})",
                    pr.join(" / "),
                    p.primaries_cpu_secs_per_1k_pub,
                    p.replicas_cpu_secs_per_1k_pub
                )
            } else {
                pr.join(" / ")
            }
        });
        s += &row("... above idle (idle CPU s/s)", &|p| {
            p.primaries()
                .map(|r| {
                    format!(
                        "{:.4} ({:.3})",
                        r.busy_cpu_secs_per_1k_pub, r.idle_cpu_per_sec
                    )
                })
                .collect::<Vec<_>>()
                .join(" / ")
        });
        s += &row("primaries' CPU spread (max/min)", &|p| {
            p.cpu_spread.map_or("-".into(), |x| format!("{x:.2}x"))
        });
        s += &row("share of publish calls (channels)", &|p| {
            p.primaries()
                .map(|r| {
                    format!(
                        "{}{}",
                        r.publish_share
                            .map_or("-".into(), |x| format!("{:.1}%", x * 100.0)),
                        r.channels.map(|c| format!(" ({c})")).unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join(" / ")
        });
        s += &row("gateways' CPU s", &|p| {
            format!(
                "{} ({:.4} s per 1,000)",
                p.input
                    .gateways
                    .iter()
                    .map(|g| format!("{:.2}", g.cpu_secs))
                    .collect::<Vec<_>>()
                    .join(" / "),
                p.gateways_cpu_secs_per_1k_pub
            )
        });
        s += &row("load generator CPU s", &|p| {
            format!("{:.2}", p.input.loadtest_cpu_secs)
        });
        s += &row("Redis-bound publications/s", &|p| {
            opt0(p.redis_bound_pub_per_sec)
        });
        s += &row("checks", &|p| {
            if p.ok {
                "OK".into()
            } else {
                "NOT OK".into()
            }
        });
        if let Some(c) = &self.comparison {
            s += &format!(
                "\nRedis CPU per 1,000 publications: one Redis {:.4} s; the primaries together {:.4} s (x{:.2}); with the replicas {:.4} s; above idle {:.4} s and {:.4} s. \
                 With each Redis process on a core of its own, the first to fill its core would do so at {} publications/s on one Redis and {} on the cluster (x{}).\n",
                c.single_cpu_secs_per_1k_pub,
                c.primaries_cpu_secs_per_1k_pub,
                c.primaries_over_single,
                c.cluster_cpu_secs_per_1k_pub,
                c.single_busy_cpu_secs_per_1k_pub,
                c.primaries_busy_cpu_secs_per_1k_pub,
                opt0(c.single_bound_pub_per_sec),
                opt0(c.cluster_bound_pub_per_sec),
                c.bound_ratio.map_or("-".into(), |x| format!("{x:.2}"))
            );
        }
        if !self.failures.is_empty() {
            s += "\nFailures:\n\n";
            for f in &self.failures {
                s += &format!("- {f}\n");
            }
        }
        s
    }
}

fn pct(l: &Latency) -> String {
    format!("p50 {:.1} ms, p99 {:.1} ms", l.p50_ms, l.p99_ms)
}

fn opt0(v: Option<f64>) -> String {
    v.map_or("-".into(), n0)
}

/// `x` rounded, with thousands separators (`12,345`).
fn n0(x: f64) -> String {
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < -0.5 {
        out.insert(0, '-');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(role: &str, cpu: f64, calls: u64) -> RedisFig {
        RedisFig {
            port: 1,
            pid: 1,
            role: role.into(),
            primary_port: None,
            channels: None,
            cpu_secs: cpu,
            cpu_secs_per_1k_pub: 0.0,
            idle_cpu_per_sec: 0.0,
            busy_cpu_secs_per_1k_pub: cpu / 4.0,
            publish_calls: calls,
            publish_share: None,
            counters: Counters::default(),
        }
    }

    #[test]
    fn spread_and_shares() {
        let mut redis = vec![
            fig("primary", 1.0, 100),
            fig("primary", 1.5, 100),
            fig("primary", 2.0, 200),
            fig("replica", 0.5, 100),
        ];
        fill_shares(&mut redis);
        assert_eq!(redis[2].publish_share, Some(0.5));
        assert_eq!(redis[3].publish_share, None);
        let input = PhaseIn {
            subscribers: 1,
            connected: 1,
            subscribe_errors: vec![],
            lost_subscribers: 0,
            channels: 1,
            warmup_expected: 1,
            warmup_delivered: 1,
            publishers: 1,
            published: 4000,
            refused: 0,
            publish_errors: BTreeMap::new(),
            publish_secs: 2.0,
            window_secs: 2.0,
            delivered: 4000,
            expected_deliveries: 4000,
            shortfall: 0,
            extra: 0,
            unexpected: 0,
            short_pairs: 0,
            delivery_secs: 2.0,
            drops: BTreeMap::new(),
            latency: Latency::default(),
            publish_rtt: Latency::default(),
            redis,
            gateways: vec![],
            loadtest_cpu_secs: 0.0,
        };
        let p = Phase::new(Topo::Cluster, 2.0, input.clone());
        assert!(!Phase::new(Topo::Cluster, 1.5, input).ok);
        assert_eq!(p.cpu_spread, Some(2.0));
        assert_eq!(p.share_spread, Some(2.0));
        assert!((p.primaries_cpu_secs_per_1k_pub - 1.125).abs() < 1e-9);
        assert_eq!(p.redis_bound_pub_per_sec, Some(2000.0));
        assert_eq!(n0(1234567.4), "1,234,567");
        assert_eq!(n0(999.0), "999");
        assert!(p.ok);
        let v = serde_json::to_value(&p).unwrap();
        let back: Phase = serde_json::from_value(v).unwrap();
        assert_eq!(back.input.published, 4000);
    }
}
