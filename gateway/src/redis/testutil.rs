//! Test helpers for the Redis backends: a real `redis-server` on a free
//! loopback port (killed on drop), a fresh key prefix per test, a sink that
//! collects deliveries, a bounded polling helper and a TCP proxy that can
//! make live connections go silent.

use std::error::Error;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::RedisSettings;
use crate::backplane::{Deliver, Envelope, Publication};

pub(crate) type TestResult = Result<(), Box<dyn Error + Send + Sync>>;
type AnyResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// A `redis-server` child process without persistence.
pub(crate) struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Start a server on a free port and wait until it answers PING.
    pub(crate) async fn start() -> AnyResult<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut server = Self { port, child: None };
        server.spawn().await?;
        Ok(server)
    }

    async fn spawn(&mut self) -> AnyResult<()> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        for _ in 0..500 {
            if let Ok(mut conn) = self.conn().await {
                if ::redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
                {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err("redis-server did not answer PING within 10 s".into())
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A key prefix no other test uses.
    pub(crate) fn prefix(&self) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        format!("t{}x{}", self.port, NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// Settings for a node of this server (short timeout for fast tests).
    pub(crate) fn settings(&self, prefix: &str, node: &str) -> RedisSettings {
        RedisSettings {
            url: self.url(),
            prefix: prefix.to_owned(),
            node_id: node.to_owned(),
            timeout: Duration::from_millis(500),
            presence_ttl: Duration::from_secs(60),
        }
    }

    /// A direct connection, for checks behind the backends' back.
    pub(crate) async fn conn(&self) -> AnyResult<::redis::aio::MultiplexedConnection> {
        let client = ::redis::Client::open(self.url())?;
        let conn = tokio::time::timeout(
            Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await??;
        Ok(conn)
    }

    /// Kill the server (SIGKILL): its data is gone.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start an empty server again on the same port.
    pub(crate) async fn restart(&mut self) -> AnyResult<()> {
        self.stop();
        self.spawn().await
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Subscribers of a pub/sub channel, as Redis counts them.
pub(crate) async fn numsub(server: &RedisServer, channel: &str) -> AnyResult<i64> {
    let mut conn = server.conn().await?;
    let (_, n): (String, i64) = ::redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(&mut conn)
        .await?;
    Ok(n)
}

/// Poll `condition` every 10 ms until it holds or `limit` passes.
pub(crate) async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A [`Deliver`] sink that records every envelope.
#[derive(Default)]
pub(crate) struct CollectSink {
    got: Mutex<Vec<Envelope>>,
}

impl CollectSink {
    pub(crate) fn len(&self) -> usize {
        self.got.lock().len()
    }

    pub(crate) fn envelopes(&self) -> Vec<Envelope> {
        self.got.lock().clone()
    }

    pub(crate) fn messages(&self) -> Vec<Publication> {
        self.envelopes()
            .into_iter()
            .filter_map(|e| match e {
                Envelope::Message(p) => Some(p),
                _ => None,
            })
            .collect()
    }
}

impl Deliver for CollectSink {
    fn deliver(&self, envelope: Envelope) {
        self.got.lock().push(envelope);
    }
}

/// A loopback TCP proxy to Redis that can make every connection accepted
/// so far go silent (still open, nothing more delivered to the client).
pub(crate) struct FreezeProxy {
    port: u16,
    accepted: Arc<AtomicU64>,
    frozen_below: Arc<AtomicU64>,
    _tasks: JoinSet<()>,
}

impl FreezeProxy {
    pub(crate) async fn start(target: u16) -> AnyResult<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let accepted = Arc::new(AtomicU64::new(0));
        let frozen_below = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        let (acc, frozen) = (accepted.clone(), frozen_below.clone());
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let id = acc.fetch_add(1, Ordering::SeqCst);
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let frozen = frozen.clone();
                conns.spawn(async move {
                    let (mut client_rx, mut client_tx) = client.into_split();
                    let (mut up_rx, mut up_tx) = upstream.into_split();
                    let up = tokio::io::copy(&mut client_rx, &mut up_tx);
                    let down = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = up_rx.read(&mut buf).await?;
                            if n == 0 {
                                return Ok::<(), std::io::Error>(());
                            }
                            if id >= frozen.load(Ordering::SeqCst) {
                                client_tx.write_all(&buf[..n]).await?;
                            }
                        }
                    };
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Ok(Self {
            port,
            accepted,
            frozen_below,
            _tasks: tasks,
        })
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Silence every connection accepted so far.
    pub(crate) fn freeze_existing(&self) {
        self.frozen_below
            .store(self.accepted.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}
