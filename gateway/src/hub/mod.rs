//! The local registry of one node: conn id -> handle, channel -> its
//! subscribers ([`channel`]), user -> connections. It is the sink of
//! everything the backplane delivers to this node ([`Deliver`]), and the one
//! place that counts local references: the first subscriber of a channel
//! (the first connection of a user) turns the backplane's [`Interest`] in
//! the topic on, the last one turns it off.
//!
//! Invariants:
//! - Each outgoing frame is encoded once per node and the bytes are shared
//!   by every recipient (`Utf8Bytes` is reference counted).
//! - All maps are sharded mutexes held only for map operations and the
//!   synchronous fan-out push; no lock is ever held across an `.await`.
//! - Lock order: shard map, then channel, then the backplane's interest
//!   registry. A channel entry is removed from its shard only while both are
//!   held and it is empty, and subscribers are inserted only while both are
//!   held, so no subscriber lands in a removed entry; interest changes are
//!   made under the shard lock, so they reach the backplane in the order the
//!   hub made them (an off never overtakes the on that follows it).

pub mod channel;
mod deliver;
mod frames;
mod sharded;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use serde_json::value::RawValue;

use self::channel::Channel;
pub use self::channel::{At, Position};
pub use self::frames::{frame, message_frame};
use self::sharded::Sharded;
pub use self::sharded::SHARDS;
use crate::backplane::{Interest, Topic};
use crate::outbox::ConnHandle;
use crate::presence::Member;
use crate::protocol::CloseReason;

/// The local registry. See the module docs.
pub struct Hub {
    node_id: String,
    interest: Arc<dyn Interest>,
    conns: Sharded<Arc<ConnHandle>>,
    channels: Sharded<Arc<Channel>>,
    /// user -> that user's connections (a few: a vector, not a table).
    users: Sharded<Vec<Arc<ConnHandle>>>,
    /// Connections one user may hold here (`max_connections_per_user`).
    max_per_user: usize,
    conn_count: AtomicUsize,
    channel_count: AtomicUsize,
    subscription_count: AtomicUsize,
}

/// What [`Hub::add_subscriber`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum AddOutcome {
    /// Added (in pending mode).
    Added,
    /// The connection was already subscribed.
    AlreadySubscribed,
}

impl Hub {
    /// An empty hub for node `node_id`, reporting first/last references to
    /// `interest`.
    pub fn new(node_id: String, interest: Arc<dyn Interest>) -> Self {
        Self {
            node_id,
            interest,
            conns: Sharded::new(),
            channels: Sharded::new(),
            users: Sharded::new(),
            max_per_user: usize::MAX,
            conn_count: AtomicUsize::new(0),
            channel_count: AtomicUsize::new(0),
            subscription_count: AtomicUsize::new(0),
        }
    }

    /// The same hub, refusing a user's connection past `n` here.
    pub fn with_user_limit(mut self, n: usize) -> Self {
        self.max_per_user = n;
        self
    }

    /// Open connections registered here.
    pub fn connection_count(&self) -> usize {
        self.conn_count.load(Ordering::Relaxed)
    }

    /// Channels with at least one local subscriber.
    pub fn channel_count(&self) -> usize {
        self.channel_count.load(Ordering::Relaxed)
    }

    /// Channel subscriptions of local connections.
    pub fn subscription_count(&self) -> usize {
        self.subscription_count.load(Ordering::Relaxed)
    }

    /// Register a connection (and index it under its user: the user's
    /// first connection here turns the user topic on). False, and nothing
    /// registered, when its user already holds the per-user limit here:
    /// the user index is the count, checked and taken under one lock.
    #[must_use]
    pub fn add_conn(&self, conn: &Arc<ConnHandle>) -> bool {
        if let Some(user) = &conn.user {
            let mut shard = self.users.shard(user).lock();
            let devices = shard
                .entry(user.clone())
                .or_insert_with(|| Vec::with_capacity(1));
            if devices.len() >= self.max_per_user {
                return false;
            }
            devices.push(conn.clone());
            if devices.len() == 1 {
                self.interest.set(&Topic::User(user.to_string()), true);
            }
        }
        self.conns
            .shard(&conn.id)
            .lock()
            .insert(conn.id.clone(), conn.clone());
        self.conn_count.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Unregister a connection (idempotent); the user's last connection
    /// here turns the user topic off. Its channel subscriptions must have
    /// been removed by the caller (the connection knows them).
    pub fn remove_conn(&self, conn: &ConnHandle) {
        let removed = self.conns.shard(&conn.id).lock().remove(&conn.id).is_some();
        if !removed {
            return;
        }
        if let Some(user) = &conn.user {
            let mut shard = self.users.shard(user).lock();
            if let Some(devices) = shard.get_mut(user) {
                devices.retain(|c| c.id != conn.id);
                if devices.is_empty() {
                    shard.remove(user);
                    self.interest.set(&Topic::User(user.to_string()), false);
                }
            }
        }
        self.conn_count.fetch_sub(1, Ordering::Relaxed);
    }

    /// Look up a local connection.
    pub fn conn(&self, id: &str) -> Option<Arc<ConnHandle>> {
        self.conns.shard(id).lock().get(id).cloned()
    }

    /// Local connections of a user.
    pub fn user_conns(&self, user: &str) -> Vec<Arc<ConnHandle>> {
        self.users
            .shard(user)
            .lock()
            .get(user)
            .cloned()
            .unwrap_or_default()
    }

    /// Call `f` for every local connection, under the shard locks (`f` must
    /// be quick and must not call back into the hub).
    pub fn for_each_conn(&self, mut f: impl FnMut(&ConnHandle)) {
        for shard in &self.conns.shards {
            for conn in shard.lock().values() {
                f(conn);
            }
        }
    }

    /// Call `f` for every connection of one shard of the connection map
    /// (`shard < SHARDS`), under that shard's lock; the same rules as
    /// [`Hub::for_each_conn`].
    pub fn for_each_conn_in_shard(&self, shard: usize, mut f: impl FnMut(&ConnHandle)) {
        if let Some(shard) = self.conns.shards.get(shard) {
            for conn in shard.lock().values() {
                f(conn);
            }
        }
    }

    /// Every local connection (for draining).
    pub fn all_conns(&self) -> Vec<Arc<ConnHandle>> {
        let mut out = Vec::with_capacity(self.connection_count());
        for shard in &self.conns.shards {
            out.extend(shard.lock().values().cloned());
        }
        out
    }

    /// Add `conn` to `channel` in pending mode: deliveries are parked until
    /// [`Hub::finish_subscribe`]. The channel's first subscriber turns the
    /// channel topic on. `info`: the subscription's own presence info
    /// (shown instead of the connection's).
    pub fn add_subscriber(
        &self,
        channel: &str,
        conn: &Arc<ConnHandle>,
        info: Option<Box<RawValue>>,
    ) -> AddOutcome {
        let mut shard = self.channels.shard(channel).lock();
        let entry = match shard.get(channel) {
            Some(c) => c.clone(),
            None => {
                let c = Arc::new(Channel::default());
                shard.insert(Arc::from(channel), c.clone());
                self.channel_count.fetch_add(1, Ordering::Relaxed);
                self.interest.set(&Topic::Channel(channel.to_owned()), true);
                c
            }
        };
        if !entry.add(conn, info) {
            return AddOutcome::AlreadySubscribed;
        }
        self.subscription_count.fetch_add(1, Ordering::Relaxed);
        AddOutcome::Added
    }

    /// End a pending subscribe: queue `head` (the reply and the replayed
    /// messages), then the parked frames the delivery rule admits from
    /// `position` (the reply's top; see [`channel`]), then switch to live
    /// delivery. Returns false if the subscriber is gone (the connection
    /// closed meanwhile).
    pub fn finish_subscribe(
        &self,
        channel: &str,
        conn: &ConnHandle,
        head: Vec<Utf8Bytes>,
        position: Option<Position>,
    ) -> bool {
        let entry = self.channels.shard(channel).lock().get(channel).cloned();
        entry.is_some_and(|c| c.finish(conn, head, position))
    }

    /// Remove `conn` from `channel`; returns whether it was subscribed. The
    /// channel's last subscriber turns the channel topic off.
    pub fn remove_subscriber(&self, channel: &str, conn: &ConnHandle) -> bool {
        let mut shard = self.channels.shard(channel).lock();
        let Some(entry) = shard.get(channel).cloned() else {
            return false;
        };
        let Some(empty) = entry.remove(conn) else {
            return false;
        };
        self.subscription_count.fetch_sub(1, Ordering::Relaxed);
        // Emptied under the shard lock, which every add holds too: the
        // channel is really empty when it is dropped.
        if empty {
            shard.remove(channel);
            self.channel_count.fetch_sub(1, Ordering::Relaxed);
            self.interest
                .set(&Topic::Channel(channel.to_owned()), false);
        }
        true
    }

    /// Local subscribers of `channel` (pending subscribes included).
    pub fn subscriber_count(&self, channel: &str) -> usize {
        let entry = self.channels.shard(channel).lock().get(channel).cloned();
        entry.map_or(0, |c| c.len())
    }

    /// Presence entries this node owns in one shard of the channel map
    /// (`shard < SHARDS`): (channel, member) for every subscription on a
    /// channel for which `tracks` is true.
    pub fn presence_members(
        &self,
        shard: usize,
        tracks: impl Fn(&str) -> bool,
    ) -> Vec<(String, Member)> {
        let mut out = Vec::new();
        let Some(shard) = self.channels.shards.get(shard) else {
            return out;
        };
        let channels: Vec<(Arc<str>, Arc<Channel>)> = shard
            .lock()
            .iter()
            .filter(|(name, _)| tracks(name))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, ch) in channels {
            // A Pusher presence subscription keeps its own member (the
            // signed channel data), not the connection's user.
            let pusher = crate::pusher::names::is_pusher(&name);
            ch.for_each_member(|conn, info| {
                let member = if pusher {
                    crate::pusher::wire::presence_member(&conn.id, &self.node_id, info)
                } else {
                    self.member(conn, info)
                };
                out.push((name.to_string(), member));
            });
        }
        out
    }

    /// Local channel names for which `filter` holds.
    pub fn channel_names(&self, filter: impl Fn(&str) -> bool) -> Vec<String> {
        let mut out = Vec::new();
        for shard in &self.channels.shards {
            out.extend(
                shard
                    .lock()
                    .keys()
                    .filter(|k| filter(k))
                    .map(|k| k.to_string()),
            );
        }
        out
    }

    /// Whether connection `conn` is a live subscriber of `channel` (its
    /// subscribe has finished; a pending one writes its own presence entry).
    pub fn is_live_subscriber(&self, channel: &str, conn: &str) -> bool {
        let entry = self.channels.shard(channel).lock().get(channel).cloned();
        entry.is_some_and(|c| c.is_live(conn))
    }

    /// The presence member describing `conn`, with the subscription's own
    /// `info` when it has one (else the connection's).
    pub fn member(&self, conn: &ConnHandle, info: Option<&RawValue>) -> Member {
        Member {
            user: conn.user.as_deref().unwrap_or_default().to_owned(),
            conn: conn.id.to_string(),
            node: self.node_id.clone(),
            info: info.map(RawValue::to_owned).or_else(|| conn.info.clone()),
        }
    }

    /// Close every local subscriber of `channel` (pending ones included)
    /// with `reason`; returns how many connections were closed.
    pub fn close_subscribers(&self, channel: &str, reason: &CloseReason) -> usize {
        let entry = self.channels.shard(channel).lock().get(channel).cloned();
        let mut n = 0;
        if let Some(c) = entry {
            c.for_each(|conn| n += usize::from(conn.close(reason.clone())));
        }
        n
    }

    /// Close every local connection of `user` with `reason`.
    pub fn close_user(&self, user: &str, reason: &CloseReason) -> usize {
        self.user_conns(user)
            .iter()
            .map(|c| usize::from(c.close(reason.clone())))
            .sum()
    }

    /// Close one local connection with `reason`.
    pub fn close_conn(&self, conn: &str, reason: &CloseReason) -> usize {
        self.conn(conn)
            .map_or(0, |c| usize::from(c.close(reason.clone())))
    }
}

#[cfg(test)]
mod tests;
