//! [`RedisHistory`]: reads of the per-channel history streams that the Redis
//! backplane's publish script appends to.
//!
//! A channel's history is a stream `P:hist:{c}` whose entry ids are
//! `<offset>-0` (one field `e`: the published envelope, offset included) and
//! a meta hash `P:meta:{c}` holding `epoch` and `top`. One Lua script reads
//! both in one snapshot.
//!
//! Invariants:
//! - A read never writes (the script carries Redis 7's `no-writes` flag, so
//!   Redis itself refuses a write): a read of a channel without meta creates
//!   no key and answers offset 0 with the empty epoch, which matches any
//!   epoch on recovery (`since: {offset: 0, epoch: ""}` replays the stream
//!   the first publication starts). Reads of unknown channels therefore cost
//!   Redis no memory, however many there are.
//! - A stream written under another primary is never offered as valid. The
//!   meta carries the replication id of the primary that wrote it (`rid`,
//!   see publish.lua); after a failover it differs from the current one,
//!   and the promoted replica may lack publications that were live before.
//!   The read script then answers `stale`, and the read reports what a
//!   channel without a stream reports (offset 0, the empty epoch, nothing
//!   retained): "no history yet under this primary". A subscriber recovering
//!   with the old epoch gets `recovered: false`; the next publish starts a
//!   new epoch (publish.lua fences it), whose offset 1 the subscriber takes.
//!   The read does not fence the stream itself: reads stay `no-writes` (so
//!   they run under `maxmemory` and never create or change keys), and a
//!   client would learn nothing more from a fresh epoch with no entries.

use std::sync::Arc;

use async_trait::async_trait;

use super::{codec, Shared};
use crate::backplane::{BackplaneError, Envelope, HistoryOptions, Publication, StreamPosition};
use crate::history::{keep_newest, History, HistoryRead};

/// Redis [`History`]. Built by [`crate::redis::connect`].
pub struct RedisHistory {
    shared: Arc<Shared>,
}

impl RedisHistory {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

impl RedisHistory {
    /// One read.lua call: `budget` 0 reads every wanted entry.
    async fn read_script(
        &self,
        channel: &str,
        since: u64,
        limit: usize,
        budget: usize,
    ) -> Result<HistoryRead, BackplaneError> {
        let keys = &self.shared.keys;
        let mut script = self.shared.scripts.read.prepare_invoke();
        script
            .key(keys.meta(channel))
            .key(keys.history(channel))
            .arg(since.saturating_add(1))
            // COUNT must be a Redis integer; nobody reads 4 billion entries.
            .arg(u32::try_from(limit).unwrap_or(u32::MAX))
            .arg(u64::try_from(budget).unwrap_or(u64::MAX));
        let (top, epoch, first_offset, entries, stale) = self
            .shared
            .call("history_read", |mut conn| async move {
                script
                    .invoke_async::<(u64, String, u64, Vec<Vec<u8>>, u8)>(&mut conn)
                    .await
            })
            .await?;
        if stale != 0 {
            tracing::debug!(
                channel,
                epoch,
                top,
                "history written under another primary: answered as no history yet"
            );
            return Ok(HistoryRead {
                position: StreamPosition {
                    offset: 0,
                    epoch: String::new(),
                },
                publications: Vec::new(),
                first_offset: 1,
            });
        }
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

#[async_trait]
impl History for RedisHistory {
    async fn read(
        &self,
        channel: &str,
        since: u64,
        limit: usize,
        _options: HistoryOptions,
    ) -> Result<HistoryRead, BackplaneError> {
        self.read_script(channel, since, limit, 0).await
    }

    /// The script stops reading once the newest entries pass the budget
    /// (by a lower estimate of their frames), so a replay never moves more
    /// than about the budget out of Redis; the exact trim follows here.
    async fn read_budget(
        &self,
        channel: &str,
        since: u64,
        limit: usize,
        max_bytes: usize,
        _options: HistoryOptions,
    ) -> Result<HistoryRead, BackplaneError> {
        let mut read = self
            .read_script(channel, since, limit, max_bytes.max(1))
            .await?;
        keep_newest(&mut read.publications, max_bytes);
        Ok(read)
    }
}
