//! `suite`: the benchmark suite behind docs/performance.md.
//!
//! Builds the release gateway and the ceiling probes, then, on loopback:
//! runs the ceiling probes (bare axum fan-out, batched and unbatched, and
//! idle RSS with a 4 KiB read buffer); starts a fresh single node for each
//! single-node scenario (idle, fan-out, churn, broadcast RTT) and a fresh
//! redis-server + 3-node cluster for each cluster scenario (fan-out,
//! latency); and writes `<out>/<date>.json` plus `<out>/<date>.md` with the
//! targets table (target vs measured vs ratio to the ceiling of the same
//! run). The parameters are fixed (see [`scenarios::Plan`]) so runs
//! compare. `--only shard-spread` runs `loadtest shard-spread` (one Redis,
//! then a Redis Cluster; crate::spread) as one more scenario, whose
//! section follows the table; it is not part of the default run.
//!
//! This file runs the suite: the options, the build, one loop over the
//! scenario table, the results document. The other jobs:
//!
//! - `scenarios`: the fixed plan and the scenario table (what runs where,
//!   with which parameters);
//! - `nodes`: the gateway and redis-server processes, and measuring them;
//! - `ceiling`: the bare axum probes;
//! - `report`: the targets table and its markdown;
//! - `env`: the machine, load, commit and date of a run.
//!
//! Invariants: every child process is killed when its handle drops; every
//! wait is bounded; a scenario that fails to run is a failure line of the
//! report (exit code 1), never an abort of the others.

mod ceiling;
pub(crate) mod env;
pub(crate) mod nodes;
mod report;
mod scenarios;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::process::Command;

use crate::common::{now_us, write_json};
use env::{git_commit, loadavg, machine, stamp};
use nodes::{run_cmd, Ctx, CONFIG};
use report::{markdown, table};
use scenarios::{run_scenario, Plan, SCENARIOS};

/// Options of `suite`.
#[derive(Debug, Clone, Args)]
pub struct SuiteArgs {
    /// Release gateway binary.
    #[arg(long, default_value = "target/release/gateway")]
    pub gateway_bin: PathBuf,
    /// Do not run `cargo build --release -p gateway` first.
    #[arg(long)]
    pub no_build: bool,
    /// redis-server binary.
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
    /// Ceiling probe manifest.
    #[arg(long, default_value = "../shared/bench/ceiling/Cargo.toml")]
    pub ceiling_manifest: PathBuf,
    /// Target directory for the ceiling probe build.
    #[arg(long, default_value = "/tmp/ceiling")]
    pub ceiling_target_dir: PathBuf,
    /// Skip the ceiling probes.
    #[arg(long)]
    pub no_ceiling: bool,
    /// Runtime threads of each cluster node (`GATEWAY_WORKER_THREADS`), e.g.
    /// 1 to model pods with a one-core CPU limit. 0 = the gateway's default
    /// (one per CPU, in each node).
    #[arg(long, default_value_t = 0)]
    pub cluster_worker_threads: usize,
    /// Where results go.
    #[arg(long, default_value = "loadtest/results")]
    pub out_dir: PathBuf,
    /// Scaled-down parameters (minutes -> seconds; not comparable).
    #[arg(long)]
    pub quick: bool,
    /// Run only these scenarios (comma separated): ceiling, idle, fanout,
    /// fanout-ws, pusher-idle, pusher-fanout, churn, rtt, cluster-fanout,
    /// latency; and shard-spread,
    /// which runs only when named here (one Redis, then a 3-primary Redis
    /// Cluster, ~1 min).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// No progress bars.
    #[arg(long)]
    pub no_progress: bool,
    /// Run nothing: print the markdown table of an earlier results JSON
    /// (and rewrite its .md beside it).
    #[arg(long, value_name = "JSON")]
    pub table_from: Option<PathBuf>,
}

impl SuiteArgs {
    /// The options `soak` starts its processes with (through [`nodes::Ctx`]).
    pub(crate) fn for_soak(gateway_bin: PathBuf, redis_server: String) -> Self {
        Self {
            gateway_bin,
            no_build: true,
            redis_server,
            ceiling_manifest: PathBuf::new(),
            ceiling_target_dir: PathBuf::new(),
            no_ceiling: true,
            cluster_worker_threads: 0,
            out_dir: PathBuf::new(),
            quick: false,
            only: Vec::new(),
            no_progress: true,
            table_from: None,
        }
    }
}

fn step(name: &str) {
    eprintln!("\n==> suite: {name} (load {})", loadavg());
}

/// Runs the suite.
pub async fn run(args: &SuiteArgs) -> Result<ExitCode> {
    if let Some(path) = &args.table_from {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut doc: Value = serde_json::from_str(&text)?;
        let results: BTreeMap<String, Value> =
            serde_json::from_value(doc["results"].clone()).unwrap_or_default();
        let t = table(&results);
        doc["table"] = to_value(&t.rows);
        write_json(path, &doc)?;
        let md = markdown(&doc, &t);
        std::fs::write(path.with_extension("md"), &md)?;
        println!("{md}");
        return Ok(ExitCode::SUCCESS);
    }
    let started = now_us();
    let date = stamp(started / 1_000_000);
    let logs = std::env::temp_dir().join(format!("loadtest-suite-{date}"));
    std::fs::create_dir_all(&logs)?;
    let config = logs.join("gateway.toml");
    std::fs::write(&config, CONFIG)?;
    let plan = Plan::new(args.quick);
    let mut ctx = Ctx {
        args: args.clone(),
        logs: logs.clone(),
        config,
        seq: 0,
    };
    eprintln!("suite: logs and config in {}", logs.display());

    if !args.no_build {
        step("cargo build --release -p gateway");
        run_cmd(
            Command::new("cargo").args(["build", "--release", "-p", "gateway"]),
            "cargo build --release -p gateway",
            Duration::from_secs(1800),
        )
        .await?;
    }
    if !args.gateway_bin.exists() {
        bail!(
            "{} not found (build it with cargo build --release -p gateway)",
            args.gateway_bin.display()
        );
    }
    let mut results: BTreeMap<String, Value> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    let load_start = loadavg();

    if ctx.wants("ceiling") && !args.no_ceiling {
        step("ceiling probes");
        ceiling::run(&mut ctx, &plan, &mut results, &mut failures).await;
    }
    for s in &SCENARIOS {
        if ctx.wants(s.name) {
            step(&(s.title)(&plan));
            let r = run_scenario(&mut ctx, &plan, s).await;
            record(&mut results, &mut failures, s.key, r);
        }
    }
    if args.only.iter().any(|o| o == "shard-spread") {
        step("shard-spread: 3 nodes on one Redis, then on a 3-primary Redis Cluster");
        let r = crate::spread::run_in_suite(args, logs.clone()).await;
        record(&mut results, &mut failures, "shard_spread", r);
    }

    let table = table(&results);
    let doc = json!({
        "date": date,
        "commit": git_commit().await,
        "machine": machine(),
        "load_before": load_start,
        "load_after": loadavg(),
        "quick": args.quick,
        "plan": plan,
        "results": results,
        "failures": failures,
        "table": table.rows,
        "duration_secs": (now_us() - started) as f64 / 1e6,
    });
    let json_path = args.out_dir.join(format!("{date}.json"));
    let md_path = args.out_dir.join(format!("{date}.md"));
    write_json(&json_path, &doc)?;
    let md = markdown(&doc, &table);
    std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    println!("\n{md}");
    println!("results: {} and {}", json_path.display(), md_path.display());
    if !failures.is_empty() {
        eprintln!("suite: {} scenario(s) failed to run:", failures.len());
        for f in &failures {
            eprintln!("  {f}");
        }
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// `v` as JSON (`null` if it cannot be).
pub(super) fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Records a scenario's outcome: prints its summary and keeps its result,
/// or adds a failure line (failed checks or an error).
fn record(
    results: &mut BTreeMap<String, Value>,
    failures: &mut Vec<String>,
    name: &str,
    r: Result<(String, bool, Value)>,
) {
    match r {
        Ok((summary, ok, v)) => {
            println!("{summary}");
            if !ok {
                failures.push(format!("{name}: checks failed (see its report)"));
            }
            results.insert(name.into(), v);
        }
        Err(e) => {
            eprintln!("suite: {name} failed: {e:#}");
            failures.push(format!("{name}: {e:#}"));
        }
    }
}
