//! The client tasks of a worker: connect and subscribe (`setup`, v1 or
//! Pusher as `handshake` decides), then a held client receives until it is
//! stopped or dropped (`client`, `receive`; a Pusher client also answers
//! and sends `pusher:ping`); a churn cycle connects, subscribes, lingers
//! and closes one of three ways (`churn_cycle`).
//!
//! Invariants: setup (connect, upgrade, welcome, every subscribe reply) is
//! bounded by the connect timeout; data frames that arrive during setup are
//! accounted like later ones; every client task is counted in
//! `live_tasks` while it runs and ends by itself once the stop signal is
//! set (clean close, bounded) or the connection drops (counted in
//! `dropped` with how it ended).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use tokio::time::Instant;

use super::ctx::{lock, Ctx};
use super::handshake::Handshake;
use super::protocol::{Group, Mode};
use super::seq::{apply_refused, data_str, flush_batch, on_data, Batch, SubSeq};
use crate::common::now_us;
use crate::pusher;
use crate::wire::{op, ConnectError, Target, Ws};

/// The channel of client (or churn cycle) `i` in every group.
fn channels_for(groups: &[Group], i: u64) -> Vec<String> {
    groups
        .iter()
        .map(|g| format!("{}{}", g.prefix, i % g.count.max(1)))
        .collect()
}

/// A set-up client: its socket, and for Pusher how long it may go
/// without a frame before it pings.
pub(super) struct Setup {
    ws: Ws,
    ping_every: Option<Duration>,
}

/// Connects client `idx` as `user`, reads the welcome (v1) or
/// `connection_established` (Pusher) and subscribes to every group's
/// channel; returns the socket (data frames that arrived in between are
/// handled).
async fn setup(
    ctx: &Ctx,
    idx: u64,
    user: &str,
    channels: &[String],
    seq: &mut Option<SubSeq>,
) -> Result<Setup, ConnectError> {
    let timeout = Duration::from_millis(ctx.spec.ep.connect_timeout_ms);
    let node = &ctx.nodes[(idx % ctx.nodes.len() as u64) as usize];
    let (path, bearer) = ctx.spec.ep.auth(node, user).map_err(|e| ConnectError {
        kind: "token".into(),
        error: e,
    })?;
    let target = Target {
        addr: node.addr,
        host: &node.host,
        path: &path,
        src: ctx.spec.ep.src(idx),
        bearer: bearer.as_deref(),
        read_buf: ctx.spec.ep.read_buf,
    };
    let deadline = Instant::now() + timeout;
    let mut ws = Ws::connect(&target, timeout).await?;
    let mut hs = Handshake::new(ctx.spec.ep.pusher.as_ref(), user, channels);
    let rest = tokio::time::timeout_at(deadline, subscribe_all(ctx, &mut ws, idx, &mut hs, seq));
    match rest.await {
        Ok(r) => r.map(|()| Setup {
            ws,
            ping_every: hs.ping_every(),
        }),
        Err(_) => Err(ConnectError {
            kind: "timeout".into(),
            error: anyhow!("welcome + subscribe took longer than {timeout:?}"),
        }),
    }
}

async fn subscribe_all(
    ctx: &Ctx,
    ws: &mut Ws,
    idx: u64,
    hs: &mut Handshake<'_>,
    seq: &mut Option<SubSeq>,
) -> Result<(), ConnectError> {
    let perr = |kind: &str, e: anyhow::Error| ConnectError {
        kind: kind.into(),
        error: e,
    };
    for req in hs.start() {
        ws.send_text(&req)
            .await
            .map_err(|e| perr("tcp", anyhow!("sending subscribe: {e}")))?;
    }
    let mut b = Batch::default();
    let mut recv_us = now_us();
    let mut first = true;
    while !hs.done() {
        // Frames may already be buffered (the welcome often comes with the
        // upgrade response): parse before reading.
        if !first {
            let n = ws
                .fill()
                .await
                .map_err(|e| perr("tcp", anyhow!("reading replies: {e}")))?;
            if n == 0 {
                return Err(perr(
                    "eof",
                    anyhow!(
                        "closed before the subscribe replies ({} missing)",
                        hs.missing()
                    ),
                ));
            }
            recv_us = now_us();
        }
        first = false;
        while let Some(f) = ws.next_frame().map_err(|e| perr("protocol", e))? {
            match f.opcode {
                op::TEXT => {
                    let p = ws.payload(&f);
                    if let Some(d) = data_str(p) {
                        on_data(ctx, seq, d, recv_us, &mut b);
                        continue;
                    }
                    for reply in hs.on_text(p)? {
                        ws.send_text(&reply)
                            .await
                            .map_err(|e| perr("tcp", anyhow!("sending subscribe: {e}")))?;
                    }
                }
                op::PING => ws
                    .pong(&f)
                    .await
                    .map_err(|e| perr("tcp", anyhow!("pong: {e}")))?,
                op::CLOSE => {
                    let p = ws.payload(&f);
                    let code = close_code(p);
                    return Err(perr(
                        &format!("close_{code}"),
                        anyhow!(
                            "closed during setup: {code} {}",
                            String::from_utf8_lossy(&p[p.len().min(2)..])
                        ),
                    ));
                }
                _ => {}
            }
        }
        flush_batch(ctx, idx as usize, seq, &mut b, recv_us);
    }
    Ok(())
}

/// A held client: set up, then receive until stopped or dropped.
pub(super) async fn client(ctx: Arc<Ctx>, idx: u64, permit: tokio::sync::OwnedSemaphorePermit) {
    let _guard = TaskGuard(ctx.clone());
    let start = Instant::now();
    let user = format!("{}{idx}", ctx.spec.user_prefix);
    let mut seq = match &ctx.spec.mode {
        Mode::Seq { lanes, .. } => {
            let count = ctx.spec.groups.first().map_or(1, |g| g.count.max(1));
            let channel = (idx % count) as usize;
            let total = ctx.expected.get(channel).copied().unwrap_or(0);
            Some(SubSeq::new(channel, total, *lanes))
        }
        _ => None,
    };
    let channels = channels_for(&ctx.spec.groups, idx);
    let set = setup(&ctx, idx, &user, &channels, &mut seq).await;
    drop(permit);
    let Setup { mut ws, ping_every } = match set {
        Ok(s) => s,
        Err(e) => {
            ctx.fail(&e);
            ctx.failed.fetch_add(1, Relaxed);
            return;
        }
    };
    let took = start.elapsed().as_micros() as u64;
    let _ = lock(&ctx.setup).record(took.clamp(1, 600_000_000));
    if let Some(s) = &mut seq {
        ctx.expected_total.fetch_add(s.expected(), Relaxed);
        ctx.node(idx)[0].fetch_add(s.expected(), Relaxed);
        if s.done() {
            s.complete = true;
        } else {
            ctx.remaining.fetch_add(1, Relaxed);
        }
    }
    ctx.last_setup_us.fetch_max(now_us(), Relaxed);
    ctx.connected.fetch_add(1, Relaxed);
    receive(&ctx, idx, &mut ws, ping_every, &mut seq).await;
}

/// Receives until stopped or dropped. `ping_every` (Pusher): answer
/// `pusher:ping`, and send one when a whole period passed without a frame
/// (so within 2 periods of silence; pusher-js pings after one).
async fn receive(
    ctx: &Ctx,
    idx: u64,
    ws: &mut Ws,
    ping_every: Option<Duration>,
    seq: &mut Option<SubSeq>,
) {
    let pusher = ping_every.is_some();
    let period = ping_every.unwrap_or(Duration::from_secs(3600));
    let ping_timer = tokio::time::sleep(period);
    tokio::pin!(ping_timer);
    let mut heard = false;
    let mut stop = ctx.stop.clone();
    let mut refused = ctx.refused.clone();
    if let Some(list) = refused.borrow_and_update().clone() {
        apply_refused(ctx, idx, seq, &list);
    }
    let mut b = Batch::default();
    let mut recv_us = now_us();
    loop {
        loop {
            let f = match ws.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => {
                    flush_batch(ctx, idx as usize, seq, &mut b, recv_us);
                    ctx.ended("protocol_error");
                    return;
                }
            };
            match f.opcode {
                op::TEXT => {
                    let p = ws.payload(&f);
                    if let Some(d) = data_str(p) {
                        on_data(ctx, seq, d, recv_us, &mut b);
                    } else if pusher
                        && pusher::is_ping(p)
                        && ws.send_text(pusher::PONG).await.is_err()
                    {
                        flush_batch(ctx, idx as usize, seq, &mut b, recv_us);
                        ctx.ended("write_error");
                        return;
                    }
                }
                op::PING if ws.pong(&f).await.is_err() => {
                    flush_batch(ctx, idx as usize, seq, &mut b, recv_us);
                    ctx.ended("write_error");
                    return;
                }
                op::CLOSE => {
                    let p = ws.payload(&f);
                    let code = close_code(p);
                    flush_batch(ctx, idx as usize, seq, &mut b, recv_us);
                    ctx.ended(&format!("close_{code}"));
                    let _ = ws.close(1000, Duration::from_secs(2)).await;
                    return;
                }
                _ => {}
            }
        }
        flush_batch(ctx, idx as usize, seq, &mut b, recv_us);
        if *stop.borrow() {
            if ws.close(1000, Duration::from_secs(5)).await {
                ctx.clean_closes.fetch_add(1, Relaxed);
            }
            return;
        }
        tokio::select! {
            biased;
            _ = stop.changed() => {}
            Ok(()) = refused.changed(), if seq.is_some() => {
                if let Some(list) = refused.borrow_and_update().clone() {
                    apply_refused(ctx, idx, seq, &list);
                }
            }
            r = ws.fill() => match r {
                Ok(0) => { ctx.ended("eof"); return; }
                Ok(_) => { recv_us = now_us(); heard = true; }
                Err(_) => { ctx.ended("read_error"); return; }
            },
            () = &mut ping_timer, if pusher => {
                if !heard && ws.send_text(pusher::PING).await.is_err() {
                    ctx.ended("write_error");
                    return;
                }
                heard = false;
                ping_timer.as_mut().reset(Instant::now() + period);
            }
        }
    }
}

/// The status code of a close frame's payload (1005: none given).
fn close_code(p: &[u8]) -> u16 {
    if p.len() >= 2 {
        u16::from_be_bytes([p[0], p[1]])
    } else {
        1005
    }
}

/// Counts a live client task; decrements on drop.
struct TaskGuard(Arc<Ctx>);
impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.live_tasks.fetch_sub(1, Relaxed);
    }
}

/// How a churn cycle ended.
pub(super) enum CycleEnd {
    Clean(bool),
    Fin,
    Rst,
}

/// One churn cycle: connect as `<prefix>c<idx>`, subscribe to the cycle's
/// channels, linger, then close cleanly, drop with a FIN or reset (by cycle
/// number, a third each); returns the setup time (us) and how it ended.
pub(super) async fn churn_cycle(
    ctx: &Ctx,
    idx: u64,
    cycle: u64,
    groups: &[Group],
    linger: Duration,
) -> Result<(u64, CycleEnd), ConnectError> {
    let start = Instant::now();
    let user = format!("{}c{}", ctx.spec.user_prefix, idx);
    // Channels are chosen by cycle number, so concurrent cycles spread out.
    let mut seq = None;
    let channels = channels_for(groups, cycle);
    let Setup { mut ws, .. } = setup(ctx, idx, &user, &channels, &mut seq).await?;
    let took = start.elapsed().as_micros() as u64;
    if !linger.is_zero() {
        tokio::time::sleep(linger).await;
    }
    let end = match cycle % 3 {
        0 => CycleEnd::Clean(ws.close(1000, Duration::from_secs(5)).await),
        1 => {
            ws.drop_fin();
            CycleEnd::Fin
        }
        _ => {
            ws.reset();
            CycleEnd::Rst
        }
    };
    Ok((took, end))
}
