//! Signed requests of Pusher's HTTP API: every request carries
//! `auth_key`, `auth_timestamp` (within [`MAX_SKEW_SECS`] of the node's
//! clock), `auth_version=1.0`, `body_md5` (requests with a body) and
//! `auth_signature`, the hex HMAC-SHA256 with the app secret of
//! `METHOD\nPATH\n<the other parameters, keys lowercased, sorted,
//! key=value joined by &>`; and the plain-text refusals every route
//! answers with ([`Refused`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::metrics as m;
use crate::node::{backend_error, Node};
use crate::pusher::apps::App;
use crate::pusher::sign;

/// How far `auth_timestamp` may be from the node's clock, seconds.
pub const MAX_SKEW_SECS: u64 = 600;

/// A refusal: status and plain-text message.
pub struct Refused(pub StatusCode, pub String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

pub(super) fn bad(message: impl Into<String>) -> Refused {
    Refused(StatusCode::BAD_REQUEST, message.into())
}

fn unauthorized(reason: &'static str, message: impl Into<String>) -> Refused {
    metrics::counter!(m::AUTH_FAILURES, "reason" => reason).increment(1);
    Refused(StatusCode::UNAUTHORIZED, message.into())
}

pub(super) fn unavailable(op: &'static str, e: &crate::backplane::BackplaneError) -> Refused {
    backend_error(op, e);
    backend_down()
}

/// 503: the backend did not answer (counted by the caller, or by
/// [`unavailable`]).
pub(super) fn backend_down() -> Refused {
    Refused(
        StatusCode::SERVICE_UNAVAILABLE,
        "backend unavailable".to_owned(),
    )
}

/// A request of app `{id}` whose signature holds (the extractor every
/// route takes; its refusal is the answer): the app, the query's other
/// parameters and the body.
pub struct Signed {
    /// The app of the path's `{id}`.
    pub app: Arc<App>,
    /// The query without `auth_signature`, keys lowercased.
    pub params: BTreeMap<String, String>,
    /// The body (empty for GET).
    pub body: Bytes,
}

impl FromRequest<Arc<Node>> for Signed {
    type Rejection = Refused;

    async fn from_request(req: Request, node: &Arc<Node>) -> Result<Self, Refused> {
        let (mut parts, body) = req.into_parts();
        let path = RawPathParams::from_request_parts(&mut parts, node)
            .await
            .map_err(|e| bad(e.body_text()))?;
        let id = path
            .iter()
            .find(|(k, _)| *k == "id")
            .map(|(_, v)| v.to_owned())
            .ok_or_else(|| bad("missing app id"))?;
        let (method, uri) = (parts.method.clone(), parts.uri.clone());
        // Bytes honours the routes' body limit (413).
        let body = Bytes::from_request(Request::from_parts(parts, body), node)
            .await
            .map_err(|e| Refused(e.status(), e.body_text()))?;
        let (app, params) = authenticate(node, &id, &method, &uri, uri.query(), &body)?;
        Ok(Signed { app, params, body })
    }
}

/// `application/x-www-form-urlencoded` decoding of one query component
/// (a `%` not followed by two hex digits stays as it is).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escaped = (b == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, escaped) {
            (_, Some(decoded)) => {
                out.push(decoded);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (b, None) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query's parameters, keys lowercased (a repeated key: the last).
fn params(query: Option<&str>) -> BTreeMap<String, String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k).to_ascii_lowercase(), decode(v))
        })
        .collect()
}

/// Check a request's signature for app `id`; the app and the query's
/// other parameters when it holds.
fn authenticate(
    node: &Node,
    id: &str,
    method: &Method,
    uri: &Uri,
    query: Option<&str>,
    body: &[u8],
) -> Result<(Arc<App>, BTreeMap<String, String>), Refused> {
    let Some(app) = node.apps.by_id(id).cloned() else {
        return Err(Refused(StatusCode::NOT_FOUND, format!("Unknown app: {id}")));
    };
    let mut params = params(query);
    let config = &app.config;
    if params.get("auth_key").map(String::as_str) != Some(config.key.as_str()) {
        return Err(unauthorized("pusher_api_key", "Unknown auth_key"));
    }
    if params.get("auth_version").map(String::as_str) != Some("1.0") {
        return Err(unauthorized(
            "pusher_api_version",
            "auth_version must be 1.0",
        ));
    }
    let now = crate::clock::now_us() / 1_000_000;
    let ts: Option<u64> = params.get("auth_timestamp").and_then(|t| t.parse().ok());
    match ts {
        Some(ts) if ts.abs_diff(now) <= MAX_SKEW_SECS => {}
        _ => {
            return Err(unauthorized(
                "pusher_api_timestamp",
                format!("Timestamp expired: given {ts:?}, server time {now}, allowed skew {MAX_SKEW_SECS} s"),
            ))
        }
    }
    if !body.is_empty() {
        let want = sign::md5_hex(body);
        if !params
            .get("body_md5")
            .is_some_and(|given| sign::same(given, &want))
        {
            return Err(unauthorized(
                "pusher_api_body_md5",
                "body_md5 does not match the body",
            ));
        }
    }
    let Some(given) = params.remove("auth_signature") else {
        return Err(unauthorized(
            "pusher_api_signature",
            "Missing auth_signature",
        ));
    };
    let query_string: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let to_sign = format!(
        "{}\n{}\n{}",
        method.as_str(),
        uri.path(),
        query_string.join("&")
    );
    let want = sign::hmac_hex(&config.secret, &[to_sign.as_bytes()]);
    if !sign::same(&given.to_ascii_lowercase(), &want) {
        return Err(unauthorized(
            "pusher_api_signature",
            format!(
                "Invalid signature: you should have sent HmacSHA256Hex({to_sign:?}, your_secret)"
            ),
        ));
    }
    Ok((app, params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_decoded_and_lowercased() {
        let p = params(Some(
            "Auth_Key=k&info=user_count%2Csubscription_count&x=a+b&bad=%zz",
        ));
        assert_eq!(p["auth_key"], "k");
        assert_eq!(p["info"], "user_count,subscription_count");
        assert_eq!(p["x"], "a b");
        assert_eq!(p["bad"], "%zz");
    }
}
