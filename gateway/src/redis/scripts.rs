//! The Lua scripts of the Redis backends (sources in `lua/`, documented in
//! docs/redis.md). Each runs atomically on the Redis server; `EVALSHA` is
//! tried first and the source is sent again after a Redis restart.

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
    /// Remove and return expired entries of an expiring hash.
    pub(crate) take_expired: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            publish: Script::new(include_str!("lua/publish.lua")),
            read: Script::new(include_str!("lua/read.lua")),
            put: Script::new(include_str!("lua/put.lua")),
            live: Script::new(include_str!("lua/live.lua")),
            take_expired: Script::new(include_str!("lua/take_expired.lua")),
        }
    }
}
