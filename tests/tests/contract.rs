//! Backend contract tests: every contract of the `Backplane`, `History` and
//! `Presence` traits is written once, as an async fn over a [`Backends`]
//! factory, and instantiated for both implementations by [`contracts!`]:
//! `memory::<name>` runs it on the in-process backends, `redis::<name>` on
//! the Redis backends against a throw-away redis-server (one per test, with a
//! unique key prefix).
//!
//! The trait docs are the reference. Where the backends legitimately differ
//! (the memory backplane has no subscriptions: it delivers everything to its
//! one node), the shared contract is the weaker one ("after subscribe,
//! deliveries arrive") and the stronger, backend-specific behaviour is tested
//! under an explicit name (`redis_only::*`, `memory_only::*`).
//!
//! Waiting: deliveries and expiries are awaited with bounded polling
//! ([`eventually`]); absence on Redis is proven with a fence (a later
//! publication on a subscribed topic: the node's one pub/sub connection
//! receives in Redis's processing order, so anything that were to arrive
//! would arrive before the fence). The only sleeps pace refreshes across a
//! wall-clock TTL.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use gateway::backends::BackendSettings;
use gateway::backplane::{
    node_of_conn, Backplane, Deliver, Envelope, HistoryOptions, Interest, PresenceEvent,
    Publication, StreamPosition, Topic,
};
use gateway::history::History;
use gateway::presence::{Member, NodeInfo, Presence, RefreshBatch, UserConn};
use gateway::redis::{Keys, RedisAuth, RedisSettings, RedisTopology};
use serde_json::value::RawValue;
use tests::{eventually, eventually_some, unique_prefix, RedisCluster, RedisServer, EVENTUALLY};
use tokio::time::Instant;

/// Presence TTL of tests that do not wait for expiry.
const LONG_TTL: Duration = Duration::from_secs(60);
/// Presence TTL of tests that wait for entries to expire.
const SHORT_TTL: Duration = Duration::from_millis(400);
/// History options of tests that do not test trimming or expiry.
const HISTORY: HistoryOptions = HistoryOptions {
    size: 100,
    ttl: Duration::from_secs(60),
    min_replicas: 0,
};

// ---------------------------------------------------------------------------
// The factory
// ---------------------------------------------------------------------------

/// Which implementation a contract runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Memory,
    Redis,
    /// A 3-primary Redis Cluster (sharded pub/sub, slot-routed commands).
    RedisCluster,
}

/// Collects every delivered envelope, in delivery order.
#[derive(Default)]
struct Sink {
    got: Mutex<Vec<Envelope>>,
}

impl Deliver for Sink {
    fn deliver(&self, envelope: Envelope) {
        self.got
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(envelope);
    }
}

impl Sink {
    fn snapshot(&self) -> Vec<Envelope> {
        self.got
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Publications of `channel` delivered so far, in delivery order.
    fn messages(&self, channel: &str) -> Vec<Publication> {
        self.snapshot()
            .into_iter()
            .filter_map(|e| match e {
                Envelope::Message(p) if p.channel == channel => Some(p),
                _ => None,
            })
            .collect()
    }

    /// Waits (bounded) until `check` finds what it looks for in the
    /// deliveries so far.
    async fn wait_for<T>(&self, what: &str, check: impl Fn(&[Envelope]) -> Option<T>) -> Result<T> {
        eventually_some(EVENTUALLY, what, || {
            let found = check(&self.snapshot());
            async move { found }
        })
        .await
        .with_context(|| format!("delivered so far: {}", describe(&self.snapshot())))
    }

    /// Waits (bounded) until `n` publications of `channel` arrived.
    async fn wait_messages(&self, channel: &str, n: usize) -> Result<Vec<Publication>> {
        self.wait_for(&format!("{n} publications of {channel}"), |_| {
            let got = self.messages(channel);
            (got.len() >= n).then_some(got)
        })
        .await
    }
}

/// The Redis side of a [`Backends`]: the server and the key prefix, so that
/// a second node can join the same "cluster".
struct RedisCtx {
    server: Arc<RedisServer>,
    /// With [`Kind::RedisCluster`]: the cluster (`server` is its first
    /// node, for direct inspection).
    cluster: Option<Arc<RedisCluster>>,
    prefix: String,
    ttl: Duration,
}

/// One node's three backends plus the sink its backplane delivers to.
struct Backends {
    kind: Kind,
    node: String,
    /// What the node's hub would report first/last references to.
    interest: Arc<dyn Interest>,
    backplane: Arc<dyn Backplane>,
    history: Arc<dyn History>,
    presence: Arc<dyn Presence>,
    sink: Arc<Sink>,
    redis: Option<RedisCtx>,
}

impl Backends {
    /// Fresh backends of `kind` for node `n1`, with presence entries that
    /// expire `ttl` after their last write or refresh.
    async fn start(kind: Kind, test: &str, ttl: Duration) -> Result<Self> {
        match kind {
            Kind::Memory => {
                let sink = Arc::new(Sink::default());
                let settings = BackendSettings::Memory {
                    presence_ttl: ttl,
                    history_caps: (100_000, 256 << 20),
                };
                let b = settings.plan().start(sink.clone()).await?;
                Ok(Self {
                    kind,
                    node: "n1".into(),
                    interest: b.interest,
                    backplane: b.backplane,
                    history: b.history,
                    presence: b.presence,
                    sink,
                    redis: None,
                })
            }
            Kind::RedisCluster => {
                let cluster = RedisCluster::start().await?;
                let ctx = RedisCtx {
                    server: Arc::new(RedisServer::attach(cluster.nodes[0].port())),
                    cluster: Some(Arc::new(cluster)),
                    prefix: unique_prefix(test),
                    ttl,
                };
                Self::redis_node(ctx, "n1").await
            }
            Kind::Redis => {
                let server = Arc::new(RedisServer::start().await?);
                let ctx = RedisCtx {
                    cluster: None,
                    server,
                    prefix: unique_prefix(test),
                    ttl,
                };
                Self::redis_node(ctx, "n1").await
            }
        }
    }

    async fn redis_node(ctx: RedisCtx, node: &str) -> Result<Self> {
        let sink = Arc::new(Sink::default());
        let topology = match &ctx.cluster {
            Some(cluster) => RedisTopology::Cluster {
                seeds: cluster
                    .nodes
                    .iter()
                    .map(|n| ("127.0.0.1".to_owned(), n.port()))
                    .collect(),
            },
            None => RedisTopology::Single {
                url: ctx.server.url(),
            },
        };
        let settings = RedisSettings {
            topology,
            auth: RedisAuth::default(),
            prefix: ctx.prefix.clone(),
            node_id: node.into(),
            timeout: Duration::from_secs(3),
            presence_ttl: ctx.ttl,
        };
        let b = BackendSettings::Redis(settings)
            .plan()
            .start(sink.clone())
            .await?;
        ensure!(
            b.backplane.is_healthy(),
            "Redis backplane not healthy after connect"
        );
        let kind = if ctx.cluster.is_some() {
            Kind::RedisCluster
        } else {
            Kind::Redis
        };
        Ok(Self {
            kind,
            node: node.into(),
            interest: b.interest,
            backplane: b.backplane,
            history: b.history,
            presence: b.presence,
            sink,
            redis: Some(ctx),
        })
    }

    /// Another node of the same cluster. The memory backend is one node:
    /// its "peer" is the same set of backends.
    async fn peer(&self, node: &str) -> Result<Self> {
        match &self.redis {
            None => Ok(Self {
                kind: self.kind,
                node: self.node.clone(),
                interest: self.interest.clone(),
                backplane: self.backplane.clone(),
                history: self.history.clone(),
                presence: self.presence.clone(),
                sink: self.sink.clone(),
                redis: None,
            }),
            Some(ctx) => {
                let ctx = RedisCtx {
                    server: ctx.server.clone(),
                    cluster: ctx.cluster.clone(),
                    prefix: ctx.prefix.clone(),
                    ttl: ctx.ttl,
                };
                Self::redis_node(ctx, node).await
            }
        }
    }

    /// What the hub does for a topic's first local subscriber: want the
    /// topic, then wait until the node receives it.
    async fn subscribe(&self, topic: Topic) -> Result<()> {
        self.interest.set(&topic, true);
        Ok(self.backplane.ready(&topic).await?)
    }

    /// What the hub does when a topic's last local subscriber goes.
    fn unsubscribe(&self, topic: Topic) {
        self.interest.set(&topic, false);
    }

    /// A connection id of this node (`<node>.<boot>.<seq>`).
    fn conn(&self, seq: u32) -> String {
        format!("{}.b7.{seq}", self.node)
    }

    /// Proves that nothing but what was already delivered is in flight to
    /// this node: publishes a fence on a subscribed channel and waits for
    /// it. Everything published before the fence that this node would
    /// receive has been delivered once the fence arrives.
    async fn fence(&self, name: &str) -> Result<()> {
        let channel = format!("fence-{name}");
        self.subscribe(Topic::Channel(channel.clone())).await?;
        self.backplane
            .publish(publication(&channel, "\"fence\"")?, None)
            .await?;
        self.sink.wait_messages(&channel, 1).await?;
        Ok(())
    }

    async fn shutdown(self) {
        self.backplane.shutdown().await;
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn raw(json: &str) -> Result<Box<RawValue>> {
    Ok(RawValue::from_string(json.to_owned())?)
}

fn publication(channel: &str, data: &str) -> Result<Publication> {
    Ok(Publication {
        channel: channel.into(),
        data: raw(data)?,
        from: None,
        offset: None,
        epoch: None,
        exclude: None,
        ts_us: 1,
    })
}

fn member(user: &str, conn: &str, node: &str, info: Option<&str>) -> Result<Member> {
    Ok(Member {
        user: user.into(),
        conn: conn.into(),
        node: node.into(),
        info: info.map(raw).transpose()?,
    })
}

fn node_info(id: &str, connections: u64) -> NodeInfo {
    NodeInfo {
        id: id.into(),
        connections,
        subscriptions: 2,
        started_at: 1_700_000_000,
        version: "0.1.0-test".into(),
    }
}

fn user_conn(conn: &str, node: &str) -> UserConn {
    UserConn {
        conn: conn.into(),
        node: node.into(),
    }
}

/// Conn ids of members, sorted (no backend promises an order).
fn conns(members: &[Member]) -> Vec<String> {
    let mut v: Vec<String> = members.iter().map(|m| m.conn.clone()).collect();
    v.sort();
    v
}

fn sorted_user_conns(mut v: Vec<UserConn>) -> Vec<UserConn> {
    v.sort_by(|a, b| a.conn.cmp(&b.conn));
    v
}

fn node_ids(nodes: &[NodeInfo]) -> Vec<String> {
    let mut v: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    v.sort();
    v
}

fn offsets(publications: &[Publication]) -> Vec<Option<u64>> {
    publications.iter().map(|p| p.offset).collect()
}

fn some_range(from: u64, to: u64) -> Vec<Option<u64>> {
    (from..=to).map(Some).collect()
}

fn kind_of(e: &Envelope) -> &'static str {
    match e {
        Envelope::Message(_) => "message",
        Envelope::Join(_) => "join",
        Envelope::Leave(_) => "leave",
        Envelope::Broadcast { .. } => "broadcast",
        Envelope::User { .. } => "user",
        Envelope::Conn { .. } => "conn",
        Envelope::DisconnectUser { .. } => "disconnect_user",
        Envelope::DisconnectConn { .. } => "disconnect_conn",
        Envelope::SubscribeUser { .. } => "subscribe_user",
        Envelope::SubscribeConn { .. } => "subscribe_conn",
    }
}

fn describe(envelopes: &[Envelope]) -> String {
    let parts: Vec<String> = envelopes
        .iter()
        .map(|e| match e {
            Envelope::Message(p) => format!("message({}, {:?})", p.channel, p.offset),
            other => format!("{}({:?})", kind_of(other), other.topic()),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// Bounded wait for a presence read to satisfy `check`.
async fn wait_presence<T, F, Fut>(what: &str, mut read: F, check: impl Fn(&T) -> bool) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, gateway::backplane::BackplaneError>>,
{
    eventually_some(EVENTUALLY, what, || {
        let fut = read();
        let check = &check;
        async move { fut.await.ok().filter(|v| check(v)) }
    })
    .await
}

// ---------------------------------------------------------------------------
// Backplane contracts
// ---------------------------------------------------------------------------

/// Without history, publish returns `None`; a subscribed node's sink gets
/// the envelope with no offset and every other field as published (the
/// data bytes exactly).
async fn publish_without_history_returns_none_and_delivers(kind: Kind) -> Result<()> {
    let b = Backends::start(kind, "pub_no_hist", LONG_TTL).await?;
    ensure!(b.backplane.is_healthy(), "backplane not healthy at start");
    b.subscribe(Topic::Channel("chat:a".into())).await?;
    // Whitespace, a trailing zero, an escape and a slash: a re-encoding
    // would change at least one of them.
    let data = r#"{ "n": 1.50, "s": "\u00e9", "p": "a/b", "l": [1 ,2] }"#;
    let mut p = publication("chat:a", data)?;
    p.from = Some("alice".into());
    p.exclude = Some(b.conn(3));
    p.ts_us = 1_732_670_000_000_123;
    let pos = b.backplane.publish(p, None).await?;
    ensure!(pos.is_none(), "publish without history returned {pos:?}");
    let got = b.sink.wait_messages("chat:a", 1).await?;
    ensure!(got.len() == 1, "one publish, {} deliveries", got.len());
    let m = &got[0];
    ensure!(m.offset.is_none(), "offset without history: {:?}", m.offset);
    ensure!(m.data.get() == data, "data bytes changed: {}", m.data.get());
    ensure!(m.from.as_deref() == Some("alice"), "from: {:?}", m.from);
    ensure!(
        m.exclude.as_deref() == Some(b.conn(3).as_str()),
        "exclude: {:?}",
        m.exclude
    );
    ensure!(m.ts_us == 1_732_670_000_000_123, "ts_us: {}", m.ts_us);
    b.shutdown().await;
    Ok(())
}

/// With history, publish returns offsets 1..n without holes under one
/// epoch, and the sink gets the publications in publish order, each with
/// its offset and its data unchanged.
async fn publish_with_history_assigns_contiguous_offsets_in_order(kind: Kind) -> Result<()> {
    let b = Backends::start(kind, "pub_hist", LONG_TTL).await?;
    b.subscribe(Topic::Channel("hist:a".into())).await?;
    let mut epoch: Option<String> = None;
    for n in 1..=30u64 {
        let pos = b
            .backplane
            .publish(
                publication("hist:a", &format!(r#"{{"n": {n}}}"#))?,
                Some(HISTORY),
            )
            .await?
            .context("publish with history returned no position")?;
        ensure!(pos.offset == n, "publish #{n} got offset {}", pos.offset);
        let first = epoch.get_or_insert_with(|| pos.epoch.clone());
        ensure!(
            *first == pos.epoch,
            "epoch changed from {first} to {}",
            pos.epoch
        );
    }
    let got = b.sink.wait_messages("hist:a", 30).await?;
    ensure!(
        offsets(&got) == some_range(1, 30),
        "delivered offsets {:?}",
        offsets(&got)
    );
    for (i, p) in got.iter().enumerate() {
        let want = format!(r#"{{"n": {}}}"#, i + 1);
        ensure!(p.data.get() == want, "delivery #{i}: data {}", p.data.get());
    }
    b.shutdown().await;
    Ok(())
}

/// Per-channel order under concurrent publishers: every offset is handed
/// out exactly once and the sink receives the channel in offset order.
async fn concurrent_publishers_keep_offset_order(kind: Kind) -> Result<()> {
    let b = Backends::start(kind, "pub_concurrent", LONG_TTL).await?;
    b.subscribe(Topic::Channel("hist:c".into())).await?;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..4u64 {
        let bp = b.backplane.clone();
        tasks.spawn(async move {
            let mut got = Vec::new();
            for i in 0..25u64 {
                let p = publication("hist:c", &format!("[{t},{i}]"))?;
                let pos = bp.publish(p, Some(HISTORY)).await?;
                got.push(pos.context("no position")?.offset);
            }
            anyhow::Ok(got)
        });
    }
    let mut returned = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        returned.extend(joined??);
    }
    returned.sort_unstable();
    ensure!(
        returned == (1..=100).collect::<Vec<u64>>(),
        "returned offsets {returned:?}"
    );
    let got = b.sink.wait_messages("hist:c", 100).await?;
    ensure!(
        offsets(&got) == some_range(1, 100),
        "delivery order {:?}",
        offsets(&got)
    );
    b.shutdown().await;
    Ok(())
}

/// The offset belongs to the backend: one set by the caller is neither
/// delivered nor used (`None` without history, the stream's next offset
/// with history).
async fn caller_set_offset_is_ignored(kind: Kind) -> Result<()> {
    let b = Backends::start(kind, "pub_offset", LONG_TTL).await?;
    b.subscribe(Topic::Channel("hist:o".into())).await?;
    let mut p = publication("hist:o", "1")?;
    p.offset = Some(99);
    let pos = b.backplane.publish(p.clone(), None).await?;
    ensure!(pos.is_none(), "publish without history returned {pos:?}");
    let pos = b.backplane.publish(p, Some(HISTORY)).await?;
    ensure!(
        pos.as_ref().map(|p| p.offset) == Some(1),
        "first publication with history: {pos:?}"
    );
    let got = b.sink.wait_messages("hist:o", 2).await?;
    ensure!(
        offsets(&got) == vec![None, Some(1)],
        "delivered offsets {:?} (want [None, Some(1)])",
        offsets(&got)
    );
    b.shutdown().await;
    Ok(())
}

/// Join and leave travel on the channel's topic, in the channel's order
/// with its publications, and arrive as sent.
async fn join_and_leave_arrive_in_channel_order(kind: Kind) -> Result<()> {
    let b = Backends::start(kind, "join_leave", LONG_TTL).await?;
    b.subscribe(Topic::Channel("chat:j".into())).await?;
    let event = PresenceEvent {
        channel: "chat:j".into(),
        user: "alice".into(),
        conn: b.conn(1),
    };
    b.backplane.send(Envelope::Join(event.clone())).await?;
    b.backplane
        .publish(publication("chat:j", r#""hi""#)?, None)
        .await?;
    b.backplane.send(Envelope::Leave(event.clone())).await?;
    let got = b
        .sink
        .wait_for("join, message, leave", |e| {
            (e.len() >= 3).then(|| e.to_vec())
        })
        .await?;
    let kinds: Vec<&str> = got.iter().map(kind_of).collect();
    ensure!(
        kinds == ["join", "message", "leave"],
        "order {kinds:?}: {}",
        describe(&got)
    );
    match (&got[0], &got[2]) {
        (Envelope::Join(j), Envelope::Leave(l)) => {
            ensure!(*j == event && *l == event, "events {j:?} {l:?}");
        }
        _ => bail!("unexpected {}", describe(&got)),
    }
    b.shutdown().await;
    Ok(())
}

/// Broadcast, user, conn and disconnect envelopes reach the node they are
/// routed to (the user topic after subscribe; the conn topic is this
/// node's, because the conn id's node part is this node's id).
async fn directed_envelopes_arrive(kind: Kind) -> Result<()> {
    let b = Backends::start(kind, "directed", LONG_TTL).await?;
    let conn = b.conn(7);
    ensure!(
        node_of_conn(&conn) == b.node,
        "conn id {conn} must name node {}",
        b.node
    );
    b.subscribe(Topic::User("u1".into())).await?;
    let data = r#"{"k": "v/w", "n": 2.0}"#;
    b.backplane
        .send(Envelope::Broadcast { data: raw(data)? })
        .await?;
    b.backplane
        .send(Envelope::User {
            user: "u1".into(),
            data: raw(data)?,
        })
        .await?;
    b.backplane
        .send(Envelope::Conn {
            conn: conn.clone(),
            data: raw(data)?,
        })
        .await?;
    b.backplane
        .send(Envelope::DisconnectUser {
            user: "u1".into(),
            code: 4004,
            reason: "bye".into(),
        })
        .await?;
    b.backplane
        .send(Envelope::DisconnectConn {
            conn: conn.clone(),
            code: 4005,
            reason: "gone".into(),
        })
        .await?;
    let got = b
        .sink
        .wait_for("five directed envelopes", |e| {
            (e.len() >= 5).then(|| e.to_vec())
        })
        .await?;
    ensure!(got.len() == 5, "extra deliveries: {}", describe(&got));
    // Different topics: no order between them is promised.
    let kinds: BTreeSet<&str> = got.iter().map(kind_of).collect();
    let want: BTreeSet<&str> = [
        "broadcast",
        "user",
        "conn",
        "disconnect_user",
        "disconnect_conn",
    ]
    .into();
    ensure!(kinds == want, "kinds {kinds:?}");
    for e in &got {
        match e {
            Envelope::Broadcast { data: d } => ensure!(d.get() == data, "broadcast {}", d.get()),
            Envelope::User { user, data: d } => {
                ensure!(user == "u1" && d.get() == data, "user {user} {}", d.get());
            }
            Envelope::Conn { conn: c, data: d } => {
                ensure!(*c == conn && d.get() == data, "conn {c} {}", d.get());
            }
            Envelope::DisconnectUser { user, code, reason } => {
                ensure!(
                    user == "u1" && *code == 4004 && reason == "bye",
                    "disconnect_user {user} {code} {reason}"
                );
            }
            Envelope::DisconnectConn {
                conn: c,
                code,
                reason,
            } => {
                ensure!(
                    *c == conn && *code == 4005 && reason == "gone",
                    "disconnect_conn {c} {code} {reason}"
                );
            }
            other => bail!("unexpected {}", describe(std::slice::from_ref(other))),
        }
    }
    b.shutdown().await;
    Ok(())
}

/// The hub reports first and last references, and may turn a topic off
/// and on again at once: the node ends receiving it (an off never
/// overtakes the on that follows it).
async fn interest_turned_off_and_on_again_still_receives(kind: Kind) -> Result<()> {
    let b = Backends::start(kind, "offon", LONG_TTL).await?;
    let channel = Topic::Channel("chat:r".into());
    let user = Topic::User("u2".into());
    for topic in [&channel, &user] {
        b.subscribe(topic.clone()).await?;
        b.unsubscribe(topic.clone());
        b.subscribe(topic.clone()).await?;
    }
    b.backplane
        .publish(publication("chat:r", "7")?, None)
        .await?;
    b.backplane
        .send(Envelope::User {
            user: "u2".into(),
            data: raw("8")?,
        })
        .await?;
    b.sink.wait_messages("chat:r", 1).await?;
    b.sink
        .wait_for("the user envelope", |e| {
            e.iter()
                .any(|e| matches!(e, Envelope::User { user, .. } if user == "u2"))
                .then_some(())
        })
        .await?;
    b.shutdown().await;
    Ok(())
}

/// `subscribe` returns only once the node receives the topic: a history
/// read that follows it, while another task keeps publishing, leaves no
/// gap (every offset above the read's top is delivered afterwards).
async fn subscribe_then_read_leaves_no_gap(kind: Kind) -> Result<()> {
    let b = Backends::start(kind, "sub_read", LONG_TTL).await?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let bp = b.backplane.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut extra = 0;
            let mut top = 0;
            // Keep publishing until told, then 30 more after the read.
            while extra < 30 && top < 100_000 {
                if stop.load(std::sync::atomic::Ordering::Acquire) {
                    extra += 1;
                }
                let pos = bp
                    .publish(publication("hist:g", &format!("{top}"))?, Some(HISTORY))
                    .await?;
                top = pos.context("no position")?.offset;
                tokio::task::yield_now().await;
            }
            anyhow::Ok(top)
        })
    };
    let history = b.history.clone();
    eventually(EVENTUALLY, "20 publications before subscribing", || {
        let history = history.clone();
        async move {
            let r = history.read("hist:g", 0, 0, HISTORY).await;
            matches!(r, Ok(r) if r.position.offset >= 20)
        }
    })
    .await?;
    b.subscribe(Topic::Channel("hist:g".into())).await?;
    let read_top = b
        .history
        .read("hist:g", 0, 0, HISTORY)
        .await?
        .position
        .offset;
    stop.store(true, std::sync::atomic::Ordering::Release);
    let last = publisher.await??;
    ensure!(last > read_top, "nothing published after the read");
    let after = b
        .sink
        .wait_for("every publication after the read", |_| {
            let got: Vec<Option<u64>> = offsets(&b.sink.messages("hist:g"))
                .into_iter()
                .filter(|o| o.is_some_and(|o| o > read_top))
                .collect();
            (got.last() == Some(&Some(last))).then_some(got)
        })
        .await?;
    ensure!(
        after == some_range(read_top + 1, last),
        "after a read at {read_top}: delivered {after:?}"
    );
    b.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------
// History contracts
// ---------------------------------------------------------------------------

/// A read of a channel without a stream returns offset 0, `first_offset` 1
/// and no publications; the first publication gets offset 1 and later reads
/// carry its epoch. A backend may answer the empty read with the empty
/// epoch (Redis: reads create no key; it matches any epoch on recovery);
/// a backend that answers a real epoch keeps it for the publications that
/// follow.
async fn empty_channel_read_fixes_the_epoch(kind: Kind) -> Result<()> {
    let b = Backends::start(kind, "hist_empty", LONG_TTL).await?;
    let first = b.history.read("hist:e", 0, 10, HISTORY).await?;
    ensure!(
        first.position.offset == 0,
        "offset {}",
        first.position.offset
    );
    ensure!(
        first.first_offset == 1,
        "first_offset {}",
        first.first_offset
    );
    ensure!(first.publications.is_empty(), "publications on empty read");
    let epoch = first.position.epoch;
    let again = b.history.read("hist:e", 0, 10, HISTORY).await?;
    ensure!(
        again.position.epoch == epoch,
        "second read: {}",
        again.position.epoch
    );
    let pos = b
        .backplane
        .publish(publication("hist:e", "1")?, Some(HISTORY))
        .await?
        .context("no position")?;
    ensure!(pos.offset == 1, "first publish {pos:?}");
    ensure!(!pos.epoch.is_empty(), "first publish without epoch");
    ensure!(
        epoch.is_empty() || pos.epoch == epoch,
        "first publish {pos:?}, the empty read fixed epoch {epoch}"
    );
    let after = b.history.read("hist:e", 0, 10, HISTORY).await?;
    ensure!(
        after.position == pos,
        "read after publish {:?}",
        after.position
    );
    // Another channel's stream is its own: offset 0.
    let other = b.history.read("hist:other", 0, 10, HISTORY).await?;
    ensure!(
        other.position.offset == 0,
        "other channel {:?}",
        other.position
    );
    b.shutdown().await;
    Ok(())
}

/// `since` and `limit`: publications with offset > since, oldest first, at
/// most `limit`, with the current top position, whatever is asked.
async fn read_since_and_limit(kind: Kind) -> Result<()> {
    let b = Backends::start(kind, "hist_since", LONG_TTL).await?;
    let mut epoch = String::new();
    for n in 1..=10u64 {
        let mut p = publication("hist:s", &format!("[{n}, \"x/y\"]"))?;
        p.from = Some("bob".into());
        let pos = b.backplane.publish(p, Some(HISTORY)).await?;
        epoch = pos.context("no position")?.epoch;
    }
    let want_pos = StreamPosition { offset: 10, epoch };

    let all = b.history.read("hist:s", 0, 100, HISTORY).await?;
    ensure!(all.position == want_pos, "position {:?}", all.position);
    ensure!(all.first_offset == 1, "first_offset {}", all.first_offset);
    ensure!(
        offsets(&all.publications) == some_range(1, 10),
        "read(0, 100): {:?}",
        offsets(&all.publications)
    );
    for (i, p) in all.publications.iter().enumerate() {
        let want = format!("[{}, \"x/y\"]", i + 1);
        ensure!(p.data.get() == want, "entry {i}: data {}", p.data.get());
        ensure!(p.channel == "hist:s", "entry {i}: channel {}", p.channel);
        ensure!(
            p.from.as_deref() == Some("bob"),
            "entry {i}: from {:?}",
            p.from
        );
    }

    let cases: [(u64, usize, Vec<Option<u64>>); 6] = [
        (4, 3, some_range(5, 7)),
        (4, 100, some_range(5, 10)),
        (0, 2, some_range(1, 2)),
        (9, 100, some_range(10, 10)),
        (10, 100, Vec::new()),
        (25, 100, Vec::new()),
    ];
    for (since, limit, want) in cases {
        let r = b.history.read("hist:s", since, limit, HISTORY).await?;
        ensure!(
            offsets(&r.publications) == want,
            "read(since {since}, limit {limit}) = {:?}, want {want:?}",
            offsets(&r.publications)
        );
        ensure!(
            r.position == want_pos,
            "read(since {since}, limit {limit}) position {:?}",
            r.position
        );
        ensure!(r.first_offset == 1, "first_offset {}", r.first_offset);
    }
    let none = b.history.read("hist:s", 0, 0, HISTORY).await?;
    ensure!(
        none.publications.is_empty() && none.position == want_pos,
        "limit 0: {:?} at {:?}",
        offsets(&none.publications),
        none.position
    );
    b.shutdown().await;
    Ok(())
}

/// A stream keeps the last `size` publications; `first_offset` names the
/// oldest retained one, so a reader whose `since` is older sees the gap.
async fn history_is_trimmed_to_size(kind: Kind) -> Result<()> {
    let b = Backends::start(kind, "hist_trim", LONG_TTL).await?;
    let small = HistoryOptions {
        size: 5,
        ttl: Duration::from_secs(60),
        min_replicas: 0,
    };
    let mut epochs = BTreeSet::new();
    for n in 1..=12u64 {
        let pos = b
            .backplane
            .publish(publication("small:t", &n.to_string())?, Some(small))
            .await?
            .context("no position")?;
        ensure!(pos.offset == n, "publish #{n}: offset {}", pos.offset);
        epochs.insert(pos.epoch);
    }
    ensure!(epochs.len() == 1, "trimming changed the epoch: {epochs:?}");
    let r = b.history.read("small:t", 0, 100, small).await?;
    ensure!(r.position.offset == 12, "top {}", r.position.offset);
    ensure!(
        r.first_offset == 8,
        "first_offset {} (want 8)",
        r.first_offset
    );
    ensure!(
        offsets(&r.publications) == some_range(8, 12),
        "retained {:?}",
        offsets(&r.publications)
    );
    let data: Vec<&str> = r.publications.iter().map(|p| p.data.get()).collect();
    ensure!(
        data == ["8", "9", "10", "11", "12"],
        "retained data {data:?}"
    );
    let r = b.history.read("small:t", 3, 100, small).await?;
    ensure!(
        offsets(&r.publications) == some_range(8, 12) && r.first_offset == 8,
        "since older than the stream: {:?} first {}",
        offsets(&r.publications),
        r.first_offset
    );
    let r = b.history.read("small:t", 9, 2, small).await?;
    ensure!(
        offsets(&r.publications) == some_range(10, 11),
        "read(9, 2) {:?}",
        offsets(&r.publications)
    );
    b.shutdown().await;
    Ok(())
}

/// A stream idle for longer than its TTL is lost: the next read gets a new
/// epoch at offset 0 and the next publication offset 1 under that epoch.
async fn expired_stream_restarts_with_a_new_epoch(kind: Kind) -> Result<()> {
    let b = Backends::start(kind, "hist_expire", LONG_TTL).await?;
    let short = HistoryOptions {
        size: 10,
        ttl: Duration::from_millis(300),
        min_replicas: 0,
    };
    // Each publication extends the stream's life: publishing every 50 ms
    // for several TTLs keeps one epoch and contiguous offsets.
    let mut old: Option<StreamPosition> = None;
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < short.ttl * 3 {
        n += 1;
        let pos = b
            .backplane
            .publish(publication("hist:x", &n.to_string())?, Some(short))
            .await?
            .context("no position")?;
        ensure!(pos.offset == n, "publish #{n}: {pos:?}");
        if let Some(old) = &old {
            ensure!(old.epoch == pos.epoch, "epoch changed while publishing");
        }
        old = Some(pos);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let old = old.context("no position")?;
    // Reads with a long TTL: the empty stream a read creates after the
    // expiry must outlive the rest of the test.
    let history = b.history.clone();
    let fresh = eventually_some(EVENTUALLY, "the stream to expire", || {
        let history = history.clone();
        let old_epoch = old.epoch.clone();
        async move {
            let r = history.read("hist:x", 0, 10, HISTORY).await.ok()?;
            (r.position.epoch != old_epoch).then_some(r)
        }
    })
    .await?;
    ensure!(
        fresh.position.offset == 0,
        "offset {}",
        fresh.position.offset
    );
    ensure!(
        fresh.publications.is_empty(),
        "publications survived expiry"
    );
    ensure!(
        fresh.first_offset == 1,
        "first_offset {}",
        fresh.first_offset
    );
    let pos = b
        .backplane
        .publish(publication("hist:x", "3")?, Some(HISTORY))
        .await?
        .context("no position")?;
    // A backend whose reads create nothing (Redis) answered the empty
    // epoch; the first publication then starts a new one.
    ensure!(
        pos.offset == 1
            && pos.epoch != old.epoch
            && (fresh.position.epoch.is_empty() || pos.epoch == fresh.position.epoch),
        "{pos:?} after the read {:?} (old epoch {})",
        fresh.position,
        old.epoch
    );
    b.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------
// Presence contracts
// ---------------------------------------------------------------------------

/// join adds or updates a member, members lists the current ones, leave
/// removes one and says whether it was there; channels are independent.
async fn presence_join_members_leave(kind: Kind) -> Result<()> {
    let b = Backends::start(kind, "pres_basic", LONG_TTL).await?;
    let p = &b.presence;
    let c1 = b.conn(1);
    let c2 = b.conn(2);
    p.join(
        "chat:p",
        &member("alice", &c1, "n1", Some(r#"{"name": "A/B", "n": 1.50}"#))?,
    )
    .await?;
    p.join("chat:p", &member("bob", &c2, "n1", None)?).await?;
    // A second join of the same conn updates it instead of adding one.
    p.join("chat:p", &member("bob", &c2, "n1", Some(r#"{"v":2}"#))?)
        .await?;
    p.join("chat:q", &member("alice", &c1, "n1", None)?).await?;

    let got = p.members("chat:p").await?;
    ensure!(
        conns(&got) == [c1.clone(), c2.clone()],
        "members {:?}",
        conns(&got)
    );
    let alice = got.iter().find(|m| m.conn == c1).context("alice missing")?;
    ensure!(
        alice.user == "alice" && alice.node == "n1",
        "alice is {alice:?}"
    );
    ensure!(
        alice.info.as_ref().map(|i| i.get()) == Some(r#"{"name": "A/B", "n": 1.50}"#),
        "info bytes changed: {:?}",
        alice.info
    );
    let bob = got.iter().find(|m| m.conn == c2).context("bob missing")?;
    ensure!(
        bob.info.as_ref().map(|i| i.get()) == Some(r#"{"v":2}"#),
        "rejoin did not update: {:?}",
        bob.info
    );

    ensure!(
        p.leave("chat:p", &c1, "alice").await?.removed,
        "leave of a member: false"
    );
    ensure!(
        !p.leave("chat:p", &c1, "alice").await?.removed,
        "second leave: true"
    );
    ensure!(
        !p.leave("chat:none", &c1, "alice").await?.removed,
        "leave of unknown channel: true"
    );
    ensure!(
        conns(&p.members("chat:p").await?) == [c2.clone()],
        "after leave"
    );
    let q = p.members("chat:q").await?;
    ensure!(conns(&q) == [c1.clone()], "leave touched another channel");
    ensure!(q[0].info.is_none(), "info appeared: {:?}", q[0].info);
    ensure!(
        p.leave("chat:p", &c2, "bob").await?.removed,
        "leave of the last member"
    );
    ensure!(
        p.members("chat:p").await?.is_empty(),
        "members after all left"
    );
    ensure!(p.members("chat:none").await?.is_empty(), "unknown channel");
    ensure!(
        p.take_expired("chat:q").await?.is_empty(),
        "nothing expired yet"
    );
    b.shutdown().await;
    Ok(())
}

/// Member transitions are per user and cluster-wide: a user's first
/// connection in a channel (on any node) is reported by its join, the last
/// one by its leave, exactly one of racing joins or leaves of one user sees
/// the transition, anonymous members never do, and expired members handed
/// out by `take_expired` give their user's removal once.
async fn member_transitions_are_per_user_and_exactly_once(kind: Kind) -> Result<()> {
    let a = Backends::start(kind, "pres_members", SHORT_TTL).await?;
    let b = a.peer("n2").await?;
    let ch = "chat:mt";
    // Distinct sequence numbers: the memory kind's peer shares its node name.
    let (a1, b1) = (a.conn(1), b.conn(11));
    ensure!(
        a.presence
            .join(ch, &member("alice", &a1, &a.node, None)?)
            .await?,
        "alice's first connection: not first"
    );
    ensure!(
        !b.presence
            .join(ch, &member("alice", &b1, &b.node, None)?)
            .await?,
        "alice's second connection (other node): first"
    );
    ensure!(
        !a.presence
            .join(ch, &member("alice", &a1, &a.node, None)?)
            .await?,
        "a rejoin of the same connection: first"
    );
    ensure!(
        !a.presence
            .join(ch, &member("", &a.conn(9), &a.node, None)?)
            .await?,
        "an anonymous member: first"
    );
    // Racing joins of one user on two nodes: exactly one is first.
    let (ca, cb) = (a.conn(2), b.conn(12));
    let (ma, mb) = (
        member("carol", &ca, &a.node, None)?,
        member("carol", &cb, &b.node, None)?,
    );
    let (ja, jb) = tokio::join!(a.presence.join(ch, &ma), b.presence.join(ch, &mb));
    ensure!(ja? ^ jb?, "racing joins of carol: not exactly one first");
    // Leaves: not last while another device stays; last at the end.
    let left = a.presence.leave(ch, &a1, "alice").await?;
    ensure!(
        left.removed && !left.last_of_user,
        "alice's first leave: {left:?}"
    );
    let left = b.presence.leave(ch, &b1, "alice").await?;
    ensure!(
        left.removed && left.last_of_user,
        "alice's last leave: {left:?}"
    );
    let again = b.presence.leave(ch, &b1, "alice").await?;
    ensure!(
        !again.removed && !again.last_of_user,
        "a second leave: {again:?}"
    );
    let anon = a.presence.leave(ch, &a.conn(9), "").await?;
    ensure!(
        anon.removed && !anon.last_of_user,
        "anonymous leave: {anon:?}"
    );
    // Racing leaves of carol's two devices: exactly one is last.
    let (la, lb) = tokio::join!(
        a.presence.leave(ch, &ca, "carol"),
        b.presence.leave(ch, &cb, "carol")
    );
    let (la, lb) = (la?, lb?);
    ensure!(
        la.last_of_user ^ lb.last_of_user,
        "racing leaves of carol: {la:?} {lb:?}"
    );
    // Two expired devices of dave: taken once, removed once.
    let (d1, d2) = (a.conn(3), b.conn(13));
    a.presence
        .join(ch, &member("dave", &d1, &a.node, None)?)
        .await?;
    b.presence
        .join(ch, &member("dave", &d2, &b.node, None)?)
        .await?;
    let pa = a.presence.clone();
    wait_presence("dave to expire", || pa.members(ch), Vec::is_empty).await?;
    let taken: Vec<(String, Member)> = a
        .presence
        .take_expired(ch)
        .await?
        .into_iter()
        .map(|m| (ch.to_owned(), m))
        .collect();
    ensure!(taken.len() == 2, "taken {taken:?}");
    let gone = a.presence.members_gone(&taken).await?;
    ensure!(
        gone == [(ch.to_owned(), "dave".to_owned())],
        "members_gone {gone:?}"
    );
    ensure!(
        a.presence
            .join(ch, &member("dave", &d1, &a.node, None)?)
            .await?,
        "dave back after his removal: not first"
    );
    b.shutdown().await;
    a.shutdown().await;
    Ok(())
}

/// Members that were not refreshed vanish from `members` once the TTL
/// passes, and `take_expired` hands each of them to exactly one of two
/// concurrent callers (two nodes on Redis), then never again.
async fn expired_members_are_taken_exactly_once(kind: Kind) -> Result<()> {
    let a = Backends::start(kind, "pres_expire", SHORT_TTL).await?;
    let b = a.peer("n2").await?;
    let mut want = Vec::new();
    for i in 0..40u32 {
        let node = if i % 2 == 0 { &a } else { &b };
        let conn = node.conn(i);
        node.presence
            .join(
                "chat:x",
                &member(&format!("u{i}"), &conn, &node.node, None)?,
            )
            .await?;
        want.push(conn);
    }
    want.sort();
    let seen = a.presence.members("chat:x").await?;
    ensure!(
        conns(&seen) == want,
        "members before expiry {:?}",
        conns(&seen)
    );
    let pa = a.presence.clone();
    wait_presence("members to expire", || pa.members("chat:x"), Vec::is_empty).await?;

    // An expired member that leaves before a sweep is reported by exactly
    // one of the two (one leave event per member).
    let left = a.presence.leave("chat:x", &want[0], "u0").await?.removed;
    let (ta, tb) = tokio::join!(
        a.presence.take_expired("chat:x"),
        b.presence.take_expired("chat:x")
    );
    let (ta, tb) = (ta?, tb?);
    let mut taken = conns(&ta);
    taken.extend(conns(&tb));
    if left {
        taken.push(want[0].clone());
    }
    taken.sort();
    ensure!(
        taken == want,
        "taken {} + {} (+ left: {left}) = {taken:?}, want each of {} once",
        ta.len(),
        tb.len(),
        want.len()
    );
    for m in ta.iter().chain(&tb) {
        let i = m.user.trim_start_matches('u');
        ensure!(m.conn.ends_with(&format!(".{i}")), "member {m:?} mangled");
    }
    ensure!(
        a.presence.take_expired("chat:x").await?.is_empty(),
        "taken twice"
    );
    ensure!(
        a.presence.members("chat:x").await?.is_empty(),
        "members back"
    );
    ensure!(
        !a.presence.leave("chat:x", &want[1], "u1").await?.removed,
        "a taken member is still present"
    );
    b.shutdown().await;
    a.shutdown().await;
    Ok(())
}

/// A refresh extends exactly the entries in its batch: members and user
/// connections refreshed well inside the TTL stay listed for several TTLs,
/// the ones left out expire; a heartbeat does the same for nodes.
async fn refresh_and_heartbeat_keep_entries_alive(kind: Kind) -> Result<()> {
    // Longer than SHORT_TTL: refreshes every 100 ms must never fall a
    // whole TTL behind, even on a loaded machine.
    let ttl = Duration::from_secs(1);
    let b = Backends::start(kind, "pres_refresh", ttl).await?;
    let p = &b.presence;
    let live = member("alice", &b.conn(1), "n1", None)?;
    let stale = member("bob", &b.conn(2), "n1", None)?;
    p.join("chat:k", &live).await?;
    p.join("chat:k", &stale).await?;
    p.add_user_conn("alice", &user_conn(&live.conn, "n1"))
        .await?;
    p.add_user_conn("bob", &user_conn(&stale.conn, "n1"))
        .await?;
    p.heartbeat(&node_info("n1", 1)).await?;
    p.heartbeat(&node_info("n9", 1)).await?;
    let batch = RefreshBatch {
        members: vec![("chat:k".into(), live.clone())],
        user_conns: vec![("alice".into(), user_conn(&live.conn, "n1"))],
    };
    let started = Instant::now();
    while started.elapsed() < ttl * 3 {
        p.refresh(&batch).await?;
        p.heartbeat(&node_info("n1", 1)).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(started.elapsed() > ttl, "the TTL has not passed");
    ensure!(
        conns(&p.members("chat:k").await?) == [live.conn.clone()],
        "members after 3 TTLs: {:?}",
        conns(&p.members("chat:k").await?)
    );
    ensure!(
        p.user_conns("alice").await? == [user_conn(&live.conn, "n1")],
        "alice's conns after 3 TTLs"
    );
    ensure!(
        p.user_conns("bob").await?.is_empty(),
        "bob's conn did not expire"
    );
    ensure!(
        node_ids(&p.nodes().await?) == ["n1"],
        "nodes after 3 TTLs: {:?}",
        node_ids(&p.nodes().await?)
    );
    let expired = p.take_expired("chat:k").await?;
    ensure!(
        conns(&expired) == [stale.conn.clone()],
        "expired {:?}",
        conns(&expired)
    );
    b.shutdown().await;
    Ok(())
}

/// A refresh extends entries, it does not create them: a member that left,
/// or a user connection that was removed, between two refreshes of a batch
/// that still names it stays gone, and the refresh names it as missing;
/// `restore` writes missing entries back.
async fn refresh_does_not_bring_back_removed_entries(kind: Kind) -> Result<()> {
    let b = Backends::start(kind, "pres_norevive", LONG_TTL).await?;
    let p = &b.presence;
    let m1 = member("alice", &b.conn(1), "n1", None)?;
    let m2 = member("bob", &b.conn(2), "n1", None)?;
    let batch = RefreshBatch {
        members: vec![("chat:n".into(), m1.clone()), ("chat:n".into(), m2.clone())],
        user_conns: vec![
            ("alice".into(), user_conn(&m1.conn, "n1")),
            ("bob".into(), user_conn(&m2.conn, "n1")),
        ],
    };
    for m in [&m1, &m2] {
        p.join("chat:n", m).await?;
        p.add_user_conn(&m.user, &user_conn(&m.conn, "n1")).await?;
    }
    let missing = p.refresh(&batch).await?;
    ensure!(missing.is_empty(), "missing after joins: {missing:?}");
    ensure!(
        p.leave("chat:n", &m1.conn, &m1.user).await?.removed,
        "leave: not present"
    );
    p.remove_user_conn("alice", &m1.conn).await?;
    let missing = p.refresh(&batch).await?;
    ensure!(
        conns(
            &missing
                .members
                .iter()
                .map(|(_, m)| m.clone())
                .collect::<Vec<_>>()
        ) == [m1.conn.clone()]
            && missing.user_conns == [("alice".to_owned(), user_conn(&m1.conn, "n1"))],
        "missing after the leave: {missing:?}"
    );
    ensure!(
        conns(&p.members("chat:n").await?) == [m2.conn.clone()],
        "members {:?}",
        conns(&p.members("chat:n").await?)
    );
    ensure!(
        p.user_conns("alice").await?.is_empty(),
        "removed user conn came back"
    );
    ensure!(
        p.user_conns("bob").await? == [user_conn(&m2.conn, "n1")],
        "bob's conns"
    );
    let created = p.restore(&missing).await?;
    ensure!(
        conns(
            &created
                .members
                .iter()
                .map(|(_, m)| m.clone())
                .collect::<Vec<_>>()
        ) == [m1.conn.clone()]
            && created.user_conns == [("alice".to_owned(), user_conn(&m1.conn, "n1"))],
        "restore must report what it created: {created:?}"
    );
    // Restoring what exists (say its own join just wrote it) creates nothing.
    let again = p.restore(&batch).await?;
    ensure!(again.is_empty(), "a second restore created {again:?}");
    ensure!(
        conns(&p.members("chat:n").await?) == [m1.conn.clone(), m2.conn.clone()],
        "members after restore {:?}",
        conns(&p.members("chat:n").await?)
    );
    ensure!(
        p.user_conns("alice").await? == [user_conn(&m1.conn, "n1")],
        "alice's conns after restore"
    );
    ensure!(
        p.refresh(&batch).await?.is_empty(),
        "a refresh after the restore still misses entries"
    );
    b.shutdown().await;
    Ok(())
}

/// The user index: add (idempotent), list across nodes, remove; entries
/// that are not refreshed expire.
async fn user_index_add_remove_and_expiry(kind: Kind) -> Result<()> {
    let b = Backends::start(kind, "user_index", SHORT_TTL).await?;
    let p = &b.presence;
    let c1 = user_conn("n1.b1.1", "n1");
    let c2 = user_conn("n2.b1.1", "n2");
    p.add_user_conn("u1", &c1).await?;
    p.add_user_conn("u1", &c2).await?;
    p.add_user_conn("u1", &c1).await?;
    p.add_user_conn("u2", &user_conn("n1.b1.2", "n1")).await?;
    let got = sorted_user_conns(p.user_conns("u1").await?);
    ensure!(got == [c1.clone(), c2.clone()], "u1: {got:?}");
    ensure!(p.user_conns("nobody").await?.is_empty(), "unknown user");
    p.remove_user_conn("u1", &c1.conn).await?;
    p.remove_user_conn("u1", "n1.b1.404").await?;
    p.remove_user_conn("nobody", "n1.b1.404").await?;
    let got = p.user_conns("u1").await?;
    ensure!(got == [c2.clone()], "after remove: {got:?}");
    ensure!(p.user_conns("u2").await?.len() == 1, "remove touched u2");
    let pp = b.presence.clone();
    wait_presence(
        "u1's conns to expire",
        || pp.user_conns("u1"),
        Vec::is_empty,
    )
    .await?;
    wait_presence(
        "u2's conns to expire",
        || pp.user_conns("u2"),
        Vec::is_empty,
    )
    .await?;
    b.shutdown().await;
    Ok(())
}

/// The node registry: heartbeat registers or updates a node, nodes lists
/// the live ones, remove_node drops one, and a node that stops
/// heartbeating expires.
async fn node_registry_heartbeat_remove_and_expiry(kind: Kind) -> Result<()> {
    let b = Backends::start(kind, "nodes", SHORT_TTL).await?;
    let p = &b.presence;
    p.heartbeat(&node_info("n1", 1)).await?;
    p.heartbeat(&node_info("n2", 3)).await?;
    p.heartbeat(&node_info("n1", 5)).await?;
    let nodes = p.nodes().await?;
    ensure!(
        node_ids(&nodes) == ["n1", "n2"],
        "nodes {:?}",
        node_ids(&nodes)
    );
    let n1 = nodes.iter().find(|n| n.id == "n1").context("n1 missing")?;
    ensure!(
        n1.connections == 5
            && n1.subscriptions == 2
            && n1.started_at == 1_700_000_000
            && n1.version == "0.1.0-test",
        "heartbeat did not update n1: {n1:?}"
    );
    p.remove_node("n2").await?;
    p.remove_node("n404").await?;
    ensure!(node_ids(&p.nodes().await?) == ["n1"], "after remove_node");
    let pp = b.presence.clone();
    wait_presence("n1 to expire", || pp.nodes(), Vec::is_empty).await?;
    b.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------
// Instantiation
// ---------------------------------------------------------------------------

/// Generates `memory::<name>` and `redis::<name>` for each contract.
macro_rules! contracts {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(super::Kind::Memory).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(super::Kind::Redis).await
                }
            )*
        }
        mod redis_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(super::Kind::RedisCluster).await
                }
            )*
        }
    };
}

contracts!(
    publish_without_history_returns_none_and_delivers,
    publish_with_history_assigns_contiguous_offsets_in_order,
    concurrent_publishers_keep_offset_order,
    caller_set_offset_is_ignored,
    join_and_leave_arrive_in_channel_order,
    directed_envelopes_arrive,
    interest_turned_off_and_on_again_still_receives,
    subscribe_then_read_leaves_no_gap,
    empty_channel_read_fixes_the_epoch,
    read_since_and_limit,
    history_is_trimmed_to_size,
    expired_stream_restarts_with_a_new_epoch,
    presence_join_members_leave,
    member_transitions_are_per_user_and_exactly_once,
    expired_members_are_taken_exactly_once,
    refresh_and_heartbeat_keep_entries_alive,
    refresh_does_not_bring_back_removed_entries,
    user_index_add_remove_and_expiry,
    node_registry_heartbeat_remove_and_expiry,
);

// ---------------------------------------------------------------------------
// Backend-specific behaviour (deliberately not part of the shared contract)
// ---------------------------------------------------------------------------

/// Interest-based routing, which only the Redis backplane has: the memory
/// backplane is one node and delivers everything to it.
mod redis_only {
    use super::*;

    /// Without a subscription a node receives none of a channel's or a
    /// user's traffic, nor another node's connection messages.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_delivery_without_subscribe() -> Result<()> {
        let b = Backends::start(Kind::Redis, "no_sub", LONG_TTL).await?;
        b.backplane
            .publish(publication("chat:quiet", "1")?, None)
            .await?;
        b.backplane
            .publish(publication("hist:quiet", "2")?, Some(HISTORY))
            .await?;
        b.backplane
            .send(Envelope::Join(PresenceEvent {
                channel: "chat:quiet".into(),
                user: "alice".into(),
                conn: b.conn(1),
            }))
            .await?;
        b.backplane
            .send(Envelope::User {
                user: "quiet-user".into(),
                data: raw("3")?,
            })
            .await?;
        b.backplane
            .send(Envelope::Conn {
                conn: "n2.b7.1".into(),
                data: raw("4")?,
            })
            .await?;
        b.fence("no_sub").await?;
        let got = b.sink.snapshot();
        ensure!(
            got.len() == 1,
            "delivered without a subscription: {}",
            describe(&got)
        );
        b.shutdown().await;
        Ok(())
    }

    /// After the last unsubscribe reached Redis, the node stops receiving
    /// the channel.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unsubscribe_stops_delivery() -> Result<()> {
        let b = Backends::start(Kind::Redis, "unsub", LONG_TTL).await?;
        let ctx = b.redis.as_ref().context("no redis context")?;
        let name = Keys::new(&ctx.prefix).channel("chat:u");
        let topic = Topic::Channel("chat:u".into());
        b.subscribe(topic.clone()).await?;
        ensure!(ctx.server.numsub(&name).await? == 1, "not subscribed");
        b.backplane
            .publish(publication("chat:u", "1")?, None)
            .await?;
        b.sink.wait_messages("chat:u", 1).await?;
        b.unsubscribe(topic);
        let server = ctx.server.clone();
        eventually(EVENTUALLY, "UNSUBSCRIBE to reach Redis", || {
            let server = server.clone();
            let name = name.clone();
            async move { matches!(server.numsub(&name).await, Ok(0)) }
        })
        .await?;
        b.backplane
            .publish(publication("chat:u", "2")?, None)
            .await?;
        b.fence("unsub").await?;
        let got = b.sink.messages("chat:u");
        ensure!(got.len() == 1, "delivered after unsubscribe: {}", got.len());
        b.shutdown().await;
        Ok(())
    }
}

/// The embedded backend's documented extra: delivery is synchronous.
mod memory_only {
    use super::*;

    /// When `publish` returns, the sink already holds the publication.
    #[tokio::test]
    async fn delivery_is_synchronous() -> Result<()> {
        let b = Backends::start(Kind::Memory, "sync", LONG_TTL).await?;
        b.backplane
            .publish(publication("chat:s", "1")?, Some(HISTORY))
            .await?;
        ensure!(b.sink.messages("chat:s").len() == 1, "not delivered yet");
        Ok(())
    }
}
