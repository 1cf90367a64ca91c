//! One client WebSocket from its upgrade request to its end: the
//! pre-upgrade checks and admission (this file), then the reader
//! ([`reader`], the connection task, with op dispatch in [`dispatch`]) and
//! the writer task ([`writer`]).
//!
//! Before the upgrade: draining, origin, token, the per-user limit and (for
//! a client behind a trusted proxy) the per-address limit, connection slot,
//! then the
//! connection is admitted to the hub and the node waits until it receives
//! the user's traffic; every refusal is an HTTP error and a
//! `gateway_connections_refused_total{reason}` count.
//!
//! Invariant: whatever happens, the connection leaves the hub exactly once
//! and its slot is given back ([`SlotGuard`]), also when the upgrade never
//! happens.

pub mod dispatch;
pub mod proxied;
pub mod reader;
pub mod writer;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Extension, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use tokio::time::timeout;
use tracing::Instrument;

use self::reader::Reader;
use self::writer::{write_loop, CLOSE_GRACE};
use crate::api::ApiError;
use crate::auth::Identity;
use crate::edge::{Admitted, KeyGuard, Refusal};
use crate::hub::frame;
use crate::metrics as m;
use crate::node::ops::AdmitError;
use crate::node::Node;
use crate::outbox::{ConnHandle, Outbox};
use crate::protocol::{close, CloseReason, ErrorCode, ReplyError, ServerFrame};

/// Encode an `error` frame (and count it by code).
pub fn error_frame(id: Option<&Value>, e: &ReplyError) -> Utf8Bytes {
    metrics::counter!(m::ERRORS, "code" => e.code.as_str()).increment(1);
    frame(&ServerFrame::Error {
        id,
        code: e.code,
        message: &e.message,
    })
}

/// Query parameters of `/ws`.
#[derive(Debug, Deserialize)]
pub struct WsQuery {
    token: Option<String>,
    user: Option<String>,
}

/// Holds a connection slot and the connection's place in the hub; gives
/// both back when dropped, whether or not the upgrade happened: the one
/// place a connection leaves the hub.
pub(crate) struct SlotGuard {
    node: Arc<Node>,
    pub(crate) conn: Option<Arc<ConnHandle>>,
    /// The client address's place in the per-address limit (none when the
    /// address is not limited); given back with the slot.
    _ip: Option<KeyGuard<IpAddr>>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.node.hub.remove_conn(&conn);
        }
        self.node.release_slot();
    }
}

pub(crate) fn refuse(reason: &'static str, e: ApiError) -> Response {
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

/// What [`enter`] admitted: the handshake permit (given back once
/// upgraded), the connection slot (and the client address's place), and
/// the client address.
pub(crate) struct Entry {
    pub(crate) permit: Option<tokio::sync::OwnedSemaphorePermit>,
    pub(crate) guard: SlotGuard,
    pub(crate) addr: IpAddr,
}

/// The checks every WebSocket protocol shares before its upgrade: the
/// client address (behind a trusted proxy, its per-address limit, known
/// only now from X-Forwarded-For) and a connection slot. A refusal is the
/// HTTP answer, counted by reason.
pub(crate) fn enter(
    node: &Arc<Node>,
    peer: SocketAddr,
    admitted: Option<Extension<Admitted>>,
    headers: &HeaderMap,
) -> Result<Entry, Box<Response>> {
    let addr = client_addr(node, peer, headers);
    // The socket-level admission took the peer's place.
    let (permit, mut ip_guard) = admitted.map(|Extension(a)| a.take()).unwrap_or_default();
    if node.edge.is_trusted(peer.ip()) && addr != peer.ip() {
        if let Some(key) = node.edge.ip_key(addr) {
            match node.edge.ips.acquire(key) {
                Ok(g) => ip_guard = Some(g),
                Err(r) => {
                    let (reason, body) = match r {
                        Refusal::TooMany => ("ip_limit", "too many connections from this address"),
                        Refusal::TooFast => {
                            ("ip_rate", "too many new connections from this address")
                        }
                    };
                    return Err(Box::new(refuse(
                        reason,
                        ApiError::new(ErrorCode::RateLimited, body),
                    )));
                }
            }
        }
    }
    if !node.take_slot() {
        return Err(Box::new(refuse(
            "max_connections",
            ApiError::new(ErrorCode::Unavailable, "node is at its connection limit"),
        )));
    }
    let guard = SlotGuard {
        node: node.clone(),
        conn: None,
        _ip: ip_guard,
    };
    Ok(Entry {
        permit,
        guard,
        addr,
    })
}

/// The draining and origin checks every WebSocket protocol makes first.
pub(crate) fn check_open(node: &Node, headers: &HeaderMap) -> Result<(), Box<Response>> {
    if node.is_draining() {
        return Err(Box::new(refuse(
            "draining",
            ApiError::new(ErrorCode::Unavailable, "node is draining"),
        )));
    }
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    if let Err(e) = node.auth.check_origin(origin) {
        metrics::counter!(m::AUTH_FAILURES, "reason" => e.label()).increment(1);
        return Err(Box::new(refuse(
            "origin",
            ApiError::new(ErrorCode::Forbidden, e.to_string()),
        )));
    }
    Ok(())
}

/// The upgrade with the node's socket settings (read buffer, largest
/// message and frame), failures logged: every WebSocket protocol's.
pub(crate) fn sized(
    ws: WebSocketUpgrade,
    config: &crate::config::Config,
) -> WebSocketUpgrade<impl axum::extract::ws::OnFailedUpgrade> {
    let max = config.max_message_size;
    ws.read_buffer_size(config.read_buffer_size)
        .max_message_size(max)
        .max_frame_size(max)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "upgrade failed"))
}

/// `GET /ws`.
pub async fn ws_handler(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    admitted: Option<Extension<Admitted>>,
    headers: HeaderMap,
    Query(query): Query<WsQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    if let Err(refused) = check_open(&node, &headers) {
        return *refused;
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::auth::bearer);
    let token = bearer.or(query.token.as_deref());
    let proxied = token.is_none() && node.proxy.has(crate::proxy::HookKind::Connect);
    let mut identity = if proxied {
        let addr = client_addr(&node, peer, &headers);
        match proxied::connect_identity(&node, addr, &headers).await {
            Ok(id) => id,
            Err((reason, e)) => {
                tracing::debug!(peer.addr = %peer, reason, "connection refused: connect proxy");
                return refuse(reason, e);
            }
        }
    } else {
        match node.auth.authenticate(token, query.user.as_deref()) {
            Ok(id) => id,
            Err(e) => {
                metrics::counter!(m::AUTH_FAILURES, "reason" => e.label()).increment(1);
                tracing::debug!(peer.addr = %peer, reason = e.label(), "connection refused: auth");
                return refuse(
                    "auth",
                    ApiError::new(ErrorCode::Unauthorized, e.to_string()),
                );
            }
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
    let Entry {
        permit,
        mut guard,
        addr,
    } = match enter(&node, peer, admitted, &headers) {
        Ok(e) => e,
        Err(refused) => return *refused,
    };
    let id = node.next_conn_id();
    // The info moves to the handle (presence reads it there): the reader's
    // identity does not keep a second copy for the connection's life.
    let (handle, outbox) = ConnHandle::new(
        id.clone(),
        identity.user.as_deref().map(Arc::from),
        identity.info.take(),
        node.config.queue_bytes,
    );
    // First in the queue, before the hub can queue anything for this user.
    handle.push(&frame(&ServerFrame::Welcome {
        conn: &id,
        node: &node.config.node_id,
        user: identity.user.as_deref(),
        ping_interval_ms: node.config.ping_interval.as_millis() as u64,
    }));
    match node.admit(&handle).await {
        Ok(()) => {}
        Err(AdmitError::UserLimit) => {
            tracing::debug!(peer.addr = %peer, user.id = handle.user.as_deref().unwrap_or(""), "connection refused: per-user limit");
            return refuse(
                "user_limit",
                ApiError::new(ErrorCode::RateLimited, "too many connections for this user"),
            );
        }
        Err(AdmitError::Backend(e)) => {
            tracing::debug!(error = %e.message, "connection refused: user topic");
            return refuse(
                "backend",
                ApiError::new(ErrorCode::Unavailable, "backend unavailable"),
            );
        }
    }
    guard.conn = Some(handle.clone());
    sized(ws, &node.config).on_upgrade({
        // Boxed: the upgrade task keeps this closure's captures.
        let state = Box::new((identity, handle, outbox));
        move |socket| {
            // Upgraded: out of the handshake phase.
            drop(permit);
            let (identity, handle, outbox) = *state;
            let tracker = node.shutdown.tracker.clone();
            tracker.track_future(run(socket, node, identity, handle, outbox, addr, guard))
        }
    })
}

/// Run one upgraded connection to its end. A plain fn that does the
/// synchronous setup (split, writer task) before it builds the future: the
/// connection's state machine, held for its whole life, then stores only
/// what the reader needs, not the socket and the arguments as well.
fn run(
    socket: WebSocket,
    node: Arc<Node>,
    identity: Identity,
    handle: Arc<ConnHandle>,
    outbox: Outbox,
    addr: IpAddr,
    guard: SlotGuard,
) -> impl std::future::Future<Output = ()> + Send {
    let span = tracing::info_span!(
        "conn",
        conn.id = %handle.id,
        user.id = identity.user.as_deref().unwrap_or(""),
        peer.addr = %addr
    );
    let (sink, stream) = socket.split();
    let writer =
        node.shutdown
            .tracker
            .spawn(write_loop::<_, writer::V1>(sink, outbox, handle.clone()));
    let reader = Reader::new(node, handle, identity);
    async move {
        let mut reader = reader;
        let node = reader.node.clone();
        let handle = reader.handle.clone();
        // Rare, large futures are boxed so the connection's own state machine
        // (held for its whole life) stays small.
        Box::pin(node.register(&handle)).await;
        metrics::counter!(m::CONNECTIONS_ACCEPTED).increment(1);
        tracing::info!(connections = node.hub.connection_count(), "connected");
        if !reader.identity.subs.is_empty() {
            Box::pin(reader.subscribe_initial()).await;
        }
        let stream = reader.read_loop(stream).await;
        // The peer may have gone first: closing the handle ends the writer.
        handle.close(CloseReason::new(close::NORMAL, "client_closed"));
        let reason = handle
            .close_reason()
            .unwrap_or_else(|| CloseReason::new(close::NORMAL, "client_closed"));
        let channels = reader.take_channels();
        // Unregister and finish the socket concurrently: neither may wait on
        // the other, and both are bounded (backend timeouts, CLOSE_GRACE).
        Box::pin(async {
            tokio::join!(
                node.unregister(&handle, channels.into_iter().map(String::from)),
                finish_socket(stream, writer)
            )
        })
        .await;
        // Webhook before the slot is given back: a drain waits for the slots,
        // then flushes the webhook queue.
        node.webhooks
            .connection_closed(&handle.id, handle.user.as_deref(), &reason);
        // Out of the hub and its slot given back (before the count is logged).
        drop(guard);
        metrics::counter!(m::DISCONNECTS, "reason" => reason.label()).increment(1);
        tracing::info!(
            code = reason.code,
            reason = %reason.reason,
            connections = node.hub.connection_count(),
            "disconnected"
        );
    }
    .instrument(span)
}

/// After a close: wait for the writer (it sends the close frame), then keep
/// reading until the peer's close reply ends the stream, bounded.
pub(crate) async fn finish_socket<S>(mut stream: S, writer: tokio::task::JoinHandle<()>)
where
    S: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let drained = timeout(CLOSE_GRACE, async move {
        let _ = writer.await;
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!("close handshake did not complete in time");
    }
}
