//! Directed delivery across nodes: to a user (all devices, any node), to one
//! connection on another node, disconnects of a user or a connection
//! through any node, and broadcast to every connection of the cluster
//! (issue 3, "Done when"; docs/protocol.md, "HTTP server API v1").

use std::time::Duration;

use anyhow::{ensure, Result};
use serde_json::json;
use tests::cluster::{Cluster, Topology};
use tests::{eventually, Client, EVENTUALLY, RECV_TIMEOUT};

/// A short window in which a frame that must not come would show up.
const QUIET: Duration = Duration::from_millis(300);

async fn expect_direct(c: &mut Client, who: &str, data: &serde_json::Value) -> Result<()> {
    let m = c.expect_type("direct", RECV_TIMEOUT).await?;
    ensure!(
        &m["data"] == data,
        "{who}: direct message data: expected {data}, got {m}"
    );
    Ok(())
}

async fn user_message_reaches_devices_on_two_nodes(topology: Topology) -> Result<()> {
    let cluster = Cluster::builder("directed_user")
        .topology(topology)
        .start()
        .await?;
    let mut phone = cluster.node(1).connect_user("alice").await?;
    let mut laptop = cluster.node(3).connect_user("alice").await?;
    let mut bob = cluster.node(2).connect_user("bob").await?;
    let mut bob3 = cluster.node(3).connect_user("bob").await?;

    let data = json!({"note": "for alice", "n": 1});
    cluster.api(2).send_to_user("alice", data.clone()).await?;
    expect_direct(&mut phone, "alice on n1", &data).await?;
    expect_direct(&mut laptop, "alice on n3", &data).await?;
    phone.expect_nothing(QUIET).await?;
    laptop.expect_nothing(QUIET).await?;
    bob.expect_nothing(QUIET).await?;
    bob3.expect_nothing(QUIET).await?;

    // Order is kept per user: several messages from different nodes' APIs,
    // each acknowledged before the next.
    for n in 1..=20 {
        cluster
            .api(1 + n % 3)
            .send_to_user("alice", json!({ "n": n }))
            .await?;
    }
    for c in [&mut phone, &mut laptop] {
        for n in 1..=20 {
            expect_direct(c, "alice", &json!({ "n": n })).await?;
        }
    }
    Ok(())
}

async fn connection_message_and_disconnect_reach_another_node(topology: Topology) -> Result<()> {
    let cluster = Cluster::builder("directed_conn")
        .topology(topology)
        .start()
        .await?;
    let mut target = cluster.node(3).connect_user("carol").await?;
    let mut sibling = cluster.node(3).connect_user("carol").await?;
    let mut elsewhere = cluster.node(1).connect_user("carol").await?;
    ensure!(
        target.conn().starts_with("n3."),
        "conn ids start with the node id: {}",
        target.welcome
    );

    let data = json!({"only": "this connection"});
    cluster
        .api(1)
        .send_to_conn(&target.conn(), data.clone())
        .await?;
    expect_direct(&mut target, "target on n3", &data).await?;
    sibling.expect_nothing(QUIET).await?;
    elsewhere.expect_nothing(QUIET).await?;

    // Sending to a connection that does not exist is not an error.
    cluster.api(2).send_to_conn("n3.zzzz.999", json!(1)).await?;
    cluster.api(2).send_to_conn("n9.zzzz.1", json!(1)).await?;

    // Disconnect that one connection through node 2, with a custom code.
    cluster
        .api(2)
        .post(
            &format!("/api/connections/{}/disconnect", target.conn()),
            &json!({"code": 4321, "reason": "bye"}),
        )
        .await?
        .ok()?;
    let (code, reason) = target.expect_close(RECV_TIMEOUT).await?;
    ensure!(
        code == 4321 && reason == "bye",
        "close of the disconnected connection: {code} {reason:?}"
    );
    sibling.ping().await?;
    elsewhere.ping().await?;
    Ok(())
}

async fn disconnect_user_through_node_2_closes_devices_on_nodes_1_and_3(
    topology: Topology,
) -> Result<()> {
    let cluster = Cluster::builder("directed_disconnect")
        .topology(topology)
        .start()
        .await?;
    let mut phone = cluster.node(1).connect_user("dave").await?;
    let mut laptop = cluster.node(3).connect_user("dave").await?;
    let mut other = cluster.node(1).connect_user("erin").await?;
    let mut other3 = cluster.node(3).connect_user("erin").await?;
    let api2 = cluster.api(2);
    let status = api2.user("dave").await?;
    ensure!(
        status["online"] == true && status["connections"].as_array().map(Vec::len) == Some(2),
        "dave has two connections before the disconnect: {status}"
    );

    api2.post("/api/users/dave/disconnect", &json!({}))
        .await?
        .ok()?;
    for (who, c) in [("dave on n1", &mut phone), ("dave on n3", &mut laptop)] {
        let (code, reason) = c.expect_close(RECV_TIMEOUT).await?;
        ensure!(
            code == 4004,
            "{who}: default disconnect close code is 4004, got {code} {reason:?}"
        );
    }
    other.ping().await?;
    other3.ping().await?;
    eventually(EVENTUALLY, "dave offline cluster-wide", || {
        let api = api2.clone();
        async move { matches!(api.is_online("dave").await, Ok(false)) }
    })
    .await?;
    // Erin was not touched.
    ensure!(api2.is_online("erin").await?, "erin must still be online");
    other.expect_nothing(QUIET).await?;
    other3.expect_nothing(QUIET).await?;
    Ok(())
}

async fn broadcast_reaches_every_connection_on_every_node(topology: Topology) -> Result<()> {
    let cluster = Cluster::builder("directed_broadcast")
        .topology(topology)
        .start()
        .await?;
    let mut clients = Vec::new();
    for n in 1..=3 {
        clients.push((
            format!("user on n{n}"),
            cluster.node(n).connect_user(&format!("u{n}")).await?,
        ));
        clients.push((
            format!("anonymous on n{n}"),
            cluster.node(n).connect_anon().await?,
        ));
    }
    let data = json!({"maintenance": true});
    cluster.api(2).broadcast(data.clone()).await?;
    for (who, c) in &mut clients {
        let m = c.expect_type("broadcast", RECV_TIMEOUT).await?;
        ensure!(m["data"] == data, "{who}: broadcast data: {m}");
    }
    for (who, c) in &mut clients {
        c.expect_nothing(QUIET)
            .await
            .map_err(|e| e.context(format!("{who}: one broadcast, delivered once")))?;
    }
    Ok(())
}

tests::topologies!(
    user_message_reaches_devices_on_two_nodes,
    connection_message_and_disconnect_reach_another_node,
    disconnect_user_through_node_2_closes_devices_on_nodes_1_and_3,
    broadcast_reaches_every_connection_on_every_node,
);
