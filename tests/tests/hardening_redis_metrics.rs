//! Counters that move only on trouble are exported at 0 from the start
//! (issue 10, item 10; docs/operations.md metrics): a fresh cluster node's
//! `/metrics` lists every error and failure counter with each of its label
//! values, so `rate()` and alerts see the first error as a rise.

use anyhow::{ensure, Result};
use tests::cluster::Cluster;

/// Series a fresh node must list at 0 (a sample of every counter and of
/// each error `op`).
const AT_ZERO: &[&str] = &[
    "gateway_backend_errors_total{op=\"publish\"}",
    "gateway_backend_errors_total{op=\"history_read\"}",
    "gateway_backend_errors_total{op=\"presence_refresh\"}",
    "gateway_backend_errors_total{op=\"node_heartbeat\"}",
    "gateway_backend_errors_total{op=\"presence_expire\"}",
    "gateway_backend_errors_total{op=\"user_conns\"}",
    "gateway_backend_errors_total{op=\"node_purge\"}",
    "gateway_redis_errors_total{op=\"publish\"}",
    "gateway_redis_errors_total{op=\"probe\"}",
    "gateway_redis_errors_total{op=\"connect\"}",
    "gateway_redis_errors_total{op=\"decode\"}",
    "gateway_redis_errors_total{op=\"presence_sweep\"}",
    "gateway_redis_probe_failures_total",
    "gateway_redis_reconnects_total",
    "gateway_history_replays_total{recovered=\"false\"}",
    "gateway_history_replays_total{recovered=\"true\"}",
    "gateway_messages_received_total{op=\"binary\"}",
    "gateway_messages_received_total{op=\"invalid\"}",
    "gateway_presence_nodes_purged_total",
    "gateway_presence_purged_members_total",
    "gateway_api_requests_total{route=\"/api/publish\",status=\"503\"}",
    "gateway_api_requests_total{route=\"/api/nodes\",status=\"401\"}",
];

#[tokio::test]
async fn a_fresh_node_exports_every_error_counter_at_zero() -> Result<()> {
    let cluster = Cluster::builder("hard_zero").nodes(1).start().await?;
    let text = cluster.api(1).metrics().await?;
    let missing: Vec<&str> = AT_ZERO
        .iter()
        .copied()
        .filter(|series| !text.lines().any(|l| l.strip_prefix(series) == Some(" 0")))
        .collect();
    ensure!(
        missing.is_empty(),
        "not listed at 0 on a fresh node: {missing:?}"
    );
    Ok(())
}
