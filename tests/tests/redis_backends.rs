//! What only the Redis backends do, beyond the shared contract
//! (`contract.rs`): their behaviour when Redis fails, restarts or loses its
//! data, against real redis-server processes that the tests stop, restart,
//! freeze behind a proxy and tamper with.
//!
//! - the link: an outage fails calls fast, then everything wanted is
//!   resubscribed; a connection that looks open but delivers nothing is
//!   rebuilt by the liveness probe; the subscriptions settle on what the
//!   hub wants after any churn of first/last reports;
//! - the command pool: after a restart no dead connection is handed out;
//! - history: a stream lost to expiry, or left without its meta, restarts
//!   with a new epoch and offset 1;
//! - presence: entries Redis lost, or another node took as expired, are
//!   named by the next refresh and written back by restore.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use gateway::backends::{BackendSettings, Backends};
use gateway::backplane::{BackplaneError, Deliver, Envelope, HistoryOptions, Publication, Topic};
use gateway::presence::{Member, RefreshBatch};
use gateway::redis::{Keys, RedisAuth, RedisSettings, RedisTopology};
use serde_json::value::RawValue;
use tests::{
    eventually, eventually_some, unique_prefix, RedisProxy, RedisServer, Resp, EVENTUALLY,
};
use tokio::time::Instant;

const TIMEOUT: Duration = Duration::from_secs(1);

const HISTORY: HistoryOptions = HistoryOptions {
    size: 100,
    ttl: Duration::from_secs(60),
    min_replicas: 0,
};

/// Collects what the backplane delivers.
#[derive(Default)]
struct Sink(Mutex<Vec<Envelope>>);

impl Deliver for Sink {
    fn deliver(&self, envelope: Envelope) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(envelope);
    }
}

impl Sink {
    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// One node's Redis backends at `url`, with its sink.
struct Node {
    b: Backends,
    sink: Arc<Sink>,
    prefix: String,
}

impl Node {
    async fn start(url: String, prefix: &str, ttl: Duration) -> Result<Self> {
        let sink = Arc::new(Sink::default());
        let settings = RedisSettings {
            topology: RedisTopology::Single { url },
            auth: RedisAuth::default(),
            prefix: prefix.to_owned(),
            node_id: "n1".into(),
            timeout: TIMEOUT,
            presence_ttl: ttl,
        };
        let b = BackendSettings::Redis(settings)
            .plan()
            .start(sink.clone())
            .await?;
        Ok(Self {
            b,
            sink,
            prefix: prefix.to_owned(),
        })
    }

    /// What the hub does for a topic's first local subscriber.
    async fn subscribe(&self, topic: Topic) -> std::result::Result<(), BackplaneError> {
        self.b.interest.set(&topic, true);
        self.b.backplane.ready(&topic).await
    }

    fn channel_name(&self, channel: &str) -> String {
        Keys::new(&self.prefix).channel(channel)
    }
}

fn publication(channel: &str, n: u64) -> Result<Publication> {
    Ok(Publication::new(
        channel.into(),
        RawValue::from_string(format!(r#"{{"n":{n}}}"#))?,
        None,
        None,
    ))
}

/// One member of `room` and the refresh batch naming it.
fn room_member(conn: &str) -> Result<(Member, RefreshBatch)> {
    let m = member(conn)?;
    let batch = RefreshBatch {
        members: vec![("room".into(), m.clone())],
        user_conns: vec![],
    };
    Ok((m, batch))
}

fn member(conn: &str) -> Result<Member> {
    Ok(Member {
        user: format!("user-{conn}"),
        conn: conn.into(),
        node: "n1".into(),
        info: None,
    })
}

async fn wait_numsub(server: &RedisServer, name: &str, want: i64) -> Result<()> {
    eventually(EVENTUALLY, &format!("NUMSUB {name} = {want}"), || async {
        matches!(server.numsub(name).await, Ok(n) if n == want)
    })
    .await
}

async fn wait_healthy(node: &Node, healthy: bool) -> Result<()> {
    eventually(EVENTUALLY, &format!("healthy = {healthy}"), || async {
        node.b.backplane.is_healthy() == healthy
    })
    .await
}

/// While Redis is down, publishes and new subscribes fail with
/// `Unavailable` within the timeout; once it is back, what the hub wants is
/// subscribed again and publishing works (on a new stream: Redis lost it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_fails_fast_then_everything_wanted_is_resubscribed() -> Result<()> {
    let mut server = RedisServer::start().await?;
    let node = Node::start(server.url(), &unique_prefix("outage"), HISTORY.ttl).await?;
    node.subscribe(Topic::Channel("live".into())).await?;
    server.stop();
    let started = Instant::now();
    let result = node
        .b
        .backplane
        .publish(publication("live", 1)?, Some(HISTORY))
        .await;
    ensure!(
        matches!(result, Err(BackplaneError::Unavailable(_))),
        "{result:?}"
    );
    ensure!(started.elapsed() <= TIMEOUT + Duration::from_millis(500));
    wait_healthy(&node, false).await?;
    let started = Instant::now();
    let result = node.subscribe(Topic::Channel("other".into())).await;
    ensure!(
        matches!(result, Err(BackplaneError::Unavailable(_))),
        "{result:?}"
    );
    ensure!(started.elapsed() <= TIMEOUT + Duration::from_millis(500));

    server.restart().await?;
    wait_healthy(&node, true).await?;
    // Both were wanted when Redis came back (the failed subscribe's
    // subscriber would be removed by the hub; here nobody turned it off).
    wait_numsub(&server, &node.channel_name("live"), 1).await?;
    let pos = node
        .b
        .backplane
        .publish(publication("live", 2)?, Some(HISTORY))
        .await?;
    ensure!(
        pos.as_ref().map(|p| p.offset) == Some(1),
        "a new stream: {pos:?}"
    );
    eventually(EVENTUALLY, "the publication to arrive", || async {
        node.sink.len() == 1
    })
    .await?;
    node.b.backplane.shutdown().await;
    Ok(())
}

/// A pub/sub connection that stays open but delivers nothing (as after a
/// failover) is rebuilt by the liveness probe, and delivery resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_rebuilds_a_silent_connection() -> Result<()> {
    let server = RedisServer::start().await?;
    let proxy = RedisProxy::start(server.port()).await?;
    let node = Node::start(proxy.url(), &unique_prefix("probe"), HISTORY.ttl).await?;
    node.subscribe(Topic::Channel("quiet".into())).await?;
    proxy.freeze_existing();
    wait_healthy(&node, false)
        .await
        .context("the probe did not notice the silent connection")?;
    wait_healthy(&node, true).await?;
    // Delivery works on the rebuilt connection.
    eventually(EVENTUALLY, "a publication after the rebuild", || async {
        if let Ok(p) = publication("quiet", 1) {
            let _ = node.b.backplane.publish(p, None).await;
        }
        node.sink.len() > 0
    })
    .await?;
    node.b.backplane.shutdown().await;
    Ok(())
}

/// The hub's first/last reports, as fast as it makes them (off while a
/// SUBSCRIBE is still in flight, on again before the task looked): Redis
/// ends with exactly the channels the hub still wants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_settle_on_what_the_hub_wants() -> Result<()> {
    let server = RedisServer::start().await?;
    let node = Node::start(server.url(), &unique_prefix("churn"), HISTORY.ttl).await?;
    node.subscribe(Topic::Channel("c0".into())).await?;
    for i in 0..200u64 {
        let topic = Topic::Channel(format!("c{}", 1 + i % 4));
        if i % 3 == 0 {
            node.subscribe(topic.clone()).await?;
        } else {
            node.b.interest.set(&topic, true);
            tokio::task::yield_now().await;
        }
        node.b.interest.set(&topic, false);
    }
    wait_numsub(&server, &node.channel_name("c0"), 1).await?;
    for c in 1..5 {
        wait_numsub(&server, &node.channel_name(&format!("c{c}")), 0).await?;
    }
    node.b
        .backplane
        .publish(publication("c0", 1)?, None)
        .await?;
    eventually(EVENTUALLY, "c0 still delivered", || async {
        node.sink.len() == 1
    })
    .await?;
    Ok(())
}

/// The command pool hands out no connection made before Redis restarted:
/// every one of a burst of concurrent commands right after the link is back
/// succeeds (a dead pooled connection would fail at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_dead_pooled_connection_is_used_after_a_restart() -> Result<()> {
    let mut server = RedisServer::start().await?;
    let node = Node::start(server.url(), &unique_prefix("pool"), HISTORY.ttl).await?;
    let p = node.b.presence.clone();
    // Fill the pool: concurrent commands each take their own connection.
    let joins = (0..16).map(|i| {
        let p = p.clone();
        async move {
            p.join("room", &member(&format!("c{i}"))?)
                .await
                .map_err(anyhow::Error::from)
        }
    });
    futures_util::future::try_join_all(joins).await?;
    let before = node.b.backplane.generation();
    server.restart().await?;
    eventually(EVENTUALLY, "the link to come back", || async {
        node.b.backplane.generation() != before && node.b.backplane.is_healthy()
    })
    .await?;
    let reads = (0..16).map(|_| {
        let p = p.clone();
        async move { p.members("room").await }
    });
    let results = futures_util::future::join_all(reads).await;
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(ToString::to_string))
        .collect();
    ensure!(
        failed.is_empty(),
        "commands on dead connections: {failed:?}"
    );
    ensure!(
        results.iter().all(|r| r.as_ref().is_ok_and(Vec::is_empty)),
        "Redis restarted empty"
    );
    Ok(())
}

/// A stream that expired (meta and entries gone) restarts with a new epoch
/// at offset 1, and a read before the next publish already tells that epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_stream_restarts_with_a_new_epoch() -> Result<()> {
    let server = RedisServer::start().await?;
    let prefix = unique_prefix("expired");
    let node = Node::start(server.url(), &prefix, HISTORY.ttl).await?;
    let short = HistoryOptions {
        size: 10,
        ttl: Duration::from_millis(300),
        min_replicas: 0,
    };
    let old = node
        .b
        .backplane
        .publish(publication("e", 1)?, Some(short))
        .await?
        .context("no position")?;
    let keys = Keys::new(&prefix);
    let (meta, hist) = (keys.meta("e"), keys.history("e"));
    eventually(EVENTUALLY, "history to expire", || async {
        matches!(
            server.cmd(&["EXISTS", &meta, &hist]).await,
            Ok(Resp::Int(0))
        )
    })
    .await?;
    let read = node.b.history.read("e", 0, 10, short).await?;
    ensure!(read.position.epoch != old.epoch, "the epoch did not change");
    ensure!(read.position.offset == 0);
    let new = node
        .b
        .backplane
        .publish(publication("e", 2)?, Some(short))
        .await?;
    // Reads create nothing in Redis: the read answered the empty epoch and
    // the first publication starts a new one.
    ensure!(
        read.position.epoch.is_empty(),
        "read epoch {:?}",
        read.position
    );
    let new = new.context("no position")?;
    ensure!(
        new.offset == 1 && !new.epoch.is_empty() && new.epoch != old.epoch,
        "{new:?}"
    );
    Ok(())
}

/// A stream whose meta hash is gone (its epoch lost) is stale: the next
/// publish drops it and starts over at offset 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_meta_is_dropped() -> Result<()> {
    let server = RedisServer::start().await?;
    let prefix = unique_prefix("stale");
    let node = Node::start(server.url(), &prefix, HISTORY.ttl).await?;
    for n in 1..=3 {
        node.b
            .backplane
            .publish(publication("s", n)?, Some(HISTORY))
            .await?;
    }
    server.cmd(&["DEL", &Keys::new(&prefix).meta("s")]).await?;
    let pos = node
        .b
        .backplane
        .publish(publication("s", 4)?, Some(HISTORY))
        .await?;
    ensure!(pos.as_ref().map(|p| p.offset) == Some(1), "{pos:?}");
    let read = node.b.history.read("s", 0, 10, HISTORY).await?;
    ensure!(read.publications.len() == 1 && read.first_offset == 1);
    Ok(())
}

/// After Redis lost everything, the next refresh names the member as
/// missing and restore writes it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_names_what_redis_lost_and_restore_writes_it_back() -> Result<()> {
    let mut server = RedisServer::start().await?;
    let node = Node::start(server.url(), &unique_prefix("lost"), Duration::from_secs(5)).await?;
    let p = node.b.presence.clone();
    let (m, batch) = room_member("c1")?;
    p.join("room", &m).await?;
    ensure!(p.refresh(&batch).await?.is_empty());
    server.restart().await?;
    wait_healthy(&node, true).await?;
    let missing = eventually_some(EVENTUALLY, "a refresh after the restart", || async {
        p.refresh(&batch).await.ok()
    })
    .await?;
    let named: Vec<&str> = missing
        .members
        .iter()
        .map(|(_, m)| m.conn.as_str())
        .collect();
    ensure!(named == ["c1"], "refresh named {named:?}");
    let created = p.restore(&missing).await?;
    ensure!(created.members.len() == 1);
    let members = p.members("room").await?;
    ensure!(members.len() == 1 && members[0].conn == "c1");
    Ok(())
}

/// A node that missed its refreshes for a whole TTL finds its member taken
/// as expired by the sweep: the next refresh names it and restore writes it
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_taken_as_expired_is_named_and_restored() -> Result<()> {
    let server = RedisServer::start().await?;
    let node = Node::start(
        server.url(),
        &unique_prefix("missed"),
        Duration::from_millis(300),
    )
    .await?;
    let p = node.b.presence.clone();
    let (m, batch) = room_member("c1")?;
    p.join("room", &m).await?;
    let taken = eventually_some(EVENTUALLY, "the member to expire", || async {
        p.take_expired("room").await.ok().filter(|t| !t.is_empty())
    })
    .await?;
    ensure!(taken.len() == 1 && taken[0].conn == "c1");
    let missing = p.refresh(&batch).await?;
    ensure!(missing.members.len() == 1, "refresh named {missing:?}");
    ensure!(p.members("room").await?.is_empty());
    p.restore(&missing).await?;
    let members = p.members("room").await?;
    ensure!(members.len() == 1 && members[0].conn == "c1");
    Ok(())
}
