//! Redis key and pub/sub channel names: the one place that spells them.
//!
//! Every name starts with the configured prefix `P`. Names that belong to
//! one application channel or one user put it in a `{hash tag}`, so all keys
//! of a channel land in one Redis Cluster slot (the Lua scripts touch
//! several of them at once). docs/redis.md lists the full layout.

use crate::backplane::Topic;

/// Builds names under one prefix. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Names under `prefix` (e.g. `gw`).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// Pub/sub channel of an application channel: `P:ch:{c}`.
    pub fn channel(&self, channel: &str) -> String {
        format!("{}:ch:{{{channel}}}", self.prefix)
    }

    /// A name of user `user`'s family `kind`: `P:kind:{u}`. An id whose
    /// hash tag would be empty (it is empty or starts with `}`) is spelled
    /// `P:kind~:{<hex of u>}` instead: with an empty tag Redis Cluster would
    /// hash each whole name, scattering the user's keys over slots (the
    /// scripts touch two at once), and the `~` keeps those names apart
    /// from every ordinary id's.
    fn user_name(&self, kind: &str, user: &str) -> String {
        if user.is_empty() || user.starts_with('}') {
            let mut hex = String::with_capacity(user.len() * 2 + 1);
            hex.push('x');
            for b in user.bytes() {
                hex.push_str(&format!("{b:02x}"));
            }
            format!("{}:{kind}~:{{{hex}}}", self.prefix)
        } else {
            format!("{}:{kind}:{{{user}}}", self.prefix)
        }
    }

    /// Pub/sub channel of a user: `P:user:{u}`.
    pub fn user(&self, user: &str) -> String {
        self.user_name("user", user)
    }

    /// Pub/sub channel of a node: `P:node:<id>`.
    pub fn node(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    /// Pub/sub channel of cluster-wide broadcasts: `P:all`.
    pub fn all(&self) -> String {
        format!("{}:all", self.prefix)
    }

    /// Pub/sub channel of a node's liveness probe: `P:probe:<id>`.
    pub fn probe(&self, node: &str) -> String {
        format!("{}:probe:{node}", self.prefix)
    }

    /// Cluster mode: the probe of one shard connection, in a slot of that
    /// shard: `P:probe:<id>:{tag}`.
    pub fn shard_probe(&self, node: &str, tag: &str) -> String {
        format!("{}:probe:{node}:{{{tag}}}", self.prefix)
    }

    /// Pub/sub channel an envelope with this topic travels on.
    pub fn topic(&self, topic: &Topic) -> String {
        match topic {
            Topic::Channel(c) => self.channel(c),
            Topic::User(u) => self.user(u),
            Topic::Node(n) => self.node(n),
            Topic::All => self.all(),
        }
    }

    /// History stream of a channel: `P:hist:{c}`.
    pub fn history(&self, channel: &str) -> String {
        format!("{}:hist:{{{channel}}}", self.prefix)
    }

    /// History meta hash (epoch, top) of a channel: `P:meta:{c}`.
    pub fn meta(&self, channel: &str) -> String {
        format!("{}:meta:{{{channel}}}", self.prefix)
    }

    /// Presence members hash of a channel: `P:pres:{c}`.
    pub fn presence(&self, channel: &str) -> String {
        format!("{}:pres:{{{channel}}}", self.prefix)
    }

    /// Presence expiry sorted set of a channel: `P:pres-exp:{c}`.
    pub fn presence_expiry(&self, channel: &str) -> String {
        format!("{}:pres-exp:{{{channel}}}", self.prefix)
    }

    /// The connections of one user in a presence channel (a set of conn
    /// ids, in the channel's slot): `P:pres-u:{c}:<user>`. Its size going
    /// 0 -> 1 and 1 -> 0 are the member_added / member_removed transitions.
    /// No TTL (a refresh would have to touch it): Redis deletes it with its
    /// last member.
    pub fn presence_user(&self, channel: &str, user: &str) -> String {
        format!("{}:pres-u:{{{channel}}}:{user}", self.prefix)
    }

    /// User index hash (conn -> node): `P:user-conns:{u}`.
    pub fn user_conns(&self, user: &str) -> String {
        self.user_name("user-conns", user)
    }

    /// User index expiry sorted set: `P:user-conns-exp:{u}`.
    pub fn user_conns_expiry(&self, user: &str) -> String {
        self.user_name("user-conns-exp", user)
    }

    /// Node registry hash (id -> NodeInfo JSON): `P:{nodes}` (tagged so
    /// that it shares a slot with its expiry set).
    pub fn nodes(&self) -> String {
        format!("{}:{{nodes}}", self.prefix)
    }

    /// Node registry expiry sorted set: `P:{nodes}-exp`.
    pub fn nodes_expiry(&self) -> String {
        format!("{}:{{nodes}}-exp", self.prefix)
    }

    /// When each node last sent its heartbeat (sorted set id -> ms):
    /// `P:{nodes}-seen`.
    pub fn nodes_seen(&self) -> String {
        format!("{}:{{nodes}}-seen", self.prefix)
    }

    /// Lease of the live node purging a stale node: `P:{nodes}-purging:<id>`.
    pub fn node_purge_lease(&self, node: &str) -> String {
        format!("{}:{{nodes}}-purging:{node}", self.prefix)
    }

    /// Index of a node's presence: the channels where it has members (set),
    /// `P:node-pres:{<id>}`. One key per node, written only by that node.
    pub fn node_presence(&self, node: &str) -> String {
        format!("{}:node-pres:{{{node}}}", self.prefix)
    }

    /// Subscriber counts of a channel (hash node id -> local count):
    /// `P:subs:{c}`.
    pub fn subscribers(&self, channel: &str) -> String {
        format!("{}:subs:{{{channel}}}", self.prefix)
    }

    /// The channels a node has subscribers for (sorted set, score 0, read
    /// by name): `P:chans:{<id>}`. One key per node, written only by that
    /// node (and deleted by the purge of a crashed node).
    pub fn node_channels(&self, node: &str) -> String {
        format!("{}:chans:{{{node}}}", self.prefix)
    }

    /// Index of a node's user index entries: the users with a connection
    /// there (set), `P:node-users:{<id>}`. Written only by that node.
    pub fn node_users(&self, node: &str) -> String {
        format!("{}:node-users:{{{node}}}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_prefix_and_hash_tag() {
        let k = Keys::new("gw");
        assert_eq!(k.channel("chat:lobby"), "gw:ch:{chat:lobby}");
        assert_eq!(k.history("c"), "gw:hist:{c}");
        assert_eq!(k.meta("c"), "gw:meta:{c}");
        assert_eq!(k.presence_expiry("c"), "gw:pres-exp:{c}");
        assert_eq!(k.user("u1"), "gw:user:{u1}");
        assert_eq!(k.node("n1"), "gw:node:n1");
        assert_eq!(k.topic(&Topic::All), "gw:all");
        assert_eq!(k.topic(&Topic::Node("n2".into())), "gw:node:n2");
    }

    #[test]
    fn every_key_family_of_a_channel_or_user_shares_one_slot() {
        use crate::redis::slots::slot;
        let k = Keys::new("gw");
        for c in ["a", "chat:lobby", "x}y", "很"] {
            let s = slot(&k.channel(c));
            for key in [
                k.history(c),
                k.meta(c),
                k.presence(c),
                k.presence_expiry(c),
                k.subscribers(c),
            ] {
                assert_eq!(slot(&key), s, "{key}");
            }
        }
        for u in ["u1", "", "}", "}x", "a}b", "{a}"] {
            let s = slot(&k.user(u));
            for key in [k.user_conns(u), k.user_conns_expiry(u)] {
                assert_eq!(slot(&key), s, "{key} vs {}", k.user(u));
            }
        }
        // Escaped ids never meet an ordinary one's names.
        assert_ne!(k.user("}x"), k.user("x7d78"));
        assert_eq!(k.user(""), "gw:user~:{x}");
        assert_eq!(k.user("}x"), "gw:user~:{x7d78}");
        assert_eq!(k.user_conns("u"), "gw:user-conns:{u}");
    }
}
