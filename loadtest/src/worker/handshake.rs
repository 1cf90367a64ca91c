//! What a client's setup waits for after the upgrade, by protocol: v1 sends
//! its subscribes at once and waits for `welcome` and one `subscribed` per
//! channel; Pusher waits for `pusher:connection_established` (its
//! `socket_id` signs private and presence subscribes), then sends the
//! subscribes and waits for one `pusher_internal:subscription_succeeded`
//! per channel.
//!
//! Invariants: a handshake only decides (frames to send, done, refused);
//! the socket, the deadline and our data frames stay with the caller
//! (`client::subscribe_all`), so both protocols share one read loop; a
//! refusal carries a stable kind for the reports (`subscribe_<code>`,
//! `pusher_<code>`).

use std::time::Duration;

use anyhow::anyhow;

use crate::pusher::{self, Control, PusherApp};
use crate::wire::ConnectError;

fn perr(kind: &str, e: anyhow::Error) -> ConnectError {
    ConnectError {
        kind: kind.into(),
        error: e,
    }
}

/// A client's setup state after the upgrade.
pub(super) enum Handshake<'a> {
    /// v1: welcome and subscribe replies.
    V1 {
        /// Channels to subscribe.
        channels: &'a [String],
        /// The welcome came.
        welcomed: bool,
        /// Subscribe replies still missing.
        pending: usize,
    },
    /// Pusher protocol 7.
    Pusher {
        /// The app (signs private/presence subscribes).
        app: &'a PusherApp,
        /// Presence `user_id`.
        user: &'a str,
        /// Channels to subscribe once established.
        channels: &'a [String],
        /// Set by `connection_established`: the activity timeout.
        established: Option<Duration>,
        /// subscription_succeeded still missing.
        pending: usize,
    },
}

impl<'a> Handshake<'a> {
    /// The handshake for `channels`, with `app` set for Pusher.
    pub(super) fn new(app: Option<&'a PusherApp>, user: &'a str, channels: &'a [String]) -> Self {
        match app {
            None => Handshake::V1 {
                channels,
                welcomed: false,
                pending: channels.len(),
            },
            Some(app) => Handshake::Pusher {
                app,
                user,
                channels,
                established: None,
                pending: channels.len(),
            },
        }
    }

    /// Frames to send right after the upgrade.
    pub(super) fn start(&self) -> Vec<String> {
        match self {
            Handshake::V1 { channels, .. } => channels
                .iter()
                .enumerate()
                .map(|(k, channel)| {
                    format!(r#"{{"op":"subscribe","id":{k},"channel":"{channel}"}}"#)
                })
                .collect(),
            Handshake::Pusher { .. } => Vec::new(),
        }
    }

    /// Everything came.
    pub(super) fn done(&self) -> bool {
        match self {
            Handshake::V1 {
                welcomed, pending, ..
            } => *welcomed && *pending == 0,
            Handshake::Pusher {
                established,
                pending,
                ..
            } => established.is_some() && *pending == 0,
        }
    }

    /// How many replies are missing (for the error when the socket ends).
    pub(super) fn missing(&self) -> usize {
        match self {
            Handshake::V1 {
                welcomed, pending, ..
            } => pending + usize::from(!welcomed),
            Handshake::Pusher {
                established,
                pending,
                ..
            } => pending + usize::from(established.is_none()),
        }
    }

    /// Pusher: after this long without a frame the client pings (the
    /// server's `activity_timeout`, as pusher-js does). v1: None (the
    /// gateway pings).
    pub(super) fn ping_every(&self) -> Option<Duration> {
        match self {
            Handshake::V1 { .. } => None,
            Handshake::Pusher { established, .. } => *established,
        }
    }

    /// Handles a text frame that is not one of our data frames: the frames
    /// to send back, or why the setup failed.
    pub(super) fn on_text(&mut self, p: &[u8]) -> Result<Vec<String>, ConnectError> {
        match self {
            Handshake::V1 {
                welcomed, pending, ..
            } => {
                let v: serde_json::Value = serde_json::from_slice(p)
                    .map_err(|e| perr("protocol", anyhow!("bad JSON frame: {e}")))?;
                match v.get("type").and_then(|t| t.as_str()) {
                    Some("welcome") => *welcomed = true,
                    Some("subscribed") => *pending = pending.saturating_sub(1),
                    Some("error") => {
                        let code = v.get("code").and_then(|c| c.as_str()).unwrap_or("?");
                        return Err(perr(
                            &format!("subscribe_{code}"),
                            anyhow!("subscribe refused: {v}"),
                        ));
                    }
                    _ => {}
                }
                Ok(Vec::new())
            }
            Handshake::Pusher {
                app,
                user,
                channels,
                established,
                pending,
            } => match pusher::control(p).map_err(|e| perr("protocol", e))? {
                Control::Established {
                    socket_id,
                    activity_timeout,
                } => {
                    if established.is_some() {
                        return Err(perr(
                            "protocol",
                            anyhow!("a second connection_established ({socket_id})"),
                        ));
                    }
                    *established = Some(Duration::from_secs(activity_timeout.max(1)));
                    Ok(channels
                        .iter()
                        .map(|c| pusher::subscribe_frame(app, &socket_id, c, user))
                        .collect())
                }
                Control::Subscribed(c) => {
                    if !channels.contains(&c) {
                        return Err(perr(
                            "protocol",
                            anyhow!("subscription_succeeded for {c:?}, not asked for"),
                        ));
                    }
                    *pending = pending.saturating_sub(1);
                    Ok(Vec::new())
                }
                Control::Refused(kind, frame) => {
                    Err(perr(&kind, anyhow!("refused during setup: {frame}")))
                }
                Control::Ping => Ok(vec![pusher::PONG.to_owned()]),
                Control::Other => Ok(Vec::new()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> PusherApp {
        PusherApp {
            id: "a".into(),
            key: "k".into(),
            secret: "s".into(),
        }
    }

    #[test]
    fn pusher_subscribes_after_connection_established() -> Result<(), ConnectError> {
        let app = app();
        let channels = vec!["idle-3".to_owned(), "presence-room-3".to_owned()];
        let mut h = Handshake::new(Some(&app), "idle3", &channels);
        assert!(h.start().is_empty());
        assert_eq!(h.missing(), 3);
        let out = h.on_text(
            br#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"1.2\",\"activity_timeout\":30}"}"#,
        )?;
        assert_eq!(out.len(), 2);
        assert!(out[1].contains(r#""auth":"k:"#), "{}", out[1]);
        assert_eq!(h.ping_every(), Some(Duration::from_secs(30)));
        for c in &channels {
            assert!(!h.done());
            h.on_text(
                format!(r#"{{"event":"pusher_internal:subscription_succeeded","channel":"{c}","data":"{{}}"}}"#)
                    .as_bytes(),
            )?;
        }
        assert!(h.done());
        assert_eq!(
            h.on_text(br#"{"event":"pusher:ping","data":{}}"#)?,
            [pusher::PONG]
        );
        Ok(())
    }

    #[test]
    fn pusher_refusals_have_kinds() {
        let app = app();
        let channels = vec!["presence-x".to_owned()];
        let mut h = Handshake::new(Some(&app), "u", &channels);
        let e = h
            .on_text(br#"{"event":"pusher:subscription_error","channel":"presence-x","data":{"type":"AuthError","error":"x","status":401}}"#)
            .err();
        assert_eq!(e.map(|e| e.kind), Some("subscribe_401".into()));
    }

    #[test]
    fn v1_waits_for_welcome_and_replies() -> Result<(), ConnectError> {
        let channels = vec!["idle:1".to_owned()];
        let mut h = Handshake::new(None, "u", &channels);
        assert_eq!(h.start().len(), 1);
        h.on_text(br#"{"type":"subscribed","id":0}"#)?;
        assert!(!h.done());
        h.on_text(br#"{"type":"welcome"}"#)?;
        assert!(h.done());
        assert_eq!(h.ping_every(), None);
        Ok(())
    }
}
