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

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::common::{metric_value, now_us, proc_sample, token};
use crate::suite::nodes::{free_port, Ctx, Proc, CONFIG};
use crate::suite::SuiteArgs;
use crate::wire::{op, Target, Ws};

/// The JWT secret the suite's gateways check (see `suite::nodes`).
const SECRET: &str = "loadtest-suite-secret-0123456789abcdef";
/// Nodes in the cluster.
const NODES: usize = 3;
/// The node that is killed and restarted.
const VICTIM: usize = 2;
/// Bound on one reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

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

/// One sample of one gateway process.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the churn started.
    pub t_secs: f64,
    /// Node index.
    pub node: usize,
    /// Process id.
    pub pid: u32,
    /// VmRSS, KiB.
    pub rss_kib: u64,
    /// Entries of /proc/<pid>/fd.
    pub fds: u64,
    /// Entries of /proc/<pid>/task.
    pub threads: u64,
}

/// Descriptors and threads of one process at a quiet moment.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    /// Open file descriptors.
    pub fds: u64,
    /// Of which TCP sockets to the Redis port (the pool and the pub/sub
    /// link: they grow with load up to the pool size, so they are not
    /// counted as a leak).
    pub redis_fds: u64,
    /// Threads.
    pub threads: u64,
}

impl Counts {
    /// Descriptors that are not Redis connections.
    fn own_fds(&self) -> u64 {
        self.fds.saturating_sub(self.redis_fds)
    }
}

/// Per-process figures.
#[derive(Debug, Clone, Serialize)]
pub struct ProcOut {
    /// Node index.
    pub node: usize,
    /// Process id.
    pub pid: u32,
    /// Samples after this process's warm-up.
    pub samples: usize,
    /// RSS slope after warm-up, KiB per minute.
    pub rss_slope_kib_per_min: Option<f64>,
    /// First and last RSS after warm-up, KiB.
    pub rss_first_kib: Option<u64>,
    /// Last RSS sample, KiB.
    pub rss_last_kib: Option<u64>,
    /// Largest RSS sample, KiB.
    pub rss_max_kib: Option<u64>,
}

/// What one churn cycle or final client ended with.
#[derive(Debug, Default)]
struct Tally {
    cycles: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    sample_errors: BTreeMap<String, String>,
    publishes: u64,
    published: u64,
}

impl Tally {
    fn fail(&mut self, kind: &str, msg: String) {
        *self.errors.entry(kind.to_owned()).or_default() += 1;
        self.sample_errors.entry(kind.to_owned()).or_insert(msg);
    }
}

/// The `soak` report.
#[derive(Debug, Clone, Serialize)]
pub struct SoakOut {
    /// "soak".
    pub scenario: &'static str,
    /// Churn phase, s.
    pub duration_secs: f64,
    /// Asked cycle rate.
    pub rate: f64,
    /// Cycles started.
    pub cycles: u64,
    /// Cycles that connected, subscribed, published and left.
    pub cycles_ok: u64,
    /// Failed cycles by kind (expected around the faults).
    pub errors: BTreeMap<String, u64>,
    /// One message per error kind.
    pub sample_errors: BTreeMap<String, String>,
    /// Client publishes sent and acknowledged with `published`.
    pub publishes: u64,
    /// Acknowledged.
    pub published: u64,
    /// Events (Redis restart, node kill, node restart) with their time, s.
    pub events: Vec<(String, f64)>,
    /// RSS, fd and thread samples of every gateway process.
    pub samples: Vec<Sample>,
    /// Per-process RSS figures.
    pub procs: Vec<ProcOut>,
    /// Final clients connected per node (the truth).
    pub final_truth: Vec<u64>,
    /// `gateway_connections` per node with the final clients connected.
    pub final_connections: Vec<f64>,
    /// `gateway_subscriptions` per node with the final clients connected
    /// (each final client holds 2 subscriptions).
    pub final_subscriptions: Vec<f64>,
    /// The gauges matched the truth.
    pub gauges_exact: bool,
    /// `gateway_connections`, `gateway_subscriptions`, `gateway_channels`
    /// per node after every client left.
    pub empty_gauges: Vec<[f64; 3]>,
    /// They were all 0.
    pub gauges_zero: bool,
    /// Descriptors and threads per node after start-up and a warm-up round
    /// (the restarted node's figure is its first process's).
    pub counts_before: Vec<Counts>,
    /// Descriptors and threads per node after every client left.
    pub counts_after: Vec<Counts>,
    /// No node has more descriptors (other than Redis connections) or
    /// threads after than before.
    pub no_leak: bool,
    /// Task gauges the gateway exports (none known today).
    pub task_gauges: BTreeMap<String, f64>,
    /// Gauges right, nothing leaked, the victim restarted.
    pub ok: bool,
}

impl SoakOut {
    /// Human summary.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "soak: {:.0} s, {} cycles ({} ok), {} of {} publishes acknowledged, errors {:?}\n",
            self.duration_secs,
            self.cycles,
            self.cycles_ok,
            self.published,
            self.publishes,
            self.errors
        );
        s += &format!("  events {:?}\n", self.events);
        for p in &self.procs {
            s += &format!(
                "  node {} pid {}: RSS {:?} -> {:?} KiB (max {:?}), slope {} KiB/min over {} samples\n",
                p.node,
                p.pid,
                p.rss_first_kib,
                p.rss_last_kib,
                p.rss_max_kib,
                p.rss_slope_kib_per_min
                    .map_or("n/a".to_owned(), |v| format!("{v:+.1}")),
                p.samples
            );
        }
        s += &format!(
            "  final: truth {:?}, connections {:?}, subscriptions {:?}: {}\n",
            self.final_truth,
            self.final_connections,
            self.final_subscriptions,
            if self.gauges_exact { "exact" } else { "WRONG" }
        );
        s += &format!(
            "  after all left (conns, subs, channels) {:?}: {}\n",
            self.empty_gauges,
            if self.gauges_zero { "0" } else { "NOT 0" }
        );
        s += &format!(
            "  fds/threads before {:?} after {:?}: {}; task gauges {:?}\n",
            self.counts_before,
            self.counts_after,
            if self.no_leak { "no leak" } else { "LEAK" },
            self.task_gauges
        );
        s += if self.ok { "  OK" } else { "  NOT OK" };
        s
    }
}

/// Entries of a /proc directory (0 when unreadable).
fn entries(path: &str) -> u64 {
    std::fs::read_dir(path).map_or(0, |d| d.count() as u64)
}

/// Socket inodes of TCP connections to 127.0.0.1:`port` (/proc/net/tcp).
fn redis_inodes(port: u16) -> Vec<u64> {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let want = format!("0100007F:{port:04X}");
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&want.as_str()))
                .then(|| f.get(9).and_then(|i| i.parse().ok()))
                .flatten()
        })
        .collect()
}

fn counts(pid: u32, redis_port: u16) -> Counts {
    let inodes = redis_inodes(redis_port);
    let mut fds = 0;
    let mut redis_fds = 0;
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in dir.flatten() {
            fds += 1;
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            let t = target.to_string_lossy();
            let inode = t
                .strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|n| n.parse::<u64>().ok());
            if inode.is_some_and(|i| inodes.contains(&i)) {
                redis_fds += 1;
            }
        }
    }
    Counts {
        fds,
        redis_fds,
        threads: entries(&format!("/proc/{pid}/task")),
    }
}

/// Least-squares slope of (t, y), per minute of t seconds.
fn slope_per_min(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let mt = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mt).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mt) * (p.1 - my)).sum();
    if sxx <= 0.0 {
        return None;
    }
    Some(sxy / sxx * 60.0)
}

/// The live nodes' addresses (None while a node is down) and pids.
#[derive(Debug, Default)]
struct Live {
    addrs: Vec<Option<SocketAddr>>,
    pids: Vec<u32>,
}

type Shared = Arc<Mutex<Live>>;

fn live_addr(live: &Shared, i: usize) -> Option<(usize, SocketAddr)> {
    let l = live.lock().ok()?;
    let n = l.addrs.len();
    (0..n).find_map(|k| {
        let node = (i + k) % n;
        l.addrs[node].map(|a| (node, a))
    })
}

/// Reads one JSON text frame (answering pings) before `deadline`.
async fn recv(ws: &mut Ws, deadline: Instant) -> Result<Value> {
    loop {
        while let Some(f) = ws.next_frame()? {
            match f.opcode {
                op::TEXT => return Ok(serde_json::from_slice(ws.payload(&f))?),
                op::PING => ws.pong(&f).await?,
                op::CLOSE => {
                    let p = ws.payload(&f);
                    let code = if p.len() >= 2 {
                        u16::from_be_bytes([p[0], p[1]])
                    } else {
                        0
                    };
                    bail!("closed by the server with {code}");
                }
                _ => {}
            }
        }
        let n = tokio::time::timeout_at(deadline, ws.fill())
            .await
            .context("reply timeout")??;
        if n == 0 {
            bail!("connection closed");
        }
    }
}

/// Sends `req` and waits for the frame that echoes its id.
async fn request(ws: &mut Ws, req: Value) -> Result<Value> {
    let id = req["id"].clone();
    ws.send_text(&req.to_string()).await?;
    let deadline = Instant::now() + REPLY_TIMEOUT;
    for _ in 0..10_000 {
        let v = recv(ws, deadline).await?;
        if v["id"] == id {
            if v["type"] == "error" {
                bail!("error {}", v["code"].as_str().unwrap_or("?"));
            }
            return Ok(v);
        }
    }
    bail!("no reply among 10,000 frames")
}

/// Connects user `user` to `addr` from `src`, waits for the welcome.
async fn connect(addr: SocketAddr, user: &str, src: Ipv4Addr) -> Result<Ws, (String, String)> {
    let tok = token(SECRET, user).map_err(|e| ("jwt".to_owned(), format!("{e:#}")))?;
    let host = addr.to_string();
    let t = Target {
        addr,
        host: &host,
        path: "/ws",
        src: Some(src),
        bearer: Some(&tok),
        read_buf: 4096,
    };
    let mut ws = Ws::connect(&t, REPLY_TIMEOUT)
        .await
        .map_err(|e| (format!("connect_{}", e.kind), e.to_string()))?;
    let v = recv(&mut ws, Instant::now() + REPLY_TIMEOUT)
        .await
        .map_err(|e| ("welcome".to_owned(), format!("{e:#}")))?;
    if v["type"] != "welcome" {
        return Err(("welcome".to_owned(), format!("first frame {v}")));
    }
    Ok(ws)
}

/// Subscribes to the two channels of client `i`.
async fn subscribe_two(ws: &mut Ws, i: u64) -> Result<()> {
    request(
        ws,
        json!({"op": "subscribe", "id": 1, "channel": format!("room:{}", i % 20)}),
    )
    .await?;
    request(
        ws,
        json!({"op": "subscribe", "id": 2, "channel": format!("fan:{}", i % 50)}),
    )
    .await?;
    Ok(())
}

fn src_of(i: u64, n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 1 + (i % u64::from(n.max(1))) as u8)
}

/// One churn cycle: connect, subscribe twice, publish, linger, leave by a
/// clean close, a FIN or a reset (i % 3).
async fn cycle(live: Shared, i: u64, linger: Duration, src: Ipv4Addr, tally: Arc<Mutex<Tally>>) {
    let outcome: Result<bool, (String, String)> = async {
        let (_, addr) =
            live_addr(&live, i as usize).ok_or(("no_node".to_owned(), String::new()))?;
        let mut ws = connect(addr, &format!("soak{}", i % 200), src).await?;
        subscribe_two(&mut ws, i)
            .await
            .map_err(|e| ("subscribe".to_owned(), format!("{e:#}")))?;
        let pubd = request(
            &mut ws,
            json!({"op": "publish", "id": 3, "channel": format!("fan:{}", i % 50), "data": {"i": i}}),
        )
        .await;
        let deadline = Instant::now() + linger;
        // Linger while reading (pushes, pings) so the socket does not back up.
        while Instant::now() < deadline {
            if recv(&mut ws, deadline).await.is_err() {
                break;
            }
        }
        match i % 3 {
            0 => {
                ws.close(1000, Duration::from_secs(5)).await;
            }
            1 => ws.drop_fin(),
            _ => ws.reset(),
        }
        pubd.map(|_| true)
            .map_err(|e| ("publish".to_owned(), format!("{e:#}")))
    }
    .await;
    if let Ok(mut t) = tally.lock() {
        t.cycles += 1;
        match outcome {
            Ok(published) => {
                t.ok += 1;
                t.publishes += 1;
                t.published += u64::from(published);
            }
            Err((kind, msg)) => {
                if kind == "publish" {
                    t.publishes += 1;
                }
                t.fail(&kind, msg);
            }
        }
    }
}

/// Scrapes one gauge from a node's /metrics.
async fn gauges(http: &reqwest::Client, addr: SocketAddr) -> Result<String> {
    Ok(http
        .get(format!("http://{addr}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .text()
        .await?)
}

/// Polls every node's gauges until `want(node, text)` holds for all, at
/// most `bound`; returns the last texts.
async fn wait_gauges(
    http: &reqwest::Client,
    addrs: &[SocketAddr],
    bound: Duration,
    want: impl Fn(usize, &str) -> bool,
) -> (bool, Vec<String>) {
    let deadline = Instant::now() + bound;
    let mut texts = vec![String::new(); addrs.len()];
    loop {
        for (i, a) in addrs.iter().enumerate() {
            if let Ok(t) = gauges(http, *a).await {
                texts[i] = t;
            }
        }
        if texts.iter().enumerate().all(|(i, t)| want(i, t)) {
            return (true, texts);
        }
        if Instant::now() >= deadline {
            return (false, texts);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn gauge(text: &str, name: &str) -> f64 {
    metric_value(text, name).unwrap_or(f64::NAN)
}

/// Waits until every node answers /readyz with 200, at most `bound`.
async fn wait_ready(http: &reqwest::Client, addrs: &[SocketAddr], bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    loop {
        let mut all = true;
        for a in addrs {
            let ok = http
                .get(format!("http://{a}/readyz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            all &= ok;
        }
        if all {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Descriptors and threads of `pid` once quiet: the smallest of readings
/// over 12 s (an idle tokio blocking thread exits after 10 s), so before
/// and after are read alike.
async fn quiet_counts(pids: &[u32], redis_port: u16) -> Vec<Counts> {
    let mut best: Vec<Counts> = pids.iter().map(|&p| counts(p, redis_port)).collect();
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for (b, &p) in best.iter_mut().zip(pids) {
            let c = counts(p, redis_port);
            if c.own_fds() < b.own_fds() {
                b.fds = c.fds;
                b.redis_fds = c.redis_fds;
            }
            b.threads = b.threads.min(c.threads);
        }
    }
    best
}

/// Connects `n` clients spread round-robin over `addrs` (index base
/// `base`), each subscribed to 2 channels.
async fn connect_final(
    addrs: &[SocketAddr],
    n: usize,
    base: u64,
    src_addrs: u8,
) -> Result<(Vec<Ws>, Vec<u64>)> {
    let mut out = Vec::with_capacity(n);
    let mut truth = vec![0u64; addrs.len()];
    for k in 0..n {
        let node = k % addrs.len();
        let i = base + k as u64;
        let mut ws = connect(addrs[node], &format!("final{k}"), src_of(i, src_addrs))
            .await
            .map_err(|(kind, msg)| anyhow::anyhow!("final client {k}: {kind}: {msg}"))?;
        subscribe_two(&mut ws, i).await?;
        truth[node] += 1;
        out.push(ws);
    }
    Ok((out, truth))
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
                let c = counts(pid, redis_port);
                let rss = proc_sample(pid).map_or(0, |s| s.rss_kib);
                samples.push(Sample {
                    t_secs: t,
                    node,
                    pid,
                    rss_kib: rss,
                    fds: c.fds,
                    threads: c.threads,
                });
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
    let mut task_gauges = BTreeMap::new();
    for (n, t) in texts.iter().enumerate() {
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split([' ', '{']).next().unwrap_or("");
            if name.contains("task") {
                task_gauges.insert(format!("{n}:{name}"), gauge(t, name));
            }
        }
    }
    let pids: Vec<u32> = gws.iter().map(Proc::pid).collect();
    let counts_after = quiet_counts(&pids, redis_port).await;
    let no_leak = counts_after
        .iter()
        .zip(&counts_before)
        .all(|(a, b)| a.own_fds() <= b.own_fds() && a.threads <= b.threads);

    let mut procs = Vec::new();
    let mut seen: Vec<(usize, u32)> = Vec::new();
    for s in &samples {
        if !seen.contains(&(s.node, s.pid)) {
            seen.push((s.node, s.pid));
        }
    }
    for (node, pid) in seen {
        let from = if pid == pids0[node] {
            warmup_secs
        } else {
            proc_start[node] + warmup_secs
        };
        let mine: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.pid == pid && s.t_secs >= from)
            .collect();
        let pts: Vec<(f64, f64)> = mine.iter().map(|s| (s.t_secs, s.rss_kib as f64)).collect();
        procs.push(ProcOut {
            node,
            pid,
            samples: mine.len(),
            rss_slope_kib_per_min: slope_per_min(&pts),
            rss_first_kib: mine.first().map(|s| s.rss_kib),
            rss_last_kib: mine.last().map(|s| s.rss_kib),
            rss_max_kib: mine.iter().map(|s| s.rss_kib).max(),
        });
    }
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

    #[test]
    fn fits_a_slope() {
        let pts: Vec<(f64, f64)> = (0..10)
            .map(|i| (i as f64 * 60.0, 100.0 + i as f64))
            .collect();
        let s = slope_per_min(&pts).unwrap_or(f64::NAN);
        assert!((s - 1.0).abs() < 1e-9, "{s}");
        assert_eq!(slope_per_min(&pts[..2]), None);
    }
}
