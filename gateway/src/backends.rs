//! The one factory of a node's backends, for both modes: in-process (the
//! embedded single node) or Redis (a cluster node). The node, the contract
//! tests and the benchmarks all build their backends here.
//!
//! Construction order matters and is fixed here: the [`Interest`] registry
//! first (the hub reports its first/last references to it), then the sink
//! that receives deliveries (built by the caller around the hub, given the
//! interest), then the backends that deliver to that sink.

use std::sync::Arc;
use std::time::Duration;

use crate::backplane::{Backplane, BackplaneError, Deliver, Interest, MemoryBackplane, NoInterest};
use crate::history::{History, MemoryHistory};
use crate::presence::{MemoryPresence, Presence};
use crate::redis::RedisSettings;

/// Which backends to build.
#[derive(Debug, Clone)]
pub enum BackendSettings {
    /// In-process backends; presence entries expire after `presence_ttl`.
    Memory {
        /// TTL of presence and user-index entries.
        presence_ttl: Duration,
    },
    /// Redis backends.
    Redis(RedisSettings),
}

/// The backends of one node.
pub struct Backends {
    /// Where the hub reports its first and last local references.
    pub interest: Arc<dyn Interest>,
    /// Cross-node fan-out.
    pub backplane: Arc<dyn Backplane>,
    /// History reads.
    pub history: Arc<dyn History>,
    /// Presence, user index, node registry.
    pub presence: Arc<dyn Presence>,
    /// The in-process history, whose expired streams the node sweeps
    /// (`None` on Redis, where keys expire by themselves).
    pub memory_history: Option<Arc<MemoryHistory>>,
}

impl Backends {
    /// Build the backends. `sink` is called once, with the interest the hub
    /// must report to, and returns what receives every delivery.
    ///
    /// Fails only on unusable settings (a bad Redis URL); an unreachable
    /// Redis gives unhealthy backends that keep reconnecting.
    pub async fn start(
        settings: BackendSettings,
        sink: impl FnOnce(Arc<dyn Interest>) -> Arc<dyn Deliver>,
    ) -> Result<Self, BackplaneError> {
        match settings {
            BackendSettings::Memory { presence_ttl } => {
                let interest: Arc<dyn Interest> = Arc::new(NoInterest);
                let sink = sink(interest.clone());
                let history = Arc::new(MemoryHistory::default());
                Ok(Self {
                    interest,
                    backplane: Arc::new(MemoryBackplane::new(sink, history.clone())),
                    history: history.clone(),
                    presence: Arc::new(MemoryPresence::new(presence_ttl)),
                    memory_history: Some(history),
                })
            }
            BackendSettings::Redis(settings) => {
                let registry = crate::redis::registry(&settings);
                let interest: Arc<dyn Interest> = registry.clone();
                let sink = sink(interest.clone());
                let b = crate::redis::connect(settings, registry, sink).await?;
                Ok(Self {
                    interest,
                    backplane: b.backplane,
                    history: b.history,
                    presence: b.presence,
                    memory_history: None,
                })
            }
        }
    }
}
