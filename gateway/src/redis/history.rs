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
