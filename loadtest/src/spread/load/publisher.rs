//! The publishers: over the WebSocket `publish` op (a window of
//! publications in flight per connection) or `POST /api/publish`, flat out
//! or at a rate, round-robin over the channels until a deadline; and the
//! warm-up round. [`PubStats`] counts what was accepted on each channel.
//!
//! Invariants: every loop is bounded by the deadline and a reply timeout;
//! a publication without a reply is counted as refused, never lost.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use hdrhistogram::Histogram;
use tokio::time::Instant;

use super::plan::{contains, parse_u64, Plan, SETUP_TIMEOUT};
use crate::common::{new_hist, now_us, pad};
use crate::wire::{op, Ws};

/// A publisher gives up on a reply after this long.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Publication outcomes, per channel.
pub(in crate::spread) struct PubStats {
    /// Next publication number (global over the publishers).
    next: AtomicU64,
    /// Accepted publications per channel index.
    pub(in crate::spread) accepted: Vec<AtomicU64>,
    /// Refused or failed publications per channel index.
    pub(in crate::spread) refused: Vec<AtomicU64>,
    /// Failures by kind.
    pub(in crate::spread) errors: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// Publish request to reply, us.
    pub(in crate::spread) rtt: std::sync::Mutex<Histogram<u64>>,
}

impl PubStats {
    pub(in crate::spread) fn new(channels: u64) -> PubStats {
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
    pub(in crate::spread) fn accepted_total(&self) -> u64 {
        self.accepted.iter().map(|a| a.load(Relaxed)).sum()
    }

    /// Refused publications over every channel.
    pub(in crate::spread) fn refused_total(&self) -> u64 {
        self.refused.iter().map(|a| a.load(Relaxed)).sum()
    }
}

fn data(plan: &Plan, tag: char) -> String {
    pad(format!("{tag}:{}:", now_us()), plan.payload)
}

/// A WebSocket publisher on node `idx % nodes`, connected and welcomed.
pub(in crate::spread) async fn ws_publisher(plan: &Plan, idx: u64, nodes: usize) -> Result<Ws> {
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
pub(in crate::spread) async fn ws_publish(
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
pub(in crate::spread) async fn http_publish(
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
pub(in crate::spread) async fn warm_up(
    http: &reqwest::Client,
    apis: &[String],
    plan: &Plan,
) -> Result<u64> {
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
