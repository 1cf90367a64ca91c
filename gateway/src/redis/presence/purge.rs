//! The crashed-node purge of [`RedisPresence`] (docs/redis.md,
//! maintenance): each node's indexes of where it wrote (`P:node-pres:{id}`
//! channels, `P:node-users:{id}` users), and the purge by a live node of a
//! node whose heartbeat is older than the node timeout: claim (a lease),
//! remove its entries with purge_members.lua, finish (drop it from the
//! registry unless it came back), delete its indexes.

use super::{decode_all, Expiring, RedisPresence, REFRESH_CHUNK};
use crate::backplane::BackplaneError;
use crate::clock::now_ms;
use crate::presence::{Member, Purged};
use crate::redis::millis;

/// Stale nodes claimed per purge call.
const PURGE_NODES: isize = 10;
/// Names of a purged node's index read per `SSCAN` step.
const PURGE_SCAN: usize = 200;
/// Entries examined per `HSCAN` step of the purge script.
const PURGE_HSCAN: usize = 500;
/// A purge claim lapses after this long (a claimer that died mid-purge
/// lets another live node take over).
const PURGE_LEASE_MS: u64 = 30_000;

impl RedisPresence {
    /// Add channels to this node's presence index (`P:node-pres:{id}`).
    pub(super) async fn index<'a>(
        &self,
        channels: impl Iterator<Item = &'a str>,
    ) -> Result<(), BackplaneError> {
        let key = self
            .shared
            .keys
            .node_presence(&self.shared.settings.node_id);
        self.index_in(key, channels).await
    }

    /// Add users to this node's user index index (`P:node-users:{id}`).
    pub(super) async fn index_users<'a>(
        &self,
        users: impl Iterator<Item = &'a str>,
    ) -> Result<(), BackplaneError> {
        let key = self.shared.keys.node_users(&self.shared.settings.node_id);
        self.index_in(key, users).await
    }

    /// Add names to one of this node's index sets, in one pipeline per
    /// [`REFRESH_CHUNK`] names.
    async fn index_in<'a>(
        &self,
        key: String,
        names: impl Iterator<Item = &'a str>,
    ) -> Result<(), BackplaneError> {
        let mut unique: Vec<&str> = names.collect();
        unique.sort_unstable();
        unique.dedup();
        for chunk in unique.chunks(REFRESH_CHUNK) {
            let mut pipe = ::redis::pipe();
            pipe.cmd("SADD").arg(&key).arg(chunk).ignore();
            pipe.cmd("PEXPIRE").arg(&key).arg(self.key_ttl()).ignore();
            self.shared
                .call("presence", |mut conn| async move {
                    pipe.query_async::<()>(&mut conn).await
                })
                .await?;
        }
        Ok(())
    }

    /// Claim the purge of a stale node (a lease: one purger at a time).
    async fn claim(&self, node: &str, cutoff: u64, own: &str) -> Result<bool, BackplaneError> {
        let keys = &self.shared.keys;
        let mut script = self.shared.scripts.claim_node.prepare_invoke();
        script
            .key(keys.nodes_seen())
            .key(keys.node_purge_lease(node))
            .arg(node)
            .arg(cutoff)
            .arg(own)
            .arg(PURGE_LEASE_MS);
        let claimed = self
            .shared
            .call("node_purge", |mut conn| async move {
                script.invoke_async::<i64>(&mut conn).await
            })
            .await?;
        Ok(claimed == 1)
    }

    /// Remove every member of `node` in the channels of its index and its
    /// connections from the user index of its users, then drop it from the
    /// registry (unless it came back) and its indexes.
    async fn purge_node(
        &self,
        node: &str,
        cutoff: u64,
        out: &mut Purged,
    ) -> Result<(), BackplaneError> {
        let keys = &self.shared.keys;
        let index = keys.node_presence(node);
        let users = keys.node_users(node);
        let prefix = format!("{node}.");
        for channel in self.scan_index(&index).await? {
            let values = self
                .purge_entries(self.members_keys(&channel), &prefix)
                .await?;
            out.members.extend(
                decode_all::<Member>(&values)
                    .into_iter()
                    .map(|m| (channel.clone(), m)),
            );
        }
        let vacated = super::super::occupancy::RedisChannels::new(self.shared.clone())
            .purge_node(node)
            .await?;
        for user in self.scan_index(&users).await? {
            self.purge_entries(self.user_keys(&user), &prefix).await?;
        }
        let mut script = self.shared.scripts.finish_purge.prepare_invoke();
        script
            .key(keys.nodes_seen())
            .key(keys.nodes())
            .key(keys.nodes_expiry())
            .key(keys.node_purge_lease(node))
            .arg(node)
            .arg(cutoff);
        let dropped = self
            .shared
            .call("node_purge", |mut conn| async move {
                script.invoke_async::<i64>(&mut conn).await
            })
            .await?;
        out.vacated.extend(vacated);
        if dropped == 1 {
            let chans = keys.node_channels(node);
            self.shared
                .call("node_purge", |mut conn| async move {
                    ::redis::cmd("DEL")
                        .arg(&index)
                        .arg(&users)
                        .arg(&chans)
                        .query_async::<i64>(&mut conn)
                        .await
                })
                .await?;
        }
        Ok(())
    }

    /// Every name of one of a node's index sets (SSCAN, [`PURGE_SCAN`] at
    /// a time).
    async fn scan_index(&self, key: &str) -> Result<Vec<String>, BackplaneError> {
        let mut names = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, mut step): (u64, Vec<String>) = self
                .shared
                .call("node_purge", |mut conn| async move {
                    ::redis::cmd("SSCAN")
                        .arg(key)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(PURGE_SCAN)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            names.append(&mut step);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        names.sort_unstable();
        names.dedup();
        Ok(names)
    }

    /// Remove the entries of the connections named `prefix*` from one
    /// expiring hash, [`PURGE_HSCAN`] fields at a time; their values.
    async fn purge_entries(
        &self,
        keys: Expiring,
        prefix: &str,
    ) -> Result<Vec<Vec<u8>>, BackplaneError> {
        let mut out = Vec::new();
        let mut cursor = 0u64;
        loop {
            let mut script = self.shared.scripts.purge_members.prepare_invoke();
            script
                .key(&keys.hash)
                .key(&keys.expiry)
                .arg(prefix)
                .arg(cursor)
                .arg(PURGE_HSCAN);
            let (next, mut values) = self
                .shared
                .call("node_purge", |mut conn| async move {
                    script.invoke_async::<(u64, Vec<Vec<u8>>)>(&mut conn).await
                })
                .await?;
            out.append(&mut values);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        Ok(out)
    }

    /// Purge every node (but `own`) whose heartbeat is older than
    /// `timeout`: claim it, remove its members and user-index entries
    /// (returned for their leave events), then drop it from the registry.
    pub(super) async fn purge_stale(
        &self,
        own: &str,
        timeout: std::time::Duration,
    ) -> Result<Purged, BackplaneError> {
        let keys = &self.shared.keys;
        let cutoff = now_ms().saturating_sub(millis(timeout));
        let seen = keys.nodes_seen();
        let stale: Vec<String> = self
            .shared
            .call("node_purge", |mut conn| async move {
                ::redis::cmd("ZRANGEBYSCORE")
                    .arg(&seen)
                    .arg("-inf")
                    .arg(format!("({cutoff}"))
                    .arg("LIMIT")
                    .arg(0)
                    .arg(PURGE_NODES)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let mut out = Purged::default();
        for node in stale.iter().filter(|n| n.as_str() != own) {
            if self.claim(node, cutoff, own).await? {
                self.purge_node(node, cutoff, &mut out).await?;
            }
        }
        Ok(out)
    }
}
