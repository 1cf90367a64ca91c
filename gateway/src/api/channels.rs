//! The channel info API (docs/backend.md, "Channel info API"):
//! `GET /api/channels/{channel}` (cluster-wide subscribers, presence and
//! history summary) and `GET /api/channels?prefix=&limit=&cursor=`
//! (channels with subscribers anywhere, by name, paginated). Merged into
//! [`super::router`], so behind the API key like the rest of `/api`.
//!
//! Counts come from the channel store ([`crate::occupancy`]): exact once
//! churn settles, at most one flush interval plus a round trip behind.
//! Only live nodes (the registry, plus this one) count.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiPath, ApiQuery};
use crate::access::{self, Actor};
use crate::metrics as m;
use crate::node::Node;
use crate::protocol::{valid_channel, ErrorCode, ReplyError};

/// Default page size of the listing.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page size of the listing.
pub const MAX_LIMIT: usize = 1000;

/// The channel info routes (state: the node).
pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/api/channels", get(list))
        .route("/api/channels/{channel}", get(info))
}

fn unavailable(op: &'static str) -> ApiError {
    metrics::counter!(m::BACKEND_ERRORS, "op" => op).increment(1);
    ApiError(ReplyError::unavailable())
}

/// The ids of the live nodes: the registry's, and always this one.
pub(crate) async fn live_nodes(node: &Node) -> Result<Vec<String>, ApiError> {
    let mut ids: Vec<String> = node
        .presence
        .nodes()
        .await
        .map_err(|_| unavailable("nodes"))?
        .into_iter()
        .map(|n| n.id)
        .collect();
    ids.push(node.config.node_id.clone());
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

async fn info(
    State(node): State<Arc<Node>>,
    ApiPath(channel): ApiPath<String>,
) -> Result<Response, ApiError> {
    if !valid_channel(&channel) {
        return Err(ApiError::new(ErrorCode::BadRequest, "invalid channel name"));
    }
    let ns = access::subscribe(&node.config, Actor::Api, &channel)?;
    let nodes = live_nodes(&node).await?;
    let subscribers = node
        .occupancy
        .store()
        .subscribers(&channel, &nodes)
        .await
        .map_err(|_| unavailable("channel_counts"))?;
    let presence = if ns.tracks_presence() {
        let members = node.presence_members(&channel).await?;
        let users: BTreeSet<&str> = members
            .iter()
            .map(|m| m.user.as_str())
            .filter(|u| !u.is_empty())
            .collect();
        json!({ "members": members.len(), "users": users.len() })
    } else {
        serde_json::Value::Null
    };
    let history = match ns.history() {
        Some(opts) => {
            let read = node
                .history
                .read(&channel, u64::MAX, 0, opts)
                .await
                .map_err(|_| unavailable("history_read"))?;
            let top = read.position.offset;
            let length = (top + 1).saturating_sub(read.first_offset.max(1));
            json!({ "length": length, "top_offset": top, "epoch": read.position.epoch })
        }
        None => serde_json::Value::Null,
    };
    Ok(Json(json!({
        "channel": channel,
        "subscribers": subscribers,
        "presence": presence,
        "history": history,
    }))
    .into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    prefix: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// Whether `s` could start a channel name (possibly empty).
fn valid_prefix(s: &str) -> bool {
    s.is_empty() || valid_channel(s)
}

async fn list(
    State(node): State<Arc<Node>>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let prefix = q.prefix.unwrap_or_default();
    if !valid_prefix(&prefix) {
        return Err(ApiError::new(ErrorCode::BadRequest, "invalid prefix"));
    }
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("limit must be 1..={MAX_LIMIT}"),
        ));
    }
    let cursor = q.cursor.filter(|c| !c.is_empty());
    if cursor.as_deref().is_some_and(|c| !valid_channel(c)) {
        return Err(ApiError::new(ErrorCode::BadRequest, "invalid cursor"));
    }
    let nodes = live_nodes(&node).await?;
    let page = node
        .occupancy
        .store()
        .list(&nodes, &prefix, cursor.as_deref(), limit)
        .await
        .map_err(|_| unavailable("channel_list"))?;
    // Pusher apps' channels (`!app!...`) are theirs (docs/pusher.md).
    let channels: Vec<serde_json::Value> = page
        .channels
        .iter()
        .filter(|(c, _)| !crate::pusher::names::is_pusher(c))
        .map(|(c, n)| json!({ "channel": c, "subscribers": n }))
        .collect();
    Ok(Json(json!({ "channels": channels, "next_cursor": page.next })).into_response())
}
