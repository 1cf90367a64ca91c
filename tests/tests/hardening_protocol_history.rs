//! Hardening (issue 10, items 3 and 4, protocol part): the in-process
//! history's per-node caps, reads that create no stream, honest recovery
//! of an evicted stream, and the bounded, charged replay
//! (docs/protocol.md "Recovery", docs/security.md "Clients: replay,
//! presence churn, tokens").

use anyhow::{ensure, Context, Result};
use futures_util::{stream, StreamExt};
use serde_json::json;
use tests::{metric_value, Api, Gateway, GatewayBuilder, RECV_TIMEOUT};

/// Resident set of a process, KiB (for the report lines; never asserted).
fn rss_kib(gw: &Gateway) -> u64 {
    let Some(pid) = gw.pid() else { return 0 };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Run `n` API calls, 8 at a time; fails on the first error.
async fn many<F, Fut>(n: usize, call: F) -> Result<()>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut results = stream::iter(0..n).map(call).buffer_unordered(8);
    while let Some(r) = results.next().await {
        r?;
    }
    Ok(())
}

/// The in-process history's gauges (streams, bytes); fails when absent.
async fn streams(api: &Api) -> Result<(f64, f64)> {
    let text = api.metrics().await?;
    let get = |name| metric_value(&text, name).with_context(|| format!("{name} not exported"));
    Ok((
        get("gateway_history_streams")?,
        get("gateway_history_bytes")?,
    ))
}

/// Five times the channel cap of [`capped_gateway`]: enough to show the cap
/// holds and reads store nothing. The 100k figures of docs/security.md come
/// from the same tests with `HARDENING_HISTORY_N=100000`.
fn n() -> usize {
    std::env::var("HARDENING_HISTORY_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000)
}

async fn capped_gateway(name: &str) -> Result<Gateway> {
    GatewayBuilder::new()
        .name(name)
        .standard_config()
        .env("GATEWAY_HISTORY_MAX_CHANNELS", 1000)
        .env("GATEWAY_HISTORY_MAX_BYTES", 1 << 20)
        .spawn()
        .await
}

/// N history reads of new channel names store nothing (the gauges say
/// how many streams and bytes the in-process history holds).
#[tokio::test]
async fn history_reads_of_new_channels_create_no_stream() -> Result<()> {
    let gw = capped_gateway("hp_history_reads").await?;
    let api = gw.api();
    let rss0 = rss_kib(&gw);
    let n = n();
    many(n, |i| {
        let api = api.clone();
        async move {
            api.history(&format!("hist:read{i}"), "since=0&limit=10")
                .await
                .map(|_| ())
        }
    })
    .await?;
    let rss1 = rss_kib(&gw);
    println!("RSS KiB: start {rss0}, after {n} history reads of new channels {rss1}");
    let (count, bytes) = streams(&api).await.context("history gauges")?;
    ensure!(
        count == 0.0 && bytes == 0.0,
        "{n} reads must create no stream: {count} streams, {bytes} bytes"
    );
    Ok(())
}

/// 100k publishes to distinct channels stay under `history_max_channels`
/// and `history_max_bytes`; the evictions are counted.
#[tokio::test]
async fn the_history_caps_hold_under_publishes_to_distinct_channels() -> Result<()> {
    let gw = capped_gateway("hp_history_publishes").await?;
    let api = gw.api();
    let rss0 = rss_kib(&gw);
    let payload = "x".repeat(200);
    let n = n();
    many(n, |i| {
        let api = api.clone();
        let payload = payload.clone();
        async move {
            api.publish(&format!("hist:pub{i}"), json!(payload))
                .await
                .map(|_| ())
        }
    })
    .await?;
    let rss1 = rss_kib(&gw);
    let (count, bytes) = streams(&api).await?;
    println!(
        "RSS KiB: start {rss0}, after {n} publishes to distinct channels {rss1}; \
         streams {count}, bytes {bytes}"
    );
    // 1000 split over 32 shards: at most 32 per shard.
    ensure!(
        count <= 1024.0,
        "history_max_channels held: {count} streams"
    );
    ensure!(
        bytes <= f64::from(1 << 20),
        "history_max_bytes held: {bytes} bytes"
    );
    let evicted = tests::metric_sum(
        &api.metrics().await?,
        "gateway_history_streams_dropped_total",
    );
    ensure!(evicted >= (n - 1024) as f64, "evictions counted: {evicted}");
    Ok(())
}

/// A client recovering a stream evicted at the cap is told
/// `recovered: false` and a new epoch, never replayed other publications
/// under its old offsets.
#[tokio::test]
async fn recovering_an_evicted_stream_says_recovered_false() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("hp_history_evicted")
        .standard_config()
        .env("GATEWAY_HISTORY_MAX_CHANNELS", 32)
        .spawn()
        .await?;
    let api = gw.api();
    for i in 0..3 {
        api.publish("hist:victim", json!(i)).await?;
    }
    let mut c = gw.connect_user("alice").await?;
    let sub = c.subscribe("hist:victim").await?;
    let epoch = sub["epoch"].clone();
    ensure!(sub["offset"] == 3, "{sub}");
    c.unsubscribe("hist:victim").await?;
    // 1000 other channels: the victim is the idlest stream of its shard.
    many(1000, |i| {
        let api = api.clone();
        async move {
            api.publish(&format!("hist:other{i}"), json!(i))
                .await
                .map(|_| ())
        }
    })
    .await?;
    // The stream comes back with new publications (offsets restart).
    api.publish("hist:victim", json!("new")).await?;
    let again = c
        .subscribe_since("hist:victim", json!({"offset": 3, "epoch": epoch}))
        .await?;
    ensure!(
        again["recovered"] == false && again["epoch"] != epoch,
        "an evicted stream is not recovered under its old epoch: {again}"
    );
    Ok(())
}

const BIG: &str = r#"
[namespaces.big]
history_size = 1000
history_ttl_secs = 300
client_publish = true
allow_anonymous = true
"#;

async fn fill_big(api: &Api, n: usize, bytes: usize) -> Result<()> {
    let payload = "y".repeat(bytes);
    many(n, |_| {
        let api = api.clone();
        let payload = payload.clone();
        async move { api.publish("big:log", json!(payload)).await.map(|_| ()) }
    })
    .await
}

/// A replay larger than `replay_max_bytes` is cut to the newest entries
/// that fit, in order, and says `recovered: false`; the connection stays.
#[tokio::test]
async fn a_replay_larger_than_the_budget_is_cut_and_says_recovered_false() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("hp_replay_cut")
        .config(BIG)
        .env("GATEWAY_REPLAY_MAX_BYTES", 262_144)
        .env("GATEWAY_RATE_BURST", 1000)
        .spawn()
        .await?;
    let api = gw.api();
    fill_big(&api, 100, 30_000).await?;
    let mut c = gw.connect_user("alice").await?;
    let sub = c.subscribe_since("big:log", json!({"offset": 0})).await?;
    ensure!(sub["offset"] == 100, "{sub}");
    ensure!(
        sub["recovered"] == false,
        "3 MB of missed history cannot fit a 256 KiB replay: {sub}"
    );
    let mut offsets = Vec::new();
    let mut bytes = 0;
    loop {
        let m = c.expect_type("message", RECV_TIMEOUT).await?;
        bytes += m.to_string().len();
        let offset = m["offset"].as_u64().unwrap_or(0);
        offsets.push(offset);
        if offset >= 100 {
            break;
        }
    }
    c.ping()
        .await
        .context("the connection stays open after a cut replay")?;
    ensure!(!offsets.is_empty(), "the newest entries are replayed");
    ensure!(
        bytes <= 262_144 + 4096,
        "replay within the budget: {bytes} bytes"
    );
    let last = *offsets.last().unwrap_or(&0);
    ensure!(last == 100, "the replay ends at the top: {offsets:?}");
    let first = offsets[0];
    ensure!(
        offsets == (first..=100).collect::<Vec<_>>(),
        "contiguous, in order: {offsets:?}"
    );
    Ok(())
}

/// A replay is charged to the client's rate limit: after a large one the
/// next frames are refused until the bucket refills.
#[tokio::test]
async fn a_replay_is_charged_to_the_rate_limit() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("hp_replay_charge")
        .config(BIG)
        .env("GATEWAY_RATE_LIMIT", 1)
        .env("GATEWAY_RATE_BURST", 20)
        .env("GATEWAY_REPLAY_TOKEN_BYTES", 4096)
        .spawn()
        .await?;
    let api = gw.api();
    fill_big(&api, 20, 10_000).await?;
    let mut c = gw.connect_user("alice").await?;
    let sub = c.subscribe_since("big:log", json!({"offset": 0})).await?;
    ensure!(
        sub["recovered"] == true,
        "200 KB fits the default budget: {sub}"
    );
    let reply = c.request(json!({"op": "ping"})).await?;
    ensure!(
        reply["type"] == "error" && reply["code"] == "rate_limited",
        "a 200 KB replay costs ~50 tokens of a burst of 20: the next frame waits; got {reply}"
    );
    Ok(())
}
