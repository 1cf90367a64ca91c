//! Server-side subscriptions through the HTTP API (docs/backend.md,
//! "Server-side subscriptions"): subscribe or unsubscribe every connection
//! of a user, or one connection, to a channel, on whichever node holds it.
//!
//! The request travels as a directed envelope (per user, per node) and is
//! carried out by each connection's own task, so its channel list stays
//! the one truth; the answer `{}` means handed to the backplane, as for
//! the send and disconnect routes (at-most-once, not "done").

use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::{check_id, ApiError, ApiPath, JsonBody};
use crate::backplane::Envelope;
use crate::node::Node;
use crate::protocol::{valid_channel, ErrorCode};

/// Body of the subscribe and unsubscribe routes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelBody {
    channel: String,
}

/// The routes, merged into the API router.
pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/api/users/{user}/subscribe", post(user_subscribe))
        .route("/api/users/{user}/unsubscribe", post(user_unsubscribe))
        .route("/api/connections/{conn}/subscribe", post(conn_subscribe))
        .route(
            "/api/connections/{conn}/unsubscribe",
            post(conn_unsubscribe),
        )
}

fn checked(node: &Node, channel: &str) -> Result<(), ApiError> {
    if !valid_channel(channel) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "invalid channel name: 1-255 bytes of [A-Za-z0-9_:.@/=-]",
        ));
    }
    crate::access::namespace(&node.config, channel)?;
    Ok(())
}

async fn to_user(
    node: &Node,
    user: String,
    channel: String,
    subscribe: bool,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_id("user", &user)?;
    checked(node, &channel)?;
    node.send(Envelope::SubscribeUser {
        user,
        channel,
        subscribe,
    })
    .await?;
    Ok(Json(json!({})))
}

async fn to_conn(
    node: &Node,
    conn: String,
    channel: String,
    subscribe: bool,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_id("connection", &conn)?;
    checked(node, &channel)?;
    node.send(Envelope::SubscribeConn {
        conn,
        channel,
        subscribe,
    })
    .await?;
    Ok(Json(json!({})))
}

async fn user_subscribe(
    State(node): State<Arc<Node>>,
    ApiPath(user): ApiPath<String>,
    JsonBody(b): JsonBody<ChannelBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    to_user(&node, user, b.channel, true).await
}

async fn user_unsubscribe(
    State(node): State<Arc<Node>>,
    ApiPath(user): ApiPath<String>,
    JsonBody(b): JsonBody<ChannelBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    to_user(&node, user, b.channel, false).await
}

async fn conn_subscribe(
    State(node): State<Arc<Node>>,
    ApiPath(conn): ApiPath<String>,
    JsonBody(b): JsonBody<ChannelBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    to_conn(&node, conn, b.channel, true).await
}

async fn conn_unsubscribe(
    State(node): State<Arc<Node>>,
    ApiPath(conn): ApiPath<String>,
    JsonBody(b): JsonBody<ChannelBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    to_conn(&node, conn, b.channel, false).await
}
