//! `idle`: hold N authenticated connections, each subscribed to 2 channels
//! (one in a presence-enabled namespace; with `--protocol pusher`, a public
//! and a `presence-` channel); report the connect rate and, given the
//! gateway pids, RSS per connection and CPU over a steady window.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;
use tokio::time::Instant;

use crate::cli::ClientArgs;
use crate::common::{
    clk_tck, hist_merge, merge_counts, new_hist, proc_sample, Latency, ProcSample,
};
use crate::pusher::{check_channel_prefix, Protocol, ProtocolArgs};
use crate::worker::{Cmd, ConnectReport, Ev, Group, Mode, Pool, StopReport};

/// Options of `idle`.
#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    /// Connections to hold.
    #[arg(long, default_value_t = 1000)]
    pub connections: u64,
    /// Channels per namespace: client i subscribes to `<prefix>(i % channels)`
    /// in both namespaces.
    #[arg(long, default_value_t = 1000)]
    pub channels: u64,
    /// Plain channel prefix (default `idle:`; Pusher: `idle-`).
    #[arg(long)]
    pub channel_prefix: Option<String>,
    /// Presence-enabled channel prefix (default `room:`, whose namespace
    /// should have presence = true; join_leave would turn the test into a
    /// fan-out. Pusher: `presence-room-`, subscribed with a signed
    /// `channel_data` of user `idle<i>`).
    #[arg(long)]
    pub presence_prefix: Option<String>,
    /// Gateway process ids to measure (comma separated).
    #[arg(long = "pid", value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// Wait this long after the last connect before the "after" RSS.
    #[arg(long, default_value_t = 3)]
    pub settle_secs: u64,
    /// Steady window for the CPU figure (two ping intervals by default).
    #[arg(long, default_value_t = 50)]
    pub window_secs: u64,
    /// Wire protocol.
    #[command(flatten)]
    pub protocol: ProtocolArgs,
    /// Shared client options.
    #[command(flatten)]
    pub client: ClientArgs,
}

impl IdleArgs {
    /// The plain and the presence channel prefixes for the protocol.
    pub fn prefixes(&self) -> Result<(String, String)> {
        let pusher = self.protocol.protocol == Protocol::Pusher;
        let plain = self
            .channel_prefix
            .clone()
            .unwrap_or_else(|| if pusher { "idle-" } else { "idle:" }.into());
        let presence = self
            .presence_prefix
            .clone()
            .unwrap_or_else(|| if pusher { "presence-room-" } else { "room:" }.into());
        if pusher {
            check_channel_prefix(&plain)?;
            check_channel_prefix(&presence)?;
        }
        Ok((plain, presence))
    }
}

/// One gateway process's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ProcReport {
    /// Process id.
    pub pid: u32,
    /// RSS before the clients connected, KiB.
    pub rss_before_kib: u64,
    /// RSS with every client connected and settled, KiB.
    pub rss_after_kib: u64,
    /// RSS at the end of the window, KiB.
    pub rss_end_kib: u64,
    /// CPU over the window, % of one core.
    pub cpu_pct: f64,
}

/// The `idle` report.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    /// "idle".
    pub scenario: &'static str,
    /// Wire protocol of the clients.
    pub protocol: Protocol,
    /// Connections asked for.
    pub connections: u64,
    /// Connected and subscribed.
    pub connected: u64,
    /// Failed to connect or subscribe.
    pub failed: u64,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// One failure message.
    pub sample_error: Option<String>,
    /// Worker processes used.
    pub workers: usize,
    /// From the first attempt to the last subscribe reply, s.
    pub connect_secs: f64,
    /// Connected per second over that time.
    pub connects_per_sec: f64,
    /// Connect + upgrade + subscribe latency per client.
    pub setup_latency: Latency,
    /// Per gateway process.
    pub processes: Vec<ProcReport>,
    /// Summed RSS growth per connected client, bytes.
    pub rss_per_conn_bytes: Option<f64>,
    /// Steady window, s.
    pub window_secs: f64,
    /// Summed CPU over the window, % of one core.
    pub cpu_pct: Option<f64>,
    /// CPU per 10,000 connections, % of one core.
    pub cpu_pct_per_10k: Option<f64>,
    /// SYNs dropped by full accept queues during the connects (machine-wide
    /// `ListenOverflows` delta); each costs its client a 1 s retransmit.
    pub listen_overflows: Option<u64>,
    /// Clients that lost their connection before the stop.
    pub dropped: u64,
    /// How they ended.
    pub closes: BTreeMap<String, u64>,
    /// Every client connected and none dropped.
    pub ok: bool,
}

impl IdleReport {
    /// Human summary.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "idle ({:?}): {}/{} connected ({} failed) in {:.1} s = {:.0} connects/s over {} worker(s); setup {}; listen overflows {:?}\n",
            self.protocol,
            self.connected,
            self.connections,
            self.failed,
            self.connect_secs,
            self.connects_per_sec,
            self.workers,
            self.setup_latency.line(),
            self.listen_overflows
        );
        for p in &self.processes {
            s += &format!(
                "  pid {}: RSS {} -> {} KiB (end {} KiB), CPU {:.2}% of a core over {:.0} s\n",
                p.pid,
                p.rss_before_kib,
                p.rss_after_kib,
                p.rss_end_kib,
                p.cpu_pct,
                self.window_secs
            );
        }
        if let Some(b) = self.rss_per_conn_bytes {
            s += &format!("  RSS per connection: {:.0} B ({:.2} KiB)\n", b, b / 1024.0);
        }
        if let Some(c) = self.cpu_pct_per_10k {
            s += &format!("  idle CPU: {c:.3}% of a core per 10k connections\n");
        }
        s += &format!(
            "  dropped: {} {:?}; {}",
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

fn samples(pids: &[u32]) -> Result<Vec<ProcSample>> {
    pids.iter().map(|&p| proc_sample(p)).collect()
}

/// Connects every worker's clients; returns the summed report.
pub async fn connect_all(
    pool: &mut Pool,
    specs_counts: &[u64],
    args: &ClientArgs,
    what: &str,
) -> Result<ConnectReport> {
    let total: u64 = specs_counts.iter().sum();
    for (w, &count) in specs_counts.iter().enumerate() {
        pool.send(w, &Cmd::Connect { upto: count }).await?;
    }
    collect_connected(pool, total, args, what).await
}

/// Waits for every worker's [`Ev::Connected`]; returns the sum.
pub async fn collect_connected(
    pool: &mut Pool,
    total: u64,
    args: &ClientArgs,
    what: &str,
) -> Result<ConnectReport> {
    Ok(sum_connected(
        &collect_connected_each(pool, total, args, what).await?,
    ))
}

/// Waits for every worker's [`Ev::Connected`]; returns them in worker order.
pub async fn collect_connected_each(
    pool: &mut Pool,
    total: u64,
    args: &ClientArgs,
    what: &str,
) -> Result<Vec<ConnectReport>> {
    let bar = args.bar(total, what);
    let mut progress = vec![0u64; pool.workers()];
    let timeout = Duration::from_secs(600);
    let reports = pool
        .collect(
            timeout,
            |ev| match ev {
                Ev::Connected(r) => Some(r),
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
    Ok(reports)
}

/// Adds up connect reports.
pub fn sum_connected(reports: &[ConnectReport]) -> ConnectReport {
    let mut out = ConnectReport {
        first_us: u64::MAX,
        ..ConnectReport::default()
    };
    let mut h = new_hist();
    for r in reports {
        out.attempted += r.attempted;
        out.connected += r.connected;
        out.failed += r.failed;
        out.live += r.live;
        merge_counts(&mut out.errors, &r.errors);
        if out.sample_error.is_none() {
            out.sample_error.clone_from(&r.sample_error);
        }
        if r.first_us > 0 {
            out.first_us = out.first_us.min(r.first_us);
        }
        out.last_us = out.last_us.max(r.last_us);
        hist_merge(&mut h, &r.setup);
    }
    if out.first_us == u64::MAX {
        out.first_us = 0;
    }
    out.setup = crate::common::hist_pairs(&h);
    out
}

/// Sums stop reports: (dropped, closes).
pub fn sum_stopped(reports: &[StopReport]) -> (u64, BTreeMap<String, u64>) {
    let mut closes = BTreeMap::new();
    let mut dropped = 0;
    for r in reports {
        dropped += r.dropped;
        merge_counts(&mut closes, &r.closes);
    }
    (dropped, closes)
}

/// Runs `idle`.
pub async fn run(args: &IdleArgs) -> Result<IdleReport> {
    args.client.validate()?;
    if args.connections == 0 {
        bail!("--connections must be > 0");
    }
    let (plain, presence) = args.prefixes()?;
    let mut client = args.client.clone();
    client.pusher = args.protocol.app();
    let before = samples(&args.pids)?;
    let groups = vec![
        Group {
            prefix: plain,
            count: args.channels.max(1),
        },
        Group {
            prefix: presence,
            count: args.channels.max(1),
        },
    ];
    let specs = client.worker_specs(args.connections, "idle", groups, |_| Mode::Hold);
    let counts: Vec<u64> = specs.iter().map(|s| s.count).collect();
    let mut pool = Pool::spawn(&specs, client.threads).await?;
    let overflows_before = crate::common::listen_overflows();
    let connected = connect_all(&mut pool, &counts, &client, "connecting").await?;
    let listen_overflows = match (overflows_before, crate::common::listen_overflows()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let connect_secs = connected.last_us.saturating_sub(connected.first_us) as f64 / 1e6;

    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let after = samples(&args.pids)?;
    let window_start = Instant::now();
    let bar = args.client.bar(args.window_secs, "steady window");
    let end = window_start + Duration::from_secs(args.window_secs);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(500).min(end - Instant::now())).await;
        bar.set_position(window_start.elapsed().as_secs());
    }
    bar.finish_and_clear();
    let window = window_start.elapsed().as_secs_f64();
    let end_samples = samples(&args.pids)?;
    let stopped = pool.stop().await?;
    let (dropped, closes) = sum_stopped(&stopped);

    let tck = clk_tck() as f64;
    let processes: Vec<ProcReport> = args
        .pids
        .iter()
        .enumerate()
        .map(|(i, &pid)| ProcReport {
            pid,
            rss_before_kib: before[i].rss_kib,
            rss_after_kib: after[i].rss_kib,
            rss_end_kib: end_samples[i].rss_kib,
            cpu_pct: (end_samples[i].cpu_ticks.saturating_sub(after[i].cpu_ticks)) as f64
                / tck
                / window
                * 100.0,
        })
        .collect();
    let n = connected.connected.max(1) as f64;
    let (rss_per_conn, cpu, cpu10k) = if processes.is_empty() {
        (None, None, None)
    } else {
        let grew: f64 = processes
            .iter()
            .map(|p| p.rss_after_kib as f64 - p.rss_before_kib as f64)
            .sum();
        let cpu: f64 = processes.iter().map(|p| p.cpu_pct).sum();
        (Some(grew * 1024.0 / n), Some(cpu), Some(cpu * 10_000.0 / n))
    };
    Ok(IdleReport {
        scenario: "idle",
        protocol: args.protocol.protocol,
        connections: args.connections,
        connected: connected.connected,
        failed: connected.failed,
        errors: connected.errors.clone(),
        sample_error: connected.sample_error.clone(),
        workers: specs.len(),
        connect_secs,
        connects_per_sec: if connect_secs > 0.0 {
            connected.connected as f64 / connect_secs
        } else {
            0.0
        },
        setup_latency: latency_of(&connected.setup),
        processes,
        rss_per_conn_bytes: rss_per_conn,
        window_secs: window,
        cpu_pct: cpu,
        cpu_pct_per_10k: cpu10k,
        listen_overflows,
        dropped,
        closes,
        ok: connected.connected == args.connections && dropped == 0,
    })
}

/// Percentiles of shipped histogram pairs.
pub fn latency_of(pairs: &crate::common::HistPairs) -> Latency {
    let mut h = new_hist();
    hist_merge(&mut h, pairs);
    Latency::of(&h)
}
