//! The Pusher protocol across nodes (docs/pusher.md): two gateway nodes on
//! one real redis-server (and on a Redis Cluster). REST events, client
//! events, presence and terminate reach connections on the other node; a
//! node killed with SIGKILL has its members announced as removed by the
//! survivor once its heartbeat is stale.

use std::time::Duration;

use anyhow::{ensure, Result};
use serde_json::json;
use tests::cluster::{Cluster, Topology};
use tests::pusher::{app_toml, data, PusherClient, PusherRest};
use tests::{topologies, RECV_TIMEOUT};

async fn two_nodes(name: &str, topology: Topology) -> Result<Cluster> {
    Cluster::builder(name)
        .nodes(2)
        .topology(topology)
        .config(&app_toml(""))
        .start()
        .await
}

async fn events_presence_and_client_events_cross_nodes(topology: Topology) -> Result<()> {
    let cluster = two_nodes("pusher_cross", topology).await?;
    let mut a = PusherClient::connect(cluster.node(1)).await?;
    let mut b = PusherClient::connect(cluster.node(2)).await?;
    a.subscribe("private-chat").await?;
    b.subscribe("private-chat").await?;
    // A REST event sent to node 2 reaches node 1's subscriber, and back.
    PusherRest::new(cluster.node(2))?
        .trigger(&["private-chat"], "from-rest", "1")
        .await?;
    a.expect_on("from-rest", "private-chat").await?;
    b.expect_on("from-rest", "private-chat").await?;
    // Client events cross nodes, not echoed.
    b.send("client-typing", json!({"on": 2}), Some("private-chat"))
        .await?;
    let got = a.expect_on("client-typing", "private-chat").await?;
    ensure!(got["data"]["on"] == 2, "{got}");
    b.ws.expect_nothing(Duration::from_millis(300)).await?;
    // Presence: members of both nodes, one member_added per user.
    let m = a.join("presence-room", "ua", json!({"n": "a"})).await?;
    ensure!(m["count"] == 1, "{m}");
    let m = b.join("presence-room", "ub", json!({"n": "b"})).await?;
    ensure!(m["count"] == 2 && m["hash"]["ua"]["n"] == "a", "{m}");
    let added = a
        .expect_on("pusher_internal:member_added", "presence-room")
        .await?;
    ensure!(data(&added)["user_id"] == "ub", "{added}");
    // A second device of ub on node 1: no new member.
    let mut b2 = PusherClient::connect(cluster.node(1)).await?;
    let m = b2.join("presence-room", "ub", json!({"n": "b"})).await?;
    ensure!(m["count"] == 2, "{m}");
    // ub's device on node 2 leaves: ub is still here through node 1.
    b.ws.close(1000, "bye").await?;
    a.ws.expect_nothing(Duration::from_millis(700)).await?;
    b2.ws.close(1000, "bye").await?;
    let removed = a
        .expect_on("pusher_internal:member_removed", "presence-room")
        .await?;
    ensure!(data(&removed)["user_id"] == "ub", "{removed}");
    Ok(())
}

async fn terminate_and_user_events_reach_every_node(topology: Topology) -> Result<()> {
    let cluster = two_nodes("pusher_terminate", topology).await?;
    let mut on1 = PusherClient::connect(cluster.node(1)).await?;
    let mut on2 = PusherClient::connect(cluster.node(2)).await?;
    on1.signin("u1").await?;
    on2.signin("u1").await?;
    on1.subscribe("#server-to-user-u1").await?;
    let rest = PusherRest::new(cluster.node(2))?;
    rest.trigger(&["#server-to-user-u1"], "notice", "x").await?;
    on1.expect_on("notice", "#server-to-user-u1").await?;
    rest.post("/users/u1/terminate_connections", &json!({}))
        .await?
        .ok()?;
    for c in [&mut on1, &mut on2] {
        let (code, _) = c.ws.expect_close(RECV_TIMEOUT).await?;
        ensure!(code == 4009, "closed with {code}");
    }
    Ok(())
}

topologies!(
    events_presence_and_client_events_cross_nodes,
    terminate_and_user_events_reach_every_node
);

#[tokio::test]
async fn a_killed_nodes_members_are_announced_removed_by_the_survivor() -> Result<()> {
    let mut cluster = Cluster::builder("pusher_node_kill")
        .nodes(2)
        .config(&app_toml(""))
        .env("GATEWAY_PRESENCE_NODE_TIMEOUT_MS", 1500)
        .presence_ttl(3000, 500)
        .start()
        .await?;
    let mut watcher = PusherClient::connect(cluster.node(1)).await?;
    watcher.join("presence-room", "w", json!({})).await?;
    let mut doomed = PusherClient::connect(cluster.node(2)).await?;
    doomed.join("presence-room", "gone", json!({})).await?;
    watcher
        .expect_on("pusher_internal:member_added", "presence-room")
        .await?;
    cluster.node_mut(2).kill();
    let removed = watcher
        .ws
        .wait_for(
            Duration::from_secs(30),
            "member_removed of the killed node's user",
            |v| v["event"] == "pusher_internal:member_removed" && data(v)["user_id"] == "gone",
        )
        .await?;
    ensure!(removed["channel"] == "presence-room", "{removed}");
    let users = PusherRest::new(cluster.node(1))?
        .get("/channels/presence-room/users", &[])
        .await?
        .ok()?;
    ensure!(users == json!({"users": [{"id": "w"}]}), "{users}");
    Ok(())
}
