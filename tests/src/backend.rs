//! A real application backend for the proxy tests: an axum HTTP server on
//! `127.0.0.1:0` inside the test process. It records every request (hook,
//! headers, JSON body) and answers by a scripted rule that the test may
//! replace while it runs. Requests in flight are counted so overload tests
//! can wait for the backend to hold one.
//!
//! Invariant: the server task ends when the [`Backend`] drops.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde_json::Value;

/// What the backend answers to one request.
#[derive(Debug, Clone)]
pub struct BackendReply {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Value,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl BackendReply {
    /// 200 `{"result": result}`.
    pub fn ok(result: Value) -> Self {
        Self {
            status: 200,
            body: serde_json::json!({ "result": result }),
            delay: Duration::ZERO,
        }
    }
    /// 200 `{"error": {code, message}}`.
    pub fn refuse(code: &str, message: &str) -> Self {
        Self {
            status: 200,
            body: serde_json::json!({"error": {"code": code, "message": message}}),
            delay: Duration::ZERO,
        }
    }
    /// A bare status with a body that must never reach a client.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            body: serde_json::json!({"secret": "backend-internal-detail"}),
            delay: Duration::ZERO,
        }
    }
    /// The same answer after `delay`.
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The hook (the URL's last path segment).
    pub hook: String,
    /// Headers, lower-case names.
    pub headers: HashMap<String, String>,
    /// The JSON body.
    pub body: Value,
}

type Rule = Arc<dyn Fn(&str, &Value) -> BackendReply + Send + Sync>;

struct Inner {
    rule: Mutex<Rule>,
    requests: Mutex<Vec<Recorded>>,
    in_flight: AtomicUsize,
}

/// The running backend.
pub struct Backend {
    addr: SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    Path(hook): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let headers = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    inner.requests.lock().push(Recorded {
        hook: hook.clone(),
        headers,
        body: body.clone(),
    });
    let rule = inner.rule.lock().clone();
    let reply = rule(&hook, &body);
    inner.in_flight.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(reply.delay).await;
    inner.in_flight.fetch_sub(1, Ordering::SeqCst);
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    (status, axum::Json(reply.body)).into_response()
}

impl Backend {
    /// Start a backend answering by `rule(hook, body)`.
    pub async fn start(
        rule: impl Fn(&str, &Value) -> BackendReply + Send + Sync + 'static,
    ) -> Result<Self> {
        let inner = Arc::new(Inner {
            rule: Mutex::new(Arc::new(rule)),
            requests: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the test backend")?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new()
            .route("/hook/{hook}", axum::routing::post(handle))
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, inner, task })
    }

    /// Replace the rule.
    pub fn set_rule(&self, rule: impl Fn(&str, &Value) -> BackendReply + Send + Sync + 'static) {
        *self.inner.rule.lock() = Arc::new(rule);
    }

    /// The URL of `hook`.
    pub fn url(&self, hook: &str) -> String {
        format!("http://{}/hook/{hook}", self.addr)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.requests.lock().clone()
    }

    /// The requests of one hook so far.
    pub fn requests_of(&self, hook: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.hook == hook)
            .collect()
    }

    /// Requests being answered now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    /// A `[proxy]` TOML table naming this backend for `hooks`, each with
    /// `timeout_ms` and `max_concurrency`, forwarding `X-Tenant` as well.
    pub fn proxy_toml(&self, hooks: &[&str], timeout_ms: u64, max_concurrency: usize) -> String {
        proxy_toml(hooks, |h| self.url(h), timeout_ms, max_concurrency)
    }
}

/// A `[proxy]` TOML table with `url(hook)` for each of `hooks`.
pub fn proxy_toml(
    hooks: &[&str],
    url: impl Fn(&str) -> String,
    timeout_ms: u64,
    max_concurrency: usize,
) -> String {
    let mut s = String::from("\n[proxy]\nheaders = [\"X-Tenant\"]\n");
    for h in hooks {
        s.push_str(&format!(
            "\n[proxy.{h}]\nurl = \"{}\"\ntimeout_ms = {timeout_ms}\nmax_concurrency = {max_concurrency}\n",
            url(h)
        ));
    }
    s
}
