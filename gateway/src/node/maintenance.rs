//! Keeping this node's presence true in the backend: the periodic refresh
//! of every entry it owns (and the write-back of those the backend lost),
//! the sweep that turns expired members of join/leave channels into leave
//! events, and the node registry heartbeat; [`Node::run_maintenance`] runs
//! them until shutdown.

use std::sync::Arc;
use std::time::Duration;

use super::{backend_error, Node};
use crate::backplane::{Envelope, PresenceEvent};
use crate::config::NamespaceOptions;
use crate::metrics as m;
use crate::presence::{RefreshBatch, UserConn};

impl Node {
    /// Refresh every presence and user-index entry this node owns (a batch
    /// per hub shard), and drop expired in-memory history streams. (The registry
    /// heartbeat has its own, shorter interval.)
    pub async fn maintain(&self) {
        let config = self.config.clone();
        let tracks = |ch: &str| {
            config
                .namespace(ch)
                .is_some_and(NamespaceOptions::tracks_presence)
        };
        let started = tokio::time::Instant::now();
        // One batch per hub shard: the transient copy of every entry stays
        // small (a whole-node batch of 100k connections would be tens of MB
        // every refresh), at about the same number of Redis pipelines.
        for shard in 0..crate::hub::SHARDS {
            let mut user_conns = Vec::new();
            self.hub.for_each_conn_in_shard(shard, |c| {
                if let Some(u) = &c.user {
                    user_conns.push((
                        u.to_string(),
                        UserConn {
                            conn: c.id.to_string(),
                            node: self.config.node_id.clone(),
                        },
                    ));
                }
            });
            let batch = RefreshBatch {
                members: self.hub.presence_members(shard, tracks),
                user_conns,
            };
            if batch.is_empty() {
                continue;
            }
            match self.presence.refresh(&batch).await {
                Ok(missing) if !missing.is_empty() => self.restore_presence(missing).await,
                Ok(_) => {}
                Err(e) => {
                    // The backend is failing: the rest waits for the next
                    // tick (or the reconnect's refresh), not for a timeout
                    // per shard.
                    backend_error("presence_refresh", &e);
                    break;
                }
            }
        }
        metrics::histogram!(m::PRESENCE_REFRESH).record(started.elapsed().as_secs_f64());
        if let Some(h) = &self.memory_history {
            h.sweep();
        }
    }

    /// Write back the entries a refresh found gone (the backend lost them,
    /// or this node could not refresh for a whole TTL and another node took
    /// them as expired and sent their leave events), keeping only those that
    /// are still live here (a subscribe still in progress writes its own
    /// entry); a member the restore really re-created is announced again
    /// with a join event on a join/leave channel.
    async fn restore_presence(&self, mut missing: RefreshBatch) {
        missing
            .members
            .retain(|(channel, m)| self.hub.is_live_subscriber(channel, &m.conn));
        missing
            .user_conns
            .retain(|(_, c)| self.hub.conn(&c.conn).is_some());
        if missing.is_empty() {
            return;
        }
        let created = match self.presence.restore(&missing).await {
            Ok(created) => created,
            Err(e) => {
                backend_error("presence_restore", &e);
                return;
            }
        };
        if created.is_empty() {
            return;
        }
        metrics::counter!(m::PRESENCE_RESTORED).increment(created.len() as u64);
        tracing::info!(
            members = created.members.len(),
            user_conns = created.user_conns.len(),
            "presence entries were gone from the backend; wrote them back"
        );
        for (channel, member) in created.members {
            if !self
                .config
                .namespace(&channel)
                .is_some_and(|ns| ns.join_leave)
            {
                continue;
            }
            let event = PresenceEvent {
                channel,
                user: member.user,
                conn: member.conn,
            };
            if let Err(e) = self.backplane.send(Envelope::Join(event)).await {
                backend_error("presence_event", &e);
            }
        }
    }

    /// Publish this node's registry entry (counts for GET /api/nodes).
    pub async fn heartbeat(&self) {
        if let Err(e) = self.presence.heartbeat(&self.info()).await {
            backend_error("node_heartbeat", &e);
        }
    }

    /// Hand expired members of local join/leave channels to leave events.
    pub async fn sweep_expired(&self) {
        let config = self.config.clone();
        let channels = self
            .hub
            .channel_names(|ch| config.namespace(ch).is_some_and(|ns| ns.join_leave));
        for channel in channels {
            match self.presence.take_expired(&channel).await {
                Ok(members) => {
                    for member in members {
                        let event = PresenceEvent {
                            channel: channel.clone(),
                            user: member.user,
                            conn: member.conn,
                        };
                        if let Err(e) = self.backplane.send(Envelope::Leave(event)).await {
                            backend_error("presence_event", &e);
                        }
                    }
                }
                Err(e) => {
                    backend_error("presence_expire", &e);
                }
            }
        }
    }

    /// The maintenance loop: refresh every `presence_refresh`, sweep expired
    /// members a few times per TTL. Ends on shutdown.
    pub async fn run_maintenance(self: Arc<Self>) {
        let mut refresh = tokio::time::interval(self.config.presence_refresh);
        let sweep_every = (self.config.presence_ttl / 4)
            .clamp(Duration::from_millis(200), Duration::from_secs(5));
        let mut sweep = tokio::time::interval(sweep_every);
        // The registry's counts should be fresher than the presence refresh.
        let mut heartbeat =
            tokio::time::interval(self.config.presence_refresh.min(Duration::from_secs(5)));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut health = tokio::time::interval(Duration::from_millis(250));
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_generation = self.backplane.generation();
        loop {
            tokio::select! {
                _ = self.shutdown.token.cancelled() => break,
                _ = refresh.tick() => self.maintain().await,
                _ = heartbeat.tick() => self.heartbeat().await,
                _ = sweep.tick() => self.sweep_expired().await,
                _ = health.tick() => {
                    // After a reconnect the backend may have lost our
                    // entries: rewrite them now, not at the next refresh.
                    let generation = self.backplane.generation();
                    if generation != last_generation && self.backplane.is_healthy() {
                        tracing::info!("backplane reconnected, refreshing presence");
                        last_generation = generation;
                        self.maintain().await;
                        self.heartbeat().await;
                    }
                }
            }
        }
        if let Err(e) = self.presence.remove_node(&self.config.node_id).await {
            backend_error("node_remove", &e);
        }
    }
}
