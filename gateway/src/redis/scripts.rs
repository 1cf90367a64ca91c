//! The Lua scripts of the Redis backends (sources in `lua/`, documented in
//! docs/redis.md). Each runs atomically on the Redis server; `EVALSHA` is
//! tried first and the source is sent again after a Redis restart.
//!
//! Every script starts with a Redis 7 shebang (`#!lua`, with flags): a
//! script that may write is refused up front when Redis is over
//! `maxmemory` (without flags Redis checks memory only until the script's
//! first write); scripts that only delete carry `allow-oom`, the history
//! read `no-writes`. Redis older than 7.0 rejects the shebang, so the
//! cluster mode needs Redis 7.0 or later (docs/redis.md).

use ::redis::Script;

/// Every script, hashed once at start.
pub(crate) struct Scripts {
    /// Append to history + PUBLISH with the new offset.
    pub(crate) publish: Script,
    /// History position and entries in one snapshot.
    pub(crate) read: Script,
    /// Write one expiring-hash entry, pruning long-expired ones.
    pub(crate) put: Script,
    /// Unexpired values of an expiring hash (optionally pruning).
    pub(crate) live: Script,
    /// Drop a gone member from its user's set; says whether it was the last.
    pub(crate) member_gone: Script,
    /// Remove and return expired entries of an expiring hash.
    pub(crate) take_expired: Script,
    /// Registry entry + last-seen time of this node.
    pub(crate) heartbeat: Script,
    /// Claim the purge of a stale node (lease).
    pub(crate) claim_node: Script,
    /// Remove and return one scan step of a node's members of a channel.
    pub(crate) purge_members: Script,
    /// Drop a purged node from the registry (unless it came back).
    pub(crate) finish_purge: Script,
    /// Set or delete one node's subscriber count of a channel; reports
    /// occupied/vacated.
    pub(crate) occupancy: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            publish: Script::new(include_str!("lua/publish.lua")),
            read: Script::new(include_str!("lua/read.lua")),
            put: Script::new(include_str!("lua/put.lua")),
            member_gone: Script::new(include_str!("lua/member_gone.lua")),
            live: Script::new(include_str!("lua/live.lua")),
            take_expired: Script::new(include_str!("lua/take_expired.lua")),
            heartbeat: Script::new(include_str!("lua/heartbeat.lua")),
            claim_node: Script::new(include_str!("lua/claim_node.lua")),
            purge_members: Script::new(include_str!("lua/purge_members.lua")),
            finish_purge: Script::new(include_str!("lua/finish_purge.lua")),
            occupancy: Script::new(include_str!("lua/occupancy.lua")),
        }
    }
}
