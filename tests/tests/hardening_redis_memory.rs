//! Redis memory under hostile load (issue 10, items 2 and 3; docs/redis.md
//! "Lua scripts", docs/security.md "Redis: memory, sweeps and crashed
//! nodes"): with `maxmemory` reached, publishes are refused with
//! `unavailable` and leave nothing half-written (the writing scripts carry
//! Redis 7 flags, so Redis checks memory before they run); history reads of
//! channels without history create no key at all.

use anyhow::{bail, ensure, Context, Result};
use futures_util::future::join_all;
use serde_json::json;
use tests::cluster::Cluster;
use tests::{check_error, RedisServer, Resp};

/// `maxmemory` of the reproduction.
const MAXMEMORY: i64 = 3 * 1024 * 1024;

async fn int(redis: &RedisServer, args: &[&str]) -> Result<i64> {
    match redis.cmd(args).await? {
        Resp::Int(n) => Ok(n),
        other => bail!("{args:?}: unexpected reply {other:?}"),
    }
}

/// `used_memory` from `INFO memory`.
async fn used_memory(redis: &RedisServer) -> Result<i64> {
    let info = redis
        .cmd(&["INFO", "memory"])
        .await?
        .as_text()
        .context("INFO reply")?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .context("no used_memory in INFO")?
        .trim()
        .parse()
        .context("used_memory")
}

#[tokio::test]
async fn publishes_past_maxmemory_are_refused_and_write_nothing() -> Result<()> {
    let cluster = Cluster::builder("hard_maxmemory").nodes(1).start().await?;
    let redis = &cluster.redis;
    let api = cluster.api(1);
    redis
        .cmd(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        .await?;
    let limit = MAXMEMORY.to_string();
    redis.cmd(&["CONFIG", "SET", "maxmemory", &limit]).await?;
    let text = "x".repeat(30 * 1024);
    let (mut accepted, mut refused) = (Vec::new(), Vec::new());
    for i in 0..200 {
        let channel = format!("hist:mem{i}");
        let r = api
            .post("/api/publish", &json!({"channel": channel, "data": text}))
            .await?;
        match r.status {
            200 => accepted.push(channel),
            _ => {
                r.expect_error(503, "unavailable")?;
                refused.push(channel);
            }
        }
    }
    let used = used_memory(redis).await?;
    println!(
        "maxmemory {MAXMEMORY}: {} publishes of 30 KB accepted, {} refused, used_memory {used}",
        accepted.len(),
        refused.len()
    );
    ensure!(
        !refused.is_empty(),
        "all {} publishes of 30 KB accepted past maxmemory {MAXMEMORY} (used_memory {used})",
        accepted.len()
    );
    // One script may still run when memory is just below the limit.
    ensure!(
        used <= MAXMEMORY + 512 * 1024,
        "used_memory {used} far past maxmemory {MAXMEMORY}"
    );
    // Nothing half-written: a refused publish left neither meta nor stream;
    // an accepted one left both, with its one entry.
    let p = &cluster.prefix;
    for channel in &refused {
        let meta = format!("{p}:meta:{{{channel}}}");
        let hist = format!("{p}:hist:{{{channel}}}");
        let n = int(redis, &["EXISTS", &meta, &hist]).await?;
        ensure!(n == 0, "refused publish to {channel} left {n} key(s)");
    }
    for channel in &accepted {
        let hist = format!("{p}:hist:{{{channel}}}");
        let n = int(redis, &["XLEN", &hist]).await?;
        ensure!(n == 1, "accepted publish to {channel}: XLEN {n}");
    }
    // The WebSocket path answers the documented error and keeps the socket.
    let mut client = cluster.node(1).connect_anon().await?;
    let reply = client
        .request(json!({"op": "publish", "channel": "hist:ws-mem", "data": text}))
        .await?;
    check_error(&reply, "unavailable")?;
    client.ping().await?;
    // Room again: publishes succeed.
    redis.cmd(&["CONFIG", "SET", "maxmemory", "0"]).await?;
    api.publish("hist:mem-after", json!("ok")).await?;
    Ok(())
}

#[tokio::test]
async fn history_reads_of_unknown_channels_create_no_key() -> Result<()> {
    const READS: usize = 10_000;
    const SUBSCRIBES: usize = 200;
    let cluster = Cluster::builder("hard_readkeys").nodes(1).start().await?;
    let redis = &cluster.redis;
    let api = cluster.api(1);
    let mut client = cluster.node(1).connect_anon().await?;
    // Settle what a node writes by itself (registry), then count.
    let before = int(redis, &["DBSIZE"]).await?;
    for start in (0..READS).step_by(50) {
        let reads = (start..start + 50).map(|i| {
            let api = api.clone();
            async move { api.history(&format!("hist:unknown{i}"), "since=0").await }
        });
        for r in join_all(reads).await {
            let body = r?;
            ensure!(body["offset"] == 0, "read of an unknown channel: {body}");
        }
    }
    // 40 subscribes (80 frames) per connection: inside the rate limit.
    for i in 0..SUBSCRIBES {
        if i % 40 == 0 {
            client = cluster.node(1).connect_anon().await?;
        }
        let channel = format!("hist:unknown-sub{i}");
        let s = client
            .subscribe_since(&channel, json!({"offset": 0}))
            .await?;
        ensure!(s["offset"] == 0, "subscribe with recovery: {s}");
        client.unsubscribe(&channel).await?;
    }
    // The node's channel counts follow the unsubscribes within a flush
    // (50 ms): wait for them, bounded, then compare.
    let settled = tests::eventually(tests::EVENTUALLY, "DBSIZE back to its start", || async {
        int(redis, &["DBSIZE"]).await.ok() == Some(before)
    })
    .await;
    let after = int(redis, &["DBSIZE"]).await?;
    println!(
        "{READS} history reads + {SUBSCRIBES} recovering subscribes of unknown channels: DBSIZE {before} -> {after}"
    );
    ensure!(
        settled.is_ok() && after == before,
        "reads created keys: DBSIZE {before} -> {after}"
    );
    Ok(())
}

/// `total_net_output_bytes` from `INFO stats`: bytes Redis sent its clients.
async fn net_output(redis: &RedisServer) -> Result<i64> {
    let info = redis
        .cmd(&["INFO", "stats"])
        .await?
        .as_text()
        .context("INFO reply")?;
    info.lines()
        .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
        .context("no total_net_output_bytes in INFO")?
        .trim()
        .parse()
        .context("total_net_output_bytes")
}

/// Replay amplification on Redis (issue 10, item 4): a `subscribe` with
/// `since: {offset: 0}` on 100 x 60 KB of history moves about the replay
/// budget out of Redis, not the whole 6 MB (before: read.lua returned every
/// wanted entry and the gateway trimmed afterwards).
#[tokio::test]
async fn a_replay_reads_about_its_budget_from_redis() -> Result<()> {
    const BUDGET: usize = 256 * 1024;
    let cluster = Cluster::builder("hard_replay_redis")
        .nodes(1)
        .env("GATEWAY_REPLAY_MAX_BYTES", BUDGET)
        .start()
        .await?;
    let redis = &cluster.redis;
    let api = cluster.api(1);
    let text = "y".repeat(60 * 1024);
    for _ in 0..100 {
        api.publish("hist:big", json!(text)).await?;
    }
    let mut client = cluster.node(1).connect_anon().await?;
    let before = net_output(redis).await?;
    let reply = client
        .subscribe_since("hist:big", json!({"offset": 0}))
        .await?;
    let after = net_output(redis).await?;
    // The INFO replies themselves are a few KB.
    let moved = usize::try_from(after - before).unwrap_or(0);
    let mut replayed = 0usize;
    while replayed < 3 {
        let f = client.recv_json(tests::RECV_TIMEOUT).await?;
        if f["type"] == "message" {
            replayed += 1;
        }
    }
    println!(
        "subscribe since 0 on 100 x 60 KB, budget {BUDGET}: Redis sent {moved} bytes; reply {reply}"
    );
    ensure!(
        reply["recovered"] == false,
        "a cut replay says recovered: false: {reply}"
    );
    ensure!(
        moved <= 2 * BUDGET,
        "Redis sent {moved} bytes for a replay budget of {BUDGET}"
    );
    Ok(())
}
