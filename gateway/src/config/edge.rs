//! The edge limits of the configuration: sockets before the WebSocket
//! upgrade, HTTP timeouts and sizes, per client address and per user,
//! merged from the CLI/env and the file (docs/security.md, "The edge").

use std::time::Duration;

use super::{invalid, ms, positive, ConfigError, Settings};

/// The edge's limits: sockets before the upgrade, HTTP, per client address
/// and per user (docs/security.md, "The edge").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeLimits {
    /// Time to send complete request headers (and idle time between requests).
    pub header_timeout: Duration,
    /// Max request header bytes (>= 8192).
    pub max_header_bytes: usize,
    /// Time an /api body may take to arrive.
    pub body_timeout: Duration,
    /// Max sockets not yet upgraded.
    pub max_pending_connections: usize,
    /// Max sockets per client address.
    pub max_connections_per_ip: usize,
    /// New connections per second per client address.
    pub connect_rate_per_ip: u32,
    /// Burst of `connect_rate_per_ip`.
    pub connect_burst_per_ip: u32,
    /// Whether loopback and private addresses are limited too.
    pub ip_limits_private: bool,
    /// Max connections of one user on this node.
    pub max_connections_per_user: usize,
    /// /metrics on the client listener requires the API key.
    pub metrics_require_key: bool,
}

impl EdgeLimits {
    /// Layers `s` (CLI + env) over `f` (the file) and the defaults, then
    /// validates; `has_api_key`: an API key is configured (which
    /// `metrics_require_key` needs).
    pub(super) fn merge(
        s: &Settings,
        f: &Settings,
        has_api_key: bool,
    ) -> Result<Self, ConfigError> {
        macro_rules! pick {
            ($field:ident) => {
                s.$field.or(f.$field)
            };
        }
        let edge = Self {
            header_timeout: ms(pick!(header_timeout_ms), 10_000, "header_timeout_ms")?,
            max_header_bytes: {
                let v = pick!(max_header_bytes).unwrap_or(16 * 1024);
                if !(8192..=1 << 20).contains(&v) {
                    return Err(invalid(
                        "max_header_bytes",
                        "must be between 8192 and 1048576",
                    ));
                }
                v
            },
            body_timeout: ms(pick!(body_timeout_ms), 10_000, "body_timeout_ms")?,
            max_pending_connections: positive(
                pick!(max_pending_connections),
                1024,
                "max_pending_connections",
            )?,
            max_connections_per_ip: positive(
                pick!(max_connections_per_ip),
                1000,
                "max_connections_per_ip",
            )?,
            connect_rate_per_ip: pick!(connect_rate_per_ip).unwrap_or(50),
            connect_burst_per_ip: pick!(connect_burst_per_ip).unwrap_or(200),
            ip_limits_private: pick!(ip_limits_private).unwrap_or(false),
            max_connections_per_user: positive(
                pick!(max_connections_per_user),
                100,
                "max_connections_per_user",
            )?,
            metrics_require_key: pick!(metrics_require_key).unwrap_or(false),
        };
        if edge.connect_rate_per_ip == 0 || edge.connect_burst_per_ip == 0 {
            return Err(invalid(
                "connect_rate_per_ip",
                "connect_rate_per_ip and connect_burst_per_ip must be greater than 0",
            ));
        }
        if edge.metrics_require_key && !has_api_key {
            return Err(invalid("metrics_require_key", "requires api_key"));
        }
        Ok(edge)
    }
}
