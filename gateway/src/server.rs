//! Listeners, the router, and the drain sequence.
//!
//! Drain (SIGTERM/SIGINT): readiness turns 503 and new upgrades are refused;
//! every client gets close 1001, the closes spread at ~2 ms per connection
//! (at most over the first half of the drain grace) so clients do not all
//! reconnect in the same millisecond;
//! the listeners keep answering (readyz 503) until every connection is gone
//! or the grace runs out; then they stop and every tracked task gets what is
//! left of the grace (at least 500 ms) to finish. A warning is logged if the grace runs out.
//!
//! Accepting (the edge, docs/security.md): each socket passes the
//! per-address limits and takes a handshake-phase permit before hyper sees
//! it (refused sockets get a short HTTP error, read and written under a
//! bounded time, and are counted); hyper (HTTP/1.1) runs with a Tokio
//! timer, so a request's headers must arrive within `header_timeout_ms` and
//! fit in `max_header_bytes`. The permit and the address guard travel with
//! the request: an upgrade keeps the address guard for the connection's
//! life and gives the permit back once upgraded. Every connection task is
//! tracked.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::edge::{Admitted, Edge, RareLog, Refusal};

use crate::config::Config;
use crate::connection::ws_handler;
use crate::metrics as m;
use crate::node::{Node, NodeError};
use crate::protocol::{close, CloseReason};
use crate::shutdown::Shutdown;

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The node could not be built.
    #[error(transparent)]
    Node(#[from] NodeError),
}

#[derive(Clone)]
struct Admin {
    node: Arc<Node>,
    prometheus: PrometheusHandle,
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(a): State<Admin>) -> Response {
    if a.node.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else if !a.node.backplane.is_healthy() {
        (StatusCode::SERVICE_UNAVAILABLE, "backplane unavailable").into_response()
    } else {
        "ready".into_response()
    }
}

async fn metrics_text(State(a): State<Admin>) -> Response {
    // Gauges are read from the hub's own counts at every scrape (and only
    // here: nothing else writes them).
    let hub = &a.node.hub;
    metrics::gauge!(m::CONNECTIONS).set(hub.connection_count() as f64);
    metrics::gauge!(m::CHANNELS).set(hub.channel_count() as f64);
    metrics::gauge!(m::SUBSCRIPTIONS).set(hub.subscription_count() as f64);
    metrics::gauge!(crate::edge::PENDING).set(a.node.edge.pending() as f64);
    for app in a.node.apps.iter() {
        metrics::gauge!(m::PUSHER_CONNECTIONS, "app" => app.config.id.clone())
            .set(app.connections() as f64);
    }
    if let Some(fanout) = &a.node.fanout {
        metrics::gauge!(m::FANOUT_QUEUED).set(fanout.queued() as f64);
    }
    if let Some(history) = a.node.memory_history() {
        history.publish_gauges();
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        a.prometheus.render(),
    )
        .into_response()
}

/// `/healthz`, `/readyz` and `/metrics`; with `keyed`, `/metrics` requires
/// the API key (`metrics_require_key`, on the client listener only).
fn admin_router(admin: Admin, keyed: bool) -> Router {
    let mut metrics = get(metrics_text);
    if keyed {
        metrics = metrics.route_layer(middleware::from_fn_with_state(
            admin.node.clone(),
            crate::api::require_key,
        ));
    }
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", metrics)
        .with_state(admin)
}

/// Accept queue length. tokio's `TcpListener::bind` uses 128: a burst of
/// reconnects (after a drain elsewhere) then drops SYNs and each dropped
/// client waits a 1 s retransmit. The kernel caps it at `somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    let err = |source| ServerError::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(LISTEN_BACKLOG).map_err(err)
}

/// Run the node until `signal` resolves, then drain and return.
pub async fn run<F, S>(
    config: Config,
    prometheus: PrometheusHandle,
    signal: F,
) -> Result<(), ServerError>
where
    F: FnOnce() -> S,
    S: Future<Output = ()> + Send + 'static,
{
    // Handlers exist before anyone can learn our address and signal us.
    let signal = signal();
    let shutdown = Shutdown::default();
    let listener = bind(config.listen).await?;
    let admin_listener = match config.admin_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let node = Node::new(config, shutdown.clone()).await?;
    if node.auth.open_mode() {
        tracing::warn!(
            "OPEN DEVELOPMENT MODE: no JWT key configured, any client may connect and pick its user with ?user=. Set GATEWAY_JWT_SECRET or GATEWAY_JWT_PUBLIC_KEY_FILE in production."
        );
    }
    if node.config.api_key.is_none() {
        tracing::warn!("the HTTP API is open: set GATEWAY_API_KEY in production");
    }
    let admin = Admin {
        node: node.clone(),
        prometheus,
    };
    crate::edge::describe_metrics();
    crate::redis::describe_metrics();
    crate::memory::describe_metrics();
    crate::api::describe_metrics();
    // Validated to at most 64 MiB, so this cannot wrap; saturating anyway.
    let body_limit = node.config.max_message_size.saturating_add(4096);
    let mut app = Router::new()
        .route("/ws", get(ws_handler))
        .with_state(node.clone())
        .merge(crate::api::router(node.clone()))
        .layer(DefaultBodyLimit::max(body_limit));
    if node.config.pages {
        app = app.merge(crate::pages::router());
    }
    if !node.apps.is_empty() {
        // A batch holds up to max_batch_events events of max_event_bytes.
        let pusher_limit = node
            .apps
            .iter()
            .map(|a| a.config.max_batch_events * (a.config.max_event_bytes + 1024))
            .max()
            .unwrap_or(0)
            .saturating_add(64 * 1024)
            .min(64 << 20);
        app = app.merge(
            crate::pusher_server::routes()
                .layer(middleware::from_fn(crate::api::observe))
                .layer(DefaultBodyLimit::max(pusher_limit))
                .with_state(node.clone()),
        );
        tracing::info!(
            apps = node.apps.iter().count(),
            "pusher protocol on /app/{{key}} and /apps/{{id}}"
        );
    }
    let local = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: node.config.listen,
        source,
    })?;
    match admin_listener {
        Some(l) => {
            let admin_addr = l.local_addr().map_err(|source| ServerError::Bind {
                addr: local,
                source,
            })?;
            serve_apart(&node, l, admin_router(admin.clone(), false))?;
            println!("admin listening on {admin_addr}");
        }
        None => {
            app = app.merge(admin_router(
                admin.clone(),
                node.config.edge.metrics_require_key,
            ))
        }
    }
    serve(&node, listener, app, true);
    println!("gateway listening on {local}");
    tracing::info!(addr = %local, node = %node.config.node_id, redis = node.config.redis_topology.is_some(), "listening");

    shutdown.tracker.spawn(node.clone().run_maintenance());
    shutdown.tracker.spawn(node.clone().run_pinger());
    shutdown.tracker.spawn(crate::memory::run(node.clone()));
    signal.await;
    drain(&node).await;
    Ok(())
}

/// How long a refused socket may take to send its request and read the
/// refusal (bounded, so refusals cannot hold sockets).
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// Refused sockets answered at once; past it they are just closed.
const MAX_REFUSALS: usize = 256;

static ACCEPT_ERROR_LOG: RareLog = RareLog::new();
static REFUSAL_LOG: RareLog = RareLog::new();

/// Serve `app` on `listener` until shutdown. `limited`: the client
/// listener, with the per-address limits and the handshake-phase cap.
fn serve(node: &Arc<Node>, listener: TcpListener, app: Router, limited: bool) {
    let node = node.clone();
    let shutdown: Shutdown = node.shutdown.clone();
    let token = shutdown.token.clone();
    let refusals = Arc::new(tokio::sync::Semaphore::new(MAX_REFUSALS));
    shutdown.tracker.clone().spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and the like: count, log rarely, back off
                        // instead of spinning.
                        metrics::counter!(crate::edge::DROPPED, "reason" => "accept_error").increment(1);
                        if let Some(n) = ACCEPT_ERROR_LOG.allow() {
                            tracing::warn!(error = %e, suppressed = n, "accept failed");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = token.cancelled() => break,
            };
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "set_nodelay failed");
            }
            let admitted = if limited {
                match admit_socket(&node.edge, peer) {
                    Ok(a) => a,
                    Err((reason, status, body)) => {
                        refuse_socket(&shutdown, &refusals, tcp, peer, reason, status, body);
                        continue;
                    }
                }
            } else {
                Admitted::default()
            };
            shutdown
                .tracker
                .spawn(serve_connection(node.clone(), app.clone(), tcp, peer, admitted));
        }
    });
}

/// Serve the admin listener (`/healthz`, `/readyz`, `/metrics`) on a thread
/// of its own (a current-thread runtime), until shutdown. Its handlers only
/// read atomics and render the recorder, but on the node's runtime they
/// waited behind whatever the runtime was doing: in a reconnect storm of
/// 15,000 clients the probes' p99 was 150-200 ms (docs/performance.md,
/// "Reconnect storm"), and an orchestrator that times its probes out at
/// 100 ms would restart a node that is only busy. The thread's end is
/// tracked on the node's tracker.
fn serve_apart(node: &Arc<Node>, listener: TcpListener, app: Router) -> Result<(), ServerError> {
    let addr = listener.local_addr().ok();
    let bind_error = |source| ServerError::Bind {
        addr: addr.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
        source,
    };
    let listener = listener.into_std().map_err(bind_error)?;
    let node2 = node.clone();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("admin-http".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            serve(&node2, listener, app, false);
                            node2.shutdown.token.cancelled().await;
                        }
                        Err(e) => tracing::error!(error = %e, "cannot serve the admin listener"),
                    }
                }),
                Err(e) => tracing::error!(error = %e, "cannot build the admin listener's runtime"),
            }
            let _ = done_tx.send(());
        })
        .map_err(bind_error)?;
    node.shutdown.tracker.spawn(async move {
        let _ = done_rx.await;
    });
    Ok(())
}

/// The socket-level admission of the client listener.
fn admit_socket(
    edge: &Edge,
    peer: SocketAddr,
) -> Result<Admitted, (&'static str, u16, &'static str)> {
    let ip = match edge.ip_key(peer.ip()) {
        Some(key) if !edge.is_trusted(peer.ip()) => match edge.ips.acquire(key) {
            Ok(g) => Some(g),
            Err(Refusal::TooMany) => return Err(("ip_limit", 429, IP_LIMIT_BODY)),
            Err(Refusal::TooFast) => return Err(("ip_rate", 429, IP_RATE_BODY)),
        },
        _ => None,
    };
    let Ok(permit) = edge.pending.clone().try_acquire_owned() else {
        return Err(("pending_limit", 503, PENDING_BODY));
    };
    edge.note_pending();
    Ok(Admitted::new(permit, ip))
}

/// JSON error body of a per-address connection refusal.
pub const IP_LIMIT_BODY: &str =
    r#"{"error":{"code":"rate_limited","message":"too many connections from this address"}}"#;
/// JSON error body of a per-address connect-rate refusal.
pub const IP_RATE_BODY: &str =
    r#"{"error":{"code":"rate_limited","message":"too many new connections from this address"}}"#;
const PENDING_BODY: &str =
    r#"{"error":{"code":"unavailable","message":"too many connections in the handshake phase"}}"#;

/// Answer a refused socket with `status` and `body`: read what its request
/// sent (so the close is clean and the client can read the answer), write,
/// close; all within [`REFUSAL_TIME`], at most [`MAX_REFUSALS`] at once.
fn refuse_socket(
    shutdown: &Shutdown,
    refusals: &Arc<tokio::sync::Semaphore>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    reason: &'static str,
    status: u16,
    body: &'static str,
) {
    metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => reason).increment(1);
    if let Some(n) = REFUSAL_LOG.allow() {
        tracing::info!(peer.addr = %peer, reason, suppressed = n, "socket refused");
    }
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return; // dropped: closed at once
    };
    shutdown.tracker.spawn(async move {
        let _permit = permit;
        let text = if status == 429 {
            "Too Many Requests"
        } else {
            "Service Unavailable"
        };
        let answer = format!(
            "HTTP/1.1 {status} {text}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = tokio::time::timeout(REFUSAL_TIME, async {
            // Whatever arrives within a moment (the request, if sent at
            // once), up to the end of its headers or 16 KiB.
            let mut buf = vec![0u8; 16 * 1024];
            let mut got = 0;
            while got < buf.len() {
                match tokio::time::timeout(Duration::from_millis(100), tcp.read(&mut buf[got..])).await {
                    Ok(Ok(n)) if n > 0 => {
                        got += n;
                        if buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    _ => break,
                }
            }
            let _ = tcp.write_all(answer.as_bytes()).await;
            let _ = tcp.shutdown().await;
            // Drain until the client closes, so ours is not a reset.
            while let Ok(n) = tcp.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    });
}

/// One accepted socket: HTTP/1.1 with the header timeout and size cap,
/// upgrades allowed, until it closes, upgrades, or shutdown.
async fn serve_connection(
    node: Arc<Node>,
    app: Router,
    tcp: TcpStream,
    peer: SocketAddr,
    admitted: Admitted,
) {
    let edge = &node.config.edge;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(edge.header_timeout)
        .max_buf_size(edge.max_header_bytes)
        .max_header_size(edge.max_header_bytes);
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let mut router = app.clone();
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(admitted.clone());
        tower_service::Service::call(&mut router, req.map(axum::body::Body::new))
    });
    let conn = http
        .serve_connection(TokioIo::new(tcp), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let token = node.shutdown.token.clone();
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = token.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        let reason = if e.is_timeout() {
            "header_timeout"
        } else if e.is_parse_too_large() {
            "header_too_large"
        } else if e.is_parse() {
            "bad_request"
        } else {
            "io"
        };
        metrics::counter!(crate::edge::DROPPED, "reason" => reason).increment(1);
        tracing::debug!(peer.addr = %peer, reason, error = %e, "HTTP connection ended");
    }
}

async fn drain(node: &Arc<Node>) {
    let grace = node.config.drain_grace;
    let started = tokio::time::Instant::now();
    node.start_draining();
    let conns = node.hub.all_conns();
    tracing::info!(
        connections = conns.len(),
        grace_ms = grace.as_millis() as u64,
        "draining"
    );
    // Spread the closes so clients do not all reconnect at once: about 2 ms
    // per connection (500 reconnects/s), at most half the grace.
    let spread =
        (Duration::from_millis(2) * conns.len().min(u32::MAX as usize) as u32).min(grace / 2);
    let n = conns.len().max(1) as u32;
    for (i, conn) in conns.iter().enumerate() {
        let at = started + spread * (i as u32) / n;
        tokio::time::sleep_until(at).await;
        conn.close(CloseReason::new(close::SHUTDOWN, "shutdown"));
    }
    // Keep the listeners up (readyz answering 503, upgrades refused) until
    // every connection is gone or the grace runs out: a load balancer that
    // probes now must see "not ready", not "connection refused".
    let deadline = started + grace;
    while node.open_slots() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.shutdown.token.cancel();
    node.shutdown.tracker.close();
    let rest = grace
        .saturating_sub(started.elapsed())
        .max(Duration::from_millis(500));
    if tokio::time::timeout(rest, node.shutdown.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            tasks = node.shutdown.tracker.len(),
            "drain grace ran out with tasks still running"
        );
    }
    node.backplane.shutdown().await;
    tracing::info!("drained");
}
