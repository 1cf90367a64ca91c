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

use super::pubsub::Subscriber;
use super::{codec, millis, Shared};
use crate::backplane::{
    Backplane, BackplaneError, Envelope, HistoryOptions, Publication, StreamPosition, Topic,
};
use crate::history::new_epoch;

/// Redis [`Backplane`]. Built by [`crate::redis::connect`].
pub struct RedisBackplane {
    shared: Arc<Shared>,
    subscriber: Subscriber,
}

impl RedisBackplane {
    pub(crate) fn new(shared: Arc<Shared>, subscriber: Subscriber) -> Self {
        Self { shared, subscriber }
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

    /// Pub/sub name of a refcounted topic; `None` for always-on topics.
    fn refcounted(&self, topic: &Topic) -> Option<String> {
        match topic {
            Topic::Channel(_) | Topic::User(_) => Some(self.shared.keys.topic(topic)),
            Topic::Node(_) | Topic::All => None,
        }
    }
}

#[async_trait]
impl Backplane for RedisBackplane {
    async fn publish(
        &self,
        publication: Publication,
        history: Option<HistoryOptions>,
    ) -> Result<Option<StreamPosition>, BackplaneError> {
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

    async fn subscribe(&self, topic: Topic) -> Result<(), BackplaneError> {
        let Some(channel) = self.refcounted(&topic) else {
            return Ok(());
        };
        let result = self.subscriber.subscribe(channel).await;
        if result.is_err() {
            metrics::counter!(crate::redis::METRIC_ERRORS, "op" => "subscribe").increment(1);
        }
        result
    }

    async fn unsubscribe(&self, topic: Topic) {
        if let Some(channel) = self.refcounted(&topic) {
            self.subscriber.unsubscribe(channel).await;
        }
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
    use crate::redis::{connect, RedisBackends};

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
        let backends = connect(server.settings(prefix, id), sink.clone()).await?;
        Ok((backends, sink))
    }

    #[tokio::test]
    async fn history_publish_assigns_offsets_and_delivers_in_order() -> TestResult {
        let server = RedisServer::start().await?;
        let prefix = server.prefix();
        let (a, sink_a) = node(&server, &prefix, "a").await?;
        let (b, sink_b) = node(&server, &prefix, "b").await?;
        assert!(a.backplane.is_healthy());
        b.backplane
            .subscribe(Topic::Channel("chat:x".into()))
            .await?;
        a.backplane
            .subscribe(Topic::Channel("chat:x".into()))
            .await?;
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
    async fn subscribe_is_refcounted_and_interest_based() -> TestResult {
        let server = RedisServer::start().await?;
        let prefix = server.prefix();
        let (a, sink_a) = node(&server, &prefix, "a").await?;
        let (b, sink_b) = node(&server, &prefix, "b").await?;
        let name = format!("{prefix}:ch:{{room}}");
        let topic = Topic::Channel("room".into());
        a.backplane.subscribe(topic.clone()).await?;
        a.backplane.subscribe(topic.clone()).await?;
        assert_eq!(numsub(&server, &name).await?, 1);
        a.backplane.unsubscribe(topic.clone()).await;
        // Still one reference: a publication still arrives.
        b.backplane.publish(publication("room", 1)?, None).await?;
        assert!(eventually(Duration::from_secs(10), || sink_a.len() == 1).await);
        assert_eq!(numsub(&server, &name).await?, 1);
        a.backplane.unsubscribe(topic.clone()).await;
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
        b.backplane.subscribe(Topic::User("u1".into())).await?;
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
        a.backplane.subscribe(Topic::Channel("live".into())).await?;
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
        let result = a.backplane.subscribe(Topic::Channel("other".into())).await;
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
        let a = connect(settings, sink.clone()).await?;
        a.backplane
            .subscribe(Topic::Channel("quiet".into()))
            .await?;
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
    async fn concurrent_subscribe_churn_keeps_refcounts_exact() -> TestResult {
        let server = RedisServer::start().await?;
        let prefix = server.prefix();
        let (a, sink) = node(&server, &prefix, "a").await?;
        let held = Topic::Channel("c0".into());
        a.backplane.subscribe(held.clone()).await?;
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..16u64 {
            let bp = a.backplane.clone();
            tasks.spawn(async move {
                for i in 0..40u64 {
                    let topic = Topic::Channel(format!("c{}", (t + i) % 5));
                    bp.subscribe(topic.clone()).await?;
                    if i % 3 == 0 {
                        tokio::task::yield_now().await;
                    }
                    bp.unsubscribe(topic).await;
                }
                Ok::<(), BackplaneError>(())
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined??;
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
