//! [`RedisChannels`]: the per-channel subscriber counts of every node on
//! Redis (docs/redis.md, "Channel state").
//!
//! | key | kind | holds | written by |
//! |---|---|---|---|
//! | `P:subs:{c}` | hash | node id -> that node's local count | each node, its own field |
//! | `P:chans:{<id>}` | sorted set (score 0) | channels node `id` has subscribers for | node `id` |
//!
//! Invariants:
//! - A node's field of `P:subs:{c}` changes only through occupancy.lua
//!   (one key, one slot), which reports the empty -> occupied and
//!   occupied -> empty transitions: each to exactly one caller.
//! - `P:chans:{<id>}` follows the node's successful writes (added when the
//!   count is > 0, removed at 0), so the purge of a crashed node finds every
//!   field it left and listing finds every channel with subscribers.
//! - Readers only count fields of live nodes (the registry), so a crashed
//!   node's subscribers stop counting when its registry entry expires, and
//!   its fields are removed (with vacated events) when it is purged.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::stream::StreamExt;

use super::Shared;
use crate::backplane::BackplaneError;
use crate::occupancy::{ChannelStore, Page, Transition, Written};

/// Script calls in flight at once in cluster mode (one slot each).
const IN_FLIGHT: usize = 32;

/// Redis [`ChannelStore`]. Built by [`crate::redis::connect`].
pub struct RedisChannels {
    shared: Arc<Shared>,
}

fn transition(reply: i64) -> Option<Transition> {
    match reply {
        1 => Some(Transition::Occupied),
        -1 => Some(Transition::Vacated),
        _ => None,
    }
}

impl RedisChannels {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    fn own(&self) -> &str {
        &self.shared.settings.node_id
    }

    /// Run occupancy.lua for `node`'s count of one channel.
    async fn set_one(&self, node: &str, channel: &str, count: u64) -> Result<i64, BackplaneError> {
        let mut script = self.shared.scripts.occupancy.prepare_invoke();
        script
            .key(self.shared.keys.subscribers(channel))
            .arg(node)
            .arg(count);
        self.shared
            .call("channel_counts", |mut conn| async move {
                script.invoke_async::<i64>(&mut conn).await
            })
            .await
    }

    /// [`RedisChannels::set_one`], with the channel's name.
    async fn set_named(
        &self,
        node: &str,
        channel: &str,
        count: u64,
    ) -> (String, Result<i64, BackplaneError>) {
        (channel.to_owned(), self.set_one(node, channel, count).await)
    }

    /// One channel's counts hash summed over `nodes`.
    async fn sum_of(
        &self,
        channel: &str,
        nodes: &[String],
    ) -> Result<(String, u64), BackplaneError> {
        let key = self.shared.keys.subscribers(channel);
        let fields: Vec<(String, u64)> = self
            .shared
            .call("channel_counts", |mut conn| async move {
                ::redis::cmd("HGETALL")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let sum = fields
            .iter()
            .filter(|(n, _)| nodes.iter().any(|live| live == n))
            .map(|(_, v)| *v)
            .sum::<u64>();
        Ok((channel.to_owned(), sum))
    }

    /// The script of every count, one call each, [`IN_FLIGHT`] at once (the
    /// cluster mode's way: the channels live in different slots). Failures
    /// do not stop the others, so no transition that happened is lost.
    async fn set_many(&self, node: &str, counts: &[(String, u64)]) -> Written {
        let runs: Vec<_> = counts
            .iter()
            .map(|(c, n)| self.set_named(node, c, *n))
            .collect();
        let mut runs = futures_util::stream::iter(runs).buffer_unordered(IN_FLIGHT);
        let mut out = Written::default();
        while let Some((channel, result)) = runs.next().await {
            match result {
                Ok(reply) => out
                    .transitions
                    .extend(transition(reply).map(|t| (channel, t))),
                Err(e) => {
                    out.retry.push(channel);
                    out.error.get_or_insert(e);
                }
            }
        }
        out
    }

    /// Single and sentinel mode: every script in one pipeline (a SCRIPT
    /// LOAD first, so the EVALSHAs never meet NOSCRIPT after a restart).
    async fn set_pipelined(&self, counts: &[(String, u64)]) -> Written {
        let mut pipe = ::redis::pipe();
        pipe.cmd("SCRIPT")
            .arg("LOAD")
            .arg(include_str!("lua/occupancy.lua"))
            .ignore();
        for (channel, n) in counts {
            pipe.cmd("EVALSHA")
                .arg(self.shared.scripts.occupancy.get_hash())
                .arg(1)
                .arg(self.shared.keys.subscribers(channel))
                .arg(self.own())
                .arg(*n);
        }
        let replies = self
            .shared
            .call("channel_counts", |mut conn| async move {
                pipe.query_async::<Vec<i64>>(&mut conn).await
            })
            .await;
        match replies {
            Ok(replies) => Written {
                transitions: counts
                    .iter()
                    .zip(replies)
                    .filter_map(|((c, _), r)| transition(r).map(|t| (c.clone(), t)))
                    .collect(),
                ..Written::default()
            },
            Err(e) => Written::failed(counts, e),
        }
    }

    /// Follow the written counts in this node's channel set.
    async fn index(&self, counts: &[(String, u64)]) -> Result<(), BackplaneError> {
        let key = self.shared.keys.node_channels(self.own());
        let add: Vec<&str> = counts
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(c, _)| c.as_str())
            .collect();
        let remove: Vec<&str> = counts
            .iter()
            .filter(|(_, n)| *n == 0)
            .map(|(c, _)| c.as_str())
            .collect();
        let mut pipe = ::redis::pipe();
        if !add.is_empty() {
            let mut zadd = ::redis::cmd("ZADD");
            zadd.arg(&key);
            for c in &add {
                zadd.arg(0).arg(*c);
            }
            pipe.add_command(zadd).ignore();
        }
        if !remove.is_empty() {
            pipe.cmd("ZREM").arg(&key).arg(&remove).ignore();
        }
        self.shared
            .call("channel_counts", |mut conn| async move {
                pipe.query_async::<()>(&mut conn).await
            })
            .await
    }

    /// The counts hash of each channel, as (channel, sum over `nodes`).
    async fn sums(
        &self,
        channels: &[String],
        nodes: &[String],
    ) -> Result<Vec<(String, u64)>, BackplaneError> {
        let runs: Vec<_> = channels.iter().map(|c| self.sum_of(c, nodes)).collect();
        let mut runs = futures_util::stream::iter(runs).buffered(IN_FLIGHT);
        let mut out = Vec::with_capacity(channels.len());
        while let Some(r) = runs.next().await {
            out.push(r?);
        }
        Ok(out)
    }

    /// Every channel of a node's channel set.
    async fn channels_of(&self, node: &str) -> Result<Vec<String>, BackplaneError> {
        let key = self.shared.keys.node_channels(node);
        self.shared
            .call("channel_counts", |mut conn| async move {
                ::redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut conn)
                    .await
            })
            .await
    }

    /// Remove a crashed node's fields from every channel of its set and
    /// return the channels that became empty (each to exactly one caller:
    /// the script reports the vacate once). The set itself is deleted by
    /// the caller once the node is dropped from the registry.
    pub(crate) async fn purge_node(&self, node: &str) -> Result<Vec<String>, BackplaneError> {
        let channels = self.channels_of(node).await?;
        let zeros: Vec<(String, u64)> = channels.into_iter().map(|c| (c, 0)).collect();
        let written = self.set_many(node, &zeros).await;
        if let Some(e) = written.error {
            // The purge stops here and is retried as a whole once the claim
            // lapses (the vacates this run saw are lost: docs/redis.md).
            return Err(e);
        }
        Ok(written
            .transitions
            .into_iter()
            .filter(|(_, t)| *t == Transition::Vacated)
            .map(|(c, _)| c)
            .collect())
    }
}

#[async_trait]
impl ChannelStore for RedisChannels {
    async fn write(&self, counts: &[(String, u64)]) -> Written {
        let mut written = if self.shared.cluster.is_some() {
            let node = self.own().to_owned();
            self.set_many(&node, counts).await
        } else {
            self.set_pipelined(counts).await
        };
        // Index only what was written; a failed index write makes the whole
        // batch go again (the scripts are idempotent: no second event).
        let done: Vec<(String, u64)> = counts
            .iter()
            .filter(|(c, _)| !written.retry.contains(c))
            .cloned()
            .collect();
        if !done.is_empty() {
            if let Err(e) = self.index(&done).await {
                written.retry.extend(done.into_iter().map(|(c, _)| c));
                written.error.get_or_insert(e);
            }
        }
        written
    }

    async fn own_channels(&self) -> Result<Vec<String>, BackplaneError> {
        self.channels_of(self.own()).await
    }

    async fn subscribers(&self, channel: &str, nodes: &[String]) -> Result<u64, BackplaneError> {
        let sums = self.sums(&[channel.to_owned()], nodes).await?;
        Ok(sums.first().map_or(0, |(_, n)| *n))
    }

    async fn list(
        &self,
        nodes: &[String],
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, BackplaneError> {
        let min = match after {
            Some(a) if a >= prefix => format!("({a}"),
            _ if prefix.is_empty() => "-".to_owned(),
            _ => format!("[{prefix}"),
        };
        // Channel names are ASCII below 0x7f: every name starting with the
        // prefix sorts before prefix + 0x7f.
        let max = if prefix.is_empty() {
            "+".to_owned()
        } else {
            format!("[{prefix}\u{7f}")
        };
        let mut candidates = BTreeSet::new();
        let mut more = false;
        for node in nodes {
            let key = self.shared.keys.node_channels(node);
            let (min, max) = (&min, &max);
            let names: Vec<String> = self
                .shared
                .call("channel_counts", |mut conn| async move {
                    ::redis::cmd("ZRANGEBYLEX")
                        .arg(&key)
                        .arg(min)
                        .arg(max)
                        .arg("LIMIT")
                        .arg(0)
                        .arg(limit)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            more |= names.len() >= limit;
            candidates.extend(names);
        }
        // The smallest `limit` names of the union are exact: each node gave
        // its own smallest `limit`.
        more |= candidates.len() > limit;
        let page: Vec<String> = candidates.into_iter().take(limit).collect();
        let next = if more { page.last().cloned() } else { None };
        let mut channels = self.sums(&page, nodes).await?;
        // A node's set may lead its counts by one flush: skip what counts 0.
        channels.retain(|(_, n)| *n > 0);
        Ok(Page { channels, next })
    }
}
