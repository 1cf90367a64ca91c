//! The per-connection send side shared with the rest of the node: a queue of
//! encoded frames bounded in bytes, and the connection's close signal.
//!
//! Producers (hub fan-out, replies) never wait: [`ConnHandle::push`] either
//! queues the frame or, when the queue would pass its byte limit, closes the
//! connection as a slow consumer (code 4001) so that one stuck client never
//! delays the others. The connection's writer task is the only consumer and
//! gives the bytes back as it writes them.
//!
//! Invariant: `queued` equals the bytes of frames accepted and not yet
//! written (including frames parked in a subscribe's recovery buffer).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use parking_lot::Mutex;
use serde_json::value::RawValue;
use tokio::sync::Notify;

use crate::protocol::{close, CloseReason};

/// The node's handle on one connection.
pub struct ConnHandle {
    /// Connection id (`<node>.<boot>.<seq>`).
    pub id: Arc<str>,
    /// Authenticated user id, `None` for anonymous.
    pub user: Option<Arc<str>>,
    /// The token's `info` claim, shown in presence.
    pub info: Option<Box<RawValue>>,
    /// Frames to write, in order. A plain deque (no channel) so an idle
    /// connection holds no preallocated queue block.
    frames: Mutex<VecDeque<Utf8Bytes>>,
    ready: Notify,
    queued: AtomicUsize,
    limit: usize,
    close_reason: Mutex<Option<CloseReason>>,
    /// Set with the close reason; an atomic so the fan-out hot path does not
    /// take the token's lock.
    closing: AtomicBool,
    /// Wakes [`ConnHandle::closed`] waiters (inline: no token allocation
    /// per connection).
    closed: Notify,
    /// Set by the node's pinger; the writer sends a WebSocket ping.
    ping_due: AtomicBool,
    /// A Pusher connection (docs/pusher.md): v1 broadcasts skip it. (In
    /// the padding after the flags: no cost.)
    pusher: bool,
    /// Server-side (un)subscriptions for the connection's own task (the
    /// reader owns the channel list), at most [`CONTROL_QUEUE`]. Queuing
    /// one wakes the `closed` waiters (see [`ConnHandle::attention`]): no
    /// second `Notify`, and the reader keeps a single waiter.
    /// Boxed, and only while requests are queued: most connections never
    /// get one. (A `VecDeque` inline would cost every connection 32 bytes.)
    #[allow(clippy::box_collection)]
    control: Mutex<Option<Box<VecDeque<Control>>>>,
}

/// Server-side subscription requests one connection may hold queued; past
/// it a request is dropped and counted (`reason="control_full"`).
pub const CONTROL_QUEUE: usize = 32;

/// A server-side (un)subscription for a connection's reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    /// The channel.
    pub channel: Box<str>,
    /// Subscribe (true) or unsubscribe (false).
    pub subscribe: bool,
}

impl Control {
    /// A request for `channel`.
    pub fn new(channel: &str, subscribe: bool) -> Self {
        Self {
            channel: channel.into(),
            subscribe,
        }
    }
}

/// The writer's end of a [`ConnHandle`]'s queue (there is exactly one).
pub struct Outbox {
    handle: Arc<ConnHandle>,
}

impl Outbox {
    /// Move up to `max` queued frames into `buf`, waiting while there are
    /// none and no ping is due (then it returns 0). Cancel-safe: nothing is
    /// taken unless it is returned.
    pub async fn recv_many(&mut self, buf: &mut VecDeque<Utf8Bytes>, max: usize) -> usize {
        let handle = self.handle.clone();
        loop {
            let notified = handle.ready.notified();
            if let Some(n) = self.try_recv_many(buf, max) {
                return n;
            }
            if handle.ping_due.load(Ordering::Acquire) {
                return 0;
            }
            notified.await;
        }
    }

    /// Move up to `max` queued frames into `buf` without waiting; `None`
    /// when the queue is empty.
    ///
    /// When everything fits and `buf` is empty the two deques are swapped
    /// (no copy), so the queue's allocation travels to the writer and the
    /// queue gets `buf`'s: a writer that drops its emptied buffer leaves an
    /// idle connection holding no queue memory at all.
    pub fn try_recv_many(&mut self, buf: &mut VecDeque<Utf8Bytes>, max: usize) -> Option<usize> {
        let mut frames = self.handle.frames.lock();
        if frames.is_empty() {
            return None;
        }
        let n = frames.len().min(max);
        if buf.is_empty() && n == frames.len() {
            std::mem::swap(&mut *frames, buf);
        } else {
            buf.extend(frames.drain(..n));
        }
        Some(n)
    }
}

impl ConnHandle {
    /// A handle whose queue holds at most `limit` bytes.
    pub fn new(
        id: Arc<str>,
        user: Option<Arc<str>>,
        info: Option<Box<RawValue>>,
        limit: usize,
    ) -> (Arc<Self>, Outbox) {
        Self::build(id, user, info, limit, false)
    }

    /// The handle of a Pusher connection (socket id `id`).
    pub fn pusher(id: Arc<str>, limit: usize) -> (Arc<Self>, Outbox) {
        Self::build(id, None, None, limit, true)
    }

    /// Whether this is a Pusher connection.
    pub fn is_pusher(&self) -> bool {
        self.pusher
    }

    fn build(
        id: Arc<str>,
        user: Option<Arc<str>>,
        info: Option<Box<RawValue>>,
        limit: usize,
        pusher: bool,
    ) -> (Arc<Self>, Outbox) {
        let handle = Arc::new(Self {
            id,
            user,
            info,
            frames: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            queued: AtomicUsize::new(0),
            limit,
            close_reason: Mutex::new(None),
            closing: AtomicBool::new(false),
            closed: Notify::new(),
            ping_due: AtomicBool::new(false),
            pusher,
            control: Mutex::new(None),
        });
        let outbox = Outbox {
            handle: handle.clone(),
        };
        (handle, outbox)
    }

    /// Reserve room for `len` bytes; on overflow close as a slow consumer.
    pub fn reserve(&self, len: usize) -> bool {
        let prev = self.queued.fetch_add(len, Ordering::Relaxed);
        if prev + len > self.limit {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            if self.close(CloseReason::new(close::SLOW_CONSUMER, "slow_consumer")) {
                metrics::counter!(crate::metrics::SLOW_CONSUMERS).increment(1);
                tracing::info!(conn.id = %self.id, queued = prev, limit = self.limit, "slow consumer, closing");
            }
            return false;
        }
        true
    }

    /// Queue a frame whose bytes were already reserved.
    pub fn push_reserved(&self, frame: Utf8Bytes) {
        self.frames.lock().push_back(frame);
        self.ready.notify_one();
    }

    /// Queue a frame; false when it was dropped (queue full or closed).
    pub fn push(&self, frame: &Utf8Bytes) -> bool {
        if self.is_closing() {
            return false;
        }
        if !self.reserve(frame.len()) {
            metrics::counter!(crate::metrics::DROPPED, "reason" => "queue_full").increment(1);
            return false;
        }
        self.push_reserved(frame.clone());
        true
    }

    /// Give back `len` bytes after the writer wrote them (or a reservation
    /// was abandoned).
    pub fn release(&self, len: usize) {
        self.queued.fetch_sub(len, Ordering::Relaxed);
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Ask the connection to close with `reason`. The first reason wins;
    /// returns whether this call set it.
    pub fn close(&self, reason: CloseReason) -> bool {
        let mut slot = self.close_reason.lock();
        if slot.is_some() {
            return false;
        }
        *slot = Some(reason);
        drop(slot);
        self.closing.store(true, Ordering::Release);
        self.closed.notify_waiters();
        true
    }

    /// Queue a server-side (un)subscription for the reader; false when the
    /// connection is closing or its control queue is full (counted).
    pub fn control(&self, c: Control) -> bool {
        if self.is_closing() {
            return false;
        }
        let mut slot = self.control.lock();
        let q = slot.get_or_insert_with(Box::default);
        if q.len() >= CONTROL_QUEUE {
            drop(slot);
            metrics::counter!(crate::metrics::DROPPED, "reason" => "control_full").increment(1);
            tracing::debug!(conn.id = %self.id, "control queue full, server-side subscription dropped");
            return false;
        }
        q.push_back(c);
        drop(slot);
        // Every waiter of `closed` wakes; those waiting for the close alone
        // see it is not and wait again (rare: HTTP API requests only).
        self.closed.notify_waiters();
        true
    }

    /// Take the next queued control request.
    pub fn take_control(&self) -> Option<Control> {
        let mut slot = self.control.lock();
        let q = slot.as_mut()?;
        let c = q.pop_front();
        if q.is_empty() {
            // Back to no allocation: `Some` means requests are queued.
            *slot = None;
        }
        c
    }

    /// Resolves once the connection is closing or a control request is
    /// queued (the reader's one waiter for both).
    pub async fn attention(&self) {
        loop {
            // Created before the checks: `notify_waiters` wakes every
            // `Notified` that exists when it runs, polled or not.
            let notified = self.closed.notified();
            if self.is_closing() || self.control.lock().is_some() {
                return;
            }
            notified.await;
        }
    }

    /// Ask the writer to send a WebSocket ping.
    pub fn request_ping(&self) {
        self.ping_due.store(true, Ordering::Release);
        self.ready.notify_one();
    }

    /// Take a pending ping request.
    pub fn take_ping(&self) -> bool {
        self.ping_due.swap(false, Ordering::AcqRel)
    }

    /// Whether [`ConnHandle::close`] was called (cheap: one atomic load).
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// The close reason, once [`ConnHandle::close`] was called.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.close_reason.lock().clone()
    }

    /// Resolves when [`ConnHandle::close`] was called (at once if it was).
    pub async fn closed(&self) {
        loop {
            // Created before the check: `notify_waiters` wakes every
            // `Notified` that exists when it runs, polled or not.
            let notified = self.closed.notified();
            if self.is_closing() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_closes_as_slow_consumer_and_keeps_accounting() {
        let (h, mut out) = ConnHandle::new("n.1.1".into(), None, None, 10);
        let f = Utf8Bytes::from_static("123456");
        assert!(h.push(&f));
        assert_eq!(h.queued_bytes(), 6);
        assert!(!h.push(&f));
        assert_eq!(h.queued_bytes(), 6);
        assert_eq!(h.close_reason().unwrap().code, close::SLOW_CONSUMER);
        assert!(h.is_closing());
        let mut got = VecDeque::new();
        assert_eq!(out.try_recv_many(&mut got, 10), Some(1));
        h.release(got[0].len());
        assert_eq!(h.queued_bytes(), 0);
        assert!(!h.push(&f), "closed handles take nothing");
    }

    #[test]
    fn the_pusher_flag_costs_no_bytes() {
        // The flag sits in the padding after the atomics (issue 14): an
        // idle connection must not grow.
        assert_eq!(std::mem::size_of::<ConnHandle>(), 232);
        let (h, _out) = ConnHandle::pusher("1.2".into(), 10);
        assert!(h.is_pusher());
    }

    #[test]
    fn first_close_reason_wins() {
        let (h, _out) = ConnHandle::new("n.1.1".into(), None, None, 10);
        assert!(h.close(CloseReason::new(1001, "shutdown")));
        assert!(!h.close(CloseReason::new(4001, "slow_consumer")));
        assert_eq!(h.close_reason().unwrap().code, 1001);
    }
}
