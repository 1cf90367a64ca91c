//! The topology of `deploy/local-cluster` (redis-server, three gateway
//! nodes, HAProxy, optionally Prometheus) as a handle that stops it on drop.
//!
//! The three nodes are [`tests::Gateway`]s started by
//! [`tests::GatewayBuilder`] on fixed free ports, with the settings the
//! script gives its nodes (node ids `node1..3`, the shared Redis, one fresh
//! key prefix, `deploy/gateway.toml` unless the test brings a config, the
//! loopback as trusted proxy). The script runs everything else: `start
//! redis` first, then, once the nodes are ready, `up`, which finds the nodes
//! through the pid files this handle writes for them (`STATE/nodeN.pid` and
//! `.cmd`, the script's own format), so it starts only its watchdog,
//! HAProxy (waiting until HAProxy has every node UP) and Prometheus.
//!
//! Invariants: every cluster gets its own state directory and free ports;
//! the script runs with `LC_OWNER_PID` set (its watchdog stops everything,
//! the nodes included, if the test process dies without dropping the
//! handle); no `GATEWAY_*` or `LC_*` variable of the developer's shell
//! leaks into the script or the nodes; dropping the handle kills the nodes
//! and runs `down`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tests::{Api, Gateway, GatewayBuilder};

use super::{deploy_path, run_cmd, script, RedisProxy};

static CLUSTERS: AtomicU32 = AtomicU32::new(0);

/// The nodes' names in the script (and their ids).
const NODES: [&str; 3] = ["node1", "node2", "node3"];

/// How long a node may take to become ready, or HAProxy to mark it UP.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a node may take to drain and exit after SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Settings of a local cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Names the state directory and the node logs (use the test's name).
    pub name: String,
    /// Run Prometheus.
    pub prometheus: bool,
    /// Prometheus scrape interval.
    pub scrape_interval: String,
    /// What every node shares: `GATEWAY_*` settings and the config file.
    pub node: GatewayBuilder,
    /// Put a [`RedisProxy`] between the nodes and Redis.
    pub redis_proxy: bool,
}

impl ClusterOptions {
    /// Defaults: no Prometheus, deploy/gateway.toml, 2 s drain grace.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            prometheus: false,
            scrape_interval: "1s".to_owned(),
            node: GatewayBuilder::new()
                .config_file(&deploy_path("gateway.toml"))
                .env("GATEWAY_TRUSTED_PROXIES", "127.0.0.1")
                .env("GATEWAY_DRAIN_GRACE_MS", 2000),
            redis_proxy: false,
        }
    }

    /// Nodes reach Redis through a [`RedisProxy`] (see
    /// [`LocalCluster::proxy`]).
    pub fn redis_proxy(mut self) -> Self {
        self.redis_proxy = true;
        self
    }

    /// Also run Prometheus.
    pub fn prometheus(mut self) -> Self {
        self.prometheus = true;
        self
    }

    /// Sets one `GATEWAY_*` variable for every node.
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.node = self.node.env(key, value);
        self
    }

    /// Uses `toml` as every node's config file.
    pub fn config(mut self, toml: &str) -> Self {
        self.node = self.node.config(toml);
        self
    }
}

/// A running local cluster; stopped on drop.
#[derive(Debug)]
pub struct LocalCluster {
    /// The state directory (pid files, script logs, generated configs).
    pub state: PathBuf,
    /// HAProxy's client port.
    pub lb_port: u16,
    /// The nodes' ports (node1..node3).
    pub node_ports: [u16; 3],
    /// redis-server's port.
    pub redis_port: u16,
    /// Prometheus's port.
    pub prom_port: u16,
    /// HAProxy's stats port.
    pub stats_port: u16,
    /// The script's environment.
    env: Vec<(String, String)>,
    /// node1..node3 (empty until started).
    nodes: Vec<Gateway>,
    /// Whether `down` is still due.
    running: bool,
    /// The fault-injecting proxy in front of Redis, when asked for.
    pub proxy: Option<RedisProxy>,
}

impl LocalCluster {
    /// Starts a cluster on free ports (retrying with new ports when a port
    /// was taken meanwhile) and waits until HAProxy has every node UP.
    pub async fn up(opts: ClusterOptions) -> Result<Self> {
        let n = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let state = tests::workspace_root()
            .join("target")
            .join("test-logs")
            .join(format!("ops-{}-{}-{n}", opts.name, std::process::id()));
        let mut last = None;
        for attempt in 0..3 {
            if state.exists() {
                std::fs::remove_dir_all(&state)
                    .with_context(|| format!("clearing {}", state.display()))?;
            }
            std::fs::create_dir_all(&state)?;
            let mut cluster = Self::prepare(&opts, &state)?;
            eprintln!(
                "[ops] local cluster '{}' (attempt {}): state {}, lb {}, nodes {:?}",
                opts.name,
                attempt + 1,
                state.display(),
                cluster.lb_port,
                cluster.node_ports
            );
            match cluster.start(&opts).await {
                Ok(out) => {
                    eprintln!("{out}");
                    return Ok(cluster);
                }
                Err(e) => {
                    eprintln!("[ops] local cluster start failed: {e:#}");
                    last = Some(e);
                    // Drop kills the nodes and runs `down` before the next
                    // attempt.
                }
            }
        }
        match last {
            Some(e) => Err(e.context("the local cluster failed to start 3 times")),
            None => bail!("the local cluster failed to start"),
        }
    }

    fn prepare(opts: &ClusterOptions, state: &Path) -> Result<Self> {
        let ports = tests::free_ports(7)?;
        let mut env = vec![
            ("LC_STATE_DIR".to_owned(), state.display().to_string()),
            ("LC_LB_PORT".to_owned(), ports[0].to_string()),
            (
                "LC_NODE_PORTS".to_owned(),
                format!("{} {} {}", ports[1], ports[2], ports[3]),
            ),
            ("LC_REDIS_PORT".to_owned(), ports[4].to_string()),
            ("LC_PROMETHEUS_PORT".to_owned(), ports[5].to_string()),
            ("LC_HAPROXY_STATS_PORT".to_owned(), ports[6].to_string()),
            (
                "LC_SCRAPE_INTERVAL".to_owned(),
                opts.scrape_interval.clone(),
            ),
            ("LC_START_TIMEOUT".to_owned(), "60".to_owned()),
            ("LC_OWNER_PID".to_owned(), std::process::id().to_string()),
            (
                "GATEWAY_BIN".to_owned(),
                tests::gateway_bin().display().to_string(),
            ),
        ];
        if !opts.prometheus {
            env.push(("LC_NO_PROMETHEUS".to_owned(), "1".to_owned()));
        }
        Ok(Self {
            state: state.to_owned(),
            lb_port: ports[0],
            node_ports: [ports[1], ports[2], ports[3]],
            redis_port: ports[4],
            prom_port: ports[5],
            stats_port: ports[6],
            env,
            nodes: Vec::new(),
            running: false,
            proxy: None,
        })
    }

    /// Redis (script), the nodes (GatewayBuilder), then the rest (script);
    /// returns what the script printed.
    async fn start(&mut self, opts: &ClusterOptions) -> Result<String> {
        self.running = true;
        let mut out = self.run(&["start", "redis"], START_TIMEOUT).await?;
        let redis_url = if opts.redis_proxy {
            let proxy = RedisProxy::start(self.redis_port).await?;
            let url = format!("redis://127.0.0.1:{}/", proxy.port);
            self.proxy = Some(proxy);
            url
        } else {
            format!("redis://127.0.0.1:{}/", self.redis_port)
        };
        let prefix = tests::unique_prefix(&opts.name);
        let builders = NODES.iter().zip(self.node_ports).map(|(node, port)| {
            opts.node
                .clone()
                .name(&format!("ops-{}-{node}", opts.name))
                .listen(([127, 0, 0, 1], port).into())
                .env("GATEWAY_NODE_ID", node)
                .env("GATEWAY_REDIS_URL", &redis_url)
                .env("GATEWAY_REDIS_PREFIX", &prefix)
        });
        self.nodes =
            futures_util::future::try_join_all(builders.map(GatewayBuilder::spawn)).await?;
        for i in 0..NODES.len() {
            self.nodes[i].wait_ready(START_TIMEOUT).await?;
            self.record_pid(i)?;
        }
        out.push_str(&self.run(&["up"], Duration::from_secs(180)).await?);
        Ok(out)
    }

    /// Writes node `i`'s pid where the script looks for it, with the piece
    /// of its command line the script checks against a recycled pid.
    fn record_pid(&self, i: usize) -> Result<()> {
        let pid = self.nodes[i].pid().context("node is not running")?;
        let base = self.state.join(NODES[i]);
        std::fs::write(base.with_extension("pid"), pid.to_string())?;
        std::fs::write(
            base.with_extension("cmd"),
            tests::gateway_bin().display().to_string(),
        )?;
        Ok(())
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(script());
        for (key, _) in std::env::vars_os() {
            let key_s = key.to_string_lossy();
            if key_s.starts_with("GATEWAY_") || key_s.starts_with("LC_") {
                cmd.env_remove(&key);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.args(args);
        cmd
    }

    /// Runs `deploy/local-cluster ARGS...` with this cluster's settings.
    pub async fn run(&self, args: &[&str], timeout: Duration) -> Result<String> {
        let cmd = tokio::process::Command::from(self.command(args));
        run_cmd(cmd, timeout, &format!("local-cluster {}", args.join(" "))).await
    }

    fn node_index(node: &str) -> Result<usize> {
        NODES
            .iter()
            .position(|n| *n == node)
            .with_context(|| format!("no node {node} (node1..node3)"))
    }

    /// Restarts `node` (node1..node3): SIGTERM, wait for its drain to end,
    /// start it again on its port, wait until it is ready and HAProxy has
    /// it UP. Returns a line saying how it went.
    pub async fn restart(&mut self, node: &str) -> Result<String> {
        let i = Self::node_index(node)?;
        let started = tokio::time::Instant::now();
        let gw = &mut self.nodes[i];
        let status = gw
            .terminate(DRAIN_TIMEOUT)
            .await
            .with_context(|| format!("{node} did not drain"))?;
        let drained = started.elapsed();
        gw.restart().await?;
        gw.wait_ready(START_TIMEOUT).await?;
        self.record_pid(i)?;
        tests::eventually(START_TIMEOUT, &format!("HAProxy has {node} UP"), || async {
            self.lb_statuses()
                .await
                .is_ok_and(|s| s.iter().any(|(n, status)| n == node && status == "UP"))
        })
        .await?;
        Ok(format!(
            "[ops] {node}: drained in {drained:?} ({status}), back, ready and UP in HAProxy after {:?}\n",
            started.elapsed()
        ))
    }

    /// The pid of `name` (redis, node1..3, haproxy, prometheus), from the
    /// script's pid files.
    pub fn pid(&self, name: &str) -> Result<u32> {
        let path = self.state.join(format!("{name}.pid"));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        text.trim()
            .parse()
            .with_context(|| format!("bad pid in {}", path.display()))
    }

    /// `ws://127.0.0.1:LB/ws` (through HAProxy).
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.lb_port)
    }

    /// `http://127.0.0.1:LB` (the HTTP API through HAProxy).
    pub fn lb_http(&self) -> String {
        format!("http://127.0.0.1:{}", self.lb_port)
    }

    /// The API through HAProxy.
    pub fn lb_api(&self) -> Api {
        Api::new(&self.lb_http(), None)
    }

    /// `http://127.0.0.1:PORT` of node `i` (0-based).
    pub fn node_http(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.node_ports[i])
    }

    /// The API of node `i` (0-based), bypassing HAProxy.
    pub fn node_api(&self, i: usize) -> Api {
        Api::new(&self.node_http(i), None)
    }

    /// `ws://127.0.0.1:PORT/ws` of node `i` (0-based).
    pub fn node_ws(&self, i: usize) -> String {
        format!("ws://127.0.0.1:{}/ws", self.node_ports[i])
    }

    /// Prometheus's base URL.
    pub fn prom_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.prom_port)
    }

    /// HAProxy's stats base URL.
    pub fn stats_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.stats_port)
    }

    /// HAProxy's status of each node (`UP`, `DOWN`, ...), from its stats CSV.
    pub async fn lb_statuses(&self) -> Result<Vec<(String, String)>> {
        let url = format!("{}/stats;csv", self.stats_url());
        let text = reqwest::get(&url).await?.text().await?;
        Ok(text
            .lines()
            .filter_map(|line| {
                let cols: Vec<&str> = line.split(',').collect();
                (cols.len() > 17 && cols[0] == "gateway_nodes" && cols[1].starts_with("node"))
                    .then(|| (cols[1].to_owned(), cols[17].to_owned()))
            })
            .collect())
    }

    /// Waits until HAProxy has every node UP.
    pub async fn wait_lb_all_up(&self, timeout: Duration) -> Result<()> {
        tests::eventually(timeout, "HAProxy has all three nodes UP", || async {
            self.lb_statuses()
                .await
                .is_ok_and(|s| s.len() == 3 && s.iter().all(|(_, status)| status == "UP"))
        })
        .await
    }

    /// The last lines of one process's log (a node's stderr log, or the
    /// script's log of redis, haproxy or prometheus).
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        if let Some(gw) = Self::node_index(name).ok().and_then(|i| self.nodes.get(i)) {
            return gw.log_tail();
        }
        let path = self.state.join(format!("{name}.log"));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let start = all.len().saturating_sub(lines);
        format!(
            "--- {} (last {} lines) ---\n{}",
            path.display(),
            all.len() - start,
            all[start..].join("\n")
        )
    }

    /// Stops everything now (also done on drop): kills the nodes, then
    /// `down` stops what the script started.
    pub fn down(&mut self) {
        for gw in &mut self.nodes {
            gw.kill();
        }
        if !self.running {
            return;
        }
        self.running = false;
        match self.command(&["down"]).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "[ops] local-cluster down failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("[ops] local-cluster down: {e}"),
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // The nodes print their own log tails when dropped while panicking.
        if std::thread::panicking() && self.running {
            eprintln!("{}", self.log_tail("haproxy", 30));
        }
        self.down();
    }
}
