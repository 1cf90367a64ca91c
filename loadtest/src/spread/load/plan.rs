//! What every client of a `shard-spread` phase shares: the [`Plan`] (the
//! endpoints, the channels, the payload) with its connect, and the byte
//! scanners both the subscribers and the publishers read frames with.

use std::time::Duration;

use anyhow::{anyhow, Result};

use crate::common::Endpoints;
use crate::wire::{Target, Ws};

/// Bound on a subscriber's connect + welcome + every subscribe reply.
pub(super) const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// What every client of a phase shares.
pub(in crate::spread) struct Plan {
    pub(in crate::spread) ep: Endpoints,
    /// Channel prefix (`spread:`); channel `i` is `<prefix><i>`.
    pub(in crate::spread) prefix: String,
    pub(in crate::spread) channels: u64,
    pub(in crate::spread) payload: usize,
}

impl Plan {
    pub(super) fn channel(&self, i: u64) -> String {
        format!("{}{i}", self.prefix)
    }

    /// Connects client `idx` (node `idx % nodes`) as `user`; reads the
    /// welcome.
    pub(super) async fn connect(&self, idx: u64, node: usize, user: &str) -> Result<Ws> {
        let nodes = self.ep.nodes()?;
        let node = &nodes[node % nodes.len()];
        let (path, bearer) = self.ep.auth(node, user)?;
        let target = Target {
            addr: node.addr,
            host: &node.host,
            path: &path,
            src: self.ep.src(idx),
            bearer: bearer.as_deref(),
            read_buf: 64 * 1024,
        };
        Ws::connect(&target, SETUP_TIMEOUT)
            .await
            .map_err(|e| anyhow!("{user}: {e}"))
    }
}

pub(super) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

pub(super) fn parse_u64(b: &[u8]) -> Option<u64> {
    let end = b
        .iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(b.len());
    if end == 0 || end > 19 {
        return None;
    }
    Some(
        b[..end]
            .iter()
            .fold(0u64, |v, &c| v * 10 + u64::from(c - b'0')),
    )
}
