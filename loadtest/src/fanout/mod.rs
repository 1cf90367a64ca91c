//! `fanout`: S subscribers on C channels spread over the nodes; publishers
//! via the HTTP API or the WebSocket `publish` op, at a fixed rate or flat
//! out; with `--protocol pusher`, Pusher subscribers and publishers on the
//! signed REST API (`POST /apps/{id}/events`), the same payloads. Every
//! payload carries its channel, a per-channel sequence number and the send
//! time; subscribers check loss, duplicates and per-channel order and
//! record the latency.
//!
//! Order is only defined per publisher, so each channel has `lanes`
//! publishers with their own sequences; an HTTP publisher sends its next
//! publication after the previous one was answered, a WebSocket publisher
//! keeps up to `window` in flight on its connection (the gateway runs one
//! connection's ops in order).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;
use tokio::time::Instant;

mod publish;

use self::publish::{ws_publisher, Lane, PubStats};
use crate::cli::ClientArgs;
use crate::common::{hist_merge, merge_counts, new_hist, Latency};
use crate::idle::{connect_all, latency_of, sum_stopped};
use crate::pusher::{check_channel_prefix, Protocol, ProtocolArgs};
use crate::worker::{Cmd, Ev, Group, Mode, Pool, SeqReport};

/// How publications are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// `POST /api/publish`.
    Http,
    /// The WebSocket `publish` op (needs client_publish in the namespace
    /// and a rate limit above the per-channel rate).
    Ws,
}

/// Options of `fanout`.
#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// Subscribers (client i subscribes to channel i % channels on node
    /// i % urls).
    #[arg(long, default_value_t = 1000)]
    pub subscribers: u64,
    /// Channels.
    #[arg(long, default_value_t = 1)]
    pub channels: u64,
    /// Channel name prefix (the channel is `<prefix><index>`; default
    /// `fan:`, Pusher: `bench-`).
    #[arg(long)]
    pub channel_prefix: Option<String>,
    /// How to publish (Pusher: http only, the signed `POST
    /// /apps/{id}/events`).
    #[arg(long, value_enum, default_value_t = Via::Http)]
    pub via: Via,
    /// Publications per second over all channels; 0 = flat out.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Publishers per channel, each with its own sequence (order is checked
    /// per publisher); more lanes = more publications in flight.
    #[arg(long, default_value_t = 1)]
    pub lanes: u64,
    /// WebSocket publishers: publications in flight per publisher (the
    /// gateway runs one connection's ops in order, so order still holds).
    #[arg(long, default_value_t = 1)]
    pub window: usize,
    /// Flat out: publications per channel.
    #[arg(long, default_value_t = 1000)]
    pub messages: u64,
    /// Fixed rate: how long to publish, s.
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Payload (the `data` string) size, bytes (at least ~40 to hold the
    /// header).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// After publishing, give up waiting after this long without a delivery.
    #[arg(long, default_value_t = 10_000)]
    pub idle_timeout_ms: u64,
    /// After publishing, give up waiting after this long in total.
    #[arg(long, default_value_t = 300)]
    pub max_wait_secs: u64,
    /// Wire protocol.
    #[command(flatten)]
    pub protocol: ProtocolArgs,
    /// Shared client options.
    #[command(flatten)]
    pub client: ClientArgs,
}

impl FanoutArgs {
    /// The channel prefix for the protocol.
    pub fn prefix(&self) -> Result<String> {
        let pusher = self.protocol.protocol == Protocol::Pusher;
        let prefix = self
            .channel_prefix
            .clone()
            .unwrap_or_else(|| if pusher { "bench-" } else { "fan:" }.into());
        if pusher {
            check_channel_prefix(&prefix)?;
        }
        Ok(prefix)
    }
}

/// The `fanout` report.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    /// "fanout".
    pub scenario: &'static str,
    /// Wire protocol of the subscribers (and publishing API).
    pub protocol: Protocol,
    /// Gateways.
    pub nodes: usize,
    /// Subscribers asked for.
    pub subscribers: u64,
    /// Subscribers connected.
    pub connected: u64,
    /// Subscribers that failed to connect.
    pub connect_failed: u64,
    /// Connect failures by kind.
    pub connect_errors: BTreeMap<String, u64>,
    /// One connect failure.
    pub sample_error: Option<String>,
    /// Channels.
    pub channels: u64,
    /// Publishing path.
    pub via: Via,
    /// Asked rate (0 = flat out).
    pub rate: f64,
    /// Payload size.
    pub payload: usize,
    /// Publications sent.
    pub published: u64,
    /// Publications refused or failed.
    pub publish_errors: u64,
    /// Publish failures by kind.
    pub publish_error_kinds: BTreeMap<String, u64>,
    /// Publishing time, s.
    pub publish_secs: f64,
    /// Publications per second achieved.
    pub publish_rate: f64,
    /// Deliveries expected.
    pub expected: u64,
    /// Distinct deliveries received.
    pub delivered: u64,
    /// Deliveries of acknowledged publications that never arrived.
    pub lost: u64,
    /// Publications refused (503 etc.): (channel, lane, seq).
    pub refused: u64,
    /// Deliveries of acknowledged publications that never arrived, per
    /// gateway node (subscriber i is on node i % nodes).
    pub lost_by_node: Vec<u64>,
    /// Deliveries of refused publications that did not arrive.
    pub refused_missing: u64,
    /// Deliveries of refused publications that arrived anyway (a refused
    /// publish may still have been executed: docs/protocol.md).
    pub refused_delivered: u64,
    /// Duplicates received.
    pub duplicates: u64,
    /// Received after a later publication of the same channel.
    pub out_of_order: u64,
    /// Sequence numbers that were never published.
    pub unexpected: u64,
    /// Subscribers still missing something when the wait ended.
    pub incomplete: u64,
    /// Subscribers that lost their connection.
    pub dropped: u64,
    /// How they ended.
    pub closes: BTreeMap<String, u64>,
    /// First to last delivery, s.
    pub delivery_secs: f64,
    /// Distinct deliveries per second over that window.
    pub deliveries_per_sec: f64,
    /// Publish (send) to receive latency.
    pub latency: Latency,
    /// HTTP publish request to response, as the publisher saw it.
    pub publish_rtt: Latency,
    /// Subscriber setup latency.
    pub setup_latency: Latency,
    /// Nothing lost, duplicated, reordered or refused.
    pub ok: bool,
}

impl FanoutReport {
    /// Human summary.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "fanout ({:?}): {} subscribers ({} failed) on {} channel(s) over {} node(s), {:?} publish, {} B\n",
            self.protocol,
            self.connected,
            self.connect_failed,
            self.channels,
            self.nodes,
            self.via,
            self.payload
        );
        s += &format!(
            "  published {} ({} errors) in {:.2} s = {:.0}/s{}\n",
            self.published,
            self.publish_errors,
            self.publish_secs,
            self.publish_rate,
            if self.rate > 0.0 {
                format!(" (asked {:.0}/s)", self.rate)
            } else {
                " (flat out)".into()
            }
        );
        s += &format!(
            "  delivered {}/{} in {:.2} s = {:.0} deliveries/s\n",
            self.delivered, self.expected, self.delivery_secs, self.deliveries_per_sec
        );
        s += &format!("  latency {}\n", self.latency.line());
        if self.publish_rtt.count > 0 {
            s += &format!("  publish request {}\n", self.publish_rtt.line());
        }
        if self.refused > 0 {
            s += &format!(
                "  refused publications: {} (their deliveries: {} missing, {} arrived anyway)\n",
                self.refused, self.refused_missing, self.refused_delivered
            );
        }
        s += &format!(
            "  lost {} {:?} ({} subscribers incomplete), duplicates {}, out of order {}, unexpected {}, dropped {} {:?}: {}",
            self.lost,
            self.lost_by_node,
            self.incomplete,
            self.duplicates,
            self.out_of_order,
            self.unexpected,
            self.dropped,
            self.closes,
            if self.ok { "OK" } else { "NOT OK" }
        );
        if let Some(e) = &self.sample_error {
            s += &format!("\n  first connect error: {e} {:?}", self.connect_errors);
        }
        s
    }
}

/// Publications per channel index.
pub fn expected_per_channel(args: &FanoutArgs) -> Vec<u64> {
    let c = args.channels.max(1);
    if args.rate > 0.0 {
        let total = (args.rate * args.duration_secs).round() as u64;
        (0..c)
            .map(|i| total / c + u64::from(i < total % c))
            .collect()
    } else {
        vec![args.messages; c as usize]
    }
}

/// Runs `fanout`.
pub async fn run(args: &FanoutArgs) -> Result<FanoutReport> {
    args.client.validate()?;
    if args.subscribers == 0 || args.channels == 0 {
        bail!("--subscribers and --channels must be > 0");
    }
    if args.rate <= 0.0 && args.messages == 0 {
        bail!("--messages must be > 0");
    }
    let app = args.protocol.app();
    if app.is_some() && args.via == Via::Ws {
        bail!("--protocol pusher publishes with the REST API only (--via http)");
    }
    let prefix = args.prefix()?;
    let expected = expected_per_channel(args);
    let groups = vec![Group {
        prefix: prefix.clone(),
        count: args.channels,
    }];
    let mut client = args.client.clone();
    client.pusher = app.clone();
    client.read_buf = client.read_buf.max(16 * 1024);
    let specs = client.worker_specs(args.subscribers, "sub", groups, |_| Mode::Seq {
        expected: expected.clone(),
        lanes: args.lanes.max(1),
    });
    let counts: Vec<u64> = specs.iter().map(|s| s.count).collect();
    let mut pool = Pool::spawn(&specs, client.threads).await?;
    let connected = connect_all(&mut pool, &counts, &client, "subscribing").await?;

    // Publishers.
    let stats = Arc::new(PubStats::default());
    let apis = client.api_bases()?;
    let http = client.http()?;
    let mut lanes = Vec::new();
    for c in 0..args.channels {
        for l in 0..args.lanes.max(1) {
            lanes.push(Lane {
                channel: c,
                lane: l,
                lanes: args.lanes.max(1),
                name: format!("{prefix}{c}"),
                count: expected[c as usize],
                channels: args.channels,
                rate: args.rate,
                payload: args.payload,
                window: args.window,
                pusher: app.clone(),
            });
        }
    }
    let mut ws_pubs = Vec::new();
    if args.via == Via::Ws {
        for i in 0..lanes.len() as u64 {
            ws_pubs.push(ws_publisher(args, i).await?);
        }
    }
    let total: u64 = expected.iter().sum();
    let bar = client.bar(total, "publishing");
    let t0 = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::new();
    let mut ws_iter = ws_pubs.into_iter();
    for lane in lanes {
        let stats = stats.clone();
        match args.via {
            Via::Http => {
                let api = &apis[((lane.channel + lane.lane) % apis.len() as u64) as usize];
                let url = if lane.pusher.is_some() {
                    api.clone()
                } else {
                    format!("{api}/api/publish")
                };
                tasks.push(tokio::spawn(lane.http(http.clone(), url, t0, stats)));
            }
            Via::Ws => {
                let ws = ws_iter.next().context("missing publisher")?;
                tasks.push(tokio::spawn(lane.ws(ws, t0, stats)));
            }
        }
    }
    let publish_start = Instant::now();
    let mut all = futures_util::future::join_all(tasks);
    loop {
        tokio::select! {
            _ = &mut all => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                let errors: u64 = stats.errors.lock().map(|e| e.values().sum()).unwrap_or(0);
                bar.set_position(stats.sent.load(Relaxed) + errors);
            }
        }
    }
    bar.finish_and_clear();
    let publish_secs = publish_start.elapsed().as_secs_f64();

    let refused = stats.refused.lock().map(|r| r.clone()).unwrap_or_default();
    for w in 0..pool.workers() {
        pool.send(
            w,
            &Cmd::Finish {
                idle_ms: args.idle_timeout_ms,
                max_ms: args.max_wait_secs * 1000,
                refused: refused.clone(),
            },
        )
        .await?;
    }
    let reports: Vec<SeqReport> = pool
        .collect(
            Duration::from_secs(args.max_wait_secs + 60),
            |ev| match ev {
                Ev::Finished(r) => Some(r),
                _ => None,
            },
            |_, _| {},
        )
        .await?;
    let stopped = pool.stop().await?;
    let (stop_dropped, _) = sum_stopped(&stopped);

    let mut h = new_hist();
    let mut closes = BTreeMap::new();
    let (mut exp, mut distinct, mut dups, mut ooo, mut unexp, mut dropped) = (0, 0, 0, 0, 0, 0);
    let (mut first, mut last) = (u64::MAX, 0);
    let (mut refused_missing, mut refused_delivered) = (0, 0);
    for r in &reports {
        refused_missing += r.refused_missing;
        refused_delivered += r.refused_delivered;
        hist_merge(&mut h, &r.latency);
        merge_counts(&mut closes, &r.closes);
        exp += r.expected;
        distinct += r.distinct;
        dups += r.duplicates;
        ooo += r.out_of_order;
        unexp += r.unexpected;
        dropped += r.dropped;
        if r.first_us > 0 {
            first = first.min(r.first_us);
        }
        last = last.max(r.last_us);
    }
    dropped = dropped.max(stop_dropped);
    let delivery_secs = if first < last {
        (last - first) as f64 / 1e6
    } else {
        0.0
    };
    let errors = stats.errors.lock().map(|e| e.clone()).unwrap_or_default();
    let publish_errors: u64 = errors.values().sum();
    let published = stats.sent.load(Relaxed);
    let lost = exp.saturating_sub(distinct).saturating_sub(refused_missing);
    let mut lost_by_node = vec![0u64; client.urls.len().max(1)];
    for r in &reports {
        for (n, &(e, d, m)) in r.by_node.iter().enumerate() {
            if let Some(l) = lost_by_node.get_mut(n) {
                *l += e.saturating_sub(d).saturating_sub(m);
            }
        }
    }
    Ok(FanoutReport {
        scenario: "fanout",
        protocol: args.protocol.protocol,
        nodes: client.urls.len(),
        subscribers: args.subscribers,
        connected: connected.connected,
        connect_failed: connected.failed,
        connect_errors: connected.errors.clone(),
        sample_error: connected.sample_error.clone(),
        channels: args.channels,
        via: args.via,
        rate: args.rate,
        payload: args.payload,
        published,
        publish_errors,
        publish_error_kinds: errors,
        publish_secs,
        publish_rate: published as f64 / publish_secs.max(1e-9),
        expected: exp,
        delivered: distinct,
        lost,
        lost_by_node,
        refused: refused.len() as u64,
        refused_missing,
        refused_delivered,
        duplicates: dups,
        out_of_order: ooo,
        unexpected: unexp,
        incomplete: reports.iter().map(|r| r.incomplete).sum(),
        dropped,
        closes,
        delivery_secs,
        deliveries_per_sec: if delivery_secs > 0.0 {
            distinct as f64 / delivery_secs
        } else {
            0.0
        },
        latency: Latency::of(&h),
        publish_rtt: stats
            .rtt
            .lock()
            .map(|h| Latency::of(&h))
            .unwrap_or_default(),
        setup_latency: latency_of(&connected.setup),
        ok: lost == 0
            && dups == 0
            && ooo == 0
            && unexp == 0
            && published > 0
            && published + refused.len() as u64 == total
            && dropped == 0
            && connected.connected == args.subscribers,
    })
}
