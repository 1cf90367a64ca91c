//! Redis Sentinel: finding the primary of the monitored group and following
//! its failovers ([`Watcher::run`]), by swapping the shared
//! [`Target`]'s client. The rest of the Redis layer is unchanged: the
//! subscriber reconnects when the target changes, and its link's next `up`
//! makes the command pool retire every connection to the old primary.
//!
//! Hand-written rather than redis-rs's `SentinelClient` (docs/redis.md,
//! "Sentinel"): that one asks the sentinels in turn, on cached connections
//! without a timeout (one black-holed sentinel stalls the resolution), and
//! follows nothing by itself.
//!
//! Invariants:
//! - a resolution asks every sentinel in parallel, each call bounded by the
//!   Redis timeout, and accepts an address only when more than half of the
//!   sentinels that answered name it and the server itself answers `ROLE`
//!   with `master`;
//! - the target changes only to a confirmed primary, never to "unknown": a
//!   failed resolution keeps the last one (its commands fail on their own);
//! - the watcher polls every [`POLL_INTERVAL`], and earlier when a command
//!   suggests the primary moved ([`Target::suspect`]), at most every
//!   [`MIN_GAP`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Client, ProtocolVersion, Value};
use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::target::{client_for, Target};
use super::{METRIC_FAILOVERS, METRIC_SENTINEL_ERRORS};
use crate::backplane::BackplaneError;
use crate::config::{RedisAuth, SentinelTopology};

/// How often the sentinels are asked when nothing else wakes the watcher.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest pause between two resolutions (bounds the load a burst of
/// failing commands puts on the sentinels).
const MIN_GAP: Duration = Duration::from_millis(100);

/// Every `op` label value of [`METRIC_SENTINEL_ERRORS`]: a sentinel that did
/// not answer (`query`), answers without a majority (`quorum`), a named
/// primary that is unreachable or not a master (`role`).
pub const SENTINEL_ERROR_OPS: [&str; 3] = ["query", "quorum", "role"];

/// Why a resolution did not give a primary.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResolveError {
    /// Fewer than half of the answering sentinels agree (or none answered).
    #[error(
        "no sentinel majority for master {master:?} ({answered} of {asked} answered: {votes})"
    )]
    Quorum {
        master: String,
        asked: usize,
        answered: usize,
        votes: String,
    },
    /// The sentinels' choice is not a reachable master.
    #[error("{addr} named by the sentinels is not a usable master: {reason}")]
    Role { addr: String, reason: String },
}

/// One sentinel and its cached connection.
struct Sentinel {
    client: Client,
    addr: String,
    /// Made on first use, dropped after an error; cloned out, never held
    /// across an await.
    conn: Mutex<Option<MultiplexedConnection>>,
}

/// The resolver and watcher of one node.
pub(crate) struct Watcher {
    sentinels: Vec<Sentinel>,
    master: String,
    /// Credentials of the data nodes (for the primary's client).
    username: Option<String>,
    password: Option<String>,
    timeout: Duration,
    target: Arc<Target>,
}

impl Watcher {
    pub(crate) fn new(
        topology: &SentinelTopology,
        auth: &RedisAuth,
        timeout: Duration,
        target: Arc<Target>,
    ) -> Result<Self, BackplaneError> {
        let sentinels = topology
            .sentinels
            .iter()
            .map(|(host, port)| {
                Ok(Sentinel {
                    client: client_for(
                        host,
                        *port,
                        auth.sentinel_username.clone(),
                        auth.sentinel_password.clone(),
                        ProtocolVersion::RESP2,
                    )
                    .map_err(|e| {
                        BackplaneError::Protocol(format!("sentinel {host}:{port}: {:?}", e.kind()))
                    })?,
                    addr: format!("{host}:{port}"),
                    conn: Mutex::new(None),
                })
            })
            .collect::<Result<_, BackplaneError>>()?;
        Ok(Self {
            sentinels,
            master: topology.master.clone(),
            username: auth.username.clone(),
            password: auth.password.clone(),
            timeout,
            target,
        })
    }

    /// Resolve now, then follow the primary until `cancel`.
    pub(crate) async fn run(self, cancel: CancellationToken) {
        let mut current: Option<(String, u16)> = None;
        let mut failing = false;
        loop {
            let started = Instant::now();
            match self.resolve(current.as_ref()).await {
                Ok((addr, client)) => {
                    if failing {
                        tracing::info!(master = %self.master, "Redis Sentinel resolution works again");
                        failing = false;
                    }
                    if let Some(client) = client {
                        self.target.set(client);
                        match &current {
                            Some((host, port)) => {
                                metrics::counter!(METRIC_FAILOVERS).increment(1);
                                tracing::warn!(
                                    master = %self.master,
                                    from = %format!("{host}:{port}"),
                                    to = %format!("{}:{}", addr.0, addr.1),
                                    "Redis primary changed; following it"
                                );
                            }
                            None => tracing::info!(
                                master = %self.master,
                                primary = %format!("{}:{}", addr.0, addr.1),
                                "Redis primary resolved through Sentinel"
                            ),
                        }
                        current = Some(addr);
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(
                            master = %self.master,
                            sentinels = %self.addrs(),
                            error = %e,
                            "cannot resolve the Redis primary through Sentinel; retrying"
                        );
                        failing = true;
                    }
                }
            }
            let gap = tokio::time::sleep_until(started + MIN_GAP);
            tokio::select! {
                () = cancel.cancelled() => break,
                () = gap => {}
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep_until(started + POLL_INTERVAL) => {}
                () = self.target.suspected() => {}
            }
        }
    }

    /// The primary the sentinels agree on, and a client for it when it is
    /// not `known` (then confirmed by `ROLE`; `known` is already confirmed
    /// and still named).
    pub(crate) async fn resolve(
        &self,
        known: Option<&(String, u16)>,
    ) -> Result<((String, u16), Option<Client>), ResolveError> {
        let answers =
            futures_util::future::join_all(self.sentinels.iter().map(|s| self.ask(s))).await;
        let answered: Vec<Option<(String, u16)>> = answers.into_iter().flatten().collect();
        let mut votes: HashMap<&(String, u16), usize> = HashMap::new();
        for addr in answered.iter().flatten() {
            *votes.entry(addr).or_default() += 1;
        }
        let best = votes
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(addr, n)| ((*addr).clone(), *n));
        let addr = match best {
            Some((addr, n)) if n * 2 > answered.len() => addr,
            _ => {
                metrics::counter!(METRIC_SENTINEL_ERRORS, "op" => "quorum").increment(1);
                let votes = votes
                    .iter()
                    .map(|((h, p), n)| format!("{h}:{p}={n}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(ResolveError::Quorum {
                    master: self.master.clone(),
                    asked: self.sentinels.len(),
                    answered: answered.len(),
                    votes: if votes.is_empty() {
                        "none".into()
                    } else {
                        votes
                    },
                });
            }
        };
        if known == Some(&addr) {
            return Ok((addr, None));
        }
        match self.role(&addr).await {
            Ok((role, client)) if role == "master" => Ok((addr, Some(client))),
            Ok((role, _)) => {
                metrics::counter!(METRIC_SENTINEL_ERRORS, "op" => "role").increment(1);
                Err(ResolveError::Role {
                    addr: format!("{}:{}", addr.0, addr.1),
                    reason: format!("ROLE says {role:?}"),
                })
            }
            Err(reason) => {
                metrics::counter!(METRIC_SENTINEL_ERRORS, "op" => "role").increment(1);
                Err(ResolveError::Role {
                    addr: format!("{}:{}", addr.0, addr.1),
                    reason,
                })
            }
        }
    }

    /// `SENTINEL GET-MASTER-ADDR-BY-NAME` on one sentinel, bounded by the
    /// timeout: `None` when it did not answer, `Some(None)` when it does not
    /// know the master.
    async fn ask(&self, s: &Sentinel) -> Option<Option<(String, u16)>> {
        let call = async {
            let cached = s.conn.lock().clone();
            let mut conn = match cached {
                Some(conn) => conn,
                None => {
                    let conn = s
                        .client
                        .get_multiplexed_async_connection_with_config(&self.conn_config())
                        .await
                        .map_err(|e| e.to_string())?;
                    *s.conn.lock() = Some(conn.clone());
                    conn
                }
            };
            let reply: Option<(String, String)> = ::redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(&self.master)
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            match reply {
                None => Ok(None),
                Some((host, port)) => port
                    .parse::<u16>()
                    .map(|p| Some((host, p)))
                    .map_err(|_| format!("bad port {port:?}")),
            }
        };
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err("timed out".to_owned()),
        };
        match result {
            Ok(answer) => Some(answer),
            Err(e) => {
                *s.conn.lock() = None;
                metrics::counter!(METRIC_SENTINEL_ERRORS, "op" => "query").increment(1);
                tracing::debug!(sentinel = %s.addr, error = %e, "sentinel did not answer");
                None
            }
        }
    }

    /// The first element of `ROLE` on `addr` (a fresh connection, bounded
    /// by the timeout), and the data-node client used.
    async fn role(&self, addr: &(String, u16)) -> Result<(String, Client), String> {
        let client = client_for(
            &addr.0,
            addr.1,
            self.username.clone(),
            self.password.clone(),
            ProtocolVersion::RESP2,
        )
        .map_err(|e| e.to_string())?;
        let call = async {
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&self.conn_config())
                .await
                .map_err(|e| e.to_string())?;
            let reply: Value = ::redis::cmd("ROLE")
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            match reply {
                Value::Array(items) => match items.first() {
                    Some(Value::BulkString(b)) => Ok(String::from_utf8_lossy(b).into_owned()),
                    Some(Value::SimpleString(s)) => Ok(s.clone()),
                    other => Err(format!("unexpected ROLE reply {other:?}")),
                },
                other => Err(format!("unexpected ROLE reply {other:?}")),
            }
        };
        let role = tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or_else(|_| Err("ROLE timed out".to_owned()))?;
        Ok((role, client))
    }

    fn conn_config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
    }

    fn addrs(&self) -> String {
        self.sentinels
            .iter()
            .map(|s| s.addr.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}
