//! The fan-out's publishers: one [`Lane`] per (channel, publisher), over
//! HTTP (the v1 API or Pusher's signed REST API) or a WebSocket connection
//! with a window of publishes in flight, and what they count
//! ([`PubStats`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::time::Instant;

use super::FanoutArgs;
use crate::common::{new_hist, now_us, pad};
use crate::pusher::{self, PusherApp};
use crate::wire::{op, Target, Ws};

pub(super) struct PubStats {
    pub(super) sent: AtomicU64,
    /// Refused or failed publications: (channel, lane, seq).
    pub(super) refused: std::sync::Mutex<Vec<(u64, u64, u64)>>,
    pub(super) errors: std::sync::Mutex<BTreeMap<String, u64>>,
    /// Request to response of HTTP publishes, us.
    pub(super) rtt: std::sync::Mutex<hdrhistogram::Histogram<u64>>,
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
pub(super) struct Lane {
    pub(super) channel: u64,
    pub(super) lane: u64,
    pub(super) lanes: u64,
    pub(super) name: String,
    pub(super) count: u64,
    pub(super) channels: u64,
    pub(super) rate: f64,
    pub(super) payload: usize,
    pub(super) window: usize,
    /// Set: publish with Pusher's signed REST API to this app.
    pub(super) pusher: Option<PusherApp>,
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

    pub(super) async fn http(
        self,
        http: reqwest::Client,
        url: String,
        t0: Instant,
        stats: Arc<PubStats>,
    ) {
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
    pub(super) async fn ws(self, mut ws: Ws, t0: Instant, stats: Arc<PubStats>) {
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
pub(super) async fn ws_publisher(args: &FanoutArgs, lane: u64) -> Result<Ws> {
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
