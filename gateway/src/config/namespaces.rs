//! Channel namespace options (`[namespaces.<name>]` and
//! `[default_namespace]` in the file) and their validation.

use std::time::Duration;

use serde::Deserialize;

use super::proxy::NamespaceProxySettings;
use super::{invalid, ConfigError};

/// Options of a channel namespace (the part of a channel name before `:`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceOptions {
    /// Track members; the `presence` op and HTTP presence work. Default false.
    pub presence: bool,
    /// Push `join`/`leave` to subscribers (implies presence). Default false.
    pub join_leave: bool,
    /// Publications kept per channel; 0 disables history. Default 0.
    pub history_size: usize,
    /// History expires this long after the last publication. Default 300.
    pub history_ttl_secs: u64,
    /// Clients may publish (otherwise only the HTTP API). Default false.
    pub client_publish: bool,
    /// Connections without a user may subscribe. Default false.
    pub allow_anonymous: bool,
    /// With history and Redis: a publish is acknowledged only once this
    /// many replicas confirm it (Redis `WAIT`); fewer within the wait
    /// answer `unavailable`, although the publication is already live and
    /// in the primary's history ("maybe published"). 0 (the default) does
    /// not wait. docs/configuration.md, docs/redis.md.
    pub history_min_replicas: usize,
    /// Send a `client_publish` webhook after each client publish (when
    /// webhooks are on). Default false (docs/backend.md, "Webhooks").
    pub webhook_client_publish: bool,
    /// This namespace's own subscribe and publish hooks, or `false` to
    /// turn the global one off (`[namespaces.<ns>.proxy]`; docs/backend.md,
    /// "Proxy"). Default: the global hooks.
    pub proxy: NamespaceProxySettings,
}

impl Default for NamespaceOptions {
    fn default() -> Self {
        Self {
            presence: false,
            join_leave: false,
            history_size: 0,
            history_ttl_secs: 300,
            client_publish: false,
            allow_anonymous: false,
            history_min_replicas: 0,
            webhook_client_publish: false,
            proxy: NamespaceProxySettings::default(),
        }
    }
}

impl NamespaceOptions {
    /// Whether members are tracked (`presence` or `join_leave`).
    pub fn tracks_presence(&self) -> bool {
        self.presence || self.join_leave
    }

    /// History settings for a publish, `None` when history is off.
    pub fn history(&self) -> Option<crate::backplane::HistoryOptions> {
        (self.history_size > 0).then(|| crate::backplane::HistoryOptions {
            size: self.history_size,
            ttl: Duration::from_secs(self.history_ttl_secs),
            min_replicas: self.history_min_replicas,
        })
    }
}

impl NamespaceOptions {
    /// Check the options of namespace `name` (`""`: the default one);
    /// `has_redis`: a Redis topology is configured.
    pub(super) fn validate(&self, name: &str, has_redis: bool) -> Result<(), ConfigError> {
        let opts = self;
        if !name.is_empty() && !crate::protocol::valid_namespace(name) {
            return Err(invalid(
                "namespaces",
                format!("bad namespace name {name:?}"),
            ));
        }
        if opts.history_size > 0 && opts.history_ttl_secs == 0 {
            return Err(invalid(
                "namespaces",
                format!("{name:?}: history_ttl_secs must be > 0"),
            ));
        }
        if opts.history_ttl_secs > 366 * 86_400 {
            return Err(invalid(
                "namespaces",
                format!("{name:?}: history_ttl_secs above a year"),
            ));
        }
        if opts.history_size > 1_000_000 {
            return Err(invalid(
                "namespaces",
                format!("{name:?}: history_size above 1000000"),
            ));
        }
        if opts.history_min_replicas > 0 && (opts.history_size == 0 || !has_redis) {
            return Err(invalid(
                "namespaces",
                format!(
                    "{name:?}: history_min_replicas needs history (history_size > 0) and Redis (redis_url, a cluster or sentinel)"
                ),
            ));
        }
        if opts.history_min_replicas > 100 {
            return Err(invalid(
                "namespaces",
                format!("{name:?}: history_min_replicas above 100"),
            ));
        }
        Ok(())
    }
}
