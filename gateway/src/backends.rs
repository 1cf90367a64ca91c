//! The one factory of a node's backends, for both modes: in-process (the
//! embedded single node) or Redis (a cluster node). The node, the contract
//! tests and the benchmarks all build their backends here.
//!
//! Construction order matters and is fixed here: [`BackendSettings::plan`]
//! makes the [`Interest`] first (the hub is built with it and reports its
//! first/last references to it), then [`Plan::start`] builds the backends
//! that deliver to the sink the caller built around the hub.

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
        /// History caps: max streams, max bytes (`history_max_channels`,
        /// `history_max_bytes`).
        history_caps: (usize, usize),
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
    /// Per-channel subscriber counts of every node.
    pub channels: Arc<dyn crate::occupancy::ChannelStore>,
    /// The in-process history, whose expired streams the node sweeps
    /// (`None` on Redis, where keys expire by themselves).
    pub memory_history: Option<Arc<MemoryHistory>>,
}

/// Backends about to be built: the interest exists already (the hub is
/// built with it), the rest comes with [`Plan::start`].
pub struct Plan(PlanKind);

enum PlanKind {
    Memory {
        presence_ttl: Duration,
        history_caps: (usize, usize),
    },
    Redis {
        settings: RedisSettings,
        registry: Arc<crate::redis::Registry>,
    },
}

impl BackendSettings {
    /// The first step: the interest the hub must report to.
    pub fn plan(self) -> Plan {
        Plan(match self {
            BackendSettings::Memory {
                presence_ttl,
                history_caps,
            } => PlanKind::Memory {
                presence_ttl,
                history_caps,
            },
            BackendSettings::Redis(settings) => PlanKind::Redis {
                registry: crate::redis::registry(&settings),
                settings,
            },
        })
    }
}

impl Plan {
    /// Where the hub reports its first and last local references.
    pub fn interest(&self) -> Arc<dyn Interest> {
        match &self.0 {
            PlanKind::Memory { .. } => Arc::new(NoInterest),
            PlanKind::Redis { registry, .. } => registry.clone(),
        }
    }

    /// Build the backends; everything they receive goes to `sink`.
    ///
    /// Fails only on unusable settings (a bad Redis URL); an unreachable
    /// Redis gives unhealthy backends that keep reconnecting.
    pub async fn start(self, sink: Arc<dyn Deliver>) -> Result<Backends, BackplaneError> {
        let interest = self.interest();
        match self.0 {
            PlanKind::Memory {
                presence_ttl,
                history_caps: (max_channels, max_bytes),
            } => {
                let history = Arc::new(MemoryHistory::new(max_channels, max_bytes));
                Ok(Backends {
                    interest,
                    backplane: Arc::new(MemoryBackplane::new(sink, history.clone())),
                    history: history.clone(),
                    presence: Arc::new(MemoryPresence::new(presence_ttl)),
                    channels: Arc::new(crate::occupancy::MemoryChannels::new()),
                    memory_history: Some(history),
                })
            }
            PlanKind::Redis { settings, registry } => {
                let b = crate::redis::connect(settings, registry, sink).await?;
                Ok(Backends {
                    interest,
                    backplane: b.backplane,
                    history: b.history,
                    presence: b.presence,
                    channels: b.channels,
                    memory_history: None,
                })
            }
        }
    }
}
