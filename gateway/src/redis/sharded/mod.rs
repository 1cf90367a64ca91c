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
//!
//! Jobs: this file (the task: its loop, routing, slot-map changes, push
//! events); `shard` (one shard connection's state); `lifecycle` (opening,
//! failing and closing shard connections); `done` (the finished round
//! trips); `health` (the probes, the link's readiness); `ops` (the round
//! trips); `push` (the push handler).

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::cluster::Cluster;
use super::interest::{Change, Registry};
use super::slots::{slot, SlotMap};
use super::Shared;
use crate::backplane::Deliver;

mod done;
mod health;
mod lifecycle;
mod ops;
mod push;
mod shard;

use self::ops::{enqueue, subscribe_op, unsubscribe_op, Op};
use self::push::Event;
use self::shard::ShardConn;

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
            Event::Probe { conn, seq } => self.on_probe(conn, seq),
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

    fn by_id(&mut self, id: u64) -> Option<&mut ShardConn> {
        self.shards.values_mut().find(|s| s.id == id && !s.failed)
    }
}
