//! Webhooks in Pusher's format, for the Pusher apps (docs/pusher.md):
//! `{"time_ms":N,"events":[{"name":"channel_occupied","channel":"c"},...]}`
//! signed `X-Pusher-Signature: hex(HMAC-SHA256(app secret, body))` with
//! `X-Pusher-Key: <app key>`, which the official server libraries verify.
//! Channel names are the app's own (the hub's `!app!` prefix dropped).

use serde::Serialize;
use serde_json::value::RawValue;

use super::{Event, Stamped};

/// Header with the app key.
pub const KEY_HEADER: &str = "x-pusher-key";
/// Header with the hex HMAC-SHA256 of the body.
pub const SIGNATURE_HEADER: &str = "x-pusher-signature";

/// One event as Pusher sends it.
#[derive(Serialize)]
struct PusherEvent<'a> {
    name: &'static str,
    channel: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    socket_id: Option<&'a str>,
}

#[derive(Serialize)]
struct Body<'a> {
    time_ms: u64,
    events: Vec<PusherEvent<'a>>,
}

/// A client event's data as Pusher's webhook carries it: a string (a
/// string is sent as is, anything else as its JSON).
fn data_string(data: &RawValue) -> String {
    serde_json::from_str::<String>(data.get()).unwrap_or_else(|_| data.get().to_owned())
}

fn base<'a>(name: &'static str, channel: &'a str) -> PusherEvent<'a> {
    PusherEvent {
        name,
        channel: app_channel(channel),
        user_id: None,
        event: None,
        data: None,
        socket_id: None,
    }
}

fn app_channel(hub: &str) -> &str {
    crate::pusher::names::split(hub).map_or(hub, |(_, c)| c)
}

/// The request body of `batch`, formed at `time_ms`.
pub fn body(time_ms: u64, batch: &[Stamped]) -> serde_json::Result<Vec<u8>> {
    let events = batch
        .iter()
        .filter_map(|s| {
            Some(match &s.event {
                Event::ChannelOccupied { channel } => base("channel_occupied", channel),
                Event::ChannelVacated { channel } => base("channel_vacated", channel),
                Event::MemberAdded { channel, user } => PusherEvent {
                    user_id: Some(user),
                    ..base("member_added", channel)
                },
                Event::MemberRemoved { channel, user } => PusherEvent {
                    user_id: Some(user),
                    ..base("member_removed", channel)
                },
                Event::ClientEvent {
                    channel,
                    event,
                    data,
                    socket_id,
                    user_id,
                } => PusherEvent {
                    user_id: user_id.as_deref(),
                    event: Some(event),
                    data: Some(data_string(data)),
                    socket_id: Some(socket_id),
                    ..base("client_event", channel)
                },
                // Not Pusher events (never routed to an app).
                Event::ClientPublish { .. } | Event::ConnectionClosed { .. } => return None,
            })
        })
        .collect();
    serde_json::to_vec(&Body { time_ms, events })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamped(event: Event) -> Stamped {
        Stamped {
            event,
            id: "n:1:1".into(),
            time_ms: 1,
            weight: 1,
        }
    }

    #[test]
    fn events_take_pushers_shape_with_the_apps_channel_names() {
        let data = RawValue::from_string(r#"{"typing":true}"#.to_owned()).unwrap();
        let batch = [
            stamped(Event::ChannelOccupied {
                channel: "!a1!private-x".into(),
            }),
            stamped(Event::MemberAdded {
                channel: "!a1!presence-r".into(),
                user: "7".into(),
            }),
            stamped(Event::ClientEvent {
                channel: "!a1!presence-r".into(),
                event: "client-typing".into(),
                data,
                socket_id: "1.2".into(),
                user_id: Some("7".into()),
            }),
        ];
        let v: serde_json::Value = serde_json::from_slice(&body(42, &batch).unwrap()).unwrap();
        assert_eq!(v["time_ms"], 42);
        assert_eq!(
            v["events"][0],
            serde_json::json!({"name":"channel_occupied","channel":"private-x"})
        );
        assert_eq!(
            v["events"][1],
            serde_json::json!({"name":"member_added","channel":"presence-r","user_id":"7"})
        );
        assert_eq!(v["events"][2]["data"], r#"{"typing":true}"#);
        assert_eq!(v["events"][2]["socket_id"], "1.2");
        assert_eq!(v["events"][2]["event"], "client-typing");
    }
}
