//! The task's completions: what each finished Redis round trip ([`Done`])
//! changes (a shard connected, a name confirmed, redirected or lost, a
//! failed shard's backoff over); the probe's own round trips go to health.

use ::redis::{ErrorKind, PushKind, Value};
use futures_util::stream::FuturesUnordered;

use super::ops::{
    enqueue, is_connection_error, is_name, probe_subscribe_op, subscribe_op, Done, Op,
};
use super::{ShardedTask, METRIC_RESUBSCRIBES};

impl ShardedTask {
    /// A round trip of the task finished: take its result in.
    pub(super) async fn on_done(&mut self, done: Done, ops: &mut FuturesUnordered<Op>) {
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
                self.on_probe_subscribed(conn, result, ops).await;
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
                    self.on_probe_failed(conn, &e);
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
}
