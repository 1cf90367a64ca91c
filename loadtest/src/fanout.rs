//! `fanout`: S subscribers on C channels spread over the nodes; publishers
//! via the HTTP API or the WebSocket `publish` op, at a fixed rate or flat
//! out; with `--protocol pusher`, Pusher subscribers and publishers on the
//! signed REST API (`POST /apps/{id}/events`), the same payloads. Every
//! payload carries its channel, a per-channel sequence number and the send
//! time; subscribers check loss, duplicates and per-channel order and
//! record the latency.
//!
//! Order is only defined per publisher, so each channel has `lanes`
//! publishers with their own sequences; an HTTP publisher sends its next
//! publication after the previous one was answered, a WebSocket publisher
//! keeps up to `window` in flight on its connection (the gateway runs one
//! connection's ops in order).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;
use tokio::time::Instant;

use crate::cli::ClientArgs;
use crate::common::{hist_merge, merge_counts, new_hist, now_us, pad, Latency};
use crate::idle::{connect_all, latency_of, sum_stopped};
use crate::pusher::{self, check_channel_prefix, Protocol, ProtocolArgs, PusherApp};
use crate::wire::{op, Target, Ws};
use crate::worker::{Cmd, Ev, Group, Mode, Pool, SeqReport};

/// How publications are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// `POST /api/publish`.
    Http,
    /// The WebSocket `publish` op (needs client_publish in the namespace
    /// and a rate limit above the per-channel rate).
    Ws,
}

/// Options of `fanout`.
#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// Subscribers (client i subscribes to channel i % channels on node
    /// i % urls).
    #[arg(long, default_value_t = 1000)]
    pub subscribers: u64,
    /// Channels.
    #[arg(long, default_value_t = 1)]
    pub channels: u64,
    /// Channel name prefix (the channel is `<prefix><index>`; default
    /// `fan:`, Pusher: `bench-`).
    #[arg(long)]
    pub channel_prefix: Option<String>,
    /// How to publish (Pusher: http only, the signed `POST
    /// /apps/{id}/events`).
    #[arg(long, value_enum, default_value_t = Via::Http)]
    pub via: Via,
    /// Publications per second over all channels; 0 = flat out.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Publishers per channel, each with its own sequence (order is checked
    /// per publisher); more lanes = more publications in flight.
    #[arg(long, default_value_t = 1)]
    pub lanes: u64,
    /// WebSocket publishers: publications in flight per publisher (the
    /// gateway runs one connection's ops in order, so order still holds).
    #[arg(long, default_value_t = 1)]
    pub window: usize,
    /// Flat out: publications per channel.
    #[arg(long, default_value_t = 1000)]
    pub messages: u64,
    /// Fixed rate: how long to publish, s.
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Payload (the `data` string) size, bytes (at least ~40 to hold the
    /// header).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// After publishing, give up waiting after this long without a delivery.
    #[arg(long, default_value_t = 10_000)]
    pub idle_timeout_ms: u64,
    /// After publishing, give up waiting after this long in total.
    #[arg(long, default_value_t = 300)]
    pub max_wait_secs: u64,
    /// Wire protocol.
    #[command(flatten)]
    pub protocol: ProtocolArgs,
    /// Shared client options.
    #[command(flatten)]
    pub client: ClientArgs,
}

impl FanoutArgs {
    /// The channel prefix for the protocol.
    pub fn prefix(&self) -> Result<String> {
        let pusher = self.protocol.protocol == Protocol::Pusher;
        let prefix = self
            .channel_prefix
            .clone()
            .unwrap_or_else(|| if pusher { "bench-" } else { "fan:" }.into());
        if pusher {
            check_channel_prefix(&prefix)?;
        }
        Ok(prefix)
    }
}

/// The `fanout` report.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    /// "fanout".
    pub scenario: &'static str,
    /// Wire protocol of the subscribers (and publishing API).
    pub protocol: Protocol,
    /// Gateways.
    pub nodes: usize,
    /// Subscribers asked for.
    pub subscribers: u64,
    /// Subscribers connected.
    pub connected: u64,
    /// Subscribers that failed to connect.
    pub connect_failed: u64,
    /// Connect failures by kind.
    pub connect_errors: BTreeMap<String, u64>,
    /// One connect failure.
    pub sample_error: Option<String>,
    /// Channels.
    pub channels: u64,
    /// Publishing path.
    pub via: Via,
    /// Asked rate (0 = flat out).
    pub rate: f64,
    /// Payload size.
    pub payload: usize,
    /// Publications sent.
    pub published: u64,
    /// Publications refused or failed.
    pub publish_errors: u64,
    /// Publish failures by kind.
    pub publish_error_kinds: BTreeMap<String, u64>,
    /// Publishing time, s.
    pub publish_secs: f64,
    /// Publications per second achieved.
    pub publish_rate: f64,
    /// Deliveries expected.
    pub expected: u64,
    /// Distinct deliveries received.
    pub delivered: u64,
    /// Deliveries of acknowledged publications that never arrived.
    pub lost: u64,
    /// Publications refused (503 etc.): (channel, lane, seq).
    pub refused: u64,
    /// Deliveries of acknowledged publications that never arrived, per
    /// gateway node (subscriber i is on node i % nodes).
    pub lost_by_node: Vec<u64>,
    /// Deliveries of refused publications that did not arrive.
    pub refused_missing: u64,
    /// Deliveries of refused publications that arrived anyway (a refused
    /// publish may still have been executed: docs/protocol.md).
    pub refused_delivered: u64,
    /// Duplicates received.
    pub duplicates: u64,
    /// Received after a later publication of the same channel.
    pub out_of_order: u64,
    /// Sequence numbers that were never published.
    pub unexpected: u64,
    /// Subscribers still missing something when the wait ended.
    pub incomplete: u64,
    /// Subscribers that lost their connection.
    pub dropped: u64,
    /// How they ended.
    pub closes: BTreeMap<String, u64>,
    /// First to last delivery, s.
    pub delivery_secs: f64,
    /// Distinct deliveries per second over that window.
    pub deliveries_per_sec: f64,
    /// Publish (send) to receive latency.
    pub latency: Latency,
    /// HTTP publish request to response, as the publisher saw it.
    pub publish_rtt: Latency,
    /// Subscriber setup latency.
    pub setup_latency: Latency,
    /// Nothing lost, duplicated, reordered or refused.
    pub ok: bool,
}

impl FanoutReport {
    /// Human summary.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "fanout ({:?}): {} subscribers ({} failed) on {} channel(s) over {} node(s), {:?} publish, {} B\n",
            self.protocol,
            self.connected,
            self.connect_failed,
            self.channels,
            self.nodes,
            self.via,
            self.payload
        );
        s += &format!(
            "  published {} ({} errors) in {:.2} s = {:.0}/s{}\n",
            self.published,
            self.publish_errors,
            self.publish_secs,
            self.publish_rate,
            if self.rate > 0.0 {
                format!(" (asked {:.0}/s)", self.rate)
            } else {
                " (flat out)".into()
            }
        );
        s += &format!(
            "  delivered {}/{} in {:.2} s = {:.0} deliveries/s\n",
            self.delivered, self.expected, self.delivery_secs, self.deliveries_per_sec
        );
        s += &format!("  latency {}\n", self.latency.line());
        if self.publish_rtt.count > 0 {
            s += &format!("  publish request {}\n", self.publish_rtt.line());
        }
        if self.refused > 0 {
            s += &format!(
                "  refused publications: {} (their deliveries: {} missing, {} arrived anyway)\n",
                self.refused, self.refused_missing, self.refused_delivered
            );
        }
        s += &format!(
            "  lost {} {:?} ({} subscribers incomplete), duplicates {}, out of order {}, unexpected {}, dropped {} {:?}: {}",
            self.lost,
            self.lost_by_node,
            self.incomplete,
            self.duplicates,
            self.out_of_order,
            self.unexpected,
            self.dropped,
            self.closes,
            if self.ok { "OK" } else { "NOT OK" }
        );
        if let Some(e) = &self.sample_error {
            s += &format!("\n  first connect error: {e} {:?}", self.connect_errors);
        }
        s
    }
}

/// Publications per channel index.
pub fn expected_per_channel(args: &FanoutArgs) -> Vec<u64> {
    let c = args.channels.max(1);
    if args.rate > 0.0 {
        let total = (args.rate * args.duration_secs).round() as u64;
        (0..c)
            .map(|i| total / c + u64::from(i < total % c))
            .collect()
    } else {
        vec![args.messages; c as usize]
    }
}

struct PubStats {
    sent: AtomicU64,
    /// Refused or failed publications: (channel, lane, seq).
    refused: std::sync::Mutex<Vec<(u64, u64, u64)>>,
    errors: std::sync::Mutex<BTreeMap<String, u64>>,
    /// Request to response of HTTP publishes, us.
    rtt: std::sync::Mutex<hdrhistogram::Histogram<u64>>,
}

impl Default for PubStats {
    fn default() -> Self {
        Self {
            sent: AtomicU64::new(0),
            refused: std::sync::Mutex::default(),
            errors: std::sync::Mutex::default(),
            rtt: std::sync::Mutex::new(new_hist()),
        }
    }
}

impl PubStats {
    fn refuse(&self, lane: &Lane, j: u64, kind: String) {
        if let Ok(mut r) = self.refused.lock() {
            r.push((lane.channel, lane.lane, lane.seq(j)));
        }
        self.error(kind);
    }

    fn error(&self, kind: String) {
        *self
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind)
            .or_default() += 1;
    }
}

/// One publisher of one channel: publications `j = lane, lane + K, ...`
/// of the channel's `n` (K = lanes per channel), with sequence number
/// `j / K + 1`; in rate mode publication j of channel c is due at
/// `t0 + (j * C + c) / rate`.
struct Lane {
    channel: u64,
    lane: u64,
    lanes: u64,
    name: String,
    count: u64,
    channels: u64,
    rate: f64,
    payload: usize,
    window: usize,
    /// Set: publish with Pusher's signed REST API to this app.
    pusher: Option<PusherApp>,
}

impl Lane {
    fn jobs(&self) -> impl Iterator<Item = u64> + use<> {
        (self.lane..self.count).step_by(self.lanes.max(1) as usize)
    }

    fn seq(&self, j: u64) -> u64 {
        j / self.lanes.max(1) + 1
    }

    fn data(&self, j: u64) -> String {
        let seq = self.seq(j);
        pad(
            format!("f:{}:{}:{seq}:{}:", self.channel, self.lane, now_us()),
            self.payload,
        )
    }

    fn due(&self, t0: Instant, j: u64) -> Option<Instant> {
        (self.rate > 0.0).then(|| {
            t0 + Duration::from_secs_f64((j * self.channels + self.channel) as f64 / self.rate)
        })
    }

    async fn http(self, http: reqwest::Client, url: String, t0: Instant, stats: Arc<PubStats>) {
        for j in self.jobs() {
            if let Some(due) = self.due(t0, j) {
                tokio::time::sleep_until(due).await;
            }
            let start = Instant::now();
            let r = match &self.pusher {
                None => {
                    let body = serde_json::json!({"channel": self.name, "data": self.data(j)});
                    http.post(&url).json(&body).send().await
                }
                Some(app) => {
                    // Signed per request, as a server library does: the
                    // timestamp is part of the signature.
                    let body = pusher::event_body(&self.name, &self.data(j));
                    let path = pusher::events_path(app, &body, now_us() / 1_000_000);
                    http.post(format!("{url}{path}"))
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body)
                        .send()
                        .await
                }
            };
            if let Ok(mut h) = stats.rtt.lock() {
                let _ = h.record((start.elapsed().as_micros() as u64).max(1));
            }
            match r {
                Ok(r) if r.status().is_success() => {
                    stats.sent.fetch_add(1, Relaxed);
                }
                Ok(r) => stats.refuse(&self, j, format!("http_{}", r.status().as_u16())),
                Err(e) => stats.refuse(
                    &self,
                    j,
                    if e.is_timeout() {
                        "timeout".into()
                    } else {
                        "http_error".into()
                    },
                ),
            }
        }
    }

    /// Publishes over one WebSocket, up to `window` publications in flight
    /// (the gateway runs one connection's ops in order, so order holds).
    async fn ws(self, mut ws: Ws, t0: Instant, stats: Arc<PubStats>) {
        let mut jobs = self.jobs().peekable();
        let mut in_flight = 0usize;
        let reply_timeout = Duration::from_secs(30);
        loop {
            let can_send = in_flight < self.window.max(1) && jobs.peek().is_some();
            if !can_send && in_flight == 0 {
                break;
            }
            if can_send {
                let Some(&j) = jobs.peek() else { break };
                let due = self.due(t0, j);
                let ready = due.is_none_or(|d| d <= Instant::now());
                if ready || in_flight == 0 {
                    if let Some(d) = due {
                        tokio::time::sleep_until(d).await;
                    }
                    jobs.next();
                    let req = serde_json::json!({"op": "publish", "id": j, "channel": self.name, "data": self.data(j)});
                    if ws.send_text(&req.to_string()).await.is_err() {
                        stats.error("ws_write".into());
                        return;
                    }
                    in_flight += 1;
                    continue;
                }
                // Something is in flight and the next is not due yet: take
                // a reply or wait for the due time, whichever comes first.
                let wait = due.unwrap_or_else(Instant::now);
                tokio::select! {
                    r = tokio::time::timeout(reply_timeout, published_reply(&mut ws)) => {
                        if !self.on_reply(r, &stats) { return; }
                        in_flight -= 1;
                    }
                    _ = tokio::time::sleep_until(wait) => {}
                }
                continue;
            }
            let r = tokio::time::timeout(reply_timeout, published_reply(&mut ws)).await;
            if !self.on_reply(r, &stats) {
                return;
            }
            in_flight -= 1;
        }
        let _ = ws.close(1000, Duration::from_secs(2)).await;
    }

    fn on_reply(
        &self,
        r: Result<Result<Reply>, tokio::time::error::Elapsed>,
        stats: &PubStats,
    ) -> bool {
        match r {
            Ok(Ok((_, None))) => {
                stats.sent.fetch_add(1, Relaxed);
                true
            }
            Ok(Ok((id, Some(code)))) => {
                match id {
                    Some(j) => stats.refuse(self, j, format!("ws_{code}")),
                    None => stats.error(format!("ws_{code}")),
                }
                true
            }
            Ok(Err(_)) => {
                stats.error("ws_closed".into());
                false
            }
            Err(_) => {
                stats.error("timeout".into());
                false
            }
        }
    }
}

/// A publish reply: its id, and None = published or Some(code) = refused.
type Reply = (Option<u64>, Option<String>);

/// Reads until the reply to a publish.
async fn published_reply(ws: &mut Ws) -> Result<Reply> {
    loop {
        while let Some(f) = ws.next_frame()? {
            match f.opcode {
                op::TEXT => {
                    let v: serde_json::Value = serde_json::from_slice(ws.payload(&f))?;
                    let id = v.get("id").and_then(serde_json::Value::as_u64);
                    match v.get("type").and_then(|t| t.as_str()) {
                        Some("published") => return Ok((id, None)),
                        Some("error") => {
                            let code = v.get("code").and_then(|c| c.as_str()).unwrap_or("?");
                            return Ok((id, Some(code.to_owned())));
                        }
                        _ => {}
                    }
                }
                op::PING => ws.pong(&f).await?,
                op::CLOSE => bail!("publisher closed by the server"),
                _ => {}
            }
        }
        if ws.fill().await? == 0 {
            bail!("publisher connection ended");
        }
    }
}

/// Connects a WebSocket publisher for `lane` and reads its welcome.
async fn ws_publisher(args: &FanoutArgs, lane: u64) -> Result<Ws> {
    let ep = args.client.endpoints();
    let nodes = ep.nodes()?;
    let node = &nodes[(lane % nodes.len() as u64) as usize];
    let (path, bearer) = ep.auth(node, &format!("pub{lane}"))?;
    let target = Target {
        addr: node.addr,
        host: &node.host,
        path: &path,
        src: ep.src(lane),
        bearer: bearer.as_deref(),
        read_buf: 16 * 1024,
    };
    let mut ws = Ws::connect(&target, Duration::from_millis(ep.connect_timeout_ms))
        .await
        .map_err(|e| anyhow::anyhow!("publisher {lane}: {e}"))?;
    // The welcome frame.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(f) = ws.next_frame()? {
            if f.opcode == op::TEXT {
                break;
            }
            continue;
        }
        let n = tokio::time::timeout_at(deadline, ws.fill())
            .await
            .context("publisher welcome timed out")??;
        if n == 0 {
            bail!("publisher {lane} closed before its welcome");
        }
    }
    Ok(ws)
}

/// Runs `fanout`.
pub async fn run(args: &FanoutArgs) -> Result<FanoutReport> {
    args.client.validate()?;
    if args.subscribers == 0 || args.channels == 0 {
        bail!("--subscribers and --channels must be > 0");
    }
    if args.rate <= 0.0 && args.messages == 0 {
        bail!("--messages must be > 0");
    }
    let app = args.protocol.app();
    if app.is_some() && args.via == Via::Ws {
        bail!("--protocol pusher publishes with the REST API only (--via http)");
    }
    let prefix = args.prefix()?;
    let expected = expected_per_channel(args);
    let groups = vec![Group {
        prefix: prefix.clone(),
        count: args.channels,
    }];
    let mut client = args.client.clone();
    client.pusher = app.clone();
    client.read_buf = client.read_buf.max(16 * 1024);
    let specs = client.worker_specs(args.subscribers, "sub", groups, |_| Mode::Seq {
        expected: expected.clone(),
        lanes: args.lanes.max(1),
    });
    let counts: Vec<u64> = specs.iter().map(|s| s.count).collect();
    let mut pool = Pool::spawn(&specs, client.threads).await?;
    let connected = connect_all(&mut pool, &counts, &client, "subscribing").await?;

    // Publishers.
    let stats = Arc::new(PubStats::default());
    let apis = client.api_bases()?;
    let http = client.http()?;
    let mut lanes = Vec::new();
    for c in 0..args.channels {
        for l in 0..args.lanes.max(1) {
            lanes.push(Lane {
                channel: c,
                lane: l,
                lanes: args.lanes.max(1),
                name: format!("{prefix}{c}"),
                count: expected[c as usize],
                channels: args.channels,
                rate: args.rate,
                payload: args.payload,
                window: args.window,
                pusher: app.clone(),
            });
        }
    }
    let mut ws_pubs = Vec::new();
    if args.via == Via::Ws {
        for i in 0..lanes.len() as u64 {
            ws_pubs.push(ws_publisher(args, i).await?);
        }
    }
    let total: u64 = expected.iter().sum();
    let bar = client.bar(total, "publishing");
    let t0 = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::new();
    let mut ws_iter = ws_pubs.into_iter();
    for lane in lanes {
        let stats = stats.clone();
        match args.via {
            Via::Http => {
                let api = &apis[((lane.channel + lane.lane) % apis.len() as u64) as usize];
                let url = if lane.pusher.is_some() {
                    api.clone()
                } else {
                    format!("{api}/api/publish")
                };
                tasks.push(tokio::spawn(lane.http(http.clone(), url, t0, stats)));
            }
            Via::Ws => {
                let ws = ws_iter.next().context("missing publisher")?;
                tasks.push(tokio::spawn(lane.ws(ws, t0, stats)));
            }
        }
    }
    let publish_start = Instant::now();
    let mut all = futures_util::future::join_all(tasks);
    loop {
        tokio::select! {
            _ = &mut all => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                let errors: u64 = stats.errors.lock().map(|e| e.values().sum()).unwrap_or(0);
                bar.set_position(stats.sent.load(Relaxed) + errors);
            }
        }
    }
    bar.finish_and_clear();
    let publish_secs = publish_start.elapsed().as_secs_f64();

    let refused = stats.refused.lock().map(|r| r.clone()).unwrap_or_default();
    for w in 0..pool.workers() {
        pool.send(
            w,
            &Cmd::Finish {
                idle_ms: args.idle_timeout_ms,
                max_ms: args.max_wait_secs * 1000,
                refused: refused.clone(),
            },
        )
        .await?;
    }
    let reports: Vec<SeqReport> = pool
        .collect(
            Duration::from_secs(args.max_wait_secs + 60),
            |ev| match ev {
                Ev::Finished(r) => Some(r),
                _ => None,
            },
            |_, _| {},
        )
        .await?;
    let stopped = pool.stop().await?;
    let (stop_dropped, _) = sum_stopped(&stopped);

    let mut h = new_hist();
    let mut closes = BTreeMap::new();
    let (mut exp, mut distinct, mut dups, mut ooo, mut unexp, mut dropped) = (0, 0, 0, 0, 0, 0);
    let (mut first, mut last) = (u64::MAX, 0);
    let (mut refused_missing, mut refused_delivered) = (0, 0);
    for r in &reports {
        refused_missing += r.refused_missing;
        refused_delivered += r.refused_delivered;
        hist_merge(&mut h, &r.latency);
        merge_counts(&mut closes, &r.closes);
        exp += r.expected;
        distinct += r.distinct;
        dups += r.duplicates;
        ooo += r.out_of_order;
        unexp += r.unexpected;
        dropped += r.dropped;
        if r.first_us > 0 {
            first = first.min(r.first_us);
        }
        last = last.max(r.last_us);
    }
    dropped = dropped.max(stop_dropped);
    let delivery_secs = if first < last {
        (last - first) as f64 / 1e6
    } else {
        0.0
    };
    let errors = stats.errors.lock().map(|e| e.clone()).unwrap_or_default();
    let publish_errors: u64 = errors.values().sum();
    let published = stats.sent.load(Relaxed);
    let lost = exp.saturating_sub(distinct).saturating_sub(refused_missing);
    let mut lost_by_node = vec![0u64; client.urls.len().max(1)];
    for r in &reports {
        for (n, &(e, d, m)) in r.by_node.iter().enumerate() {
            if let Some(l) = lost_by_node.get_mut(n) {
                *l += e.saturating_sub(d).saturating_sub(m);
            }
        }
    }
    Ok(FanoutReport {
        scenario: "fanout",
        protocol: args.protocol.protocol,
        nodes: client.urls.len(),
        subscribers: args.subscribers,
        connected: connected.connected,
        connect_failed: connected.failed,
        connect_errors: connected.errors.clone(),
        sample_error: connected.sample_error.clone(),
        channels: args.channels,
        via: args.via,
        rate: args.rate,
        payload: args.payload,
        published,
        publish_errors,
        publish_error_kinds: errors,
        publish_secs,
        publish_rate: published as f64 / publish_secs.max(1e-9),
        expected: exp,
        delivered: distinct,
        lost,
        lost_by_node,
        refused: refused.len() as u64,
        refused_missing,
        refused_delivered,
        duplicates: dups,
        out_of_order: ooo,
        unexpected: unexp,
        incomplete: reports.iter().map(|r| r.incomplete).sum(),
        dropped,
        closes,
        delivery_secs,
        deliveries_per_sec: if delivery_secs > 0.0 {
            distinct as f64 / delivery_secs
        } else {
            0.0
        },
        latency: Latency::of(&h),
        publish_rtt: stats
            .rtt
            .lock()
            .map(|h| Latency::of(&h))
            .unwrap_or_default(),
        setup_latency: latency_of(&connected.setup),
        ok: lost == 0
            && dups == 0
            && ooo == 0
            && unexp == 0
            && published > 0
            && published + refused.len() as u64 == total
            && dropped == 0
            && connected.connected == args.subscribers,
    })
}
