//! A Pusher connection's channel operations: subscribe (signature checks,
//! presence membership, the `subscription_succeeded` reply), unsubscribe,
//! client events, sign-in, and leaving everything when the connection
//! ends. The hub, backplane and presence are the node's; only the frames
//! and the checks are Pusher's.
//!
//! Presence is per user, as Pusher's is: the presence backend tells which
//! join was a user's first connection in the channel anywhere in the
//! cluster and which leave was its last (exactly one racing caller sees
//! each), and only those send `member_added` / `member_removed`.

use std::collections::BTreeMap;

use axum::extract::ws::Utf8Bytes;
use serde_json::value::RawValue;

use super::reader::{PusherReader, Sub, User};
use crate::backplane::Topic;
use crate::hub::AddOutcome;
use crate::metrics as m;
use crate::node::backend_error;
use crate::presence::Member;
use crate::protocol::{close, CloseReason};
use crate::pusher::names::{self, Kind};
use crate::pusher::sign;
use crate::pusher::wire::{self, ChannelData, ClientFrame, Out, Signin, Subscribe};

/// Longest client event name (Pusher's limit).
const MAX_EVENT_NAME: usize = 200;

/// Why a subscribe was refused: (`type`, message, status).
type Refusal = (&'static str, String, u16);

fn auth_error(what: &str) -> Refusal {
    ("AuthError", format!("invalid signature: {what}"), 401)
}

/// The members object of `subscription_succeeded`: one entry per user.
fn members_json(members: &[Member]) -> (Box<RawValue>, usize) {
    let mut by_user: BTreeMap<&str, Option<&RawValue>> = BTreeMap::new();
    for m in members.iter().filter(|m| !m.user.is_empty()) {
        by_user.entry(&m.user).or_insert(m.info.as_deref());
    }
    let ids: Vec<&str> = by_user.keys().copied().collect();
    let hash: BTreeMap<&str, &RawValue> = by_user
        .iter()
        .map(|(u, info)| (*u, info.unwrap_or_else(|| null())))
        .collect();
    let json = serde_json::json!({ "ids": ids, "hash": hash, "count": ids.len() }).to_string();
    let raw = RawValue::from_string(json).unwrap_or_else(|_| RawValue::NULL.to_owned());
    (raw, ids.len())
}

fn null() -> &'static RawValue {
    RawValue::NULL
}

impl PusherReader {
    fn refuse_subscribe(&self, channel: &str, (kind, error, status): Refusal) {
        metrics::counter!(m::ERRORS, "code" => "subscription_error", "protocol" => "pusher")
            .increment(1);
        tracing::debug!(channel, kind, %error, "pusher subscribe refused");
        self.send(&Out::SubscriptionError {
            channel,
            kind,
            error: &error,
            status,
        });
    }

    /// Who a presence subscribe makes the connection: (user id,
    /// user_info), after its signature is checked.
    fn presence_identity(&self, s: &Subscribe) -> Result<(String, Option<Box<RawValue>>), Refusal> {
        let app = &self.app.config;
        let Some(data) = &s.channel_data else {
            // No channel data: a signed-in connection joins as its user.
            let Some(user) = &self.user else {
                return Err(auth_error(
                    "presence needs channel_data or a signed-in user",
                ));
            };
            let want = sign::channel_auth(&app.key, &app.secret, &self.handle.id, &s.channel, None);
            if !s.auth.as_deref().is_some_and(|a| sign::same(a, &want)) {
                return Err(auth_error("presence subscription"));
            }
            return Ok((user.id.to_string(), user.info.clone()));
        };
        let want = sign::channel_auth(
            &app.key,
            &app.secret,
            &self.handle.id,
            &s.channel,
            Some(data),
        );
        if !s.auth.as_deref().is_some_and(|a| sign::same(a, &want)) {
            return Err(auth_error("presence subscription"));
        }
        let parsed: ChannelData = serde_json::from_str(data)
            .map_err(|e| ("InvalidChannelData", format!("channel_data: {e}"), 400))?;
        let user = wire::user_id(&parsed.user_id).ok_or((
            "InvalidChannelData",
            "channel_data.user_id must be a non-empty string or number".to_owned(),
            400,
        ))?;
        if let Some(info) = &parsed.user_info {
            if !wire::relayable(info) {
                return Err((
                    "InvalidChannelData",
                    "channel_data.user_info is not valid JSON".to_owned(),
                    400,
                ));
            }
            let max = app.max_presence_member_bytes;
            if info.get().len() > max {
                return Err((
                    "LimitReached",
                    format!("user_info is larger than {max} bytes"),
                    400,
                ));
            }
        }
        Ok((user, parsed.user_info))
    }

    /// `pusher:subscribe`.
    pub(super) async fn subscribe(&mut self, s: Subscribe) {
        let channel = s.channel.clone();
        if let Err(refusal) = self.check_subscribe(&s) {
            self.refuse_subscribe(&channel, refusal);
            return;
        }
        let hub = names::hub_channel(&self.app.config.id, &channel);
        if let Some(sub) = self.channels.iter().find(|c| *c.hub == *hub) {
            // Already subscribed: nothing changes, the reply comes again
            // (a client waiting for it must not hang).
            let presence = sub.user.is_some();
            self.answer_again(&hub, &channel, presence).await;
            return;
        }
        let presence = if Kind::of(&channel) == Kind::Presence {
            match self.presence_identity(&s) {
                Ok(identity) => Some(identity),
                Err(refusal) => {
                    self.refuse_subscribe(&channel, refusal);
                    return;
                }
            }
        } else {
            None
        };
        let node = self.node.clone();
        let stored = presence
            .as_ref()
            .map(|(user, info)| wire::stored_member(user, info.as_deref()));
        if node.hub.add_subscriber(&hub, &self.handle, stored) == AddOutcome::AlreadySubscribed {
            return;
        }
        node.occupancy.touch(&hub);
        match self.subscribe_rest(&hub, &channel, presence.as_ref()).await {
            Ok(()) => self.channels.push(Sub {
                hub: hub.into_boxed_str(),
                user: presence.map(|(u, _)| u.into_boxed_str()),
            }),
            Err(refusal) => {
                node.hub.remove_subscriber(&hub, &self.handle);
                node.occupancy.touch(&hub);
                self.refuse_subscribe(&channel, refusal);
            }
        }
    }

    /// `subscription_succeeded` again for a channel already subscribed
    /// (presence: with the current members).
    async fn answer_again(&self, hub: &str, channel: &str, presence: bool) {
        let members = if presence {
            match self.node.presence.members(hub).await {
                Ok(m) => Some(members_json(&m).0),
                Err(e) => {
                    backend_error("presence_members", &e);
                    let refusal = ("ServerError", "backend unavailable".to_owned(), 503);
                    self.refuse_subscribe(channel, refusal);
                    return;
                }
            }
        } else {
            None
        };
        self.send(&Out::Subscribed {
            channel,
            presence: members.as_deref(),
        });
    }

    /// The checks of a subscribe before it touches the hub.
    fn check_subscribe(&self, s: &Subscribe) -> Result<(), Refusal> {
        if !names::valid_channel(&s.channel) {
            return Err((
                "InvalidChannel",
                "invalid channel name: 1-200 of [A-Za-z0-9_-=@,.;]".to_owned(),
                400,
            ));
        }
        let max = self.node.config.max_channels_per_connection;
        if self.channels.len() >= max {
            return Err((
                "LimitReached",
                format!("max_channels_per_connection ({max}) reached"),
                400,
            ));
        }
        let app = &self.app.config;
        match Kind::of(&s.channel) {
            Kind::Public | Kind::Presence => Ok(()),
            Kind::Private | Kind::Encrypted => {
                let want =
                    sign::channel_auth(&app.key, &app.secret, &self.handle.id, &s.channel, None);
                if s.auth.as_deref().is_some_and(|a| sign::same(a, &want)) {
                    Ok(())
                } else {
                    Err(auth_error("private subscription"))
                }
            }
            Kind::User => {
                let mine = self.user.as_ref().is_some_and(|u| {
                    s.channel.strip_prefix(names::USER_CHANNEL_PREFIX) == Some(&*u.id)
                });
                if mine {
                    Ok(())
                } else {
                    Err((
                        "AuthError",
                        "only the connection signed in as this user may subscribe".to_owned(),
                        403,
                    ))
                }
            }
        }
    }

    /// After the hub took the subscriber: wait for the channel's traffic,
    /// join presence, then queue the reply (and what arrived meanwhile).
    async fn subscribe_rest(
        &self,
        hub: &str,
        channel: &str,
        presence: Option<&(String, Option<Box<RawValue>>)>,
    ) -> Result<(), Refusal> {
        let node = &self.node;
        let server_error = || ("ServerError", "backend unavailable".to_owned(), 503);
        node.backplane
            .ready(&Topic::Channel(hub.to_owned()))
            .await
            .map_err(|e| {
                backend_error("subscribe", &e);
                server_error()
            })?;
        let reply = match presence {
            None => Out::Subscribed {
                channel,
                presence: None,
            }
            .encode(),
            Some((user, info)) => {
                let member = Member {
                    user: user.clone(),
                    conn: self.handle.id.to_string(),
                    node: node.config.node_id.clone(),
                    info: info.clone(),
                };
                let first = node.presence.join(hub, &member).await.map_err(|e| {
                    backend_error("presence_join", &e);
                    server_error()
                })?;
                let members = node.presence.members(hub).await.map_err(|e| {
                    backend_error("presence_members", &e);
                    server_error()
                });
                let members = match members {
                    Ok(m) => m,
                    Err(refusal) => {
                        self.leave_presence(hub, user).await;
                        return Err(refusal);
                    }
                };
                let (json, users) = members_json(&members);
                let max = self.app.config.max_presence_members;
                if first && users > max {
                    self.leave_presence(hub, user).await;
                    return Err((
                        "LimitReached",
                        format!("presence channel is full ({max} members)"),
                        403,
                    ));
                }
                if first {
                    let added = Out::MemberAdded {
                        channel,
                        user_id: user,
                        user_info: info.as_deref(),
                    }
                    .encode();
                    let sid = Some(self.handle.id.to_string());
                    let _ = node.publish_frame(hub, added, sid, "pusher_presence").await;
                    node.member_event(true, hub, user);
                }
                Out::Subscribed {
                    channel,
                    presence: Some(&json),
                }
                .encode()
            }
        };
        node.occupancy_before_reply(hub).await;
        node.hub
            .finish_subscribe(hub, &self.handle, vec![Utf8Bytes::from(reply)], None);
        Ok(())
    }

    /// Remove this connection's presence entry from `hub` (of `user`);
    /// its user's last one there sends `member_removed`.
    async fn leave_presence(&self, hub: &str, user: &str) {
        let node = &self.node;
        match node.presence.leave(hub, &self.handle.id, user).await {
            Ok(left) if left.last_of_user => {
                node.pusher_member_removed(hub, user).await;
                node.member_event(false, hub, user);
            }
            Ok(_) => {}
            Err(e) => {
                backend_error("presence_leave", &e);
            }
        }
    }

    /// Leave hub channel `sub`.
    async fn leave(&self, sub: &Sub) {
        let node = &self.node;
        if !node.hub.remove_subscriber(&sub.hub, &self.handle) {
            return;
        }
        node.occupancy.touch(&sub.hub);
        if let Some(user) = &sub.user {
            self.leave_presence(&sub.hub, user).await;
        }
    }

    /// `pusher:unsubscribe` (no reply, as Pusher).
    pub(super) async fn unsubscribe(&mut self, channel: &str) {
        let hub = names::hub_channel(&self.app.config.id, channel);
        let Some(at) = self.channels.iter().position(|c| *c.hub == *hub) else {
            return;
        };
        let sub = self.channels.swap_remove(at);
        self.leave(&sub).await;
    }

    /// Leave every channel (the connection ended).
    pub async fn leave_all(&mut self) {
        for sub in std::mem::take(&mut self.channels) {
            self.leave(&sub).await;
        }
        if let Some(user) = self.user.take() {
            let control = names::user_control_channel(&self.app.config.id, &user.id);
            self.node.hub.remove_subscriber(&control, &self.handle);
        }
    }

    /// A `client-*` event.
    pub(super) async fn client_event(&mut self, frame: ClientFrame) {
        let app = &self.app.config;
        if !app.client_events {
            self.error(Some(4301), "client events are not enabled for this app");
            return;
        }
        let Some(channel) = frame.channel.as_deref() else {
            self.error(Some(4301), "a client event needs a channel");
            return;
        };
        if !Kind::of(channel).allows_client_events() {
            self.error(
                Some(4301),
                "client events are only allowed on private and presence channels",
            );
            return;
        }
        let hub = names::hub_channel(&app.id, channel);
        let Some(sub) = self.channels.iter().find(|c| *c.hub == *hub) else {
            self.error(Some(4301), "not subscribed to this channel");
            return;
        };
        if frame.event.len() > MAX_EVENT_NAME {
            self.error(Some(4301), "event name is longer than 200 bytes");
            return;
        }
        let data = frame.data.unwrap_or_else(|| {
            RawValue::from_string("null".to_owned()).unwrap_or_else(|_| RawValue::NULL.to_owned())
        });
        if !wire::relayable(&data) {
            self.error(Some(4301), "event data is not valid JSON");
            return;
        }
        if data.get().len() > app.max_event_bytes {
            let max = app.max_event_bytes;
            self.error(
                Some(4301),
                &format!("event data is larger than {max} bytes"),
            );
            return;
        }
        if self.client_events.check() != crate::ratelimit::Verdict::Allow {
            metrics::counter!(m::RATE_LIMITED, "protocol" => "pusher").increment(1);
            self.error(Some(4301), "client event rate limit exceeded");
            return;
        }
        let user = sub.user.as_deref().map(str::to_owned);
        let encoded = Out::Event {
            event: &frame.event,
            channel,
            data: &data,
            user_id: user.as_deref(),
        }
        .encode();
        let sid = self.handle.id.to_string();
        let node = self.node.clone();
        if node
            .publish_frame(&hub, encoded, Some(sid.clone()), "pusher_client")
            .await
            .is_err()
        {
            self.error(None, "backend unavailable; client event not sent");
            return;
        }
        if node.webhooks.app_wants(&app.id, "client_event") {
            node.webhooks.emit(crate::webhooks::Event::ClientEvent {
                channel: hub,
                event: frame.event,
                data,
                socket_id: sid,
                user_id: user,
            });
        }
    }

    /// `pusher:signin`.
    pub(super) async fn signin(&mut self, s: Signin) {
        let app = &self.app.config;
        let want = sign::signin_auth(&app.key, &app.secret, &self.handle.id, &s.user_data);
        let parsed: Option<serde_json::Value> = serde_json::from_str(&s.user_data).ok();
        let id = parsed
            .as_ref()
            .and_then(|v| v.get("id"))
            .and_then(wire::user_id);
        let Some(id) = id.filter(|_| sign::same(&s.auth, &want)) else {
            metrics::counter!(m::AUTH_FAILURES, "reason" => "pusher_signin").increment(1);
            self.error(Some(4009), "connection not authorized: bad sign-in");
            self.handle
                .close(CloseReason::new(close::UNAUTHORIZED, "bad sign-in"));
            return;
        };
        if self.user.is_some() {
            self.error(None, "already signed in");
            return;
        }
        let info = parsed
            .as_ref()
            .and_then(|v| v.get("user_info"))
            .and_then(|v| RawValue::from_string(v.to_string()).ok());
        // The user's control channel: a terminate for the user reaches it.
        let control = names::user_control_channel(&app.id, &id);
        let node = self.node.clone();
        node.hub.add_subscriber(&control, &self.handle, None);
        if let Err(e) = node.backplane.ready(&Topic::Channel(control.clone())).await {
            backend_error("subscribe", &e);
            node.hub.remove_subscriber(&control, &self.handle);
            self.error(None, "backend unavailable; sign in again");
            return;
        }
        node.hub
            .finish_subscribe(&control, &self.handle, Vec::new(), None);
        self.user = Some(User {
            id: id.into_boxed_str(),
            info,
        });
        self.send(&Out::SigninSuccess {
            user_data: &s.user_data,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_listed_once_per_user() {
        let m = |user: &str, conn: &str, info: Option<&str>| Member {
            user: user.into(),
            conn: conn.into(),
            node: "n1".into(),
            info: info.map(|i| RawValue::from_string(i.to_owned()).unwrap()),
        };
        let (json, users) = members_json(&[
            m("7", "1.1", Some(r#"{"name":"a"}"#)),
            m("7", "1.2", Some(r#"{"name":"a"}"#)),
            m("8", "2.1", None),
        ]);
        assert_eq!(users, 2);
        let v: serde_json::Value = serde_json::from_str(json.get()).unwrap();
        assert_eq!(v["ids"], serde_json::json!(["7", "8"]));
        assert_eq!(v["hash"]["7"]["name"], "a");
        assert_eq!(v["hash"]["8"], serde_json::Value::Null);
        assert_eq!(v["count"], 2);
    }
}
