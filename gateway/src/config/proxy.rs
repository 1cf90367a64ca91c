//! The proxy settings (docs/backend.md, "Proxy"): which application backend
//! URL answers each hook, its timeout and concurrency bound, and which
//! request headers of the upgrade are forwarded. File only (a `[proxy]`
//! table); with no table nothing is proxied and the node behaves as before.
//! A namespace may give its channels' subscribe and publish hooks their own
//! backend, or turn the global one off (`[namespaces.<ns>.proxy]`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError};

/// Default timeout of one hook request, ms.
pub const DEFAULT_TIMEOUT_MS: u64 = 1000;
/// Default concurrent requests per hook (per node).
pub const DEFAULT_MAX_CONCURRENCY: usize = 256;

/// One hook as the file gives it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
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

/// A namespace's channel hook as the file gives it: a table (this
/// namespace's own backend) or `false` (no hook for its channels, even
/// with a global one).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum NamespaceHookSettings {
    /// `false`: off for this namespace (`true` is refused: omit it).
    Enabled(bool),
    /// This namespace's own hook.
    Own(HookSettings),
}

/// The `[namespaces.<ns>.proxy]` table: absent hooks use the global
/// `[proxy.<hook>]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceProxySettings {
    /// Subscribe hook of the namespace's channels.
    pub subscribe: Option<NamespaceHookSettings>,
    /// Publish hook of the namespace's channels.
    pub publish: Option<NamespaceHookSettings>,
}

/// Which backend answers one channel hook for a namespace (`H`: the
/// validated [`Hook`] here, the proxy's live endpoint at run time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookRoute<H = Hook> {
    /// The global `[proxy.<hook>]` (none when it is not configured).
    Global,
    /// No hook for this namespace.
    Off,
    /// The namespace's own.
    Own(H),
}

/// A namespace's validated channel hook routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceHooks {
    /// Subscribe hook.
    pub subscribe: HookRoute,
    /// Publish hook.
    pub publish: HookRoute,
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
    /// Namespaces (by name, "" for the default namespace) whose channel
    /// hooks differ from the global ones.
    pub namespaces: BTreeMap<String, NamespaceHooks>,
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

fn route(
    h: Option<NamespaceHookSettings>,
    namespace: &str,
    hook_name: &str,
) -> Result<HookRoute, ConfigError> {
    let at = if namespace.is_empty() {
        format!("default_namespace.proxy.{hook_name}")
    } else {
        format!("{namespace}.proxy.{hook_name}")
    };
    match h {
        None => Ok(HookRoute::Global),
        Some(NamespaceHookSettings::Enabled(false)) => Ok(HookRoute::Off),
        Some(NamespaceHookSettings::Enabled(true)) => Err(invalid(
            "namespaces",
            format!(
                "{at}: true is the default (the global hook): omit it, or give a table with url"
            ),
        )),
        // `hook` names `proxy` in its errors; name this one instead.
        Some(NamespaceHookSettings::Own(h)) => match hook(Some(h), "proxy") {
            Ok(h) => Ok(h.map_or(HookRoute::Global, HookRoute::Own)),
            Err(ConfigError::Invalid { message, .. }) => {
                Err(invalid("namespaces", format!("{at}: {message}")))
            }
            Err(e) => Err(e),
        },
    }
}

impl ProxyConfig {
    /// Validate the file's `[proxy]` table (absent: nothing proxied) and
    /// the namespaces' `proxy` tables (`namespaces`: name and settings, ""
    /// for the default namespace).
    pub fn merge<'a>(
        file: Option<ProxySettings>,
        namespaces: impl IntoIterator<Item = (&'a str, &'a NamespaceProxySettings)>,
    ) -> Result<Self, ConfigError> {
        let mut routes = BTreeMap::new();
        for (name, ns) in namespaces {
            let hooks = NamespaceHooks {
                subscribe: route(ns.subscribe.clone(), name, "subscribe")?,
                publish: route(ns.publish.clone(), name, "publish")?,
            };
            if hooks.subscribe != HookRoute::Global || hooks.publish != HookRoute::Global {
                routes.insert(name.to_owned(), hooks);
            }
        }
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
            namespaces: routes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_is_off_and_defaults_apply() {
        let c = ProxyConfig::merge(None, []).unwrap();
        assert!(c.connect.is_none() && c.rpc.is_none());
        let s: ProxySettings =
            toml::from_str("headers = [\"X-Tenant\"]\n[connect]\nurl = \"http://127.0.0.1:1/c\"\n")
                .unwrap();
        let c = ProxyConfig::merge(Some(s), []).unwrap();
        let h = c.connect.unwrap();
        assert_eq!(h.timeout, Duration::from_millis(1000));
        assert_eq!(h.max_concurrency, 256);
        assert_eq!(c.headers, ["cookie", "authorization", "x-tenant"]);
    }

    #[test]
    fn bad_values_are_refused() {
        let bad = |t: &str| ProxyConfig::merge(Some(toml::from_str(t).unwrap()), []).is_err();
        assert!(bad("[rpc]\nurl = \"ftp://x\"\n"));
        assert!(bad("[rpc]\nurl = \"http://x\"\ntimeout_ms = 0\n"));
        assert!(bad("[rpc]\nurl = \"http://x\"\nmax_concurrency = 0\n"));
        assert!(bad("headers = [\"a b\"]\n"));
    }

    #[test]
    fn a_namespace_routes_its_channel_hooks() {
        let ns = |t: &str| -> NamespaceProxySettings { toml::from_str(t).unwrap() };
        let own =
            ns("subscribe = false\n[publish]\nurl = \"http://127.0.0.1:1/p\"\ntimeout_ms = 50\n");
        let plain = ns("");
        let c = ProxyConfig::merge(None, [("orders", &own), ("chat", &plain)]).unwrap();
        assert_eq!(
            c.namespaces.len(),
            1,
            "a namespace without its own is not listed"
        );
        let o = &c.namespaces["orders"];
        assert_eq!(o.subscribe, HookRoute::Off);
        let HookRoute::Own(p) = &o.publish else {
            panic!("{:?}", o.publish)
        };
        assert_eq!(p.timeout, Duration::from_millis(50));
        let err = |t: &str| {
            ProxyConfig::merge(None, [("orders", &ns(t))])
                .unwrap_err()
                .to_string()
        };
        assert!(err("subscribe = true\n").contains("orders.proxy.subscribe"));
        assert!(err("[publish]\nurl = \"ftp://x\"\n").contains("orders.proxy.publish: url"));
        assert!(toml::from_str::<NamespaceProxySettings>("rpc = false\n").is_err());
    }
}
