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

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use parking_lot::Mutex;
use serde_json::value::RawValue;

use self::channel::Channel;
pub use self::channel::{At, Position};
use crate::backplane::{Deliver, Envelope, Interest, Publication, Topic};
use crate::metrics as m;
use crate::outbox::ConnHandle;
use crate::presence::Member;
use crate::protocol::{CloseReason, ServerFrame};

/// Shards of each hub map (also the node pinger's slots).
pub const SHARDS: usize = 32;

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
            ch.for_each_member(|conn, info| out.push((name.to_string(), self.member(conn, info))));
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

    fn fan_out(
        &self,
        channel: &str,
        frame: &Utf8Bytes,
        position: Option<At<'_>>,
        exclude: Option<&str>,
    ) -> u64 {
        let entry = self.channels.shard(channel).lock().get(channel).cloned();
        entry.map_or(0, |c| c.fan_out(frame, position, exclude))
    }

    fn to_all(&self, frame: &Utf8Bytes) -> u64 {
        // Under the shard locks, without cloning every handle: a push is a
        // short deque append (closing a slow consumer does not re-enter the
        // hub).
        let mut n = 0;
        self.for_each_conn(|conn| n += u64::from(conn.push(frame)));
        n
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
                let position = p
                    .offset
                    .zip(p.epoch.as_deref())
                    .map(|(offset, epoch)| At { offset, epoch });
                self.fan_out(&p.channel, &frame, position, p.exclude.as_deref())
            }
            Envelope::Join(e) => {
                let f = frame(&ServerFrame::Join {
                    channel: &e.channel,
                    user: &e.user,
                    conn: &e.conn,
                });
                self.fan_out(&e.channel, &f, None, Some(&e.conn))
            }
            Envelope::Leave(e) => {
                let f = frame(&ServerFrame::Leave {
                    channel: &e.channel,
                    user: &e.user,
                    conn: &e.conn,
                });
                self.fan_out(&e.channel, &f, None, Some(&e.conn))
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
                self.close_user(user, &CloseReason::new(*code, reason));
                0
            }
            Envelope::DisconnectConn { conn, code, reason } => {
                self.close_conn(conn, &CloseReason::new(*code, reason));
                0
            }
            Envelope::SubscribeUser {
                user,
                channel,
                subscribe,
            } => {
                for c in self.user_conns(user) {
                    c.control(crate::outbox::Control::new(channel, *subscribe));
                }
                0
            }
            Envelope::SubscribeConn {
                conn,
                channel,
                subscribe,
            } => {
                if let Some(c) = self.conn(conn) {
                    c.control(crate::outbox::Control::new(channel, *subscribe));
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

    /// Records what the hub reports, in order.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(Topic, bool)>>);

    impl Interest for Recorder {
        fn set(&self, topic: &Topic, on: bool) {
            self.0.lock().push((topic.clone(), on));
        }
    }

    fn hub() -> (Hub, Arc<Recorder>) {
        let rec = Arc::new(Recorder::default());
        (Hub::new("n".into(), rec.clone()), rec)
    }

    fn at(offset: u64) -> Option<Position> {
        Some(Position {
            offset,
            epoch: Arc::from("e"),
        })
    }

    #[test]
    fn a_user_past_its_limit_is_refused_and_leaves_nothing() {
        let rec = Arc::new(Recorder::default());
        let hub = Hub::new("n".into(), rec.clone()).with_user_limit(2);
        let user = |i: u32| {
            ConnHandle::new(
                format!("n.1.{i}").into(),
                Some(Arc::from("alice")),
                None,
                1 << 20,
            )
            .0
        };
        let (a, b, c) = (user(1), user(2), user(3));
        assert!(hub.add_conn(&a));
        assert!(hub.add_conn(&b));
        assert!(!hub.add_conn(&c), "third connection of alice admitted");
        assert_eq!(hub.connection_count(), 2);
        assert!(hub.conn("n.1.3").is_none());
        assert_eq!(hub.user_conns("alice").len(), 2);
        // Anonymous connections and other users are not counted.
        let (anon, _) = ConnHandle::new("n.1.4".into(), None, None, 1 << 20);
        assert!(hub.add_conn(&anon));
        hub.remove_conn(&a);
        assert!(hub.add_conn(&c), "a slot came back");
        hub.remove_conn(&b);
        hub.remove_conn(&c);
        assert!(hub.user_conns("alice").is_empty());
        let user_topic = Topic::User("alice".into());
        let flips: Vec<bool> = rec
            .0
            .lock()
            .iter()
            .filter(|(t, _)| *t == user_topic)
            .map(|(_, on)| *on)
            .collect();
        assert_eq!(flips, [true, false], "user topic on once, off once");
    }

    #[test]
    fn a_subscriptions_own_info_is_its_presence_info() {
        let (hub, _) = hub();
        let conn_info = RawValue::from_string(r#"{"name":"Mo"}"#.to_owned()).unwrap();
        let (c, _out) =
            ConnHandle::new("n.1.1".into(), Some("mo".into()), Some(conn_info), 1 << 20);
        assert!(hub.add_conn(&c));
        let own = RawValue::from_string(r#"{"role":"mod"}"#.to_owned()).unwrap();
        hub.add_subscriber("a", &c, Some(own));
        hub.add_subscriber("b", &c, None);
        let mut infos: Vec<(String, String)> = (0..SHARDS)
            .flat_map(|s| hub.presence_members(s, |_| true))
            .map(|(ch, m)| (ch, m.info.map(|i| i.get().to_owned()).unwrap_or_default()))
            .collect();
        infos.sort();
        assert_eq!(
            infos,
            [
                ("a".to_owned(), r#"{"role":"mod"}"#.to_owned()),
                ("b".to_owned(), r#"{"name":"Mo"}"#.to_owned())
            ],
            "what the presence refresh and restore write"
        );
    }

    #[test]
    fn pending_subscriber_gets_reply_then_unseen_parked_messages() {
        let (hub, _) = hub();
        let (c, mut out) = ConnHandle::new("n.1.1".into(), None, None, 1 << 20);
        assert!(hub.add_conn(&c));
        assert_eq!(hub.add_subscriber("ch", &c, None), AddOutcome::Added);
        assert_eq!(
            hub.add_subscriber("ch", &c, None),
            AddOutcome::AlreadySubscribed
        );
        hub.deliver(Envelope::Message(publication("ch", Some(5))));
        hub.deliver(Envelope::Message(publication("ch", Some(6))));
        assert!(next(&mut out).is_none(), "parked while pending");
        assert!(hub.finish_subscribe("ch", &c, vec![Utf8Bytes::from_static("reply")], at(5)));
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

    /// The old filter forgot the reply position 3 s after the subscribe, so
    /// a delivery held back longer leaked duplicates. The position is exact:
    /// however late, an offset at or below it is never delivered again, the
    /// next one is, and a jump past the next one closes the connection
    /// (4005) instead of hiding the gap.
    #[tokio::test(start_paused = true)]
    async fn deliveries_held_back_past_3_s_leak_no_duplicate_and_hide_no_gap() {
        let (hub, _) = hub();
        let (c, mut out) = ConnHandle::new("n.1.1".into(), None, None, 1 << 20);
        assert!(hub.add_conn(&c));
        hub.add_subscriber("ch", &c, None);
        assert!(hub.finish_subscribe("ch", &c, vec![], at(5)));
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        // Publications the reply already covered, arriving 10 s late.
        for o in [3, 4, 5] {
            hub.deliver(Envelope::Message(publication("ch", Some(o))));
        }
        assert!(next(&mut out).is_none(), "a duplicate leaked");
        hub.deliver(Envelope::Message(publication("ch", Some(6))));
        assert!(next(&mut out).unwrap().as_str().contains("\"offset\":6"));
        hub.deliver(Envelope::Message(publication("ch", Some(6))));
        assert!(next(&mut out).is_none(), "the same offset twice");
        // 7 never arrives: 8 is a gap, the client must recover.
        hub.deliver(Envelope::Message(publication("ch", Some(8))));
        assert!(next(&mut out).is_none(), "delivered across a gap");
        assert_eq!(
            c.close_reason().map(|r| r.code),
            Some(crate::protocol::close::MISSED_MESSAGES)
        );
    }

    /// A publication the subscriber is excluded from (its own, without
    /// echo) moves its position too: the next one is not a gap.
    #[test]
    fn an_excluded_publication_is_not_a_gap() {
        let (hub, _) = hub();
        let (c, mut out) = ConnHandle::new("n.1.1".into(), None, None, 1 << 20);
        assert!(hub.add_conn(&c));
        hub.add_subscriber("ch", &c, None);
        let mut own = publication("ch", Some(1));
        own.exclude = Some("n.1.1".into());
        hub.deliver(Envelope::Message(own.clone()));
        assert!(hub.finish_subscribe("ch", &c, vec![], at(0)));
        own.offset = Some(2);
        hub.deliver(Envelope::Message(own));
        hub.deliver(Envelope::Message(publication("ch", Some(3))));
        assert!(next(&mut out).unwrap().as_str().contains("\"offset\":3"));
        assert!(!c.is_closing());
    }

    /// The hub is the one reference count: interest goes on with the first
    /// local subscriber (or a user's first connection) and off with the last.
    #[test]
    fn interest_follows_the_first_and_the_last_reference() {
        let (hub, rec) = hub();
        let (a, _oa) = ConnHandle::new("n.1.1".into(), Some("u".into()), None, 1 << 20);
        let (b, _ob) = ConnHandle::new("n.1.2".into(), Some("u".into()), None, 1 << 20);
        for c in [&a, &b] {
            assert!(hub.add_conn(c));
            hub.add_subscriber("ch", c, None);
        }
        hub.remove_subscriber("ch", &a);
        hub.remove_conn(&a);
        hub.remove_conn(&a);
        assert_eq!(
            *rec.0.lock(),
            [
                (Topic::User("u".into()), true),
                (Topic::Channel("ch".into()), true)
            ]
        );
        hub.remove_subscriber("ch", &b);
        hub.remove_conn(&b);
        assert_eq!(rec.0.lock().len(), 4);
        assert_eq!(rec.0.lock()[2], (Topic::Channel("ch".into()), false));
        assert_eq!(rec.0.lock()[3], (Topic::User("u".into()), false));
        assert_eq!(hub.subscription_count(), 0);
    }

    #[test]
    fn exclude_and_removal() {
        let (hub, _) = hub();
        let (a, mut out_a) = ConnHandle::new("n.1.1".into(), Some("u".into()), None, 1 << 20);
        let (b, mut out_b) = ConnHandle::new("n.1.2".into(), Some("u".into()), None, 1 << 20);
        for c in [&a, &b] {
            assert!(hub.add_conn(c));
            hub.add_subscriber("ch", c, None);
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
