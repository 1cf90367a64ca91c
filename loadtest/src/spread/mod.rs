//! `shard-spread`: does Redis pub/sub spread over the primaries of a Redis
//! Cluster? The same load runs twice, on 3 gateway nodes each time: (a)
//! on one redis-server, (b) on a Redis Cluster of 3 primaries + 3 replicas
//! on this machine (sharded pub/sub: a channel's pub/sub name and keys
//! share the hash tag `{<channel>}`, so channels spread over the primaries
//! by key slot).
//!
//! The load: `--channels` channels; `--subscribers-per-node` connections
//! per node each subscribed to every channel (so every channel has
//! subscribers on every node and every node's interest reaches every
//! shard); publishers on every node publishing flat out for
//! `--duration-secs`, round-robin over the channels. A warm-up round (one
//! publication per channel, which every subscriber must get) proves the
//! subscriptions before the measured window.
//!
//! Measured over the window (publishing, then until the deliveries stop):
//! publications accepted and deliveries received (each subscriber must
//! get, per channel, exactly the accepted publications), the CPU seconds
//! of every Redis process, gateway and of this load generator (utime +
//! stime from /proc), and each Redis's `INFO` counters (publish calls,
//! commands). From them: Redis CPU per 1,000 publications, the primaries'
//! spread (max / min CPU; must be within 2x), each primary's share of the
//! publications, and the rate at which the busiest Redis process would
//! fill one core.
//!
//! Invariants: every process is killed when its handle drops; every wait
//! is bounded; the two phases run the same plan one after the other on
//! fresh processes, never at once.
//!
//! Jobs: this file (options, one phase, the run); `redis` (the cluster,
//! redis-cli, INFO and slots); `load` (subscribers, publishers); `report`
//! (figures, summary, markdown).

mod load;
mod redis;
mod report;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::common::{now_us, write_json, Latency};
use crate::fanout::Via;
use crate::suite::env::{git_commit, loadavg, machine, stamp};
use crate::suite::nodes::{cpu_secs, ticks, Ctx, Proc, CONFIG};
use crate::suite::SuiteArgs;
use load::{Live, Plan, PubStats, SubResult};
use redis::{channel_slot, counters, RedisCluster};
pub use report::SpreadReport;
use report::{Phase, ProcFig, RedisFig};

/// Gateway nodes in each phase.
const GATEWAYS: usize = 3;
/// Namespaces of the channels (added to the suite's gateway config).
const NAMESPACES: &str = r#"
# Added by `loadtest shard-spread`.
[namespaces.spread]
client_publish = true

[namespaces.spreadh]
client_publish = true
history_size = 100
history_ttl_secs = 300
"#;

/// Where the gateways keep their pub/sub and data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Topo {
    /// One redis-server.
    Single,
    /// A Redis Cluster: 3 primaries + 3 replicas.
    Cluster,
}

/// Options of `shard-spread`.
#[derive(Debug, Clone, Args)]
pub struct SpreadArgs {
    /// Channels (`spread:<i>`, or `spreadh:<i>` with --history).
    #[arg(long, default_value_t = 300)]
    pub channels: u64,
    /// Subscriber connections per gateway node, each subscribed to every
    /// channel.
    #[arg(long, default_value_t = 3)]
    pub subscribers_per_node: u64,
    /// How long to publish in each topology, s.
    #[arg(long, default_value_t = 15.0)]
    pub duration_secs: f64,
    /// How to publish: the WebSocket publish op (default; cheaper per
    /// publication for the gateway and this generator) or POST
    /// /api/publish.
    #[arg(long, value_enum, default_value_t = Via::Ws)]
    pub via: Via,
    /// Publishers per gateway node (WebSocket connections; with --via http,
    /// groups of --window request loops).
    #[arg(long, default_value_t = 2)]
    pub publishers_per_node: u64,
    /// Publications in flight per publisher.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Publications per second over all publishers; 0 = flat out. (A
    /// fixed rate compares the Redis CPU per publication of one Redis and
    /// of each primary at the same per-process rate.)
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Payload (the `data` string) size, bytes.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Publish to a namespace with history (history_size 100: one
    /// publish.lua EVALSHA per publication) instead of plain pub/sub.
    #[arg(long)]
    pub history: bool,
    /// The topologies to run, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Topo::Single, Topo::Cluster])]
    pub topologies: Vec<Topo>,
    /// Replicas per primary in the Redis Cluster (0 shows what the
    /// replication stream costs the primaries).
    #[arg(long, default_value_t = 1)]
    pub cluster_replicas: usize,
    /// Gateway binary.
    #[arg(long, default_value = "target/release/gateway")]
    pub gateway_bin: PathBuf,
    /// redis-server binary.
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
    /// redis-cli binary (creates the cluster, reads INFO).
    #[arg(long, default_value = "redis-cli")]
    pub redis_cli: String,
    /// Runtime threads of each gateway (`GATEWAY_WORKER_THREADS`); 0 = the
    /// gateway's default (one per CPU).
    #[arg(long, default_value_t = 0)]
    pub worker_threads: usize,
    /// The check: the primaries' CPU (max / min) must be within this
    /// factor.
    #[arg(long, default_value_t = 2.0)]
    pub max_spread: f64,
    /// Seconds of the idle CPU sample before publishing (subscribers and
    /// publishers connected, nothing published), which the report
    /// subtracts for the CPU per publication above idle; 0 = none.
    #[arg(long, default_value_t = 3.0)]
    pub idle_secs: f64,
    /// Where `<date>-shard-spread.{json,md}` go.
    #[arg(long, default_value = "loadtest/results")]
    pub out_dir: PathBuf,
    /// Do not write `<out-dir>/<date>-shard-spread.{json,md}`.
    #[arg(long)]
    pub no_results: bool,
    /// Also write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No progress lines.
    #[arg(long)]
    pub no_progress: bool,
}

impl SpreadArgs {
    /// The suite's `shard-spread` (`--only shard-spread`): the defaults, 5 s
    /// per topology with `--quick`.
    pub(crate) fn for_suite(s: &SuiteArgs) -> SpreadArgs {
        SpreadArgs {
            channels: 300,
            subscribers_per_node: 3,
            duration_secs: if s.quick { 5.0 } else { 15.0 },
            via: Via::Ws,
            publishers_per_node: 2,
            window: 64,
            rate: 0.0,
            payload: 64,
            history: false,
            topologies: vec![Topo::Single, Topo::Cluster],
            cluster_replicas: 1,
            gateway_bin: s.gateway_bin.clone(),
            redis_server: s.redis_server.clone(),
            redis_cli: "redis-cli".into(),
            worker_threads: s.cluster_worker_threads,
            max_spread: 2.0,
            idle_secs: 3.0,
            out_dir: PathBuf::new(),
            no_results: true,
            json: None,
            no_progress: s.no_progress,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.channels == 0 || self.subscribers_per_node == 0 || self.publishers_per_node == 0 {
            bail!("--channels, --subscribers-per-node and --publishers-per-node must be > 0");
        }
        if !(self.duration_secs > 0.0 && self.duration_secs <= 3600.0) {
            bail!("--duration-secs must be in (0, 3600]");
        }
        if self.cluster_replicas > 2 {
            bail!("--cluster-replicas must be 0..=2");
        }
        if self.max_spread < 1.0 {
            bail!("--max-spread must be >= 1");
        }
        if !(0.0..=60.0).contains(&self.idle_secs) {
            bail!("--idle-secs must be in [0, 60]");
        }
        if !(0.0..=10_000_000.0).contains(&self.rate) {
            bail!("--rate must be in [0, 10,000,000]");
        }
        if self.window == 0 || self.window > 4096 {
            bail!("--window must be 1..=4096");
        }
        if self.topologies.is_empty() {
            bail!("give at least one topology");
        }
        if !self.gateway_bin.exists() {
            bail!(
                "gateway binary {} not found (cargo build --release -p gateway)",
                self.gateway_bin.display()
            );
        }
        Ok(())
    }

    fn prefix(&self) -> &'static str {
        if self.history {
            "spreadh:"
        } else {
            "spread:"
        }
    }
}

/// When the run started (for the progress lines).
static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn say(args: &SpreadArgs, what: &str) {
    if !args.no_progress {
        let t = STARTED.get_or_init(Instant::now).elapsed().as_secs_f64();
        eprintln!("shard-spread [{t:5.1} s]: {what} (load {})", loadavg());
    }
}

/// The Redis of one phase, running.
enum RedisSide {
    Single { proc: Proc, port: u16 },
    Cluster(RedisCluster),
}

impl RedisSide {
    /// (port, pid) of every Redis process.
    fn procs(&self) -> Vec<(u16, u32)> {
        match self {
            RedisSide::Single { proc, port } => vec![(*port, proc.pid())],
            RedisSide::Cluster(c) => c.ports.iter().copied().zip(c.pids()).collect(),
        }
    }

    async fn stop(self) {
        match self {
            RedisSide::Single { proc, .. } => proc.stop().await,
            RedisSide::Cluster(c) => c.stop().await,
        }
    }
}

/// Starts the Redis of `topo` and the gateways on it.
async fn start(
    ctx: &mut Ctx,
    args: &SpreadArgs,
    topo: Topo,
) -> Result<(RedisSide, Vec<Proc>, Vec<SocketAddr>)> {
    let prefix = format!("sp{}", now_us() % 1_000_000);
    let mut env: Vec<(String, String)> = vec![
        ("GATEWAY_REDIS_PREFIX".into(), prefix),
        (
            "GATEWAY_MAX_CHANNELS_PER_CONNECTION".into(),
            args.channels.max(128).to_string(),
        ),
        ("GATEWAY_RATE_LIMIT".into(), "1000000".into()),
        ("GATEWAY_RATE_BURST".into(), "1000000".into()),
    ];
    if args.worker_threads > 0 {
        env.push((
            "GATEWAY_WORKER_THREADS".into(),
            args.worker_threads.to_string(),
        ));
    }
    let side = match topo {
        Topo::Single => {
            let port = crate::suite::nodes::free_port()?;
            let (proc, r) = ctx.redis_with("redis-single", port, &[]).await?;
            env.push(("GATEWAY_REDIS_URL".into(), r.url));
            RedisSide::Single { proc, port }
        }
        Topo::Cluster => {
            let c = RedisCluster::start(ctx, &args.redis_cli, args.cluster_replicas).await?;
            env.push(("GATEWAY_REDIS_TOPOLOGY".into(), "cluster".into()));
            env.push(("GATEWAY_REDIS_CLUSTER_NODES".into(), c.seeds().join(",")));
            RedisSide::Cluster(c)
        }
    };
    let mut gateways = Vec::new();
    let mut addrs = Vec::new();
    let tag = match topo {
        Topo::Single => "ss",
        Topo::Cluster => "sc",
    };
    for i in 0..GATEWAYS {
        let (gw, addr) = ctx.gateway_env(&format!("{tag}{i}"), None, &env).await?;
        gateways.push(gw);
        addrs.push(addr);
    }
    Ok((side, gateways, addrs))
}

/// Polls every node's /readyz until all answer 200 (bounded).
async fn wait_ready(http: &reqwest::Client, addrs: &[SocketAddr], bound: Duration) -> Result<()> {
    let deadline = Instant::now() + bound;
    for a in addrs {
        loop {
            let ok = http
                .get(format!("http://{a}/readyz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                break;
            }
            if Instant::now() > deadline {
                bail!("gateway {a} not ready after {bound:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Waits until `count()` reaches `want`, or it has not moved for `idle`,
/// or `bound` passed; the last value.
async fn wait_count(count: impl Fn() -> u64, want: u64, idle: Duration, bound: Duration) -> u64 {
    let deadline = Instant::now() + bound;
    let mut last = count();
    let mut moved = Instant::now();
    loop {
        let now = count();
        if now >= want || Instant::now() > deadline {
            return now;
        }
        if now != last {
            last = now;
            moved = Instant::now();
        } else if moved.elapsed() > idle {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs one phase on fresh processes; stops them whatever happens.
async fn phase(ctx: &mut Ctx, args: &SpreadArgs, topo: Topo) -> Result<Phase> {
    let (side, gateways, addrs) = start(ctx, args, topo).await?;
    let r = measure(ctx, args, topo, &side, &gateways, &addrs).await;
    for g in gateways {
        g.stop().await;
    }
    side.stop().await;
    r
}

async fn measure(
    ctx: &Ctx,
    args: &SpreadArgs,
    topo: Topo,
    side: &RedisSide,
    gateways: &[Proc],
    addrs: &[SocketAddr],
) -> Result<Phase> {
    let client = ctx.client(addrs);
    let http = client.http()?;
    wait_ready(&http, addrs, Duration::from_secs(30)).await?;
    let plan = Arc::new(Plan {
        ep: client.endpoints(),
        prefix: args.prefix().into(),
        channels: args.channels,
        payload: args.payload,
    });
    let nodes = addrs.len();

    // Subscribers: every one on every channel.
    let subs_total = args.subscribers_per_node * nodes as u64;
    say(
        args,
        &format!(
            "{topo:?}: {subs_total} subscribers x {} channels",
            args.channels
        ),
    );
    let subscribed =
        futures_util::future::join_all((0..subs_total).map(|i| load::subscribe(&plan, i, nodes)))
            .await;
    let mut subscribe_errors = Vec::new();
    let live = Arc::new(Live::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sub_tasks = Vec::new();
    for s in subscribed {
        match s {
            Ok(s) => sub_tasks.push(tokio::spawn(s.run(
                plan.clone(),
                live.clone(),
                stop_rx.clone(),
            ))),
            Err(e) => subscribe_errors.push(format!("{e:#}")),
        }
    }
    let connected = sub_tasks.len() as u64;
    say(
        args,
        &format!(
            "{topo:?}: {connected} subscribed ({} failed); warm-up",
            subscribe_errors.len()
        ),
    );

    // Warm-up: one publication per channel must reach every subscriber.
    let apis = client.api_bases()?;
    let warm_accepted = load::warm_up(&http, &apis, &plan).await?;
    let warm_want = warm_accepted * connected;
    let warm_got = wait_count(
        || live.warm.load(Relaxed),
        warm_want,
        Duration::from_secs(10),
        Duration::from_secs(30),
    )
    .await;

    // Publishers, connected before the window.
    let publishers = args.publishers_per_node * nodes as u64;
    let mut ws_pubs = Vec::new();
    if args.via == Via::Ws {
        for i in 0..publishers {
            ws_pubs.push(load::ws_publisher(&plan, subs_total + i, nodes).await?);
        }
    }

    // The window.
    let redis_procs = side.procs();
    let mut pids: Vec<u32> = redis_procs.iter().map(|&(_, pid)| pid).collect();
    pids.extend(gateways.iter().map(Proc::pid));
    pids.push(std::process::id());
    let idle: Vec<f64> = if args.idle_secs > 0.0 {
        say(
            args,
            &format!("{topo:?}: idle CPU sample, {} s", args.idle_secs),
        );
        let t = ticks(&pids);
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(args.idle_secs)).await;
        let el = t0.elapsed().as_secs_f64();
        pids.iter()
            .zip(&t)
            .map(|(&p, &b)| cpu_secs(&[p], &[b]) / el)
            .collect()
    } else {
        vec![0.0; pids.len()]
    };
    let mut before_counts = Vec::new();
    for &(port, _) in &redis_procs {
        before_counts.push(counters(&args.redis_cli, port).await);
    }
    let before = ticks(&pids);
    let window_start = Instant::now();
    let window_start_us = now_us();
    say(
        args,
        &format!(
            "{topo:?}: publishing for {} s ({:?}, {publishers} publishers x {} in flight)",
            args.duration_secs, args.via, args.window
        ),
    );
    let stats = Arc::new(PubStats::new(args.channels));
    let deadline = window_start + Duration::from_secs_f64(args.duration_secs);
    let mut tasks = Vec::new();
    match args.via {
        Via::Ws => {
            for ws in ws_pubs {
                tasks.push(tokio::spawn(load::ws_publish(
                    ws,
                    plan.clone(),
                    stats.clone(),
                    args.window,
                    args.rate / publishers as f64,
                    deadline,
                )));
            }
        }
        Via::Http => {
            for i in 0..publishers {
                let url = format!("{}/api/publish", apis[i as usize % apis.len()]);
                for _ in 0..args.window {
                    tasks.push(tokio::spawn(load::http_publish(
                        http.clone(),
                        url.clone(),
                        plan.clone(),
                        stats.clone(),
                        args.rate / (publishers as f64 * args.window as f64),
                        deadline,
                    )));
                }
            }
        }
    }
    let mut all = futures_util::future::join_all(tasks);
    let bound = tokio::time::sleep_until(deadline + Duration::from_secs(60));
    tokio::pin!(bound);
    let mut next_line = Instant::now() + Duration::from_secs(5);
    let finished = loop {
        tokio::select! {
            _ = &mut all => break true,
            _ = &mut bound => break false,
            _ = tokio::time::sleep_until(next_line) => {
                next_line += Duration::from_secs(5);
                say(args, &format!(
                    "{topo:?}: {} accepted, {} delivered",
                    stats.accepted_total(),
                    live.delivered.load(Relaxed)
                ));
            }
        }
    };
    if !finished {
        bail!("the publishers did not finish within 60 s of the deadline");
    }
    let publish_secs = window_start.elapsed().as_secs_f64();
    let published = stats.accepted_total();
    let want = published * connected;
    let delivered_now = wait_count(
        || live.delivered.load(Relaxed),
        want,
        Duration::from_secs(5),
        Duration::from_secs(120),
    )
    .await;
    let window_secs = window_start.elapsed().as_secs_f64();
    let cpu: Vec<f64> = pids
        .iter()
        .zip(&before)
        .map(|(&p, &b)| cpu_secs(&[p], &[b]))
        .collect();
    let mut after_counts = Vec::new();
    for &(port, _) in &redis_procs {
        after_counts.push(counters(&args.redis_cli, port).await);
    }
    let last_us = live.last_us.load(Relaxed);
    let _ = stop_tx.send(true);
    let mut results: Vec<SubResult> = Vec::new();
    for t in sub_tasks {
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(10), t).await {
            results.push(r);
        }
    }
    say(
        args,
        &format!("{topo:?}: {published} accepted, {delivered_now} delivered; stopping"),
    );

    // Figures.
    let accepted: Vec<u64> = stats.accepted.iter().map(|a| a.load(Relaxed)).collect();
    let (mut delivered, mut shortfall, mut extra, mut unexpected, mut short_pairs) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut hist = crate::common::new_hist();
    let mut drops: BTreeMap<String, u64> = BTreeMap::new();
    for r in &results {
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
    let lost_subscribers = connected - results.len() as u64;
    let delivery_secs = if last_us > window_start_us {
        (last_us - window_start_us) as f64 / 1e6
    } else {
        0.0
    };
    let n_redis = redis_procs.len();
    let per_1k = |secs: f64| {
        if published > 0 {
            secs * 1000.0 / published as f64
        } else {
            0.0
        }
    };
    let mut redis_figs = Vec::new();
    for (i, &(port, pid)) in redis_procs.iter().enumerate() {
        let delta = after_counts[i].since(&before_counts[i]);
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
            cpu_secs_per_1k_pub: per_1k(cpu[i]),
            idle_cpu_per_sec: idle[i],
            busy_cpu_secs_per_1k_pub: per_1k((cpu[i] - idle[i] * window_secs).max(0.0)),
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
    report::fill_shares(&mut redis_figs);
    let gateway_figs: Vec<ProcFig> = gateways
        .iter()
        .enumerate()
        .map(|(i, g)| ProcFig {
            name: g.name.clone(),
            pid: g.pid(),
            cpu_secs: cpu[n_redis + i],
            cpu_secs_per_1k_pub: per_1k(cpu[n_redis + i]),
            idle_cpu_per_sec: idle[n_redis + i],
        })
        .collect();
    let loadtest_cpu = cpu.last().copied().unwrap_or(0.0);
    let errors = stats.errors.lock().map(|e| e.clone()).unwrap_or_default();
    let rtt = stats
        .rtt
        .lock()
        .map(|h| Latency::of(&h))
        .unwrap_or_default();
    Ok(Phase::new(
        topo,
        args.max_spread,
        report::PhaseIn {
            subscribers: subs_total,
            connected,
            subscribe_errors,
            lost_subscribers,
            channels: args.channels,
            warmup_expected: warm_want,
            warmup_delivered: warm_got,
            publishers,
            published,
            refused: stats.refused_total(),
            publish_errors: errors,
            publish_secs,
            window_secs,
            delivered,
            expected_deliveries: want,
            shortfall,
            extra,
            unexpected,
            short_pairs,
            delivery_secs,
            drops,
            latency: Latency::of(&hist),
            publish_rtt: rtt,
            redis: redis_figs,
            gateways: gateway_figs,
            loadtest_cpu_secs: loadtest_cpu,
        },
    ))
}

/// A fresh context for `args` logging into `logs`, with the suite's
/// gateway config plus the spread namespaces.
fn context(args: &SpreadArgs, logs: PathBuf) -> Result<Ctx> {
    std::fs::create_dir_all(&logs)?;
    let config = logs.join("gateway-spread.toml");
    std::fs::write(&config, format!("{CONFIG}{NAMESPACES}"))?;
    let mut suite = SuiteArgs::for_soak(args.gateway_bin.clone(), args.redis_server.clone());
    suite.no_progress = true;
    Ok(Ctx {
        args: suite,
        logs,
        config,
        seq: 0,
    })
}

/// Runs the phases; the report (its `failures` say which phase could not
/// run).
async fn run_phases(args: &SpreadArgs, logs: PathBuf) -> Result<SpreadReport> {
    args.validate()?;
    let started = now_us();
    let mut ctx = context(args, logs)?;
    let load_before = loadavg();
    let mut single = None;
    let mut cluster = None;
    let mut failures = Vec::new();
    for &topo in &args.topologies {
        match phase(&mut ctx, args, topo).await {
            Ok(p) => match topo {
                Topo::Single => single = Some(p),
                Topo::Cluster => cluster = Some(p),
            },
            Err(e) => {
                eprintln!("shard-spread: {topo:?} failed: {e:#}");
                failures.push(format!("{topo:?}: {e:#}"));
            }
        }
    }
    Ok(SpreadReport::new(
        report::RunIn {
            date: stamp(started / 1_000_000),
            commit: git_commit().await,
            machine: machine(),
            load_before,
            load_after: loadavg(),
            args,
            duration_secs: (now_us() - started) as f64 / 1e6,
            logs: ctx.logs.display().to_string(),
        },
        single,
        cluster,
        failures,
    ))
}

/// Runs `shard-spread`: the report, written to `<out-dir>/<date>-shard-spread.{json,md}`
/// (and `--json`).
pub async fn run(args: &SpreadArgs) -> Result<SpreadReport> {
    let logs = std::env::temp_dir().join(format!("loadtest-spread-{}", now_us()));
    eprintln!("shard-spread: logs in {}", logs.display());
    let r = run_phases(args, logs).await?;
    if !args.no_results {
        let json = args.out_dir.join(format!("{}-shard-spread.json", r.date));
        let md = args.out_dir.join(format!("{}-shard-spread.md", r.date));
        write_json(&json, &r)?;
        std::fs::write(&md, r.markdown()).with_context(|| format!("writing {}", md.display()))?;
        eprintln!(
            "shard-spread: results in {} and {}",
            json.display(),
            md.display()
        );
    }
    Ok(r)
}

/// The suite's `shard-spread`: summary, checks passed, result.
pub(crate) async fn run_in_suite(s: &SuiteArgs, logs: PathBuf) -> Result<(String, bool, Value)> {
    let args = SpreadArgs::for_suite(s);
    let r = run_phases(&args, logs.join("shard-spread")).await?;
    Ok((
        r.summary(),
        r.ok,
        serde_json::to_value(&r).unwrap_or(Value::Null),
    ))
}

/// The markdown section of a suite result (`results.shard_spread`).
pub(crate) fn suite_markdown(v: &Value) -> Option<String> {
    serde_json::from_value::<SpreadReport>(v.clone())
        .ok()
        .map(|r| r.markdown())
}
