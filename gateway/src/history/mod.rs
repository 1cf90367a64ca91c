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

/// Read access to channel history.
#[async_trait]
pub trait History: Send + Sync + 'static {
    /// Publications of `channel` with offset > `since`, oldest first, at
    /// most `limit`, together with the stream position at the time of the
    /// read. Never creates a new epoch for a stream that exists. The Redis
    /// backend never writes on a read: a channel without a stream answers
    /// offset 0 and the empty epoch (which matches any epoch on recovery).
    async fn read(
        &self,
        channel: &str,
        since: u64,
        limit: usize,
        options: HistoryOptions,
    ) -> Result<HistoryRead, BackplaneError>;
}
