//! A cluster under test: one throw-away `redis-server` and N gateway nodes.
//!
//! [`ClusterBuilder::start`] starts a [`RedisServer`] on a free port, then N
//! gateway processes `n1..nN` (in parallel) that all use it with one fresh
//! key prefix ([`crate::unique_prefix`]), and waits until every node is ready
//! (`/readyz` 200) and sees every other node in `GET /api/nodes`. Nodes
//! are numbered from 1 like their ids: [`Cluster::node`]`(1)` is `n1`.
//!
//! Besides the processes it offers the views a cluster test needs from the
//! outside: Redis `PUBSUB NUMSUB` of a channel's pub/sub name
//! (docs/redis.md), whether a node's process is still alive; and one more fault besides killing a node or
//! Redis: freezing Redis with SIGSTOP ([`Cluster::freeze_redis`]).
//!
//! [`ClusterBuilder::sentinel`] runs the nodes on a [`RedisSentinel`] group
//! instead (primary, replica, three sentinels; `GATEWAY_REDIS_TOPOLOGY=
//! sentinel`): [`Cluster::redis`] then talks to the initial primary, and
//! [`Cluster::sentinel`] holds the group for failover faults.
//!
//! [`ClusterBuilder::topology`]`(`[`Topology::Cluster`]`)` runs the nodes
//! on a 3-primary [`RedisCluster`] instead (`GATEWAY_REDIS_TOPOLOGY=
//! cluster`): [`Cluster::redis`] then talks to the first primary, and the
//! topology-aware helpers ([`Cluster::numsub_raw`], [`Cluster::stop_redis`],
//! [`Cluster::restart_redis`], [`Cluster::freeze_redis`]) act on every
//! cluster node. [`topologies!`](crate::topologies) runs one test body on
//! each topology.
//!
//! Invariant: every process (Redis and gateways) is killed when the
//! [`Cluster`] drops, because each is owned by its own handle.

use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::{
    eventually, process, unique_prefix, Api, Gateway, GatewayBuilder, RedisCluster, RedisSentinel,
    RedisServer, Resp,
};

/// Which Redis the gateway nodes of a [`Cluster`] use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One redis-server (`GATEWAY_REDIS_URL`).
    Single,
    /// A Redis Cluster of 3 primaries and 3 replicas
    /// (`GATEWAY_REDIS_TOPOLOGY=cluster`).
    Cluster,
}

/// Generates `single::<name>` and `cluster::<name>` for each test
/// `async fn <name>(topology: Topology) -> anyhow::Result<()>` named: one
/// body run against one Redis and against a Redis Cluster.
#[macro_export]
macro_rules! topologies {
    ($($name:ident),* $(,)?) => {
        mod single {
            $(
                #[tokio::test]
                async fn $name() -> anyhow::Result<()> {
                    super::$name($crate::cluster::Topology::Single).await
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test]
                async fn $name() -> anyhow::Result<()> {
                    super::$name($crate::cluster::Topology::Cluster).await
                }
            )*
        }
    };
}

/// Namespaces of every cluster test: [`crate::STANDARD_CONFIG`] plus
/// `long` (history of 10,000, for recovery under continuous publishing).
pub fn cluster_config() -> String {
    format!(
        "{}\n[namespaces.long]\nhistory_size = 10000\nhistory_ttl_secs = 300\nclient_publish = true\nallow_anonymous = true\n",
        crate::STANDARD_CONFIG
    )
}

/// Settings for a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    name: String,
    nodes: usize,
    env: Vec<(String, String)>,
    config: String,
    sentinel: bool,
    topology: Topology,
}

impl ClusterBuilder {
    /// Three nodes with [`cluster_config`]; `name` names logs and the prefix.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            nodes: 3,
            env: Vec::new(),
            config: cluster_config(),
            sentinel: false,
            topology: Topology::Single,
        }
    }

    /// Number of gateway nodes (at least 1).
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n.max(1);
        self
    }

    /// A `GATEWAY_*` setting for every node.
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_string()));
        self
    }

    /// Presence TTL and refresh interval (ms) for every node.
    pub fn presence_ttl(self, ttl_ms: u64, refresh_ms: u64) -> Self {
        self.env("GATEWAY_PRESENCE_TTL_MS", ttl_ms)
            .env("GATEWAY_PRESENCE_REFRESH_MS", refresh_ms)
    }

    /// Run the nodes on a Redis Sentinel group ([`RedisSentinel`]) instead
    /// of one server.
    pub fn sentinel(mut self) -> Self {
        self.sentinel = true;
        self
    }

    /// Run the nodes on this Redis topology.
    pub fn topology(mut self, topology: Topology) -> Self {
        self.topology = topology;
        self
    }

    /// Replaces the TOML configuration of every node.
    pub fn config(mut self, toml: &str) -> Self {
        self.config = toml.to_owned();
        self
    }

    /// Starts Redis and the nodes, and waits until the cluster is formed.
    pub async fn start(self) -> Result<Cluster> {
        let mut redis_cluster = None;
        let (redis, sentinel, topology) = if self.sentinel {
            let group = RedisSentinel::start().await?;
            let primary = RedisServer::attach(group.primary_port().await?);
            let env = vec![
                ("GATEWAY_REDIS_TOPOLOGY", "sentinel".to_owned()),
                ("GATEWAY_REDIS_SENTINELS", group.sentinels_env()),
                (
                    "GATEWAY_REDIS_SENTINEL_MASTER",
                    crate::redis_sentinel::MASTER_NAME.to_owned(),
                ),
            ];
            (primary, Some(group), env)
        } else if self.topology == Topology::Cluster {
            let group = RedisCluster::start().await?;
            let first = RedisServer::attach(group.nodes[0].port());
            let env = vec![
                ("GATEWAY_REDIS_TOPOLOGY", "cluster".to_owned()),
                ("GATEWAY_REDIS_CLUSTER_NODES", group.seeds().join(",")),
            ];
            redis_cluster = Some(group);
            (first, None, env)
        } else {
            let redis = RedisServer::start().await?;
            let env = vec![("GATEWAY_REDIS_URL", redis.url())];
            (redis, None, env)
        };
        let prefix = unique_prefix(&self.name);
        let builders: Vec<GatewayBuilder> = (1..=self.nodes)
            .map(|n| {
                let mut b = GatewayBuilder::new()
                    .name(&format!("{}-n{n}", self.name))
                    .config(&self.config);
                for (k, v) in &topology {
                    b = b.env(k, v);
                }
                let mut b = b
                    .env("GATEWAY_REDIS_PREFIX", &prefix)
                    .env("GATEWAY_NODE_ID", format!("n{n}"));
                for (k, v) in &self.env {
                    b = b.env(k, v);
                }
                b
            })
            .collect();
        let nodes =
            futures_util::future::try_join_all(builders.into_iter().map(GatewayBuilder::spawn))
                .await?;
        let cluster = Cluster {
            redis,
            sentinel,
            redis_cluster,
            prefix,
            nodes,
            frozen_pid: AtomicU32::new(0),
        };
        cluster.wait_formed().await?;
        Ok(cluster)
    }
}

/// One Redis server and N gateway nodes sharing it; all killed on drop.
#[derive(Debug)]
pub struct Cluster {
    /// The Redis server every node uses (with [`ClusterBuilder::sentinel`]:
    /// the initial primary, not killed by this handle).
    pub redis: RedisServer,
    /// The Sentinel group, with [`ClusterBuilder::sentinel`].
    pub sentinel: Option<RedisSentinel>,
    /// The Redis Cluster, with [`Topology::Cluster`].
    pub redis_cluster: Option<RedisCluster>,
    /// The key prefix of this cluster (`GATEWAY_REDIS_PREFIX`).
    pub prefix: String,
    /// The nodes, `n1` first.
    pub nodes: Vec<Gateway>,
    /// Pid of the redis-server while frozen (see [`Cluster::freeze_redis`]).
    frozen_pid: AtomicU32,
}

impl Cluster {
    /// A builder; shorthand for [`ClusterBuilder::new`].
    pub fn builder(name: &str) -> ClusterBuilder {
        ClusterBuilder::new(name)
    }

    /// Three nodes with default settings.
    pub async fn start(name: &str) -> Result<Self> {
        ClusterBuilder::new(name).start().await
    }

    /// Node `n` (1-based, like its id `n<n>`). Panics on a number out of
    /// range: that is a bug in the test.
    pub fn node(&self, n: usize) -> &Gateway {
        &self.nodes[n - 1]
    }

    /// Node `n`, mutable (to kill or restart it).
    pub fn node_mut(&mut self, n: usize) -> &mut Gateway {
        &mut self.nodes[n - 1]
    }

    /// The HTTP API of node `n`.
    pub fn api(&self, n: usize) -> Api {
        self.node(n).api()
    }

    /// Waits until every running node is ready and lists every running
    /// node in `GET /api/nodes`.
    pub async fn wait_formed(&self) -> Result<()> {
        let want: Vec<String> = self.running_ids();
        for (i, gw) in self.nodes.iter().enumerate() {
            if gw.pid().is_none() {
                continue;
            }
            let api = gw.api();
            eventually(
                crate::EVENTUALLY,
                &format!("n{} ready and listing nodes {want:?}", i + 1),
                || {
                    let api = api.clone();
                    let want = want.clone();
                    async move {
                        if !matches!(api.readyz().await, Ok(200)) {
                            return false;
                        }
                        match api.nodes().await {
                            Ok(body) => node_ids(&body) == want,
                            Err(_) => false,
                        }
                    }
                },
            )
            .await?;
        }
        Ok(())
    }

    fn running_ids(&self) -> Vec<String> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, gw)| gw.pid().is_some())
            .map(|(i, _)| format!("n{}", i + 1))
            .collect()
    }

    /// The Redis pub/sub name of application channel `channel`:
    /// `P:ch:{channel}` (docs/redis.md).
    pub fn channel_name(&self, channel: &str) -> String {
        format!("{}:ch:{{{channel}}}", self.prefix)
    }

    /// The Redis pub/sub name of user `user`: `P:user:{user}`.
    pub fn user_name(&self, user: &str) -> String {
        format!("{}:user:{{{user}}}", self.prefix)
    }

    /// `PUBSUB NUMSUB` of a Redis pub/sub name: how many connections (one
    /// per subscribed node) are subscribed to it. On a Redis Cluster:
    /// `PUBSUB SHARDNUMSUB` summed over the live primaries.
    pub async fn numsub_raw(&self, name: &str) -> Result<i64> {
        match &self.redis_cluster {
            None => self.redis.numsub(name).await,
            Some(_) => Ok(self.shard_numsub(name).await?.iter().map(|(_, n)| n).sum()),
        }
    }

    /// Redis Cluster: `PUBSUB SHARDNUMSUB name` on every live primary, by
    /// data port.
    pub async fn shard_numsub(&self, name: &str) -> Result<Vec<(u16, i64)>> {
        let group = self.redis_cluster.as_ref().context("not a Redis Cluster")?;
        let mut out = Vec::new();
        for port in group.primaries().await? {
            let reply = RedisServer::attach(port)
                .cmd(&["PUBSUB", "SHARDNUMSUB", name])
                .await?;
            let n = match reply {
                Resp::Array(Some(items)) => match items.get(1) {
                    Some(Resp::Int(n)) => *n,
                    other => anyhow::bail!("unexpected SHARDNUMSUB item: {other:?}"),
                },
                other => anyhow::bail!("unexpected SHARDNUMSUB reply: {other:?}"),
            };
            out.push((port, n));
        }
        Ok(out)
    }

    /// Kill Redis (every node of a Redis Cluster) with SIGKILL.
    pub fn stop_redis(&mut self) {
        match &mut self.redis_cluster {
            None => self.redis.stop(),
            Some(group) => {
                for node in &mut group.nodes {
                    node.stop();
                }
            }
        }
    }

    /// Start Redis again after [`Cluster::stop_redis`], empty; a Redis
    /// Cluster re-forms from its nodes.conf files (the same slots), and
    /// this waits until it serves every slot again.
    pub async fn restart_redis(&mut self) -> Result<()> {
        match &mut self.redis_cluster {
            None => self.redis.restart().await,
            Some(group) => group.restart_all().await,
        }
    }

    /// `PUBSUB NUMSUB` of application channel `channel`.
    pub async fn numsub(&self, channel: &str) -> Result<i64> {
        self.numsub_raw(&self.channel_name(channel)).await
    }

    /// Waits until `PUBSUB NUMSUB` of `channel` is `want`.
    pub async fn wait_numsub(&self, channel: &str, want: i64) -> Result<()> {
        let name = self.channel_name(channel);
        let result = eventually(
            crate::EVENTUALLY,
            &format!("PUBSUB NUMSUB {name} == {want}"),
            || {
                let name = name.clone();
                async move { matches!(self.numsub_raw(&name).await, Ok(n) if n == want) }
            },
        )
        .await;
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                let now = self.numsub_raw(&name).await;
                Err(e.context(format!("last NUMSUB: {now:?}")))
            }
        }
    }

    /// The redis-server's process id (from `INFO server`).
    pub async fn redis_pid(&self) -> Result<u32> {
        let info = self
            .redis
            .cmd(&["INFO", "server"])
            .await?
            .as_text()
            .context("INFO server reply is not text")?;
        info.lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .context("INFO server lacks process_id")?
            .trim()
            .parse()
            .context("unparsable process_id")
    }

    /// Sends `SIGSTOP` (`freeze`) or `SIGCONT` to the redis-server: a
    /// frozen Redis keeps its sockets open but answers nothing, like a
    /// stalled host or a network black hole; returns once it has stopped.
    /// (Dropping the cluster kills a frozen server too: SIGKILL works on
    /// stopped processes.)
    pub async fn freeze_redis(&self, freeze: bool) -> Result<()> {
        if let Some(group) = &self.redis_cluster {
            for node in &group.nodes {
                if let Some(pid) = node.pid() {
                    process::freeze(pid, freeze, "redis-server").await?;
                }
            }
            return Ok(());
        }
        let pid = if freeze {
            let pid = self.redis_pid().await?;
            self.frozen_pid.store(pid, Ordering::Relaxed);
            pid
        } else {
            self.frozen_pid.load(Ordering::Relaxed)
        };
        process::freeze(pid, freeze, "redis-server").await
    }

    /// Whether node `n`'s process is still running (false when it was
    /// killed through its handle or exited on its own).
    pub fn is_alive(&self, n: usize) -> bool {
        self.node(n).pid().is_some_and(process::process_alive)
    }
}

/// The ids in a `GET /api/nodes` answer, sorted.
pub fn node_ids(body: &Value) -> Vec<String> {
    let mut ids: Vec<String> = body["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|n| n["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}
