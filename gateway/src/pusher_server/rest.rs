//! Pusher's HTTP API (`/apps/{id}/...`, docs/pusher.md): its routes, each
//! signed as Pusher signs ([`super::signed`]).
//!
//! Answers follow Pusher: 200 with a JSON body; errors as plain text with
//! 400 (malformed), 401 (key, signature, timestamp, version or body hash
//! wrong), 404 (unknown app), 413 (event data too large), 503 (backend
//! unavailable; an event to several channels may then have reached some).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::signed::{backend_down, bad, unavailable, Refused, Signed};
use crate::node::Node;
use crate::pusher::apps::App;
use crate::pusher::names::{self, Kind};
use crate::pusher::wire::Out;

/// Channels listed by `GET /channels` at most (pages of the channel store).
const MAX_LISTED: usize = 100_000;

/// One event as the API takes it.
#[derive(Debug, Deserialize)]
struct Event {
    name: String,
    /// Pusher's data is a string (the libraries JSON-encode objects).
    data: Value,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    socket_id: Option<String>,
}

/// An event checked against the app's limits, ready to publish.
struct Checked {
    name: String,
    data: Box<RawValue>,
    channels: Vec<String>,
    socket_id: Option<String>,
}

fn valid_socket_id(s: &str) -> bool {
    let Some((a, b)) = s.split_once('.') else {
        return false;
    };
    !a.is_empty() && !b.is_empty() && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit())
}

fn check(app: &App, e: Event) -> Result<Checked, Refused> {
    let config = &app.config;
    if e.name.is_empty() || e.name.len() > 200 {
        return Err(bad("name must be 1-200 bytes"));
    }
    let channels = match (e.channels, e.channel) {
        (Some(c), None) => c,
        (None, Some(c)) => vec![c],
        (Some(_), Some(_)) => return Err(bad("give channels or channel, not both")),
        (None, None) => return Err(bad("missing channels")),
    };
    if channels.is_empty() || channels.len() > config.max_event_channels {
        return Err(bad(format!(
            "an event goes to 1-{} channels",
            config.max_event_channels
        )));
    }
    if let Some(c) = channels.iter().find(|c| !names::valid_channel(c)) {
        return Err(bad(format!("invalid channel name {c:?}")));
    }
    if channels.len() > 1 && channels.iter().any(|c| Kind::of(c) == Kind::Encrypted) {
        return Err(bad(
            "an event to an encrypted channel goes to that channel alone",
        ));
    }
    if let Some(s) = &e.socket_id {
        if !valid_socket_id(s) {
            return Err(bad(format!("invalid socket_id {s:?}")));
        }
    }
    let data = match &e.data {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if data.len() > config.max_event_bytes {
        return Err(Refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("event data is larger than {} bytes", config.max_event_bytes),
        ));
    }
    let data = serde_json::to_string(&data)
        .ok()
        .and_then(|s| RawValue::from_string(s).ok())
        .ok_or_else(|| bad("unencodable data"))?;
    Ok(Checked {
        name: e.name,
        data,
        channels,
        socket_id: e.socket_id,
    })
}

async fn publish(node: &Node, app: &App, e: &Checked) -> Result<(), Refused> {
    for channel in &e.channels {
        let frame = Out::Event {
            event: &e.name,
            channel,
            data: &e.data,
            user_id: None,
        }
        .encode();
        let hub = names::hub_channel(&app.config.id, channel);
        node.publish_frame(&hub, frame, e.socket_id.clone(), "pusher_api")
            .await
            .map_err(|_| backend_down())?;
    }
    Ok(())
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refused> {
    serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

/// `POST /apps/{id}/events`.
pub async fn events(
    State(node): State<Arc<Node>>,
    Signed { app, body, .. }: Signed,
) -> Result<Response, Refused> {
    let event = check(&app, parse_body(&body)?)?;
    publish(&node, &app, &event).await?;
    Ok(Json(json!({})).into_response())
}

/// `POST /apps/{id}/batch_events`.
pub async fn batch_events(
    State(node): State<Arc<Node>>,
    Signed { app, body, .. }: Signed,
) -> Result<Response, Refused> {
    #[derive(Deserialize)]
    struct Batch {
        batch: Vec<Event>,
    }
    let batch: Batch = parse_body(&body)?;
    let max = app.config.max_batch_events;
    if batch.batch.is_empty() || batch.batch.len() > max {
        return Err(bad(format!("a batch holds 1-{max} events")));
    }
    // Every event is checked before any is published.
    let mut checked = Vec::with_capacity(batch.batch.len());
    for e in batch.batch {
        let c = check(&app, e)?;
        if c.channels.len() != 1 {
            return Err(bad("each batch event goes to one channel"));
        }
        checked.push(c);
    }
    for e in &checked {
        publish(&node, &app, e).await?;
    }
    Ok(
        Json(json!({ "batch": checked.iter().map(|_| json!({})).collect::<Vec<_>>() }))
            .into_response(),
    )
}

/// The `info` parameter's attributes.
fn info_attrs(params: &BTreeMap<String, String>) -> Vec<&str> {
    params
        .get("info")
        .map(|s| s.split(',').filter(|a| !a.is_empty()).collect())
        .unwrap_or_default()
}

/// Distinct users among a presence channel's members.
async fn user_ids(node: &Node, hub: &str) -> Result<Vec<String>, Refused> {
    let members = node
        .presence
        .members(hub)
        .await
        .map_err(|e| unavailable("presence_members", &e))?;
    let mut users: Vec<String> = members
        .into_iter()
        .map(|m| m.user)
        .filter(|u| !u.is_empty())
        .collect();
    users.sort_unstable();
    users.dedup();
    Ok(users)
}

/// `GET /apps/{id}/channels` (`filter_by_prefix`, `info=user_count` for
/// presence channels).
pub async fn channels(
    State(node): State<Arc<Node>>,
    Signed { app, params, .. }: Signed,
) -> Result<Response, Refused> {
    let prefix = params.get("filter_by_prefix").cloned().unwrap_or_default();
    let attrs = info_attrs(&params);
    if attrs.iter().any(|a| *a != "user_count") {
        return Err(bad("info may only ask for user_count"));
    }
    let user_count = !attrs.is_empty();
    if user_count && !prefix.starts_with("presence-") {
        return Err(bad("info=user_count needs filter_by_prefix=presence-"));
    }
    let nodes = crate::api::channels::live_nodes(&node)
        .await
        .map_err(|_| backend_down())?;
    let hub_prefix = names::hub_channel(&app.config.id, &prefix);
    let store = node.occupancy.store();
    let mut out = serde_json::Map::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .list(
                &nodes,
                &hub_prefix,
                after.as_deref(),
                crate::api::channels::MAX_LIMIT,
            )
            .await
            .map_err(|e| unavailable("channel_list", &e))?;
        for (hub, _) in &page.channels {
            if names::is_internal(hub) {
                continue;
            }
            let Some((_, channel)) = names::split(hub) else {
                continue;
            };
            let attrs = if user_count {
                json!({ "user_count": user_ids(&node, hub).await?.len() })
            } else {
                json!({})
            };
            out.insert(channel.to_owned(), attrs);
        }
        match page.next {
            Some(next) if out.len() < MAX_LISTED => after = Some(next),
            _ => break,
        }
    }
    Ok(Json(json!({ "channels": out })).into_response())
}

/// `GET /apps/{id}/channels/{channel}` (`info=user_count,subscription_count`).
pub async fn channel(
    State(node): State<Arc<Node>>,
    Path((_, channel)): Path<(String, String)>,
    Signed { app, params, .. }: Signed,
) -> Result<Response, Refused> {
    if !names::valid_channel(&channel) {
        return Err(bad("invalid channel name"));
    }
    let attrs = info_attrs(&params);
    let presence = Kind::of(&channel) == Kind::Presence;
    for a in &attrs {
        match *a {
            "subscription_count" => {}
            "user_count" if presence => {}
            "user_count" => return Err(bad("user_count is only for presence channels")),
            other => return Err(bad(format!("unknown info attribute {other:?}"))),
        }
    }
    let hub = names::hub_channel(&app.config.id, &channel);
    let nodes = crate::api::channels::live_nodes(&node)
        .await
        .map_err(|_| backend_down())?;
    let subscribers = node
        .occupancy
        .store()
        .subscribers(&hub, &nodes)
        .await
        .map_err(|e| unavailable("channel_counts", &e))?;
    let mut out = serde_json::Map::new();
    out.insert("occupied".into(), json!(subscribers > 0));
    if attrs.contains(&"subscription_count") {
        out.insert("subscription_count".into(), json!(subscribers));
    }
    if attrs.contains(&"user_count") {
        out.insert(
            "user_count".into(),
            json!(user_ids(&node, &hub).await?.len()),
        );
    }
    Ok(Json(Value::Object(out)).into_response())
}

/// `GET /apps/{id}/channels/{channel}/users` (presence channels).
pub async fn users(
    State(node): State<Arc<Node>>,
    Path((_, channel)): Path<(String, String)>,
    Signed { app, .. }: Signed,
) -> Result<Response, Refused> {
    if !names::valid_channel(&channel) || Kind::of(&channel) != Kind::Presence {
        return Err(bad("users are listed for presence channels only"));
    }
    let hub = names::hub_channel(&app.config.id, &channel);
    let users: Vec<Value> = user_ids(&node, &hub)
        .await?
        .into_iter()
        .map(|id| json!({ "id": id }))
        .collect();
    Ok(Json(json!({ "users": users })).into_response())
}

/// `POST /apps/{id}/users/{user}/terminate_connections`: every connection
/// signed in as the user, on any node, is closed with 4009.
pub async fn terminate(
    State(node): State<Arc<Node>>,
    Path((_, user)): Path<(String, String)>,
    Signed { app, .. }: Signed,
) -> Result<Response, Refused> {
    if user.is_empty() || user.len() > 200 {
        return Err(bad("invalid user id"));
    }
    let control = names::user_control_channel(&app.config.id, &user);
    node.publish_frame(&control, "{}".to_owned(), None, "pusher_api")
        .await
        .map_err(|_| backend_down())?;
    Ok(Json(json!({})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_ids_are_two_digit_runs() {
        assert!(valid_socket_id("123.456"));
        assert!(!valid_socket_id("123"));
        assert!(!valid_socket_id("1.2.3"));
        assert!(!valid_socket_id("a.1"));
        assert!(!valid_socket_id(".1"));
    }
}
