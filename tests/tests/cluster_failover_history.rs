//! History across a Redis failover (issue 11; docs/redis.md, "History
//! across failover"): after a failover or rollback an (epoch, offset) names
//! one publication forever. The publish script stores the primary's
//! replication id in the channel's meta (`rid`); meta written under another
//! primary ends the epoch, and reads of it answer "no history yet".
//!
//! - `foreign_rid_*`: the rule itself, scripted (`HSET meta rid foreign`).
//! - `rollback_*`: the real thing: a replica misses the tail, the primary
//!   dies, the replica is promoted, and a gateway that followed the move
//!   (a virtual IP) plus one started on the promoted replica publish.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use tests::cluster::{cluster_config, Cluster};
use tests::redis_replica::{ReplicaPair, Vip};
use tests::{
    eventually, metric, unique_prefix, Client, Gateway, GatewayBuilder, Resp, EVENTUALLY,
    RECV_TIMEOUT,
};

const FENCED: &str = "gateway_history_epoch_fenced_total";

/// The `(epoch, offset)` of a publish reply or a message frame.
fn position(v: &Value) -> Result<(String, u64)> {
    let epoch = v["epoch"]
        .as_str()
        .with_context(|| format!("no epoch: {v}"))?;
    let offset = v["offset"]
        .as_u64()
        .with_context(|| format!("no offset: {v}"))?;
    Ok((epoch.to_owned(), offset))
}

/// The next `message` frame's `(epoch, offset, data.seq)`.
async fn next_message(c: &mut Client, who: &str) -> Result<(String, u64, u64)> {
    let m = c
        .expect_type("message", RECV_TIMEOUT)
        .await
        .with_context(|| format!("{who}: waiting for a message"))?;
    let (epoch, offset) = position(&m)?;
    Ok((epoch, offset, m["data"]["seq"].as_u64().unwrap_or(0)))
}

/// Publishes through the HTTP API; returns the reply's offset (the reply
/// carries no epoch: the subscribers' frames show it).
async fn publish(gw: &Gateway, channel: &str, seq: u64) -> Result<u64> {
    let r = gw.api().publish(channel, json!({ "seq": seq })).await?;
    r["offset"]
        .as_u64()
        .with_context(|| format!("publish {seq}: no offset in {r}"))
}

/// Subscribes with `since` and returns the `subscribed` reply.
async fn recover(gw: &Gateway, channel: &str, epoch: &str, offset: u64) -> Result<Value> {
    let mut c = gw.connect_anon().await?;
    c.subscribe_since(channel, json!({"offset": offset, "epoch": epoch}))
        .await
}

fn gateway(name: &str, url: &str, prefix: &str, id: &str) -> GatewayBuilder {
    GatewayBuilder::new()
        .name(name)
        .config(&cluster_config())
        .env("GATEWAY_REDIS_URL", url)
        .env("GATEWAY_REDIS_PREFIX", prefix)
        .env("GATEWAY_NODE_ID", id)
}

#[tokio::test]
async fn foreign_rid_starts_a_new_epoch_and_old_positions_do_not_recover() -> Result<()> {
    const CH: &str = "hist:fence";
    let cluster = Cluster::builder("fence_scripted").nodes(1).start().await?;
    let gw = cluster.node(1);
    ensure!(
        metric(&gw.api(), FENCED).await? == 0.0,
        "fence counter not at 0"
    );
    let mut live = gw.connect_anon().await?;
    live.subscribe(CH).await?;
    for seq in 1..=2 {
        ensure!(publish(gw, CH, seq).await? == seq, "publish {seq}");
    }
    let (epoch, _, _) = next_message(&mut live, "live").await?;
    ensure!(next_message(&mut live, "live").await? == (epoch.clone(), 2, 2));
    let meta = format!("{}:meta:{{{CH}}}", cluster.prefix);
    let rid = cluster.redis.cmd(&["HGET", &meta, "rid"]).await?;
    ensure!(
        rid.as_text().is_some_and(|r| r.len() == 40),
        "meta rid: {rid:?}"
    );
    // As if the meta had come from another primary.
    cluster
        .redis
        .cmd(&["HSET", &meta, "rid", "foreign"])
        .await?;

    // Before the next publish: the stream is not offered as valid.
    let s = recover(gw, CH, &epoch, 2).await?;
    ensure!(
        s["recovered"] == false && s["epoch"] == "" && s["offset"] == 0,
        "recovering (epoch, 2) from a stale stream: {s}"
    );
    let h = gw.api().history(CH, "since=0").await?;
    ensure!(
        h["epoch"] == "" && h["messages"].as_array().is_some_and(Vec::is_empty),
        "history of a stale stream: {h}"
    );

    let offset = publish(gw, CH, 3).await?;
    ensure!(
        offset == 1,
        "publish after the fence: offset {offset}, expected 1 of a new epoch"
    );
    // The live subscriber (position (epoch, 2)) gets it: a new epoch is
    // delivered, never taken for a duplicate.
    let (epoch2, offset, seq) = next_message(&mut live, "live").await?;
    ensure!(
        epoch2 != epoch && offset == 1 && seq == 3,
        "after the fence: expected a new epoch at offset 1, got ({epoch2}, {offset}) seq {seq}; old epoch {epoch}"
    );
    let s = recover(gw, CH, &epoch, 2).await?;
    ensure!(
        s["recovered"] == false && s["epoch"] == epoch2.as_str() && s["offset"] == 1,
        "recovering the old (epoch, 2) after the fence: {s}"
    );
    let s = recover(gw, CH, &epoch2, 0).await?;
    ensure!(s["recovered"] == true, "recovering the new epoch: {s}");
    ensure!(
        metric(&gw.api(), FENCED).await? == 1.0,
        "fence counted once"
    );
    // Same primary: no further fence.
    ensure!(
        publish(gw, CH, 4).await? == 2,
        "publish under the new epoch"
    );
    ensure!(next_message(&mut live, "live").await? == (epoch2, 2, 4));
    ensure!(metric(&gw.api(), FENCED).await? == 1.0, "no second fence");
    Ok(())
}

#[tokio::test]
async fn meta_without_rid_adopts_the_current_primary_without_a_new_epoch() -> Result<()> {
    const CH: &str = "hist:upgrade";
    let cluster = Cluster::builder("fence_upgrade").nodes(1).start().await?;
    let gw = cluster.node(1);
    let mut live = gw.connect_anon().await?;
    live.subscribe(CH).await?;
    publish(gw, CH, 1).await?;
    let (epoch, _, _) = next_message(&mut live, "live").await?;
    let meta = format!("{}:meta:{{{CH}}}", cluster.prefix);
    // Meta as an older gateway version wrote it.
    cluster.redis.cmd(&["HDEL", &meta, "rid"]).await?;
    let s = recover(gw, CH, &epoch, 0).await?;
    ensure!(
        s["recovered"] == true && s["epoch"] == epoch.as_str(),
        "read: {s}"
    );
    ensure!(publish(gw, CH, 2).await? == 2, "publish after the upgrade");
    ensure!(
        next_message(&mut live, "live").await? == (epoch, 2, 2),
        "kept the epoch"
    );
    let rid = cluster.redis.cmd(&["HGET", &meta, "rid"]).await?;
    ensure!(
        rid.as_text().is_some_and(|r| r.len() == 40),
        "rid adopted: {rid:?}"
    );
    ensure!(
        metric(&gw.api(), FENCED).await? == 0.0,
        "no fence on upgrade"
    );
    Ok(())
}

#[tokio::test]
async fn rollback_after_failover_never_reuses_an_offset_under_the_old_epoch() -> Result<()> {
    const CH: &str = "hist:rollback";
    let mut pair = ReplicaPair::start("rollback").await?;
    let vip = Vip::start(pair.primary.port()).await?;
    let prefix = unique_prefix("rollback");
    let meta = format!("{prefix}:meta:{{{CH}}}");
    // g1 reaches Redis through the virtual IP and so follows the failover.
    let g1 = gateway("rollback-g1", &vip.url(), &prefix, "n1")
        .spawn()
        .await?;
    let mut live = g1.connect_anon().await?;
    live.subscribe(CH).await?;
    for seq in 1..=3 {
        ensure!(publish(&g1, CH, seq).await? == seq, "publish {seq}");
    }
    let (epoch, _, _) = next_message(&mut live, "live on g1").await?;
    for seq in 2..=3 {
        ensure!(next_message(&mut live, "live on g1").await? == (epoch.clone(), seq, seq));
    }
    pair.wait_replicated().await?;
    ensure!(
        pair.replica.hget(&meta, "top").await? == Some("3".into()),
        "replicated top"
    );

    // The replica misses the tail: frozen and cut off, while 4 and 5 are
    // acknowledged and delivered live.
    pair.replica.freeze(true).await?;
    let killed = pair
        .primary
        .cmd(&["CLIENT", "KILL", "TYPE", "replica"])
        .await?;
    ensure!(
        matches!(killed, Resp::Int(1)),
        "CLIENT KILL TYPE replica: {killed:?}"
    );
    for seq in 4..=5 {
        ensure!(publish(&g1, CH, seq).await? == seq, "publish {seq}");
        ensure!(next_message(&mut live, "live on g1").await? == (epoch.clone(), seq, seq));
    }
    // The primary dies; the replica is promoted without 4 and 5.
    pair.primary.kill();
    pair.replica.freeze(false).await?;
    let promoted = pair.replica.cmd(&["REPLICAOF", "NO", "ONE"]).await?;
    ensure!(
        promoted == Resp::Simple("OK".into()),
        "REPLICAOF NO ONE: {promoted:?}"
    );
    ensure!(
        pair.replica.hget(&meta, "top").await? == Some("3".into()),
        "lost tail"
    );
    vip.move_to(pair.replica.port());
    // g1's subscriber is back (on the promoted replica) before anything is
    // published there: pub/sub is at most once.
    let pubsub = format!("{prefix}:ch:{{{CH}}}");
    let numsub = |want: i64| {
        let (replica, pubsub) = (&pair.replica, pubsub.clone());
        eventually(
            EVENTUALLY,
            "the channel's subscribers on the promoted replica",
            move || {
                let pubsub = pubsub.clone();
                async move {
                    matches!(
                        replica.cmd(&["PUBSUB", "NUMSUB", &pubsub]).await,
                        Ok(Resp::Array(Some(items))) if items.get(1) == Some(&Resp::Int(want))
                    )
                }
            },
        )
    };
    numsub(1).await?;
    g1.wait_ready(Duration::from_secs(30)).await?;
    let g2 = gateway("rollback-g2", &pair.replica.url(), &prefix, "n2")
        .spawn()
        .await?;

    // Positions of lost publications do not recover, and neither does one
    // that precedes them (4 and 5 were live, then lost).
    for since in [5, 3] {
        let s = recover(&g2, CH, &epoch, since).await?;
        ensure!(
            s["recovered"] == false,
            "recovering ({epoch}, {since}) on the promoted replica: {s}"
        );
    }
    let mut fresh = g2.connect_anon().await?;
    let s = fresh.subscribe(CH).await?;
    ensure!(
        s["epoch"] != epoch.as_str(),
        "fresh subscribe offered the old epoch: {s}"
    );
    numsub(2).await?;

    let offset = publish(&g2, CH, 6).await?;
    ensure!(
        offset == 1,
        "first publish on the promoted replica: offset {offset}, expected 1 of a new epoch (offsets up to 5 were acknowledged under {epoch})"
    );
    let (epoch2, offset, seq) = next_message(&mut fresh, "fresh on g2").await?;
    ensure!(
        epoch2 != epoch && offset == 1 && seq == 6,
        "fresh subscriber on g2: expected a new epoch at offset 1, got ({epoch2}, {offset}) seq {seq}; old epoch {epoch}"
    );
    // The subscriber that lived through the failover stood at (epoch, 5):
    // a reused (epoch, 4) would have been dropped as a duplicate.
    ensure!(
        next_message(&mut live, "live on g1 after the failover").await? == (epoch2.clone(), 1, 6)
    );
    let offset = publish(&g1, CH, 7).await?;
    ensure!(offset == 2, "second publish, through g1: offset {offset}");
    for (c, who) in [(&mut fresh, "fresh"), (&mut live, "live")] {
        ensure!(
            next_message(c, who).await? == (epoch2.clone(), 2, 7),
            "{who}"
        );
    }
    let s = recover(&g2, CH, &epoch, 5).await?;
    ensure!(
        s["recovered"] == false && s["offset"] == 2,
        "old position after: {s}"
    );
    let fenced = metric(&g1.api(), FENCED).await? + metric(&g2.api(), FENCED).await?;
    ensure!(fenced == 1.0, "one fence counted, got {fenced}");
    eventually(RECV_TIMEOUT, "g2 logged the fence", || async {
        g2.stderr()
            .contains("history written under another primary")
    })
    .await?;
    Ok(())
}
