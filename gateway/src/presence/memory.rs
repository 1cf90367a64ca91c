//! In-process presence of the embedded single node: channel members, the
//! user index and the node registry in sharded maps.
//!
//! Entries carry an expiry like their Redis counterparts, so the same
//! contract (refresh keeps them, readers never see expired ones,
//! `take_expired` hands each expired member to exactly one caller) holds on
//! both backends.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::value::RawValue;
use std::time::Duration;
use tokio::time::Instant;

use super::{Left, Member, NodeInfo, Presence, RefreshBatch, UserConn};
use crate::backplane::BackplaneError;

type Entries<T> = HashMap<String, (T, Instant)>;

/// One user's connections with their expiry: a plain vector while the user
/// has a few (most have one, and a table per user would cost every
/// connection ~0.5 KiB: measured in the idle benchmark), a map by
/// connection id beyond [`UserConns::FEW`], so joins, refreshes and leaves
/// of a user with many connections are lookups, not scans.
enum UserConns {
    Few(Vec<(UserConn, Instant)>),
    Many(HashMap<Box<str>, (UserConn, Instant)>),
}

impl UserConns {
    /// The most connections kept in a vector (scanned per op).
    const FEW: usize = 8;

    fn new() -> Self {
        Self::Few(Vec::with_capacity(1))
    }

    /// Insert or replace; true when the connection is new.
    fn insert(&mut self, conn: &UserConn, exp: Instant) -> bool {
        match self {
            Self::Few(v) => {
                if let Some(e) = v.iter_mut().find(|(c, _)| c.conn == conn.conn) {
                    *e = (conn.clone(), exp);
                    return false;
                }
                if v.len() < Self::FEW {
                    v.push((conn.clone(), exp));
                    return true;
                }
                let mut map: HashMap<Box<str>, (UserConn, Instant)> = v
                    .drain(..)
                    .map(|(c, e)| (c.conn.as_str().into(), (c, e)))
                    .collect();
                map.insert(conn.conn.as_str().into(), (conn.clone(), exp));
                *self = Self::Many(map);
                true
            }
            Self::Many(m) => m
                .insert(conn.conn.as_str().into(), (conn.clone(), exp))
                .is_none(),
        }
    }

    fn remove(&mut self, conn: &str) {
        match self {
            Self::Few(v) => v.retain(|(c, _)| c.conn != conn),
            Self::Many(m) => {
                m.remove(conn);
            }
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Self::Few(v) => v.is_empty(),
            Self::Many(m) => m.is_empty(),
        }
    }

    fn get_mut(&mut self, conn: &str) -> Option<&mut (UserConn, Instant)> {
        match self {
            Self::Few(v) => v.iter_mut().find(|(c, _)| c.conn == conn),
            Self::Many(m) => m.get_mut(conn),
        }
    }

    fn values(&self) -> Box<dyn Iterator<Item = &(UserConn, Instant)> + '_> {
        match self {
            Self::Few(v) => Box::new(v.iter()),
            Self::Many(m) => Box::new(m.values()),
        }
    }
}

/// A channel member as stored: keyed by its connection id, with the node
/// name shared between entries (one node's members all carry the same).
struct Stored {
    user: Box<str>,
    node: Arc<str>,
    info: Option<Box<RawValue>>,
    expires: Instant,
}

impl Stored {
    fn member(&self, conn: &str) -> Member {
        Member {
            user: self.user.to_string(),
            conn: conn.to_owned(),
            node: self.node.to_string(),
            info: self.info.clone(),
        }
    }
}

/// In-memory [`Presence`].
pub struct MemoryPresence {
    ttl: Duration,
    /// channel -> conn id -> member (compact: presence is per subscription).
    channels: Mutex<HashMap<String, HashMap<Box<str>, Stored>>>,
    /// Node names seen, shared by the stored members.
    node_names: Mutex<Vec<Arc<str>>>,
    /// A user's connections ([`UserConns`]): scanned while there are at
    /// most [`UserConns::FEW`], looked up by connection id beyond, so a
    /// user with many connections does not cost O(n^2) under this lock.
    users: Mutex<HashMap<String, UserConns>>,
    nodes: Mutex<Entries<NodeInfo>>,
}

impl MemoryPresence {
    /// Whether `user` has a connection among the channel's entries (a scan
    /// of the channel's members: joins and leaves of named users in big
    /// channels cost O(members) here).
    fn has_user(&self, channel: &str, user: &str) -> bool {
        self.channels
            .lock()
            .get(channel)
            .is_some_and(|ms| ms.values().any(|m| *m.user == *user))
    }

    /// Write (or refresh) a member; returns whether it was not there.
    fn stored(&self, member: &Member) -> Stored {
        Stored {
            user: member.user.as_str().into(),
            node: self.node_name(&member.node),
            info: member.info.clone(),
            expires: Instant::now() + self.ttl,
        }
    }

    fn put_member(&self, channel: &str, member: &Member) -> bool {
        let stored = self.stored(member);
        self.channels
            .lock()
            .entry(channel.to_owned())
            .or_default()
            .insert(member.conn.as_str().into(), stored)
            .is_none()
    }

    /// Write (or refresh) a user's connection; returns whether it was not
    /// there.
    fn put_user_conn(&self, user: &str, conn: &UserConn) -> bool {
        let exp = Instant::now() + self.ttl;
        let mut users = self.users.lock();
        // Most users have one connection: no room for more up front.
        users
            .entry(user.to_owned())
            .or_insert_with(UserConns::new)
            .insert(conn, exp)
    }

    /// The shared copy of a node name.
    fn node_name(&self, node: &str) -> Arc<str> {
        let mut names = self.node_names.lock();
        if let Some(n) = names.iter().find(|n| ***n == *node) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(node);
        // Bounded: node ids come from this cluster's configuration, but
        // never let a long run of distinct ones grow the list.
        if names.len() < 64 {
            names.push(n.clone());
        }
        n
    }

    /// Presence whose entries expire `ttl` after their last refresh.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            channels: Mutex::new(HashMap::new()),
            node_names: Mutex::new(Vec::new()),
            users: Mutex::new(HashMap::new()),
            nodes: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn join(&self, channel: &str, member: &Member) -> Result<bool, BackplaneError> {
        // One lock for the write and the check: of two racing joins of one
        // user exactly one sees no other connection of it.
        let stored = self.stored(member);
        let mut channels = self.channels.lock();
        let members = channels.entry(channel.to_owned()).or_default();
        let new = members
            .insert(member.conn.as_str().into(), stored)
            .is_none();
        Ok(new
            && !member.user.is_empty()
            && !members
                .iter()
                .any(|(conn, m)| *m.user == *member.user && **conn != *member.conn))
    }

    async fn leave(&self, channel: &str, conn: &str, user: &str) -> Result<Left, BackplaneError> {
        let mut channels = self.channels.lock();
        let Some(members) = channels.get_mut(channel) else {
            return Ok(Left::default());
        };
        let removed = members.remove(conn).is_some();
        let last_of_user =
            removed && !user.is_empty() && !members.values().any(|m| *m.user == *user);
        if members.is_empty() {
            channels.remove(channel);
        }
        Ok(Left {
            removed,
            last_of_user,
        })
    }

    async fn members_gone(
        &self,
        gone: &[(String, Member)],
    ) -> Result<Vec<(String, String)>, BackplaneError> {
        let mut out: Vec<(String, String)> = Vec::new();
        for (channel, m) in gone {
            if m.user.is_empty() || out.iter().any(|(c, u)| c == channel && *u == m.user) {
                continue;
            }
            if !self.has_user(channel, &m.user) {
                out.push((channel.clone(), m.user.clone()));
            }
        }
        Ok(out)
    }

    async fn members(&self, channel: &str) -> Result<Vec<Member>, BackplaneError> {
        let now = Instant::now();
        let mut members: Vec<Member> = self
            .channels
            .lock()
            .get(channel)
            .map(|ms| {
                ms.iter()
                    .filter(|(_, m)| m.expires > now)
                    .map(|(conn, m)| m.member(conn))
                    .collect()
            })
            .unwrap_or_default();
        members.sort_by(|a, b| a.conn.cmp(&b.conn));
        Ok(members)
    }

    async fn take_expired(&self, channel: &str) -> Result<Vec<Member>, BackplaneError> {
        let now = Instant::now();
        let mut channels = self.channels.lock();
        let Some(members) = channels.get_mut(channel) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        members.retain(|conn, m| {
            let live = m.expires > now;
            if !live {
                out.push(m.member(conn));
            }
            live
        });
        if members.is_empty() {
            channels.remove(channel);
        }
        Ok(out)
    }

    async fn add_user_conn(&self, user: &str, conn: &UserConn) -> Result<(), BackplaneError> {
        self.put_user_conn(user, conn);
        Ok(())
    }

    async fn remove_user_conn(&self, user: &str, conn: &str) -> Result<(), BackplaneError> {
        let mut users = self.users.lock();
        if let Some(conns) = users.get_mut(user) {
            conns.remove(conn);
            if conns.is_empty() {
                users.remove(user);
            }
        }
        Ok(())
    }

    async fn user_conns(&self, user: &str) -> Result<Vec<UserConn>, BackplaneError> {
        let now = Instant::now();
        let mut conns: Vec<UserConn> = self
            .users
            .lock()
            .get(user)
            .map(|cs| {
                cs.values()
                    .filter(|(_, exp)| *exp > now)
                    .map(|(c, _)| c.clone())
                    .collect()
            })
            .unwrap_or_default();
        conns.sort_by(|a, b| a.conn.cmp(&b.conn));
        Ok(conns)
    }

    async fn refresh(&self, batch: &RefreshBatch) -> Result<RefreshBatch, BackplaneError> {
        let exp = Instant::now() + self.ttl;
        let mut missing = RefreshBatch::default();
        {
            let mut channels = self.channels.lock();
            for (channel, member) in &batch.members {
                match channels
                    .get_mut(channel)
                    .and_then(|m| m.get_mut(member.conn.as_str()))
                {
                    Some(entry) => entry.expires = exp,
                    None => missing.members.push((channel.clone(), member.clone())),
                }
            }
        }
        let mut users = self.users.lock();
        for (user, conn) in &batch.user_conns {
            match users
                .get_mut(user)
                .and_then(|cs| cs.get_mut(conn.conn.as_str()))
            {
                Some(entry) => entry.1 = exp,
                None => missing.user_conns.push((user.clone(), conn.clone())),
            }
        }
        Ok(missing)
    }

    async fn restore(&self, batch: &RefreshBatch) -> Result<RefreshBatch, BackplaneError> {
        let mut created = RefreshBatch::default();
        for (channel, member) in &batch.members {
            if self.put_member(channel, member) {
                created.members.push((channel.clone(), member.clone()));
            }
        }
        for (user, conn) in &batch.user_conns {
            if self.put_user_conn(user, conn) {
                created.user_conns.push((user.clone(), conn.clone()));
            }
        }
        Ok(created)
    }

    async fn heartbeat(&self, node: &NodeInfo) -> Result<(), BackplaneError> {
        let exp = Instant::now() + self.ttl;
        self.nodes
            .lock()
            .insert(node.id.clone(), (node.clone(), exp));
        Ok(())
    }

    async fn remove_node(&self, id: &str) -> Result<(), BackplaneError> {
        self.nodes.lock().remove(id);
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, BackplaneError> {
        let now = Instant::now();
        let mut nodes: Vec<NodeInfo> = self
            .nodes
            .lock()
            .values()
            .filter(|(_, exp)| *exp > now)
            .map(|(n, _)| n.clone())
            .collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many connections of one user: every op is a lookup by connection id
    /// (this took O(n^2) under the lock with a scanned vector).
    #[tokio::test]
    async fn one_user_with_many_connections() {
        let p = MemoryPresence::new(Duration::from_secs(60));
        let n = 5000;
        let conn = |i: usize| UserConn {
            conn: format!("n1.b.{i}"),
            node: "n1".to_owned(),
        };
        for i in 0..n {
            p.add_user_conn("u", &conn(i)).await.unwrap();
        }
        // Re-adding is a refresh, not a duplicate.
        p.add_user_conn("u", &conn(0)).await.unwrap();
        assert_eq!(p.user_conns("u").await.unwrap().len(), n);
        let batch = RefreshBatch {
            members: Vec::new(),
            user_conns: (0..n).map(|i| ("u".to_owned(), conn(i))).collect(),
        };
        assert_eq!(p.refresh(&batch).await.unwrap().len(), 0);
        for i in (0..n).step_by(2) {
            p.remove_user_conn("u", &conn(i).conn).await.unwrap();
        }
        assert_eq!(p.user_conns("u").await.unwrap().len(), n / 2);
    }
}
