//! The state the Redis backends of one node share: the command pool (and its
//! manager), the pub/sub link state written by the subscriber task, and the
//! mapping of Redis errors to [`BackplaneError`].
//!
//! Invariant: every Redis round trip of the command path goes through
//! [`Shared::call`]: it is bounded by the configured timeout, counted under
//! its `op` when it fails, and fails with [`BackplaneError::Unavailable`] on
//! timeout or I/O trouble.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionLike, MultiplexedConnection};
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Value};
use deadpool::managed::{Metrics, Object, PoolError, RecycleError, RecycleResult};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cluster::{Cluster, PUB_COMMAND, SPUB_COMMAND};
use super::keys::Keys;
use super::scripts::Scripts;
use super::target::{unresolved, Target};
use super::{RedisSettings, METRIC_ERRORS, METRIC_UP};
use crate::backplane::BackplaneError;

/// Command connections; they are multiplexed, so a few carry a lot.
pub(crate) const POOL_SIZE: usize = 16;

/// A command connection as [`Shared::call`] hands it out: a pooled one to
/// the one server (single and sentinel mode), or a Redis Cluster
/// connection that routes each command to the shard owning its key.
#[derive(Clone)]
pub(crate) enum Conn {
    /// Single or sentinel mode.
    Single(MultiplexedConnection),
    /// Cluster mode.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The command pool's manager. deadpool-redis's own manager makes the
/// connections, but it also sends `UNWATCH` + `PING` on every checkout: one
/// extra round trip before every command (twice the round trips of a publish,
/// measured in the latency benchmark). This one checks a connection without
/// a round trip: it is handed out unless the pub/sub link came up again
/// since it was made (Redis restarted or failed over, so it is most likely
/// dead, or, after a Sentinel failover, a demoted replica: the pool makes a
/// fresh one instead of failing a command on it). New connections go to the
/// [`Target`]'s current client, as deadpool-redis's `create` did with its
/// fixed one.
/// [`Shared::call`] also drops a connection from the pool when a command on
/// it fails with a connection error or times out.
pub(crate) struct CommandManager {
    /// Where new connections go (swapped on a Sentinel failover).
    pub(crate) target: Arc<Target>,
    /// The link's up count ([`Link::generation`]).
    pub(crate) link_ups: Arc<AtomicU64>,
}

/// A pooled command connection and the link generation it was made in.
pub(crate) struct Pooled {
    conn: MultiplexedConnection,
    generation: u64,
}

impl deadpool::managed::Manager for CommandManager {
    type Type = Pooled;
    type Error = RedisError;

    async fn create(&self) -> Result<Pooled, RedisError> {
        let generation = self.link_ups.load(Ordering::Acquire);
        let client = self.target.client().ok_or_else(unresolved)?;
        let conn = client.get_multiplexed_async_connection().await?;
        Ok(Pooled { conn, generation })
    }

    async fn recycle(&self, pooled: &mut Pooled, _: &Metrics) -> RecycleResult<RedisError> {
        if pooled.generation == self.link_ups.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(RecycleError::message(
                "made before the pub/sub link last reconnected",
            ))
        }
    }
}

pub(crate) type Pool = deadpool::managed::Pool<CommandManager>;

/// State shared by the Redis backends of one node.
pub(crate) struct Shared {
    /// Settings as given to [`connect`].
    pub(crate) settings: RedisSettings,
    /// Key and channel names under the configured prefix.
    pub(crate) keys: Keys,
    /// Command connections (never used for SUBSCRIBE).
    pub(crate) pool: Pool,
    /// Where connections go; shared with the pool's manager.
    pub(crate) target: Arc<Target>,
    /// Cancelled when the backends shut down: stops the subscriber and the
    /// Sentinel watcher.
    pub(crate) cancel: CancellationToken,
    /// Tasks of the Redis layer on the node's runtime (the Sentinel
    /// watcher); the subscriber's shutdown waits for them.
    pub(crate) tasks: TaskTracker,
    /// The Lua scripts (loaded lazily, reloaded after a Redis restart).
    pub(crate) scripts: Scripts,
    /// Pub/sub link state, written only by the subscriber task.
    pub(crate) link: Link,
    /// Whether the last command failed (to log transitions, not every error).
    pub(crate) failing: AtomicBool,
    /// Cluster mode: the slot map, the per-shard health and the cluster
    /// command connections (`None` in single and sentinel mode).
    pub(crate) cluster: Option<Arc<Cluster>>,
}

impl Shared {
    /// Run one Redis round trip on a pooled connection, bounded by the
    /// timeout; errors are counted under `op` and mapped to
    /// [`BackplaneError`]. A connection that timed out or failed with a
    /// connection error leaves the pool (the pool makes a new one when
    /// needed), so a dead or stuck connection is not handed out again.
    pub(crate) async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, BackplaneError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let mut leased: Option<Object<CommandManager>> = None;
        let attempt = async {
            let conn = match &self.cluster {
                Some(cluster) => Conn::Cluster(cluster.connection().await.map_err(|e| {
                    self.target.check(&e);
                    (redis_error(e), false)
                })?),
                None => {
                    let conn = self.pool.get().await.map_err(|e| {
                        if let PoolError::Backend(e) = &e {
                            self.target.check(e);
                        }
                        (pool_error(e), false)
                    })?;
                    let multiplexed = conn.conn.clone();
                    leased = Some(conn);
                    Conn::Single(multiplexed)
                }
            };
            f(conn).await.map_err(|e| {
                self.target.check(&e);
                let broken =
                    e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error();
                (redis_error(e), broken)
            })
        };
        let (result, broken) = match tokio::time::timeout(self.settings.timeout, attempt).await {
            Ok(Ok(v)) => (Ok(v), false),
            Ok(Err((e, broken))) => (Err(e), broken),
            Err(_) => {
                self.target.suspect();
                (
                    Err(BackplaneError::Unavailable("Redis call timed out".into())),
                    true,
                )
            }
        };
        if broken {
            if let Some(conn) = leased.take() {
                drop(Object::take(conn));
            }
        }
        match &result {
            Ok(_) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(op, "Redis commands succeed again");
                }
            }
            Err(e) => {
                metrics::counter!(METRIC_ERRORS, "op" => op).increment(1);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(op, error = %e, "Redis command failed");
                }
            }
        }
        result
    }

    /// The command that publishes on pub/sub channels: `SPUBLISH` in
    /// cluster mode (sharded pub/sub: only the owning shard carries it;
    /// a plain `PUBLISH` would cross the whole cluster bus), else `PUBLISH`.
    pub(crate) fn publish_command(&self) -> &'static str {
        if self.cluster.is_some() {
            SPUB_COMMAND
        } else {
            PUB_COMMAND
        }
    }

    /// Refuse at once what would go to a shard known to be down (cluster
    /// mode: the owner of `name`'s slot is unknown, failed, or its pub/sub
    /// connection fails its probe); `Ok` in the other modes.
    pub(crate) fn check_shard(&self, name: &str) -> Result<(), BackplaneError> {
        match &self.cluster {
            Some(cluster) => cluster.check(name),
            None => Ok(()),
        }
    }
}

/// The pub/sub link as the subscriber task sees it.
pub(crate) struct Link {
    /// True while the pub/sub connection is up and resubscribed.
    connected: watch::Sender<bool>,
    /// Connected and the last liveness probe went through.
    healthy: AtomicBool,
    /// How many times the link came up (see [`Link::generation`]); shared
    /// with the command pool's manager.
    pub(crate) ups: Arc<AtomicU64>,
}

impl Link {
    pub(crate) fn new() -> Self {
        metrics::gauge!(METRIC_UP).set(0.0);
        Self {
            connected: watch::Sender::new(false),
            healthy: AtomicBool::new(false),
            ups: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Incremented every time the link comes up: a change tells the node
    /// that Redis may have lost its entries, even after an outage too short
    /// to observe through [`Link::is_healthy`].
    pub(crate) fn generation(&self) -> u64 {
        self.ups.load(Ordering::Acquire)
    }

    pub(crate) fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Record a fresh connection (connected and healthy). Healthy first:
    /// [`Link::wait_connected`] (and so [`connect`]) may return as soon as
    /// `connected` flips, and must then see a healthy link.
    pub(crate) fn up(&self) {
        self.ups.fetch_add(1, Ordering::AcqRel);
        self.set_healthy(true);
        self.connected.send_replace(true);
    }

    /// Count one more connection coming up without changing the state
    /// (cluster mode: a shard connection other than the node's own
    /// topics' came up, so that shard may have lost its entries).
    pub(crate) fn bump(&self) {
        self.ups.fetch_add(1, Ordering::AcqRel);
    }

    /// Cluster mode: the node's own topics are served (connected and
    /// healthy) or not, without counting an up.
    pub(crate) fn set_served(&self, served: bool) {
        if served {
            self.set_healthy(true);
            self.connected.send_replace(true);
        } else {
            self.down();
        }
    }

    /// Record the loss of the pub/sub connection.
    pub(crate) fn down(&self) {
        self.connected.send_replace(false);
        self.set_healthy(false);
    }

    /// Set health; returns whether it changed.
    pub(crate) fn set_healthy(&self, healthy: bool) -> bool {
        metrics::gauge!(METRIC_UP).set(if healthy { 1.0 } else { 0.0 });
        self.healthy.swap(healthy, Ordering::AcqRel) != healthy
    }

    /// Wait until connected, at most `limit`; returns whether it is.
    pub(crate) async fn wait_connected(&self, limit: Duration) -> bool {
        let mut rx = self.connected.subscribe();
        let up = tokio::time::timeout(limit, rx.wait_for(|up| *up)).await;
        matches!(up, Ok(Ok(_)))
    }
}

/// Map a Redis error: trouble reaching Redis is `Unavailable`, an answer
/// we cannot use is `Protocol`.
pub(crate) fn redis_error(e: RedisError) -> BackplaneError {
    // OOM: Redis is at `maxmemory` and refuses writes (the scripts' flags
    // make it refuse before a script writes anything): a full dependency.
    let unavailable = e.code() == Some("OOM")
        || e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::BusyLoadingError
                | ErrorKind::TryAgain
                | ErrorKind::ClusterDown
                | ErrorKind::MasterDown
                | ErrorKind::ReadOnly
                | ErrorKind::AuthenticationFailed
                | ErrorKind::Moved
                | ErrorKind::Ask
                | ErrorKind::ClusterConnectionNotFound
        );
    if unavailable {
        BackplaneError::Unavailable(format!("Redis: {e}"))
    } else {
        BackplaneError::Protocol(format!("Redis: {e}"))
    }
}

pub(crate) fn pool_error(e: PoolError<RedisError>) -> BackplaneError {
    match e {
        PoolError::Backend(e) => redis_error(e),
        other => BackplaneError::Unavailable(format!("Redis pool: {other}")),
    }
}

/// Duration as whole milliseconds (at least 1, for PEXPIRE).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
