//! `broadcast-rtt`: the Hashrocket websocket-shootout method. Clients are
//! added in steps; at each step the parent sends broadcasts, `in_flight`
//! at a time, and measures each one's round trip: from just before it is
//! sent until the last client has it (every worker reports when all of its
//! live clients got it). The run stops at the first step whose p95 passes
//! the bound; the result is the largest client count under the bound.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::cli::{shares, ClientArgs};
use crate::common::{now_us, pad};
use crate::idle::{collect_connected_each, latency_of, sum_connected, sum_stopped};
use crate::worker::{Cmd, Ev, Group, Mode, Pool};

/// How a broadcast is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BcastVia {
    /// `POST /api/broadcast` (every connection of the cluster).
    Broadcast,
    /// `POST /api/publish` to one channel every client subscribes to.
    Publish,
}

/// Options of `broadcast-rtt`.
#[derive(Debug, Clone, Args)]
pub struct RttArgs {
    /// Clients added per step.
    #[arg(long, default_value_t = 1000)]
    pub step: u64,
    /// Stop after the step that reaches this many clients.
    #[arg(long, default_value_t = 19_000)]
    pub max_clients: u64,
    /// Broadcasts measured per step.
    #[arg(long, default_value_t = 20)]
    pub samples: u64,
    /// Broadcasts in flight at once.
    #[arg(long, default_value_t = 4)]
    pub in_flight: usize,
    /// p95 bound, ms (Hashrocket's: 500).
    #[arg(long, default_value_t = 500.0)]
    pub bound_ms: f64,
    /// How to send the broadcast.
    #[arg(long, value_enum, default_value_t = BcastVia::Broadcast)]
    pub via: BcastVia,
    /// Channel for `--via publish`.
    #[arg(long, default_value = "bcast:all")]
    pub channel: String,
    /// Payload size, bytes.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// A broadcast not complete after this long fails the step, s.
    #[arg(long, default_value_t = 30)]
    pub sample_timeout_secs: u64,
    /// Shared client options.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// One step.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Live clients during the step.
    pub clients: u64,
    /// Clients that failed to connect (cumulative).
    pub connect_failed: u64,
    /// Broadcasts completed.
    pub samples: u64,
    /// Broadcasts that did not complete in time or could not be sent.
    pub failed_samples: u64,
    /// Round trip, ms.
    pub p50_ms: f64,
    /// Round trip, ms.
    pub p95_ms: f64,
    /// Round trip, ms.
    pub max_ms: f64,
    /// p95 within the bound and nothing failed.
    pub under_bound: bool,
}

/// The `broadcast-rtt` report.
#[derive(Debug, Clone, Serialize)]
pub struct RttReport {
    /// "broadcast-rtt".
    pub scenario: &'static str,
    /// Gateways.
    pub nodes: usize,
    /// p95 bound, ms.
    pub bound_ms: f64,
    /// Broadcast path.
    pub via: BcastVia,
    /// Broadcasts in flight.
    pub in_flight: usize,
    /// Every step run.
    pub steps: Vec<Step>,
    /// Largest client count whose p95 was under the bound.
    pub max_clients_under_bound: u64,
    /// Why the run stopped.
    pub stopped_because: String,
    /// Connect failures by kind.
    pub connect_errors: BTreeMap<String, u64>,
    /// One connect failure.
    pub sample_error: Option<String>,
    /// Client setup latency over the whole run.
    pub setup_latency: crate::common::Latency,
    /// Clients that lost their connection.
    pub dropped: u64,
    /// How they ended.
    pub closes: BTreeMap<String, u64>,
}

impl RttReport {
    /// Human summary.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "broadcast-rtt ({:?}, {} in flight bound p95 <= {} ms):\n  clients   p50 ms   p95 ms   max ms  failed\n",
            self.via, self.in_flight, self.bound_ms
        );
        for st in &self.steps {
            s += &format!(
                "  {:>7} {:>8.1} {:>8.1} {:>8.1} {:>7}{}\n",
                st.clients,
                st.p50_ms,
                st.p95_ms,
                st.max_ms,
                st.failed_samples,
                if st.under_bound { "" } else { "  <- over" }
            );
        }
        s += &format!(
            "  largest client count under the bound: {} (stopped: {}); dropped {} {:?}",
            self.max_clients_under_bound, self.stopped_because, self.dropped, self.closes
        );
        s
    }
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Runs `broadcast-rtt`.
pub async fn run(args: &RttArgs) -> Result<RttReport> {
    args.client.validate()?;
    if args.step == 0 || args.max_clients == 0 || args.samples == 0 {
        bail!("--step, --max-clients and --samples must be > 0");
    }
    let groups = match args.via {
        BcastVia::Broadcast => Vec::new(),
        BcastVia::Publish => vec![Group {
            prefix: args.channel.clone(),
            count: 1,
        }],
    };
    let channel = format!("{}0", args.channel);
    let specs = args
        .client
        .worker_specs(args.max_clients, "rtt", groups, |_| Mode::Bcast);
    let mut pool = Pool::spawn(&specs, args.client.threads).await?;
    let http = args.client.http()?;
    let api = args.client.api_bases()?;
    let mut steps = Vec::new();
    let mut best = 0;
    let mut stopped_because = String::from("reached --max-clients");
    let mut next_id = 1u64;
    let mut target = 0;
    let mut last_connect = Default::default();
    let sample_timeout = Duration::from_secs(args.sample_timeout_secs);
    while target < args.max_clients {
        target = (target + args.step).min(args.max_clients);
        for (w, upto) in shares(target, pool.workers()).into_iter().enumerate() {
            pool.send(w, &Cmd::Connect { upto }).await?;
        }
        let each = collect_connected_each(
            &mut pool,
            target,
            &args.client,
            &format!("{target} clients"),
        )
        .await?;
        let connected = sum_connected(&each);
        last_connect = connected.clone();
        let live_total = connected.live;
        let live_by_worker: HashMap<usize, u64> =
            each.iter().enumerate().map(|(w, r)| (w, r.live)).collect();
        // Round trips.
        let (post_tx, mut post_rx) = mpsc::unbounded_channel::<(u64, bool)>();
        let mut in_flight: HashMap<u64, (u64, HashSet<usize>, u64)> = HashMap::new();
        let mut rtts = Vec::new();
        let mut failed = 0u64;
        let mut sent = 0u64;
        let bar = args.client.bar(args.samples, &format!("rtt @{live_total}"));
        while (sent < args.samples || !in_flight.is_empty()) && failed == 0 {
            while in_flight.len() < args.in_flight && sent < args.samples {
                let id = next_id;
                next_id += 1;
                sent += 1;
                let send_us = now_us();
                let data = pad(format!("b:{id}:{send_us}:"), args.payload);
                let (url, body) = match args.via {
                    BcastVia::Broadcast => (
                        format!("{}/api/broadcast", api[0]),
                        serde_json::json!({ "data": data }),
                    ),
                    BcastVia::Publish => (
                        format!("{}/api/publish", api[0]),
                        serde_json::json!({ "channel": channel, "data": data }),
                    ),
                };
                let waiting: HashSet<usize> = live_by_worker
                    .iter()
                    .filter(|(_, &l)| l > 0)
                    .map(|(&w, _)| w)
                    .collect();
                in_flight.insert(id, (send_us, waiting, 0));
                let http = http.clone();
                let tx = post_tx.clone();
                tokio::spawn(async move {
                    let ok = matches!(http.post(&url).json(&body).send().await, Ok(r) if r.status().is_success());
                    let _ = tx.send((id, ok));
                });
            }
            tokio::select! {
                ev = pool.next(sample_timeout) => {
                    match ev {
                        Ok((w, Ev::Bcast { id, last_us, .. })) => {
                            let mut done = None;
                            if let Some((send_us, waiting, last)) = in_flight.get_mut(&id) {
                                waiting.remove(&w);
                                *last = (*last).max(last_us);
                                if waiting.is_empty() {
                                    done = Some(last.saturating_sub(*send_us));
                                }
                            }
                            if let Some(us) = done {
                                in_flight.remove(&id);
                                rtts.push(us as f64 / 1000.0);
                                bar.inc(1);
                            }
                        }
                        Ok((w, Ev::Exited)) => bail!("worker {w} exited during the run"),
                        Ok(_) => {}
                        Err(e) => {
                            eprintln!("broadcast-rtt: {e:#}");
                            failed += in_flight.len() as u64;
                            in_flight.clear();
                        }
                    }
                }
                Some((id, ok)) = post_rx.recv() => {
                    if !ok {
                        failed += 1;
                        in_flight.remove(&id);
                    }
                }
            }
        }
        bar.finish_and_clear();
        rtts.sort_by(f64::total_cmp);
        let p95 = pct(&rtts, 0.95);
        let under = failed == 0 && p95 <= args.bound_ms && live_total == target;
        steps.push(Step {
            clients: live_total,
            connect_failed: connected.failed,
            samples: rtts.len() as u64,
            failed_samples: failed,
            p50_ms: pct(&rtts, 0.50),
            p95_ms: p95,
            max_ms: rtts.last().copied().unwrap_or(0.0),
            under_bound: under,
        });
        if !args.client.no_progress {
            eprintln!(
                "  {live_total:>6} clients: p50 {:.1} ms, p95 {p95:.1} ms, max {:.1} ms{}",
                pct(&rtts, 0.5),
                rtts.last().copied().unwrap_or(0.0),
                if failed > 0 {
                    format!(", {failed} failed")
                } else {
                    String::new()
                }
            );
        }
        if under {
            best = live_total;
        } else {
            stopped_because = if live_total < target {
                format!(
                    "only {live_total} of {target} clients connected ({:?})",
                    connected.errors
                )
            } else if failed > 0 {
                format!("{failed} broadcast(s) failed or timed out")
            } else {
                format!("p95 {p95:.1} ms passed the bound")
            };
            break;
        }
    }
    let stopped = pool.stop().await?;
    let (dropped, closes) = sum_stopped(&stopped);
    Ok(RttReport {
        scenario: "broadcast-rtt",
        nodes: args.client.urls.len(),
        bound_ms: args.bound_ms,
        via: args.via,
        in_flight: args.in_flight,
        steps,
        max_clients_under_bound: best,
        stopped_because,
        connect_errors: last_connect.errors.clone(),
        sample_error: last_connect.sample_error.clone(),
        setup_latency: latency_of(&last_connect.setup),
        dropped,
        closes,
    })
}
