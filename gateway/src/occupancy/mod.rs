//! Cluster-wide channel state: how many subscribers each channel has on
//! every node, and the occupied/vacated transitions (docs/backend.md,
//! "Channel events").
//!
//! The hub holds this node's per-channel subscriber counts. The subscribe
//! path only marks a channel dirty here (one insert into a set under a
//! short lock, no Redis round trip); [`Occupancy::run`], one tracked task,
//! writes the current local count of every dirty channel to the
//! [`ChannelStore`] every [`FLUSH_INTERVAL`], in batches of [`FLUSH_BATCH`].
//! The store tells which writes moved a channel from no subscriber anywhere
//! to some (occupied) or back (vacated); exactly one writer sees each
//! transition, and that node emits the webhook event and counts it.
//!
//! Invariants:
//! - The dirty set holds distinct channel names changed since the last
//!   flush (plus those a failed flush put back): it is bounded by the
//!   channels this node subscribed or unsubscribed within a flush interval
//!   and by those it still has subscribers for.
//! - A write carries the count the hub has when the flush reads it, not a
//!   delta, so writes are idempotent: a failed batch goes back into the
//!   dirty set and is simply written again later.
//! - A subscribe and an unsubscribe of the same channel inside one flush
//!   window may cancel out: neither occupied nor vacated is emitted for it.

pub mod memory;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::backplane::BackplaneError;
use crate::hub::Hub;
use crate::shutdown::Shutdown;
use crate::webhooks::{Event, Webhooks};

pub use memory::MemoryChannels;

/// How often dirty channels are written to the store.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// Channels per store write.
pub const FLUSH_BATCH: usize = 500;

use crate::metrics::{CHANNEL_EVENTS, FLUSH_ERRORS, FLUSH_SIZE};

/// What one write did to a channel's cluster-wide state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// No subscriber anywhere before, some now.
    Occupied,
    /// Some before, none anywhere now.
    Vacated,
}

/// What a [`ChannelStore::write`] did.
#[derive(Debug, Default)]
pub struct Written {
    /// The transitions the successful writes caused.
    pub transitions: Vec<(String, Transition)>,
    /// Channels whose write failed (or is unknown): written again later.
    pub retry: Vec<String>,
    /// The first error, when some write failed.
    pub error: Option<BackplaneError>,
}

impl Written {
    /// Every channel of `counts` failed with `e`.
    pub fn failed(counts: &[(String, u64)], e: BackplaneError) -> Self {
        Self {
            transitions: Vec::new(),
            retry: counts.iter().map(|(c, _)| c.clone()).collect(),
            error: Some(e),
        }
    }
}

/// One page of channels with subscribers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// (channel, cluster-wide subscribers), sorted by name.
    pub channels: Vec<(String, u64)>,
    /// The last channel examined, when more may follow.
    pub next: Option<String>,
}

/// Where the nodes' per-channel subscriber counts meet.
#[async_trait]
pub trait ChannelStore: Send + Sync + 'static {
    /// Set this node's count of each channel (0 removes it). Returns the
    /// transitions these writes caused, each seen by exactly one writer
    /// cluster-wide, and the channels to write again (their write failed).
    async fn write(&self, counts: &[(String, u64)]) -> Written;

    /// The channels this node's entries are stored for (to clear those the
    /// hub no longer has, after a restart under the same id).
    async fn own_channels(&self) -> Result<Vec<String>, BackplaneError>;

    /// Subscribers of `channel` summed over `nodes` (the live ones).
    async fn subscribers(&self, channel: &str, nodes: &[String]) -> Result<u64, BackplaneError>;

    /// Channels with subscribers on any of `nodes` whose name starts with
    /// `prefix`, after `after` (exclusive), at most `limit`, by name.
    async fn list(
        &self,
        nodes: &[String],
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, BackplaneError>;
}

/// This node's side: the dirty set and its flush. See the module docs.
pub struct Occupancy {
    hub: Arc<Hub>,
    store: Arc<dyn ChannelStore>,
    webhooks: Arc<Webhooks>,
    dirty: Mutex<HashSet<String>>,
    /// Whether the last flush failed (log transitions only).
    failing: AtomicBool,
    /// Set by [`Occupancy::resync`]: the next flush also clears what the
    /// store holds for this node and the hub does not.
    resync: AtomicBool,
}

impl Occupancy {
    /// The channel state over `store`, its flush task tracked by
    /// `shutdown` (it flushes once more after cancellation, so the drain's
    /// unsubscribes reach the store).
    pub fn start(
        hub: Arc<Hub>,
        store: Arc<dyn ChannelStore>,
        webhooks: Arc<Webhooks>,
        shutdown: &Shutdown,
    ) -> Arc<Self> {
        let this = Arc::new(Self {
            hub,
            store,
            webhooks,
            dirty: Mutex::new(HashSet::new()),
            failing: AtomicBool::new(false),
            resync: AtomicBool::new(true),
        });
        let token = shutdown.token.clone();
        let task = this.clone();
        shutdown.tracker.spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => task.flush().await,
                }
            }
            task.flush().await;
        });
        this
    }

    /// The store (for the channel info API).
    pub fn store(&self) -> &Arc<dyn ChannelStore> {
        &self.store
    }

    /// The local count of `channel` changed (or may have).
    pub fn touch(&self, channel: &str) {
        let mut dirty = self.dirty.lock();
        if !dirty.contains(channel) {
            dirty.insert(channel.to_owned());
        }
    }

    /// Write `channel`'s local count now, not at the next flush: a
    /// channel's first subscriber on this node, before its subscribe is
    /// answered, when webhooks want its occupancy. Otherwise a subscriber
    /// that joins here just before the last one elsewhere leaves would see
    /// a `channel_vacated` then `channel_occupied` while it was subscribed
    /// throughout. A failed write leaves the channel to the next flush.
    pub async fn write_now(&self, channel: &str) {
        let counts = [(
            channel.to_owned(),
            self.hub.subscriber_count(channel) as u64,
        )];
        let written = self.store.write(&counts).await;
        self.emit(written.transitions);
        if let Some(e) = written.error {
            self.failed(&e);
            self.touch(channel);
        }
    }

    /// Write every local count again (the store may have lost them: Redis
    /// restarted, or a purge removed this node's entries while it stalled).
    pub fn resync(&self) {
        self.resync.store(true, Ordering::Release);
    }

    /// Channels waiting for the next flush.
    pub fn pending(&self) -> usize {
        self.dirty.lock().len()
    }

    /// Emit and count the events of `transitions` (this node's writes, or
    /// a purge it ran).
    pub fn emit(&self, transitions: impl IntoIterator<Item = (String, Transition)>) {
        for (channel, t) in transitions {
            let (label, event) = match t {
                Transition::Occupied => ("occupied", Event::ChannelOccupied { channel }),
                Transition::Vacated => ("vacated", Event::ChannelVacated { channel }),
            };
            metrics::counter!(CHANNEL_EVENTS, "event" => label).increment(1);
            self.webhooks.emit(event);
        }
    }

    /// Write the current local count of every dirty channel; a failed
    /// batch (and everything after it) stays dirty for the next tick.
    pub async fn flush(&self) {
        if self.resync.swap(false, Ordering::AcqRel) {
            match self.store.own_channels().await {
                Ok(stored) => {
                    let mut dirty = self.dirty.lock();
                    dirty.extend(stored);
                    dirty.extend(self.hub.channel_names(|_| true));
                }
                Err(e) => {
                    self.resync.store(true, Ordering::Release);
                    self.failed(&e);
                    return;
                }
            }
        }
        let mut names: Vec<String> = std::mem::take(&mut *self.dirty.lock())
            .into_iter()
            .collect();
        if names.is_empty() {
            return;
        }
        names.sort_unstable();
        metrics::histogram!(FLUSH_SIZE).record(names.len() as f64);
        let mut at = 0;
        while at < names.len() {
            let end = (at + FLUSH_BATCH).min(names.len());
            let counts: Vec<(String, u64)> = names[at..end]
                .iter()
                .map(|c| (c.clone(), self.hub.subscriber_count(c) as u64))
                .collect();
            let written = self.store.write(&counts).await;
            self.emit(written.transitions);
            match written.error {
                None => {
                    if self.failing.swap(false, Ordering::Relaxed) {
                        tracing::info!("channel subscriber counts are written again");
                    }
                }
                Some(e) => {
                    // The store is failing: this batch's failures and the
                    // batches not tried yet wait for the next tick.
                    self.failed(&e);
                    let mut dirty = self.dirty.lock();
                    dirty.extend(written.retry);
                    dirty.extend(names.drain(end..));
                    return;
                }
            }
            at = end;
        }
    }

    fn failed(&self, e: &BackplaneError) {
        metrics::counter!(FLUSH_ERRORS).increment(1);
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, "cannot write channel subscriber counts; retrying");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backplane::NoInterest;
    use crate::outbox::ConnHandle;
    use std::sync::atomic::AtomicUsize;

    /// A memory store whose first `fail` writes fail.
    struct Flaky {
        inner: MemoryChannels,
        fail: AtomicUsize,
    }

    #[async_trait]
    impl ChannelStore for Flaky {
        async fn write(&self, counts: &[(String, u64)]) -> Written {
            let left = self.fail.load(Ordering::Relaxed);
            if left > 0 {
                self.fail.store(left - 1, Ordering::Relaxed);
                return Written::failed(counts, BackplaneError::Unavailable("down".into()));
            }
            self.inner.write(counts).await
        }
        async fn own_channels(&self) -> Result<Vec<String>, BackplaneError> {
            self.inner.own_channels().await
        }
        async fn subscribers(&self, c: &str, n: &[String]) -> Result<u64, BackplaneError> {
            self.inner.subscribers(c, n).await
        }
        async fn list(
            &self,
            n: &[String],
            p: &str,
            a: Option<&str>,
            l: usize,
        ) -> Result<Page, BackplaneError> {
            self.inner.list(n, p, a, l).await
        }
    }

    fn conn(i: u32) -> Arc<ConnHandle> {
        ConnHandle::new(format!("n.1.{i}").into(), None, None, 1 << 20).0
    }

    #[tokio::test]
    async fn failed_flushes_stay_dirty_and_a_window_can_cancel_out() {
        let hub = Arc::new(Hub::new("n".into(), Arc::new(NoInterest)));
        let store = Arc::new(Flaky {
            inner: MemoryChannels::new(),
            fail: AtomicUsize::new(2),
        });
        let shutdown = Shutdown::default();
        let occ = Occupancy::start(
            hub.clone(),
            store.clone(),
            Arc::new(Webhooks::disabled()),
            &shutdown,
        );
        // Stop the task: the test drives the flushes.
        shutdown.token.cancel();
        shutdown.tracker.close();
        shutdown.tracker.wait().await;
        let (a, b) = (conn(1), conn(2));
        hub.add_subscriber("x", &a, None);
        hub.add_subscriber("x", &b, None);
        occ.touch("x");
        occ.touch("x");
        assert_eq!(occ.pending(), 1);
        occ.flush().await; // fails: stays dirty
        assert_eq!(occ.pending(), 1);
        assert_eq!(store.subscribers("x", &[]).await.unwrap(), 0);
        occ.flush().await; // fails again
        occ.flush().await;
        assert_eq!(occ.pending(), 0);
        assert_eq!(store.subscribers("x", &[]).await.unwrap(), 2);
        // Leave and come back inside one window: the store sees the same
        // count, no transition.
        hub.remove_subscriber("x", &a);
        occ.touch("x");
        hub.add_subscriber("x", &a, None);
        occ.touch("x");
        occ.flush().await;
        assert_eq!(store.subscribers("x", &[]).await.unwrap(), 2);
        hub.remove_subscriber("x", &a);
        hub.remove_subscriber("x", &b);
        occ.touch("x");
        occ.flush().await;
        assert_eq!(store.subscribers("x", &[]).await.unwrap(), 0);
        assert!(store.own_channels().await.unwrap().is_empty());
    }
}
