//! The hub's maps: a key -> value map split over [`SHARDS`] mutexes, so
//! the connections of one shard never contend with another's.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use parking_lot::Mutex;

/// Shards of each hub map (also the node pinger's slots).
pub const SHARDS: usize = 32;

/// One map in [`SHARDS`] locked parts, by the key's hash.
pub(super) struct Sharded<V> {
    pub(super) shards: Vec<Mutex<HashMap<Arc<str>, V>>>,
    hasher: RandomState,
}

impl<V> Sharded<V> {
    pub(super) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }
    /// The part holding `key`.
    pub(super) fn shard(&self, key: &str) -> &Mutex<HashMap<Arc<str>, V>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }
}
