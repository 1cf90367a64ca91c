//! The processes of one phase: the Redis of its topology (one
//! redis-server or a Redis Cluster) and the gateway nodes on it, started
//! fresh, and the wait until every node is ready.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Result};
use tokio::time::Instant;

use super::options::{SpreadArgs, Topo};
use super::redis::RedisCluster;
use crate::common::now_us;
use crate::suite::nodes::{Ctx, Proc};

/// Gateway nodes in each phase.
const GATEWAYS: usize = 3;

/// The Redis of one phase, running.
pub(super) enum RedisSide {
    Single { proc: Proc, port: u16 },
    Cluster(RedisCluster),
}

impl RedisSide {
    /// (port, pid) of every Redis process.
    pub(super) fn procs(&self) -> Vec<(u16, u32)> {
        match self {
            RedisSide::Single { proc, port } => vec![(*port, proc.pid())],
            RedisSide::Cluster(c) => c.ports.iter().copied().zip(c.pids()).collect(),
        }
    }

    pub(super) async fn stop(self) {
        match self {
            RedisSide::Single { proc, .. } => proc.stop().await,
            RedisSide::Cluster(c) => c.stop().await,
        }
    }
}

/// Starts the Redis of `topo` and the gateways on it.
pub(super) async fn start(
    ctx: &mut Ctx,
    args: &SpreadArgs,
    topo: Topo,
) -> Result<(RedisSide, Vec<Proc>, Vec<SocketAddr>)> {
    let prefix = format!("sp{}", now_us() % 1_000_000);
    let mut env: Vec<(String, String)> = vec![
        ("GATEWAY_REDIS_PREFIX".into(), prefix),
        (
            "GATEWAY_MAX_CHANNELS_PER_CONNECTION".into(),
            args.channels.max(128).to_string(),
        ),
        ("GATEWAY_RATE_LIMIT".into(), "1000000".into()),
        ("GATEWAY_RATE_BURST".into(), "1000000".into()),
    ];
    if args.worker_threads > 0 {
        env.push((
            "GATEWAY_WORKER_THREADS".into(),
            args.worker_threads.to_string(),
        ));
    }
    let side = match topo {
        Topo::Single => {
            let port = crate::suite::nodes::free_port()?;
            let (proc, r) = ctx.redis_with("redis-single", port, &[]).await?;
            env.push(("GATEWAY_REDIS_URL".into(), r.url));
            RedisSide::Single { proc, port }
        }
        Topo::Cluster => {
            let c = RedisCluster::start(ctx, &args.redis_cli, args.cluster_replicas).await?;
            env.push(("GATEWAY_REDIS_TOPOLOGY".into(), "cluster".into()));
            env.push(("GATEWAY_REDIS_CLUSTER_NODES".into(), c.seeds().join(",")));
            RedisSide::Cluster(c)
        }
    };
    let mut gateways = Vec::new();
    let mut addrs = Vec::new();
    let tag = match topo {
        Topo::Single => "ss",
        Topo::Cluster => "sc",
    };
    for i in 0..GATEWAYS {
        let (gw, addr) = ctx.gateway_env(&format!("{tag}{i}"), None, &env).await?;
        gateways.push(gw);
        addrs.push(addr);
    }
    Ok((side, gateways, addrs))
}

/// Polls every node's /readyz until all answer 200 (bounded).
pub(super) async fn wait_ready(
    http: &reqwest::Client,
    addrs: &[SocketAddr],
    bound: Duration,
) -> Result<()> {
    let deadline = Instant::now() + bound;
    for a in addrs {
        loop {
            let ok = http
                .get(format!("http://{a}/readyz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                break;
            }
            if Instant::now() > deadline {
                bail!("gateway {a} not ready after {bound:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}
