//! The sharded subscriber's Redis round trips: each is a future that ends
//! in a [`Done`] for the task (connect a shard, (un)subscribe one name,
//! subscribe or publish a probe), and [`enqueue`], which hands a command to
//! its connection at once so commands keep the task's order.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{ProtocolVersion, PushInfo, RedisResult, Value};
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;

use super::super::cluster::{Cluster, SPUB_COMMAND};
use super::super::{redis_error, METRIC_ERRORS};
use super::push::{bytes, PushHandler};
use crate::backplane::BackplaneError;

pub(super) type Op = BoxFuture<'static, Done>;

/// A finished Redis round trip of the task.
pub(super) enum Done {
    Connected {
        conn: u64,
        result: Result<(MultiplexedConnection, MultiplexedConnection), BackplaneError>,
    },
    Subscribed {
        conn: u64,
        name: String,
        op: u64,
        result: RedisResult<Value>,
    },
    ProbeSubscribed {
        conn: u64,
        result: RedisResult<Value>,
    },
    Unsubscribed {
        conn: u64,
        result: RedisResult<Value>,
    },
    Probed {
        conn: u64,
        result: Result<(), BackplaneError>,
    },
    /// A failed shard's backoff ended: route its names again.
    Retry { label: String },
}

/// Connect the pub/sub (RESP3, `handler` gets its pushes) and probe
/// connections of shard connection `handler.conn`.
pub(super) fn connect_op(
    cluster: Arc<Cluster>,
    timeout: Duration,
    addr: (String, u16),
    handler: PushHandler,
) -> Op {
    let conn = handler.conn;
    Box::pin(async move {
        let result = async {
            let sub_client = cluster
                .node_client(&addr, ProtocolVersion::RESP3)
                .map_err(redis_error)?;
            let config = cluster
                .conn_config()
                .set_push_sender(move |info: PushInfo| handler.handle(info));
            let sub = tokio::time::timeout(
                timeout,
                sub_client.get_multiplexed_async_connection_with_config(&config),
            )
            .await
            .map_err(|_| BackplaneError::Unavailable("connect timed out".into()))?
            .map_err(redis_error)?;
            let probe_client = cluster
                .node_client(&addr, ProtocolVersion::RESP2)
                .map_err(redis_error)?;
            let probe = tokio::time::timeout(
                timeout,
                probe_client.get_multiplexed_async_connection_with_config(&cluster.conn_config()),
            )
            .await
            .map_err(|_| BackplaneError::Unavailable("connect timed out".into()))?
            .map_err(redis_error)?;
            Ok((sub, probe))
        }
        .await;
        Done::Connected { conn, result }
    })
}

pub(super) fn is_name(v: &Value, name: &str) -> bool {
    bytes(v) == Some(name.as_bytes())
}

pub(super) fn is_connection_error(e: &::redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_unrecoverable_error()
}

/// Send one pub/sub command about `name` on a shard connection; `done`
/// makes the task's event from the reply.
fn shard_command(
    conn: &MultiplexedConnection,
    command: &'static str,
    name: String,
    done: impl FnOnce(String, RedisResult<Value>) -> Done + Send + 'static,
) -> Op {
    let mut conn = conn.clone();
    Box::pin(async move {
        let mut cmd = ::redis::cmd(command);
        cmd.arg(&name);
        let result = conn.send_packed_command(&cmd).await;
        done(name, result)
    })
}

/// `SSUBSCRIBE name` (the registry's op `op`) on shard connection `id`.
pub(super) fn subscribe_op(conn: &MultiplexedConnection, id: u64, name: String, op: u64) -> Op {
    shard_command(conn, "SSUBSCRIBE", name, move |name, result| {
        Done::Subscribed {
            conn: id,
            name,
            op,
            result,
        }
    })
}

/// `SSUBSCRIBE` of shard connection `id`'s probe channel.
pub(super) fn probe_subscribe_op(conn: &MultiplexedConnection, id: u64, name: String) -> Op {
    shard_command(conn, "SSUBSCRIBE", name, move |_, result| {
        Done::ProbeSubscribed { conn: id, result }
    })
}

/// `SUNSUBSCRIBE name` on shard connection `id`.
pub(super) fn unsubscribe_op(conn: &MultiplexedConnection, id: u64, name: String) -> Op {
    shard_command(conn, "SUNSUBSCRIBE", name, move |_, result| {
        Done::Unsubscribed { conn: id, result }
    })
}

/// Probe `seq` of shard connection `id`: `SPUBLISH` on its probe channel
/// over its probe connection.
pub(super) fn probe_op(
    conn: Option<MultiplexedConnection>,
    channel: String,
    seq: u64,
    id: u64,
    timeout: Duration,
) -> Op {
    Box::pin(async move {
        let result = match conn {
            None => Err(BackplaneError::Unavailable("no probe connection".into())),
            Some(mut conn) => {
                let mut cmd = ::redis::cmd(SPUB_COMMAND);
                cmd.arg(&channel).arg(seq);
                match tokio::time::timeout(timeout, cmd.query_async::<i64>(&mut conn)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(redis_error(e)),
                    Err(_) => Err(BackplaneError::Unavailable("probe timed out".into())),
                }
            }
        };
        if result.is_err() {
            metrics::counter!(METRIC_ERRORS, "op" => "probe").increment(1);
        }
        Done::Probed { conn: id, result }
    })
}

/// Poll an op once, which hands its command to the connection now (in
/// command order), then keep it to await the reply.
pub(super) async fn enqueue(ops: &mut FuturesUnordered<Op>, mut op: Op) {
    match futures_util::poll!(op.as_mut()) {
        Poll::Ready(done) => ops.push(Box::pin(std::future::ready(done))),
        Poll::Pending => ops.push(op),
    }
}
