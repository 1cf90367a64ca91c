//! Helpers shared by the ops tests (`ops_*.rs`): the local cluster of
//! `deploy/local-cluster` as a handle that stops it on drop, free ports,
//! Prometheus queries, signals, where the tools are, and reading the deploy
//! files (YAML as JSON, compose bind mounts).
//!
//! Invariants: every cluster gets its own state directory and free ports,
//! runs with `LC_OWNER_PID` set (the script's watchdog stops everything if
//! the test process dies without dropping the handle), and no `GATEWAY_*` or
//! `LC_*` variable of the developer's shell leaks into it.

#![allow(dead_code, reason = "each ops test file uses a different subset")]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use serde_json::Value;
use tests::Api;

static CLUSTERS: AtomicU32 = AtomicU32::new(0);

/// How long one run of a tool (promtool, haproxy -c, kubectl) may take.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(60);

/// `deploy/local-cluster`.
pub fn script() -> PathBuf {
    tests::workspace_root().join("deploy").join("local-cluster")
}

/// A file under `deploy/`.
pub fn deploy_path(rel: &str) -> PathBuf {
    tests::workspace_root().join("deploy").join(rel)
}

/// A tool from PATH or the sbin directories (Debian puts haproxy in
/// /usr/sbin); the error says how to get it.
pub fn tool(name: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    for dir in ["/usr/sbin", "/sbin", "/usr/local/sbin"] {
        let candidate = Path::new(dir).join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "`{name}` not found: scripts/test installs it (apt-get install haproxy prometheus), \
         or install it by hand"
    )
}

/// `n` distinct ports the OS just handed out (all bound at once, then
/// released; a racing process may still take one, so callers retry).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Runs a command to completion with a bound; returns stdout + stderr, or
/// an error with both when it fails or overruns.
pub async fn run_cmd(
    mut cmd: tokio::process::Command,
    timeout: Duration,
    what: &str,
) -> Result<String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().with_context(|| format!("spawning {what}"))?;
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .with_context(|| format!("{what} did not finish within {timeout:?}"))?
        .with_context(|| format!("waiting for {what}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        bail!("{what} failed ({}):\n{text}", output.status);
    }
    Ok(text)
}

/// Sends `signal` (e.g. "STOP", "CONT", "TERM") to `pid` with kill(1).
pub fn signal(pid: u32, signal: &str) -> Result<()> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed: {status}");
    }
    Ok(())
}

/// Settings of a local cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Names the state directory (use the test's name).
    pub name: String,
    /// Run Prometheus.
    pub prometheus: bool,
    /// Prometheus scrape interval.
    pub scrape_interval: String,
    /// `GATEWAY_*` settings for every node.
    pub env: Vec<(String, String)>,
    /// A TOML config for every node (default: deploy/gateway.toml).
    pub config: Option<String>,
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
            env: vec![("GATEWAY_DRAIN_GRACE_MS".to_owned(), "2000".to_owned())],
            config: None,
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
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_string()));
        self
    }

    /// Uses `toml` as every node's config file.
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_owned());
        self
    }
}

/// A running `deploy/local-cluster`; `down` on drop.
#[derive(Debug)]
pub struct LocalCluster {
    /// The state directory (pid files, logs, generated configs).
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
    env: Vec<(String, String)>,
    running: bool,
    /// The fault-injecting proxy in front of Redis, when asked for.
    pub proxy: Option<RedisProxy>,
}

impl LocalCluster {
    /// Starts a cluster on free ports (retrying with new ports when a port
    /// was taken meanwhile) and waits until the script says it is up.
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
            if opts.redis_proxy {
                let proxy = RedisProxy::start(cluster.redis_port).await?;
                cluster.env.push((
                    "LC_REDIS_URL".to_owned(),
                    format!("redis://127.0.0.1:{}/", proxy.port),
                ));
                cluster.proxy = Some(proxy);
            }
            eprintln!(
                "[ops] local cluster '{}' (attempt {}): state {}, lb {}, nodes {:?}",
                opts.name,
                attempt + 1,
                state.display(),
                cluster.lb_port,
                cluster.node_ports
            );
            cluster.running = true;
            match cluster.run(&["up"], Duration::from_secs(180)).await {
                Ok(out) => {
                    eprintln!("{out}");
                    return Ok(cluster);
                }
                Err(e) => {
                    eprintln!("[ops] local-cluster up failed: {e:#}");
                    last = Some(e);
                    // Drop runs `down` before the next attempt.
                }
            }
        }
        match last {
            Some(e) => Err(e.context("deploy/local-cluster up failed 3 times")),
            None => bail!("deploy/local-cluster up failed"),
        }
    }

    fn prepare(opts: &ClusterOptions, state: &Path) -> Result<Self> {
        let ports = free_ports(7)?;
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
            (
                "LC_REDIS_PREFIX".to_owned(),
                tests::unique_prefix(&opts.name),
            ),
            ("LC_START_TIMEOUT".to_owned(), "60".to_owned()),
            ("LC_OWNER_PID".to_owned(), std::process::id().to_string()),
            (
                "GATEWAY_BIN".to_owned(),
                tests::gateway_bin().display().to_string(),
            ),
            ("GATEWAY_LOG".to_owned(), "info".to_owned()),
        ];
        if !opts.prometheus {
            env.push(("LC_NO_PROMETHEUS".to_owned(), "1".to_owned()));
        }
        if let Some(toml) = &opts.config {
            let path = state.join("gateway.toml");
            std::fs::write(&path, toml)?;
            env.push(("LC_GATEWAY_CONFIG".to_owned(), path.display().to_string()));
        }
        env.extend(opts.env.iter().cloned());
        Ok(Self {
            state: state.to_owned(),
            lb_port: ports[0],
            node_ports: [ports[1], ports[2], ports[3]],
            redis_port: ports[4],
            prom_port: ports[5],
            stats_port: ports[6],
            env,
            running: false,
            proxy: None,
        })
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

    /// `restart NODE`: SIGTERM, drain, start, ready, UP in HAProxy.
    pub async fn restart(&self, node: &str) -> Result<String> {
        self.run(&["restart", node], Duration::from_secs(120)).await
    }

    /// The pid recorded for `name` (redis, node1..3, haproxy, prometheus).
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

    /// The last lines of one process's log.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
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

    /// Stops everything now (also done on drop).
    pub fn down(&mut self) {
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
        if std::thread::panicking() && self.running {
            for name in ["node1", "node2", "node3", "haproxy"] {
                eprintln!("{}", self.log_tail(name, 30));
            }
        }
        self.down();
    }
}

/// A Prometheus HTTP API client.
#[derive(Debug, Clone)]
pub struct Prometheus {
    base: String,
    http: reqwest::Client,
}

impl Prometheus {
    /// A client for `base` (`http://127.0.0.1:PORT`).
    pub fn new(base: &str) -> Result<Self> {
        Ok(Self {
            base: base.to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        })
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .get(&url)
            .query(query)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        let body: Value = resp
            .json()
            .await
            .with_context(|| format!("GET {url}: body is not JSON"))?;
        if !status.is_success() || body["status"] != "success" {
            bail!("GET {url} {query:?} answered {status}: {body}");
        }
        Ok(body["data"].clone())
    }

    /// An instant query; returns `data.result` (fails on a query error).
    pub async fn query(&self, expr: &str) -> Result<Vec<Value>> {
        let data = self.get("/api/v1/query", &[("query", expr)]).await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// `data.activeTargets` of /api/v1/targets.
    pub async fn active_targets(&self) -> Result<Vec<Value>> {
        let data = self.get("/api/v1/targets", &[]).await?;
        Ok(data["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// `data.groups` of /api/v1/rules.
    pub async fn rule_groups(&self) -> Result<Vec<Value>> {
        let data = self.get("/api/v1/rules", &[]).await?;
        Ok(data["groups"].as_array().cloned().unwrap_or_default())
    }
}

/// The value of an unlabelled sample `name` in a Prometheus text scrape.
pub fn scrape_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let value = rest.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// The sum of every sample of `name` (any labels) in a Prometheus text
/// scrape; 0 when there is none.
pub fn scrape_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let value = if rest.starts_with('{') {
                rest.rsplit_once("} ")?.1
            } else {
                rest.strip_prefix(' ')?
            };
            value.trim().parse::<f64>().ok()
        })
        .sum()
}

/// Every `expr` string anywhere in a (Grafana dashboard) JSON document.
pub fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(items) => {
            for v in items {
                collect_exprs(v, out);
            }
        }
        _ => {}
    }
}

/// The dashboard JSON (deploy/grafana/dashboards/gateway.json).
pub fn dashboard() -> Result<Value> {
    let path = deploy_path("grafana/dashboards/gateway.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// A dashboard query made runnable against Prometheus: Grafana's
/// `$__rate_interval` / `$__interval` / `$__range` become fixed windows and
/// the `$instance` variable matches every node.
pub fn runnable_expr(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m")
        .replace("$instance", ".*")
}

/// Every `gateway_*` metric name used in a PromQL expression.
pub fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("gateway_") {
        let start = i + pos;
        let boundary = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_' || c == b'"' || c == b'=')
        };
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            names.push(expr[start..end].to_owned());
        }
        i = end;
    }
    names
}

/// A TCP proxy in front of redis-server that can black-hole the pub/sub
/// connections: with [`RedisProxy::freeze_pubsub`] on, nothing Redis sends
/// on a connection that issued SUBSCRIBE reaches the node any more, while
/// the connection stays open and commands on other connections work. This is
/// the "connected but delivers nothing" failure (e.g. after a failover) the
/// gateway's liveness probe exists for. A frozen connection stays frozen;
/// connections made after the freeze is lifted work.
#[derive(Debug)]
pub struct RedisProxy {
    /// The port the nodes connect to.
    pub port: u16,
    freeze: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl RedisProxy {
    /// Listens on a free loopback port and forwards to `target_port`.
    pub async fn start(target_port: u16) -> Result<Self> {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let freeze = Arc::new(AtomicBool::new(false));
        let flag = freeze.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let flag = flag.clone();
                conns.spawn(async move {
                    let Ok(upstream) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await
                    else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = upstream.set_nodelay(true);
                    let pubsub = Arc::new(AtomicBool::new(false));
                    let (mut cr, mut cw) = client.into_split();
                    let (mut ur, mut uw) = upstream.into_split();
                    let seen = pubsub.clone();
                    let up = async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 16384];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            let chunk = &buf[..n];
                            // The RESP bulk string of a SUBSCRIBE command.
                            if chunk
                                .windows(15)
                                .any(|w| w.eq_ignore_ascii_case(b"$9\r\nsubscribe\r\n"))
                            {
                                seen.store(true, Ordering::Relaxed);
                            }
                            if uw.write_all(chunk).await.is_err() {
                                break;
                            }
                        }
                        let _ = uw.shutdown().await;
                    };
                    let down = async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 16384];
                        let mut frozen = false;
                        loop {
                            let n = match ur.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            frozen = frozen
                                || (pubsub.load(Ordering::Relaxed) && flag.load(Ordering::Relaxed));
                            if frozen {
                                continue;
                            }
                            if cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Ok(Self { port, freeze, task })
    }

    /// From now on, black-hole what Redis sends on pub/sub connections.
    pub fn freeze_pubsub(&self) {
        self.freeze.store(true, Ordering::Relaxed);
    }

    /// New pub/sub connections work again (frozen ones stay frozen).
    pub fn thaw(&self) {
        self.freeze.store(false, Ordering::Relaxed);
    }
}

impl Drop for RedisProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A file's text; the error names the file.
pub fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// `v` as a string; the error says what `v` was meant to be.
pub fn str_of<'a>(v: &'a Value, what: &str) -> Result<&'a str> {
    v.as_str()
        .with_context(|| format!("{what}: expected a string, got {v}"))
}

/// Parses YAML (resolving `<<` merge keys, as docker compose does) into JSON.
pub fn yaml_to_json(text: &str, what: &str) -> Result<Value> {
    let mut yaml: serde_yaml::Value =
        serde_yaml::from_str(text).with_context(|| format!("parsing {what} as YAML"))?;
    yaml.apply_merge()
        .with_context(|| format!("resolving merge keys of {what}"))?;
    serde_json::to_value(&yaml).with_context(|| format!("{what}: not JSON-compatible"))
}

/// Every document of a multi-document YAML stream.
pub fn yaml_docs(text: &str, what: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let yaml = serde_yaml::Value::deserialize(doc)
            .with_context(|| format!("parsing a document of {what}"))?;
        if yaml.is_null() {
            continue;
        }
        docs.push(serde_json::to_value(&yaml).with_context(|| format!("{what}: not JSON"))?);
    }
    Ok(docs)
}

/// A YAML file under `deploy/`, as JSON.
pub fn deploy_yaml(rel: &str) -> Result<Value> {
    yaml_to_json(&read(&deploy_path(rel))?, rel)
}

/// `docker-compose.yml`, as JSON.
pub fn compose() -> Result<Value> {
    yaml_to_json(
        &read(&tests::workspace_root().join("docker-compose.yml"))?,
        "docker-compose.yml",
    )
}

/// The bind-mount sources (`./x:/y[:ro]`) of a compose service, checked to
/// exist; returns (source, target) pairs.
pub fn bind_mounts(svc: &Value, name: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for v in svc["volumes"].as_array().cloned().unwrap_or_default() {
        let spec = str_of(&v, &format!("{name} volume"))?;
        let mut parts = spec.split(':');
        let (Some(src), Some(dst)) = (parts.next(), parts.next()) else {
            bail!("{name}: bad volume {spec}");
        };
        if let Some(rel) = src.strip_prefix("./") {
            let path = tests::workspace_root().join(rel);
            ensure!(path.exists(), "{name} mounts {src}, which does not exist");
            out.push((rel.to_owned(), dst.to_owned()));
        }
    }
    Ok(out)
}

/// The compose gateway services, in the order HAProxy and Prometheus
/// number them.
pub const COMPOSE_GATEWAYS: [&str; 3] = ["gateway1", "gateway2", "gateway3"];

/// The port of a compose gateway service's `GATEWAY_LISTEN` (empty when
/// it has none).
pub fn compose_gateway_port(services: &Value, name: &str) -> String {
    services[name]["environment"]["GATEWAY_LISTEN"]
        .as_str()
        .unwrap_or_default()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned()
}
