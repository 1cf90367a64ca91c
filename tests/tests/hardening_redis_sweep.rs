//! The presence sweep's Redis cost is bounded per tick, not proportional to
//! the node's channel count (issue 10, item 6; docs/redis.md "Presence
//! maintenance"): 50 idle connections x 128 join/leave channels each (6,400
//! channels) on one node with a 6 s presence TTL; Redis `INFO
//! commandstats` over 10 s counts what the sweep sent (its scripts run as
//! `EVALSHA` + `ZRANGEBYSCORE`; the refresh uses neither).

use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::future::try_join_all;
use tests::cluster::Cluster;
use tests::RedisServer;

const CONNS: usize = 50;
const CHANNELS_PER_CONN: usize = 128;
/// `presence_sweep_batch` default.
const BATCH: u64 = 500;
/// Measurement window (a measurement, not a wait for a condition).
const WINDOW: Duration = Duration::from_secs(10);

/// `calls` of every command in `INFO commandstats`.
async fn commandstats(redis: &RedisServer) -> Result<Vec<(String, u64)>> {
    let text = redis
        .cmd(&["INFO", "commandstats"])
        .await?
        .as_text()
        .context("INFO reply")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect())
}

#[tokio::test]
async fn an_idle_sweep_costs_a_bounded_number_of_commands() -> Result<()> {
    let cluster = Cluster::builder("hard_sweep")
        .nodes(1)
        .presence_ttl(6000, 2000)
        .env("GATEWAY_JOIN_LEAVE_BURST", 1000)
        .start()
        .await?;
    let clients = try_join_all((0..CONNS).map(|c| {
        let node = cluster.node(1);
        async move {
            let mut client = node.connect_user(&format!("u{c}")).await?;
            for i in 0..CHANNELS_PER_CONN {
                client.subscribe(&format!("chat:sweep-{c}-{i}")).await?;
            }
            anyhow::Ok(client)
        }
    }))
    .await?;
    cluster.redis.cmd(&["CONFIG", "RESETSTAT"]).await?;
    tokio::time::sleep(WINDOW).await;
    let stats = commandstats(&cluster.redis).await?;
    let calls = |name: &str| stats.iter().find(|(n, _)| n == name).map_or(0, |(_, c)| *c);
    let total: u64 = stats.iter().map(|(_, c)| c).sum();
    let sweep = calls("evalsha") + calls("zrangebyscore");
    println!(
        "{CONNS} conns x {CHANNELS_PER_CONN} channels, TTL 6 s, 10 s idle: {total} Redis commands, \
         of which sweep (evalsha + zrangebyscore) {sweep}; {stats:?}"
    );
    // Sweep ticks every TTL / 4 = 1.5 s: at most 7 ticks in 10 s, each at
    // most BATCH channels, two commands each; plus heartbeats and purge
    // checks (a few per second).
    let bound = 7 * BATCH * 2 + 500;
    anyhow::ensure!(
        sweep <= bound,
        "the sweep sent {sweep} commands in 10 s (bound {bound})"
    );
    drop(clients);
    Ok(())
}
