//! A throw-away `redis-server` for cluster tests.
//!
//! [`RedisServer`] starts `redis-server` on a free loopback port with
//! persistence off, waits until `PING` answers, and kills it on drop.
//! [`RedisServer::stop`] and [`RedisServer::restart`] simulate an outage on
//! the same port (data is lost: nothing is persisted). [`RedisServer::cmd`]
//! speaks just enough RESP to inspect keys from a test.
//!
//! Invariant: the child is killed and reaped when the handle drops.

use std::fs::{self, File};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

static PREFIX_COUNTER: AtomicU32 = AtomicU32::new(0);

/// How long redis-server may take to answer its first PING.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A Redis key prefix no other test uses: `gwt_<name>_<pid>_<n>`.
pub fn unique_prefix(name: &str) -> String {
    let n = PREFIX_COUNTER.fetch_add(1, Ordering::Relaxed);
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("gwt_{clean}_{}_{n}", std::process::id())
}

/// One RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:42`
    Int(i64),
    /// `$n` bulk string (None for the null bulk string).
    Bulk(Option<Vec<u8>>),
    /// `*n` array (None for the null array).
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The reply as text, when it is a simple or bulk string.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Resp::Simple(s) => Some(s.clone()),
            Resp::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

/// A running (or stopped) redis-server; killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    log_path: PathBuf,
    /// Extra `redis-server` arguments (e.g. `--replicaof H P`).
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts redis-server on a free port (retrying on a port race).
    pub async fn start() -> Result<Self> {
        Self::start_with(&[]).await
    }

    /// Like [`RedisServer::start`], with extra `redis-server` arguments
    /// (kept for [`RedisServer::restart`]).
    pub async fn start_with(extra: &[&str]) -> Result<Self> {
        let dir = crate::workspace_root().join("target").join("test-logs");
        fs::create_dir_all(&dir)?;
        let n = PREFIX_COUNTER.fetch_add(1, Ordering::Relaxed);
        let log_path = dir.join(format!("redis-{}-{n}.log", std::process::id()));
        let mut last_err = None;
        for _ in 0..10 {
            let port = free_port()?;
            let mut server = Self {
                port,
                child: None,
                log_path: log_path.clone(),
                extra: extra.iter().map(|a| (*a).to_owned()).collect(),
            };
            match server.launch().await {
                Ok(()) => return Ok(server),
                Err(e) => last_err = Some(e),
            }
        }
        match last_err {
            Some(e) => Err(e.context("could not start redis-server on any free port")),
            None => bail!("could not start redis-server"),
        }
    }

    async fn launch(&mut self) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--bind", "127.0.0.1"])
            // Replicas sync at once (the default waits 5 s for more).
            .args(["--repl-diskless-sync-delay", "0"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("spawning redis-server (is it installed?)")?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Resp::Simple(pong)) = self.cmd(&["PING"]).await {
                if pong == "PONG" {
                    return Ok(());
                }
            }
            let exited = match self.child.as_mut() {
                Some(child) => child.try_wait()?.is_some(),
                None => true,
            };
            if exited || Instant::now() >= deadline {
                self.stop();
                bail!(
                    "redis-server on port {} did not answer PING (log: {})",
                    self.port,
                    self.log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A handle on a server someone else runs at `127.0.0.1:port` (for
    /// [`RedisServer::cmd`] and friends); dropping it kills nothing.
    pub fn attach(port: u16) -> Self {
        Self {
            port,
            child: None,
            log_path: PathBuf::new(),
            extra: Vec::new(),
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) and reaps it; data is lost.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server (if running) and starts an empty one on the same
    /// port.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.launch().await {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `PUBSUB NUMSUB` of a Redis pub/sub name: how many connections (one
    /// per subscribed node) are subscribed to it.
    pub async fn numsub(&self, name: &str) -> Result<i64> {
        match self.cmd(&["PUBSUB", "NUMSUB", name]).await? {
            Resp::Array(Some(items)) => match items.get(1) {
                Some(Resp::Int(n)) => Ok(*n),
                other => bail!("unexpected PUBSUB NUMSUB item: {other:?}"),
            },
            other => bail!("unexpected PUBSUB NUMSUB reply: {other:?}"),
        }
    }

    /// Sends one command and reads its reply (bounded by 5 s).
    pub async fn cmd(&self, args: &[&str]) -> Result<Resp> {
        let port = self.port;
        let fut = async move {
            let stream = TcpStream::connect(("127.0.0.1", port)).await?;
            let mut stream = BufReader::new(stream);
            let mut req = format!("*{}\r\n", args.len()).into_bytes();
            for arg in args {
                req.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
                req.extend_from_slice(arg.as_bytes());
                req.extend_from_slice(b"\r\n");
            }
            stream.get_mut().write_all(&req).await?;
            read_resp(&mut stream).await
        };
        tokio::time::timeout(Duration::from_secs(5), fut)
            .await
            .context("redis command timed out")?
    }

    /// Keys matching `pattern` (KEYS; fine on a test server).
    pub async fn keys(&self, pattern: &str) -> Result<Vec<String>> {
        match self.cmd(&["KEYS", pattern]).await? {
            Resp::Array(Some(items)) => Ok(items.iter().filter_map(Resp::as_text).collect()),
            other => bail!("unexpected KEYS reply: {other:?}"),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port the OS just handed out (bound and released; the caller retries if
/// someone else grabs it first).
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn read_resp<'a>(
    stream: &'a mut BufReader<TcpStream>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Resp>> + Send + 'a>> {
    Box::pin(async move {
        let mut line = String::new();
        if stream.read_line(&mut line).await? == 0 {
            bail!("redis closed the connection");
        }
        let line = line.trim_end_matches(['\r', '\n']);
        let (kind, rest) = line.split_at(1.min(line.len()));
        Ok(match kind {
            "+" => Resp::Simple(rest.to_owned()),
            "-" => Resp::Error(rest.to_owned()),
            ":" => Resp::Int(rest.parse()?),
            "$" => {
                let len: i64 = rest.parse()?;
                if len < 0 {
                    Resp::Bulk(None)
                } else {
                    let mut buf = vec![0u8; usize::try_from(len)? + 2];
                    stream.read_exact(&mut buf).await?;
                    buf.truncate(buf.len() - 2);
                    Resp::Bulk(Some(buf))
                }
            }
            "*" => {
                let len: i64 = rest.parse()?;
                if len < 0 {
                    Resp::Array(None)
                } else {
                    let mut items = Vec::new();
                    for _ in 0..len {
                        items.push(read_resp(stream).await?);
                    }
                    Resp::Array(Some(items))
                }
            }
            _ => bail!("unexpected RESP line {line:?}"),
        })
    })
}
