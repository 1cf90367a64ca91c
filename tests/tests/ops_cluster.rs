//! End to end on `deploy/local-cluster` (redis-server, three gateway
//! nodes, HAProxy): 300 clients connect through HAProxy and land on all
//! three nodes; a publication reaches every one of them; then a rolling
//! restart (SIGTERM each node in turn, wait until it is back, ready and UP
//! in HAProxy) while a publisher keeps publishing to a history-enabled
//! channel. Every client reconnects on close 1001 through HAProxy and
//! resubscribes with `since`; at the end every client holds the complete,
//! contiguous offset sequence from its first subscribe to the last
//! publication: nothing lost, nothing twice.

mod ops_support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use futures_util::{SinkExt, StreamExt};
use ops_support::{ClusterOptions, LocalCluster};
use serde_json::{json, Value};
use tests::{eventually, eventually_some};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const CLIENTS: usize = 300;
const CHANNEL: &str = "ops:feed";
/// Interval of the publisher during the rolling restart.
const PUBLISH_EVERY: Duration = Duration::from_millis(50);
/// Bound for any one wait of this test (a loaded 2-core machine).
const WAIT: Duration = Duration::from_secs(60);

const CONFIG: &str = r#"
[namespaces.ops]
history_size = 100000
history_ttl_secs = 600
client_publish = true
allow_anonymous = true
"#;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What one client saw, for the checks at the end.
#[derive(Debug, Default)]
struct ClientState {
    /// Subscribed on a live connection right now.
    connected: bool,
    /// Node of the current (or last) connection, from `welcome`.
    node: String,
    /// Offset reported by the first `subscribed`.
    start: Option<u64>,
    /// Last offset received (or the first `subscribed`'s).
    last: u64,
    epoch: String,
    /// Messages received on the channel.
    received: u64,
    reconnects: u32,
    /// Close codes that ended connections (0: ended without a close frame).
    closes: BTreeMap<u16, u32>,
    /// Why the last connection ended without a close frame, if one did.
    lost: Option<String>,
    /// Gaps, duplicates, failed recoveries, give-ups.
    errors: Vec<String>,
}

type State = Arc<Mutex<ClientState>>;

fn lock(state: &State) -> std::sync::MutexGuard<'_, ClientState> {
    match state.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// How a session ended.
enum End {
    Stopped,
    Closed(u16),
    Lost(String),
}

/// Connects through HAProxy, retrying with backoff (a refused or failed
/// attempt is what a real client sees during a restart), bounded by WAIT.
async fn connect(url: &str, state: &State, stop: &AtomicBool) -> Option<Ws> {
    let deadline = Instant::now() + WAIT;
    let mut backoff = Duration::from_millis(50);
    let mut last_err = String::new();
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        let attempt = async {
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
            let welcome = loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => break serde_json::from_str::<Value>(&t)?,
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.into()),
                    None => anyhow::bail!("closed before welcome"),
                }
            };
            anyhow::ensure!(welcome["type"] == "welcome", "first frame: {welcome}");
            anyhow::Ok((ws, welcome))
        };
        match tokio::time::timeout(Duration::from_secs(15), attempt).await {
            Ok(Ok((ws, welcome))) => {
                lock(state).node = welcome["node"].as_str().unwrap_or_default().to_owned();
                return Some(ws);
            }
            Ok(Err(e)) => last_err = format!("{e:#}"),
            Err(_) => last_err = "connect timed out".to_owned(),
        }
        // Client backoff between attempts (not a synchronisation sleep).
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
    if !stop.load(Ordering::Relaxed) {
        lock(state)
            .errors
            .push(format!("gave up reconnecting: {last_err}"));
    }
    None
}

/// Subscribes (with `since` after a reconnect) and reads until the
/// connection ends or the test stops.
async fn session(mut ws: Ws, resume: bool, state: &State, stop: &AtomicBool) -> End {
    let subscribe = {
        let st = lock(state);
        if resume {
            json!({"op": "subscribe", "id": 1, "channel": CHANNEL,
                   "since": {"offset": st.last, "epoch": st.epoch}})
        } else {
            json!({"op": "subscribe", "id": 1, "channel": CHANNEL})
        }
    };
    if let Err(e) = ws.send(Message::text(subscribe.to_string())).await {
        return End::Lost(format!("sending subscribe: {e}"));
    }
    let mut subscribed = false;
    loop {
        let next = match tokio::time::timeout(Duration::from_millis(300), ws.next()).await {
            Ok(next) => next,
            Err(_) => {
                if stop.load(Ordering::Relaxed) {
                    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                    return End::Stopped;
                }
                continue;
            }
        };
        let text = match next {
            None => return End::Lost("stream ended".to_owned()),
            Some(Err(e)) => return End::Lost(e.to_string()),
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map_or(1005, |f| u16::from(f.code));
                // Let tungstenite send the close reply.
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.next()).await;
                return End::Closed(code);
            }
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
        };
        let Ok(frame) = serde_json::from_str::<Value>(&text) else {
            lock(state).errors.push(format!("not JSON: {text}"));
            continue;
        };
        let mut guard = lock(state);
        let st = &mut *guard;
        match frame["type"].as_str() {
            Some("subscribed") if frame["id"] == 1 => {
                let offset = frame["offset"].as_u64().unwrap_or(0);
                let epoch = frame["epoch"].as_str().unwrap_or_default().to_owned();
                if resume {
                    if frame["recovered"] != true {
                        st.errors
                            .push(format!("resubscribe not recovered: {frame}"));
                    }
                    if epoch != st.epoch {
                        let msg = format!("epoch changed from {} to {epoch}", st.epoch);
                        st.errors.push(msg);
                    }
                } else {
                    st.start = Some(offset);
                    st.last = offset;
                    st.epoch = epoch;
                }
                st.connected = true;
                subscribed = true;
            }
            Some("message") if frame["channel"] == CHANNEL => {
                let offset = frame["offset"].as_u64().unwrap_or(0);
                if !subscribed {
                    st.errors
                        .push(format!("message before subscribed: {frame}"));
                } else if offset == st.last + 1 {
                    st.last = offset;
                    st.received += 1;
                    // A channel without history answers the empty epoch;
                    // the first message carries the stream's.
                    if st.epoch.is_empty() {
                        st.epoch = frame["epoch"].as_str().unwrap_or_default().to_owned();
                    }
                } else if offset <= st.last {
                    st.errors
                        .push(format!("duplicate offset {offset} (last {})", st.last));
                } else {
                    st.errors
                        .push(format!("gap: offset {offset} after {}", st.last));
                    st.last = offset;
                }
            }
            Some("error") => st.errors.push(format!("error frame: {frame}")),
            _ => {}
        }
    }
}

/// One client: connect, subscribe, read; on close or loss reconnect through
/// HAProxy and resubscribe from the last offset.
async fn run_client(url: String, state: State, stop: Arc<AtomicBool>) {
    let mut resume = false;
    while !stop.load(Ordering::Relaxed) {
        let Some(ws) = connect(&url, &state, &stop).await else {
            break;
        };
        let end = session(ws, resume, &state, &stop).await;
        let mut st = lock(&state);
        st.connected = false;
        match end {
            End::Stopped => break,
            End::Closed(code) => *st.closes.entry(code).or_default() += 1,
            End::Lost(why) => {
                *st.closes.entry(0).or_default() += 1;
                st.lost = Some(why);
            }
        }
        // Resume only once the first subscribe went through.
        resume = st.start.is_some();
        st.reconnects += 1;
    }
}

fn all(states: &[State], pred: impl Fn(&ClientState) -> bool) -> bool {
    states.iter().all(|s| pred(&lock(s)))
}

fn count(states: &[State], pred: impl Fn(&ClientState) -> bool) -> usize {
    states.iter().filter(|s| pred(&lock(s))).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_through_haproxy_loses_no_message() -> Result<()> {
    let test_start = Instant::now();
    let mut cluster = LocalCluster::up(
        ClusterOptions::new("rolling")
            .config(CONFIG)
            .env("GATEWAY_DRAIN_GRACE_MS", 2000),
    )
    .await?;
    eprintln!("[ops] cluster up in {:?}", test_start.elapsed());
    let api = cluster.lb_api();

    // 300 clients through HAProxy.
    let stop = Arc::new(AtomicBool::new(false));
    let states: Vec<State> = (0..CLIENTS).map(|_| State::default()).collect();
    let mut tasks = Vec::new();
    for (i, state) in states.iter().enumerate() {
        let url = format!("{}?user=u{i}", cluster.ws_url());
        tasks.push(tokio::spawn(run_client(url, state.clone(), stop.clone())));
    }
    eventually(
        WAIT,
        "all 300 clients subscribed through HAProxy",
        || async { all(&states, |s| s.connected && s.start.is_some()) },
    )
    .await?;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for s in &states {
        *per_node.entry(lock(s).node.clone()).or_default() += 1;
    }
    eprintln!("[ops] clients per node: {per_node:?}");
    ensure!(
        per_node.len() == 3 && per_node.keys().all(|n| n.starts_with("node")),
        "clients should land on all three nodes, got {per_node:?}"
    );

    // One publication reaches all of them.
    let first = api
        .publish(CHANNEL, json!({"n": "first"}))
        .await?
        .get("offset")
        .and_then(Value::as_u64)
        .context("publish answer without offset")?;
    eventually(
        Duration::from_secs(30),
        "the first publication reached all 300",
        || async { all(&states, |s| s.last >= first) },
    )
    .await?;
    ensure!(
        all(&states, |s| s.errors.is_empty()),
        "errors before the restart: {:?}",
        states.iter().find_map(|s| {
            let s = lock(s);
            (!s.errors.is_empty()).then(|| s.errors.clone())
        })
    );

    // Publisher: keeps publishing through HAProxy during the restart.
    let publishing = Arc::new(AtomicBool::new(true));
    let published = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let publisher = {
        let api = cluster.lb_api();
        let (publishing, published, failed) =
            (publishing.clone(), published.clone(), failed.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while publishing.load(Ordering::Relaxed) {
                n += 1;
                match api.publish(CHANNEL, json!({"n": n})).await {
                    Ok(_) => published.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(PUBLISH_EVERY).await;
            }
        })
    };

    // Rolling restart: one node at a time; the next one only once every
    // client is connected and subscribed again.
    for node in ["node1", "node2", "node3"] {
        let t = Instant::now();
        let out = cluster.restart(node).await?;
        eprint!("{out}");
        let restarted = t.elapsed();
        eventually(
            WAIT,
            &format!("every client back after restarting {node}"),
            || async { all(&states, |s| s.connected) },
        )
        .await
        .with_context(|| {
            format!(
                "{} clients not connected; first errors: {:?}",
                count(&states, |s| !s.connected),
                states
                    .iter()
                    .filter_map(|s| lock(s).errors.first().cloned())
                    .take(5)
                    .collect::<Vec<_>>()
            )
        })?;
        eprintln!(
            "[ops] {node}: restarted in {restarted:?}, all clients back after {:?}; published so far {}",
            t.elapsed(),
            published.load(Ordering::Relaxed)
        );
    }
    publishing.store(false, Ordering::Relaxed);
    publisher.await?;

    // The last publication; every client must end exactly there.
    let last = eventually_some(Duration::from_secs(30), "the final publication", || async {
        api.publish(CHANNEL, json!({"n": "last"}))
            .await
            .ok()?
            .get("offset")?
            .as_u64()
    })
    .await?;
    eventually(
        WAIT,
        "every client received up to the final offset",
        || async { all(&states, |s| s.last >= last) },
    )
    .await
    .with_context(|| {
        let behind: Vec<(u64, u64)> = states
            .iter()
            .map(|s| {
                let s = lock(s);
                (s.last, s.received)
            })
            .filter(|(l, _)| *l < last)
            .take(5)
            .collect();
        format!("final offset {last}; some clients behind (last, received): {behind:?}")
    })?;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await?;
    }

    // Every client: no gap, no duplicate, every resubscribe recovered, the
    // whole sequence from its first subscribe to the last offset, and it
    // really was moved by the restart (every node restarted once).
    let mut closes: BTreeMap<u16, u32> = BTreeMap::new();
    let mut reconnects = 0;
    for (i, s) in states.iter().enumerate() {
        let s = lock(s);
        ensure!(s.errors.is_empty(), "client u{i}: {:?}", s.errors);
        let start = s.start.context("never subscribed")?;
        ensure!(
            s.last == last && s.received == last - start,
            "client u{i}: received {} messages ending at {}, want {} ending at {last}",
            s.received,
            s.last,
            last - start
        );
        ensure!(
            s.reconnects >= 1,
            "client u{i} was never moved by the restart"
        );
        for (code, n) in &s.closes {
            *closes.entry(*code).or_default() += n;
        }
        reconnects += s.reconnects;
    }
    eprintln!(
        "[ops] published {} during the restart ({} attempts failed and were retried), final offset {last}; \
         {reconnects} reconnects, closes by code {closes:?}; test took {:?}",
        published.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        test_start.elapsed()
    );
    ensure!(
        published.load(Ordering::Relaxed) > 0,
        "the publisher never got through"
    );
    ensure!(
        closes.keys().all(|code| *code == 1001),
        "drained connections should all close with 1001, got {closes:?} (code 0: ended \
         without a close frame, e.g. {:?})",
        states.iter().find_map(|s| lock(s).lost.clone())
    );
    Ok(())
}
