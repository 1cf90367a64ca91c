//! Interest-based routing: a node receives a channel's traffic only while it
//! has local subscribers of that channel (issue 3, "Done when";
//! docs/redis.md, "Key and channel layout").
//!
//! Two views from outside the nodes: Redis `PUBSUB NUMSUB P:ch:{c}` (one
//! subscription per interested node, however many local subscribers it
//! has) and each node's `gateway_backplane_received_total` counter, which
//! must stay flat on a node that is not interested.

use std::time::Duration;

use anyhow::{ensure, Result};
use serde_json::json;
use tests::cluster::{Cluster, Topology};
use tests::metric;
use tests::{Api, Client, RECV_TIMEOUT};

const RECEIVED: &str = "gateway_backplane_received_total";
const CH: &str = "room-routing";

async fn received(api: &Api) -> Result<f64> {
    metric(api, RECEIVED).await
}

async fn expect_seqs(
    c: &mut Client,
    who: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<()> {
    for seq in range {
        let m = c.expect_type("message", RECV_TIMEOUT).await?;
        ensure!(
            m["channel"] == CH && m["data"]["seq"] == seq,
            "{who}: expected seq {seq}, got {m}"
        );
    }
    Ok(())
}

async fn node_without_subscribers_receives_none_of_the_channel_traffic(
    topology: Topology,
) -> Result<()> {
    let cluster = Cluster::builder("routing")
        .topology(topology)
        .start()
        .await?;
    // Anonymous connections: no user topics, so no directed traffic either.
    let mut a1 = cluster.node(1).connect_anon().await?;
    let mut b1 = cluster.node(1).connect_anon().await?;
    let mut a2 = cluster.node(2).connect_anon().await?;
    let mut idle3 = cluster.node(3).connect_anon().await?;
    ensure!(cluster.numsub(CH).await? == 0, "nobody subscribed yet");
    a1.subscribe(CH).await?;
    b1.subscribe(CH).await?;
    a2.subscribe(CH).await?;
    // Two local subscribers on n1 share one Redis subscription; n3 has none.
    cluster.wait_numsub(CH, 2).await?;

    let before: Vec<f64> = vec![
        received(&cluster.api(1)).await?,
        received(&cluster.api(2)).await?,
        received(&cluster.api(3)).await?,
    ];
    // Published through the uninterested node itself.
    let api3 = cluster.api(3);
    for seq in 1..=200u64 {
        api3.publish(CH, json!({ "seq": seq })).await?;
    }
    expect_seqs(&mut a1, "n1 subscriber a", 1..=200).await?;
    expect_seqs(&mut b1, "n1 subscriber b", 1..=200).await?;
    expect_seqs(&mut a2, "n2 subscriber", 1..=200).await?;
    let after: Vec<f64> = vec![
        received(&cluster.api(1)).await?,
        received(&cluster.api(2)).await?,
        received(&cluster.api(3)).await?,
    ];
    eprintln!("[routing] {RECEIVED} before {before:?} after {after:?}");
    ensure!(
        after[0] - before[0] >= 200.0 && after[1] - before[1] >= 200.0,
        "interested nodes must count what they received: before {before:?}, after {after:?}"
    );
    ensure!(
        after[2] == before[2],
        "n3 has no subscriber of {CH} yet received envelopes: before {before:?}, after {after:?}"
    );
    idle3.expect_nothing(Duration::from_millis(200)).await?;

    // One of n1's two subscribers leaves: n1 keeps its Redis subscription.
    a1.unsubscribe(CH).await?;
    api3.publish(CH, json!({ "seq": 201 })).await?;
    expect_seqs(&mut b1, "remaining n1 subscriber", 201..=201).await?;
    expect_seqs(&mut a2, "n2 subscriber", 201..=201).await?;
    ensure!(cluster.numsub(CH).await? == 2, "n1 still has a subscriber");
    // The last n1 subscriber unsubscribes, the n2 one disconnects.
    b1.unsubscribe(CH).await?;
    cluster.wait_numsub(CH, 1).await?;
    drop(a2);
    cluster.wait_numsub(CH, 0).await?;

    // Nobody is interested any more: no node receives the traffic.
    let before: Vec<f64> = vec![
        received(&cluster.api(1)).await?,
        received(&cluster.api(2)).await?,
        received(&cluster.api(3)).await?,
    ];
    for seq in 202..=250u64 {
        api3.publish(CH, json!({ "seq": seq })).await?;
    }
    // A marker on another channel that n1 and n2 do receive: once it has
    // arrived, the publications above would have arrived too.
    let mut m1 = cluster.node(1).connect_anon().await?;
    let mut m2 = cluster.node(2).connect_anon().await?;
    m1.subscribe("marker").await?;
    m2.subscribe("marker").await?;
    api3.publish("marker", json!("m")).await?;
    m1.expect_type("message", RECV_TIMEOUT).await?;
    m2.expect_type("message", RECV_TIMEOUT).await?;
    let after: Vec<f64> = vec![
        received(&cluster.api(1)).await?,
        received(&cluster.api(2)).await?,
        received(&cluster.api(3)).await?,
    ];
    eprintln!("[routing] after everyone left: before {before:?} after {after:?}");
    ensure!(
        after[0] - before[0] == 1.0 && after[1] - before[1] == 1.0,
        "after the last local subscriber left, n1 and n2 must receive only the marker: before {before:?}, after {after:?}"
    );
    ensure!(
        after[2] == before[2],
        "n3: before {before:?}, after {after:?}"
    );
    a1.expect_nothing(Duration::from_millis(200)).await?;
    b1.expect_nothing(Duration::from_millis(200)).await?;
    Ok(())
}

async fn user_topic_is_subscribed_only_where_the_user_is_connected(
    topology: Topology,
) -> Result<()> {
    let cluster = Cluster::builder("routing_user")
        .topology(topology)
        .start()
        .await?;
    let user = cluster.user_name("ursula");
    ensure!(
        cluster.numsub_raw(&user).await? == 0,
        "nobody connected yet"
    );
    let c1 = cluster.node(1).connect_user("ursula").await?;
    let c1b = cluster.node(1).connect_user("ursula").await?;
    let c3 = cluster.node(3).connect_user("ursula").await?;
    ensure!(
        cluster.numsub_raw(&user).await? == 2,
        "n1 and n3 hold ursula's user topic once each"
    );
    drop(c3);
    tests::eventually(tests::EVENTUALLY, "user topic dropped by n3", || async {
        matches!(cluster.numsub_raw(&user).await, Ok(1))
    })
    .await?;
    drop(c1);
    drop(c1b);
    tests::eventually(tests::EVENTUALLY, "user topic dropped by n1", || async {
        matches!(cluster.numsub_raw(&user).await, Ok(0))
    })
    .await?;
    Ok(())
}

tests::topologies!(
    node_without_subscribers_receives_none_of_the_channel_traffic,
    user_topic_is_subscribed_only_where_the_user_is_connected,
);
