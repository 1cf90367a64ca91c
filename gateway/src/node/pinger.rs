//! The node-wide pinger: one task asks the writers of one hub shard's
//! connections to send a WebSocket ping per tick, so each connection is
//! pinged once per `ping_interval` without a timer of its own.

use std::sync::Arc;

use super::Node;
use crate::outbox::ConnHandle;

/// Pinger slots per `ping_interval`: one per hub shard, so a tick pings
/// one shard's connections without looking at the others.
const PING_SLOTS: u32 = crate::hub::SHARDS as u32;

impl Node {
    /// The pinger: every `ping_interval / PING_SLOTS` it asks the writers of
    /// one slot's connections to ping, so each connection is pinged once per
    /// `ping_interval` without a timer of its own (one wake-up of this task
    /// instead of thousands of timer entries). Ends on shutdown.
    pub async fn run_pinger(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.ping_interval / PING_SLOTS);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick fires at once: start with the slot pinged last, so
        // no connection is pinged right after it connected.
        let mut slot = PING_SLOTS - 1;
        loop {
            tokio::select! {
                _ = self.shutdown.token.cancelled() => break,
                _ = tick.tick() => {
                    slot = (slot + 1) % PING_SLOTS;
                    self.hub.for_each_conn_in_shard(slot as usize, ConnHandle::request_ping);
                }
            }
        }
    }
}
