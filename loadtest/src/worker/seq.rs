//! A subscriber's receive accounting: which sequenced publications
//! (`f:<channel>:<lane>:<seq>:<send us>:`) it has, per publisher lane, with
//! the publications the gateway refused set apart; broadcasts
//! (`b:<id>:...`) counted until every live client has one; and the
//! allocation-free parsing of our data frames this needs.
//!
//! Invariants: a lane's `next`/`above` hold every sequence seen or refused,
//! so a subscriber completes without its refused publications, and a
//! refused one that arrives anyway is a distinct delivery, never a
//! duplicate; tallies gather in a [`Batch`] per socket read and reach the
//! shared counters once per read (`flush_batch`), where a subscriber that
//! completes decrements `remaining` exactly once.

use std::sync::atomic::Ordering::Relaxed;

use super::ctx::{lock, Ctx, HIST_SHARDS};
use super::protocol::Ev;

/// A subscriber's sequence state (Seq mode): one per publisher lane.
pub(super) struct SubSeq {
    channel: usize,
    lanes: Vec<SeqState>,
    pub(super) complete: bool,
}

impl SubSeq {
    pub(super) fn new(channel: usize, total: u64, lanes: u64) -> SubSeq {
        let lanes = lanes.max(1);
        SubSeq {
            channel,
            lanes: (0..lanes)
                .map(|l| SeqState::new(total / lanes + u64::from(l < total % lanes)))
                .collect(),
            complete: false,
        }
    }

    pub(super) fn expected(&self) -> u64 {
        self.lanes.iter().map(|l| l.expected).sum()
    }

    pub(super) fn done(&self) -> bool {
        self.lanes.iter().all(|l| l.next > l.expected)
    }

    /// Counts the subscriber out of `remaining` when it has just completed.
    fn check_complete(&mut self, ctx: &Ctx) {
        if !self.complete && self.done() {
            self.complete = true;
            ctx.remaining.fetch_sub(1, Relaxed);
        }
    }
}

/// Sequence state of one (channel, publisher lane).
#[derive(Default)]
struct SeqState {
    expected: u64,
    /// Every seq below this was seen.
    next: u64,
    /// Seen seqs above `next`, sorted.
    above: Vec<u64>,
    max_seen: u64,
    /// Refused publications not (yet) received, sorted; already accounted
    /// in `next`/`above` so the subscriber can complete without them.
    refused: Vec<u64>,
}

/// Per-read-batch tallies, applied to the shared counters once per read.
#[derive(Default)]
pub(super) struct Batch {
    deliveries: u64,
    distinct: u64,
    duplicates: u64,
    out_of_order: u64,
    unexpected: u64,
    refused_late: u64,
    latencies: Vec<u64>,
}

fn parse_u64(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 {
        return None;
    }
    let mut v = 0u64;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u64::from(c - b'0');
    }
    Some(v)
}

/// The `data` string of a message/broadcast frame, when it is one of ours
/// (`f:...` or `b:...`).
pub(super) fn data_str(p: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = b"\"data\":";
    let at = p.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    // `"data":"` from serde_json; a space after the colon is taken too.
    let skip = p[at..].iter().take_while(|c| **c == b' ').count();
    let rest = p[at + skip..].strip_prefix(b"\"")?;
    let end = rest.iter().position(|&c| c == b'"')?;
    let d = &rest[..end];
    if d.len() >= 2 && (d[0] == b'f' || d[0] == b'b') && d[1] == b':' {
        Some(d)
    } else {
        None
    }
}

/// Fields of `x:a:b:c:...` after the tag.
fn fields(d: &[u8]) -> impl Iterator<Item = &[u8]> {
    d.split(|&c| c == b':').skip(1)
}

impl SeqState {
    /// A lane that expects sequences `1..=expected`.
    fn new(expected: u64) -> SeqState {
        SeqState {
            expected,
            next: 1,
            ..SeqState::default()
        }
    }

    fn on(&mut self, seq: u64, b: &mut Batch) {
        b.deliveries += 1;
        if seq == 0 || seq > self.expected {
            b.unexpected += 1;
            return;
        }
        if let Ok(i) = self.refused.binary_search(&seq) {
            // Refused by the gateway, delivered after all: a distinct
            // delivery, no longer missing.
            self.refused.remove(i);
            b.distinct += 1;
            b.refused_late += 1;
            return;
        }
        if seq < self.next || self.above.binary_search(&seq).is_ok() {
            b.duplicates += 1;
            return;
        }
        b.distinct += 1;
        if seq < self.max_seen {
            b.out_of_order += 1;
        }
        self.max_seen = self.max_seen.max(seq);
        self.mark(seq);
    }

    fn received(&self, seq: u64) -> bool {
        seq < self.next || self.above.binary_search(&seq).is_ok()
    }

    fn mark(&mut self, seq: u64) {
        if seq == self.next {
            self.next += 1;
            while self.above.first() == Some(&self.next) {
                self.above.remove(0);
                self.next += 1;
            }
        } else if let Err(pos) = self.above.binary_search(&seq) {
            self.above.insert(pos, seq);
        }
    }

    /// Accounts a refused publication: returns true when it was received.
    fn refuse(&mut self, seq: u64) -> bool {
        if seq == 0 || seq > self.expected {
            return false;
        }
        if self.received(seq) {
            return true;
        }
        if let Err(pos) = self.refused.binary_search(&seq) {
            self.refused.insert(pos, seq);
            self.mark(seq);
        }
        false
    }
}

/// Handles one of our data frames (already known to be a text frame).
pub(super) fn on_data(ctx: &Ctx, seq: &mut Option<SubSeq>, d: &[u8], recv_us: u64, b: &mut Batch) {
    match d[0] {
        b'f' => {
            let mut f = fields(d);
            let ch = f.next().and_then(parse_u64);
            let lane = f.next().and_then(parse_u64);
            let s = f.next().and_then(parse_u64);
            let ts = f.next().and_then(parse_u64);
            // Unparsable, not Seq mode, another channel or an unknown lane.
            let found = match (ch, lane, s, ts, seq.as_mut()) {
                (Some(ch), Some(lane), Some(s), Some(ts), Some(sub))
                    if ch as usize == sub.channel =>
                {
                    sub.lanes.get_mut(lane as usize).map(|state| (state, s, ts))
                }
                _ => None,
            };
            let Some((state, s, ts)) = found else {
                b.deliveries += 1;
                b.unexpected += 1;
                return;
            };
            let before = b.distinct;
            state.on(s, b);
            if b.distinct > before {
                b.latencies.push(recv_us.saturating_sub(ts));
            }
        }
        b'b' => {
            let mut f = fields(d);
            let Some(id) = f.next().and_then(parse_u64) else {
                return;
            };
            let mut done = lock(&ctx.bcast_done);
            if done.contains(&id) {
                return;
            }
            let mut map = lock(&ctx.bcast);
            let e = map.entry(id).or_insert((0, 0));
            e.0 += 1;
            e.1 = e.1.max(recv_us);
            if e.0 >= ctx.live() {
                let (receivers, last_us) = *e;
                map.remove(&id);
                done.insert(id);
                let _ = ctx.ev.send(Ev::Bcast {
                    id,
                    last_us,
                    receivers,
                });
            }
        }
        _ => {}
    }
}

/// Applies the refused list to a subscriber (once, when it arrives).
pub(super) fn apply_refused(
    ctx: &Ctx,
    idx: u64,
    seq: &mut Option<SubSeq>,
    list: &[(u64, u64, u64)],
) {
    let Some(sub) = seq.as_mut() else { return };
    let (mut missing, mut delivered) = (0, 0);
    for &(c, l, s) in list {
        if c as usize != sub.channel {
            continue;
        }
        if let Some(lane) = sub.lanes.get_mut(l as usize) {
            if lane.refuse(s) {
                delivered += 1;
            } else if lane.refused.binary_search(&s).is_ok() {
                missing += 1;
            }
        }
    }
    ctx.refused_missing.fetch_add(missing, Relaxed);
    ctx.refused_delivered.fetch_add(delivered, Relaxed);
    ctx.node(idx)[2].fetch_add(missing, Relaxed);
    sub.check_complete(ctx);
}

pub(super) fn flush_batch(
    ctx: &Ctx,
    slot: usize,
    seq: &mut Option<SubSeq>,
    b: &mut Batch,
    recv_us: u64,
) {
    if b.deliveries == 0 {
        return;
    }
    ctx.deliveries.fetch_add(b.deliveries, Relaxed);
    ctx.distinct.fetch_add(b.distinct, Relaxed);
    ctx.node(slot as u64)[1].fetch_add(b.distinct, Relaxed);
    if b.duplicates > 0 {
        ctx.duplicates.fetch_add(b.duplicates, Relaxed);
    }
    if b.out_of_order > 0 {
        ctx.out_of_order.fetch_add(b.out_of_order, Relaxed);
    }
    if b.unexpected > 0 {
        ctx.unexpected.fetch_add(b.unexpected, Relaxed);
    }
    if b.refused_late > 0 {
        ctx.refused_delivered.fetch_add(b.refused_late, Relaxed);
        ctx.refused_missing.fetch_sub(b.refused_late, Relaxed);
        ctx.node(slot as u64)[2].fetch_sub(b.refused_late, Relaxed);
    }
    ctx.first_delivery_us.fetch_min(recv_us, Relaxed);
    ctx.last_delivery_us.fetch_max(recv_us, Relaxed);
    if !b.latencies.is_empty() {
        let mut h = lock(&ctx.latency[slot % HIST_SHARDS]);
        for &v in &b.latencies {
            let _ = h.record(v.clamp(1, 600_000_000));
        }
        b.latencies.clear();
    }
    if let Some(s) = seq.as_mut() {
        s.check_complete(ctx);
    }
    *b = Batch {
        latencies: std::mem::take(&mut b.latencies),
        ..Batch::default()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_our_data_strings() {
        let f = br#"{"type":"message","channel":"fan:3","data":"f:3:0:17:1700000000000000:xx","offset":null,"from":null}"#;
        let d = data_str(f).unwrap();
        let v: Vec<_> = fields(d).map(parse_u64).collect();
        assert_eq!(
            v[..4],
            [Some(3), Some(0), Some(17), Some(1_700_000_000_000_000)]
        );
        assert!(data_str(br#"{"type":"message","data":{"x":1}}"#).is_none());
        assert!(data_str(br#"{"type":"broadcast","data":"b:9:5:"}"#).is_some());
        let pusher = br#"{"event":"ev","channel":"bench-0","data": "f:0:1:2:3:x"}"#;
        assert_eq!(data_str(pusher), Some(&b"f:0:1:2:3:x"[..]));
        let established =
            br#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"1.2\"}"}"#;
        assert!(data_str(established).is_none());
    }

    #[test]
    fn refused_publications_are_not_loss() {
        let mut s = SeqState::new(4);
        let mut b = Batch::default();
        s.on(1, &mut b);
        assert!(s.refuse(1), "received before the refusal was known");
        assert!(!s.refuse(3));
        s.on(2, &mut b);
        assert_eq!(s.next, 4, "3 is accounted as refused");
        s.on(3, &mut b);
        assert_eq!(b.refused_late, 1);
        assert_eq!(b.duplicates, 0);
        s.on(4, &mut b);
        assert_eq!(s.next, 5);
        assert_eq!(b.distinct, 4, "1, 2, the late refused 3, 4");
    }

    #[test]
    fn refused_accounting_balances_in_any_order() {
        // Deterministic pseudo-random orders.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for _ in 0..500 {
            let n = 1 + rnd(40);
            let refused: Vec<u64> = (1..=n).filter(|_| rnd(4) == 0).collect();
            let mut arrivals: Vec<u64> = (1..=n)
                .filter(|s| !refused.contains(s) || rnd(2) == 0)
                .collect();
            for i in (1..arrivals.len()).rev() {
                let j = rnd(i as u64 + 1) as usize;
                arrivals.swap(i, j);
            }
            let cut = rnd(arrivals.len() as u64 + 1) as usize;
            let mut sub = SubSeq::new(0, n, 1);
            let mut b = Batch::default();
            let (mut missing, mut delivered) = (0u64, 0u64);
            for &s in &arrivals[..cut] {
                sub.lanes[0].on(s, &mut b);
            }
            for &s in &refused {
                if sub.lanes[0].refuse(s) {
                    delivered += 1;
                } else if sub.lanes[0].refused.binary_search(&s).is_ok() {
                    missing += 1;
                }
            }
            for &s in &arrivals[cut..] {
                sub.lanes[0].on(s, &mut b);
            }
            missing -= b.refused_late;
            delivered += b.refused_late;
            assert!(
                sub.done(),
                "n {n} refused {refused:?} arrivals {arrivals:?} cut {cut}"
            );
            assert_eq!(
                b.distinct + missing,
                n,
                "n {n} refused {refused:?} arrivals {arrivals:?} cut {cut}"
            );
            assert_eq!(missing + delivered, refused.len() as u64);
            assert_eq!(b.duplicates, 0);
        }
    }

    #[test]
    fn lanes_split_a_channel() {
        let s = SubSeq::new(0, 10, 4);
        let e: Vec<u64> = s.lanes.iter().map(|l| l.expected).collect();
        assert_eq!(e, [3, 3, 2, 2]);
        assert_eq!(s.expected(), 10);
    }

    #[test]
    fn sequence_state_counts_gaps_duplicates_and_reordering() {
        let mut s = SeqState::new(5);
        let mut b = Batch::default();
        for seq in [1, 2, 4, 3, 3, 5, 9] {
            s.on(seq, &mut b);
        }
        assert_eq!(b.distinct, 5);
        assert_eq!(b.duplicates, 1);
        assert_eq!(b.out_of_order, 1);
        assert_eq!(b.unexpected, 1);
        assert_eq!(s.next, 6);
        let mut s = SeqState::new(3);
        let mut b = Batch::default();
        s.on(1, &mut b);
        s.on(3, &mut b);
        assert_eq!(s.next, 2, "2 is missing");
    }
}
