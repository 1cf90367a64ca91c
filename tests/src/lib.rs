//! Integration harness for the gateway: real processes, real sockets.
//!
//! Every test drives the real `gateway` binary (built by `cargo build -p
//! gateway`, or named by `GATEWAY_BIN`) over real loopback sockets:
//!
//! - [`Gateway`] spawns one gateway process on `127.0.0.1:0` (or a fixed
//!   address), learns its address from the `gateway listening on ADDR`
//!   stdout line, captures its stderr to a log file under
//!   `target/test-logs/`, and kills it on drop. It is the only gateway
//!   launcher: [`cluster::Cluster`] and the ops tests' local cluster use it.
//! - [`RedisServer`] runs a throw-away `redis-server` on a free port for the
//!   cluster tests; every test takes its own key prefix from
//!   [`unique_prefix`]. [`RedisSentinel`] runs a primary, a replica and
//!   three sentinels for failover tests.
//! - [`Client`] is a WebSocket client speaking protocol v1 (docs/protocol.md);
//!   [`RawWs`] is a hand-rolled one that never answers pings, for heartbeat
//!   tests.
//! - [`Api`] calls the HTTP server API.
//! - [`WebhookSink`] is a webhook receiver: a real HTTP server in the test
//!   process that records every request the gateway POSTs to it, can be
//!   stopped and restarted on its port, and checks signatures ([`webhook_sink::verify`]).
//! - [`eventually`] is the only way a test waits for a condition: bounded
//!   polling with a short interval, never a bare sleep.
//! - [`jwt`] mints HS256, RS256 and `alg: none` tokens.
//! - [`free_ports`], [`signal`] and the `/proc` checks in [`process`] are
//!   the OS plumbing every launcher shares; [`metric`] and friends read a
//!   node's `/metrics` text.
//!
//! Invariants: no process outlives the handle that started it (drop kills
//! and reaps), every wait is bounded, and every failure message says what
//! was expected and what arrived, plus where the server log is.

mod api;
pub mod backend;
mod client;
pub mod cluster;
mod gateway;
pub mod jwt;
pub mod process;
pub mod pusher;
mod raw;
mod redis;
pub mod redis_cluster;
mod redis_proxy;
pub mod redis_replica;
pub mod redis_sentinel;
mod scrape;
mod wait;
pub mod webhook_sink;

pub use api::{Api, ApiResponse};
pub use backend::{Backend, BackendReply, Recorded};
pub use client::{check_error, Client, ClientBuilder, Refused};
pub use gateway::{gateway_bin, Gateway, GatewayBuilder};
pub use process::{free_ports, signal};
pub use raw::{opcode, RawCloseReport, RawFrame, RawWs};
pub use redis::{unique_prefix, RedisServer, Resp};
pub use redis_cluster::RedisCluster;
pub use redis_proxy::RedisProxy;
pub use redis_sentinel::RedisSentinel;
pub use scrape::{metric, metric_labelled, metric_sum, metric_value};
pub use wait::{eventually, eventually_some};
pub use webhook_sink::{Received, WebhookSink};

use std::path::PathBuf;
use std::time::Duration;

/// Default bound for waiting on a frame that must arrive: generous, because
/// the suite runs in parallel on small, loaded machines.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(15);

/// Default bound for [`eventually`] conditions.
pub const EVENTUALLY: Duration = Duration::from_secs(15);

/// The workspace root (the parent of this crate's manifest directory).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// The directory holding the committed test fixtures (RSA keys).
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A TOML configuration with the namespaces most tests rely on.
///
/// - default namespace (no `:`): client publish, anonymous allowed;
/// - `chat`: presence + join/leave, client publish;
/// - `hist`: history of 100, client publish;
/// - `small`: history of 3, client publish;
/// - `ro`: no client publish;
/// - `private`: anonymous connections may not subscribe.
pub const STANDARD_CONFIG: &str = r#"
[default_namespace]
client_publish = true
allow_anonymous = true

[namespaces.chat]
presence = true
join_leave = true
client_publish = true
allow_anonymous = true

[namespaces.hist]
history_size = 100
history_ttl_secs = 300
client_publish = true
allow_anonymous = true

[namespaces.small]
history_size = 3
history_ttl_secs = 300
client_publish = true
allow_anonymous = true

[namespaces.ro]
client_publish = false
allow_anonymous = true

[namespaces.private]
client_publish = true
allow_anonymous = false
"#;
