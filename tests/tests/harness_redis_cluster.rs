//! Self-test of the Redis Cluster harness (tests/src/redis_cluster.rs),
//! the ground the cluster-mode gateway tests of issue 11 stand on: six
//! real redis-server processes form a 3-primary cluster; keys and sharded
//! pub/sub land on the shard that owns their slot; a `kill -9` of a
//! primary promotes its replica, and the other shards keep serving.

use std::time::Instant;

use anyhow::{bail, ensure, Result};
use tests::{RedisCluster, Resp};

#[tokio::test]
async fn a_three_primary_cluster_forms_routes_and_fails_over() -> Result<()> {
    let started = Instant::now();
    let mut cluster = RedisCluster::start().await?;
    println!("cluster of 6 ready in {:?}", started.elapsed());
    let primaries = cluster.primaries().await?;
    ensure!(primaries.len() == 3, "3 primaries, got {primaries:?}");

    // Two channels' hash tags on different shards (tags searched, so the
    // test does not depend on crc16 values it would have to repeat).
    let mut owners = Vec::new();
    for i in 0..64 {
        let key = format!("P:ch:{{c{i}}}");
        let owner = cluster.primary_for(&key).await?;
        if !owners.iter().any(|(_, o)| *o == owner) {
            owners.push((key, owner));
        }
        if owners.len() == 3 {
            break;
        }
    }
    ensure!(
        owners.len() == 3,
        "64 tags hit only {} shards",
        owners.len()
    );

    // A key written on its owner is readable there; another primary
    // answers MOVED.
    let (key, owner) = owners[0].clone();
    let Some(node) = cluster.node(owner) else {
        bail!("no node on {owner}")
    };
    ensure!(node.cmd(&["SET", &key, "v"]).await? == Resp::Simple("OK".into()));
    let (_, other) = owners[1].clone();
    let Some(other_node) = cluster.node(other) else {
        bail!("no node on {other}")
    };
    match other_node.cmd(&["GET", &key]).await? {
        Resp::Error(e) if e.starts_with("MOVED") => {}
        r => bail!("GET on a non-owner answered {r:?}, not MOVED"),
    }
    // SPUBLISH to a channel of the owner's slot is accepted there.
    match node.cmd(&["SPUBLISH", &key, "hello"]).await? {
        Resp::Int(0) => {}
        r => bail!("SPUBLISH with no subscriber answered {r:?}"),
    }

    // kill -9 of the owner: its replica takes over; the other shards
    // serve throughout.
    let killed = Instant::now();
    let replica = cluster.kill_primary(owner).await?;
    let promoted = cluster.wait_promoted(&replica).await?;
    println!(
        "kill -9 of primary {owner}: replica {promoted} promoted after {:?}",
        killed.elapsed()
    );
    ensure!(
        cluster.primary_for(&key).await? == promoted,
        "the promoted replica owns the slot"
    );
    let (key2, owner2) = owners[2].clone();
    let Some(node2) = cluster.node(owner2) else {
        bail!("no node on {owner2}")
    };
    ensure!(node2.cmd(&["SET", &key2, "w"]).await? == Resp::Simple("OK".into()));
    Ok(())
}
