//! A throw-away Redis Sentinel group for failover tests: one primary, one
//! replica (`--replicaof`) and three sentinels (`redis-server CONF
//! --sentinel`, quorum 2, `down-after-milliseconds 1000`), all on free
//! loopback ports.
//!
//! [`RedisSentinel::start`] returns once the group can fail over: every
//! sentinel sees the replica and the two other sentinels, and the replica's
//! link to the primary is up. [`RedisSentinel::kill_primary`] kills the
//! current primary with SIGKILL; [`RedisSentinel::wait_failover`] polls the
//! sentinels until they name another one.
//!
//! Invariants: every process is killed and reaped when the handle drops
//! (each is owned by a [`RedisServer`] or a [`SentinelProcess`]), and the
//! sentinels' temp dirs (they rewrite their config file) are removed then.
//! Every wait is bounded.

use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::time::Instant;

use crate::{eventually, eventually_some, RedisServer, Resp};

/// The monitored group's name.
pub const MASTER_NAME: &str = "gwmaster";

/// How long the group may take to be ready (sentinels discover each other
/// through hello messages every 2 s).
const READY_TIMEOUT: Duration = Duration::from_secs(40);
/// How long a failover may take (measured about 2.4 s; loaded machines).
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(40);

static DIR_COUNTER: AtomicU32 = AtomicU32::new(0);

/// One `redis-server --sentinel` process and its directory.
#[derive(Debug)]
pub struct SentinelProcess {
    child: Option<Child>,
    /// The sentinel's handle for commands (kills nothing).
    pub server: RedisServer,
    dir: PathBuf,
}

impl SentinelProcess {
    async fn start(primary_port: u16, log_dir: &std::path::Path) -> Result<Self> {
        let mut last = None;
        for _ in 0..5 {
            let port = crate::free_ports(1)?[0];
            let n = DIR_COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("gwt-sentinel-{}-{n}", std::process::id()));
            fs::create_dir_all(&dir)?;
            let conf = dir.join("sentinel.conf");
            fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 2000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n",
                    dir.display()
                ),
            )?;
            let log_path = log_dir.join(format!("sentinel-{}-{n}.log", std::process::id()));
            let log = File::options().create(true).append(true).open(&log_path)?;
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone()?))
                .stderr(Stdio::from(log))
                .spawn()
                .context("spawning redis-server --sentinel")?;
            let mut sentinel = Self {
                child: Some(child),
                server: RedisServer::attach(port),
                dir,
            };
            let server = &sentinel.server;
            let up = eventually(
                Duration::from_secs(10),
                "sentinel answers PING",
                move || async move {
                    matches!(server.cmd(&["PING"]).await, Ok(Resp::Simple(p)) if p == "PONG")
                },
            )
            .await;
            match up {
                Ok(()) => return Ok(sentinel),
                Err(e) => {
                    sentinel.stop();
                    last = Some(e.context(format!("sentinel log: {}", log_path.display())));
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("could not start a sentinel")))
    }

    /// The sentinel's port.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A primary, a replica and three sentinels; all killed on drop.
#[derive(Debug)]
pub struct RedisSentinel {
    /// The data nodes: the initial primary first, then the replica.
    pub servers: Vec<RedisServer>,
    /// The three sentinels.
    pub sentinels: Vec<SentinelProcess>,
}

impl RedisSentinel {
    /// Starts the group and waits until it can fail over.
    pub async fn start() -> Result<Self> {
        let log_dir = crate::workspace_root().join("target").join("test-logs");
        fs::create_dir_all(&log_dir)?;
        let primary = RedisServer::start().await?;
        let pm = primary.port().to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &pm]).await?;
        let r = &replica;
        eventually(
            READY_TIMEOUT,
            "replica master_link_status:up",
            move || async move {
                info_field(r, "replication", "master_link_status")
                    .await
                    .as_deref()
                    == Some("up")
            },
        )
        .await?;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            sentinels.push(SentinelProcess::start(primary.port(), &log_dir).await?);
        }
        let group = Self {
            servers: vec![primary, replica],
            sentinels,
        };
        for s in &group.sentinels {
            let what = format!(
                "sentinel {} sees num-slaves=1 and num-other-sentinels=2",
                s.port()
            );
            eventually(READY_TIMEOUT, &what, move || async move {
                let Ok(fields) = master_fields(&s.server).await else {
                    return false;
                };
                let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone());
                get("num-slaves").as_deref() == Some("1")
                    && get("num-other-sentinels").as_deref() == Some("2")
            })
            .await?;
        }
        Ok(group)
    }

    /// `host:port,host:port,host:port` of the sentinels
    /// (`GATEWAY_REDIS_SENTINELS`).
    pub fn sentinels_env(&self) -> String {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The port the first answering sentinel names as the primary.
    pub async fn primary_port(&self) -> Result<u16> {
        let mut last = None;
        for s in &self.sentinels {
            match master_addr(&s.server).await {
                Ok(port) => return Ok(port),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no sentinel")))
    }

    /// The data node serving `port`.
    pub fn server(&self, port: u16) -> Option<&RedisServer> {
        self.servers.iter().find(|s| s.port() == port)
    }

    /// Kills the current primary (SIGKILL); returns its port.
    pub async fn kill_primary(&mut self) -> Result<u16> {
        let port = self.primary_port().await?;
        let Some(server) = self.servers.iter_mut().find(|s| s.port() == port) else {
            bail!("the sentinels name port {port}, which is none of ours");
        };
        server.stop();
        Ok(port)
    }

    /// Waits until the sentinels name a primary other than `old` and that
    /// server answers `ROLE` with `master`; returns its port.
    pub async fn wait_failover(&self, old: u16) -> Result<u16> {
        let started = Instant::now();
        let port = eventually_some(
            FAILOVER_TIMEOUT,
            "sentinels name a new primary",
            move || async move {
                let port = self.primary_port().await.ok().filter(|p| *p != old)?;
                let role = self.server(port)?.cmd(&["ROLE"]).await.ok()?;
                match role {
                    Resp::Array(Some(items)) => (items.first().and_then(Resp::as_text).as_deref()
                        == Some("master"))
                    .then_some(port),
                    _ => None,
                }
            },
        )
        .await?;
        eprintln!(
            "sentinel failover {old} -> {port} seen after {:?}",
            started.elapsed()
        );
        Ok(port)
    }
}

/// `SENTINEL MASTER gwmaster` as (field, value) pairs.
async fn master_fields(sentinel: &RedisServer) -> Result<Vec<(String, String)>> {
    match sentinel.cmd(&["SENTINEL", "MASTER", MASTER_NAME]).await? {
        Resp::Array(Some(items)) => Ok(items
            .chunks(2)
            .filter_map(|kv| Some((kv.first()?.as_text()?, kv.get(1)?.as_text()?)))
            .collect()),
        other => bail!("unexpected SENTINEL MASTER reply: {other:?}"),
    }
}

/// The primary's port per `SENTINEL GET-MASTER-ADDR-BY-NAME`.
async fn master_addr(sentinel: &RedisServer) -> Result<u16> {
    match sentinel
        .cmd(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME])
        .await?
    {
        Resp::Array(Some(items)) if items.len() == 2 => items[1]
            .as_text()
            .context("port is not text")?
            .parse()
            .context("bad port"),
        other => bail!("unexpected GET-MASTER-ADDR-BY-NAME reply: {other:?}"),
    }
}

/// One `field:value` of `INFO section`.
async fn info_field(server: &RedisServer, section: &str, field: &str) -> Option<String> {
    let text = server.cmd(&["INFO", section]).await.ok()?.as_text()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
}
