//! Metric names, their descriptions, and the Prometheus recorder.
//!
//! Every metric is `gateway_<subsystem>_<what>` with a bounded label set
//! (never a channel, user or raw path). Names live here so the dashboard,
//! alerts and code agree on one list.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Open client connections (gauge).
pub const CONNECTIONS: &str = "gateway_connections";
/// Open Pusher connections by `app` (gauge; docs/pusher.md).
pub const PUSHER_CONNECTIONS: &str = "gateway_pusher_connections";
/// Connections accepted (counter); Pusher ones carry `protocol="pusher"`.
pub const CONNECTIONS_ACCEPTED: &str = "gateway_connections_accepted_total";
/// Connection attempts refused before the upgrade, by `reason` (counter).
pub const CONNECTIONS_REFUSED: &str = "gateway_connections_refused_total";
/// Connections closed, by `reason` (counter).
pub const DISCONNECTS: &str = "gateway_disconnects_total";
/// Client frames received, by `op` (counter).
pub const MESSAGES_RECEIVED: &str = "gateway_messages_received_total";
/// Frames written to clients (counter).
pub const MESSAGES_SENT: &str = "gateway_messages_sent_total";
/// Bytes received from clients (counter).
pub const BYTES_IN: &str = "gateway_bytes_received_total";
/// Bytes written to clients (counter).
pub const BYTES_OUT: &str = "gateway_bytes_sent_total";
/// Publications accepted by the backplane, by `source` (counter).
pub const PUBLICATIONS: &str = "gateway_publications_total";
/// Frames queued to local subscribers (counter).
pub const DELIVERIES: &str = "gateway_deliveries_total";
/// Connections closed as slow consumers (counter).
pub const SLOW_CONSUMERS: &str = "gateway_slow_consumers_total";
/// Frames dropped, by `reason` (counter).
pub const DROPPED: &str = "gateway_messages_dropped_total";
/// Local channel subscriptions (gauge).
pub const SUBSCRIPTIONS: &str = "gateway_subscriptions";
/// Channels with local subscribers (gauge).
pub const CHANNELS: &str = "gateway_channels";
/// Publish-to-fan-out lag (histogram, seconds).
pub const DELIVERY_LAG: &str = "gateway_delivery_lag_seconds";
/// Error replies sent to clients, by `code` (counter).
pub const ERRORS: &str = "gateway_errors_total";
/// Authentication failures, by `reason` (counter).
pub const AUTH_FAILURES: &str = "gateway_auth_failures_total";
/// Client frames refused by the rate limiter (counter).
pub const RATE_LIMITED: &str = "gateway_rate_limited_total";
/// HTTP API requests, by `route` and `status` (counter).
pub const API_REQUESTS: &str = "gateway_api_requests_total";
/// HTTP API latency, by `route` (histogram, seconds).
pub const API_LATENCY: &str = "gateway_api_request_duration_seconds";
/// Backend call failures, by `op` (counter).
pub const BACKEND_ERRORS: &str = "gateway_backend_errors_total";
/// Presence refresh duration (histogram, seconds).
pub const PRESENCE_REFRESH: &str = "gateway_presence_refresh_duration_seconds";
/// Presence and user-index entries written back after the backend lost
/// them or took them as expired (counter).
pub const PRESENCE_RESTORED: &str = "gateway_presence_restored_total";
/// History replays on subscribe, by `recovered` (counter).
pub const HISTORY_REPLAYS: &str = "gateway_history_replays_total";
/// Node info (gauge 1 with `version` and `node` labels).
pub const NODE_INFO: &str = "gateway_node_info";
/// Envelopes dropped because their fan-out worker's queue was full, by
/// `kind` (counter).
pub const FANOUT_OVERFLOW: &str = "gateway_fanout_overflow_total";
/// Envelopes waiting in the fan-out workers' queues (gauge, set at scrape).
pub const FANOUT_QUEUED: &str = "gateway_fanout_queued";
/// Gaps in a channel's offsets found by a subscriber's position (counter).
pub const GAPS: &str = "gateway_delivery_gaps_total";
/// Crashed nodes whose presence this node purged (counter).
pub const NODES_PURGED: &str = "gateway_presence_nodes_purged_total";
/// Leave events sent for members of purged nodes (counter).
pub const NODE_PURGE_LEAVES: &str = "gateway_presence_purged_members_total";

// --- Webhooks (docs/backend.md, "Webhooks"; gateway/src/webhooks) ---

/// Webhook events emitted (passed the event filter), by `name` (counter).
pub const WEBHOOK_EVENTS: &str = "gateway_webhook_events_total";
/// Webhook requests by `outcome`: ok, retry (a failed attempt that will be
/// retried), rejected (a 4xx that is not retried) (counter).
pub const WEBHOOK_BATCHES: &str = "gateway_webhook_batches_total";
/// Webhook events lost, by `reason`: queue_full, rejected, shutdown
/// (counter).
pub const WEBHOOK_DROPPED: &str = "gateway_webhook_events_dropped_total";
/// Webhook events held: queued plus the batch in flight (gauge).
pub const WEBHOOK_QUEUE: &str = "gateway_webhook_queue_events";
/// Duration of one webhook request attempt, any outcome (histogram,
/// seconds).
pub const WEBHOOK_DELIVERY: &str = "gateway_webhook_delivery_seconds";

/// Describe the webhook metrics and register their counters at 0.
fn describe_webhooks() {
    describe_counter!(
        WEBHOOK_EVENTS,
        "Webhook events emitted by this node (after the webhook_events filter), by name."
    );
    describe_counter!(
        WEBHOOK_BATCHES,
        "Webhook requests, by outcome: ok, retry (failed, will be retried), rejected (4xx, dropped)."
    );
    describe_counter!(
        WEBHOOK_DROPPED,
        "Webhook events lost, by reason: queue_full, rejected, shutdown."
    );
    describe_gauge!(
        WEBHOOK_QUEUE,
        "Webhook events held undelivered: queued plus the batch in flight."
    );
    describe_histogram!(
        WEBHOOK_DELIVERY,
        Unit::Seconds,
        "Duration of one webhook request attempt (any outcome)."
    );
    for name in crate::webhooks::names::NAMES {
        metrics::counter!(WEBHOOK_EVENTS, "name" => name).absolute(0);
    }
    for outcome in ["ok", "retry", "rejected"] {
        metrics::counter!(WEBHOOK_BATCHES, "outcome" => outcome).absolute(0);
    }
    for reason in ["queue_full", "rejected", "shutdown"] {
        metrics::counter!(WEBHOOK_DROPPED, "reason" => reason).absolute(0);
    }
    metrics::gauge!(WEBHOOK_QUEUE).set(0.0);
}
// --- Cluster-wide channel state (crate::occupancy; docs/backend.md) ---
/// Counter: channel transitions emitted by this node, by `event`
/// (`occupied`, `vacated`).
pub const CHANNEL_EVENTS: &str = "gateway_channel_events_total";
/// Counter: failed flushes of dirty channels (retried next tick).
pub const FLUSH_ERRORS: &str = "gateway_channel_flush_errors_total";
/// Histogram: channels written per flush.
pub const FLUSH_SIZE: &str = "gateway_channel_flush_channels";

/// The `event` labels of [`CHANNEL_EVENTS`] (member events count the
/// webhook's `member_added` / `member_removed` this node emitted).
pub const CHANNEL_EVENT_LABELS: [&str; 4] =
    ["occupied", "vacated", "member_added", "member_removed"];

/// Describe the channel state metrics (and export the counters at 0).
fn describe_channels() {
    metrics::describe_counter!(
        CHANNEL_EVENTS,
        "Cluster-wide channel transitions this node saw and emitted, by event."
    );
    metrics::describe_counter!(
        FLUSH_ERRORS,
        "Failed writes of local subscriber counts to the backend (retried)."
    );
    metrics::describe_histogram!(FLUSH_SIZE, "Channels written per subscriber-count flush.");
    for event in CHANNEL_EVENT_LABELS {
        metrics::counter!(CHANNEL_EVENTS, "event" => event).absolute(0);
    }
    metrics::counter!(FLUSH_ERRORS).absolute(0);
}

// --- The application backend proxy (docs/backend.md, "Proxy") ---
/// Proxy requests, by `hook` (connect, refresh, subscribe, publish, rpc)
/// and `outcome` (ok, refused, error, timeout, overloaded) (counter).
pub const PROXY_REQUESTS: &str = "gateway_proxy_requests_total";
/// Proxy request latency, by `hook` (histogram, seconds).
pub const PROXY_DURATION: &str = "gateway_proxy_duration_seconds";

/// Handles of the metrics touched on every frame, registered once: the
/// `counter!` macro looks its key up in the registry on every call, which the
/// fan-out and writer paths should not pay.
pub struct Hot {
    /// [`MESSAGES_SENT`] by `type`, indexed like [`SENT_TYPES`].
    pub sent: [metrics::Counter; SENT_TYPES.len()],
    /// [`BYTES_OUT`].
    pub bytes_out: metrics::Counter,
    /// [`BYTES_IN`].
    pub bytes_in: metrics::Counter,
    /// [`DELIVERIES`].
    pub deliveries: metrics::Counter,
    /// [`DELIVERY_LAG`].
    pub lag: metrics::Histogram,
}

/// The hot-path handles (first use registers them; install the recorder
/// before any traffic).
pub fn hot() -> &'static Hot {
    static HOT: std::sync::OnceLock<Hot> = std::sync::OnceLock::new();
    HOT.get_or_init(|| Hot {
        sent: SENT_TYPES.map(|t| metrics::counter!(MESSAGES_SENT, "type" => t)),
        bytes_out: metrics::counter!(BYTES_OUT),
        bytes_in: metrics::counter!(BYTES_IN),
        deliveries: metrics::counter!(DELIVERIES),
        lag: metrics::histogram!(DELIVERY_LAG),
    })
}

/// The `type` label values of [`MESSAGES_SENT`]; replies (welcome,
/// subscribed, published, ...) share `reply`.
pub const SENT_TYPES: [&str; 8] = [
    "message",
    "join",
    "leave",
    "broadcast",
    "direct",
    "error",
    "reply",
    // Every frame of a Pusher connection (docs/pusher.md).
    "pusher",
];

/// Index into [`SENT_TYPES`] of an encoded server frame. Our encoder puts
/// `type` first (`{"type":"message",...`), so a prefix test suffices.
pub fn sent_type(frame: &[u8]) -> usize {
    if frame.starts_with(b"{\"event\":") {
        return 7;
    }
    let rest = frame.get(9..).unwrap_or_default();
    SENT_TYPES[..6]
        .iter()
        .position(|t| rest.starts_with(t.as_bytes()) && rest.get(t.len()) == Some(&b'"'))
        .unwrap_or(6)
}

/// Buckets for real-time latencies: 100 us to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Install the global Prometheus recorder and describe every metric.
pub fn install(node_id: &str) -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    describe();
    crate::history::memory::describe_metrics();
    crate::history::describe_metrics();
    describe_counter!(
        PROXY_REQUESTS,
        "Application backend proxy requests, by hook and outcome."
    );
    describe_histogram!(
        PROXY_DURATION,
        Unit::Seconds,
        "Application backend proxy request latency, by hook."
    );
    metrics::gauge!(NODE_INFO, "version" => env!("CARGO_PKG_VERSION"), "node" => node_id.to_owned())
        .set(1.0);
    hot();
    register_zeroes();
    describe_webhooks();
    metrics::gauge!(CONNECTIONS).set(0.0);
    metrics::gauge!(SUBSCRIPTIONS).set(0.0);
    metrics::gauge!(CHANNELS).set(0.0);
    Ok(handle)
}

/// Register counters at 0 so `rate()` sees their first event after a
/// restart and dashboards show 0 rather than "no data".
fn register_zeroes() {
    for c in [CONNECTIONS_ACCEPTED, SLOW_CONSUMERS, RATE_LIMITED] {
        metrics::counter!(c).absolute(0);
    }
    for reason in [
        "draining",
        "origin",
        "auth",
        "max_connections",
        "backend",
        "proxy",
    ] {
        metrics::counter!(CONNECTIONS_REFUSED, "reason" => reason).absolute(0);
    }
    for reason in crate::protocol::CloseReason::LABELS {
        metrics::counter!(DISCONNECTS, "reason" => reason).absolute(0);
    }
    for code in crate::protocol::ErrorCode::ALL {
        metrics::counter!(ERRORS, "code" => code.as_str()).absolute(0);
    }
    for kind in crate::backplane::Envelope::KINDS {
        metrics::counter!(FANOUT_OVERFLOW, "kind" => kind).absolute(0);
    }
    metrics::counter!(GAPS).absolute(0);
    for reason in ["missing", "expired", "invalid", "origin", "api_key"] {
        metrics::counter!(AUTH_FAILURES, "reason" => reason).absolute(0);
    }
    for source in ["api", "client"] {
        metrics::counter!(PUBLICATIONS, "source" => source).absolute(0);
    }
    metrics::counter!(DROPPED, "reason" => "queue_full").absolute(0);
    metrics::counter!(PRESENCE_RESTORED).absolute(0);
    // Counters that move only on trouble (issue 10, item 10): at 0 with
    // every label value from the start, so the first error is a rise.
    for op in BACKEND_ERROR_OPS {
        metrics::counter!(BACKEND_ERRORS, "op" => op).absolute(0);
    }
    for op in RECEIVED_OPS {
        metrics::counter!(MESSAGES_RECEIVED, "op" => op).absolute(0);
    }
    for recovered in ["true", "false"] {
        metrics::counter!(HISTORY_REPLAYS, "recovered" => recovered).absolute(0);
    }
    metrics::counter!(NODES_PURGED).absolute(0);
    metrics::counter!(NODE_PURGE_LEAVES).absolute(0);
}

/// Every `op` label value of [`BACKEND_ERRORS`].
pub const BACKEND_ERROR_OPS: [&str; 21] = [
    "history_read",
    "node_heartbeat",
    "node_remove",
    "node_purge",
    "nodes",
    "presence_event",
    "presence_expire",
    "presence_join",
    "presence_leave",
    "presence_members",
    "presence_members_gone",
    "presence_refresh",
    "presence_restore",
    "presence_index",
    "publish",
    "send",
    "subscribe",
    "subscribe_user",
    "user_conns",
    "user_index_add",
    "user_index_remove",
];

/// Every `op` label value of [`MESSAGES_RECEIVED`].
const RECEIVED_OPS: [&str; 9] = [
    "subscribe",
    "unsubscribe",
    "publish",
    "presence",
    "ping",
    "rpc",
    "refresh",
    "binary",
    "invalid",
];

fn describe() {
    // Channel state (occupancy): its own block, see crate::occupancy.
    describe_channels();
    describe_gauge!(
        CONNECTIONS,
        "Open client WebSocket connections on this node."
    );
    describe_gauge!(
        PUSHER_CONNECTIONS,
        "Open Pusher-protocol connections on this node, by app (also counted in gateway_connections)."
    );
    describe_counter!(
        CONNECTIONS_ACCEPTED,
        "WebSocket connections accepted (Pusher ones with protocol=\"pusher\")."
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connection attempts refused before the upgrade, by reason."
    );
    describe_counter!(DISCONNECTS, "Connections closed, by reason.");
    describe_counter!(MESSAGES_RECEIVED, "Client frames received, by op.");
    describe_counter!(
        MESSAGES_SENT,
        "Frames written to client sockets, by type (reply covers every op reply)."
    );
    describe_counter!(BYTES_IN, Unit::Bytes, "Bytes of client frames received.");
    describe_counter!(
        BYTES_OUT,
        Unit::Bytes,
        "Bytes of frames written to clients."
    );
    describe_counter!(
        PUBLICATIONS,
        "Publications accepted by the backplane, by source (api, client)."
    );
    describe_counter!(DELIVERIES, "Frames queued to local connections by fan-out.");
    describe_counter!(
        SLOW_CONSUMERS,
        "Connections closed because their send queue overflowed."
    );
    describe_counter!(DROPPED, "Frames dropped, by reason.");
    describe_gauge!(SUBSCRIPTIONS, "Channel subscriptions of local connections.");
    describe_gauge!(CHANNELS, "Channels with at least one local subscriber.");
    describe_histogram!(
        DELIVERY_LAG,
        Unit::Seconds,
        "Time from publish to fan-out on this node."
    );
    describe_counter!(ERRORS, "Error replies sent to clients, by code.");
    describe_counter!(AUTH_FAILURES, "Authentication failures, by reason.");
    describe_counter!(
        RATE_LIMITED,
        "Client frames refused by the per-connection rate limit."
    );
    describe_counter!(
        API_REQUESTS,
        "HTTP API requests, by route template and status."
    );
    describe_histogram!(
        API_LATENCY,
        Unit::Seconds,
        "HTTP API request latency, by route template."
    );
    describe_counter!(
        BACKEND_ERRORS,
        "Failed backend (presence, history, backplane) calls, by op."
    );
    describe_histogram!(
        PRESENCE_REFRESH,
        Unit::Seconds,
        "Duration of one presence refresh batch."
    );
    describe_counter!(
        PRESENCE_RESTORED,
        "Presence entries of live connections written back after the backend lost them or took them as expired."
    );
    describe_counter!(
        HISTORY_REPLAYS,
        "Subscribes with recovery, by whether the gap was recovered."
    );
    describe_gauge!(
        NODE_INFO,
        "Node information (always 1), labelled with version and node id."
    );
    describe_counter!(
        FANOUT_OVERFLOW,
        "Envelopes dropped because their fan-out worker's queue was full (the affected connections are closed with 4005), by kind."
    );
    describe_gauge!(
        FANOUT_QUEUED,
        "Envelopes received from Redis waiting for a fan-out worker."
    );
    describe_counter!(
        NODES_PURGED,
        "Nodes whose heartbeat was older than the node timeout and whose presence this node purged (each crashed node is purged by exactly one live node)."
    );
    describe_counter!(
        NODE_PURGE_LEAVES,
        "Members of purged nodes removed from channel presence (one leave event each on join/leave channels)."
    );
    describe_counter!(
        GAPS,
        "Publications found missing by a subscriber's position (the connection is closed with 4005)."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sent_type_reads_the_leading_type_field() {
        assert_eq!(
            SENT_TYPES[sent_type(br#"{"type":"message","channel":"a"}"#)],
            "message"
        );
        assert_eq!(
            SENT_TYPES[sent_type(br#"{"event":"ev","channel":"a","data":"x"}"#)],
            "pusher"
        );
        assert_eq!(
            SENT_TYPES[sent_type(br#"{"type":"join","channel":"a"}"#)],
            "join"
        );
        assert_eq!(
            SENT_TYPES[sent_type(br#"{"type":"error","id":null}"#)],
            "error"
        );
        assert_eq!(
            SENT_TYPES[sent_type(br#"{"type":"subscribed","id":1}"#)],
            "reply"
        );
        assert_eq!(SENT_TYPES[sent_type(br#"{"type":"messages"}"#)], "reply");
        assert_eq!(SENT_TYPES[sent_type(b"x")], "reply");
    }
}
