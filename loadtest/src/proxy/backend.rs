//! The trivial application backend the `proxy` scenario points the
//! gateway's connect and subscribe hooks at: an axum server on
//! 127.0.0.1:0, on a runtime and OS thread of its own, that answers every
//! connect with the user named by the `session` cookie and allows every
//! subscribe, counting both. It does no work of its own, so what the
//! scenario measures is the proxy's round trip, not an application.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

/// Requests the backend answered, per hook.
#[derive(Debug, Default)]
pub struct Counts {
    /// Connect hook requests.
    pub connect: AtomicU64,
    /// Subscribe hook requests.
    pub subscribe: AtomicU64,
}

/// A running backend; it stops when dropped.
pub struct Backend {
    /// Its address.
    pub addr: SocketAddr,
    /// What it answered.
    pub counts: Arc<Counts>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn connect(State(counts): State<Arc<Counts>>, Json(req): Json<Value>) -> Json<Value> {
    counts.connect.fetch_add(1, Ordering::Relaxed);
    let user = req["headers"]["cookie"]
        .as_str()
        .and_then(|c| {
            c.split(';')
                .find_map(|kv| kv.trim().strip_prefix("session="))
        })
        .unwrap_or_default()
        .to_owned();
    if user.is_empty() {
        return Json(json!({"error": {"code": "unauthorized", "message": "no session"}}));
    }
    Json(json!({"result": {"user": user}}))
}

async fn subscribe(State(counts): State<Arc<Counts>>) -> Json<Value> {
    counts.subscribe.fetch_add(1, Ordering::Relaxed);
    Json(json!({"result": {}}))
}

impl Backend {
    /// Starts the backend with `threads` runtime threads.
    pub fn start(threads: usize) -> Result<Backend> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the backend")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let app = Router::new()
            .route("/connect", post(connect))
            .route("/subscribe", post(subscribe))
            .with_state(counts.clone());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .enable_all()
            .build()
            .context("backend runtime")?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("proxy-backend".into())
            .spawn(move || {
                rt.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        eprintln!("proxy backend: could not take its listener");
                        return;
                    };
                    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    });
                    if let Err(e) = serve.await {
                        eprintln!("proxy backend: {e}");
                    }
                });
            })
            .context("backend thread")?;
        Ok(Backend {
            addr,
            counts,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The `[proxy]` table of a gateway config that sends connect and
    /// subscribe to this backend.
    pub fn proxy_toml(&self) -> String {
        format!(
            "\n[proxy.connect]\nurl = \"http://{a}/connect\"\n\n[proxy.subscribe]\nurl = \"http://{a}/subscribe\"\n",
            a = self.addr
        )
    }
}
