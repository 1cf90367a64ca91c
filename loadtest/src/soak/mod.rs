//! `soak`: a long run of connect/subscribe/publish/disconnect churn on a
//! fresh 3-node cluster (redis-server + 3 gateways, started as the suite's
//! cluster scenarios start them), with a Redis restart and a node kill (and
//! restart) in the middle. Samples every node's RSS, open file descriptors
//! and threads; at the end checks that the nodes' connection and
//! subscription gauges equal the truth (a known set of final clients, then
//! 0 after they leave) and that no descriptor or thread leaked.
//!
//! Timeline (fractions of `--duration`): warm-up until 0.2; Redis killed at
//! 0.4 and restarted on the same port; node 2 SIGKILLed at 0.55 and
//! restarted (new port) at 0.6; churn until 1.0. The RSS slope of each
//! process is a least-squares fit of its samples taken after its own
//! warm-up (the run's warm-up, or 0.2 x duration after a restart).
//!
//! Invariants: every loop is bounded in count and time; clients connect to
//! loopback only; at most `--lanes` cycles are in flight and they start at
//! `--rate` per second, so the load stays moderate on a shared machine;
//! every child process is killed when its handle drops.
//!
//! This file drives the scenario: the options, the processes, the timeline
//! of faults, the final checks. The other jobs:
//!
//! - `churn`: the churning and final clients (connect, subscribe, publish,
//!   leave) and the tally of what they ended with;
//! - `sampler`: RSS, descriptor and thread samples from /proc, the
//!   quiet-moment counts and the RSS slope;
//! - `probe`: the nodes' `/metrics` gauges and `/readyz`, polled;
//! - `report`: the report and its summary.

mod churn;
mod probe;
mod report;
mod sampler;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::common::now_us;
use crate::suite::nodes::{free_port, Ctx, Proc, CONFIG};
use crate::suite::SuiteArgs;
use churn::{connect_final, cycle, src_of, Live, Shared, Tally};
use probe::{gauge, task_gauges, wait_gauges, wait_ready};
pub use report::SoakOut;
use sampler::{quiet_counts, rss_figures, Sample};

/// Nodes in the cluster.
const NODES: usize = 3;
/// The node that is killed and restarted.
const VICTIM: usize = 2;

/// Options of `soak`.
#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// How long to churn: `30m`, `90s`, `1h` or seconds.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub duration: Duration,
    /// Gateway binary.
    #[arg(long, default_value = "target/release/gateway")]
    pub gateway_bin: PathBuf,
    /// redis-server binary.
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
    /// Churn cycles started per second.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Cycles in flight at most.
    #[arg(long, default_value_t = 32)]
    pub lanes: usize,
    /// Longest a churning client stays after its publish reply, ms (cycle
    /// i stays i * 7919 % (this + 1) ms).
    #[arg(long, default_value_t = 2000)]
    pub max_linger_ms: u64,
    /// Clients connected at the end, spread over the nodes, for the gauge
    /// check.
    #[arg(long, default_value_t = 30)]
    pub final_clients: usize,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10.0)]
    pub sample_secs: f64,
    /// Client source addresses 127.0.0.1 ..= 127.0.0.N.
    #[arg(long, default_value_t = 4)]
    pub src_addrs: u8,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No progress lines on stderr.
    #[arg(long)]
    pub no_progress: bool,
}

/// `30m`, `90s`, `1h`, `1500ms` or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|e| format!("bad duration {s:?}: {e}"))?;
    if !(v > 0.0 && v * mult < 86_400.0 * 7.0) {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

/// Runs `soak`.
pub async fn run(args: &SoakArgs) -> Result<SoakOut> {
    if !args.gateway_bin.exists() {
        bail!(
            "gateway binary {} not found (cargo build --release -p gateway)",
            args.gateway_bin.display()
        );
    }
    if args.rate <= 0.0 || args.lanes == 0 || args.sample_secs <= 0.0 {
        bail!("--rate, --lanes and --sample-secs must be > 0");
    }
    let logs = std::env::temp_dir().join(format!("loadtest-soak-{}", now_us()));
    std::fs::create_dir_all(&logs)?;
    let config = logs.join("gateway.toml");
    std::fs::write(&config, CONFIG)?;
    eprintln!("soak: logs in {}", logs.display());
    let mut ctx = Ctx {
        args: SuiteArgs::for_soak(args.gateway_bin.clone(), args.redis_server.clone()),
        logs,
        config,
        seq: 0,
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;

    let redis_port = free_port()?;
    let (first_redis, redis) = ctx.redis_on(redis_port).await?;
    let mut redis_proc = Some(first_redis);
    let mut gws: Vec<Proc> = Vec::new();
    let mut addrs = Vec::new();
    for n in 0..NODES {
        let (gw, addr) = ctx.gateway(&format!("soak{n}"), Some(&redis)).await?;
        gws.push(gw);
        addrs.push(addr);
    }
    if !wait_ready(&http, &addrs, Duration::from_secs(60)).await {
        bail!("the nodes were not ready within 60 s");
    }
    // Warm-up round, then the baseline counts at a quiet moment.
    let (finals, _) = connect_final(&addrs, args.final_clients, 0, args.src_addrs).await?;
    for mut ws in finals {
        ws.close(1000, Duration::from_secs(5)).await;
    }
    let (zero, _) = wait_gauges(&http, &addrs, Duration::from_secs(30), |_, t| {
        gauge(t, "gateway_connections") == 0.0
    })
    .await;
    if !zero {
        bail!("connection gauge not 0 after the warm-up round");
    }
    let pids0: Vec<u32> = gws.iter().map(Proc::pid).collect();
    let counts_before = quiet_counts(&pids0, redis_port).await;

    let live: Shared = Arc::new(Mutex::new(Live {
        addrs: addrs.iter().copied().map(Some).collect(),
        pids: pids0.clone(),
    }));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let dur = args.duration.as_secs_f64();
    let start = Instant::now();
    let at = |f: f64| start + Duration::from_secs_f64(dur * f);
    let warmup_secs = dur * 0.2;
    let mut proc_start = [0.0f64; NODES];
    let mut events: Vec<(String, f64)> = Vec::new();
    let mut samples: Vec<Sample> = Vec::new();
    let mut tasks = JoinSet::new();
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let mut next_cycle = start;
    let mut next_sample = start;
    let mut i: u64 = 1_000;
    // Phases: 0 churn, 1 Redis down, 2 Redis back, 3 node down, 4 node back.
    let mut phase = 0;
    let end = at(1.0);
    let max_iters = (dur * (args.rate + 1.0 / args.sample_secs) * 4.0) as u64 + 10_000;
    for _ in 0..max_iters {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let t = (now - start).as_secs_f64();
        if phase == 0 && now >= at(0.4) {
            if let Some(p) = redis_proc.take() {
                p.stop().await;
            }
            events.push(("redis killed".into(), t));
            phase = 1;
            continue;
        }
        if phase == 1 && now >= at(0.4) + Duration::from_secs(2) {
            let (p, _) = ctx.redis_on(redis_port).await?;
            redis_proc = Some(p);
            let t = start.elapsed().as_secs_f64();
            events.push(("redis restarted".into(), t));
            let ok = wait_ready(&http, &addrs, Duration::from_secs(60)).await;
            events.push((
                format!("nodes ready again: {ok}"),
                start.elapsed().as_secs_f64(),
            ));
            phase = 2;
            continue;
        }
        if phase == 2 && now >= at(0.55) {
            if let Ok(mut l) = live.lock() {
                l.addrs[VICTIM] = None;
            }
            let old = gws.remove(VICTIM);
            old.stop().await;
            events.push((format!("node {VICTIM} killed (SIGKILL)"), t));
            phase = 3;
            continue;
        }
        if phase == 3 && now >= at(0.6) {
            let (gw, addr) = ctx.gateway(&format!("soak{VICTIM}"), Some(&redis)).await?;
            let t = start.elapsed().as_secs_f64();
            proc_start[VICTIM] = t;
            addrs[VICTIM] = addr;
            if let Ok(mut l) = live.lock() {
                l.addrs[VICTIM] = Some(addr);
                l.pids[VICTIM] = gw.pid();
            }
            gws.insert(VICTIM, gw);
            events.push((format!("node {VICTIM} restarted"), t));
            phase = 4;
            continue;
        }
        if now >= next_sample {
            let pids = live.lock().map(|l| l.pids.clone()).unwrap_or_default();
            for (node, &pid) in pids.iter().enumerate() {
                if phase == 3 && node == VICTIM {
                    continue;
                }
                samples.push(Sample::take(t, node, pid, redis_port));
            }
            if !args.no_progress {
                let tl = tally.lock().map(|t| (t.cycles, t.ok)).unwrap_or((0, 0));
                let rss: Vec<u64> = samples
                    .iter()
                    .rev()
                    .take(NODES)
                    .map(|s| s.rss_kib)
                    .collect();
                eprintln!(
                    "soak: t={t:.0}s cycles {} ok {} in flight {} rss(KiB, last first) {rss:?}",
                    tl.0,
                    tl.1,
                    tasks.len()
                );
            }
            next_sample += Duration::from_secs_f64(args.sample_secs);
        }
        while tasks.try_join_next().is_some() {}
        if now >= next_cycle {
            if tasks.len() < args.lanes {
                let linger = Duration::from_millis(i * 7919 % (args.max_linger_ms + 1));
                tasks.spawn(cycle(
                    live.clone(),
                    i,
                    linger,
                    src_of(i, args.src_addrs),
                    tally.clone(),
                ));
                i += 1;
            } else if let Ok(mut t) = tally.lock() {
                t.fail("lanes_full", "every lane busy: cycle skipped".into());
            }
            next_cycle += interval;
        }
        let wake = next_cycle.min(next_sample).min(end).min(at(match phase {
            0 => 0.4,
            2 => 0.55,
            3 => 0.6,
            _ => 1.0,
        }));
        tokio::time::sleep_until(wake.max(Instant::now() + Duration::from_millis(1))).await;
    }
    let churn_secs = start.elapsed().as_secs_f64();
    // Cycles end within linger + a few reply timeouts.
    let drain = tokio::time::timeout(Duration::from_secs(120), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drain.is_err() {
        tasks.abort_all();
        events.push(("cycles still running after 120 s: aborted".into(), 0.0));
    }
    if !wait_ready(&http, &addrs, Duration::from_secs(60)).await {
        events.push(("nodes not ready at the end".into(), 0.0));
    }

    // Gauges against the truth.
    let (finals, truth) =
        connect_final(&addrs, args.final_clients, 1 << 40, args.src_addrs).await?;
    let (gauges_exact, texts) = wait_gauges(&http, &addrs, Duration::from_secs(30), |n, t| {
        gauge(t, "gateway_connections") == truth[n] as f64
            && gauge(t, "gateway_subscriptions") == 2.0 * truth[n] as f64
    })
    .await;
    let final_connections = texts
        .iter()
        .map(|t| gauge(t, "gateway_connections"))
        .collect();
    let final_subscriptions = texts
        .iter()
        .map(|t| gauge(t, "gateway_subscriptions"))
        .collect();
    for mut ws in finals {
        ws.close(1000, Duration::from_secs(5)).await;
    }
    let names = [
        "gateway_connections",
        "gateway_subscriptions",
        "gateway_channels",
    ];
    let (gauges_zero, texts) = wait_gauges(&http, &addrs, Duration::from_secs(30), |_, t| {
        names.iter().all(|n| gauge(t, n) == 0.0)
    })
    .await;
    let empty_gauges = texts.iter().map(|t| names.map(|n| gauge(t, n))).collect();
    let task_gauges = task_gauges(&texts);
    let pids: Vec<u32> = gws.iter().map(Proc::pid).collect();
    let counts_after = quiet_counts(&pids, redis_port).await;
    let no_leak = counts_after
        .iter()
        .zip(&counts_before)
        .all(|(a, b)| a.own_fds() <= b.own_fds() && a.threads <= b.threads);

    let procs = rss_figures(&samples, |node, pid| {
        if pid == pids0[node] {
            warmup_secs
        } else {
            proc_start[node] + warmup_secs
        }
    });
    for gw in gws {
        gw.stop().await;
    }
    if let Some(p) = redis_proc {
        p.stop().await;
    }
    let t = tally
        .lock()
        .map(|mut t| std::mem::take(&mut *t))
        .unwrap_or_default();
    let ok = gauges_exact && gauges_zero && no_leak && phase == 4 && drain.is_ok();
    Ok(SoakOut {
        scenario: "soak",
        duration_secs: churn_secs,
        rate: args.rate,
        cycles: t.cycles,
        cycles_ok: t.ok,
        errors: t.errors,
        sample_errors: t.sample_errors,
        publishes: t.publishes,
        published: t.published,
        events,
        samples,
        procs,
        final_truth: truth,
        final_connections,
        final_subscriptions,
        gauges_exact,
        empty_gauges,
        gauges_zero,
        counts_before,
        counts_after,
        no_leak,
        task_gauges,
        ok,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("x").is_err());
    }
}
