//! The webhook event names and sets of them: a leaf the settings, the
//! metrics and the events share (it depends on nothing of the crate).

/// Every event name (the `name` field; the `webhook_events` values and the
/// `name` label of `gateway_webhook_events_total`), indexed like
/// `Event::index`.
pub const NAMES: [&str; 7] = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_publish",
    "connection_closed",
    // Pusher apps only (docs/pusher.md).
    "client_event",
];

/// A set of event names (`webhook_events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventFilter(u8);

impl EventFilter {
    /// Every event.
    pub const ALL: EventFilter = EventFilter((1 << NAMES.len()) - 1);
    /// No event.
    pub const NONE: EventFilter = EventFilter(0);

    /// This set plus the event called `name`; `None` for an unknown name.
    pub fn with(self, name: &str) -> Option<EventFilter> {
        let i = NAMES.iter().position(|n| *n == name)?;
        Some(EventFilter(self.0 | 1 << i))
    }

    /// Whether the event called `name` is in the set.
    pub fn contains(self, name: &str) -> bool {
        NAMES
            .iter()
            .position(|n| *n == name)
            .is_some_and(|i| self.has(i))
    }

    /// Whether the event at `index` of [`NAMES`] is in the set.
    pub fn has(self, index: usize) -> bool {
        self.0 & (1 << index) != 0
    }
}
