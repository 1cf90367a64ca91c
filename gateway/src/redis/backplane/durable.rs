//! [`Durable`]: history publishes that wait for replicas (a namespace's
//! `history_min_replicas`, docs/redis.md "History across failover").
//!
//! `WAIT` cannot run inside a script, and it blocks the connection it is
//! sent on until the replicas answer or its timeout passes: on the shared
//! multiplexed connections it would stall every command queued behind it.
//! So a durable publish sends `EVALSHA publish` and `WAIT n ms` as one
//! pipeline on a connection of its own small pool, held for the whole
//! round trip; durable throughput per node is about [`POOL_SIZE`] / the
//! replication round trip.
//!
//! Invariants:
//! - The call is bounded by the Redis timeout; `WAIT`'s own timeout is
//!   [`wait_timeout`] (at most half of it), never 0 (which would block
//!   forever). A connection that timed out or broke leaves the pool.
//! - Fewer confirmations than asked is [`BackplaneError::Unavailable`], but
//!   the publication is already live and in the primary's history: the
//!   caller reports "maybe published", and [`crate::history::UNCONFIRMED`]
//!   counts it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionLike, MultiplexedConnection};
use ::redis::{ErrorKind, RedisError, RedisResult, ScriptInvocation};
use deadpool::managed::{Metrics, Object, PoolConfig, RecycleError, RecycleResult, Timeouts};
use deadpool::Runtime;

use super::super::shared::{pool_error, Conn as CommandConn, Shared};
use super::super::target::Target;
use super::super::{millis, redis_error, METRIC_ERRORS};
use crate::backplane::BackplaneError;

/// Connections of the durable pool (each carries one publish at a time).
pub(crate) const POOL_SIZE: usize = 4;

/// Longest `WAIT`: replicas that take longer count as not confirming.
const WAIT_CAP: Duration = Duration::from_millis(500);

/// The reply of publish.lua (see there).
pub(crate) type PublishReply = (u64, String, String, String, String, String);

/// `WAIT`'s timeout: half the Redis timeout (so the reply still arrives
/// within it), at most [`WAIT_CAP`], at least 1 ms.
pub(crate) fn wait_timeout(redis_timeout: Duration) -> Duration {
    (redis_timeout / 2)
        .min(WAIT_CAP)
        .max(Duration::from_millis(1))
}

/// Makes the durable connections; like the shared pool's manager, it
/// checks a connection without a round trip: handed out unless the pub/sub
/// link came up again since it was made (Redis restarted or moved).
struct DurableManager {
    /// Where connections go: the shared pool's target (swapped on a
    /// Sentinel failover).
    target: Arc<Target>,
    /// The link's up count (`Link::generation`).
    link_ups: Arc<AtomicU64>,
}

/// A durable connection and the link generation it was made in.
struct Conn {
    conn: MultiplexedConnection,
    generation: u64,
}

impl deadpool::managed::Manager for DurableManager {
    type Type = Conn;
    type Error = RedisError;

    async fn create(&self) -> Result<Conn, RedisError> {
        let generation = self.link_ups.load(Ordering::Acquire);
        let client = self.target.client().ok_or_else(|| {
            RedisError::from((ErrorKind::IoError, "the Redis primary is not resolved yet"))
        })?;
        let conn = client.get_multiplexed_async_connection().await?;
        Ok(Conn { conn, generation })
    }

    async fn recycle(&self, conn: &mut Conn, _: &Metrics) -> RecycleResult<RedisError> {
        if conn.generation == self.link_ups.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(RecycleError::message(
                "made before the pub/sub link last reconnected",
            ))
        }
    }
}

/// The durable pool of one node.
pub(crate) struct Durable {
    pool: deadpool::managed::Pool<DurableManager>,
    /// Cluster mode: which dedicated cluster connection goes next.
    next: std::sync::atomic::AtomicUsize,
    /// Whether the last durable publish failed (to log transitions).
    failing: std::sync::atomic::AtomicBool,
}

impl Durable {
    /// A pool to the same server as the shared one (connections are made
    /// on first use, and retired like the shared pool's when the pub/sub
    /// link reconnects).
    pub(crate) fn new(shared: &Shared) -> Result<Self, BackplaneError> {
        let timeout = shared.settings.timeout;
        let mut config = PoolConfig::new(POOL_SIZE);
        config.timeouts = Timeouts {
            wait: Some(timeout),
            create: Some(timeout),
            recycle: Some(timeout),
        };
        let manager = DurableManager {
            target: shared.target.clone(),
            link_ups: shared.link.ups.clone(),
        };
        let pool = deadpool::managed::Pool::builder(manager)
            .config(config)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| BackplaneError::Protocol(format!("cannot create Redis pool: {e}")))?;
        Ok(Self {
            pool,
            next: std::sync::atomic::AtomicUsize::new(0),
            failing: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Run the publish script and `WAIT min_replicas`; returns the script's
    /// reply and how many replicas confirmed.
    pub(crate) async fn publish(
        &self,
        shared: &Shared,
        script: &ScriptInvocation<'_>,
        min_replicas: usize,
    ) -> Result<(PublishReply, usize), BackplaneError> {
        let wait_ms = millis(wait_timeout(shared.settings.timeout));
        let mut leased: Option<Object<DurableManager>> = None;
        let attempt = async {
            let mut conn = match &shared.cluster {
                // Cluster mode: dedicated cluster connections (the
                // pipeline goes to the shard of the script's keys).
                Some(cluster) => {
                    let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    CommandConn::Cluster(cluster.durable_connection(i).await.map_err(|e| {
                        shared.target.check(&e);
                        (redis_error(e), false)
                    })?)
                }
                None => {
                    let conn = self.pool.get().await.map_err(|e| (pool_error(e), false))?;
                    let multiplexed = conn.conn.clone();
                    leased = Some(conn);
                    CommandConn::Single(multiplexed)
                }
            };
            publish_and_wait(&mut conn, script, min_replicas, wait_ms)
                .await
                .map_err(|e| {
                    shared.target.check(&e);
                    let broken =
                        e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error();
                    (redis_error(e), broken)
                })
        };
        let (result, broken) = match tokio::time::timeout(shared.settings.timeout, attempt).await {
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
            Err(e) => {
                metrics::counter!(METRIC_ERRORS, "op" => "publish").increment(1);
                if !self
                    .failing
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::warn!(error = %e, "durable history publish failed");
                }
            }
            Ok(_) => {
                if self
                    .failing
                    .swap(false, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::info!("durable history publishes succeed again");
                }
            }
        }
        result
    }
}

/// `[EVALSHA publish, WAIT n ms]` on one connection; the script's source is
/// loaded once when Redis does not know it (after a restart), and the
/// pipeline sent again (a NOSCRIPT reply means it did not run).
async fn publish_and_wait<C: ConnectionLike>(
    conn: &mut C,
    script: &ScriptInvocation<'_>,
    min_replicas: usize,
    wait_ms: u64,
) -> RedisResult<(PublishReply, usize)> {
    let mut pipe = ::redis::pipe();
    pipe.invoke_script(script)
        .cmd("WAIT")
        .arg(min_replicas)
        .arg(wait_ms);
    match pipe.query_async::<(PublishReply, usize)>(conn).await {
        Err(e) if e.kind() == ErrorKind::NoScriptError => {
            script.load_async(conn).await?;
            pipe.query_async(conn).await
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_timeout_is_half_the_redis_timeout_capped_and_never_zero() {
        assert_eq!(
            wait_timeout(Duration::from_millis(1000)),
            Duration::from_millis(500)
        );
        assert_eq!(
            wait_timeout(Duration::from_millis(300)),
            Duration::from_millis(150)
        );
        assert_eq!(wait_timeout(Duration::from_secs(10)), WAIT_CAP);
        assert_eq!(
            wait_timeout(Duration::from_millis(1)),
            Duration::from_millis(1)
        );
    }
}
