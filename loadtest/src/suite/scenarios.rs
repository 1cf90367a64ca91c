//! The scenarios of the suite, as data: each entry of [`SCENARIOS`] names
//! a scenario, says where it runs (one node, or 3 nodes + Redis), which
//! load it runs with which parameters (from the fixed [`Plan`]), and what
//! its result records beside the load's own report; [`run_scenario`] runs
//! any of them the same way.
//!
//! Invariants: every scenario gets fresh processes, stopped after its load
//! whether the load succeeded or not; the parameters come from the plan
//! only, so runs with the same plan compare; the results key of a scenario
//! is its `--only` name with `_` for `-`.

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use serde_json::{json, Value};

use super::nodes::{
    cpu_secs, ticks, Ctx, Nodes, Topology, PUSHER_APP_ID, PUSHER_KEY, PUSHER_SECRET,
};
use super::to_value;
use crate::churn::{self, ChurnArgs};
use crate::cli::ClientArgs;
use crate::fanout::{self, FanoutArgs, Via};
use crate::idle::{self, IdleArgs};
use crate::pusher::{ProtocolArgs, PusherApp};
use crate::rtt::{self, BcastVia, RttArgs};

/// HTTP publishers per channel in the flat-out fan-outs (publications in
/// flight; order is checked per publisher).
const FLAT_OUT_LANES: u64 = 64;

/// The fixed parameters.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub(super) idle_connections: u64,
    pub(super) idle_window_secs: u64,
    pub(super) fanout_subscribers: u64,
    pub(super) fanout_messages: u64,
    pub(super) cluster_subscribers: u64,
    pub(super) cluster_messages: u64,
    pub(super) latency_channels: u64,
    pub(super) latency_per_channel: u64,
    pub(super) latency_rate: f64,
    pub(super) latency_secs: f64,
    pub(super) rtt_step: u64,
    pub(super) rtt_max: u64,
    pub(super) rtt_samples: u64,
    pub(super) churn_hold: u64,
    pub(super) churn_secs: f64,
    pub(super) churn_concurrency: usize,
    pub(super) ceiling_idle_clients: u64,
    pub(super) ceiling_unbatched_messages: u64,
}

impl Plan {
    pub(super) fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                idle_connections: 2000,
                idle_window_secs: 10,
                fanout_subscribers: 1000,
                fanout_messages: 200,
                cluster_subscribers: 3000,
                cluster_messages: 200,
                latency_channels: 10,
                latency_per_channel: 30,
                latency_rate: 200.0,
                latency_secs: 5.0,
                rtt_step: 500,
                rtt_max: 2000,
                rtt_samples: 10,
                churn_hold: 200,
                churn_secs: 3.0,
                churn_concurrency: 64,
                ceiling_idle_clients: 2000,
                ceiling_unbatched_messages: 100,
            }
        } else {
            Plan {
                idle_connections: 15_000,
                idle_window_secs: 50,
                fanout_subscribers: 5000,
                fanout_messages: 1000,
                cluster_subscribers: 15_000,
                cluster_messages: 1000,
                latency_channels: 100,
                latency_per_channel: 30,
                latency_rate: 1000.0,
                latency_secs: 30.0,
                rtt_step: 1000,
                rtt_max: 19_000,
                rtt_samples: 20,
                churn_hold: 1000,
                churn_secs: 10.0,
                churn_concurrency: 64,
                ceiling_idle_clients: 9000,
                ceiling_unbatched_messages: 200,
            }
        }
    }
}

/// One scenario of the suite.
pub(super) struct Scenario {
    /// Its `--only` name; the gateway of a one-node scenario has this name.
    pub(super) name: &'static str,
    /// Its key in the results (and its name in failures).
    pub(super) key: &'static str,
    /// The step line printed before it runs.
    pub(super) title: fn(&Plan) -> String,
    /// Where it runs.
    topology: Topology,
    /// Pause between the start of the nodes and the load.
    warmup: Duration,
    /// The load: from the plan, the client options for the nodes and the
    /// gateways' pids.
    load: fn(&Plan, ClientArgs, Vec<u32>) -> Load,
    /// When set, the CPU seconds every started process used during the
    /// load go into the result under this key.
    cpu_key: Option<&'static str>,
}

/// A scenario's load: one of the loadtest subcommands, with its options.
pub(super) enum Load {
    Idle(IdleArgs),
    Fanout(FanoutArgs),
    Churn(ChurnArgs),
    Rtt(RttArgs),
}

impl Load {
    /// Runs the load: its summary, whether its checks passed, its report.
    async fn run(self) -> Result<(String, bool, Value)> {
        Ok(match self {
            Load::Idle(a) => {
                let r = idle::run(&a).await?;
                (r.summary(), r.ok, to_value(&r))
            }
            Load::Fanout(a) => {
                let r = fanout::run(&a).await?;
                (r.summary(), r.ok, to_value(&r))
            }
            Load::Churn(a) => {
                let r = churn::run(&a).await?;
                (r.summary(), r.ok, to_value(&r))
            }
            Load::Rtt(a) => {
                let r = rtt::run(&a).await?;
                (r.summary(), r.max_clients_under_bound > 0, to_value(&r))
            }
        })
    }
}

/// The Pusher protocol with the app of the suite's config.
fn pusher() -> ProtocolArgs {
    ProtocolArgs::pusher(&PusherApp {
        id: PUSHER_APP_ID.into(),
        key: PUSHER_KEY.into(),
        secret: PUSHER_SECRET.into(),
    })
}

/// The idle load: `connections`, each on a plain and a presence channel of
/// 1,000 (v1 `idle:`/`room:`, Pusher `idle-`/`presence-room-`).
fn idle_load(p: &Plan, protocol: ProtocolArgs, client: ClientArgs, pids: Vec<u32>) -> IdleArgs {
    IdleArgs {
        connections: p.idle_connections,
        channels: 1000,
        channel_prefix: None,
        presence_prefix: None,
        pids,
        settle_secs: 3,
        window_secs: p.idle_window_secs,
        protocol,
        client,
    }
}

/// A flat-out fan-out over HTTP to one `fan:` channel.
fn flat_out(subscribers: u64, messages: u64, client: ClientArgs) -> FanoutArgs {
    FanoutArgs {
        subscribers,
        channels: 1,
        channel_prefix: Some("fan:".into()),
        via: Via::Http,
        lanes: FLAT_OUT_LANES,
        window: 1,
        rate: 0.0,
        messages,
        duration_secs: 0.0,
        payload: 64,
        idle_timeout_ms: 10_000,
        max_wait_secs: 300,
        protocol: ProtocolArgs::v1(),
        client,
    }
}

/// The scenarios, in the order they run (after the ceiling probes).
pub(super) const SCENARIOS: [Scenario; 9] = [
    Scenario {
        name: "idle",
        key: "idle",
        title: |p| format!("idle, {} connections, one node", p.idle_connections),
        topology: Topology::One,
        warmup: Duration::from_secs(1),
        load: |p, client, pids| Load::Idle(idle_load(p, ProtocolArgs::v1(), client, pids)),
        cpu_key: None,
    },
    Scenario {
        name: "fanout",
        key: "fanout",
        title: |p| {
            format!(
                "fan-out flat out, {} subscribers, one node",
                p.fanout_subscribers
            )
        },
        topology: Topology::One,
        warmup: Duration::ZERO,
        load: |p, client, _| {
            Load::Fanout(flat_out(p.fanout_subscribers, p.fanout_messages, client))
        },
        cpu_key: Some("gateway_cpu_secs"),
    },
    Scenario {
        name: "fanout-ws",
        key: "fanout_ws",
        title: |p| {
            format!(
                "fan-out flat out over the WebSocket publish op, {} subscribers, one node",
                p.fanout_subscribers
            )
        },
        topology: Topology::One,
        warmup: Duration::ZERO,
        load: |p, client, _| {
            Load::Fanout(FanoutArgs {
                via: Via::Ws,
                lanes: 1,
                window: 256,
                ..flat_out(p.fanout_subscribers, p.fanout_messages, client)
            })
        },
        cpu_key: None,
    },
    Scenario {
        name: "pusher-idle",
        key: "pusher_idle",
        title: |p| {
            format!(
                "idle over the Pusher protocol, {} connections, one node",
                p.idle_connections
            )
        },
        topology: Topology::One,
        warmup: Duration::from_secs(1),
        load: |p, client, pids| Load::Idle(idle_load(p, pusher(), client, pids)),
        cpu_key: None,
    },
    Scenario {
        name: "pusher-fanout",
        key: "pusher_fanout",
        title: |p| {
            format!(
                "fan-out flat out over the Pusher protocol (REST publish), {} subscribers, one node",
                p.fanout_subscribers
            )
        },
        topology: Topology::One,
        warmup: Duration::ZERO,
        load: |p, client, _| {
            Load::Fanout(FanoutArgs {
                channel_prefix: Some("bench-".into()),
                protocol: pusher(),
                ..flat_out(p.fanout_subscribers, p.fanout_messages, client)
            })
        },
        cpu_key: Some("gateway_cpu_secs"),
    },
    Scenario {
        name: "churn",
        key: "churn",
        title: |_| "churn, one node".into(),
        topology: Topology::One,
        warmup: Duration::ZERO,
        load: |p, client, _| {
            Load::Churn(ChurnArgs {
                hold: p.churn_hold,
                rate: 0.0,
                duration_secs: p.churn_secs,
                concurrency: p.churn_concurrency,
                linger_ms: 0,
                workers: 1,
                presence_prefix: "room:".into(),
                rooms: 100,
                settle_secs: 20,
                client,
            })
        },
        cpu_key: None,
    },
    Scenario {
        name: "rtt",
        key: "rtt",
        title: |_| "broadcast RTT, one node".into(),
        topology: Topology::One,
        warmup: Duration::ZERO,
        load: |p, client, _| {
            Load::Rtt(RttArgs {
                step: p.rtt_step,
                max_clients: p.rtt_max,
                samples: p.rtt_samples,
                in_flight: 4,
                bound_ms: 500.0,
                via: BcastVia::Broadcast,
                channel: "bcast:all".into(),
                payload: 64,
                sample_timeout_secs: 30,
                client,
            })
        },
        cpu_key: None,
    },
    Scenario {
        name: "cluster-fanout",
        key: "cluster_fanout",
        title: |p| {
            format!(
                "fan-out flat out, 3 nodes + Redis, {} subscribers",
                p.cluster_subscribers
            )
        },
        topology: Topology::Cluster("cfan"),
        warmup: Duration::ZERO,
        load: |p, client, _| {
            Load::Fanout(flat_out(p.cluster_subscribers, p.cluster_messages, client))
        },
        cpu_key: Some("gateway_and_redis_cpu_secs"),
    },
    Scenario {
        name: "latency",
        key: "latency",
        title: |_| "latency at a fixed rate, 3 nodes + Redis".into(),
        topology: Topology::Cluster("clat"),
        warmup: Duration::ZERO,
        load: |p, client, _| {
            Load::Fanout(FanoutArgs {
                subscribers: p.latency_channels * p.latency_per_channel,
                channels: p.latency_channels,
                channel_prefix: Some("lat:".into()),
                lanes: 1,
                rate: p.latency_rate,
                messages: 0,
                duration_secs: p.latency_secs,
                max_wait_secs: 120,
                ..flat_out(0, 0, client)
            })
        },
        cpu_key: None,
    },
];

/// Starts the scenario's nodes, runs its load, stops the nodes: its
/// summary, whether its checks passed, and its result.
pub(super) async fn run_scenario(
    ctx: &mut Ctx,
    plan: &Plan,
    s: &Scenario,
) -> Result<(String, bool, Value)> {
    let nodes = Nodes::start(ctx, s.name, s.topology).await?;
    if !s.warmup.is_zero() {
        tokio::time::sleep(s.warmup).await;
    }
    let load = (s.load)(plan, ctx.client(&nodes.addrs), nodes.gateway_pids());
    let pids = nodes.pids();
    let before = s.cpu_key.map(|_| ticks(&pids));
    let r = load.run().await;
    let cpu = before.map(|t| cpu_secs(&pids, &t));
    nodes.stop().await;
    let (summary, ok, mut v) = r?;
    if let (Some(key), Some(cpu)) = (s.cpu_key, cpu) {
        v[key] = json!(cpu);
    }
    Ok((summary, ok, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keys_are_the_only_names_with_underscores() {
        for s in &SCENARIOS {
            assert_eq!(s.key, s.name.replace('-', "_"));
        }
        let names: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                "idle",
                "fanout",
                "fanout-ws",
                "pusher-idle",
                "pusher-fanout",
                "churn",
                "rtt",
                "cluster-fanout",
                "latency"
            ],
            "the --only list of SuiteArgs names these, in this order"
        );
    }
}
