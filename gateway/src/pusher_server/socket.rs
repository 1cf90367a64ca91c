//! `GET /app/{key}`: one Pusher connection from its upgrade request to its
//! end. The checks every protocol shares come first (draining, origin, the
//! client address, a connection slot: [`crate::connection`], refused as
//! HTTP errors, which pusher-js retries with backoff). What Pusher refuses
//! inside its protocol (unknown app key, unsupported protocol version, the
//! app's connection quota) is said after the upgrade: a `pusher:error` and
//! a close code in 4000-4099, which tells the client not to retry.
//!
//! Invariant (as for v1): the connection leaves the hub exactly once and
//! its slot and app place are given back, also when the upgrade never
//! happens.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Extension, Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::StreamExt;
use tracing::Instrument;

use super::reader::PusherReader;
use crate::api::ApiError;
use crate::connection::writer::{write_loop, Farewell};
use crate::connection::{check_open, enter, finish_socket, refuse, sized, Entry};
use crate::edge::Admitted;
use crate::metrics as m;
use crate::node::Node;
use crate::outbox::ConnHandle;
use crate::protocol::{close, CloseReason, ErrorCode};
use crate::pusher::apps::{App, AppSlot};
use crate::pusher::wire::Out;

/// Pusher protocol versions served (pusher-js 7 and 8 speak 7).
const PROTOCOLS: std::ops::RangeInclusive<u32> = 5..=7;

/// Pusher's close codes for the node's close reasons (whose codes are
/// v1's), each with a `pusher:error` before the close frame.
pub struct PusherFarewell;

/// The Pusher code for a v1 close code (codes Pusher's reader sets itself
/// pass unchanged).
pub fn pusher_code(code: u16) -> u16 {
    match code {
        // Reconnect with backoff: over capacity.
        close::SLOW_CONSUMER => 4100,
        // Reconnect at once.
        close::SHUTDOWN | close::MISSED_MESSAGES => 4200,
        close::HEARTBEAT_TIMEOUT => 4201,
        // Do not reconnect.
        close::DISCONNECTED | close::TOKEN_EXPIRED => close::UNAUTHORIZED,
        close::ABUSE => 4301,
        other => other,
    }
}

impl Farewell for PusherFarewell {
    fn close(reason: CloseReason) -> CloseReason {
        CloseReason::new(pusher_code(reason.code), reason.reason)
    }

    fn last_frame(reason: &CloseReason) -> Option<Utf8Bytes> {
        let code = pusher_code(reason.code);
        (code >= 4000).then(|| {
            Utf8Bytes::from(
                Out::Error {
                    code: Some(code),
                    message: &reason.reason,
                }
                .encode(),
            )
        })
    }
}

/// The `protocol` query parameter, if it is a supported version: `Err`
/// with Pusher's code (4008 missing, 4007 unsupported, 4006 malformed).
fn protocol_version(query: Option<&str>) -> Result<u32, (u16, &'static str)> {
    let value = query
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("protocol="));
    let Some(v) = value else {
        return Err((4008, "no protocol version supplied"));
    };
    let v: u32 = v
        .parse()
        .map_err(|_| (4006, "invalid version string format"))?;
    if !PROTOCOLS.contains(&v) {
        return Err((4007, "unsupported protocol version"));
    }
    Ok(v)
}

/// Upgrade, then say why the connection cannot stay (a `pusher:error`
/// and close `code`), bounded in time, tracked.
fn refuse_inside(node: &Arc<Node>, ws: WebSocketUpgrade, code: u16, message: String) -> Response {
    let reason = match code {
        4001 => "pusher_app",
        4004 => "pusher_app_quota",
        _ => "pusher_protocol",
    };
    metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => reason).increment(1);
    let tracker = node.shutdown.tracker.clone();
    ws.max_message_size(4096)
        .on_upgrade(move |mut socket: WebSocket| {
            tracker.track_future(async move {
                let bye = async {
                    let error = Out::Error {
                        code: Some(code),
                        message: &message,
                    }
                    .encode();
                    socket.send(Message::Text(error.into())).await?;
                    let frame = CloseFrame {
                        code,
                        reason: Utf8Bytes::from(message.clone()),
                    };
                    socket.send(Message::Close(Some(frame))).await?;
                    while let Some(Ok(_)) = socket.next().await {}
                    Ok::<(), axum::Error>(())
                };
                let _ = tokio::time::timeout(Duration::from_secs(5), bye).await;
            })
        })
}

/// `GET /app/{key}`.
pub async fn handler(
    State(node): State<Arc<Node>>,
    Path(key): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    admitted: Option<Extension<Admitted>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    if let Err(refused) = check_open(&node, &headers) {
        return *refused;
    }
    let Some(app) = node.apps.by_key(&key).cloned() else {
        tracing::debug!(peer.addr = %peer, "pusher connection refused: unknown app key");
        return refuse_inside(&node, ws, 4001, format!("App key {key} does not exist"));
    };
    if let Err((code, message)) = protocol_version(query.as_deref()) {
        return refuse_inside(&node, ws, code, message.to_owned());
    }
    let Some(app_slot) = app.take() else {
        return refuse_inside(
            &node,
            ws,
            4004,
            "App is over its connection quota".to_owned(),
        );
    };
    let Entry {
        permit,
        mut guard,
        addr,
    } = match enter(&node, peer, admitted, &headers) {
        Ok(e) => e,
        Err(refused) => return *refused,
    };
    let id = node.next_socket_id();
    let (handle, outbox) = ConnHandle::pusher(id.clone(), node.config.queue_bytes);
    handle.push(&Utf8Bytes::from(
        Out::Established {
            socket_id: &id,
            activity_timeout: node.apps.activity_timeout_secs,
        }
        .encode(),
    ));
    // No user, so neither the per-user limit nor a user topic can refuse it.
    if node.admit(&handle).await.is_err() {
        return refuse(
            "backend",
            ApiError::new(ErrorCode::Unavailable, "backend unavailable"),
        );
    }
    guard.conn = Some(handle.clone());
    sized(ws, &node.config).on_upgrade({
        let state = Box::new((app, app_slot, handle, outbox));
        move |socket| {
            drop(permit);
            let (app, app_slot, handle, outbox) = *state;
            let tracker = node.shutdown.tracker.clone();
            tracker.track_future(run(
                socket,
                node,
                app,
                handle,
                outbox,
                addr,
                (guard, app_slot),
            ))
        }
    })
}

/// Run one upgraded Pusher connection to its end.
fn run(
    socket: WebSocket,
    node: Arc<Node>,
    app: Arc<App>,
    handle: Arc<ConnHandle>,
    outbox: crate::outbox::Outbox,
    addr: IpAddr,
    guards: (crate::connection::SlotGuard, AppSlot),
) -> impl std::future::Future<Output = ()> + Send {
    let span = tracing::info_span!(
        "conn",
        conn.id = %handle.id,
        app.id = %app.config.id,
        peer.addr = %addr
    );
    let (sink, stream) = socket.split();
    let writer = node.shutdown.tracker.spawn(write_loop::<_, PusherFarewell>(
        sink,
        outbox,
        handle.clone(),
    ));
    let reader = PusherReader::new(node, app, handle);
    async move {
        let mut reader = reader;
        let node = reader.node.clone();
        let handle = reader.handle.clone();
        metrics::counter!(m::CONNECTIONS_ACCEPTED, "protocol" => "pusher").increment(1);
        tracing::info!(
            connections = node.hub.connection_count(),
            "connected (pusher)"
        );
        let stream = reader.read_loop(stream).await;
        handle.close(CloseReason::new(close::NORMAL, "client_closed"));
        let reason = handle
            .close_reason()
            .unwrap_or_else(|| CloseReason::new(close::NORMAL, "client_closed"));
        Box::pin(async { tokio::join!(reader.leave_all(), finish_socket(stream, writer)) }).await;
        drop(guards);
        metrics::counter!(m::DISCONNECTS, "reason" => reason.label(), "protocol" => "pusher")
            .increment(1);
        tracing::info!(
            code = pusher_code(reason.code),
            reason = %reason.reason,
            connections = node.hub.connection_count(),
            "disconnected (pusher)"
        );
    }
    .instrument(span)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_versions_follow_pushers_codes() {
        assert_eq!(
            protocol_version(Some("protocol=7&client=js&version=8.4.0")),
            Ok(7)
        );
        assert_eq!(protocol_version(Some("client=js&protocol=5")), Ok(5));
        assert_eq!(protocol_version(None).unwrap_err().0, 4008);
        assert_eq!(protocol_version(Some("protocol=x")).unwrap_err().0, 4006);
        assert_eq!(protocol_version(Some("protocol=8")).unwrap_err().0, 4007);
    }

    #[test]
    fn node_close_codes_become_pushers() {
        assert_eq!(pusher_code(close::SLOW_CONSUMER), 4100);
        assert_eq!(pusher_code(close::SHUTDOWN), 4200);
        assert_eq!(pusher_code(close::HEARTBEAT_TIMEOUT), 4201);
        assert_eq!(pusher_code(close::DISCONNECTED), 4009);
        assert_eq!(pusher_code(close::NORMAL), 1000);
        let last = PusherFarewell::last_frame(&CloseReason::new(close::SHUTDOWN, "draining"));
        assert!(last.is_some_and(|f| f.as_str().contains("4200")));
        assert!(PusherFarewell::last_frame(&CloseReason::new(close::NORMAL, "bye")).is_none());
    }
}
