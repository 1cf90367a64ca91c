//! One `gateway` process under test.
//!
//! [`GatewayBuilder`] collects `GATEWAY_*` settings, an optional TOML file
//! and an optional fixed address; [`Gateway`] owns the child process. The
//! child listens on `127.0.0.1:0` unless [`GatewayBuilder::listen`] names an
//! address, and reports its address on stdout; its stderr goes to
//! `target/test-logs/<name>-<pid>-<n>/stderr.log`, whose path is printed
//! when the process starts, so a failing test shows where to look. This is
//! the only place the harness spawns gateway processes: [`crate::cluster`]
//! and the ops tests' local cluster build on it.
//!
//! Invariant: the child is killed and reaped when the handle drops, and no
//! `GATEWAY_*` variable of the developer's shell leaks into it.

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::sync::oneshot;

use crate::{eventually, eventually_some, process, Api, Client, ClientBuilder};

/// How long a gateway may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How many stderr lines to show when something fails.
const LOG_TAIL_LINES: usize = 60;

static INSTANCE: AtomicU32 = AtomicU32::new(0);

/// Path of the gateway binary: `GATEWAY_BIN`, else
/// `<target dir>/debug/gateway` (target dir from `CARGO_TARGET_DIR`, else
/// `<workspace>/target`).
pub fn gateway_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("GATEWAY_BIN") {
        return PathBuf::from(bin);
    }
    target_dir().join("debug").join("gateway")
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => crate::workspace_root().join("target"),
    }
}

/// Settings for a gateway process; [`GatewayBuilder::spawn`] starts it.
#[derive(Debug, Clone)]
pub struct GatewayBuilder {
    name: String,
    env: Vec<(String, String)>,
    config: Option<ConfigSource>,
    /// `GATEWAY_LISTEN` of the first start (`127.0.0.1:0` when unset).
    listen: Option<SocketAddr>,
}

impl Default for GatewayBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayBuilder {
    /// A gateway with no settings besides `GATEWAY_LISTEN=127.0.0.1:0`.
    pub fn new() -> Self {
        Self {
            name: "gw".to_owned(),
            env: vec![("GATEWAY_LOG".to_owned(), "info".to_owned())],
            config: None,
            listen: None,
        }
    }

    /// Listens on `addr` instead of a port the OS picks (for a topology
    /// whose load balancer or scraper needs the ports up front; take them
    /// from [`crate::free_ports`]).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// Names the log directory (use the test's name).
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    /// Sets one environment variable (normally a `GATEWAY_*` setting).
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_string()));
        self
    }

    /// Writes `toml` to a file in the log directory and passes it with
    /// `GATEWAY_CONFIG`.
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(ConfigSource::Toml(toml.to_owned()));
        self
    }

    /// Passes an existing TOML file (e.g. `deploy/gateway.toml`) with
    /// `GATEWAY_CONFIG`; replaces [`GatewayBuilder::config`].
    pub fn config_file(mut self, path: &Path) -> Self {
        self.config = Some(ConfigSource::File(path.to_owned()));
        self
    }

    /// Uses [`crate::STANDARD_CONFIG`].
    pub fn standard_config(self) -> Self {
        self.config(crate::STANDARD_CONFIG)
    }

    /// Starts the process and waits for its listening line.
    pub async fn spawn(self) -> Result<Gateway> {
        let listen = self.first_listen();
        let mut gateway = Gateway::prepare(self)?;
        gateway.start(&listen).await?;
        Ok(gateway)
    }

    fn first_listen(&self) -> String {
        self.listen
            .map_or_else(|| "127.0.0.1:0".to_owned(), |addr| addr.to_string())
    }

    /// Starts the process expecting it to exit on its own (bad config):
    /// waits up to `timeout` and returns its exit status and stderr.
    pub async fn run_to_exit(self, timeout: Duration) -> Result<(ExitStatus, String)> {
        let listen = self.first_listen();
        let mut gateway = Gateway::prepare(self)?;
        let (child, _addr_rx) = gateway.launch(&listen)?;
        gateway.child = Some(child);
        let status = gateway.wait_exit(timeout).await?;
        Ok((status, gateway.stderr()))
    }
}

/// Where [`GatewayBuilder`] takes the `GATEWAY_CONFIG` file from.
#[derive(Debug, Clone)]
enum ConfigSource {
    /// TOML text, written to the log directory at start.
    Toml(String),
    /// An existing file, passed as it is.
    File(PathBuf),
}

/// A running (or stopped) gateway process; killed on drop.
#[derive(Debug)]
pub struct Gateway {
    settings: GatewayBuilder,
    dir: PathBuf,
    log_path: PathBuf,
    config_path: Option<PathBuf>,
    child: Option<Child>,
    /// Address from the last listening line; restarts reuse it.
    addr: Option<SocketAddr>,
    /// Address from the `admin listening on` line, when configured.
    admin_addr: Option<SocketAddr>,
    /// Stdout lines of the current process, for diagnostics.
    stdout: Arc<Mutex<Vec<String>>>,
    starts: u32,
}

impl Gateway {
    /// A builder; shorthand for [`GatewayBuilder::new`].
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder::new()
    }

    /// A gateway with [`crate::STANDARD_CONFIG`] and otherwise defaults.
    pub async fn standard(name: &str) -> Result<Self> {
        GatewayBuilder::new()
            .name(name)
            .standard_config()
            .spawn()
            .await
    }

    fn prepare(settings: GatewayBuilder) -> Result<Self> {
        let n = INSTANCE.fetch_add(1, Ordering::Relaxed);
        let dir = target_dir().join("test-logs").join(format!(
            "{}-{}-{n}",
            settings.name,
            std::process::id()
        ));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let config_path = match &settings.config {
            Some(ConfigSource::Toml(toml)) => {
                let path = dir.join("gateway.toml");
                fs::write(&path, toml).with_context(|| format!("writing {}", path.display()))?;
                Some(path)
            }
            Some(ConfigSource::File(path)) => Some(path.clone()),
            None => None,
        };
        let log_path = dir.join("stderr.log");
        Ok(Self {
            settings,
            dir,
            log_path,
            config_path,
            child: None,
            addr: None,
            admin_addr: None,
            stdout: Arc::new(Mutex::new(Vec::new())),
            starts: 0,
        })
    }

    /// Spawns the child; the receiver yields the address of its
    /// `gateway listening on` line, or an error when stdout closes first.
    fn launch(&mut self, listen: &str) -> Result<(Child, oneshot::Receiver<Result<Listening>>)> {
        let bin = gateway_bin();
        if !bin.exists() {
            bail!(
                "gateway binary not found at {} (run `cargo build -p gateway`, or set GATEWAY_BIN)",
                bin.display()
            );
        }
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        writeln!(
            log,
            "===== harness: start #{} listen={listen} =====",
            self.starts
        )?;
        let mut cmd = Command::new(&bin);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("GATEWAY_") {
                cmd.env_remove(key);
            }
        }
        cmd.envs(self.settings.env.iter().map(|(k, v)| (k, v)));
        cmd.env("GATEWAY_LISTEN", listen);
        if let Some(path) = &self.config_path {
            cmd.env("GATEWAY_CONFIG", path);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        eprintln!(
            "[harness] gateway '{}' pid {} started; stderr log: {}",
            self.settings.name,
            child.id(),
            self.log_path.display()
        );
        let stdout = child.stdout.take().context("child stdout not piped")?;
        let (tx, rx) = oneshot::channel();
        let lines = Arc::clone(&self.stdout);
        if let Ok(mut lines) = lines.lock() {
            lines.clear();
        }
        let want_admin = self
            .settings
            .env
            .iter()
            .any(|(k, v)| k == "GATEWAY_ADMIN_LISTEN" && !v.is_empty())
            || self
                .config_path
                .as_deref()
                .and_then(|path| fs::read_to_string(path).ok())
                .is_some_and(|c| c.contains("admin_listen"));
        std::thread::spawn(move || read_stdout(stdout, lines, want_admin, tx));
        Ok((child, rx))
    }

    /// Starts the process on `listen` and waits for its listening line.
    async fn start(&mut self, listen: &str) -> Result<()> {
        let (child, rx) = self.launch(listen)?;
        self.child = Some(child);
        let outcome = tokio::time::timeout(START_TIMEOUT, rx).await;
        let listening = match outcome {
            Ok(Ok(Ok(listening))) => listening,
            Ok(Ok(Err(e))) => {
                self.kill();
                bail!("gateway did not start: {e}\n{}", self.log_tail());
            }
            Ok(Err(_)) => {
                self.kill();
                bail!("gateway stdout reader vanished\n{}", self.log_tail());
            }
            Err(_) => {
                self.kill();
                bail!(
                    "gateway printed no 'gateway listening on' line within {START_TIMEOUT:?}\n{}",
                    self.log_tail()
                );
            }
        };
        self.addr = Some(listening.main);
        self.admin_addr = listening.admin;
        Ok(())
    }

    /// Kills the process (if running) and starts it again with the same
    /// settings on the same address, once the old process has let go of
    /// the port.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        let addr = self.addr()?;
        eventually(START_TIMEOUT, &format!("{addr} free for a restart"), || {
            std::future::ready(process::port_free(addr))
        })
        .await?;
        self.start(&addr.to_string()).await
    }

    /// Waits up to `timeout` until `/readyz` answers 200 (on the admin
    /// listener when there is one).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let base = match self.admin_addr {
            Some(admin) => format!("http://{admin}"),
            None => self.http_url(),
        };
        let api = Api::new(&base, None);
        let what = format!("gateway '{}' ready ({base}/readyz 200)", self.settings.name);
        let ready = eventually(timeout, &what, || {
            let api = api.clone();
            async move { matches!(api.readyz().await, Ok(200)) }
        })
        .await;
        ready.map_err(|e| anyhow!("{e:#}\n{}", self.log_tail()))
    }

    /// The address the gateway listens on.
    pub fn addr(&self) -> Result<SocketAddr> {
        self.addr
            .ok_or_else(|| anyhow!("gateway has no address (never started)"))
    }

    /// The admin listener's address (`GATEWAY_ADMIN_LISTEN`), if any.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// `ws://ADDR/ws`.
    pub fn ws_url(&self) -> String {
        match self.addr {
            Some(addr) => format!("ws://{addr}/ws"),
            None => "ws://0.0.0.0:0/ws".to_owned(),
        }
    }

    /// `http://ADDR`.
    pub fn http_url(&self) -> String {
        match self.addr {
            Some(addr) => format!("http://{addr}"),
            None => "http://0.0.0.0:0".to_owned(),
        }
    }

    /// An HTTP API client without an API key.
    pub fn api(&self) -> Api {
        Api::new(&self.http_url(), None)
    }

    /// An HTTP API client sending `Authorization: Bearer <key>`.
    pub fn api_with_key(&self, key: &str) -> Api {
        Api::new(&self.http_url(), Some(key))
    }

    /// A WebSocket client builder for `/ws`.
    pub fn client(&self) -> ClientBuilder {
        ClientBuilder::new(&self.ws_url())
    }

    /// Connects with `?user=<user>` (open development mode) and reads the
    /// welcome frame.
    pub async fn connect_user(&self, user: &str) -> Result<Client> {
        self.client().query("user", user).connect().await
    }

    /// Connects anonymously and reads the welcome frame.
    pub async fn connect_anon(&self) -> Result<Client> {
        self.client().connect().await
    }

    /// The child's process id, if it is running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM (starts a graceful drain).
    pub fn sigterm(&self) -> Result<()> {
        self.signal("TERM")
    }

    /// Sends SIGINT.
    pub fn sigint(&self) -> Result<()> {
        self.signal("INT")
    }

    /// SIGTERM, then waits up to `timeout` for the drain to end and the
    /// process to exit; returns its exit status.
    pub async fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.sigterm()?;
        self.wait_exit(timeout).await
    }

    /// Sends `SIGSTOP` (`freeze`) or `SIGCONT`: a frozen node keeps its
    /// sockets open but does nothing, like a stalled VM or a long pause.
    /// Returns once every thread has stopped (SIGSTOP is asynchronous).
    pub async fn freeze(&self, freeze: bool) -> Result<()> {
        let pid = self.pid().context("gateway is not running")?;
        process::freeze(pid, freeze, "gateway").await
    }

    fn signal(&self, name: &str) -> Result<()> {
        let pid = self.pid().context("gateway is not running")?;
        process::signal(pid, name)
    }

    /// SIGKILL and reap (`kill -9`: a crash, no drain); a no-op when not
    /// running. [`Gateway::restart`] starts it again.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits up to `timeout` for the process to exit on its own and returns
    /// its status. The process is left running on timeout (drop kills it).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let child = self.child.as_mut().context("gateway is not running")?;
        let exited = eventually_some(timeout, "gateway exited", || {
            // try_wait failing is an answer too: stop polling and report it.
            std::future::ready(child.try_wait().transpose())
        })
        .await;
        match exited {
            Ok(status) => {
                self.child = None;
                status.context("waiting for gateway")
            }
            Err(e) => bail!("{e:#}\n{}", self.log_tail()),
        }
    }

    /// Path of the captured stderr log.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Directory holding the log and the generated config file.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Everything the process(es) wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Stdout lines of the current process.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The last lines of stderr, labelled with the log path.
    pub fn log_tail(&self) -> String {
        let text = self.stderr();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(LOG_TAIL_LINES);
        format!(
            "--- gateway stderr ({}), last {} lines ---\n{}\n--- end of gateway stderr ---",
            self.log_path.display(),
            lines.len() - start,
            lines[start..].join("\n")
        )
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
        self.kill();
    }
}

/// The addresses a started gateway reported on stdout.
#[derive(Debug, Clone, Copy)]
struct Listening {
    main: SocketAddr,
    admin: Option<SocketAddr>,
}

/// Reads the child's stdout: reports the `gateway listening on ADDR` line
/// (and the `admin listening on ADDR` line when `want_admin`), keeps every
/// line for diagnostics, and keeps draining so the child never blocks on a
/// full pipe.
fn read_stdout(
    stdout: std::process::ChildStdout,
    lines: Arc<Mutex<Vec<String>>>,
    want_admin: bool,
    tx: oneshot::Sender<Result<Listening>>,
) {
    let mut tx = Some(tx);
    let mut main = None;
    let mut admin = None;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let trimmed = line.trim();
        let parse = |rest: &str| {
            rest.trim()
                .parse::<SocketAddr>()
                .with_context(|| format!("unparsable listening line: {line:?}"))
        };
        if let Some(rest) = trimmed.strip_prefix("gateway listening on ") {
            match parse(rest) {
                Ok(addr) => main = Some(addr),
                Err(e) => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(Err(e));
                    }
                }
            }
        } else if let Some(rest) = trimmed.strip_prefix("admin listening on ") {
            admin = parse(rest).ok();
        }
        if let Ok(mut lines) = lines.lock() {
            lines.push(line);
        }
        if let Some(main) = main {
            if !want_admin || admin.is_some() {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(Ok(Listening { main, admin }));
                }
            }
        }
    }
    if let Some(tx) = tx.take() {
        let seen = lines.lock().map(|l| l.join("\n")).unwrap_or_default();
        let _ = tx.send(Err(anyhow!(
            "stdout closed before the listening line(s); stdout was:\n{seen}"
        )));
    }
}
