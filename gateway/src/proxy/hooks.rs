//! The JSON the proxy sends and reads, hook by hook (documented field by
//! field in docs/backend.md, "Proxy"). Requests are borrowed views of the
//! connection's state; answers are `{"result": ...}`, `{"error": {code?,
//! message?}}` or `{"disconnect": {code?, reason?}}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::protocol::{close, CloseReason, ErrorCode, ReplyError};

/// A backend's answer to one hook.
#[derive(Debug)]
pub enum Answer<T> {
    /// Allowed, with the hook's result.
    Result(T),
    /// Refused (an `error` or a `disconnect`).
    Refused(Refusal),
}

/// A refusal the backend gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The reply error the client gets.
    pub error: ReplyError,
    /// Set when the backend asked to close the connection.
    pub disconnect: Option<CloseReason>,
}

#[derive(Deserialize)]
struct BackendError {
    #[serde(default)]
    code: Option<Value>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct BackendDisconnect {
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(bound = "T: Deserialize<'de>")]
struct Raw<T> {
    #[serde(default = "none")]
    result: Option<T>,
    #[serde(default)]
    error: Option<BackendError>,
    #[serde(default)]
    disconnect: Option<BackendDisconnect>,
}

fn none<T>() -> Option<T> {
    None
}

/// The codes a backend may give a refusal; anything else is `forbidden`.
fn client_code(code: Option<&Value>) -> ErrorCode {
    match code.and_then(Value::as_str) {
        Some("bad_request") => ErrorCode::BadRequest,
        Some("unauthorized") => ErrorCode::Unauthorized,
        Some("not_found") => ErrorCode::NotFound,
        Some("rate_limited") => ErrorCode::RateLimited,
        _ => ErrorCode::Forbidden,
    }
}

fn truncated(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

impl<T> Answer<T> {
    /// Parse a hook's answer body. A body with neither `result`, `error`
    /// nor `disconnect` is not an answer (`Err`).
    pub fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error>
    where
        T: for<'de> Deserialize<'de>,
    {
        let raw: Raw<T> = serde_json::from_slice(bytes)?;
        if let Some(d) = raw.disconnect {
            let code = d
                .code
                .filter(|c| (4000..=4999).contains(c))
                .unwrap_or(close::DISCONNECTED);
            let reason = truncated(d.reason.as_deref().unwrap_or("disconnected"), 64);
            return Ok(Answer::Refused(Refusal {
                error: ReplyError::new(ErrorCode::Forbidden, "refused by the backend"),
                disconnect: Some(CloseReason::new(code, reason)),
            }));
        }
        if let Some(e) = raw.error {
            let message = e
                .message
                .filter(|m| !m.is_empty())
                .map(|m| truncated(&m, 200))
                .unwrap_or_else(|| "refused by the backend".to_owned());
            return Ok(Answer::Refused(Refusal {
                error: ReplyError::new(client_code(e.code.as_ref()), message),
                disconnect: None,
            }));
        }
        match raw.result {
            Some(r) => Ok(Answer::Result(r)),
            None => Err(serde::de::Error::custom(
                "answer has no result, error or disconnect",
            )),
        }
    }
}

/// Connect hook request.
#[derive(Serialize)]
pub struct ConnectRequest<'a> {
    /// Always "websocket".
    pub transport: &'static str,
    /// The client's address (after trusted proxies).
    pub addr: String,
    /// The forwarded upgrade headers, lower-case names.
    pub headers: BTreeMap<&'a str, &'a str>,
}

/// Connect hook result.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ConnectResult {
    /// User id; empty or absent: anonymous.
    pub user: Option<String>,
    /// Presence info.
    pub info: Option<Box<RawValue>>,
    /// Allowed subscribe patterns; absent: any.
    pub channels: Option<Vec<String>>,
    /// Allowed publish patterns; absent: any.
    pub publish: Option<Vec<String>>,
    /// Session expiry, Unix seconds; absent: none.
    pub expire_at: Option<u64>,
    /// Channels to subscribe on connect.
    pub subs: Vec<String>,
}

/// Refresh hook request.
#[derive(Serialize)]
pub struct RefreshRequest<'a> {
    /// Connection id.
    pub conn: &'a str,
    /// User id.
    pub user: Option<&'a str>,
    /// The expiry now ending, Unix seconds.
    pub expire_at: Option<u64>,
}

/// Refresh hook result.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RefreshResult {
    /// The session is over: close with 4002.
    pub expired: bool,
    /// The new expiry, Unix seconds.
    pub expire_at: Option<u64>,
}

/// Subscribe and publish hook request.
#[derive(Serialize)]
pub struct ChannelRequest<'a> {
    /// Connection id.
    pub conn: &'a str,
    /// User id.
    pub user: Option<&'a str>,
    /// Channel.
    pub channel: &'a str,
    /// The publication (publish hook only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawValue>,
}

/// Subscribe hook result.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SubscribeResult {
    /// Presence info of this subscription, shown instead of the
    /// connection's; at most [`MAX_SUBSCRIBE_INFO`] bytes (a larger one
    /// makes the answer unusable: outcome `error`).
    #[serde(deserialize_with = "bounded_info")]
    pub info: Option<Box<RawValue>>,
}

/// A subscribe hook's `info`: `null` is none, longer than
/// [`MAX_SUBSCRIBE_INFO`] is an error.
fn bounded_info<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    let raw = Box::<RawValue>::deserialize(d)?;
    if raw.get().len() > MAX_SUBSCRIBE_INFO {
        return Err(serde::de::Error::custom(format!(
            "info is {} bytes, more than {MAX_SUBSCRIBE_INFO}",
            raw.get().len()
        )));
    }
    Ok((raw.get() != "null").then_some(raw))
}

/// The largest `info` a subscribe hook may attach (bytes of JSON): each
/// subscription holds its own copy.
pub const MAX_SUBSCRIBE_INFO: usize = 4096;

/// Publish hook result.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PublishResult {
    /// Replaces the publication's data when present.
    pub data: Option<Box<RawValue>>,
}

/// RPC hook request.
#[derive(Serialize)]
pub struct RpcRequest<'a> {
    /// Connection id.
    pub conn: &'a str,
    /// User id.
    pub user: Option<&'a str>,
    /// The client's method.
    pub method: &'a str,
    /// The client's data.
    pub data: &'a RawValue,
}

/// RPC hook result.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RpcResult {
    /// Handed to the client in the `rpc` reply (null when absent).
    pub data: Option<Box<RawValue>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        let a = Answer::<PublishResult>::parse(br#"{"result":{"data":{"x":1}}}"#).unwrap();
        assert!(
            matches!(a, Answer::Result(PublishResult { data: Some(ref d) }) if d.get() == r#"{"x":1}"#)
        );
        let a = Answer::<PublishResult>::parse(br#"{"error":{"code":"not_found","message":"m"}}"#)
            .unwrap();
        assert!(
            matches!(a, Answer::Refused(ref r) if r.error.code == ErrorCode::NotFound && r.error.message == "m")
        );
        let a = Answer::<PublishResult>::parse(br#"{"error":{"code":"internal"}}"#).unwrap();
        assert!(matches!(a, Answer::Refused(ref r) if r.error.code == ErrorCode::Forbidden));
        let a = Answer::<PublishResult>::parse(br#"{"disconnect":{"code":1000}}"#).unwrap();
        assert!(
            matches!(a, Answer::Refused(Refusal { disconnect: Some(ref d), .. }) if d.code == close::DISCONNECTED)
        );
        assert!(Answer::<PublishResult>::parse(br#"{}"#).is_err());
        assert!(Answer::<PublishResult>::parse(b"nope").is_err());
        let a = Answer::<ConnectResult>::parse(br#"{"result":{"user":"u","subs":["a"]}}"#).unwrap();
        assert!(
            matches!(a, Answer::Result(ref c) if c.user.as_deref() == Some("u") && c.subs == ["a"])
        );
    }
}
