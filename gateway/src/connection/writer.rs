//! The connection's writer task: drains the handle's queue in batches (feed
//! every frame, flush once), sends the pings the node's pinger asks for,
//! and sends the close frame once the handle is closed. Generic over the
//! socket's `Sink`, so unit tests drive it with a channel.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::{Sink, SinkExt};
use tokio::time::timeout;

use crate::metrics as m;
use crate::outbox::{ConnHandle, Outbox};
use crate::protocol::{close, CloseReason};

/// Frames written per flush at most.
const WRITE_BATCH: usize = 64;
/// How long a close may take: finishing the write in flight, the close
/// frame, and the peer's close reply.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// How a wire protocol ends a connection: the close frame for a close
/// reason (the node's reasons carry v1 codes), and a last text frame
/// before it, if the protocol sends one.
pub trait Farewell {
    /// The reason as this protocol's close frame says it.
    fn close(reason: CloseReason) -> CloseReason;
    /// A frame to send just before the close frame.
    fn last_frame(reason: &CloseReason) -> Option<Utf8Bytes>;
}

/// The v1 protocol: the reason as is, no last frame.
pub struct V1;

impl Farewell for V1 {
    fn close(reason: CloseReason) -> CloseReason {
        reason
    }
    fn last_frame(_: &CloseReason) -> Option<Utf8Bytes> {
        None
    }
}

/// Drain the queue in batches, send pings, and send the close frame once
/// the handle is closed (as protocol `F` says it).
pub async fn write_loop<S, F: Farewell>(mut sink: S, mut outbox: Outbox, handle: Arc<ConnHandle>)
where
    S: Sink<Message> + Unpin,
{
    let mut batch: VecDeque<Utf8Bytes> = VecDeque::new();
    {
        // Created once (see the reader); it must not be polled again after
        // it fired, so every path that sees it fire leaves the loop.
        let closed = handle.closed();
        tokio::pin!(closed);
        loop {
            tokio::select! {
                biased;
                _ = &mut closed => break,
                _ = outbox.recv_many(&mut batch, WRITE_BATCH) => {
                    // Pings come from the node's pinger (no timer per connection).
                    let ping = handle.take_ping();
                    let write = write_batch(&mut sink, &mut batch, &handle, ping);
                    let written = tokio::select! {
                        ok = write => Some(ok),
                        _ = &mut closed => None,
                    };
                    let Some(ok) = written else {
                        // Closed while stuck on a slow socket: give the write in
                        // flight a bounded chance, so the close frame can follow.
                        // Boxed, like the close below: rare paths must not grow
                        // the state every idle connection holds.
                        batch.clear();
                        let flushed = Box::pin(timeout(CLOSE_GRACE, sink.flush()))
                            .await
                            .is_ok_and(|r| r.is_ok());
                        if flushed {
                            break;
                        }
                        handle.close(CloseReason::new(close::NORMAL, "write_failed"));
                        return;
                    };
                    if !ok {
                        handle.close(CloseReason::new(close::NORMAL, "write_failed"));
                        return;
                    }
                    // A busy connection keeps its buffer (it and the queue's
                    // swap back and forth without allocating); one that went
                    // quiet drops it, so idle connections hold no queue memory
                    // (see `Outbox::try_recv_many`).
                    if handle.queued_bytes() == 0 {
                        batch = VecDeque::new();
                    }
                }
            }
        }
    }
    Box::pin(send_close::<S, F>(sink, outbox, batch, handle)).await;
}

/// After the handle was closed: deliver what was queued (unless the
/// connection is a slow consumer), then send the close frame.
async fn send_close<S, F: Farewell>(
    mut sink: S,
    mut outbox: Outbox,
    mut batch: VecDeque<Utf8Bytes>,
    handle: Arc<ConnHandle>,
) where
    S: Sink<Message> + Unpin,
{
    let reason = handle
        .close_reason()
        .unwrap_or_else(|| CloseReason::new(close::NORMAL, "normal"));
    if reason.code != close::SLOW_CONSUMER {
        // A deliberate close (error reply, API disconnect, drain) delivers
        // what was queued before it; a slow consumer's queue is dropped.
        batch.clear();
        while outbox.try_recv_many(&mut batch, usize::MAX).is_some() {}
        if !batch.is_empty() {
            let _ = timeout(
                CLOSE_GRACE,
                write_batch(&mut sink, &mut batch, &handle, false),
            )
            .await;
        }
    }
    if let Some(last) = F::last_frame(&reason) {
        let _ = timeout(CLOSE_GRACE, sink.send(Message::Text(last))).await;
    }
    let reason = F::close(reason);
    let frame = CloseFrame {
        code: reason.code,
        reason: Utf8Bytes::from(reason.reason),
    };
    let _ = timeout(CLOSE_GRACE, sink.send(Message::Close(Some(frame)))).await;
}

/// Feed a batch and flush once; gives the bytes back to the handle.
async fn write_batch<S>(
    sink: &mut S,
    batch: &mut VecDeque<Utf8Bytes>,
    handle: &ConnHandle,
    ping: bool,
) -> bool
where
    S: Sink<Message> + Unpin,
{
    if ping && sink.feed(Message::Ping(Default::default())).await.is_err() {
        return false;
    }
    let mut bytes = 0;
    let mut by_type = [0u64; m::SENT_TYPES.len()];
    for f in batch.drain(..) {
        bytes += f.len();
        by_type[m::sent_type(f.as_bytes())] += 1;
        if sink.feed(Message::Text(f)).await.is_err() {
            handle.release(bytes);
            return false;
        }
    }
    let ok = sink.flush().await.is_ok();
    handle.release(bytes);
    let hot = m::hot();
    for (counter, n) in hot.sent.iter().zip(by_type) {
        if n > 0 {
            counter.increment(n);
        }
    }
    hot.bytes_out.increment(bytes as u64);
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;
    use tokio_util::sync::PollSender;

    #[tokio::test(start_paused = true)]
    async fn writes_in_order_pings_on_request_and_ends_with_the_close_frame() {
        let (handle, outbox) = ConnHandle::new("n.1.1".into(), None, None, 1 << 20);
        let (tx, mut rx) = mpsc::channel::<Message>(16);
        let writer = tokio::spawn(write_loop::<_, V1>(
            PollSender::new(tx),
            outbox,
            handle.clone(),
        ));
        handle.push(&Utf8Bytes::from_static("one"));
        handle.push(&Utf8Bytes::from_static("two"));
        assert_eq!(rx.recv().await, Some(Message::Text("one".into())));
        assert_eq!(rx.recv().await, Some(Message::Text("two".into())));
        assert_eq!(handle.queued_bytes(), 0, "written bytes are given back");
        handle.request_ping();
        assert!(matches!(rx.recv().await, Some(Message::Ping(_))));
        handle.push(&Utf8Bytes::from_static("last"));
        handle.close(CloseReason::new(close::DISCONNECTED, "bye"));
        // A deliberate close still delivers what was queued before it.
        let mut rest = Vec::new();
        while let Some(m) = rx.recv().await {
            rest.push(m);
        }
        assert_eq!(rest.first(), Some(&Message::Text("last".into())));
        match rest.last() {
            Some(Message::Close(Some(f))) => {
                assert_eq!(f.code, close::DISCONNECTED);
                assert_eq!(f.reason.as_str(), "bye");
            }
            other => panic!("expected a close frame, got {other:?}"),
        }
        assert!(writer.await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_consumer_gets_the_close_frame_without_its_backlog() {
        let (handle, outbox) = ConnHandle::new("n.1.2".into(), None, None, 8);
        let (tx, mut rx) = mpsc::channel::<Message>(1);
        let writer = tokio::spawn(write_loop::<_, V1>(
            PollSender::new(tx),
            outbox,
            handle.clone(),
        ));
        // Queued faster than the writer runs: the third passes the limit.
        assert!(handle.push(&Utf8Bytes::from_static("1234")));
        assert!(handle.push(&Utf8Bytes::from_static("5678")));
        assert!(!handle.push(&Utf8Bytes::from_static("abcd")));
        assert_eq!(
            handle.close_reason().map(|r| r.code),
            Some(close::SLOW_CONSUMER)
        );
        let mut got = Vec::new();
        while let Some(m) = rx.recv().await {
            got.push(m);
        }
        // The backlog of a slow consumer is dropped, the close frame is not.
        assert!(
            !got.iter().any(|m| matches!(m, Message::Text(_))),
            "{got:?}"
        );
        assert!(
            matches!(got.last(), Some(Message::Close(Some(f))) if f.code == close::SLOW_CONSUMER),
            "{got:?}"
        );
        assert!(writer.await.is_ok());
    }
}
