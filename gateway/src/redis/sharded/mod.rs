//! Cluster mode's subscriber: sharded pub/sub (`SSUBSCRIBE`), one
//! connection per primary that owns a name this node wants, on the reader
//! thread of [`super::pubsub::Subscriber`]. Like the single-mode task it
//! reads, decodes and hands off; it never fans out itself.
//!
//! The task:
//!
//! - wants the node's own topics (`P:node:<id>`, `P:all`) always, and what
//!   the hub wants ([`super::interest::Registry`]); each name goes to the
//!   shard connection of the primary owning its slot in the current slot
//!   map ([`super::cluster::Cluster`]), made when the first name needs it
//!   and closed when its last name goes;
//! - sends one `SSUBSCRIBE` per name (a multi-name SSUBSCRIBE across slots
//!   is refused with CROSSSLOT) and checks each reply names its channel:
//!   redis-rs counts an unsolicited `sunsubscribe` push as a reply, so a
//!   mismatch means the connection's replies are shifted and it is rebuilt
//!   (`desync`);
//! - resubscribes a name where its slot now lives when Redis unsubscribes
//!   it (`sunsubscribe`: the slot moved), answers MOVED (`moved`: to the
//!   address the redirect names), or its shard connection is lost
//!   (`connection_lost`) or fails its probe (`probe`), and counts each in
//!   `gateway_redis_resubscribes_total{reason}`;
//! - probes every shard connection once a second: an `SPUBLISH` on a
//!   probe channel in one of that shard's slots, on a command connection
//!   of its own to the same primary; a probe that does not come back in
//!   max(3 s, 2 x timeout) rebuilds the shard connection, and while it is
//!   overdue or failing the shard is marked down, so publishes to its
//!   slots are refused at once ([`super::cluster::Cluster::check`]) and
//!   the other shards keep serving;
//! - keeps the node link ([`super::shared::Link`]) connected and healthy
//!   while the node's own topics are subscribed on healthy shards (that is
//!   readiness: one shard down does not take the node out of service) and
//!   bumps its generation whenever a shard connection comes up (that
//!   shard may have lost presence entries: the node re-writes them).

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{ErrorKind, PushKind, Value};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::cluster::Cluster;
use super::interest::{Change, Registry};
use super::slots::{slot, tag_for, SlotMap};
use super::{Shared, METRIC_ERRORS, METRIC_PROBE_FAILURES, METRIC_RECONNECTS};
use crate::backplane::Deliver;

mod ops;
mod push;

use self::ops::{
    connect_op, enqueue, is_connection_error, is_name, probe_op, probe_subscribe_op, subscribe_op,
    unsubscribe_op, Done, Op,
};
use self::push::{Event, PushHandler};

/// Metric: pub/sub names resubscribed after a slot moved or a shard
/// connection was lost, by `reason` (counter).
pub const METRIC_RESUBSCRIBES: &str = "gateway_redis_resubscribes_total";
/// Metric: whether this node's pub/sub connection to a shard is up and
/// its probe passes, by `shard` (`host:port`; gauge 0/1).
pub const METRIC_SHARD_UP: &str = "gateway_redis_shard_up";
/// Every `reason` of [`METRIC_RESUBSCRIBES`].
pub const RESUBSCRIBE_REASONS: [&str; 5] = [
    "sunsubscribe",
    "moved",
    "connection_lost",
    "probe",
    "desync",
];

const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Events from the push handlers (probe answers, server unsubscribes,
/// disconnections); a full queue drops the event (the probe still
/// catches a lost connection).
const EVENTS: usize = 4096;

/// One connection to one primary.
struct ShardConn {
    id: u64,
    addr: (String, u16),
    label: String,
    /// Set once connected.
    conn: Option<MultiplexedConnection>,
    probe_conn: Option<MultiplexedConnection>,
    probe_channel: String,
    probe_subscribed: bool,
    probe_seq: u64,
    probe_sent: Option<Instant>,
    healthy: bool,
    /// Names routed here (sent or waiting for the connection), by the op
    /// of their SUBSCRIBE.
    names: HashMap<String, u64>,
    /// SUNSUBSCRIBEs sent whose push has not come back yet.
    unsub_expected: HashMap<String, u32>,
    /// Failed and waiting for its backoff (no connection).
    failed: bool,
}

/// The cluster-mode subscriber task (see the module docs).
pub(crate) struct ShardedTask {
    shared: Arc<Shared>,
    cluster: Arc<Cluster>,
    registry: Arc<Registry>,
    sink: Arc<dyn Deliver>,
    cancel: CancellationToken,
    map: watch::Receiver<Arc<SlotMap>>,
    shards: HashMap<String, ShardConn>,
    backoff: HashMap<String, Backoff>,
    events_tx: mpsc::Sender<Event>,
    events: mpsc::Receiver<Event>,
    /// The node's own topics (always wanted).
    fixed: Vec<String>,
    /// Subscribes with no shard to go to yet (no slot map, or the owner is
    /// down): routed again on the next map.
    parked: Vec<(String, u64)>,
    /// Names a MOVED sent elsewhere: routed there once, ahead of the map.
    redirects: HashMap<String, (String, u16)>,
    next_op: u64,
    next_conn: u64,
    seed: u64,
    decode_warned: Arc<AtomicBool>,
    ever_up: bool,
}

impl ShardedTask {
    pub(crate) fn new(
        shared: Arc<Shared>,
        cluster: Arc<Cluster>,
        registry: Arc<Registry>,
        sink: Arc<dyn Deliver>,
    ) -> Self {
        let node = &shared.settings.node_id;
        let fixed = vec![shared.keys.node(node), shared.keys.all()];
        let (events_tx, events) = mpsc::channel(EVENTS);
        let seed = node.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        Self {
            cancel: shared.cancel.clone(),
            map: cluster.watch(),
            cluster,
            registry,
            sink,
            shards: HashMap::new(),
            backoff: HashMap::new(),
            events_tx,
            events,
            fixed,
            parked: Vec::new(),
            redirects: HashMap::new(),
            next_op: 1 << 40,
            next_conn: 0,
            seed,
            decode_warned: Arc::new(AtomicBool::new(false)),
            ever_up: false,
            shared,
        }
    }

    pub(crate) async fn run(mut self) {
        for name in self.fixed.clone() {
            self.registry.set_name(name, true);
        }
        let mut ops: FuturesUnordered<Op> = FuturesUnordered::new();
        let mut tick = tokio::time::interval(PROBE_INTERVAL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        self.map.borrow_and_update();
        self.reconcile(&mut ops).await;
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => break,
                changed = self.map.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.on_map(&mut ops).await;
                }
                Some(event) = self.events.recv() => self.on_event(event, &mut ops).await,
                Some(done) = ops.next(), if !ops.is_empty() => self.on_done(done, &mut ops).await,
                () = self.registry.wake.notified() => self.reconcile(&mut ops).await,
                _ = tick.tick() => self.on_tick(&mut ops).await,
            }
            self.update_link();
        }
        self.shards.clear();
        self.shared.link.down();
        self.registry.lost();
    }

    /// Route what the hub changed.
    async fn reconcile(&mut self, ops: &mut FuturesUnordered<Op>) {
        for change in self.registry.reconcile(&mut self.next_op) {
            match change {
                Change::Subscribe(name, op) => self.route(name, op, ops).await,
                Change::Unsubscribe(name, op) => self.unsubscribe(&name, op, ops).await,
            }
        }
        self.close_idle();
    }

    /// Send `name`'s SUBSCRIBE `op` to the shard owning its slot (or park
    /// it until one is known).
    async fn route(&mut self, name: String, op: u64, ops: &mut FuturesUnordered<Op>) {
        let addr = match self.redirects.remove(&name) {
            Some(addr) => addr,
            None => {
                let map = self.map.borrow().clone();
                match map.owner(slot(&name)) {
                    Some(shard) if shard.online => shard.addr.clone(),
                    _ => {
                        self.parked.push((name, op));
                        return;
                    }
                }
            }
        };
        let label = format!("{}:{}", addr.0, addr.1);
        if !self.shards.contains_key(&label) {
            let shard = self.open(addr, label.clone(), ops);
            self.shards.insert(label.clone(), shard);
        }
        let Some(shard) = self.shards.get_mut(&label) else {
            return;
        };
        shard.names.insert(name.clone(), op);
        if let Some(conn) = &shard.conn {
            enqueue(ops, subscribe_op(conn, shard.id, name, op)).await;
        }
    }

    /// Undo SUBSCRIBE `op` of `name` wherever it went.
    async fn unsubscribe(&mut self, name: &str, op: Option<u64>, ops: &mut FuturesUnordered<Op>) {
        let Some(op) = op else { return };
        self.parked.retain(|(n, o)| !(n == name && *o == op));
        for shard in self.shards.values_mut() {
            if shard.names.get(name) == Some(&op) {
                shard.names.remove(name);
                if let Some(conn) = &shard.conn {
                    *shard.unsub_expected.entry(name.to_owned()).or_default() += 1;
                    enqueue(ops, unsubscribe_op(conn, shard.id, name.to_owned())).await;
                }
                return;
            }
        }
    }

    /// A new shard connection (connecting in the background).
    fn open(
        &mut self,
        addr: (String, u16),
        label: String,
        ops: &mut FuturesUnordered<Op>,
    ) -> ShardConn {
        self.next_conn += 1;
        let id = self.next_conn;
        let map = self.map.borrow().clone();
        let owner = map.shards.iter().find(|s| s.addr == addr);
        let tag = tag_for(self.seed, |s| owner.is_none_or(|o| o.owns(s))).unwrap_or_default();
        let probe_channel = self
            .shared
            .keys
            .shard_probe(&self.shared.settings.node_id, &tag);
        let handler = PushHandler {
            conn: id,
            probe_channel: probe_channel.clone(),
            sink: self.sink.clone(),
            events: self.events_tx.clone(),
            decode_warned: self.decode_warned.clone(),
        };
        ops.push(connect_op(
            self.cluster.clone(),
            self.shared.settings.timeout,
            addr.clone(),
            handler,
        ));
        ShardConn {
            id,
            addr,
            label,
            conn: None,
            probe_conn: None,
            probe_channel,
            probe_subscribed: false,
            probe_seq: 0,
            probe_sent: None,
            healthy: false,
            names: HashMap::new(),
            unsub_expected: HashMap::new(),
            failed: false,
        }
    }

    /// Close shard connections that carry no name any more.
    fn close_idle(&mut self) {
        let idle: Vec<String> = self
            .shards
            .iter()
            .filter(|(_, s)| s.names.is_empty() && !s.failed)
            .map(|(l, _)| l.clone())
            .collect();
        for label in idle {
            self.shards.remove(&label);
            self.cluster.set_down(&label, false);
            metrics::gauge!(METRIC_SHARD_UP, "shard" => label.clone()).set(0.0);
            tracing::debug!(shard = %label, "Redis shard pub/sub connection closed (no names left)");
        }
    }

    /// Drop shard connection `label` after a failure: its names go back to
    /// the registry to be routed anew (counted under `reason`), the shard
    /// is marked down until a new connection to it passes its probe.
    async fn fail(
        &mut self,
        label: &str,
        reason: &'static str,
        why: String,
        ops: &mut FuturesUnordered<Op>,
    ) {
        let Some(shard) = self.shards.remove(label) else {
            return;
        };
        self.cluster.set_down(label, true);
        metrics::gauge!(METRIC_SHARD_UP, "shard" => label.to_owned()).set(0.0);
        if shard.conn.is_some() {
            metrics::counter!(METRIC_RECONNECTS).increment(1);
            tracing::warn!(shard = %label, reason, error = %why, names = shard.names.len(), "Redis shard pub/sub connection lost; resubscribing");
        } else {
            metrics::counter!(METRIC_ERRORS, "op" => "connect").increment(1);
            tracing::debug!(shard = %label, error = %why, "cannot connect Redis shard pub/sub; retrying");
        }
        self.shared.target.suspect();
        let mut resubscribed = 0u64;
        for (name, op) in shard.names {
            if self.registry.lost_op(&name, op) {
                resubscribed += 1;
            }
        }
        if shard.conn.is_some() && resubscribed > 0 {
            metrics::counter!(METRIC_RESUBSCRIBES, "reason" => reason).increment(resubscribed);
        }
        // Routed again after a backoff, so a dead primary is not hammered;
        // meanwhile names routed to it wait in a stand-in.
        let pause = self.backoff.entry(label.to_owned()).or_default().next();
        let label = label.to_owned();
        let placeholder = self.open_placeholder(shard.addr, label.clone());
        self.shards.insert(label.clone(), placeholder);
        ops.push(Box::pin(async move {
            tokio::time::sleep(pause).await;
            Done::Retry { label }
        }));
    }

    /// A failed shard's stand-in while it backs off: names routed to it
    /// wait there (parked) until the retry.
    fn open_placeholder(&self, addr: (String, u16), label: String) -> ShardConn {
        ShardConn {
            id: 0,
            addr,
            label,
            conn: None,
            probe_conn: None,
            probe_channel: String::new(),
            probe_subscribed: false,
            probe_seq: 0,
            probe_sent: None,
            healthy: false,
            names: HashMap::new(),
            unsub_expected: HashMap::new(),
            failed: true,
        }
    }

    async fn on_map(&mut self, ops: &mut FuturesUnordered<Op>) {
        let map = self.map.borrow_and_update().clone();
        // Down marks of shards this node no longer talks to are stale.
        for shard in &map.shards {
            if !self.shards.contains_key(&shard.label()) {
                self.cluster.set_down(&shard.label(), false);
            }
        }
        self.redirects.clear();
        let parked = std::mem::take(&mut self.parked);
        for (name, op) in parked {
            self.route(name, op, ops).await;
        }
        // Names on a shard that no longer owns their slot: Redis sends a
        // sunsubscribe for a migrated slot, but a failed-over primary
        // cannot; move them now.
        let mut stray: Vec<(String, String, u64)> = Vec::new();
        for (label, shard) in &self.shards {
            for (name, op) in &shard.names {
                let owner = map.owner(slot(name)).map(|s| s.label());
                if owner.as_deref() != Some(label.as_str()) && owner.is_some() {
                    stray.push((label.clone(), name.clone(), *op));
                }
            }
        }
        let mut moved = 0u64;
        for (label, name, op) in stray {
            if let Some(shard) = self.shards.get_mut(&label) {
                shard.names.remove(&name);
                if let Some(conn) = &shard.conn {
                    *shard.unsub_expected.entry(name.clone()).or_default() += 1;
                    enqueue(ops, unsubscribe_op(conn, shard.id, name.clone())).await;
                }
            }
            if self.registry.lost_op(&name, op) {
                moved += 1;
            }
        }
        if moved > 0 {
            metrics::counter!(METRIC_RESUBSCRIBES, "reason" => "moved").increment(moved);
        }
        self.reconcile(ops).await;
    }

    async fn on_event(&mut self, event: Event, ops: &mut FuturesUnordered<Op>) {
        match event {
            Event::Probe { conn, seq } => {
                let Some(shard) = self.by_id(conn) else {
                    return;
                };
                if shard.probe_sent.is_some() && shard.probe_seq == seq {
                    shard.probe_sent = None;
                    if !shard.healthy {
                        shard.healthy = true;
                        let label = shard.label.clone();
                        self.cluster.set_down(&label, false);
                        metrics::gauge!(METRIC_SHARD_UP, "shard" => label.clone()).set(1.0);
                        self.backoff.remove(&label);
                        self.shared.link.bump();
                        tracing::info!(shard = %label, "Redis shard pub/sub healthy");
                    }
                }
            }
            Event::SUnsubscribe { conn, name } => {
                let Some(shard) = self.by_id(conn) else {
                    return;
                };
                if let Some(n) = shard.unsub_expected.get_mut(&name) {
                    *n -= 1;
                    if *n == 0 {
                        shard.unsub_expected.remove(&name);
                    }
                    return;
                }
                // Redis dropped it: its slot moved away from this shard.
                if name == shard.probe_channel {
                    let label = shard.label.clone();
                    self.fail(
                        &label,
                        "sunsubscribe",
                        "probe channel unsubscribed by Redis".into(),
                        ops,
                    )
                    .await;
                    return;
                }
                if let Some(op) = shard.names.remove(&name) {
                    self.shared.target.suspect();
                    if self.registry.lost_op(&name, op) {
                        metrics::counter!(METRIC_RESUBSCRIBES, "reason" => "sunsubscribe")
                            .increment(1);
                    }
                }
            }
            Event::Disconnected { conn } => {
                if let Some(label) = self.by_id(conn).map(|s| s.label.clone()) {
                    self.fail(&label, "connection_lost", "connection closed".into(), ops)
                        .await;
                }
            }
        }
    }

    async fn on_done(&mut self, done: Done, ops: &mut FuturesUnordered<Op>) {
        match done {
            Done::Connected { conn, result } => {
                let Some(label) = self.by_id(conn).map(|s| s.label.clone()) else {
                    return;
                };
                match result {
                    Err(e) => {
                        self.fail(&label, "connection_lost", e.to_string(), ops)
                            .await
                    }
                    Ok((sub, probe)) => {
                        let Some(shard) = self.shards.get_mut(&label) else {
                            return;
                        };
                        enqueue(
                            ops,
                            probe_subscribe_op(&sub, shard.id, shard.probe_channel.clone()),
                        )
                        .await;
                        let names: Vec<(String, u64)> =
                            shard.names.iter().map(|(n, o)| (n.clone(), *o)).collect();
                        for (name, op) in names {
                            enqueue(ops, subscribe_op(&sub, shard.id, name, op)).await;
                        }
                        shard.conn = Some(sub);
                        shard.probe_conn = Some(probe);
                        if self.ever_up {
                            tracing::info!(shard = %label, names = shard.names.len(), "Redis shard pub/sub connected");
                        }
                    }
                }
            }
            Done::Subscribed {
                conn,
                name,
                op,
                result,
            } => {
                let Some(label) = self.by_id(conn).map(|s| s.label.clone()) else {
                    return;
                };
                match result {
                    Ok(Value::Push {
                        kind: PushKind::SSubscribe,
                        data,
                    }) if data.first().is_some_and(|v| is_name(v, &name)) => {
                        if self.shards.get(&label).and_then(|s| s.names.get(&name)) == Some(&op) {
                            self.registry.confirmed(&name, op);
                        }
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::Moved | ErrorKind::Ask) => {
                        if let Some(shard) = self.shards.get_mut(&label) {
                            shard.names.remove(&name);
                        }
                        if let Some((host, _slot)) = e.redirect_node() {
                            if let Some((h, p)) = host.rsplit_once(':') {
                                if let Ok(p) = p.parse::<u16>() {
                                    self.redirects.insert(
                                        name.clone(),
                                        (h.trim_matches(['[', ']']).to_owned(), p),
                                    );
                                }
                            }
                        }
                        self.shared.target.suspect();
                        if self.registry.lost_op(&name, op) {
                            metrics::counter!(METRIC_RESUBSCRIBES, "reason" => "moved")
                                .increment(1);
                        }
                        self.reconcile(ops).await;
                    }
                    Err(e) if is_connection_error(&e) => {
                        self.fail(&label, "connection_lost", e.to_string(), ops)
                            .await;
                    }
                    other => {
                        let why = format!("SSUBSCRIBE {name}: unexpected reply {other:?}");
                        self.fail(&label, "desync", why, ops).await;
                    }
                }
            }
            Done::ProbeSubscribed { conn, result } => {
                let timeout = self.shared.settings.timeout;
                let Some(shard) = self.by_id(conn) else {
                    return;
                };
                match result {
                    Ok(Value::Push {
                        kind: PushKind::SSubscribe,
                        data,
                    }) if data
                        .first()
                        .is_some_and(|v| is_name(v, &shard.probe_channel)) =>
                    {
                        shard.probe_subscribed = true;
                        // Probe at once: the shard turns healthy on its answer.
                        shard.probe_seq += 1;
                        shard.probe_sent = Some(Instant::now());
                        let op = probe_op(
                            shard.probe_conn.clone(),
                            shard.probe_channel.clone(),
                            shard.probe_seq,
                            shard.id,
                            timeout,
                        );
                        ops.push(op);
                    }
                    other => {
                        let label = shard.label.clone();
                        let reason = match &other {
                            Err(e) if matches!(e.kind(), ErrorKind::Moved | ErrorKind::Ask) => {
                                "moved"
                            }
                            Err(e) if is_connection_error(e) => "connection_lost",
                            _ => "desync",
                        };
                        self.fail(&label, reason, format!("probe SSUBSCRIBE: {other:?}"), ops)
                            .await;
                    }
                }
            }
            Done::Unsubscribed { conn, result } => match result {
                Ok(Value::Push {
                    kind: PushKind::SUnsubscribe,
                    ..
                }) => {}
                Err(e) if matches!(e.kind(), ErrorKind::Moved | ErrorKind::Ask) => {}
                other => {
                    if let Some(label) = self.by_id(conn).map(|s| s.label.clone()) {
                        let reason = match &other {
                            Err(e) if is_connection_error(e) => "connection_lost",
                            _ => "desync",
                        };
                        self.fail(&label, reason, format!("SUNSUBSCRIBE: {other:?}"), ops)
                            .await;
                    }
                }
            },
            Done::Probed { conn, result } => {
                if let Err(e) = result {
                    let Some(shard) = self.by_id(conn) else {
                        return;
                    };
                    if shard.healthy {
                        shard.healthy = false;
                        let label = shard.label.clone();
                        self.cluster.set_down(&label, true);
                        metrics::gauge!(METRIC_SHARD_UP, "shard" => label.clone()).set(0.0);
                        tracing::warn!(shard = %label, error = %e, "Redis shard probe cannot be published; shard down");
                    }
                }
            }
            Done::Retry { label } => {
                let failed = self.shards.get(&label).is_some_and(|s| s.failed);
                if failed {
                    if let Some(placeholder) = self.shards.remove(&label) {
                        for (name, op) in placeholder.names {
                            self.registry.lost_op(&name, op);
                        }
                    }
                }
                self.reconcile(ops).await;
            }
        }
    }

    async fn on_tick(&mut self, ops: &mut FuturesUnordered<Op>) {
        let timeout = self.shared.settings.timeout;
        let probe_timeout = (PROBE_INTERVAL * 3).max(self.shared.settings.timeout * 2);
        let mut overdue = Vec::new();
        for shard in self.shards.values_mut() {
            if shard.conn.is_none() || !shard.probe_subscribed {
                continue;
            }
            match shard.probe_sent {
                Some(sent) if sent.elapsed() > probe_timeout => overdue.push(shard.label.clone()),
                Some(sent) if sent.elapsed() > PROBE_INTERVAL * 2 && shard.healthy => {
                    // Late: refuse this shard's publishes until it answers.
                    shard.healthy = false;
                    self.cluster.set_down(&shard.label, true);
                    metrics::gauge!(METRIC_SHARD_UP, "shard" => shard.label.clone()).set(0.0);
                }
                Some(_) => {}
                None => {
                    shard.probe_seq += 1;
                    shard.probe_sent = Some(Instant::now());
                    ops.push(probe_op(
                        shard.probe_conn.clone(),
                        shard.probe_channel.clone(),
                        shard.probe_seq,
                        shard.id,
                        timeout,
                    ));
                }
            }
        }
        for label in overdue {
            metrics::counter!(METRIC_PROBE_FAILURES).increment(1);
            self.fail(
                &label,
                "probe",
                "liveness probe did not come back".into(),
                ops,
            )
            .await;
        }
    }

    /// Connected and healthy while the node's own topics are subscribed on
    /// healthy shards.
    fn update_link(&mut self) {
        let served = self.fixed.iter().all(|name| {
            self.registry.is_active(name)
                && self
                    .shards
                    .values()
                    .any(|s| s.healthy && s.names.contains_key(name))
        });
        let link = &self.shared.link;
        if served && !link.is_connected() {
            link.set_served(true);
            if self.ever_up {
                tracing::info!("Redis Cluster pub/sub serves this node's topics again");
            } else {
                tracing::info!(
                    shards = self.shards.len(),
                    "Redis Cluster pub/sub connected"
                );
            }
            self.ever_up = true;
        } else if !served && link.is_connected() {
            link.set_served(false);
            tracing::warn!("Redis Cluster pub/sub lost a shard carrying this node's topics; unhealthy until it is back");
        }
    }

    fn by_id(&mut self, id: u64) -> Option<&mut ShardConn> {
        self.shards.values_mut().find(|s| s.id == id && !s.failed)
    }
}
