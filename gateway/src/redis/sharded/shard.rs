//! One shard connection: the pub/sub and probe connections to one primary,
//! the names routed to it and its probe's state.

use std::collections::HashMap;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use tokio::time::Instant;

use super::ops::{probe_op, Op};

/// One connection to one primary.
pub(super) struct ShardConn {
    pub(super) id: u64,
    pub(super) addr: (String, u16),
    pub(super) label: String,
    /// Set once connected.
    pub(super) conn: Option<MultiplexedConnection>,
    pub(super) probe_conn: Option<MultiplexedConnection>,
    pub(super) probe_channel: String,
    pub(super) probe_subscribed: bool,
    pub(super) probe_seq: u64,
    pub(super) probe_sent: Option<Instant>,
    pub(super) healthy: bool,
    /// Names routed here (sent or waiting for the connection), by the op
    /// of their SUBSCRIBE.
    pub(super) names: HashMap<String, u64>,
    /// SUNSUBSCRIBEs sent whose push has not come back yet.
    pub(super) unsub_expected: HashMap<String, u32>,
    /// Failed and waiting for its backoff (no connection).
    pub(super) failed: bool,
}

impl ShardConn {
    /// Connection `id` to `addr`, connecting (no connection yet), probing
    /// on `probe_channel` once connected.
    pub(super) fn connecting(
        id: u64,
        addr: (String, u16),
        label: String,
        probe_channel: String,
    ) -> ShardConn {
        ShardConn {
            id,
            addr,
            label,
            conn: None,
            probe_conn: None,
            probe_channel,
            probe_subscribed: false,
            probe_seq: 0,
            probe_sent: None,
            healthy: false,
            names: HashMap::new(),
            unsub_expected: HashMap::new(),
            failed: false,
        }
    }

    /// A failed shard's stand-in while it backs off: names routed to it
    /// wait there (parked) until the retry.
    pub(super) fn placeholder(addr: (String, u16), label: String) -> ShardConn {
        ShardConn {
            id: 0,
            addr,
            label,
            conn: None,
            probe_conn: None,
            probe_channel: String::new(),
            probe_subscribed: false,
            probe_seq: 0,
            probe_sent: None,
            healthy: false,
            names: HashMap::new(),
            unsub_expected: HashMap::new(),
            failed: true,
        }
    }

    /// The next liveness probe of this connection, marked sent now.
    pub(super) fn next_probe(&mut self, timeout: Duration) -> Op {
        self.probe_seq += 1;
        self.probe_sent = Some(Instant::now());
        probe_op(
            self.probe_conn.clone(),
            self.probe_channel.clone(),
            self.probe_seq,
            self.id,
            timeout,
        )
    }
}
