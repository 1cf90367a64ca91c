//! Redis cluster backends: connection setup and the state the three Redis
//! backends share ([`RedisBackplane`], [`RedisHistory`], [`RedisPresence`]).
//!
//! Owns the command pool (deadpool, connections made by deadpool-redis's
//! manager, multiplexed; see [`CommandManager`]), the
//! Lua scripts, the link state (connected / healthy)
//! and the background subscriber task ([`pubsub`]) that holds the node's one
//! pub/sub connection. docs/redis.md describes the key layout, the envelope
//! format, the scripts and the failure behaviour.
//!
//! Invariants:
//! - Every Redis round trip goes through [`Shared::call`] (or the
//!   subscriber's own timeouts): it is bounded by `settings.timeout` and
//!   fails with [`BackplaneError::Unavailable`] on timeout or I/O trouble.
//! - A node starts even when Redis is down: [`connect`] waits at most one
//!   timeout for the first connection, then returns unhealthy backends
//!   whose subscriber keeps reconnecting in the background.
//! - Times stored in Redis are the client's wall clock in milliseconds
//!   since the Unix epoch (nodes are expected to run NTP).

pub mod codec;
pub mod keys;
#[cfg(test)]
mod presence_tests;
pub(crate) mod pubsub;
pub(crate) mod scripts;
#[cfg(test)]
pub(crate) mod testutil;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::redis::aio::MultiplexedConnection;
use ::redis::{ErrorKind, RedisError};
use deadpool::managed::{
    Metrics, Object, PoolConfig, PoolError, RecycleError, RecycleResult, Timeouts,
};
use deadpool::Runtime;
use rand::distr::{Alphanumeric, SampleString};
use tokio::sync::watch;

pub use self::keys::Keys;
pub use crate::backplane::redis::RedisBackplane;
use crate::backplane::{BackplaneError, Deliver};
pub use crate::history::redis::RedisHistory;
pub use crate::presence::redis::RedisPresence;

/// Connection settings of the Redis backends.
#[derive(Clone)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]` (may hold a secret: never logged).
    pub url: String,
    /// Prefix of every key and pub/sub channel (`P` in docs/redis.md).
    pub prefix: String,
    /// This node's id (its `P:node:<id>` channel and registry entry).
    pub node_id: String,
    /// Upper bound of every Redis call, connection attempts included.
    pub timeout: Duration,
    /// Presence, user index and node registry entries expire this long
    /// after their last refresh.
    pub presence_ttl: Duration,
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &"<redacted>")
            .field("prefix", &self.prefix)
            .field("node_id", &self.node_id)
            .field("timeout", &self.timeout)
            .field("presence_ttl", &self.presence_ttl)
            .finish()
    }
}

/// The three Redis backends of one node; they share one command pool.
#[derive(Clone)]
pub struct RedisBackends {
    /// Cross-node fan-out (owns the subscriber task).
    pub backplane: Arc<RedisBackplane>,
    /// History reads.
    pub history: Arc<RedisHistory>,
    /// Presence, user index and node registry.
    pub presence: Arc<RedisPresence>,
}

/// Connect the Redis backends of this node. Received envelopes go to
/// `sink`, one at a time and in arrival order.
///
/// Fails only on an unusable URL. When Redis is unreachable it still
/// returns (after at most `settings.timeout`), with unhealthy backends that
/// keep reconnecting in the background.
pub async fn connect(
    settings: RedisSettings,
    sink: Arc<dyn Deliver>,
) -> Result<RedisBackends, BackplaneError> {
    let client = ::redis::Client::open(settings.url.as_str())
        .map_err(|e| BackplaneError::Protocol(format!("invalid Redis URL ({:?})", e.kind())))?;
    let mut pool_config = PoolConfig::new(POOL_SIZE);
    pool_config.timeouts = Timeouts {
        wait: Some(settings.timeout),
        create: Some(settings.timeout),
        recycle: Some(settings.timeout),
    };
    let manager = deadpool_redis::Manager::new(settings.url.as_str())
        .map_err(|e| BackplaneError::Protocol(format!("invalid Redis URL ({:?})", e.kind())))?;
    let link = Link::new();
    let manager = CommandManager {
        inner: manager,
        link_ups: link.ups.clone(),
    };
    let pool = Pool::builder(manager)
        .config(pool_config)
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| BackplaneError::Protocol(format!("cannot create Redis pool: {e}")))?;
    let shared = Arc::new(Shared {
        keys: Keys::new(&settings.prefix),
        scripts: scripts::Scripts::new(),
        link,
        failing: AtomicBool::new(false),
        pool,
        settings,
    });
    let subscriber = pubsub::Subscriber::start(shared.clone(), client, sink);
    if !shared.link.wait_connected(shared.settings.timeout).await {
        tracing::warn!(
            node = %shared.settings.node_id,
            "Redis is not reachable at start; serving unhealthy and reconnecting"
        );
    }
    Ok(RedisBackends {
        backplane: Arc::new(RedisBackplane::new(shared.clone(), subscriber)),
        history: Arc::new(RedisHistory::new(shared.clone())),
        presence: Arc::new(RedisPresence::new(shared)),
    })
}

/// Metric: whether Redis is reachable and the receive path alive (gauge 0/1).
pub const METRIC_UP: &str = "gateway_redis_up";
/// Metric: failed Redis calls by `op` (counter).
pub const METRIC_ERRORS: &str = "gateway_redis_errors_total";
/// Metric: pub/sub reconnections after a loss (counter).
pub const METRIC_RECONNECTS: &str = "gateway_redis_reconnects_total";
/// Metric: liveness probes that did not come back (counter).
pub const METRIC_PROBE_FAILURES: &str = "gateway_redis_probe_failures_total";
/// Metric: envelopes received from Redis pub/sub (counter).
pub const METRIC_RECEIVED: &str = "gateway_backplane_received_total";

/// Register descriptions of the Redis metrics with the installed recorder.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        METRIC_UP,
        "Whether Redis is reachable and pub/sub delivers (1) or not (0)."
    );
    describe_counter!(
        METRIC_ERRORS,
        "Failed Redis calls, by op (publish, subscribe, history_read, presence, presence_refresh, user_index, nodes, probe, connect, decode)."
    );
    describe_counter!(
        METRIC_RECONNECTS,
        "Redis pub/sub reconnections after a lost connection."
    );
    describe_counter!(
        METRIC_PROBE_FAILURES,
        "Redis pub/sub liveness probes that did not come back in time."
    );
    describe_counter!(
        METRIC_RECEIVED,
        "Envelopes received from Redis pub/sub and handed to the hub."
    );
}

/// Command connections; they are multiplexed, so a few carry a lot.
const POOL_SIZE: usize = 16;

/// The command pool's manager. deadpool-redis's own manager makes the
/// connections, but it also sends `UNWATCH` + `PING` on every checkout: one
/// extra round trip before every command (twice the round trips of a publish,
/// measured in the latency benchmark). This one checks a connection without
/// a round trip: it is handed out unless the pub/sub link came up again
/// since it was made (Redis restarted or failed over, so it is most likely
/// dead: the pool makes a fresh one instead of failing a command on it).
/// [`Shared::call`] also drops a connection from the pool when a command on
/// it fails with a connection error or times out.
pub(crate) struct CommandManager {
    inner: deadpool_redis::Manager,
    /// The link's up count ([`Link::generation`]).
    link_ups: Arc<AtomicU64>,
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
        let conn = deadpool::managed::Manager::create(&self.inner).await?;
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

type Pool = deadpool::managed::Pool<CommandManager>;

/// State shared by the Redis backends of one node.
pub(crate) struct Shared {
    /// Settings as given to [`connect`].
    pub(crate) settings: RedisSettings,
    /// Key and channel names under the configured prefix.
    pub(crate) keys: Keys,
    /// Command connections (never used for SUBSCRIBE).
    pub(crate) pool: Pool,
    /// The Lua scripts (loaded lazily, reloaded after a Redis restart).
    pub(crate) scripts: scripts::Scripts,
    /// Pub/sub link state, written only by the subscriber task.
    pub(crate) link: Link,
    /// Whether the last command failed (to log transitions, not every error).
    failing: AtomicBool,
}

impl Shared {
    /// Run one Redis round trip on a pooled connection, bounded by the
    /// timeout; errors are counted under `op` and mapped to
    /// [`BackplaneError`]. A connection that timed out or failed with a
    /// connection error leaves the pool (the pool makes a new one when
    /// needed), so a dead or stuck connection is not handed out again.
    pub(crate) async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, BackplaneError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let mut leased: Option<Object<CommandManager>> = None;
        let attempt = async {
            let conn = self.pool.get().await.map_err(|e| (pool_error(e), false))?;
            let multiplexed = conn.conn.clone();
            leased = Some(conn);
            f(multiplexed).await.map_err(|e| {
                let broken =
                    e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error();
                (redis_error(e), broken)
            })
        };
        let (result, broken) = match tokio::time::timeout(self.settings.timeout, attempt).await {
            Ok(Ok(v)) => (Ok(v), false),
            Ok(Err((e, broken))) => (Err(e), broken),
            Err(_) => (
                Err(BackplaneError::Unavailable("Redis call timed out".into())),
                true,
            ),
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
}

/// The pub/sub link as the subscriber task sees it.
pub(crate) struct Link {
    /// True while the pub/sub connection is up and resubscribed.
    connected: watch::Sender<bool>,
    /// Connected and the last liveness probe went through.
    healthy: AtomicBool,
    /// How many times the link came up (see [`Link::generation`]); shared
    /// with the command pool's manager.
    ups: Arc<AtomicU64>,
}

impl Link {
    fn new() -> Self {
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
    fn up(&self) {
        self.ups.fetch_add(1, Ordering::AcqRel);
        self.set_healthy(true);
        self.connected.send_replace(true);
    }

    /// Record the loss of the pub/sub connection.
    fn down(&self) {
        self.connected.send_replace(false);
        self.set_healthy(false);
    }

    /// Set health; returns whether it changed.
    fn set_healthy(&self, healthy: bool) -> bool {
        metrics::gauge!(METRIC_UP).set(if healthy { 1.0 } else { 0.0 });
        self.healthy.swap(healthy, Ordering::AcqRel) != healthy
    }

    /// Wait until connected, at most `limit`; returns whether it is.
    async fn wait_connected(&self, limit: Duration) -> bool {
        let mut rx = self.connected.subscribe();
        let up = tokio::time::timeout(limit, rx.wait_for(|up| *up)).await;
        matches!(up, Ok(Ok(_)))
    }
}

/// Map a Redis error: trouble reaching Redis is `Unavailable`, an answer
/// we cannot use is `Protocol`.
pub(crate) fn redis_error(e: RedisError) -> BackplaneError {
    let unavailable = e.is_io_error()
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
        );
    if unavailable {
        BackplaneError::Unavailable(format!("Redis: {e}"))
    } else {
        BackplaneError::Protocol(format!("Redis: {e}"))
    }
}

fn pool_error(e: PoolError<RedisError>) -> BackplaneError {
    match e {
        PoolError::Backend(e) => redis_error(e),
        other => BackplaneError::Unavailable(format!("Redis pool: {other}")),
    }
}

/// Wall clock in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A fresh random stream epoch.
pub(crate) fn new_epoch() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 12)
}

/// Duration as whole milliseconds (at least 1, for PEXPIRE).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod pool_tests {
    use super::*;
    use crate::redis::testutil::{RedisServer, TestResult};
    use deadpool::managed::Manager as _;

    fn metrics() -> Metrics {
        Metrics {
            created: std::time::Instant::now(),
            recycled: None,
            recycle_count: 0,
        }
    }

    /// Checkouts cost no round trip, but a connection made before the
    /// pub/sub link last came up (Redis restarted or failed over) is not
    /// handed out again.
    #[tokio::test]
    async fn connections_from_before_a_link_reconnect_are_not_recycled() -> TestResult {
        let server = RedisServer::start().await?;
        let ups = Arc::new(AtomicU64::new(3));
        let manager = CommandManager {
            inner: deadpool_redis::Manager::new(server.url())?,
            link_ups: ups.clone(),
        };
        let mut old = manager.create().await?;
        assert!(manager.recycle(&mut old, &metrics()).await.is_ok());
        ups.fetch_add(1, Ordering::AcqRel);
        assert!(manager.recycle(&mut old, &metrics()).await.is_err());
        let mut fresh = manager.create().await?;
        assert!(manager.recycle(&mut fresh, &metrics()).await.is_ok());
        let pong: String = ::redis::cmd("PING").query_async(&mut fresh.conn).await?;
        assert_eq!(pong, "PONG");
        Ok(())
    }
}
