//! The Redis side of `shard-spread`: a throw-away Redis Cluster of three
//! primaries and three replicas on free loopback ports (as the test
//! harness `tests/src/redis_cluster.rs` starts one; copied, the loadtest
//! crate does not depend on `tests`), `redis-cli` to talk to the nodes,
//! and the readers of what they answer (`INFO`, `CLUSTER NODES`) plus the
//! key slot of a channel (CRC16 of its hash tag, as Redis computes it).
//!
//! Invariants: every node is a [`Proc`] (killed when its handle drops) and
//! its directory is removed by [`RedisCluster::stop`]; every wait is
//! bounded; data and cluster-bus ports are all distinct.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::process::Command;
use tokio::time::Instant;

use crate::suite::nodes::{free_port, run_cmd, Ctx, Proc};

/// Primaries of the cluster.
pub(super) const PRIMARIES: usize = 3;
/// How long the cluster may take to form (the create, then gossip).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `redis-cli -h 127.0.0.1 -p <port> <args>`; its stdout.
pub(super) async fn cli(bin: &str, port: u16, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new(bin);
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(std::process::Stdio::null());
    run_cmd(
        &mut cmd,
        &format!("{bin} -p {port} {}", args.join(" ")),
        Duration::from_secs(10),
    )
    .await
}

/// The `field:value` lines of an `INFO` (or `CLUSTER INFO`) reply.
pub(super) fn info_fields(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.trim().split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// What one Redis process had done at one moment (the counters whose
/// deltas the report gives).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Counters {
    /// `total_commands_processed`.
    pub commands: u64,
    /// `cmdstat_publish` calls.
    pub publish: u64,
    /// `cmdstat_spublish` calls.
    pub spublish: u64,
    /// `cmdstat_evalsha` calls.
    pub evalsha: u64,
}

impl Counters {
    /// From the text of `INFO stats commandstats`.
    pub(super) fn parse(text: &str) -> Counters {
        let f = info_fields(text);
        let calls = |cmd: &str| -> u64 {
            f.get(&format!("cmdstat_{cmd}"))
                .and_then(|v| v.split(',').find_map(|kv| kv.strip_prefix("calls=")))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        Counters {
            commands: f
                .get("total_commands_processed")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            publish: calls("publish"),
            spublish: calls("spublish"),
            evalsha: calls("evalsha"),
        }
    }

    /// `self - before`, field by field.
    pub(super) fn since(&self, before: &Counters) -> Counters {
        Counters {
            commands: self.commands.saturating_sub(before.commands),
            publish: self.publish.saturating_sub(before.publish),
            spublish: self.spublish.saturating_sub(before.spublish),
            evalsha: self.evalsha.saturating_sub(before.evalsha),
        }
    }
}

/// The counters of the Redis on `port` (zero when it does not answer:
/// the report then shows no share rather than failing the run).
pub(super) async fn counters(bin: &str, port: u16) -> Counters {
    cli(bin, port, &["INFO", "stats", "commandstats"])
        .await
        .map(|t| Counters::parse(&t))
        .unwrap_or_default()
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(super) struct NodeLine {
    /// The node's id.
    pub(super) id: String,
    /// Its data port.
    pub(super) port: u16,
    /// Whether it is a primary (flag `master`).
    pub(super) primary: bool,
    /// The id of its primary (replicas), `-` for primaries.
    pub(super) primary_id: String,
    /// Slot ranges it serves (primaries), inclusive.
    pub(super) slots: Vec<(u16, u16)>,
}

/// Parses `CLUSTER NODES`.
pub(super) fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            // ip:port@cport[,hostname]
            let port = f[1].split('@').next()?.rsplit(':').next()?.parse().ok()?;
            let flags: Vec<&str> = f[2].split(',').collect();
            let slots = f[8..]
                .iter()
                .filter_map(|r| match r.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    // A single slot, or a migrating/importing marker.
                    None => r.parse().ok().map(|s| (s, s)),
                })
                .collect();
            Some(NodeLine {
                id: f[0].to_owned(),
                port,
                primary: flags.contains(&"master"),
                primary_id: f[3].to_owned(),
                slots,
            })
        })
        .collect()
}

/// CRC16-CCITT (XModem), the checksum of Redis Cluster key slots.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The key slot of every key and pub/sub name of application channel
/// `channel` (they share the hash tag `{<channel>}`).
pub(super) fn channel_slot(channel: &str) -> u16 {
    crc16(channel.as_bytes()) % 16384
}

/// A running Redis Cluster. See the module docs.
pub(super) struct RedisCluster {
    procs: Vec<Proc>,
    /// The nodes' data ports, in start order.
    pub(super) ports: Vec<u16>,
    dirs: Vec<PathBuf>,
    /// `CLUSTER NODES` once the cluster was ready.
    pub(super) nodes: Vec<NodeLine>,
}

impl RedisCluster {
    /// Starts 3 x (1 + `replicas`) nodes, creates the cluster with
    /// `redis-cli --cluster create ... --cluster-replicas <replicas>` and
    /// waits until it is ready.
    pub(super) async fn start(
        ctx: &mut Ctx,
        cli_bin: &str,
        replicas: usize,
    ) -> Result<RedisCluster> {
        let count = PRIMARIES * (1 + replicas);
        let mut taken = BTreeSet::new();
        let mut fresh = || -> Result<u16> {
            for _ in 0..100 {
                let p = free_port()?;
                // The kernel's +10000 rule for bus ports is not used: both
                // are chosen free, and never twice.
                if taken.insert(p) {
                    return Ok(p);
                }
            }
            bail!("no fresh free port in 100 tries")
        };
        let mut wanted = Vec::new();
        for _ in 0..count {
            wanted.push((fresh()?, fresh()?));
        }
        let mut cluster = RedisCluster {
            procs: Vec::new(),
            ports: Vec::new(),
            dirs: Vec::new(),
            nodes: Vec::new(),
        };
        for (i, (port, bus)) in wanted.into_iter().enumerate() {
            let dir = ctx.logs.join(format!("redis-cluster-{port}"));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            cluster.dirs.push(dir.clone());
            let extra: Vec<String> = [
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus.to_string(),
                "--cluster-config-file",
                &dir.join("nodes.conf").to_string_lossy(),
                "--dir",
                &dir.to_string_lossy(),
                "--cluster-node-timeout",
                "1000",
                "--cluster-require-full-coverage",
                "no",
                "--repl-diskless-sync-delay",
                "0",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            let (proc, _) = ctx
                .redis_with(&format!("redis-cluster-{i}"), port, &extra)
                .await?;
            cluster.procs.push(proc);
            cluster.ports.push(port);
        }
        let mut create = Command::new(cli_bin);
        create.args(["--cluster", "create"]);
        for p in &cluster.ports {
            create.arg(format!("127.0.0.1:{p}"));
        }
        create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(std::process::Stdio::null());
        run_cmd(
            &mut create,
            "redis-cli --cluster create (is redis-tools installed?)",
            READY_TIMEOUT,
        )
        .await?;
        cluster.wait_ready(cli_bin).await?;
        let text = cli(cli_bin, cluster.ports[0], &["CLUSTER", "NODES"]).await?;
        cluster.nodes = parse_nodes(&text);
        let primaries = cluster.nodes.iter().filter(|n| n.primary).count();
        if primaries != PRIMARIES || cluster.nodes.len() != count {
            bail!("the cluster formed with {primaries} primaries: {text}");
        }
        Ok(cluster)
    }

    /// Waits until every node says `cluster_state:ok` with all slots and
    /// all nodes, and every replica's link to its primary is up.
    async fn wait_ready(&self, cli_bin: &str) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        for &port in &self.ports {
            loop {
                let info = cli(cli_bin, port, &["CLUSTER", "INFO"])
                    .await
                    .map(|t| info_fields(&t))
                    .unwrap_or_default();
                let is = |k: &str, v: &str| info.get(k).is_some_and(|x| x == v);
                if is("cluster_state", "ok")
                    && is("cluster_slots_ok", "16384")
                    && is("cluster_known_nodes", &self.ports.len().to_string())
                {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("Redis Cluster node {port} not ready in {READY_TIMEOUT:?}: {info:?}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        for &port in &self.ports {
            loop {
                let info = cli(cli_bin, port, &["INFO", "replication"])
                    .await
                    .map(|t| info_fields(&t))
                    .unwrap_or_default();
                let role = info.get("role").map(String::as_str);
                if role == Some("master")
                    || (role == Some("slave")
                        && info.get("master_link_status").is_some_and(|s| s == "up"))
                {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("Redis Cluster replica {port} not linked in {READY_TIMEOUT:?}: {info:?}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// `127.0.0.1:<port>` of every node.
    pub(super) fn seeds(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }

    /// The node processes' pids, in the order of [`RedisCluster::ports`].
    pub(super) fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Proc::pid).collect()
    }

    /// The node on `port`, as `CLUSTER NODES` listed it.
    pub(super) fn node(&self, port: u16) -> Option<&NodeLine> {
        self.nodes.iter().find(|n| n.port == port)
    }

    /// The data port of the primary serving `slot`.
    pub(super) fn primary_of(&self, slot: u16) -> Option<u16> {
        self.nodes
            .iter()
            .filter(|n| n.primary)
            .find(|n| n.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)))
            .map(|n| n.port)
    }

    /// Kills every node, then removes their directories.
    pub(super) async fn stop(self) {
        for p in self.procs {
            p.stop().await;
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // From the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(channel_slot("foo"), 12182);
        assert_eq!(channel_slot("somekey"), 11058);
    }

    #[test]
    fn parses_cluster_nodes_and_info() {
        let text = "\
07c3 127.0.0.1:30004@31004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
e7d1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 16000
";
        let nodes = parse_nodes(text);
        assert_eq!(nodes.len(), 3);
        assert!(!nodes[0].primary);
        assert_eq!(nodes[0].primary_id, "e7d1");
        assert_eq!(nodes[2].slots, [(0, 5460), (16000, 16000)]);
        let info = "# Stats\r\ntotal_commands_processed:120\r\n\r\n# Commandstats\r\n\
                    cmdstat_spublish:calls=100,usec=300,usec_per_call=3.00,rejected_calls=0,failed_calls=0\r\n\
                    cmdstat_ping:calls=2,usec=1\r\n";
        let c = Counters::parse(info);
        assert_eq!((c.commands, c.spublish, c.publish), (120, 100, 0));
    }
}
