//! HTTP server API v1 (docs/protocol.md): publish, broadcast, directed
//! sends and disconnects, presence, history, user status and nodes, behind
//! the optional API key; plus its error type and request metrics.
//!
//! Every error is `{"error": {"code", "message"}}` with the status of its
//! code; internal error text never reaches the caller. Request bodies must
//! be `Content-Type: application/json` (415 otherwise: no CORS "simple
//! request" from a web page can reach a handler), must arrive within
//! `body_timeout_ms` (408), and are held to the WebSocket path's JSON
//! policy ([`crate::protocol::parse_json`]). A publish answered
//! 200 was handed to the backend; a 503 means it was not acknowledged (see
//! docs/protocol.md: after a timeout it may still have been applied).

pub mod channels;
pub mod subscriptions;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;

use crate::access::{self, Actor};
use crate::backplane::Envelope;
use crate::metrics as m;
use crate::node::Node;
use crate::presence::UserConn;
use crate::protocol::{close, valid_channel, ErrorCode, ReplyError};

/// An HTTP API error: a code and a client-safe message.
#[derive(Debug)]
pub struct ApiError(pub ReplyError);

impl ApiError {
    /// Build an error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self(ReplyError::new(code, message))
    }
}

impl From<ReplyError> for ApiError {
    fn from(e: ReplyError) -> Self {
        Self(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = json!({"error": {"code": self.0.code, "message": self.0.message}});
        (status, Json(body)).into_response()
    }
}

/// A JSON body parsed with our own error messages (axum's rejections are
/// plain text).
pub struct JsonBody<T>(pub T);

/// An error with a status of its own (415, 408) and the usual body.
fn with_status(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    let body = json!({"error": {"code": code, "message": message}});
    (status, Json(body)).into_response()
}

/// Whether `content-type` is `application/json` (parameters allowed).
fn is_json(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

impl<T: DeserializeOwned> FromRequest<Arc<Node>> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(req: Request, node: &Arc<Node>) -> Result<Self, Self::Rejection> {
        if !is_json(&req) {
            return Err(with_status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::BadRequest,
                "the body must be Content-Type: application/json",
            ));
        }
        let timeout = node.config.edge.body_timeout;
        let bytes = match tokio::time::timeout(timeout, Bytes::from_request(req, node)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(
                    ApiError::new(ErrorCode::TooLarge, "body exceeds the size limit")
                        .into_response(),
                )
            }
            Ok(Err(_)) => {
                return Err(ApiError::new(ErrorCode::BadRequest, "cannot read body").into_response())
            }
            Err(_) => {
                metrics::counter!(crate::edge::DROPPED, "reason" => "body_timeout").increment(1);
                return Err(with_status(
                    StatusCode::REQUEST_TIMEOUT,
                    ErrorCode::BadRequest,
                    "the body did not arrive in time",
                ));
            }
        };
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        crate::protocol::parse_json(bytes).map_err(|e| ApiError(e).into_response())?;
        serde_json::from_slice(bytes).map(JsonBody).map_err(|e| {
            ApiError::new(ErrorCode::BadRequest, format!("invalid body: {e}")).into_response()
        })
    }
}

/// A path parameter with the API's error body when it does not parse
/// (axum's rejection is plain text): 400 `bad_request`.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(Self(v)),
            Err(e) => Err(ApiError::new(ErrorCode::BadRequest, e.body_text())),
        }
    }
}

/// A query string with the API's error body when it does not parse
/// (axum's rejection is plain text): 400 `bad_request`.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(Self(v)),
            Err(e) => Err(ApiError::new(ErrorCode::BadRequest, e.body_text())),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    channel: String,
    data: Box<RawValue>,
    #[serde(default)]
    exclude: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DataBody {
    data: Box<RawValue>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
struct HistoryQuery {
    since: Option<u64>,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct HistoryMessage<'a> {
    offset: Option<u64>,
    data: &'a RawValue,
    from: Option<&'a str>,
}

/// The route templates of [`router`], as `gateway_api_requests_total`
/// labels them (exported at 0 from the start, see [`ZERO_STATUSES`]).
pub const ROUTES: [&str; 16] = [
    "/api/publish",
    "/api/broadcast",
    "/api/users/{user}/send",
    "/api/connections/{conn}/send",
    "/api/users/{user}/disconnect",
    "/api/connections/{conn}/disconnect",
    "/api/channels/{channel}/presence",
    "/api/channels/{channel}/history",
    "/api/users/{user}",
    "/api/nodes",
    "/api/channels",
    "/api/channels/{channel}",
    "/api/users/{user}/subscribe",
    "/api/users/{user}/unsubscribe",
    "/api/connections/{conn}/subscribe",
    "/api/connections/{conn}/unsubscribe",
];

/// The statuses each route's request counter is exported with at 0, so an
/// alert on the first 5xx or 401 sees it (`rate()` needs a prior sample).
pub const ZERO_STATUSES: [&str; 5] = ["200", "400", "401", "429", "503"];

/// Export every route's request counter at 0 with [`ZERO_STATUSES`].
pub fn describe_metrics() {
    for route in ROUTES {
        for status in ZERO_STATUSES {
            metrics::counter!(m::API_REQUESTS, "route" => route, "status" => status).absolute(0);
        }
    }
}

/// The `/api` router.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/api/publish", post(publish))
        .route("/api/broadcast", post(broadcast))
        .route("/api/users/{user}/send", post(send_user))
        .route("/api/connections/{conn}/send", post(send_conn))
        .route("/api/users/{user}/disconnect", post(disconnect_user))
        .route("/api/connections/{conn}/disconnect", post(disconnect_conn))
        .route("/api/channels/{channel}/presence", get(presence))
        .route("/api/channels/{channel}/history", get(history))
        .route("/api/users/{user}", get(user_status))
        .route("/api/nodes", get(nodes))
        .merge(channels::routes())
        .merge(subscriptions::routes())
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such API route") })
        .method_not_allowed_fallback(|| async {
            with_status(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::BadRequest,
                "method not allowed on this route",
            )
        })
        .layer(middleware::from_fn_with_state(node.clone(), require_key))
        .layer(middleware::from_fn(observe))
        .with_state(node)
}

/// The API key check (`Authorization: Bearer <api_key>`), for /api and a
/// keyed /metrics.
pub async fn require_key(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !node.auth.check_api_key(given) {
        metrics::counter!(m::AUTH_FAILURES, "reason" => "api_key").increment(1);
        return ApiError::new(ErrorCode::Unauthorized, "missing or wrong API key").into_response();
    }
    next.run(req).await
}

/// Count requests and time them by route template (never the raw path).
pub async fn observe(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = tokio::time::Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!(m::API_REQUESTS, "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!(m::API_LATENCY, "route" => route).record(started.elapsed().as_secs_f64());
    resp
}

fn check_channel(channel: &str) -> Result<(), ApiError> {
    if valid_channel(channel) {
        Ok(())
    } else {
        Err(ApiError::new(ErrorCode::BadRequest, "invalid channel name"))
    }
}

pub(crate) fn check_id(kind: &str, id: &str) -> Result<(), ApiError> {
    if !id.is_empty() && id.len() <= 255 && !id.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("invalid {kind} id"),
        ))
    }
}

async fn publish(
    State(node): State<Arc<Node>>,
    JsonBody(b): JsonBody<PublishBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_channel(&b.channel)?;
    if let Some(exclude) = &b.exclude {
        check_id("connection", exclude)?;
    }
    let ns = access::publish(&node.config, Actor::Api, &b.channel)?;
    let offset = node
        .publish(&b.channel, ns, b.data, None, b.exclude, "api")
        .await?;
    Ok(Json(json!({ "offset": offset })))
}

async fn broadcast(
    State(node): State<Arc<Node>>,
    JsonBody(b): JsonBody<DataBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    node.send(Envelope::Broadcast { data: b.data }).await?;
    Ok(Json(json!({})))
}

async fn send_user(
    State(node): State<Arc<Node>>,
    ApiPath(user): ApiPath<String>,
    JsonBody(b): JsonBody<DataBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_id("user", &user)?;
    node.send(Envelope::User { user, data: b.data }).await?;
    Ok(Json(json!({})))
}

async fn send_conn(
    State(node): State<Arc<Node>>,
    ApiPath(conn): ApiPath<String>,
    JsonBody(b): JsonBody<DataBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_id("connection", &conn)?;
    node.send(Envelope::Conn { conn, data: b.data }).await?;
    Ok(Json(json!({})))
}

fn close_args(b: DisconnectBody) -> Result<(u16, String), ApiError> {
    let code = b.code.unwrap_or(close::DISCONNECTED);
    if !(4000..=4999).contains(&code) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "code must be in 4000..=4999",
        ));
    }
    let reason = b.reason.unwrap_or_else(|| "disconnected".to_owned());
    if reason.len() > 120 {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "reason must be at most 120 bytes",
        ));
    }
    Ok((code, reason))
}

async fn disconnect_user(
    State(node): State<Arc<Node>>,
    ApiPath(user): ApiPath<String>,
    JsonBody(b): JsonBody<DisconnectBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_id("user", &user)?;
    let (code, reason) = close_args(b)?;
    node.send(Envelope::DisconnectUser { user, code, reason })
        .await?;
    Ok(Json(json!({})))
}

async fn disconnect_conn(
    State(node): State<Arc<Node>>,
    ApiPath(conn): ApiPath<String>,
    JsonBody(b): JsonBody<DisconnectBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_id("connection", &conn)?;
    let (code, reason) = close_args(b)?;
    node.send(Envelope::DisconnectConn { conn, code, reason })
        .await?;
    Ok(Json(json!({})))
}

async fn presence(
    State(node): State<Arc<Node>>,
    ApiPath(channel): ApiPath<String>,
) -> Result<Response, ApiError> {
    check_channel(&channel)?;
    access::presence(&node.config, Actor::Api, &channel)?;
    let members = node.presence_members(&channel).await?;
    Ok(Json(json!({ "channel": channel, "members": members })).into_response())
}

async fn history(
    State(node): State<Arc<Node>>,
    ApiPath(channel): ApiPath<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Response, ApiError> {
    check_channel(&channel)?;
    let opts = access::history(&node.config, Actor::Api, &channel)?;
    let limit = q.limit.unwrap_or(opts.size).min(opts.size);
    let read = node
        .history
        .read(&channel, q.since.unwrap_or(0), limit, opts)
        .await
        .map_err(|_| {
            metrics::counter!(m::BACKEND_ERRORS, "op" => "history_read").increment(1);
            ApiError(ReplyError::unavailable())
        })?;
    let messages: Vec<HistoryMessage<'_>> = read
        .publications
        .iter()
        .map(|p| HistoryMessage {
            offset: p.offset,
            data: &p.data,
            from: p.from.as_deref(),
        })
        .collect();
    Ok(Json(json!({
        "channel": channel,
        "epoch": read.position.epoch,
        "offset": read.position.offset,
        "messages": messages,
    }))
    .into_response())
}

async fn user_status(
    State(node): State<Arc<Node>>,
    ApiPath(user): ApiPath<String>,
) -> Result<Response, ApiError> {
    check_id("user", &user)?;
    let conns: Vec<UserConn> = node.presence.user_conns(&user).await.map_err(|_| {
        metrics::counter!(m::BACKEND_ERRORS, "op" => "user_conns").increment(1);
        ApiError(ReplyError::unavailable())
    })?;
    Ok(
        Json(json!({ "user": user, "online": !conns.is_empty(), "connections": conns }))
            .into_response(),
    )
}

async fn nodes(State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    let mut nodes = node.presence.nodes().await.map_err(|_| {
        metrics::counter!(m::BACKEND_ERRORS, "op" => "nodes").increment(1);
        ApiError(ReplyError::unavailable())
    })?;
    // This node's own entry is always current, even between heartbeats.
    let me = node.info();
    nodes.retain(|n| n.id != me.id);
    nodes.push(me);
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Json(json!({ "nodes": nodes })).into_response())
}
