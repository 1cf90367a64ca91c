//! Shard health: the liveness probe of every shard connection (sent once
//! a second, answered through the push handler) and what it decides (the
//! shard up or down, the connection rebuilt), and the node link's readiness.

use ::redis::{ErrorKind, PushKind, RedisResult, Value};
use futures_util::stream::FuturesUnordered;

use super::super::METRIC_PROBE_FAILURES;
use super::ops::{is_connection_error, is_name, Op};
use super::{ShardedTask, METRIC_SHARD_UP, PROBE_INTERVAL};
use crate::backplane::BackplaneError;

impl ShardedTask {
    /// Once a second: probe every subscribed shard connection; mark a late
    /// probe's shard down, rebuild an overdue one.
    pub(super) async fn on_tick(&mut self, ops: &mut FuturesUnordered<Op>) {
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
                    ops.push(shard.next_probe(timeout));
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

    /// Probe `seq` of shard connection `conn` came back: its shard is
    /// healthy (again).
    pub(super) fn on_probe(&mut self, conn: u64, seq: u64) {
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

    /// The SSUBSCRIBE of shard connection `conn`'s probe channel finished:
    /// probe at once, or rebuild the connection.
    pub(super) async fn on_probe_subscribed(
        &mut self,
        conn: u64,
        result: RedisResult<Value>,
        ops: &mut FuturesUnordered<Op>,
    ) {
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
                ops.push(shard.next_probe(timeout));
            }
            other => {
                let label = shard.label.clone();
                let reason = match &other {
                    Err(e) if matches!(e.kind(), ErrorKind::Moved | ErrorKind::Ask) => "moved",
                    Err(e) if is_connection_error(e) => "connection_lost",
                    _ => "desync",
                };
                self.fail(&label, reason, format!("probe SSUBSCRIBE: {other:?}"), ops)
                    .await;
            }
        }
    }

    /// A probe of shard connection `conn` could not be published: its
    /// shard is down until a probe comes back.
    pub(super) fn on_probe_failed(&mut self, conn: u64, e: &BackplaneError) {
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

    /// Connected and healthy while the node's own topics are subscribed on
    /// healthy shards.
    pub(super) fn update_link(&mut self) {
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
}
