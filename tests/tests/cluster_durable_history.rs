//! `history_min_replicas` (docs/redis.md, "History across failover"): a
//! history publish of such a namespace is acknowledged only once that many
//! replicas confirm it (`WAIT`); without them it answers 503 `unavailable`
//! within the wait, although the publication is live and in the primary's
//! history ("maybe published"). The WAIT runs on connections of its own, so
//! other commands do not stall behind it.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::json;
use tests::cluster::cluster_config;
use tests::redis_replica::ReplicaPair;
use tests::{metric, unique_prefix, Api, Gateway, GatewayBuilder, RECV_TIMEOUT};

const DURABLE: &str = "durable:x";
const PLAIN: &str = "hist:x";
const UNCONFIRMED: &str = "gateway_history_unconfirmed_total";
/// Publishes per latency sample (`DURABLE_N` overrides).
const N: usize = 200;

fn config() -> String {
    format!(
        "{}\n[namespaces.durable]\nhistory_size = 100\nhistory_ttl_secs = 300\nhistory_min_replicas = 1\nclient_publish = true\nallow_anonymous = true\n",
        cluster_config()
    )
}

async fn start(url: &str) -> Result<Gateway> {
    GatewayBuilder::new()
        .name("durable")
        .config(&config())
        .env("GATEWAY_REDIS_URL", url)
        .env("GATEWAY_REDIS_PREFIX", unique_prefix("durable"))
        .env("GATEWAY_NODE_ID", "n1")
        .spawn()
        .await
}

/// Median and 99th percentile of `n` sequential publishes to `channel`, ms.
async fn latency(api: &Api, channel: &str, n: usize) -> Result<(f64, f64)> {
    let mut ms = Vec::with_capacity(n);
    for seq in 0..n {
        let t = Instant::now();
        api.publish(channel, json!({ "seq": seq }))
            .await
            .with_context(|| format!("publish {seq} to {channel}"))?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    Ok((ms[n / 2], ms[(n * 99) / 100]))
}

#[tokio::test]
async fn min_replicas_waits_for_a_replica_and_answers_unavailable_without_one() -> Result<()> {
    let pair = ReplicaPair::start("durable").await?;
    let gw = start(&pair.primary.url()).await?;
    let api = gw.api();
    let n = std::env::var("DURABLE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(N);
    // Warm both paths (connections, script load).
    latency(&api, DURABLE, 5).await?;
    latency(&api, PLAIN, 5).await?;
    let (plain_p50, plain_p99) = latency(&api, PLAIN, n).await?;
    let (durable_p50, durable_p99) = latency(&api, DURABLE, n).await?;
    println!(
        "publish latency over {n} sequential HTTP publishes: history p50 {plain_p50:.3} ms p99 {plain_p99:.3} ms; history_min_replicas=1 p50 {durable_p50:.3} ms p99 {durable_p99:.3} ms"
    );
    let durable_top = api.history(DURABLE, "limit=0").await?["offset"].clone();
    ensure!(
        durable_top == n + 5,
        "durable publishes acknowledged: top {durable_top}"
    );
    ensure!(
        metric(&api, UNCONFIRMED).await? == 0.0,
        "none unconfirmed yet"
    );

    let mut sub = gw.connect_anon().await?;
    sub.subscribe(DURABLE).await?;
    pair.replica.freeze(true).await?;
    // Plain history publishes meanwhile do not wait behind the blocked
    // WAIT (it runs on connections of its own): five of them finish before
    // the durable one is refused.
    let durable = async {
        let t = Instant::now();
        let r = api
            .post(
                "/api/publish",
                &json!({"channel": DURABLE, "data": {"seq": "lost?"}}),
            )
            .await;
        (r, t.elapsed())
    };
    let plain = async {
        let t = Instant::now();
        for seq in 0..5 {
            api.publish(PLAIN, json!({ "seq": seq })).await?;
        }
        anyhow::Ok(t.elapsed())
    };
    let ((r, took), plain_took) = tokio::join!(durable, plain);
    r?.expect_error(503, "unavailable")?;
    // WAIT's timeout is half the Redis timeout (1 s by default).
    ensure!(
        took < Duration::from_millis(1500),
        "the refusal took {took:?}, beyond the Redis timeout"
    );
    let plain_took = plain_took?;
    ensure!(
        plain_took < took,
        "5 plain publishes took {plain_took:?}, the refused durable one {took:?}: stalled behind WAIT?"
    );
    // "Maybe published": live and in the primary's history all the same.
    let m = sub.expect_type("message", RECV_TIMEOUT).await?;
    ensure!(m["data"]["seq"] == "lost?", "live despite the 503: {m}");
    let h = api.history(DURABLE, "limit=0").await?;
    ensure!(h["offset"] == n + 6, "in the primary's history: {h}");
    ensure!(
        metric(&api, UNCONFIRMED).await? == 1.0,
        "counted as unconfirmed"
    );
    pair.replica.freeze(false).await?;
    pair.wait_link_up().await?;
    api.publish(DURABLE, json!({ "seq": "again" })).await?;
    Ok(())
}

#[tokio::test]
async fn min_replicas_needs_history_and_redis() -> Result<()> {
    let toml = "[namespaces.d]\nhistory_min_replicas = 1\nhistory_size = 10\n";
    let (status, stderr) = GatewayBuilder::new()
        .name("durable-no-redis")
        .config(toml)
        .run_to_exit(Duration::from_secs(15))
        .await?;
    ensure!(status.code() == Some(64), "exit {status:?}: {stderr}");
    ensure!(
        stderr.contains("history_min_replicas needs history"),
        "stderr: {stderr}"
    );
    Ok(())
}
