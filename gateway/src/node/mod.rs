//! The node: its configuration, local hub, backends and fan-out workers,
//! built once ([`Node::new`]) and shared (`Arc`) by every connection and API
//! handler. What the node does lives in one file per job:
//!
//! - [`admission`]: connection ids, connection slots, draining, readiness;
//! - [`ops`]: the operations clients and the HTTP API perform (publish,
//!   subscribe with recovery, presence, directed sends, registration);
//! - [`joinleave`]: the coalescing window of this node's join/leave events;
//! - [`maintenance`]: presence refresh and restore, expiry sweep, node
//!   heartbeat;
//! - [`pinger`]: the node-wide pinger.
//!
//! Failures of a backend call become `unavailable` for the caller, are
//! counted in `gateway_backend_errors_total{op}` and logged at debug (the
//! backend itself logs its state transitions at warn, once).

pub mod admission;
pub mod joinleave;
pub mod maintenance;
pub mod ops;
pub mod pinger;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::Arc;

use crate::auth::Auth;
use crate::backends::BackendSettings;
use crate::backplane::{Backplane, BackplaneError, Deliver};
use crate::config::Config;
use crate::fanout::FanOut;
use crate::history::{History, MemoryHistory};
use crate::hub::Hub;
use crate::metrics as m;
use crate::presence::{NodeInfo, Presence};
use crate::protocol::ReplyError;
use crate::redis::RedisSettings;
use crate::shutdown::Shutdown;
use joinleave::JoinLeave;

/// Errors building a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A JWT key could not be loaded.
    #[error("jwt key: {0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
    /// The backend could not be set up.
    #[error("backend: {0}")]
    Backend(#[from] BackplaneError),
    /// The webhook sender could not be started.
    #[error(transparent)]
    Webhooks(#[from] crate::webhooks::WebhookError),
    /// The proxy's HTTP client could not be built.
    #[error("proxy: {0}")]
    Proxy(#[from] reqwest::Error),
}

/// One gateway node. Shared (`Arc`) by every connection and API handler.
pub struct Node {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Local registry.
    pub hub: Arc<Hub>,
    /// Cross-node fan-out.
    pub backplane: Arc<dyn Backplane>,
    /// History reads.
    pub history: Arc<dyn History>,
    /// Presence, user index, node registry.
    pub presence: Arc<dyn Presence>,
    /// Authenticator.
    pub auth: Auth,
    /// Shutdown signal and task tracker.
    pub shutdown: Shutdown,
    /// Unix seconds at start.
    pub started_at: u64,
    /// The fan-out workers between the Redis reader and the hub (`None` on
    /// the embedded backends, which deliver in the publisher's task).
    pub fanout: Option<Arc<FanOut>>,
    /// This node's join/leave events, coalesced.
    pub join_leave: Arc<JoinLeave>,
    /// Webhook events to the application backend.
    pub webhooks: Arc<crate::webhooks::Webhooks>,
    /// The application backend proxy (docs/backend.md); no hook = off.
    pub proxy: crate::proxy::Proxy,
    /// Cluster-wide channel state: this node's dirty channels and their
    /// flush to the channel store.
    pub occupancy: Arc<crate::occupancy::Occupancy>,
    memory_history: Option<Arc<MemoryHistory>>,
    draining: AtomicBool,
    slots: AtomicUsize,
    /// The edge's admission state (handshake permits, per address, per user).
    pub edge: crate::edge::Edge,
    /// The Pusher apps (docs/pusher.md); empty: the Pusher endpoints are off.
    pub apps: crate::pusher::apps::Apps,
    boot: String,
    /// The numeric part of this process's Pusher socket ids.
    socket_boot: u32,
    seq: AtomicU64,
}

/// Count and log a failed backend call; the caller gets `unavailable`.
pub(crate) fn backend_error(op: &'static str, e: &BackplaneError) -> ReplyError {
    metrics::counter!(m::BACKEND_ERRORS, "op" => op).increment(1);
    tracing::debug!(op, error = %e, "backend call failed");
    ReplyError::unavailable()
}

impl Node {
    /// Build a node on the embedded backends, or on Redis when configured.
    pub async fn new(config: Config, shutdown: Shutdown) -> Result<Arc<Node>, NodeError> {
        let config = Arc::new(config);
        let auth = Auth::new(&config)?;
        let settings = match &config.redis_topology {
            None => BackendSettings::Memory {
                presence_ttl: config.presence_ttl,
                history_caps: (
                    config.clients.history_max_channels,
                    config.clients.history_max_bytes,
                ),
            },
            Some(topology) => BackendSettings::Redis(RedisSettings {
                topology: topology.clone(),
                auth: config.redis_auth.clone(),
                prefix: config.redis_prefix.clone(),
                node_id: config.node_id.clone(),
                timeout: config.redis_timeout,
                presence_ttl: config.presence_ttl,
            }),
        };
        let cluster = matches!(settings, BackendSettings::Redis(_));
        let plan = settings.plan();
        let hub = Arc::new(
            Hub::new(config.node_id.clone(), plan.interest())
                .with_user_limit(config.edge.max_connections_per_user),
        );
        let (sink, fanout): (Arc<dyn Deliver>, _) = if cluster {
            let fanout = FanOut::start(
                hub.clone(),
                config.fanout_workers,
                config.fanout_queue_size,
                &shutdown.tracker,
                &shutdown.token,
            );
            (fanout.clone(), Some(fanout))
        } else {
            (hub.clone(), None)
        };
        let backends = plan.start(sink).await?;
        let edge = crate::edge::Edge::new(&config);
        let join_leave = JoinLeave::start(
            backends.backplane.clone(),
            config.clients.join_leave_coalesce,
            &shutdown,
        );
        let webhooks = Arc::new(crate::webhooks::Webhooks::start(
            &config.webhooks,
            &config.pusher.apps,
            &config.node_id,
            &shutdown,
        )?);
        let proxy = crate::proxy::Proxy::new(&config.proxy)?;
        let occupancy = crate::occupancy::Occupancy::start(
            hub.clone(),
            backends.channels.clone(),
            webhooks.clone(),
            &shutdown,
        );
        let apps = crate::pusher::apps::Apps::new(&config.pusher);
        Ok(Arc::new(Node {
            started_at: crate::clock::now_us() / 1_000_000,
            config,
            hub,
            backplane: backends.backplane,
            history: backends.history,
            presence: backends.presence,
            auth,
            shutdown,
            fanout,
            join_leave,
            webhooks,
            proxy,
            occupancy,
            memory_history: backends.memory_history,
            draining: AtomicBool::new(false),
            slots: AtomicUsize::new(0),
            edge,
            apps,
            boot: format!("{:04x}", rand::random::<u16>()),
            socket_boot: rand::random::<u32>(),
            seq: AtomicU64::new(0),
        }))
    }

    /// The in-process history (`None` on Redis), for its scrape-time gauges.
    pub fn memory_history(&self) -> Option<&MemoryHistory> {
        self.memory_history.as_deref()
    }

    /// This node's registry entry.
    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            id: self.config.node_id.clone(),
            connections: self.hub.connection_count() as u64,
            subscriptions: self.hub.channel_count() as u64,
            started_at: self.started_at,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}
