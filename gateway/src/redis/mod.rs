//! The Redis backends of a cluster node ([`RedisBackplane`], [`RedisHistory`],
//! [`RedisPresence`]) and [`connect`], which builds them over one shared
//! state (`shared`: the command pool, the Lua scripts, the link state) and
//! the background subscriber task ([`pubsub`]) that holds the node's one
//! pub/sub connection. This folder depends on the trait folders
//! (`backplane`, `history`, `presence`), never the other way round. docs/redis.md describes the key layout, the envelope
//! format, the scripts and the failure behaviour.
//!
//! Invariants:
//! - Every Redis round trip goes through [`Shared::call`] (or the
//!   subscriber's own timeouts): it is bounded by `settings.timeout` and
//!   fails with [`BackplaneError::Unavailable`] on timeout or I/O trouble.
//! - A node starts even when Redis is down: [`connect`] waits at most one
//!   timeout for the first connection (three in sentinel and cluster mode,
//!   for the first resolution or slot map), then returns unhealthy backends
//!   whose subscriber keeps reconnecting in the background.
//! - Every connection goes to the shared target's current client: fixed in
//!   single mode, swapped by the Sentinel watcher ([`sentinel`]) on a
//!   failover. In cluster mode commands go through redis-rs cluster
//!   connections and pub/sub through one connection per shard
//!   ([`cluster`], [`sharded`]), both following the slot map.
//! - Times stored in Redis are the client's wall clock in milliseconds
//!   since the Unix epoch (nodes are expected to run NTP).

mod backoff;
mod backplane;
mod cluster;
pub mod codec;
mod history;
pub(crate) mod interest;
pub mod keys;
pub(crate) mod occupancy;
mod presence;
pub(crate) mod pubsub;
pub(crate) mod scripts;
mod sentinel;
mod sharded;
mod shared;
pub(crate) mod slots;
mod target;

use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{PoolConfig, Timeouts};
use deadpool::Runtime;
use redis::IntoConnectionInfo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::backplane::RedisBackplane;
pub use self::history::RedisHistory;
pub(crate) use self::interest::Registry;
pub use self::keys::Keys;
pub use self::presence::RedisPresence;
pub use self::sentinel::SENTINEL_ERROR_OPS;
pub use self::sharded::{METRIC_RESUBSCRIBES, METRIC_SHARD_UP, RESUBSCRIBE_REASONS};
pub(crate) use self::shared::{millis, redis_error, Shared};
use self::shared::{CommandManager, Link, Pool, POOL_SIZE};
use self::target::Target;
use crate::backplane::{BackplaneError, Deliver};
pub use crate::config::{RedisAuth, RedisTopology};

/// Connection settings of the Redis backends.
#[derive(Clone)]
pub struct RedisSettings {
    /// One server by URL, or the primary Sentinel names (the URL may hold
    /// a secret: never logged).
    pub topology: RedisTopology,
    /// ACL credentials of the data nodes and the sentinels (redacted).
    pub auth: RedisAuth,
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
            .field("topology", &self.topology)
            .field("auth", &self.auth)
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
    /// Per-channel subscriber counts of every node.
    pub channels: Arc<occupancy::RedisChannels>,
}

/// The table of wanted pub/sub channels of a node with these settings: the
/// hub's [`crate::backplane::Interest`], handed to [`connect`] after.
pub(crate) fn registry(settings: &RedisSettings) -> Arc<Registry> {
    Arc::new(Registry::new(Keys::new(&settings.prefix)))
}

/// Connect the Redis backends of this node. Received envelopes go to
/// `sink`, in arrival order; what is subscribed follows `registry`.
///
/// Fails only on an unusable URL. When Redis (or every sentinel) is
/// unreachable it still returns (after at most `settings.timeout`, three
/// in sentinel mode), with unhealthy backends that keep reconnecting in
/// the background.
pub(crate) async fn connect(
    settings: RedisSettings,
    registry: Arc<Registry>,
    sink: Arc<dyn Deliver>,
) -> Result<RedisBackends, BackplaneError> {
    let bad_url = |e: ::redis::RedisError| {
        BackplaneError::Protocol(format!("invalid Redis URL ({:?})", e.kind()))
    };
    let mut cluster = None;
    let (target, watcher) = match &settings.topology {
        RedisTopology::Single { url } => {
            let mut info = url.as_str().into_connection_info().map_err(bad_url)?;
            if settings.auth.password.is_some() {
                info.redis.username = settings.auth.username.clone();
                info.redis.password = settings.auth.password.clone();
            }
            let client = ::redis::Client::open(info).map_err(bad_url)?;
            (Arc::new(Target::fixed(client)), None)
        }
        RedisTopology::Sentinel(topology) => {
            let target = Arc::new(Target::unresolved());
            let watcher =
                sentinel::Watcher::new(topology, &settings.auth, settings.timeout, target.clone())?;
            (target, Some(watcher))
        }
        RedisTopology::Cluster { seeds } => {
            cluster = Some(Arc::new(cluster::Cluster::new(
                seeds,
                &settings.auth,
                settings.timeout,
            )?));
            (Arc::new(Target::unresolved()), None)
        }
    };
    let mut pool_config = PoolConfig::new(POOL_SIZE);
    pool_config.timeouts = Timeouts {
        wait: Some(settings.timeout),
        create: Some(settings.timeout),
        recycle: Some(settings.timeout),
    };
    let link = Link::new();
    let manager = CommandManager {
        target: target.clone(),
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
        target,
        cancel: CancellationToken::new(),
        tasks: TaskTracker::new(),
        cluster,
        settings,
    });
    // Sentinel: the first resolution (sentinel query + ROLE) comes before
    // the first connection, so allow for it.
    let mut wait = shared.settings.timeout;
    if let Some(watcher) = watcher {
        wait = wait.saturating_mul(3);
        shared.tasks.spawn(watcher.run(shared.cancel.child_token()));
    }
    // Cluster: the slot map comes first, then one connection per shard.
    if let Some(cluster) = &shared.cluster {
        wait = wait.saturating_mul(3);
        shared.tasks.spawn(
            cluster
                .clone()
                .run_topology(shared.target.clone(), shared.cancel.child_token()),
        );
    }
    let subscriber = pubsub::Subscriber::start(shared.clone(), registry.clone(), sink)?;
    if !shared.link.wait_connected(wait).await {
        tracing::warn!(
            node = %shared.settings.node_id,
            "Redis is not reachable at start; serving unhealthy and reconnecting"
        );
    }
    Ok(RedisBackends {
        backplane: Arc::new(RedisBackplane::new(
            shared.clone(),
            registry.clone(),
            subscriber,
        )),
        history: Arc::new(RedisHistory::new(shared.clone())),
        channels: Arc::new(occupancy::RedisChannels::new(shared.clone())),
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
/// Metric: Sentinel failovers followed: primary address changes (counter).
pub const METRIC_FAILOVERS: &str = "gateway_redis_failovers_total";
/// Metric: failed Sentinel resolution steps by `op` (counter).
pub const METRIC_SENTINEL_ERRORS: &str = "gateway_redis_sentinel_errors_total";

/// Every `op` label value of [`METRIC_ERRORS`] (each call site uses one of
/// these), registered at 0 from the start.
pub const ERROR_OPS: [&str; 14] = [
    "publish",
    "subscribe",
    "history_read",
    "presence",
    "presence_refresh",
    "presence_restore",
    "presence_sweep",
    "user_index",
    "nodes",
    "node_purge",
    "probe",
    "connect",
    "decode",
    "topology",
];

/// Register descriptions of the Redis metrics with the installed recorder,
/// and every Redis counter at 0 with each of its label values, so that
/// `rate()` and alerts see the first error (a counter that appears at its
/// first increment has no earlier sample to rise from).
pub fn describe_metrics() {
    for op in ERROR_OPS {
        metrics::counter!(METRIC_ERRORS, "op" => op).absolute(0);
    }
    for op in SENTINEL_ERROR_OPS {
        metrics::counter!(METRIC_SENTINEL_ERRORS, "op" => op).absolute(0);
    }
    for reason in RESUBSCRIBE_REASONS {
        metrics::counter!(METRIC_RESUBSCRIBES, "reason" => reason).absolute(0);
    }
    for counter in [
        METRIC_RECONNECTS,
        METRIC_PROBE_FAILURES,
        METRIC_RECEIVED,
        METRIC_FAILOVERS,
    ] {
        metrics::counter!(counter).absolute(0);
    }
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        METRIC_UP,
        "Whether Redis is reachable and pub/sub delivers (1) or not (0)."
    );
    describe_counter!(
        METRIC_ERRORS,
        "Failed Redis calls, by op (publish, subscribe, history_read, presence, presence_refresh, presence_restore, presence_sweep, user_index, nodes, node_purge, probe, connect, decode, topology)."
    );
    describe_counter!(
        METRIC_RESUBSCRIBES,
        "Redis Cluster pub/sub names resubscribed, by reason (sunsubscribe: the slot moved; moved: a MOVED reply or a new slot map; connection_lost, probe, desync: the shard connection was rebuilt)."
    );
    describe_gauge!(
        METRIC_SHARD_UP,
        "Redis Cluster: whether this node's pub/sub connection to a shard (primary host:port) is up and its probe passes (1) or not (0)."
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
        METRIC_FAILOVERS,
        "Redis failovers followed: Sentinel primary address changes, and Redis Cluster shards with a new primary."
    );
    describe_counter!(
        METRIC_SENTINEL_ERRORS,
        "Failed Redis Sentinel resolution steps, by op (query: a sentinel did not answer; quorum: no majority; role: the named primary is unreachable or not a master)."
    );
    describe_counter!(
        METRIC_RECEIVED,
        "Envelopes received from Redis pub/sub and handed to the hub."
    );
}
