//! Client worker processes and the parent's handle on them.
//!
//! One process may hold about 20,000 open files here, so the parent
//! re-executes its own binary as `loadtest __worker`, each worker holding
//! fewer than 15,000 sockets. The parent writes a [`WorkerSpec`] and then
//! [`Cmd`]s to the worker's stdin, one JSON object per line; the worker
//! answers with [`Ev`]s on stdout, one JSON object per line, and the parent
//! aggregates them. Worker diagnostics go to stderr (inherited).
//!
//! Client `i` (a global index across all workers) connects to
//! `urls[i % urls]` from `src_ips[i % src_ips]` as user `<prefix><i>`, and
//! subscribes to `<group.prefix><i % group.count>` for every group.
//!
//! Invariants: every wait is bounded; a worker whose stdin closes (the
//! parent died) stops its clients and exits; the parent kills workers that
//! outlive their handle.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

use crate::common::{hist_pairs, new_hist, now_us, Endpoints, HistPairs, Node};
use crate::wire::{op, ConnectError, Target, Ws};

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

const HIST_SHARDS: usize = 8;

/// Refused publications: (channel, lane, seq).
type Refused = Vec<(u64, u64, u64)>;

struct Ctx {
    spec: WorkerSpec,
    nodes: Vec<Node>,
    ev: mpsc::UnboundedSender<Ev>,
    stop: watch::Receiver<bool>,
    refused: watch::Receiver<Option<Arc<Refused>>>,
    expected: Vec<u64>,
    attempted: AtomicU64,
    connected: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    clean_closes: AtomicU64,
    live_tasks: AtomicU64,
    first_attempt_us: AtomicU64,
    last_setup_us: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    sample_error: Mutex<Option<String>>,
    closes: Mutex<BTreeMap<String, u64>>,
    setup: Mutex<Histogram<u64>>,
    // Seq mode.
    expected_total: AtomicU64,
    remaining: AtomicU64,
    distinct: AtomicU64,
    deliveries: AtomicU64,
    duplicates: AtomicU64,
    out_of_order: AtomicU64,
    unexpected: AtomicU64,
    refused_missing: AtomicU64,
    refused_delivered: AtomicU64,
    /// Per gateway node: expected, distinct, refused-missing deliveries.
    by_node: Vec<[AtomicU64; 3]>,
    first_delivery_us: AtomicU64,
    last_delivery_us: AtomicU64,
    latency: Vec<Mutex<Histogram<u64>>>,
    // Bcast mode.
    bcast: Mutex<HashMap<u64, (u64, u64)>>,
    bcast_done: Mutex<HashSet<u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ctx {
    fn fail(&self, e: &ConnectError) {
        *lock(&self.errors).entry(e.kind.clone()).or_default() += 1;
        let mut s = lock(&self.sample_error);
        if s.is_none() {
            *s = Some(e.to_string());
        }
    }

    fn ended(&self, how: &str) {
        self.dropped.fetch_add(1, Relaxed);
        *lock(&self.closes).entry(how.to_owned()).or_default() += 1;
    }

    /// Per-node tallies of client `idx`.
    fn node(&self, idx: u64) -> &[AtomicU64; 3] {
        &self.by_node[(idx % self.by_node.len() as u64) as usize]
    }

    fn live(&self) -> u64 {
        self.connected
            .load(Relaxed)
            .saturating_sub(self.dropped.load(Relaxed))
    }

    fn connect_report(&self) -> ConnectReport {
        ConnectReport {
            attempted: self.attempted.load(Relaxed),
            connected: self.connected.load(Relaxed),
            failed: self.failed.load(Relaxed),
            live: self.live(),
            errors: lock(&self.errors).clone(),
            sample_error: lock(&self.sample_error).clone(),
            first_us: self.first_attempt_us.load(Relaxed),
            last_us: self.last_setup_us.load(Relaxed),
            setup: hist_pairs(&lock(&self.setup)),
        }
    }
}

/// Counts a live client task; decrements on drop.
struct TaskGuard(Arc<Ctx>);
impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.live_tasks.fetch_sub(1, Relaxed);
    }
}

/// A subscriber's sequence state (Seq mode): one per publisher lane.
struct SubSeq {
    channel: usize,
    lanes: Vec<SeqState>,
    complete: bool,
}

impl SubSeq {
    fn new(channel: usize, total: u64, lanes: u64) -> SubSeq {
        let lanes = lanes.max(1);
        SubSeq {
            channel,
            lanes: (0..lanes)
                .map(|l| SeqState {
                    expected: total / lanes + u64::from(l < total % lanes),
                    next: 1,
                    ..SeqState::default()
                })
                .collect(),
            complete: false,
        }
    }

    fn expected(&self) -> u64 {
        self.lanes.iter().map(|l| l.expected).sum()
    }

    fn done(&self) -> bool {
        self.lanes.iter().all(|l| l.next > l.expected)
    }
}

/// Sequence state of one (channel, publisher lane).
#[derive(Default)]
struct SeqState {
    expected: u64,
    /// Every seq below this was seen.
    next: u64,
    /// Seen seqs above `next`, sorted.
    above: Vec<u64>,
    max_seen: u64,
    /// Refused publications not (yet) received, sorted; already accounted
    /// in `next`/`above` so the subscriber can complete without them.
    refused: Vec<u64>,
}

/// Per-read-batch tallies, applied to the shared counters once per read.
#[derive(Default)]
struct Batch {
    deliveries: u64,
    distinct: u64,
    duplicates: u64,
    out_of_order: u64,
    unexpected: u64,
    refused_late: u64,
    latencies: Vec<u64>,
}

fn parse_u64(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 {
        return None;
    }
    let mut v = 0u64;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u64::from(c - b'0');
    }
    Some(v)
}

/// The `data` string of a message/broadcast frame, when it is one of ours
/// (`f:...` or `b:...`).
fn data_str(p: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = b"\"data\":\"";
    let at = p.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let rest = &p[at..];
    let end = rest.iter().position(|&c| c == b'"')?;
    let d = &rest[..end];
    if d.len() >= 2 && (d[0] == b'f' || d[0] == b'b') && d[1] == b':' {
        Some(d)
    } else {
        None
    }
}

/// Fields of `x:a:b:c:...` after the tag.
fn fields(d: &[u8]) -> impl Iterator<Item = &[u8]> {
    d.split(|&c| c == b':').skip(1)
}

impl SeqState {
    fn on(&mut self, seq: u64, b: &mut Batch) {
        b.deliveries += 1;
        if seq == 0 || seq > self.expected {
            b.unexpected += 1;
            return;
        }
        if let Ok(i) = self.refused.binary_search(&seq) {
            // Refused by the gateway, delivered after all: a distinct
            // delivery, no longer missing.
            self.refused.remove(i);
            b.distinct += 1;
            b.refused_late += 1;
            return;
        }
        if seq < self.next || self.above.binary_search(&seq).is_ok() {
            b.duplicates += 1;
            return;
        }
        b.distinct += 1;
        if seq < self.max_seen {
            b.out_of_order += 1;
        }
        self.max_seen = self.max_seen.max(seq);
        self.mark(seq);
    }

    fn received(&self, seq: u64) -> bool {
        seq < self.next || self.above.binary_search(&seq).is_ok()
    }

    fn mark(&mut self, seq: u64) {
        if seq == self.next {
            self.next += 1;
            while self.above.first() == Some(&self.next) {
                self.above.remove(0);
                self.next += 1;
            }
        } else if let Err(pos) = self.above.binary_search(&seq) {
            self.above.insert(pos, seq);
        }
    }

    /// Accounts a refused publication: returns true when it was received.
    fn refuse(&mut self, seq: u64) -> bool {
        if seq == 0 || seq > self.expected {
            return false;
        }
        if self.received(seq) {
            return true;
        }
        if let Err(pos) = self.refused.binary_search(&seq) {
            self.refused.insert(pos, seq);
            self.mark(seq);
        }
        false
    }
}

/// Handles one of our data frames (already known to be a text frame).
fn on_data(ctx: &Ctx, seq: &mut Option<SubSeq>, d: &[u8], recv_us: u64, b: &mut Batch) {
    match d[0] {
        b'f' => {
            let mut f = fields(d);
            let ch = f.next().and_then(parse_u64);
            let lane = f.next().and_then(parse_u64);
            let s = f.next().and_then(parse_u64);
            let ts = f.next().and_then(parse_u64);
            let (Some(ch), Some(lane), Some(s), Some(ts), Some(sub)) =
                (ch, lane, s, ts, seq.as_mut())
            else {
                b.deliveries += 1;
                b.unexpected += 1;
                return;
            };
            let Some(state) = sub.lanes.get_mut(lane as usize) else {
                b.deliveries += 1;
                b.unexpected += 1;
                return;
            };
            if ch as usize != sub.channel {
                b.deliveries += 1;
                b.unexpected += 1;
                return;
            }
            let before = b.distinct;
            state.on(s, b);
            if b.distinct > before {
                b.latencies.push(recv_us.saturating_sub(ts));
            }
        }
        b'b' => {
            let mut f = fields(d);
            let Some(id) = f.next().and_then(parse_u64) else {
                return;
            };
            let mut done = lock(&ctx.bcast_done);
            if done.contains(&id) {
                return;
            }
            let mut map = lock(&ctx.bcast);
            let e = map.entry(id).or_insert((0, 0));
            e.0 += 1;
            e.1 = e.1.max(recv_us);
            if e.0 >= ctx.live() {
                let (receivers, last_us) = *e;
                map.remove(&id);
                done.insert(id);
                let _ = ctx.ev.send(Ev::Bcast {
                    id,
                    last_us,
                    receivers,
                });
            }
        }
        _ => {}
    }
}

/// Applies the refused list to a subscriber (once, when it arrives).
fn apply_refused(ctx: &Ctx, idx: u64, seq: &mut Option<SubSeq>, list: &[(u64, u64, u64)]) {
    let Some(sub) = seq.as_mut() else { return };
    let (mut missing, mut delivered) = (0, 0);
    for &(c, l, s) in list {
        if c as usize != sub.channel {
            continue;
        }
        if let Some(lane) = sub.lanes.get_mut(l as usize) {
            if lane.refuse(s) {
                delivered += 1;
            } else if lane.refused.binary_search(&s).is_ok() {
                missing += 1;
            }
        }
    }
    ctx.refused_missing.fetch_add(missing, Relaxed);
    ctx.refused_delivered.fetch_add(delivered, Relaxed);
    ctx.node(idx)[2].fetch_add(missing, Relaxed);
    if !sub.complete && sub.done() {
        sub.complete = true;
        ctx.remaining.fetch_sub(1, Relaxed);
    }
}

fn flush_batch(ctx: &Ctx, slot: usize, seq: &mut Option<SubSeq>, b: &mut Batch, recv_us: u64) {
    if b.deliveries == 0 {
        return;
    }
    ctx.deliveries.fetch_add(b.deliveries, Relaxed);
    ctx.distinct.fetch_add(b.distinct, Relaxed);
    ctx.node(slot as u64)[1].fetch_add(b.distinct, Relaxed);
    if b.duplicates > 0 {
        ctx.duplicates.fetch_add(b.duplicates, Relaxed);
    }
    if b.out_of_order > 0 {
        ctx.out_of_order.fetch_add(b.out_of_order, Relaxed);
    }
    if b.unexpected > 0 {
        ctx.unexpected.fetch_add(b.unexpected, Relaxed);
    }
    if b.refused_late > 0 {
        ctx.refused_delivered.fetch_add(b.refused_late, Relaxed);
        ctx.refused_missing.fetch_sub(b.refused_late, Relaxed);
        ctx.node(slot as u64)[2].fetch_sub(b.refused_late, Relaxed);
    }
    ctx.first_delivery_us.fetch_min(recv_us, Relaxed);
    ctx.last_delivery_us.fetch_max(recv_us, Relaxed);
    if !b.latencies.is_empty() {
        let mut h = lock(&ctx.latency[slot % HIST_SHARDS]);
        for &v in &b.latencies {
            let _ = h.record(v.clamp(1, 600_000_000));
        }
        b.latencies.clear();
    }
    if let Some(s) = seq.as_mut() {
        if !s.complete && s.done() {
            s.complete = true;
            ctx.remaining.fetch_sub(1, Relaxed);
        }
    }
    *b = Batch {
        latencies: std::mem::take(&mut b.latencies),
        ..Batch::default()
    };
}

/// The channel of client (or churn cycle) `i` in every group.
pub fn channels_for(groups: &[Group], i: u64) -> Vec<String> {
    groups
        .iter()
        .map(|g| format!("{}{}", g.prefix, i % g.count.max(1)))
        .collect()
}

/// Connects client `idx` as `user`, reads the welcome and subscribes to
/// every group's channel; returns the socket (data frames that arrived in
/// between are handled).
async fn setup(
    ctx: &Ctx,
    idx: u64,
    user: &str,
    channels: &[String],
    seq: &mut Option<SubSeq>,
) -> Result<Ws, ConnectError> {
    let timeout = Duration::from_millis(ctx.spec.ep.connect_timeout_ms);
    let node = &ctx.nodes[(idx % ctx.nodes.len() as u64) as usize];
    let (path, bearer) = ctx.spec.ep.auth(node, user).map_err(|e| ConnectError {
        kind: "token".into(),
        error: e,
    })?;
    let target = Target {
        addr: node.addr,
        host: &node.host,
        path: &path,
        src: ctx.spec.ep.src(idx),
        bearer: bearer.as_deref(),
        read_buf: ctx.spec.ep.read_buf,
    };
    let deadline = Instant::now() + timeout;
    let mut ws = Ws::connect(&target, timeout).await?;
    let rest = tokio::time::timeout_at(deadline, subscribe_all(ctx, &mut ws, idx, channels, seq));
    match rest.await {
        Ok(r) => r.map(|()| ws),
        Err(_) => Err(ConnectError {
            kind: "timeout".into(),
            error: anyhow!("welcome + subscribe took longer than {timeout:?}"),
        }),
    }
}

async fn subscribe_all(
    ctx: &Ctx,
    ws: &mut Ws,
    idx: u64,
    channels: &[String],
    seq: &mut Option<SubSeq>,
) -> Result<(), ConnectError> {
    let perr = |kind: &str, e: anyhow::Error| ConnectError {
        kind: kind.into(),
        error: e,
    };
    let mut welcomed = false;
    let mut pending = channels.len();
    for (k, channel) in channels.iter().enumerate() {
        let req = format!(r#"{{"op":"subscribe","id":{k},"channel":"{channel}"}}"#);
        ws.send_text(&req)
            .await
            .map_err(|e| perr("tcp", anyhow!("sending subscribe: {e}")))?;
    }
    let mut b = Batch::default();
    let mut recv_us = now_us();
    let mut first = true;
    while !welcomed || pending > 0 {
        // Frames may already be buffered (the welcome often comes with the
        // upgrade response): parse before reading.
        if !first {
            let n = ws
                .fill()
                .await
                .map_err(|e| perr("tcp", anyhow!("reading replies: {e}")))?;
            if n == 0 {
                return Err(perr(
                    "eof",
                    anyhow!("closed before the subscribe replies ({pending} missing)"),
                ));
            }
            recv_us = now_us();
        }
        first = false;
        while let Some(f) = ws.next_frame().map_err(|e| perr("protocol", e))? {
            match f.opcode {
                op::TEXT => {
                    let p = ws.payload(&f);
                    if let Some(d) = data_str(p) {
                        on_data(ctx, seq, d, recv_us, &mut b);
                        continue;
                    }
                    let v: serde_json::Value = serde_json::from_slice(p)
                        .map_err(|e| perr("protocol", anyhow!("bad JSON frame: {e}")))?;
                    match v.get("type").and_then(|t| t.as_str()) {
                        Some("welcome") => welcomed = true,
                        Some("subscribed") => pending = pending.saturating_sub(1),
                        Some("error") => {
                            let code = v.get("code").and_then(|c| c.as_str()).unwrap_or("?");
                            return Err(perr(
                                &format!("subscribe_{code}"),
                                anyhow!("subscribe refused: {v}"),
                            ));
                        }
                        _ => {}
                    }
                }
                op::PING => ws
                    .pong(&f)
                    .await
                    .map_err(|e| perr("tcp", anyhow!("pong: {e}")))?,
                op::CLOSE => {
                    let p = ws.payload(&f);
                    let code = if p.len() >= 2 {
                        u16::from_be_bytes([p[0], p[1]])
                    } else {
                        1005
                    };
                    return Err(perr(
                        &format!("close_{code}"),
                        anyhow!(
                            "closed during setup: {code} {}",
                            String::from_utf8_lossy(&p[p.len().min(2)..])
                        ),
                    ));
                }
                _ => {}
            }
        }
        flush_batch(ctx, idx as usize, seq, &mut b, recv_us);
    }
    Ok(())
}

/// A held client: set up, then receive until stopped or dropped.
async fn client(ctx: Arc<Ctx>, idx: u64, permit: tokio::sync::OwnedSemaphorePermit) {
    let _guard = TaskGuard(ctx.clone());
    let start = Instant::now();
    let user = format!("{}{idx}", ctx.spec.user_prefix);
    let mut seq = match &ctx.spec.mode {
        Mode::Seq { lanes, .. } => {
            let count = ctx.spec.groups.first().map_or(1, |g| g.count.max(1));
            let channel = (idx % count) as usize;
            let total = ctx.expected.get(channel).copied().unwrap_or(0);
            Some(SubSeq::new(channel, total, *lanes))
        }
        _ => None,
    };
    let channels = channels_for(&ctx.spec.groups, idx);
    let ws = setup(&ctx, idx, &user, &channels, &mut seq).await;
    drop(permit);
    let mut ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            ctx.fail(&e);
            ctx.failed.fetch_add(1, Relaxed);
            return;
        }
    };
    let took = start.elapsed().as_micros() as u64;
    let _ = lock(&ctx.setup).record(took.clamp(1, 600_000_000));
    if let Some(s) = &mut seq {
        ctx.expected_total.fetch_add(s.expected(), Relaxed);
        ctx.node(idx)[0].fetch_add(s.expected(), Relaxed);
        if s.done() {
            s.complete = true;
        } else {
            ctx.remaining.fetch_add(1, Relaxed);
        }
    }
    ctx.last_setup_us.fetch_max(now_us(), Relaxed);
    ctx.connected.fetch_add(1, Relaxed);
    receive(&ctx, idx, &mut ws, &mut seq).await;
}

async fn receive(ctx: &Ctx, idx: u64, ws: &mut Ws, seq: &mut Option<SubSeq>) {
    let mut stop = ctx.stop.clone();
    let mut refused = ctx.refused.clone();
    if let Some(list) = refused.borrow_and_update().clone() {
        apply_refused(ctx, idx, seq, &list);
    }
    let mut b = Batch::default();
    let mut recv_us = now_us();
    loop {
        loop {
            let f = match ws.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => {
                    flush_batch(ctx, idx as usize, seq, &mut b, recv_us);
                    ctx.ended("protocol_error");
                    return;
                }
            };
            match f.opcode {
                op::TEXT => {
                    if let Some(d) = data_str(ws.payload(&f)) {
                        on_data(ctx, seq, d, recv_us, &mut b);
                    }
                }
                op::PING if ws.pong(&f).await.is_err() => {
                    flush_batch(ctx, idx as usize, seq, &mut b, recv_us);
                    ctx.ended("write_error");
                    return;
                }
                op::CLOSE => {
                    let p = ws.payload(&f);
                    let code = if p.len() >= 2 {
                        u16::from_be_bytes([p[0], p[1]])
                    } else {
                        1005
                    };
                    flush_batch(ctx, idx as usize, seq, &mut b, recv_us);
                    ctx.ended(&format!("close_{code}"));
                    let _ = ws.close(1000, Duration::from_secs(2)).await;
                    return;
                }
                _ => {}
            }
        }
        flush_batch(ctx, idx as usize, seq, &mut b, recv_us);
        if *stop.borrow() {
            if ws.close(1000, Duration::from_secs(5)).await {
                ctx.clean_closes.fetch_add(1, Relaxed);
            }
            return;
        }
        tokio::select! {
            biased;
            _ = stop.changed() => {}
            Ok(()) = refused.changed(), if seq.is_some() => {
                if let Some(list) = refused.borrow_and_update().clone() {
                    apply_refused(ctx, idx, seq, &list);
                }
            }
            r = ws.fill() => match r {
                Ok(0) => { ctx.ended("eof"); return; }
                Ok(_) => recv_us = now_us(),
                Err(_) => { ctx.ended("read_error"); return; }
            }
        }
    }
}

/// Entry point of `loadtest __worker`: reads the spec and commands from
/// stdin, writes events to stdout.
pub async fn worker_main() -> Result<()> {
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<Ev>();
    let writer = tokio::spawn(async move {
        let mut out = tokio::io::stdout();
        while let Some(ev) = ev_rx.recv().await {
            let Ok(mut line) = serde_json::to_string(&ev) else {
                continue;
            };
            line.push('\n');
            if out.write_all(line.as_bytes()).await.is_err() || out.flush().await.is_err() {
                break;
            }
        }
    });
    let result = run_worker(ev_tx.clone()).await;
    if let Err(e) = &result {
        let _ = ev_tx.send(Ev::Fatal {
            error: format!("{e:#}"),
        });
    }
    drop(ev_tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    result
}

async fn run_worker(ev: mpsc::UnboundedSender<Ev>) -> Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let first = lines
        .next_line()
        .await?
        .context("no worker spec on stdin")?;
    let spec: WorkerSpec = serde_json::from_str(&first).context("parsing the worker spec")?;
    let nodes = spec.ep.nodes()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (refused_tx, refused_rx) = watch::channel(None);
    let expected = match &spec.mode {
        Mode::Seq { expected, .. } => expected.clone(),
        _ => Vec::new(),
    };
    let ctx = Arc::new(Ctx {
        nodes,
        ev: ev.clone(),
        stop: stop_rx,
        refused: refused_rx,
        expected,
        attempted: AtomicU64::new(0),
        connected: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        clean_closes: AtomicU64::new(0),
        live_tasks: AtomicU64::new(0),
        first_attempt_us: AtomicU64::new(0),
        last_setup_us: AtomicU64::new(0),
        errors: Mutex::new(BTreeMap::new()),
        sample_error: Mutex::new(None),
        closes: Mutex::new(BTreeMap::new()),
        setup: Mutex::new(new_hist()),
        expected_total: AtomicU64::new(0),
        remaining: AtomicU64::new(0),
        distinct: AtomicU64::new(0),
        deliveries: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        out_of_order: AtomicU64::new(0),
        unexpected: AtomicU64::new(0),
        refused_missing: AtomicU64::new(0),
        refused_delivered: AtomicU64::new(0),
        by_node: (0..spec.ep.urls.len().max(1))
            .map(|_| [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)])
            .collect(),
        first_delivery_us: AtomicU64::new(u64::MAX),
        last_delivery_us: AtomicU64::new(0),
        latency: (0..HIST_SHARDS).map(|_| Mutex::new(new_hist())).collect(),
        bcast: Mutex::new(HashMap::new()),
        bcast_done: Mutex::new(HashSet::new()),
        spec,
    });
    let sem = Arc::new(Semaphore::new(ctx.spec.connect_concurrency.max(1)));
    loop {
        let Some(line) = lines.next_line().await? else {
            // The parent went away: stop.
            let _ = stop_tx.send(true);
            wait_tasks(&ctx, Duration::from_secs(10)).await;
            return Ok(());
        };
        let cmd: Cmd =
            serde_json::from_str(&line).with_context(|| format!("bad command {line:?}"))?;
        match cmd {
            Cmd::Connect { upto } => {
                connect_upto(&ctx, &sem, upto).await;
                let _ = ev.send(Ev::Connected(ctx.connect_report()));
            }
            Cmd::Finish {
                idle_ms,
                max_ms,
                refused,
            } => {
                if !refused.is_empty() {
                    let _ = refused_tx.send(Some(Arc::new(refused)));
                }
                let report = finish(&ctx, idle_ms, max_ms).await;
                let _ = ev.send(Ev::Finished(report));
            }
            Cmd::Churn => {
                let Mode::Churn(spec) = ctx.spec.mode.clone() else {
                    bail!("churn command for a worker not in churn mode");
                };
                let report = churn(&ctx, &spec).await;
                let _ = ev.send(Ev::Churned(report));
            }
            Cmd::Stop => {
                let live = ctx.live();
                let _ = stop_tx.send(true);
                wait_tasks(&ctx, Duration::from_secs(15)).await;
                let _ = ev.send(Ev::Stopped(StopReport {
                    live,
                    dropped: ctx.dropped.load(Relaxed),
                    closes: lock(&ctx.closes).clone(),
                    clean_closes: ctx.clean_closes.load(Relaxed),
                }));
                return Ok(());
            }
        }
    }
}

async fn wait_tasks(ctx: &Ctx, bound: Duration) {
    let deadline = Instant::now() + bound;
    while ctx.live_tasks.load(Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens clients until `upto` were attempted; waits (bounded) until each
/// attempt has connected or failed, reporting progress.
async fn connect_upto(ctx: &Arc<Ctx>, sem: &Arc<Semaphore>, upto: u64) {
    let upto = upto.min(ctx.spec.count);
    let base = ctx.attempted.load(Relaxed);
    if ctx.first_attempt_us.load(Relaxed) == 0 {
        ctx.first_attempt_us.store(now_us(), Relaxed);
    }
    let start = Instant::now();
    let mut last_progress = Instant::now();
    let progress = |ctx: &Ctx| {
        let _ = ctx.ev.send(Ev::Progress {
            connected: ctx.connected.load(Relaxed),
            failed: ctx.failed.load(Relaxed),
        });
    };
    for n in base..upto {
        if ctx.spec.connect_rate > 0.0 {
            let due = start + Duration::from_secs_f64((n - base) as f64 / ctx.spec.connect_rate);
            tokio::time::sleep_until(due).await;
        }
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        ctx.attempted.fetch_add(1, Relaxed);
        ctx.live_tasks.fetch_add(1, Relaxed);
        tokio::spawn(client(ctx.clone(), ctx.spec.first + n, permit));
        if last_progress.elapsed() > Duration::from_millis(250) {
            progress(ctx);
            last_progress = Instant::now();
        }
    }
    // Every attempt ends within the connect timeout.
    let deadline = Instant::now()
        + Duration::from_millis(ctx.spec.ep.connect_timeout_ms)
        + Duration::from_secs(5);
    while ctx.connected.load(Relaxed) + ctx.failed.load(Relaxed) < ctx.attempted.load(Relaxed)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if last_progress.elapsed() > Duration::from_millis(250) {
            progress(ctx);
            last_progress = Instant::now();
        }
    }
    progress(ctx);
}

async fn finish(ctx: &Ctx, idle_ms: u64, max_ms: u64) -> SeqReport {
    let start = Instant::now();
    let mut last_count = ctx.deliveries.load(Relaxed);
    let mut last_change = Instant::now();
    while ctx.remaining.load(Relaxed) > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let count = ctx.deliveries.load(Relaxed);
        if count != last_count {
            last_count = count;
            last_change = Instant::now();
        }
        if last_change.elapsed() > Duration::from_millis(idle_ms)
            || start.elapsed() > Duration::from_millis(max_ms)
        {
            break;
        }
    }
    // Let deliveries in flight land (refused publications may still arrive
    // after every subscriber has what was acknowledged): the counters are
    // read one by one below, so they must be still.
    let settle = Instant::now() + Duration::from_secs(3);
    let mut last_count = ctx.deliveries.load(Relaxed);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let count = ctx.deliveries.load(Relaxed);
        if count == last_count || Instant::now() > settle {
            break;
        }
        last_count = count;
    }
    let mut h = new_hist();
    for shard in &ctx.latency {
        let _ = h.add(&*lock(shard));
    }
    let first = ctx.first_delivery_us.load(Relaxed);
    SeqReport {
        subscribers: ctx.connected.load(Relaxed),
        expected: ctx.expected_total.load(Relaxed),
        distinct: ctx.distinct.load(Relaxed),
        deliveries: ctx.deliveries.load(Relaxed),
        duplicates: ctx.duplicates.load(Relaxed),
        out_of_order: ctx.out_of_order.load(Relaxed),
        unexpected: ctx.unexpected.load(Relaxed),
        incomplete: ctx.remaining.load(Relaxed),
        refused_missing: ctx.refused_missing.load(Relaxed),
        refused_delivered: ctx.refused_delivered.load(Relaxed),
        by_node: ctx
            .by_node
            .iter()
            .map(|n| (n[0].load(Relaxed), n[1].load(Relaxed), n[2].load(Relaxed)))
            .collect(),
        dropped: ctx.dropped.load(Relaxed),
        closes: lock(&ctx.closes).clone(),
        first_us: if first == u64::MAX { 0 } else { first },
        last_us: ctx.last_delivery_us.load(Relaxed),
        latency: hist_pairs(&h),
    }
}

/// How a churn cycle ended.
enum CycleEnd {
    Clean(bool),
    Fin,
    Rst,
}

async fn churn(ctx: &Arc<Ctx>, spec: &ChurnSpec) -> ChurnReport {
    let sem = Arc::new(Semaphore::new(spec.concurrency.max(1)));
    let (done_tx, mut done_rx) =
        mpsc::unbounded_channel::<(u64, Result<(u64, CycleEnd), ConnectError>)>();
    let start = Instant::now();
    let start_us = now_us();
    let duration = Duration::from_millis(spec.duration_ms);
    let mut k = 0u64;
    let mut report = ChurnReport {
        start_us,
        ..ChurnReport::default()
    };
    let mut setup = new_hist();
    let mut tally = |report: &mut ChurnReport, r: Result<(u64, CycleEnd), ConnectError>| match r {
        Ok((us, end)) => {
            report.ok += 1;
            let _ = setup.record(us.clamp(1, 600_000_000));
            match end {
                CycleEnd::Clean(true) => report.clean += 1,
                CycleEnd::Clean(false) => report.clean_unconfirmed += 1,
                CycleEnd::Fin => report.fin += 1,
                CycleEnd::Rst => report.rst += 1,
            }
        }
        Err(e) => {
            report.failed += 1;
            *report.errors.entry(e.kind.clone()).or_default() += 1;
            if report.sample_error.is_none() {
                report.sample_error = Some(e.to_string());
            }
        }
    };
    let mut last_progress = Instant::now();
    while start.elapsed() < duration {
        if spec.rate > 0.0 {
            let due = start + Duration::from_secs_f64(k as f64 / spec.rate);
            if due > start + duration {
                break;
            }
            tokio::time::sleep_until(due).await;
        }
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let ctx2 = ctx.clone();
        let groups = spec.groups.clone();
        let linger = Duration::from_millis(spec.linger_ms);
        let tx = done_tx.clone();
        let idx = spec.first_index + k;
        let cycle = k;
        tokio::spawn(async move {
            let r = churn_cycle(&ctx2, idx, cycle, &groups, linger).await;
            drop(permit);
            let _ = tx.send((cycle, r));
        });
        k += 1;
        while let Ok((_, r)) = done_rx.try_recv() {
            tally(&mut report, r);
        }
        if last_progress.elapsed() > Duration::from_millis(250) {
            let _ = ctx.ev.send(Ev::Progress {
                connected: report.ok,
                failed: report.failed,
            });
            last_progress = Instant::now();
        }
    }
    report.attempted = k;
    drop(done_tx);
    let deadline = Instant::now()
        + Duration::from_millis(ctx.spec.ep.connect_timeout_ms)
        + Duration::from_secs(10);
    while report.ok + report.failed < k {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some((_, r))) => tally(&mut report, r),
            _ => break,
        }
    }
    report.end_us = now_us();
    report.setup = hist_pairs(&setup);
    report.live_holds = ctx.live();
    report.dropped = ctx.dropped.load(Relaxed);
    report
}

async fn churn_cycle(
    ctx: &Ctx,
    idx: u64,
    cycle: u64,
    groups: &[Group],
    linger: Duration,
) -> Result<(u64, CycleEnd), ConnectError> {
    let start = Instant::now();
    let user = format!("{}c{}", ctx.spec.user_prefix, idx);
    // Channels are chosen by cycle number, so concurrent cycles spread out.
    let mut seq = None;
    let channels = channels_for(groups, cycle);
    let mut ws = setup(ctx, idx, &user, &channels, &mut seq).await?;
    let took = start.elapsed().as_micros() as u64;
    if !linger.is_zero() {
        tokio::time::sleep(linger).await;
    }
    let end = match cycle % 3 {
        0 => CycleEnd::Clean(ws.close(1000, Duration::from_secs(5)).await),
        1 => {
            ws.drop_fin();
            CycleEnd::Fin
        }
        _ => {
            ws.reset();
            CycleEnd::Rst
        }
    };
    Ok((took, end))
}

// ---------------------------------------------------------------------------
// Parent side.

/// The parent's handle on its worker processes.
pub struct Pool {
    children: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
    rx: mpsc::UnboundedReceiver<(usize, Ev)>,
    /// Workers whose stdout ended.
    exited: HashSet<usize>,
}

impl Pool {
    /// Starts one worker process per spec.
    pub async fn spawn(specs: &[WorkerSpec], threads: usize) -> Result<Pool> {
        let exe = std::env::current_exe().context("locating the loadtest binary")?;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        for spec in specs {
            let mut child = Command::new(&exe)
                .arg("__worker")
                .arg("--threads")
                .arg(threads.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("spawning worker {}", exe.display()))?;
            let mut stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let mut line = serde_json::to_string(spec)?;
            line.push('\n');
            stdin.write_all(line.as_bytes()).await?;
            stdin.flush().await?;
            let tx = tx.clone();
            let id = spec.id;
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match serde_json::from_str::<Ev>(&line) {
                        Ok(ev) => {
                            let _ = tx.send((id, ev));
                        }
                        Err(e) => eprintln!("worker {id}: unparsable line ({e}): {line}"),
                    }
                }
                let _ = tx.send((id, Ev::Exited));
            });
            children.push(child);
            stdins.push(Some(stdin));
        }
        Ok(Pool {
            children,
            stdins,
            rx,
            exited: HashSet::new(),
        })
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.children.len()
    }

    /// Sends a command to one worker.
    pub async fn send(&mut self, worker: usize, cmd: &Cmd) -> Result<()> {
        let stdin = self
            .stdins
            .get_mut(worker)
            .and_then(Option::as_mut)
            .with_context(|| format!("worker {worker} has no stdin"))?;
        let mut line = serde_json::to_string(cmd)?;
        line.push('\n');
        stdin
            .write_all(line.as_bytes())
            .await
            .with_context(|| format!("writing to worker {worker}"))?;
        stdin.flush().await?;
        Ok(())
    }

    /// Sends a command to every worker.
    pub async fn send_all(&mut self, cmd: &Cmd) -> Result<()> {
        for w in 0..self.workers() {
            self.send(w, cmd).await?;
        }
        Ok(())
    }

    /// The next event, within `timeout`. A worker's fatal error or
    /// unexpected exit is an error.
    pub async fn next(&mut self, timeout: Duration) -> Result<(usize, Ev)> {
        let (w, ev) = tokio::time::timeout(timeout, self.rx.recv())
            .await
            .map_err(|_| anyhow!("no event from the workers within {timeout:?}"))?
            .context("every worker is gone")?;
        match ev {
            Ev::Fatal { error } => bail!("worker {w} failed: {error}"),
            Ev::Exited => {
                self.exited.insert(w);
                Ok((w, Ev::Exited))
            }
            ev => Ok((w, ev)),
        }
    }

    /// Collects one `T` per worker (events `pick` maps to `Some`), handing
    /// every other event to `other` (progress). Bounded by `timeout`.
    pub async fn collect<T>(
        &mut self,
        timeout: Duration,
        mut pick: impl FnMut(Ev) -> Option<T>,
        mut other: impl FnMut(usize, &Ev),
    ) -> Result<Vec<T>> {
        let deadline = Instant::now() + timeout;
        let mut got: Vec<Option<T>> = (0..self.workers()).map(|_| None).collect();
        while got.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            let (w, ev) = self.next(left).await?;
            if matches!(ev, Ev::Exited) {
                if got.get(w).is_some_and(Option::is_none) {
                    bail!("worker {w} exited before reporting");
                }
                continue;
            }
            other(w, &ev);
            if let Some(t) = pick(ev) {
                if let Some(slot) = got.get_mut(w) {
                    *slot = Some(t);
                }
            }
        }
        Ok(got.into_iter().flatten().collect())
    }

    /// Stops every worker (clean closes) and collects their stop reports;
    /// kills what does not exit in time.
    pub async fn stop(mut self) -> Result<Vec<StopReport>> {
        let sent = self.send_all(&Cmd::Stop).await;
        let reports = match sent {
            Ok(()) => {
                self.collect(
                    Duration::from_secs(30),
                    |ev| match ev {
                        Ev::Stopped(r) => Some(r),
                        _ => None,
                    },
                    |_, _| {},
                )
                .await
            }
            Err(e) => Err(e),
        };
        for stdin in &mut self.stdins {
            stdin.take();
        }
        for child in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        reports
    }
}

/// Splits `total` clients into workers of at most `per_worker` each, in
/// contiguous global index ranges: (first, count) per worker.
pub fn split(total: u64, per_worker: u64) -> Vec<(u64, u64)> {
    let per_worker = per_worker.max(1);
    let workers = total.div_ceil(per_worker).max(1);
    let base = total / workers;
    let extra = total % workers;
    let mut first = 0;
    (0..workers)
        .map(|w| {
            let count = base + u64::from(w < extra);
            let r = (first, count);
            first += count;
            r
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_evenly_under_the_cap() {
        assert_eq!(split(10, 12_000), vec![(0, 10)]);
        assert_eq!(split(15_000, 12_000), vec![(0, 7_500), (7_500, 7_500)]);
        assert_eq!(
            split(25_001, 12_000),
            vec![(0, 8_334), (8_334, 8_334), (16_668, 8_333)]
        );
        assert_eq!(split(0, 5), vec![(0, 0)]);
    }

    #[test]
    fn finds_our_data_strings() {
        let f = br#"{"type":"message","channel":"fan:3","data":"f:3:0:17:1700000000000000:xx","offset":null,"from":null}"#;
        let d = data_str(f).unwrap();
        let v: Vec<_> = fields(d).map(parse_u64).collect();
        assert_eq!(
            v[..4],
            [Some(3), Some(0), Some(17), Some(1_700_000_000_000_000)]
        );
        assert!(data_str(br#"{"type":"message","data":{"x":1}}"#).is_none());
        assert!(data_str(br#"{"type":"broadcast","data":"b:9:5:"}"#).is_some());
    }

    #[test]
    fn refused_publications_are_not_loss() {
        let mut s = SeqState {
            expected: 4,
            next: 1,
            ..SeqState::default()
        };
        let mut b = Batch::default();
        s.on(1, &mut b);
        assert!(s.refuse(1), "received before the refusal was known");
        assert!(!s.refuse(3));
        s.on(2, &mut b);
        assert_eq!(s.next, 4, "3 is accounted as refused");
        s.on(3, &mut b);
        assert_eq!(b.refused_late, 1);
        assert_eq!(b.duplicates, 0);
        s.on(4, &mut b);
        assert_eq!(s.next, 5);
        assert_eq!(b.distinct, 4, "1, 2, the late refused 3, 4");
    }

    #[test]
    fn refused_accounting_balances_in_any_order() {
        // Deterministic pseudo-random orders.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for _ in 0..500 {
            let n = 1 + rnd(40);
            let refused: Vec<u64> = (1..=n).filter(|_| rnd(4) == 0).collect();
            let mut arrivals: Vec<u64> = (1..=n)
                .filter(|s| !refused.contains(s) || rnd(2) == 0)
                .collect();
            for i in (1..arrivals.len()).rev() {
                let j = rnd(i as u64 + 1) as usize;
                arrivals.swap(i, j);
            }
            let cut = rnd(arrivals.len() as u64 + 1) as usize;
            let mut sub = SubSeq::new(0, n, 1);
            let mut b = Batch::default();
            let (mut missing, mut delivered) = (0u64, 0u64);
            for &s in &arrivals[..cut] {
                sub.lanes[0].on(s, &mut b);
            }
            for &s in &refused {
                if sub.lanes[0].refuse(s) {
                    delivered += 1;
                } else if sub.lanes[0].refused.binary_search(&s).is_ok() {
                    missing += 1;
                }
            }
            for &s in &arrivals[cut..] {
                sub.lanes[0].on(s, &mut b);
            }
            missing -= b.refused_late;
            delivered += b.refused_late;
            assert!(
                sub.done(),
                "n {n} refused {refused:?} arrivals {arrivals:?} cut {cut}"
            );
            assert_eq!(
                b.distinct + missing,
                n,
                "n {n} refused {refused:?} arrivals {arrivals:?} cut {cut}"
            );
            assert_eq!(missing + delivered, refused.len() as u64);
            assert_eq!(b.duplicates, 0);
        }
    }

    #[test]
    fn lanes_split_a_channel() {
        let s = SubSeq::new(0, 10, 4);
        let e: Vec<u64> = s.lanes.iter().map(|l| l.expected).collect();
        assert_eq!(e, [3, 3, 2, 2]);
        assert_eq!(s.expected(), 10);
    }

    #[test]
    fn sequence_state_counts_gaps_duplicates_and_reordering() {
        let mut s = SeqState {
            expected: 5,
            next: 1,
            ..SeqState::default()
        };
        let mut b = Batch::default();
        for seq in [1, 2, 4, 3, 3, 5, 9] {
            s.on(seq, &mut b);
        }
        assert_eq!(b.distinct, 5);
        assert_eq!(b.duplicates, 1);
        assert_eq!(b.out_of_order, 1);
        assert_eq!(b.unexpected, 1);
        assert_eq!(s.next, 6);
        let mut s = SeqState {
            expected: 3,
            next: 1,
            ..SeqState::default()
        };
        let mut b = Batch::default();
        s.on(1, &mut b);
        s.on(3, &mut b);
        assert_eq!(s.next, 2, "2 is missing");
    }
}
