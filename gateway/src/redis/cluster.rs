//! Cluster mode's shared state: the slot map (which primary owns which
//! slots, re-read from `CLUSTER SHARDS` every second and at once when a
//! command suggests it moved), the per-shard health gate, and the command
//! connections (redis-rs's own `ClusterConnection`, which routes each
//! command by its key's slot and follows MOVED).
//!
//! Invariants:
//! - Command connections never retry a request (`retries(0)`): a retried
//!   publish script may already have run, and at-most-once delivery must
//!   not turn into twice. A request that meets a moved slot or a dead
//!   primary fails (`Unavailable`); the topology task sees the new owner
//!   within a second (at once, woken by the failure) and rebuilds the
//!   connections, so the next request goes to the right primary.
//! - [`Cluster::check`] answers from memory: a name whose shard is known
//!   to be down (no owner, the cluster reports its primary failed, or this
//!   node's pub/sub connection to it fails its probe) is refused without a
//!   round trip, and the other shards keep serving.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::cluster::{ClusterClient, ClusterClientBuilder};
use ::redis::cluster_async::ClusterConnection;
use ::redis::{AsyncConnectionConfig, ProtocolVersion, RedisError, RedisResult, Value};
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::slots::{slot, SlotMap};
use super::target::{client_for, Target};
use super::{RedisAuth, METRIC_ERRORS, METRIC_FAILOVERS};
use crate::backplane::BackplaneError;

/// The pub/sub publish commands: plain and sharded.
pub(crate) const PUB_COMMAND: &str = "PUBLISH";
pub(crate) const SPUB_COMMAND: &str = "SPUBLISH";

/// Cluster connections the commands round-robin over (each is
/// multiplexed, one socket per primary).
const COMMAND_CONNS: usize = 4;
/// Dedicated cluster connections for publishes that `WAIT` for replicas
/// (WAIT blocks its connection).
pub(crate) const DURABLE_CONNS: usize = 4;
/// How often the slot map is re-read.
const REFRESH: Duration = Duration::from_secs(1);
/// Shortest pause between two reads woken by failing commands.
const MIN_REFRESH: Duration = Duration::from_millis(100);

/// Cluster-mode state shared by the command path, the durable publishes,
/// the topology task and the sharded subscriber.
pub(crate) struct Cluster {
    seeds: Vec<(String, u16)>,
    auth: RedisAuth,
    timeout: Duration,
    client: ClusterClient,
    conns: Vec<Mutex<Option<ClusterConnection>>>,
    durable: Vec<Mutex<Option<ClusterConnection>>>,
    next: AtomicUsize,
    /// One connection attempt at a time (the others wait for it).
    building: tokio::sync::Mutex<()>,
    /// The current slot map (empty until first read).
    map: watch::Sender<Arc<SlotMap>>,
    /// Shards (by `host:port`) whose pub/sub connection on this node is
    /// down or fails its probe; written by the sharded subscriber.
    down: RwLock<HashSet<String>>,
    /// Whether the last slot map read failed (to log transitions).
    failing: AtomicBool,
}

impl Cluster {
    /// The cluster state for these seeds; nothing connects yet.
    pub(crate) fn new(
        seeds: &[(String, u16)],
        auth: &RedisAuth,
        timeout: Duration,
    ) -> Result<Self, BackplaneError> {
        let urls: Vec<String> = seeds
            .iter()
            .map(|(h, p)| {
                if h.contains(':') {
                    format!("redis://[{h}]:{p}/")
                } else {
                    format!("redis://{h}:{p}/")
                }
            })
            .collect();
        let mut builder = ClusterClientBuilder::new(urls)
            .retries(0)
            .connection_timeout(timeout)
            .response_timeout(timeout);
        if let Some(password) = &auth.password {
            builder = builder.password(password.clone());
        }
        if let Some(username) = &auth.username {
            builder = builder.username(username.clone());
        }
        let client = builder.build().map_err(|e| {
            BackplaneError::Protocol(format!("invalid Redis Cluster seeds ({:?})", e.kind()))
        })?;
        Ok(Self {
            seeds: seeds.to_vec(),
            auth: auth.clone(),
            timeout,
            client,
            conns: (0..COMMAND_CONNS).map(|_| Mutex::new(None)).collect(),
            durable: (0..DURABLE_CONNS).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            building: tokio::sync::Mutex::new(()),
            map: watch::Sender::new(Arc::new(SlotMap::empty())),
            down: RwLock::new(HashSet::new()),
            failing: AtomicBool::new(false),
        })
    }

    /// A command connection (made on first use, and again after the slot
    /// map changed owners).
    pub(crate) async fn connection(&self) -> RedisResult<ClusterConnection> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        self.slot_conn(&self.conns[i]).await
    }

    /// Durable connection `i` (modulo [`DURABLE_CONNS`]).
    pub(crate) async fn durable_connection(&self, i: usize) -> RedisResult<ClusterConnection> {
        self.slot_conn(&self.durable[i % self.durable.len()]).await
    }

    async fn slot_conn(
        &self,
        slot: &Mutex<Option<ClusterConnection>>,
    ) -> RedisResult<ClusterConnection> {
        if let Some(conn) = slot.lock().clone() {
            return Ok(conn);
        }
        let _building = self.building.lock().await;
        if let Some(conn) = slot.lock().clone() {
            return Ok(conn);
        }
        let conn = tokio::time::timeout(self.timeout, self.client.get_async_connection())
            .await
            .map_err(|_| {
                RedisError::from((
                    ::redis::ErrorKind::IoError,
                    "Redis Cluster connect timed out",
                ))
            })??;
        *slot.lock() = Some(conn.clone());
        Ok(conn)
    }

    /// Drop every command connection: the next request makes new ones,
    /// which read the slot map afresh.
    fn reset(&self) {
        for slot in self.conns.iter().chain(&self.durable) {
            slot.lock().take();
        }
    }

    /// The current slot map.
    pub(crate) fn map(&self) -> Arc<SlotMap> {
        self.map.borrow().clone()
    }

    /// A receiver that sees every new slot map.
    pub(crate) fn watch(&self) -> watch::Receiver<Arc<SlotMap>> {
        self.map.subscribe()
    }

    /// Mark a shard's pub/sub connection on this node down or up.
    pub(crate) fn set_down(&self, label: &str, down: bool) {
        if down {
            if !self.down.read().contains(label) {
                self.down.write().insert(label.to_owned());
            }
        } else if self.down.read().contains(label) {
            self.down.write().remove(label);
        }
    }

    /// `Ok` unless the shard owning `name`'s slot is known to be down.
    pub(crate) fn check(&self, name: &str) -> Result<(), BackplaneError> {
        let slot = slot(name);
        let map = self.map.borrow();
        let Some(shard) = map.owner(slot) else {
            return Err(BackplaneError::Unavailable(format!(
                "no Redis Cluster shard serves slot {slot} (slot map not known yet, or the slot is unassigned)"
            )));
        };
        if !shard.online {
            return Err(BackplaneError::Unavailable(format!(
                "the Redis Cluster primary {} for slot {slot} is down (failover pending)",
                shard.label()
            )));
        }
        let down = self.down.read();
        if !down.is_empty() && down.contains(&shard.label()) {
            return Err(BackplaneError::Unavailable(format!(
                "the Redis Cluster shard {} for slot {slot} is unreachable from this node",
                shard.label()
            )));
        }
        Ok(())
    }

    /// A client for one cluster node, with the data-node credentials.
    pub(crate) fn node_client(
        &self,
        addr: &(String, u16),
        protocol: ProtocolVersion,
    ) -> RedisResult<::redis::Client> {
        client_for(
            &addr.0,
            addr.1,
            self.auth.username.clone(),
            self.auth.password.clone(),
            protocol,
        )
    }

    /// Connection settings bounded by the Redis timeout.
    pub(crate) fn conn_config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
    }

    /// Keep the slot map current until cancelled: read it every
    /// [`REFRESH`], and soon after a command suggests it changed
    /// ([`Target::suspect`]).
    pub(crate) async fn run_topology(
        self: Arc<Self>,
        target: Arc<Target>,
        cancel: CancellationToken,
    ) {
        let mut conn: Option<((String, u16), MultiplexedConnection)> = None;
        loop {
            match self.read_map(&mut conn).await {
                Ok(map) => {
                    if self.failing.swap(false, Ordering::Relaxed) {
                        tracing::info!("Redis Cluster slot map read again");
                    }
                    self.apply(map);
                }
                Err(e) => {
                    metrics::counter!(METRIC_ERRORS, "op" => "topology").increment(1);
                    if !self.failing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "cannot read the Redis Cluster slot map; retrying");
                    }
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(REFRESH) => {}
                () = target.suspected() => {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(MIN_REFRESH) => {}
                    }
                }
            }
        }
    }

    /// `CLUSTER SHARDS` from the first node that answers: the one asked
    /// last, then the known nodes, then the seeds.
    async fn read_map(
        &self,
        cached: &mut Option<((String, u16), MultiplexedConnection)>,
    ) -> Result<SlotMap, String> {
        if let Some((addr, conn)) = cached.as_mut() {
            match self.shards_on(conn, addr).await {
                Ok(map) => return Ok(map),
                Err(_) => *cached = None,
            }
        }
        let known = self.map();
        let mut candidates: Vec<(String, u16)> = Vec::new();
        for addr in known
            .shards
            .iter()
            .filter(|s| s.online)
            .map(|s| &s.addr)
            .chain(&known.nodes)
            .chain(&self.seeds)
        {
            if !candidates.contains(addr) {
                candidates.push(addr.clone());
            }
        }
        let mut last = String::from("no node to ask");
        for addr in candidates {
            let connect = async {
                let client = self
                    .node_client(&addr, ProtocolVersion::RESP2)
                    .map_err(|e| e.to_string())?;
                tokio::time::timeout(
                    self.timeout,
                    client.get_multiplexed_async_connection_with_config(&self.conn_config()),
                )
                .await
                .map_err(|_| "connect timed out".to_owned())?
                .map_err(|e| e.to_string())
            };
            match connect.await {
                Ok(mut conn) => match self.shards_on(&mut conn, &addr).await {
                    Ok(map) => {
                        *cached = Some((addr, conn));
                        return Ok(map);
                    }
                    Err(e) => last = format!("{}:{}: {e}", addr.0, addr.1),
                },
                Err(e) => last = format!("{}:{}: {e}", addr.0, addr.1),
            }
        }
        Err(last)
    }

    async fn shards_on(
        &self,
        conn: &mut MultiplexedConnection,
        addr: &(String, u16),
    ) -> Result<SlotMap, String> {
        let reply = tokio::time::timeout(
            self.timeout,
            ::redis::cmd("CLUSTER")
                .arg("SHARDS")
                .query_async::<Value>(conn),
        )
        .await
        .map_err(|_| "CLUSTER SHARDS timed out".to_owned())?
        .map_err(|e| e.to_string())?;
        SlotMap::parse(&reply, addr)
    }

    /// Publish a new map; count and log primary changes, and rebuild the
    /// command connections when an owner's address changed.
    fn apply(&self, new: SlotMap) {
        let old = self.map();
        if *old == new {
            return;
        }
        let mut moved = false;
        for shard in &new.shards {
            for &(a, _) in &shard.ranges {
                match old.owner(a) {
                    Some(before) if before.id != shard.id => {
                        moved = true;
                        if before.ranges == shard.ranges {
                            metrics::counter!(METRIC_FAILOVERS).increment(1);
                            tracing::warn!(
                                old = %before.label(),
                                new = %shard.label(),
                                "Redis Cluster shard has a new primary; following it"
                            );
                        }
                    }
                    Some(before) if before.addr != shard.addr => moved = true,
                    None if !old.shards.is_empty() => moved = true,
                    _ => {}
                }
            }
        }
        if old.shards.is_empty() {
            tracing::info!(
                shards = new.shards.len(),
                complete = new.is_complete(),
                "Redis Cluster slot map read"
            );
        } else if moved {
            tracing::info!(shards = new.shards.len(), "Redis Cluster slot map changed");
        }
        if moved {
            self.reset();
        }
        self.map.send_replace(Arc::new(new));
    }
}
