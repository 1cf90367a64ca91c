//! `storm`: a reconnect storm against one node. A fresh gateway (started
//! as the suite starts its nodes) receives `--clients` connections at once
//! (every client of every worker process dials as soon as it may, over
//! 127.0.0.1..=127.0.0.N source addresses), as after a node restart or a
//! load-balancer failover, while `/healthz` and `/readyz` are probed every
//! `--poll-ms` on a fresh connection each time (as kubelet probes do).
//! Reports the probes' p99 and max against `--bound-ms`, the accept rate,
//! and every refusal by reason (client-side kinds, the gateway's
//! `gateway_connections_refused_total` by reason, and the machine's
//! `ListenOverflows` delta).
//!
//! Invariants: every loop is bounded in count and time; loopback only; the
//! node process is killed when its handle drops.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use crate::common::{metric_value, new_hist, now_us, Latency};
use crate::idle::{connect_all, sum_stopped};
use crate::suite::nodes::{free_port, Ctx, CONFIG};
use crate::suite::SuiteArgs;
use crate::worker::{Group, Mode, Pool};

/// Options of `storm`.
#[derive(Debug, Clone, Args)]
pub struct StormArgs {
    /// Clients that connect at once.
    #[arg(long, default_value_t = 15_000)]
    pub clients: u64,
    /// Gateway binary.
    #[arg(long, default_value = "target/release/gateway")]
    pub gateway_bin: PathBuf,
    /// Clients per worker process (one process may hold ~20,000 files).
    #[arg(long, default_value_t = 5_000)]
    pub per_worker: u64,
    /// Connection attempts in flight at most, over all workers (the storm:
    /// by default every client at once).
    #[arg(long, default_value_t = 15_000)]
    pub concurrency: usize,
    /// Client source addresses 127.0.0.1 ..= 127.0.0.N.
    #[arg(long, default_value_t = 16)]
    pub src_addrs: u8,
    /// Runtime threads per worker process.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Probe period, ms.
    #[arg(long, default_value_t = 10)]
    pub poll_ms: u64,
    /// Bound on a probe's answer, ms.
    #[arg(long, default_value_t = 100)]
    pub bound_ms: u64,
    /// Keep probing this long after the last client connected, s.
    #[arg(long, default_value_t = 5)]
    pub hold_secs: u64,
    /// Bound on one client's connect + upgrade + welcome + subscribe, ms.
    #[arg(long, default_value_t = 60_000)]
    pub connect_timeout_ms: u64,
    /// Serve /healthz, /readyz and /metrics on a separate admin listener
    /// (`GATEWAY_ADMIN_LISTEN`) and probe that: the probes then do not
    /// queue behind the storm's handshakes in the client listener's
    /// accept queue.
    #[arg(long)]
    pub admin_listener: bool,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    pub no_progress: bool,
}

/// One probe path's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    /// Path probed.
    pub path: &'static str,
    /// Probes sent.
    pub probes: u64,
    /// Answered 200 within the bound.
    pub within_bound: u64,
    /// Answered, but later than the bound (or not 200).
    pub late_or_bad: u64,
    /// No answer (connect error or 5 s timeout).
    pub errors: u64,
    /// Answer time of every answered probe.
    pub latency: Latency,
}

/// The `storm` report.
#[derive(Debug, Clone, Serialize)]
pub struct StormOut {
    /// "storm".
    pub scenario: &'static str,
    /// Clients asked for.
    pub clients: u64,
    /// Worker processes.
    pub workers: usize,
    /// Connected and subscribed.
    pub connected: u64,
    /// Failed to connect or subscribe.
    pub failed: u64,
    /// Client-side failures by kind (`tcp`, `http_<status>`, `timeout`...).
    pub errors: BTreeMap<String, u64>,
    /// One failure message.
    pub sample_error: Option<String>,
    /// First attempt to last completed setup, s.
    pub connect_secs: f64,
    /// Connected clients per second over that span.
    pub accepted_per_sec: f64,
    /// Connect + upgrade + welcome + subscribe latency.
    pub setup_latency: Latency,
    /// `gateway_connections_refused_total` by reason at the end.
    pub refused_by_gateway: BTreeMap<String, f64>,
    /// SYNs dropped by full accept queues during the storm (machine-wide).
    pub listen_overflows: Option<u64>,
    /// `gateway_connections` with every client connected.
    pub gauge: f64,
    /// The probes.
    pub probes: Vec<Probe>,
    /// Probe bound, ms.
    pub bound_ms: u64,
    /// The probes went to a separate admin listener.
    pub admin_listener: bool,
    /// Clients dropped before the clean stop.
    pub dropped: u64,
    /// Every client connected and every probe answered 200 within the bound.
    pub ok: bool,
}

impl StormOut {
    /// Human summary.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "storm: {}/{} clients connected ({} failed {:?}) in {:.2} s = {:.0}/s over {} workers; setup {}\n",
            self.connected,
            self.clients,
            self.failed,
            self.errors,
            self.connect_secs,
            self.accepted_per_sec,
            self.workers,
            self.setup_latency.line()
        );
        s += &format!(
            "  refused by the gateway {:?}; listen overflows {:?}; gauge {}; dropped {}\n",
            self.refused_by_gateway, self.listen_overflows, self.gauge, self.dropped
        );
        for p in &self.probes {
            s += &format!(
                "  {}: {} probes, {} within {} ms, {} late/bad, {} errors; {}\n",
                p.path,
                p.probes,
                p.within_bound,
                self.bound_ms,
                p.late_or_bad,
                p.errors,
                p.latency.line()
            );
        }
        s += if self.ok { "  OK" } else { "  NOT OK" };
        s
    }
}

struct ProbeAcc {
    path: &'static str,
    probes: u64,
    within: u64,
    late: u64,
    errors: u64,
    hist: Histogram<u64>,
}

/// Probes `/healthz` and `/readyz` of `addr` every `period` until `stop`
/// (at most `max` rounds), each on a fresh connection.
async fn probe_loop(
    addr: SocketAddr,
    period: Duration,
    bound: Duration,
    stop: Arc<AtomicBool>,
    max: u64,
) -> Result<Vec<ProbeAcc>> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut acc: Vec<ProbeAcc> = ["/healthz", "/readyz"]
        .into_iter()
        .map(|path| ProbeAcc {
            path,
            probes: 0,
            within: 0,
            late: 0,
            errors: 0,
            hist: new_hist(),
        })
        .collect();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for _ in 0..max {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        tick.tick().await;
        for a in &mut acc {
            let start = Instant::now();
            let r = http.get(format!("http://{addr}{}", a.path)).send().await;
            let took = start.elapsed();
            a.probes += 1;
            match r {
                Ok(resp) => {
                    let _ = a.hist.record(took.as_micros() as u64);
                    if resp.status().is_success() && took <= bound {
                        a.within += 1;
                    } else {
                        a.late += 1;
                    }
                }
                Err(_) => a.errors += 1,
            }
        }
    }
    Ok(acc)
}

/// `gateway_connections_refused_total` by reason.
fn refused(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("gateway_connections_refused_total{") else {
            continue;
        };
        let reason = rest
            .split("reason=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("?");
        let v = rest
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN);
        *out.entry(reason.to_owned()).or_default() += v;
    }
    out
}

/// Runs `storm`.
pub async fn run(args: &StormArgs) -> Result<StormOut> {
    if !args.gateway_bin.exists() {
        bail!(
            "gateway binary {} not found (cargo build --release -p gateway)",
            args.gateway_bin.display()
        );
    }
    if args.clients == 0 || args.poll_ms == 0 {
        bail!("--clients and --poll-ms must be > 0");
    }
    let logs = std::env::temp_dir().join(format!("loadtest-storm-{}", now_us()));
    std::fs::create_dir_all(&logs)?;
    let config = logs.join("gateway.toml");
    std::fs::write(&config, CONFIG)?;
    eprintln!("storm: logs in {}", logs.display());
    let mut sargs = SuiteArgs::for_soak(args.gateway_bin.clone(), "redis-server".into());
    sargs.no_progress = args.no_progress;
    let mut ctx = Ctx {
        args: sargs,
        logs,
        config,
        seq: 0,
    };
    let admin = if args.admin_listener {
        Some(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
    } else {
        None
    };
    let extra: Vec<(String, String)> = admin
        .iter()
        .map(|a| ("GATEWAY_ADMIN_LISTEN".to_owned(), a.to_string()))
        .collect();
    let (node, addr) = ctx.gateway_env("storm", None, &extra).await?;
    let probe_addr = admin.unwrap_or(addr);
    let mut client = ctx.client(&[addr]);
    client.per_worker = args.per_worker;
    client.connect_concurrency = args.concurrency;
    client.src_addrs = args.src_addrs;
    client.threads = args.threads;
    client.connect_timeout_ms = args.connect_timeout_ms;
    client.validate()?;
    let groups = vec![Group {
        prefix: "idle:".into(),
        count: 100,
    }];
    let specs = client.worker_specs(args.clients, "storm", groups, |_| Mode::Hold);
    let counts: Vec<u64> = specs.iter().map(|s| s.count).collect();
    let mut pool = Pool::spawn(&specs, client.threads).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let period = Duration::from_millis(args.poll_ms);
    let max_rounds = 600_000 / args.poll_ms.max(1);
    let prober = tokio::spawn(probe_loop(
        probe_addr,
        period,
        Duration::from_millis(args.bound_ms),
        stop.clone(),
        max_rounds,
    ));
    let overflows_before = crate::common::listen_overflows();
    let connected = connect_all(&mut pool, &counts, &client, "storm").await?;
    let listen_overflows = match (overflows_before, crate::common::listen_overflows()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    // Keep probing a while with everyone connected.
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    stop.store(true, Ordering::Relaxed);
    let acc = prober.await??;
    let http = client.http()?;
    let text = http
        .get(format!("http://{probe_addr}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let gauge = metric_value(&text, "gateway_connections").unwrap_or(f64::NAN);
    let refused_by_gateway = refused(&text);
    let stopped = pool.stop().await?;
    let (dropped, _) = sum_stopped(&stopped);
    node.stop().await;

    let connect_secs = connected.last_us.saturating_sub(connected.first_us) as f64 / 1e6;
    let mut setup = new_hist();
    crate::common::hist_merge(&mut setup, &connected.setup);
    let probes: Vec<Probe> = acc
        .iter()
        .map(|a| Probe {
            path: a.path,
            probes: a.probes,
            within_bound: a.within,
            late_or_bad: a.late,
            errors: a.errors,
            latency: Latency::of(&a.hist),
        })
        .collect();
    let probes_ok = probes
        .iter()
        .all(|p| p.probes > 0 && p.within_bound == p.probes);
    Ok(StormOut {
        scenario: "storm",
        clients: args.clients,
        workers: counts.len(),
        connected: connected.connected,
        failed: connected.failed,
        errors: connected.errors,
        sample_error: connected.sample_error,
        connect_secs,
        accepted_per_sec: if connect_secs > 0.0 {
            connected.connected as f64 / connect_secs
        } else {
            0.0
        },
        setup_latency: Latency::of(&setup),
        refused_by_gateway,
        listen_overflows,
        gauge,
        probes,
        bound_ms: args.bound_ms,
        admin_listener: args.admin_listener,
        dropped,
        ok: connected.connected == args.clients && probes_ok,
    })
}
