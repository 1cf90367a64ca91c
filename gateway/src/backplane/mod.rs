//! Cross-node fan-out: the [`Backplane`] trait and its envelope types.
//!
//! A backplane carries [`Envelope`]s between nodes. Every node hands what it
//! receives to its [`Deliver`] sink (the local hub), which fans it out to the
//! node's own connections. Guarantees, for every implementation:
//!
//! - **At most once** between nodes. A successful [`Backplane::publish`] means
//!   the backend accepted the publication (and appended it to history when
//!   asked); it does not mean any socket got it. History offsets are what
//!   let a client prove it missed nothing.
//! - **Per-channel order**: all nodes deliver one channel's publications in
//!   the same order, the publishing node's own subscribers included (they go
//!   through the backend like everyone else's).
//! - **Interest-based routing**: a node receives a channel's (or user's)
//!   traffic only while its hub holds a local reference: the hub counts its
//!   subscribers and reports only the first and the last to the backend's
//!   [`Interest`]; [`Backplane::ready`] then waits until the traffic flows.
//! - **No silent failure**: while the backend is unreachable every call
//!   fails fast with [`BackplaneError::Unavailable`] and
//!   [`Backplane::is_healthy`] is false.

pub mod memory;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use memory::MemoryBackplane;

/// A channel publication as it travels between nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Publication {
    /// Application channel name (validated).
    pub channel: String,
    /// The payload, kept as raw JSON so no node re-parses it.
    pub data: Box<RawValue>,
    /// User id of the publisher; `None` for the HTTP API or anonymous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Offset in the channel's history stream; `None` without history.
    /// Set by the backend on publish, never by the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Epoch of the stream `offset` belongs to; set with `offset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// Connection id that must not receive this publication (the publisher
    /// without `echo`, or the HTTP API's `exclude`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<String>,
    /// Publish time, microseconds since the Unix epoch (for the lag metric).
    #[serde(default)]
    pub ts_us: u64,
}

impl Publication {
    /// A publication as a publisher hands it to [`Backplane::publish`]:
    /// stamped with the current time (the one place `ts_us` is set), without
    /// offset or epoch (only the backend sets those, so a caller can never
    /// inject one).
    pub fn new(
        channel: String,
        data: Box<RawValue>,
        from: Option<String>,
        exclude: Option<String>,
    ) -> Self {
        Self {
            channel,
            data,
            from,
            offset: None,
            epoch: None,
            exclude,
            ts_us: crate::clock::now_us(),
        }
    }
}

impl Publication {
    /// Drop a position the caller set: the offset and epoch are the
    /// backend's (the one place that enforces it; both backends call it
    /// first thing in `publish`).
    pub(crate) fn clear_position(&mut self) {
        self.offset = None;
        self.epoch = None;
    }
}

/// A presence change pushed to a channel's subscribers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PresenceEvent {
    /// Application channel name.
    pub channel: String,
    /// User id of the member ("" for anonymous).
    pub user: String,
    /// Connection id of the member.
    pub conn: String,
}

/// What a backplane carries. Serialized as externally tagged JSON
/// (`{"message": {...}}`): `RawValue` payloads cannot live inside an
/// internally tagged enum, because serde buffers those.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Envelope {
    /// A channel publication (routed by channel).
    Message(Publication),
    /// A member joined a channel (routed by channel).
    Join(PresenceEvent),
    /// A member left a channel (routed by channel).
    Leave(PresenceEvent),
    /// To every connection of the cluster.
    Broadcast {
        /// Raw JSON payload.
        data: Box<RawValue>,
    },
    /// To every connection of one user.
    User {
        /// Target user id.
        user: String,
        /// Raw JSON payload.
        data: Box<RawValue>,
    },
    /// To one connection.
    Conn {
        /// Target connection id.
        conn: String,
        /// Raw JSON payload.
        data: Box<RawValue>,
    },
    /// Close every connection of one user.
    DisconnectUser {
        /// Target user id.
        user: String,
        /// WebSocket close code.
        code: u16,
        /// Close reason.
        reason: String,
    },
    /// Close one connection.
    DisconnectConn {
        /// Target connection id.
        conn: String,
        /// WebSocket close code.
        code: u16,
        /// Close reason.
        reason: String,
    },
    /// Subscribe (or unsubscribe) every connection of one user to a channel
    /// (server-side subscriptions; each connection's own task does it).
    SubscribeUser {
        /// Target user id.
        user: String,
        /// Channel (validated, namespace checked by the sender).
        channel: String,
        /// Subscribe (true) or unsubscribe (false).
        subscribe: bool,
    },
    /// Subscribe (or unsubscribe) one connection to a channel.
    SubscribeConn {
        /// Target connection id.
        conn: String,
        /// Channel (validated, namespace checked by the sender).
        channel: String,
        /// Subscribe (true) or unsubscribe (false).
        subscribe: bool,
    },
}

impl Envelope {
    /// Every value of [`Envelope::kind`] (a metric label set).
    pub const KINDS: [&'static str; 10] = [
        "message",
        "join",
        "leave",
        "broadcast",
        "user",
        "conn",
        "disconnect_user",
        "disconnect_conn",
        "subscribe_user",
        "subscribe_conn",
    ];

    /// A short label naming the variant (one of [`Envelope::KINDS`]).
    pub fn kind(&self) -> &'static str {
        let i = match self {
            Envelope::Message(_) => 0,
            Envelope::Join(_) => 1,
            Envelope::Leave(_) => 2,
            Envelope::Broadcast { .. } => 3,
            Envelope::User { .. } => 4,
            Envelope::Conn { .. } => 5,
            Envelope::DisconnectUser { .. } => 6,
            Envelope::DisconnectConn { .. } => 7,
            Envelope::SubscribeUser { .. } => 8,
            Envelope::SubscribeConn { .. } => 9,
        };
        Self::KINDS[i]
    }

    /// The routing topic this envelope travels on.
    pub fn topic(&self) -> Topic {
        match self {
            Envelope::Message(p) => Topic::Channel(p.channel.clone()),
            Envelope::Join(e) | Envelope::Leave(e) => Topic::Channel(e.channel.clone()),
            Envelope::Broadcast { .. } => Topic::All,
            Envelope::User { user, .. }
            | Envelope::DisconnectUser { user, .. }
            | Envelope::SubscribeUser { user, .. } => Topic::User(user.clone()),
            Envelope::Conn { conn, .. }
            | Envelope::DisconnectConn { conn, .. }
            | Envelope::SubscribeConn { conn, .. } => Topic::Node(node_of_conn(conn).to_owned()),
        }
    }
}

/// Where an envelope is routed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// One application channel.
    Channel(String),
    /// Every connection of one user.
    User(String),
    /// One node (connection-directed messages and control).
    Node(String),
    /// Every node.
    All,
}

/// The node id part of a connection id (`<node>.<boot>.<seq>`).
pub fn node_of_conn(conn: &str) -> &str {
    conn.split('.').next().unwrap_or(conn)
}

/// History settings of a channel's namespace, passed along with a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryOptions {
    /// Publications retained (> 0).
    pub size: usize,
    /// The stream expires this long after its last publication.
    pub ttl: Duration,
    /// Replicas that must confirm an append before the publish succeeds
    /// (Redis `WAIT`; 0: none). Only the Redis backplane waits; config
    /// refuses a value > 0 without Redis.
    pub min_replicas: usize,
}

/// A position in a channel's history stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// Offset of the newest publication (0 when the stream is empty).
    pub offset: u64,
    /// Identity of the stream; changes whenever the stream is lost.
    pub epoch: String,
}

/// Where the hub reports that it took its first local reference on a
/// channel or user topic (`on`) or dropped its last (`!on`).
///
/// Called under the hub's shard lock, so the calls for one topic arrive in
/// the order of the hub's changes; it must not block or call back into the
/// hub (it records the wanted state and wakes the backend's subscriber).
pub trait Interest: Send + Sync + 'static {
    /// Record whether this node wants `topic`'s traffic.
    fn set(&self, topic: &Topic, on: bool);
}

/// The [`Interest`] of an in-process backplane: every topic is always
/// received, so there is nothing to record.
pub struct NoInterest;

impl Interest for NoInterest {
    fn set(&self, _topic: &Topic, _on: bool) {}
}

/// Receives what the backplane delivers to this node. Implemented by the hub.
///
/// Called from the backplane's receive path, one envelope at a time and in
/// arrival order per topic; it must not block (it only pushes to bounded
/// queues).
pub trait Deliver: Send + Sync + 'static {
    /// Fan an envelope out to the local connections it concerns.
    fn deliver(&self, envelope: Envelope);
}

/// Errors of a backplane call.
#[derive(Debug, thiserror::Error)]
pub enum BackplaneError {
    /// The backend cannot take the call now (down, timed out, reconnecting).
    #[error("backplane unavailable: {0}")]
    Unavailable(String),
    /// The backend answered something we cannot use.
    #[error("backplane protocol error: {0}")]
    Protocol(String),
}

/// Cross-node fan-out. See the module docs for the guarantees.
#[async_trait]
pub trait Backplane: Send + Sync + 'static {
    /// Publish a channel publication (made by [`Publication::new`]; an
    /// offset or epoch the caller set anyway is ignored). With `history`,
    /// append it to the channel's
    /// stream and publish with the new offset atomically, returning the new
    /// position; without, return `None`.
    async fn publish(
        &self,
        publication: Publication,
        history: Option<HistoryOptions>,
    ) -> Result<Option<StreamPosition>, BackplaneError>;

    /// Send a non-publication envelope (join/leave, broadcast, user, conn,
    /// disconnects) along its [`Envelope::topic`].
    async fn send(&self, envelope: Envelope) -> Result<(), BackplaneError>;

    /// Wait until this node receives `topic`'s traffic, so that a history
    /// read that follows cannot miss a publication. The hub has turned the
    /// topic's [`Interest`] on before anyone waits. Returns at once (no
    /// round trip) when the topic is already received; fails fast with
    /// `Unavailable` while the link is down and within the backend's timeout
    /// otherwise. Node and broadcast topics are always received.
    async fn ready(&self, topic: &Topic) -> Result<(), BackplaneError>;

    /// Whether the backend is reachable and the receive path is alive.
    fn is_healthy(&self) -> bool;

    /// Changes every time the link to the backend is (re)established; a
    /// change means the backend may have lost what this node wrote (the
    /// node then re-writes its presence at once). Constant for in-process
    /// backends.
    fn generation(&self) -> u64 {
        0
    }

    /// Stop background tasks (called once, during shutdown).
    async fn shutdown(&self) {}
}
