//! The worker process (`loadtest __worker`): reads its spec and then
//! commands from stdin, one JSON line each, runs them in order (connect up
//! to a count, finish a fan-out, churn, stop) and writes one event line per
//! command (plus progress) to stdout.
//!
//! Invariants: every phase is bounded in time (connect timeout plus a
//! margin, the finish's idle and max waits, the churn duration plus a
//! margin, the stop's wait for client tasks); a closed stdin (the parent
//! died) stops the clients and exits; an error is reported as
//! [`Ev::Fatal`] before the worker exits.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

use super::client::{churn_cycle, client, CycleEnd};
use super::ctx::{note_error, Ctx};
use super::protocol::{ChurnReport, ChurnSpec, Cmd, Ev, Mode, SeqReport, WorkerSpec};
use crate::common::{hist_pairs, new_hist, now_us};
use crate::wire::ConnectError;

/// How often connect and churn progress is reported at most.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// True at most once per [`PROGRESS_EVERY`].
struct Throttle(Instant);

impl Throttle {
    fn new() -> Throttle {
        Throttle(Instant::now())
    }

    fn ready(&mut self) -> bool {
        if self.0.elapsed() > PROGRESS_EVERY {
            self.0 = Instant::now();
            true
        } else {
            false
        }
    }
}

/// Entry point of `loadtest __worker`: reads the spec and commands from
/// stdin, writes events to stdout.
pub async fn worker_main() -> Result<()> {
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<Ev>();
    let writer = tokio::spawn(async move {
        let mut out = tokio::io::stdout();
        while let Some(ev) = ev_rx.recv().await {
            let Ok(mut line) = serde_json::to_string(&ev) else {
                continue;
            };
            line.push('\n');
            if out.write_all(line.as_bytes()).await.is_err() || out.flush().await.is_err() {
                break;
            }
        }
    });
    let result = run_worker(ev_tx.clone()).await;
    if let Err(e) = &result {
        let _ = ev_tx.send(Ev::Fatal {
            error: format!("{e:#}"),
        });
    }
    drop(ev_tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    result
}

async fn run_worker(ev: mpsc::UnboundedSender<Ev>) -> Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let first = lines
        .next_line()
        .await?
        .context("no worker spec on stdin")?;
    let spec: WorkerSpec = serde_json::from_str(&first).context("parsing the worker spec")?;
    let nodes = spec.ep.nodes()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (refused_tx, refused_rx) = watch::channel(None);
    let ctx = Arc::new(Ctx::new(spec, nodes, ev.clone(), stop_rx, refused_rx));
    let sem = Arc::new(Semaphore::new(ctx.spec.connect_concurrency.max(1)));
    loop {
        let Some(line) = lines.next_line().await? else {
            // The parent went away: stop.
            let _ = stop_tx.send(true);
            wait_tasks(&ctx, Duration::from_secs(10)).await;
            return Ok(());
        };
        let cmd: Cmd =
            serde_json::from_str(&line).with_context(|| format!("bad command {line:?}"))?;
        match cmd {
            Cmd::Connect { upto } => {
                connect_upto(&ctx, &sem, upto).await;
                let _ = ev.send(Ev::Connected(ctx.connect_report()));
            }
            Cmd::Finish {
                idle_ms,
                max_ms,
                refused,
            } => {
                if !refused.is_empty() {
                    let _ = refused_tx.send(Some(Arc::new(refused)));
                }
                let report = finish(&ctx, idle_ms, max_ms).await;
                let _ = ev.send(Ev::Finished(report));
            }
            Cmd::Churn => {
                let Mode::Churn(spec) = ctx.spec.mode.clone() else {
                    bail!("churn command for a worker not in churn mode");
                };
                let report = churn(&ctx, &spec).await;
                let _ = ev.send(Ev::Churned(report));
            }
            Cmd::Stop => {
                let live = ctx.live();
                let _ = stop_tx.send(true);
                wait_tasks(&ctx, Duration::from_secs(15)).await;
                let _ = ev.send(Ev::Stopped(ctx.stop_report(live)));
                return Ok(());
            }
        }
    }
}

async fn wait_tasks(ctx: &Ctx, bound: Duration) {
    let deadline = Instant::now() + bound;
    while ctx.live_tasks.load(Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens clients until `upto` were attempted; waits (bounded) until each
/// attempt has connected or failed, reporting progress.
async fn connect_upto(ctx: &Arc<Ctx>, sem: &Arc<Semaphore>, upto: u64) {
    let upto = upto.min(ctx.spec.count);
    let base = ctx.attempted.load(Relaxed);
    if ctx.first_attempt_us.load(Relaxed) == 0 {
        ctx.first_attempt_us.store(now_us(), Relaxed);
    }
    let start = Instant::now();
    let mut every = Throttle::new();
    let progress = |ctx: &Ctx| ctx.progress(ctx.connected.load(Relaxed), ctx.failed.load(Relaxed));
    for n in base..upto {
        if ctx.spec.connect_rate > 0.0 {
            let due = start + Duration::from_secs_f64((n - base) as f64 / ctx.spec.connect_rate);
            tokio::time::sleep_until(due).await;
        }
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        ctx.attempted.fetch_add(1, Relaxed);
        ctx.live_tasks.fetch_add(1, Relaxed);
        tokio::spawn(client(ctx.clone(), ctx.spec.first + n, permit));
        if every.ready() {
            progress(ctx);
        }
    }
    // Every attempt ends within the connect timeout.
    let deadline = Instant::now()
        + Duration::from_millis(ctx.spec.ep.connect_timeout_ms)
        + Duration::from_secs(5);
    while ctx.connected.load(Relaxed) + ctx.failed.load(Relaxed) < ctx.attempted.load(Relaxed)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if every.ready() {
            progress(ctx);
        }
    }
    progress(ctx);
}

/// Waits until every subscriber is complete (or no delivery for `idle_ms`,
/// or `max_ms` in all), lets the counters settle, and reports.
async fn finish(ctx: &Ctx, idle_ms: u64, max_ms: u64) -> SeqReport {
    let start = Instant::now();
    let mut last_count = ctx.deliveries.load(Relaxed);
    let mut last_change = Instant::now();
    while ctx.remaining.load(Relaxed) > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let count = ctx.deliveries.load(Relaxed);
        if count != last_count {
            last_count = count;
            last_change = Instant::now();
        }
        if last_change.elapsed() > Duration::from_millis(idle_ms)
            || start.elapsed() > Duration::from_millis(max_ms)
        {
            break;
        }
    }
    // Let deliveries in flight land (refused publications may still arrive
    // after every subscriber has what was acknowledged): the report reads
    // the counters one by one, so they must be still.
    let settle = Instant::now() + Duration::from_secs(3);
    let mut last_count = ctx.deliveries.load(Relaxed);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let count = ctx.deliveries.load(Relaxed);
        if count == last_count || Instant::now() > settle {
            break;
        }
        last_count = count;
    }
    ctx.seq_report()
}

/// Runs churn cycles at the spec's rate (at most `concurrency` in flight)
/// for its duration, then waits (bounded) for the cycles in flight.
async fn churn(ctx: &Arc<Ctx>, spec: &ChurnSpec) -> ChurnReport {
    let sem = Arc::new(Semaphore::new(spec.concurrency.max(1)));
    let (done_tx, mut done_rx) =
        mpsc::unbounded_channel::<(u64, Result<(u64, CycleEnd), ConnectError>)>();
    let start = Instant::now();
    let start_us = now_us();
    let duration = Duration::from_millis(spec.duration_ms);
    let mut k = 0u64;
    let mut report = ChurnReport {
        start_us,
        ..ChurnReport::default()
    };
    let mut setup = new_hist();
    let mut tally = |report: &mut ChurnReport, r: Result<(u64, CycleEnd), ConnectError>| match r {
        Ok((us, end)) => {
            report.ok += 1;
            let _ = setup.record(us.clamp(1, 600_000_000));
            match end {
                CycleEnd::Clean(true) => report.clean += 1,
                CycleEnd::Clean(false) => report.clean_unconfirmed += 1,
                CycleEnd::Fin => report.fin += 1,
                CycleEnd::Rst => report.rst += 1,
            }
        }
        Err(e) => {
            report.failed += 1;
            note_error(&mut report.errors, &mut report.sample_error, &e);
        }
    };
    let mut every = Throttle::new();
    while start.elapsed() < duration {
        if spec.rate > 0.0 {
            let due = start + Duration::from_secs_f64(k as f64 / spec.rate);
            if due > start + duration {
                break;
            }
            tokio::time::sleep_until(due).await;
        }
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let ctx2 = ctx.clone();
        let groups = spec.groups.clone();
        let linger = Duration::from_millis(spec.linger_ms);
        let tx = done_tx.clone();
        let idx = spec.first_index + k;
        let cycle = k;
        tokio::spawn(async move {
            let r = churn_cycle(&ctx2, idx, cycle, &groups, linger).await;
            drop(permit);
            let _ = tx.send((cycle, r));
        });
        k += 1;
        while let Ok((_, r)) = done_rx.try_recv() {
            tally(&mut report, r);
        }
        if every.ready() {
            ctx.progress(report.ok, report.failed);
        }
    }
    report.attempted = k;
    drop(done_tx);
    let deadline = Instant::now()
        + Duration::from_millis(ctx.spec.ep.connect_timeout_ms)
        + Duration::from_secs(10);
    while report.ok + report.failed < k {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some((_, r))) => tally(&mut report, r),
            _ => break,
        }
    }
    report.end_us = now_us();
    report.setup = hist_pairs(&setup);
    report.live_holds = ctx.live();
    report.dropped = ctx.dropped.load(Relaxed);
    report
}
