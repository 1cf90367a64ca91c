//! One client WebSocket: the pre-upgrade checks, the reader loop (this
//! task) and the writer task.
//!
//! - Before the upgrade: draining, origin, token, connection slot and the
//!   node's reference on the user topic; every refusal is an HTTP error and
//!   a `gateway_connections_refused_total{reason}` count.
//! - The reader parses frames, applies the rate limit, runs ops one at a
//!   time (replies are queued in op order), watches heartbeat and token
//!   expiry, and after a close keeps reading until the stream ends so the
//!   close handshake completes.
//! - The writer drains everything queued and flushes once per batch, sends
//!   server pings, and sends the close frame when the handle is closed.
//!
//! Invariant: whatever happens, the connection is unregistered exactly once
//! and its slot and user-topic reference are given back ([`SlotGuard`]).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use tokio::time::{sleep_until, timeout, Instant};
use tracing::Instrument;

use crate::api::ApiError;
use crate::auth::Identity;
use crate::backplane::Topic;
use crate::hub::frame;
use crate::metrics as m;
use crate::node::{error_frame, Node};
use crate::outbox::{ConnHandle, Outbox};
use crate::protocol::{
    close, parse_request, ClientOp, CloseReason, ErrorCode, ReplyError, ServerFrame,
};
use crate::ratelimit::{RateLimiter, Verdict};

/// Frames written per flush at most.
const WRITE_BATCH: usize = 64;
/// How long a close may take: finishing the write in flight, the close
/// frame, and the peer's close reply.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// Query parameters of `/ws`.
#[derive(Debug, Deserialize)]
pub struct WsQuery {
    token: Option<String>,
    user: Option<String>,
}

/// Holds a connection slot and the node's reference on the user topic;
/// gives both back when dropped (also when the upgrade never happens).
struct SlotGuard {
    node: Arc<Node>,
    user: Option<String>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.node.release_slot();
        if let Some(user) = self.user.take() {
            let node = self.node.clone();
            self.node.shutdown.tracker.spawn(async move {
                node.backplane.unsubscribe(Topic::User(user)).await;
            });
        }
    }
}

fn refuse(reason: &'static str, e: ApiError) -> Response {
    metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => reason).increment(1);
    e.into_response()
}

/// The client address: the socket peer, or the last X-Forwarded-For hop
/// when the peer is a trusted proxy.
pub fn client_addr(node: &Node, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    if node.config.trusted_proxies.contains(&peer.ip()) {
        if let Some(ip) = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse::<IpAddr>().ok())
        {
            return ip;
        }
    }
    peer.ip()
}

/// `GET /ws`.
pub async fn ws_handler(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<WsQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    if node.is_draining() {
        return refuse(
            "draining",
            ApiError::new(ErrorCode::Unavailable, "node is draining"),
        );
    }
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    if let Err(e) = node.auth.check_origin(origin) {
        metrics::counter!(m::AUTH_FAILURES, "reason" => e.label()).increment(1);
        return refuse("origin", ApiError::new(ErrorCode::Forbidden, e.to_string()));
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let token = bearer.or(query.token.as_deref());
    let identity = match node.auth.authenticate(token, query.user.as_deref()) {
        Ok(id) => id,
        Err(e) => {
            metrics::counter!(m::AUTH_FAILURES, "reason" => e.label()).increment(1);
            tracing::debug!(peer.addr = %peer, reason = e.label(), "connection refused: auth");
            return refuse(
                "auth",
                ApiError::new(ErrorCode::Unauthorized, e.to_string()),
            );
        }
    };
    if let Some(user) = &identity.user {
        if user.len() > 255 {
            return refuse(
                "auth",
                ApiError::new(ErrorCode::Unauthorized, "user id too long"),
            );
        }
    }
    if !node.take_slot() {
        return refuse(
            "max_connections",
            ApiError::new(ErrorCode::Unavailable, "node is at its connection limit"),
        );
    }
    let mut guard = SlotGuard {
        node: node.clone(),
        user: None,
    };
    if let Some(user) = &identity.user {
        if let Err(e) = node.backplane.subscribe(Topic::User(user.clone())).await {
            metrics::counter!(m::BACKEND_ERRORS, "op" => "subscribe_user").increment(1);
            tracing::debug!(error = %e, "connection refused: user topic");
            return refuse(
                "backend",
                ApiError::new(ErrorCode::Unavailable, "backend unavailable"),
            );
        }
        guard.user = Some(user.clone());
    }
    let addr = client_addr(&node, peer, &headers);
    let max = node.config.max_message_size;
    ws.read_buffer_size(node.config.read_buffer_size)
        .max_message_size(max)
        .max_frame_size(max)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "upgrade failed"))
        .on_upgrade({
            // Boxed: the upgrade task keeps this closure's captures.
            let identity = Box::new(identity);
            move |socket| {
                let tracker = node.shutdown.tracker.clone();
                tracker.track_future(run(socket, node, *identity, addr, guard))
            }
        })
}

/// Run one connection to its end. A plain fn that does the synchronous
/// setup (queue, welcome, split, writer task) before it builds the future:
/// the connection's state machine, held for its whole life, then stores only
/// what the reader needs, not the socket and the arguments as well.
fn run(
    socket: WebSocket,
    node: Arc<Node>,
    identity: Identity,
    addr: IpAddr,
    guard: SlotGuard,
) -> impl std::future::Future<Output = ()> + Send {
    let id = node.next_conn_id();
    let span = tracing::info_span!(
        "conn",
        conn.id = %id,
        user.id = identity.user.as_deref().unwrap_or(""),
        peer.addr = %addr
    );
    let (handle, outbox) = ConnHandle::new(
        id.clone(),
        identity.user.as_deref().map(Arc::from),
        identity.info.clone(),
        node.config.queue_bytes,
    );
    handle.push(&frame(&ServerFrame::Welcome {
        conn: &id,
        node: &node.config.node_id,
        user: identity.user.as_deref(),
        ping_interval_ms: node.config.ping_interval.as_millis() as u64,
    }));
    let (sink, stream) = socket.split();
    let writer = node
        .shutdown
        .tracker
        .spawn(write_loop(sink, outbox, handle.clone()));
    let reader = Reader {
        limiter: RateLimiter::new(node.config.rate_limit, node.config.rate_burst),
        node,
        handle,
        identity,
        channels: Vec::new(),
    };
    async move {
        let mut reader = reader;
        let node = reader.node.clone();
        let handle = reader.handle.clone();
        // Rare, large futures are boxed so the connection's own state machine
        // (held for its whole life) stays small.
        Box::pin(node.register(&handle)).await;
        metrics::counter!(m::CONNECTIONS_ACCEPTED).increment(1);
        tracing::info!(connections = node.hub.connection_count(), "connected");
        let stream = reader.read_loop(stream).await;
        // The peer may have gone first: closing the handle ends the writer.
        handle.close(CloseReason::new(close::NORMAL, "client_closed"));
        let reason = handle
            .close_reason()
            .unwrap_or_else(|| CloseReason::new(close::NORMAL, "client_closed"));
        let channels = std::mem::take(&mut reader.channels);
        // Unregister and finish the socket concurrently: neither may wait on
        // the other, and both are bounded (backend timeouts, CLOSE_GRACE).
        Box::pin(async {
            tokio::join!(
                node.unregister(&handle, channels.into_iter().map(String::from)),
                finish_socket(stream, writer)
            )
        })
        .await;
        metrics::counter!(m::DISCONNECTS, "reason" => reason.label()).increment(1);
        tracing::info!(
            code = reason.code,
            reason = %reason.reason,
            connections = node.hub.connection_count(),
            "disconnected"
        );
        drop(guard);
    }
    .instrument(span)
}

/// After a close: wait for the writer (it sends the close frame), then keep
/// reading until the peer's close reply ends the stream, bounded.
async fn finish_socket(mut stream: SplitStream<WebSocket>, writer: tokio::task::JoinHandle<()>) {
    let drained = timeout(CLOSE_GRACE, async move {
        let _ = writer.await;
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!("close handshake did not complete in time");
    }
}

struct Reader {
    node: Arc<Node>,
    handle: Arc<ConnHandle>,
    identity: Identity,
    /// Subscribed channels (a few per connection, at most
    /// `max_channels_per_connection`: a plain vector is smaller than a set).
    channels: Vec<Box<str>>,
    limiter: RateLimiter,
}

impl Reader {
    /// Read until the peer goes away or the handle is closed; returns the
    /// stream for the close handshake.
    async fn read_loop(&mut self, mut stream: SplitStream<WebSocket>) -> SplitStream<WebSocket> {
        let config = self.node.config.clone();
        let silence = config.ping_interval + config.pong_timeout;
        let expires = self.identity.exp.map(|exp| {
            let now = crate::clock::now_us() / 1_000_000;
            // A far-future `exp` (signed by the backend, but still input)
            // must not overflow the clock: cap the wait at a year.
            let left = Duration::from_secs(exp.saturating_sub(now).min(365 * 86_400));
            Instant::now() + left
        });
        // One heartbeat timer for the connection's life, pushed back by every
        // frame (tokio extends a registered timer without touching its
        // wheel), instead of a new timer per frame.
        let heartbeat = sleep_until(Instant::now() + silence);
        let token_expiry = sleep_until(expires.unwrap_or_else(Instant::now));
        // Created once: a new close waiter per frame would lock the
        // handle's `Notify` twice per frame (register, deregister).
        let handle = self.handle.clone();
        let closed = handle.closed();
        tokio::pin!(heartbeat, token_expiry, closed);
        loop {
            tokio::select! {
                biased;
                _ = &mut closed => break,
                _ = &mut token_expiry, if expires.is_some() => {
                    self.handle.close(CloseReason::new(close::TOKEN_EXPIRED, "token_expired"));
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
        }
        stream
    }

    fn on_read_error(&self, e: axum::Error) {
        let text = e.to_string();
        // axum wraps tungstenite's error; an oversized frame is a capacity error.
        let too_large = e
            .into_inner()
            .downcast_ref::<tungstenite::Error>()
            .is_some_and(|t| matches!(t, tungstenite::Error::Capacity(_)));
        if too_large {
            let err = ReplyError::new(ErrorCode::TooLarge, "frame exceeds max_message_size");
            self.handle.push(&error_frame(None, &err));
            self.handle
                .close(CloseReason::new(close::TOO_LARGE, "too_large"));
        } else {
            tracing::debug!(error = %text, "read error");
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
                let e = ReplyError::bad_request("binary frames are not supported; send JSON text");
                self.handle.push(&error_frame(None, &e));
            }
            // Pings are answered by tungstenite; a Close is answered by it
            // too, and the stream then ends: keep polling until it does.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => {}
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
        match self.limiter.check() {
            Verdict::Allow => {}
            Verdict::Refuse => {
                metrics::counter!(m::RATE_LIMITED).increment(1);
                let e = ReplyError::new(ErrorCode::RateLimited, "rate limit exceeded");
                self.handle.push(&error_frame(id.as_ref(), &e));
                return;
            }
            Verdict::Abuse => {
                metrics::counter!(m::RATE_LIMITED).increment(1);
                tracing::info!("sustained rate-limit abuse, closing");
                self.handle.close(CloseReason::new(close::ABUSE, "abuse"));
                return;
            }
        }
        let result = self.on_op(request.op, id.as_ref()).await;
        if let Err(e) = result {
            self.handle.push(&error_frame(id.as_ref(), &e));
        }
    }

    fn check_user(&self, channel: &str, anonymous_ok: bool) -> Result<(), ReplyError> {
        if self.identity.user.is_none() && !anonymous_ok {
            return Err(ReplyError::new(
                ErrorCode::Unauthorized,
                format!("anonymous connections may not use {channel:?}"),
            ));
        }
        Ok(())
    }

    async fn on_op(&mut self, op: ClientOp, id: Option<&Value>) -> Result<(), ReplyError> {
        let node = self.node.clone();
        match op {
            ClientOp::Subscribe { channel, since } => {
                metrics::counter!(m::MESSAGES_RECEIVED, "op" => "subscribe").increment(1);
                let ns = node.namespace(&channel)?;
                self.check_user(&channel, ns.allow_anonymous)?;
                if !self.identity.may_subscribe(&channel) {
                    return Err(ReplyError::new(
                        ErrorCode::Forbidden,
                        "token does not allow this channel",
                    ));
                }
                if self.channels.iter().any(|c| **c == *channel) {
                    return Err(ReplyError::bad_request("already subscribed"));
                }
                if self.channels.len() >= node.config.max_channels_per_connection {
                    return Err(ReplyError::new(
                        ErrorCode::Forbidden,
                        format!(
                            "max_channels_per_connection ({}) reached",
                            node.config.max_channels_per_connection
                        ),
                    ));
                }
                node.subscribe(&self.handle, &channel, since, id).await?;
                self.channels.push(channel.into_boxed_str());
                Ok(())
            }
            ClientOp::Unsubscribe { channel } => {
                metrics::counter!(m::MESSAGES_RECEIVED, "op" => "unsubscribe").increment(1);
                let Some(at) = self.channels.iter().position(|c| **c == *channel) else {
                    return Err(ReplyError::new(ErrorCode::NotFound, "not subscribed"));
                };
                self.channels.swap_remove(at);
                node.unsubscribe(&self.handle, &channel).await;
                self.handle.push(&frame(&ServerFrame::Unsubscribed {
                    id,
                    channel: &channel,
                }));
                Ok(())
            }
            ClientOp::Publish {
                channel,
                data,
                echo,
            } => {
                metrics::counter!(m::MESSAGES_RECEIVED, "op" => "publish").increment(1);
                let ns = node.namespace(&channel)?;
                self.check_user(&channel, ns.allow_anonymous)?;
                if !ns.client_publish {
                    return Err(ReplyError::new(
                        ErrorCode::Forbidden,
                        "clients may not publish in this namespace",
                    ));
                }
                if !self.identity.may_publish(&channel) {
                    return Err(ReplyError::new(
                        ErrorCode::Forbidden,
                        "token does not allow publishing here",
                    ));
                }
                let exclude = (!echo).then(|| self.handle.id.to_string());
                let offset = node
                    .publish(
                        &channel,
                        data,
                        self.identity.user.clone(),
                        exclude,
                        "client",
                    )
                    .await?;
                self.handle
                    .push(&frame(&ServerFrame::Published { id, offset }));
                Ok(())
            }
            ClientOp::Presence { channel } => {
                metrics::counter!(m::MESSAGES_RECEIVED, "op" => "presence").increment(1);
                let ns = node.namespace(&channel)?;
                self.check_user(&channel, ns.allow_anonymous)?;
                if !self.identity.may_subscribe(&channel) {
                    return Err(ReplyError::new(
                        ErrorCode::Forbidden,
                        "token does not allow this channel",
                    ));
                }
                let members = node.presence_members(&channel).await?;
                self.handle.push(&frame(&ServerFrame::Presence {
                    id,
                    channel: &channel,
                    members: &members,
                }));
                Ok(())
            }
            ClientOp::Ping => {
                metrics::counter!(m::MESSAGES_RECEIVED, "op" => "ping").increment(1);
                self.handle.push(&frame(&ServerFrame::Pong { id }));
                Ok(())
            }
        }
    }
}

type Sink = SplitSink<WebSocket, Message>;

/// Drain the queue in batches (feed every frame, flush once), send pings,
/// and send the close frame once the handle is closed.
async fn write_loop(mut sink: Sink, mut outbox: Outbox, handle: Arc<ConnHandle>) {
    let mut batch: VecDeque<Utf8Bytes> = VecDeque::new();
    {
        // Created once (see `Reader::read_loop`); it must not be polled again
        // after it fired, so every path that sees it fire leaves the loop.
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
    Box::pin(send_close(sink, outbox, batch, handle)).await;
}

/// After the handle was closed: deliver what was queued (unless the
/// connection is a slow consumer), then send the close frame.
async fn send_close(
    mut sink: Sink,
    mut outbox: Outbox,
    mut batch: VecDeque<Utf8Bytes>,
    handle: Arc<ConnHandle>,
) {
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
    let frame = CloseFrame {
        code: reason.code,
        reason: Utf8Bytes::from(reason.reason),
    };
    let _ = timeout(CLOSE_GRACE, sink.send(Message::Close(Some(frame)))).await;
}

/// Feed a batch and flush once; gives the bytes back to the handle.
async fn write_batch(
    sink: &mut Sink,
    batch: &mut VecDeque<Utf8Bytes>,
    handle: &ConnHandle,
    ping: bool,
) -> bool {
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
