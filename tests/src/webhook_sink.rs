//! A webhook receiver for the tests: a real HTTP server (axum) on a free
//! loopback port in the test process, recording every request the gateway
//! POSTs, with its headers and raw body, in arrival order.
//!
//! The sink answers a configurable status (200 by default), can be stopped
//! (the port refuses connections, as a backend that is down) and restarted
//! on the same port. [`verify`] recomputes a request's HMAC-SHA256
//! signature the way a backend would (docs/backend.md, "Webhooks").
//!
//! Invariants: `stop` returns only once the port is closed and every
//! connection the gateway held to it is gone; every wait is bounded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::eventually_some;

/// One request as the sink received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Request headers, names lowercase (the last value of each name).
    pub headers: HashMap<String, String>,
    /// The raw body, as signed.
    pub body: Bytes,
    /// The body parsed (`Value::Null` when it is not JSON).
    pub json: Value,
    /// When it arrived.
    pub at: Instant,
    /// The status the sink answered.
    pub status: u16,
}

impl Received {
    /// The batch's events (empty when the body has none).
    pub fn events(&self) -> Vec<Value> {
        self.json["events"].as_array().cloned().unwrap_or_default()
    }

    /// One header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// A short description for failure messages: status, the gateway's
    /// headers, the event count and the body's first 200 bytes.
    pub fn summary(&self) -> String {
        let head = String::from_utf8_lossy(&self.body[..self.body.len().min(200)]).into_owned();
        format!(
            "status {} timestamp {:?} signature {:?} node {:?}, {} events, {} body bytes: {head}...",
            self.status,
            self.header("x-gateway-timestamp"),
            self.header("x-gateway-signature"),
            self.header("x-gateway-node"),
            self.events().len(),
            self.body.len()
        )
    }
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    status: AtomicU16,
}

/// The running server: its stop signal and task.
struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// A webhook receiver on `127.0.0.1`.
pub struct WebhookSink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    running: Option<Running>,
}

async fn record(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let status = shared.status.load(Ordering::Acquire);
    let headers = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    shared.received.lock().push(Received {
        headers,
        body,
        json,
        at: Instant::now(),
        status,
    });
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl WebhookSink {
    /// Start on a free port, answering 200.
    pub async fn start() -> Result<Self> {
        let shared = Arc::new(Shared {
            received: Mutex::new(Vec::new()),
            status: AtomicU16::new(200),
        });
        let listener = bind("127.0.0.1:0".parse()?)?;
        let addr = listener.local_addr()?;
        let mut sink = Self {
            addr,
            shared,
            running: None,
        };
        sink.serve(listener);
        Ok(sink)
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .route("/hook", post(record))
            .with_state(self.shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        self.running = Some(Running { stop, task });
    }

    /// The URL to give the gateway (`GATEWAY_WEBHOOK_URL`).
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The port's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answer `status` to every request from now on.
    pub fn set_status(&self, status: u16) {
        self.shared.status.store(status, Ordering::Release);
    }

    /// Stop: close the port and the gateway's (idle) connections; a request
    /// in progress is answered first. Bounded by 10 s.
    pub async fn stop(&mut self) -> Result<()> {
        let Some(running) = self.running.take() else {
            return Ok(());
        };
        let _ = running.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), running.task)
            .await
            .context("webhook sink did not stop within 10 s")?
            .context("webhook sink task failed")?;
        Ok(())
    }

    /// Start again on the same port (after [`WebhookSink::stop`]).
    pub async fn restart(&mut self) -> Result<()> {
        if self.running.is_some() {
            bail!("webhook sink is running");
        }
        let listener = bind(self.addr)?;
        self.serve(listener);
        Ok(())
    }

    /// Every request received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().clone()
    }

    /// Every event of every request answered 2xx, in arrival order.
    pub fn events(&self) -> Vec<Value> {
        self.received()
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .flat_map(Received::events)
            .collect()
    }

    /// Wait (bounded) until the accepted events satisfy `check`; returns
    /// them.
    pub async fn wait_events<F>(
        &self,
        timeout: Duration,
        what: &str,
        check: F,
    ) -> Result<Vec<Value>>
    where
        F: Fn(&[Value]) -> bool,
    {
        let got = eventually_some(timeout, what, || {
            let events = self.events();
            std::future::ready(check(&events).then_some(events))
        })
        .await;
        got.with_context(|| {
            let seen: Vec<String> = self
                .events()
                .iter()
                .map(|e| format!("{} {} seq={}", e["name"], e["id"], e["data"]["seq"]))
                .collect();
            format!("events received (name, id, data.seq): {seen:#?}")
        })
    }
}

impl Drop for WebhookSink {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.task.abort();
        }
    }
}

fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .with_context(|| format!("binding the webhook sink to {addr}"))?;
    Ok(socket.listen(128)?)
}

/// Whether `r` carries a valid signature for `secret`: `X-Gateway-Signature`
/// is `sha256=` + hex HMAC-SHA256(secret, `<X-Gateway-Timestamp>.<body>`).
pub fn verify(secret: &str, r: &Received) -> bool {
    let (Some(ts), Some(sig)) = (
        r.header("x-gateway-timestamp"),
        r.header("x-gateway-signature"),
    ) else {
        return false;
    };
    let Some(hex) = sig.strip_prefix("sha256=") else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut msg = Vec::with_capacity(ts.len() + 1 + r.body.len());
    msg.extend_from_slice(ts.as_bytes());
    msg.push(b'.');
    msg.extend_from_slice(&r.body);
    let Some(tag) = decode_hex(hex) else {
        return false;
    };
    // ring's verify compares in constant time, as a backend should.
    ring::hmac::verify(&key, &msg, &tag).is_ok()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
