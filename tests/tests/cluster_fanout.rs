//! Cluster fan-out: a publication on node 1, through the HTTP API or a
//! WebSocket client, reaches subscribers on nodes 1, 2 and 3 exactly once
//! and in publish order (issue 3, "Done when"; docs/redis.md).
//!
//! Each test publishes 1,000 messages to a history-enabled channel (offsets
//! must count up by exactly 1 from 1) interleaved with 1,000 to a channel
//! without history (the sequence number in `data` must count up by 1), one
//! at a time, each acknowledged before the next is sent: that is the
//! publish order every subscriber must see.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use tests::cluster::{Cluster, Topology};
use tests::{Client, RECV_TIMEOUT};

const N: u64 = 1000;
const HIST: &str = "hist:fanout";
const PLAIN: &str = "room-fanout";

/// How long to watch for an extra (duplicate) frame after the last one.
const QUIET: Duration = Duration::from_millis(500);

/// Reads frames until `n` messages arrived on each of `channels`; checks
/// that each channel's messages count up: `data.seq` (and, on the history
/// channel, `offset`) equal to 1, 2, 3, ...
async fn expect_in_order(c: &mut Client, who: &str, n: u64) -> Result<()> {
    let mut next: HashMap<String, u64> = HashMap::from([(HIST.into(), 1), (PLAIN.into(), 1)]);
    while next.values().any(|&v| v <= n) {
        let m = c
            .expect_type("message", RECV_TIMEOUT)
            .await
            .with_context(|| format!("{who}: waiting for messages, next expected {next:?}"))?;
        let channel = m["channel"].as_str().unwrap_or_default().to_owned();
        let Some(want) = next.get_mut(&channel) else {
            bail!("{who}: message on an unexpected channel: {m}");
        };
        ensure!(
            *want <= n,
            "{who}: more than {n} messages on {channel}: {m}"
        );
        ensure!(
            m["data"]["seq"] == *want,
            "{who}: {channel} out of order or duplicated: expected seq {want}, got {m}"
        );
        if channel == HIST {
            ensure!(
                m["offset"] == *want,
                "{who}: history offsets must count up by 1: expected {want}, got {m}"
            );
        } else {
            ensure!(
                m["offset"] == Value::Null,
                "{who}: offset must be null without history: {m}"
            );
        }
        *want += 1;
    }
    c.expect_nothing(QUIET)
        .await
        .with_context(|| format!("{who}: a frame after the last message (duplicate?)"))
}

/// Subscribers: two on node 1, one on node 2, one on node 3; each on both
/// channels. Returns them labelled.
async fn subscribers(cluster: &Cluster) -> Result<Vec<(String, Client)>> {
    let mut subs = Vec::new();
    for (n, label) in [(1, "n1-a"), (1, "n1-b"), (2, "n2"), (3, "n3")] {
        let mut c = cluster.node(n).connect_user(label).await?;
        let s = c.subscribe(HIST).await?;
        ensure!(
            s["offset"] == 0,
            "{label}: a fresh channel's top offset is 0: {s}"
        );
        c.subscribe(PLAIN).await?;
        subs.push((label.to_owned(), c));
    }
    // Every node holds the channel's subscription in Redis, once.
    cluster.wait_numsub(HIST, 3).await?;
    cluster.wait_numsub(PLAIN, 3).await?;
    Ok(subs)
}

async fn api_publications_reach_every_node_once_in_order(topology: Topology) -> Result<()> {
    let cluster = Cluster::builder("fanout_api")
        .topology(topology)
        .start()
        .await?;
    let mut subs = subscribers(&cluster).await?;
    let api = cluster.api(1);
    let started = tokio::time::Instant::now();
    for seq in 1..=N {
        let r = api.publish(HIST, json!({ "seq": seq })).await?;
        ensure!(
            r["offset"] == seq,
            "API publish #{seq} must answer offset {seq}: {r}"
        );
        let r = api.publish(PLAIN, json!({ "seq": seq })).await?;
        ensure!(r["offset"] == Value::Null, "no offset without history: {r}");
    }
    eprintln!(
        "[timing] fanout_api: {} API publishes in {:?}",
        2 * N,
        started.elapsed()
    );
    for (label, c) in &mut subs {
        expect_in_order(c, label, N).await?;
    }
    Ok(())
}

async fn client_publications_reach_every_node_once_in_order(topology: Topology) -> Result<()> {
    let cluster = Cluster::builder("fanout_client")
        .topology(topology)
        // 2,000 publishes from one connection: lift the per-connection limit.
        .env("GATEWAY_RATE_LIMIT", 1_000_000)
        .env("GATEWAY_RATE_BURST", 1_000_000)
        .start()
        .await?;
    let mut subs = subscribers(&cluster).await?;
    let mut publisher = cluster.node(1).connect_user("publisher").await?;
    let started = tokio::time::Instant::now();
    for seq in 1..=N {
        let r = publisher.publish(HIST, json!({ "seq": seq })).await?;
        ensure!(
            r["offset"] == seq,
            "client publish #{seq} must answer offset {seq}: {r}"
        );
        let r = publisher.publish(PLAIN, json!({ "seq": seq })).await?;
        ensure!(r["offset"] == Value::Null, "no offset without history: {r}");
    }
    eprintln!(
        "[timing] fanout_client: {} client publishes in {:?}",
        2 * N,
        started.elapsed()
    );
    for (label, c) in &mut subs {
        expect_in_order(c, label, N).await?;
    }
    // The publisher did not subscribe (and publishes without echo).
    publisher.expect_nothing(QUIET).await?;
    // `from` is the publishing user on every node.
    let mut late = cluster.node(3).connect_user("late").await?;
    late.subscribe(PLAIN).await?;
    publisher.publish(PLAIN, json!({"seq": 0})).await?;
    let m = late.expect_type("message", RECV_TIMEOUT).await?;
    ensure!(
        m["from"] == "publisher",
        "message.from must be the publishing user on another node: {m}"
    );
    Ok(())
}

tests::topologies!(
    api_publications_reach_every_node_once_in_order,
    client_publications_reach_every_node_once_in_order,
);
