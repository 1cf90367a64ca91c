//! [`RedisHistory`]: reads of the per-channel history streams that the Redis
//! backplane's publish script appends to.
//!
//! A channel's history is a stream `P:hist:{c}` whose entry ids are
//! `<offset>-0` (one field `e`: the published envelope, offset included) and
//! a meta hash `P:meta:{c}` holding `epoch` and `top`. One Lua script reads
//! both in one snapshot.
//!
//! Invariants:
//! - A read never replaces the epoch of an existing meta hash.
//! - A read of a channel without meta creates it (`top` 0, a fresh epoch,
//!   expiring after the namespace's history ttl), so every reader before the
//!   first publication, on any node, gets the same epoch and the epoch a
//!   subscriber is told stays valid for the publications that follow.

use std::sync::Arc;

use async_trait::async_trait;

use super::{codec, millis, Shared};
use crate::backplane::{BackplaneError, Envelope, HistoryOptions, Publication, StreamPosition};
use crate::history::{new_epoch, History, HistoryRead};

/// Redis [`History`]. Built by [`crate::redis::connect`].
pub struct RedisHistory {
    shared: Arc<Shared>,
}

impl RedisHistory {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[async_trait]
impl History for RedisHistory {
    async fn read(
        &self,
        channel: &str,
        since: u64,
        limit: usize,
        options: HistoryOptions,
    ) -> Result<HistoryRead, BackplaneError> {
        let keys = &self.shared.keys;
        let mut script = self.shared.scripts.read.prepare_invoke();
        script
            .key(keys.meta(channel))
            .key(keys.history(channel))
            .arg(since.saturating_add(1))
            // COUNT must be a Redis integer; nobody reads 4 billion entries.
            .arg(u32::try_from(limit).unwrap_or(u32::MAX))
            .arg(new_epoch())
            .arg(millis(options.ttl));
        let (top, epoch, first_offset, entries) = self
            .shared
            .call("history_read", |mut conn| async move {
                script
                    .invoke_async::<(u64, String, u64, Vec<Vec<u8>>)>(&mut conn)
                    .await
            })
            .await?;
        let publications = entries
            .iter()
            .map(|bytes| match codec::decode(bytes)? {
                Envelope::Message(p) => Ok(p),
                _ => Err(BackplaneError::Protocol(
                    "history entry is not a publication".into(),
                )),
            })
            .collect::<Result<Vec<Publication>, _>>()?;
        Ok(HistoryRead {
            position: StreamPosition { offset: top, epoch },
            publications,
            first_offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::value::RawValue;

    use super::*;
    use crate::backplane::Backplane;
    use crate::redis::testutil::{CollectSink, RedisServer, TestResult};
    use crate::redis::RedisBackends;

    async fn backends(server: &RedisServer) -> Result<RedisBackends, BackplaneError> {
        RedisBackends::connect(
            server.settings(&server.prefix(), "h"),
            Arc::new(CollectSink::default()),
        )
        .await
    }

    fn publication(channel: &str, n: u64) -> Result<Publication, serde_json::Error> {
        Ok(Publication {
            channel: channel.into(),
            data: RawValue::from_string(format!("[{n}]"))?,
            from: Some("u".into()),
            offset: None,
            epoch: None,
            exclude: None,
            ts_us: 1,
        })
    }

    const OPTS: HistoryOptions = HistoryOptions {
        size: 10,
        ttl: Duration::from_secs(60),
    };

    fn options(size: usize, ttl: Duration) -> Option<HistoryOptions> {
        Some(HistoryOptions { size, ttl })
    }

    #[tokio::test]
    async fn empty_channel_gets_a_stable_epoch() -> TestResult {
        let server = RedisServer::start().await?;
        let b = backends(&server).await?;
        let first = b.history.read("c", 0, 10, OPTS).await?;
        assert_eq!(first.position.offset, 0);
        assert_eq!(first.first_offset, 1);
        assert!(first.publications.is_empty());
        assert!(!first.position.epoch.is_empty());
        let again = b.history.read("c", 0, 10, OPTS).await?;
        assert_eq!(again.position.epoch, first.position.epoch);
        let pos = b
            .backplane
            .publish(publication("c", 1)?, options(10, Duration::from_secs(60)))
            .await?
            .ok_or("no position")?;
        assert_eq!(
            pos,
            StreamPosition {
                offset: 1,
                epoch: first.position.epoch
            }
        );
        Ok(())
    }

    #[tokio::test]
    async fn reads_trimmed_stream_from_offset() -> TestResult {
        let server = RedisServer::start().await?;
        let b = backends(&server).await?;
        for n in 1..=12 {
            b.backplane
                .publish(publication("t", n)?, options(5, Duration::from_secs(60)))
                .await?;
        }
        let all = b.history.read("t", 0, 100, OPTS).await?;
        assert_eq!(all.position.offset, 12);
        assert_eq!(all.first_offset, 8);
        let offsets: Vec<Option<u64>> = all.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, (8..=12).map(Some).collect::<Vec<_>>());
        assert_eq!(all.publications.first().map(|p| p.data.get()), Some("[8]"));
        assert_eq!(
            all.publications.first().and_then(|p| p.from.as_deref()),
            Some("u")
        );
        let one = b.history.read("t", 10, 1, OPTS).await?;
        assert_eq!(
            one.publications
                .iter()
                .map(|p| p.offset)
                .collect::<Vec<_>>(),
            [Some(11)]
        );
        let none = b.history.read("t", 12, 10, OPTS).await?;
        assert!(none.publications.is_empty());
        assert_eq!(none.first_offset, 8);
        let huge = b.history.read("t", 0, usize::MAX, OPTS).await?;
        assert_eq!(huge.publications.len(), 5);
        let position_only = b.history.read("t", 0, 0, OPTS).await?;
        assert!(position_only.publications.is_empty());
        assert_eq!(position_only.position.offset, 12);
        Ok(())
    }

    #[tokio::test]
    async fn lost_stream_gets_a_new_epoch() -> TestResult {
        let server = RedisServer::start().await?;
        let prefix = server.prefix();
        let b = RedisBackends::connect(
            server.settings(&prefix, "h"),
            Arc::new(CollectSink::default()),
        )
        .await?;
        let ttl = Duration::from_millis(300);
        let old = b
            .backplane
            .publish(publication("e", 1)?, options(10, ttl))
            .await?
            .ok_or("none")?;
        b.backplane
            .publish(publication("e", 2)?, options(10, ttl))
            .await?;
        // Wait (bounded) for Redis to expire both keys.
        let mut conn = server.conn().await?;
        let mut expired = false;
        for _ in 0..300 {
            let n: i64 = ::redis::cmd("EXISTS")
                .arg(format!("{prefix}:meta:{{e}}"))
                .arg(format!("{prefix}:hist:{{e}}"))
                .query_async(&mut conn)
                .await?;
            if n == 0 {
                expired = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(expired, "history did not expire");
        let read = b.history.read("e", 2, 10, OPTS).await?;
        assert_ne!(read.position.epoch, old.epoch);
        assert_eq!(read.position.offset, 0);
        let new = b
            .backplane
            .publish(publication("e", 3)?, options(10, ttl))
            .await?
            .ok_or("none")?;
        assert_eq!(
            new,
            StreamPosition {
                offset: 1,
                epoch: read.position.epoch
            }
        );
        Ok(())
    }

    #[tokio::test]
    async fn stale_stream_without_meta_is_dropped() -> TestResult {
        let server = RedisServer::start().await?;
        let prefix = server.prefix();
        let b = RedisBackends::connect(
            server.settings(&prefix, "h"),
            Arc::new(CollectSink::default()),
        )
        .await?;
        let ttl = Duration::from_secs(60);
        for n in 1..=3 {
            b.backplane
                .publish(publication("s", n)?, options(10, ttl))
                .await?;
        }
        let mut conn = server.conn().await?;
        ::redis::cmd("DEL")
            .arg(format!("{prefix}:meta:{{s}}"))
            .query_async::<i64>(&mut conn)
            .await?;
        let pos = b
            .backplane
            .publish(publication("s", 4)?, options(10, ttl))
            .await?
            .ok_or("none")?;
        assert_eq!(pos.offset, 1);
        let read = b.history.read("s", 0, 10, OPTS).await?;
        assert_eq!(read.publications.len(), 1);
        assert_eq!(read.first_offset, 1);
        Ok(())
    }
}
