//! Who may come in: connection ids, the connection slots that bound the
//! node's connections (taken before the upgrade, given back after the close
//! handshake), the draining flag and readiness.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::Node;

impl Node {
    /// A new connection id: `<node>.<boot>.<seq>`.
    pub fn next_conn_id(&self) -> Arc<str> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        Arc::from(format!("{}.{}.{n}", self.config.node_id, self.boot))
    }

    /// A new Pusher socket id, `<boot>.<seq>` (digits only, as Pusher's
    /// server libraries require): random per process, then this node's
    /// connection counter.
    pub fn next_socket_id(&self) -> Arc<str> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        Arc::from(format!("{}.{n}", self.socket_boot))
    }

    /// Take a connection slot; false when the node is full.
    pub fn take_slot(&self) -> bool {
        let prev = self.slots.fetch_add(1, Ordering::AcqRel);
        if prev >= self.config.max_connections {
            self.slots.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Connection slots in use: connections from before the upgrade until
    /// their close handshake has finished.
    pub fn open_slots(&self) -> usize {
        self.slots.load(Ordering::Acquire)
    }

    /// Give a slot back.
    pub fn release_slot(&self) {
        self.slots.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Start draining: readiness fails, new upgrades are refused.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Ready to take traffic: not draining and the backplane is healthy.
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.backplane.is_healthy()
    }
}
