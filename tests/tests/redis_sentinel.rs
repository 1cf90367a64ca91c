//! Redis Sentinel mode end to end, on real processes (tests::RedisSentinel:
//! a primary, a replica and three sentinels; docs/redis.md, "Sentinel"):
//!
//! - two gateway nodes on Sentinel: publications cross nodes, presence and
//!   history work;
//! - `kill -9` of the primary under a steady publish loop: publishes in the
//!   gap are refused fast (503 `unavailable`, the slowest measured), the
//!   nodes follow the promoted replica without a restart, delivery resumes
//!   to the subscribers that stayed connected (the time from promotion to
//!   the first delivery is printed), /readyz is 200 again and
//!   `gateway_redis_failovers_total` moved;
//! - sentinels that do not answer: the node starts unhealthy, /readyz 503,
//!   publishes refused quickly.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use tests::cluster::Cluster;
use tests::{eventually, free_ports, metric, unique_prefix, Client, GatewayBuilder, EVENTUALLY};
use tokio::time::Instant;

/// The Redis timeout the nodes run with (the documented default).
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
/// What a loaded 2-core machine may add to the Redis timeout before a
/// refused publish is answered.
const REFUSE_SLACK: Duration = Duration::from_secs(2);
/// Bound from the promotion (as the harness sees it) to the first delivery.
const FOLLOW_BOUND: Duration = Duration::from_secs(10);
/// Pause between two publishes of the loop.
const PUBLISH_EVERY: Duration = Duration::from_millis(50);
/// Upper bound of the publish loop (it is stopped long before).
const LOOP_LIMIT: Duration = Duration::from_secs(90);

fn seq(msg: &Value) -> Option<u64> {
    msg.pointer("/data/seq").and_then(Value::as_u64)
}

#[tokio::test]
async fn two_nodes_on_sentinel_publish_presence_history() -> Result<()> {
    let cluster = Cluster::builder("sentinel_basic")
        .nodes(2)
        .sentinel()
        .start()
        .await?;
    let mut sub = cluster.node(2).connect_user("u2").await?;
    sub.subscribe("hist:s").await?;
    let mut member = cluster.node(2).connect_user("m2").await?;
    member.subscribe("chat:room").await?;
    let mut publisher = cluster.node(1).connect_user("u1").await?;
    publisher.publish("hist:s", json!({"n": 1})).await?;
    let msg = sub.wait_for_type("message", tests::RECV_TIMEOUT).await?;
    ensure!(msg["data"]["n"] == 1, "unexpected message {msg}");
    cluster.api(1).publish("hist:s", json!({"n": 2})).await?;
    let msg = sub.wait_for_type("message", tests::RECV_TIMEOUT).await?;
    ensure!(msg["data"]["n"] == 2, "unexpected message {msg}");
    let history = cluster.api(1).history("hist:s", "limit=10").await?;
    let n = history["messages"].as_array().map_or(0, Vec::len);
    ensure!(n == 2, "history on n1 has {n} messages: {history}");
    let api = cluster.api(1);
    eventually(EVENTUALLY, "n1 sees m2 in chat:room presence", || {
        let api = api.clone();
        async move {
            api.presence("chat:room").await.is_ok_and(|p| {
                p["members"]
                    .as_array()
                    .is_some_and(|ms| ms.iter().any(|m| m["user"] == "m2"))
            })
        }
    })
    .await?;
    let text = cluster.api(1).metrics().await?;
    for series in [
        "gateway_redis_failovers_total 0",
        "gateway_redis_sentinel_errors_total{op=\"quorum\"} 0",
    ] {
        ensure!(text.contains(series), "/metrics lacks {series:?}");
    }
    Ok(())
}

/// One publish of the loop: sequence number, HTTP status, error code, how
/// long it took and when it was sent.
struct Sent {
    seq: u64,
    status: u16,
    code: Option<String>,
    took: Duration,
}

#[tokio::test]
async fn primary_killed_under_publish_load_is_followed_without_restart() -> Result<()> {
    let mut cluster = Cluster::builder("sentinel_failover")
        .nodes(2)
        .sentinel()
        .env("GATEWAY_REDIS_TIMEOUT_MS", REDIS_TIMEOUT.as_millis())
        .start()
        .await?;
    const CH: &str = "failover";
    let mut subs: Vec<Client> = Vec::new();
    for n in [1, 2] {
        let mut c = cluster.node(n).connect_user(&format!("s{n}")).await?;
        c.subscribe(CH).await?;
        subs.push(c);
    }
    // A steady publish loop on n1, bounded in time.
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let api = cluster.api(1);
    let publisher = {
        let (stop, next) = (stop.clone(), next.clone());
        tokio::spawn(async move {
            let mut sent = Vec::new();
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < LOOP_LIMIT {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                let t0 = Instant::now();
                let body = json!({"channel": CH, "data": {"seq": seq}});
                let (status, code) = match api.post("/api/publish", &body).await {
                    Ok(r) => (r.status, r.error_code().map(str::to_owned)),
                    Err(e) => (0, Some(format!("transport: {e}"))),
                };
                sent.push(Sent {
                    seq,
                    status,
                    code,
                    took: t0.elapsed(),
                });
                tokio::time::sleep(PUBLISH_EVERY).await;
            }
            sent
        })
    };
    // Delivery works before the fault.
    for (i, c) in subs.iter_mut().enumerate() {
        c.wait_for_type("message", tests::RECV_TIMEOUT)
            .await
            .with_context(|| format!("s{} before the kill", i + 1))?;
    }
    let group = cluster.sentinel.as_mut().context("no sentinel group")?;
    let killed_at = Instant::now();
    let old = group.kill_primary().await?;
    let new = group.wait_failover(old).await?;
    let promoted_at = Instant::now();
    let first_after = next.load(Ordering::Relaxed);
    eprintln!(
        "primary {old} killed; sentinels named {new} after {:?}",
        promoted_at - killed_at
    );
    // Delivery resumes on the subscribers that stayed connected.
    let mut follow = Vec::new();
    for (i, c) in subs.iter_mut().enumerate() {
        let msg = c
            .wait_for(
                FOLLOW_BOUND,
                "a message published after the promotion",
                |m| m["type"] == "message" && seq(m).is_some_and(|s| s >= first_after),
            )
            .await
            .with_context(|| format!("s{} after the failover", i + 1))?;
        let gap = promoted_at.elapsed();
        eprintln!(
            "s{}: first delivery after the promotion: seq {:?} after {gap:?} ({:?} after the kill)",
            i + 1,
            seq(&msg),
            killed_at.elapsed()
        );
        follow.push(gap);
    }
    for n in [1, 2] {
        let api = cluster.api(n);
        eventually(EVENTUALLY, &format!("n{n} /readyz 200 again"), || {
            let api = api.clone();
            async move { matches!(api.readyz().await, Ok(200)) }
        })
        .await?;
        let failovers = metric(&cluster.api(n), "gateway_redis_failovers_total").await?;
        ensure!(
            failovers >= 1.0,
            "n{n}: gateway_redis_failovers_total = {failovers}"
        );
    }
    // A few more deliveries, then stop the loop.
    for c in subs.iter_mut() {
        c.wait_for_type("message", tests::RECV_TIMEOUT).await?;
    }
    stop.store(true, Ordering::Relaxed);
    let sent = publisher.await?;
    let refused: Vec<&Sent> = sent.iter().filter(|s| s.status != 200).collect();
    let slowest = refused.iter().map(|s| s.took).max().unwrap_or_default();
    let slowest_ok = sent
        .iter()
        .filter(|s| s.status == 200)
        .map(|s| s.took)
        .max()
        .unwrap_or_default();
    eprintln!(
        "publishes: {} sent, {} refused (seq {:?}..{:?}), slowest refused {slowest:?}, slowest accepted {slowest_ok:?}",
        sent.len(),
        refused.len(),
        refused.first().map(|s| s.seq),
        refused.last().map(|s| s.seq),
    );
    ensure!(
        !refused.is_empty(),
        "no publish was refused: the gap was not exercised"
    );
    for s in &refused {
        ensure!(
            s.status == 503 && s.code.as_deref() == Some("unavailable"),
            "publish {} answered {} {:?}, want 503 unavailable",
            s.seq,
            s.status,
            s.code
        );
    }
    ensure!(
        slowest <= REDIS_TIMEOUT + REFUSE_SLACK,
        "a refused publish took {slowest:?} (Redis timeout {REDIS_TIMEOUT:?})"
    );
    ensure!(
        follow.iter().all(|g| *g <= FOLLOW_BOUND),
        "follow gaps {follow:?}"
    );
    Ok(())
}

#[tokio::test]
async fn unreachable_sentinels_start_unhealthy_and_refuse_fast() -> Result<()> {
    // Ports nobody listens on.
    let ports = free_ports(3)?;
    let sentinels = ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let gw = GatewayBuilder::new()
        .name("sentinel_unreachable")
        .standard_config()
        .env("GATEWAY_REDIS_TOPOLOGY", "sentinel")
        .env("GATEWAY_REDIS_SENTINELS", sentinels)
        .env("GATEWAY_REDIS_SENTINEL_MASTER", "gwmaster")
        .env(
            "GATEWAY_REDIS_PREFIX",
            unique_prefix("sentinel_unreachable"),
        )
        .spawn()
        .await?;
    let api = gw.api();
    ensure!(api.readyz().await? == 503, "/readyz should be 503");
    let mut slowest = Duration::ZERO;
    for i in 0..5 {
        let t0 = Instant::now();
        let r = api
            .post("/api/publish", &json!({"channel": "x", "data": i}))
            .await?;
        slowest = slowest.max(t0.elapsed());
        r.expect_error(503, "unavailable")?;
    }
    eprintln!("unreachable sentinels: slowest refused publish {slowest:?}");
    ensure!(
        slowest <= REDIS_TIMEOUT + REFUSE_SLACK,
        "a refused publish took {slowest:?}"
    );
    let errors = metric(&api, "gateway_redis_sentinel_errors_total").await?;
    ensure!(errors >= 3.0, "sentinel errors counted: {errors}");
    ensure!(
        gw.log_tail()
            .contains("cannot resolve the Redis primary through Sentinel"),
        "no resolution warning in the log:\n{}",
        gw.log_tail()
    );
    Ok(())
}

#[test]
fn compose_sentinel_profile_is_wired() -> Result<()> {
    let text = std::fs::read_to_string(tests::workspace_root().join("docker-compose.yml"))?;
    let mut yaml: serde_yaml::Value = serde_yaml::from_str(&text)?;
    yaml.apply_merge()?;
    let compose = serde_json::to_value(&yaml)?;
    let services = &compose["services"];
    let sentinels = ["sentinel1", "sentinel2", "sentinel3"];
    for name in ["redis-primary", "redis-replica", "gateway-sentinel"]
        .iter()
        .chain(&sentinels)
    {
        let svc = &services[*name];
        ensure!(
            svc["profiles"] == json!(["sentinel"]),
            "{name} must be in the sentinel profile only: {}",
            svc["profiles"]
        );
        ensure!(
            svc["healthcheck"]["test"].is_array(),
            "{name}: no healthcheck"
        );
    }
    // The default profile is untouched: `redis` and the three gateways have
    // no profile.
    for name in ["redis", "gateway1", "gateway2", "gateway3"] {
        ensure!(services[name]["profiles"].is_null(), "{name} got a profile");
    }
    ensure!(
        services["redis-replica"]["command"]
            .to_string()
            .contains("\"--replicaof\",\"redis-primary\",\"6379\""),
        "replica does not follow redis-primary"
    );
    for name in sentinels {
        let cmd = services[name]["command"].to_string();
        ensure!(
            cmd.contains("sentinel monitor gwmaster redis-primary 6379 2")
                && cmd.contains("--sentinel"),
            "{name}: {cmd}"
        );
    }
    let env = &services["gateway-sentinel"]["environment"];
    ensure!(env["GATEWAY_REDIS_TOPOLOGY"] == "sentinel", "{env}");
    ensure!(
        env["GATEWAY_REDIS_URL"].is_null(),
        "redis_url must be unset: {env}"
    );
    ensure!(env["GATEWAY_REDIS_SENTINEL_MASTER"] == "gwmaster", "{env}");
    let listed: Vec<&str> = env["GATEWAY_REDIS_SENTINELS"]
        .as_str()
        .unwrap_or_default()
        .split(',')
        .collect();
    let want: Vec<String> = sentinels.iter().map(|s| format!("{s}:26379")).collect();
    ensure!(listed == want, "GATEWAY_REDIS_SENTINELS {listed:?}");
    Ok(())
}
