//! Redis trouble under a 3-node cluster (issue 3, "Done when";
//! docs/redis.md, "Failure behaviour"):
//!
//! - Redis killed for a few seconds and restarted empty on the same port
//!   (`--save ""`: the restart loses every key): no node exits, publishes
//!   fail fast with `unavailable`, `/readyz` fails, client connections stay
//!   open, delivery resumes within 2 s of Redis answering again without
//!   restarting any node, and history tells resuming clients the truth
//!   (a new epoch, `recovered: false`) while everything acknowledged after
//!   the restart is recoverable.
//! - Redis frozen (SIGSTOP: sockets open, no answers) and thawed with its
//!   data: calls fail within the Redis timeout, and a client that
//!   resubscribes with `since` recovers every acknowledged message
//!   (`recovered: true`).
//!
//! Timings are printed as `[timing]` lines.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use tests::cluster::{Cluster, Topology};
use tests::{check_error, eventually, Api, ApiResponse, Client, EVENTUALLY, RECV_TIMEOUT};
use tokio::time::Instant;

const HIST: &str = "hist:faults";
const PLAIN: &str = "room-faults";
const ROOM: &str = "chat:faults";

/// How long Redis stays away.
const OUTAGE: Duration = Duration::from_secs(3);
/// Fail-fast bound of one refused call during an outage (issue 3: "within
/// 1 s"), plus slack for a loaded 2-core machine.
const FAIL_FAST: Duration = Duration::from_millis(1000);
const SLACK: Duration = Duration::from_millis(300);
/// Delivery must resume this soon after Redis answers again (issue 3).
const RESUME: Duration = Duration::from_secs(2);

async fn timed_api_publish(
    api: &Api,
    channel: &str,
    data: Value,
) -> Result<(ApiResponse, Duration)> {
    let started = Instant::now();
    let r = api
        .post("/api/publish", &json!({"channel": channel, "data": data}))
        .await?;
    Ok((r, started.elapsed()))
}

async fn timed_ws_publish(c: &mut Client, channel: &str, data: Value) -> Result<(Value, Duration)> {
    let started = Instant::now();
    let r = c
        .request(json!({"op": "publish", "channel": channel, "data": data}))
        .await?;
    Ok((r, started.elapsed()))
}

/// Reads frames until the next message on `channel`, skipping messages of
/// other channels (resume probes); fails on anything else.
async fn next_on(c: &mut Client, who: &str, channel: &str) -> Result<Value> {
    next_on_within(c, who, channel, RECV_TIMEOUT).await
}

/// [`next_on`] with a bound of `timeout`.
async fn next_on_within(
    c: &mut Client,
    who: &str,
    channel: &str,
    timeout: Duration,
) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let m = c
            .recv_json(deadline.saturating_duration_since(Instant::now()))
            .await
            .with_context(|| format!("{who}: waiting for a message on {channel}"))?;
        ensure!(m["type"] == "message", "{who}: unexpected frame {m}");
        if m["channel"] == channel {
            return Ok(m);
        }
    }
}

/// Publishes resume probes on PLAIN through `api` until every subscriber
/// in `subs` has received one; returns, per subscriber, how long after
/// `since` its first probe arrived, and the messages of other channels
/// that arrived meanwhile.
async fn wait_resumed(
    api: &Api,
    subs: &mut [(&str, &mut Client)],
    since: Instant,
    limit: Duration,
) -> Result<(Vec<Duration>, Vec<Value>)> {
    let mut resumed: Vec<Option<Duration>> = vec![None; subs.len()];
    let mut others = Vec::new();
    let mut k = 0u64;
    let mut statuses = BTreeSet::new();
    while resumed.iter().any(Option::is_none) {
        if since.elapsed() > limit {
            bail!(
                "delivery did not resume within {limit:?} (resumed: {resumed:?}, publish statuses seen: {statuses:?})"
            );
        }
        k += 1;
        let r = api
            .post(
                "/api/publish",
                &json!({"channel": PLAIN, "data": {"probe": k}}),
            )
            .await?;
        statuses.insert(r.status);
        for (i, (who, c)) in subs.iter_mut().enumerate() {
            if resumed[i].is_some() {
                continue;
            }
            while let Ok(m) = c.recv_json(Duration::from_millis(20)).await {
                if m["channel"] != PLAIN {
                    others.push(m);
                    continue;
                }
                ensure!(
                    m["type"] == "message" && m["data"]["probe"].is_u64(),
                    "{who}: on {PLAIN} only resume probes may arrive now, got {m}"
                );
                resumed[i] = Some(since.elapsed());
                break;
            }
        }
    }
    Ok((resumed.into_iter().flatten().collect(), others))
}

/// Reads and drops whatever is queued for `c` (late resume probes) until
/// it has been quiet for a moment.
async fn drain(c: &mut Client) {
    while c.recv_json(Duration::from_millis(300)).await.is_ok() {}
}

async fn redis_restart_fails_fast_then_resumes_without_restarting_nodes(
    topology: Topology,
) -> Result<()> {
    let mut cluster = Cluster::builder("faults_restart")
        .topology(topology)
        .start()
        .await?;
    let pids: Vec<Option<u32>> = cluster.nodes.iter().map(|g| g.pid()).collect();
    let mut sub2 = cluster.node(2).connect_anon().await?;
    let mut sub3 = cluster.node(3).connect_anon().await?;
    // A channel without history answers the empty epoch (a read creates
    // nothing in Redis); the first publication starts the stream's epoch.
    sub2.subscribe(HIST).await?;
    sub3.subscribe(HIST).await?;
    sub2.subscribe(PLAIN).await?;
    sub3.subscribe(PLAIN).await?;
    let mut alice = cluster.node(2).connect_user("alice").await?;
    alice.subscribe(ROOM).await?;
    let mut publisher = cluster.node(1).connect_anon().await?;
    let api1 = cluster.api(1);

    // Acknowledged before the outage: offsets 1..=3 of the old epoch.
    for i in 1..=3u64 {
        let r = api1.publish(HIST, json!({ "before": i })).await?;
        ensure!(r["offset"] == i, "offset before the outage: {r}");
    }
    for (who, c) in [("n2", &mut sub2), ("n3", &mut sub3)] {
        for i in 1..=3u64 {
            let m = next_on(c, who, HIST).await?;
            ensure!(m["offset"] == i && m["data"]["before"] == i, "{who}: {m}");
        }
    }
    let h = api1.history(HIST, "").await?;
    let old_epoch = h["epoch"].as_str().unwrap_or_default().to_owned();
    ensure!(!old_epoch.is_empty(), "history without epoch: {h}");

    // ---- Outage: Redis killed; it comes back empty on the same port.
    cluster.stop_redis();
    let stopped = Instant::now();
    for n in 1..=3 {
        let api = cluster.api(n);
        eventually(
            EVENTUALLY,
            &format!("n{n} /readyz 503 while Redis is down"),
            || {
                let api = api.clone();
                async move { matches!(api.readyz().await, Ok(503)) }
            },
        )
        .await?;
    }
    eprintln!(
        "[timing] faults_restart: every node's /readyz answered 503 {:?} after Redis was killed",
        stopped.elapsed()
    );

    let mut api_latencies = Vec::new();
    let mut ws_latencies = Vec::new();
    let mut k = 0u64;
    while stopped.elapsed() < OUTAGE || k < 3 {
        k += 1;
        for n in 1..=3 {
            let (r, took) =
                timed_api_publish(&cluster.api(n), HIST, json!({ "outage": k })).await?;
            r.expect_error(503, "unavailable")
                .with_context(|| format!("API publish on n{n} during the outage"))?;
            api_latencies.push(took);
            let (r, took) =
                timed_api_publish(&cluster.api(n), PLAIN, json!({ "outage": k })).await?;
            r.expect_error(503, "unavailable")
                .with_context(|| format!("API publish (no history) on n{n} during the outage"))?;
            api_latencies.push(took);
        }
        let (r, took) = timed_ws_publish(&mut publisher, HIST, json!({ "outage_ws": k })).await?;
        check_error(&r, "unavailable").context("client publish during the outage")?;
        ws_latencies.push(took);
        let (r, took) = timed_ws_publish(&mut publisher, PLAIN, json!({ "outage_ws": k })).await?;
        check_error(&r, "unavailable").context("client publish during the outage")?;
        ws_latencies.push(took);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let api_max = api_latencies.iter().max().copied().unwrap_or_default();
    let ws_max = ws_latencies.iter().max().copied().unwrap_or_default();
    eprintln!(
        "[timing] faults_restart: {} API publishes refused 503 during the outage, max latency {api_max:?}; \
         {} client publishes refused `unavailable`, max latency {ws_max:?}",
        api_latencies.len(),
        ws_latencies.len()
    );
    ensure!(
        api_max <= FAIL_FAST + SLACK && ws_max <= FAIL_FAST + SLACK,
        "refusals must come within {FAIL_FAST:?} (+{SLACK:?}): API max {api_max:?}, client max {ws_max:?}"
    );
    // Other ops: a new subscription and a new user connection are refused.
    let r = publisher
        .request(json!({"op": "subscribe", "channel": "room-new"}))
        .await?;
    check_error(&r, "unavailable").context("subscribe during the outage")?;
    let started = Instant::now();
    cluster
        .node(3)
        .client()
        .query("user", "zed")
        .expect_refused()
        .await?
        .expect(503, "unavailable")
        .context("user connection during the outage")?;
    eprintln!(
        "[timing] faults_restart: new user connection refused 503 in {:?}",
        started.elapsed()
    );
    // No node exited; every client connection is still open and served.
    for n in 1..=3 {
        ensure!(cluster.is_alive(n), "n{n} exited during the Redis outage");
        ensure!(
            cluster.api(n).healthz().await? == 200,
            "n{n} /healthz during the outage"
        );
    }
    for (who, c) in [
        ("sub2", &mut sub2),
        ("sub3", &mut sub3),
        ("alice", &mut alice),
        ("publisher", &mut publisher),
    ] {
        c.ping()
            .await
            .with_context(|| format!("{who}'s connection during the outage"))?;
    }
    let outage = stopped.elapsed();

    // ---- Redis returns (empty).
    cluster.restart_redis().await?;
    let restarted = Instant::now();
    eprintln!("[timing] faults_restart: Redis was down for {outage:?}");
    let (resumed, others) = wait_resumed(
        &api1,
        &mut [("n2", &mut sub2), ("n3", &mut sub3)],
        restarted,
        RESUME + Duration::from_secs(8),
    )
    .await?;
    ensure!(
        others.is_empty(),
        "nothing refused during the outage may be delivered: {others:?}"
    );
    eprintln!(
        "[timing] faults_restart: delivery n1 -> n2 resumed {:?}, n1 -> n3 {:?} after Redis answered PING again",
        resumed[0], resumed[1]
    );
    for n in 1..=3 {
        let api = cluster.api(n);
        eventually(EVENTUALLY, &format!("n{n} /readyz 200 again"), || {
            let api = api.clone();
            async move { matches!(api.readyz().await, Ok(200)) }
        })
        .await?;
    }
    eprintln!(
        "[timing] faults_restart: every node's /readyz answered 200 {:?} after Redis returned",
        restarted.elapsed()
    );
    ensure!(
        resumed.iter().all(|&d| d <= RESUME),
        "delivery must resume within {RESUME:?} of Redis returning: {resumed:?}"
    );
    let now: Vec<Option<u32>> = cluster.nodes.iter().map(|g| g.pid()).collect();
    ensure!(pids == now, "no node was restarted: {pids:?} -> {now:?}");
    drain(&mut sub2).await;
    drain(&mut sub3).await;

    // ---- History after a data-losing restart. Redis lost the old stream:
    // publishes start a new epoch at offset 1, and nothing refused during
    // the outage was published.
    for i in 1..=3u64 {
        let r = api1.publish(HIST, json!({ "after": i })).await?;
        ensure!(
            r["offset"] == i,
            "Redis lost the stream: offsets restart at 1 in a new epoch: {r}"
        );
    }
    for (who, c) in [("n2", &mut sub2), ("n3", &mut sub3)] {
        for i in 1..=3u64 {
            let m = next_on(c, who, HIST).await?;
            ensure!(
                m["offset"] == i && m["data"]["after"] == i,
                "{who}: live subscriber after the restart: expected offset {i} (`after` {i}), got {m} \
                 (nothing refused during the outage may appear)"
            );
        }
    }
    let h = cluster.api(3).history(HIST, "").await?;
    let new_epoch = h["epoch"].as_str().unwrap_or_default().to_owned();
    ensure!(
        !new_epoch.is_empty() && new_epoch != old_epoch,
        "the history epoch must change when Redis lost the stream: old {old_epoch}, now {h}"
    );
    let datas: Vec<&Value> = h["messages"]
        .as_array()
        .map(|ms| ms.iter().map(|m| &m["data"]).collect())
        .unwrap_or_default();
    ensure!(
        datas
            == [
                &json!({"after": 1}),
                &json!({"after": 2}),
                &json!({"after": 3})
            ],
        "history holds exactly what was acknowledged since the restart: {h}"
    );

    // A client resuming from the old position cannot recover the
    // acknowledged messages Redis lost: it is told so (recovered: false, a
    // new epoch) and nothing of the new epoch is passed off as the gap.
    let mut resumer = cluster.node(3).connect_anon().await?;
    let s = resumer
        .subscribe_since(HIST, json!({"offset": 3, "epoch": old_epoch}))
        .await?;
    ensure!(
        s["recovered"] == false && s["epoch"] == new_epoch.as_str() && s["offset"] == 3,
        "resume from the lost epoch: expected recovered false, epoch {new_epoch}, offset 3: {s}"
    );
    api1.publish(HIST, json!({"after": 4})).await?;
    let m = next_on(&mut resumer, "resumer", HIST).await?;
    ensure!(
        m["offset"] == 4 && m["data"]["after"] == 4,
        "after an epoch mismatch nothing is replayed; the next message is live: {m}"
    );
    // Everything acknowledged in the new epoch is recoverable.
    let mut late = cluster.node(2).connect_anon().await?;
    let s = late
        .subscribe_since(HIST, json!({"offset": 0, "epoch": new_epoch}))
        .await?;
    ensure!(s["recovered"] == true && s["offset"] == 4, "{s}");
    for i in 1..=4u64 {
        let m = next_on(&mut late, "late", HIST).await?;
        ensure!(m["offset"] == i && m["data"]["after"] == i, "replay: {m}");
    }

    Ok(())
}

async fn cluster_views_are_restored_soon_after_redis_loses_its_data(
    topology: Topology,
) -> Result<()> {
    // Default presence settings (TTL 60 s, refresh every 25 s): a node that
    // finds Redis healthy again after an outage must re-write its entries
    // then, "rather than at the next refresh tick" (gateway/src/node.rs),
    // so the cluster-wide views do not lie for up to a refresh interval.
    const RESTORE: Duration = Duration::from_secs(8);
    let mut cluster = Cluster::builder("faults_views")
        .topology(topology)
        .start()
        .await?;
    let mut alice = cluster.node(2).connect_user("alice").await?;
    alice.subscribe(ROOM).await?;
    let _bob = cluster.node(3).connect_user("bob").await?;
    let api1 = cluster.api(1);
    ensure!(
        api1.is_online("alice").await?,
        "alice online before the outage"
    );

    // A short outage: Redis crashes and is restarted at once, empty.
    cluster.stop_redis();
    for n in 1..=3 {
        let api = cluster.api(n);
        eventually(EVENTUALLY, &format!("n{n} notices the outage"), || {
            let api = api.clone();
            async move { matches!(api.readyz().await, Ok(503)) }
        })
        .await?;
    }
    cluster.restart_redis().await?;
    let restarted = Instant::now();
    for n in 1..=3 {
        let api = cluster.api(n);
        eventually(EVENTUALLY, &format!("n{n} ready again"), || {
            let api = api.clone();
            async move { matches!(api.readyz().await, Ok(200)) }
        })
        .await?;
    }
    let alice_conn = alice.conn();
    let restored = eventually(
        RESTORE,
        "alice in presence and the user index, n1..n3 in /api/nodes (seen from n1)",
        || {
            let api = api1.clone();
            let alice_conn = alice_conn.clone();
            async move {
                let presence = api.presence(ROOM).await.ok().is_some_and(|p| {
                    p["members"]
                        .as_array()
                        .is_some_and(|ms| ms.len() == 1 && ms[0]["conn"] == alice_conn.as_str())
                });
                let online = matches!(api.is_online("alice").await, Ok(true))
                    && matches!(api.is_online("bob").await, Ok(true));
                let nodes = matches!(api.nodes().await,
                    Ok(n) if tests::cluster::node_ids(&n) == ["n1", "n2", "n3"]);
                presence && online && nodes
            }
        },
    )
    .await;
    let p = api1.presence(ROOM).await?;
    let u = api1.user("alice").await?;
    let n = api1.nodes().await?;
    eprintln!(
        "[timing] faults_views: {} {:?} after Redis returned (presence {p}, alice {u}, nodes {:?})",
        if restored.is_ok() {
            "views restored"
        } else {
            "views NOT restored"
        },
        restarted.elapsed(),
        tests::cluster::node_ids(&n)
    );
    restored.context(
        "after Redis lost its data, presence / user index / node registry must be re-written \
         soon after the node is healthy again, not at the next refresh tick",
    )?;
    alice.ping().await?;
    Ok(())
}

/// Publishes (API on n1..n3 in turn, and a client on n1) while Redis is
/// frozen, for [`OUTAGE`]; every one must be refused. Returns the
/// latencies and the refused payloads.
async fn refuse_while_frozen(
    cluster: &Cluster,
    publisher: &mut Client,
    frozen: Instant,
) -> Result<(Vec<Duration>, Vec<Value>)> {
    let mut latencies = Vec::new();
    let mut refused = Vec::new();
    let mut k = 0u64;
    while frozen.elapsed() < OUTAGE {
        k += 1;
        let n = 1 + usize::try_from(k % 3)?;
        let data = json!({ "refused_api": k });
        let (r, took) = timed_api_publish(&cluster.api(n), HIST, data.clone()).await?;
        latencies.push(took);
        if r.status == 200 {
            // Redis is frozen: nothing can have been accepted.
            bail!(
                "a publish was acknowledged while Redis was frozen: {}",
                r.text
            );
        }
        r.expect_error(503, "unavailable")
            .with_context(|| format!("API publish on n{n} while Redis is frozen"))?;
        refused.push(data);
        let data = json!({ "refused_ws": k });
        let (r, took) = timed_ws_publish(publisher, HIST, data.clone()).await?;
        latencies.push(took);
        check_error(&r, "unavailable").context("client publish while Redis is frozen")?;
        refused.push(data);
    }
    Ok((latencies, refused))
}

#[tokio::test]
async fn frozen_redis_fails_within_the_timeout_and_acknowledged_messages_stay_recoverable(
) -> Result<()> {
    // A frozen Redis (SIGSTOP) answers nothing but keeps its sockets and
    // its data: every call must give up within GATEWAY_REDIS_TIMEOUT_MS.
    const TIMEOUT_MS: u64 = 500;
    // One Redis only: freezing all six nodes of a Redis Cluster at once
    // makes their failure detectors fire on resume, a different fault
    // (the cluster failover tests cover a stalled shard).
    let cluster = Cluster::builder("faults_frozen")
        .env("GATEWAY_REDIS_TIMEOUT_MS", TIMEOUT_MS)
        .start()
        .await?;
    let mut sub2 = cluster.node(2).connect_anon().await?;
    sub2.subscribe(HIST).await?;
    sub2.subscribe(PLAIN).await?;
    let mut reader = cluster.node(1).connect_anon().await?;
    reader.subscribe(HIST).await?;
    let mut publisher = cluster.node(1).connect_anon().await?;
    let api1 = cluster.api(1);
    // Acknowledged: offsets 1..=3 ("acked" i). The reader sees them, then
    // goes away.
    let mut acked: Vec<(u64, Value)> = Vec::new();
    for i in 1..=3u64 {
        let data = json!({ "acked": i });
        let r = api1.publish(HIST, data.clone()).await?;
        acked.push((r["offset"].as_u64().context("offset")?, data));
    }
    let h = api1.history(HIST, "").await?;
    let epoch = h["epoch"].as_str().unwrap_or_default().to_owned();
    for (offset, data) in &acked {
        let m = next_on(&mut reader, "reader", HIST).await?;
        ensure!(m["offset"] == *offset && m["data"] == *data, "reader: {m}");
    }
    drop(reader);
    for (offset, data) in &acked {
        let m = next_on(&mut sub2, "sub2", HIST).await?;
        ensure!(m["offset"] == *offset && m["data"] == *data, "sub2: {m}");
    }

    cluster.freeze_redis(true).await?;
    let frozen = Instant::now();
    let unready = async {
        let mut unready = Vec::new();
        for n in 1..=3 {
            let api = cluster.api(n);
            eventually(
                EVENTUALLY,
                &format!("n{n} /readyz 503 while Redis is frozen"),
                || {
                    let api = api.clone();
                    async move { matches!(api.readyz().await, Ok(503)) }
                },
            )
            .await?;
            unready.push(frozen.elapsed());
        }
        Ok::<_, anyhow::Error>(unready)
    };
    let (unready, refusals) = tokio::join!(
        unready,
        refuse_while_frozen(&cluster, &mut publisher, frozen)
    );
    let (unready, (latencies, refused)) = (unready?, refusals?);
    let max = latencies.iter().max().copied().unwrap_or_default();
    eprintln!(
        "[timing] faults_frozen (redis timeout {TIMEOUT_MS} ms): {} publishes refused while frozen, \
         max latency {max:?}; /readyz 503 on n1..n3 by {unready:?} after SIGSTOP",
        latencies.len()
    );
    ensure!(
        max <= FAIL_FAST,
        "a refusal took {max:?}, more than {FAIL_FAST:?} (timeout {TIMEOUT_MS} ms)"
    );
    for n in 1..=3 {
        ensure!(cluster.is_alive(n), "n{n} exited while Redis was frozen");
    }
    sub2.ping().await?;
    publisher.ping().await?;

    cluster.freeze_redis(false).await?;
    let thawed = Instant::now();
    let (resumed, live_ghosts) = wait_resumed(
        &api1,
        &mut [("n2", &mut sub2)],
        thawed,
        RESUME + Duration::from_secs(8),
    )
    .await?;
    eprintln!(
        "[timing] faults_frozen: delivery n1 -> n2 resumed {:?} after SIGCONT",
        resumed[0]
    );
    ensure!(
        resumed.iter().all(|&d| d <= RESUME),
        "delivery must resume within {RESUME:?}: {resumed:?}"
    );
    for i in 4..=6u64 {
        let data = json!({ "acked": i });
        let r = api1.publish(HIST, data.clone()).await?;
        acked.push((r["offset"].as_u64().context("offset")?, data));
    }

    // The reader comes back on another node with its last position: it
    // recovers every acknowledged message it missed, in order. A publish
    // that timed out had been written to the frozen Redis's socket, so
    // Redis may have run it after SIGCONT: such a message, answered 503,
    // shows up in history too (see the count printed below).
    let mut back = cluster.node(3).connect_anon().await?;
    let s = back
        .subscribe_since(HIST, json!({"offset": 3, "epoch": epoch}))
        .await?;
    ensure!(
        s["recovered"] == true && s["epoch"] == epoch.as_str(),
        "Redis kept its data: the reader must recover: {s}"
    );
    let top = s["offset"].as_u64().context("subscribed.offset")?;
    let mut replay = Vec::new();
    for expected in 4..=top {
        let m = next_on(&mut back, "reader", HIST).await?;
        ensure!(
            m["offset"] == expected,
            "replay must be gap-free: expected offset {expected}, got {m}"
        );
        replay.push((expected, m["data"].clone()));
    }
    let missed: Vec<&(u64, Value)> = acked.iter().filter(|(o, _)| *o > 3).collect();
    let replayed_acked: Vec<&(u64, Value)> = replay
        .iter()
        .filter(|(_, d)| d.get("acked").is_some())
        .collect();
    ensure!(
        replayed_acked == missed,
        "every acknowledged message after offset 3 must be replayed, in order: acked {missed:?}, replayed {replay:?}"
    );
    let ghosts: Vec<&Value> = replay
        .iter()
        .filter(|(_, d)| d.get("acked").is_none())
        .map(|(_, d)| d)
        .collect();
    ensure!(
        ghosts.iter().all(|d| refused.contains(d)),
        "history holds something nobody published: {ghosts:?}"
    );
    eprintln!(
        "[faults_frozen] {} of {} publishes answered `unavailable` while Redis was frozen were \
         nevertheless run by Redis after SIGCONT (in history and delivered): {ghosts:?}",
        ghosts.len(),
        refused.len()
    );
    eprintln!("[faults_frozen] delivered live to n2 after SIGCONT: {live_ghosts:?}");
    back.expect_nothing(Duration::from_millis(300)).await?;
    Ok(())
}

async fn subscriber_that_joined_just_before_a_data_losing_restart_misses_nothing(
    topology: Topology,
) -> Result<()> {
    // A live subscriber must get every publication its node receives.
    // Here one subscribed (top offset 5) just before Redis restarted empty;
    // the new epoch's offsets start again at 1.
    let mut cluster = Cluster::builder("faults_fresh_sub")
        .topology(topology)
        .start()
        .await?;
    let api1 = cluster.api(1);
    let mut old = cluster.node(2).connect_anon().await?;
    old.subscribe(HIST).await?;
    for i in 1..=5u64 {
        api1.publish(HIST, json!({ "before": i })).await?;
    }
    for i in 1..=5u64 {
        let m = next_on(&mut old, "old", HIST).await?;
        ensure!(m["offset"] == i, "old subscriber before the restart: {m}");
    }
    let mut fresh = cluster.node(2).connect_anon().await?;
    let s = fresh.subscribe(HIST).await?;
    ensure!(s["offset"] == 5, "{s}");
    let subscribed = Instant::now();

    cluster.stop_redis();
    let api2 = cluster.api(2);
    eventually(EVENTUALLY, "n2 notices the outage", || {
        let api = api2.clone();
        async move { matches!(api.readyz().await, Ok(503)) }
    })
    .await?;
    cluster.restart_redis().await?;
    for n in 1..=3 {
        let api = cluster.api(n);
        eventually(EVENTUALLY, &format!("n{n} ready again"), || {
            let api = api.clone();
            async move { matches!(api.readyz().await, Ok(200)) }
        })
        .await?;
    }
    // Publish until the old subscriber (whose node is subscribed again)
    // gets one: from then on n2 receives the channel.
    let mut acked = Vec::new();
    let deadline = Instant::now() + EVENTUALLY;
    let first = loop {
        ensure!(Instant::now() < deadline, "delivery to n2 did not resume");
        let i = acked.len() as u64 + 1;
        let r = api1.publish(HIST, json!({ "after": i })).await?;
        acked.push(r["offset"].as_u64().context("offset")?);
        if let Ok(m) = old.recv_json(Duration::from_millis(50)).await {
            break m;
        }
    };
    let offset = first["offset"].as_u64().unwrap_or(0);
    for _ in 0..5 {
        let i = acked.len() as u64 + 1;
        let r = api1.publish(HIST, json!({ "after": i })).await?;
        acked.push(r["offset"].as_u64().context("offset")?);
    }
    eprintln!(
        "[faults_fresh_sub] first publication delivered to n2 after the restart: offset {offset} \
         ({:?} after the fresh subscribe); acked offsets {acked:?}",
        subscribed.elapsed()
    );
    // Everything the old subscriber got from `offset` on, the fresh one on
    // the same node must get too.
    let want: Vec<u64> = acked.iter().copied().filter(|&o| o >= offset).collect();
    let mut got_old = vec![offset];
    while got_old.len() < want.len() {
        got_old.push(
            next_on(&mut old, "old", HIST).await?["offset"]
                .as_u64()
                .unwrap_or(0),
        );
    }
    ensure!(
        got_old == want,
        "old subscriber: {got_old:?}, acked {want:?}"
    );
    let mut got_fresh = Vec::new();
    while got_fresh.len() < want.len() {
        // Its neighbour on the same node already has them: they were fanned
        // out to both at once.
        match next_on_within(&mut fresh, "fresh", HIST, Duration::from_secs(3)).await {
            Ok(m) => got_fresh.push(m["offset"].as_u64().unwrap_or(0)),
            Err(e) => bail!(
                "the subscriber that joined at offset 5 just before the restart got {got_fresh:?} \
                 of the new epoch's {want:?} (its neighbour on n2 got them all): {e:#}"
            ),
        }
    }
    ensure!(
        got_fresh == want,
        "fresh subscriber: {got_fresh:?}, acked {want:?}"
    );
    Ok(())
}

tests::topologies!(
    redis_restart_fails_fast_then_resumes_without_restarting_nodes,
    cluster_views_are_restored_soon_after_redis_loses_its_data,
    subscriber_that_joined_just_before_a_data_losing_restart_misses_nothing,
);
