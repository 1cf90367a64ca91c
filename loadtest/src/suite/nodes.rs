//! The processes a suite run starts, and how it measures them: gateways
//! (on 127.0.0.1:0, the address read from their listening line),
//! redis-server, the one-node and 3-node + Redis topologies of the
//! scenarios; the helpers to run a command, wait for a port, and read the
//! CPU the processes used.
//!
//! Invariants: every child process is killed when its handle drops (a
//! [`Proc`] still running then is reported on stderr); every wait is
//! bounded; a gateway inherits no `GATEWAY_*` variable from the caller, so
//! runs compare.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::SuiteArgs;
use crate::cli::ClientArgs;
use crate::common::{clk_tck, now_us, proc_sample};

/// The JWT secret of every gateway and client of a run.
pub(crate) const SECRET: &str = "loadtest-suite-secret-0123456789abcdef";

/// The Pusher app of every gateway of a run (the `[[pusher.apps]]` of
/// [`CONFIG`]), used by the `pusher-*` scenarios.
pub(crate) const PUSHER_APP_ID: &str = "loadtest";
/// Its key.
pub(crate) const PUSHER_KEY: &str = "loadtest-key";
/// Its secret.
pub(crate) const PUSHER_SECRET: &str = "loadtest-suite-pusher-secret-0123456789";

/// The gateway config every node of a run reads.
pub(crate) const CONFIG: &str = r#"# Written by `loadtest suite`.
log = "warn"
# Publishers in the benchmarks publish far above the per-connection default.
rate_limit = 1000000
rate_burst = 1000000
# The edge's limits, raised explicitly: the suite opens up to ~19,900
# connections to one node from 127.0.0.1-127.0.0.16 at up to 5,000
# connects/s. Loopback is exempt from the per-address limits by default
# (ip_limits_private = false); these hold if that ever changes. The default
# handshake-phase cap (1024) could refuse a connect burst on a loaded box.
max_pending_connections = 20000
max_connections_per_ip = 20000
connect_rate_per_ip = 10000
connect_burst_per_ip = 20000

[default_namespace]
client_publish = true

[namespaces.idle]

[namespaces.room]
presence = true

[namespaces.fan]
client_publish = true

[namespaces.lat]
client_publish = true

[namespaces.bcast]

# The pusher-* scenarios (issue 14): Pusher protocol 7 on /app/loadtest-key,
# REST on /apps/loadtest; public bench-* and idle-* channels, presence-room-*.
[[pusher.apps]]
id = "loadtest"
key = "loadtest-key"
secret = "loadtest-suite-pusher-secret-0123456789"
"#;

/// A child process killed on drop.
pub(crate) struct Proc {
    pub(crate) child: Child,
    pub(crate) name: String,
}

impl Proc {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    pub(crate) async fn stop(mut self) {
        // SIGKILL: the drain would take drain_grace_ms for nothing here.
        let _ = self.child.kill().await;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.start_kill();
            eprintln!("suite: killed {}", self.name);
        }
    }
}

/// A cluster's Redis: every node of the cluster uses the same URL and prefix.
pub(crate) struct Redis {
    pub(crate) url: String,
    pub(crate) prefix: String,
}

/// What every scenario of one run shares: the options, where logs and the
/// gateway config go.
pub(crate) struct Ctx {
    pub(crate) args: SuiteArgs,
    pub(crate) logs: PathBuf,
    pub(crate) config: PathBuf,
    pub(crate) seq: u32,
}

pub(crate) fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl Ctx {
    pub(crate) fn log_file(&mut self, name: &str) -> Result<std::fs::File> {
        self.seq += 1;
        let path = self.logs.join(format!("{:02}-{name}.log", self.seq));
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))
    }

    /// Starts a gateway on 127.0.0.1:0 and waits for its listening line.
    pub(crate) async fn gateway(
        &mut self,
        name: &str,
        redis: Option<&Redis>,
    ) -> Result<(Proc, SocketAddr)> {
        self.gateway_env(name, redis, &[]).await
    }

    /// [`Ctx::gateway`] with extra `GATEWAY_*` variables.
    pub(crate) async fn gateway_env(
        &mut self,
        name: &str,
        redis: Option<&Redis>,
        extra: &[(String, String)],
    ) -> Result<(Proc, SocketAddr)> {
        let log = self.log_file(name)?;
        let mut cmd = Command::new(&self.args.gateway_bin);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("GATEWAY_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("GATEWAY_CONFIG", &self.config)
            .env("GATEWAY_LISTEN", "127.0.0.1:0")
            .env("GATEWAY_NODE_ID", name)
            .env("GATEWAY_JWT_SECRET", SECRET)
            .env("GATEWAY_AUTH_REQUIRED", "true");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        if let Some(r) = redis {
            cmd.env("GATEWAY_REDIS_URL", &r.url)
                .env("GATEWAY_REDIS_PREFIX", &r.prefix);
            if self.args.cluster_worker_threads > 0 {
                cmd.env(
                    "GATEWAY_WORKER_THREADS",
                    self.args.cluster_worker_threads.to_string(),
                );
            }
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.args.gateway_bin.display()))?;
        let stdout = child.stdout.take().context("gateway stdout")?;
        let proc = Proc {
            child,
            name: format!("gateway {name}"),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.trim().strip_prefix("gateway listening on ") {
                    if let (Some(tx), Ok(addr)) = (tx.take(), addr.parse::<SocketAddr>()) {
                        let _ = tx.send(addr);
                    }
                }
            }
        });
        let addr = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .map_err(|_| {
                anyhow!(
                    "gateway {name} printed no listening line in 30 s (see {})",
                    self.logs.display()
                )
            })?
            .map_err(|_| {
                anyhow!(
                    "gateway {name} exited before listening (see {})",
                    self.logs.display()
                )
            })?;
        Ok((proc, addr))
    }

    /// Starts redis-server on a free loopback port.
    pub(crate) async fn redis(&mut self) -> Result<(Proc, Redis)> {
        self.redis_on(free_port()?).await
    }

    /// Starts redis-server on `port` (a restart reuses its port).
    pub(crate) async fn redis_on(&mut self, port: u16) -> Result<(Proc, Redis)> {
        self.redis_with("redis", port, &[]).await
    }

    /// Starts redis-server on `port` with `extra` arguments (a Redis
    /// Cluster node's), logging to `<seq>-<name>.log`.
    pub(crate) async fn redis_with(
        &mut self,
        name: &str,
        port: u16,
        extra: &[String],
    ) -> Result<(Proc, Redis)> {
        let log = self.log_file(name)?;
        let child = Command::new(&self.args.redis_server)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.args.redis_server))?;
        let proc = Proc {
            child,
            name: format!("redis-server {name} :{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                let mut buf = [0u8; 16];
                if s.write_all(b"PING\r\n").await.is_ok() {
                    if let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await
                    {
                        if buf[..n].starts_with(b"+PONG") {
                            break;
                        }
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("redis-server did not answer PING on {port} within 15 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok((
            proc,
            Redis {
                url: format!("redis://127.0.0.1:{port}/"),
                prefix: format!("lt{}", now_us() % 1_000_000),
            },
        ))
    }

    /// Client options for `addrs`.
    pub(crate) fn client(&self, addrs: &[SocketAddr]) -> ClientArgs {
        let mut c = ClientArgs::for_urls(addrs.iter().map(|a| format!("ws://{a}/ws")).collect());
        c.jwt_secret = Some(SECRET.into());
        c.no_progress = self.args.no_progress;
        c
    }

    pub(crate) fn wants(&self, name: &str) -> bool {
        self.args.only.is_empty() || self.args.only.iter().any(|o| o == name)
    }
}

/// CPU seconds used by `pids` between two samples.
pub(crate) fn cpu_secs(pids: &[u32], before: &[u64]) -> f64 {
    let tck = clk_tck() as f64;
    pids.iter()
        .zip(before)
        .map(|(&p, &b)| proc_sample(p).map_or(0.0, |s| s.cpu_ticks.saturating_sub(b) as f64 / tck))
        .sum()
}

pub(crate) fn ticks(pids: &[u32]) -> Vec<u64> {
    pids.iter()
        .map(|&p| proc_sample(p).map_or(0, |s| s.cpu_ticks))
        .collect()
}

pub(crate) async fn run_cmd(cmd: &mut Command, what: &str, timeout: Duration) -> Result<String> {
    let out = tokio::time::timeout(timeout, cmd.kill_on_drop(true).output())
        .await
        .map_err(|_| anyhow!("{what} took more than {timeout:?}"))?
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) async fn wait_port(port: u16, bound: Duration) -> Result<()> {
    let deadline = Instant::now() + bound;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("nothing listens on 127.0.0.1:{port} after {bound:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Where a scenario runs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Topology {
    /// A fresh single node, named after the scenario.
    One,
    /// A fresh redis-server and 3 nodes named `<prefix>0..2`.
    Cluster(&'static str),
}

/// The started processes of one scenario.
pub(crate) struct Nodes {
    gateways: Vec<Proc>,
    redis: Option<Proc>,
    /// The gateways' addresses.
    pub(crate) addrs: Vec<SocketAddr>,
}

impl Nodes {
    /// Starts `topology` for scenario `name`.
    pub(crate) async fn start(ctx: &mut Ctx, name: &str, topology: Topology) -> Result<Nodes> {
        match topology {
            Topology::One => {
                let (gw, addr) = ctx.gateway(name, None).await?;
                Ok(Nodes {
                    gateways: vec![gw],
                    redis: None,
                    addrs: vec![addr],
                })
            }
            Topology::Cluster(prefix) => {
                let (redis, cluster) = ctx.redis().await?;
                let mut gateways = Vec::new();
                let mut addrs = Vec::new();
                for i in 0..3 {
                    let (gw, addr) = ctx.gateway(&format!("{prefix}{i}"), Some(&cluster)).await?;
                    gateways.push(gw);
                    addrs.push(addr);
                }
                Ok(Nodes {
                    gateways,
                    redis: Some(redis),
                    addrs,
                })
            }
        }
    }

    /// The gateways' pids.
    pub(crate) fn gateway_pids(&self) -> Vec<u32> {
        self.gateways.iter().map(Proc::pid).collect()
    }

    /// Every started process's pid: the gateways, then redis-server.
    pub(crate) fn pids(&self) -> Vec<u32> {
        let mut pids = self.gateway_pids();
        pids.extend(self.redis.as_ref().map(Proc::pid));
        pids
    }

    /// Stops the gateways, then redis-server.
    pub(crate) async fn stop(self) {
        for gw in self.gateways {
            gw.stop().await;
        }
        if let Some(redis) = self.redis {
            redis.stop().await;
        }
    }
}
