//! Every setting of the gateway: CLI flags and `GATEWAY_*` env vars (clap),
//! an optional TOML file (the only place namespaces live), and the documented
//! defaults. Precedence: CLI > env > file > default.
//!
//! [`Config::load`] validates everything up front; a bad value yields a
//! [`ConfigError`] naming the setting, and `main` exits with code 64.

mod clients;
mod edge;
mod namespaces;
mod proxy;
mod pusher;
mod redis;
mod settings;
mod webhooks;

pub use self::clients::ClientLimits;
pub use self::edge::EdgeLimits;
pub use self::namespaces::NamespaceOptions;
pub use self::proxy::{Hook, HookRoute, HookSettings, ProxyConfig, ProxySettings};
pub use self::pusher::{AppConfig, AppSettings, PusherConfig, PusherSettings, WEBHOOK_EVENTS};
pub use self::redis::{RedisAuth, RedisTopology, SentinelTopology};
pub use self::settings::Settings;
pub use self::webhooks::WebhookConfig;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

/// A setting that could not be used. `main` prints it and exits 64.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value is out of range or malformed.
    #[error("invalid setting `{setting}`: {message}")]
    Invalid {
        /// The setting's TOML key.
        setting: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The config file could not be read or parsed.
    #[error("config file {path}: {message}")]
    File {
        /// The file's path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// CLI or environment parse failure (clap's message names the setting).
    #[error("{0}")]
    Args(String),
    /// `--help` or `--version` was asked for: print this and exit 0.
    #[error("{0}")]
    Help(String),
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The validated configuration the node runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Client listener.
    pub listen: SocketAddr,
    /// Optional admin listener (metrics, health).
    pub admin_listen: Option<SocketAddr>,
    /// This node's id.
    pub node_id: String,
    /// Redis URL in single mode (`None` for the embedded single node and
    /// in sentinel mode).
    pub redis_url: Option<String>,
    /// How Redis is reached, `None` for the embedded single node.
    pub redis_topology: Option<RedisTopology>,
    /// Redis and sentinel credentials (redacted in `Debug`).
    pub redis_auth: RedisAuth,
    /// Redis key prefix.
    pub redis_prefix: String,
    /// Timeout of every Redis call.
    pub redis_timeout: Duration,
    /// Log filter.
    pub log: String,
    /// Log format.
    pub log_format: LogFormat,
    /// HS256 secret.
    pub jwt_secret: Option<String>,
    /// RS256 public key PEM (file contents).
    pub jwt_public_key_pem: Option<Vec<u8>>,
    /// Refuse connections without a valid token.
    pub auth_required: bool,
    /// HTTP API key.
    pub api_key: Option<String>,
    /// Allowed origins (empty = any).
    pub allowed_origins: Vec<String>,
    /// Trusted proxies.
    pub trusted_proxies: Vec<IpAddr>,
    /// Max connections.
    pub max_connections: usize,
    /// Max incoming frame size.
    pub max_message_size: usize,
    /// Per-connection send queue limit in bytes.
    pub queue_bytes: usize,
    /// WebSocket read buffer per connection in bytes.
    pub read_buffer_size: usize,
    /// Runtime worker threads.
    pub worker_threads: usize,
    /// Fan-out workers (cluster mode).
    pub fanout_workers: usize,
    /// Queue length of each fan-out worker, in envelopes.
    pub fanout_queue_size: usize,
    /// Max channels per connection.
    pub max_channels_per_connection: usize,
    /// Server ping interval.
    pub ping_interval: Duration,
    /// Extra silence tolerated after a ping.
    pub pong_timeout: Duration,
    /// Frames per second per connection.
    pub rate_limit: u32,
    /// Rate limit burst.
    pub rate_burst: u32,
    /// Drain grace.
    pub drain_grace: Duration,
    /// Presence TTL.
    pub presence_ttl: Duration,
    /// Presence refresh interval.
    pub presence_refresh: Duration,
    /// Heartbeat age after which a node is taken as crashed (redis).
    pub presence_node_timeout: Duration,
    /// Channels checked for expired members per sweep tick.
    pub presence_sweep_batch: usize,
    /// Serve the built-in pages and the browser SDK.
    pub pages: bool,
    /// The edge's limits (sockets, HTTP, per address and per user).
    pub edge: EdgeLimits,
    /// Clients: replay, presence churn, tokens (docs/security.md).
    pub clients: ClientLimits,
    /// Default namespace options.
    pub default_namespace: NamespaceOptions,
    /// Named namespaces.
    pub namespaces: HashMap<String, NamespaceOptions>,
    /// Webhooks to the application backend (docs/backend.md).
    pub webhooks: WebhookConfig,
    /// The application backend proxy (docs/backend.md); off by default.
    pub proxy: ProxyConfig,
    /// Pusher apps (docs/pusher.md); none: the Pusher endpoints are off.
    pub pusher: PusherConfig,
}

/// Upper bound of every `*_ms` setting: one day.
const MAX_MS: u64 = 86_400_000;

fn invalid(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        message: message.into(),
    }
}

/// `v` or `default`, ms, as a duration: greater than 0 and at most a day.
fn ms(v: Option<u64>, default: u64, setting: &'static str) -> Result<Duration, ConfigError> {
    let v = v.unwrap_or(default);
    if v == 0 {
        return Err(invalid(setting, "must be greater than 0"));
    }
    // Bounded so deadline arithmetic can never overflow the clock.
    if v > MAX_MS {
        return Err(invalid(
            setting,
            format!("must be at most {MAX_MS} (a day)"),
        ));
    }
    Ok(Duration::from_millis(v))
}

/// `v` or `default`, greater than 0.
fn positive(v: Option<usize>, default: usize, setting: &'static str) -> Result<usize, ConfigError> {
    let v = v.unwrap_or(default);
    if v == 0 {
        Err(invalid(setting, "must be greater than 0"))
    } else {
        Ok(v)
    }
}

impl Config {
    /// Parse CLI + env, layer the optional file, apply defaults, validate.
    pub fn load() -> Result<Config, ConfigError> {
        let cli = Settings::try_parse().map_err(|e| {
            use clap::error::ErrorKind;
            match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    ConfigError::Help(e.to_string())
                }
                _ => ConfigError::Args(e.to_string()),
            }
        })?;
        Self::from_settings(cli)
    }

    /// Layer `cli` (CLI + env) over its config file and the defaults.
    pub fn from_settings(cli: Settings) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                toml::from_str::<Settings>(&text).map_err(|e| ConfigError::File {
                    path: path.clone(),
                    message: e.to_string(),
                })?
            }
            None => Settings::default(),
        };
        Self::from_layers(cli, file)
    }

    /// Layer `cli` (CLI + env) over `file` (the parsed config file) and the
    /// defaults, then validate: [`Config::from_settings`] without the read.
    pub fn from_layers(cli: Settings, file: Settings) -> Result<Config, ConfigError> {
        macro_rules! pick {
            ($field:ident) => {
                cli.$field.clone().or(file.$field.clone())
            };
        }
        let addr =
            |v: Option<String>, setting: &'static str| -> Result<Option<SocketAddr>, ConfigError> {
                v.map(|s| {
                    s.parse::<SocketAddr>()
                        .map_err(|e| invalid(setting, format!("{s:?} is not host:port ({e})")))
                })
                .transpose()
            };
        let listen = addr(pick!(listen), "listen")?;
        let admin_listen = addr(pick!(admin_listen), "admin_listen")?;
        let node_id = match pick!(node_id) {
            Some(id) => {
                let ok = !id.is_empty()
                    && id.len() <= 64
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if !ok {
                    return Err(invalid("node_id", "must be 1-64 chars of [A-Za-z0-9_-]"));
                }
                id
            }
            None => format!("n{:08x}", rand::random::<u32>()),
        };
        let redis_prefix = pick!(redis_prefix).unwrap_or_else(|| "gw".to_owned());
        if redis_prefix.is_empty() || redis_prefix.contains(['{', '}', ' ']) {
            return Err(invalid(
                "redis_prefix",
                "must be non-empty without braces or spaces",
            ));
        }
        let (redis_topology, redis_auth) = redis::merge(&cli, &file)?;
        let redis_url = match &redis_topology {
            Some(RedisTopology::Single { url }) => Some(url.clone()),
            _ => None,
        };
        let jwt_secret = pick!(jwt_secret).filter(|s| !s.is_empty());
        if matches!(&jwt_secret, Some(s) if s.len() < 16) {
            return Err(invalid("jwt_secret", "must be at least 16 bytes"));
        }
        let jwt_public_key_pem =
            match pick!(jwt_public_key_file) {
                Some(path) => Some(std::fs::read(&path).map_err(|e| {
                    invalid("jwt_public_key_file", format!("{}: {e}", path.display()))
                })?),
                None => None,
            };
        if let Some(pem) = &jwt_public_key_pem {
            jsonwebtoken::DecodingKey::from_rsa_pem(pem).map_err(|e| {
                invalid(
                    "jwt_public_key_file",
                    format!("not an RSA public key PEM: {e}"),
                )
            })?;
        }
        if jwt_secret.is_some() && jwt_public_key_pem.is_some() {
            return Err(invalid(
                "jwt_secret",
                "set either jwt_secret (HS256) or jwt_public_key_file (RS256), not both",
            ));
        }
        let auth_required = pick!(auth_required).unwrap_or(false);
        if auth_required && jwt_secret.is_none() && jwt_public_key_pem.is_none() {
            return Err(invalid(
                "auth_required",
                "requires jwt_secret or jwt_public_key_file",
            ));
        }
        // Open development mode (no JWT key) stays on this machine unless
        // the listen address is set explicitly.
        let open_mode = jwt_secret.is_none() && jwt_public_key_pem.is_none();
        let listen = listen.unwrap_or(if open_mode {
            SocketAddr::from(([127, 0, 0, 1], 8080))
        } else {
            SocketAddr::from(([0, 0, 0, 0], 8080))
        });
        let api_key = pick!(api_key).filter(|k| !k.is_empty());
        let pages = pick!(pages).unwrap_or(api_key.is_none() && !auth_required);
        let edge = EdgeLimits::merge(&cli, &file, api_key.is_some())?;
        let trusted_proxies = pick!(trusted_proxies)
            .unwrap_or_default()
            .into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpAddr>()
                    .map_err(|_| invalid("trusted_proxies", format!("{s:?} is not an IP address")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let allowed_origins = pick!(allowed_origins)
            .unwrap_or_default()
            .into_iter()
            .map(|s| s.trim().trim_end_matches('/').to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        let max_message_size = positive(pick!(max_message_size), 64 * 1024, "max_message_size")?;
        // The API body limit is max_message_size + 4096: keep it far from
        // usize::MAX (and from a size no frame should have).
        if max_message_size > 64 << 20 {
            return Err(invalid(
                "max_message_size",
                "must be at most 67108864 (64 MiB)",
            ));
        }
        let queue_bytes = positive(pick!(queue_bytes), 1024 * 1024, "queue_bytes")?;
        if queue_bytes < 4096 {
            return Err(invalid("queue_bytes", "must be at least 4096"));
        }
        let read_buffer_size = pick!(read_buffer_size).unwrap_or(1024);
        if !(256..=1 << 20).contains(&read_buffer_size) {
            return Err(invalid(
                "read_buffer_size",
                "must be between 256 and 1048576",
            ));
        }
        let worker_threads = pick!(worker_threads).unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        if !(1..=1024).contains(&worker_threads) {
            return Err(invalid("worker_threads", "must be between 1 and 1024"));
        }
        let fanout_workers = pick!(fanout_workers).unwrap_or(worker_threads);
        if !(1..=1024).contains(&fanout_workers) {
            return Err(invalid("fanout_workers", "must be between 1 and 1024"));
        }
        let fanout_queue_size = pick!(fanout_queue_size).unwrap_or(8192);
        if !(1..=1 << 20).contains(&fanout_queue_size) {
            return Err(invalid(
                "fanout_queue_size",
                "must be between 1 and 1048576",
            ));
        }
        let rate_limit = pick!(rate_limit).unwrap_or(100);
        let rate_burst = pick!(rate_burst).unwrap_or(200);
        if rate_limit == 0 || rate_burst == 0 {
            return Err(invalid(
                "rate_limit",
                "rate_limit and rate_burst must be greater than 0",
            ));
        }
        let presence_ttl = ms(pick!(presence_ttl_ms), 60_000, "presence_ttl_ms")?;
        let presence_refresh = ms(pick!(presence_refresh_ms), 25_000, "presence_refresh_ms")?;
        if presence_refresh >= presence_ttl {
            return Err(invalid(
                "presence_refresh_ms",
                "must be less than presence_ttl_ms",
            ));
        }
        // Crashed-node purge and sweep (docs/redis.md, "Crashed nodes").
        let presence_node_timeout = ms(
            pick!(presence_node_timeout_ms),
            5_000,
            "presence_node_timeout_ms",
        )?;
        if presence_node_timeout < Duration::from_millis(500) {
            return Err(invalid("presence_node_timeout_ms", "must be at least 500"));
        }
        let presence_sweep_batch = pick!(presence_sweep_batch).unwrap_or(500);
        if !(1..=100_000).contains(&presence_sweep_batch) {
            return Err(invalid(
                "presence_sweep_batch",
                "must be between 1 and 100000",
            ));
        }
        let default_namespace = pick!(default_namespace).unwrap_or_default();
        let namespaces = pick!(namespaces).unwrap_or_default();
        for (name, opts) in
            std::iter::once((&String::new(), &default_namespace)).chain(namespaces.iter())
        {
            opts.validate(name, redis_topology.is_some())?;
        }
        let proxy = ProxyConfig::merge(
            pick!(proxy),
            std::iter::once(("", &default_namespace.proxy))
                .chain(namespaces.iter().map(|(n, o)| (n.as_str(), &o.proxy))),
        )?;
        Ok(Config {
            listen,
            admin_listen,
            node_id,
            redis_url,
            redis_topology,
            redis_auth,
            redis_prefix,
            redis_timeout: ms(pick!(redis_timeout_ms), 1000, "redis_timeout_ms")?,
            log: pick!(log).unwrap_or_else(|| "info".to_owned()),
            log_format: pick!(log_format).unwrap_or(LogFormat::Text),
            jwt_secret,
            jwt_public_key_pem,
            auth_required,
            api_key,
            allowed_origins,
            trusted_proxies,
            max_connections: positive(pick!(max_connections), 100_000, "max_connections")?,
            max_message_size,
            queue_bytes,
            read_buffer_size,
            worker_threads,
            fanout_workers,
            fanout_queue_size,
            max_channels_per_connection: positive(
                pick!(max_channels_per_connection),
                128,
                "max_channels_per_connection",
            )?,
            ping_interval: ms(pick!(ping_interval_ms), 25_000, "ping_interval_ms")?,
            pong_timeout: ms(pick!(pong_timeout_ms), 10_000, "pong_timeout_ms")?,
            rate_limit,
            rate_burst,
            drain_grace: ms(pick!(drain_grace_ms), 30_000, "drain_grace_ms")?,
            presence_ttl,
            presence_refresh,
            presence_node_timeout,
            presence_sweep_batch,
            pages,
            edge,
            clients: ClientLimits::merge(&cli, &file, queue_bytes)?,
            default_namespace,
            namespaces,
            webhooks: WebhookConfig::merge(&cli, &file)?,
            proxy,
            pusher: PusherConfig::merge(&cli, &file)?,
        })
    }

    /// Options of the namespace a (validated) channel belongs to, `None` when
    /// the namespace is not configured.
    pub fn namespace(&self, channel: &str) -> Option<&NamespaceOptions> {
        match channel.split_once(':') {
            Some((ns, _)) => self.namespaces.get(ns),
            None => Some(&self.default_namespace),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut v = vec!["gateway"];
        v.extend_from_slice(args);
        let s = Settings::try_parse_from(v).map_err(|e| ConfigError::Args(e.to_string()))?;
        Config::from_settings(s)
    }

    #[test]
    fn defaults_are_documented_values() {
        let c = parse(&[]).unwrap();
        // Open development mode: loopback unless set explicitly.
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.max_message_size, 65536);
        assert_eq!(c.queue_bytes, 1 << 20);
        assert_eq!(c.max_channels_per_connection, 128);
        assert_eq!(c.ping_interval, Duration::from_secs(25));
        assert_eq!(c.pong_timeout, Duration::from_secs(10));
        assert_eq!((c.rate_limit, c.rate_burst), (100, 200));
        assert_eq!(c.drain_grace, Duration::from_secs(30));
        assert_eq!(c.presence_ttl, Duration::from_secs(60));
        assert_eq!(c.presence_node_timeout, Duration::from_secs(5));
        assert_eq!(c.presence_sweep_batch, 500);
        assert_eq!(c.read_buffer_size, 1024);
        assert!(c.worker_threads >= 1);
        assert!(c.pages);
        assert!(c.node_id.starts_with('n'));
        assert_eq!(c.edge.header_timeout, Duration::from_secs(10));
        assert_eq!(c.edge.max_header_bytes, 16384);
        assert_eq!(c.edge.max_pending_connections, 1024);
        assert_eq!(c.edge.max_connections_per_ip, 1000);
        assert_eq!(c.edge.max_connections_per_user, 100);
        assert!(!c.edge.ip_limits_private);
    }

    #[test]
    fn open_mode_binds_loopback_and_keys_turn_pages_off() {
        let secret = "0123456789abcdef0123";
        let c = parse(&["--jwt-secret", secret]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        let c = parse(&["--listen", "0.0.0.0:9000"]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000".parse().unwrap());
        assert!(!parse(&["--api-key", "k"]).unwrap().pages);
        assert!(parse(&["--api-key", "k", "--pages", "true"]).unwrap().pages);
        let c = parse(&["--jwt-secret", secret, "--auth-required", "true"]).unwrap();
        assert!(!c.pages);
        let e = parse(&["--max-message-size", "18446744073709551615"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_message_size"), "{e}");
        let e = parse(&["--metrics-require-key", "true"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("metrics_require_key"), "{e}");
        let e = parse(&["--max-header-bytes", "100"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_header_bytes"), "{e}");
    }

    #[test]
    fn bad_values_name_the_setting() {
        let e = parse(&["--listen", "nope"]).unwrap_err().to_string();
        assert!(e.contains("listen"), "{e}");
        let e = parse(&["--auth-required", "true"]).unwrap_err().to_string();
        assert!(e.contains("auth_required"), "{e}");
        let e = parse(&["--max-message-size", "abc"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("max-message-size"), "{e}");
        let e = parse(&["--node-id", "a.b"]).unwrap_err().to_string();
        assert!(e.contains("node_id"), "{e}");
        let e = parse(&["--ping-interval-ms", "18446744073709551615"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("ping_interval_ms"), "{e}");
        let e = parse(&["--worker-threads", "0"]).unwrap_err().to_string();
        assert!(e.contains("worker_threads"), "{e}");
        assert_eq!(parse(&["--worker-threads", "3"]).unwrap().worker_threads, 3);
    }

    #[test]
    fn client_limits_defaults_and_bounds() {
        let c = parse(&[]).unwrap().clients;
        assert_eq!((c.jwt_issuer, c.jwt_audience), (None, None));
        assert_eq!(c.presence_reply_max_members, 1000);
        assert_eq!((c.join_leave_rate, c.join_leave_burst), (1, 128));
        assert_eq!(
            (c.replay_max_bytes, c.replay_token_bytes),
            (512 * 1024, 16 * 1024)
        );
        assert_eq!(
            (c.history_max_channels, c.history_max_bytes),
            (100_000, 256 << 20)
        );
        let small = parse(&["--queue-bytes", "8192"]).unwrap().clients;
        assert_eq!(
            small.replay_max_bytes, 4096,
            "at most half the queue by default"
        );
        for (flag, value, setting) in [
            ("--replay-max-bytes", "9000", "replay_max_bytes"),
            (
                "--presence-reply-max-members",
                "0",
                "presence_reply_max_members",
            ),
            ("--join-leave-rate", "0", "join_leave_rate"),
            (
                "--join-leave-coalesce-ms",
                "10001",
                "join_leave_coalesce_ms",
            ),
            ("--history-max-bytes", "1000", "history_max_bytes"),
            ("--history-max-channels", "0", "history_max_channels"),
        ] {
            let e = parse(&["--queue-bytes", "8192", flag, value])
                .unwrap_err()
                .to_string();
            assert!(e.contains(setting), "{flag} {value}: {e}");
        }
    }

    #[test]
    fn edge_limits_layer_under_cli_and_validate() {
        let file: Settings =
            toml::from_str("header_timeout_ms = 5000\nmax_pending_connections = 7\n").unwrap();
        let cli = Settings::try_parse_from(["gateway", "--header-timeout-ms", "3000"]).unwrap();
        let e = Config::from_layers(cli, file).unwrap().edge;
        assert_eq!(e.header_timeout, Duration::from_secs(3), "CLI over file");
        assert_eq!(e.max_pending_connections, 7, "file over default");
        assert_eq!((e.connect_rate_per_ip, e.connect_burst_per_ip), (50, 200));
        for (flag, value, setting) in [
            ("--connect-burst-per-ip", "0", "connect_rate_per_ip"),
            (
                "--max-connections-per-user",
                "0",
                "max_connections_per_user",
            ),
            ("--body-timeout-ms", "0", "body_timeout_ms"),
        ] {
            let e = parse(&[flag, value]).unwrap_err().to_string();
            assert!(e.contains(setting), "{flag} {value}: {e}");
        }
        let c = parse(&["--metrics-require-key", "true", "--api-key", "k"]).unwrap();
        assert!(c.edge.metrics_require_key);
    }

    #[test]
    fn file_layers_under_cli() {
        let dir = std::env::temp_dir().join(format!("gwcfg-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("g.toml");
        std::fs::write(
            &path,
            "max_connections = 7\nqueue_bytes = 8192\n[namespaces.chat]\npresence = true\nhistory_size = 10\n",
        )
        .unwrap();
        let c = parse(&["--config", path.to_str().unwrap(), "--queue-bytes", "9000"]).unwrap();
        assert_eq!(c.max_connections, 7);
        assert_eq!(c.queue_bytes, 9000);
        let ns = c.namespace("chat:x").unwrap();
        assert!(ns.presence);
        assert_eq!(ns.history_size, 10);
        assert!(c.namespace("other:x").is_none());
        assert!(c.namespace("plain").is_some());
        std::fs::write(&path, "bogus_key = 1\n").unwrap();
        let e = parse(&["--config", path.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus_key"), "{e}");
    }
}
