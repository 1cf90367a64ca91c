//! The Redis settings of the configuration: which topology the node uses
//! (none: the embedded single node; one server; or a primary found through
//! Redis Sentinel), and the ACL credentials for the data nodes and the
//! sentinels, merged from the CLI/env and the file (docs/configuration.md,
//! "Redis"; docs/redis.md, "Sentinel").
//!
//! Invariant: a [`RedisTopology`] that exists is complete and usable (the
//! sentinel list is non-empty, every entry is a valid `host:port` and the
//! master name is set); secrets never appear in a `Debug` output.

use std::fmt;

use super::{invalid, ConfigError, Settings};

/// How the node reaches Redis.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTopology {
    /// One server (or a proxy / managed endpoint), by URL.
    Single {
        /// `redis://[user:password@]host:port[/db]` or `unix://` (may hold a
        /// secret: never logged).
        url: String,
    },
    /// The primary of a Sentinel-monitored group, re-resolved on failover.
    Sentinel(SentinelTopology),
    /// A Redis Cluster (7.0+), discovered from these seed nodes,
    /// `(host, port)`, distinct, at least one.
    Cluster {
        /// Seed nodes; the slot map comes from `CLUSTER SHARDS`.
        seeds: Vec<(String, u16)>,
    },
}

/// Where the sentinels are and which group they monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelTopology {
    /// The sentinels, `(host, port)`, distinct, at least one.
    pub sentinels: Vec<(String, u16)>,
    /// The monitored group's name (`sentinel monitor <name> ...`).
    pub master: String,
}

impl fmt::Debug for RedisTopology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisTopology::Single { .. } => f
                .debug_struct("Single")
                .field("url", &"<redacted>")
                .finish(),
            RedisTopology::Sentinel(s) => f.debug_tuple("Sentinel").field(s).finish(),
            RedisTopology::Cluster { seeds } => {
                f.debug_struct("Cluster").field("seeds", seeds).finish()
            }
        }
    }
}

/// ACL credentials; every field is optional. The data-node pair applies to
/// the primary (and, in single mode, to the URL's server); the sentinel
/// pair to the sentinels.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RedisAuth {
    /// ACL user of the data nodes (needs `password`).
    pub username: Option<String>,
    /// Password of the data nodes (`AUTH [user] password`).
    pub password: Option<String>,
    /// ACL user of the sentinels (needs `sentinel_password`).
    pub sentinel_username: Option<String>,
    /// Password of the sentinels.
    pub sentinel_password: Option<String>,
}

impl fmt::Debug for RedisAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("RedisAuth")
            .field("username", &self.username)
            .field("password", &secret(&self.password))
            .field("sentinel_username", &self.sentinel_username)
            .field("sentinel_password", &secret(&self.sentinel_password))
            .finish()
    }
}

/// Layers `s` (CLI + env) over `f` (the file): the topology (`None`: the
/// embedded single node) and the credentials, validated.
pub(super) fn merge(
    s: &Settings,
    f: &Settings,
) -> Result<(Option<RedisTopology>, RedisAuth), ConfigError> {
    macro_rules! pick {
        ($field:ident) => {
            s.$field.clone().or(f.$field.clone())
        };
    }
    let url = pick!(redis_url).filter(|u| !u.is_empty());
    let sentinels = pick!(redis_sentinels);
    let cluster_nodes = pick!(redis_cluster_nodes);
    let master = pick!(redis_sentinel_master).filter(|m| !m.is_empty());
    let auth = RedisAuth {
        username: pick!(redis_username).filter(|v| !v.is_empty()),
        password: pick!(redis_password).filter(|v| !v.is_empty()),
        sentinel_username: pick!(redis_sentinel_username).filter(|v| !v.is_empty()),
        sentinel_password: pick!(redis_sentinel_password).filter(|v| !v.is_empty()),
    };
    let kind = match pick!(redis_topology).filter(|t| !t.is_empty()) {
        Some(t) => t,
        None if url.is_some() => "single".to_owned(),
        None if sentinels.is_some() || master.is_some() => return Err(invalid(
            "redis_topology",
            "redis_sentinels / redis_sentinel_master are set: set redis_topology = \"sentinel\"",
        )),
        None if cluster_nodes.is_some() => {
            return Err(invalid(
                "redis_topology",
                "redis_cluster_nodes is set: set redis_topology = \"cluster\"",
            ))
        }
        None => {
            if auth != RedisAuth::default() {
                return Err(invalid(
                    "redis_password",
                    "Redis credentials are set but no Redis is configured (redis_url or redis_topology)",
                ));
            }
            return Ok((None, auth));
        }
    };
    let sentinel_only = || {
        if sentinels.is_some() || master.is_some() {
            return Err(invalid(
                "redis_sentinels",
                "redis_sentinels and redis_sentinel_master need redis_topology = \"sentinel\"",
            ));
        }
        if auth.sentinel_username.is_some() || auth.sentinel_password.is_some() {
            return Err(invalid(
                "redis_sentinel_password",
                "sentinel credentials need redis_topology = \"sentinel\"",
            ));
        }
        Ok(())
    };
    if auth.username.is_some() && auth.password.is_none() {
        return Err(invalid("redis_username", "needs redis_password"));
    }
    if auth.sentinel_username.is_some() && auth.sentinel_password.is_none() {
        return Err(invalid(
            "redis_sentinel_username",
            "needs redis_sentinel_password",
        ));
    }
    let cluster_only = || {
        if cluster_nodes.is_some() {
            return Err(invalid(
                "redis_cluster_nodes",
                "needs redis_topology = \"cluster\"",
            ));
        }
        Ok(())
    };
    let topology = match kind.as_str() {
        "single" => {
            sentinel_only()?;
            cluster_only()?;
            let Some(url) = url else {
                return Err(invalid(
                    "redis_url",
                    "redis_topology = \"single\" needs redis_url",
                ));
            };
            if !(url.starts_with("redis://") || url.starts_with("unix://")) {
                return Err(invalid(
                    "redis_url",
                    "must start with redis:// or unix:// (TLS is not built in)",
                ));
            }
            if url_has_user_info(&url) && (auth.username.is_some() || auth.password.is_some()) {
                return Err(invalid(
                    "redis_password",
                    "credentials are both in redis_url and in redis_username/redis_password: use one",
                ));
            }
            RedisTopology::Single { url }
        }
        "sentinel" => {
            cluster_only()?;
            if url.is_some() {
                return Err(invalid(
                    "redis_url",
                    "is for redis_topology = \"single\"; sentinel mode finds the primary through redis_sentinels",
                ));
            }
            let Some(list) = sentinels else {
                return Err(invalid(
                    "redis_sentinels",
                    "redis_topology = \"sentinel\" needs redis_sentinels (host:port, ...)",
                ));
            };
            let mut parsed: Vec<(String, u16)> = Vec::new();
            for entry in list.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
                let addr = host_port(entry).map_err(|m| invalid("redis_sentinels", m))?;
                if parsed.contains(&addr) {
                    return Err(invalid(
                        "redis_sentinels",
                        format!("{entry:?} is listed twice (each sentinel has one vote)"),
                    ));
                }
                parsed.push(addr);
            }
            if parsed.is_empty() {
                return Err(invalid("redis_sentinels", "is empty"));
            }
            let Some(master) = master else {
                return Err(invalid(
                    "redis_sentinel_master",
                    "redis_topology = \"sentinel\" needs the monitored master's name",
                ));
            };
            if master.len() > 255 || master.contains(|c: char| c.is_whitespace() || c.is_control())
            {
                return Err(invalid(
                    "redis_sentinel_master",
                    "must be at most 255 bytes without spaces",
                ));
            }
            RedisTopology::Sentinel(SentinelTopology {
                sentinels: parsed,
                master,
            })
        }
        "cluster" => {
            sentinel_only()?;
            if url.is_some() {
                return Err(invalid(
                    "redis_url",
                    "is for redis_topology = \"single\"; cluster mode discovers the nodes from redis_cluster_nodes",
                ));
            }
            let Some(list) = cluster_nodes else {
                return Err(invalid(
                    "redis_cluster_nodes",
                    "redis_topology = \"cluster\" needs redis_cluster_nodes (host:port, ...)",
                ));
            };
            let mut seeds: Vec<(String, u16)> = Vec::new();
            for entry in list.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
                let addr = host_port(entry).map_err(|m| invalid("redis_cluster_nodes", m))?;
                if !seeds.contains(&addr) {
                    seeds.push(addr);
                }
            }
            if seeds.is_empty() {
                return Err(invalid("redis_cluster_nodes", "is empty"));
            }
            RedisTopology::Cluster { seeds }
        }
        other => {
            return Err(invalid(
                "redis_topology",
                format!("{other:?}: must be \"single\", \"cluster\" or \"sentinel\""),
            ))
        }
    };
    Ok((Some(topology), auth))
}

/// Whether a `redis://` URL carries `user:password@` (a `unix://` path never
/// does; its credentials come as query parameters, which we treat the same).
fn url_has_user_info(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    authority.contains('@') || url.contains("pass=") || url.contains("user=")
}

/// Parse `host:port` or `[v6]:port`; port 1..=65535, host non-empty.
fn host_port(entry: &str) -> Result<(String, u16), String> {
    let bad = || format!("{entry:?} is not host:port");
    let (host, port) = entry.rsplit_once(':').ok_or_else(bad)?;
    let host = match host.strip_prefix('[') {
        Some(h) => h.strip_suffix(']').ok_or_else(bad)?,
        None if host.contains(':') => return Err(format!("{entry:?}: write IPv6 as [addr]:port")),
        None => host,
    };
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/' || c == '@') {
        return Err(bad());
    }
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(format!("{entry:?}: port 0"));
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn merge_args(args: &[&str]) -> Result<(Option<RedisTopology>, RedisAuth), ConfigError> {
        let mut v = vec!["gateway"];
        v.extend_from_slice(args);
        let s = Settings::try_parse_from(v).map_err(|e| ConfigError::Args(e.to_string()))?;
        merge(&s, &Settings::default())
    }

    fn err(args: &[&str]) -> String {
        match merge_args(args) {
            Ok(t) => format!("accepted: {t:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn no_redis_is_the_embedded_node_and_a_url_is_single() {
        assert_eq!(merge_args(&[]).unwrap(), (None, RedisAuth::default()));
        let (t, _) = merge_args(&["--redis-url", "redis://h:1"]).unwrap();
        assert_eq!(
            t,
            Some(RedisTopology::Single {
                url: "redis://h:1".into()
            })
        );
        let (t, _) = merge_args(&[
            "--redis-topology",
            "single",
            "--redis-url",
            "unix:///r.sock",
        ])
        .unwrap();
        assert!(matches!(t, Some(RedisTopology::Single { .. })));
    }

    #[test]
    fn sentinel_lists_parse_from_flags_env_style_and_file() {
        let (t, auth) = merge_args(&[
            "--redis-topology",
            "sentinel",
            "--redis-sentinels",
            "10.0.0.1:26379, s2.local:26380,[::1]:26381",
            "--redis-sentinel-master",
            "gwmaster",
            "--redis-password",
            "pw",
            "--redis-sentinel-username",
            "sen",
            "--redis-sentinel-password",
            "spw",
        ])
        .unwrap();
        let Some(RedisTopology::Sentinel(s)) = t else {
            panic!("not sentinel: {t:?}")
        };
        assert_eq!(
            s.sentinels,
            vec![
                ("10.0.0.1".to_owned(), 26379),
                ("s2.local".to_owned(), 26380),
                ("::1".to_owned(), 26381)
            ]
        );
        assert_eq!(s.master, "gwmaster");
        assert_eq!(auth.password.as_deref(), Some("pw"));
        assert_eq!(auth.sentinel_username.as_deref(), Some("sen"));
        let file: Settings = toml::from_str(
            "redis_topology = \"sentinel\"\nredis_sentinels = [\"a:1\", \"b:2\"]\nredis_sentinel_master = \"m\"\n",
        )
        .unwrap();
        let (t, _) = merge(&Settings::default(), &file).unwrap();
        assert!(matches!(t, Some(RedisTopology::Sentinel(s)) if s.sentinels.len() == 2));
    }

    #[test]
    fn cluster_seeds_parse_and_duplicates_collapse() {
        let (t, auth) = merge_args(&[
            "--redis-topology",
            "cluster",
            "--redis-cluster-nodes",
            "10.0.0.1:7000, n2:7001,10.0.0.1:7000",
            "--redis-username",
            "gw",
            "--redis-password",
            "pw",
        ])
        .unwrap();
        let Some(RedisTopology::Cluster { seeds }) = t else {
            panic!("not cluster: {t:?}")
        };
        assert_eq!(
            seeds,
            vec![("10.0.0.1".to_owned(), 7000), ("n2".to_owned(), 7001)]
        );
        assert_eq!(auth.username.as_deref(), Some("gw"));
    }

    #[test]
    fn bad_combinations_name_the_setting() {
        let sentinel = ["--redis-topology", "sentinel"];
        for (args, want) in [
            (
                vec!["--redis-topology", "cluster", "--redis-url", "redis://h"],
                "cluster mode discovers",
            ),
            (
                vec!["--redis-topology", "cluster"],
                "needs redis_cluster_nodes",
            ),
            (
                vec![
                    "--redis-topology",
                    "cluster",
                    "--redis-cluster-nodes",
                    "a:1,b",
                ],
                "not host:port",
            ),
            (
                vec!["--redis-cluster-nodes", "a:1"],
                "set redis_topology = \"cluster\"",
            ),
            (
                vec!["--redis-url", "redis://h", "--redis-cluster-nodes", "a:1"],
                "needs redis_topology = \"cluster\"",
            ),
            (vec!["--redis-topology", "ring"], "must be \"single\""),
            (vec!["--redis-topology", "single"], "needs redis_url"),
            (
                [&sentinel[..], &["--redis-sentinel-master", "m"]].concat(),
                "needs redis_sentinels",
            ),
            (
                [&sentinel[..], &["--redis-sentinels", "a:1"]].concat(),
                "redis_sentinel_master",
            ),
            (
                [
                    &sentinel[..],
                    &["--redis-sentinels", " , ", "--redis-sentinel-master", "m"],
                ]
                .concat(),
                "is empty",
            ),
            (
                [
                    &sentinel[..],
                    &["--redis-sentinels", "a:x", "--redis-sentinel-master", "m"],
                ]
                .concat(),
                "not host:port",
            ),
            (
                [
                    &sentinel[..],
                    &["--redis-sentinels", "a", "--redis-sentinel-master", "m"],
                ]
                .concat(),
                "not host:port",
            ),
            (
                [
                    &sentinel[..],
                    &["--redis-sentinels", "a:0", "--redis-sentinel-master", "m"],
                ]
                .concat(),
                "port 0",
            ),
            (
                [
                    &sentinel[..],
                    &[
                        "--redis-sentinels",
                        "a:1,a:1",
                        "--redis-sentinel-master",
                        "m",
                    ],
                ]
                .concat(),
                "listed twice",
            ),
            (
                [
                    &sentinel[..],
                    &["--redis-sentinels", "::1:5", "--redis-sentinel-master", "m"],
                ]
                .concat(),
                "IPv6",
            ),
            (
                [
                    &sentinel[..],
                    &[
                        "--redis-sentinels",
                        "a:1",
                        "--redis-sentinel-master",
                        "m",
                        "--redis-url",
                        "redis://h",
                    ],
                ]
                .concat(),
                "redis_url",
            ),
            (
                vec!["--redis-sentinels", "a:1", "--redis-sentinel-master", "m"],
                "set redis_topology",
            ),
            (
                vec!["--redis-url", "redis://h", "--redis-sentinels", "a:1"],
                "need redis_topology = \"sentinel\"",
            ),
            (
                vec!["--redis-url", "redis://u:p@h", "--redis-password", "x"],
                "use one",
            ),
            (
                vec!["--redis-url", "redis://h", "--redis-username", "u"],
                "needs redis_password",
            ),
            (vec!["--redis-password", "x"], "no Redis is configured"),
            (
                vec!["--redis-url", "redis://h", "--redis-sentinel-password", "x"],
                "sentinel credentials",
            ),
        ] {
            let e = err(&args);
            assert!(e.contains(want), "{args:?}: want {want:?}, got {e}");
        }
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let (t, auth) = merge_args(&["--redis-url", "redis://user:hunter2@h:1"]).unwrap();
        assert!(!format!("{t:?}").contains("hunter2"));
        let auth = RedisAuth {
            password: Some("hunter2".into()),
            sentinel_password: Some("hunter3".into()),
            ..auth
        };
        let text = format!("{auth:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("hunter3"),
            "{text}"
        );
    }
}
