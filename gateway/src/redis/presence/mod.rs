//! [`RedisPresence`]: channel presence, the per-user connection index and
//! the node registry, on Redis.
//!
//! Each of the three is an "expiring hash": a hash `id -> JSON` plus a
//! sorted set `id -> expiry` (client wall clock, ms since the Unix epoch):
//!
//! | what | hash | sorted set | id |
//! |---|---|---|---|
//! | channel members | `P:pres:{c}` | `P:pres-exp:{c}` | conn |
//! | user index | `P:user-conns:{u}` | `P:user-conns-exp:{u}` | conn |
//! | node registry | `P:{nodes}` | `P:{nodes}-exp` | node id |
//!
//! Invariants:
//! - Readers never see an entry whose expiry has passed.
//! - An expired member is removed and returned by exactly one
//!   [`Presence::take_expired`] call cluster-wide (one atomic script), so one
//!   leave event is sent per member. Expired user-index and registry
//!   entries are pruned silently by readers.
//! - Both keys of an expiring hash get a key TTL of twice the entry TTL on
//!   every write, so the keys of a dead cluster vanish by themselves; a
//!   write also prunes entries expired for more than one TTL (members: by
//!   then every sweeping node had its chance to take them), so busy keys do
//!   not collect the entries of crashed nodes.
//! - [`Presence::refresh`] only extends entries that still exist (`ZADD
//!   XX`), so a member that left is not brought back by a refresh that
//!   raced its removal. A `ZSCORE` after each names the entries that were
//!   gone (Redis
//!   lost its data, or this node missed refreshing for a whole TTL and
//!   another node took them as expired); the node re-checks those against
//!   its live connections and re-writes them with [`Presence::restore`].

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::stream::StreamExt;
use serde::de::DeserializeOwned;

mod purge;

use super::{millis, Shared};
use crate::backplane::BackplaneError;
use crate::clock::now_ms;
use crate::presence::{Left, Member, NodeInfo, Presence, RefreshBatch, UserConn};

/// Entries per refresh pipeline.
const REFRESH_CHUNK: usize = 1000;
/// Expired members removed per script run in `take_expired`.
const TAKE_CHUNK: usize = 1000;
/// Bound on `take_expired` script runs per call.
const TAKE_ROUNDS: usize = 100;
/// Channels per sweep pipeline (one `EVALSHA take_expired` each).
const SWEEP_PIPELINE: usize = 100;
/// Pipelines of one batch in flight at once (cluster mode splits a batch
/// by slot).
const PIPELINES_IN_FLIGHT: usize = 32;

/// Redis [`Presence`]. Built by [`crate::redis::connect`].
pub struct RedisPresence {
    shared: Arc<Shared>,
}

/// One entry of a batch: its keys, id, JSON and (a named member) the
/// user's set.
type Entry<'a> = (Expiring, &'a str, String, Option<String>);

/// Keys of one expiring hash.
struct Expiring {
    hash: String,
    expiry: String,
}

impl RedisPresence {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    fn members_keys(&self, channel: &str) -> Expiring {
        let keys = &self.shared.keys;
        Expiring {
            hash: keys.presence(channel),
            expiry: keys.presence_expiry(channel),
        }
    }

    fn user_keys(&self, user: &str) -> Expiring {
        let keys = &self.shared.keys;
        Expiring {
            hash: keys.user_conns(user),
            expiry: keys.user_conns_expiry(user),
        }
    }

    fn node_keys(&self) -> Expiring {
        let keys = &self.shared.keys;
        Expiring {
            hash: keys.nodes(),
            expiry: keys.nodes_expiry(),
        }
    }

    /// Expiry of an entry written now.
    fn expiry(&self) -> u64 {
        now_ms().saturating_add(millis(self.shared.settings.presence_ttl))
    }

    /// Key TTL of an expiring hash (ms).
    fn key_ttl(&self) -> u64 {
        millis(self.shared.settings.presence_ttl).saturating_mul(2)
    }

    /// Write (or re-write) one entry, atomically, pruning entries that
    /// expired before `prune_before` (ms).
    async fn put(
        &self,
        op: &'static str,
        keys: Expiring,
        id: &str,
        json: String,
        prune_before: u64,
    ) -> Result<(), BackplaneError> {
        let mut script = self.shared.scripts.put.prepare_invoke();
        script
            .key(&keys.hash)
            .key(&keys.expiry)
            .arg(id)
            .arg(json)
            .arg(self.expiry())
            .arg(self.key_ttl())
            .arg(prune_before);
        self.shared
            .call(op, |mut conn| async move {
                script.invoke_async::<i64>(&mut conn).await
            })
            .await
            .map(|_pruned| ())
    }

    /// Run a batch in pipelines of [`REFRESH_CHUNK`] entries. `write` adds
    /// the entry's commands, exactly one of them not ignored; both keys of
    /// every expiring hash touched get their key TTL once per pipeline.
    /// Returns the entries whose reply `pick` chose.
    async fn pipelined<R: ::redis::FromRedisValue>(
        &self,
        op: &'static str,
        batch: &RefreshBatch,
        write: impl Fn(&mut ::redis::Pipeline, &Expiring, &str, &str, Option<&str>),
        pick: impl Fn(&R) -> bool,
    ) -> Result<RefreshBatch, BackplaneError> {
        let key_ttl = self.key_ttl();
        let entries = self.entries(batch)?;
        // Groups of entry indexes, one pipeline each: chunks of the batch,
        // and in cluster mode one per slot as well (a pipeline there goes
        // to one shard, and each command to the slot of its keys; small
        // pipelines share the multiplexed connections, so they still
        // travel together).
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (at, chunk) in entries.chunks(REFRESH_CHUNK).enumerate() {
            let base = at * REFRESH_CHUNK;
            if self.shared.cluster.is_some() {
                let mut by_slot: std::collections::BTreeMap<u16, Vec<usize>> = Default::default();
                for (i, (keys, _, _, _)) in chunk.iter().enumerate() {
                    by_slot
                        .entry(crate::redis::slots::slot(&keys.hash))
                        .or_default()
                        .push(base + i);
                }
                groups.extend(by_slot.into_values());
            } else {
                groups.push((base..base + chunk.len()).collect());
            }
        }
        let runs = groups.into_iter().map(|group| {
            let mut pipe = ::redis::pipe();
            let mut touched = HashSet::new();
            for &i in &group {
                let (keys, id, json, set) = &entries[i];
                write(&mut pipe, keys, id, json, set.as_deref());
                if touched.insert(keys.hash.as_str()) {
                    pipe.cmd("PEXPIRE").arg(&keys.hash).arg(key_ttl).ignore();
                    pipe.cmd("PEXPIRE").arg(&keys.expiry).arg(key_ttl).ignore();
                }
            }
            async move {
                let replies: Vec<R> = self
                    .shared
                    .call(
                        op,
                        |mut conn| async move { pipe.query_async(&mut conn).await },
                    )
                    .await?;
                Ok::<_, BackplaneError>((group, replies))
            }
        });
        let mut picked = Vec::new();
        let mut done = futures_util::stream::iter(runs).buffer_unordered(PIPELINES_IN_FLIGHT);
        while let Some(result) = done.next().await {
            let (group, replies) = result?;
            picked.extend(
                group
                    .iter()
                    .zip(replies.iter())
                    .filter(|(_, r)| pick(r))
                    .map(|(&i, _)| i),
            );
        }
        picked.sort_unstable();
        Ok(batch.select(picked))
    }

    /// The keys, id and JSON of every entry of a batch, members first, with
    /// the user's set of a named member (`Keys::presence_user`).
    fn entries<'a>(&self, batch: &'a RefreshBatch) -> Result<Vec<Entry<'a>>, BackplaneError> {
        let mut entries = Vec::with_capacity(batch.len());
        for (channel, member) in &batch.members {
            let set = (!member.user.is_empty())
                .then(|| self.shared.keys.presence_user(channel, &member.user));
            entries.push((
                self.members_keys(channel),
                member.conn.as_str(),
                encode(member)?,
                set,
            ));
        }
        for (user, conn) in &batch.user_conns {
            entries.push((
                self.user_keys(user),
                conn.conn.as_str(),
                encode(conn)?,
                None,
            ));
        }
        Ok(entries)
    }

    /// Delete one entry; returns whether it existed.
    async fn delete(
        &self,
        op: &'static str,
        keys: Expiring,
        id: &str,
    ) -> Result<bool, BackplaneError> {
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .cmd("HDEL")
            .arg(&keys.hash)
            .arg(id)
            .cmd("ZREM")
            .arg(&keys.expiry)
            .arg(id)
            .ignore();
        let (removed,): (i64,) = self
            .shared
            .call(
                op,
                |mut conn| async move { pipe.query_async(&mut conn).await },
            )
            .await?;
        Ok(removed > 0)
    }

    /// One member of [`Presence::members_gone`]: `Some((channel, user))`
    /// when it was its user's last connection.
    async fn member_gone(
        &self,
        channel: &str,
        m: &Member,
    ) -> Result<Option<(String, String)>, BackplaneError> {
        let mut script = self.shared.scripts.member_gone.prepare_invoke();
        script
            .key(self.shared.keys.presence_user(channel, &m.user))
            .arg(&m.conn);
        let last = self
            .shared
            .call("presence", |mut c| async move {
                script.invoke_async::<i64>(&mut c).await
            })
            .await?;
        Ok((last == 1).then(|| (channel.to_owned(), m.user.clone())))
    }

    /// [`Presence::take_expired`], with the channel's name.
    async fn take_named<'a>(
        &self,
        channel: &'a String,
    ) -> Result<(&'a String, Vec<Member>), BackplaneError> {
        Ok((channel, self.take_expired(channel).await?))
    }

    /// Unexpired values, decoded; `prune` deletes expired entries too.
    async fn live<T: DeserializeOwned>(
        &self,
        op: &'static str,
        keys: Expiring,
        prune: bool,
    ) -> Result<Vec<T>, BackplaneError> {
        let mut script = self.shared.scripts.live.prepare_invoke();
        script
            .key(&keys.hash)
            .key(&keys.expiry)
            .arg(now_ms())
            .arg(if prune { "1" } else { "0" });
        let values = self
            .shared
            .call(op, |mut conn| async move {
                script.invoke_async::<Vec<Vec<u8>>>(&mut conn).await
            })
            .await?;
        Ok(decode_all(&values))
    }
}

#[async_trait]
impl Presence for RedisPresence {
    async fn join(&self, channel: &str, member: &Member) -> Result<bool, BackplaneError> {
        let json = encode(member)?;
        // Members expired for less than a TTL are left for take_expired.
        let grace = millis(self.shared.settings.presence_ttl);
        let prune_before = now_ms().saturating_sub(grace);
        let keys = self.members_keys(channel);
        let mut script = self.shared.scripts.put.prepare_invoke();
        script.key(&keys.hash).key(&keys.expiry);
        let named = !member.user.is_empty();
        if named {
            script.key(self.shared.keys.presence_user(channel, &member.user));
        }
        script
            .arg(&member.conn)
            .arg(json)
            .arg(self.expiry())
            .arg(self.key_ttl())
            .arg(prune_before);
        let first = self
            .shared
            .call("presence", |mut conn| async move {
                script.invoke_async::<i64>(&mut conn).await
            })
            .await?;
        self.index(std::iter::once(channel)).await?;
        Ok(named && first == 1)
    }

    async fn leave(&self, channel: &str, conn: &str, user: &str) -> Result<Left, BackplaneError> {
        let keys = self.members_keys(channel);
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .cmd("HDEL")
            .arg(&keys.hash)
            .arg(conn)
            .cmd("ZREM")
            .arg(&keys.expiry)
            .arg(conn)
            .ignore();
        if user.is_empty() {
            let (removed,): (i64,) = self
                .shared
                .call(
                    "presence",
                    |mut c| async move { pipe.query_async(&mut c).await },
                )
                .await?;
            return Ok(Left {
                removed: removed > 0,
                last_of_user: false,
            });
        }
        // In the same MULTI: of two racing leaves of one user's last two
        // connections exactly one sees the set empty after its SREM.
        let set = self.shared.keys.presence_user(channel, user);
        pipe.cmd("SREM").arg(&set).arg(conn).cmd("SCARD").arg(&set);
        let (removed, srem, left): (i64, i64, i64) = self
            .shared
            .call(
                "presence",
                |mut c| async move { pipe.query_async(&mut c).await },
            )
            .await?;
        Ok(Left {
            removed: removed > 0,
            last_of_user: srem == 1 && left == 0,
        })
    }

    async fn members_gone(
        &self,
        gone: &[(String, Member)],
    ) -> Result<Vec<(String, String)>, BackplaneError> {
        let named: Vec<&(String, Member)> =
            gone.iter().filter(|(_, m)| !m.user.is_empty()).collect();
        if self.shared.cluster.is_none() {
            // One Redis: SREM + SCARD pairs in MULTI pipelines, no script
            // call per member (the sets of one batch may repeat a user).
            let mut out = Vec::new();
            for chunk in named.chunks(SWEEP_PIPELINE) {
                let mut pipe = ::redis::pipe();
                pipe.atomic();
                for (channel, m) in chunk {
                    let set = self.shared.keys.presence_user(channel, &m.user);
                    pipe.cmd("SREM").arg(&set).arg(&m.conn);
                    pipe.cmd("SCARD").arg(&set);
                }
                let replies: Vec<i64> = self
                    .shared
                    .call(
                        "presence",
                        |mut c| async move { pipe.query_async(&mut c).await },
                    )
                    .await?;
                for ((channel, m), pair) in chunk.iter().zip(replies.chunks(2)) {
                    if pair == [1, 0] {
                        out.push((channel.clone(), m.user.clone()));
                    }
                }
            }
            return Ok(out);
        }
        let runs: Vec<_> = named
            .iter()
            .map(|(channel, m)| self.member_gone(channel, m))
            .collect();
        let mut out = Vec::new();
        let mut done = futures_util::stream::iter(runs).buffer_unordered(PIPELINES_IN_FLIGHT);
        while let Some(r) = done.next().await {
            out.extend(r?);
        }
        Ok(out)
    }

    async fn members(&self, channel: &str) -> Result<Vec<Member>, BackplaneError> {
        self.live("presence", self.members_keys(channel), false)
            .await
    }

    async fn take_expired(&self, channel: &str) -> Result<Vec<Member>, BackplaneError> {
        let keys = self.members_keys(channel);
        let mut taken = Vec::new();
        for _ in 0..TAKE_ROUNDS {
            let mut script = self.shared.scripts.take_expired.prepare_invoke();
            script
                .key(&keys.hash)
                .key(&keys.expiry)
                .arg(now_ms())
                .arg(TAKE_CHUNK);
            let (removed, values) = self
                .shared
                .call("presence", |mut conn| async move {
                    script
                        .invoke_async::<(usize, Vec<Vec<u8>>)>(&mut conn)
                        .await
                })
                .await?;
            taken.extend(decode_all::<Member>(&values));
            if removed < TAKE_CHUNK {
                break;
            }
        }
        Ok(taken)
    }

    async fn add_user_conn(&self, user: &str, conn: &UserConn) -> Result<(), BackplaneError> {
        let json = encode(conn)?;
        self.put(
            "user_index",
            self.user_keys(user),
            &conn.conn,
            json,
            now_ms(),
        )
        .await?;
        self.index_users(std::iter::once(user)).await
    }

    async fn remove_user_conn(&self, user: &str, conn: &str) -> Result<(), BackplaneError> {
        self.delete("user_index", self.user_keys(user), conn)
            .await
            .map(|_| ())
    }

    async fn user_conns(&self, user: &str) -> Result<Vec<UserConn>, BackplaneError> {
        self.live("user_index", self.user_keys(user), true).await
    }

    async fn refresh(&self, batch: &RefreshBatch) -> Result<RefreshBatch, BackplaneError> {
        let expiry = self.expiry();
        // ZADD XX never re-creates an entry (a leave may have raced this
        // refresh); then ZSCORE says whether it exists (ZADD's own reply
        // cannot: an entry written in the same millisecond is not "changed").
        let missing = self
            .pipelined(
                "presence_refresh",
                batch,
                |pipe, keys, id, _, _| {
                    pipe.cmd("ZADD")
                        .arg(&keys.expiry)
                        .arg("XX")
                        .arg(expiry)
                        .arg(id)
                        .ignore();
                    pipe.cmd("ZSCORE").arg(&keys.expiry).arg(id);
                },
                |score: &Option<f64>| score.is_none(),
            )
            .await?;
        // The index of this node's presence channels heals here after a
        // purge or a Redis restart (restored entries are in the batch too).
        self.index(batch.members.iter().map(|(c, _)| c.as_str()))
            .await?;
        self.index_users(batch.user_conns.iter().map(|(u, _)| u.as_str()))
            .await?;
        Ok(missing)
    }

    async fn restore(&self, batch: &RefreshBatch) -> Result<RefreshBatch, BackplaneError> {
        let expiry = self.expiry();
        // HSETNX: an entry its own join wrote meanwhile is kept, and not
        // reported as created (no second join event).
        self.pipelined(
            "presence_restore",
            batch,
            |pipe, keys, id, json, set| {
                pipe.cmd("HSETNX").arg(&keys.hash).arg(id).arg(json);
                // A named member's place in its user's set: after Redis
                // lost its data this rebuilds the set (no member event).
                if let Some(set) = set {
                    pipe.cmd("SADD").arg(set).arg(id).ignore();
                }
                pipe.cmd("ZADD")
                    .arg(&keys.expiry)
                    .arg(expiry)
                    .arg(id)
                    .ignore();
            },
            |set: &i64| *set == 1,
        )
        .await
    }

    async fn heartbeat(&self, node: &NodeInfo) -> Result<(), BackplaneError> {
        self.announce(node).await.map(|_| ())
    }

    async fn announce(&self, node: &NodeInfo) -> Result<bool, BackplaneError> {
        let json = encode(node)?;
        let keys = &self.shared.keys;
        let mut script = self.shared.scripts.heartbeat.prepare_invoke();
        script
            .key(keys.nodes())
            .key(keys.nodes_expiry())
            .key(keys.nodes_seen())
            .arg(&node.id)
            .arg(json)
            .arg(self.expiry())
            .arg(self.key_ttl())
            .arg(now_ms());
        let created = self
            .shared
            .call("nodes", |mut conn| async move {
                script.invoke_async::<i64>(&mut conn).await
            })
            .await?;
        Ok(created == 1)
    }

    async fn take_expired_many(
        &self,
        channels: &[String],
    ) -> Result<Vec<(String, Member)>, BackplaneError> {
        let mut out = Vec::new();
        if self.shared.cluster.is_some() {
            // Cluster mode: the channels live in different slots, so one
            // script call each, several in flight.
            let runs: Vec<_> = channels.iter().map(|c| self.take_named(c)).collect();
            let mut runs = futures_util::stream::iter(runs).buffer_unordered(PIPELINES_IN_FLIGHT);
            while let Some(result) = runs.next().await {
                let (channel, members) = result?;
                out.extend(members.into_iter().map(|m| (channel.clone(), m)));
            }
            return Ok(out);
        }
        for chunk in channels.chunks(SWEEP_PIPELINE) {
            let now = now_ms();
            let mut pipe = ::redis::pipe();
            // SCRIPT LOAD first: the EVALSHAs below never meet NOSCRIPT,
            // even right after a Redis restart (one command per pipeline).
            pipe.cmd("SCRIPT")
                .arg("LOAD")
                .arg(include_str!("../lua/take_expired.lua"))
                .ignore();
            for channel in chunk {
                let keys = self.members_keys(channel);
                pipe.cmd("EVALSHA")
                    .arg(self.shared.scripts.take_expired.get_hash())
                    .arg(2)
                    .arg(&keys.hash)
                    .arg(&keys.expiry)
                    .arg(now)
                    .arg(TAKE_CHUNK);
            }
            let replies: Vec<(usize, Vec<Vec<u8>>)> = self
                .shared
                .call("presence_sweep", |mut conn| async move {
                    pipe.query_async(&mut conn).await
                })
                .await?;
            for (channel, (removed, values)) in chunk.iter().zip(replies) {
                out.extend(
                    decode_all::<Member>(&values)
                        .into_iter()
                        .map(|m| (channel.clone(), m)),
                );
                if removed >= TAKE_CHUNK {
                    // More than one script's worth: the rest one by one.
                    for m in self.take_expired(channel).await? {
                        out.push((channel.clone(), m));
                    }
                }
            }
        }
        Ok(out)
    }

    async fn purge_stale_nodes(
        &self,
        own: &str,
        timeout: std::time::Duration,
    ) -> Result<crate::presence::Purged, BackplaneError> {
        self.purge_stale(own, timeout).await
    }

    async fn remove_node(&self, id: &str) -> Result<(), BackplaneError> {
        self.delete("nodes", self.node_keys(), id).await?;
        // A node that left cleanly is not a crashed node to purge (its
        // members left with their connections during the drain).
        let seen = self.shared.keys.nodes_seen();
        self.shared
            .call("nodes", |mut conn| async move {
                ::redis::cmd("ZREM")
                    .arg(&seen)
                    .arg(id)
                    .query_async::<i64>(&mut conn)
                    .await
            })
            .await
            .map(|_| ())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, BackplaneError> {
        self.live("nodes", self.node_keys(), true).await
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Result<String, BackplaneError> {
    serde_json::to_string(value)
        .map_err(|e| BackplaneError::Protocol(format!("cannot encode presence entry: {e}")))
}

/// Decode entries, skipping (and counting) any that do not parse, so one
/// foreign value cannot hide a whole channel.
fn decode_all<T: DeserializeOwned>(values: &[Vec<u8>]) -> Vec<T> {
    values
        .iter()
        .filter_map(|bytes| match serde_json::from_slice(bytes) {
            Ok(v) => Some(v),
            Err(e) => {
                metrics::counter!(crate::redis::METRIC_ERRORS, "op" => "decode").increment(1);
                tracing::debug!(error = %e, "undecodable presence entry skipped");
                None
            }
        })
        .collect()
}

// Tests: tests/tests/contract.rs (the shared contract) and
// tests/tests/redis_backends.rs (Redis-only behaviour), against real
// redis-server processes.
