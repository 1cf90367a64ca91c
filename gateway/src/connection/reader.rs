//! The connection's reader (the connection task itself): reads frames,
//! applies the rate limit, hands ops to [`super::dispatch`] one at a time
//! (replies are queued in op order), watches the heartbeat and the token's
//! expiry, and after a close keeps reading until the stream ends so the
//! close handshake completes. Generic over the socket's `Stream`, so unit
//! tests drive it with a channel on paused time.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes};
use futures_util::{Stream, StreamExt};
use tokio::time::{sleep_until, Instant};

use super::error_frame;
use crate::auth::Identity;
use crate::metrics as m;
use crate::node::Node;
use crate::outbox::ConnHandle;
use crate::protocol::{close, parse_request, CloseReason, ErrorCode, ReplyError};
use crate::ratelimit::{RateLimiter, Verdict};

/// When a token or session expiring at `exp` (Unix seconds) ends, on the
/// tokio clock.
fn deadline(exp: Option<u64>) -> Option<Instant> {
    exp.map(|exp| {
        let now = crate::clock::now_us() / 1_000_000;
        // A far-future `exp` (signed by the backend, but still input)
        // must not overflow the clock: cap the wait at a year.
        let left = Duration::from_secs(exp.saturating_sub(now).min(365 * 86_400));
        Instant::now() + left
    })
}

/// How a failed socket read ends the connection, whatever its protocol:
/// an oversized frame closes with 1009, a text frame that is not UTF-8
/// with 1007 (RFC 6455 section 8.1); `None` for other errors (the peer is
/// gone). Logged at debug.
pub fn read_error_close(e: axum::Error) -> Option<CloseReason> {
    let text = e.to_string();
    // axum wraps tungstenite's error; an oversized frame is a capacity error.
    let inner = e.into_inner();
    let tungstenite = inner.downcast_ref::<tungstenite::Error>();
    if tungstenite.is_some_and(|t| matches!(t, tungstenite::Error::Capacity(_))) {
        tracing::debug!(error = %text, "frame exceeds max_message_size");
        Some(CloseReason::new(close::TOO_LARGE, "too_large"))
    } else if tungstenite.is_some_and(|t| matches!(t, tungstenite::Error::Utf8(_))) {
        tracing::debug!(error = %text, "text frame is not UTF-8");
        Some(CloseReason::new(close::INVALID_PAYLOAD, "invalid_utf8"))
    } else {
        tracing::debug!(error = %text, "read error");
        None
    }
}

/// Retry delay of the refresh hook after it failed (backend down or slow):
/// the session stays open meanwhile.
pub const REFRESH_RETRY_SECS: u64 = 5;

/// What a proxied session's expiry led to.
pub enum SessionOutcome {
    /// Extended to this expiry (Unix seconds).
    Extended(u64),
    /// The backend did not answer: ask again later.
    Retry,
    /// Closed (expired or a disconnect).
    Closed,
}

/// The reader's state: what one connection's ops need.
pub struct Reader {
    pub(super) node: Arc<Node>,
    pub(super) handle: Arc<ConnHandle>,
    pub(super) identity: Identity,
    /// Subscribed channels (a few per connection, at most
    /// `max_channels_per_connection`: a plain vector is smaller than a set).
    pub(super) channels: Vec<Box<str>>,
    pub(super) limiter: RateLimiter,
    /// Subscribes to join/leave channels (each one pushes a join, and later
    /// a leave, to every member): `join_leave_rate` / `join_leave_burst`.
    pub(super) join_leave: RateLimiter,
}

impl Reader {
    /// A reader for `handle`, authenticated as `identity`.
    pub fn new(node: Arc<Node>, handle: Arc<ConnHandle>, identity: Identity) -> Self {
        Self {
            limiter: RateLimiter::new(node.config.rate_limit, node.config.rate_burst),
            join_leave: RateLimiter::new(
                node.config.clients.join_leave_rate,
                node.config.clients.join_leave_burst,
            ),
            node,
            handle,
            identity,
            channels: Vec::new(),
        }
    }

    /// The channels subscribed now (taken when the connection ends).
    pub fn take_channels(&mut self) -> Vec<Box<str>> {
        std::mem::take(&mut self.channels)
    }

    /// Read until the peer goes away or the handle is closed; returns the
    /// stream for the close handshake.
    pub async fn read_loop<S>(&mut self, mut stream: S) -> S
    where
        S: Stream<Item = Result<Message, axum::Error>> + Unpin,
    {
        let config = self.node.config.clone();
        let silence = config.ping_interval + config.pong_timeout;
        let mut exp_seen = self.identity.exp;
        let mut expires = deadline(exp_seen);
        // One heartbeat timer for the connection's life, pushed back by every
        // frame (tokio extends a registered timer without touching its
        // wheel), instead of a new timer per frame.
        let heartbeat = sleep_until(Instant::now() + silence);
        let token_expiry = sleep_until(expires.unwrap_or_else(Instant::now));
        // Created once (again only after a control request): a new waiter
        // per frame would lock the handle's `Notify` twice per frame
        // (register, deregister). One waiter for the close and the
        // server-side subscription requests.
        let handle = self.handle.clone();
        let attention = handle.attention();
        tokio::pin!(heartbeat, token_expiry, attention);
        loop {
            tokio::select! {
                biased;
                _ = &mut attention => {
                    if handle.is_closing() {
                        break;
                    }
                    while let Some(c) = self.handle.take_control() {
                        Box::pin(self.on_control(c)).await;
                    }
                    attention.set(handle.attention());
                }
                _ = &mut token_expiry, if expires.is_some() => {
                    if self.identity.session {
                        // The reader waits for the hook (bounded by its
                        // timeout): the session's frames queue meanwhile.
                        match Box::pin(self.session_expired()).await {
                            SessionOutcome::Extended(_) => {}
                            SessionOutcome::Retry => {
                                let at = Instant::now() + Duration::from_secs(REFRESH_RETRY_SECS);
                                expires = Some(at);
                                token_expiry.as_mut().reset(at);
                            }
                            SessionOutcome::Closed => expires = None,
                        }
                    } else {
                        self.handle.close(CloseReason::new(close::TOKEN_EXPIRED, "token_expired"));
                    }
                }
                _ = &mut heartbeat => {
                    self.handle.close(CloseReason::new(close::HEARTBEAT_TIMEOUT, "heartbeat_timeout"));
                }
                next = stream.next() => match next {
                    None => break,
                    Some(Err(e)) => {
                        self.on_read_error(e);
                        break;
                    }
                    Some(Ok(msg)) => {
                        heartbeat.as_mut().reset(Instant::now() + silence);
                        // Control frames (a pong every ping interval) need
                        // nothing from us: no boxed future for them.
                        if matches!(msg, Message::Text(_) | Message::Binary(_)) {
                            Box::pin(self.on_message(msg)).await;
                        }
                    }
                },
            }
            // A refresh (the `refresh` op, the refresh hook) moved the
            // expiry: move the timer.
            if self.identity.exp != exp_seen {
                exp_seen = self.identity.exp;
                expires = deadline(exp_seen);
                if let Some(at) = expires {
                    token_expiry.as_mut().reset(at);
                }
            }
        }
        stream
    }

    fn on_read_error(&self, e: axum::Error) {
        let reason = read_error_close(e);
        if reason.as_ref().is_some_and(|r| r.code == close::TOO_LARGE) {
            let err = ReplyError::new(ErrorCode::TooLarge, "frame exceeds max_message_size");
            self.handle.push(&error_frame(None, &err));
        } else if reason.is_some() {
            metrics::counter!(m::MESSAGES_RECEIVED, "op" => "invalid").increment(1);
        }
        if let Some(r) = reason {
            self.handle.close(r);
        }
    }

    async fn on_message(&mut self, msg: Message) {
        match msg {
            Message::Text(text) => {
                m::hot().bytes_in.increment(text.len() as u64);
                self.on_text(&text).await;
            }
            Message::Binary(b) => {
                m::hot().bytes_in.increment(b.len() as u64);
                metrics::counter!(m::MESSAGES_RECEIVED, "op" => "binary").increment(1);
                // A refused frame still costs the client a token: otherwise
                // binary frames would be a free flood of error replies.
                if !self.admit(None) {
                    return;
                }
                let e = ReplyError::bad_request("binary frames are not supported; send JSON text");
                self.handle.push(&error_frame(None, &e));
            }
            // Pings are answered by tungstenite; a Close is answered by it
            // too, and the stream then ends: keep polling until it does.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => {}
        }
    }

    /// Take a rate-limit token for one frame; on refusal queue the
    /// `rate_limited` error (or close as abusive) and return false.
    fn admit(&mut self, id: Option<&serde_json::Value>) -> bool {
        match self.limiter.check() {
            Verdict::Allow => true,
            Verdict::Refuse => {
                metrics::counter!(m::RATE_LIMITED).increment(1);
                let e = ReplyError::new(ErrorCode::RateLimited, "rate limit exceeded");
                self.handle.push(&error_frame(id, &e));
                false
            }
            Verdict::Abuse => {
                metrics::counter!(m::RATE_LIMITED).increment(1);
                tracing::info!("sustained rate-limit abuse, closing");
                self.handle.close(CloseReason::new(close::ABUSE, "abuse"));
                false
            }
        }
    }

    async fn on_text(&mut self, text: &Utf8Bytes) {
        let request = match parse_request(text.as_str()) {
            Ok(r) => r,
            Err((id, e)) => {
                metrics::counter!(m::MESSAGES_RECEIVED, "op" => "invalid").increment(1);
                if self.limiter.check() == Verdict::Abuse {
                    self.handle.close(CloseReason::new(close::ABUSE, "abuse"));
                    return;
                }
                tracing::debug!(error = %e.message, "bad request");
                self.handle.push(&error_frame(id.as_ref(), &e));
                return;
            }
        };
        let id = request.id;
        if !self.admit(id.as_ref()) {
            return;
        }
        let result = self.on_op(request.op, id.as_ref()).await;
        if let Err(e) = result {
            self.handle.push(&error_frame(id.as_ref(), &e));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::config::{Config, Settings};
    use crate::outbox::Outbox;
    use crate::shutdown::Shutdown;
    use clap::Parser;
    use tokio::sync::mpsc;

    /// What the socket would yield, fed by a channel.
    fn socket(
        mut rx: mpsc::Receiver<Result<Message, axum::Error>>,
    ) -> impl futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    async fn node(args: &[&str]) -> Arc<Node> {
        let mut v = vec!["gateway"];
        v.extend_from_slice(args);
        let config = Config::from_settings(Settings::try_parse_from(v).unwrap()).unwrap();
        Node::new(config, Shutdown::default()).await.unwrap()
    }

    fn conn(node: &Node, identity: &Identity) -> (Arc<ConnHandle>, Outbox) {
        let (handle, outbox) = ConnHandle::new(
            node.next_conn_id(),
            identity.user.as_deref().map(Arc::from),
            None,
            1 << 20,
        );
        assert!(node.hub.add_conn(&handle));
        (handle, outbox)
    }

    fn frames(outbox: &mut Outbox) -> Vec<String> {
        let mut v = VecDeque::new();
        while outbox.try_recv_many(&mut v, usize::MAX).is_some() {}
        v.into_iter().map(|f| f.as_str().to_owned()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn silence_past_ping_interval_and_pong_timeout_closes_with_4003() {
        let node = node(&["--ping-interval-ms", "1000", "--pong-timeout-ms", "500"]).await;
        let identity = Identity::default();
        let (handle, _outbox) = conn(&node, &identity);
        let (tx, rx) = mpsc::channel(4);
        let mut reader = Reader::new(node, handle.clone(), identity);
        let task = tokio::spawn(async move {
            let _stream = reader.read_loop(socket(rx)).await;
        });
        // A pong inside the window keeps the connection alive.
        tokio::time::sleep(Duration::from_millis(1400)).await;
        tx.send(Ok(Message::Pong(Default::default())))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1400)).await;
        assert!(!handle.is_closing(), "a frame pushed the heartbeat back");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            handle.close_reason().map(|r| r.code),
            Some(close::HEARTBEAT_TIMEOUT)
        );
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_token_expiry_closes_with_4002_at_exp() {
        // Heartbeat far away: only the token's expiry can close.
        let node = node(&["--ping-interval-ms", "600000"]).await;
        let identity = Identity {
            user: Some("u".into()),
            exp: Some(crate::clock::now_us() / 1_000_000 + 60),
            ..Identity::default()
        };
        let (handle, _outbox) = conn(&node, &identity);
        let (_tx, rx) = mpsc::channel(4);
        let mut reader = Reader::new(node, handle.clone(), identity);
        let task = tokio::spawn(async move {
            let _stream = reader.read_loop(socket(rx)).await;
        });
        tokio::time::sleep(Duration::from_secs(58)).await;
        assert!(!handle.is_closing());
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            handle.close_reason().map(|r| r.code),
            Some(close::TOKEN_EXPIRED)
        );
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn ops_are_answered_in_order_and_bad_frames_get_errors() {
        let node = node(&[]).await;
        let identity = Identity {
            user: Some("u".into()),
            ..Identity::default()
        };
        let (handle, mut outbox) = conn(&node, &identity);
        let (tx, rx) = mpsc::channel(8);
        let mut reader = Reader::new(node, handle.clone(), identity);
        for text in [
            r#"{"op":"ping","id":1}"#,
            r#"{"op":"subscribe","id":2,"channel":"room"}"#,
            r#"{"op":"subscribe","id":3,"channel":"room"}"#,
            r#"{"op":"nope","id":4}"#,
            r#"{"op":"unsubscribe","id":5,"channel":"room"}"#,
        ] {
            tx.send(Ok(Message::Text(text.into()))).await.unwrap();
        }
        tx.send(Ok(Message::Binary(vec![1u8].into())))
            .await
            .unwrap();
        drop(tx);
        let _stream = reader.read_loop(socket(rx)).await;
        let got = frames(&mut outbox);
        assert_eq!(got.len(), 6, "{got:?}");
        assert!(got[0].contains(r#""type":"pong""#) && got[0].contains(r#""id":1"#));
        assert!(got[1].contains(r#""type":"subscribed""#));
        assert!(got[2].contains("already subscribed"), "{}", got[2]);
        assert!(got[3].contains(r#""type":"error""#) && got[3].contains(r#""id":4"#));
        assert!(got[4].contains(r#""type":"unsubscribed""#));
        assert!(got[5].contains("binary frames are not supported"));
        assert!(reader.take_channels().is_empty());
    }
}
