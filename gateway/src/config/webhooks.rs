//! The webhook settings of the configuration: where the node POSTs its
//! events, how it signs them, which events it sends, how it batches, queues
//! and retries (docs/backend.md, "Webhooks"), merged from the CLI/env and
//! the file and validated.
//!
//! Invariant: `url` set implies `secret` set (at least 16 bytes); the
//! secret and the URL's password never appear in `Debug`.

use std::fmt;
use std::time::Duration;

use super::{invalid, ConfigError, Settings, MAX_MS};
use crate::webhooks::names::{EventFilter, NAMES};

/// Minimum length of `webhook_secret`, bytes.
const MIN_SECRET: usize = 16;

/// Headers the node sets itself (not allowed in `webhook_headers`).
const RESERVED_HEADERS: [&str; 5] = [
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
];

/// Validated webhook settings. Without `url`, webhooks are off and every
/// other field keeps its default.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Endpoint (http or https); `None`: webhooks are off.
    pub url: Option<String>,
    /// HMAC-SHA256 key of the signature (set whenever `url` is).
    pub secret: Option<String>,
    /// Event names sent (client_publish additionally needs its namespace's
    /// `webhook_client_publish`). Default: all of them.
    pub events: EventFilter,
    /// Max events in one request. Default 100.
    pub batch_max_events: usize,
    /// Max time the first event of a batch waits for company. Default 100 ms.
    pub batch_max_wait: Duration,
    /// Max events held (queued plus the batch in flight). Default 10000.
    pub queue_size: usize,
    /// Max bytes of held events ([`crate::webhooks::Event::weight`]).
    /// Default 64 MiB.
    pub queue_bytes: usize,
    /// Timeout of one request. Default 5 s.
    pub timeout: Duration,
    /// First retry delay (doubled per failure, jittered). Default 100 ms.
    pub retry_initial: Duration,
    /// Max retry delay. Default 10 s.
    pub retry_max: Duration,
    /// On shutdown, time left to deliver what is queued. Default 5 s.
    pub flush_timeout: Duration,
    /// Extra request headers (name, value).
    pub headers: Vec<(String, String)>,
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = self.url.as_deref().map(redact_url);
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("WebhookConfig")
            .field("url", &url)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("events", &self.events)
            .field("batch_max_events", &self.batch_max_events)
            .field("batch_max_wait", &self.batch_max_wait)
            .field("queue_size", &self.queue_size)
            .field("queue_bytes", &self.queue_bytes)
            .field("timeout", &self.timeout)
            .field("retry_initial", &self.retry_initial)
            .field("retry_max", &self.retry_max)
            .field("flush_timeout", &self.flush_timeout)
            .field("headers (values redacted)", &names)
            .finish()
    }
}

/// The URL without its userinfo (which may hold a password).
fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => "<unparsable>".to_owned(),
    }
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            url: None,
            secret: None,
            events: EventFilter::ALL,
            batch_max_events: 100,
            batch_max_wait: Duration::from_millis(100),
            queue_size: 10_000,
            queue_bytes: 64 << 20,
            timeout: Duration::from_secs(5),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
            flush_timeout: Duration::from_secs(5),
            headers: Vec::new(),
        }
    }
}

/// `v` or `default`, ms, between `min` and `max` (inclusive).
fn ms_range(
    v: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
    setting: &'static str,
) -> Result<Duration, ConfigError> {
    let v = v.unwrap_or(default);
    if (min..=max).contains(&v) {
        Ok(Duration::from_millis(v))
    } else {
        Err(invalid(setting, format!("must be between {min} and {max}")))
    }
}

/// `v` or `default`, between `min` and `max` (inclusive).
fn range(
    v: Option<usize>,
    default: usize,
    min: usize,
    max: usize,
    setting: &'static str,
) -> Result<usize, ConfigError> {
    let v = v.unwrap_or(default);
    if (min..=max).contains(&v) {
        Ok(v)
    } else {
        Err(invalid(setting, format!("must be between {min} and {max}")))
    }
}

impl WebhookConfig {
    /// Layers `s` (CLI + env) over `f` (the file) and the defaults, then
    /// validates.
    pub(super) fn merge(s: &Settings, f: &Settings) -> Result<Self, ConfigError> {
        macro_rules! pick {
            ($field:ident) => {
                s.$field.clone().or_else(|| f.$field.clone())
            };
        }
        let url = pick!(webhook_url).filter(|u| !u.is_empty());
        if let Some(u) = &url {
            let parsed = reqwest::Url::parse(u)
                .map_err(|e| invalid("webhook_url", format!("not a URL ({e})")))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err(invalid(
                    "webhook_url",
                    "must be an http:// or https:// URL with a host",
                ));
            }
        }
        let secret = pick!(webhook_secret).filter(|v| !v.is_empty());
        match (&url, &secret) {
            (Some(_), None) => {
                return Err(invalid(
                    "webhook_secret",
                    "is required when webhook_url is set",
                ))
            }
            (_, Some(v)) if v.len() < MIN_SECRET => {
                return Err(invalid(
                    "webhook_secret",
                    format!("must be at least {MIN_SECRET} bytes"),
                ))
            }
            _ => {}
        }
        let events = match pick!(webhook_events) {
            None => EventFilter::ALL,
            Some(names) => {
                let mut filter = EventFilter::NONE;
                for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
                    filter = filter.with(name).ok_or_else(|| {
                        invalid(
                            "webhook_events",
                            format!("unknown event {name:?} (known: {})", NAMES.join(", ")),
                        )
                    })?;
                }
                filter
            }
        };
        let batch_max_events = range(
            pick!(webhook_batch_max_events),
            100,
            1,
            10_000,
            "webhook_batch_max_events",
        )?;
        let batch_max_wait = ms_range(
            pick!(webhook_batch_max_wait_ms),
            100,
            0,
            60_000,
            "webhook_batch_max_wait_ms",
        )?;
        let queue_size = range(
            pick!(webhook_queue_size),
            10_000,
            1,
            10_000_000,
            "webhook_queue_size",
        )?;
        let queue_bytes = range(
            pick!(webhook_queue_bytes),
            64 << 20,
            1 << 20,
            1 << 40,
            "webhook_queue_bytes",
        )?;
        let timeout = ms_range(
            pick!(webhook_timeout_ms),
            5_000,
            1,
            300_000,
            "webhook_timeout_ms",
        )?;
        let retry_initial = ms_range(
            pick!(webhook_retry_initial_ms),
            100,
            1,
            MAX_MS,
            "webhook_retry_initial_ms",
        )?;
        let retry_max = ms_range(
            pick!(webhook_retry_max_ms),
            10_000,
            1,
            MAX_MS,
            "webhook_retry_max_ms",
        )?;
        if retry_max < retry_initial {
            return Err(invalid(
                "webhook_retry_max_ms",
                "must be at least webhook_retry_initial_ms",
            ));
        }
        let flush_timeout = ms_range(
            pick!(webhook_flush_timeout_ms),
            5_000,
            0,
            MAX_MS,
            "webhook_flush_timeout_ms",
        )?;
        let headers = pick!(webhook_headers)
            .unwrap_or_default()
            .iter()
            .map(|h| h.trim())
            .filter(|h| !h.is_empty())
            .map(parse_header)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            url,
            secret,
            events,
            batch_max_events,
            batch_max_wait,
            queue_size,
            queue_bytes,
            timeout,
            retry_initial,
            retry_max,
            flush_timeout,
            headers,
        })
    }
}

/// One `Name: value` of `webhook_headers`.
fn parse_header(h: &str) -> Result<(String, String), ConfigError> {
    let Some((name, value)) = h.split_once(':') else {
        return Err(invalid(
            "webhook_headers",
            "each header must be `Name: value`",
        ));
    };
    let (name, value) = (name.trim(), value.trim());
    let parsed = reqwest::header::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| invalid("webhook_headers", format!("bad header name {name:?}")))?;
    if RESERVED_HEADERS.contains(&parsed.as_str()) || parsed.as_str().starts_with("x-gateway-") {
        return Err(invalid(
            "webhook_headers",
            format!("{name:?} is set by the gateway"),
        ));
    }
    reqwest::header::HeaderValue::from_str(value)
        .map_err(|_| invalid("webhook_headers", format!("bad value of header {name:?}")))?;
    Ok((parsed.as_str().to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn merge(args: &[&str]) -> Result<WebhookConfig, ConfigError> {
        let mut v = vec!["gateway"];
        v.extend_from_slice(args);
        let s = Settings::try_parse_from(v).map_err(|e| ConfigError::Args(e.to_string()))?;
        WebhookConfig::merge(&s, &Settings::default())
    }

    fn err(args: &[&str]) -> String {
        match merge(args) {
            Ok(c) => format!("accepted: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    const URL: &str = "--webhook-url=http://127.0.0.1:9/hook";
    const SECRET: &str = "--webhook-secret=0123456789abcdef";

    #[test]
    fn defaults_are_documented_values() {
        let c = merge(&[]).unwrap();
        assert_eq!(c, WebhookConfig::default());
        assert_eq!(c.url, None);
        assert_eq!(c.batch_max_events, 100);
        assert_eq!(c.batch_max_wait, Duration::from_millis(100));
        assert_eq!(c.queue_size, 10_000);
        assert_eq!(c.queue_bytes, 64 << 20);
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.retry_initial, Duration::from_millis(100));
        assert_eq!(c.retry_max, Duration::from_secs(10));
        assert_eq!(c.flush_timeout, Duration::from_secs(5));
        assert_eq!(c.events, EventFilter::ALL);
    }

    #[test]
    fn bad_values_name_the_setting() {
        assert!(err(&[URL]).contains("`webhook_secret`"), "{}", err(&[URL]));
        let short = err(&[URL, "--webhook-secret=short"]);
        assert!(short.contains("`webhook_secret`"), "{short}");
        let e = err(&["--webhook-url=ftp://x/y", SECRET]);
        assert!(e.contains("`webhook_url`"), "{e}");
        let e = err(&["--webhook-url=nope", SECRET]);
        assert!(e.contains("`webhook_url`"), "{e}");
        let e = err(&[URL, SECRET, "--webhook-events=connection_closed,nope"]);
        assert!(e.contains("`webhook_events`") && e.contains("nope"), "{e}");
        let e = err(&[URL, SECRET, "--webhook-batch-max-events=0"]);
        assert!(e.contains("`webhook_batch_max_events`"), "{e}");
        let e = err(&[URL, SECRET, "--webhook-queue-size=0"]);
        assert!(e.contains("`webhook_queue_size`"), "{e}");
        let e = err(&[URL, SECRET, "--webhook-queue-bytes=1000"]);
        assert!(e.contains("`webhook_queue_bytes`"), "{e}");
        let e = err(&[
            URL,
            SECRET,
            "--webhook-retry-initial-ms=500",
            "--webhook-retry-max-ms=100",
        ]);
        assert!(e.contains("`webhook_retry_max_ms`"), "{e}");
        let e = err(&[URL, SECRET, "--webhook-headers=NoColon"]);
        assert!(e.contains("`webhook_headers`"), "{e}");
        let e = err(&[URL, SECRET, "--webhook-headers=Content-Type: text/plain"]);
        assert!(e.contains("`webhook_headers`"), "{e}");
        let e = err(&[URL, SECRET, "--webhook-headers=X-Gateway-Signature: x"]);
        assert!(e.contains("`webhook_headers`"), "{e}");
    }

    #[test]
    fn events_headers_and_redaction() {
        let c = merge(&[
            "--webhook-url=https://user:hunter2@example.com/hook",
            SECRET,
            "--webhook-events=connection_closed, client_publish",
            "--webhook-headers=X-Api-Key: s3cr3t-value,X-Env: prod",
        ])
        .unwrap();
        assert!(c.events.contains(NAMES[5]));
        assert!(c.events.contains("client_publish"));
        assert!(!c.events.contains("channel_occupied"));
        assert_eq!(
            c.headers,
            vec![
                ("x-api-key".to_owned(), "s3cr3t-value".to_owned()),
                ("x-env".to_owned(), "prod".to_owned())
            ]
        );
        let shown = format!("{c:?}");
        for secret in ["0123456789abcdef", "hunter2", "s3cr3t-value", "prod"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("example.com"), "{shown}");
    }
}
