//! The churning clients: one cycle connects to a live node, subscribes to
//! two channels, publishes, lingers while reading and leaves by a clean
//! close, a FIN or a reset; the final clients connect and subscribe the same
//! way for the gauge check. What every cycle ended with goes to a [`Tally`].
//!
//! Invariants: clients connect to loopback only; every reply is awaited at
//! most [`REPLY_TIMEOUT`]; a cycle never fails the run, it is counted.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::common::token;
use crate::wire::{op, Target, Ws};

/// The JWT secret the suite's gateways check (see `suite::nodes`).
const SECRET: &str = "loadtest-suite-secret-0123456789abcdef";
/// Bound on one reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// What one churn cycle or final client ended with.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub(super) cycles: u64,
    pub(super) ok: u64,
    pub(super) errors: BTreeMap<String, u64>,
    pub(super) sample_errors: BTreeMap<String, String>,
    pub(super) publishes: u64,
    pub(super) published: u64,
}

impl Tally {
    pub(super) fn fail(&mut self, kind: &str, msg: String) {
        *self.errors.entry(kind.to_owned()).or_default() += 1;
        self.sample_errors.entry(kind.to_owned()).or_insert(msg);
    }
}

/// The live nodes' addresses (None while a node is down) and pids.
#[derive(Debug, Default)]
pub(super) struct Live {
    pub(super) addrs: Vec<Option<SocketAddr>>,
    pub(super) pids: Vec<u32>,
}

pub(super) type Shared = Arc<Mutex<Live>>;

fn live_addr(live: &Shared, i: usize) -> Option<(usize, SocketAddr)> {
    let l = live.lock().ok()?;
    let n = l.addrs.len();
    (0..n).find_map(|k| {
        let node = (i + k) % n;
        l.addrs[node].map(|a| (node, a))
    })
}

/// Reads one JSON text frame (answering pings) before `deadline`.
async fn recv(ws: &mut Ws, deadline: Instant) -> Result<Value> {
    loop {
        while let Some(f) = ws.next_frame()? {
            match f.opcode {
                op::TEXT => return Ok(serde_json::from_slice(ws.payload(&f))?),
                op::PING => ws.pong(&f).await?,
                op::CLOSE => {
                    let p = ws.payload(&f);
                    let code = if p.len() >= 2 {
                        u16::from_be_bytes([p[0], p[1]])
                    } else {
                        0
                    };
                    bail!("closed by the server with {code}");
                }
                _ => {}
            }
        }
        let n = tokio::time::timeout_at(deadline, ws.fill())
            .await
            .context("reply timeout")??;
        if n == 0 {
            bail!("connection closed");
        }
    }
}

/// Sends `req` and waits for the frame that echoes its id.
async fn request(ws: &mut Ws, req: Value) -> Result<Value> {
    let id = req["id"].clone();
    ws.send_text(&req.to_string()).await?;
    let deadline = Instant::now() + REPLY_TIMEOUT;
    for _ in 0..10_000 {
        let v = recv(ws, deadline).await?;
        if v["id"] == id {
            if v["type"] == "error" {
                bail!("error {}", v["code"].as_str().unwrap_or("?"));
            }
            return Ok(v);
        }
    }
    bail!("no reply among 10,000 frames")
}

/// Connects user `user` to `addr` from `src`, waits for the welcome.
async fn connect(addr: SocketAddr, user: &str, src: Ipv4Addr) -> Result<Ws, (String, String)> {
    let tok = token(SECRET, user).map_err(|e| ("jwt".to_owned(), format!("{e:#}")))?;
    let host = addr.to_string();
    let t = Target {
        addr,
        host: &host,
        path: "/ws",
        src: Some(src),
        bearer: Some(&tok),
        read_buf: 4096,
    };
    let mut ws = Ws::connect(&t, REPLY_TIMEOUT)
        .await
        .map_err(|e| (format!("connect_{}", e.kind), e.to_string()))?;
    let v = recv(&mut ws, Instant::now() + REPLY_TIMEOUT)
        .await
        .map_err(|e| ("welcome".to_owned(), format!("{e:#}")))?;
    if v["type"] != "welcome" {
        return Err(("welcome".to_owned(), format!("first frame {v}")));
    }
    Ok(ws)
}

/// Subscribes to the two channels of client `i`.
async fn subscribe_two(ws: &mut Ws, i: u64) -> Result<()> {
    request(
        ws,
        json!({"op": "subscribe", "id": 1, "channel": format!("room:{}", i % 20)}),
    )
    .await?;
    request(
        ws,
        json!({"op": "subscribe", "id": 2, "channel": format!("fan:{}", i % 50)}),
    )
    .await?;
    Ok(())
}

pub(super) fn src_of(i: u64, n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 1 + (i % u64::from(n.max(1))) as u8)
}

/// One churn cycle: connect, subscribe twice, publish, linger, leave by a
/// clean close, a FIN or a reset (i % 3).
pub(super) async fn cycle(
    live: Shared,
    i: u64,
    linger: Duration,
    src: Ipv4Addr,
    tally: Arc<Mutex<Tally>>,
) {
    let outcome: Result<bool, (String, String)> = async {
        let (_, addr) =
            live_addr(&live, i as usize).ok_or(("no_node".to_owned(), String::new()))?;
        let mut ws = connect(addr, &format!("soak{}", i % 200), src).await?;
        subscribe_two(&mut ws, i)
            .await
            .map_err(|e| ("subscribe".to_owned(), format!("{e:#}")))?;
        let pubd = request(
            &mut ws,
            json!({"op": "publish", "id": 3, "channel": format!("fan:{}", i % 50), "data": {"i": i}}),
        )
        .await;
        let deadline = Instant::now() + linger;
        // Linger while reading (pushes, pings) so the socket does not back up.
        while Instant::now() < deadline {
            if recv(&mut ws, deadline).await.is_err() {
                break;
            }
        }
        match i % 3 {
            0 => {
                ws.close(1000, Duration::from_secs(5)).await;
            }
            1 => ws.drop_fin(),
            _ => ws.reset(),
        }
        pubd.map(|_| true)
            .map_err(|e| ("publish".to_owned(), format!("{e:#}")))
    }
    .await;
    if let Ok(mut t) = tally.lock() {
        t.cycles += 1;
        match outcome {
            Ok(published) => {
                t.ok += 1;
                t.publishes += 1;
                t.published += u64::from(published);
            }
            Err((kind, msg)) => {
                if kind == "publish" {
                    t.publishes += 1;
                }
                t.fail(&kind, msg);
            }
        }
    }
}

/// `base`), each subscribed to 2 channels.
pub(super) async fn connect_final(
    addrs: &[SocketAddr],
    n: usize,
    base: u64,
    src_addrs: u8,
) -> Result<(Vec<Ws>, Vec<u64>)> {
    let mut out = Vec::with_capacity(n);
    let mut truth = vec![0u64; addrs.len()];
    for k in 0..n {
        let node = k % addrs.len();
        let i = base + k as u64;
        let mut ws = connect(addrs[node], &format!("final{k}"), src_of(i, src_addrs))
            .await
            .map_err(|(kind, msg)| anyhow::anyhow!("final client {k}: {kind}: {msg}"))?;
        subscribe_two(&mut ws, i).await?;
        truth[node] += 1;
        out.push(ws);
    }
    Ok((out, truth))
}
