//! Presence, join/leave, user status and the node registry across nodes,
//! and what happens to a crashed node's entries (issue 3, "Done when";
//! docs/redis.md, presence keys and scripts).
//!
//! `chat:*` has presence and join/leave (tests::STANDARD_CONFIG).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tests::cluster::{node_ids, Cluster, Topology};
use tests::{eventually, Api, Client, EVENTUALLY, RECV_TIMEOUT};

const ROOM: &str = "chat:cluster";

/// A short window in which a frame that must not come would show up.
const QUIET: Duration = Duration::from_millis(300);

/// `(user, conn, node)` of every member in a presence answer, sorted.
fn members(body: &Value) -> BTreeSet<(String, String, String)> {
    body["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    (
                        m["user"].as_str().unwrap_or_default().to_owned(),
                        m["conn"].as_str().unwrap_or_default().to_owned(),
                        m["node"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn member_of(c: &Client, user: &str) -> (String, String, String) {
    (user.to_owned(), c.conn(), c.node())
}

async fn expect_event(c: &mut Client, who: &str, ty: &str, user: &str, conn: &str) -> Result<()> {
    let e = c
        .expect_type(ty, RECV_TIMEOUT)
        .await
        .with_context(|| format!("{who}: waiting for {ty} of {user} ({conn})"))?;
    ensure!(
        e["channel"] == ROOM && e["user"] == user && e["conn"] == conn,
        "{who}: expected {ty} of {user} ({conn}) on {ROOM}, got {e}"
    );
    Ok(())
}

async fn presence_and_join_leave_are_consistent_across_nodes(topology: Topology) -> Result<()> {
    let cluster = Cluster::builder("presence_joinleave")
        .topology(topology)
        .start()
        .await?;
    let mut alice = cluster.node(1).connect_user("alice").await?;
    let mut bob = cluster.node(2).connect_user("bob").await?;
    let mut carol = cluster.node(3).connect_user("carol").await?;

    alice.subscribe(ROOM).await?;
    bob.subscribe(ROOM).await?;
    expect_event(&mut alice, "alice (n1)", "join", "bob", &bob.conn()).await?;
    carol.subscribe(ROOM).await?;
    expect_event(&mut alice, "alice (n1)", "join", "carol", &carol.conn()).await?;
    expect_event(&mut bob, "bob (n2)", "join", "carol", &carol.conn()).await?;
    // Nobody hears their own join.
    carol.expect_nothing(QUIET).await?;

    let all: BTreeSet<_> = [
        member_of(&alice, "alice"),
        member_of(&bob, "bob"),
        member_of(&carol, "carol"),
    ]
    .into();
    // The presence op on every node, and the HTTP presence of every node,
    // list the members of every node.
    for (who, c) in [("n1", &mut alice), ("n2", &mut bob), ("n3", &mut carol)] {
        let p = c.presence(ROOM).await?;
        ensure!(members(&p) == all, "presence op on {who}: {p}");
    }
    for n in 1..=3 {
        let p = cluster.api(n).presence(ROOM).await?;
        ensure!(members(&p) == all, "HTTP presence on n{n}: {p}");
    }

    // Carol unsubscribes on n3: leave on n1 and n2.
    let carol_conn = carol.conn();
    carol.unsubscribe(ROOM).await?;
    expect_event(&mut alice, "alice (n1)", "leave", "carol", &carol_conn).await?;
    expect_event(&mut bob, "bob (n2)", "leave", "carol", &carol_conn).await?;
    // Bob's connection closes on n2: leave on n1.
    let bob_conn = bob.conn();
    let bob_member = member_of(&bob, "bob");
    drop(bob);
    expect_event(&mut alice, "alice (n1)", "leave", "bob", &bob_conn).await?;
    let p = cluster.api(3).presence(ROOM).await?;
    ensure!(
        members(&p) == [member_of(&alice, "alice")].into(),
        "after carol left and bob disconnected, n3 sees only alice: {p} (bob was {bob_member:?})"
    );
    // Each event came once.
    alice.expect_nothing(QUIET).await?;
    Ok(())
}

async fn user_status_and_nodes_are_cluster_wide(topology: Topology) -> Result<()> {
    let cluster = Cluster::builder("presence_views")
        .topology(topology)
        .presence_ttl(10_000, 500)
        .start()
        .await?;
    let phone = cluster.node(1).connect_user("alice").await?;
    let laptop = cluster.node(3).connect_user("alice").await?;
    let _bob = cluster.node(3).connect_user("bob").await?;

    let want: BTreeSet<(String, String)> = [
        (phone.conn(), "n1".to_owned()),
        (laptop.conn(), "n3".to_owned()),
    ]
    .into();
    for n in 1..=3 {
        let u = cluster.api(n).user("alice").await?;
        let got: BTreeSet<(String, String)> = u["connections"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .map(|c| {
                        (
                            c["conn"].as_str().unwrap_or_default().to_owned(),
                            c["node"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        ensure!(
            u["online"] == true && u["user"] == "alice" && got == want,
            "GET /api/users/alice on n{n}: {u}"
        );
    }
    ensure!(
        !cluster.api(2).is_online("nobody").await?,
        "unknown user is offline"
    );

    // Every node lists every node; the connection counts of the other
    // nodes follow within a heartbeat (refresh every 500 ms here).
    for n in 1..=3 {
        let api = cluster.api(n);
        eventually(
            EVENTUALLY,
            &format!("GET /api/nodes on n{n} lists n1..n3 with 1, 0, 2 connections"),
            || {
                let api: Api = api.clone();
                async move {
                    let Ok(body) = api.nodes().await else {
                        return false;
                    };
                    let counts: Vec<u64> = body["nodes"]
                        .as_array()
                        .map(|ns| {
                            ns.iter()
                                .filter_map(|n| n["connections"].as_u64())
                                .collect()
                        })
                        .unwrap_or_default();
                    node_ids(&body) == ["n1", "n2", "n3"] && counts == [1, 0, 2]
                }
            },
        )
        .await?;
    }
    let body = cluster.api(2).nodes().await?;
    for node in body["nodes"].as_array().into_iter().flatten() {
        ensure!(
            node["started_at"]
                .as_u64()
                .is_some_and(|t| t > 1_600_000_000)
                && node["version"].as_str().is_some_and(|v| !v.is_empty())
                && node["subscriptions"].is_u64(),
            "node entry fields: {node}"
        );
    }

    // The phone goes away: one connection left, on n3.
    drop(phone);
    let api2 = cluster.api(2);
    eventually(EVENTUALLY, "alice only on n3", || {
        let api = api2.clone();
        let laptop_conn = laptop.conn();
        async move {
            match api.user("alice").await {
                Ok(u) => {
                    u["online"] == true
                        && u["connections"].as_array().is_some_and(|cs| {
                            cs.len() == 1 && cs[0]["conn"] == laptop_conn.as_str()
                        })
                }
                Err(_) => false,
            }
        }
    })
    .await?;
    Ok(())
}

/// Reads `c`'s frames until a `leave` arrived for each conn of `gone`
/// (each once); returns when, counted from `since`.
async fn leaves(
    c: &mut Client,
    who: &str,
    gone: &BTreeSet<String>,
    since: tokio::time::Instant,
    limit: Duration,
) -> Result<Duration> {
    let mut left = BTreeSet::new();
    while &left != gone {
        let e = c
            .expect_type("leave", limit.saturating_sub(since.elapsed()))
            .await
            .with_context(|| {
                format!("{who}: leave events of {gone:?} within {limit:?} (got {left:?})")
            })?;
        let conn = e["conn"].as_str().unwrap_or_default().to_owned();
        ensure!(
            e["channel"] == ROOM && gone.contains(&conn) && left.insert(conn),
            "{who}: unexpected or repeated leave {e}"
        );
    }
    Ok(since.elapsed())
}

async fn killed_node_members_vanish_within_the_ttl_with_leave_events(
    topology: Topology,
) -> Result<()> {
    const TTL_MS: u64 = 3000;
    const REFRESH_MS: u64 = 1000;
    /// Slack on top of the TTL: sweep interval (TTL/4), a loaded machine.
    const SLACK: Duration = Duration::from_secs(5);
    let mut cluster = Cluster::builder("presence_kill")
        .topology(topology)
        .presence_ttl(TTL_MS, REFRESH_MS)
        .start()
        .await?;
    let mut alice = cluster.node(1).connect_user("alice").await?;
    let mut bob = cluster.node(2).connect_user("bob").await?;
    let mut carol = cluster.node(3).connect_user("carol").await?;
    let mut carol2 = cluster.node(3).connect_anon().await?;
    alice.subscribe(ROOM).await?;
    bob.subscribe(ROOM).await?;
    expect_event(&mut alice, "alice", "join", "bob", &bob.conn()).await?;
    carol.subscribe(ROOM).await?;
    expect_event(&mut alice, "alice", "join", "carol", &carol.conn()).await?;
    expect_event(&mut bob, "bob", "join", "carol", &carol.conn()).await?;
    carol2.subscribe(ROOM).await?;
    expect_event(&mut alice, "alice", "join", "", &carol2.conn()).await?;
    expect_event(&mut bob, "bob", "join", "", &carol2.conn()).await?;
    let gone: BTreeSet<String> = [carol.conn(), carol2.conn()].into();
    let p = cluster.api(1).presence(ROOM).await?;
    ensure!(members(&p).len() == 4, "four members before the crash: {p}");

    cluster.node_mut(3).kill();
    let killed = tokio::time::Instant::now();

    // Concurrently: presence on n1 stops listing n3's members, and both
    // surviving subscribers get a leave event for each of them, once, all
    // within the TTL (+ slack).
    let limit = Duration::from_millis(TTL_MS) + SLACK;
    let survivors: BTreeSet<_> = [member_of(&alice, "alice"), member_of(&bob, "bob")].into();
    let api1 = cluster.api(1);
    let vanished = async {
        eventually(limit, "n3's members gone from presence on n1", || {
            let api = api1.clone();
            let survivors = survivors.clone();
            async move { matches!(api.presence(ROOM).await, Ok(p) if members(&p) == survivors) }
        })
        .await
        .map(|()| killed.elapsed())
    };
    let (vanished, alice_left, bob_left) = tokio::join!(
        vanished,
        leaves(&mut alice, "alice (n1)", &gone, killed, limit),
        leaves(&mut bob, "bob (n2)", &gone, killed, limit),
    );
    let (vanished, alice_left, bob_left) = (vanished?, alice_left?, bob_left?);
    eprintln!(
        "[timing] presence_kill (ttl {TTL_MS} ms, refresh {REFRESH_MS} ms): after kill -9, \
         members gone from presence in {vanished:?}; leave events on n1 in {alice_left:?}, on n2 in {bob_left:?}"
    );
    let p = cluster.api(2).presence(ROOM).await?;
    ensure!(
        members(&p) == survivors,
        "presence on n2 after the crash: {p}"
    );
    // The registry drops n3 and the user index forgets carol within the TTL.
    eventually(limit, "n3 dropped from GET /api/nodes", || {
        let api = api1.clone();
        async move { matches!(api.nodes().await, Ok(b) if node_ids(&b) == ["n1", "n2"]) }
    })
    .await?;
    eventually(limit, "carol offline", || {
        let api = api1.clone();
        async move { matches!(api.is_online("carol").await, Ok(false)) }
    })
    .await?;
    eprintln!(
        "[timing] presence_kill: n3 gone from /api/nodes and carol offline {:?} after kill -9",
        killed.elapsed()
    );
    ensure!(
        killed.elapsed() <= limit + Duration::from_secs(1),
        "took {:?}",
        killed.elapsed()
    );
    // No duplicate leave from the other sweeping node.
    alice.expect_nothing(Duration::from_millis(1500)).await?;
    bob.expect_nothing(Duration::from_millis(100)).await?;
    Ok(())
}

/// A node that stalls for longer than the presence TTL (a long pause, a
/// frozen VM) loses its members to another node's sweep, which sends their
/// leave events. When it resumes, its next refresh finds them gone, writes
/// the ones still connected back and announces them with a join again, so
/// every subscriber's view is right once more (docs/redis.md, refresh).
async fn a_stalled_node_writes_its_members_back_with_a_join(topology: Topology) -> Result<()> {
    const TTL_MS: u64 = 2000;
    const REFRESH_MS: u64 = 500;
    /// Slack on top of the TTL: sweep interval (TTL/4), a loaded machine.
    const SLACK: Duration = Duration::from_secs(8);
    let cluster = Cluster::builder("presence_stall")
        .topology(topology)
        .nodes(2)
        .presence_ttl(TTL_MS, REFRESH_MS)
        .start()
        .await?;
    let mut alice = cluster.node(1).connect_user("alice").await?;
    let mut bob = cluster.node(2).connect_user("bob").await?;
    alice.subscribe(ROOM).await?;
    bob.subscribe(ROOM).await?;
    expect_event(&mut alice, "alice (n1)", "join", "bob", &bob.conn()).await?;
    let both: BTreeSet<_> = [member_of(&alice, "alice"), member_of(&bob, "bob")].into();

    cluster.node(2).freeze(true).await?;
    let frozen = tokio::time::Instant::now();
    let left = alice
        .expect_type("leave", Duration::from_millis(TTL_MS) + SLACK)
        .await
        .context("alice: waiting for bob's leave while n2 is frozen")?;
    ensure!(
        left["channel"] == ROOM && left["conn"] == bob.conn().as_str(),
        "unexpected leave {left}"
    );
    let p = cluster.api(1).presence(ROOM).await?;
    ensure!(
        members(&p) == [member_of(&alice, "alice")].into(),
        "presence while n2 is frozen: {p}"
    );
    eprintln!(
        "[timing] presence_stall: bob's leave {:?} after n2 froze",
        frozen.elapsed()
    );

    cluster.node(2).freeze(false).await?;
    let resumed = tokio::time::Instant::now();
    expect_event(&mut alice, "alice (n1)", "join", "bob", &bob.conn()).await?;
    let p = cluster.api(1).presence(ROOM).await?;
    ensure!(members(&p) == both, "presence after n2 resumed: {p}");
    ensure!(
        matches!(cluster.api(1).is_online("bob").await, Ok(true)),
        "bob offline after n2 resumed"
    );
    let restored = tests::metric(&cluster.api(2), "gateway_presence_restored_total").await?;
    ensure!(
        restored >= 1.0,
        "gateway_presence_restored_total on n2: {restored}"
    );
    eprintln!(
        "[timing] presence_stall: bob's join {:?} after n2 resumed",
        resumed.elapsed()
    );
    // One join, not one per refresh.
    alice.expect_nothing(Duration::from_millis(TTL_MS)).await?;
    Ok(())
}

tests::topologies!(
    presence_and_join_leave_are_consistent_across_nodes,
    user_status_and_nodes_are_cluster_wide,
    killed_node_members_vanish_within_the_ttl_with_leave_events,
    a_stalled_node_writes_its_members_back_with_a_join,
);
