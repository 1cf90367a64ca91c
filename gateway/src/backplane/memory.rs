//! In-process backplane of the embedded single node: publishing is handing
//! the envelope straight to the local hub.
//!
//! Per-channel order holds because a publication's history append and its
//! delivery happen under one per-channel (sharded) order lock, so no two
//! publications of a channel interleave between offset assignment and
//! fan-out. Delivery is synchronous: when `publish` returns, every local
//! subscriber's queue holds the frame.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{
    Backplane, BackplaneError, Deliver, Envelope, HistoryOptions, Publication, StreamPosition,
    Topic,
};
use crate::history::MemoryHistory;

const ORDER_SHARDS: usize = 64;

/// In-memory [`Backplane`].
pub struct MemoryBackplane {
    sink: Arc<dyn Deliver>,
    history: Arc<MemoryHistory>,
    order: Vec<Mutex<()>>,
    hasher: RandomState,
}

impl MemoryBackplane {
    /// A backplane delivering to `sink` and appending to `history`.
    pub fn new(sink: Arc<dyn Deliver>, history: Arc<MemoryHistory>) -> Self {
        Self {
            sink,
            history,
            order: (0..ORDER_SHARDS).map(|_| Mutex::new(())).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl MemoryBackplane {
    /// The order lock of a channel (sharded).
    fn order_lock(&self, channel: &str) -> &Mutex<()> {
        &self.order[(self.hasher.hash_one(channel) as usize) % ORDER_SHARDS]
    }
}

#[async_trait]
impl Backplane for MemoryBackplane {
    async fn publish(
        &self,
        mut publication: Publication,
        history: Option<HistoryOptions>,
    ) -> Result<Option<StreamPosition>, BackplaneError> {
        publication.clear_position();
        let _order = self.order_lock(&publication.channel).lock();
        let position = history.map(|h| self.history.append(&mut publication, h));
        self.sink.deliver(Envelope::Message(publication));
        Ok(position)
    }

    async fn send(&self, envelope: Envelope) -> Result<(), BackplaneError> {
        // Join/leave share the channel's order with its publications.
        let channel = match &envelope {
            Envelope::Join(e) | Envelope::Leave(e) => Some(self.order_lock(&e.channel)),
            _ => None,
        };
        let _order = channel.map(|lock| lock.lock());
        self.sink.deliver(envelope);
        Ok(())
    }

    async fn ready(&self, _topic: &Topic) -> Result<(), BackplaneError> {
        Ok(())
    }

    fn is_healthy(&self) -> bool {
        true
    }
}
