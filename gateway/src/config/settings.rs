//! [`Settings`]: every setting as the CLI, the environment and the TOML
//! file give it, each optional so the three can be layered
//! ([`super::Config::from_settings`] merges and validates them).

use std::collections::HashMap;
use std::path::PathBuf;

use clap::Parser;
use serde::Deserialize;

use super::{LogFormat, NamespaceOptions};

/// Raw settings as given by CLI, env or file: every field optional so the
/// three sources can be layered. Field docs give the default.
#[derive(Debug, Default, Parser, Deserialize)]
#[command(
    name = "gateway",
    version,
    about = "Horizontally scaled WebSocket gateway"
)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// TOML config file (namespaces live there).
    #[arg(long, env = "GATEWAY_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Client listener address. Default 0.0.0.0:8080 with a JWT key, and
    /// 127.0.0.1:8080 in open development mode (no JWT key).
    #[arg(long, env = "GATEWAY_LISTEN")]
    pub listen: Option<String>,
    /// Optional separate listener for /metrics, /healthz, /readyz.
    #[arg(long, env = "GATEWAY_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// Node id, [A-Za-z0-9_-]{1,64}. Default: `n` + 8 random hex digits.
    #[arg(long, env = "GATEWAY_NODE_ID")]
    pub node_id: Option<String>,
    /// Redis URL; unset runs the embedded single node.
    #[arg(long, env = "GATEWAY_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel. Default "gw".
    #[arg(long, env = "GATEWAY_REDIS_PREFIX")]
    pub redis_prefix: Option<String>,
    /// Timeout of every Redis call, ms. Default 1000.
    #[arg(long, env = "GATEWAY_REDIS_TIMEOUT_MS")]
    pub redis_timeout_ms: Option<u64>,
    /// How Redis is reached: "single" (redis_url), "cluster"
    /// (redis_cluster_nodes) or "sentinel" (redis_sentinels +
    /// redis_sentinel_master). Default "single" when redis_url is set.
    #[arg(long, env = "GATEWAY_REDIS_TOPOLOGY")]
    pub redis_topology: Option<String>,
    /// Cluster mode: seed nodes of the Redis Cluster, host:port (comma
    /// separated in the env); the rest of the cluster is discovered.
    #[arg(long, env = "GATEWAY_REDIS_CLUSTER_NODES", value_delimiter = ',')]
    pub redis_cluster_nodes: Option<Vec<String>>,
    /// Sentinel mode: the sentinels, host:port (comma separated in the env).
    #[arg(long, env = "GATEWAY_REDIS_SENTINELS", value_delimiter = ',')]
    pub redis_sentinels: Option<Vec<String>>,
    /// Sentinel mode: the monitored master's name.
    #[arg(long, env = "GATEWAY_REDIS_SENTINEL_MASTER")]
    pub redis_sentinel_master: Option<String>,
    /// ACL user of the Redis data nodes (needs redis_password).
    #[arg(long, env = "GATEWAY_REDIS_USERNAME")]
    pub redis_username: Option<String>,
    /// Password of the Redis data nodes.
    #[arg(long, env = "GATEWAY_REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,
    /// ACL user of the sentinels (needs redis_sentinel_password).
    #[arg(long, env = "GATEWAY_REDIS_SENTINEL_USERNAME")]
    pub redis_sentinel_username: Option<String>,
    /// Password of the sentinels.
    #[arg(long, env = "GATEWAY_REDIS_SENTINEL_PASSWORD", hide_env_values = true)]
    pub redis_sentinel_password: Option<String>,
    /// Log filter (tracing EnvFilter syntax). Default "info".
    #[arg(long, env = "GATEWAY_LOG")]
    pub log: Option<String>,
    /// Log format: text or json. Default text.
    #[arg(long, env = "GATEWAY_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// HS256 secret for client JWTs.
    #[arg(long, env = "GATEWAY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// RS256 public key (PEM file) for client JWTs.
    #[arg(long, env = "GATEWAY_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// Refuse connections without a valid token. Default false.
    #[arg(long, env = "GATEWAY_AUTH_REQUIRED")]
    pub auth_required: Option<bool>,
    /// API key for the HTTP server API; unset leaves the API open.
    #[arg(long, env = "GATEWAY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Allowed `Origin`s, comma separated; empty allows any.
    #[arg(long, env = "GATEWAY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,
    /// Proxies whose X-Forwarded-For is trusted, comma separated IPs.
    #[arg(long, env = "GATEWAY_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Option<Vec<String>>,
    /// Max open client connections on this node. Default 100000.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Max incoming frame size, bytes. Default 65536.
    #[arg(long, env = "GATEWAY_MAX_MESSAGE_SIZE")]
    pub max_message_size: Option<usize>,
    /// Per-connection send queue limit, bytes. Default 1048576.
    #[arg(long, env = "GATEWAY_QUEUE_BYTES")]
    pub queue_bytes: Option<usize>,
    /// WebSocket read buffer per connection, bytes (the bulk of an idle
    /// connection's memory). Default 1024.
    #[arg(long, env = "GATEWAY_READ_BUFFER_SIZE")]
    pub read_buffer_size: Option<usize>,
    /// Runtime worker threads. Default: the CPUs this process may use.
    #[arg(long, env = "GATEWAY_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// Fan-out workers between the Redis reader and the local connections
    /// (a channel always goes to the same one). Default: worker_threads.
    #[arg(long, env = "GATEWAY_FANOUT_WORKERS")]
    pub fanout_workers: Option<usize>,
    /// Envelopes each fan-out worker may hold queued; when one is full, the
    /// connections its next envelope was for are closed with 4005.
    /// Default 8192.
    #[arg(long, env = "GATEWAY_FANOUT_QUEUE_SIZE")]
    pub fanout_queue_size: Option<usize>,
    /// Max channels one connection may subscribe. Default 128.
    #[arg(long, env = "GATEWAY_MAX_CHANNELS_PER_CONNECTION")]
    pub max_channels_per_connection: Option<usize>,
    /// Server ping interval, ms. Default 25000.
    #[arg(long, env = "GATEWAY_PING_INTERVAL_MS")]
    pub ping_interval_ms: Option<u64>,
    /// Close after this long without a frame past a ping, ms. Default 10000.
    #[arg(long, env = "GATEWAY_PONG_TIMEOUT_MS")]
    pub pong_timeout_ms: Option<u64>,
    /// Client frames per second per connection. Default 100.
    #[arg(long, env = "GATEWAY_RATE_LIMIT")]
    pub rate_limit: Option<u32>,
    /// Burst of the rate limit. Default 200.
    #[arg(long, env = "GATEWAY_RATE_BURST")]
    pub rate_burst: Option<u32>,
    /// Drain grace on SIGTERM, ms. Default 30000.
    #[arg(long, env = "GATEWAY_DRAIN_GRACE_MS")]
    pub drain_grace_ms: Option<u64>,
    /// Presence entry TTL, ms. Default 60000.
    #[arg(long, env = "GATEWAY_PRESENCE_TTL_MS")]
    pub presence_ttl_ms: Option<u64>,
    /// Presence refresh interval, ms. Default 25000.
    #[arg(long, env = "GATEWAY_PRESENCE_REFRESH_MS")]
    pub presence_refresh_ms: Option<u64>,
    /// A node whose registry heartbeat is older than this is taken as
    /// crashed and its presence purged by a live node, ms. Default 5000.
    #[arg(long, env = "GATEWAY_PRESENCE_NODE_TIMEOUT_MS")]
    pub presence_node_timeout_ms: Option<u64>,
    /// Channels checked for expired members per sweep tick. Default 500.
    #[arg(long, env = "GATEWAY_PRESENCE_SWEEP_BATCH")]
    pub presence_sweep_batch: Option<usize>,
    /// Serve /demo, /status and /sdk/gateway-client.js. Default true,
    /// false once an API key is set or auth is required.
    #[arg(long, env = "GATEWAY_PAGES")]
    pub pages: Option<bool>,
    // --- The edge (docs/security.md, "The edge"): sockets, HTTP, limits.
    /// Time a client has to send its complete request headers (also the
    /// idle time allowed between two requests on one connection), ms.
    /// Default 10000.
    #[arg(long, env = "GATEWAY_HEADER_TIMEOUT_MS")]
    pub header_timeout_ms: Option<u64>,
    /// Max size of a request's headers, bytes. Default 16384 (min 8192).
    #[arg(long, env = "GATEWAY_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<usize>,
    /// Time an /api request body may take to arrive, ms. Default 10000.
    #[arg(long, env = "GATEWAY_BODY_TIMEOUT_MS")]
    pub body_timeout_ms: Option<u64>,
    /// Max sockets accepted but not yet upgraded to WebSocket (HTTP
    /// requests included); past it new sockets get a 503. Default 1024.
    #[arg(long, env = "GATEWAY_MAX_PENDING_CONNECTIONS")]
    pub max_pending_connections: Option<usize>,
    /// Max open connections (sockets) from one client address. Default 1000.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// New connections per second from one client address. Default 50.
    #[arg(long, env = "GATEWAY_CONNECT_RATE_PER_IP")]
    pub connect_rate_per_ip: Option<u32>,
    /// Burst of the per-address connect rate. Default 200.
    #[arg(long, env = "GATEWAY_CONNECT_BURST_PER_IP")]
    pub connect_burst_per_ip: Option<u32>,
    /// Apply the per-address limits to loopback and private addresses too
    /// (where load balancers live). Default false.
    #[arg(long, env = "GATEWAY_IP_LIMITS_PRIVATE")]
    pub ip_limits_private: Option<bool>,
    /// Max open connections of one user on this node. Default 100.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS_PER_USER")]
    pub max_connections_per_user: Option<usize>,
    /// /metrics on the client listener requires the API key. Default false
    /// (use admin_listen to keep /metrics off the client listener).
    #[arg(long, env = "GATEWAY_METRICS_REQUIRE_KEY")]
    pub metrics_require_key: Option<bool>,
    // --- Clients: replay, presence churn, tokens (docs/security.md) ---
    /// Required JWT `iss`; unset: `iss` is not checked.
    #[arg(long, env = "GATEWAY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required JWT `aud` (a token's `aud` must be or contain it); unset:
    /// `aud` is not checked.
    #[arg(long, env = "GATEWAY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Max members listed in a client's `presence` reply. Default 1000.
    #[arg(long, env = "GATEWAY_PRESENCE_REPLY_MAX_MEMBERS")]
    pub presence_reply_max_members: Option<usize>,
    /// Subscribes to join/leave channels per second per connection.
    /// Default 1.
    #[arg(long, env = "GATEWAY_JOIN_LEAVE_RATE")]
    pub join_leave_rate: Option<u32>,
    /// Burst of `join_leave_rate`. Default 128 (max_channels_per_connection).
    #[arg(long, env = "GATEWAY_JOIN_LEAVE_BURST")]
    pub join_leave_burst: Option<u32>,
    /// Milliseconds this node's join/leave events wait so that a join and
    /// a leave of one connection cancel out. Default 100; 0 sends at once.
    #[arg(long, env = "GATEWAY_JOIN_LEAVE_COALESCE_MS")]
    pub join_leave_coalesce_ms: Option<u64>,
    /// Max bytes of one subscribe's history replay. Default 524288 (or
    /// queue_bytes / 2 when that is smaller).
    #[arg(long, env = "GATEWAY_REPLAY_MAX_BYTES")]
    pub replay_max_bytes: Option<usize>,
    /// A replay costs one rate-limit token per started this many bytes.
    /// Default 16384.
    #[arg(long, env = "GATEWAY_REPLAY_TOKEN_BYTES")]
    pub replay_token_bytes: Option<usize>,
    /// In-process history (no Redis): max channels with a stream. Default
    /// 100000.
    #[arg(long, env = "GATEWAY_HISTORY_MAX_CHANNELS")]
    pub history_max_channels: Option<usize>,
    /// In-process history (no Redis): max bytes of retained publications.
    /// Default 268435456 (256 MiB).
    #[arg(long, env = "GATEWAY_HISTORY_MAX_BYTES")]
    pub history_max_bytes: Option<usize>,
    // --- Webhooks (docs/backend.md, "Webhooks") ---
    /// Endpoint the node POSTs its events to (http or https); unset: no
    /// webhooks.
    #[arg(long, env = "GATEWAY_WEBHOOK_URL", hide_env_values = true)]
    pub webhook_url: Option<String>,
    /// HMAC-SHA256 key of `X-Gateway-Signature`, at least 16 bytes;
    /// required with webhook_url.
    #[arg(long, env = "GATEWAY_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Event names sent, comma separated. Default: all (client_publish
    /// also needs the namespace's `webhook_client_publish`).
    #[arg(long, env = "GATEWAY_WEBHOOK_EVENTS", value_delimiter = ',')]
    pub webhook_events: Option<Vec<String>>,
    /// Max events in one request. Default 100.
    #[arg(long, env = "GATEWAY_WEBHOOK_BATCH_MAX_EVENTS")]
    pub webhook_batch_max_events: Option<usize>,
    /// Max time an event waits for others to share its request, ms.
    /// Default 100.
    #[arg(long, env = "GATEWAY_WEBHOOK_BATCH_MAX_WAIT_MS")]
    pub webhook_batch_max_wait_ms: Option<u64>,
    /// Max events held undelivered (queued plus in flight); past it new
    /// events are dropped and counted. Default 10000.
    #[arg(long, env = "GATEWAY_WEBHOOK_QUEUE_SIZE")]
    pub webhook_queue_size: Option<usize>,
    /// Max bytes of undelivered events held (their strings and data plus
    /// ~160 bytes each); past it new events are dropped and counted.
    /// Default 67108864 (64 MiB).
    #[arg(long, env = "GATEWAY_WEBHOOK_QUEUE_BYTES")]
    pub webhook_queue_bytes: Option<usize>,
    /// Timeout of one webhook request, ms. Default 5000.
    #[arg(long, env = "GATEWAY_WEBHOOK_TIMEOUT_MS")]
    pub webhook_timeout_ms: Option<u64>,
    /// First retry delay of a failed request, ms (doubled per failure,
    /// jittered). Default 100.
    #[arg(long, env = "GATEWAY_WEBHOOK_RETRY_INITIAL_MS")]
    pub webhook_retry_initial_ms: Option<u64>,
    /// Max retry delay, ms. Default 10000.
    #[arg(long, env = "GATEWAY_WEBHOOK_RETRY_MAX_MS")]
    pub webhook_retry_max_ms: Option<u64>,
    /// On shutdown, time allowed to deliver the queued events, ms.
    /// Default 5000.
    #[arg(long, env = "GATEWAY_WEBHOOK_FLUSH_TIMEOUT_MS")]
    pub webhook_flush_timeout_ms: Option<u64>,
    /// Extra request headers, `Name: value`, comma separated.
    #[arg(
        long,
        env = "GATEWAY_WEBHOOK_HEADERS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub webhook_headers: Option<Vec<String>>,
    /// Options of channels without a namespace (file only).
    #[arg(skip)]
    pub default_namespace: Option<NamespaceOptions>,
    /// Namespaces by name (file only).
    #[arg(skip)]
    pub namespaces: Option<HashMap<String, NamespaceOptions>>,
    /// The application backend proxy, `[proxy]` (file only; docs/backend.md).
    #[arg(skip)]
    pub proxy: Option<super::ProxySettings>,
    /// Pusher apps, `[pusher]` / `[[pusher.apps]]` (file only; docs/pusher.md).
    #[arg(skip)]
    pub pusher: Option<super::PusherSettings>,
    /// One Pusher app from the environment: its `app_id` (with
    /// pusher_app_key and pusher_app_secret; docs/pusher.md).
    #[arg(long, env = "GATEWAY_PUSHER_APP_ID")]
    pub pusher_app_id: Option<String>,
    /// The env app's key.
    #[arg(long, env = "GATEWAY_PUSHER_APP_KEY")]
    pub pusher_app_key: Option<String>,
    /// The env app's secret.
    #[arg(long, env = "GATEWAY_PUSHER_APP_SECRET", hide_env_values = true)]
    pub pusher_app_secret: Option<String>,
    /// The env app allows client events. Default false.
    #[arg(long, env = "GATEWAY_PUSHER_CLIENT_EVENTS")]
    pub pusher_client_events: Option<bool>,
}
