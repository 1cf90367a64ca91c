//! The ceiling probes: the same fan-out and idle workloads against a bare
//! axum server (batched and unbatched fan-out, idle RSS with a 4 KiB read
//! buffer), built from `--ceiling-manifest`, so the report can give each
//! gateway figure as a ratio to what the machine does without the gateway.
//!
//! Invariants: a probe that fails is a failure line of the run, never an
//! abort; the probe servers are killed when their handle drops; every wait
//! is bounded.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

use super::nodes::{free_port, run_cmd, wait_port, Ctx, Proc};
use super::scenarios::Plan;
use crate::common::proc_sample;

/// One ceiling probe.
#[derive(Debug, Clone, Copy)]
enum Probe {
    /// Fan-out, batched writes.
    Batched,
    /// Fan-out, unbatched writes.
    Unbatched,
    /// Idle RSS per connection.
    Idle,
}

impl Probe {
    /// Its name in the log and in failures.
    fn label(self) -> &'static str {
        match self {
            Probe::Batched => "batched",
            Probe::Unbatched => "unbatched",
            Probe::Idle => "idle",
        }
    }

    /// Its key in the results.
    fn key(self) -> &'static str {
        match self {
            Probe::Batched => "ceiling_fanout_batched",
            Probe::Unbatched => "ceiling_fanout_unbatched",
            Probe::Idle => "ceiling_idle",
        }
    }

    async fn run(self, ctx: &mut Ctx, plan: &Plan) -> Result<Value> {
        let n = plan.fanout_subscribers;
        match self {
            Probe::Batched => ceiling_fanout(ctx, n, plan.fanout_messages, true).await,
            Probe::Unbatched => {
                ceiling_fanout(ctx, n, plan.ceiling_unbatched_messages, false).await
            }
            Probe::Idle => ceiling_idle(ctx, plan.ceiling_idle_clients).await,
        }
    }

    /// What the log says of its result.
    fn line(self, v: &Value) -> String {
        match self {
            Probe::Batched | Probe::Unbatched => v["client_line"].to_string(),
            Probe::Idle => format!(
                "{:.0} B per connection",
                v["rss_per_conn_bytes"].as_f64().unwrap_or(0.0)
            ),
        }
    }
}

/// Builds the probes and runs each, into `results` (or `failures`).
pub(super) async fn run(
    ctx: &mut Ctx,
    plan: &Plan,
    results: &mut BTreeMap<String, Value>,
    failures: &mut Vec<String>,
) {
    let built = run_cmd(
        Command::new("cargo")
            .args(["build", "--release", "--manifest-path"])
            .arg(&ctx.args.ceiling_manifest)
            .arg("--target-dir")
            .arg(&ctx.args.ceiling_target_dir),
        "building the ceiling probes",
        Duration::from_secs(1800),
    )
    .await;
    if let Err(e) = built {
        failures.push(format!("ceiling build: {e:#}"));
        return;
    }
    for probe in [Probe::Batched, Probe::Unbatched, Probe::Idle] {
        match probe.run(ctx, plan).await {
            Ok(v) => {
                eprintln!("  {}: {}", probe.label(), probe.line(&v));
                results.insert(probe.key().into(), v);
            }
            Err(e) => failures.push(format!("ceiling {}: {e:#}", probe.label())),
        }
    }
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
