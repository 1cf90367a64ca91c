//! The application backend proxy (docs/backend.md, "Proxy"): the node POSTs
//! JSON to the backend's URL for a hook (connect, refresh, subscribe,
//! publish, rpc) and reads its answer.
//!
//! Owns one HTTP client and, per configured hook (global, or a namespace's
//! own subscribe or publish hook), a semaphore of `max_concurrency`
//! permits. Invariants: a request never waits for a
//! permit (a full hook answers [`ProxyError::Overloaded`] at once, so the
//! waiting work is bounded); every request is bounded by the hook's
//! timeout, answer body included; every request is counted once in
//! `gateway_proxy_requests_total{hook,outcome}` and timed in
//! `gateway_proxy_duration_seconds{hook}`; nothing of the backend's answer
//! text, status or URL reaches a client (the callers map a [`ProxyError`]
//! to fixed reply texts).

pub mod hooks;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::config::{Hook, HookRoute, ProxyConfig};
use crate::metrics as m;
use crate::protocol::{ErrorCode, ReplyError};

pub use self::hooks::{Answer, Refusal};

/// Which hook (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    /// A connection without a JWT.
    Connect,
    /// A proxied session's expiry.
    Refresh,
    /// A client subscribe.
    Subscribe,
    /// A client publish.
    Publish,
    /// A client `rpc` op.
    Rpc,
}

impl HookKind {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            HookKind::Connect => "connect",
            HookKind::Refresh => "refresh",
            HookKind::Subscribe => "subscribe",
            HookKind::Publish => "publish",
            HookKind::Rpc => "rpc",
        }
    }
}

/// Why a hook gave no usable answer (a bounded set, the metric's outcomes
/// apart from `ok` and `refused`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// Every permit of the hook is taken.
    #[error("overloaded")]
    Overloaded,
    /// No complete answer within the hook's timeout.
    #[error("timeout")]
    Timeout,
    /// Unreachable, a non-2xx status, or an answer that is not the hook's
    /// JSON.
    #[error("error")]
    Error,
}

impl ProxyError {
    /// The client's view: always `unavailable`, with a fixed text.
    pub fn reply(self) -> ReplyError {
        ReplyError::new(ErrorCode::Unavailable, "backend unavailable")
    }
}

/// One configured hook: where, how long, how many at once.
struct Endpoint {
    hook: Hook,
    permits: Arc<Semaphore>,
    /// Whether the last request failed: failures are logged at warn on the
    /// change to failing, at debug while it stays so.
    failing: AtomicBool,
}

impl Endpoint {
    fn new(hook: Hook) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(hook.max_concurrency)),
            hook,
            failing: AtomicBool::new(false),
        }
    }
}

/// Where one channel hook of a namespace goes, with its live endpoint.
type Route = HookRoute<Endpoint>;

fn route(r: &HookRoute) -> Route {
    match r {
        HookRoute::Global => HookRoute::Global,
        HookRoute::Off => HookRoute::Off,
        HookRoute::Own(h) => HookRoute::Own(Endpoint::new(h.clone())),
    }
}

/// A namespace's channel hooks that are not the global ones.
struct NamespaceRoutes {
    subscribe: Route,
    publish: Route,
}

/// The proxy of one node.
pub struct Proxy {
    client: reqwest::Client,
    connect: Option<Endpoint>,
    refresh: Option<Endpoint>,
    subscribe: Option<Endpoint>,
    publish: Option<Endpoint>,
    rpc: Option<Endpoint>,
    /// By namespace name ("" the default namespace); a namespace not here
    /// uses the global hooks.
    namespaces: HashMap<String, NamespaceRoutes>,
    /// Forwarded upgrade headers, lower case.
    pub headers: Vec<String>,
}

impl Proxy {
    /// Build from validated config; with no hook configured it never
    /// sends anything.
    pub fn new(config: &ProxyConfig) -> Result<Self, reqwest::Error> {
        let endpoint = |h: &Option<Hook>| h.clone().map(Endpoint::new);
        let namespaces = config
            .namespaces
            .iter()
            .map(|(name, hooks)| {
                let routes = NamespaceRoutes {
                    subscribe: route(&hooks.subscribe),
                    publish: route(&hooks.publish),
                };
                (name.clone(), routes)
            })
            .collect();
        Ok(Self {
            // Redirects are not followed: a hook's answer is its own.
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            connect: endpoint(&config.connect),
            refresh: endpoint(&config.refresh),
            subscribe: endpoint(&config.subscribe),
            publish: endpoint(&config.publish),
            rpc: endpoint(&config.rpc),
            namespaces,
            headers: config.headers.clone(),
        })
    }

    /// The endpoint of `kind`; for the subscribe and publish hooks, the
    /// one of `channel`'s namespace.
    fn endpoint(&self, kind: HookKind, channel: Option<&str>) -> Option<&Endpoint> {
        let global = match kind {
            HookKind::Connect => return self.connect.as_ref(),
            HookKind::Refresh => return self.refresh.as_ref(),
            HookKind::Rpc => return self.rpc.as_ref(),
            HookKind::Subscribe => self.subscribe.as_ref(),
            HookKind::Publish => self.publish.as_ref(),
        };
        let Some(channel) = channel.filter(|_| !self.namespaces.is_empty()) else {
            return global;
        };
        let ns = channel.split_once(':').map_or("", |(ns, _)| ns);
        let Some(routes) = self.namespaces.get(ns) else {
            return global;
        };
        let route = if kind == HookKind::Subscribe {
            &routes.subscribe
        } else {
            &routes.publish
        };
        match route {
            HookRoute::Global => global,
            HookRoute::Off => None,
            HookRoute::Own(ep) => Some(ep),
        }
    }

    /// Whether the global hook `kind` is configured (for the subscribe and
    /// publish hooks of a channel, see [`Proxy::has_in`]).
    pub fn has(&self, kind: HookKind) -> bool {
        self.endpoint(kind, None).is_some()
    }

    /// Whether the subscribe or publish hook `kind` is configured for
    /// `channel` (its namespace's own, else the global one).
    pub fn has_in(&self, kind: HookKind, channel: &str) -> bool {
        self.endpoint(kind, Some(channel)).is_some()
    }

    /// POST `body` to the hook and parse its answer. `Ok(None)` when the
    /// hook is not configured.
    pub async fn call<T: DeserializeOwned + Send>(
        &self,
        kind: HookKind,
        body: &impl Serialize,
    ) -> Result<Option<Answer<T>>, ProxyError> {
        self.call_in(kind, None, body).await
    }

    /// [`Proxy::call`] for a hook of `channel` (the subscribe and publish
    /// hooks: its namespace's own, else the global one).
    pub async fn call_in<T: DeserializeOwned + Send>(
        &self,
        kind: HookKind,
        channel: Option<&str>,
        body: &impl Serialize,
    ) -> Result<Option<Answer<T>>, ProxyError> {
        let Some(ep) = self.endpoint(kind, channel) else {
            return Ok(None);
        };
        let hook = kind.label();
        let started = Instant::now();
        let result = match ep.permits.clone().try_acquire_owned() {
            Err(_) => Err(ProxyError::Overloaded),
            Ok(_permit) => {
                let request = async {
                    let response = self
                        .client
                        .post(&ep.hook.url)
                        .json(body)
                        .send()
                        .await
                        .map_err(|e| (ProxyError::Error, e.to_string()))?;
                    let status = response.status();
                    if !status.is_success() {
                        return Err((ProxyError::Error, format!("status {status}")));
                    }
                    let bytes = response
                        .bytes()
                        .await
                        .map_err(|e| (ProxyError::Error, e.to_string()))?;
                    Answer::<T>::parse(&bytes)
                        .map_err(|e| (ProxyError::Error, format!("bad answer: {e}")))
                };
                match tokio::time::timeout(ep.hook.timeout, request).await {
                    Ok(Ok(answer)) => Ok(answer),
                    Ok(Err((e, detail))) => {
                        log_failure(ep, hook, e, &detail);
                        Err(e)
                    }
                    Err(_) => {
                        log_failure(ep, hook, ProxyError::Timeout, "no answer in time");
                        Err(ProxyError::Timeout)
                    }
                }
            }
        };
        let outcome = match &result {
            Ok(Answer::Result(_)) => {
                if ep.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(hook, "proxy backend answers again");
                }
                "ok"
            }
            Ok(Answer::Refused(_)) => "refused",
            Err(ProxyError::Overloaded) => {
                tracing::debug!(hook, "proxy hook at max_concurrency, refused");
                "overloaded"
            }
            Err(ProxyError::Timeout) => "timeout",
            Err(ProxyError::Error) => "error",
        };
        metrics::counter!(m::PROXY_REQUESTS, "hook" => hook, "outcome" => outcome).increment(1);
        metrics::histogram!(m::PROXY_DURATION, "hook" => hook)
            .record(started.elapsed().as_secs_f64());
        result.map(Some)
    }
}

/// One log line per failure: warn when the hook starts failing, debug while
/// it keeps failing (a down backend must not flood the log).
fn log_failure(ep: &Endpoint, hook: &'static str, e: ProxyError, detail: &str) {
    if ep.failing.swap(true, Ordering::Relaxed) {
        tracing::debug!(hook, outcome = %e, detail, "proxy request failed");
    } else {
        tracing::warn!(hook, outcome = %e, detail, url = %ep.hook.url, "proxy backend failing");
    }
}
