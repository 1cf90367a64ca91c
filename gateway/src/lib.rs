//! The gateway library: a horizontally scaled WebSocket gateway.
//!
//! One node keeps its own connections in memory ([`hub`]); the cluster-facing
//! backends ([`backplane`], [`presence`], [`history`]) run in-process on a
//! single node or on Redis in a cluster. [`server::run`] wires it together.

pub mod access;
pub mod api;
pub mod auth;
pub mod backends;
pub mod backplane;
pub mod clock;
pub mod config;
pub mod connection;
pub mod edge;
pub mod fanout;
pub mod history;
pub mod hub;
pub mod memory;
pub mod metrics;
pub mod node;
pub mod occupancy;
pub mod outbox;
pub mod pages;
pub mod presence;
pub mod protocol;
pub mod proxy;
pub mod pusher;
pub mod pusher_server;
pub mod ratelimit;
pub mod redis;
pub mod server;
pub mod shutdown;
pub mod webhooks;
