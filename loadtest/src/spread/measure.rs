//! One phase's measurement: the subscribers (each on every channel) and
//! the warm-up round that proves them, an idle CPU sample, then the window
//! (publishing until the deadline, then until the deliveries stop) with
//! every process's CPU and each Redis's `INFO` counters at both ends.
//!
//! Invariants: every wait is bounded; the WebSocket publishers connect
//! before the window opens (their handshakes are not in its CPU).

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use tokio::sync::watch;
use tokio::time::Instant;

use super::figures::{self, Window};
use super::load::{self, Live, Plan, PubStats, SubResult};
use super::options::{SpreadArgs, Topo};
use super::redis::{counters, Counters};
use super::report::{Phase, PhaseIn};
use super::topology::{wait_ready, RedisSide};
use crate::common::{now_us, Latency};
use crate::fanout::Via;
use crate::suite::env::loadavg;
use crate::suite::nodes::{cpu_secs, ticks, Ctx, Proc};

/// Runs the load of one phase on its running processes and measures it:
/// subscribers, the warm-up, the idle sample, the publishing window and
/// the deliveries after it; the phase's report.
pub(super) async fn measure(
    ctx: &Ctx,
    args: &SpreadArgs,
    topo: Topo,
    side: &RedisSide,
    gateways: &[Proc],
    addrs: &[SocketAddr],
) -> Result<Phase> {
    let client = ctx.client(addrs);
    let http = client.http()?;
    wait_ready(&http, addrs, Duration::from_secs(30)).await?;
    let plan = Arc::new(Plan {
        ep: client.endpoints(),
        prefix: args.prefix().into(),
        channels: args.channels,
        payload: args.payload,
    });
    let nodes = addrs.len();

    // Subscribers: every one on every channel.
    let subs_total = args.subscribers_per_node * nodes as u64;
    say(
        args,
        &format!(
            "{topo:?}: {subs_total} subscribers x {} channels",
            args.channels
        ),
    );
    let subscribed =
        futures_util::future::join_all((0..subs_total).map(|i| load::subscribe(&plan, i, nodes)))
            .await;
    let mut subscribe_errors = Vec::new();
    let live = Arc::new(Live::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sub_tasks = Vec::new();
    for s in subscribed {
        match s {
            Ok(s) => sub_tasks.push(tokio::spawn(s.run(
                plan.clone(),
                live.clone(),
                stop_rx.clone(),
            ))),
            Err(e) => subscribe_errors.push(format!("{e:#}")),
        }
    }
    let connected = sub_tasks.len() as u64;
    say(
        args,
        &format!(
            "{topo:?}: {connected} subscribed ({} failed); warm-up",
            subscribe_errors.len()
        ),
    );

    // Warm-up: one publication per channel must reach every subscriber.
    let apis = client.api_bases()?;
    let warm_accepted = load::warm_up(&http, &apis, &plan).await?;
    let warm_want = warm_accepted * connected;
    let warm_got = wait_count(
        || live.warm.load(Relaxed),
        warm_want,
        Duration::from_secs(10),
        Duration::from_secs(30),
    )
    .await;

    // Publishers, connected before the window.
    let publishers = args.publishers_per_node * nodes as u64;
    let mut ws_pubs = Vec::new();
    if args.via == Via::Ws {
        for i in 0..publishers {
            ws_pubs.push(load::ws_publisher(&plan, subs_total + i, nodes).await?);
        }
    }

    // The window.
    let redis_procs = side.procs();
    let mut pids: Vec<u32> = redis_procs.iter().map(|&(_, pid)| pid).collect();
    pids.extend(gateways.iter().map(Proc::pid));
    pids.push(std::process::id());
    let idle: Vec<f64> = if args.idle_secs > 0.0 {
        say(
            args,
            &format!("{topo:?}: idle CPU sample, {} s", args.idle_secs),
        );
        let t = ticks(&pids);
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(args.idle_secs)).await;
        let el = t0.elapsed().as_secs_f64();
        pids.iter()
            .zip(&t)
            .map(|(&p, &b)| cpu_secs(&[p], &[b]) / el)
            .collect()
    } else {
        vec![0.0; pids.len()]
    };
    let before_counts = redis_counters(&args.redis_cli, &redis_procs).await;
    let before = ticks(&pids);
    let window_start = Instant::now();
    let window_start_us = now_us();
    say(
        args,
        &format!(
            "{topo:?}: publishing for {} s ({:?}, {publishers} publishers x {} in flight)",
            args.duration_secs, args.via, args.window
        ),
    );
    let stats = Arc::new(PubStats::new(args.channels));
    let deadline = window_start + Duration::from_secs_f64(args.duration_secs);
    let mut tasks = Vec::new();
    match args.via {
        Via::Ws => {
            for ws in ws_pubs {
                tasks.push(tokio::spawn(load::ws_publish(
                    ws,
                    plan.clone(),
                    stats.clone(),
                    args.window,
                    args.rate / publishers as f64,
                    deadline,
                )));
            }
        }
        Via::Http => {
            for i in 0..publishers {
                let url = format!("{}/api/publish", apis[i as usize % apis.len()]);
                for _ in 0..args.window {
                    tasks.push(tokio::spawn(load::http_publish(
                        http.clone(),
                        url.clone(),
                        plan.clone(),
                        stats.clone(),
                        args.rate / (publishers as f64 * args.window as f64),
                        deadline,
                    )));
                }
            }
        }
    }
    let mut all = futures_util::future::join_all(tasks);
    let bound = tokio::time::sleep_until(deadline + Duration::from_secs(60));
    tokio::pin!(bound);
    let mut next_line = Instant::now() + Duration::from_secs(5);
    let finished = loop {
        tokio::select! {
            _ = &mut all => break true,
            _ = &mut bound => break false,
            _ = tokio::time::sleep_until(next_line) => {
                next_line += Duration::from_secs(5);
                say(args, &format!(
                    "{topo:?}: {} accepted, {} delivered",
                    stats.accepted_total(),
                    live.delivered.load(Relaxed)
                ));
            }
        }
    };
    if !finished {
        bail!("the publishers did not finish within 60 s of the deadline");
    }
    let publish_secs = window_start.elapsed().as_secs_f64();
    let published = stats.accepted_total();
    let want = published * connected;
    let delivered_now = wait_count(
        || live.delivered.load(Relaxed),
        want,
        Duration::from_secs(5),
        Duration::from_secs(120),
    )
    .await;
    let window_secs = window_start.elapsed().as_secs_f64();
    let cpu: Vec<f64> = pids
        .iter()
        .zip(&before)
        .map(|(&p, &b)| cpu_secs(&[p], &[b]))
        .collect();
    let after_counts = redis_counters(&args.redis_cli, &redis_procs).await;
    let last_us = live.last_us.load(Relaxed);
    let _ = stop_tx.send(true);
    let mut results: Vec<SubResult> = Vec::new();
    for t in sub_tasks {
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(10), t).await {
            results.push(r);
        }
    }
    say(
        args,
        &format!("{topo:?}: {published} accepted, {delivered_now} delivered; stopping"),
    );

    // Figures.
    let accepted: Vec<u64> = stats.accepted.iter().map(|a| a.load(Relaxed)).collect();
    let tally = figures::tally(&results, &accepted);
    let lost_subscribers = connected - results.len() as u64;
    let delivery_secs = if last_us > window_start_us {
        (last_us - window_start_us) as f64 / 1e6
    } else {
        0.0
    };
    let window = Window {
        redis: redis_procs,
        idle,
        cpu,
        before: before_counts,
        after: after_counts,
        secs: window_secs,
        published,
    };
    let redis_figs = window.redis_figs(args, side);
    let gateway_figs = window.gateway_figs(gateways);
    let loadtest_cpu = window.loadtest_cpu();
    let errors = stats.errors.lock().map(|e| e.clone()).unwrap_or_default();
    let rtt = stats
        .rtt
        .lock()
        .map(|h| Latency::of(&h))
        .unwrap_or_default();
    Ok(Phase::new(
        topo,
        args.max_spread,
        PhaseIn {
            subscribers: subs_total,
            connected,
            subscribe_errors,
            lost_subscribers,
            channels: args.channels,
            warmup_expected: warm_want,
            warmup_delivered: warm_got,
            publishers,
            published,
            refused: stats.refused_total(),
            publish_errors: errors,
            publish_secs,
            window_secs,
            delivered: tally.delivered,
            expected_deliveries: want,
            shortfall: tally.shortfall,
            extra: tally.extra,
            unexpected: tally.unexpected,
            short_pairs: tally.short_pairs,
            delivery_secs,
            drops: tally.drops,
            latency: Latency::of(&tally.latency),
            publish_rtt: rtt,
            redis: redis_figs,
            gateways: gateway_figs,
            loadtest_cpu_secs: loadtest_cpu,
        },
    ))
}

/// When the run started (for the progress lines).
static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn say(args: &SpreadArgs, what: &str) {
    if !args.no_progress {
        let t = STARTED.get_or_init(Instant::now).elapsed().as_secs_f64();
        eprintln!("shard-spread [{t:5.1} s]: {what} (load {})", loadavg());
    }
}

/// Waits until `count()` reaches `want`, or it has not moved for `idle`,
/// or `bound` passed; the last value.
async fn wait_count(count: impl Fn() -> u64, want: u64, idle: Duration, bound: Duration) -> u64 {
    let deadline = Instant::now() + bound;
    let mut last = count();
    let mut moved = Instant::now();
    loop {
        let now = count();
        if now >= want || Instant::now() > deadline {
            return now;
        }
        if now != last {
            last = now;
            moved = Instant::now();
        } else if moved.elapsed() > idle {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Each Redis process's INFO counters, one after the other.
async fn redis_counters(redis_cli: &str, procs: &[(u16, u32)]) -> Vec<Counters> {
    let mut all = Vec::new();
    for &(port, _) in procs {
        all.push(counters(redis_cli, port).await);
    }
    all
}
