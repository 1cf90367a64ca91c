//! The figures of one phase from what it measured: the subscribers' counts
//! held against the accepted publications, and every process's CPU (and
//! each Redis's `INFO` counters) over the window, per 1,000 publications.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use super::load::SubResult;
use super::options::SpreadArgs;
use super::redis::{channel_slot, Counters};
use super::report::{fill_shares, ProcFig, RedisFig};
use super::topology::RedisSide;
use crate::suite::nodes::Proc;

/// What the subscribers received, against the publications accepted on
/// each channel.
pub(super) struct Tally {
    /// Deliveries over every subscriber and channel.
    pub(super) delivered: u64,
    /// Per subscriber and channel: accepted - got.
    pub(super) shortfall: u64,
    /// Per subscriber and channel: got - accepted.
    pub(super) extra: u64,
    /// Deliveries on an unknown channel index.
    pub(super) unexpected: u64,
    /// (subscriber, channel) pairs with a shortfall.
    pub(super) short_pairs: u64,
    /// Publish-to-receive latency over every subscriber, us.
    pub(super) latency: Histogram<u64>,
    /// Subscribers that lost their connection, by how.
    pub(super) drops: BTreeMap<String, u64>,
}

/// Sums the subscribers' `results` against `accepted` (per channel index).
pub(super) fn tally(results: &[SubResult], accepted: &[u64]) -> Tally {
    let (mut delivered, mut shortfall, mut extra, mut unexpected, mut short_pairs) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut hist = crate::common::new_hist();
    let mut drops: BTreeMap<String, u64> = BTreeMap::new();
    for r in results {
        unexpected += r.unexpected;
        let _ = hist.add(&r.latency);
        if let Some(d) = &r.dropped {
            *drops.entry(d.clone()).or_default() += 1;
        }
        for (c, &got) in r.counts.iter().enumerate() {
            let acc = accepted.get(c).copied().unwrap_or(0);
            delivered += got;
            shortfall += acc.saturating_sub(got);
            extra += got.saturating_sub(acc);
            short_pairs += u64::from(got < acc);
        }
    }
    Tally {
        delivered,
        shortfall,
        extra,
        unexpected,
        short_pairs,
        latency: hist,
        drops,
    }
}

/// The samples of a window. `cpu` and `idle` are per process, in this
/// order: every Redis process (as `redis`), every gateway, then this load
/// generator.
pub(super) struct Window {
    /// (port, pid) of every Redis process.
    pub(super) redis: Vec<(u16, u32)>,
    /// CPU seconds per second in the idle sample.
    pub(super) idle: Vec<f64>,
    /// CPU seconds over the window.
    pub(super) cpu: Vec<f64>,
    /// Each Redis's INFO counters at the start of the window.
    pub(super) before: Vec<Counters>,
    /// The same at its end.
    pub(super) after: Vec<Counters>,
    /// The window, s.
    pub(super) secs: f64,
    /// Publications accepted in it.
    pub(super) published: u64,
}

impl Window {
    /// `secs` of CPU per 1,000 accepted publications.
    fn per_1k(&self, secs: f64) -> f64 {
        if self.published > 0 {
            secs * 1000.0 / self.published as f64
        } else {
            0.0
        }
    }

    /// Every Redis process's figures, with the primaries' shares of the
    /// publish calls.
    pub(super) fn redis_figs(&self, args: &SpreadArgs, side: &RedisSide) -> Vec<RedisFig> {
        let (cpu, idle, window_secs) = (&self.cpu, &self.idle, self.secs);
        let mut redis_figs = Vec::new();
        for (i, &(port, pid)) in self.redis.iter().enumerate() {
            let delta = self.after[i].since(&self.before[i]);
            let (role, primary_port, channels) = match side {
                RedisSide::Single { .. } => ("single", None, Some(args.channels)),
                RedisSide::Cluster(c) => {
                    let me = c.node(port);
                    if me.is_some_and(|n| n.primary) {
                        let owned = (0..args.channels)
                            .filter(|&k| {
                                c.primary_of(channel_slot(&format!("{}{k}", args.prefix())))
                                    == Some(port)
                            })
                            .count() as u64;
                        ("primary", None, Some(owned))
                    } else {
                        let p = me.and_then(|n| {
                            c.nodes
                                .iter()
                                .find(|x| x.id == n.primary_id)
                                .map(|x| x.port)
                        });
                        ("replica", p, None)
                    }
                }
            };
            redis_figs.push(RedisFig {
                port,
                pid,
                role: role.into(),
                primary_port,
                channels,
                cpu_secs: cpu[i],
                cpu_secs_per_1k_pub: self.per_1k(cpu[i]),
                idle_cpu_per_sec: idle[i],
                busy_cpu_secs_per_1k_pub: self.per_1k((cpu[i] - idle[i] * window_secs).max(0.0)),
                publish_calls: if args.history {
                    delta.evalsha
                } else if matches!(side, RedisSide::Single { .. }) {
                    delta.publish
                } else {
                    delta.spublish
                },
                publish_share: None,
                counters: delta,
            });
        }
        fill_shares(&mut redis_figs);
        redis_figs
    }

    /// Every gateway's figures.
    pub(super) fn gateway_figs(&self, gateways: &[Proc]) -> Vec<ProcFig> {
        let n_redis = self.redis.len();
        gateways
            .iter()
            .enumerate()
            .map(|(i, g)| ProcFig {
                name: g.name.clone(),
                pid: g.pid(),
                cpu_secs: self.cpu[n_redis + i],
                cpu_secs_per_1k_pub: self.per_1k(self.cpu[n_redis + i]),
                idle_cpu_per_sec: self.idle[n_redis + i],
            })
            .collect()
    }

    /// This load generator's CPU seconds over the window.
    pub(super) fn loadtest_cpu(&self) -> f64 {
        self.cpu.last().copied().unwrap_or(0.0)
    }
}
