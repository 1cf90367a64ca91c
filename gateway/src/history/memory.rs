//! In-process history for the embedded single node: one bounded ring per
//! channel, sharded by channel name.
//!
//! Invariants: offsets of a stream are 1, 2, 3, ... without holes; a stream
//! idle for longer than its TTL is dropped, and the next stream of that
//! channel gets a new epoch (offsets restart at 1). Appends are called by
//! [`crate::backplane::MemoryBackplane`] under its per-channel order lock.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{new_epoch, History, HistoryRead};
use crate::backplane::{BackplaneError, HistoryOptions, Publication, StreamPosition};

const SHARDS: usize = 32;

struct Stream {
    epoch: String,
    top: u64,
    items: VecDeque<Publication>,
    expires_at: Instant,
}

impl Stream {
    fn new(ttl: std::time::Duration) -> Self {
        Self {
            epoch: new_epoch(),
            top: 0,
            items: VecDeque::new(),
            expires_at: Instant::now() + ttl,
        }
    }
}

/// In-memory [`History`].
pub struct MemoryHistory {
    shards: Vec<Mutex<HashMap<String, Stream>>>,
    hasher: RandomState,
}

impl Default for MemoryHistory {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl MemoryHistory {
    fn shard(&self, channel: &str) -> &Mutex<HashMap<String, Stream>> {
        let i = (self.hasher.hash_one(channel) as usize) % SHARDS;
        &self.shards[i]
    }

    /// Append a publication, setting its offset; returns the new position.
    pub fn append(&self, publication: &mut Publication, options: HistoryOptions) -> StreamPosition {
        let now = Instant::now();
        let mut shard = self.shard(&publication.channel).lock();
        let stream = shard
            .entry(publication.channel.clone())
            .or_insert_with(|| Stream::new(options.ttl));
        if stream.expires_at <= now {
            *stream = Stream::new(options.ttl);
        }
        stream.top += 1;
        publication.offset = Some(stream.top);
        publication.epoch = Some(stream.epoch.clone());
        stream.items.push_back(publication.clone());
        while stream.items.len() > options.size {
            stream.items.pop_front();
        }
        stream.expires_at = now + options.ttl;
        StreamPosition {
            offset: stream.top,
            epoch: stream.epoch.clone(),
        }
    }

    /// Drop expired streams (called periodically so idle channels do not
    /// hold memory forever).
    pub fn sweep(&self) {
        let now = Instant::now();
        for shard in &self.shards {
            shard.lock().retain(|_, s| s.expires_at > now);
        }
    }
}

#[async_trait]
impl History for MemoryHistory {
    async fn read(
        &self,
        channel: &str,
        since: u64,
        limit: usize,
        options: HistoryOptions,
    ) -> Result<HistoryRead, BackplaneError> {
        let now = Instant::now();
        let mut shard = self.shard(channel).lock();
        let stream = shard
            .entry(channel.to_owned())
            .or_insert_with(|| Stream::new(options.ttl));
        if stream.expires_at <= now {
            *stream = Stream::new(options.ttl);
        }
        let first_offset = stream.top + 1 - stream.items.len() as u64;
        let skip = since
            .saturating_sub(first_offset - 1)
            .min(stream.items.len() as u64) as usize;
        let publications = stream
            .items
            .iter()
            .skip(skip)
            .take(limit)
            .cloned()
            .collect();
        Ok(HistoryRead {
            position: StreamPosition {
                offset: stream.top,
                epoch: stream.epoch.clone(),
            },
            publications,
            first_offset,
        })
    }
}
