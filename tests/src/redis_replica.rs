//! A throw-away primary + replica pair of `redis-server`s, and a movable
//! TCP address in front of them, for failover and durability tests.
//!
//! [`ReplicaPair::start`] runs a primary and a replica (`--replicaof`) on
//! free loopback ports, persistence off, and waits until the replica's link
//! is up. Each [`RedisNode`] can be frozen (SIGSTOP/SIGCONT), killed with
//! SIGKILL, and spoken to with [`RedisNode::cmd`]. [`Vip`] is a TCP
//! forwarder whose target can be moved to another port, closing what it
//! forwarded so far: a virtual IP moving to the promoted replica, which a
//! gateway follows through its ordinary reconnects.
//!
//! Invariant: every child is killed and reaped when its handle drops, and
//! the forwarder's tasks stop when the [`Vip`] drops.

use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::{eventually, free_ports, process, Resp, EVENTUALLY};

/// One redis-server process; killed on drop.
#[derive(Debug)]
pub struct RedisNode {
    port: u16,
    pid: u32,
    child: Option<Child>,
    /// Its log file (stdout and stderr).
    pub log_path: PathBuf,
}

impl RedisNode {
    /// Starts redis-server on a free port with `extra` arguments and waits
    /// until it answers PING.
    pub async fn start(name: &str, extra: &[&str]) -> Result<Self> {
        let dir = crate::workspace_root().join("target").join("test-logs");
        fs::create_dir_all(&dir)?;
        let port = free_ports(1)?[0];
        let log_path = dir.join(format!("redis-{name}-{}-{port}.log", std::process::id()));
        let log = File::options().create(true).append(true).open(&log_path)?;
        // A replica stores the RDB of its full sync in its directory:
        // one of its own, not the test's working directory.
        let data_dir = dir.join(format!("redis-{name}-{}-{port}.d", std::process::id()));
        fs::create_dir_all(&data_dir)?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&data_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("spawning redis-server (is it installed?)")?;
        let node = Self {
            port,
            pid: child.id(),
            child: Some(child),
            log_path,
        };
        eventually(EVENTUALLY, &format!("redis-server {name} answers PING"), || {
            let node = &node;
            async move { matches!(node.cmd(&["PING"]).await, Ok(Resp::Simple(p)) if p == "PONG") }
        })
        .await
        .with_context(|| format!("log: {}", node.log_path.display()))?;
        Ok(node)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL and reap: the node dies with whatever it did not replicate.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP (`true`, returns once every thread stopped) or SIGCONT.
    pub async fn freeze(&self, freeze: bool) -> Result<()> {
        process::freeze(self.pid, freeze, "redis-server").await
    }

    /// One command and its reply (bounded by 5 s).
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

    /// One field of `INFO <section>` (`master_link_status`, ...).
    pub async fn info_field(&self, section: &str, field: &str) -> Result<String> {
        let info = self
            .cmd(&["INFO", section])
            .await?
            .as_text()
            .context("INFO reply is not text")?;
        let key = format!("{field}:");
        info.lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .map(|v| v.trim().to_owned())
            .with_context(|| format!("INFO {section} lacks {field}"))
    }

    /// `HGET key field` as text (None when absent).
    pub async fn hget(&self, key: &str, field: &str) -> Result<Option<String>> {
        Ok(self.cmd(&["HGET", key, field]).await?.as_text())
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A frozen process dies of SIGKILL too.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A primary and its replica.
#[derive(Debug)]
pub struct ReplicaPair {
    /// The primary.
    pub primary: RedisNode,
    /// `--replicaof` the primary; its link is up when `start` returns.
    pub replica: RedisNode,
}

impl ReplicaPair {
    /// Starts both and waits for `master_link_status:up` on the replica.
    pub async fn start(name: &str) -> Result<Self> {
        let primary = RedisNode::start(&format!("{name}-primary"), &[]).await?;
        let port = primary.port().to_string();
        let replica = RedisNode::start(
            &format!("{name}-replica"),
            &["--replicaof", "127.0.0.1", &port],
        )
        .await?;
        let pair = Self { primary, replica };
        pair.wait_link_up().await?;
        Ok(pair)
    }

    /// Waits until the replica reports its link to the primary up.
    pub async fn wait_link_up(&self) -> Result<()> {
        eventually(EVENTUALLY, "replica master_link_status:up", || async {
            matches!(
                self.replica.info_field("replication", "master_link_status").await,
                Ok(s) if s == "up"
            )
        })
        .await
    }

    /// Waits until the replica has every write the primary made so far
    /// (its acknowledged offset reached the primary's).
    pub async fn wait_replicated(&self) -> Result<()> {
        let want: u64 = self
            .primary
            .info_field("replication", "master_repl_offset")
            .await?
            .parse()?;
        eventually(EVENTUALLY, "replica caught up with the primary", || async {
            match self
                .replica
                .info_field("replication", "slave_repl_offset")
                .await
            {
                Ok(s) => s.parse::<u64>().is_ok_and(|got| got >= want),
                Err(_) => false,
            }
        })
        .await
    }
}

/// A loopback TCP forwarder whose target can move (a virtual IP).
#[derive(Debug)]
pub struct Vip {
    /// The port clients connect to.
    pub port: u16,
    target: Arc<AtomicU16>,
    /// Bumped by [`Vip::move_to`]: forwarded connections made before close.
    moves: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Vip {
    /// Listens on a free loopback port, forwarding to `target_port`.
    pub async fn start(target_port: u16) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let target = Arc::new(AtomicU16::new(target_port));
        let moves = tokio::sync::watch::Sender::new(0u64);
        let (to, gen) = (target.clone(), moves.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let to = to.clone();
                let mut moved = gen.subscribe();
                conns.spawn(async move {
                    let port = to.load(Ordering::SeqCst);
                    let Ok(upstream) = TcpStream::connect(("127.0.0.1", port)).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = upstream.set_nodelay(true);
                    let (mut cr, mut cw) = client.into_split();
                    let (mut ur, mut uw) = upstream.into_split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut cr, &mut uw) => {}
                        _ = tokio::io::copy(&mut ur, &mut cw) => {}
                        _ = moved.changed() => {}
                    }
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(Self {
            port,
            target,
            moves,
            task,
        })
    }

    /// `redis://127.0.0.1:PORT` of the forwarder.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Forward new connections to `port` and close the existing ones.
    pub fn move_to(&self, port: u16) {
        self.target.store(port, Ordering::SeqCst);
        self.moves.send_modify(|n| *n += 1);
    }
}

impl Drop for Vip {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every
        // forwarded connection.
        self.task.abort();
    }
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
            "$" => match usize::try_from(rest.parse::<i64>()?) {
                Err(_) => Resp::Bulk(None),
                Ok(len) => {
                    let mut buf = vec![0u8; len + 2];
                    stream.read_exact(&mut buf).await?;
                    buf.truncate(len);
                    Resp::Bulk(Some(buf))
                }
            },
            "*" => match usize::try_from(rest.parse::<i64>()?) {
                Err(_) => Resp::Array(None),
                Ok(len) => {
                    let mut items = Vec::with_capacity(len.min(1024));
                    for _ in 0..len {
                        items.push(read_resp(stream).await?);
                    }
                    Resp::Array(Some(items))
                }
            },
            _ => bail!("unexpected RESP line {line:?}"),
        })
    })
}
