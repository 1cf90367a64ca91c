//! `churn`: while `hold` clients stay connected, other clients connect,
//! subscribe (presence-enabled channel), and disconnect at a rate, cycling
//! through a clean close, an abrupt FIN (no close frame) and a TCP reset.
//! Reports connects/s, and afterwards checks that the gateways'
//! `gateway_connections` gauge and the presence member lists agree with
//! the true count (the held clients still alive).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;
use tokio::time::Instant;

use crate::cli::ClientArgs;
use crate::common::{connections_gauge, hist_merge, merge_counts, new_hist, Latency};
use crate::idle::{connect_all, sum_stopped};
use crate::worker::{ChurnReport, ChurnSpec, Cmd, Ev, Group, Mode, Pool};

/// Options of `churn`.
#[derive(Debug, Clone, Args)]
pub struct ChurnArgs {
    /// Clients held open during the churn (the true count afterwards).
    #[arg(long, default_value_t = 1000)]
    pub hold: u64,
    /// Churn connects per second over all workers; 0 = as fast as
    /// --concurrency allows.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// How long to churn, s.
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Churn cycles in flight at most (over all workers).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// How long a churning client stays after its subscribe reply, ms.
    #[arg(long, default_value_t = 0)]
    pub linger_ms: u64,
    /// Worker processes for the churn.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Presence-enabled channel prefix.
    #[arg(long, default_value = "room:")]
    pub presence_prefix: String,
    /// Presence channels (client or cycle i uses `<prefix>(i % rooms)`).
    #[arg(long, default_value_t = 100)]
    pub rooms: u64,
    /// Wait at most this long for the gauge to match the true count, s.
    #[arg(long, default_value_t = 20)]
    pub settle_secs: u64,
    /// Shared client options.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The `churn` report.
#[derive(Debug, Clone, Serialize)]
pub struct ChurnOut {
    /// "churn".
    pub scenario: &'static str,
    /// Gateways.
    pub nodes: usize,
    /// Held clients asked for.
    pub hold: u64,
    /// Held clients connected.
    pub hold_connected: u64,
    /// Asked rate (0 = flat out).
    pub rate: f64,
    /// Cycles in flight at most.
    pub concurrency: usize,
    /// Cycles started.
    pub attempted: u64,
    /// Cycles that connected and subscribed.
    pub connected: u64,
    /// Cycles that failed.
    pub failed: u64,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// One failure message.
    pub sample_error: Option<String>,
    /// Churn phase, s.
    pub churn_secs: f64,
    /// Connected + subscribed cycles per second.
    pub connects_per_sec: f64,
    /// Connect + upgrade + welcome + subscribe latency.
    pub setup_latency: Latency,
    /// SYNs dropped by full accept queues during the churn (machine-wide
    /// `ListenOverflows` delta).
    pub listen_overflows: Option<u64>,
    /// Clean closes confirmed by the server's close frame.
    pub clean_closes: u64,
    /// Clean closes not confirmed in time.
    pub clean_unconfirmed: u64,
    /// FIN without close frame.
    pub fin_closes: u64,
    /// TCP resets.
    pub rst_closes: u64,
    /// Held clients alive after the churn.
    pub true_count: u64,
    /// `gateway_connections` per node at the end of the settle wait.
    pub gauge: Vec<f64>,
    /// Their sum.
    pub gauge_total: f64,
    /// The gauge matched the true count.
    pub gauge_matches: bool,
    /// How long after the churn the gauge matched, ms.
    pub gauge_settle_ms: Option<u64>,
    /// Presence members over all rooms at the end.
    pub presence_members: Option<u64>,
    /// Presence members equal the true count.
    pub presence_matches: Option<bool>,
    /// Held clients that lost their connection.
    pub dropped: u64,
    /// How they ended.
    pub closes: BTreeMap<String, u64>,
    /// Gauge (and presence) right, no failure, no held client dropped.
    pub ok: bool,
}

impl ChurnOut {
    /// Human summary.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "churn: {} cycles ({} failed) in {:.1} s = {:.0} connects/s (JWT + subscribe{}), setup {}\n",
            self.connected,
            self.failed,
            self.churn_secs,
            self.connects_per_sec,
            " + presence",
            self.setup_latency.line()
        );
        s += &format!(
            "  closes: {} clean (+{} unconfirmed), {} FIN, {} RST; held {}/{}; listen overflows {:?}\n",
            self.clean_closes,
            self.clean_unconfirmed,
            self.fin_closes,
            self.rst_closes,
            self.hold_connected,
            self.hold,
            self.listen_overflows
        );
        s += &format!(
            "  gauge {:?} = {} vs true count {}: {}{}\n",
            self.gauge,
            self.gauge_total,
            self.true_count,
            if self.gauge_matches {
                "match"
            } else {
                "MISMATCH"
            },
            self.gauge_settle_ms
                .map(|ms| format!(" (after {ms} ms)"))
                .unwrap_or_default()
        );
        if let Some(m) = self.presence_members {
            s += &format!("  presence members {m} vs true count {}\n", self.true_count);
        }
        s += &format!(
            "  dropped {} {:?}: {}",
            self.dropped,
            self.closes,
            if self.ok { "OK" } else { "NOT OK" }
        );
        if let Some(e) = &self.sample_error {
            s += &format!("\n  first error: {e}");
        }
        s
    }
}

/// Counts presence members over every room.
async fn presence_total(
    http: &reqwest::Client,
    api: &str,
    prefix: &str,
    rooms: u64,
) -> Result<u64> {
    let mut total = 0;
    for r in 0..rooms {
        let url = format!("{api}/api/channels/{prefix}{r}/presence");
        let v: serde_json::Value = http
            .get(&url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        total += v
            .get("members")
            .and_then(|m| m.as_array())
            .map_or(0, |m| m.len() as u64);
    }
    Ok(total)
}

/// Runs `churn`.
pub async fn run(args: &ChurnArgs) -> Result<ChurnOut> {
    args.client.validate()?;
    if args.duration_secs <= 0.0 {
        bail!("--duration-secs must be > 0");
    }
    let mut client = args.client.clone();
    // At least `workers` processes; holds split over them.
    let per = args.hold.div_ceil(args.workers.max(1) as u64).max(1);
    client.per_worker = client.per_worker.min(per);
    let groups = vec![Group {
        prefix: args.presence_prefix.clone(),
        count: args.rooms.max(1),
    }];
    let n_workers = crate::worker::split(args.hold, client.per_worker).len();
    let specs = client.worker_specs(args.hold, "hold", groups.clone(), |w| {
        Mode::Churn(ChurnSpec {
            rate: args.rate / n_workers as f64,
            duration_ms: (args.duration_secs * 1000.0) as u64,
            concurrency: (args.concurrency / n_workers).max(1),
            linger_ms: args.linger_ms,
            groups: groups.clone(),
            first_index: args.hold + w as u64 * 1_000_000_000,
        })
    });
    let counts: Vec<u64> = specs.iter().map(|s| s.count).collect();
    let mut pool = Pool::spawn(&specs, client.threads).await?;
    let held = connect_all(&mut pool, &counts, &client, "holding").await?;

    let overflows_before = crate::common::listen_overflows();
    pool.send_all(&Cmd::Churn).await?;
    let expect = if args.rate > 0.0 {
        (args.rate * args.duration_secs) as u64
    } else {
        0
    };
    let bar = client.bar(expect, "churning");
    let mut progress = vec![0u64; pool.workers()];
    let reports: Vec<ChurnReport> = pool
        .collect(
            Duration::from_secs_f64(args.duration_secs) + Duration::from_secs(120),
            |ev| match ev {
                Ev::Churned(r) => Some(r),
                _ => None,
            },
            |w, ev| {
                if let Ev::Progress { connected, failed } = ev {
                    if let Some(p) = progress.get_mut(w) {
                        *p = connected + failed;
                    }
                    bar.set_position(progress.iter().sum());
                }
            },
        )
        .await?;
    bar.finish_and_clear();
    let listen_overflows = match (overflows_before, crate::common::listen_overflows()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };

    let mut setup = new_hist();
    let mut errors = BTreeMap::new();
    let mut sample_error = None;
    let (mut attempted, mut ok, mut failed, mut clean, mut uncl, mut fin, mut rst, mut live) =
        (0, 0, 0, 0, 0, 0, 0, 0);
    let (mut start, mut end) = (u64::MAX, 0);
    for r in &reports {
        attempted += r.attempted;
        ok += r.ok;
        failed += r.failed;
        clean += r.clean;
        uncl += r.clean_unconfirmed;
        fin += r.fin;
        rst += r.rst;
        live += r.live_holds;
        merge_counts(&mut errors, &r.errors);
        if sample_error.is_none() {
            sample_error.clone_from(&r.sample_error);
        }
        hist_merge(&mut setup, &r.setup);
        start = start.min(r.start_us);
        end = end.max(r.end_us);
    }
    let churn_secs = end.saturating_sub(start) as f64 / 1e6;

    // The gauge must settle on the true count.
    let http = client.http()?;
    let metrics = client.metrics_urls()?;
    let settle_start = Instant::now();
    let deadline = settle_start + Duration::from_secs(args.settle_secs);
    let mut gauge = Vec::new();
    let mut settled = None;
    loop {
        gauge = connections_gauge(&http, &metrics).await.unwrap_or(gauge);
        let total: f64 = gauge.iter().sum();
        if (total - live as f64).abs() < 0.5 {
            settled = Some(settle_start.elapsed().as_millis() as u64);
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gauge_total: f64 = gauge.iter().sum();
    let (presence_members, presence_matches) = if args.rooms <= 1000 {
        let api = client.api_bases()?;
        // Presence is cluster-wide: ask one node, retrying until it settles.
        let mut last = None;
        let until = Instant::now() + Duration::from_secs(args.settle_secs);
        loop {
            match presence_total(&http, &api[0], &args.presence_prefix, args.rooms).await {
                Ok(n) => {
                    last = Some(n);
                    if n == live || Instant::now() >= until {
                        break;
                    }
                }
                Err(e) => {
                    eprintln!("churn: presence check failed: {e:#}");
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        (last, last.map(|n| n == live))
    } else {
        (None, None)
    };
    let stopped = pool.stop().await?;
    let (dropped, closes) = sum_stopped(&stopped);
    let gauge_matches = settled.is_some();
    Ok(ChurnOut {
        scenario: "churn",
        nodes: client.urls.len(),
        hold: args.hold,
        hold_connected: held.connected,
        rate: args.rate,
        concurrency: args.concurrency,
        attempted,
        connected: ok,
        failed,
        errors,
        sample_error,
        churn_secs,
        connects_per_sec: if churn_secs > 0.0 {
            ok as f64 / churn_secs
        } else {
            0.0
        },
        setup_latency: Latency::of(&setup),
        listen_overflows,
        clean_closes: clean,
        clean_unconfirmed: uncl,
        fin_closes: fin,
        rst_closes: rst,
        true_count: live,
        gauge,
        gauge_total,
        gauge_matches,
        gauge_settle_ms: settled,
        presence_members,
        presence_matches,
        dropped,
        closes,
        ok: gauge_matches
            && presence_matches != Some(false)
            && failed == 0
            && dropped == 0
            && held.connected == args.hold,
    })
}
