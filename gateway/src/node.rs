//! The node: configuration, local hub and the three backends, plus the
//! operations both client connections and the HTTP API perform (publish,
//! subscribe with recovery, presence, directed sends) and the maintenance
//! loop (presence refresh, expiry sweep, node heartbeat).
//!
//! Failures of a backend call become `unavailable` for the caller, are
//! counted in `gateway_backend_errors_total{op}` and logged at debug (the
//! backend itself logs its state transitions at warn, once).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::auth::Auth;
use crate::backplane::{
    Backplane, BackplaneError, Deliver, Envelope, MemoryBackplane, PresenceEvent, Publication,
    Topic,
};
use crate::config::{Config, NamespaceOptions};
use crate::history::{History, MemoryHistory};
use crate::hub::{frame, message_frame, AddOutcome, Hub};
use crate::metrics as m;
use crate::outbox::ConnHandle;
use crate::presence::{Member, MemoryPresence, NodeInfo, Presence, RefreshBatch, UserConn};
use crate::protocol::{ErrorCode, ReplyError, ServerFrame, Since};
use crate::shutdown::Shutdown;

/// Pinger slots per `ping_interval`: one per hub shard, so a tick pings
/// one shard's connections without looking at the others.
const PING_SLOTS: u32 = crate::hub::SHARDS as u32;

/// Errors building a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A JWT key could not be loaded.
    #[error("jwt key: {0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
    /// The backend could not be set up.
    #[error("backend: {0}")]
    Backend(#[from] BackplaneError),
}

/// One gateway node. Shared (`Arc`) by every connection and API handler.
pub struct Node {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Local registry.
    pub hub: Arc<Hub>,
    /// Cross-node fan-out.
    pub backplane: Arc<dyn Backplane>,
    /// History reads.
    pub history: Arc<dyn History>,
    /// Presence, user index, node registry.
    pub presence: Arc<dyn Presence>,
    /// Authenticator.
    pub auth: Auth,
    /// Shutdown signal and task tracker.
    pub shutdown: Shutdown,
    /// Unix seconds at start.
    pub started_at: u64,
    memory_history: Option<Arc<MemoryHistory>>,
    draining: AtomicBool,
    slots: AtomicUsize,
    boot: String,
    seq: AtomicU64,
}

fn backend_error(op: &'static str, e: &BackplaneError) -> ReplyError {
    metrics::counter!(m::BACKEND_ERRORS, "op" => op).increment(1);
    tracing::debug!(op, error = %e, "backend call failed");
    ReplyError::unavailable()
}

impl Node {
    /// Build a node on the embedded backends, or on Redis when configured.
    pub async fn new(config: Config, shutdown: Shutdown) -> Result<Arc<Node>, NodeError> {
        let config = Arc::new(config);
        let auth = Auth::new(&config)?;
        let hub = Arc::new(Hub::new(config.node_id.clone()));
        let sink: Arc<dyn Deliver> = hub.clone();
        let (backplane, history, presence, memory_history): (_, _, _, Option<Arc<MemoryHistory>>) =
            match &config.redis_url {
                None => {
                    let history = Arc::new(MemoryHistory::default());
                    let backplane: Arc<dyn Backplane> =
                        Arc::new(MemoryBackplane::new(sink, history.clone()));
                    let presence: Arc<dyn Presence> =
                        Arc::new(MemoryPresence::new(config.presence_ttl));
                    let reader: Arc<dyn History> = history.clone();
                    (backplane, reader, presence, Some(history))
                }
                Some(url) => {
                    let (b, h, p) = redis_backends(&config, url, sink).await?;
                    (b, h, p, None)
                }
            };
        Ok(Arc::new(Node {
            started_at: crate::clock::now_us() / 1_000_000,
            config,
            hub,
            backplane,
            history,
            presence,
            auth,
            shutdown,
            memory_history,
            draining: AtomicBool::new(false),
            slots: AtomicUsize::new(0),
            boot: format!("{:04x}", rand::random::<u16>()),
            seq: AtomicU64::new(0),
        }))
    }

    /// The pinger: every `ping_interval / PING_SLOTS` it asks the writers of
    /// one slot's connections to ping, so each connection is pinged once per
    /// `ping_interval` without a timer of its own (one wake-up of this task
    /// instead of thousands of timer entries). Ends on shutdown.
    pub async fn run_pinger(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.ping_interval / PING_SLOTS);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick fires at once: start with the slot pinged last, so
        // no connection is pinged right after it connected.
        let mut slot = PING_SLOTS - 1;
        loop {
            tokio::select! {
                _ = self.shutdown.token.cancelled() => break,
                _ = tick.tick() => {
                    slot = (slot + 1) % PING_SLOTS;
                    self.hub.for_each_conn_in_shard(slot as usize, ConnHandle::request_ping);
                }
            }
        }
    }

    /// A new connection id: `<node>.<boot>.<seq>`.
    pub fn next_conn_id(&self) -> Arc<str> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        Arc::from(format!("{}.{}.{n}", self.config.node_id, self.boot))
    }

    /// Take a connection slot; false when the node is full.
    pub fn take_slot(&self) -> bool {
        let prev = self.slots.fetch_add(1, Ordering::AcqRel);
        if prev >= self.config.max_connections {
            self.slots.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Connection slots in use: connections from before the upgrade until
    /// their close handshake has finished.
    pub fn open_slots(&self) -> usize {
        self.slots.load(Ordering::Acquire)
    }

    /// Give a slot back.
    pub fn release_slot(&self) {
        self.slots.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Start draining: readiness fails, new upgrades are refused.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Ready to take traffic: not draining and the backplane is healthy.
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.backplane.is_healthy()
    }

    /// Options of a channel's namespace, or `bad_request` when unknown.
    pub fn namespace(&self, channel: &str) -> Result<&NamespaceOptions, ReplyError> {
        self.config
            .namespace(channel)
            .ok_or_else(|| ReplyError::bad_request("unknown namespace"))
    }

    /// Publish to a channel. Returns the offset (None without history).
    pub async fn publish(
        &self,
        channel: &str,
        data: Box<RawValue>,
        from: Option<String>,
        exclude: Option<String>,
        source: &'static str,
    ) -> Result<Option<u64>, ReplyError> {
        let ns = self.namespace(channel)?;
        let publication = Publication::new(channel.to_owned(), data, from, exclude);
        let position = self
            .backplane
            .publish(publication, ns.history())
            .await
            .map_err(|e| backend_error("publish", &e))?;
        metrics::counter!(m::PUBLICATIONS, "source" => source).increment(1);
        Ok(position.map(|p| p.offset))
    }

    /// Send a directed envelope (broadcast, user, conn, disconnects).
    pub async fn send(&self, envelope: Envelope) -> Result<(), ReplyError> {
        self.backplane
            .send(envelope)
            .await
            .map_err(|e| backend_error("send", &e))
    }

    /// Subscribe `conn` to `channel`: subscribe the node to the channel's
    /// traffic, read history, join presence, then queue the reply, the
    /// replay and whatever arrived meanwhile, in that order, with no gap and
    /// no duplicate. Permission checks are the caller's.
    pub async fn subscribe(
        &self,
        conn: &Arc<ConnHandle>,
        channel: &str,
        since: Option<Since>,
        id: Option<&Value>,
    ) -> Result<(), ReplyError> {
        let ns = self.namespace(channel)?.clone();
        if self.hub.add_subscriber(channel, conn) == AddOutcome::AlreadySubscribed {
            return Err(ReplyError::bad_request("already subscribed"));
        }
        let topic = Topic::Channel(channel.to_owned());
        if let Err(e) = self.backplane.subscribe(topic.clone()).await {
            self.hub.remove_subscriber(channel, conn);
            return Err(backend_error("subscribe", &e));
        }
        match self.subscribe_rest(conn, channel, &ns, since, id).await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.hub.remove_subscriber(channel, conn);
                self.backplane.unsubscribe(topic).await;
                Err(e)
            }
        }
    }

    async fn subscribe_rest(
        &self,
        conn: &Arc<ConnHandle>,
        channel: &str,
        ns: &NamespaceOptions,
        since: Option<Since>,
        id: Option<&Value>,
    ) -> Result<(), ReplyError> {
        let mut head = Vec::new();
        let mut top = None;
        let mut epoch = None;
        let mut recovered = since.as_ref().map(|_| false);
        let mut replay = Vec::new();
        if let Some(opts) = ns.history() {
            let from = since.as_ref().map(|s| s.offset).unwrap_or(u64::MAX);
            let limit = if since.is_some() { opts.size } else { 0 };
            let read = self
                .history
                .read(channel, from, limit, opts)
                .await
                .map_err(|e| backend_error("history_read", &e))?;
            top = Some(read.position.offset);
            if let Some(s) = &since {
                let epoch_ok = s
                    .epoch
                    .as_deref()
                    .is_none_or(|e| e.is_empty() || e == read.position.epoch);
                if epoch_ok && s.offset <= read.position.offset {
                    recovered = Some(read.first_offset <= s.offset + 1);
                    replay = read.publications;
                }
                metrics::counter!(m::HISTORY_REPLAYS, "recovered" => if recovered == Some(true) { "true" } else { "false" })
                    .increment(1);
            }
            epoch = Some(read.position.epoch);
        }
        if ns.tracks_presence() {
            let member = self.hub.member(conn);
            self.presence
                .join(channel, &member)
                .await
                .map_err(|e| backend_error("presence_join", &e))?;
            if ns.join_leave {
                let event = PresenceEvent {
                    channel: channel.to_owned(),
                    user: member.user,
                    conn: member.conn,
                };
                if let Err(e) = self.backplane.send(Envelope::Join(event)).await {
                    backend_error("presence_event", &e);
                }
            }
        }
        head.push(frame(&ServerFrame::Subscribed {
            id,
            channel,
            offset: top,
            epoch: epoch.as_deref(),
            recovered,
        }));
        head.extend(replay.iter().map(message_frame));
        let position = top.zip(epoch.as_deref());
        self.hub.finish_subscribe(channel, conn, head, position);
        Ok(())
    }

    /// Remove `conn` from `channel`: leave presence (with a leave event) and
    /// drop the node's reference on the channel. Returns whether it was
    /// subscribed.
    pub async fn unsubscribe(&self, conn: &ConnHandle, channel: &str) -> bool {
        if !self.hub.remove_subscriber(channel, conn) {
            return false;
        }
        if let Some(ns) = self.config.namespace(channel) {
            if ns.tracks_presence() {
                match self.presence.leave(channel, &conn.id).await {
                    Ok(true) if ns.join_leave => {
                        let event = PresenceEvent {
                            channel: channel.to_owned(),
                            user: conn.user.as_deref().unwrap_or_default().to_owned(),
                            conn: conn.id.to_string(),
                        };
                        if let Err(e) = self.backplane.send(Envelope::Leave(event)).await {
                            backend_error("presence_event", &e);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        backend_error("presence_leave", &e);
                    }
                }
            }
        }
        self.backplane
            .unsubscribe(Topic::Channel(channel.to_owned()))
            .await;
        true
    }

    /// Members of a presence-enabled channel.
    pub async fn presence_members(&self, channel: &str) -> Result<Vec<Member>, ReplyError> {
        if !self.namespace(channel)?.tracks_presence() {
            return Err(ReplyError::bad_request(
                "presence is not enabled for this namespace",
            ));
        }
        self.presence
            .members(channel)
            .await
            .map_err(|e| backend_error("presence_members", &e))
    }

    /// Register a new connection: hub, user index.
    pub async fn register(&self, conn: &Arc<ConnHandle>) {
        self.hub.add_conn(conn);
        if let Some(user) = &conn.user {
            let uc = UserConn {
                conn: conn.id.to_string(),
                node: self.config.node_id.clone(),
            };
            if let Err(e) = self.presence.add_user_conn(user, &uc).await {
                backend_error("user_index_add", &e);
            }
        }
    }

    /// Unregister a closed connection: every subscription, the hub, the
    /// user index and the node's reference on the user topic.
    pub async fn unregister(&self, conn: &ConnHandle, channels: impl IntoIterator<Item = String>) {
        for channel in channels {
            self.unsubscribe(conn, &channel).await;
        }
        self.hub.remove_conn(conn);
        if let Some(user) = &conn.user {
            if let Err(e) = self.presence.remove_user_conn(user, &conn.id).await {
                backend_error("user_index_remove", &e);
            }
        }
    }

    /// This node's registry entry.
    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            id: self.config.node_id.clone(),
            connections: self.hub.connection_count() as u64,
            subscriptions: self.hub.channel_count() as u64,
            started_at: self.started_at,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    /// Refresh every presence and user-index entry this node owns (a batch
    /// per hub shard), and drop expired in-memory history streams. (The registry
    /// heartbeat has its own, shorter interval.)
    pub async fn maintain(&self) {
        let config = self.config.clone();
        let tracks = |ch: &str| {
            config
                .namespace(ch)
                .is_some_and(NamespaceOptions::tracks_presence)
        };
        let started = tokio::time::Instant::now();
        // One batch per hub shard: the transient copy of every entry stays
        // small (a whole-node batch of 100k connections would be tens of MB
        // every refresh), at about the same number of Redis pipelines.
        for shard in 0..crate::hub::SHARDS {
            let mut user_conns = Vec::new();
            self.hub.for_each_conn_in_shard(shard, |c| {
                if let Some(u) = &c.user {
                    user_conns.push((
                        u.to_string(),
                        UserConn {
                            conn: c.id.to_string(),
                            node: self.config.node_id.clone(),
                        },
                    ));
                }
            });
            let batch = RefreshBatch {
                members: self.hub.presence_members(shard, tracks),
                user_conns,
            };
            if batch.is_empty() {
                continue;
            }
            match self.presence.refresh(&batch).await {
                Ok(missing) if !missing.is_empty() => self.restore_presence(missing).await,
                Ok(_) => {}
                Err(e) => {
                    // The backend is failing: the rest waits for the next
                    // tick (or the reconnect's refresh), not for a timeout
                    // per shard.
                    backend_error("presence_refresh", &e);
                    break;
                }
            }
        }
        metrics::histogram!(m::PRESENCE_REFRESH).record(started.elapsed().as_secs_f64());
        if let Some(h) = &self.memory_history {
            h.sweep();
        }
    }

    /// Write back the entries a refresh found gone (the backend lost them,
    /// or this node could not refresh for a whole TTL and another node took
    /// them as expired and sent their leave events), keeping only those that
    /// are still live here (a subscribe still in progress writes its own
    /// entry); a member the restore really re-created is announced again
    /// with a join event on a join/leave channel.
    async fn restore_presence(&self, mut missing: RefreshBatch) {
        missing
            .members
            .retain(|(channel, m)| self.hub.is_live_subscriber(channel, &m.conn));
        missing
            .user_conns
            .retain(|(_, c)| self.hub.conn(&c.conn).is_some());
        if missing.is_empty() {
            return;
        }
        let created = match self.presence.restore(&missing).await {
            Ok(created) => created,
            Err(e) => {
                backend_error("presence_restore", &e);
                return;
            }
        };
        if created.is_empty() {
            return;
        }
        metrics::counter!(m::PRESENCE_RESTORED).increment(created.len() as u64);
        tracing::info!(
            members = created.members.len(),
            user_conns = created.user_conns.len(),
            "presence entries were gone from the backend; wrote them back"
        );
        for (channel, member) in created.members {
            if !self
                .config
                .namespace(&channel)
                .is_some_and(|ns| ns.join_leave)
            {
                continue;
            }
            let event = PresenceEvent {
                channel,
                user: member.user,
                conn: member.conn,
            };
            if let Err(e) = self.backplane.send(Envelope::Join(event)).await {
                backend_error("presence_event", &e);
            }
        }
    }

    /// Publish this node's registry entry (counts for GET /api/nodes).
    pub async fn heartbeat(&self) {
        if let Err(e) = self.presence.heartbeat(&self.info()).await {
            backend_error("node_heartbeat", &e);
        }
    }

    /// Hand expired members of local join/leave channels to leave events.
    pub async fn sweep_expired(&self) {
        let config = self.config.clone();
        let channels = self
            .hub
            .channel_names(|ch| config.namespace(ch).is_some_and(|ns| ns.join_leave));
        for channel in channels {
            match self.presence.take_expired(&channel).await {
                Ok(members) => {
                    for member in members {
                        let event = PresenceEvent {
                            channel: channel.clone(),
                            user: member.user,
                            conn: member.conn,
                        };
                        if let Err(e) = self.backplane.send(Envelope::Leave(event)).await {
                            backend_error("presence_event", &e);
                        }
                    }
                }
                Err(e) => {
                    backend_error("presence_expire", &e);
                }
            }
        }
    }

    /// The maintenance loop: refresh every `presence_refresh`, sweep expired
    /// members a few times per TTL. Ends on shutdown.
    pub async fn run_maintenance(self: Arc<Self>) {
        let mut refresh = tokio::time::interval(self.config.presence_refresh);
        let sweep_every = (self.config.presence_ttl / 4)
            .clamp(Duration::from_millis(200), Duration::from_secs(5));
        let mut sweep = tokio::time::interval(sweep_every);
        // The registry's counts should be fresher than the presence refresh.
        let mut heartbeat =
            tokio::time::interval(self.config.presence_refresh.min(Duration::from_secs(5)));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut health = tokio::time::interval(Duration::from_millis(250));
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_generation = self.backplane.generation();
        loop {
            tokio::select! {
                _ = self.shutdown.token.cancelled() => break,
                _ = refresh.tick() => self.maintain().await,
                _ = heartbeat.tick() => self.heartbeat().await,
                _ = sweep.tick() => self.sweep_expired().await,
                _ = health.tick() => {
                    // After a reconnect the backend may have lost our
                    // entries: rewrite them now, not at the next refresh.
                    let generation = self.backplane.generation();
                    if generation != last_generation && self.backplane.is_healthy() {
                        tracing::info!("backplane reconnected, refreshing presence");
                        last_generation = generation;
                        self.maintain().await;
                        self.heartbeat().await;
                    }
                }
            }
            metrics::gauge!(m::BACKPLANE_UP).set(if self.backplane.is_healthy() {
                1.0
            } else {
                0.0
            });
        }
        if let Err(e) = self.presence.remove_node(&self.config.node_id).await {
            backend_error("node_remove", &e);
        }
    }
}

type Backends = (Arc<dyn Backplane>, Arc<dyn History>, Arc<dyn Presence>);

async fn redis_backends(
    config: &Config,
    url: &str,
    sink: Arc<dyn Deliver>,
) -> Result<Backends, BackplaneError> {
    let b = crate::redis::connect(
        crate::redis::RedisSettings {
            url: url.to_owned(),
            prefix: config.redis_prefix.clone(),
            node_id: config.node_id.clone(),
            timeout: config.redis_timeout,
            presence_ttl: config.presence_ttl,
        },
        sink,
    )
    .await?;
    Ok((b.backplane, b.history, b.presence))
}

/// Encode an `error` frame.
pub fn error_frame(id: Option<&Value>, e: &ReplyError) -> Utf8Bytes {
    metrics::counter!(m::ERRORS, "code" => e.code.as_str()).increment(1);
    frame(&ServerFrame::Error {
        id,
        code: e.code,
        message: &e.message,
    })
}

impl ReplyError {
    /// HTTP status for this error code.
    pub fn status(&self) -> u16 {
        match self.code {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}
