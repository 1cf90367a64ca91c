//! The node's Pusher side (docs/pusher.md): the WebSocket endpoint
//! `/app/{key}` ([`socket`], with each connection's reader in [`reader`]
//! and its channel operations in [`channels`]) and the signed HTTP API
//! `/apps/{id}/...` ([`rest`], its signature check in [`signed`]). Routed only when an app is configured.
//!
//! A Pusher connection is an ordinary hub connection whose id is its
//! socket id and whose channels are hub channels `!app!channel`
//! ([`crate::pusher::names`]): fan-out, the backplane, presence, occupancy
//! and the slow-consumer rule are the v1 protocol's. Publications on those
//! channels are Pusher frames encoded once by the publisher.

pub mod channels;
pub mod reader;
pub mod rest;
pub mod signed;
pub mod socket;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

use crate::node::Node;

/// The Pusher routes, merged into the client listener's router.
pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/app/{key}", get(socket::handler))
        .route("/apps/{id}/events", post(rest::events))
        .route("/apps/{id}/batch_events", post(rest::batch_events))
        .route("/apps/{id}/channels", get(rest::channels))
        .route("/apps/{id}/channels/{channel}", get(rest::channel))
        .route("/apps/{id}/channels/{channel}/users", get(rest::users))
        .route(
            "/apps/{id}/users/{user}/terminate_connections",
            post(rest::terminate),
        )
}
