//! The operations clients and the HTTP API perform through the node:
//! publish, directed sends, subscribe with recovery, unsubscribe, presence
//! reads, and a connection's registration. Permission checks and the
//! namespace lookup are the caller's ([`crate::access`]): every op here
//! takes the namespace options it was checked against.

use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::Value;

use super::joinleave::Change;
use super::{backend_error, Node};
use crate::backplane::{Envelope, PresenceEvent, Publication, Topic};
use crate::config::NamespaceOptions;
use crate::hub::{frame, message_frame, AddOutcome, Position};
use crate::metrics as m;
use crate::outbox::ConnHandle;
use crate::presence::{Member, UserConn};
use crate::protocol::{ReplyError, ServerFrame, Since};
use crate::webhooks::Event;

/// Why [`Node::admit`] refused a connection.
#[derive(Debug)]
pub enum AdmitError {
    /// Its user already holds `max_connections_per_user` here.
    UserLimit,
    /// The user topic could not be subscribed.
    Backend(ReplyError),
}

impl Node {
    /// A user became a member of a presence channel (`added`) or stopped
    /// being one, cluster-wide, seen by this node: counted in
    /// `gateway_channel_events_total` and handed to the webhooks.
    pub(crate) fn member_event(&self, added: bool, channel: &str, user: &str) {
        let (channel, user) = (channel.to_owned(), user.to_owned());
        let (label, event) = if added {
            ("member_added", Event::MemberAdded { channel, user })
        } else {
            ("member_removed", Event::MemberRemoved { channel, user })
        };
        metrics::counter!(m::CHANNEL_EVENTS, "event" => label).increment(1);
        self.webhooks.emit(event);
    }

    /// Publish to a channel of namespace `ns`. Returns the offset (None
    /// without history).
    pub async fn publish(
        &self,
        channel: &str,
        ns: &NamespaceOptions,
        data: Box<RawValue>,
        from: Option<String>,
        exclude: Option<String>,
        source: &'static str,
    ) -> Result<Option<u64>, ReplyError> {
        let publication = Publication::new(channel.to_owned(), data, from, exclude);
        let position = self
            .backplane
            .publish(publication, ns.history())
            .await
            .map_err(|e| backend_error("publish", &e))?;
        metrics::counter!(m::PUBLICATIONS, "source" => source).increment(1);
        Ok(position.map(|p| p.offset))
    }

    /// Publish `frame`, a Pusher channel's frame already encoded, to hub
    /// channel `hub` (no history); `exclude`: a socket that must not get it.
    pub async fn publish_frame(
        &self,
        hub: &str,
        frame: String,
        exclude: Option<String>,
        source: &'static str,
    ) -> Result<(), ReplyError> {
        let data = RawValue::from_string(frame).map_err(|_| ReplyError::unavailable())?;
        let publication = Publication::new(hub.to_owned(), data, None, exclude);
        self.backplane
            .publish(publication, None)
            .await
            .map_err(|e| backend_error("publish", &e))?;
        metrics::counter!(m::PUBLICATIONS, "source" => source).increment(1);
        Ok(())
    }

    /// Tell a Pusher presence channel's members (hub name `hub`) that
    /// `user` left (its last connection there is gone). A failure is
    /// counted and logged by [`Node::publish_frame`].
    pub async fn pusher_member_removed(&self, hub: &str, user: &str) {
        let Some((_, channel)) = crate::pusher::names::split(hub) else {
            return;
        };
        let frame = crate::pusher::wire::Out::MemberRemoved {
            channel,
            user_id: user,
        }
        .encode();
        let _ = self
            .publish_frame(hub, frame, None, "pusher_presence")
            .await;
    }

    /// Send a directed envelope (broadcast, user, conn, disconnects).
    pub async fn send(&self, envelope: Envelope) -> Result<(), ReplyError> {
        self.backplane
            .send(envelope)
            .await
            .map_err(|e| backend_error("send", &e))
    }

    /// Subscribe `conn` to `channel` (of namespace `ns`): add it to the hub
    /// (the channel's first local subscriber turns the node's interest on),
    /// wait until the node receives the channel, read history, join
    /// presence, then queue the reply, the replay and whatever arrived
    /// meanwhile, in that order, with no gap and no duplicate. `info`: the
    /// subscription's own presence info (the subscribe hook's), shown
    /// instead of the connection's.
    pub async fn subscribe(
        &self,
        conn: &Arc<ConnHandle>,
        channel: &str,
        ns: &NamespaceOptions,
        since: Option<Since>,
        id: Option<&Value>,
        info: Option<Box<RawValue>>,
    ) -> Result<usize, ReplyError> {
        let member = ns
            .tracks_presence()
            .then(|| self.hub.member(conn, info.as_deref()));
        if self.hub.add_subscriber(channel, conn, info) == AddOutcome::AlreadySubscribed {
            return Err(ReplyError::bad_request("already subscribed"));
        }
        self.occupancy.touch(channel);
        let result = self
            .subscribe_rest(conn, channel, ns, since, id, member)
            .await;
        if result.is_err() {
            self.hub.remove_subscriber(channel, conn);
        }
        result
    }

    /// The steps of [`Node::subscribe`] after the hub took the subscriber;
    /// any error makes the caller remove it again.
    async fn subscribe_rest(
        &self,
        conn: &Arc<ConnHandle>,
        channel: &str,
        ns: &NamespaceOptions,
        since: Option<Since>,
        id: Option<&Value>,
        member: Option<Member>,
    ) -> Result<usize, ReplyError> {
        self.backplane
            .ready(&Topic::Channel(channel.to_owned()))
            .await
            .map_err(|e| backend_error("subscribe", &e))?;
        let mut top = None;
        let mut epoch = None;
        let mut recovered = since.as_ref().map(|_| false);
        let mut replay = Vec::new();
        if let Some(opts) = ns.history() {
            let from = since.as_ref().map(|s| s.offset).unwrap_or(u64::MAX);
            let limit = if since.is_some() { opts.size } else { 0 };
            let budget = self.config.clients.replay_max_bytes;
            let read = self
                .history
                .read_budget(channel, from, limit, budget, opts)
                .await
                .map_err(|e| backend_error("history_read", &e))?;
            top = Some(read.position.offset);
            if let Some(s) = &since {
                let epoch_ok = s
                    .epoch
                    .as_deref()
                    .is_none_or(|e| e.is_empty() || e == read.position.epoch);
                if epoch_ok && s.offset <= read.position.offset {
                    // Everything after `since` that history still holds;
                    // fewer came back when the budget cut the replay.
                    let retained_after =
                        read.position.offset - s.offset.max(read.first_offset.saturating_sub(1));
                    let wanted = retained_after.min(limit as u64);
                    let cut = (read.publications.len() as u64) < wanted;
                    if cut {
                        metrics::counter!(crate::history::REPLAYS_CUT).increment(1);
                    }
                    recovered = Some(read.first_offset <= s.offset + 1 && !cut);
                    replay = read.publications;
                }
                let label = if recovered == Some(true) {
                    "true"
                } else {
                    "false"
                };
                metrics::counter!(m::HISTORY_REPLAYS, "recovered" => label).increment(1);
            }
            epoch = Some(read.position.epoch);
        }
        if let Some(member) = member {
            let first = self
                .presence
                .join(channel, &member)
                .await
                .map_err(|e| backend_error("presence_join", &e))?;
            if first {
                self.member_event(true, channel, &member.user);
            }
            if ns.join_leave {
                let event = PresenceEvent {
                    channel: channel.to_owned(),
                    user: member.user,
                    conn: member.conn,
                };
                self.join_leave.push(Change::Join, event).await;
            }
        }
        let mut head = Vec::with_capacity(1 + replay.len());
        head.push(frame(&ServerFrame::Subscribed {
            id,
            channel,
            offset: top,
            epoch: epoch.as_deref(),
            recovered,
        }));
        head.extend(replay.iter().map(message_frame));
        self.occupancy_before_reply(channel).await;
        let replayed: usize = head.iter().skip(1).map(|f| f.len()).sum();
        let position = top.zip(epoch).map(|(offset, e)| Position {
            offset,
            epoch: Arc::from(e),
        });
        self.hub.finish_subscribe(channel, conn, head, position);
        Ok(replayed)
    }

    /// Before a subscribe is answered: a channel's first local subscriber
    /// writes its count to the channel store at once when webhooks want
    /// the channel's occupancy ([`crate::occupancy::Occupancy::write_now`]).
    pub(crate) async fn occupancy_before_reply(&self, channel: &str) {
        if self.hub.subscriber_count(channel) == 1 && self.webhooks.wants_occupancy(channel) {
            self.occupancy.write_now(channel).await;
        }
    }

    /// Remove `conn` from `channel`: the hub (the last local subscriber
    /// turns the node's interest off), then presence (with a leave event).
    /// Returns whether it was subscribed.
    pub async fn unsubscribe(&self, conn: &ConnHandle, channel: &str) -> bool {
        if !self.hub.remove_subscriber(channel, conn) {
            return false;
        }
        self.occupancy.touch(channel);
        let Some(ns) = self.config.namespace(channel) else {
            return true;
        };
        if !ns.tracks_presence() {
            return true;
        }
        let user = conn.user.as_deref().unwrap_or_default();
        match self.presence.leave(channel, &conn.id, user).await {
            Ok(left) => {
                if left.last_of_user {
                    self.member_event(false, channel, user);
                }
                if left.removed && ns.join_leave {
                    let event = PresenceEvent {
                        channel: channel.to_owned(),
                        user: user.to_owned(),
                        conn: conn.id.to_string(),
                    };
                    self.join_leave.push(Change::Leave, event).await;
                }
            }
            Err(e) => {
                backend_error("presence_leave", &e);
            }
        }
        true
    }

    /// Members of a presence-enabled channel (checked by the caller).
    pub async fn presence_members(&self, channel: &str) -> Result<Vec<Member>, ReplyError> {
        self.presence
            .members(channel)
            .await
            .map_err(|e| backend_error("presence_members", &e))
    }

    /// Admit a connection before its upgrade: into the hub (a user's first
    /// connection here turns the user topic on; one past the per-user
    /// limit is refused), then wait until the node receives the user's
    /// traffic. On failure nothing of the connection is left in the hub and
    /// the caller refuses the upgrade.
    pub async fn admit(&self, conn: &Arc<ConnHandle>) -> Result<(), AdmitError> {
        if !self.hub.add_conn(conn) {
            return Err(AdmitError::UserLimit);
        }
        let Some(user) = &conn.user else {
            return Ok(());
        };
        let ready = self.backplane.ready(&Topic::User(user.to_string())).await;
        if let Err(e) = ready {
            self.hub.remove_conn(conn);
            return Err(AdmitError::Backend(backend_error("subscribe_user", &e)));
        }
        Ok(())
    }

    /// Register an upgraded connection in the user index.
    pub async fn register(&self, conn: &ConnHandle) {
        if let Some(user) = &conn.user {
            let uc = UserConn {
                conn: conn.id.to_string(),
                node: self.config.node_id.clone(),
            };
            if let Err(e) = self.presence.add_user_conn(user, &uc).await {
                backend_error("user_index_add", &e);
            }
        }
    }

    /// Unregister a closed connection: every subscription and the user
    /// index. (It leaves the hub with its connection slot, in the
    /// connection's guard, whether or not it was ever upgraded.)
    pub async fn unregister(&self, conn: &ConnHandle, channels: impl IntoIterator<Item = String>) {
        for channel in channels {
            self.unsubscribe(conn, &channel).await;
        }
        if let Some(user) = &conn.user {
            if let Err(e) = self.presence.remove_user_conn(user, &conn.id).await {
                backend_error("user_index_remove", &e);
            }
        }
    }
}
