//! Listeners, the router, and the drain sequence.
//!
//! Drain (SIGTERM/SIGINT): readiness turns 503 and new upgrades are refused;
//! every client gets close 1001, the closes spread at ~2 ms per connection
//! (at most over the first half of the drain grace) so clients do not all
//! reconnect in the same millisecond;
//! the listeners keep answering (readyz 503) until every connection is gone
//! or the grace runs out; then they stop and every tracked task gets what is
//! left of the grace (at least 500 ms) to finish. A warning is logged if the grace runs out.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

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
    if let Some(fanout) = &a.node.fanout {
        metrics::gauge!(m::FANOUT_QUEUED).set(fanout.queued() as f64);
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

fn admin_router(admin: Admin) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
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
    let body_limit = node.config.max_message_size + 4096;
    let mut app = Router::new()
        .route("/ws", get(ws_handler))
        .with_state(node.clone())
        .merge(crate::api::router(node.clone()))
        .layer(DefaultBodyLimit::max(body_limit));
    if node.config.pages {
        app = app.merge(crate::pages::router());
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
            serve(&shutdown, l, admin_router(admin.clone()));
            println!("admin listening on {admin_addr}");
        }
        None => app = app.merge(admin_router(admin.clone())),
    }
    serve(&shutdown, listener, app);
    println!("gateway listening on {local}");
    tracing::info!(addr = %local, node = %node.config.node_id, redis = node.config.redis_url.is_some(), "listening");

    shutdown.tracker.spawn(node.clone().run_maintenance());
    shutdown.tracker.spawn(node.clone().run_pinger());
    signal.await;
    drain(&node).await;
    Ok(())
}

fn serve(shutdown: &Shutdown, listener: TcpListener, app: Router) {
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "set_nodelay failed");
        }
    });
    let token = shutdown.token.clone();
    shutdown.tracker.spawn(async move {
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, service)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await
        {
            tracing::error!(error = %e, "listener failed");
        }
    });
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
