//! One round's load on one node: `clients` connections opened
//! `concurrency` at a time (connect + upgrade + welcome, timed each), then
//! each subscribes to a channel of its own (subscribe to `subscribed`,
//! timed each), then all close. With a JWT the client sends
//! `Authorization: Bearer`; through the proxy it sends only a `session`
//! cookie, which the backend turns into the user.
//!
//! Invariants: every connect and every reply is bounded by `timeout`; a
//! client that fails is counted, never retried, and never stalls the rest.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::common::new_hist;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a client proves who it is.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A minted JWT in `Authorization: Bearer`.
    Jwt(String),
    /// A `session=<user>` cookie for the connect proxy.
    Cookie(String),
}

/// What one round measured.
pub struct Measured {
    /// Connections that reached their welcome.
    pub connected: u64,
    /// Subscriptions answered `subscribed`.
    pub subscribed: u64,
    /// Clients that failed (connect, welcome or subscribe), by step.
    pub failed_connect: u64,
    /// Subscribes that failed or were refused.
    pub failed_subscribe: u64,
    /// Wall time of the connect phase.
    pub connect_wall: Duration,
    /// Wall time of the subscribe phase.
    pub subscribe_wall: Duration,
    /// Connect latencies, microseconds.
    pub connect_us: Histogram<u64>,
    /// Subscribe latencies, microseconds.
    pub subscribe_us: Histogram<u64>,
}

/// Reads text frames until one whose `type` is `want`; `Err` on a close,
/// an `error` frame or the deadline.
async fn until_type(ws: &mut Ws, want: &str, deadline: Instant) -> Result<(), String> {
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| format!("no {want} in time"))?;
        match next {
            Some(Ok(Message::Text(t))) => {
                let v: serde_json::Value =
                    serde_json::from_str(t.as_str()).map_err(|e| format!("bad frame: {e}"))?;
                match v["type"].as_str() {
                    Some(t) if t == want => return Ok(()),
                    Some("error") => return Err(format!("error frame: {v}")),
                    _ => {}
                }
            }
            Some(Ok(Message::Close(c))) => return Err(format!("closed: {c:?}")),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("socket: {e}")),
            None => return Err("socket ended".into()),
        }
    }
}

async fn connect_one(addr: SocketAddr, cred: &Credential, limit: Duration) -> Result<Ws, String> {
    let mut req = format!("ws://{addr}/ws")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let (name, value) = match cred {
        Credential::Jwt(t) => ("authorization", format!("Bearer {t}")),
        Credential::Cookie(user) => ("cookie", format!("session={user}")),
    };
    let value = HeaderValue::from_str(&value).map_err(|e| e.to_string())?;
    req.headers_mut().insert(name, value);
    let deadline = Instant::now() + limit;
    let (mut ws, _) = timeout(limit, tokio_tungstenite::connect_async(req))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| format!("connect: {e}"))?;
    until_type(&mut ws, "welcome", deadline).await?;
    Ok(ws)
}

async fn subscribe_one(ws: &mut Ws, channel: &str, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    let op = serde_json::json!({"op": "subscribe", "channel": channel, "id": 1}).to_string();
    ws.send(Message::text(op))
        .await
        .map_err(|e| format!("send: {e}"))?;
    until_type(ws, "subscribed", deadline).await
}

/// Runs the round against `addr` with one credential per client.
pub async fn run(
    addr: SocketAddr,
    creds: Vec<Credential>,
    concurrency: usize,
    limit: Duration,
) -> Result<Measured> {
    let mut m = Measured {
        connected: 0,
        subscribed: 0,
        failed_connect: 0,
        failed_subscribe: 0,
        connect_wall: Duration::ZERO,
        subscribe_wall: Duration::ZERO,
        connect_us: new_hist(),
        subscribe_us: new_hist(),
    };
    let started = Instant::now();
    let results: Vec<(Result<Ws, String>, Duration)> =
        futures_util::stream::iter(creds.iter().map(|c| async move {
            let t = Instant::now();
            let r = connect_one(addr, c, limit).await;
            (r, t.elapsed())
        }))
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    m.connect_wall = started.elapsed();
    let mut sockets = Vec::with_capacity(results.len());
    let mut first_error = None;
    for (r, took) in results {
        match r {
            Ok(ws) => {
                m.connected += 1;
                let _ = m.connect_us.record(took.as_micros().max(1) as u64);
                sockets.push(ws);
            }
            Err(e) => {
                m.failed_connect += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let started = Instant::now();
    let results: Vec<(Ws, Result<(), String>, Duration)> = futures_util::stream::iter(
        sockets
            .into_iter()
            .enumerate()
            .map(|(i, mut ws)| async move {
                let t = Instant::now();
                let r = subscribe_one(&mut ws, &format!("idle:p{i}"), limit).await;
                (ws, r, t.elapsed())
            }),
    )
    .buffer_unordered(concurrency.max(1))
    .collect()
    .await;
    m.subscribe_wall = started.elapsed();
    let mut sockets = Vec::with_capacity(results.len());
    for (ws, r, took) in results {
        match r {
            Ok(()) => {
                m.subscribed += 1;
                let _ = m.subscribe_us.record(took.as_micros().max(1) as u64);
            }
            Err(e) => {
                m.failed_subscribe += 1;
                first_error.get_or_insert(e);
            }
        }
        sockets.push(ws);
    }
    if let Some(e) = first_error {
        eprintln!("proxy: first failure: {e}");
    }
    // Close them all, bounded: the next round starts on a fresh node anyway.
    let _ = timeout(
        Duration::from_secs(10),
        futures_util::future::join_all(sockets.iter_mut().map(|ws| ws.close(None))),
    )
    .await;
    Ok(m)
}
