//! Bounded per-channel history: the [`History`] trait (the read side).
//!
//! Appends happen in [`crate::backplane::Backplane::publish`], atomically
//! with the publish itself, so an offset is never seen live before it is in
//! history. A stream holds the last `history_size` publications of a channel
//! with offsets 1, 2, 3, ... and an epoch that changes whenever the stream is
//! lost (expired after `history_ttl`, or the backend lost its data).

pub mod memory;

use async_trait::async_trait;

use crate::backplane::{BackplaneError, HistoryOptions, Publication, StreamPosition};

pub use memory::MemoryHistory;

/// A fresh random stream epoch: 16 hex digits (the publish script splices it
/// into JSON unescaped, so it must stay free of quotes and backslashes).
pub fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The result of a history read.
#[derive(Debug, Clone)]
pub struct HistoryRead {
    /// The stream's current top position (offset 0 and a fresh epoch when
    /// the channel has no stream yet).
    pub position: StreamPosition,
    /// Retained publications with offset greater than the requested one,
    /// oldest first, at most `limit` of them.
    pub publications: Vec<Publication>,
    /// Offset of the oldest retained publication (`top + 1` when empty).
    pub first_offset: u64,
}

/// Counter: replays cut to `replay_max_bytes` (answered `recovered: false`).
pub const REPLAYS_CUT: &str = "gateway_history_replays_cut_total";

/// Counter: history epochs ended because the channel's meta was written
/// under another Redis primary (after a failover; docs/redis.md).
pub const EPOCH_FENCED: &str = "gateway_history_epoch_fenced_total";

/// Counter: history publishes that fewer than the namespace's
/// `history_min_replicas` replicas confirmed in time (answered
/// `unavailable`, though live and in the primary's history).
pub const UNCONFIRMED: &str = "gateway_history_unconfirmed_total";

/// Describe the history counters shared by the backends and register them
/// at 0 (called by [`crate::metrics::install`]).
pub fn describe_metrics() {
    metrics::describe_counter!(
        EPOCH_FENCED,
        "History epochs ended because the channel's meta was written under another Redis primary (failover): recovering clients get recovered: false."
    );
    metrics::describe_counter!(
        UNCONFIRMED,
        "History publishes not confirmed by history_min_replicas replicas in time: answered unavailable, yet live and in the primary's history (maybe published)."
    );
    metrics::counter!(EPOCH_FENCED).absolute(0);
    metrics::counter!(UNCONFIRMED).absolute(0);
}

/// Bytes the `message` frame of `p` takes in a connection's queue (what a
/// replay budget counts): the payload, the names and the frame's fixed part.
pub fn frame_bytes(p: &Publication) -> usize {
    p.data.get().len()
        + p.channel.len()
        + p.from.as_ref().map_or(0, String::len)
        + p.epoch.as_ref().map_or(0, String::len)
        + 80
}

/// Keep the newest publications of `publications` whose frames fit in
/// `max_bytes` (the replay budget of [`History::read_budget`]).
pub fn keep_newest(publications: &mut Vec<Publication>, max_bytes: usize) {
    let mut bytes = 0usize;
    let fits = publications
        .iter()
        .rev()
        .take_while(|p| {
            bytes = bytes.saturating_add(frame_bytes(p));
            bytes <= max_bytes
        })
        .count();
    publications.drain(..publications.len() - fits);
}

/// Read access to channel history.
#[async_trait]
pub trait History: Send + Sync + 'static {
    /// Publications of `channel` with offset > `since`, oldest first, at
    /// most `limit`, together with the stream position at the time of the
    /// read. Never creates a new epoch for a stream that exists, and never
    /// stores anything for a channel without a stream. The Redis backend
    /// answers such a channel offset 0 and the empty epoch (which matches
    /// any epoch on recovery: offset 0 means nothing was seen); the
    /// in-process one answers the epoch the first append will take (see
    /// [`memory`]). Either way the epoch a subscriber is told stays valid
    /// for the publications that follow, unless the stream is lost
    /// meanwhile (then the publications carry a new epoch).
    async fn read(
        &self,
        channel: &str,
        since: u64,
        limit: usize,
        options: HistoryOptions,
    ) -> Result<HistoryRead, BackplaneError>;

    /// Like [`History::read`], but returns only the newest of the wanted
    /// publications whose frames fit in `max_bytes` (a subscriber's replay
    /// budget): the caller sees fewer than it asked for and must not claim
    /// a full recovery. The in-process history copies nothing beyond the
    /// budget; the Redis one stops reading in its script once the budget is
    /// passed, then trims exactly (the default reads `limit`, then trims).
    async fn read_budget(
        &self,
        channel: &str,
        since: u64,
        limit: usize,
        max_bytes: usize,
        options: HistoryOptions,
    ) -> Result<HistoryRead, BackplaneError> {
        let mut read = self.read(channel, since, limit, options).await?;
        keep_newest(&mut read.publications, max_bytes);
        Ok(read)
    }
}
