//! Which pub/sub channels this node wants, and which Redis has confirmed on
//! the current pub/sub connection: the state shared by the hub (it sets what
//! is wanted, [`Interest`]), the subscribe path (it waits for a confirmation,
//! [`Registry::ready`]) and the subscriber task (it reconciles the two).
//!
//! There is no reference count here: the hub holds the only one and reports
//! its first and last references. An entry is one pub/sub channel:
//! `wanted` (what the hub said last), `active` (Redis confirmed SUBSCRIBE on
//! the current connection), `pending` (a SUBSCRIBE in flight), the waiters
//! for its confirmation, and `dirty` (queued for the task in `changed`).
//!
//! Invariants: `changed` holds each name at most once (its entry is dirty),
//! so it never outgrows the table, which never outgrows the hub's channels
//! and users; the table's mutex is never held across an `.await` and is
//! taken after the hub's locks, never before.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};

use super::keys::Keys;
use crate::backplane::{BackplaneError, Interest, Topic};

type Waiter = oneshot::Sender<Result<(), BackplaneError>>;

#[derive(Default)]
pub(crate) struct Entry {
    pub(crate) wanted: bool,
    pub(crate) active: bool,
    pub(crate) pending: Option<u64>,
    /// The SUBSCRIBE op that made it active (sharded mode: which shard
    /// connection holds it; `None` after a single-mode resubscription).
    pub(crate) active_op: Option<u64>,
    pub(crate) waiters: Vec<Waiter>,
    dirty: bool,
}

#[derive(Default)]
pub(crate) struct Table {
    pub(crate) entries: HashMap<String, Entry>,
    changed: Vec<String>,
}

/// What the subscriber task must tell Redis after a reconcile.
pub(crate) enum Change {
    /// SUBSCRIBE, tagged with the op id its confirmation must carry.
    Subscribe(String, u64),
    /// UNSUBSCRIBE, with the op of the SUBSCRIBE it undoes (active or in
    /// flight; sharded mode finds the shard connection by it).
    Unsubscribe(String, Option<u64>),
}

/// The wanted/confirmed table of one node (see the module docs).
pub(crate) struct Registry {
    keys: Keys,
    table: Mutex<Table>,
    /// Woken when `changed` gets a name.
    pub(crate) wake: Notify,
}

impl Registry {
    pub(crate) fn new(keys: Keys) -> Self {
        Self {
            keys,
            table: Mutex::new(Table::default()),
            wake: Notify::new(),
        }
    }

    /// Wanted channels (to subscribe on a new connection).
    pub(crate) fn wanted(&self) -> Vec<String> {
        let table = self.table.lock();
        table
            .entries
            .iter()
            .filter(|(_, e)| e.wanted)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Pub/sub channels with an entry (for logs).
    pub(crate) fn len(&self) -> usize {
        self.table.lock().entries.len()
    }

    /// After a new connection subscribed `subscribed`: mark those still
    /// wanted active and answer their waiters; return those no longer
    /// wanted (to unsubscribe).
    pub(crate) fn established(&self, subscribed: Vec<String>) -> Vec<String> {
        let mut table = self.table.lock();
        let mut stale = Vec::new();
        for name in subscribed {
            match table.entries.get_mut(&name) {
                Some(e) if e.wanted => {
                    e.active = true;
                    e.active_op = None;
                    for w in e.waiters.drain(..) {
                        let _ = w.send(Ok(()));
                    }
                }
                _ => stale.push(name),
            }
        }
        stale
    }

    /// The connection is gone: nothing is active any more; waiters fail,
    /// entries nobody wants go.
    pub(crate) fn lost(&self) {
        let mut table = self.table.lock();
        for e in table.entries.values_mut() {
            e.active = false;
            e.pending = None;
            e.active_op = None;
            for w in e.waiters.drain(..) {
                let _ = w.send(Err(unavailable()));
            }
        }
        table.entries.retain(|_, e| e.wanted || e.dirty);
    }

    /// Take the changed names and decide what Redis must be told;
    /// `next_op` numbers the SUBSCRIBEs.
    pub(crate) fn reconcile(&self, next_op: &mut u64) -> Vec<Change> {
        let mut table = self.table.lock();
        let changed = std::mem::take(&mut table.changed);
        let mut out = Vec::new();
        for name in changed {
            let Some(e) = table.entries.get_mut(&name) else {
                continue;
            };
            e.dirty = false;
            if e.wanted {
                if !e.active && e.pending.is_none() {
                    *next_op += 1;
                    e.pending = Some(*next_op);
                    out.push(Change::Subscribe(name, *next_op));
                }
            } else {
                if e.active || e.pending.is_some() {
                    out.push(Change::Unsubscribe(name.clone(), e.active_op.or(e.pending)));
                }
                for w in e.waiters.drain(..) {
                    let _ = w.send(Err(unavailable()));
                }
                table.entries.remove(&name);
            }
        }
        out
    }

    /// Sharded mode: the SUBSCRIBE `op` of `name` is gone (its shard
    /// connection was lost, the slot moved, or Redis refused it). Unless a
    /// later op already holds the name, it is inactive again, its waiters
    /// fail and, while wanted, it is queued to be subscribed anew (where
    /// its slot now lives). Returns whether it was queued.
    pub(crate) fn lost_op(&self, name: &str, op: u64) -> bool {
        let mut table = self.table.lock();
        let table = &mut *table;
        let Some(e) = table.entries.get_mut(name) else {
            return false;
        };
        if e.pending != Some(op) && e.active_op != Some(op) {
            return false;
        }
        e.active = false;
        e.pending = None;
        e.active_op = None;
        for w in e.waiters.drain(..) {
            let _ = w.send(Err(unavailable()));
        }
        if !e.wanted {
            if !e.dirty {
                table.entries.remove(name);
            }
            return false;
        }
        if !e.dirty {
            e.dirty = true;
            table.changed.push(name.to_owned());
        }
        self.wake.notify_one();
        true
    }

    /// Want (or stop wanting) a pub/sub name directly: sharded mode keeps
    /// the node's own topics here, always wanted.
    pub(crate) fn set_name(&self, name: String, on: bool) {
        let mut table = self.table.lock();
        let table = &mut *table;
        let e = table.entries.entry(name.clone()).or_default();
        e.wanted = on;
        if !e.dirty {
            e.dirty = true;
            table.changed.push(name);
        }
        self.wake.notify_one();
    }

    /// Whether `name` is wanted and confirmed.
    pub(crate) fn is_active(&self, name: &str) -> bool {
        let table = self.table.lock();
        table
            .entries
            .get(name)
            .is_some_and(|e| e.wanted && e.active)
    }

    /// Redis confirmed SUBSCRIBE `op` of `name`.
    pub(crate) fn confirmed(&self, name: &str, op: u64) {
        let mut table = self.table.lock();
        let Some(e) = table.entries.get_mut(name) else {
            return;
        };
        if e.pending != Some(op) {
            return;
        }
        e.pending = None;
        e.active = true;
        e.active_op = Some(op);
        // Not wanted any more: the reconcile queued for it unsubscribes.
        if e.wanted {
            for w in e.waiters.drain(..) {
                let _ = w.send(Ok(()));
            }
        }
    }

    /// Wait until `topic` is confirmed on the current connection, at most
    /// `timeout`; at once when it already is.
    pub(crate) async fn ready(
        &self,
        topic: &Topic,
        timeout: Duration,
    ) -> Result<(), BackplaneError> {
        let Some(name) = self.name(topic) else {
            return Ok(());
        };
        let rx = {
            let mut table = self.table.lock();
            match table.entries.get_mut(&name) {
                Some(e) if e.wanted && e.active => return Ok(()),
                Some(e) if e.wanted => {
                    let (tx, rx) = oneshot::channel();
                    e.waiters.push(tx);
                    rx
                }
                _ => {
                    return Err(BackplaneError::Unavailable(
                        "topic is not wanted by this node".into(),
                    ))
                }
            }
        };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(unavailable()),
            Err(_) => Err(BackplaneError::Unavailable("subscribe timed out".into())),
        }
    }

    /// Pub/sub name of a reference-counted topic; `None` for the always-on
    /// node and broadcast topics.
    fn name(&self, topic: &Topic) -> Option<String> {
        match topic {
            Topic::Channel(_) | Topic::User(_) => Some(self.keys.topic(topic)),
            Topic::Node(_) | Topic::All => None,
        }
    }
}

impl Interest for Registry {
    fn set(&self, topic: &Topic, on: bool) {
        if let Some(name) = self.name(topic) {
            self.set_name(name, on);
        }
    }
}

pub(crate) fn unavailable() -> BackplaneError {
    BackplaneError::Unavailable("Redis pub/sub is reconnecting".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        Registry::new(Keys::new("t"))
    }

    fn subscribes(changes: &[Change]) -> Vec<(&str, u64)> {
        changes
            .iter()
            .filter_map(|c| match c {
                Change::Subscribe(n, op) => Some((n.as_str(), *op)),
                Change::Unsubscribe(..) => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn on_off_on_ends_subscribed_and_waiters_see_the_confirmation() {
        let r = registry();
        let topic = Topic::Channel("a".into());
        let mut op = 0;
        r.set(&topic, true);
        let first = r.reconcile(&mut op);
        assert_eq!(subscribes(&first).len(), 1);
        // Off, then on again before the task looked: one entry, wanted.
        r.set(&topic, false);
        r.set(&topic, true);
        assert!(r.reconcile(&mut op).is_empty(), "SUBSCRIBE still in flight");
        r.confirmed("t:ch:{a}", 1);
        assert!(r.ready(&topic, Duration::from_millis(10)).await.is_ok());
        // Off for real: UNSUBSCRIBE, and the entry is gone.
        r.set(&topic, false);
        let off = r.reconcile(&mut op);
        assert!(matches!(off.as_slice(), [Change::Unsubscribe(n, Some(1))] if n == "t:ch:{a}"));
        assert_eq!(r.len(), 0);
        assert!(r.ready(&topic, Duration::from_millis(10)).await.is_err());
    }

    #[tokio::test]
    async fn a_lost_op_requeues_only_its_own_name() {
        let r = registry();
        let topic = Topic::Channel("a".into());
        let mut op = 0;
        r.set(&topic, true);
        let _ = r.reconcile(&mut op);
        r.confirmed("t:ch:{a}", 1);
        // An older op (another shard connection) does not touch it.
        assert!(!r.lost_op("t:ch:{a}", 7));
        assert!(r.is_active("t:ch:{a}"));
        assert!(r.lost_op("t:ch:{a}", 1));
        assert!(!r.is_active("t:ch:{a}"));
        assert_eq!(subscribes(&r.reconcile(&mut op)), vec![("t:ch:{a}", 2)]);
        // Not wanted any more when lost: the entry goes.
        r.set(&topic, false);
        assert!(!r.lost_op("t:ch:{a}", 2));
        let _ = r.reconcile(&mut op);
        assert_eq!(r.len(), 0);
    }

    #[tokio::test]
    async fn a_lost_connection_fails_waiters_and_resubscribes_the_wanted() {
        let r = registry();
        let mut op = 0;
        r.set(&Topic::User("u".into()), true);
        r.set(&Topic::Channel("gone".into()), true);
        let _ = r.reconcile(&mut op);
        r.set(&Topic::Channel("gone".into()), false);
        let _ = r.reconcile(&mut op);
        r.lost();
        assert_eq!(r.wanted(), vec!["t:user:{u}".to_owned()]);
        let stale = r.established(vec!["t:user:{u}".into(), "t:ch:{x}".into()]);
        assert_eq!(stale, vec!["t:ch:{x}".to_owned()]);
        assert!(r
            .ready(&Topic::User("u".into()), Duration::from_millis(10))
            .await
            .is_ok());
    }
}
