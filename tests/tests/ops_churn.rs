//! The connection gauge stays true under churn: thousands of connects and
//! disconnects against one cluster-mode node (real Redis), concurrently,
//! ending in every way a connection can end: a clean close handshake, a
//! close frame without waiting for the reply, a dropped socket (FIN), a
//! reset (RST), an upgrade request abandoned before the answer; with and
//! without subscriptions (presence channels included). Afterwards
//! `gateway_connections` equals the number of connections the test still
//! holds, and so do `/api/nodes` and accepted - disconnects; after closing
//! the rest, everything is back to zero.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use tests::{
    eventually, metric_sum, metric_value, Client, Gateway, GatewayBuilder, RedisServer, EVENTUALLY,
};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_tungstenite::MaybeTlsStream;

/// Concurrent workers.
const WORKERS: usize = 40;
/// Connections per worker: 40 x 64 = 2560 in all.
const PER_WORKER: usize = 64;
/// Every KEEP_EVERY-th connection stays open until the first check.
const KEEP_EVERY: usize = 8;
const SETTLE: Duration = Duration::from_secs(60);

/// What the node says about its connections.
#[derive(Debug, PartialEq)]
struct Counts {
    gauge: f64,
    accepted_minus_closed: f64,
    api: u64,
    subscriptions: f64,
}

async fn counts(gw: &Gateway) -> Result<Counts> {
    let api = gw.api();
    let text = api.metrics().await?;
    let nodes = api.nodes().await?;
    let node: Value = nodes["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["id"] == "churn").cloned())
        .context("node churn not in /api/nodes")?;
    Ok(Counts {
        gauge: metric_value(&text, "gateway_connections").context("no gateway_connections")?,
        accepted_minus_closed: metric_sum(&text, "gateway_connections_accepted_total")
            - metric_sum(&text, "gateway_disconnects_total"),
        api: node["connections"].as_u64().unwrap_or(u64::MAX),
        subscriptions: metric_value(&text, "gateway_subscriptions").unwrap_or(-1.0),
    })
}

/// Whether the node's counts equal `want`; remembers what it saw.
async fn settle_check(gw: &Gateway, last: &Mutex<Option<Counts>>, want: Counts) -> bool {
    let c = counts(gw).await.ok();
    let ok = c.as_ref() == Some(&want);
    if let Ok(mut l) = last.lock() {
        *l = c;
    }
    ok
}

/// Resets the connection (RST) when it is dropped.
fn arm_reset(client: &mut Client) -> Result<()> {
    match client.stream_mut().get_ref() {
        MaybeTlsStream::Plain(tcp) => tcp.set_zero_linger()?,
        _ => bail!("not a plain TCP stream"),
    }
    Ok(())
}

/// One connection's life; returns it when it is to be kept open.
async fn one(gw: &Gateway, worker: usize, i: usize) -> Result<Option<Client>> {
    let n = worker * PER_WORKER + i;
    let user = format!("w{worker}");
    if n.is_multiple_of(KEEP_EVERY) {
        let mut c = gw.connect_user(&user).await?;
        if n.is_multiple_of(KEEP_EVERY * 2) {
            c.subscribe("churn").await?;
        }
        return Ok(Some(c));
    }
    match n % 7 {
        // Clean close handshake.
        0 => {
            let mut c = gw.connect_user(&user).await?;
            c.close_handshake(1000, "bye").await?;
        }
        // Subscribed to a presence channel, then reset.
        1 => {
            let mut c = gw.connect_user(&user).await?;
            c.subscribe("chat:churn").await?;
            arm_reset(&mut c)?;
            drop(c);
        }
        // Dropped without a close frame (FIN).
        2 => {
            let c = gw.connect_user(&user).await?;
            drop(c);
        }
        // Reset (RST) right after the welcome.
        3 => {
            let mut c = gw.connect_user(&user).await?;
            arm_reset(&mut c)?;
            drop(c);
        }
        // Subscribed, close frame sent, gone before the reply.
        4 => {
            let mut c = gw.connect_user(&user).await?;
            c.subscribe("churn").await?;
            c.close(1000, "gone").await?;
            drop(c);
        }
        // Upgrade request sent, socket dropped before the answer.
        5 => {
            let mut tcp = tokio::net::TcpStream::connect(gw.addr()?).await?;
            let req = format!(
                "GET /ws?user={user} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n"
            );
            tcp.write_all(req.as_bytes()).await?;
            drop(tcp);
        }
        // Anonymous, subscribed, reset while a frame is in flight.
        _ => {
            let mut c = gw.connect_anon().await?;
            c.subscribe("churn").await?;
            c.send_raw_text(r#"{"op":"ping"}"#).await?;
            arm_reset(&mut c)?;
            drop(c);
        }
    }
    Ok(None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_gauge_matches_open_connections_after_churn() -> Result<()> {
    let started = Instant::now();
    let redis = RedisServer::start().await?;
    let gw = Arc::new(
        GatewayBuilder::new()
            .name("ops_churn")
            .standard_config()
            .env("GATEWAY_NODE_ID", "churn")
            .env("GATEWAY_REDIS_URL", redis.url())
            .env("GATEWAY_REDIS_PREFIX", tests::unique_prefix("churn"))
            .env("GATEWAY_LOG", "warn")
            .spawn()
            .await?,
    );
    let kept: Arc<Mutex<Vec<Client>>> = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (gw, kept, done) = (gw.clone(), kept.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            for i in 0..PER_WORKER {
                let c = one(&gw, w, i)
                    .await
                    .with_context(|| format!("worker {w}, connection {i}"))?;
                if let Some(c) = c {
                    match kept.lock() {
                        Ok(mut k) => k.push(c),
                        Err(p) => p.into_inner().push(c),
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for w in workers {
        w.await??;
    }
    let total = done.load(Ordering::Relaxed);
    let mut kept = match Arc::try_unwrap(kept) {
        Ok(m) => m.into_inner().unwrap_or_else(|p| p.into_inner()),
        Err(_) => bail!("kept connections still shared"),
    };
    let open = kept.len();
    eprintln!(
        "[ops] churn: {total} connections in {:?}, {open} kept open",
        started.elapsed()
    );
    ensure!(
        total == WORKERS * PER_WORKER,
        "only {total} connections made"
    );

    // The gauge settles on the true count.
    let want = |n: usize, subs: f64| Counts {
        gauge: n as f64,
        accepted_minus_closed: n as f64,
        api: n as u64,
        subscriptions: subs,
    };
    let kept_subs = (0..WORKERS * PER_WORKER)
        .filter(|n| n.is_multiple_of(KEEP_EVERY * 2))
        .count() as f64;
    let last: Mutex<Option<Counts>> = Mutex::new(None);
    let settled = eventually(SETTLE, "gauge == connections still open", || {
        settle_check(&gw, &last, want(open, kept_subs))
    })
    .await;
    settled.with_context(|| {
        format!(
            "want {:?}, last seen {:?}",
            want(open, kept_subs),
            last.lock().ok()
        )
    })?;
    eprintln!("[ops] settled at {open} after {:?}", started.elapsed());

    // Close the rest, half abruptly: back to zero.
    for (i, c) in kept.iter_mut().enumerate() {
        if i % 2 == 0 {
            arm_reset(c)?;
        } else {
            c.close(1000, "done").await?;
        }
    }
    drop(kept);
    let zero = eventually(EVENTUALLY.max(SETTLE), "gauge back to zero", || {
        settle_check(&gw, &last, want(0, 0.0))
    })
    .await;
    zero.with_context(|| format!("last seen {:?}", last.lock().ok()))?;
    let text = gw.api().metrics().await?;
    ensure!(
        metric_value(&text, "gateway_channels") == Some(0.0),
        "gateway_channels should be 0 with no connection left"
    );
    eprintln!("[ops] churn test took {:?}", started.elapsed());
    Ok(())
}
