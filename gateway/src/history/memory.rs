//! In-process history for the embedded single node: one bounded ring per
//! channel, sharded by channel name, with a per-node cap on streams and on
//! retained bytes.
//!
//! Invariants:
//! - offsets of a stream are 1, 2, 3, ... without holes;
//! - only an append creates a stream: a read of a channel without one
//!   stores nothing (100k reads of new names leave the node as it was);
//! - a stream idle for longer than its TTL, or evicted at the cap, is
//!   dropped, and the next stream of that channel gets a new epoch (offsets
//!   restart at 1), so a client recovering from the old one is told
//!   `recovered: false`, never handed different publications under its old
//!   offsets. Epochs are `hash(node seed, channel, generation)`, where the
//!   generation grows (under the shard lock) every time any stream is
//!   dropped: a read of an absent channel tells the epoch its first append
//!   will get, unless a stream was dropped in between (then the client just
//!   sees a new epoch);
//! - caps (`history_max_channels`, `history_max_bytes`) are split evenly
//!   over the shards; at a shard's cap the append evicts the shard's
//!   streams closest to expiry (least recently appended), and a single
//!   stream larger than the shard's byte share loses its oldest entries.
//!
//! Appends are called by [`crate::backplane::MemoryBackplane`] under its
//! per-channel order lock.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{History, HistoryRead};
use crate::backplane::{BackplaneError, HistoryOptions, Publication, StreamPosition};

const SHARDS: usize = 32;

/// Gauge: streams held by the in-process history.
pub const STREAMS: &str = "gateway_history_streams";
/// Gauge: bytes of publications held by the in-process history.
pub const BYTES: &str = "gateway_history_bytes";
/// Counter: streams dropped, by reason (`expired`, `evicted`).
pub const DROPPED: &str = "gateway_history_streams_dropped_total";

/// Describe this module's metrics (called by [`crate::metrics::install`]).
pub fn describe_metrics() {
    metrics::describe_gauge!(STREAMS, "Channel streams held by the in-process history.");
    metrics::describe_gauge!(
        BYTES,
        metrics::Unit::Bytes,
        "Bytes of publications held by the in-process history."
    );
    metrics::describe_counter!(
        DROPPED,
        "In-process history streams dropped, by reason (expired, evicted at the cap)."
    );
    metrics::describe_counter!(
        super::REPLAYS_CUT,
        "Subscribe replays cut to replay_max_bytes (answered recovered: false)."
    );
    metrics::counter!(super::REPLAYS_CUT).absolute(0);
    for reason in ["expired", "evicted"] {
        metrics::counter!(DROPPED, "reason" => reason).absolute(0);
    }
}

/// What one retained publication is charged (payload, names, bookkeeping).
fn cost(p: &Publication) -> usize {
    p.data.get().len()
        + p.channel.len()
        + p.from.as_ref().map_or(0, String::len)
        + p.epoch.as_ref().map_or(0, String::len)
        + 96
}

struct Stream {
    epoch: String,
    top: u64,
    items: VecDeque<Publication>,
    bytes: usize,
    expires_at: Instant,
}

#[derive(Default)]
struct Shard {
    streams: HashMap<String, Stream>,
    bytes: usize,
}

/// The per-node caps, already split per shard.
#[derive(Debug, Clone, Copy)]
struct Caps {
    streams: usize,
    bytes: usize,
}

/// In-memory [`History`].
pub struct MemoryHistory {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
    /// Seeds the epochs of this process.
    epochs: RandomState,
    /// Grows whenever a stream is dropped (see the module docs).
    generation: AtomicU64,
    caps: Caps,
    streams: AtomicUsize,
    bytes: AtomicUsize,
}

impl Default for MemoryHistory {
    /// Unbounded in practice (for unit tests); the node uses [`Self::new`].
    fn default() -> Self {
        Self::new(usize::MAX, usize::MAX)
    }
}

impl MemoryHistory {
    /// A history holding at most `max_channels` streams and `max_bytes`
    /// bytes of publications (each split evenly over the shards).
    pub fn new(max_channels: usize, max_bytes: usize) -> Self {
        metrics::gauge!(STREAMS).set(0.0);
        metrics::gauge!(BYTES).set(0.0);
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            epochs: RandomState::new(),
            generation: AtomicU64::new(0),
            caps: Caps {
                streams: max_channels.div_ceil(SHARDS).max(1),
                bytes: (max_bytes / SHARDS).max(1),
            },
            streams: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
        }
    }

    fn shard(&self, channel: &str) -> &Mutex<Shard> {
        let i = (self.hasher.hash_one(channel) as usize) % SHARDS;
        &self.shards[i]
    }

    /// The epoch the next stream of `channel` gets (call under its shard lock).
    fn next_epoch(&self, channel: &str) -> String {
        let generation = self.generation.load(Ordering::Acquire);
        format!("{:016x}", self.epochs.hash_one((channel, generation)))
    }

    /// Streams held now (all shards).
    pub fn stream_count(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    /// Bytes held now (all shards).
    pub fn byte_count(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Set the [`STREAMS`] and [`BYTES`] gauges from the counts; called at
    /// every scrape (nothing on the append path writes them: a gauge
    /// lookup per publication is work the publish does not need).
    pub fn publish_gauges(&self) {
        metrics::gauge!(STREAMS).set(self.stream_count() as f64);
        metrics::gauge!(BYTES).set(self.byte_count() as f64);
    }

    /// Remove `channel`'s stream from `shard` (held locked); bumps the
    /// generation so its epoch is never handed out again.
    fn drop_stream(&self, shard: &mut Shard, channel: &str, reason: &'static str) {
        if let Some(s) = shard.streams.remove(channel) {
            shard.bytes -= s.bytes;
            self.bytes.fetch_sub(s.bytes, Ordering::Relaxed);
            self.streams.fetch_sub(1, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::AcqRel);
            metrics::counter!(DROPPED, "reason" => reason).increment(1);
        }
    }

    /// Drop `channel`'s stream from `shard` (held locked) if it expired by
    /// `now`: a read or an append never sees an expired stream, whether or
    /// not the sweep has reached it yet.
    fn drop_if_expired(&self, shard: &mut Shard, channel: &str, now: Instant) {
        if shard
            .streams
            .get(channel)
            .is_some_and(|s| s.expires_at <= now)
        {
            self.drop_stream(shard, channel, "expired");
        }
    }

    /// Evict the stream of `shard` closest to expiry, other than `keep`.
    /// Returns false when there is none.
    fn evict_one(&self, shard: &mut Shard, keep: &str) -> bool {
        let victim = shard
            .streams
            .iter()
            .filter(|(name, _)| name.as_str() != keep)
            .min_by_key(|(_, s)| s.expires_at)
            .map(|(name, _)| name.clone());
        match victim {
            Some(name) => {
                self.drop_stream(shard, &name, "evicted");
                true
            }
            None => false,
        }
    }

    /// Append a publication, setting its offset; returns the new position.
    pub fn append(&self, publication: &mut Publication, options: HistoryOptions) -> StreamPosition {
        let now = Instant::now();
        let channel = publication.channel.as_str();
        let mut guard = self.shard(channel).lock();
        let shard = &mut *guard;
        self.drop_if_expired(shard, channel, now);
        if !shard.streams.contains_key(channel) {
            while shard.streams.len() >= self.caps.streams && self.evict_one(shard, channel) {}
            let epoch = self.next_epoch(channel);
            shard.streams.insert(
                channel.to_owned(),
                Stream {
                    epoch,
                    top: 0,
                    items: VecDeque::new(),
                    bytes: 0,
                    expires_at: now,
                },
            );
            self.streams.fetch_add(1, Ordering::Relaxed);
        }
        let Some(stream) = shard.streams.get_mut(channel) else {
            // Inserted just above, under the same lock.
            return StreamPosition {
                offset: 0,
                epoch: String::new(),
            };
        };
        stream.top += 1;
        publication.offset = Some(stream.top);
        publication.epoch = Some(stream.epoch.clone());
        let added = cost(publication);
        stream.items.push_back(publication.clone());
        stream.bytes += added;
        let mut removed = 0;
        // Ring size, and a single stream never above the shard's byte share
        // (it keeps at least the publication just appended).
        while stream.items.len() > options.size
            || (stream.bytes > self.caps.bytes && stream.items.len() > 1)
        {
            if let Some(old) = stream.items.pop_front() {
                let c = cost(&old);
                stream.bytes -= c;
                removed += c;
            }
        }
        stream.expires_at = now + options.ttl;
        let position = StreamPosition {
            offset: stream.top,
            epoch: stream.epoch.clone(),
        };
        shard.bytes = shard.bytes + added - removed;
        self.bytes.fetch_add(added, Ordering::Relaxed);
        self.bytes.fetch_sub(removed, Ordering::Relaxed);
        while shard.bytes > self.caps.bytes && self.evict_one(shard, channel) {}
        drop(guard);
        position
    }

    /// Drop expired streams (called periodically so idle channels do not
    /// hold memory forever).
    pub fn sweep(&self) {
        let now = Instant::now();
        for shard in &self.shards {
            let mut guard = shard.lock();
            let expired: Vec<String> = guard
                .streams
                .iter()
                .filter(|(_, s)| s.expires_at <= now)
                .map(|(name, _)| name.clone())
                .collect();
            for name in expired {
                self.drop_stream(&mut guard, &name, "expired");
            }
            // Give the memory of emptied tables back.
            if guard.streams.capacity() > 2 * guard.streams.len() + 64 {
                guard.streams.shrink_to_fit();
            }
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
        _options: HistoryOptions,
    ) -> Result<HistoryRead, BackplaneError> {
        Ok(self.read_bounded(channel, since, limit, usize::MAX))
    }

    async fn read_budget(
        &self,
        channel: &str,
        since: u64,
        limit: usize,
        max_bytes: usize,
        _options: HistoryOptions,
    ) -> Result<HistoryRead, BackplaneError> {
        Ok(self.read_bounded(channel, since, limit, max_bytes))
    }
}

impl MemoryHistory {
    /// The read of [`History::read_budget`]: walks back from the newest
    /// entry and copies only what fits in `max_bytes` (frame bytes).
    fn read_bounded(
        &self,
        channel: &str,
        since: u64,
        limit: usize,
        max_bytes: usize,
    ) -> HistoryRead {
        let now = Instant::now();
        let mut guard = self.shard(channel).lock();
        let shard = &mut *guard;
        self.drop_if_expired(shard, channel, now);
        let Some(stream) = shard.streams.get(channel) else {
            // No stream: store nothing, tell the epoch the first append gets.
            return HistoryRead {
                position: StreamPosition {
                    offset: 0,
                    epoch: self.next_epoch(channel),
                },
                publications: Vec::new(),
                first_offset: 1,
            };
        };
        let first_offset = stream.top + 1 - stream.items.len() as u64;
        let skip = since
            .saturating_sub(first_offset - 1)
            .min(stream.items.len() as u64) as usize;
        let wanted = (stream.items.len() - skip).min(limit);
        // Count back from the newest wanted entry what fits the budget.
        let mut fits = 0;
        let mut bytes = 0usize;
        for p in stream.items.iter().skip(skip).take(wanted).rev() {
            bytes = bytes.saturating_add(super::frame_bytes(p));
            if bytes > max_bytes {
                break;
            }
            fits += 1;
        }
        let publications = stream
            .items
            .iter()
            .skip(skip + wanted - fits)
            .take(fits)
            .cloned()
            .collect();
        HistoryRead {
            position: StreamPosition {
                offset: stream.top,
                epoch: stream.epoch.clone(),
            },
            publications,
            first_offset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn publication(channel: &str, bytes: usize) -> Publication {
        let data = RawValue::from_string(format!("\"{}\"", "x".repeat(bytes))).unwrap();
        Publication::new(channel.to_owned(), data, None, None)
    }

    fn opts() -> HistoryOptions {
        HistoryOptions {
            size: 10,
            ttl: std::time::Duration::from_secs(60),
            min_replicas: 0,
        }
    }

    /// Counts the metric handles registered (one per `counter!`/`gauge!`
    /// call that runs).
    #[derive(Default)]
    struct Registrations(AtomicUsize);

    impl metrics::Recorder for Registrations {
        fn describe_counter(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_gauge(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_histogram(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn register_counter(
            &self,
            _: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Counter {
            self.0.fetch_add(1, Ordering::Relaxed);
            metrics::Counter::noop()
        }
        fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
            self.0.fetch_add(1, Ordering::Relaxed);
            metrics::Gauge::noop()
        }
        fn register_histogram(
            &self,
            _: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Histogram {
            self.0.fetch_add(1, Ordering::Relaxed);
            metrics::Histogram::noop()
        }
    }

    #[test]
    fn appends_and_reads_touch_no_metric_and_the_scrape_sets_the_gauges() {
        let h = MemoryHistory::new(1000, 1 << 20);
        let rec = Registrations::default();
        metrics::with_local_recorder(&rec, || {
            for _ in 0..100 {
                h.append(&mut publication("c", 10), opts());
            }
            h.read_bounded("c", 0, 10, usize::MAX);
        });
        assert_eq!(
            rec.0.load(Ordering::Relaxed),
            0,
            "metric lookups on the publish path"
        );
        metrics::with_local_recorder(&rec, || h.publish_gauges());
        assert_eq!(rec.0.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn reads_create_nothing_and_keep_the_epoch_of_the_first_append() {
        let h = MemoryHistory::new(1000, 1 << 20);
        let read = h.read("c", 0, 10, opts()).await.unwrap();
        assert_eq!(h.stream_count(), 0);
        let pos = h.append(&mut publication("c", 1), opts());
        assert_eq!(pos.offset, 1);
        assert_eq!(pos.epoch, read.position.epoch);
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_the_idlest_stream_is_evicted_and_comes_back_with_a_new_epoch() {
        // One stream per shard.
        let h = MemoryHistory::new(SHARDS, 1 << 30);
        let old = h.append(&mut publication("first", 1), opts());
        for i in 0..10 * SHARDS {
            tokio::time::advance(std::time::Duration::from_millis(1)).await;
            h.append(&mut publication(&format!("c{i}"), 1), opts());
        }
        assert!(h.stream_count() <= SHARDS);
        let again = h.read("first", 0, 10, opts()).await.unwrap();
        assert_eq!(again.position.offset, 0, "evicted");
        let new = h.append(&mut publication("first", 1), opts());
        assert_ne!(new.epoch, old.epoch, "a recreated stream has a new epoch");
    }

    #[tokio::test(start_paused = true)]
    async fn the_byte_cap_holds() {
        let h = MemoryHistory::new(1 << 20, 64 << 10);
        for i in 0..1000 {
            h.append(&mut publication(&format!("c{i}"), 1000), opts());
        }
        assert!(h.byte_count() <= 64 << 10, "{}", h.byte_count());
        let mut big = publication("big", 10_000);
        h.append(&mut big, opts());
        assert!(h.byte_count() <= (64 << 10) + 11_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_budgeted_read_keeps_the_newest_entries_that_fit() {
        let h = MemoryHistory::default();
        for _ in 0..10 {
            h.append(&mut publication("c", 1000), opts());
        }
        let read = h.read_budget("c", 0, 10, 3500, opts()).await.unwrap();
        let offsets: Vec<_> = read.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, vec![Some(8), Some(9), Some(10)]);
        let all = h.read_budget("c", 0, 10, usize::MAX, opts()).await.unwrap();
        assert_eq!(all.publications.len(), 10);
    }
}
