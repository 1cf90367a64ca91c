//! Webhooks: the events the node reports to the application backend
//! ([`Event`]) and the handle that takes them ([`Webhooks::emit`]); the
//! delivery task that batches, signs, POSTs and retries them lives in
//! [`delivery`] (docs/backend.md, "Webhooks").
//!
//! Each event is emitted once per cluster, by the node that made the change
//! (the one whose subscribe, leave or close caused it). `emit` never blocks
//! and never fails the client's op: it stamps the event with a unique id
//! and its time and puts it in a bounded queue, or drops it (counted in
//! `gateway_webhook_events_dropped_total{reason="queue_full"}`) when the
//! queue holds `webhook_queue_size` undelivered events or
//! `webhook_queue_bytes` of them.
//!
//! Invariants: the count and the bytes of held events (queued plus the
//! batch in flight) never exceed their bounds; events leave the node in emit order, one batch
//! at a time; an event is delivered at least once unless it is counted as
//! dropped (queue full, rejected by the endpoint, shutdown flush ran out) or
//! the process dies with it queued.

pub mod delivery;
pub mod names;
pub mod pusher;

pub use names::EventFilter;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::config::{NamespaceOptions, WebhookConfig};
use crate::metrics as m;
use crate::protocol::CloseReason;
use crate::shutdown::Shutdown;

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
    /// A Pusher client sent a client event (Pusher apps only).
    ClientEvent {
        /// Hub channel name (`!app!channel`).
        channel: String,
        /// The event's name (`client-...`).
        event: String,
        /// Its data as sent.
        data: Box<RawValue>,
        /// The sender's socket id.
        socket_id: String,
        /// Presence channels: the sender's user id.
        user_id: Option<String>,
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

impl Event {
    /// Every event name (the `name` field; the `webhook_events` values and
    /// the `name` label of `gateway_webhook_events_total`), indexed like
    /// [`Event::index`].
    pub const NAMES: [&'static str; 7] = names::NAMES;

    /// This event's position in [`Event::NAMES`].
    pub fn index(&self) -> usize {
        match self {
            Event::ChannelOccupied { .. } => 0,
            Event::ChannelVacated { .. } => 1,
            Event::MemberAdded { .. } => 2,
            Event::MemberRemoved { .. } => 3,
            Event::ClientPublish { .. } => 4,
            Event::ConnectionClosed { .. } => 5,
            Event::ClientEvent { .. } => 6,
        }
    }

    /// This event's name.
    pub fn name(&self) -> &'static str {
        Self::NAMES[self.index()]
    }

    /// Roughly the bytes this event holds (and adds to a request body): its
    /// strings and data plus a fixed overhead for the id, time and JSON.
    pub fn weight(&self) -> usize {
        let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        OVERHEAD
            + match self {
                Event::ChannelOccupied { channel } | Event::ChannelVacated { channel } => {
                    channel.len()
                }
                Event::MemberAdded { channel, user } | Event::MemberRemoved { channel, user } => {
                    channel.len() + user.len()
                }
                Event::ClientPublish {
                    channel,
                    user,
                    conn,
                    data,
                } => channel.len() + opt(user) + conn.len() + data.get().len(),
                Event::ConnectionClosed {
                    conn, user, reason, ..
                } => conn.len() + opt(user) + reason.len(),
                Event::ClientEvent {
                    channel,
                    event,
                    data,
                    socket_id,
                    user_id,
                } => {
                    channel.len() + event.len() + data.get().len() + socket_id.len() + opt(user_id)
                }
            }
    }

    /// The channel the event is about, if any.
    pub fn channel(&self) -> Option<&str> {
        match self {
            Event::ChannelOccupied { channel }
            | Event::ChannelVacated { channel }
            | Event::MemberAdded { channel, .. }
            | Event::MemberRemoved { channel, .. }
            | Event::ClientPublish { channel, .. }
            | Event::ClientEvent { channel, .. } => Some(channel),
            Event::ConnectionClosed { .. } => None,
        }
    }
}

/// [`Event::weight`]'s fixed part: the `Stamped` wrapper, the id, field
/// names and punctuation.
const OVERHEAD: usize = 160;

/// An event as it is sent: the event's own fields, then its unique id and
/// the time it was emitted.
#[derive(Debug, Serialize)]
pub struct Stamped {
    /// The event (its `name` and fields, flattened).
    #[serde(flatten)]
    pub event: Event,
    /// `<node id>:<boot nonce>:<sequence>`, unique per cluster and across
    /// restarts: a backend deduplicates retried events by it.
    pub id: String,
    /// Unix milliseconds when the event was emitted.
    pub time_ms: u64,
    /// [`Event::weight`], counted against `webhook_queue_bytes`.
    #[serde(skip)]
    pub weight: usize,
}

/// Errors starting the webhook sender.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The HTTP client could not be built (TLS backend).
    #[error("webhook HTTP client: {0}")]
    Client(String),
}

/// The count and bytes of held events (queued plus in flight) against
/// their bounds, shared by the emitters and the delivery task. The count is
/// mirrored in the `gateway_webhook_queue_events` gauge.
pub(crate) struct Held {
    count: AtomicUsize,
    bound: usize,
    bytes: AtomicUsize,
    max_bytes: usize,
    gauge: metrics::Gauge,
}

impl Held {
    fn new(bound: usize, max_bytes: usize) -> Self {
        Self {
            count: AtomicUsize::new(0),
            bound,
            bytes: AtomicUsize::new(0),
            max_bytes,
            gauge: metrics::gauge!(m::WEBHOOK_QUEUE),
        }
    }

    /// Take a place for an event of `weight` bytes; false when `bound`
    /// events or `max_bytes` are held already.
    fn take(&self, weight: usize) -> bool {
        if self.count.fetch_add(1, Ordering::AcqRel) >= self.bound {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        let before = self.bytes.fetch_add(weight, Ordering::AcqRel);
        if before.saturating_add(weight) > self.max_bytes {
            self.bytes.fetch_sub(weight, Ordering::AcqRel);
            self.count.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        self.gauge.increment(1.0);
        true
    }

    /// Give back `n` places of `weight` bytes in all (delivered, rejected
    /// or dropped).
    pub(crate) fn release(&self, n: usize, weight: usize) {
        self.bytes.fetch_sub(weight, Ordering::AcqRel);
        self.count.fetch_sub(n, Ordering::AcqRel);
        self.gauge.decrement(n as f64);
    }
}

/// The enabled sender: what `emit` needs.
struct Sender {
    tx: mpsc::Sender<Stamped>,
    held: Arc<Held>,
    filter: EventFilter,
    /// `<node id>:<boot nonce>:`, the prefix of every event id.
    id_prefix: String,
    seq: AtomicU64,
    emitted: [metrics::Counter; Event::NAMES.len()],
    queue_full: metrics::Counter,
    closed: metrics::Counter,
}

impl Sender {
    /// A sender POSTing to `url` signed with `secret` in `format`; its
    /// delivery task is spawned on `shutdown.tracker`.
    fn start(
        config: &WebhookConfig,
        url: &str,
        secret: &str,
        filter: EventFilter,
        format: delivery::Format,
        node_id: &str,
        shutdown: &Shutdown,
    ) -> Result<Self, WebhookError> {
        let held = Arc::new(Held::new(config.queue_size, config.queue_bytes));
        held.gauge.set(0.0);
        // The queue never holds more than `held` allows: `try_send` finds
        // room whenever `Held::take` did.
        let (tx, rx) = mpsc::channel(config.queue_size);
        let target = delivery::Target {
            url,
            secret,
            format,
        };
        let task = delivery::Delivery::new(
            config,
            target,
            node_id,
            rx,
            held.clone(),
            shutdown.token.clone(),
        )?;
        tracing::info!(url = %task.url(), "webhooks on");
        shutdown.tracker.spawn(task.run());
        Ok(Sender {
            tx,
            held,
            filter,
            id_prefix: format!("{node_id}:{:08x}:", rand::random::<u32>()),
            seq: AtomicU64::new(0),
            emitted: Event::NAMES.map(|n| metrics::counter!(m::WEBHOOK_EVENTS, "name" => n)),
            queue_full: metrics::counter!(m::WEBHOOK_DROPPED, "reason" => "queue_full"),
            closed: metrics::counter!(m::WEBHOOK_DROPPED, "reason" => "shutdown"),
        })
    }

    /// See [`Webhooks::emit`].
    fn emit(&self, event: Event) {
        let index = event.index();
        if !self.filter.has(index) {
            return;
        }
        self.emitted[index].increment(1);
        let weight = event.weight();
        if !self.held.take(weight) {
            self.queue_full.increment(1);
            return;
        }
        let n = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let stamped = Stamped {
            event,
            id: format!("{}{n}", self.id_prefix),
            time_ms: crate::clock::now_ms(),
            weight,
        };
        // Full cannot happen (see `start`); closed: the delivery task has
        // finished its shutdown flush.
        if self.tx.try_send(stamped).is_err() {
            self.held.release(1, weight);
            self.closed.increment(1);
        }
    }
}

/// The node's webhook sender. Disabled (every event ignored) when no
/// `webhook_url` is configured. Events of a Pusher app's channels go to
/// that app's own sender (its `webhook_url`, Pusher's format and
/// signature; [`pusher`]), never to the gateway's.
#[derive(Default)]
pub struct Webhooks {
    sender: Option<Sender>,
    /// Pusher app id -> its sender (apps with a `webhook_url`).
    apps: std::collections::HashMap<String, Sender>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("enabled", &self.enabled())
            .finish()
    }
}

impl Webhooks {
    /// A sender with no webhook configured: every event is dropped.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// The senders `config` and the Pusher apps ask for; each one with a
    /// URL has its delivery task spawned on `shutdown.tracker`, flushing on
    /// `shutdown.token`. The apps' senders share the gateway's batching,
    /// queue and retry settings.
    pub fn start(
        config: &WebhookConfig,
        apps: &[crate::config::AppConfig],
        node_id: &str,
        shutdown: &Shutdown,
    ) -> Result<Self, WebhookError> {
        let sender = match (&config.url, &config.secret) {
            (Some(url), Some(secret)) => Some(Sender::start(
                config,
                url,
                secret,
                config.events,
                delivery::Format::Gateway,
                node_id,
                shutdown,
            )?),
            _ => None,
        };
        let mut by_app = std::collections::HashMap::new();
        for app in apps {
            let Some(url) = &app.webhook_url else {
                continue;
            };
            let mut filter = EventFilter::NONE;
            for name in &app.webhook_events {
                filter = filter.with(name).unwrap_or(filter);
            }
            let format = delivery::Format::Pusher {
                key: app.key.clone(),
            };
            let s = Sender::start(config, url, &app.secret, filter, format, node_id, shutdown)?;
            by_app.insert(app.id.clone(), s);
        }
        Ok(Self {
            sender,
            apps: by_app,
        })
    }

    /// Whether the gateway's webhook is configured (callers may skip
    /// building events).
    pub fn enabled(&self) -> bool {
        self.sender.is_some()
    }

    /// Whether `channel_occupied` or `channel_vacated` of `channel` (a
    /// hub name) go anywhere.
    pub fn wants_occupancy(&self, channel: &str) -> bool {
        self.sender_for(Some(channel)).is_some_and(|s| {
            s.filter.contains("channel_occupied") || s.filter.contains("channel_vacated")
        })
    }

    /// Whether Pusher app `app` sends events called `name`.
    pub fn app_wants(&self, app: &str, name: &str) -> bool {
        self.apps.get(app).is_some_and(|s| s.filter.contains(name))
    }

    /// Whether events called `name` are sent (webhooks on, name in
    /// `webhook_events`).
    pub fn wants(&self, name: &str) -> bool {
        self.sender
            .as_ref()
            .is_some_and(|s| s.filter.contains(name))
    }

    /// Whether a client publish to a channel of namespace `ns` is sent.
    pub fn wants_client_publish(&self, ns: &NamespaceOptions) -> bool {
        ns.webhook_client_publish && self.wants("client_publish")
    }

    /// Queue `event` for delivery; never blocks. Dropped (and counted) when
    /// the queue is full; ignored when its name is filtered out.
    pub fn emit(&self, event: Event) {
        if let Some(s) = self.sender_for(event.channel()) {
            s.emit(event);
        }
    }

    /// Where events about `channel` go: a Pusher app's channel to that
    /// app's sender (its internal `#` channels nowhere), anything else to
    /// the gateway's.
    fn sender_for(&self, channel: Option<&str>) -> Option<&Sender> {
        match channel.and_then(crate::pusher::names::split) {
            Some((_, c)) if c.starts_with('#') => None,
            Some((app, _)) => self.apps.get(app),
            None => self.sender.as_ref(),
        }
    }

    /// Emit `connection_closed` for a connection that ended with `reason`.
    pub fn connection_closed(&self, conn: &str, user: Option<&str>, reason: &CloseReason) {
        if self.wants("connection_closed") {
            self.emit(Event::ConnectionClosed {
                conn: conn.to_owned(),
                user: user.map(str::to_owned),
                code: reason.code,
                reason: reason.label().to_owned(),
            });
        }
    }

    /// Emit `client_publish` after a successful client publish; `data` is
    /// `Some` only when [`Webhooks::wants_client_publish`] said so (taken
    /// before the publish consumed the payload).
    pub fn client_publish(
        &self,
        data: Option<Box<RawValue>>,
        channel: &str,
        user: Option<&str>,
        conn: &str,
    ) {
        if let Some(data) = data {
            self.emit(Event::ClientPublish {
                channel: channel.to_owned(),
                user: user.map(str::to_owned),
                conn: conn.to_owned(),
                data,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_serde_tag() {
        let events = [
            Event::ChannelOccupied {
                channel: "a".into(),
            },
            Event::ChannelVacated {
                channel: "a".into(),
            },
            Event::MemberAdded {
                channel: "a".into(),
                user: "u".into(),
            },
            Event::MemberRemoved {
                channel: "a".into(),
                user: "u".into(),
            },
            Event::ClientPublish {
                channel: "a".into(),
                user: None,
                conn: "c".into(),
                data: RawValue::from_string("1".into()).unwrap(),
            },
            Event::ConnectionClosed {
                conn: "c".into(),
                user: Some("u".into()),
                code: 1000,
                reason: "normal".into(),
            },
        ];
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.index(), i);
            let v = serde_json::to_value(e).unwrap();
            assert_eq!(v["name"], e.name());
        }
    }

    #[test]
    fn stamped_flattens_the_event_and_keeps_raw_data() {
        let s = Stamped {
            event: Event::ClientPublish {
                channel: "news:a".into(),
                user: Some("alice".into()),
                conn: "n1.ab.1".into(),
                data: RawValue::from_string(r#"{"x": [1, 2]}"#.into()).unwrap(),
            },
            id: "n1:0000abcd:7".into(),
            time_ms: 42,
            weight: 1,
        };
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(
            text,
            r#"{"name":"client_publish","channel":"news:a","user":"alice","conn":"n1.ab.1","data":{"x": [1, 2]},"id":"n1:0000abcd:7","time_ms":42}"#
        );
    }

    #[test]
    fn filter_sets_and_tests_names() {
        let f = EventFilter::NONE.with("connection_closed").unwrap();
        assert!(f.contains("connection_closed"));
        assert!(!f.contains("client_publish"));
        assert!(!f.contains("nope"));
        assert!(f.with("nope").is_none());
        for n in Event::NAMES {
            assert!(EventFilter::ALL.contains(n));
        }
    }

    fn closed(n: u16) -> Event {
        Event::ConnectionClosed {
            conn: format!("c{n}"),
            user: None,
            code: n,
            reason: "normal".into(),
        }
    }

    #[tokio::test]
    async fn emit_holds_at_most_the_bound_and_stamps_unique_ids() {
        let config = WebhookConfig {
            url: Some("http://127.0.0.1:9/".into()),
            secret: Some("0123456789abcdef".into()),
            queue_size: 3,
            ..WebhookConfig::default()
        };
        let held = Arc::new(Held::new(config.queue_size, 1 << 20));
        let (tx, mut rx) = mpsc::channel(config.queue_size);
        let hooks = Webhooks {
            sender: Some(Sender {
                tx,
                held: held.clone(),
                filter: EventFilter::ALL,
                id_prefix: "n1:00000001:".into(),
                seq: AtomicU64::new(0),
                emitted: Event::NAMES.map(|n| metrics::counter!(m::WEBHOOK_EVENTS, "name" => n)),
                queue_full: metrics::counter!(m::WEBHOOK_DROPPED, "reason" => "queue_full"),
                closed: metrics::counter!(m::WEBHOOK_DROPPED, "reason" => "shutdown"),
            }),
            apps: Default::default(),
        };
        for n in 0..5 {
            hooks.emit(closed(n));
        }
        assert_eq!(held.count.load(Ordering::Acquire), 3);
        let mut got = Vec::new();
        rx.recv_many(&mut got, 10).await;
        let ids: Vec<&str> = got.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["n1:00000001:1", "n1:00000001:2", "n1:00000001:3"]);
        // Taken out of the queue but not yet delivered: still held.
        hooks.emit(closed(9));
        assert!(rx.try_recv().is_err());
        let weight: usize = got.iter().map(|s| s.weight).sum();
        held.release(3, weight);
        hooks.emit(closed(10));
        let fourth = rx.try_recv().unwrap();
        assert_eq!(fourth.id, "n1:00000001:4");
        held.release(1, fourth.weight);
        assert_eq!(held.bytes.load(Ordering::Acquire), 0);
    }

    #[test]
    fn held_bytes_bound_refuses_what_does_not_fit() {
        let held = Held::new(100, 1000);
        assert!(held.take(600));
        assert!(!held.take(500), "1100 bytes > 1000");
        assert!(held.take(400));
        assert!(!held.take(1));
        held.release(1, 600);
        assert!(held.take(600));
        assert_eq!(held.count.load(Ordering::Acquire), 2);
        assert!(!Held::new(10, 100).take(101), "larger than the whole bound");
        let e = closed(1);
        assert!(e.weight() >= OVERHEAD + "c1".len() + "normal".len());
    }

    #[test]
    fn disabled_ignores_everything() {
        let hooks = Webhooks::disabled();
        assert!(!hooks.enabled());
        assert!(!hooks.wants("connection_closed"));
        let ns = NamespaceOptions {
            webhook_client_publish: true,
            ..NamespaceOptions::default()
        };
        assert!(!hooks.wants_client_publish(&ns));
        hooks.emit(closed(1));
    }
}
