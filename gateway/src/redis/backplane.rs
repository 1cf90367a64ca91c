//! [`RedisBackplane`]: cross-node fan-out over Redis pub/sub.
//!
//! Publishes go through the shared command pool; a publication with history
//! runs one Lua script that appends it to the channel's stream and publishes
//! it with its new offset, atomically (docs/redis.md). Receiving runs on the
//! node's one pub/sub connection ([`crate::redis`]'s subscriber task), which
//! also delivers the node's own publications: every delivery of a channel
//! goes through Redis, so all nodes see one order.
//!
//! Invariants:
//! - A publish that returns `Ok` was accepted by Redis; one that could not
//!   be handed to Redis within the timeout returns `Unavailable`.
//! - An (epoch, offset) names one publication forever: the publish script
//!   starts a new epoch when the channel's meta was written under another
//!   primary (a failover, or a restart that lost data), so offsets the old
//!   primary gave out and the new one never received are not given again
//!   under the same epoch (docs/redis.md, "History across failover").

mod durable;

use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::interest::{unavailable, Registry};
use super::pubsub::Subscriber;
use super::{codec, millis, Shared};
use crate::backplane::{
    Backplane, BackplaneError, Envelope, HistoryOptions, Publication, StreamPosition, Topic,
};
use crate::history::new_epoch;

/// Redis [`Backplane`]. Built by [`crate::backends::Plan::start`].
pub struct RedisBackplane {
    shared: Arc<Shared>,
    registry: Arc<Registry>,
    subscriber: Subscriber,
    /// The replication id under which a fence was last logged at warn.
    fence_logged: Mutex<String>,
    /// Connections for publishes that WAIT for replicas (`None` only if
    /// the pool could not be built: such publishes then fail).
    durable: Option<durable::Durable>,
}

impl RedisBackplane {
    pub(crate) fn new(
        shared: Arc<Shared>,
        registry: Arc<Registry>,
        subscriber: Subscriber,
    ) -> Self {
        let durable = durable::Durable::new(&shared)
            .inspect_err(|e| tracing::error!(error = %e, "no pool for history_min_replicas"))
            .ok();
        Self {
            shared,
            registry,
            subscriber,
            fence_logged: Mutex::new(String::new()),
            durable,
        }
    }

    /// Count a fenced epoch (publish.lua found the channel's meta written
    /// under another primary and started a new epoch) and log it: at warn
    /// for the first fence under each new primary (a failover fences every
    /// channel that publishes afterwards: one line says it happened), at
    /// debug for the others.
    fn fenced(
        &self,
        channel: &str,
        old_epoch: &str,
        old_top: &str,
        old_rid: &str,
        epoch: &str,
        rid: &str,
    ) {
        metrics::counter!(crate::history::EPOCH_FENCED).increment(1);
        let first = {
            let mut logged = self.fence_logged.lock();
            if *logged == rid {
                false
            } else {
                rid.clone_into(&mut logged);
                true
            }
        };
        let jumped = old_epoch == epoch;
        if first && jumped {
            tracing::warn!(
                channel,
                epoch,
                old_top,
                old_rid,
                rid,
                "durable history written under another primary (failover): epoch kept, offsets \
                 jumped by 1000000 so none is reused; further fences under this primary are \
                 logged at debug"
            );
        } else if first {
            tracing::warn!(
                channel,
                old_epoch,
                old_top,
                old_rid,
                epoch,
                rid,
                "history written under another primary (failover or data loss): new epoch, \
                 recovering clients get recovered: false; further fences under this primary \
                 are logged at debug"
            );
        } else {
            tracing::debug!(
                channel,
                old_epoch,
                old_top,
                old_rid,
                epoch,
                rid,
                "history epoch fenced"
            );
        }
    }

    /// PUBLISH (SPUBLISH in cluster mode) an encoded envelope on a
    /// pub/sub channel.
    async fn publish_raw(&self, channel: String, payload: String) -> Result<(), BackplaneError> {
        self.shared
            .check_shard(&channel)
            .inspect_err(count_refused)?;
        let command = self.shared.publish_command();
        self.shared
            .call("publish", |mut conn| async move {
                ::redis::cmd(command)
                    .arg(channel)
                    .arg(payload)
                    .query_async::<i64>(&mut conn)
                    .await
            })
            .await
            .map(|_receivers| ())
    }
}

/// Count a publish refused without a round trip (its shard is down).
fn count_refused(_: &BackplaneError) {
    metrics::counter!(super::METRIC_ERRORS, "op" => "publish").increment(1);
}

#[async_trait]
impl Backplane for RedisBackplane {
    async fn publish(
        &self,
        mut publication: Publication,
        history: Option<HistoryOptions>,
    ) -> Result<Option<StreamPosition>, BackplaneError> {
        publication.clear_position();
        let keys = &self.shared.keys;
        let channel = keys.channel(&publication.channel);
        let Some(history) = history else {
            let payload = codec::encode_publication(&publication)?;
            self.publish_raw(channel, payload).await?;
            return Ok(None);
        };
        self.shared
            .check_shard(&channel)
            .inspect_err(count_refused)?;
        let (prefix, suffix) = codec::offset_template(&publication)?;
        let mut script = self.shared.scripts.publish.prepare_invoke();
        script
            .key(keys.meta(&publication.channel))
            .key(keys.history(&publication.channel))
            .arg(channel)
            .arg(history.size.max(1))
            .arg(millis(history.ttl))
            .arg(prefix)
            .arg(suffix)
            .arg(new_epoch())
            .arg(self.shared.publish_command())
            .arg(if history.min_replicas > 0 { "1" } else { "0" });
        let (reply, confirmed) = if history.min_replicas == 0 {
            let reply = self
                .shared
                .call("publish", |mut conn| async move {
                    script
                        .invoke_async::<durable::PublishReply>(&mut conn)
                        .await
                })
                .await?;
            (reply, 0)
        } else {
            let Some(durable) = &self.durable else {
                return Err(BackplaneError::Unavailable(
                    "no connections for durable publishes".into(),
                ));
            };
            durable
                .publish(&self.shared, &script, history.min_replicas)
                .await?
        };
        let (offset, epoch, fenced_epoch, fenced_top, fenced_rid, rid) = reply;
        if !fenced_epoch.is_empty() {
            self.fenced(
                &publication.channel,
                &fenced_epoch,
                &fenced_top,
                &fenced_rid,
                &epoch,
                &rid,
            );
        }
        if confirmed < history.min_replicas {
            // Live and in the primary's history already: "maybe published".
            metrics::counter!(crate::history::UNCONFIRMED).increment(1);
            tracing::debug!(
                channel = %publication.channel,
                offset,
                confirmed,
                wanted = history.min_replicas,
                "history publish not confirmed by enough replicas"
            );
            return Err(BackplaneError::Unavailable(format!(
                "publication not confirmed by {} replicas ({confirmed} did)",
                history.min_replicas
            )));
        }
        Ok(Some(StreamPosition { offset, epoch }))
    }

    async fn send(&self, envelope: Envelope) -> Result<(), BackplaneError> {
        let channel = self.shared.keys.topic(&envelope.topic());
        let payload = codec::encode(&envelope)?;
        self.publish_raw(channel, payload).await
    }

    async fn ready(&self, topic: &Topic) -> Result<(), BackplaneError> {
        let shard = self.shared.check_shard(&self.shared.keys.topic(topic));
        let result = if let Err(e) = shard {
            Err(e)
        } else if self.shared.link.is_connected() {
            self.registry
                .ready(topic, self.shared.settings.timeout)
                .await
        } else {
            Err(unavailable())
        };
        if result.is_err() {
            metrics::counter!(super::METRIC_ERRORS, "op" => "subscribe").increment(1);
        }
        result
    }

    fn is_healthy(&self) -> bool {
        self.shared.link.is_healthy()
    }

    fn generation(&self) -> u64 {
        self.shared.link.generation()
    }

    async fn shutdown(&self) {
        self.subscriber.shutdown().await;
    }
}
