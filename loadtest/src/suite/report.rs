//! The targets table of a run and its markdown: one row per target, each
//! built from the results JSON alone (so `--table-from` can rebuild the
//! table of an earlier run), with the target, the measured value, the
//! ceiling of the same run and the verdict.
//!
//! Invariants: a row whose scenario did not run (or failed) says `-` /
//! `not run` rather than failing; the rows come in the order of [`ROWS`],
//! which is the report's order, not the order the scenarios run in.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

/// One row of the targets table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    scenario: String,
    target: String,
    measured: String,
    ceiling: String,
    verdict: String,
}

pub(super) struct Table {
    pub(super) rows: Vec<Row>,
}

fn f(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_f64()
}

/// A number for a row's label, `N` when the scenario did not run.
fn label(v: Option<f64>) -> String {
    v.map_or("N".into(), |v| format!("{v:.0}"))
}

fn verdict(pass: Option<bool>) -> String {
    match pass {
        Some(true) => "met".into(),
        Some(false) => "missed".into(),
        None => "not run".into(),
    }
}

/// The results of a run, by key.
struct Results<'a> {
    r: &'a BTreeMap<String, Value>,
    none: Value,
}

impl Results<'_> {
    /// The result of `key` (`null` when it did not run).
    fn get(&self, key: &str) -> &Value {
        self.r.get(key).unwrap_or(&self.none)
    }

    /// Deliveries/s of the batched fan-out probe.
    fn ceiling_batched(&self) -> Option<f64> {
        f(self.get("ceiling_fanout_batched"), &["deliveries_per_sec"])
    }
}

/// `measured` of a fan-out row: rate, loss and p99.
fn fanout_measured(v: &Value, rate: Option<f64>) -> String {
    rate.map_or("-".into(), |r| {
        format!(
            "{:.2} M/s, lost {}, p99 {:.0} ms",
            r / 1e6,
            f(v, &["lost"]).unwrap_or(0.0),
            f(v, &["latency", "p99_ms"]).unwrap_or(0.0)
        )
    })
}

/// `ceiling` of a fan-out row measured against the batched probe only.
fn of_batched(rate: Option<f64>, ceil_b: Option<f64>) -> String {
    match (rate, ceil_b) {
        (Some(a), Some(c)) => format!("{:.0}% of the batched probe", a / c * 100.0),
        _ => "-".into(),
    }
}

/// The rows of the targets table, in the report's order.
const ROWS: [fn(&Results) -> Row; 11] = [
    idle_rss,
    idle_cpu,
    fanout,
    fanout_ws,
    pusher_idle,
    pusher_fanout,
    cluster_fanout,
    latency,
    rtt,
    churn,
    idle_connects,
];

pub(super) fn table(r: &BTreeMap<String, Value>) -> Table {
    let results = Results {
        r,
        none: Value::Null,
    };
    Table {
        rows: ROWS.iter().map(|row| row(&results)).collect(),
    }
}

/// RSS per idle connection, against the bare axum idle probe.
fn idle_rss(r: &Results) -> Row {
    let idle = r.get("idle");
    let ceil_idle = f(r.get("ceiling_idle"), &["rss_per_conn_bytes"]);
    let rss = f(idle, &["rss_per_conn_bytes"]);
    Row {
        scenario: format!(
            "RSS per idle connection, {} on one node (2 channels, 1 with presence)",
            label(f(idle, &["connected"]))
        ),
        target: "<= 6 KiB".into(),
        measured: rss.map_or("-".into(), |b| format!("{:.2} KiB", b / 1024.0)),
        ceiling: match (rss, ceil_idle) {
            (Some(a), Some(c)) => format!(
                "bare axum 4 KiB buffer {:.2} KiB; x{:.2}",
                c / 1024.0,
                a / c
            ),
            _ => "-".into(),
        },
        verdict: verdict(rss.map(|b| b <= 6.0 * 1024.0 && idle["ok"] == true)),
    }
}

/// Idle CPU per 10k connections.
fn idle_cpu(r: &Results) -> Row {
    let idle = r.get("idle");
    let cpu = f(idle, &["cpu_pct_per_10k"]);
    Row {
        scenario: format!(
            "idle CPU over {} s (pings every 25 s, presence refresh)",
            label(f(idle, &["window_secs"]))
        ),
        target: "<= 1% of a core per 10k".into(),
        measured: cpu.map_or("-".into(), |c| format!("{c:.3}% per 10k")),
        ceiling: "-".into(),
        verdict: verdict(cpu.map(|c| c <= 1.0)),
    }
}

/// One-node flat-out fan-out, against the fan-out probes.
fn fanout(r: &Results) -> Row {
    let fan = r.get("fanout");
    let ceil_b = r.ceiling_batched();
    let ceil_u = f(r.get("ceiling_fanout_unbatched"), &["deliveries_per_sec"]);
    let fr = f(fan, &["deliveries_per_sec"]);
    Row {
        scenario: format!(
            "fan-out flat out, one node, {} subscribers of one channel, 64 B",
            label(f(fan, &["connected"]))
        ),
        target: ">= 60% of the batched probe".into(),
        measured: fanout_measured(fan, fr),
        ceiling: match (fr, ceil_b) {
            (Some(a), Some(c)) => format!(
                "batched {:.2} M/s{}; {:.0}%",
                c / 1e6,
                ceil_u
                    .map(|u| format!(", unbatched {:.2} M/s", u / 1e6))
                    .unwrap_or_default(),
                a / c * 100.0
            ),
            _ => "-".into(),
        },
        verdict: verdict(match (fr, ceil_b) {
            (Some(a), Some(c)) => Some(a / c >= 0.6 && fan["ok"] == true),
            _ => None,
        }),
    }
}

/// The same over the WebSocket publish op (informative).
fn fanout_ws(r: &Results) -> Row {
    let ceil_b = r.ceiling_batched();
    let fws = r.get("fanout_ws");
    let wr = f(fws, &["deliveries_per_sec"]);
    Row {
        scenario: format!(
            "same, published with the WebSocket publish op (256 in flight), {} subscribers",
            label(f(fws, &["connected"]))
        ),
        target: "(informative)".into(),
        measured: fanout_measured(fws, wr),
        ceiling: of_batched(wr, ceil_b),
        verdict: "-".into(),
    }
}

/// RSS per idle Pusher connection, beside v1's (informative, issue 14).
fn pusher_idle(r: &Results) -> Row {
    let pi = r.get("pusher_idle");
    let rss = f(pi, &["rss_per_conn_bytes"]);
    let v1 = f(r.get("idle"), &["rss_per_conn_bytes"]);
    Row {
        scenario: format!(
            "RSS per idle connection over the Pusher protocol, {} on one node (a public and a presence channel)",
            label(f(pi, &["connected"]))
        ),
        target: "(informative)".into(),
        measured: rss.map_or("-".into(), |b| {
            format!(
                "{:.2} KiB, idle CPU {:.3}% per 10k",
                b / 1024.0,
                f(pi, &["cpu_pct_per_10k"]).unwrap_or(0.0)
            )
        }),
        ceiling: match (rss, v1) {
            (Some(a), Some(v)) => format!("v1 {:.2} KiB; x{:.2}", v / 1024.0, a / v),
            _ => "-".into(),
        },
        verdict: "-".into(),
    }
}

/// Flat-out fan-out to Pusher subscribers, REST publish (informative).
fn pusher_fanout(r: &Results) -> Row {
    let pf = r.get("pusher_fanout");
    let rate = f(pf, &["deliveries_per_sec"]);
    let v1 = f(r.get("fanout"), &["deliveries_per_sec"]);
    Row {
        scenario: format!(
            "fan-out flat out over the Pusher protocol (signed REST publish, 64 in flight), {} subscribers of one channel",
            label(f(pf, &["connected"]))
        ),
        target: "(informative)".into(),
        measured: fanout_measured(pf, rate),
        ceiling: match (rate, v1) {
            (Some(a), Some(v)) => format!("v1 {:.2} M/s; {:.0}%", v / 1e6, a / v * 100.0),
            _ => of_batched(rate, r.ceiling_batched()),
        },
        verdict: "-".into(),
    }
}

/// 3-node + Redis flat-out fan-out.
fn cluster_fanout(r: &Results) -> Row {
    let cfan = r.get("cluster_fanout");
    let ceil_b = r.ceiling_batched();
    let cr = f(cfan, &["deliveries_per_sec"]);
    Row {
        scenario: format!(
            "fan-out flat out, 3 nodes + Redis, {} subscribers of one channel",
            label(f(cfan, &["connected"]))
        ),
        target: ">= 1,000,000/s, none lost".into(),
        measured: cr.map_or("-".into(), |v| {
            format!(
                "{:.2} M/s, lost {}, dup {}, p99 {:.0} ms; {} of {} publications refused (503){}",
                v / 1e6,
                f(cfan, &["lost"]).unwrap_or(0.0),
                f(cfan, &["duplicates"]).unwrap_or(0.0),
                f(cfan, &["latency", "p99_ms"]).unwrap_or(0.0),
                f(cfan, &["refused"]).unwrap_or(0.0),
                f(cfan, &["published"]).unwrap_or(0.0) + f(cfan, &["refused"]).unwrap_or(0.0),
                match f(cfan, &["refused_delivered"]) {
                    Some(d) if d > 0.0 => format!(", {d} deliveries of them arrived anyway"),
                    _ => String::new(),
                }
            )
        }),
        ceiling: of_batched(cr, ceil_b),
        verdict: match (cr, f(cfan, &["refused"])) {
            (Some(v), Some(r)) if v >= 1e6 && cfan["ok"] == true && r > 0.0 => {
                format!("met, but {r} publications refused")
            }
            _ => verdict(cr.map(|v| v >= 1e6 && cfan["ok"] == true)),
        },
    }
}

/// Latency at a fixed rate, 3 nodes.
fn latency(r: &Results) -> Row {
    let lat = r.get("latency");
    let p50 = f(lat, &["latency", "p50_ms"]);
    let p99 = f(lat, &["latency", "p99_ms"]);
    Row {
        scenario: format!(
            "latency, {} publications/s over {} channels, 3 nodes",
            label(f(lat, &["rate"])),
            label(f(lat, &["channels"]))
        ),
        target: "p50 <= 1 ms, p99 <= 5 ms".into(),
        measured: match (p50, p99) {
            (Some(a), Some(b)) => format!(
                "p50 {a:.2} ms, p99 {b:.2} ms, p99.9 {:.2} ms, lost {}",
                f(lat, &["latency", "p999_ms"]).unwrap_or(0.0),
                f(lat, &["lost"]).unwrap_or(0.0)
            ),
            _ => "-".into(),
        },
        ceiling: "-".into(),
        verdict: match (p50, p99) {
            (Some(a), Some(b)) if lat["ok"] == true && a <= 1.0 && b > 5.0 => {
                "p50 met, p99 missed".into()
            }
            (Some(a), Some(b)) => verdict(Some(a <= 1.0 && b <= 5.0 && lat["ok"] == true)),
            _ => verdict(None),
        },
    }
}

/// Broadcast round trip, one node.
fn rtt(r: &Results) -> Row {
    let rtt = r.get("rtt");
    let best = f(rtt, &["max_clients_under_bound"]);
    let last_under = rtt["steps"]
        .as_array()
        .and_then(|s| s.iter().rev().find(|st| st["under_bound"] == true))
        .and_then(|st| st["p95_ms"].as_f64());
    Row {
        scenario: "broadcast RTT, one node (Hashrocket method, 4 in flight)".into(),
        target: "~19k clients at p95 <= 500 ms".into(),
        measured: best.map_or("-".into(), |b| {
            format!(
                "{b:.0} clients (p95 {:.0} ms); {}",
                last_under.unwrap_or(0.0),
                rtt["stopped_because"].as_str().unwrap_or("")
            )
        }),
        ceiling: "-".into(),
        verdict: verdict(best.map(|b| b >= 19_000.0)),
    }
}

/// Connects/s under churn, and the connection gauge after it.
fn churn(r: &Results) -> Row {
    let churn = r.get("churn");
    let cps = f(churn, &["connects_per_sec"]);
    Row {
        scenario: "connects/s (JWT, subscribe, presence), one node".into(),
        target: ">= 5,000".into(),
        measured: cps.map_or("-".into(), |c| {
            format!(
                "{c:.0}/s; gauge {}",
                if churn["gauge_matches"] == true {
                    "matched"
                } else {
                    "MISMATCH"
                }
            )
        }),
        ceiling: "-".into(),
        verdict: verdict(cps.map(|c| c >= 5000.0 && churn["ok"] == true)),
    }
}

/// Connect rate while the idle node fills (informative).
fn idle_connects(r: &Results) -> Row {
    let idle = r.get("idle");
    let icps = f(idle, &["connects_per_sec"]);
    Row {
        scenario: "connect rate while filling the idle node (JWT + 2 subscribes)".into(),
        target: "(informative)".into(),
        measured: icps.map_or("-".into(), |c| {
            format!(
                "{c:.0}/s, setup p99 {:.0} ms, {} SYNs dropped by the accept queue",
                f(idle, &["setup_latency", "p99_ms"]).unwrap_or(0.0),
                f(idle, &["listen_overflows"]).unwrap_or(0.0)
            )
        }),
        ceiling: "-".into(),
        verdict: "-".into(),
    }
}

pub(super) fn markdown(doc: &Value, table: &Table) -> String {
    let m = &doc["machine"];
    let mut s = format!(
        "## Benchmark results {}{}\n\nCommit {}, {} ({} cores, {} GiB), kernel {}; load average before {}, after {}; {:.0} s.\n\n",
        doc["date"].as_str().unwrap_or(""),
        if doc["quick"] == true { " (quick parameters, not comparable)" } else { "" },
        doc["commit"].as_str().unwrap_or(""),
        m["cpu"].as_str().unwrap_or("?"),
        m["cores"],
        m["mem_gib"],
        m["kernel"].as_str().unwrap_or("?"),
        doc["load_before"].as_str().unwrap_or(""),
        doc["load_after"].as_str().unwrap_or(""),
        doc["duration_secs"].as_f64().unwrap_or(0.0),
    );
    s += "| scenario | target | measured | ceiling (same run) | verdict |\n|---|---|---|---|---|\n";
    for r in &table.rows {
        s += &format!(
            "| {} | {} | {} | {} | {} |\n",
            r.scenario, r.target, r.measured, r.ceiling, r.verdict
        );
    }
    if let Some(md) = crate::spread::suite_markdown(&doc["results"]["shard_spread"]) {
        s += "\n";
        s += &md;
    }
    if let Some(fails) = doc["failures"].as_array() {
        if !fails.is_empty() {
            s += "\nFailures:\n\n";
            for f in fails {
                s += &format!("- {}\n", f.as_str().unwrap_or(""));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_handles_missing_results() {
        let t = table(&BTreeMap::new());
        assert!(t.rows.iter().all(|r| r.measured == "-" || r.verdict == "-"));
    }
}
