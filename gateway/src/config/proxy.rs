//! The proxy settings (docs/backend.md, "Proxy"): which application backend
//! URL answers each hook, its timeout and concurrency bound, and which
//! request headers of the upgrade are forwarded. File only (a `[proxy]`
//! table); with no table nothing is proxied and the node behaves as before.

use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError};

/// Default timeout of one hook request, ms.
pub const DEFAULT_TIMEOUT_MS: u64 = 1000;
/// Default concurrent requests per hook (per node).
pub const DEFAULT_MAX_CONCURRENCY: usize = 256;

/// One hook as the file gives it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HookSettings {
    /// Backend URL (http or https); required.
    pub url: String,
    /// Timeout of one request (connect, send, whole answer), ms. Default 1000.
    pub timeout_ms: Option<u64>,
    /// Requests in flight at once on this node; past it a request is
    /// answered `unavailable` at once. Default 256.
    pub max_concurrency: Option<usize>,
}

/// The `[proxy]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxySettings {
    /// Connect hook (`[proxy.connect]`).
    pub connect: Option<HookSettings>,
    /// Session refresh hook.
    pub refresh: Option<HookSettings>,
    /// Client subscribe hook.
    pub subscribe: Option<HookSettings>,
    /// Client publish hook.
    pub publish: Option<HookSettings>,
    /// Client `rpc` op hook.
    pub rpc: Option<HookSettings>,
    /// Extra upgrade request headers forwarded to the connect hook
    /// (`Cookie` and `Authorization` always are).
    pub headers: Vec<String>,
}

/// One validated hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// Backend URL.
    pub url: String,
    /// Timeout of one request.
    pub timeout: Duration,
    /// Requests in flight at once (>= 1).
    pub max_concurrency: usize,
}

/// Validated proxy settings; every hook `None` unless configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Connect hook.
    pub connect: Option<Hook>,
    /// Session refresh hook.
    pub refresh: Option<Hook>,
    /// Client subscribe hook.
    pub subscribe: Option<Hook>,
    /// Client publish hook.
    pub publish: Option<Hook>,
    /// Client `rpc` hook.
    pub rpc: Option<Hook>,
    /// Forwarded headers, lower case: `cookie`, `authorization` and the
    /// configured ones.
    pub headers: Vec<String>,
}

fn hook(h: Option<HookSettings>, setting: &'static str) -> Result<Option<Hook>, ConfigError> {
    let Some(h) = h else {
        return Ok(None);
    };
    if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
        return Err(invalid(setting, "url must start with http:// or https://"));
    }
    let timeout_ms = h.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if !(1..=60_000).contains(&timeout_ms) {
        return Err(invalid(setting, "timeout_ms must be between 1 and 60000"));
    }
    let max_concurrency = h.max_concurrency.unwrap_or(DEFAULT_MAX_CONCURRENCY);
    if !(1..=100_000).contains(&max_concurrency) {
        return Err(invalid(
            setting,
            "max_concurrency must be between 1 and 100000",
        ));
    }
    Ok(Some(Hook {
        url: h.url,
        timeout: Duration::from_millis(timeout_ms),
        max_concurrency,
    }))
}

impl ProxyConfig {
    /// Validate the file's `[proxy]` table (absent: nothing proxied).
    pub fn merge(file: Option<ProxySettings>) -> Result<Self, ConfigError> {
        let s = file.unwrap_or_default();
        let mut headers = vec!["cookie".to_owned(), "authorization".to_owned()];
        for h in &s.headers {
            let h = h.to_ascii_lowercase();
            if h.is_empty() || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(invalid(
                    "proxy.headers",
                    format!("{h:?} is not a header name"),
                ));
            }
            if !headers.contains(&h) {
                headers.push(h);
            }
        }
        Ok(Self {
            connect: hook(s.connect, "proxy.connect")?,
            refresh: hook(s.refresh, "proxy.refresh")?,
            subscribe: hook(s.subscribe, "proxy.subscribe")?,
            publish: hook(s.publish, "proxy.publish")?,
            rpc: hook(s.rpc, "proxy.rpc")?,
            headers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_is_off_and_defaults_apply() {
        let c = ProxyConfig::merge(None).unwrap();
        assert!(c.connect.is_none() && c.rpc.is_none());
        let s: ProxySettings =
            toml::from_str("headers = [\"X-Tenant\"]\n[connect]\nurl = \"http://127.0.0.1:1/c\"\n")
                .unwrap();
        let c = ProxyConfig::merge(Some(s)).unwrap();
        let h = c.connect.unwrap();
        assert_eq!(h.timeout, Duration::from_millis(1000));
        assert_eq!(h.max_concurrency, 256);
        assert_eq!(c.headers, ["cookie", "authorization", "x-tenant"]);
    }

    #[test]
    fn bad_values_are_refused() {
        let bad = |t: &str| ProxyConfig::merge(Some(toml::from_str(t).unwrap())).is_err();
        assert!(bad("[rpc]\nurl = \"ftp://x\"\n"));
        assert!(bad("[rpc]\nurl = \"http://x\"\ntimeout_ms = 0\n"));
        assert!(bad("[rpc]\nurl = \"http://x\"\nmax_concurrency = 0\n"));
        assert!(bad("headers = [\"a b\"]\n"));
    }
}
