//! The delivery task: the one consumer of the webhook queue. It batches
//! events (up to `webhook_batch_max_events`, or what arrived within
//! `webhook_batch_max_wait_ms` of the batch's first event), signs each
//! request and POSTs one batch at a time, so the endpoint sees events in
//! emit order.
//!
//! A batch that fails (connect error, timeout, 408, 429, 5xx) is retried
//! with exponential backoff and jitter until it is accepted (any 2xx);
//! meanwhile new events queue behind it up to the bound. Any other answer
//! (other 4xx, 3xx) rejects the batch: its events are counted as dropped and
//! not retried. Trouble is logged once per change of state: a warning when
//! delivery starts failing (or a rejection with a new status), info when it
//! recovers.
//!
//! Shutdown: once `token` is cancelled, the task sends what is queued
//! without waiting to fill batches, for at most `webhook_flush_timeout_ms`;
//! what is left then is counted as dropped (`reason="shutdown"`).
//!
//! The signature: `X-Gateway-Signature: sha256=<hex HMAC-SHA256(secret,
//! "<X-Gateway-Timestamp>.<body>")>`, the timestamp in unix milliseconds
//! and fresh on every attempt; the body is the same bytes on every attempt.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use ring::hmac;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Held, Stamped, WebhookError};
use crate::config::WebhookConfig;
use crate::metrics as m;

/// Header with the signing time, unix milliseconds.
pub const TIMESTAMP_HEADER: &str = "x-gateway-timestamp";
/// Header with `sha256=<hex>` of HMAC-SHA256 over `<timestamp>.<body>`.
pub const SIGNATURE_HEADER: &str = "x-gateway-signature";
/// Header with the sending node's id.
pub const NODE_HEADER: &str = "x-gateway-node";

/// Bytes of a response body read (and discarded) so the connection can be
/// reused; past it the connection is dropped.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// `sha256=<lowercase hex>` of HMAC-SHA256 over `<timestamp>.<body>`.
pub fn signature(key: &hmac::Key, timestamp: &str, body: &[u8]) -> String {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(timestamp.as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("sha256={}", crate::pusher::sign::hex(ctx.sign().as_ref()))
}

/// `url` without userinfo, for logs.
pub fn redacted(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// The request body.
#[derive(Serialize)]
struct Body<'a> {
    /// Unix ms when the batch was formed (the same on every retry).
    time_ms: u64,
    node: &'a str,
    events: &'a [Stamped],
}

/// How a sender's requests are shaped and signed.
#[derive(Debug, Clone)]
pub enum Format {
    /// The gateway's own (docs/backend.md, "Webhooks").
    Gateway,
    /// Pusher's, for a Pusher app ([`super::pusher`]).
    Pusher {
        /// The app key (`X-Pusher-Key`).
        key: String,
    },
}

/// Where and how a sender delivers.
pub struct Target<'a> {
    /// The endpoint.
    pub url: &'a str,
    /// The signing secret.
    pub secret: &'a str,
    /// The request shape and signature.
    pub format: Format,
}

/// What one POST came to.
enum Outcome {
    /// 2xx.
    Ok,
    /// Retryable failure, with what went wrong.
    Retry(String),
    /// Refused for good, with the status.
    Rejected(u16),
}

/// Exponential backoff with jitter: uniform in [d/2, d], d doubling from
/// `initial` up to `max`.
struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let full = self
            .initial
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let ms = u64::try_from(full.as_millis()).unwrap_or(u64::MAX).max(1);
        Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
    }
}

/// Metric handles of the task.
struct Counters {
    ok: metrics::Counter,
    retry: metrics::Counter,
    rejected: metrics::Counter,
    dropped_rejected: metrics::Counter,
    dropped_shutdown: metrics::Counter,
    seconds: metrics::Histogram,
}

/// The delivery task's state. Owns the queue's receiving end.
pub struct Delivery {
    rx: mpsc::Receiver<Stamped>,
    held: Arc<Held>,
    client: reqwest::Client,
    url: reqwest::Url,
    key: hmac::Key,
    /// The secret as given (Pusher's signature is over the body alone).
    secret: String,
    format: Format,
    headers: HeaderMap,
    node: String,
    batch_max_events: usize,
    batch_max_wait: Duration,
    timeout: Duration,
    retry_initial: Duration,
    retry_max: Duration,
    flush_timeout: Duration,
    token: CancellationToken,
    /// Set once the token is cancelled: the end of the flush.
    flush_deadline: Option<Instant>,
    /// Since when (and after how many attempts) delivery is failing.
    failing: Option<(Instant, u64)>,
    /// The status of the last rejection, until a batch is accepted.
    rejecting: Option<u16>,
    counters: Counters,
}

impl Delivery {
    /// The task for `config` (whose `url` and `secret` are given).
    pub(super) fn new(
        config: &WebhookConfig,
        target: Target<'_>,
        node_id: &str,
        rx: mpsc::Receiver<Stamped>,
        held: Arc<Held>,
        token: CancellationToken,
    ) -> Result<Self, WebhookError> {
        let Target {
            url,
            secret,
            format,
        } = target;
        let url = reqwest::Url::parse(url).map_err(|e| WebhookError::Client(e.to_string()))?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.timeout)
            .timeout(config.timeout)
            .user_agent(concat!("gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| WebhookError::Client(e.to_string()))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| WebhookError::Client(e.to_string()))?;
            let value =
                HeaderValue::from_str(value).map_err(|e| WebhookError::Client(e.to_string()))?;
            headers.append(name, value);
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let node_value =
            HeaderValue::from_str(node_id).map_err(|e| WebhookError::Client(e.to_string()))?;
        headers.insert(NODE_HEADER, node_value);
        if let Format::Pusher { key } = &format {
            let v = HeaderValue::from_str(key).map_err(|e| WebhookError::Client(e.to_string()))?;
            headers.insert(super::pusher::KEY_HEADER, v);
        }
        let counters = Counters {
            ok: metrics::counter!(m::WEBHOOK_BATCHES, "outcome" => "ok"),
            retry: metrics::counter!(m::WEBHOOK_BATCHES, "outcome" => "retry"),
            rejected: metrics::counter!(m::WEBHOOK_BATCHES, "outcome" => "rejected"),
            dropped_rejected: metrics::counter!(m::WEBHOOK_DROPPED, "reason" => "rejected"),
            dropped_shutdown: metrics::counter!(m::WEBHOOK_DROPPED, "reason" => "shutdown"),
            seconds: metrics::histogram!(m::WEBHOOK_DELIVERY),
        };
        Ok(Self {
            rx,
            held,
            client,
            url,
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
            secret: secret.to_owned(),
            format,
            headers,
            node: node_id.to_owned(),
            batch_max_events: config.batch_max_events,
            batch_max_wait: config.batch_max_wait,
            timeout: config.timeout,
            retry_initial: config.retry_initial,
            retry_max: config.retry_max,
            flush_timeout: config.flush_timeout,
            token,
            flush_deadline: None,
            failing: None,
            rejecting: None,
            counters,
        })
    }

    /// The endpoint, without userinfo (for logs).
    pub fn url(&self) -> String {
        redacted(&self.url)
    }

    /// Deliver batches until shutdown has flushed the queue (or run out of
    /// time).
    pub async fn run(mut self) {
        let mut batch = Vec::with_capacity(self.batch_max_events);
        loop {
            batch.clear();
            if !self.collect(&mut batch).await {
                break;
            }
            let delivered = self.deliver(&batch).await;
            self.held
                .release(batch.len(), batch.iter().map(|e| e.weight).sum());
            if !delivered {
                break;
            }
        }
        // Closed first, so no emit queues behind the last look.
        self.rx.close();
        let (mut left, mut weight) = (0, 0);
        while let Ok(e) = self.rx.try_recv() {
            left += 1;
            weight += e.weight;
        }
        self.held.release(left, weight);
        let lost = left + if batch.is_empty() { 0 } else { batch.len() };
        if self.flush_deadline.is_some() && lost > 0 {
            tracing::warn!(
                events = lost,
                "webhook flush ran out of time at shutdown; events dropped"
            );
        }
        self.counters.dropped_shutdown.increment(left as u64);
        tracing::debug!("webhook delivery stopped");
    }

    fn start_flush(&mut self) {
        if self.flush_deadline.is_none() {
            self.flush_deadline = Some(Instant::now() + self.flush_timeout);
        }
    }

    /// Fill `batch`; false when there is nothing more to send (shutdown
    /// with an empty queue, or the flush ran out of time).
    async fn collect(&mut self, batch: &mut Vec<Stamped>) -> bool {
        let max = self.batch_max_events;
        if self.flush_deadline.is_none() {
            tokio::select! {
                biased;
                n = self.rx.recv_many(batch, max) => {
                    if n == 0 {
                        return false;
                    }
                }
                () = self.token.cancelled() => self.start_flush(),
            }
        }
        if let Some(deadline) = self.flush_deadline {
            if Instant::now() >= deadline {
                return false;
            }
            // Flushing: send what is there, without waiting for company.
            while batch.len() < max {
                match self.rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
            return !batch.is_empty();
        }
        let until = Instant::now() + self.batch_max_wait;
        while batch.len() < max {
            tokio::select! {
                biased;
                n = self.rx.recv_many(batch, max - batch.len()) => {
                    if n == 0 {
                        break;
                    }
                }
                () = tokio::time::sleep_until(until) => break,
                () = self.token.cancelled() => {
                    self.start_flush();
                    break;
                }
            }
        }
        true
    }

    /// Send `batch` until it is accepted or rejected (true), or the
    /// shutdown flush runs out of time (false: the batch is dropped).
    async fn deliver(&mut self, batch: &[Stamped]) -> bool {
        let time_ms = crate::clock::now_ms();
        let encoded = match self.format {
            Format::Gateway => serde_json::to_vec(&Body {
                time_ms,
                node: &self.node,
                events: batch,
            }),
            Format::Pusher { .. } => super::pusher::body(time_ms, batch),
        };
        let body = match encoded {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                // Our fault: an event that does not serialize.
                tracing::error!(error = %e, events = batch.len(), "cannot encode a webhook batch; dropped");
                self.counters.dropped_rejected.increment(batch.len() as u64);
                return true;
            }
        };
        let mut backoff = Backoff {
            initial: self.retry_initial,
            max: self.retry_max,
            attempt: 0,
        };
        loop {
            match self.attempt(&body).await {
                Outcome::Ok => {
                    self.counters.ok.increment(1);
                    self.recovered();
                    self.rejecting = None;
                    return true;
                }
                Outcome::Rejected(status) => {
                    self.counters.rejected.increment(1);
                    self.counters.dropped_rejected.increment(batch.len() as u64);
                    self.recovered();
                    if self.rejecting != Some(status) {
                        tracing::warn!(
                            status,
                            events = batch.len(),
                            "webhook endpoint rejected a batch; its events are dropped, not retried"
                        );
                        self.rejecting = Some(status);
                    } else {
                        tracing::debug!(status, events = batch.len(), "webhook batch rejected");
                    }
                    return true;
                }
                Outcome::Retry(why) => {
                    self.counters.retry.increment(1);
                    self.failed(&why);
                    let until = Instant::now() + backoff.next();
                    if self.flush_deadline.is_none() {
                        tokio::select! {
                            () = tokio::time::sleep_until(until) => {}
                            () = self.token.cancelled() => self.start_flush(),
                        }
                    }
                    if let Some(deadline) = self.flush_deadline {
                        if until >= deadline {
                            self.counters.dropped_shutdown.increment(batch.len() as u64);
                            tracing::warn!(
                                events = batch.len(),
                                "webhook delivery still failing at the end of the shutdown flush; batch dropped"
                            );
                            return false;
                        }
                        tokio::time::sleep_until(until).await;
                    }
                }
            }
        }
    }

    /// One signed POST of `body`.
    async fn attempt(&self, body: &Bytes) -> Outcome {
        let signing = match self.format {
            Format::Gateway => {
                let timestamp = crate::clock::now_ms().to_string();
                let signature = signature(&self.key, &timestamp, body);
                vec![(TIMESTAMP_HEADER, timestamp), (SIGNATURE_HEADER, signature)]
            }
            Format::Pusher { .. } => {
                let signature = crate::pusher::sign::hmac_hex(&self.secret, &[body]);
                vec![(super::pusher::SIGNATURE_HEADER, signature)]
            }
        };
        let mut timeout = self.timeout;
        if let Some(deadline) = self.flush_deadline {
            timeout = timeout.min(deadline.saturating_duration_since(Instant::now()));
            if timeout.is_zero() {
                return Outcome::Retry("shutdown flush ran out of time".to_owned());
            }
        }
        let started = Instant::now();
        let mut request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone());
        for (name, value) in signing {
            request = request.header(name, value);
        }
        let sent = request.timeout(timeout).body(body.clone()).send().await;
        let outcome = match sent {
            Err(e) => Outcome::Retry(e.without_url().to_string()),
            Ok(mut response) => {
                let status = response.status();
                // Read a little of the answer so the connection is reused.
                let mut read = 0;
                while read < MAX_RESPONSE_BYTES {
                    match response.chunk().await {
                        Ok(Some(chunk)) => read += chunk.len(),
                        _ => break,
                    }
                }
                let code = status.as_u16();
                if status.is_success() {
                    Outcome::Ok
                } else if code == 408 || code == 429 || status.is_server_error() {
                    Outcome::Retry(format!("status {code}"))
                } else {
                    Outcome::Rejected(code)
                }
            }
        };
        self.counters
            .seconds
            .record(started.elapsed().as_secs_f64());
        outcome
    }

    /// A retryable failure: warn on the first of a series.
    fn failed(&mut self, why: &str) {
        match &mut self.failing {
            Some((_, attempts)) => {
                *attempts += 1;
                tracing::debug!(error = why, attempts = *attempts, "webhook attempt failed");
            }
            None => {
                tracing::warn!(
                    url = %redacted(&self.url),
                    error = why,
                    "webhook delivery failing; retrying with backoff (events queue meanwhile)"
                );
                self.failing = Some((Instant::now(), 1));
            }
        }
    }

    /// The endpoint answered: info if it was failing.
    fn recovered(&mut self) {
        if let Some((since, attempts)) = self.failing.take() {
            tracing::info!(
                failed_ms = since.elapsed().as_millis() as u64,
                failed_attempts = attempts,
                "webhook delivery recovered"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_over_timestamp_dot_body() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"key");
        // HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog"),
        // the published test vector, split at its one natural cut.
        let s = signature(&key, "The quick brown fox jumps over the lazy dog", b"");
        let direct = hmac::sign(&key, b"The quick brown fox jumps over the lazy dog.");
        let hex: String = direct.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(s, format!("sha256={hex}"));
        let vector = hmac::sign(&key, b"The quick brown fox jumps over the lazy dog");
        let hex: String = vector.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
        // The vector docs/backend.md's Python and Node snippets compute.
        assert_eq!(
            signature(&key, "1700000000000", br#"{"events":[]}"#),
            "sha256=3370e449c8aa4b1816f06780f8cbf8d0ebc7865f656a7f66332720a5fa026f04"
        );
        let a = signature(&key, "1700000000000", br#"{"events":[]}"#);
        let b = signature(&key, "1700000000001", br#"{"events":[]}"#);
        assert_ne!(a, b, "the timestamp is signed");
        assert_eq!(a.len(), 7 + 64);
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let mut b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            attempt: 0,
        };
        let first = b.next();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        let second = b.next();
        assert!(second >= Duration::from_millis(100) && second <= Duration::from_millis(200));
        let mut last = Duration::ZERO;
        for _ in 0..40 {
            last = b.next();
            assert!(last <= Duration::from_secs(10));
        }
        assert!(last >= Duration::from_secs(5));
    }

    #[test]
    fn redacted_drops_userinfo() {
        let u = reqwest::Url::parse("https://me:pw@example.com/h?x=1").unwrap();
        assert_eq!(redacted(&u), "https://example.com/h?x=1");
    }
}
