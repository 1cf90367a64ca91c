//! The load of `shard-spread`: subscriber connections that each subscribe
//! to every channel (so every channel has subscribers on every node), and
//! publishers that publish flat out, round-robin over the channels, until a
//! deadline, over the WebSocket `publish` op (a window of publications in
//! flight per connection) or `POST /api/publish`.
//!
//! Publication `j` (a global counter) goes to channel `j % channels`; its
//! data is `s:<send time us>:` padded (`w:` for the warm-up round), so a
//! subscriber counts per channel what it received and the latency. The
//! accounting is counts, not sequences: each subscriber must receive, per
//! channel, exactly the publications the gateways accepted on it.
//!
//! Invariants: every loop is bounded in count or time (the publishers by
//! the deadline and a reply timeout, the subscribers by the stop signal,
//! every setup by its timeout); the receive path does not allocate per
//! frame; a subscriber that loses its connection is counted, not retried.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::common::{new_hist, now_us, pad, Endpoints};
use crate::wire::{op, Target, Ws};

/// Bound on a subscriber's connect + welcome + every subscribe reply.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// A publisher gives up on a reply after this long.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// What every client of a phase shares.
pub(super) struct Plan {
    pub(super) ep: Endpoints,
    /// Channel prefix (`spread:`); channel `i` is `<prefix><i>`.
    pub(super) prefix: String,
    pub(super) channels: u64,
    pub(super) payload: usize,
}

impl Plan {
    fn channel(&self, i: u64) -> String {
        format!("{}{i}", self.prefix)
    }

    /// Connects client `idx` (node `idx % nodes`) as `user`; reads the
    /// welcome.
    async fn connect(&self, idx: u64, node: usize, user: &str) -> Result<Ws> {
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

/// Counters the subscribers update once per socket read, so the parent
/// can watch the deliveries arrive.
#[derive(Default)]
pub(super) struct Live {
    /// `s:` deliveries over every subscriber.
    pub(super) delivered: AtomicU64,
    /// `w:` (warm-up) deliveries over every subscriber.
    pub(super) warm: AtomicU64,
    /// Wall clock of the latest `s:` delivery (us).
    pub(super) last_us: AtomicU64,
}

/// What one subscriber received.
pub(super) struct SubResult {
    /// `s:` deliveries per channel index.
    pub(super) counts: Vec<u64>,
    /// Other frames of ours it could not attribute (a channel index out of
    /// range).
    pub(super) unexpected: u64,
    /// Publish-to-receive latency, us.
    pub(super) latency: Histogram<u64>,
    /// How it ended, when it ended before the stop (`eof`, `close_4005`,
    /// ...).
    pub(super) dropped: Option<String>,
}

/// A subscribed connection, before it starts receiving.
pub(super) struct Subscriber {
    ws: Ws,
}

/// Connects subscriber `idx` to node `idx % nodes` and subscribes it to
/// every channel.
pub(super) async fn subscribe(plan: &Plan, idx: u64, nodes: usize) -> Result<Subscriber> {
    let user = format!("spread-sub{idx}");
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let mut ws = plan
        .connect(idx, idx as usize % nodes.max(1), &user)
        .await?;
    for c in 0..plan.channels {
        ws.queue_text(&format!(
            r#"{{"op":"subscribe","id":{c},"channel":"{}"}}"#,
            plan.channel(c)
        ));
    }
    ws.flush_queued().await.context("sending the subscribes")?;
    let mut pending = plan.channels;
    let mut welcomed = false;
    while !welcomed || pending > 0 {
        while let Some(f) = ws.next_frame()? {
            match f.opcode {
                op::TEXT => {
                    let p = ws.payload(&f);
                    if contains(p, br#""type":"subscribed""#) {
                        pending = pending.saturating_sub(1);
                    } else if contains(p, br#""type":"welcome""#) {
                        welcomed = true;
                    } else if contains(p, br#""type":"error""#) {
                        bail!("{user}: subscribe refused: {}", String::from_utf8_lossy(p));
                    }
                }
                op::PING => ws.pong(&f).await?,
                op::CLOSE => bail!("{user}: closed during the subscribes"),
                _ => {}
            }
        }
        if welcomed && pending == 0 {
            break;
        }
        let n = tokio::time::timeout_at(deadline, ws.fill())
            .await
            .map_err(|_| {
                anyhow!("{user}: {pending} subscribe replies missing after {SETUP_TIMEOUT:?}")
            })??;
        if n == 0 {
            bail!("{user}: closed before its subscribe replies ({pending} missing)");
        }
    }
    Ok(Subscriber { ws })
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn parse_u64(b: &[u8]) -> Option<u64> {
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

/// A delivery of ours: (channel index, warm-up?, send time us).
fn parse_delivery(p: &[u8], prefix: &[u8]) -> Option<(u64, bool, u64)> {
    const DATA: &[u8] = br#""data":""#;
    let d = p.windows(DATA.len()).position(|w| w == DATA)? + DATA.len();
    let data = &p[d..];
    let warm = match data.get(..2)? {
        b"s:" => false,
        b"w:" => true,
        _ => return None,
    };
    let sent = parse_u64(&data[2..])?;
    let at = p.windows(prefix.len()).position(|w| w == prefix)? + prefix.len();
    Some((parse_u64(&p[at..])?, warm, sent))
}

impl Subscriber {
    /// Receives until `stop` turns true (then closes cleanly, bounded) or
    /// the connection ends.
    pub(super) async fn run(
        mut self,
        plan: Arc<Plan>,
        live: Arc<Live>,
        mut stop: watch::Receiver<bool>,
    ) -> SubResult {
        let prefix = format!(r#""channel":"{}"#, plan.prefix).into_bytes();
        let mut r = SubResult {
            counts: vec![0; plan.channels as usize],
            unexpected: 0,
            latency: new_hist(),
            dropped: None,
        };
        loop {
            let recv_us = now_us();
            let (mut got, mut warm) = (0u64, 0u64);
            let mut pings = Vec::new();
            loop {
                let f = match self.ws.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(_) => {
                        r.dropped = Some("protocol".into());
                        return r;
                    }
                };
                match f.opcode {
                    op::TEXT => match parse_delivery(self.ws.payload(&f), &prefix) {
                        Some((c, false, sent)) => match r.counts.get_mut(c as usize) {
                            Some(n) => {
                                *n += 1;
                                got += 1;
                                let _ = r
                                    .latency
                                    .record(recv_us.saturating_sub(sent).clamp(1, 600_000_000));
                            }
                            None => r.unexpected += 1,
                        },
                        Some((_, true, _)) => warm += 1,
                        None => {}
                    },
                    op::PING => pings.push(self.ws.payload(&f).to_vec()),
                    op::CLOSE => {
                        let p = self.ws.payload(&f);
                        let code = if p.len() >= 2 {
                            u16::from_be_bytes([p[0], p[1]])
                        } else {
                            1005
                        };
                        r.dropped = Some(format!("close_{code}"));
                        return r;
                    }
                    _ => {}
                }
            }
            if got > 0 {
                live.delivered.fetch_add(got, Relaxed);
                live.last_us.fetch_max(recv_us, Relaxed);
            }
            if warm > 0 {
                live.warm.fetch_add(warm, Relaxed);
            }
            for p in pings {
                if self.ws.send(op::PONG, &p).await.is_err() {
                    r.dropped = Some("tcp".into());
                    return r;
                }
            }
            if *stop.borrow() {
                let _ = self.ws.close(1000, Duration::from_secs(2)).await;
                return r;
            }
            tokio::select! {
                n = self.ws.fill() => match n {
                    Ok(0) => { r.dropped = Some("eof".into()); return r; }
                    Ok(_) => {}
                    Err(_) => { r.dropped = Some("tcp".into()); return r; }
                },
                changed = stop.changed() => {
                    if changed.is_err() {
                        // The parent is gone: stop as if told to.
                        let _ = self.ws.close(1000, Duration::from_secs(2)).await;
                        return r;
                    }
                }
            }
        }
    }
}

/// Publication outcomes, per channel.
pub(super) struct PubStats {
    /// Next publication number (global over the publishers).
    next: AtomicU64,
    /// Accepted publications per channel index.
    pub(super) accepted: Vec<AtomicU64>,
    /// Refused or failed publications per channel index.
    pub(super) refused: Vec<AtomicU64>,
    /// Failures by kind.
    pub(super) errors: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// Publish request to reply, us.
    pub(super) rtt: std::sync::Mutex<Histogram<u64>>,
}

impl PubStats {
    pub(super) fn new(channels: u64) -> PubStats {
        PubStats {
            next: AtomicU64::new(0),
            accepted: (0..channels).map(|_| AtomicU64::new(0)).collect(),
            refused: (0..channels).map(|_| AtomicU64::new(0)).collect(),
            errors: std::sync::Mutex::default(),
            rtt: std::sync::Mutex::new(new_hist()),
        }
    }

    fn take(&self) -> u64 {
        self.next.fetch_add(1, Relaxed)
    }

    fn channel_of(&self, j: u64) -> usize {
        (j % self.accepted.len().max(1) as u64) as usize
    }

    fn accept(&self, j: u64) {
        if let Some(a) = self.accepted.get(self.channel_of(j)) {
            a.fetch_add(1, Relaxed);
        }
    }

    fn refuse(&self, j: Option<u64>, kind: String) {
        if let Some(r) = j.and_then(|j| self.refused.get(self.channel_of(j))) {
            r.fetch_add(1, Relaxed);
        }
        *self
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind)
            .or_default() += 1;
    }

    /// Accepted publications over every channel.
    pub(super) fn accepted_total(&self) -> u64 {
        self.accepted.iter().map(|a| a.load(Relaxed)).sum()
    }

    /// Refused publications over every channel.
    pub(super) fn refused_total(&self) -> u64 {
        self.refused.iter().map(|a| a.load(Relaxed)).sum()
    }
}

fn data(plan: &Plan, tag: char) -> String {
    pad(format!("{tag}:{}:", now_us()), plan.payload)
}

/// A WebSocket publisher on node `idx % nodes`, connected and welcomed.
pub(super) async fn ws_publisher(plan: &Plan, idx: u64, nodes: usize) -> Result<Ws> {
    let user = format!("spread-pub{idx}");
    let mut ws = plan
        .connect(idx, idx as usize % nodes.max(1), &user)
        .await?;
    let deadline = Instant::now() + SETUP_TIMEOUT;
    loop {
        if let Some(f) = ws.next_frame()? {
            if f.opcode == op::TEXT {
                return Ok(ws);
            }
            continue;
        }
        let n = tokio::time::timeout_at(deadline, ws.fill())
            .await
            .map_err(|_| anyhow!("{user}: no welcome"))??;
        if n == 0 {
            bail!("{user}: closed before its welcome");
        }
    }
}

/// When publication `n` of a publisher with `rate` publications/s is due
/// (None: flat out).
fn due(t0: Instant, rate: f64, n: u64) -> Option<Instant> {
    (rate > 0.0).then(|| t0 + Duration::from_secs_f64(n as f64 / rate))
}

/// Publishes over `ws` with up to `window` publications in flight until
/// `deadline`, flat out or at `rate` publications/s, then waits (bounded)
/// for the replies still due.
///
/// Only `Ws::fill` (cancel-safe) is awaited under a `select!`; frames are
/// parsed and pings answered outside it, so no reply is lost to a timer.
pub(super) async fn ws_publish(
    mut ws: Ws,
    plan: Arc<Plan>,
    stats: Arc<PubStats>,
    window: usize,
    rate: f64,
    deadline: Instant,
) {
    let window = window.max(1);
    let t0 = Instant::now();
    let mut sent = 0u64;
    // Ids and send times of the publications in flight (replies come back
    // in order on one connection).
    let mut in_flight: std::collections::VecDeque<(u64, Instant)> =
        std::collections::VecDeque::with_capacity(window);
    let mut reply_by = Instant::now() + REPLY_TIMEOUT;
    loop {
        // Everything buffered: replies, pings.
        let mut pings = Vec::new();
        let done = Instant::now();
        loop {
            let f = match ws.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return fail_all(&stats, &mut in_flight, &format!("ws_protocol: {e}")),
            };
            match f.opcode {
                op::TEXT => {
                    let p = ws.payload(&f);
                    let id = p
                        .windows(5)
                        .position(|w| w == br#""id":"#)
                        .and_then(|at| parse_u64(&p[at + 5..]));
                    let code = if contains(p, br#""type":"published""#) {
                        None
                    } else if contains(p, br#""type":"error""#) {
                        let v: serde_json::Value = serde_json::from_slice(p).unwrap_or_default();
                        Some(v["code"].as_str().unwrap_or("?").to_owned())
                    } else {
                        continue;
                    };
                    // The matching entry, or the oldest for an error
                    // without an id.
                    let pos = id
                        .and_then(|id| in_flight.iter().position(|&(j, _)| j == id))
                        .unwrap_or(0);
                    let Some((j, at)) = in_flight.remove(pos) else {
                        continue;
                    };
                    reply_by = done + REPLY_TIMEOUT;
                    if let Ok(mut h) = stats.rtt.lock() {
                        let us = (done - at).as_micros() as u64;
                        let _ = h.record(us.clamp(1, 600_000_000));
                    }
                    match code {
                        None => stats.accept(j),
                        Some(code) => stats.refuse(Some(j), format!("ws_{code}")),
                    }
                }
                op::PING => pings.push(ws.payload(&f).to_vec()),
                op::CLOSE => return fail_all(&stats, &mut in_flight, "ws_closed"),
                _ => {}
            }
        }
        for p in pings {
            if ws.send(op::PONG, &p).await.is_err() {
                return fail_all(&stats, &mut in_flight, "ws_write");
            }
        }
        // New publications, as the window and the pace allow.
        let now = Instant::now();
        let was_empty = in_flight.is_empty();
        let mut queued = false;
        while now < deadline
            && in_flight.len() < window
            && due(t0, rate, sent).is_none_or(|d| d <= now)
        {
            let j = stats.take();
            let c = stats.channel_of(j);
            ws.queue_text(&format!(
                r#"{{"op":"publish","id":{j},"channel":"{}{c}","data":"{}"}}"#,
                plan.prefix,
                data(&plan, 's')
            ));
            in_flight.push_back((j, now));
            sent += 1;
            queued = true;
        }
        if queued {
            if was_empty {
                reply_by = now + REPLY_TIMEOUT;
            }
            if ws.flush_queued().await.is_err() {
                return fail_all(&stats, &mut in_flight, "ws_write");
            }
        }
        // The next publication's due time, while there is room for it and
        // it is due before the deadline (a publisher behind its pace at the
        // deadline stops there).
        let next = if Instant::now() < deadline && in_flight.len() < window {
            due(t0, rate, sent).filter(|&d| d < deadline)
        } else {
            None
        };
        if in_flight.is_empty() {
            match next {
                Some(d) => {
                    tokio::time::sleep_until(d).await;
                    continue;
                }
                None => break,
            }
        }
        if Instant::now() > reply_by {
            return fail_all(&stats, &mut in_flight, "timeout");
        }
        let wake = next.unwrap_or(reply_by).min(reply_by);
        tokio::select! {
            n = ws.fill() => match n {
                Ok(0) | Err(_) => return fail_all(&stats, &mut in_flight, "ws_closed"),
                Ok(_) => {}
            },
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
    let _ = ws.close(1000, Duration::from_secs(2)).await;
}

/// Counts every publication still in flight as failed with `kind`.
fn fail_all(
    stats: &PubStats,
    in_flight: &mut std::collections::VecDeque<(u64, Instant)>,
    kind: &str,
) {
    for (j, _) in in_flight.drain(..) {
        stats.refuse(Some(j), kind.to_owned());
    }
}

/// One HTTP publisher: one request in flight at a time to `url` until
/// `deadline`, flat out or at `rate` publications/s.
pub(super) async fn http_publish(
    http: reqwest::Client,
    url: String,
    plan: Arc<Plan>,
    stats: Arc<PubStats>,
    rate: f64,
    deadline: Instant,
) {
    let t0 = Instant::now();
    let mut sent = 0u64;
    loop {
        if let Some(d) = due(t0, rate, sent) {
            tokio::time::sleep_until(d).await;
        }
        if Instant::now() >= deadline {
            break;
        }
        sent += 1;
        let j = stats.take();
        let body = serde_json::json!({
            "channel": plan.channel(stats.channel_of(j) as u64),
            "data": data(&plan, 's'),
        });
        let start = Instant::now();
        let r = http.post(&url).json(&body).send().await;
        if let Ok(mut h) = stats.rtt.lock() {
            let _ = h.record((start.elapsed().as_micros() as u64).clamp(1, 600_000_000));
        }
        match r {
            Ok(r) if r.status().is_success() => stats.accept(j),
            Ok(r) => stats.refuse(Some(j), format!("http_{}", r.status().as_u16())),
            Err(e) if e.is_timeout() => stats.refuse(Some(j), "timeout".into()),
            Err(_) => stats.refuse(Some(j), "http_error".into()),
        }
    }
}

/// The warm-up round: one `w:` publication per channel over HTTP
/// (spread over the nodes' APIs, 32 in flight); the number accepted.
pub(super) async fn warm_up(http: &reqwest::Client, apis: &[String], plan: &Plan) -> Result<u64> {
    if apis.is_empty() {
        bail!("no HTTP API to warm up through");
    }
    let mut accepted = 0;
    let mut c = 0;
    while c < plan.channels {
        let batch: Vec<_> = (c..(c + 32).min(plan.channels))
            .map(|i| {
                let url = format!("{}/api/publish", apis[i as usize % apis.len()]);
                let body = serde_json::json!({"channel": plan.channel(i), "data": data(plan, 'w')});
                let http = http.clone();
                async move { http.post(&url).json(&body).send().await }
            })
            .collect();
        for r in futures_util::future::join_all(batch).await {
            if r.is_ok_and(|r| r.status().is_success()) {
                accepted += 1;
            }
        }
        c += 32;
    }
    Ok(accepted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_our_deliveries() {
        let f = br#"{"type":"message","channel":"spread:42","data":"s:1700000000000000:xxxx","offset":null,"from":"p"}"#;
        assert_eq!(
            parse_delivery(f, br#""channel":"spread:"#),
            Some((42, false, 1_700_000_000_000_000))
        );
        let w = br#"{"type":"message","channel":"spread:7","data":"w:12:x"}"#;
        assert_eq!(
            parse_delivery(w, br#""channel":"spread:"#),
            Some((7, true, 12))
        );
        let other = br#"{"type":"message","channel":"spread:7","data":{"a":1}}"#;
        assert_eq!(parse_delivery(other, br#""channel":"spread:"#), None);
    }
}
