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
//! | node registry | `P:nodes` | `P:nodes-exp` | node id |
//!
//! Invariants:
//! - Readers never see an entry whose expiry has passed.
//! - An expired member is removed and returned by exactly one
//!   [`Presence::take_expired`] call cluster-wide (one atomic script), so one
//!   leave event is sent per member. Expired user-index and registry
//!   entries are pruned silently by readers.
//! - Both keys of an expiring hash get a key TTL of twice the entry TTL on
//!   every write, so the keys of a dead cluster vanish by themselves.
//! - [`Presence::refresh`] only extends entries that still exist (`ZADD
//!   XX`), so a member that left or was reported expired is not brought
//!   back by a refresh that raced its removal. After the pub/sub link was
//!   re-established (Redis may have lost its data) the next refresh
//!   re-writes every entry of the batch instead.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use serde::de::DeserializeOwned;

use super::{Member, NodeInfo, Presence, RefreshBatch, UserConn};
use crate::backplane::BackplaneError;
use crate::redis::{millis, now_ms, Shared};

/// Entries per refresh pipeline.
const REFRESH_CHUNK: usize = 1000;
/// Expired members removed per script run in `take_expired`.
const TAKE_CHUNK: usize = 1000;
/// Bound on `take_expired` script runs per call.
const TAKE_ROUNDS: usize = 100;

/// Redis [`Presence`]. Built by [`crate::redis::connect`].
pub struct RedisPresence {
    shared: Arc<Shared>,
    /// Link generation seen by the last successful refresh (`u64::MAX`
    /// before the first): when it differs, refresh re-writes entries.
    refreshed_generation: AtomicU64,
}

/// Keys of one expiring hash.
struct Expiring {
    hash: String,
    expiry: String,
}

impl RedisPresence {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            refreshed_generation: AtomicU64::new(u64::MAX),
        }
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

    /// Write (or re-write) one entry, atomically.
    async fn put(&self, op: &'static str, keys: Expiring, id: &str, json: String) -> Result<(), BackplaneError> {
        let mut pipe = ::redis::pipe();
        pipe.atomic();
        add_entry(&mut pipe, &keys, id, &json, self.expiry());
        expire(&mut pipe, &keys, self.key_ttl());
        self.shared
            .call(op, |mut conn| async move { pipe.query_async::<()>(&mut conn).await })
            .await
    }

    /// Delete one entry; returns whether it existed.
    async fn delete(&self, op: &'static str, keys: Expiring, id: &str) -> Result<bool, BackplaneError> {
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
            .call(op, |mut conn| async move { pipe.query_async(&mut conn).await })
            .await?;
        Ok(removed > 0)
    }

    /// Unexpired values, decoded; `prune` deletes expired entries too.
    async fn live<T: DeserializeOwned>(&self, op: &'static str, keys: Expiring, prune: bool) -> Result<Vec<T>, BackplaneError> {
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
    async fn join(&self, channel: &str, member: &Member) -> Result<(), BackplaneError> {
        let json = encode(member)?;
        self.put("presence", self.members_keys(channel), &member.conn, json).await
    }

    async fn leave(&self, channel: &str, conn: &str) -> Result<bool, BackplaneError> {
        self.delete("presence", self.members_keys(channel), conn).await
    }

    async fn members(&self, channel: &str) -> Result<Vec<Member>, BackplaneError> {
        self.live("presence", self.members_keys(channel), false).await
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
                    script.invoke_async::<(usize, Vec<Vec<u8>>)>(&mut conn).await
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
        self.put("user_index", self.user_keys(user), &conn.conn, json).await
    }

    async fn remove_user_conn(&self, user: &str, conn: &str) -> Result<(), BackplaneError> {
        self.delete("user_index", self.user_keys(user), conn).await.map(|_| ())
    }

    async fn user_conns(&self, user: &str) -> Result<Vec<UserConn>, BackplaneError> {
        self.live("user_index", self.user_keys(user), true).await
    }

    async fn refresh(&self, batch: &RefreshBatch) -> Result<(), BackplaneError> {
        let generation = self.shared.link.generation();
        let rewrite = self.refreshed_generation.load(Ordering::Acquire) != generation;
        let expiry = self.expiry();
        let key_ttl = self.key_ttl();
        let mut entries = Vec::with_capacity(batch.members.len() + batch.user_conns.len());
        for (channel, member) in &batch.members {
            entries.push((self.members_keys(channel), member.conn.as_str(), encode(member)?));
        }
        for (user, conn) in &batch.user_conns {
            entries.push((self.user_keys(user), conn.conn.as_str(), encode(conn)?));
        }
        for chunk in entries.chunks(REFRESH_CHUNK) {
            let mut pipe = ::redis::pipe();
            let mut touched = HashSet::new();
            for (keys, id, json) in chunk {
                if rewrite {
                    add_entry(&mut pipe, keys, id, json, expiry);
                } else {
                    pipe.cmd("ZADD").arg(&keys.expiry).arg("XX").arg(expiry).arg(*id).ignore();
                }
                if touched.insert(keys.hash.as_str()) {
                    expire(&mut pipe, keys, key_ttl);
                }
            }
            self.shared
                .call("presence_refresh", |mut conn| async move {
                    pipe.query_async::<()>(&mut conn).await
                })
                .await?;
        }
        self.refreshed_generation.store(generation, Ordering::Release);
        Ok(())
    }

    async fn heartbeat(&self, node: &NodeInfo) -> Result<(), BackplaneError> {
        let json = encode(node)?;
        self.put("nodes", self.node_keys(), &node.id, json).await
    }

    async fn remove_node(&self, id: &str) -> Result<(), BackplaneError> {
        self.delete("nodes", self.node_keys(), id).await.map(|_| ())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, BackplaneError> {
        self.live("nodes", self.node_keys(), true).await
    }
}

fn add_entry(pipe: &mut ::redis::Pipeline, keys: &Expiring, id: &str, json: &str, expiry: u64) {
    pipe.cmd("HSET").arg(&keys.hash).arg(id).arg(json).ignore();
    pipe.cmd("ZADD").arg(&keys.expiry).arg(expiry).arg(id).ignore();
}

fn expire(pipe: &mut ::redis::Pipeline, keys: &Expiring, ttl_ms: u64) {
    pipe.cmd("PEXPIRE").arg(&keys.hash).arg(ttl_ms).ignore();
    pipe.cmd("PEXPIRE").arg(&keys.expiry).arg(ttl_ms).ignore();
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
                metrics::counter!("gateway_redis_errors_total", "op" => "decode").increment(1);
                tracing::debug!(error = %e, "undecodable presence entry skipped");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::value::RawValue;

    use super::*;
    use crate::redis::testutil::{CollectSink, RedisServer, TestResult};
    use crate::redis::{connect, RedisBackends};

    async fn backends(server: &RedisServer, prefix: &str, node: &str, ttl: Duration) -> Result<RedisBackends, BackplaneError> {
        let mut settings = server.settings(prefix, node);
        settings.presence_ttl = ttl;
        connect(settings, Arc::new(CollectSink::default())).await
    }

    fn member(conn: &str, node: &str) -> Result<Member, serde_json::Error> {
        Ok(Member {
            user: format!("user-{conn}"),
            conn: conn.into(),
            node: node.into(),
            info: Some(RawValue::from_string(r#"{"name":"A/B"}"#.into())?),
        })
    }

    fn conns(members: &[Member]) -> Vec<String> {
        let mut v: Vec<String> = members.iter().map(|m| m.conn.clone()).collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn join_members_leave() -> TestResult {
        let server = RedisServer::start().await?;
        let b = backends(&server, &server.prefix(), "n1", Duration::from_secs(60)).await?;
        let p = &b.presence;
        p.join("room", &member("c1", "n1")?).await?;
        p.join("room", &member("c2", "n2")?).await?;
        p.join("room", &member("c2", "n2")?).await?;
        let got = p.members("room").await?;
        assert_eq!(conns(&got), ["c1", "c2"]);
        let c1 = got.iter().find(|m| m.conn == "c1").ok_or("c1 missing")?;
        assert_eq!(c1.info.as_ref().map(|i| i.get()), Some(r#"{"name":"A/B"}"#));
        assert_eq!(c1.user, "user-c1");
        assert!(p.leave("room", "c1").await?);
        assert!(!p.leave("room", "c1").await?);
        assert_eq!(conns(&p.members("room").await?), ["c2"]);
        assert!(p.members("empty").await?.is_empty());
        assert!(p.take_expired("room").await?.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn expired_members_are_taken_exactly_once() -> TestResult {
        let server = RedisServer::start().await?;
        let prefix = server.prefix();
        let ttl = Duration::from_millis(300);
        let a = backends(&server, &prefix, "a", ttl).await?;
        let b = backends(&server, &prefix, "b", ttl).await?;
        for i in 0..50 {
            a.presence.join("room", &member(&format!("c{i:02}"), "a")?).await?;
        }
        assert_eq!(a.presence.members("room").await?.len(), 50);
        // Readers stop seeing them once the TTL passes.
        let mut gone = false;
        for _ in 0..200 {
            if a.presence.members("room").await?.is_empty() {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone, "members did not expire");
        let (x, y) = tokio::join!(a.presence.take_expired("room"), b.presence.take_expired("room"));
        let mut all = x?;
        all.extend(y?);
        assert_eq!(all.len(), 50);
        let expected: Vec<String> = (0..50).map(|i| format!("c{i:02}")).collect();
        assert_eq!(conns(&all), expected);
        assert!(a.presence.take_expired("room").await?.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn refresh_extends_but_does_not_resurrect() -> TestResult {
        let server = RedisServer::start().await?;
        let prefix = server.prefix();
        let b = backends(&server, &prefix, "n1", Duration::from_secs(5)).await?;
        let p = &b.presence;
        let m = member("c1", "n1")?;
        let u = UserConn { conn: "c1".into(), node: "n1".into() };
        p.join("room", &m).await?;
        p.add_user_conn("alice", &u).await?;
        let mut conn = server.conn().await?;
        let key = format!("{prefix}:pres-exp:{{room}}");
        let score = |conn: &mut ::redis::aio::MultiplexedConnection| {
            let key = key.clone();
            let mut conn = conn.clone();
            async move {
                ::redis::cmd("ZSCORE").arg(key).arg("c1").query_async::<Option<u64>>(&mut conn).await
            }
        };
        let before = score(&mut conn).await?.ok_or("no score")?;
        tokio::time::sleep(Duration::from_millis(20)).await; // let the clock advance
        let batch = RefreshBatch {
            members: vec![("room".into(), m.clone())],
            user_conns: vec![("alice".into(), u.clone())],
        };
        p.refresh(&batch).await?;
        let after = score(&mut conn).await?.ok_or("no score")?;
        assert!(after > before, "{after} <= {before}");
        // A member that left is not brought back by a racing refresh.
        assert!(p.leave("room", "c1").await?);
        p.remove_user_conn("alice", "c1").await?;
        p.refresh(&batch).await?;
        assert!(p.members("room").await?.is_empty());
        assert!(p.user_conns("alice").await?.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn refresh_rewrites_entries_after_redis_lost_them() -> TestResult {
        let mut server = RedisServer::start().await?;
        let prefix = server.prefix();
        let b = backends(&server, &prefix, "n1", Duration::from_secs(5)).await?;
        let p = &b.presence;
        let m = member("c1", "n1")?;
        let batch = RefreshBatch { members: vec![("room".into(), m.clone())], user_conns: vec![] };
        p.join("room", &m).await?;
        p.refresh(&batch).await?;
        server.restart().await?;
        // Redis lost everything; once the link is re-established the next
        // refresh re-writes the batch.
        let mut back = false;
        for _ in 0..200 {
            let _ = p.refresh(&batch).await;
            if p.members("room").await.map(|m| m.len() == 1).unwrap_or(false) {
                back = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(back, "refresh did not restore the member after Redis lost it");
        Ok(())
    }

    #[tokio::test]
    async fn user_index_and_node_registry() -> TestResult {
        let server = RedisServer::start().await?;
        let prefix = server.prefix();
        let ttl = Duration::from_millis(300);
        let a = backends(&server, &prefix, "a", Duration::from_secs(60)).await?;
        let short = backends(&server, &prefix, "b", ttl).await?;
        a.presence.add_user_conn("alice", &UserConn { conn: "a.1.1".into(), node: "a".into() }).await?;
        a.presence.add_user_conn("alice", &UserConn { conn: "c.1.1".into(), node: "c".into() }).await?;
        short.presence.add_user_conn("alice", &UserConn { conn: "b.1.1".into(), node: "b".into() }).await?;
        let mut got = a.presence.user_conns("alice").await?;
        got.sort_by(|x, y| x.conn.cmp(&y.conn));
        assert_eq!(got.iter().map(|c| c.node.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        a.presence.remove_user_conn("alice", "c.1.1").await?;
        let mut expired = false;
        for _ in 0..200 {
            let now = a.presence.user_conns("alice").await?;
            if now == [UserConn { conn: "a.1.1".into(), node: "a".into() }] {
                expired = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(expired, "user index did not drop the expired connection");
        assert!(a.presence.user_conns("bob").await?.is_empty());

        let info = |id: &str| NodeInfo {
            id: id.into(),
            connections: 3,
            subscriptions: 2,
            started_at: 1,
            version: "0.1.0".into(),
        };
        a.presence.heartbeat(&info("a")).await?;
        a.presence.heartbeat(&info("c")).await?;
        short.presence.heartbeat(&info("b")).await?;
        let mut ids: Vec<String> = a.presence.nodes().await?.into_iter().map(|n| n.id).collect();
        ids.sort();
        assert_eq!(ids, ["a", "b", "c"]);
        a.presence.remove_node("c").await?;
        let mut only_a = false;
        for _ in 0..200 {
            let ids: Vec<String> = a.presence.nodes().await?.into_iter().map(|n| n.id).collect();
            if ids == ["a"] {
                only_a = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(only_a, "node registry did not drop the expired node");
        Ok(())
    }
}
