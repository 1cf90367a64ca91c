//! A fault-injecting TCP proxy between gateway nodes (or backends under
//! test) and redis-server (see [`RedisProxy`]).
//!
//! Invariant: the accept loop and every forwarded connection stop when the
//! handle drops.

use std::sync::atomic::Ordering;

use anyhow::Result;

/// A TCP proxy in front of redis-server that can black-hole the pub/sub
/// connections: with [`RedisProxy::freeze_pubsub`] on, nothing Redis sends
/// on a connection that issued SUBSCRIBE reaches the node any more, while
/// the connection stays open and commands on other connections work. This is
/// the "connected but delivers nothing" failure (e.g. after a failover) the
/// gateway's liveness probe exists for. A frozen connection stays frozen;
/// connections made after the freeze is lifted work.
/// [`RedisProxy::freeze_existing`] freezes every connection made so far
/// (pub/sub or not) at once, and none made later.
#[derive(Debug)]
pub struct RedisProxy {
    /// The port the nodes connect to.
    pub port: u16,
    freeze: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicU64>,
    frozen_below: std::sync::Arc<std::sync::atomic::AtomicU64>,
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
        let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let frozen_below = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let flag = freeze.clone();
        let (count, below) = (accepted.clone(), frozen_below.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let flag = flag.clone();
                let id = count.fetch_add(1, Ordering::SeqCst);
                let below = below.clone();
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
                                || id < below.load(Ordering::SeqCst)
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
        Ok(Self {
            port,
            freeze,
            accepted,
            frozen_below,
            task,
        })
    }

    /// `redis://127.0.0.1:<port>` of the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// From now on, black-hole what Redis sends on every connection made so
    /// far; connections made later work.
    pub fn freeze_existing(&self) {
        self.frozen_below
            .store(self.accepted.load(Ordering::SeqCst), Ordering::SeqCst);
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
