//! A crashed node's presence is purged by a live node within the node
//! timeout, not left for the whole presence TTL (issue 10, item 11;
//! docs/redis.md "Crashed nodes"): a real `kill -9` of one gateway of a
//! 3-node cluster, its members gone and one leave event per member
//! delivered to the other nodes' subscribers; and a node stalled with
//! SIGSTOP past the node timeout is purged the same way, then re-announces
//! its members (join events) after SIGCONT.
//!
//! The presence TTL stays at its 60 s default, so only the purge can
//! explain members leaving within seconds.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tests::cluster::Cluster;
use tests::{eventually, metric, Client, EVENTUALLY};

const ROOM: &str = "chat:crash";
/// The documented default of `presence_node_timeout_ms`.
const NODE_TIMEOUT: Duration = Duration::from_secs(5);
/// What a loaded 2-core machine may add to the node timeout (detection
/// tick, scheduling, delivery); the measured figure is printed.
const SLACK: Duration = Duration::from_secs(10);

fn conns(body: &Value) -> BTreeSet<String> {
    body["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter_map(|m| m["conn"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Collect `ty` events on ROOM until every conn of `want` was seen once
/// (events of other conns are skipped); fails on a duplicate.
async fn collect(c: &mut Client, who: &str, ty: &str, want: &BTreeSet<String>) -> Result<()> {
    let mut got = BTreeSet::new();
    while got != *want {
        let e = c
            .wait_for_type(ty, NODE_TIMEOUT + SLACK)
            .await
            .with_context(|| format!("{who}: {ty} events so far {got:?}, want {want:?}"))?;
        ensure!(e["channel"] == ROOM, "{who}: {ty} on another channel: {e}");
        let conn = e["conn"].as_str().unwrap_or_default().to_owned();
        if !want.contains(&conn) {
            // Another watcher's own join during the setup.
            continue;
        }
        ensure!(
            got.insert(conn),
            "{who}: second {ty} for the same conn: {e}"
        );
    }
    Ok(())
}

async fn start(name: &str) -> Result<(Cluster, Vec<Client>, Vec<Client>, BTreeSet<String>)> {
    let cluster = Cluster::builder(name).start().await?;
    let mut watchers = Vec::new();
    for n in 1..=2 {
        let mut w = cluster.node(n).connect_user(&format!("w{n}")).await?;
        w.subscribe(ROOM).await?;
        watchers.push(w);
    }
    let mut victims = Vec::new();
    let mut victim_conns = BTreeSet::new();
    for i in 0..3 {
        let mut v = cluster.node(3).connect_user(&format!("v{i}")).await?;
        v.subscribe(ROOM).await?;
        victim_conns.insert(v.conn());
        victims.push(v);
    }
    // Every watcher saw every join (so later events are the ones we test).
    for (i, w) in watchers.iter_mut().enumerate() {
        collect(w, &format!("w{}", i + 1), "join", &victim_conns).await?;
    }
    let api = cluster.api(1);
    let want = victim_conns.len() + 2;
    eventually(EVENTUALLY, "every member listed", || {
        let api = api.clone();
        async move {
            api.presence(ROOM)
                .await
                .is_ok_and(|b| conns(&b).len() == want)
        }
    })
    .await?;
    Ok((cluster, watchers, victims, victim_conns))
}

async fn purges(cluster: &Cluster) -> Result<f64> {
    Ok(
        metric(&cluster.api(1), "gateway_presence_nodes_purged_total").await?
            + metric(&cluster.api(2), "gateway_presence_nodes_purged_total").await?,
    )
}

#[tokio::test]
async fn a_killed_node_is_purged_with_leave_events_within_the_node_timeout() -> Result<()> {
    let (mut cluster, mut watchers, _victims, victim_conns) = start("hard_crash_kill").await?;
    let killed = tokio::time::Instant::now();
    cluster.node_mut(3).kill();
    for (i, w) in watchers.iter_mut().enumerate() {
        collect(w, &format!("w{}", i + 1), "leave", &victim_conns).await?;
    }
    let took = killed.elapsed();
    println!("kill -9 of n3: every leave delivered to both watchers after {took:?} (node timeout {NODE_TIMEOUT:?}, presence TTL 60 s)");
    ensure!(took <= NODE_TIMEOUT + SLACK, "leave events took {took:?}");
    for n in 1..=2 {
        let left = conns(&cluster.api(n).presence(ROOM).await?);
        ensure!(
            left.is_disjoint(&victim_conns),
            "n{n} still lists members of the killed node: {left:?}"
        );
    }
    // The user index forgets the killed node's connections with the same
    // purge (before: listed, and the users online, for the whole TTL).
    for i in 0..3 {
        let user = format!("v{i}");
        let status = cluster.api(1).user(&user).await?;
        ensure!(
            status["online"] == false,
            "{user}, connected only to the killed node, still online after the purge: {status}"
        );
    }
    ensure!(
        killed.elapsed() <= NODE_TIMEOUT + SLACK,
        "user index purge took {:?}",
        killed.elapsed()
    );
    // Exactly once: one purge cluster-wide, no second leave.
    ensure!(purges(&cluster).await? == 1.0, "purges != 1");
    for w in &mut watchers {
        w.expect_nothing(Duration::from_millis(500)).await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_stalled_node_is_purged_then_re_announces_its_members() -> Result<()> {
    let (cluster, mut watchers, _victims, victim_conns) = start("hard_crash_stop").await?;
    cluster.node(3).freeze(true).await?;
    let frozen = tokio::time::Instant::now();
    let purged = async {
        for (i, w) in watchers.iter_mut().enumerate() {
            collect(w, &format!("w{}", i + 1), "leave", &victim_conns).await?;
        }
        anyhow::Ok(())
    }
    .await;
    let took = frozen.elapsed();
    cluster.node(3).freeze(false).await?;
    purged?;
    println!("SIGSTOP of n3: purged after {took:?}");
    for (i, w) in watchers.iter_mut().enumerate() {
        collect(w, &format!("w{}", i + 1), "join", &victim_conns).await?;
    }
    let api = cluster.api(1);
    eventually(
        EVENTUALLY,
        "the stalled node's members listed again",
        || {
            let api = api.clone();
            let victim_conns = victim_conns.clone();
            async move {
                api.presence(ROOM)
                    .await
                    .is_ok_and(|b| victim_conns.is_subset(&conns(&b)))
            }
        },
    )
    .await?;
    Ok(())
}
