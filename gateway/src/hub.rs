//! The local registry of one node: conn id -> handle, channel -> subscribers,
//! user -> connections. It is the backplane's [`Deliver`] sink: every
//! envelope that reaches this node is fanned out here.
//!
//! Invariants:
//! - Each outgoing frame is encoded once per node and the bytes are shared
//!   by every recipient (`Utf8Bytes` is reference counted).
//! - All maps are sharded mutexes held only for map operations and the
//!   synchronous fan-out push; no lock is ever held across an `.await`.
//! - Lock order: shard map, then channel. A channel entry is removed from its
//!   shard only while both are held and it is empty, and subscribers are
//!   inserted only while both are held, so no subscriber lands in a removed
//!   entry.
//! - A subscriber added with `pending` buffers what is delivered to it until
//!   [`Hub::finish_subscribe`] flushes the reply, the replay and the buffer
//!   in that order under the channel lock: no gap and no duplicate between
//!   history replay and live delivery.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::backplane::{Deliver, Envelope, Publication};
use crate::metrics as m;
use crate::outbox::ConnHandle;
use crate::presence::Member;
use crate::protocol::{CloseReason, ServerFrame};

/// Shards of each hub map (also the node pinger's slots).
pub const SHARDS: usize = 32;

/// A frame parked for a subscriber that is still recovering.
struct Parked {
    offset: Option<u64>,
    epoch: Option<Arc<str>>,
    frame: Utf8Bytes,
}

struct Subscriber {
    conn: Arc<ConnHandle>,
    /// `None` once live with nothing to filter, the common case: the
    /// transient state is boxed so a live subscriber costs only its key and
    /// two pointers in the channel's table.
    state: Option<Box<SubState>>,
}

enum SubState {
    /// The subscribe is in progress (see module docs): deliveries are parked.
    Pending(Vec<Parked>),
    /// After the subscribe: publications with offset <= `top` were covered
    /// by the reply position but may still be in flight to this node (a
    /// history read can see an offset before its delivery arrives). Cleared
    /// by the first newer offset or when `until` passes (offsets restart
    /// after an epoch change, so the filter must not live long).
    Skip {
        top: u64,
        epoch: Arc<str>,
        until: Instant,
    },
}

impl Subscriber {
    /// Take the parked deliveries of a pending subscriber.
    fn take_parked(&mut self) -> Vec<Parked> {
        match self.state.take().map(|b| *b) {
            Some(SubState::Pending(parked)) => parked,
            _ => Vec::new(),
        }
    }
}

/// How long after a subscribe in-flight duplicates are filtered.
const SKIP_WINDOW: Duration = Duration::from_secs(3);

#[derive(Default)]
struct Channel {
    subs: Mutex<HashMap<Arc<str>, Subscriber>>,
}

struct Sharded<V> {
    shards: Vec<Mutex<HashMap<Arc<str>, V>>>,
    hasher: RandomState,
}

impl<V> Sharded<V> {
    fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }
    fn shard(&self, key: &str) -> &Mutex<HashMap<Arc<str>, V>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }
}

/// Encode a server frame into shareable bytes.
pub fn frame(f: &ServerFrame<'_>) -> Utf8Bytes {
    Utf8Bytes::from(f.encode())
}

/// Encode a publication as a `message` frame.
pub fn message_frame(p: &Publication) -> Utf8Bytes {
    frame(&ServerFrame::Message {
        channel: &p.channel,
        data: &p.data,
        offset: p.offset,
        epoch: p.epoch.as_deref(),
        from: p.from.as_deref(),
    })
}

/// The local registry. See the module docs.
pub struct Hub {
    node_id: String,
    conns: Sharded<Arc<ConnHandle>>,
    channels: Sharded<Arc<Channel>>,
    /// user -> that user's connections (a few: a vector, not a table).
    users: Sharded<Vec<Arc<ConnHandle>>>,
    conn_count: AtomicUsize,
    channel_count: AtomicUsize,
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
    /// An empty hub for node `node_id`.
    pub fn new(node_id: String) -> Self {
        Self {
            node_id,
            conns: Sharded::new(),
            channels: Sharded::new(),
            users: Sharded::new(),
            conn_count: AtomicUsize::new(0),
            channel_count: AtomicUsize::new(0),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Open connections registered here.
    pub fn connection_count(&self) -> usize {
        self.conn_count.load(Ordering::Relaxed)
    }

    /// Channels with at least one local subscriber.
    pub fn channel_count(&self) -> usize {
        self.channel_count.load(Ordering::Relaxed)
    }

    /// Register a connection (and index it under its user).
    pub fn add_conn(&self, conn: &Arc<ConnHandle>) {
        self.conns
            .shard(&conn.id)
            .lock()
            .insert(conn.id.clone(), conn.clone());
        if let Some(user) = &conn.user {
            self.users
                .shard(user)
                .lock()
                .entry(user.clone())
                .or_insert_with(|| Vec::with_capacity(1))
                .push(conn.clone());
        }
        self.conn_count.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!(m::CONNECTIONS).increment(1.0);
    }

    /// Unregister a connection. Its channel subscriptions must have been
    /// removed by the caller (the connection knows them).
    pub fn remove_conn(&self, conn: &ConnHandle) {
        let removed = self.conns.shard(&conn.id).lock().remove(&conn.id).is_some();
        if let Some(user) = &conn.user {
            let mut shard = self.users.shard(user).lock();
            if let Some(devices) = shard.get_mut(user) {
                devices.retain(|c| c.id != conn.id);
                if devices.is_empty() {
                    shard.remove(user);
                }
            }
        }
        if removed {
            self.conn_count.fetch_sub(1, Ordering::Relaxed);
            metrics::gauge!(m::CONNECTIONS).decrement(1.0);
        }
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
    /// [`Hub::finish_subscribe`]. Returns whether it was already subscribed.
    pub fn add_subscriber(&self, channel: &str, conn: &Arc<ConnHandle>) -> AddOutcome {
        let mut shard = self.channels.shard(channel).lock();
        let entry = match shard.get(channel) {
            Some(c) => c.clone(),
            None => {
                let c = Arc::new(Channel::default());
                shard.insert(Arc::from(channel), c.clone());
                self.channel_count.fetch_add(1, Ordering::Relaxed);
                metrics::gauge!(m::CHANNELS).increment(1.0);
                c
            }
        };
        let mut subs = entry.subs.lock();
        if subs.contains_key(&conn.id) {
            return AddOutcome::AlreadySubscribed;
        }
        subs.insert(
            conn.id.clone(),
            Subscriber {
                conn: conn.clone(),
                state: Some(Box::new(SubState::Pending(Vec::new()))),
            },
        );
        metrics::gauge!(m::SUBSCRIPTIONS).increment(1.0);
        AddOutcome::Added
    }

    /// End a pending subscribe: queue `head` (the reply and the replayed
    /// messages), then the parked frames except publications with offset
    /// <= `top` (already covered by the replay or older than the reported
    /// position), then switch to live delivery. Returns false if the
    /// subscriber is gone (the connection closed meanwhile).
    pub fn finish_subscribe(
        &self,
        channel: &str,
        conn: &ConnHandle,
        head: Vec<Utf8Bytes>,
        top: Option<(u64, &str)>,
    ) -> bool {
        let Some(entry) = self.channels.shard(channel).lock().get(channel).cloned() else {
            return false;
        };
        let mut subs = entry.subs.lock();
        let Some(sub) = subs.get_mut(&conn.id) else {
            return false;
        };
        let parked = sub.take_parked();
        sub.state = top.map(|(t, e)| {
            Box::new(SubState::Skip {
                top: t,
                epoch: Arc::from(e),
                until: Instant::now() + SKIP_WINDOW,
            })
        });
        for f in head {
            if !conn.push(&f) {
                break;
            }
        }
        for p in parked {
            let len = p.frame.len();
            let keep = match (p.offset, &p.epoch, top) {
                (Some(o), Some(e), Some((t, te))) => o > t || **e != *te,
                _ => true,
            };
            if keep && !conn.is_closing() {
                conn.push_reserved(p.frame);
            } else {
                conn.release(len);
            }
        }
        true
    }

    /// Remove `conn` from `channel`; returns whether it was subscribed.
    pub fn remove_subscriber(&self, channel: &str, conn: &ConnHandle) -> bool {
        let mut shard = self.channels.shard(channel).lock();
        let Some(entry) = shard.get(channel).cloned() else {
            return false;
        };
        let mut subs = entry.subs.lock();
        let Some(mut sub) = subs.remove(&conn.id) else {
            return false;
        };
        for p in sub.take_parked() {
            conn.release(p.frame.len());
        }
        metrics::gauge!(m::SUBSCRIPTIONS).decrement(1.0);
        if subs.is_empty() {
            drop(subs);
            shard.remove(channel);
            self.channel_count.fetch_sub(1, Ordering::Relaxed);
            metrics::gauge!(m::CHANNELS).decrement(1.0);
        }
        true
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
            for sub in ch.subs.lock().values() {
                out.push((name.to_string(), self.member(&sub.conn)));
            }
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
        entry.is_some_and(|c| {
            c.subs
                .lock()
                .get(conn)
                .is_some_and(|s| !matches!(s.state.as_deref(), Some(SubState::Pending(_))))
        })
    }

    /// The presence member describing `conn`.
    pub fn member(&self, conn: &ConnHandle) -> Member {
        Member {
            user: conn.user.as_deref().unwrap_or_default().to_owned(),
            conn: conn.id.to_string(),
            node: self.node_id.clone(),
            info: conn.info.clone(),
        }
    }

    fn fan_out(
        &self,
        channel: &str,
        frame: Utf8Bytes,
        position: Option<(u64, &str)>,
        exclude: Option<&str>,
    ) -> u64 {
        let Some(entry) = self.channels.shard(channel).lock().get(channel).cloned() else {
            return 0;
        };
        let mut delivered = 0;
        let mut subs = entry.subs.lock();
        for (id, sub) in subs.iter_mut() {
            if exclude == Some(&**id) {
                continue;
            }
            if let Some(state) = &mut sub.state {
                match &mut **state {
                    SubState::Pending(parked) => {
                        if sub.conn.reserve(frame.len()) {
                            parked.push(Parked {
                                offset: position.map(|p| p.0),
                                epoch: position.map(|p| Arc::from(p.1)),
                                frame: frame.clone(),
                            });
                            delivered += 1;
                        }
                        continue;
                    }
                    SubState::Skip { top, epoch, until } => {
                        if let Some((o, e)) = position {
                            // Only within the subscribe's own epoch: after a
                            // reset, offsets restart and must not be
                            // mistaken for duplicates.
                            if o <= *top && **epoch == *e && Instant::now() < *until {
                                continue;
                            }
                            sub.state = None;
                        }
                    }
                }
            }
            if sub.conn.push(&frame) {
                delivered += 1;
            }
        }
        delivered
    }

    fn to_all(&self, frame: &Utf8Bytes) -> u64 {
        // Under the shard locks, without cloning every handle: a push is a
        // short deque append (closing a slow consumer does not re-enter the
        // hub).
        let mut n = 0;
        self.for_each_conn(|conn| n += u64::from(conn.push(frame)));
        n
    }

    fn close_conn(&self, conn: &ConnHandle, code: u16, reason: &str) {
        conn.close(CloseReason::new(code, reason));
    }
}

impl Deliver for Hub {
    fn deliver(&self, envelope: Envelope) {
        let delivered = match &envelope {
            Envelope::Message(p) => {
                if p.ts_us > 0 {
                    let lag_us = crate::clock::now_us().saturating_sub(p.ts_us);
                    m::hot().lag.record(lag_us as f64 / 1e6);
                }
                let frame = message_frame(p);
                let position = p.offset.zip(p.epoch.as_deref());
                self.fan_out(&p.channel, frame, position, p.exclude.as_deref())
            }
            Envelope::Join(e) => {
                let f = frame(&ServerFrame::Join {
                    channel: &e.channel,
                    user: &e.user,
                    conn: &e.conn,
                });
                self.fan_out(&e.channel, f, None, Some(&e.conn))
            }
            Envelope::Leave(e) => {
                let f = frame(&ServerFrame::Leave {
                    channel: &e.channel,
                    user: &e.user,
                    conn: &e.conn,
                });
                self.fan_out(&e.channel, f, None, Some(&e.conn))
            }
            Envelope::Broadcast { data } => self.to_all(&frame(&ServerFrame::Broadcast { data })),
            Envelope::User { user, data } => {
                let f = frame(&ServerFrame::Direct { data });
                self.user_conns(user)
                    .iter()
                    .map(|c| u64::from(c.push(&f)))
                    .sum()
            }
            Envelope::Conn { conn, data } => match self.conn(conn) {
                Some(c) => u64::from(c.push(&frame(&ServerFrame::Direct { data }))),
                None => 0,
            },
            Envelope::DisconnectUser { user, code, reason } => {
                for c in self.user_conns(user) {
                    self.close_conn(&c, *code, reason);
                }
                0
            }
            Envelope::DisconnectConn { conn, code, reason } => {
                if let Some(c) = self.conn(conn) {
                    self.close_conn(&c, *code, reason);
                }
                0
            }
        };
        if delivered > 0 {
            m::hot().deliveries.increment(delivered);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn next(out: &mut crate::outbox::Outbox) -> Option<Utf8Bytes> {
        let mut v = std::collections::VecDeque::new();
        out.try_recv_many(&mut v, 1).and_then(|_| v.pop_front())
    }

    fn publication(channel: &str, offset: Option<u64>) -> Publication {
        Publication {
            channel: channel.into(),
            data: RawValue::from_string(format!("{}", offset.unwrap_or(0))).unwrap(),
            from: None,
            offset,
            epoch: offset.map(|_| "e".to_owned()),
            exclude: None,
            ts_us: 0,
        }
    }

    #[test]
    fn pending_subscriber_gets_reply_then_unseen_parked_messages() {
        let hub = Hub::new("n".into());
        let (c, mut out) = ConnHandle::new("n.1.1".into(), None, None, 1 << 20);
        hub.add_conn(&c);
        assert_eq!(hub.add_subscriber("ch", &c), AddOutcome::Added);
        assert_eq!(hub.add_subscriber("ch", &c), AddOutcome::AlreadySubscribed);
        hub.deliver(Envelope::Message(publication("ch", Some(5))));
        hub.deliver(Envelope::Message(publication("ch", Some(6))));
        assert!(next(&mut out).is_none(), "parked while pending");
        assert!(hub.finish_subscribe(
            "ch",
            &c,
            vec![Utf8Bytes::from_static("reply")],
            Some((5, "e"))
        ));
        assert_eq!(next(&mut out).unwrap().as_str(), "reply");
        assert!(next(&mut out).unwrap().as_str().contains("\"offset\":6"));
        assert!(
            next(&mut out).is_none(),
            "offset 5 was covered by the reply position"
        );
        hub.deliver(Envelope::Message(publication("ch", Some(7))));
        assert!(next(&mut out).unwrap().as_str().contains("\"offset\":7"));
        // A new epoch restarts offsets: not mistaken for duplicates.
        let mut reset = publication("ch", Some(1));
        reset.epoch = Some("f".into());
        hub.deliver(Envelope::Message(reset));
        assert!(next(&mut out).unwrap().as_str().contains("\"epoch\":\"f\""));
        assert_eq!(
            c.queued_bytes(),
            "reply".len() + 3 * message_frame(&publication("ch", Some(6))).len()
        );
    }

    #[test]
    fn exclude_and_removal() {
        let hub = Hub::new("n".into());
        let (a, mut out_a) = ConnHandle::new("n.1.1".into(), Some("u".into()), None, 1 << 20);
        let (b, mut out_b) = ConnHandle::new("n.1.2".into(), Some("u".into()), None, 1 << 20);
        for c in [&a, &b] {
            hub.add_conn(c);
            hub.add_subscriber("ch", c);
            hub.finish_subscribe("ch", c, vec![], None);
        }
        assert_eq!(hub.channel_count(), 1);
        let mut p = publication("ch", None);
        p.exclude = Some("n.1.1".into());
        hub.deliver(Envelope::Message(p));
        assert!(next(&mut out_a).is_none());
        assert!(next(&mut out_b).is_some());
        assert_eq!(hub.user_conns("u").len(), 2);
        assert!(hub.remove_subscriber("ch", &a));
        assert!(!hub.remove_subscriber("ch", &a));
        assert!(hub.remove_subscriber("ch", &b));
        assert_eq!(hub.channel_count(), 0);
        hub.remove_conn(&a);
        hub.remove_conn(&b);
        assert_eq!(hub.connection_count(), 0);
        assert!(hub.user_conns("u").is_empty());
    }
}
