//! Webhooks: the events the node reports to the application backend
//! ([`Event`]) and the handle that takes them ([`Webhooks::emit`]).
//!
//! Each event is emitted once per cluster, by the node that made the change
//! (the one whose subscribe, leave or close caused it). `emit` never blocks
//! and never fails the client's op: delivery happens elsewhere, through a
//! bounded queue.

use serde::Serialize;
use serde_json::value::RawValue;

/// One webhook event.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum Event {
    /// A channel got its first subscriber anywhere in the cluster.
    ChannelOccupied {
        /// Channel name.
        channel: String,
    },
    /// A channel lost its last subscriber everywhere in the cluster.
    ChannelVacated {
        /// Channel name.
        channel: String,
    },
    /// A user's first connection joined a presence channel (cluster-wide).
    MemberAdded {
        /// Channel name.
        channel: String,
        /// User id.
        user: String,
    },
    /// A user's last connection left a presence channel (cluster-wide).
    MemberRemoved {
        /// Channel name.
        channel: String,
        /// User id.
        user: String,
    },
    /// A client published to a channel whose namespace opts in.
    ClientPublish {
        /// Channel name.
        channel: String,
        /// Publishing user (`None` for anonymous).
        user: Option<String>,
        /// Publishing connection.
        conn: String,
        /// The publication's data.
        data: Box<RawValue>,
    },
    /// A connection closed.
    ConnectionClosed {
        /// Connection id.
        conn: String,
        /// User id (`None` for anonymous).
        user: Option<String>,
        /// WebSocket close code.
        code: u16,
        /// Close reason label.
        reason: String,
    },
}

/// The node's webhook sender.
#[derive(Debug, Default)]
pub struct Webhooks {}

impl Webhooks {
    /// A sender with no webhook configured: every event is dropped.
    pub fn disabled() -> Self {
        Self {}
    }

    /// Whether any webhook is configured (callers may skip building events).
    pub fn enabled(&self) -> bool {
        false
    }

    /// Queue `event` for delivery; never blocks.
    pub fn emit(&self, event: Event) {
        let _ = event;
    }
}
