//! Recovery across nodes with Redis history (issue 3, "Done when";
//! docs/protocol.md, "History and recovery"): a client that disconnects
//! from one node and resubscribes on another with `since` gets exactly the
//! messages it missed, in order, with `recovered: true`; also while
//! publications keep coming (the subscribe race: pub/sub first, buffer,
//! read history, deduplicate by offset).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use tests::cluster::{Cluster, Topology};
use tests::{eventually, Client, EVENTUALLY, RECV_TIMEOUT};
use tokio::task::JoinSet;

/// Reads the next `message` frame and returns `(offset, data.seq)`.
async fn next_message(c: &mut Client, who: &str) -> Result<(u64, u64)> {
    let m = c
        .expect_type("message", RECV_TIMEOUT)
        .await
        .with_context(|| format!("{who}: waiting for a message"))?;
    let offset = m["offset"]
        .as_u64()
        .with_context(|| format!("{who}: message without offset: {m}"))?;
    Ok((offset, m["data"]["seq"].as_u64().unwrap_or(0)))
}

fn epoch_of(v: &Value) -> Result<String> {
    match v["epoch"].as_str() {
        Some(e) if !e.is_empty() => Ok(e.to_owned()),
        _ => bail!("no epoch in {v}"),
    }
}

async fn reconnect_to_another_node_with_since_gets_exactly_the_missed_messages(
    topology: Topology,
) -> Result<()> {
    const CH: &str = "hist:recover";
    let cluster = Cluster::builder("recovery_hop")
        .topology(topology)
        .start()
        .await?;
    let api3 = cluster.api(3);
    let mut first = cluster.node(1).connect_user("alice").await?;
    first.subscribe(CH).await?;
    for seq in 1..=20u64 {
        api3.publish(CH, json!({ "seq": seq })).await?;
    }
    // The subscribe of a channel without history answered the empty epoch
    // (reads create nothing in Redis); the stream's epoch comes with it.
    let epoch = epoch_of(&api3.history(CH, "").await?)?;
    for seq in 1..=20u64 {
        let got = next_message(&mut first, "alice on n1").await?;
        ensure!(got == (seq, seq), "live on n1: expected {seq}, got {got:?}");
    }
    drop(first);
    // Missed while away: acknowledged through two different nodes.
    for seq in 21..=50u64 {
        let r = cluster
            .api(if seq % 2 == 0 { 1 } else { 3 })
            .publish(CH, json!({ "seq": seq }))
            .await?;
        ensure!(r["offset"] == seq, "ack of {seq}: {r}");
    }

    let mut again = cluster.node(2).connect_user("alice").await?;
    let s = again
        .subscribe_since(CH, json!({"offset": 20, "epoch": epoch}))
        .await?;
    ensure!(
        s["recovered"] == true && s["epoch"] == epoch.as_str() && s["offset"] == 50,
        "resubscribe on n2: expected recovered true, same epoch, top 50: {s}"
    );
    for seq in 21..=50u64 {
        let got = next_message(&mut again, "alice on n2 (replay)").await?;
        ensure!(got == (seq, seq), "replay: expected {seq}, got {got:?}");
    }
    // Then live, no gap, no duplicate.
    for seq in 51..=55u64 {
        api3.publish(CH, json!({ "seq": seq })).await?;
    }
    for seq in 51..=55u64 {
        let got = next_message(&mut again, "alice on n2 (live)").await?;
        ensure!(
            got == (seq, seq),
            "live after replay: expected {seq}, got {got:?}"
        );
    }
    again.expect_nothing(Duration::from_millis(300)).await?;

    // A position older than what `small` retains (3) is reported as not
    // recovered, on any node, and the retained tail is replayed.
    let mut s1 = cluster.node(1).connect_anon().await?;
    s1.subscribe("small:recover").await?;
    for seq in 1..=10u64 {
        api3.publish("small:recover", json!({ "seq": seq })).await?;
    }
    let small_epoch = epoch_of(&api3.history("small:recover", "").await?)?;
    let mut s3 = cluster.node(3).connect_anon().await?;
    let s = s3
        .subscribe_since("small:recover", json!({"offset": 2, "epoch": small_epoch}))
        .await?;
    ensure!(
        s["recovered"] == false && s["offset"] == 10,
        "a trimmed gap is not a recovery: {s}"
    );
    for seq in 8..=10u64 {
        let got = next_message(&mut s3, "small tail").await?;
        ensure!(
            got == (seq, seq),
            "retained tail: expected {seq}, got {got:?}"
        );
    }
    Ok(())
}

async fn hopping_between_nodes_while_publishing_continues_loses_and_repeats_nothing(
    topology: Topology,
) -> Result<()> {
    // `long` keeps 10,000 publications: nothing is trimmed during the test.
    const CH: &str = "long:stream";
    const TOTAL: u64 = 1500;
    let cluster = Cluster::builder("recovery_stream")
        .topology(topology)
        .start()
        .await?;
    let mut client = cluster.node(1).connect_user("hopper").await?;
    client.subscribe(CH).await?;
    // Set once the first publication started the stream (the subscribe of
    // a channel without history answers the empty epoch).
    let mut epoch = String::new();

    // A publisher on n3's API, one publication at a time; `acked` is the
    // offset of the last acknowledged one.
    let acked = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    {
        let api = cluster.api(3);
        let acked = acked.clone();
        tasks.spawn(async move {
            for seq in 1..=TOTAL {
                let r = api.publish(CH, json!({ "seq": seq })).await?;
                ensure!(r["offset"] == seq, "ack of {seq}: {r}");
                acked.store(seq, Ordering::Release);
            }
            Ok::<(), anyhow::Error>(())
        });
    }

    let mut last = 0u64;
    let mut hops = Vec::new();
    // Hop n1 -> n2 -> n3 -> n1 -> n2, each time after reading a while, and
    // staying away until 100 more publications were acknowledged.
    for (hop, to) in [2usize, 3, 1, 2].into_iter().enumerate() {
        let read_until = last + 150;
        while last < read_until {
            let got = next_message(&mut client, "hopper").await?;
            ensure!(
                got == (last + 1, last + 1),
                "hop {hop}: expected offset/seq {}, got {got:?}",
                last + 1
            );
            last += 1;
        }
        drop(client);
        let away_until = last + 100;
        let publisher_done = |a: &AtomicU64| a.load(Ordering::Acquire) >= TOTAL;
        eventually(
            EVENTUALLY,
            "the publisher moves on while we are away",
            || {
                let acked = acked.clone();
                async move { acked.load(Ordering::Acquire) >= away_until || publisher_done(&acked) }
            },
        )
        .await?;
        if epoch.is_empty() {
            epoch = epoch_of(&cluster.api(1).history(CH, "").await?)?;
        }
        client = cluster.node(to).connect_user("hopper").await?;
        let s = client
            .subscribe_since(CH, json!({"offset": last, "epoch": epoch}))
            .await?;
        ensure!(
            s["recovered"] == true && s["epoch"] == epoch.as_str(),
            "hop {hop} to n{to}: resubscribe from {last}: {s}"
        );
        hops.push((to, last, s["offset"].as_u64().unwrap_or(0)));
    }
    // Let the publisher finish, then read everything up to the end.
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    while last < TOTAL {
        let got = next_message(&mut client, "hopper").await?;
        ensure!(
            got == (last + 1, last + 1),
            "after the last hop: expected offset/seq {}, got {got:?}",
            last + 1
        );
        last += 1;
    }
    client.expect_nothing(Duration::from_millis(300)).await?;
    eprintln!(
        "[recovery] hops (to node, resumed from offset, top at resubscribe): {hops:?}; all {TOTAL} received once, in order"
    );
    Ok(())
}

tests::topologies!(
    reconnect_to_another_node_with_since_gets_exactly_the_missed_messages,
    hopping_between_nodes_while_publishing_continues_loses_and_repeats_nothing,
);
