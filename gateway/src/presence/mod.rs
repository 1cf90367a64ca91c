//! Who is where: the [`Presence`] trait (channel members, the per-user
//! connection index and the node registry).
//!
//! Entries are owned by the node that holds the connection. Every entry has
//! an expiry: the owning node refreshes its own entries in batches well inside
//! the TTL, so the entries of a node that crashed vanish within one TTL; a
//! backend with a node registry (Redis) also lets any live node purge the
//! members of a node whose heartbeat is older than the node timeout
//! ([`Presence::purge_stale_nodes`]).
//! Readers never see an expired entry.

pub mod memory;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::backplane::BackplaneError;

pub use memory::MemoryPresence;

/// One connection present in a channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    /// User id ("" for anonymous).
    pub user: String,
    /// Connection id.
    pub conn: String,
    /// Node holding the connection.
    pub node: String,
    /// The token's `info` claim, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<RawValue>>,
}

/// One connection of a user, as the user index reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserConn {
    /// Connection id.
    pub conn: String,
    /// Node holding the connection.
    pub node: String,
}

/// A node in the registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node id.
    pub id: String,
    /// Open client connections.
    pub connections: u64,
    /// Channels with at least one local subscriber.
    pub subscriptions: u64,
    /// Start time, seconds since the Unix epoch.
    pub started_at: u64,
    /// Gateway version.
    pub version: String,
}

/// Everything a node refreshes in one batch (its own live entries).
#[derive(Debug, Clone, Default)]
pub struct RefreshBatch {
    /// (channel, member) for every presence-enabled subscription.
    pub members: Vec<(String, Member)>,
    /// (user, connection) for every authenticated connection.
    pub user_conns: Vec<(String, UserConn)>,
}

impl RefreshBatch {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.members.len() + self.user_conns.len()
    }

    /// Whether the batch holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entries at `indices`, numbered members first, then user
    /// connections (the order backends that pipeline a batch use).
    pub fn select(&self, indices: impl IntoIterator<Item = usize>) -> RefreshBatch {
        let mut out = RefreshBatch::default();
        for i in indices {
            match i.checked_sub(self.members.len()) {
                None => out.members.extend(self.members.get(i).cloned()),
                Some(u) => out.user_conns.extend(self.user_conns.get(u).cloned()),
            }
        }
        out
    }
}

/// What a purge of crashed nodes removed.
#[derive(Debug, Default)]
pub struct Purged {
    /// (channel, member) of every removed presence member.
    pub members: Vec<(String, Member)>,
    /// Channels whose last subscribers were on the purged nodes (one
    /// vacated event each, cluster-wide).
    pub vacated: Vec<String>,
}

/// What [`Presence::leave`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Left {
    /// The connection was a member.
    pub removed: bool,
    /// It was its user's last connection in the channel anywhere in the
    /// cluster (never for anonymous members).
    pub last_of_user: bool,
}

/// Presence, user index and node registry.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Add (or refresh) a member of a channel. Returns whether this made
    /// its user a member: the user's first connection in the channel
    /// anywhere in the cluster (always false for anonymous members, user
    /// ""). Exactly one of racing joins of one user sees `true`.
    async fn join(&self, channel: &str, member: &Member) -> Result<bool, BackplaneError>;
    /// Remove connection `conn` of `user` from a channel.
    async fn leave(&self, channel: &str, conn: &str, user: &str) -> Result<Left, BackplaneError>;
    /// Members that left without [`Presence::leave`] (handed out by
    /// [`Presence::take_expired`] or a purge, each to exactly one caller):
    /// drop them from their users' memberships and return the (channel,
    /// user) pairs whose last connection that was.
    async fn members_gone(
        &self,
        gone: &[(String, Member)],
    ) -> Result<Vec<(String, String)>, BackplaneError>;
    /// Current unexpired members of a channel.
    async fn members(&self, channel: &str) -> Result<Vec<Member>, BackplaneError>;
    /// Remove the expired members of a channel and return them, each to
    /// exactly one caller cluster-wide (so one leave event is sent per
    /// member).
    async fn take_expired(&self, channel: &str) -> Result<Vec<Member>, BackplaneError>;

    /// Record a connection of a user.
    async fn add_user_conn(&self, user: &str, conn: &UserConn) -> Result<(), BackplaneError>;
    /// Forget a connection of a user.
    async fn remove_user_conn(&self, user: &str, conn: &str) -> Result<(), BackplaneError>;
    /// Unexpired connections of a user on every node.
    async fn user_conns(&self, user: &str) -> Result<Vec<UserConn>, BackplaneError>;

    /// Extend the expiry of every entry this node owns, in one batch.
    ///
    /// An entry that no longer exists is not re-created: a leave may have
    /// raced the refresh. It is returned instead (the backend lost it, or
    /// another node took it as expired while this node could not refresh),
    /// so the caller can check that it is still live and [`restore`] it.
    ///
    /// [`restore`]: Presence::restore
    async fn refresh(&self, batch: &RefreshBatch) -> Result<RefreshBatch, BackplaneError>;
    /// Write back entries that do not exist, with a fresh expiry (one that
    /// exists, say because its own join just wrote it, keeps its value and
    /// gets the fresh expiry). Returns the entries it created, so the caller
    /// announces only those.
    async fn restore(&self, batch: &RefreshBatch) -> Result<RefreshBatch, BackplaneError>;

    /// Register or refresh this node in the registry.
    async fn heartbeat(&self, node: &NodeInfo) -> Result<(), BackplaneError>;
    /// Remove this node from the registry (clean shutdown).
    async fn remove_node(&self, id: &str) -> Result<(), BackplaneError>;
    /// Live nodes of the cluster.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, BackplaneError>;

    /// [`Presence::heartbeat`], telling whether the registry entry had to be
    /// created (a new node, or one whose presence a live node purged while
    /// it was stalled: the caller then re-announces its entries at once).
    async fn announce(&self, node: &NodeInfo) -> Result<bool, BackplaneError> {
        self.heartbeat(node).await.map(|()| false)
    }

    /// [`Presence::take_expired`] of many channels, as (channel, member);
    /// backends may batch the round trips.
    async fn take_expired_many(
        &self,
        channels: &[String],
    ) -> Result<Vec<(String, Member)>, BackplaneError> {
        let mut out = Vec::new();
        for channel in channels {
            for member in self.take_expired(channel).await? {
                out.push((channel.clone(), member));
            }
        }
        Ok(out)
    }

    /// Purge the channel presence (and the subscriber counts) of every
    /// other node whose last heartbeat is older than `timeout` (crashed or
    /// stalled) and return the removed members as (channel, member), and
    /// the channels the purge left with no subscriber anywhere. Each stale node is purged by one live
    /// node at a time and each member is returned to exactly one caller
    /// cluster-wide (so one leave event is sent per member). A backend
    /// without a node registry (the embedded one) purges nothing.
    async fn purge_stale_nodes(
        &self,
        own: &str,
        timeout: std::time::Duration,
    ) -> Result<Purged, BackplaneError> {
        let _ = (own, timeout);
        Ok(Purged::default())
    }
}
