//! [`RedisBackplane`]: cross-node fan-out over Redis pub/sub.
//!
//! Publishes go through the shared command pool; a publication with history
//! runs one Lua script that appends it to the channel's stream and publishes
//! it with its new offset, atomically (docs/redis.md). Receiving runs on the
//! node's one pub/sub connection ([`crate::redis`]'s subscriber task), which
//! also delivers the node's own publications: every delivery of a channel
//! goes through Redis, so all nodes see one order.
//!
//! Invariant: a publish that returns `Ok` was accepted by Redis; one that
//! could not be handed to Redis within the timeout returns `Unavailable`.

use std::sync::Arc;

use async_trait::async_trait;

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
}

impl RedisBackplane {
    pub(crate) fn new(
        shared: Arc<Shared>,
        registry: Arc<Registry>,
        subscriber: Subscriber,
    ) -> Self {
        Self {
            shared,
            registry,
            subscriber,
        }
    }

    /// PUBLISH an encoded envelope on a pub/sub channel.
    async fn publish_raw(&self, channel: String, payload: String) -> Result<(), BackplaneError> {
        self.shared
            .call("publish", |mut conn| async move {
                ::redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(payload)
                    .query_async::<i64>(&mut conn)
                    .await
            })
            .await
            .map(|_receivers| ())
    }
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
            .arg(new_epoch());
        let (offset, epoch) = self
            .shared
            .call("publish", |mut conn| async move {
                script.invoke_async::<(u64, String)>(&mut conn).await
            })
            .await?;
        Ok(Some(StreamPosition { offset, epoch }))
    }

    async fn send(&self, envelope: Envelope) -> Result<(), BackplaneError> {
        let channel = self.shared.keys.topic(&envelope.topic());
        let payload = codec::encode(&envelope)?;
        self.publish_raw(channel, payload).await
    }

    async fn ready(&self, topic: &Topic) -> Result<(), BackplaneError> {
        let result = if self.shared.link.is_connected() {
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
