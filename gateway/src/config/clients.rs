//! The client limits of the configuration: how much one client may make
//! the node do (history replay, join/leave churn, presence replies) and the
//! JWT claims checked, merged from the CLI/env and the file
//! (docs/security.md, "Clients: replay, presence churn, tokens").

use super::{invalid, ConfigError, Settings};

/// Limits against amplification by one client, and the JWT claims checked
/// (docs/security.md, "Clients: replay, presence churn, tokens").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientLimits {
    /// Required `iss`, if any.
    pub jwt_issuer: Option<String>,
    /// Required `aud`, if any.
    pub jwt_audience: Option<String>,
    /// Members listed in a presence reply (>= 1).
    pub presence_reply_max_members: usize,
    /// Join/leave subscribes per second per connection (>= 1).
    pub join_leave_rate: u32,
    /// Their burst (>= 1).
    pub join_leave_burst: u32,
    /// How long this node's join/leave events wait, so that a join and a
    /// leave of one connection cancel out (zero: sent at once).
    pub join_leave_coalesce: std::time::Duration,
    /// Bytes one replay may queue (1..=queue_bytes).
    pub replay_max_bytes: usize,
    /// Replay bytes per rate-limit token (>= 1).
    pub replay_token_bytes: usize,
    /// In-process history: max streams (>= 1).
    pub history_max_channels: usize,
    /// In-process history: max retained bytes (>= 65536).
    pub history_max_bytes: usize,
}

impl ClientLimits {
    pub(super) fn merge(
        s: &Settings,
        f: &Settings,
        queue_bytes: usize,
    ) -> Result<Self, ConfigError> {
        let nonempty = |a: &Option<String>, b: &Option<String>| {
            a.clone().or_else(|| b.clone()).filter(|v| !v.is_empty())
        };
        let jwt_issuer = nonempty(&s.jwt_issuer, &f.jwt_issuer);
        let jwt_audience = nonempty(&s.jwt_audience, &f.jwt_audience);
        let range = |v: Option<usize>, default: usize, min: usize, max: usize, setting| {
            let v = v.unwrap_or(default);
            if (min..=max).contains(&v) {
                Ok(v)
            } else {
                Err(invalid(setting, format!("must be between {min} and {max}")))
            }
        };
        let pick_usize = |a: Option<usize>, b: Option<usize>| a.or(b);
        let presence_reply_max_members = range(
            pick_usize(s.presence_reply_max_members, f.presence_reply_max_members),
            1000,
            1,
            1_000_000,
            "presence_reply_max_members",
        )?;
        let join_leave_rate = s.join_leave_rate.or(f.join_leave_rate).unwrap_or(1);
        let join_leave_burst = s.join_leave_burst.or(f.join_leave_burst).unwrap_or(128);
        if join_leave_rate == 0 || join_leave_burst == 0 {
            return Err(invalid(
                "join_leave_rate",
                "join_leave_rate and join_leave_burst must be greater than 0",
            ));
        }
        let coalesce_ms = s
            .join_leave_coalesce_ms
            .or(f.join_leave_coalesce_ms)
            .unwrap_or(100);
        if coalesce_ms > 10_000 {
            return Err(invalid(
                "join_leave_coalesce_ms",
                "must be at most 10000 (0 sends join/leave events at once)",
            ));
        }
        let join_leave_coalesce = std::time::Duration::from_millis(coalesce_ms);
        let replay_max_bytes = range(
            pick_usize(s.replay_max_bytes, f.replay_max_bytes),
            (512 * 1024).min(queue_bytes / 2),
            1,
            queue_bytes,
            "replay_max_bytes",
        )?;
        let replay_token_bytes = range(
            pick_usize(s.replay_token_bytes, f.replay_token_bytes),
            16 * 1024,
            1,
            usize::MAX,
            "replay_token_bytes",
        )?;
        let history_max_channels = range(
            pick_usize(s.history_max_channels, f.history_max_channels),
            100_000,
            1,
            100_000_000,
            "history_max_channels",
        )?;
        let history_max_bytes = range(
            pick_usize(s.history_max_bytes, f.history_max_bytes),
            256 << 20,
            64 << 10,
            usize::MAX,
            "history_max_bytes",
        )?;
        Ok(Self {
            jwt_issuer,
            jwt_audience,
            presence_reply_max_members,
            join_leave_rate,
            join_leave_burst,
            join_leave_coalesce,
            replay_max_bytes,
            replay_token_bytes,
            history_max_channels,
            history_max_bytes,
        })
    }
}
