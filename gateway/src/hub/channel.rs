//! One channel's local subscribers and the delivery rule each of them
//! follows.
//!
//! Every subscriber of a channel with history carries the position it has
//! been brought to (the subscribe reply's top, then each publication queued
//! to it). A publication of the same epoch at or below that position is a
//! duplicate and is skipped; the next offset is delivered; a jump past the
//! next offset means publications never reached this node (or were dropped
//! on it), and the connection is closed with `missed_messages` (4005) so the
//! client recovers from the last offset it saw. A new epoch restarts offsets
//! and is delivered. The rule is exact: no time window, so no lag however
//! long can leak a duplicate or hide a gap.
//!
//! A subscriber added by [`Channel::add`] is pending: deliveries are parked
//! until [`Channel::finish`] queues the reply, the replay and then the
//! parked frames under the channel lock, filtered by the same rule.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use parking_lot::Mutex;
use serde_json::value::RawValue;

use crate::metrics as m;
use crate::outbox::ConnHandle;
use crate::protocol::{close, CloseReason};

/// A publication's place in its channel's history stream.
#[derive(Debug, Clone)]
pub struct Position {
    /// Offset in the stream.
    pub offset: u64,
    /// The stream's epoch.
    pub epoch: Arc<str>,
}

/// A publication's place in its stream as it is delivered: borrowed from
/// the publication, so the fan-out allocates nothing per message.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    /// Offset in the stream.
    pub offset: u64,
    /// The stream's epoch.
    pub epoch: &'a str,
}

impl At<'_> {
    fn to_position(self) -> Position {
        Position {
            offset: self.offset,
            epoch: Arc::from(self.epoch),
        }
    }
}

/// What a subscriber's position says about one publication.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Deliver,
    Duplicate,
    Gap,
}

impl Position {
    fn at(&self) -> At<'_> {
        At {
            offset: self.offset,
            epoch: &self.epoch,
        }
    }

    fn judge(&self, next: At<'_>) -> Verdict {
        if self.offset == 0 && self.epoch.is_empty() {
            // Subscribed before the stream existed (a history read of a
            // channel without history answers offset 0, empty epoch): the
            // first publication of whatever epoch starts it is offset 1.
            if next.offset <= 1 {
                Verdict::Deliver
            } else {
                Verdict::Gap
            }
        } else if *self.epoch != *next.epoch {
            // The stream was lost and restarted: offsets start again.
            Verdict::Deliver
        } else if next.offset <= self.offset {
            Verdict::Duplicate
        } else if next.offset == self.offset + 1 {
            Verdict::Deliver
        } else {
            Verdict::Gap
        }
    }

    fn advance(&mut self, to: At<'_>) {
        self.offset = to.offset;
        // Only a new epoch (rare: the stream was lost) allocates.
        if *self.epoch != *to.epoch {
            self.epoch = Arc::from(to.epoch);
        }
    }
}

/// A delivery parked for a subscriber whose subscribe is in progress.
struct Parked {
    position: Option<Position>,
    /// `None` when the subscriber was excluded: nothing to queue, but its
    /// position still moves past the publication.
    frame: Option<Utf8Bytes>,
}

/// The deliveries parked for one pending subscriber (boxed in it, so a
/// live subscriber pays one pointer for this state).
#[derive(Default)]
struct Parking(Vec<Parked>);

struct Subscriber {
    conn: Arc<ConnHandle>,
    /// `Some` while the subscribe is in progress: deliveries wait here.
    pending: Option<Box<Parking>>,
    /// Where this subscriber stands in the channel's stream; `None` on a
    /// channel without history (nothing to filter). Boxed: a live
    /// subscriber of a channel without history costs its key and three
    /// pointers.
    last: Option<Box<Position>>,
    /// Presence info of this subscription (the subscribe hook's `info`),
    /// shown instead of the connection's. Thin-boxed: a subscription
    /// without one pays a pointer.
    info: Option<Box<Box<RawValue>>>,
}

impl Subscriber {
    /// Apply the delivery rule to a positioned frame; returns whether to
    /// queue it. A gap closes the connection.
    fn admit(&mut self, position: Option<At<'_>>) -> bool {
        let (Some(last), Some(next)) = (self.last.as_deref_mut(), position) else {
            return true;
        };
        match last.judge(next) {
            Verdict::Deliver => {
                last.advance(next);
                true
            }
            Verdict::Duplicate => false,
            Verdict::Gap => {
                if self
                    .conn
                    .close(CloseReason::new(close::MISSED_MESSAGES, "missed_messages"))
                {
                    metrics::counter!(m::GAPS).increment(1);
                    tracing::info!(
                        conn.id = %self.conn.id,
                        last = last.offset,
                        next = next.offset,
                        "publications missing before this one; closing so the client recovers"
                    );
                }
                false
            }
        }
    }
}

/// The local subscribers of one channel.
#[derive(Default)]
pub struct Channel {
    subs: Mutex<HashMap<Arc<str>, Subscriber>>,
}

impl Channel {
    /// Add `conn` in pending mode, with the subscription's own presence
    /// `info` if any; false when it was already subscribed.
    pub fn add(&self, conn: &Arc<ConnHandle>, info: Option<Box<RawValue>>) -> bool {
        let mut subs = self.subs.lock();
        if subs.contains_key(&conn.id) {
            return false;
        }
        subs.insert(
            conn.id.clone(),
            Subscriber {
                conn: conn.clone(),
                pending: Some(Box::default()),
                last: None,
                info: info.map(Box::new),
            },
        );
        true
    }

    /// End a pending subscribe: queue `head` (the reply and the replay),
    /// then the parked frames the rule admits from `position` (the reply's
    /// top), and switch to live delivery. False if the subscriber is gone.
    pub fn finish(
        &self,
        conn: &ConnHandle,
        head: Vec<Utf8Bytes>,
        position: Option<Position>,
    ) -> bool {
        let mut subs = self.subs.lock();
        let Some(sub) = subs.get_mut(&conn.id) else {
            return false;
        };
        let parked = sub.pending.take().map(|b| b.0).unwrap_or_default();
        sub.last = position.map(Box::new);
        for f in head {
            if !conn.push(&f) {
                break;
            }
        }
        for p in parked {
            let admitted = sub.admit(p.position.as_ref().map(Position::at));
            if let Some(frame) = p.frame {
                if admitted && !conn.is_closing() {
                    conn.push_reserved(frame);
                } else {
                    conn.release(frame.len());
                }
            }
        }
        true
    }

    /// Remove `conn`; `None` if it was not subscribed, else whether the
    /// channel is now empty.
    pub fn remove(&self, conn: &ConnHandle) -> Option<bool> {
        let mut subs = self.subs.lock();
        let sub = subs.remove(&conn.id)?;
        for p in sub.pending.into_iter().flat_map(|b| b.0) {
            if let Some(frame) = p.frame {
                conn.release(frame.len());
            }
        }
        Some(subs.is_empty())
    }

    /// Subscribers (pending ones included).
    pub fn len(&self) -> usize {
        self.subs.lock().len()
    }

    /// Whether no connection is subscribed.
    pub fn is_empty(&self) -> bool {
        self.subs.lock().is_empty()
    }

    /// Whether `conn` is subscribed and its subscribe has finished.
    pub fn is_live(&self, conn: &str) -> bool {
        self.subs
            .lock()
            .get(conn)
            .is_some_and(|s| s.pending.is_none())
    }

    /// Call `f` for every subscriber's connection, under the channel lock.
    pub fn for_each(&self, mut f: impl FnMut(&ConnHandle)) {
        for sub in self.subs.lock().values() {
            f(&sub.conn);
        }
    }

    /// Call `f` for every subscriber's connection and the subscription's
    /// own presence info (if any), under the channel lock.
    pub fn for_each_member(&self, mut f: impl FnMut(&ConnHandle, Option<&RawValue>)) {
        for sub in self.subs.lock().values() {
            f(&sub.conn, sub.info.as_deref().map(|b| &**b));
        }
    }

    /// Queue `frame` to every subscriber but `exclude`, following the
    /// delivery rule (pending subscribers park it). The excluded subscriber
    /// still moves its position past the publication: skipping its own
    /// publication is not a gap. Returns the frames queued or parked.
    pub fn fan_out(
        &self,
        frame: &Utf8Bytes,
        position: Option<At<'_>>,
        exclude: Option<&str>,
    ) -> u64 {
        let mut delivered = 0;
        let mut subs = self.subs.lock();
        for (id, sub) in subs.iter_mut() {
            let excluded = exclude == Some(&**id);
            if let Some(parked) = &mut sub.pending {
                let frame = if excluded {
                    if position.is_none() {
                        // Nothing to queue and no position to move.
                        continue;
                    }
                    None
                } else if sub.conn.reserve(frame.len()) {
                    delivered += 1;
                    Some(frame.clone())
                } else {
                    // The queue is full: the connection is closing as a
                    // slow consumer, nothing more to park.
                    continue;
                };
                parked.0.push(Parked {
                    position: position.map(At::to_position),
                    frame,
                });
                continue;
            }
            if sub.admit(position) && !excluded && sub.conn.push(frame) {
                delivered += 1;
            }
        }
        delivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(offset: u64, epoch: &str) -> Position {
        At { offset, epoch }.to_position()
    }

    #[test]
    fn the_rule_is_exact() {
        let last = pos(5, "e");
        let at = |offset, epoch| At { offset, epoch };
        assert_eq!(last.judge(at(5, "e")), Verdict::Duplicate);
        assert_eq!(last.judge(at(1, "e")), Verdict::Duplicate);
        assert_eq!(last.judge(at(6, "e")), Verdict::Deliver);
        assert_eq!(last.judge(at(8, "e")), Verdict::Gap);
        assert_eq!(last.judge(at(1, "f")), Verdict::Deliver);
    }

    #[test]
    fn a_subscriber_of_a_channel_without_stream_expects_offset_1() {
        let empty = pos(0, "");
        let at = |offset, epoch| At { offset, epoch };
        assert_eq!(empty.judge(at(1, "f")), Verdict::Deliver);
        assert_eq!(empty.judge(at(2, "f")), Verdict::Gap);
    }
}
