//! The Pusher Channels protocol (version 7) itself, apart from the node
//! that serves it ([`crate::pusher_server`]): how its channels are named on
//! the hub and the backplane ([`names`]), its signatures ([`sign`]) and its
//! frames ([`wire`]). A leaf: it knows nothing of connections or Redis, so
//! the hub, presence refresh and webhooks can tell a Pusher channel by its
//! name without depending on the server side (docs/pusher.md).

pub mod apps;
pub mod names;
pub mod sign;
pub mod wire;
