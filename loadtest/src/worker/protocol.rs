//! What the parent and a worker say to each other: the [`WorkerSpec`]
//! written first, then [`Cmd`]s (parent -> worker) and [`Ev`]s (worker ->
//! parent) with the reports they carry.
//!
//! Invariants: one JSON object per line in each direction; the serde tags
//! (`kind`, `cmd`, `ev`) and field names are the wire format, and both ends
//! are the same binary, so they change together; every report is `Default`
//! so the parent can aggregate from zero.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::common::{Endpoints, HistPairs};

/// A channel group: client `i` subscribes to `<prefix><i % count>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Group {
    /// Channel name prefix, e.g. `fan:`.
    pub prefix: String,
    /// Number of channels in the group.
    pub count: u64,
}

/// What a worker's clients do once subscribed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Mode {
    /// Stay connected, answer pings (idle).
    Hold,
    /// Check sequenced publications on group 0's channels: `expected[c]`
    /// publications on channel index c, from `lanes` publishers per channel;
    /// publication j of a channel comes from lane `j % lanes` with sequence
    /// number `j / lanes + 1` (fanout).
    Seq {
        /// Publications per channel index.
        expected: Vec<u64>,
        /// Publishers (independent sequences) per channel.
        lanes: u64,
    },
    /// Report when every client has a broadcast (broadcast-rtt).
    Bcast,
    /// Hold, and on [`Cmd::Churn`] connect/subscribe/disconnect (churn).
    Churn(ChurnSpec),
}

/// Churn parameters for one worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChurnSpec {
    /// Connects per second for this worker; 0 = as fast as `concurrency`
    /// allows.
    pub rate: f64,
    /// How long to churn.
    pub duration_ms: u64,
    /// Churn cycles in flight at most.
    pub concurrency: usize,
    /// How long a churning connection stays after its subscribe replies.
    pub linger_ms: u64,
    /// Channels of the churning connections (index = cycle number).
    pub groups: Vec<Group>,
    /// Global index of this worker's first churn cycle (source addresses).
    pub first_index: u64,
}

/// Everything a worker needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// Worker number.
    pub id: usize,
    /// Gateways, addresses, auth.
    pub ep: Endpoints,
    /// First global client index of this worker.
    pub first: u64,
    /// Clients this worker may open at most.
    pub count: u64,
    /// Connects in flight at most.
    pub connect_concurrency: usize,
    /// Connects per second for this worker (0 = unpaced).
    pub connect_rate: f64,
    /// User id prefix.
    pub user_prefix: String,
    /// Channels of the held clients.
    pub groups: Vec<Group>,
    /// What the clients do.
    pub mode: Mode,
}

/// Parent -> worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Cmd {
    /// Open clients until `upto` have been attempted (capped at `count`).
    Connect {
        /// Total attempted after this command.
        upto: u64,
    },
    /// Publishing is over: wait until every subscriber has everything, or
    /// no delivery for `idle_ms`, or `max_ms` passed; then report.
    Finish {
        /// Give up after this long without a delivery.
        idle_ms: u64,
        /// Give up after this long in total.
        max_ms: u64,
        /// Publications the gateway refused (channel, lane, seq): not
        /// counted as lost when missing, counted when delivered anyway.
        #[serde(default)]
        refused: Vec<(u64, u64, u64)>,
    },
    /// Run the churn phase.
    Churn,
    /// Close every client cleanly, report, exit.
    Stop,
}

/// Result of a [`Cmd::Connect`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnectReport {
    /// Clients attempted so far.
    pub attempted: u64,
    /// Clients connected and subscribed so far.
    pub connected: u64,
    /// Clients that failed to connect or subscribe.
    pub failed: u64,
    /// Connected and not dropped since.
    pub live: u64,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// One failure message.
    pub sample_error: Option<String>,
    /// Wall clock of the first connect attempt (us).
    pub first_us: u64,
    /// Wall clock of the last completed setup (us).
    pub last_us: u64,
    /// Connect + upgrade + subscribe latency.
    pub setup: HistPairs,
}

/// Result of a [`Cmd::Finish`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SeqReport {
    /// Subscribers that were connected.
    pub subscribers: u64,
    /// Deliveries expected (sum over subscribers of their channel's count).
    pub expected: u64,
    /// Distinct publications received.
    pub distinct: u64,
    /// Frames received in total (distinct + duplicates + unexpected).
    pub deliveries: u64,
    /// Publications received more than once.
    pub duplicates: u64,
    /// Publications received after a later one of the same channel.
    pub out_of_order: u64,
    /// Publications with a sequence number beyond the expected count.
    pub unexpected: u64,
    /// Subscribers still missing something at the end.
    pub incomplete: u64,
    /// Deliveries of refused publications that never arrived (not loss).
    pub refused_missing: u64,
    /// Deliveries of refused publications that arrived anyway.
    pub refused_delivered: u64,
    /// Per gateway node: (expected, distinct, refused missing) deliveries.
    pub by_node: Vec<(u64, u64, u64)>,
    /// Clients that lost their connection.
    pub dropped: u64,
    /// How dropped clients ended (`close_4001`, `eof`, ...).
    pub closes: BTreeMap<String, u64>,
    /// Wall clock of the first delivery (us).
    pub first_us: u64,
    /// Wall clock of the last delivery (us).
    pub last_us: u64,
    /// Publish-to-receive latency.
    pub latency: HistPairs,
}

/// Result of a [`Cmd::Churn`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChurnReport {
    /// Cycles started.
    pub attempted: u64,
    /// Cycles that connected and got their subscribe replies.
    pub ok: u64,
    /// Cycles that failed.
    pub failed: u64,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// One failure message.
    pub sample_error: Option<String>,
    /// Wall clock at the start (us).
    pub start_us: u64,
    /// Wall clock when the last cycle ended (us).
    pub end_us: u64,
    /// Clean closes whose close handshake completed.
    pub clean: u64,
    /// Clean closes without the server's close reply in time.
    pub clean_unconfirmed: u64,
    /// Abrupt closes with a FIN (no close frame).
    pub fin: u64,
    /// Abrupt closes with a TCP reset.
    pub rst: u64,
    /// Connect + upgrade + subscribe latency of the cycles.
    pub setup: HistPairs,
    /// Held clients alive after the churn (the true connection count).
    pub live_holds: u64,
    /// Held clients that lost their connection.
    pub dropped: u64,
}

/// Result of a [`Cmd::Stop`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StopReport {
    /// Clients alive when the stop came.
    pub live: u64,
    /// Clients that had lost their connection before.
    pub dropped: u64,
    /// How they ended.
    pub closes: BTreeMap<String, u64>,
    /// Clean closes confirmed by the server.
    pub clean_closes: u64,
}

/// Worker -> parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Ev {
    /// Periodic connect progress.
    Progress {
        /// Connected so far.
        connected: u64,
        /// Failed so far.
        failed: u64,
    },
    /// A [`Cmd::Connect`] completed.
    Connected(ConnectReport),
    /// Every live client of this worker has broadcast `id`.
    Bcast {
        /// Broadcast id.
        id: u64,
        /// When the last client got it (us).
        last_us: u64,
        /// How many clients got it.
        receivers: u64,
    },
    /// A [`Cmd::Finish`] completed.
    Finished(SeqReport),
    /// A [`Cmd::Churn`] completed.
    Churned(ChurnReport),
    /// A [`Cmd::Stop`] completed; the worker exits.
    Stopped(StopReport),
    /// The worker failed.
    Fatal {
        /// What went wrong.
        error: String,
    },
    /// (parent side only) the worker's stdout ended.
    Exited,
}
