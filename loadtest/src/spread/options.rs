//! The options of `shard-spread` ([`SpreadArgs`], their validation) and the
//! topologies it compares ([`Topo`]).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::fanout::Via;

/// Where the gateways keep their pub/sub and data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Topo {
    /// One redis-server.
    Single,
    /// A Redis Cluster: 3 primaries + 3 replicas.
    Cluster,
}

/// Options of `shard-spread`.
#[derive(Debug, Clone, Args)]
pub struct SpreadArgs {
    /// Channels (`spread:<i>`, or `spreadh:<i>` with --history).
    #[arg(long, default_value_t = 300)]
    pub channels: u64,
    /// Subscriber connections per gateway node, each subscribed to every
    /// channel.
    #[arg(long, default_value_t = 3)]
    pub subscribers_per_node: u64,
    /// How long to publish in each topology, s.
    #[arg(long, default_value_t = 15.0)]
    pub duration_secs: f64,
    /// How to publish: the WebSocket publish op (default; cheaper per
    /// publication for the gateway and this generator) or POST
    /// /api/publish.
    #[arg(long, value_enum, default_value_t = Via::Ws)]
    pub via: Via,
    /// Publishers per gateway node (WebSocket connections; with --via http,
    /// groups of --window request loops).
    #[arg(long, default_value_t = 2)]
    pub publishers_per_node: u64,
    /// Publications in flight per publisher.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Publications per second over all publishers; 0 = flat out. (A
    /// fixed rate compares the Redis CPU per publication of one Redis and
    /// of each primary at the same per-process rate.)
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Payload (the `data` string) size, bytes.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Publish to a namespace with history (history_size 100: one
    /// publish.lua EVALSHA per publication) instead of plain pub/sub.
    #[arg(long)]
    pub history: bool,
    /// The topologies to run, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Topo::Single, Topo::Cluster])]
    pub topologies: Vec<Topo>,
    /// Replicas per primary in the Redis Cluster (0 shows what the
    /// replication stream costs the primaries).
    #[arg(long, default_value_t = 1)]
    pub cluster_replicas: usize,
    /// Gateway binary.
    #[arg(long, default_value = "target/release/gateway")]
    pub gateway_bin: PathBuf,
    /// redis-server binary.
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
    /// redis-cli binary (creates the cluster, reads INFO).
    #[arg(long, default_value = "redis-cli")]
    pub redis_cli: String,
    /// Runtime threads of each gateway (`GATEWAY_WORKER_THREADS`); 0 = the
    /// gateway's default (one per CPU).
    #[arg(long, default_value_t = 0)]
    pub worker_threads: usize,
    /// The check: the primaries' CPU (max / min) must be within this
    /// factor.
    #[arg(long, default_value_t = 2.0)]
    pub max_spread: f64,
    /// Seconds of the idle CPU sample before publishing (subscribers and
    /// publishers connected, nothing published), which the report
    /// subtracts for the CPU per publication above idle; 0 = none.
    #[arg(long, default_value_t = 3.0)]
    pub idle_secs: f64,
    /// Where `<date>-shard-spread.{json,md}` go.
    #[arg(long, default_value = "loadtest/results")]
    pub out_dir: PathBuf,
    /// Do not write `<out-dir>/<date>-shard-spread.{json,md}`.
    #[arg(long)]
    pub no_results: bool,
    /// Also write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No progress lines.
    #[arg(long)]
    pub no_progress: bool,
}

impl SpreadArgs {
    pub(super) fn validate(&self) -> Result<()> {
        if self.channels == 0 || self.subscribers_per_node == 0 || self.publishers_per_node == 0 {
            bail!("--channels, --subscribers-per-node and --publishers-per-node must be > 0");
        }
        if !(self.duration_secs > 0.0 && self.duration_secs <= 3600.0) {
            bail!("--duration-secs must be in (0, 3600]");
        }
        if self.cluster_replicas > 2 {
            bail!("--cluster-replicas must be 0..=2");
        }
        if self.max_spread < 1.0 {
            bail!("--max-spread must be >= 1");
        }
        if !(0.0..=60.0).contains(&self.idle_secs) {
            bail!("--idle-secs must be in [0, 60]");
        }
        if !(0.0..=10_000_000.0).contains(&self.rate) {
            bail!("--rate must be in [0, 10,000,000]");
        }
        if self.window == 0 || self.window > 4096 {
            bail!("--window must be 1..=4096");
        }
        if self.topologies.is_empty() {
            bail!("give at least one topology");
        }
        if !self.gateway_bin.exists() {
            bail!(
                "gateway binary {} not found (cargo build --release -p gateway)",
                self.gateway_bin.display()
            );
        }
        Ok(())
    }

    pub(super) fn prefix(&self) -> &'static str {
        if self.history {
            "spreadh:"
        } else {
            "spread:"
        }
    }
}
