//! Keeping this node's presence true in the backend: the periodic refresh
//! of every entry it owns (and the write-back of those the backend lost),
//! the sweep that turns expired members of join/leave channels into leave
//! events (a bounded batch of channels per tick), the node registry
//! heartbeat, and the purge of crashed nodes' presence;
//! [`Node::run_maintenance`] runs them until shutdown, each on its own task
//! so that none waits behind another.

use std::sync::Arc;
use std::time::Duration;

use super::{backend_error, Node};
use crate::backplane::{Envelope, PresenceEvent};
use crate::config::NamespaceOptions;
use crate::metrics as m;
use crate::occupancy::Transition;
use crate::presence::{Member, RefreshBatch, UserConn};

impl Node {
    /// Refresh every presence and user-index entry this node owns (a batch
    /// per hub shard), and drop expired in-memory history streams. (The registry
    /// heartbeat has its own, shorter interval.)
    pub async fn maintain(&self) {
        let config = self.config.clone();
        let tracks = |ch: &str| {
            if crate::pusher::names::is_pusher(ch) {
                return crate::pusher::names::is_presence(ch);
            }
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
        self.send_presence_events(created.members, Envelope::Join)
            .await;
    }

    /// Publish this node's registry entry (counts for GET /api/nodes).
    /// Returns whether the entry had to be created: this node is new to the
    /// registry, or a live node purged it as crashed while it was stalled.
    pub async fn heartbeat(&self) -> bool {
        match self.presence.announce(&self.info()).await {
            Ok(created) => created,
            Err(e) => {
                backend_error("node_heartbeat", &e);
                false
            }
        }
    }

    /// Hand expired members of local join/leave channels to leave events:
    /// at most `presence_sweep_batch` channels per call, taking up where the
    /// last call stopped (`cursor`: the last channel swept), so one tick's
    /// work is bounded however many channels the node holds; a full pass
    /// over N channels takes ceil(N / batch) ticks.
    pub async fn sweep_expired(&self, cursor: &mut Option<String>) {
        let config = self.config.clone();
        let mut channels = self.hub.channel_names(|ch| announces_leaves(&config, ch));
        channels.sort_unstable();
        let batch = self.config.presence_sweep_batch;
        let start = cursor
            .as_deref()
            .map_or(0, |last| channels.partition_point(|c| c.as_str() <= last));
        let mut picked: Vec<String> = channels.iter().skip(start).take(batch).cloned().collect();
        if picked.len() < batch {
            // Wrap around: the next pass starts from the first channel.
            let more = batch - picked.len();
            picked.extend(channels.iter().take(start.min(more)).cloned());
            *cursor = None;
        } else {
            *cursor = picked.last().cloned();
        }
        if picked.is_empty() {
            return;
        }
        match self.presence.take_expired_many(&picked).await {
            Ok(members) => self.send_leaves(members).await,
            Err(e) => {
                backend_error("presence_expire", &e);
            }
        }
    }

    /// Purge the presence of nodes whose heartbeat is older than the node
    /// timeout (crashed, or stalled for that long) and send the leave
    /// events of their members on join/leave channels.
    pub async fn purge_stale_nodes(&self) {
        let timeout = self.config.presence_node_timeout;
        match self
            .presence
            .purge_stale_nodes(&self.config.node_id, timeout)
            .await
        {
            Ok(crate::presence::Purged { members, vacated }) => {
                if !vacated.is_empty() {
                    tracing::info!(
                        channels = vacated.len(),
                        "channels vacated by the purge of crashed nodes"
                    );
                }
                self.occupancy
                    .emit(vacated.into_iter().map(|c| (c, Transition::Vacated)));
                if members.is_empty() {
                    return;
                }
                let nodes: std::collections::BTreeSet<&str> =
                    members.iter().map(|(_, m)| m.node.as_str()).collect();
                metrics::counter!(m::NODES_PURGED).increment(nodes.len() as u64);
                metrics::counter!(m::NODE_PURGE_LEAVES).increment(members.len() as u64);
                tracing::warn!(
                    nodes = ?nodes,
                    members = members.len(),
                    timeout_ms = timeout.as_millis() as u64,
                    "purged the presence of nodes whose heartbeat stopped"
                );
                self.send_leaves(members).await;
            }
            Err(e) => {
                backend_error("node_purge", &e);
            }
        }
    }

    /// Members gone without a leave (expired, or their node purged): a
    /// member_removed webhook for each user whose last connection that was
    /// (any presence channel), then one leave event per removed member of a
    /// join/leave channel.
    async fn send_leaves(&self, members: Vec<(String, Member)>) {
        match self.presence.members_gone(&members).await {
            Ok(users) => {
                for (channel, user) in users {
                    self.member_event(false, &channel, &user);
                    if crate::pusher::names::is_presence(&channel) {
                        self.pusher_member_removed(&channel, &user).await;
                    }
                }
            }
            Err(e) => {
                backend_error("presence_members_gone", &e);
            }
        }
        self.send_presence_events(members, Envelope::Leave).await;
    }

    /// One event (`envelope`: [`Envelope::Join`] or [`Envelope::Leave`])
    /// per member of a join/leave channel; members of other channels are
    /// skipped. A failed send is counted and the rest still go.
    async fn send_presence_events(
        &self,
        members: Vec<(String, Member)>,
        envelope: fn(PresenceEvent) -> Envelope,
    ) {
        for (channel, member) in members {
            // Pusher presence channels announce users, not connections
            // (`send_leaves`).
            if crate::pusher::names::is_pusher(&channel)
                || !self
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
            if let Err(e) = self.backplane.send(envelope(event)).await {
                backend_error("presence_event", &e);
            }
        }
    }

    /// The maintenance tasks, until shutdown: this one refreshes every
    /// `presence_refresh` (and at once after a reconnect or when the
    /// heartbeat found this node purged); the heartbeat, the sweep of
    /// expired members and the purge of crashed nodes each run on a task of
    /// their own (tracked by the shutdown tracker), so none of them waits
    /// behind another: a long sweep or purge never delays a heartbeat or a
    /// refresh. The registry entry is removed once all of them ended.
    pub async fn run_maintenance(self: Arc<Self>) {
        let announce = Arc::new(tokio::sync::Notify::new());
        let tasks = [
            self.shutdown
                .tracker
                .spawn(self.clone().run_heartbeat(announce.clone())),
            self.shutdown.tracker.spawn(self.clone().run_sweep()),
            self.shutdown.tracker.spawn(self.clone().run_purge()),
        ];
        self.run_refresh(&announce).await;
        for task in tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "a maintenance task failed");
            }
        }
        if let Err(e) = self.presence.remove_node(&self.config.node_id).await {
            backend_error("node_remove", &e);
        }
    }

    async fn run_refresh(&self, announce: &tokio::sync::Notify) {
        let mut refresh = tokio::time::interval(self.config.presence_refresh);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut health = tokio::time::interval(Duration::from_millis(250));
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_generation = self.backplane.generation();
        loop {
            tokio::select! {
                _ = self.shutdown.token.cancelled() => break,
                _ = refresh.tick() => self.maintain().await,
                _ = announce.notified() => {
                    tracing::info!("this node was purged from the registry (stalled?); re-announcing its presence");
                    self.occupancy.resync();
                    self.maintain().await;
                }
                _ = health.tick() => {
                    // After a reconnect the backend may have lost our
                    // entries: rewrite them now, not at the next refresh.
                    let generation = self.backplane.generation();
                    if generation != last_generation && self.backplane.is_healthy() {
                        tracing::info!("backplane reconnected, refreshing presence");
                        last_generation = generation;
                        self.occupancy.resync();
                        self.maintain().await;
                        self.heartbeat().await;
                    }
                }
            }
        }
    }

    /// Heartbeat every min(`presence_refresh`, 5 s, node timeout / 3), so a
    /// live node is never older than the node timeout; a heartbeat that had
    /// to re-create the entry (after the first) wakes the refresh.
    async fn run_heartbeat(self: Arc<Self>, announce: Arc<tokio::sync::Notify>) {
        let every = self
            .config
            .presence_refresh
            .min(Duration::from_secs(5))
            .min(self.config.presence_node_timeout / 3);
        let mut heartbeat = tokio::time::interval(every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut first = true;
        loop {
            tokio::select! {
                _ = self.shutdown.token.cancelled() => break,
                _ = heartbeat.tick() => {
                    if self.heartbeat().await && !first {
                        announce.notify_one();
                    }
                    first = false;
                }
            }
        }
    }

    /// Sweep a bounded batch of channels a few times per TTL.
    async fn run_sweep(self: Arc<Self>) {
        let every = (self.config.presence_ttl / 4)
            .clamp(Duration::from_millis(200), Duration::from_secs(5));
        let mut sweep = tokio::time::interval(every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut cursor = None;
        loop {
            tokio::select! {
                _ = self.shutdown.token.cancelled() => break,
                _ = sweep.tick() => self.sweep_expired(&mut cursor).await,
            }
        }
    }

    /// Look for stale nodes four times per node timeout (at most every
    /// second).
    async fn run_purge(self: Arc<Self>) {
        let every = (self.config.presence_node_timeout / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(1));
        let mut purge = tokio::time::interval(every);
        purge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.token.cancelled() => break,
                _ = purge.tick() => self.purge_stale_nodes().await,
            }
        }
    }
}

/// Whether members of `channel` that expire are announced as gone: v1
/// join/leave channels (a leave per connection) and Pusher presence
/// channels (a member_removed per user).
fn announces_leaves(config: &crate::config::Config, channel: &str) -> bool {
    if crate::pusher::names::is_pusher(channel) {
        return crate::pusher::names::is_presence(channel);
    }
    config.namespace(channel).is_some_and(|ns| ns.join_leave)
}
