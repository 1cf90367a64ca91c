//! A throw-away Redis Cluster for the cluster-mode tests (issue 11): three
//! primaries and three replicas, native `redis-server --cluster-enabled
//! yes` processes on free loopback ports (data and bus ports both chosen
//! free, so the +10000 rule never collides), joined by `redis-cli
//! --cluster create ... --cluster-replicas 1`.
//!
//! [`RedisCluster::start`] returns once the cluster can serve and fail
//! over: every node reports `cluster_state:ok` with all 16384 slots and the
//! six nodes, and every replica's link to its primary is up.
//! [`RedisCluster::kill`] kills one node with SIGKILL;
//! [`RedisCluster::wait_promoted`] polls a survivor until the killed
//! primary's replica serves its slots.
//!
//! Settings for fast, test-friendly failover: `cluster-node-timeout 1000`,
//! `cluster-replica-validity-factor 0` (a replica may always take over),
//! `cluster-require-full-coverage no` (one shard down leaves the others
//! serving, as production should run).
//!
//! Invariants: every process is killed and reaped when the handle drops
//! (each is a [`RedisServer`]), and the node directories are removed then.
//! Every wait is bounded.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{eventually, eventually_some, RedisServer, Resp};

/// How long the cluster may take to form (the create, then gossip).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a failover may take (about 2.4 s measured with a 1 s node
/// timeout; generous for a loaded machine).
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(40);

static DIR_COUNTER: AtomicU32 = AtomicU32::new(0);

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLine {
    /// The node's id.
    pub id: String,
    /// Its data port.
    pub port: u16,
    /// Whether it is a primary (flag `master`).
    pub primary: bool,
    /// Whether it is flagged failed (`fail`, or `fail?` not yet agreed).
    pub failed: bool,
    /// The id of its primary (replicas), `-` for primaries.
    pub primary_id: String,
    /// Slot ranges it serves (primaries), as `CLUSTER NODES` prints them.
    pub slots: Vec<String>,
}

/// Parse `CLUSTER NODES`.
pub fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            // ip:port@cport[,hostname]
            let port = f[1].split('@').next()?.rsplit(':').next()?.parse().ok()?;
            let flags: Vec<&str> = f[2].split(',').collect();
            Some(NodeLine {
                id: f[0].to_owned(),
                port,
                primary: flags.contains(&"master"),
                failed: flags.iter().any(|x| x.starts_with("fail")),
                primary_id: f[3].to_owned(),
                slots: f[8..].iter().map(|s| (*s).to_owned()).collect(),
            })
        })
        .collect()
}

/// A running Redis Cluster. See the module docs.
#[derive(Debug)]
pub struct RedisCluster {
    /// The six nodes: the first three are the initial primaries.
    pub nodes: Vec<RedisServer>,
    dirs: Vec<PathBuf>,
}

impl RedisCluster {
    /// Starts six nodes, creates the cluster and waits until it is ready.
    pub async fn start() -> Result<Self> {
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        for _ in 0..6 {
            let n = DIR_COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("gwt-cluster-{}-{n}", std::process::id()));
            fs::create_dir_all(&dir)?;
            let bus = crate::free_ports(1)?[0].to_string();
            let conf = dir.join("nodes.conf");
            let dir_s = dir.to_string_lossy().into_owned();
            let conf_s = conf.to_string_lossy().into_owned();
            let node = RedisServer::start_with(&[
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus,
                "--cluster-config-file",
                &conf_s,
                "--dir",
                &dir_s,
                "--cluster-node-timeout",
                "1000",
                "--cluster-replica-validity-factor",
                "0",
                "--cluster-require-full-coverage",
                "no",
            ])
            .await?;
            dirs.push(dir);
            nodes.push(node);
        }
        let cluster = Self { nodes, dirs };
        cluster.create()?;
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    fn create(&self) -> Result<()> {
        let mut cmd = Command::new("redis-cli");
        cmd.arg("--cluster").arg("create");
        for node in &self.nodes {
            cmd.arg(format!("127.0.0.1:{}", node.port()));
        }
        cmd.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = cmd
            .output()
            .context("running redis-cli --cluster create (is redis-tools installed?)")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    async fn wait_ready(&self) -> Result<()> {
        for node in &self.nodes {
            eventually(
                READY_TIMEOUT,
                "cluster_state:ok on every node",
                || async move {
                    let Some(info) = text(node, &["CLUSTER", "INFO"]).await else {
                        return false;
                    };
                    info.contains("cluster_state:ok")
                        && info.contains("cluster_slots_ok:16384")
                        && info.contains("cluster_known_nodes:6")
                },
            )
            .await?;
        }
        for node in &self.nodes {
            eventually(
                READY_TIMEOUT,
                "every replica linked to its primary",
                || async move {
                    let Some(info) = text(node, &["INFO", "replication"]).await else {
                        return false;
                    };
                    info.contains("role:master") || info.contains("master_link_status:up")
                },
            )
            .await?;
        }
        // After a restart a node may still flag another `fail` (or
        // `fail?`) for a while although `cluster_state` is ok: a gateway
        // reading its slot map then sees that primary failed and refuses
        // its slots. The cluster is back when no node's view flags any.
        for node in &self.nodes {
            eventually(
                READY_TIMEOUT,
                "no node flagged failed in any node's view",
                || async move {
                    let Some(t) = text(node, &["CLUSTER", "NODES"]).await else {
                        return false;
                    };
                    let nodes = parse_nodes(&t);
                    nodes.len() == 6 && nodes.iter().all(|n| !n.failed)
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Start every stopped node again on its port with its nodes.conf
    /// (empty: no persistence), and wait until the cluster is ready again.
    pub async fn restart_all(&mut self) -> Result<()> {
        for node in &mut self.nodes {
            if !node.is_running() {
                node.restart().await?;
            }
        }
        self.wait_ready().await
    }

    /// The data ports of all six nodes ("127.0.0.1:port" seeds).
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect()
    }

    /// `CLUSTER NODES` as seen by the first running node.
    pub async fn topology(&self) -> Result<Vec<NodeLine>> {
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            if let Some(t) = text(node, &["CLUSTER", "NODES"]).await {
                return Ok(parse_nodes(&t));
            }
        }
        bail!("no running cluster node answers CLUSTER NODES")
    }

    /// The live primaries' data ports.
    pub async fn primaries(&self) -> Result<Vec<u16>> {
        Ok(self
            .topology()
            .await?
            .into_iter()
            .filter(|n| n.primary && !n.failed)
            .map(|n| n.port)
            .collect())
    }

    /// The data port of the primary serving `key`'s slot (asked with
    /// `CLUSTER KEYSLOT`, then matched against the slot ranges).
    pub async fn primary_for(&self, key: &str) -> Result<u16> {
        let node = self
            .nodes
            .iter()
            .find(|n| n.is_running())
            .context("no running node")?;
        let slot = match node.cmd(&["CLUSTER", "KEYSLOT", key]).await? {
            Resp::Int(s) => s,
            other => bail!("CLUSTER KEYSLOT {key}: {other:?}"),
        };
        for n in self.topology().await? {
            if !n.primary || n.failed {
                continue;
            }
            for range in &n.slots {
                let (lo, hi) = match range.split_once('-') {
                    Some((a, b)) => (a.parse::<i64>()?, b.parse::<i64>()?),
                    None => match range.parse::<i64>() {
                        Ok(s) => (s, s),
                        Err(_) => continue, // migrating/importing markers
                    },
                };
                if (lo..=hi).contains(&slot) {
                    return Ok(n.port);
                }
            }
        }
        bail!("no live primary serves slot {slot} of {key:?}")
    }

    /// The node on `port`.
    pub fn node(&self, port: u16) -> Option<&RedisServer> {
        self.nodes.iter().find(|n| n.port() == port)
    }

    /// Kill the node on `port` with SIGKILL.
    pub fn kill(&mut self, port: u16) -> Result<()> {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .with_context(|| format!("no cluster node on port {port}"))?;
        node.stop();
        Ok(())
    }

    /// Kill the primary on `port` with SIGKILL; returns the id of its
    /// replica, which the cluster will promote.
    pub async fn kill_primary(&mut self, port: u16) -> Result<String> {
        let nodes = self.topology().await?;
        let old = nodes
            .iter()
            .find(|n| n.port == port && n.primary)
            .with_context(|| format!("no primary on port {port}"))?;
        let replica = nodes
            .iter()
            .find(|n| n.primary_id == old.id)
            .map(|n| n.id.clone())
            .with_context(|| format!("the primary on port {port} has no replica"))?;
        self.kill(port)?;
        Ok(replica)
    }

    /// Wait until the node `replica_id` is a primary serving slots; its
    /// data port.
    pub async fn wait_promoted(&self, replica_id: &str) -> Result<u16> {
        eventually_some(
            FAILOVER_TIMEOUT,
            "the killed primary's replica promoted",
            || async move {
                let nodes = self.topology().await.ok()?;
                nodes
                    .iter()
                    .find(|n| n.id == replica_id && n.primary && !n.failed && !n.slots.is_empty())
                    .map(|n| n.port)
            },
        )
        .await
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
        for dir in &self.dirs {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

async fn text(server: &RedisServer, args: &[&str]) -> Option<String> {
    server.cmd(args).await.ok()?.as_text()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cluster_nodes() {
        let text = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460
6ec23923021cf3ffec47632106199cb7f496ce01 127.0.0.1:30005@31005 master,fail - 1426238316232 0 5 disconnected
";
        let nodes = parse_nodes(text);
        assert_eq!(nodes.len(), 4);
        assert_eq!(nodes[0].port, 30004);
        assert!(!nodes[0].primary);
        assert_eq!(
            nodes[0].primary_id,
            "e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca"
        );
        assert!(nodes[2].primary && !nodes[2].failed);
        assert_eq!(nodes[2].slots, ["0-5460"]);
        assert!(nodes[3].primary && nodes[3].failed && nodes[3].slots.is_empty());
    }
}
