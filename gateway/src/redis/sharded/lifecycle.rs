//! The shard connections' lifecycle on the task: one is opened when a name
//! first needs its primary, a failed one is replaced by a stand-in that
//! backs off before its names are routed again, an idle one is closed.

use futures_util::stream::FuturesUnordered;

use super::super::slots::tag_for;
use super::super::{METRIC_ERRORS, METRIC_RECONNECTS};
use super::ops::{connect_op, Done, Op};
use super::push::PushHandler;
use super::shard::ShardConn;
use super::{ShardedTask, METRIC_RESUBSCRIBES, METRIC_SHARD_UP};

impl ShardedTask {
    /// A new shard connection (connecting in the background).
    pub(super) fn open(
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
        ShardConn::connecting(id, addr, label, probe_channel)
    }

    /// Close shard connections that carry no name any more.
    pub(super) fn close_idle(&mut self) {
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
    pub(super) async fn fail(
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
        let placeholder = ShardConn::placeholder(shard.addr, label.clone());
        self.shards.insert(label.clone(), placeholder);
        ops.push(Box::pin(async move {
            tokio::time::sleep(pause).await;
            Done::Retry { label }
        }));
    }
}
