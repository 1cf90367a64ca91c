//! `shard-spread`: does Redis pub/sub spread over the primaries of a Redis
//! Cluster? The same load runs twice, on 3 gateway nodes each time: (a)
//! on one redis-server, (b) on a Redis Cluster of 3 primaries + 3 replicas
//! on this machine (sharded pub/sub: a channel's pub/sub name and keys
//! share the hash tag `{<channel>}`, so channels spread over the primaries
//! by key slot).
//!
//! The load: `--channels` channels; `--subscribers-per-node` connections
//! per node each subscribed to every channel (so every channel has
//! subscribers on every node and every node's interest reaches every
//! shard); publishers on every node publishing flat out for
//! `--duration-secs`, round-robin over the channels. A warm-up round (one
//! publication per channel, which every subscriber must get) proves the
//! subscriptions before the measured window.
//!
//! Measured over the window (publishing, then until the deliveries stop):
//! publications accepted and deliveries received (each subscriber must
//! get, per channel, exactly the accepted publications), the CPU seconds
//! of every Redis process, gateway and of this load generator (utime +
//! stime from /proc), and each Redis's `INFO` counters (publish calls,
//! commands). From them: Redis CPU per 1,000 publications, the primaries'
//! spread (max / min CPU; must be within 2x), each primary's share of the
//! publications, and the rate at which the busiest Redis process would
//! fill one core.
//!
//! Invariants: every process is killed when its handle drops; every wait
//! is bounded; the two phases run the same plan one after the other on
//! fresh processes, never at once.
//!
//! Jobs: this file (the run: its phases in order, the results files; the
//! suite's entry and defaults); `options` (the options, the topologies);
//! `topology` (starting one phase's Redis and gateways); `measure` (one
//! phase's load and samples); `figures` (per-process figures from the
//! samples); `redis` (the cluster, redis-cli, INFO and slots); `load`
//! (subscribers, publishers); `report` (the derived figures, the
//! comparison, summary and markdown).

mod figures;
mod load;
mod measure;
mod options;
mod redis;
mod report;
mod topology;

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::common::{now_us, write_json};
use crate::fanout::Via;
use crate::suite::env::{git_commit, loadavg, machine, stamp};
use crate::suite::nodes::{Ctx, CONFIG};
use crate::suite::SuiteArgs;
pub use options::{SpreadArgs, Topo};
use report::Phase;
pub use report::SpreadReport;

/// Namespaces of the channels (added to the suite's gateway config).
const NAMESPACES: &str = r#"
# Added by `loadtest shard-spread`.
[namespaces.spread]
client_publish = true

[namespaces.spreadh]
client_publish = true
history_size = 100
history_ttl_secs = 300
"#;

/// Runs one phase on fresh processes; stops them whatever happens.
async fn phase(ctx: &mut Ctx, args: &SpreadArgs, topo: Topo) -> Result<Phase> {
    let (side, gateways, addrs) = topology::start(ctx, args, topo).await?;
    let r = measure::measure(ctx, args, topo, &side, &gateways, &addrs).await;
    for g in gateways {
        g.stop().await;
    }
    side.stop().await;
    r
}

/// A fresh context for `args` logging into `logs`, with the suite's
/// gateway config plus the spread namespaces.
fn context(args: &SpreadArgs, logs: PathBuf) -> Result<Ctx> {
    std::fs::create_dir_all(&logs)?;
    let config = logs.join("gateway-spread.toml");
    std::fs::write(&config, format!("{CONFIG}{NAMESPACES}"))?;
    let mut suite = SuiteArgs::for_soak(args.gateway_bin.clone(), args.redis_server.clone());
    suite.no_progress = true;
    Ok(Ctx {
        args: suite,
        logs,
        config,
        seq: 0,
    })
}

/// Runs the phases; the report (its `failures` say which phase could not
/// run).
async fn run_phases(args: &SpreadArgs, logs: PathBuf) -> Result<SpreadReport> {
    args.validate()?;
    let started = now_us();
    let mut ctx = context(args, logs)?;
    let load_before = loadavg();
    let mut single = None;
    let mut cluster = None;
    let mut failures = Vec::new();
    for &topo in &args.topologies {
        match phase(&mut ctx, args, topo).await {
            Ok(p) => match topo {
                Topo::Single => single = Some(p),
                Topo::Cluster => cluster = Some(p),
            },
            Err(e) => {
                eprintln!("shard-spread: {topo:?} failed: {e:#}");
                failures.push(format!("{topo:?}: {e:#}"));
            }
        }
    }
    Ok(SpreadReport::new(
        report::RunIn {
            date: stamp(started / 1_000_000),
            commit: git_commit().await,
            machine: machine(),
            load_before,
            load_after: loadavg(),
            args,
            duration_secs: (now_us() - started) as f64 / 1e6,
            logs: ctx.logs.display().to_string(),
        },
        single,
        cluster,
        failures,
    ))
}

/// Runs `shard-spread`: the report, written to `<out-dir>/<date>-shard-spread.{json,md}`
/// (and `--json`).
pub async fn run(args: &SpreadArgs) -> Result<SpreadReport> {
    let logs = std::env::temp_dir().join(format!("loadtest-spread-{}", now_us()));
    eprintln!("shard-spread: logs in {}", logs.display());
    let r = run_phases(args, logs).await?;
    if !args.no_results {
        let json = args.out_dir.join(format!("{}-shard-spread.json", r.date));
        let md = args.out_dir.join(format!("{}-shard-spread.md", r.date));
        write_json(&json, &r)?;
        std::fs::write(&md, r.markdown()).with_context(|| format!("writing {}", md.display()))?;
        eprintln!(
            "shard-spread: results in {} and {}",
            json.display(),
            md.display()
        );
    }
    Ok(r)
}

impl SpreadArgs {
    /// The suite's `shard-spread` (`--only shard-spread`): the defaults, 5 s
    /// per topology with `--quick`.
    pub(crate) fn for_suite(s: &SuiteArgs) -> SpreadArgs {
        SpreadArgs {
            channels: 300,
            subscribers_per_node: 3,
            duration_secs: if s.quick { 5.0 } else { 15.0 },
            via: Via::Ws,
            publishers_per_node: 2,
            window: 64,
            rate: 0.0,
            payload: 64,
            history: false,
            topologies: vec![Topo::Single, Topo::Cluster],
            cluster_replicas: 1,
            gateway_bin: s.gateway_bin.clone(),
            redis_server: s.redis_server.clone(),
            redis_cli: "redis-cli".into(),
            worker_threads: s.cluster_worker_threads,
            max_spread: 2.0,
            idle_secs: 3.0,
            out_dir: PathBuf::new(),
            no_results: true,
            json: None,
            no_progress: s.no_progress,
        }
    }
}

/// The suite's `shard-spread`: summary, checks passed, result.
pub(crate) async fn run_in_suite(s: &SuiteArgs, logs: PathBuf) -> Result<(String, bool, Value)> {
    let args = SpreadArgs::for_suite(s);
    let r = run_phases(&args, logs.join("shard-spread")).await?;
    Ok((
        r.summary(),
        r.ok,
        serde_json::to_value(&r).unwrap_or(Value::Null),
    ))
}

/// The markdown section of a suite result (`results.shard_spread`).
pub(crate) fn suite_markdown(v: &Value) -> Option<String> {
    serde_json::from_value::<SpreadReport>(v.clone())
        .ok()
        .map(|r| r.markdown())
}
