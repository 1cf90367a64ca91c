//! Pusher frames: what clients send ([`ClientFrame`]) and what the server
//! sends ([`Out`]), as JSON text. Following Pusher, the `data` of
//! connection_established, subscription_succeeded and member events is a
//! JSON *string* holding JSON; errors carry an object.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::presence::Member;

/// One frame from a client: `{"event", "channel"?, "data"?}`.
#[derive(Debug, Deserialize)]
pub struct ClientFrame {
    /// Event name (`pusher:subscribe`, `client-typing`, ...).
    pub event: String,
    /// Channel of a client event.
    #[serde(default)]
    pub channel: Option<String>,
    /// The event's data, kept as sent.
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
}

/// `data` of `pusher:subscribe`.
#[derive(Debug, Deserialize)]
pub struct Subscribe {
    /// The channel.
    pub channel: String,
    /// `key:signature` for private and presence channels.
    #[serde(default)]
    pub auth: Option<String>,
    /// Presence: the JSON string `{"user_id", "user_info"?}` that was signed.
    #[serde(default)]
    pub channel_data: Option<String>,
}

/// `data` of `pusher:unsubscribe`.
#[derive(Debug, Deserialize)]
pub struct Unsubscribe {
    /// The channel.
    pub channel: String,
}

/// `data` of `pusher:signin`.
#[derive(Debug, Deserialize)]
pub struct Signin {
    /// `key:signature` over the socket id and `user_data`.
    pub auth: String,
    /// The JSON string `{"id", ...}` that was signed.
    pub user_data: String,
}

/// A presence channel's `channel_data` (and a signed-in user's data).
#[derive(Debug, Deserialize)]
pub struct ChannelData {
    /// The member's user id (a string or a number).
    pub user_id: serde_json::Value,
    /// Shown to the other members.
    #[serde(default)]
    pub user_info: Option<Box<RawValue>>,
}

/// Whether JSON kept as sent may be relayed to other clients: it parses
/// as a value. `RawValue` alone only checks the syntax, so a string with a
/// lone surrogate escape (`"\ud800"`) passes it, and strict JSON parsers
/// (the gateway's own, other languages') refuse it.
pub fn relayable(data: &RawValue) -> bool {
    serde_json::from_str::<serde_json::Value>(data.get()).is_ok()
}

/// A user id as Pusher accepts it: a non-empty string, or a number (made a
/// string); at most 200 bytes.
pub fn user_id(v: &serde_json::Value) -> Option<String> {
    let s = match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => return None,
    };
    (!s.is_empty() && s.len() <= 200).then_some(s)
}

/// What a Pusher presence subscription keeps on the hub (its
/// subscription info): `{"user_id":"<id>","user_info":<json>?}`, the id
/// made a string. Rebuilt into a member by [`presence_member`].
pub fn stored_member(user_id: &str, user_info: Option<&RawValue>) -> Box<RawValue> {
    let s = match user_info {
        Some(info) => format!(
            "{{\"user_id\":{},\"user_info\":{}}}",
            json_string(user_id),
            info.get()
        ),
        None => format!("{{\"user_id\":{}}}", json_string(user_id)),
    };
    raw(s)
}

/// The presence member of socket `conn` on `node` from what
/// [`stored_member`] kept (`None`: unreadable, never expected).
pub fn presence_member(conn: &str, node: &str, stored: Option<&RawValue>) -> Member {
    #[derive(Deserialize)]
    struct Stored {
        user_id: String,
        #[serde(default)]
        user_info: Option<Box<RawValue>>,
    }
    let parsed: Option<Stored> = stored.and_then(|s| serde_json::from_str(s.get()).ok());
    let (user, info) = parsed.map_or((String::new(), None), |s| (s.user_id, s.user_info));
    Member {
        user,
        conn: conn.to_owned(),
        node: node.to_owned(),
        info,
    }
}

/// `{"event","channel"?,"data"}` with `data` already JSON.
#[derive(Serialize)]
struct Frame<'a> {
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
}

/// Server frames.
pub enum Out<'a> {
    /// `pusher:connection_established`.
    Established {
        /// The socket id.
        socket_id: &'a str,
        /// Seconds of silence after which the client pings.
        activity_timeout: u64,
    },
    /// `pusher:error` (`channel` when it concerns one).
    Error {
        /// Pusher error code (4000-4399) or None.
        code: Option<u16>,
        /// Human-readable message.
        message: &'a str,
    },
    /// `pusher:pong`.
    Pong,
    /// `pusher_internal:subscription_succeeded`; `presence`: the members
    /// object `{"ids","hash","count"}`.
    Subscribed {
        /// The channel.
        channel: &'a str,
        /// Presence channels: the members.
        presence: Option<&'a RawValue>,
    },
    /// `pusher:subscription_error`.
    SubscriptionError {
        /// The channel.
        channel: &'a str,
        /// `AuthError`, `LimitReached`, `InvalidChannel`, `ServerError`.
        kind: &'a str,
        /// Human-readable message.
        error: &'a str,
        /// HTTP-like status.
        status: u16,
    },
    /// `pusher_internal:member_added`.
    MemberAdded {
        /// The channel.
        channel: &'a str,
        /// The member's user id.
        user_id: &'a str,
        /// Its `user_info` (JSON), if any.
        user_info: Option<&'a RawValue>,
    },
    /// `pusher_internal:member_removed`.
    MemberRemoved {
        /// The channel.
        channel: &'a str,
        /// The member's user id.
        user_id: &'a str,
    },
    /// `pusher:signin_success`.
    SigninSuccess {
        /// The signed `user_data` string.
        user_data: &'a str,
    },
    /// An application event (REST or client event).
    Event {
        /// Event name.
        event: &'a str,
        /// The channel.
        channel: &'a str,
        /// Its data (JSON: usually a string).
        data: &'a RawValue,
        /// Client events on presence channels: the sender's user id.
        user_id: Option<&'a str>,
    },
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

fn raw(s: String) -> Box<RawValue> {
    RawValue::from_string(s).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

impl Out<'_> {
    /// The frame as JSON text.
    pub fn encode(&self) -> String {
        let frame = |event: &str, channel: Option<&str>, data: &RawValue, user_id: Option<&str>| {
            serde_json::to_string(&Frame {
                event,
                channel,
                data,
                user_id,
            })
            .unwrap_or_default()
        };
        match self {
            Out::Established {
                socket_id,
                activity_timeout,
            } => {
                let inner = serde_json::json!({
                    "socket_id": socket_id,
                    "activity_timeout": activity_timeout,
                })
                .to_string();
                frame(
                    "pusher:connection_established",
                    None,
                    &raw(json_string(&inner)),
                    None,
                )
            }
            Out::Error { code, message } => {
                let data = serde_json::json!({ "code": code, "message": message }).to_string();
                frame("pusher:error", None, &raw(data), None)
            }
            Out::Pong => frame("pusher:pong", None, &raw("{}".to_owned()), None),
            Out::Subscribed { channel, presence } => {
                let inner = match presence {
                    Some(p) => format!("{{\"presence\":{}}}", p.get()),
                    None => "{}".to_owned(),
                };
                frame(
                    "pusher_internal:subscription_succeeded",
                    Some(channel),
                    &raw(json_string(&inner)),
                    None,
                )
            }
            Out::SubscriptionError {
                channel,
                kind,
                error,
                status,
            } => {
                let data = serde_json::json!({ "type": kind, "error": error, "status": status })
                    .to_string();
                frame("pusher:subscription_error", Some(channel), &raw(data), None)
            }
            Out::MemberAdded {
                channel,
                user_id,
                user_info,
            } => {
                let inner = match user_info {
                    Some(info) => format!(
                        "{{\"user_id\":{},\"user_info\":{}}}",
                        json_string(user_id),
                        info.get()
                    ),
                    None => format!("{{\"user_id\":{}}}", json_string(user_id)),
                };
                frame(
                    "pusher_internal:member_added",
                    Some(channel),
                    &raw(json_string(&inner)),
                    None,
                )
            }
            Out::MemberRemoved { channel, user_id } => {
                let inner = format!("{{\"user_id\":{}}}", json_string(user_id));
                frame(
                    "pusher_internal:member_removed",
                    Some(channel),
                    &raw(json_string(&inner)),
                    None,
                )
            }
            Out::SigninSuccess { user_data } => {
                let data = format!("{{\"user_data\":{}}}", json_string(user_data));
                frame("pusher:signin_success", None, &raw(data), None)
            }
            Out::Event {
                event,
                channel,
                data,
                user_id,
            } => frame(event, Some(channel), data, *user_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> serde_json::Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn connection_established_data_is_a_json_string() {
        let f = parse(
            &Out::Established {
                socket_id: "1.2",
                activity_timeout: 30,
            }
            .encode(),
        );
        assert_eq!(f["event"], "pusher:connection_established");
        let inner = parse(f["data"].as_str().unwrap());
        assert_eq!(inner["socket_id"], "1.2");
        assert_eq!(inner["activity_timeout"], 30);
    }

    #[test]
    fn member_and_subscription_frames_nest_json_strings() {
        let info = RawValue::from_string(r#"{"name":"A \"q\""}"#.to_owned()).unwrap();
        let f = parse(
            &Out::MemberAdded {
                channel: "presence-r",
                user_id: "7",
                user_info: Some(&info),
            }
            .encode(),
        );
        let inner = parse(f["data"].as_str().unwrap());
        assert_eq!(inner["user_id"], "7");
        assert_eq!(inner["user_info"]["name"], "A \"q\"");
        let members =
            RawValue::from_string(r#"{"ids":["7"],"hash":{"7":null},"count":1}"#.to_owned())
                .unwrap();
        let f = parse(
            &Out::Subscribed {
                channel: "presence-r",
                presence: Some(&members),
            }
            .encode(),
        );
        assert_eq!(f["channel"], "presence-r");
        let inner = parse(f["data"].as_str().unwrap());
        assert_eq!(inner["presence"]["count"], 1);
        let f = parse(
            &Out::Error {
                code: Some(4009),
                message: "no",
            }
            .encode(),
        );
        assert_eq!(f["data"]["code"], 4009);
    }

    #[test]
    fn client_frames_parse_with_or_without_channel_and_data() {
        let f: ClientFrame = serde_json::from_str(
            r#"{"event":"pusher:subscribe","data":{"channel":"presence-x","auth":"k:s","channel_data":"{\"user_id\":1}"}}"#,
        )
        .unwrap();
        let s: Subscribe = serde_json::from_str(f.data.unwrap().get()).unwrap();
        assert_eq!(s.channel, "presence-x");
        let d: ChannelData = serde_json::from_str(s.channel_data.as_deref().unwrap()).unwrap();
        assert_eq!(user_id(&d.user_id).as_deref(), Some("1"));
        let f: ClientFrame = serde_json::from_str(r#"{"event":"pusher:ping"}"#).unwrap();
        assert!(f.data.is_none() && f.channel.is_none());
        assert_eq!(user_id(&serde_json::json!("")), None);
        assert_eq!(user_id(&serde_json::json!({"a":1})), None);
        // Found by the fuzz run: a lone surrogate passes RawValue, not a
        // value parse, and must not be relayed.
        let lone: Box<RawValue> = serde_json::from_str(r#"{"on\ud800":true}"#).unwrap();
        assert!(!relayable(&lone));
        assert!(relayable(
            &RawValue::from_string(r#"{"on":"\u00e9"}"#.to_owned()).unwrap()
        ));
    }
}
