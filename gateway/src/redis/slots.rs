//! Redis Cluster slots: the slot of a key (CRC16 of its hash tag, the same
//! function the servers use) and the cluster's slot map as `CLUSTER SHARDS`
//! reports it (which primary owns which slots, and whether it is online).
//!
//! Invariants: a [`SlotMap`] maps every slot to at most one shard, and
//! every shard in it has a primary with an address; slots no shard claims
//! map to none (callers treat them as unavailable).

use std::fmt::Write as _;

use ::redis::Value;

/// Slots of a Redis Cluster.
pub(crate) const SLOTS: usize = 16384;

/// The part of `key` that is hashed: the first non-empty `{...}`, else the
/// whole key (the Redis Cluster rule).
pub(crate) fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// The cluster slot of a key or pub/sub channel name.
pub(crate) fn slot(key: &str) -> u16 {
    let crc = crc16::State::<crc16::XMODEM>::calculate(hash_tag(key.as_bytes()));
    crc % (SLOTS as u16)
}

/// A short hash tag whose slot is one of `wanted`'s, searched from `seed`
/// (so nodes with different seeds pick different slots of a shard);
/// `None` only when `wanted` accepts no slot.
pub(crate) fn tag_for(seed: u64, wanted: impl Fn(u16) -> bool) -> Option<String> {
    let mut tag = String::new();
    // Each try hits a given third of the slots with probability 1/3: a
    // shard owning even one slot is found long before the bound.
    for i in 0..(SLOTS as u64 * 64) {
        tag.clear();
        let _ = write!(tag, "{:x}", seed.wrapping_add(i));
        let crc = crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes());
        if wanted(crc % (SLOTS as u16)) {
            return Some(tag);
        }
    }
    None
}

/// One primary and the slot ranges it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shard {
    /// The primary's node id (stable across address changes).
    pub(crate) id: String,
    /// The primary's address, `(host, port)`.
    pub(crate) addr: (String, u16),
    /// Whether the cluster reports the primary `online`.
    pub(crate) online: bool,
    /// Inclusive slot ranges.
    pub(crate) ranges: Vec<(u16, u16)>,
}

impl Shard {
    /// `host:port`, the label of the per-shard metrics.
    pub(crate) fn label(&self) -> String {
        format!("{}:{}", self.addr.0, self.addr.1)
    }

    pub(crate) fn owns(&self, slot: u16) -> bool {
        self.ranges.iter().any(|&(a, b)| a <= slot && slot <= b)
    }
}

/// Which shard owns which slot.
#[derive(Debug, Clone)]
pub(crate) struct SlotMap {
    pub(crate) shards: Vec<Shard>,
    /// Slot -> index into `shards` (`u16::MAX`: no owner).
    owner: Vec<u16>,
    /// Every node address seen (primaries and replicas), to query next.
    pub(crate) nodes: Vec<(String, u16)>,
}

impl PartialEq for SlotMap {
    fn eq(&self, other: &Self) -> bool {
        self.shards == other.shards
    }
}

impl SlotMap {
    /// An empty map: every slot unowned.
    pub(crate) fn empty() -> Self {
        Self {
            shards: Vec::new(),
            owner: vec![u16::MAX; SLOTS],
            nodes: Vec::new(),
        }
    }

    /// The shard owning `slot`, if any.
    pub(crate) fn owner(&self, slot: u16) -> Option<&Shard> {
        let i = *self.owner.get(usize::from(slot))?;
        self.shards.get(usize::from(i))
    }

    /// Whether every slot has an owner.
    pub(crate) fn is_complete(&self) -> bool {
        self.owner.iter().all(|&i| i != u16::MAX)
    }

    /// Parse a `CLUSTER SHARDS` reply (RESP2: each shard a flat
    /// `slots, [a, b, ...], nodes, [[key, value, ...], ...]` array) from
    /// the node at `queried` (an empty `ip` means that node's own address).
    pub(crate) fn parse(reply: &Value, queried: &(String, u16)) -> Result<Self, String> {
        let Value::Array(shards) = reply else {
            return Err("CLUSTER SHARDS: not an array".into());
        };
        let mut map = Self::empty();
        for shard in shards {
            let fields = pairs(shard)?;
            let mut ranges = Vec::new();
            let mut primary = None;
            for (key, value) in fields {
                match key.as_str() {
                    "slots" => {
                        let bounds = ints(value)?;
                        for pair in bounds.chunks(2) {
                            if let [a, b] = pair {
                                let a = u16::try_from(*a).map_err(|_| "bad slot")?;
                                let b = u16::try_from(*b).map_err(|_| "bad slot")?;
                                if a > b || usize::from(b) >= SLOTS {
                                    return Err(format!("bad slot range {a}-{b}"));
                                }
                                ranges.push((a, b));
                            }
                        }
                    }
                    "nodes" => {
                        let Value::Array(nodes) = value else {
                            return Err("CLUSTER SHARDS: nodes is not an array".into());
                        };
                        for node in nodes {
                            let node = node_fields(node, queried)?;
                            if !map.nodes.contains(&node.addr) {
                                map.nodes.push(node.addr.clone());
                            }
                            if node.role == "master" {
                                primary = Some(node);
                            }
                        }
                    }
                    _ => {}
                }
            }
            // A shard without slots (a primary being added, or one that
            // lost all its slots) owns nothing: leave it out.
            let Some(primary) = primary else { continue };
            if ranges.is_empty() {
                continue;
            }
            let index = u16::try_from(map.shards.len()).map_err(|_| "too many shards")?;
            for &(a, b) in &ranges {
                for s in a..=b {
                    map.owner[usize::from(s)] = index;
                }
            }
            map.shards.push(Shard {
                id: primary.id,
                addr: primary.addr,
                online: primary.health == "online",
                ranges,
            });
        }
        map.shards.sort_by(|a, b| a.ranges.cmp(&b.ranges));
        // Re-index after sorting (stable order makes maps comparable).
        map.owner = vec![u16::MAX; SLOTS];
        for (i, shard) in map.shards.iter().enumerate() {
            for &(a, b) in &shard.ranges {
                for s in a..=b {
                    map.owner[usize::from(s)] = i as u16;
                }
            }
        }
        Ok(map)
    }
}

struct Node {
    id: String,
    addr: (String, u16),
    role: String,
    health: String,
}

fn node_fields(node: &Value, queried: &(String, u16)) -> Result<Node, String> {
    let mut id = String::new();
    let mut endpoint = String::new();
    let mut ip = String::new();
    let mut port = 0u16;
    let mut role = String::new();
    let mut health = String::new();
    for (key, value) in pairs(node)? {
        match key.as_str() {
            "id" => id = text(value)?,
            "endpoint" => endpoint = text(value)?,
            "ip" => ip = text(value)?,
            "port" => {
                port = u16::try_from(int(value)?).map_err(|_| "bad port")?;
            }
            "role" => role = text(value)?,
            "health" => health = text(value)?,
            _ => {}
        }
    }
    // `endpoint` follows cluster-preferred-endpoint-type; `?` means unknown.
    let host = [endpoint, ip]
        .into_iter()
        .find(|h| !h.is_empty() && h != "?")
        .unwrap_or_else(|| queried.0.clone());
    Ok(Node {
        id,
        addr: (host, port),
        role,
        health,
    })
}

fn pairs(value: &Value) -> Result<Vec<(String, &Value)>, String> {
    match value {
        Value::Array(items) => items
            .chunks(2)
            .filter_map(|pair| match pair {
                [k, v] => Some(text(k).map(|k| (k, v))),
                _ => None,
            })
            .collect(),
        Value::Map(items) => items.iter().map(|(k, v)| Ok((text(k)?, v))).collect(),
        _ => Err("CLUSTER SHARDS: entry is not a map".into()),
    }
}

fn text(value: &Value) -> Result<String, String> {
    match value {
        Value::BulkString(b) => Ok(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::VerbatimString { text, .. } => Ok(text.clone()),
        Value::Int(i) => Ok(i.to_string()),
        Value::Nil => Ok(String::new()),
        other => Err(format!("CLUSTER SHARDS: unexpected {other:?}")),
    }
}

fn int(value: &Value) -> Result<i64, String> {
    match value {
        Value::Int(i) => Ok(*i),
        other => text(other)?
            .parse()
            .map_err(|_| "CLUSTER SHARDS: not a number".into()),
    }
}

fn ints(value: &Value) -> Result<Vec<i64>, String> {
    match value {
        Value::Array(items) => items.iter().map(int).collect(),
        _ => Err("CLUSTER SHARDS: slots is not an array".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on redis 7.0.15.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("foo{}{bar}"), slot("foo{}{bar}"));
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
        assert_eq!(slot("123456789"), 0x31C3);
    }

    #[test]
    fn tags_land_in_the_wanted_slots() {
        for seed in [0, 7, 99_999] {
            let tag = tag_for(seed, |s| (5461..=10922).contains(&s)).unwrap();
            assert!((5461..=10922).contains(&slot(&format!("x{{{tag}}}"))));
        }
        assert!(tag_for(1, |s| s == 16383).is_some());
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn node(id: &str, ip: &str, port: i64, role: &str, health: &str) -> Value {
        Value::Array(vec![
            bulk("id"),
            bulk(id),
            bulk("port"),
            Value::Int(port),
            bulk("ip"),
            bulk(ip),
            bulk("endpoint"),
            bulk(ip),
            bulk("role"),
            bulk(role),
            bulk("replication-offset"),
            Value::Int(10),
            bulk("health"),
            bulk(health),
        ])
    }

    #[test]
    fn cluster_shards_parse_into_owners() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                bulk("slots"),
                Value::Array(vec![Value::Int(8192), Value::Int(16383)]),
                bulk("nodes"),
                Value::Array(vec![
                    node("b", "127.0.0.1", 7001, "master", "failed"),
                    node("b2", "127.0.0.1", 7003, "replica", "online"),
                ]),
            ]),
            Value::Array(vec![
                bulk("slots"),
                Value::Array(vec![Value::Int(0), Value::Int(8191)]),
                bulk("nodes"),
                Value::Array(vec![node("a", "", 7000, "master", "online")]),
            ]),
        ]);
        let map = SlotMap::parse(&reply, &("10.1.1.1".into(), 7000)).unwrap();
        assert!(map.is_complete());
        let a = map.owner(0).unwrap();
        assert_eq!(
            (a.id.as_str(), a.addr.0.as_str(), a.online),
            ("a", "10.1.1.1", true)
        );
        let b = map.owner(16383).unwrap();
        assert_eq!((b.id.as_str(), b.addr.1, b.online), ("b", 7001, false));
        assert_eq!(map.nodes.len(), 3);
        assert!(SlotMap::parse(&Value::Int(1), &("h".into(), 1)).is_err());
        assert!(SlotMap::empty().owner(5).is_none());
    }
}
