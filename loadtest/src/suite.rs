//! `suite`: the benchmark suite behind docs/performance.md.
//!
//! Builds the release gateway and the ceiling probes, then, on loopback:
//! runs the ceiling probes (bare axum fan-out, batched and unbatched, and
//! idle RSS with a 4 KiB read buffer); starts a fresh single node for each
//! single-node scenario (idle, fan-out, churn, broadcast RTT) and a fresh
//! redis-server + 3-node cluster for each cluster scenario (fan-out,
//! latency); and writes `<out>/<date>.json` plus `<out>/<date>.md` with the
//! targets table (target vs measured vs ratio to the ceiling of the same
//! run). The parameters are fixed (see [`Plan`]) so runs compare.
//!
//! Every child process is killed when its handle drops; every wait is
//! bounded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::churn::{self, ChurnArgs};
use crate::cli::ClientArgs;
use crate::common::{clk_tck, now_us, proc_sample, write_json};
use crate::fanout::{self, FanoutArgs, Via};
use crate::idle::{self, IdleArgs};
use crate::rtt::{self, BcastVia, RttArgs};

/// Options of `suite`.
#[derive(Debug, Clone, Args)]
pub struct SuiteArgs {
    /// Release gateway binary.
    #[arg(long, default_value = "target/release/gateway")]
    pub gateway_bin: PathBuf,
    /// Do not run `cargo build --release -p gateway` first.
    #[arg(long)]
    pub no_build: bool,
    /// redis-server binary.
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
    /// Ceiling probe manifest.
    #[arg(long, default_value = "../shared/bench/ceiling/Cargo.toml")]
    pub ceiling_manifest: PathBuf,
    /// Target directory for the ceiling probe build.
    #[arg(long, default_value = "/tmp/ceiling")]
    pub ceiling_target_dir: PathBuf,
    /// Skip the ceiling probes.
    #[arg(long)]
    pub no_ceiling: bool,
    /// Runtime threads of each cluster node (`GATEWAY_WORKER_THREADS`), e.g.
    /// 1 to model pods with a one-core CPU limit. 0 = the gateway's default
    /// (one per CPU, in each node).
    #[arg(long, default_value_t = 0)]
    pub cluster_worker_threads: usize,
    /// Where results go.
    #[arg(long, default_value = "loadtest/results")]
    pub out_dir: PathBuf,
    /// Scaled-down parameters (minutes -> seconds; not comparable).
    #[arg(long)]
    pub quick: bool,
    /// Run only these scenarios (comma separated): ceiling, idle, fanout,
    /// fanout-ws, churn, rtt, cluster-fanout, latency.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// No progress bars.
    #[arg(long)]
    pub no_progress: bool,
    /// Run nothing: print the markdown table of an earlier results JSON
    /// (and rewrite its .md beside it).
    #[arg(long, value_name = "JSON")]
    pub table_from: Option<PathBuf>,
}

/// HTTP publishers per channel in the flat-out fan-outs (publications in
/// flight; order is checked per publisher).
const FLAT_OUT_LANES: u64 = 64;

const SECRET: &str = "loadtest-suite-secret-0123456789abcdef";

const CONFIG: &str = r#"# Written by `loadtest suite`.
log = "warn"
# Publishers in the benchmarks publish far above the per-connection default.
rate_limit = 1000000
rate_burst = 1000000

[default_namespace]
client_publish = true

[namespaces.idle]

[namespaces.room]
presence = true

[namespaces.fan]
client_publish = true

[namespaces.lat]
client_publish = true

[namespaces.bcast]
"#;

/// The fixed parameters.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    idle_connections: u64,
    idle_window_secs: u64,
    fanout_subscribers: u64,
    fanout_messages: u64,
    cluster_subscribers: u64,
    cluster_messages: u64,
    latency_channels: u64,
    latency_per_channel: u64,
    latency_rate: f64,
    latency_secs: f64,
    rtt_step: u64,
    rtt_max: u64,
    rtt_samples: u64,
    churn_hold: u64,
    churn_secs: f64,
    churn_concurrency: usize,
    ceiling_idle_clients: u64,
    ceiling_unbatched_messages: u64,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                idle_connections: 2000,
                idle_window_secs: 10,
                fanout_subscribers: 1000,
                fanout_messages: 200,
                cluster_subscribers: 3000,
                cluster_messages: 200,
                latency_channels: 10,
                latency_per_channel: 30,
                latency_rate: 200.0,
                latency_secs: 5.0,
                rtt_step: 500,
                rtt_max: 2000,
                rtt_samples: 10,
                churn_hold: 200,
                churn_secs: 3.0,
                churn_concurrency: 64,
                ceiling_idle_clients: 2000,
                ceiling_unbatched_messages: 100,
            }
        } else {
            Plan {
                idle_connections: 15_000,
                idle_window_secs: 50,
                fanout_subscribers: 5000,
                fanout_messages: 1000,
                cluster_subscribers: 15_000,
                cluster_messages: 1000,
                latency_channels: 100,
                latency_per_channel: 30,
                latency_rate: 1000.0,
                latency_secs: 30.0,
                rtt_step: 1000,
                rtt_max: 19_000,
                rtt_samples: 20,
                churn_hold: 1000,
                churn_secs: 10.0,
                churn_concurrency: 64,
                ceiling_idle_clients: 9000,
                ceiling_unbatched_messages: 200,
            }
        }
    }
}

/// A child process killed on drop.
struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    async fn stop(mut self) {
        // SIGKILL: the drain would take drain_grace_ms for nothing here.
        let _ = self.child.kill().await;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.start_kill();
            eprintln!("suite: killed {}", self.name);
        }
    }
}

/// A cluster's Redis: every node of the cluster uses the same URL and prefix.
struct Redis {
    url: String,
    prefix: String,
}

struct Ctx {
    args: SuiteArgs,
    logs: PathBuf,
    config: PathBuf,
    seq: u32,
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl Ctx {
    fn log_file(&mut self, name: &str) -> Result<std::fs::File> {
        self.seq += 1;
        let path = self.logs.join(format!("{:02}-{name}.log", self.seq));
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))
    }

    /// Starts a gateway on 127.0.0.1:0 and waits for its listening line.
    async fn gateway(&mut self, name: &str, redis: Option<&Redis>) -> Result<(Proc, SocketAddr)> {
        let log = self.log_file(name)?;
        let mut cmd = Command::new(&self.args.gateway_bin);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("GATEWAY_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("GATEWAY_CONFIG", &self.config)
            .env("GATEWAY_LISTEN", "127.0.0.1:0")
            .env("GATEWAY_NODE_ID", name)
            .env("GATEWAY_JWT_SECRET", SECRET)
            .env("GATEWAY_AUTH_REQUIRED", "true");
        if let Some(r) = redis {
            cmd.env("GATEWAY_REDIS_URL", &r.url)
                .env("GATEWAY_REDIS_PREFIX", &r.prefix);
            if self.args.cluster_worker_threads > 0 {
                cmd.env(
                    "GATEWAY_WORKER_THREADS",
                    self.args.cluster_worker_threads.to_string(),
                );
            }
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.args.gateway_bin.display()))?;
        let stdout = child.stdout.take().context("gateway stdout")?;
        let proc = Proc {
            child,
            name: format!("gateway {name}"),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.trim().strip_prefix("gateway listening on ") {
                    if let (Some(tx), Ok(addr)) = (tx.take(), addr.parse::<SocketAddr>()) {
                        let _ = tx.send(addr);
                    }
                }
            }
        });
        let addr = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .map_err(|_| {
                anyhow!(
                    "gateway {name} printed no listening line in 30 s (see {})",
                    self.logs.display()
                )
            })?
            .map_err(|_| {
                anyhow!(
                    "gateway {name} exited before listening (see {})",
                    self.logs.display()
                )
            })?;
        Ok((proc, addr))
    }

    /// Starts redis-server on a free loopback port.
    async fn redis(&mut self) -> Result<(Proc, Redis)> {
        let port = free_port()?;
        let log = self.log_file("redis")?;
        let child = Command::new(&self.args.redis_server)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.args.redis_server))?;
        let proc = Proc {
            child,
            name: "redis-server".into(),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                let mut buf = [0u8; 16];
                if s.write_all(b"PING\r\n").await.is_ok() {
                    if let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await
                    {
                        if buf[..n].starts_with(b"+PONG") {
                            break;
                        }
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("redis-server did not answer PING on {port} within 15 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok((
            proc,
            Redis {
                url: format!("redis://127.0.0.1:{port}/"),
                prefix: format!("lt{}", now_us() % 1_000_000),
            },
        ))
    }

    /// Client options for `addrs`.
    fn client(&self, addrs: &[SocketAddr]) -> ClientArgs {
        let mut c = ClientArgs::for_urls(addrs.iter().map(|a| format!("ws://{a}/ws")).collect());
        c.jwt_secret = Some(SECRET.into());
        c.no_progress = self.args.no_progress;
        c
    }

    fn wants(&self, name: &str) -> bool {
        self.args.only.is_empty() || self.args.only.iter().any(|o| o == name)
    }
}

/// CPU seconds used by `pids` between two samples.
fn cpu_secs(pids: &[u32], before: &[u64]) -> f64 {
    let tck = clk_tck() as f64;
    pids.iter()
        .zip(before)
        .map(|(&p, &b)| proc_sample(p).map_or(0.0, |s| s.cpu_ticks.saturating_sub(b) as f64 / tck))
        .sum()
}

fn ticks(pids: &[u32]) -> Vec<u64> {
    pids.iter()
        .map(|&p| proc_sample(p).map_or(0, |s| s.cpu_ticks))
        .collect()
}

async fn run_cmd(cmd: &mut Command, what: &str, timeout: Duration) -> Result<String> {
    let out = tokio::time::timeout(timeout, cmd.kill_on_drop(true).output())
        .await
        .map_err(|_| anyhow!("{what} took more than {timeout:?}"))?
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn wait_port(port: u16, bound: Duration) -> Result<()> {
    let deadline = Instant::now() + bound;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("nothing listens on 127.0.0.1:{port} after {bound:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The bare axum fan-out probe: N clients, M messages, batched or not.
async fn ceiling_fanout(ctx: &mut Ctx, n: u64, m: u64, batch: bool) -> Result<Value> {
    let bin = ctx.args.ceiling_target_dir.join("release/fanout");
    let port = free_port()?;
    let log = ctx.log_file(if batch {
        "ceiling-batched"
    } else {
        "ceiling-unbatched"
    })?;
    let server = Command::new(&bin)
        .args(["server", &port.to_string(), &n.to_string(), &m.to_string()])
        .arg(if batch { "1" } else { "0" })
        .arg("1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut server = Proc {
        child: server,
        name: "ceiling fanout server".into(),
    };
    wait_port(port, Duration::from_secs(15)).await?;
    let out = run_cmd(
        Command::new(&bin).args(["client", &port.to_string(), &n.to_string(), &m.to_string()]),
        "ceiling fanout client",
        Duration::from_secs(120),
    )
    .await?;
    let mut server_out = String::new();
    if let Some(mut so) = server.child.stdout.take() {
        let _ =
            tokio::time::timeout(Duration::from_secs(10), so.read_to_string(&mut server_out)).await;
    }
    server.stop().await;
    let line = out
        .lines()
        .find(|l| l.contains("deliveries/s="))
        .with_context(|| format!("no deliveries/s in the probe output: {out:?}"))?;
    let field = |name: &str| -> Option<f64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.trim_end_matches('s').parse().ok())
    };
    let rate = field("deliveries/s=").context("unparsable deliveries/s")?;
    Ok(json!({
        "n": n, "m": m, "batched": batch, "nodelay": true,
        "frames": field("frames="), "expected": field("expected="),
        "deliveries_per_sec": rate, "client_line": line.trim(), "server_line": server_out.trim(),
    }))
}

/// The bare axum idle RSS probe (echo server with a 4 KiB read buffer).
async fn ceiling_idle(ctx: &mut Ctx, n: u64) -> Result<Value> {
    let dir = ctx.args.ceiling_target_dir.join("release");
    let port = free_port()?;
    let log = ctx.log_file("ceiling-idle")?;
    let server = Command::new(dir.join("echo_server"))
        .arg(port.to_string())
        .env("READ_BUF", "4096")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .context("starting echo_server")?;
    let server = Proc {
        child: server,
        name: "ceiling echo_server".into(),
    };
    wait_port(port, Duration::from_secs(15)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = proc_sample(server.pid())?;
    let mut clients = Command::new(dir.join("idle_clients"))
        .args([port.to_string(), n.to_string(), "30".into()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting idle_clients")?;
    let stdout = clients.stdout.take().context("idle_clients stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(l)) = lines.next_line().await {
            if l.starts_with("READY") {
                return Some(l);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .context("idle_clients never printed READY")?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = proc_sample(server.pid())?;
    let _ = clients.kill().await;
    server.stop().await;
    let per = (after.rss_kib as f64 - before.rss_kib as f64) * 1024.0 / n as f64;
    Ok(json!({
        "n": n, "read_buf": 4096, "rss_before_kib": before.rss_kib, "rss_after_kib": after.rss_kib,
        "rss_per_conn_bytes": per, "ready_line": ready,
    }))
}

/// The machine this ran on.
fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned());
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| {
            v.split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
        });
    json!({
        "cpu": model,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "mem_gib": mem_kib.map(|k| (k as f64 / 1048576.0 * 10.0).round() / 10.0),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "nofile": crate::common::raise_nofile(),
    })
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `YYYY-MM-DDTHHMMSSZ` from the Unix time.
fn stamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

async fn git_commit() -> String {
    let rev = run_cmd(
        Command::new("git").args(["rev-parse", "--short", "HEAD"]),
        "git rev-parse",
        Duration::from_secs(10),
    )
    .await
    .unwrap_or_default();
    let dirty = run_cmd(
        Command::new("git").args(["status", "--porcelain", "gateway"]),
        "git status",
        Duration::from_secs(10),
    )
    .await
    .map(|s| !s.trim().is_empty())
    .unwrap_or(false);
    format!(
        "{}{}",
        rev.trim(),
        if dirty { " (gateway/ modified)" } else { "" }
    )
}

fn step(name: &str) {
    eprintln!("\n==> suite: {name} (load {})", loadavg());
}

/// Runs the suite.
pub async fn run(args: &SuiteArgs) -> Result<ExitCode> {
    if let Some(path) = &args.table_from {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut doc: Value = serde_json::from_str(&text)?;
        let results: BTreeMap<String, Value> =
            serde_json::from_value(doc["results"].clone()).unwrap_or_default();
        let t = table(&results);
        doc["table"] = to_value(&t.rows);
        write_json(path, &doc)?;
        let md = markdown(&doc, &t);
        std::fs::write(path.with_extension("md"), &md)?;
        println!("{md}");
        return Ok(ExitCode::SUCCESS);
    }
    let started = now_us();
    let date = stamp(started / 1_000_000);
    let logs = std::env::temp_dir().join(format!("loadtest-suite-{date}"));
    std::fs::create_dir_all(&logs)?;
    let config = logs.join("gateway.toml");
    std::fs::write(&config, CONFIG)?;
    let plan = Plan::new(args.quick);
    let mut ctx = Ctx {
        args: args.clone(),
        logs: logs.clone(),
        config,
        seq: 0,
    };
    eprintln!("suite: logs and config in {}", logs.display());

    if !args.no_build {
        step("cargo build --release -p gateway");
        run_cmd(
            Command::new("cargo").args(["build", "--release", "-p", "gateway"]),
            "cargo build --release -p gateway",
            Duration::from_secs(1800),
        )
        .await?;
    }
    if !args.gateway_bin.exists() {
        bail!(
            "{} not found (build it with cargo build --release -p gateway)",
            args.gateway_bin.display()
        );
    }
    let mut results: BTreeMap<String, Value> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    let load_start = loadavg();

    if ctx.wants("ceiling") && !args.no_ceiling {
        step("ceiling probes");
        let built = run_cmd(
            Command::new("cargo")
                .args(["build", "--release", "--manifest-path"])
                .arg(&args.ceiling_manifest)
                .arg("--target-dir")
                .arg(&args.ceiling_target_dir),
            "building the ceiling probes",
            Duration::from_secs(1800),
        )
        .await;
        match built {
            Err(e) => failures.push(format!("ceiling build: {e:#}")),
            Ok(_) => {
                let n = plan.fanout_subscribers;
                match ceiling_fanout(&mut ctx, n, plan.fanout_messages, true).await {
                    Ok(v) => {
                        eprintln!("  batched: {}", v["client_line"]);
                        results.insert("ceiling_fanout_batched".into(), v);
                    }
                    Err(e) => failures.push(format!("ceiling batched: {e:#}")),
                }
                match ceiling_fanout(&mut ctx, n, plan.ceiling_unbatched_messages, false).await {
                    Ok(v) => {
                        eprintln!("  unbatched: {}", v["client_line"]);
                        results.insert("ceiling_fanout_unbatched".into(), v);
                    }
                    Err(e) => failures.push(format!("ceiling unbatched: {e:#}")),
                }
                match ceiling_idle(&mut ctx, plan.ceiling_idle_clients).await {
                    Ok(v) => {
                        eprintln!(
                            "  idle: {:.0} B per connection",
                            v["rss_per_conn_bytes"].as_f64().unwrap_or(0.0)
                        );
                        results.insert("ceiling_idle".into(), v);
                    }
                    Err(e) => failures.push(format!("ceiling idle: {e:#}")),
                }
            }
        }
    }

    if ctx.wants("idle") {
        step(&format!(
            "idle, {} connections, one node",
            plan.idle_connections
        ));
        let r = async {
            let (gw, addr) = ctx.gateway("idle", None).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let a = IdleArgs {
                connections: plan.idle_connections,
                channels: 1000,
                channel_prefix: "idle:".into(),
                presence_prefix: "room:".into(),
                pids: vec![gw.pid()],
                settle_secs: 3,
                window_secs: plan.idle_window_secs,
                client: ctx.client(&[addr]),
            };
            let r = idle::run(&a).await;
            gw.stop().await;
            r
        }
        .await;
        record(
            &mut results,
            &mut failures,
            "idle",
            r.map(|r| (r.summary(), r.ok, to_value(&r))),
        );
    }

    if ctx.wants("fanout") {
        step(&format!(
            "fan-out flat out, {} subscribers, one node",
            plan.fanout_subscribers
        ));
        let r = async {
            let (gw, addr) = ctx.gateway("fanout", None).await?;
            let pids = [gw.pid()];
            let a = FanoutArgs {
                subscribers: plan.fanout_subscribers,
                channels: 1,
                channel_prefix: "fan:".into(),
                via: Via::Http,
                lanes: FLAT_OUT_LANES,
                window: 1,
                rate: 0.0,
                messages: plan.fanout_messages,
                duration_secs: 0.0,
                payload: 64,
                idle_timeout_ms: 10_000,
                max_wait_secs: 300,
                client: ctx.client(&[addr]),
            };
            let t = ticks(&pids);
            let r = fanout::run(&a).await;
            let cpu = cpu_secs(&pids, &t);
            gw.stop().await;
            r.map(|r| (r, cpu))
        }
        .await;
        record(
            &mut results,
            &mut failures,
            "fanout",
            r.map(|(r, cpu)| {
                let mut v = to_value(&r);
                v["gateway_cpu_secs"] = json!(cpu);
                (r.summary(), r.ok, v)
            }),
        );
    }

    if ctx.wants("fanout-ws") {
        step(&format!(
            "fan-out flat out over the WebSocket publish op, {} subscribers, one node",
            plan.fanout_subscribers
        ));
        let r = async {
            let (gw, addr) = ctx.gateway("fanout-ws", None).await?;
            let a = FanoutArgs {
                subscribers: plan.fanout_subscribers,
                channels: 1,
                channel_prefix: "fan:".into(),
                via: Via::Ws,
                lanes: 1,
                window: 256,
                rate: 0.0,
                messages: plan.fanout_messages,
                duration_secs: 0.0,
                payload: 64,
                idle_timeout_ms: 10_000,
                max_wait_secs: 300,
                client: ctx.client(&[addr]),
            };
            let r = fanout::run(&a).await;
            gw.stop().await;
            r
        }
        .await;
        record(
            &mut results,
            &mut failures,
            "fanout_ws",
            r.map(|r| (r.summary(), r.ok, to_value(&r))),
        );
    }

    if ctx.wants("churn") {
        step("churn, one node");
        let r = async {
            let (gw, addr) = ctx.gateway("churn", None).await?;
            let a = ChurnArgs {
                hold: plan.churn_hold,
                rate: 0.0,
                duration_secs: plan.churn_secs,
                concurrency: plan.churn_concurrency,
                linger_ms: 0,
                workers: 1,
                presence_prefix: "room:".into(),
                rooms: 100,
                settle_secs: 20,
                client: ctx.client(&[addr]),
            };
            let r = churn::run(&a).await;
            gw.stop().await;
            r
        }
        .await;
        record(
            &mut results,
            &mut failures,
            "churn",
            r.map(|r| (r.summary(), r.ok, to_value(&r))),
        );
    }

    if ctx.wants("rtt") {
        step("broadcast RTT, one node");
        let r = async {
            let (gw, addr) = ctx.gateway("rtt", None).await?;
            let a = RttArgs {
                step: plan.rtt_step,
                max_clients: plan.rtt_max,
                samples: plan.rtt_samples,
                in_flight: 4,
                bound_ms: 500.0,
                via: BcastVia::Broadcast,
                channel: "bcast:all".into(),
                payload: 64,
                sample_timeout_secs: 30,
                client: ctx.client(&[addr]),
            };
            let r = rtt::run(&a).await;
            gw.stop().await;
            r
        }
        .await;
        record(
            &mut results,
            &mut failures,
            "rtt",
            r.map(|r| (r.summary(), r.max_clients_under_bound > 0, to_value(&r))),
        );
    }

    if ctx.wants("cluster-fanout") {
        step(&format!(
            "fan-out flat out, 3 nodes + Redis, {} subscribers",
            plan.cluster_subscribers
        ));
        let r = async {
            let (redis, cluster) = ctx.redis().await?;
            let mut gws = Vec::new();
            let mut addrs = Vec::new();
            for i in 0..3 {
                let (gw, addr) = ctx.gateway(&format!("cfan{i}"), Some(&cluster)).await?;
                gws.push(gw);
                addrs.push(addr);
            }
            let mut pids: Vec<u32> = gws.iter().map(Proc::pid).collect();
            pids.push(redis.pid());
            let a = FanoutArgs {
                subscribers: plan.cluster_subscribers,
                channels: 1,
                channel_prefix: "fan:".into(),
                via: Via::Http,
                lanes: FLAT_OUT_LANES,
                window: 1,
                rate: 0.0,
                messages: plan.cluster_messages,
                duration_secs: 0.0,
                payload: 64,
                idle_timeout_ms: 10_000,
                max_wait_secs: 300,
                client: ctx.client(&addrs),
            };
            let t = ticks(&pids);
            let r = fanout::run(&a).await;
            let cpu = cpu_secs(&pids, &t);
            for gw in gws {
                gw.stop().await;
            }
            redis.stop().await;
            r.map(|r| (r, cpu))
        }
        .await;
        record(
            &mut results,
            &mut failures,
            "cluster_fanout",
            r.map(|(r, cpu)| {
                let mut v = to_value(&r);
                v["gateway_and_redis_cpu_secs"] = json!(cpu);
                (r.summary(), r.ok, v)
            }),
        );
    }

    if ctx.wants("latency") {
        step("latency at a fixed rate, 3 nodes + Redis");
        let r = async {
            let (redis, cluster) = ctx.redis().await?;
            let mut gws = Vec::new();
            let mut addrs = Vec::new();
            for i in 0..3 {
                let (gw, addr) = ctx.gateway(&format!("clat{i}"), Some(&cluster)).await?;
                gws.push(gw);
                addrs.push(addr);
            }
            let a = FanoutArgs {
                subscribers: plan.latency_channels * plan.latency_per_channel,
                channels: plan.latency_channels,
                channel_prefix: "lat:".into(),
                via: Via::Http,
                lanes: 1,
                window: 1,
                rate: plan.latency_rate,
                messages: 0,
                duration_secs: plan.latency_secs,
                payload: 64,
                idle_timeout_ms: 10_000,
                max_wait_secs: 120,
                client: ctx.client(&addrs),
            };
            let r = fanout::run(&a).await;
            for gw in gws {
                gw.stop().await;
            }
            redis.stop().await;
            r
        }
        .await;
        record(
            &mut results,
            &mut failures,
            "latency",
            r.map(|r| (r.summary(), r.ok, to_value(&r))),
        );
    }

    let table = table(&results);
    let doc = json!({
        "date": date,
        "commit": git_commit().await,
        "machine": machine(),
        "load_before": load_start,
        "load_after": loadavg(),
        "quick": args.quick,
        "plan": plan,
        "results": results,
        "failures": failures,
        "table": table.rows,
        "duration_secs": (now_us() - started) as f64 / 1e6,
    });
    let json_path = args.out_dir.join(format!("{date}.json"));
    let md_path = args.out_dir.join(format!("{date}.md"));
    write_json(&json_path, &doc)?;
    let md = markdown(&doc, &table);
    std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    println!("\n{md}");
    println!("results: {} and {}", json_path.display(), md_path.display());
    if !failures.is_empty() {
        eprintln!("suite: {} scenario(s) failed to run:", failures.len());
        for f in &failures {
            eprintln!("  {f}");
        }
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn record(
    results: &mut BTreeMap<String, Value>,
    failures: &mut Vec<String>,
    name: &str,
    r: Result<(String, bool, Value)>,
) {
    match r {
        Ok((summary, ok, v)) => {
            println!("{summary}");
            if !ok {
                failures.push(format!("{name}: checks failed (see its report)"));
            }
            results.insert(name.into(), v);
        }
        Err(e) => {
            eprintln!("suite: {name} failed: {e:#}");
            failures.push(format!("{name}: {e:#}"));
        }
    }
}

/// One row of the targets table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    scenario: String,
    target: String,
    measured: String,
    ceiling: String,
    verdict: String,
}

struct Table {
    rows: Vec<Row>,
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

fn table(r: &BTreeMap<String, Value>) -> Table {
    let none = Value::Null;
    let get = |k: &str| r.get(k).unwrap_or(&none);
    let idle = get("idle");
    let fan = get("fanout");
    let cfan = get("cluster_fanout");
    let lat = get("latency");
    let rtt = get("rtt");
    let churn = get("churn");
    let ceil_b = f(get("ceiling_fanout_batched"), &["deliveries_per_sec"]);
    let ceil_u = f(get("ceiling_fanout_unbatched"), &["deliveries_per_sec"]);
    let ceil_idle = f(get("ceiling_idle"), &["rss_per_conn_bytes"]);
    let mut rows = Vec::new();

    let rss = f(idle, &["rss_per_conn_bytes"]);
    rows.push(Row {
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
    });
    let cpu = f(idle, &["cpu_pct_per_10k"]);
    rows.push(Row {
        scenario: format!(
            "idle CPU over {} s (pings every 25 s, presence refresh)",
            label(f(idle, &["window_secs"]))
        ),
        target: "<= 1% of a core per 10k".into(),
        measured: cpu.map_or("-".into(), |c| format!("{c:.3}% per 10k")),
        ceiling: "-".into(),
        verdict: verdict(cpu.map(|c| c <= 1.0)),
    });
    let fr = f(fan, &["deliveries_per_sec"]);
    rows.push(Row {
        scenario: format!(
            "fan-out flat out, one node, {} subscribers of one channel, 64 B",
            label(f(fan, &["connected"]))
        ),
        target: ">= 60% of the batched probe".into(),
        measured: fr.map_or("-".into(), |v| {
            format!(
                "{:.2} M/s, lost {}, p99 {:.0} ms",
                v / 1e6,
                f(fan, &["lost"]).unwrap_or(0.0),
                f(fan, &["latency", "p99_ms"]).unwrap_or(0.0)
            )
        }),
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
    });
    let fws = get("fanout_ws");
    let wr = f(fws, &["deliveries_per_sec"]);
    rows.push(Row {
        scenario: format!(
            "same, published with the WebSocket publish op (256 in flight), {} subscribers",
            label(f(fws, &["connected"]))
        ),
        target: "(informative)".into(),
        measured: wr.map_or("-".into(), |v| {
            format!(
                "{:.2} M/s, lost {}, p99 {:.0} ms",
                v / 1e6,
                f(fws, &["lost"]).unwrap_or(0.0),
                f(fws, &["latency", "p99_ms"]).unwrap_or(0.0)
            )
        }),
        ceiling: match (wr, ceil_b) {
            (Some(a), Some(c)) => format!("{:.0}% of the batched probe", a / c * 100.0),
            _ => "-".into(),
        },
        verdict: "-".into(),
    });
    let cr = f(cfan, &["deliveries_per_sec"]);
    rows.push(Row {
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
        ceiling: match (cr, ceil_b) {
            (Some(a), Some(c)) => format!("{:.0}% of the batched probe", a / c * 100.0),
            _ => "-".into(),
        },
        verdict: match (cr, f(cfan, &["refused"])) {
            (Some(v), Some(r)) if v >= 1e6 && cfan["ok"] == true && r > 0.0 => {
                format!("met, but {r} publications refused")
            }
            _ => verdict(cr.map(|v| v >= 1e6 && cfan["ok"] == true)),
        },
    });
    let p50 = f(lat, &["latency", "p50_ms"]);
    let p99 = f(lat, &["latency", "p99_ms"]);
    rows.push(Row {
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
    });
    let best = f(rtt, &["max_clients_under_bound"]);
    let last_under = rtt["steps"]
        .as_array()
        .and_then(|s| s.iter().rev().find(|st| st["under_bound"] == true))
        .and_then(|st| st["p95_ms"].as_f64());
    rows.push(Row {
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
    });
    let cps = f(churn, &["connects_per_sec"]);
    rows.push(Row {
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
    });
    let icps = f(idle, &["connects_per_sec"]);
    rows.push(Row {
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
    });
    Table { rows }
}

fn markdown(doc: &Value, table: &Table) -> String {
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
    fn stamps_dates() {
        assert_eq!(stamp(0), "1970-01-01T000000Z");
        assert_eq!(stamp(1_700_000_000), "2023-11-14T221320Z");
        assert_eq!(stamp(951_782_400), "2000-02-29T000000Z");
    }

    #[test]
    fn table_handles_missing_results() {
        let t = table(&BTreeMap::new());
        assert!(t.rows.iter().all(|r| r.measured == "-" || r.verdict == "-"));
    }
}
