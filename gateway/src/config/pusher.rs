//! The Pusher apps of the configuration (docs/pusher.md): `[[pusher.apps]]`
//! in the file, or one app from `GATEWAY_PUSHER_APP_ID` / `_KEY` /
//! `_SECRET`, validated once.
//!
//! Invariants: app ids and keys are unique; every app has a secret of at
//! least 8 bytes; secrets never appear in `Debug`.

use std::fmt;

use serde::Deserialize;

use super::{invalid, ConfigError, Settings};

/// `[pusher]` in the file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PusherSettings {
    /// The apps, `[[pusher.apps]]`.
    pub apps: Vec<AppSettings>,
    /// Seconds announced as `activity_timeout` (the client pings after
    /// this much silence). Default 30.
    pub activity_timeout_secs: Option<u64>,
}

/// One `[[pusher.apps]]` entry as written.
#[derive(Default, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppSettings {
    /// `app_id` (REST paths `/apps/{id}`).
    pub id: String,
    /// The public key (`/app/{key}`, `auth_key`).
    pub key: String,
    /// The HMAC-SHA256 secret.
    pub secret: String,
    /// Clients may send `client-*` events. Default false.
    pub client_events: bool,
    /// Connections must sign in (`pusher:signin`) within
    /// `user_auth_timeout_ms`. Default false.
    pub user_authentication: bool,
    /// Default 30000.
    pub user_auth_timeout_ms: Option<u64>,
    /// Connections of this app per node; 0 (default): only the node's limit.
    pub max_connections: usize,
    /// Client events per second per connection (also the burst). Default 10.
    pub client_event_rate: Option<u32>,
    /// Members of one presence channel. Default 100.
    pub max_presence_members: Option<usize>,
    /// Bytes of one member's `user_info`. Default 1024.
    pub max_presence_member_bytes: Option<usize>,
    /// Bytes of one event's data (REST and client events). Default 10240.
    pub max_event_bytes: Option<usize>,
    /// Channels of one REST event. Default 100.
    pub max_event_channels: Option<usize>,
    /// Events of one batch. Default 10.
    pub max_batch_events: Option<usize>,
    /// Webhook endpoint of this app (Pusher's format); none: off.
    pub webhook_url: Option<String>,
    /// Webhook events sent. Default: all.
    pub webhook_events: Option<Vec<String>>,
}

impl fmt::Debug for AppSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppSettings")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Every Pusher webhook event name.
pub const WEBHOOK_EVENTS: [&str; 5] = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
];

/// One validated app.
#[derive(Clone, PartialEq, Eq)]
pub struct AppConfig {
    /// `app_id`: 1-64 of `[A-Za-z0-9_-]`.
    pub id: String,
    /// Key: 1-64 of `[A-Za-z0-9_-]`.
    pub key: String,
    /// Secret (>= 8 bytes).
    pub secret: String,
    /// Clients may send client events.
    pub client_events: bool,
    /// Connections must sign in within `user_auth_timeout`.
    pub user_authentication: bool,
    /// See [`AppSettings::user_auth_timeout_ms`].
    pub user_auth_timeout: std::time::Duration,
    /// Connections per node; 0: no app limit.
    pub max_connections: usize,
    /// Client events per second per connection.
    pub client_event_rate: u32,
    /// Members of one presence channel.
    pub max_presence_members: usize,
    /// Bytes of one member's `user_info`.
    pub max_presence_member_bytes: usize,
    /// Bytes of one event's data.
    pub max_event_bytes: usize,
    /// Channels of one REST event.
    pub max_event_channels: usize,
    /// Events of one batch.
    pub max_batch_events: usize,
    /// Webhook endpoint (http or https).
    pub webhook_url: Option<String>,
    /// Webhook events sent (a subset of [`WEBHOOK_EVENTS`]).
    pub webhook_events: Vec<&'static str>,
}

impl fmt::Debug for AppConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppConfig")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .field("client_events", &self.client_events)
            .field("user_authentication", &self.user_authentication)
            .field("webhook_url", &self.webhook_url.is_some())
            .finish_non_exhaustive()
    }
}

/// The validated Pusher settings: no app means the Pusher endpoints are off.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PusherConfig {
    /// The apps, in configuration order.
    pub apps: Vec<AppConfig>,
    /// Announced `activity_timeout`, seconds.
    pub activity_timeout_secs: u64,
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl PusherConfig {
    /// Merge the env/CLI app (`cli`'s `pusher_app_*`) and the file's
    /// `[pusher]` (`file`), then validate.
    pub(super) fn merge(cli: &Settings, file: &Settings) -> Result<Self, ConfigError> {
        let table = cli
            .pusher
            .clone()
            .or(file.pusher.clone())
            .unwrap_or_default();
        let mut apps = table.apps;
        let id = cli.pusher_app_id.clone().or(file.pusher_app_id.clone());
        let key = cli.pusher_app_key.clone().or(file.pusher_app_key.clone());
        let secret = cli
            .pusher_app_secret
            .clone()
            .or(file.pusher_app_secret.clone());
        match (id, key, secret) {
            (Some(id), Some(key), Some(secret)) => apps.push(AppSettings {
                id,
                key,
                secret,
                client_events: cli
                    .pusher_client_events
                    .or(file.pusher_client_events)
                    .unwrap_or(false),
                ..AppSettings::default()
            }),
            (None, None, None) => {}
            _ => {
                return Err(invalid(
                    "pusher_app_id",
                    "pusher_app_id, pusher_app_key and pusher_app_secret go together",
                ))
            }
        }
        let activity_timeout_secs = table.activity_timeout_secs.unwrap_or(30);
        if !(1..=3600).contains(&activity_timeout_secs) {
            return Err(invalid(
                "pusher.activity_timeout_secs",
                "must be between 1 and 3600",
            ));
        }
        let mut out = Vec::with_capacity(apps.len());
        for a in apps {
            let app = Self::validate(a)?;
            if out.iter().any(|o: &AppConfig| o.id == app.id) {
                return Err(invalid(
                    "pusher.apps.id",
                    format!("app id {:?} appears twice", app.id),
                ));
            }
            if out.iter().any(|o: &AppConfig| o.key == app.key) {
                return Err(invalid(
                    "pusher.apps.key",
                    format!("app key {:?} appears twice", app.key),
                ));
            }
            out.push(app);
        }
        Ok(Self {
            apps: out,
            activity_timeout_secs,
        })
    }

    fn validate(a: AppSettings) -> Result<AppConfig, ConfigError> {
        if !valid_id(&a.id) {
            return Err(invalid(
                "pusher.apps.id",
                "must be 1-64 chars of [A-Za-z0-9_-]",
            ));
        }
        if !valid_id(&a.key) {
            return Err(invalid(
                "pusher.apps.key",
                "must be 1-64 chars of [A-Za-z0-9_-]",
            ));
        }
        if a.secret.len() < 8 {
            return Err(invalid(
                "pusher.apps.secret",
                format!("app {:?}: must be at least 8 bytes", a.id),
            ));
        }
        let bounded = |v: Option<usize>, default: usize, max: usize, setting: &'static str| {
            let v = v.unwrap_or(default);
            if v == 0 || v > max {
                return Err(invalid(setting, format!("must be between 1 and {max}")));
            }
            Ok(v)
        };
        let client_event_rate = a.client_event_rate.unwrap_or(10);
        if !(1..=10_000).contains(&client_event_rate) {
            return Err(invalid(
                "pusher.apps.client_event_rate",
                "must be between 1 and 10000",
            ));
        }
        let timeout_ms = a.user_auth_timeout_ms.unwrap_or(30_000);
        if !(100..=3_600_000).contains(&timeout_ms) {
            return Err(invalid(
                "pusher.apps.user_auth_timeout_ms",
                "must be between 100 and 3600000",
            ));
        }
        if let Some(url) = &a.webhook_url {
            let ok = reqwest::Url::parse(url)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !ok {
                return Err(invalid(
                    "pusher.apps.webhook_url",
                    format!("app {:?}: not an http(s) URL", a.id),
                ));
            }
        }
        let webhook_events = match &a.webhook_events {
            None => WEBHOOK_EVENTS.to_vec(),
            Some(names) => {
                let mut out = Vec::new();
                for n in names {
                    let Some(known) = WEBHOOK_EVENTS.iter().find(|k| **k == n.as_str()) else {
                        return Err(invalid(
                            "pusher.apps.webhook_events",
                            format!("unknown event {n:?}; known: {}", WEBHOOK_EVENTS.join(", ")),
                        ));
                    };
                    out.push(*known);
                }
                out
            }
        };
        Ok(AppConfig {
            max_presence_members: bounded(
                a.max_presence_members,
                100,
                100_000,
                "pusher.apps.max_presence_members",
            )?,
            max_presence_member_bytes: bounded(
                a.max_presence_member_bytes,
                1024,
                65_536,
                "pusher.apps.max_presence_member_bytes",
            )?,
            max_event_bytes: bounded(
                a.max_event_bytes,
                10_240,
                1 << 20,
                "pusher.apps.max_event_bytes",
            )?,
            max_event_channels: bounded(
                a.max_event_channels,
                100,
                1000,
                "pusher.apps.max_event_channels",
            )?,
            max_batch_events: bounded(
                a.max_batch_events,
                10,
                1000,
                "pusher.apps.max_batch_events",
            )?,
            id: a.id,
            key: a.key,
            secret: a.secret,
            client_events: a.client_events,
            user_authentication: a.user_authentication,
            user_auth_timeout: std::time::Duration::from_millis(timeout_ms),
            max_connections: a.max_connections,
            client_event_rate,
            webhook_url: a.webhook_url,
            webhook_events,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> Settings {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn apps_from_the_file_and_the_env_app_are_validated() {
        let f = file(
            "[[pusher.apps]]\nid = \"a1\"\nkey = \"k1\"\nsecret = \"s1s1s1s1\"\nclient_events = true\n",
        );
        let cli = Settings {
            pusher_app_id: Some("a2".into()),
            pusher_app_key: Some("k2".into()),
            pusher_app_secret: Some("s2s2s2s2".into()),
            ..Settings::default()
        };
        let c = PusherConfig::merge(&cli, &f).unwrap();
        assert_eq!(c.apps.len(), 2);
        assert!(c.apps[0].client_events);
        assert_eq!(c.apps[0].max_presence_members, 100);
        assert_eq!(c.apps[1].id, "a2");
        assert!(!format!("{c:?}").contains("s1s1"), "secret redacted");
    }

    #[test]
    fn bad_apps_name_the_setting() {
        for (text, setting) in [
            ("[[pusher.apps]]\nid = \"a b\"\nkey = \"k\"\nsecret = \"12345678\"\n", "pusher.apps.id"),
            ("[[pusher.apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"short\"\n", "pusher.apps.secret"),
            (
                "[[pusher.apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"12345678\"\n[[pusher.apps]]\nid = \"b\"\nkey = \"k\"\nsecret = \"12345678\"\n",
                "pusher.apps.key",
            ),
            (
                "[[pusher.apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"12345678\"\nwebhook_url = \"ftp://x\"\n",
                "pusher.apps.webhook_url",
            ),
            (
                "[[pusher.apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"12345678\"\nwebhook_events = [\"nope\"]\n",
                "pusher.apps.webhook_events",
            ),
        ] {
            let err = PusherConfig::merge(&Settings::default(), &file(text)).unwrap_err();
            assert!(matches!(err, ConfigError::Invalid { setting: s, .. } if s == setting), "{text}: {err}");
        }
        let half = Settings {
            pusher_app_id: Some("a".into()),
            ..Settings::default()
        };
        assert!(PusherConfig::merge(&half, &Settings::default()).is_err());
    }
}
