//! Join/leave coalescing. A connection's first join or leave on a channel
//! goes out at once; more changes of the same connection on the same
//! channel within `join_leave_coalesce` wait for the end of the window, and
//! a join and a leave that meet there cancel out. Only the net change is
//! sent: a client that loops subscribe/unsubscribe on a join/leave channel
//! (each one a push to every member) costs the other members at most one
//! push per window (docs/security.md, item 5). A connection that subscribes
//! once and leaves later sees no delay at all.
//!
//! The state is bounded by the node's subscriptions: one slot per
//! (channel, connection) that changed within the last window or two. Events
//! of other nodes, the restore of a reconnected node's members and the
//! leaves of a purged node do not pass here. After shutdown began, events
//! go out at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backplane::{Backplane, Envelope, PresenceEvent};
use crate::node::backend_error;
use crate::shutdown::Shutdown;

/// A join or a leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The connection joined the channel.
    Join,
    /// The connection left it.
    Leave,
}

/// One (channel, connection) that changed recently.
struct Slot {
    /// The change waiting for the end of the window, if any.
    waiting: Option<(Change, PresenceEvent)>,
    /// Changed since the last tick (kept one more window).
    touched: bool,
}

#[derive(Default)]
struct State {
    slots: HashMap<(String, String), Slot>,
    /// Set when the flush task ended (or never ran): events go out at once.
    closed: bool,
}

/// The coalescer. See the module docs.
pub struct JoinLeave {
    backplane: Arc<dyn Backplane>,
    state: Mutex<State>,
    /// Wakes the ticking task when the first slot appears.
    wake: Notify,
}

impl JoinLeave {
    /// A coalescer sending through `backplane`, its task tracked by
    /// `shutdown` (no task when `window` is zero: every event goes out at
    /// once).
    pub fn start(
        backplane: Arc<dyn Backplane>,
        window: Duration,
        shutdown: &Shutdown,
    ) -> Arc<Self> {
        let this = Arc::new(Self {
            backplane,
            state: Mutex::new(State {
                closed: window.is_zero(),
                ..State::default()
            }),
            wake: Notify::new(),
        });
        if !window.is_zero() {
            let token = shutdown.token.clone();
            shutdown.tracker.spawn(this.clone().run(window, token));
        }
        this
    }

    /// `change` of `event`'s connection on `event`'s channel: sent now, or
    /// held (or cancelled) until the end of the window.
    pub async fn push(&self, change: Change, event: PresenceEvent) {
        if let Some(event) = self.admit(change, event) {
            self.send(change, event).await;
        }
    }

    /// Under the lock: the event back when it goes out now.
    fn admit(&self, change: Change, event: PresenceEvent) -> Option<PresenceEvent> {
        let mut s = self.state.lock();
        if s.closed {
            return Some(event);
        }
        let first = s.slots.is_empty();
        let key = (event.channel.clone(), event.conn.clone());
        let Some(slot) = s.slots.get_mut(&key) else {
            s.slots.insert(
                key,
                Slot {
                    waiting: None,
                    touched: true,
                },
            );
            if first {
                self.wake.notify_one();
            }
            return Some(event);
        };
        slot.touched = true;
        match slot.waiting.take() {
            // A join and a leave met inside the window: others keep what
            // they were told last.
            Some((waiting, _)) if waiting != change => {}
            // The same change again (a connection alternates, so this
            // cannot happen): keep the newer.
            _ => slot.waiting = Some((change, event)),
        }
        None
    }

    /// Slots (channel, connection) changed within the last window or two.
    pub fn tracked(&self) -> usize {
        self.state.lock().slots.len()
    }

    async fn run(self: Arc<Self>, window: Duration, token: CancellationToken) {
        loop {
            if self.state.lock().slots.is_empty() {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = self.wake.notified() => {}
                }
            }
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tokio::time::sleep(window) => {}
            }
            self.tick(false).await;
        }
        self.tick(true).await;
    }

    /// The end of a window: send what waits (a slot that sent one stays for
    /// another window), forget slots untouched for a whole window.
    /// `close`: send whatever comes later at once.
    async fn tick(&self, close: bool) {
        let due: Vec<(Change, PresenceEvent)> = {
            let mut s = self.state.lock();
            s.closed |= close;
            let mut due = Vec::new();
            s.slots.retain(|_, slot| {
                let keep = slot.touched && !close;
                slot.touched = slot.waiting.is_some();
                due.extend(slot.waiting.take());
                keep
            });
            due
        };
        for (change, event) in due {
            self.send(change, event).await;
        }
    }

    async fn send(&self, change: Change, event: PresenceEvent) {
        let envelope = match change {
            Change::Join => Envelope::Join(event),
            Change::Leave => Envelope::Leave(event),
        };
        if let Err(e) = self.backplane.send(envelope).await {
            backend_error("presence_event", &e);
        }
    }
}
