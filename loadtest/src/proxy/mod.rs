//! `proxy`: what the connect and subscribe proxy cost (docs/backend.md,
//! "Proxy"; docs/performance.md, "Proxy overhead"). Each round starts a
//! fresh node twice: once where clients connect with a JWT and subscribe
//! with no hook, once where they connect with only a cookie (the connect
//! hook asks the trivial [`backend`] who they are) and every subscribe goes
//! through the subscribe hook. Both see the same load ([`load`]): connects
//! `--concurrency` at a time, then one subscribe per client. Rounds
//! alternate the two so drift on the machine hits both alike.
//!
//! Reports connects/s and connect latency, subscribe latency, and the
//! backend's request counts (proof that the hooks were called: one connect
//! and one subscribe per client). Fails when a client failed or a count is
//! off.
//!
//! Invariants: loopback only; every loop bounded in count and time; every
//! process killed when its handle drops.

pub mod backend;
pub mod load;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;

use self::backend::Backend;
use self::load::Credential;
use crate::common::{new_hist, now_us, token, Latency};
use crate::suite::nodes::{Ctx, CONFIG, SECRET};
use crate::suite::SuiteArgs;

/// Options of `proxy`.
#[derive(Debug, Clone, Args)]
pub struct ProxyArgs {
    /// Gateway binary.
    #[arg(long, default_value = "target/release/gateway")]
    pub gateway_bin: PathBuf,
    /// Clients per node and round.
    #[arg(long, default_value_t = 3000)]
    pub clients: u64,
    /// Connects (then subscribes) in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Rounds; each runs both modes on fresh nodes.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Runtime threads of the backend.
    #[arg(long, default_value_t = 1)]
    pub backend_threads: usize,
    /// Bound on one connect (to the welcome) or subscribe, ms.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One mode of one round.
#[derive(Debug, Serialize)]
pub struct Round {
    /// `jwt` or `proxy`.
    pub mode: &'static str,
    /// Round number, from 1.
    pub round: u32,
    /// Connections that got their welcome.
    pub connected: u64,
    /// Subscriptions answered.
    pub subscribed: u64,
    /// Failed connects.
    pub failed_connect: u64,
    /// Failed subscribes.
    pub failed_subscribe: u64,
    /// Connects per second over the connect phase.
    pub connects_per_sec: f64,
    /// Connect (TCP + upgrade + welcome) latency.
    pub connect: Latency,
    /// Subscribe (to `subscribed`) latency.
    pub subscribe: Latency,
}

/// Both modes over all rounds.
#[derive(Debug, Serialize)]
pub struct Mode {
    /// Median connects/s of the rounds.
    pub connects_per_sec_median: f64,
    /// Connect latency over every round.
    pub connect: Latency,
    /// Subscribe latency over every round.
    pub subscribe: Latency,
}

/// The report.
#[derive(Debug, Serialize)]
pub struct ProxyOut {
    /// Options of the run.
    pub clients: u64,
    /// Concurrency.
    pub concurrency: usize,
    /// Every round.
    pub rounds: Vec<Round>,
    /// JWT, no hooks.
    pub jwt: Mode,
    /// Connect and subscribe through the proxy.
    pub proxy: Mode,
    /// Connect requests the backend answered.
    pub backend_connects: u64,
    /// Subscribe requests the backend answered.
    pub backend_subscribes: u64,
    /// Every client succeeded and the backend saw exactly one connect and
    /// one subscribe per proxied client.
    pub ok: bool,
}

impl ProxyOut {
    /// The summary printed at the end.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "proxy: {} clients per node, {} at a time, {} rounds\n",
            self.clients,
            self.concurrency,
            self.rounds.len() / 2
        );
        for r in &self.rounds {
            s += &format!(
                "  round {} {:5}: {:.0} connects/s, connect p50 {:.2} ms p99 {:.2} ms, subscribe p50 {:.2} ms p99 {:.2} ms, failed {}/{}\n",
                r.round,
                r.mode,
                r.connects_per_sec,
                r.connect.p50_ms,
                r.connect.p99_ms,
                r.subscribe.p50_ms,
                r.subscribe.p99_ms,
                r.failed_connect,
                r.failed_subscribe
            );
        }
        for (name, m) in [("jwt", &self.jwt), ("proxy", &self.proxy)] {
            s += &format!(
                "  {name:5}: median {:.0} connects/s; connect {}; subscribe {}\n",
                m.connects_per_sec_median,
                m.connect.line(),
                m.subscribe.line()
            );
        }
        let ratio = if self.jwt.connects_per_sec_median > 0.0 {
            self.proxy.connects_per_sec_median / self.jwt.connects_per_sec_median
        } else {
            0.0
        };
        s += &format!(
            "  proxy/jwt connects/s {:.2}x; subscribe p50 +{:.2} ms; backend answered {} connects, {} subscribes; {}",
            ratio,
            self.proxy.subscribe.p50_ms - self.jwt.subscribe.p50_ms,
            self.backend_connects,
            self.backend_subscribes,
            if self.ok { "OK" } else { "NOT OK" }
        );
        s
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn mode(rounds: &[Round], hists: &[(Histogram<u64>, Histogram<u64>)]) -> Mode {
    let mut c = new_hist();
    let mut s = new_hist();
    for (hc, hs) in hists {
        let _ = c.add(hc);
        let _ = s.add(hs);
    }
    Mode {
        connects_per_sec_median: median(rounds.iter().map(|r| r.connects_per_sec).collect()),
        connect: Latency::of(&c),
        subscribe: Latency::of(&s),
    }
}

/// Runs `proxy`.
pub async fn run(args: &ProxyArgs) -> Result<ProxyOut> {
    if !args.gateway_bin.exists() {
        bail!(
            "gateway binary {} not found (cargo build --release -p gateway)",
            args.gateway_bin.display()
        );
    }
    if args.clients == 0 || args.rounds == 0 || args.clients > 15_000 {
        bail!("--clients must be 1..=15000 and --rounds > 0");
    }
    crate::common::raise_nofile();
    let backend = Backend::start(args.backend_threads)?;
    let logs = std::env::temp_dir().join(format!("loadtest-proxy-{}", now_us()));
    std::fs::create_dir_all(&logs)?;
    let jwt_config = logs.join("jwt.toml");
    std::fs::write(&jwt_config, CONFIG)?;
    let proxy_config = logs.join("proxy.toml");
    std::fs::write(&proxy_config, format!("{CONFIG}{}", backend.proxy_toml()))?;
    eprintln!(
        "proxy: backend on {}, logs in {}",
        backend.addr,
        logs.display()
    );
    let limit = Duration::from_millis(args.timeout_ms);
    let mut rounds = Vec::new();
    let mut hists: [Vec<(Histogram<u64>, Histogram<u64>)>; 2] = [Vec::new(), Vec::new()];
    let mut seq = 0;
    for round in 1..=args.rounds {
        for (i, (name, config)) in [("jwt", &jwt_config), ("proxy", &proxy_config)]
            .into_iter()
            .enumerate()
        {
            let mut ctx = Ctx {
                args: SuiteArgs::for_soak(args.gateway_bin.clone(), "redis-server".into()),
                logs: logs.clone(),
                config: config.clone(),
                seq,
            };
            let (node, addr) = ctx.gateway(&format!("{name}-r{round}"), None).await?;
            seq = ctx.seq;
            let creds = (0..args.clients)
                .map(|c| {
                    let user = format!("u{round}x{c}");
                    Ok(if name == "jwt" {
                        Credential::Jwt(token(SECRET, &user)?)
                    } else {
                        Credential::Cookie(user)
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let m = load::run(addr, creds, args.concurrency, limit).await;
            node.stop().await;
            let m = m?;
            let secs = m.connect_wall.as_secs_f64();
            rounds.push(Round {
                mode: name,
                round,
                connected: m.connected,
                subscribed: m.subscribed,
                failed_connect: m.failed_connect,
                failed_subscribe: m.failed_subscribe,
                connects_per_sec: if secs > 0.0 {
                    m.connected as f64 / secs
                } else {
                    0.0
                },
                connect: Latency::of(&m.connect_us),
                subscribe: Latency::of(&m.subscribe_us),
            });
            hists[i].push((m.connect_us, m.subscribe_us));
        }
    }
    let (jwt_rounds, proxy_rounds): (Vec<Round>, Vec<Round>) =
        rounds.into_iter().partition(|r| r.mode == "jwt");
    let jwt = mode(&jwt_rounds, &hists[0]);
    let proxy = mode(&proxy_rounds, &hists[1]);
    let backend_connects = backend.counts.connect.load(Ordering::Relaxed);
    let backend_subscribes = backend.counts.subscribe.load(Ordering::Relaxed);
    let expected = args.clients * u64::from(args.rounds);
    let all_ok = jwt_rounds
        .iter()
        .chain(&proxy_rounds)
        .all(|r| r.failed_connect == 0 && r.failed_subscribe == 0);
    let ok = all_ok && backend_connects == expected && backend_subscribes == expected;
    let mut rounds: Vec<Round> = jwt_rounds.into_iter().chain(proxy_rounds).collect();
    rounds.sort_by_key(|r| (r.round, r.mode));
    Ok(ProxyOut {
        clients: args.clients,
        concurrency: args.concurrency,
        rounds,
        jwt,
        proxy,
        backend_connects,
        backend_subscribes,
        ok,
    })
}
