//! The report as text: the one-screen summary and the markdown of the
//! results file (a table with a column per phase).

use super::{Phase, PhaseIn, SpreadReport};
use crate::common::Latency;
use crate::spread::options::Topo;

impl Phase {
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
}

impl SpreadReport {
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
                    factor(ph.cpu_spread),
                    factor(ph.share_spread),
                );
            }
            s += &format!(
                "  gateways {} s CPU ({:.4} s per 1,000); load generator {:.2} s; window {:.1} s: {}\n",
                gateways_cpu(i),
                ph.gateways_cpu_secs_per_1k_pub,
                i.loadtest_cpu_secs,
                i.window_secs,
                verdict(ph.ok)
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
                ratio(c.bound_ratio)
            );
        }
        for f in &self.failures {
            s += &format!("FAILED {f}\n");
        }
        s += &format!("shard-spread: {}", verdict(self.ok));
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
        s += &format!("| | {} |\n", joined(self.phases(), " | ", Phase::label));
        s += "|---|";
        s += &self.phases().map(|_| "---|").collect::<String>();
        s += "\n";
        let row = |name: &str, f: &dyn Fn(&Phase) -> String| -> String {
            format!("| {name} | {} |\n", joined(self.phases(), " | ", f))
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
            let pr = joined(p.primaries(), " / ", |r| format!("{:.2}", r.cpu_secs));
            if p.replicas().next().is_none() {
                pr
            } else {
                let rp = joined(p.replicas(), " / ", |r| format!("{:.2}", r.cpu_secs));
                format!("{pr}; {rp}")
            }
        });
        s += &row("Redis CPU s per 1,000 publications", &|p| {
            let pr = joined(p.primaries(), " / ", |r| {
                format!("{:.4}", r.cpu_secs_per_1k_pub)
            });
            if p.topology == Topo::Cluster {
                format!(
                    "{pr} (sum {:.4}; replicas {:.4})",
                    p.primaries_cpu_secs_per_1k_pub, p.replicas_cpu_secs_per_1k_pub
                )
            } else {
                pr
            }
        });
        s += &row("... above idle (idle CPU s/s)", &|p| {
            joined(p.primaries(), " / ", |r| {
                format!(
                    "{:.4} ({:.3})",
                    r.busy_cpu_secs_per_1k_pub, r.idle_cpu_per_sec
                )
            })
        });
        s += &row("primaries' CPU spread (max/min)", &|p| factor(p.cpu_spread));
        s += &row("share of publish calls (channels)", &|p| {
            joined(p.primaries(), " / ", |r| {
                format!(
                    "{}{}",
                    r.publish_share
                        .map_or("-".into(), |x| format!("{:.1}%", x * 100.0)),
                    r.channels.map(|c| format!(" ({c})")).unwrap_or_default()
                )
            })
        });
        s += &row("gateways' CPU s", &|p| {
            format!(
                "{} ({:.4} s per 1,000)",
                gateways_cpu(&p.input),
                p.gateways_cpu_secs_per_1k_pub
            )
        });
        s += &row("load generator CPU s", &|p| {
            format!("{:.2}", p.input.loadtest_cpu_secs)
        });
        s += &row("Redis-bound publications/s", &|p| {
            opt0(p.redis_bound_pub_per_sec)
        });
        s += &row("checks", &|p| verdict(p.ok).into());
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
                ratio(c.bound_ratio)
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

/// Each of `items` as `cell` writes it, joined by `sep` (` / ` between
/// the processes of a cell, ` | ` between the cells of a table row).
fn joined<T>(items: impl IntoIterator<Item = T>, sep: &str, cell: impl Fn(T) -> String) -> String {
    items.into_iter().map(cell).collect::<Vec<_>>().join(sep)
}

/// Every gateway's CPU seconds, ` / ` between them.
fn gateways_cpu(i: &PhaseIn) -> String {
    joined(&i.gateways, " / ", |g| format!("{:.2}", g.cpu_secs))
}

/// A factor (`1.23x`), `-` when there is none.
fn factor(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{x:.2}x"))
}

/// A ratio (`1.23`), `-` when there is none.
fn ratio(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{x:.2}"))
}

/// A check's outcome.
fn verdict(ok: bool) -> &'static str {
    if ok {
        "OK"
    } else {
        "NOT OK"
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

    #[test]
    fn thousands() {
        assert_eq!(n0(1234567.4), "1,234,567");
        assert_eq!(n0(999.0), "999");
    }
}
