//! Smoke tests of the load generator: each scenario of the built `loadtest`
//! binary runs with tiny parameters against gateways started here, and its
//! JSON report must show every client connected and nothing lost,
//! duplicated or reordered. Benchmarks proper are `loadtest suite`
//! (docs/performance.md); these only prove the tool works.
//!
//! The binary is `LOADTEST_BIN`, else `loadtest` next to the gateway binary
//! (`scripts/test` builds both with `cargo build --workspace --bins`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use tests::{gateway_bin, Gateway, GatewayBuilder, RedisServer};

const SECRET: &str = "smoke-test-secret-0123456789";

/// The namespaces the scenarios use by default.
const CONFIG: &str = r#"
rate_limit = 100000
rate_burst = 100000

[default_namespace]
client_publish = true

[namespaces.idle]

[namespaces.room]
presence = true

[namespaces.fan]
client_publish = true

[namespaces.bcast]

[[pusher.apps]]
id = "smoke"
key = "smoke-key"
secret = "smoke-pusher-secret"
"#;

/// The loadtest options for the Pusher app of [`CONFIG`].
const PUSHER: [&str; 8] = [
    "--protocol",
    "pusher",
    "--pusher-app-id",
    "smoke",
    "--pusher-key",
    "smoke-key",
    "--pusher-secret",
    "smoke-pusher-secret",
];

/// How long one loadtest run may take here (the soak smoke needs ~65 s on
/// a loaded 2-core machine: 20 s of churn plus two 12 s quiet counts).
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

fn loadtest_bin() -> PathBuf {
    match std::env::var_os("LOADTEST_BIN") {
        Some(p) => PathBuf::from(p),
        None => gateway_bin().with_file_name("loadtest"),
    }
}

async fn gateway(name: &str, env: &[(&str, &str)]) -> Result<Gateway> {
    let mut b = GatewayBuilder::new().name(name).config(CONFIG);
    for (k, v) in env {
        b = b.env(k, v);
    }
    b.spawn().await
}

/// Runs `loadtest <args> --json <dir>/<name>.json --no-progress` and returns
/// the report; the run must exit 0.
async fn loadtest(dir: &Path, name: &str, args: &[String]) -> Result<Value> {
    let bin = loadtest_bin();
    ensure!(
        bin.exists(),
        "loadtest binary not found at {} (run `cargo build --workspace --bins`, or set LOADTEST_BIN)",
        bin.display()
    );
    let json = dir.join(format!("loadtest-{name}.json"));
    let _ = std::fs::remove_file(&json);
    let run = tokio::process::Command::new(&bin)
        .args(args)
        .arg("--json")
        .arg(&json)
        .arg("--no-progress")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(RUN_TIMEOUT, run)
        .await
        .with_context(|| format!("loadtest {name} took more than {RUN_TIMEOUT:?}"))?
        .context("running loadtest")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "loadtest {args:?} exited with {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
            out.status
        );
    }
    let text = std::fs::read_to_string(&json)
        .with_context(|| format!("reading {} (stdout: {stdout})", json.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", json.display()))
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn num(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// Asserts a fan-out report shows every publication delivered once, in
/// order, to every subscriber.
/// An idle report: every connection made, none dropped, an RSS figure.
fn check_idle(r: &Value, connections: f64) -> Result<()> {
    ensure!(num(r, "connected") == connections, "{r:#}");
    ensure!(num(r, "dropped") == 0.0 && r["ok"] == true, "{r:#}");
    ensure!(
        num(r, "rss_per_conn_bytes").is_finite(),
        "no RSS figure: {r:#}"
    );
    Ok(())
}

fn check_fanout(r: &Value, subscribers: f64) -> Result<()> {
    ensure!(num(r, "connected") == subscribers, "connected: {r:#}");
    ensure!(num(r, "expected") > 0.0, "nothing expected: {r:#}");
    ensure!(num(r, "delivered") == num(r, "expected"), "lost: {r:#}");
    for key in [
        "lost",
        "duplicates",
        "out_of_order",
        "unexpected",
        "dropped",
        "publish_errors",
    ] {
        ensure!(num(r, key) == 0.0, "{key} != 0: {r:#}");
    }
    ensure!(r["ok"] == true, "not ok: {r:#}");
    ensure!(
        num(&r["latency"], "count") == num(r, "delivered"),
        "latency samples: {r:#}"
    );
    Ok(())
}

#[tokio::test]
async fn idle_holds_jwt_clients_and_measures_the_gateway() -> Result<()> {
    let gw = gateway("lt-idle", &[("GATEWAY_JWT_SECRET", SECRET)]).await?;
    let pid = gw.pid().context("gateway pid")?.to_string();
    let r = loadtest(
        gw.dir(),
        "idle",
        &args(&[
            "idle",
            "--url",
            &gw.ws_url(),
            "--jwt-secret",
            SECRET,
            "--connections",
            "30",
            "--channels",
            "5",
            "--pid",
            &pid,
            "--settle-secs",
            "0",
            "--window-secs",
            "1",
            "--src-addrs",
            "3",
        ]),
    )
    .await?;
    check_idle(&r, 30.0)?;
    ensure!(
        num(&r, "cpu_pct_per_10k").is_finite(),
        "no CPU figure: {r:#}"
    );
    Ok(())
}

#[tokio::test]
async fn fanout_over_http_flat_out_loses_nothing() -> Result<()> {
    let gw = gateway("lt-fanout-http", &[]).await?;
    let r = loadtest(
        gw.dir(),
        "fanout-http",
        &args(&[
            "fanout",
            "--url",
            &gw.ws_url(),
            "--subscribers",
            "24",
            "--channels",
            "2",
            "--messages",
            "30",
            "--lanes",
            "3",
        ]),
    )
    .await?;
    check_fanout(&r, 24.0)?;
    ensure!(num(&r, "expected") == 24.0 * 30.0, "{r:#}");
    Ok(())
}

#[tokio::test]
async fn pusher_idle_holds_public_and_presence_subscribers() -> Result<()> {
    let gw = gateway("lt-pusher-idle", &[]).await?;
    let pid = gw.pid().context("gateway pid")?.to_string();
    let mut a = args(&[
        "idle",
        "--url",
        &gw.ws_url(),
        "--connections",
        "30",
        "--channels",
        "5",
        "--pid",
        &pid,
        "--settle-secs",
        "0",
        "--window-secs",
        "1",
        "--src-addrs",
        "3",
    ]);
    a.extend(args(&PUSHER));
    let r = loadtest(gw.dir(), "pusher-idle", &a).await?;
    ensure!(r["protocol"] == "pusher", "{r:#}");
    check_idle(&r, 30.0)?;
    Ok(())
}

#[tokio::test]
async fn pusher_fanout_over_rest_loses_nothing() -> Result<()> {
    let gw = gateway("lt-pusher-fanout", &[]).await?;
    let mut a = args(&[
        "fanout",
        "--url",
        &gw.ws_url(),
        "--subscribers",
        "24",
        "--channels",
        "2",
        "--messages",
        "30",
        "--lanes",
        "3",
    ]);
    a.extend(args(&PUSHER));
    let r = loadtest(gw.dir(), "pusher-fanout", &a).await?;
    ensure!(r["protocol"] == "pusher", "{r:#}");
    check_fanout(&r, 24.0)?;
    ensure!(num(&r, "expected") == 24.0 * 30.0, "{r:#}");
    Ok(())
}

#[tokio::test]
async fn fanout_over_websocket_at_a_rate_loses_nothing() -> Result<()> {
    let gw = gateway("lt-fanout-ws", &[("GATEWAY_JWT_SECRET", SECRET)]).await?;
    let r = loadtest(
        gw.dir(),
        "fanout-ws",
        &args(&[
            "fanout",
            "--url",
            &gw.ws_url(),
            "--jwt-secret",
            SECRET,
            "--via",
            "ws",
            "--window",
            "4",
            "--subscribers",
            "12",
            "--channels",
            "3",
            "--rate",
            "60",
            "--duration-secs",
            "1",
        ]),
    )
    .await?;
    check_fanout(&r, 12.0)?;
    Ok(())
}

#[tokio::test]
async fn fanout_across_a_redis_cluster_loses_nothing() -> Result<()> {
    let redis = RedisServer::start().await?;
    let prefix = tests::unique_prefix("ltsmoke");
    let env = [
        ("GATEWAY_REDIS_URL", redis.url()),
        ("GATEWAY_REDIS_PREFIX", prefix),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = gateway("lt-cluster-a", &env).await?;
    let b = gateway("lt-cluster-b", &env).await?;
    let urls = format!("{},{}", a.ws_url(), b.ws_url());
    let r = loadtest(
        a.dir(),
        "fanout-cluster",
        &args(&[
            "fanout",
            "--url",
            &urls,
            "--subscribers",
            "20",
            "--messages",
            "25",
            "--lanes",
            "2",
        ]),
    )
    .await?;
    check_fanout(&r, 20.0)?;
    ensure!(num(&r, "nodes") == 2.0, "{r:#}");
    Ok(())
}

#[tokio::test]
async fn broadcast_rtt_steps_up_to_the_maximum() -> Result<()> {
    let gw = gateway("lt-rtt", &[]).await?;
    let r = loadtest(
        gw.dir(),
        "rtt",
        &args(&[
            "broadcast-rtt",
            "--url",
            &gw.ws_url(),
            "--step",
            "10",
            "--max-clients",
            "20",
            "--samples",
            "4",
            "--bound-ms",
            "5000",
        ]),
    )
    .await?;
    ensure!(num(&r, "max_clients_under_bound") == 20.0, "{r:#}");
    let steps = r["steps"].as_array().context("steps")?;
    ensure!(steps.len() == 2, "{r:#}");
    ensure!(steps.iter().all(|s| num(s, "samples") == 4.0), "{r:#}");
    ensure!(num(&r, "dropped") == 0.0, "{r:#}");
    Ok(())
}

#[tokio::test]
async fn churn_leaves_the_connection_gauge_right() -> Result<()> {
    let gw = gateway("lt-churn", &[("GATEWAY_JWT_SECRET", SECRET)]).await?;
    let r = loadtest(
        gw.dir(),
        "churn",
        &args(&[
            "churn",
            "--url",
            &gw.ws_url(),
            "--jwt-secret",
            SECRET,
            "--hold",
            "10",
            "--duration-secs",
            "1",
            "--rate",
            "60",
            "--concurrency",
            "8",
            "--rooms",
            "4",
        ]),
    )
    .await?;
    ensure!(num(&r, "connected") >= 10.0, "too few cycles: {r:#}");
    ensure!(num(&r, "failed") == 0.0, "{r:#}");
    ensure!(num(&r, "true_count") == 10.0, "{r:#}");
    ensure!(r["gauge_matches"] == true, "{r:#}");
    ensure!(r["presence_matches"] == true, "{r:#}");
    ensure!(
        num(&r, "clean_closes") > 0.0 && num(&r, "fin_closes") > 0.0 && num(&r, "rst_closes") > 0.0,
        "every close kind: {r:#}"
    );
    ensure!(r["ok"] == true, "{r:#}");
    Ok(())
}

#[tokio::test]
async fn soak_survives_a_redis_restart_and_a_node_kill() -> Result<()> {
    let dir = tempdir_for("soak")?;
    let gw = gateway_bin();
    let r = loadtest(
        &dir,
        "soak",
        &args(&[
            "soak",
            "--duration",
            "20s",
            "--gateway-bin",
            &gw.to_string_lossy(),
            "--sample-secs",
            "2",
            "--rate",
            "15",
            "--final-clients",
            "9",
        ]),
    )
    .await?;
    ensure!(num(&r, "cycles_ok") > 0.0, "{r:#}");
    let events = r["events"].as_array().context("events")?;
    ensure!(events.len() >= 5, "every fault happened: {r:#}");
    ensure!(r["gauges_exact"] == true, "{r:#}");
    ensure!(r["gauges_zero"] == true, "{r:#}");
    ensure!(r["no_leak"] == true, "{r:#}");
    ensure!(r["ok"] == true, "{r:#}");
    // Every gateway process was sampled: 3 first ones and the restarted one.
    ensure!(r["procs"].as_array().map(Vec::len) == Some(4), "{r:#}");
    Ok(())
}

#[tokio::test]
async fn shard_spread_runs_on_one_redis_and_on_a_redis_cluster() -> Result<()> {
    let dir = tempdir_for("spread")?;
    let gw = gateway_bin();
    let r = loadtest(
        &dir,
        "shard-spread",
        &args(&[
            "shard-spread",
            "--gateway-bin",
            &gw.to_string_lossy(),
            "--duration-secs",
            "1",
            "--idle-secs",
            "0",
            "--channels",
            "30",
            "--subscribers-per-node",
            "1",
            "--publishers-per-node",
            "1",
            "--window",
            "8",
            "--no-results",
            // A second of publishing is a few CPU ticks per primary: the
            // spread is measured in `loadtest shard-spread` runs, not here.
            "--max-spread",
            "1000",
        ]),
    )
    .await?;
    for phase in ["single", "cluster"] {
        let p = &r[phase];
        ensure!(num(p, "published") > 0.0, "{phase}: {r:#}");
        ensure!(num(p, "connected") == 3.0, "{phase}: {r:#}");
        ensure!(
            num(p, "delivered") == num(p, "published") * 3.0,
            "{phase}: every subscriber got every publication: {r:#}"
        );
        ensure!(num(p, "shortfall") == 0.0, "{phase}: {r:#}");
    }
    let redis = r["cluster"]["redis"].as_array().context("cluster redis")?;
    ensure!(redis.len() == 6, "3 primaries + 3 replicas: {r:#}");
    let primaries: Vec<&Value> = redis.iter().filter(|x| x["role"] == "primary").collect();
    ensure!(primaries.len() == 3, "{r:#}");
    // Every primary served some of the 30 channels and their publications.
    ensure!(
        primaries
            .iter()
            .all(|p| num(p, "channels") > 0.0 && num(p, "publish_calls") > 0.0),
        "{r:#}"
    );
    ensure!(r["ok"] == true, "{r:#}");
    Ok(())
}

/// A fresh directory for a run that starts its own gateways.
fn tempdir_for(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "loadtest-smoke-{name}-{}-{}",
        std::process::id(),
        tests::unique_prefix("d")
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[tokio::test]
async fn storm_connects_every_client_and_probes_health() -> Result<()> {
    let dir = tempdir_for("storm")?;
    let gw = gateway_bin();
    let r = loadtest(
        &dir,
        "storm",
        &args(&[
            "storm",
            "--clients",
            "200",
            "--per-worker",
            "100",
            "--gateway-bin",
            &gw.to_string_lossy(),
            "--hold-secs",
            "1",
            "--src-addrs",
            "4",
            // Timing is measured in `loadtest storm` runs, not here: a
            // loaded test machine may miss any bound.
            "--bound-ms",
            "60000",
        ]),
    )
    .await?;
    ensure!(num(&r, "connected") == 200.0, "{r:#}");
    ensure!(num(&r, "gauge") == 200.0, "{r:#}");
    let probes = r["probes"].as_array().context("probes")?;
    ensure!(probes.len() == 2, "{r:#}");
    ensure!(
        probes
            .iter()
            .all(|p| num(p, "probes") > 0.0 && num(p, "within_bound") == num(p, "probes")),
        "{r:#}"
    );
    ensure!(r["ok"] == true, "{r:#}");
    Ok(())
}
