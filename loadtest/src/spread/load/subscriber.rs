//! The subscribers: each connects to its node, subscribes to every
//! channel (bounded by the setup timeout), then receives until told to
//! stop, counting per channel the deliveries of ours and their latency.
//!
//! Invariants: the receive path does not allocate per frame; a subscriber
//! that loses its connection is counted (`dropped`), not retried.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use tokio::sync::watch;
use tokio::time::Instant;

use super::plan::{contains, parse_u64, Plan, SETUP_TIMEOUT};
use crate::common::{new_hist, now_us};
use crate::wire::{op, Ws};

/// Counters the subscribers update once per socket read, so the parent
/// can watch the deliveries arrive.
#[derive(Default)]
pub(in crate::spread) struct Live {
    /// `s:` deliveries over every subscriber.
    pub(in crate::spread) delivered: AtomicU64,
    /// `w:` (warm-up) deliveries over every subscriber.
    pub(in crate::spread) warm: AtomicU64,
    /// Wall clock of the latest `s:` delivery (us).
    pub(in crate::spread) last_us: AtomicU64,
}

/// What one subscriber received.
pub(in crate::spread) struct SubResult {
    /// `s:` deliveries per channel index.
    pub(in crate::spread) counts: Vec<u64>,
    /// Other frames of ours it could not attribute (a channel index out of
    /// range).
    pub(in crate::spread) unexpected: u64,
    /// Publish-to-receive latency, us.
    pub(in crate::spread) latency: Histogram<u64>,
    /// How it ended, when it ended before the stop (`eof`, `close_4005`,
    /// ...).
    pub(in crate::spread) dropped: Option<String>,
}

/// A subscribed connection, before it starts receiving.
pub(in crate::spread) struct Subscriber {
    ws: Ws,
}

/// Connects subscriber `idx` to node `idx % nodes` and subscribes it to
/// every channel.
pub(in crate::spread) async fn subscribe(
    plan: &Plan,
    idx: u64,
    nodes: usize,
) -> Result<Subscriber> {
    let user = format!("spread-sub{idx}");
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let mut ws = plan
        .connect(idx, idx as usize % nodes.max(1), &user)
        .await?;
    for c in 0..plan.channels {
        ws.queue_text(&format!(
            r#"{{"op":"subscribe","id":{c},"channel":"{}"}}"#,
            plan.channel(c)
        ));
    }
    ws.flush_queued().await.context("sending the subscribes")?;
    let mut pending = plan.channels;
    let mut welcomed = false;
    while !welcomed || pending > 0 {
        while let Some(f) = ws.next_frame()? {
            match f.opcode {
                op::TEXT => {
                    let p = ws.payload(&f);
                    if contains(p, br#""type":"subscribed""#) {
                        pending = pending.saturating_sub(1);
                    } else if contains(p, br#""type":"welcome""#) {
                        welcomed = true;
                    } else if contains(p, br#""type":"error""#) {
                        bail!("{user}: subscribe refused: {}", String::from_utf8_lossy(p));
                    }
                }
                op::PING => ws.pong(&f).await?,
                op::CLOSE => bail!("{user}: closed during the subscribes"),
                _ => {}
            }
        }
        if welcomed && pending == 0 {
            break;
        }
        let n = tokio::time::timeout_at(deadline, ws.fill())
            .await
            .map_err(|_| {
                anyhow!("{user}: {pending} subscribe replies missing after {SETUP_TIMEOUT:?}")
            })??;
        if n == 0 {
            bail!("{user}: closed before its subscribe replies ({pending} missing)");
        }
    }
    Ok(Subscriber { ws })
}

/// A delivery of ours: (channel index, warm-up?, send time us).
fn parse_delivery(p: &[u8], prefix: &[u8]) -> Option<(u64, bool, u64)> {
    const DATA: &[u8] = br#""data":""#;
    let d = p.windows(DATA.len()).position(|w| w == DATA)? + DATA.len();
    let data = &p[d..];
    let warm = match data.get(..2)? {
        b"s:" => false,
        b"w:" => true,
        _ => return None,
    };
    let sent = parse_u64(&data[2..])?;
    let at = p.windows(prefix.len()).position(|w| w == prefix)? + prefix.len();
    Some((parse_u64(&p[at..])?, warm, sent))
}

impl Subscriber {
    /// Receives until `stop` turns true (then closes cleanly, bounded) or
    /// the connection ends.
    pub(in crate::spread) async fn run(
        mut self,
        plan: Arc<Plan>,
        live: Arc<Live>,
        mut stop: watch::Receiver<bool>,
    ) -> SubResult {
        let prefix = format!(r#""channel":"{}"#, plan.prefix).into_bytes();
        let mut r = SubResult {
            counts: vec![0; plan.channels as usize],
            unexpected: 0,
            latency: new_hist(),
            dropped: None,
        };
        loop {
            let recv_us = now_us();
            let (mut got, mut warm) = (0u64, 0u64);
            let mut pings = Vec::new();
            loop {
                let f = match self.ws.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(_) => {
                        r.dropped = Some("protocol".into());
                        return r;
                    }
                };
                match f.opcode {
                    op::TEXT => match parse_delivery(self.ws.payload(&f), &prefix) {
                        Some((c, false, sent)) => match r.counts.get_mut(c as usize) {
                            Some(n) => {
                                *n += 1;
                                got += 1;
                                let _ = r
                                    .latency
                                    .record(recv_us.saturating_sub(sent).clamp(1, 600_000_000));
                            }
                            None => r.unexpected += 1,
                        },
                        Some((_, true, _)) => warm += 1,
                        None => {}
                    },
                    op::PING => pings.push(self.ws.payload(&f).to_vec()),
                    op::CLOSE => {
                        let p = self.ws.payload(&f);
                        let code = if p.len() >= 2 {
                            u16::from_be_bytes([p[0], p[1]])
                        } else {
                            1005
                        };
                        r.dropped = Some(format!("close_{code}"));
                        return r;
                    }
                    _ => {}
                }
            }
            if got > 0 {
                live.delivered.fetch_add(got, Relaxed);
                live.last_us.fetch_max(recv_us, Relaxed);
            }
            if warm > 0 {
                live.warm.fetch_add(warm, Relaxed);
            }
            for p in pings {
                if self.ws.send(op::PONG, &p).await.is_err() {
                    r.dropped = Some("tcp".into());
                    return r;
                }
            }
            if *stop.borrow() {
                let _ = self.ws.close(1000, Duration::from_secs(2)).await;
                return r;
            }
            tokio::select! {
                n = self.ws.fill() => match n {
                    Ok(0) => { r.dropped = Some("eof".into()); return r; }
                    Ok(_) => {}
                    Err(_) => { r.dropped = Some("tcp".into()); return r; }
                },
                changed = stop.changed() => {
                    if changed.is_err() {
                        // The parent is gone: stop as if told to.
                        let _ = self.ws.close(1000, Duration::from_secs(2)).await;
                        return r;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_our_deliveries() {
        let f = br#"{"type":"message","channel":"spread:42","data":"s:1700000000000000:xxxx","offset":null,"from":"p"}"#;
        assert_eq!(
            parse_delivery(f, br#""channel":"spread:"#),
            Some((42, false, 1_700_000_000_000_000))
        );
        let w = br#"{"type":"message","channel":"spread:7","data":"w:12:x"}"#;
        assert_eq!(
            parse_delivery(w, br#""channel":"spread:"#),
            Some((7, true, 12))
        );
        let other = br#"{"type":"message","channel":"spread:7","data":{"a":1}}"#;
        assert_eq!(parse_delivery(other, br#""channel":"spread:"#), None);
    }
}
