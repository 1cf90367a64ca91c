//! The load of `shard-spread`: subscriber connections that each subscribe
//! to every channel (so every channel has subscribers on every node), and
//! publishers that publish flat out, round-robin over the channels, until a
//! deadline, over the WebSocket `publish` op (a window of publications in
//! flight per connection) or `POST /api/publish`.
//!
//! Publication `j` (a global counter) goes to channel `j % channels`; its
//! data is `s:<send time us>:` padded (`w:` for the warm-up round), so a
//! subscriber counts per channel what it received and the latency. The
//! accounting is counts, not sequences: each subscriber must receive, per
//! channel, exactly the publications the gateways accepted on it.
//!
//! Invariants: every loop is bounded in count or time (the publishers by
//! the deadline and a reply timeout, the subscribers by the stop signal,
//! every setup by its timeout); the receive path does not allocate per
//! frame; a subscriber that loses its connection is counted, not retried.
//!
//! Jobs: `plan` (what every client shares: the plan, connecting, the wire
//! helpers); `subscriber` (subscribing, receiving, counting);
//! `publisher` (the WebSocket and HTTP publishers, the warm-up round).

mod plan;
mod publisher;
mod subscriber;

pub(super) use plan::Plan;
pub(super) use publisher::{http_publish, warm_up, ws_publish, ws_publisher, PubStats};
pub(super) use subscriber::{subscribe, Live, SubResult};
