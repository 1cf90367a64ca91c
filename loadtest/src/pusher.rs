//! The Pusher Channels protocol 7 as the load generator speaks it (issue
//! 14, /work/pusher-contract.md): the app a run uses, the `--protocol`
//! switch of `idle` and `fanout`, the WebSocket path, the frames a client
//! sends and looks for, the channel and REST signatures.
//!
//! Invariants: signatures are computed over the exact bytes sent (the REST
//! body is serialised once, hashed, then sent as is); nothing here
//! allocates on a subscriber's receive path except for the rare control
//! frames ([`is_ping`] is a byte search, not a JSON parse).

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

/// Which wire protocol the clients speak.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// The gateway's own protocol on `/ws` (JWT or `?user=`).
    #[default]
    V1,
    /// Pusher Channels protocol 7 on `/app/{key}`, publishing with the
    /// signed REST API `POST /apps/{id}/events`.
    Pusher,
}

/// One Pusher app of the gateway's `[[pusher.apps]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PusherApp {
    /// `app_id` (REST path `/apps/{id}`).
    pub id: String,
    /// Key (WebSocket path `/app/{key}`, `auth_key`).
    pub key: String,
    /// HMAC-SHA256 secret (channel auth, REST signatures).
    pub secret: String,
}

/// The protocol switch of `idle` and `fanout`, and the app to use.
#[derive(Debug, Clone, Args)]
pub struct ProtocolArgs {
    /// Wire protocol: v1 (`/ws`) or pusher (`/app/{key}`; the path of
    /// --url is then ignored, only its host and port are used).
    #[arg(long, value_enum, default_value_t = Protocol::V1)]
    pub protocol: Protocol,
    /// Pusher app id (with --protocol pusher).
    #[arg(long, default_value = "loadtest")]
    pub pusher_app_id: String,
    /// Pusher app key.
    #[arg(long, default_value = "loadtest-key")]
    pub pusher_key: String,
    /// Pusher app secret.
    #[arg(
        long,
        env = "LOADTEST_PUSHER_SECRET",
        default_value = "loadtest-secret-0123456789"
    )]
    pub pusher_secret: String,
}

impl ProtocolArgs {
    /// v1 with the default app (for the suite and tests).
    pub fn v1() -> Self {
        Self {
            protocol: Protocol::V1,
            pusher_app_id: "loadtest".into(),
            pusher_key: "loadtest-key".into(),
            pusher_secret: "loadtest-secret-0123456789".into(),
        }
    }

    /// Pusher with `app`.
    pub fn pusher(app: &PusherApp) -> Self {
        Self {
            protocol: Protocol::Pusher,
            pusher_app_id: app.id.clone(),
            pusher_key: app.key.clone(),
            pusher_secret: app.secret.clone(),
        }
    }

    /// The app when the protocol is Pusher.
    pub fn app(&self) -> Option<PusherApp> {
        (self.protocol == Protocol::Pusher).then(|| PusherApp {
            id: self.pusher_app_id.clone(),
            key: self.pusher_key.clone(),
            secret: self.pusher_secret.clone(),
        })
    }
}

/// The WebSocket path of `key`, with the query pusher-js sends.
pub fn ws_path(key: &str) -> String {
    format!("/app/{key}?protocol=7&client=loadtest&version=1")
}

/// `pusher:pong`, the answer to a `pusher:ping`.
pub const PONG: &str = r#"{"event":"pusher:pong","data":{}}"#;

/// `pusher:ping`, sent after `activity_timeout` without a frame (as
/// pusher-js does).
pub const PING: &str = r#"{"event":"pusher:ping","data":{}}"#;

/// Lowercase hex.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// hex(HMAC-SHA256(secret, msg)).
pub fn hmac_hex(secret: &str, msg: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    hex(ring::hmac::sign(&key, msg.as_bytes()).as_ref())
}

/// hex(MD5(body)).
pub fn md5_hex(body: &[u8]) -> String {
    hex(&Md5::digest(body))
}

/// Whether a channel needs a signature to subscribe.
fn needs_auth(channel: &str) -> bool {
    channel.starts_with("private-") || channel.starts_with("presence-")
}

/// The `pusher:subscribe` frame for `channel`: public as is, private and
/// presence signed with `app` for `socket_id` (presence as `user`).
pub fn subscribe_frame(app: &PusherApp, socket_id: &str, channel: &str, user: &str) -> String {
    if !needs_auth(channel) {
        return serde_json::json!({"event": "pusher:subscribe", "data": {"channel": channel}})
            .to_string();
    }
    if channel.starts_with("presence-") {
        let channel_data = serde_json::json!({"user_id": user}).to_string();
        let sig = hmac_hex(
            &app.secret,
            &format!("{socket_id}:{channel}:{channel_data}"),
        );
        serde_json::json!({"event": "pusher:subscribe", "data": {
            "channel": channel,
            "auth": format!("{}:{sig}", app.key),
            "channel_data": channel_data,
        }})
        .to_string()
    } else {
        let sig = hmac_hex(&app.secret, &format!("{socket_id}:{channel}"));
        serde_json::json!({"event": "pusher:subscribe", "data": {
            "channel": channel,
            "auth": format!("{}:{sig}", app.key),
        }})
        .to_string()
    }
}

/// The query string of a signed REST request (`auth_signature` last):
/// `auth_key`, `auth_timestamp`, `auth_version=1.0` and, for a body,
/// `body_md5`, signed as `METHOD\nPATH\n<sorted query>`.
pub fn signed_query(
    app: &PusherApp,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timestamp: u64,
) -> String {
    let mut params = vec![
        ("auth_key", app.key.clone()),
        ("auth_timestamp", timestamp.to_string()),
        ("auth_version", "1.0".to_owned()),
    ];
    if let Some(b) = body {
        params.push(("body_md5", md5_hex(b)));
    }
    params.sort();
    let query = params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let sig = hmac_hex(&app.secret, &format!("{method}\n{path}\n{query}"));
    format!("{query}&auth_signature={sig}")
}

/// The body of `POST /apps/{id}/events` publishing `data` as event `ev` on
/// `channel`.
pub fn event_body(channel: &str, data: &str) -> String {
    // Keys in the order of the Pusher docs (serde_json's map sorts them).
    let s = |v: &str| serde_json::Value::from(v).to_string();
    format!(
        r#"{{"name":"ev","channels":[{}],"data":{}}}"#,
        s(channel),
        s(data)
    )
}

/// A signed `POST /apps/{id}/events` of `body`: its path with query.
pub fn events_path(app: &PusherApp, body: &str, timestamp: u64) -> String {
    let path = format!("/apps/{}/events", app.id);
    let query = signed_query(app, "POST", &path, Some(body.as_bytes()), timestamp);
    format!("{path}?{query}")
}

/// A control frame a client reads during setup.
#[derive(Debug, PartialEq, Eq)]
pub enum Control {
    /// `pusher:connection_established`: socket id, activity timeout (s).
    Established {
        /// The connection's `socket_id`.
        socket_id: String,
        /// Seconds without a frame after which the client pings.
        activity_timeout: u64,
    },
    /// `pusher_internal:subscription_succeeded` for this channel.
    Subscribed(String),
    /// `pusher:subscription_error` or `pusher:error`: a stable kind and
    /// the frame.
    Refused(String, String),
    /// `pusher:ping`.
    Ping,
    /// Anything else (member_added, events, ...).
    Other,
}

/// `data` of a frame: Pusher sends it as a JSON string holding JSON, but
/// an object is taken too.
fn data_of(v: &serde_json::Value) -> serde_json::Value {
    match v.get("data") {
        Some(serde_json::Value::String(s)) => {
            serde_json::from_str(s).unwrap_or(serde_json::Value::String(s.clone()))
        }
        Some(d) => d.clone(),
        None => serde_json::Value::Null,
    }
}

/// Classifies a text frame (not one of our data frames).
pub fn control(p: &[u8]) -> Result<Control> {
    let v: serde_json::Value = serde_json::from_slice(p).context("bad JSON frame")?;
    let event = v.get("event").and_then(|e| e.as_str()).unwrap_or("");
    Ok(match event {
        "pusher:connection_established" => {
            let d = data_of(&v);
            let Some(socket_id) = d.get("socket_id").and_then(|s| s.as_str()) else {
                bail!("connection_established without a socket_id: {v}");
            };
            Control::Established {
                socket_id: socket_id.to_owned(),
                activity_timeout: d
                    .get("activity_timeout")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(120),
            }
        }
        "pusher_internal:subscription_succeeded" => Control::Subscribed(
            v.get("channel")
                .and_then(|c| c.as_str())
                .unwrap_or("")
                .to_owned(),
        ),
        "pusher:subscription_error" => {
            let d = data_of(&v);
            let status = d.get("status").and_then(serde_json::Value::as_u64);
            Control::Refused(format!("subscribe_{}", status.unwrap_or(0)), v.to_string())
        }
        "pusher:error" => {
            let d = data_of(&v);
            let code = d.get("code").and_then(serde_json::Value::as_u64);
            Control::Refused(format!("pusher_{}", code.unwrap_or(0)), v.to_string())
        }
        "pusher:ping" => Control::Ping,
        _ => Control::Other,
    })
}

/// Whether a text frame is a `pusher:ping` (a byte search: the receive
/// path calls this for every frame that is not one of our data frames).
pub fn is_ping(p: &[u8]) -> bool {
    const KEY: &[u8] = b"\"pusher:ping\"";
    p.windows(KEY.len()).any(|w| w == KEY)
}

/// Checks a channel name against Pusher's alphabet.
pub fn check_channel_prefix(prefix: &str) -> Result<()> {
    let ok = prefix
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_=@,.;".contains(c));
    if !ok {
        bail!("{prefix:?} is not a Pusher channel name prefix (letters, digits and -_=@,.; only)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> PusherApp {
        PusherApp {
            id: "loadtest".into(),
            key: "loadtest-key".into(),
            secret: "loadtest-secret".into(),
        }
    }

    #[test]
    fn hmac_matches_the_pusher_docs_example() {
        // pusher.com/docs/channels/library_auth_reference/auth-signatures
        assert_eq!(
            hmac_hex("7ad3773142a6692b25b8", "1234.1234:private-foobar"),
            "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
    }

    #[test]
    fn signs_an_events_request_like_python() {
        // python3: hashlib.md5(body).hexdigest(); hmac.new(b"loadtest-secret",
        // ("POST\n/apps/loadtest/events\n" + query).encode(), hashlib.sha256)
        let body = event_body("bench-0", "hello");
        assert_eq!(
            body,
            r#"{"name":"ev","channels":["bench-0"],"data":"hello"}"#
        );
        assert_eq!(md5_hex(body.as_bytes()), "73862173289c52a353a2265bd0e10078");
        assert_eq!(
            events_path(&app(), &body, 1_700_000_000),
            "/apps/loadtest/events?auth_key=loadtest-key&auth_timestamp=1700000000\
             &auth_version=1.0&body_md5=73862173289c52a353a2265bd0e10078\
             &auth_signature=831b40a8ec905c38272d0dc42fa68dbb208123e3c11c1fc6ac16a566bd0ee26a"
        );
    }

    #[test]
    fn subscribe_frames() -> Result<()> {
        let public = subscribe_frame(&app(), "1.2", "bench-0", "u");
        assert_eq!(
            public,
            r#"{"data":{"channel":"bench-0"},"event":"pusher:subscribe"}"#
        );
        let presence = subscribe_frame(&app(), "123.456", "presence-room-7", "idle7");
        let v: serde_json::Value = serde_json::from_str(&presence)?;
        assert_eq!(v["data"]["channel_data"], r#"{"user_id":"idle7"}"#);
        // python3: hmac.new(b"loadtest-secret",
        // b'123.456:presence-room-7:{"user_id":"idle7"}', hashlib.sha256)
        assert_eq!(
            v["data"]["auth"],
            "loadtest-key:e7332c4b119db8273e8cd29dabb7932ef33987c4ed51817412098cabe17c6ecb"
        );
        Ok(())
    }

    #[test]
    fn classifies_control_frames() -> Result<()> {
        let est = br#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"123.456\",\"activity_timeout\":30}"}"#;
        assert_eq!(
            control(est)?,
            Control::Established {
                socket_id: "123.456".into(),
                activity_timeout: 30
            }
        );
        let ok = br#"{"event":"pusher_internal:subscription_succeeded","channel":"bench-0","data":"{}"}"#;
        assert_eq!(control(ok)?, Control::Subscribed("bench-0".into()));
        let err = br#"{"event":"pusher:subscription_error","channel":"presence-x","data":{"type":"AuthError","error":"bad","status":401}}"#;
        assert!(matches!(control(err)?, Control::Refused(k, _) if k == "subscribe_401"));
        let e = br#"{"event":"pusher:error","data":{"code":4001,"message":"no app"}}"#;
        assert!(matches!(control(e)?, Control::Refused(k, _) if k == "pusher_4001"));
        let ping = br#"{"event":"pusher:ping","data":"{}"}"#;
        assert_eq!(control(ping)?, Control::Ping);
        assert!(is_ping(ping));
        assert!(!is_ping(br#"{"event":"pusher:pong","data":"{}"}"#));
        Ok(())
    }

    #[test]
    fn checks_channel_prefixes() {
        assert!(check_channel_prefix("bench-").is_ok());
        assert!(check_channel_prefix("presence-room-").is_ok());
        assert!(check_channel_prefix("fan:").is_err());
    }
}
