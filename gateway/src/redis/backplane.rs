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

/// Redis [`Backplane`]. Built by [`crate::backends::Backends::start`].
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::value::RawValue;

    use super::*;
    use crate::redis::testutil::{
        eventually, numsub, CollectSink, FreezeProxy, RedisServer, TestResult,
    };
    use crate::redis::RedisBackends;

    fn publication(channel: &str, n: u64) -> Result<Publication, serde_json::Error> {
        Ok(Publication {
            channel: channel.into(),
            data: RawValue::from_string(format!(r#"{{"n":{n},"path":"a/b"}}"#))?,
            from: None,
            offset: None,
            epoch: None,
            exclude: None,
            ts_us: 0,
        })
    }

    const HISTORY: HistoryOptions = HistoryOptions {
        size: 1000,
        ttl: Duration::from_secs(60),
    };

    async fn node(
        server: &RedisServer,
        prefix: &str,
        id: &str,
    ) -> Result<(RedisBackends, Arc<CollectSink>), BackplaneError> {
        let sink = Arc::new(CollectSink::default());
        let backends = RedisBackends::connect(server.settings(prefix, id), sink.clone()).await?;
        Ok((backends, sink))
    }

    #[tokio::test]
    async fn history_publish_assigns_offsets_and_delivers_in_order() -> TestResult {
        let server = RedisServer::start().await?;
        let prefix = server.prefix();
        let (a, sink_a) = node(&server, &prefix, "a").await?;
        let (b, sink_b) = node(&server, &prefix, "b").await?;
        assert!(a.backplane.is_healthy());
        b.subscribe(Topic::Channel("chat:x".into())).await?;
        a.subscribe(Topic::Channel("chat:x".into())).await?;
        let mut epoch = None;
        for n in 1..=200u64 {
            let pos = a
                .backplane
                .publish(publication("chat:x", n)?, Some(HISTORY))
                .await?;
            let pos = pos.ok_or("no position")?;
            assert_eq!(pos.offset, n);
            assert_eq!(epoch.get_or_insert(pos.epoch.clone()), &pos.epoch);
        }
        for sink in [&sink_a, &sink_b] {
            assert!(eventually(Duration::from_secs(10), || sink.len() >= 200).await);
            let offsets: Vec<u64> = sink.messages().iter().filter_map(|p| p.offset).collect();
            assert_eq!(offsets, (1..=200).collect::<Vec<_>>());
            let first = sink.messages().first().map(|p| p.data.get().to_owned());
            assert_eq!(first.as_deref(), Some(r#"{"n":1,"path":"a/b"}"#));
        }
        // Without history: no offset, still delivered in order.
        a.backplane
            .publish(publication("chat:x", 201)?, None)
            .await?
            .map_or(Ok(()), |_| Err("position without history"))?;
        assert!(eventually(Duration::from_secs(10), || sink_b.len() >= 201).await);
        assert_eq!(sink_b.messages().last().and_then(|p| p.offset), None);
        a.backplane.shutdown().await;
        b.backplane.shutdown().await;
        Ok(())
    }

    #[tokio::test]
    async fn subscriptions_follow_the_hubs_interest() -> TestResult {
        let server = RedisServer::start().await?;
        let prefix = server.prefix();
        let (a, sink_a) = node(&server, &prefix, "a").await?;
        let (b, sink_b) = node(&server, &prefix, "b").await?;
        let name = format!("{prefix}:ch:{{room}}");
        let topic = Topic::Channel("room".into());
        a.subscribe(topic.clone()).await?;
        assert_eq!(numsub(&server, &name).await?, 1);
        b.backplane.publish(publication("room", 1)?, None).await?;
        assert!(eventually(Duration::from_secs(10), || sink_a.len() == 1).await);
        // The hub's last reference went: the node unsubscribes.
        a.unsubscribe(topic.clone());
        let mut gone = false;
        for _ in 0..200 {
            if numsub(&server, &name).await? == 0 {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone, "UNSUBSCRIBE did not reach Redis");
        // Node b never subscribed: it received none of the channel's traffic.
        assert_eq!(sink_b.len(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn directed_envelopes_reach_their_nodes() -> TestResult {
        let server = RedisServer::start().await?;
        let prefix = server.prefix();
        let (a, sink_a) = node(&server, &prefix, "a").await?;
        let (b, sink_b) = node(&server, &prefix, "b").await?;
        let data = || RawValue::from_string("{\"hi\":1}".into());
        b.subscribe(Topic::User("u1".into())).await?;
        a.backplane
            .send(Envelope::User {
                user: "u1".into(),
                data: data()?,
            })
            .await?;
        a.backplane
            .send(Envelope::Conn {
                conn: "b.1.7".into(),
                data: data()?,
            })
            .await?;
        a.backplane
            .send(Envelope::Broadcast { data: data()? })
            .await?;
        assert!(eventually(Duration::from_secs(10), || sink_b.len() == 3).await);
        assert!(eventually(Duration::from_secs(10), || sink_a.len() == 1).await);
        let kinds: Vec<&'static str> = sink_b.envelopes().iter().map(kind).collect();
        assert_eq!(kinds, ["user", "conn", "broadcast"]);
        assert!(matches!(
            sink_a.envelopes().first(),
            Some(Envelope::Broadcast { .. })
        ));
        Ok(())
    }

    fn kind(e: &Envelope) -> &'static str {
        match e {
            Envelope::User { .. } => "user",
            Envelope::Conn { .. } => "conn",
            Envelope::Broadcast { .. } => "broadcast",
            _ => "other",
        }
    }

    #[tokio::test]
    async fn outage_fails_fast_then_recovers_and_resubscribes() -> TestResult {
        let mut server = RedisServer::start().await?;
        let prefix = server.prefix();
        let (a, sink) = node(&server, &prefix, "a").await?;
        let timeout = server.settings(&prefix, "a").timeout;
        a.subscribe(Topic::Channel("live".into())).await?;
        server.stop();
        // Publishes fail with Unavailable, within the timeout.
        let started = tokio::time::Instant::now();
        let result = a
            .backplane
            .publish(publication("live", 1)?, Some(HISTORY))
            .await;
        assert!(
            matches!(result, Err(BackplaneError::Unavailable(_))),
            "{result:?}"
        );
        assert!(started.elapsed() <= timeout + Duration::from_millis(200));
        assert!(eventually(Duration::from_secs(10), || !a.backplane.is_healthy()).await);
        // New subscriptions are refused at once while the link is down.
        let started = tokio::time::Instant::now();
        let result = a.subscribe(Topic::Channel("other".into())).await;
        assert!(
            matches!(result, Err(BackplaneError::Unavailable(_))),
            "{result:?}"
        );
        assert!(started.elapsed() <= timeout + Duration::from_millis(200));

        server.restart().await?;
        assert!(eventually(Duration::from_secs(10), || a.backplane.is_healthy()).await);
        // The referenced channel was resubscribed on the new connection.
        assert_eq!(numsub(&server, &format!("{prefix}:ch:{{live}}")).await?, 1);
        let pos = a
            .backplane
            .publish(publication("live", 2)?, Some(HISTORY))
            .await?;
        // Redis lost its data (no persistence): a new stream, offset 1.
        assert_eq!(pos.map(|p| p.offset), Some(1));
        assert!(eventually(Duration::from_secs(10), || sink.len() == 1).await);
        a.backplane.shutdown().await;
        Ok(())
    }

    #[tokio::test]
    async fn probe_rebuilds_a_silent_connection() -> TestResult {
        let server = RedisServer::start().await?;
        let proxy = FreezeProxy::start(server.port()).await?;
        let prefix = server.prefix();
        let mut settings = server.settings(&prefix, "a");
        settings.url = proxy.url();
        let sink = Arc::new(CollectSink::default());
        let a = RedisBackends::connect(settings, sink.clone()).await?;
        a.subscribe(Topic::Channel("quiet".into())).await?;
        // Every connection made so far stays open but receives nothing
        // more: the pub/sub connection looks alive and delivers nothing.
        proxy.freeze_existing();
        let payload = codec::encode(&Envelope::Message(publication("quiet", 1)?))?;
        let mut direct = server.conn().await?;
        let mut delivered = false;
        for _ in 0..200 {
            ::redis::cmd("PUBLISH")
                .arg(format!("{prefix}:ch:{{quiet}}"))
                .arg(&payload)
                .query_async::<i64>(&mut direct)
                .await?;
            if eventually(Duration::from_millis(100), || sink.len() > 0).await {
                delivered = true;
                break;
            }
        }
        assert!(delivered, "the probe did not rebuild the silent connection");
        assert!(eventually(Duration::from_secs(10), || a.backplane.is_healthy()).await);
        a.backplane.shutdown().await;
        Ok(())
    }

    #[tokio::test]
    async fn interest_churn_settles_on_what_the_hub_wants() -> TestResult {
        let server = RedisServer::start().await?;
        let prefix = server.prefix();
        let (a, sink) = node(&server, &prefix, "a").await?;
        let held = Topic::Channel("c0".into());
        a.subscribe(held.clone()).await?;
        // The hub's first/last reports, as fast as it can make them, with
        // waits in between (a SUBSCRIBE in flight while its off arrives).
        for i in 0..200u64 {
            let topic = Topic::Channel(format!("c{}", 1 + i % 4));
            if i % 3 == 0 {
                a.subscribe(topic.clone()).await?;
            } else {
                use crate::backplane::Interest;
                a.registry.set(&topic, true);
                tokio::task::yield_now().await;
            }
            a.unsubscribe(topic);
        }
        // Only the held reference remains: c0 subscribed, c1..c4 not.
        let mut settled = false;
        for _ in 0..200 {
            let mut counts = Vec::new();
            for c in 0..5 {
                counts.push(numsub(&server, &format!("{prefix}:ch:{{c{c}}}")).await?);
            }
            if counts == [1, 0, 0, 0, 0] {
                settled = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(settled, "subscriptions did not settle to the held one");
        a.backplane.publish(publication("c0", 1)?, None).await?;
        assert!(eventually(Duration::from_secs(10), || sink.len() == 1).await);
        Ok(())
    }
}
