//! Server frames as shareable bytes: encoded once per node, the same
//! `Utf8Bytes` (reference counted) queued to every recipient.

use axum::extract::ws::Utf8Bytes;

use crate::backplane::Publication;
use crate::protocol::ServerFrame;

/// Encode a server frame into shareable bytes.
pub fn frame(f: &ServerFrame<'_>) -> Utf8Bytes {
    Utf8Bytes::from(f.encode())
}

/// Encode a publication as a `message` frame.
pub fn message_frame(p: &Publication) -> Utf8Bytes {
    frame(&ServerFrame::Message {
        channel: &p.channel,
        data: &p.data,
        offset: p.offset,
        epoch: p.epoch.as_deref(),
        from: p.from.as_deref(),
    })
}
