//! One phase's report: what it measured per process ([`RedisFig`],
//! [`ProcFig`]) and as a whole ([`PhaseIn`]), and the figures derived from
//! that ([`Phase`]: rates, CPU per 1,000 publications, the primaries'
//! spread, the checks).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::common::Latency;
use crate::spread::options::Topo;
use crate::spread::redis::Counters;

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
pub(in crate::spread) fn fill_shares(figs: &mut [RedisFig]) {
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
    pub(in crate::spread) fn new(topology: Topo, max_spread: f64, input: PhaseIn) -> Phase {
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

    pub(super) fn primaries(&self) -> impl Iterator<Item = &RedisFig> {
        self.input.redis.iter().filter(|r| r.role != "replica")
    }

    pub(super) fn replicas(&self) -> impl Iterator<Item = &RedisFig> {
        self.input.redis.iter().filter(|r| r.role == "replica")
    }
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
        assert!(p.ok);
        let v = serde_json::to_value(&p).unwrap();
        let back: Phase = serde_json::from_value(v).unwrap();
        assert_eq!(back.input.published, 4000);
    }
}
