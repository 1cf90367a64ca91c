//! Wire protocol v1 (docs/protocol.md): client ops, server frames, error and
//! close codes, channel name validation.
//!
//! Parsing never panics and turns every malformed frame into a
//! [`ReplyError`] with code `bad_request` that still echoes the request `id`
//! when one could be read. Server frames are encoded here and nowhere else.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// Error codes of `error` frames and HTTP error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed or invalid request.
    BadRequest,
    /// Not authenticated.
    Unauthorized,
    /// Not allowed.
    Forbidden,
    /// No such target.
    NotFound,
    /// Frame or body too large.
    TooLarge,
    /// Rate limit exceeded.
    RateLimited,
    /// Backend did not acknowledge the op in time.
    Unavailable,
    /// Our fault.
    Internal,
}

impl ErrorCode {
    /// Every code (a metric label set).
    pub const ALL: [ErrorCode; 8] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// The code's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A refused op: becomes an `error` frame (or an HTTP error body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ReplyError {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable text, safe to show to the client.
    pub message: String,
}

impl ReplyError {
    /// Build an error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    /// `bad_request` with a message.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
    /// `unavailable`: the backend did not take the op.
    pub fn unavailable() -> Self {
        Self::new(ErrorCode::Unavailable, "backend unavailable, try again")
    }
}

/// Why a connection is closed: WebSocket close code plus reason text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    /// WebSocket close code.
    pub code: u16,
    /// Reason text (short, no internal details).
    pub reason: String,
}

impl CloseReason {
    /// Build a close reason.
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }
    /// Every value of [`CloseReason::label`] (a metric label set).
    pub const LABELS: [&'static str; 11] = [
        "normal",
        "shutdown",
        "invalid_payload",
        "too_large",
        "slow_consumer",
        "token_expired",
        "heartbeat_timeout",
        "missed_messages",
        "abuse",
        "api_disconnect",
        "unauthorized",
    ];

    /// A short static label for metrics (one of [`CloseReason::LABELS`]).
    pub fn label(&self) -> &'static str {
        match self.code {
            close::NORMAL => "normal",
            close::SHUTDOWN => "shutdown",
            close::INVALID_PAYLOAD => "invalid_payload",
            close::TOO_LARGE => "too_large",
            close::SLOW_CONSUMER => "slow_consumer",
            close::TOKEN_EXPIRED => "token_expired",
            close::HEARTBEAT_TIMEOUT => "heartbeat_timeout",
            close::MISSED_MESSAGES => "missed_messages",
            close::ABUSE => "abuse",
            close::UNAUTHORIZED => "unauthorized",
            _ => "api_disconnect",
        }
    }
}

/// Close codes (docs/protocol.md). 1001, 1011 and 4000-4499 mean
/// "reconnect"; 1007, 1009 and 4500-4999 mean "do not".
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The node is draining; reconnect at once.
    pub const SHUTDOWN: u16 = 1001;
    /// A text frame that is not valid UTF-8 (RFC 6455); do not reconnect.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Frame above max_message_size; do not reconnect.
    pub const TOO_LARGE: u16 = 1009;
    /// Send queue overflow; reconnect with backoff.
    pub const SLOW_CONSUMER: u16 = 4001;
    /// Token expired; reconnect with a fresh token.
    pub const TOKEN_EXPIRED: u16 = 4002;
    /// No frame after a server ping; reconnect with backoff.
    pub const HEARTBEAT_TIMEOUT: u16 = 4003;
    /// Disconnected through the HTTP API (default code); reconnect.
    pub const DISCONNECTED: u16 = 4004;
    /// Publications of a subscribed channel (or directed messages) could not
    /// be delivered: the node's fan-out fell behind, or a gap was found in a
    /// channel's offsets. Reconnect and resubscribe with `since` to recover
    /// what history still holds.
    pub const MISSED_MESSAGES: u16 = 4005;
    /// Sustained rate-limit abuse; do not reconnect.
    pub const ABUSE: u16 = 4501;
    /// Pusher connections only: a bad sign-in, or none within the app's
    /// timeout (Pusher's 4009, "connection unauthorized").
    pub const UNAUTHORIZED: u16 = 4009;
}

/// `since` of a subscribe: the last position the client saw.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Since {
    /// Last offset seen.
    pub offset: u64,
    /// Epoch of that offset; empty or absent matches any epoch.
    #[serde(default)]
    pub epoch: Option<String>,
}

/// A parsed client op.
#[derive(Debug)]
pub enum ClientOp {
    /// Subscribe to a channel, optionally recovering from `since`.
    Subscribe {
        /// Channel name (validated).
        channel: String,
        /// Recovery position.
        since: Option<Since>,
    },
    /// Unsubscribe from a channel.
    Unsubscribe {
        /// Channel name (validated).
        channel: String,
    },
    /// Publish to a channel.
    Publish {
        /// Channel name (validated).
        channel: String,
        /// Raw JSON payload.
        data: Box<RawValue>,
        /// Deliver to the publisher too.
        echo: bool,
    },
    /// List a channel's members.
    Presence {
        /// Channel name (validated).
        channel: String,
    },
    /// Application-level ping.
    Ping,
    /// Call the application backend's rpc hook.
    Rpc {
        /// The method, 1..=255 bytes; its meaning is the backend's.
        method: String,
        /// Raw JSON payload (null when absent).
        data: Box<RawValue>,
    },
    /// Replace the connection's JWT with a fresh one of the same user.
    Refresh {
        /// The new token.
        token: String,
    },
}

/// A client request: the op and its echoed id.
#[derive(Debug)]
pub struct Request {
    /// The client's id (any JSON scalar), echoed in the reply.
    pub id: Option<Value>,
    /// The op.
    pub op: ClientOp,
}

/// Whether `name` is a valid channel name: 1..=255 bytes of
/// `[A-Za-z0-9_:.@/=-]`.
pub fn valid_channel(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_:.@/=-".contains(&b))
}

/// Whether `name` is a valid namespace name (a channel name without `:`).
pub fn valid_namespace(name: &str) -> bool {
    valid_channel(name) && !name.contains(':')
}

fn field_str(obj: &serde_json::Map<String, Value>, key: &str) -> Result<String, ReplyError> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ReplyError::bad_request(format!(
            "field `{key}` must be a string"
        ))),
        None => Err(ReplyError::bad_request(format!("missing field `{key}`"))),
    }
}

fn channel_field(obj: &serde_json::Map<String, Value>) -> Result<String, ReplyError> {
    let channel = field_str(obj, "channel")?;
    if !valid_channel(&channel) {
        return Err(ReplyError::bad_request(
            "invalid channel name: 1-255 bytes of [A-Za-z0-9_:.@/=-]",
        ));
    }
    Ok(channel)
}

/// The one JSON policy of client input, WebSocket frames and HTTP API
/// bodies alike: serde_json's `Value` parser, so nesting is at most 128
/// deep and every number fits an f64 (`1e999999` is refused). A payload
/// kept as raw text (`data`) is checked by this parse first.
pub fn parse_json(bytes: &[u8]) -> Result<Value, ReplyError> {
    serde_json::from_slice(bytes).map_err(|e| ReplyError::bad_request(format!("invalid JSON: {e}")))
}

/// Parse a text frame. On error, returns the id (when readable) with the
/// error so the reply can still echo it.
pub fn parse_request(text: &str) -> Result<Request, (Option<Value>, ReplyError)> {
    let value = parse_json(text.as_bytes()).map_err(|e| (None, e))?;
    let Value::Object(obj) = value else {
        return Err((None, ReplyError::bad_request("frame must be a JSON object")));
    };
    let id = match obj.get("id") {
        None | Some(Value::Null) => None,
        Some(v @ (Value::String(_) | Value::Number(_))) => Some(v.clone()),
        Some(_) => {
            return Err((
                None,
                ReplyError::bad_request("field `id` must be a string or a number"),
            ))
        }
    };
    let op = parse_op(&obj).map_err(|e| (id.clone(), e))?;
    Ok(Request { id, op })
}

fn parse_op(obj: &serde_json::Map<String, Value>) -> Result<ClientOp, ReplyError> {
    let op = field_str(obj, "op")?;
    Ok(match op.as_str() {
        "subscribe" => {
            let since = match obj.get("since") {
                None | Some(Value::Null) => None,
                Some(v) => Some(Since::deserialize(v).map_err(|e| {
                    ReplyError::bad_request(format!(
                        "field `since` must be {{offset: number, epoch?: string}}: {e}"
                    ))
                })?),
            };
            ClientOp::Subscribe {
                channel: channel_field(obj)?,
                since,
            }
        }
        "unsubscribe" => ClientOp::Unsubscribe {
            channel: channel_field(obj)?,
        },
        "publish" => {
            let channel = channel_field(obj)?;
            let data = obj
                .get("data")
                .ok_or_else(|| ReplyError::bad_request("missing field `data`"))?;
            let data = serde_json::value::to_raw_value(data)
                .map_err(|_| ReplyError::bad_request("field `data` is not encodable"))?;
            let echo = match obj.get("echo") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(ReplyError::bad_request("field `echo` must be a boolean")),
            };
            ClientOp::Publish {
                channel,
                data,
                echo,
            }
        }
        "presence" => ClientOp::Presence {
            channel: channel_field(obj)?,
        },
        "ping" => ClientOp::Ping,
        "rpc" => {
            let method = field_str(obj, "method")?;
            if method.is_empty() || method.len() > 255 {
                return Err(ReplyError::bad_request(
                    "field `method` must be 1-255 bytes",
                ));
            }
            let data = obj.get("data").unwrap_or(&Value::Null);
            let data = serde_json::value::to_raw_value(data)
                .map_err(|_| ReplyError::bad_request("field `data` is not encodable"))?;
            ClientOp::Rpc { method, data }
        }
        "refresh" => {
            let token = field_str(obj, "token")?;
            if token.is_empty() {
                return Err(ReplyError::bad_request("field `token` must not be empty"));
            }
            ClientOp::Refresh { token }
        }
        other => {
            let mut shown: String = other.chars().take(32).collect();
            if shown.len() < other.len() {
                shown.push('…');
            }
            return Err(ReplyError::bad_request(format!("unknown op `{shown}`")));
        }
    })
}

/// Server frames. Encoded with `serde_json`; borrowed fields keep encoding
/// allocation-free apart from the output buffer.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// First frame after the upgrade.
    Welcome {
        /// Connection id.
        conn: &'a str,
        /// Node id.
        node: &'a str,
        /// User id, null if anonymous.
        user: Option<&'a str>,
        /// Server ping interval.
        ping_interval_ms: u64,
    },
    /// A channel publication.
    Message {
        /// Channel.
        channel: &'a str,
        /// Raw payload.
        data: &'a RawValue,
        /// History offset or null.
        offset: Option<u64>,
        /// Epoch of `offset` (only with history).
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
        /// Publisher user id or null.
        from: Option<&'a str>,
    },
    /// Sent to every connection.
    Broadcast {
        /// Raw payload.
        data: &'a RawValue,
    },
    /// Sent to this user or connection.
    Direct {
        /// Raw payload.
        data: &'a RawValue,
    },
    /// A member joined.
    Join {
        /// Channel.
        channel: &'a str,
        /// User id.
        user: &'a str,
        /// Connection id.
        conn: &'a str,
    },
    /// A member left.
    Leave {
        /// Channel.
        channel: &'a str,
        /// User id.
        user: &'a str,
        /// Connection id.
        conn: &'a str,
    },
    /// Reply to subscribe.
    Subscribed {
        /// Request id.
        id: Option<&'a Value>,
        /// Channel.
        channel: &'a str,
        /// Top offset (null without history).
        offset: Option<u64>,
        /// Stream epoch (null without history).
        epoch: Option<&'a str>,
        /// Whether `since` was fully recovered (only when `since` was sent).
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    },
    /// Reply to unsubscribe.
    Unsubscribed {
        /// Request id.
        id: Option<&'a Value>,
        /// Channel.
        channel: &'a str,
    },
    /// Reply to publish.
    Published {
        /// Request id.
        id: Option<&'a Value>,
        /// New offset or null.
        offset: Option<u64>,
    },
    /// Reply to presence.
    Presence {
        /// Request id.
        id: Option<&'a Value>,
        /// Channel.
        channel: &'a str,
        /// Members, at most `presence_reply_max_members` of them.
        members: &'a [crate::presence::Member],
        /// How many members the channel has.
        total: usize,
        /// Whether `members` lists fewer than `total`.
        truncated: bool,
    },
    /// Reply to ping.
    Pong {
        /// Request id.
        id: Option<&'a Value>,
    },
    /// Reply to rpc: the backend's data.
    Rpc {
        /// Request id.
        id: Option<&'a Value>,
        /// Raw payload from the backend.
        data: &'a RawValue,
    },
    /// Reply to refresh: the connection's new expiry.
    Refreshed {
        /// Request id.
        id: Option<&'a Value>,
        /// New expiry, seconds since the Unix epoch.
        exp: u64,
    },
    /// A refused op.
    Error {
        /// Request id.
        id: Option<&'a Value>,
        /// Code.
        code: ErrorCode,
        /// Message.
        message: &'a str,
    },
}

impl ServerFrame<'_> {
    /// Encode to JSON text. Encoding our own frame types cannot fail in
    /// practice; if it ever did, an `internal` error frame is sent instead.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","id":null,"code":"internal","message":"encoding failed"}"#.to_owned()
        })
    }
}

impl ReplyError {
    /// HTTP status for this error code.
    pub fn status(&self) -> u16 {
        match self.code {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> (Option<Value>, ReplyError) {
        parse_request(text).unwrap_err()
    }

    #[test]
    fn parses_every_op() {
        let r = parse_request(
            r#"{"op":"subscribe","id":1,"channel":"chat:a","since":{"offset":3,"epoch":"e"}}"#,
        )
        .unwrap();
        assert_eq!(r.id, Some(Value::from(1)));
        assert!(
            matches!(r.op, ClientOp::Subscribe { ref channel, since: Some(Since { offset: 3, .. }) } if channel == "chat:a")
        );
        let r = parse_request(r#"{"op":"publish","channel":"a","data":{"x":[1,2]},"echo":true}"#)
            .unwrap();
        match r.op {
            ClientOp::Publish { data, echo, .. } => {
                assert_eq!(data.get(), r#"{"x":[1,2]}"#);
                assert!(echo);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_request(r#"{"op":"ping"}"#).unwrap().op,
            ClientOp::Ping
        ));
        assert!(matches!(
            parse_request(r#"{"op":"presence","channel":"a"}"#)
                .unwrap()
                .op,
            ClientOp::Presence { .. }
        ));
        assert!(matches!(
            parse_request(r#"{"op":"unsubscribe","channel":"a"}"#)
                .unwrap()
                .op,
            ClientOp::Unsubscribe { .. }
        ));
    }

    #[test]
    fn bad_frames_are_bad_requests_with_id() {
        assert_eq!(err("nope").1.code, ErrorCode::BadRequest);
        assert_eq!(err("[1]").1.code, ErrorCode::BadRequest);
        let (id, e) = err(r#"{"op":"dance","id":"x"}"#);
        assert_eq!(id, Some(Value::from("x")));
        assert!(e.message.contains("unknown op"));
        assert!(err(r#"{"op":"subscribe","id":2}"#)
            .1
            .message
            .contains("missing field `channel`"));
        assert!(err(r#"{"op":"subscribe","channel":5}"#)
            .1
            .message
            .contains("must be a string"));
        assert!(err(r#"{"op":"subscribe","channel":"a b"}"#)
            .1
            .message
            .contains("invalid channel"));
        assert!(err(r#"{"op":"publish","channel":"a"}"#)
            .1
            .message
            .contains("data"));
        assert!(err(r#"{"op":"publish","channel":"a","data":1,"echo":"y"}"#)
            .1
            .message
            .contains("echo"));
        assert!(
            err(r#"{"op":"subscribe","channel":"a","since":{"offset":"x"}}"#)
                .1
                .message
                .contains("since")
        );
        assert!(err(r#"{"op":1}"#).1.message.contains("`op`"));
    }

    #[test]
    fn rpc_and_refresh_parse_and_refuse_bad_fields() {
        match parse_request(r#"{"op":"rpc","id":7,"method":"m","data":[1]}"#)
            .unwrap()
            .op
        {
            ClientOp::Rpc { method, data } => {
                assert_eq!(method, "m");
                assert_eq!(data.get(), "[1]");
            }
            other => panic!("{other:?}"),
        }
        match parse_request(r#"{"op":"rpc","method":"m"}"#).unwrap().op {
            ClientOp::Rpc { data, .. } => assert_eq!(data.get(), "null"),
            other => panic!("{other:?}"),
        }
        let (id, e) = err(r#"{"op":"rpc","id":8}"#);
        assert_eq!((id, e.code), (Some(Value::from(8)), ErrorCode::BadRequest));
        assert!(err(r#"{"op":"rpc","method":""}"#)
            .1
            .message
            .contains("method"));
        assert!(err(r#"{"op":"rpc","method":7}"#)
            .1
            .message
            .contains("method"));
        assert!(matches!(
            parse_request(r#"{"op":"refresh","token":"t"}"#).unwrap().op,
            ClientOp::Refresh { ref token } if token == "t"
        ));
        let (id, e) = err(r#"{"op":"refresh","id":"r","token":1}"#);
        assert_eq!(
            (id, e.code),
            (Some(Value::from("r")), ErrorCode::BadRequest)
        );
        assert!(err(r#"{"op":"refresh","token":""}"#)
            .1
            .message
            .contains("token"));
        let s = ServerFrame::Refreshed {
            id: Some(&Value::from(1)),
            exp: 5,
        }
        .encode();
        assert_eq!(s, r#"{"type":"refreshed","id":1,"exp":5}"#);
    }

    #[test]
    fn channel_names() {
        assert!(valid_channel("chat:room-1/a@b=c.d_e"));
        assert!(!valid_channel(""));
        assert!(!valid_channel("a b"));
        assert!(!valid_channel("ü"));
        assert!(valid_channel(&"a".repeat(255)));
        assert!(!valid_channel(&"a".repeat(256)));
    }

    #[test]
    fn frames_encode() {
        let data = RawValue::from_string(r#"{"a":1}"#.to_owned()).unwrap();
        let s = ServerFrame::Message {
            channel: "c",
            data: &data,
            offset: Some(4),
            epoch: None,
            from: None,
        }
        .encode();
        assert_eq!(
            s,
            r#"{"type":"message","channel":"c","data":{"a":1},"offset":4,"from":null}"#
        );
        let s = ServerFrame::Subscribed {
            id: None,
            channel: "c",
            offset: None,
            epoch: None,
            recovered: None,
        }
        .encode();
        assert_eq!(
            s,
            r#"{"type":"subscribed","id":null,"channel":"c","offset":null,"epoch":null}"#
        );
    }
}
