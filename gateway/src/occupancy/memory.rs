//! [`MemoryChannels`]: the in-process [`ChannelStore`] of the embedded
//! single node. It holds the one node's counts, so `subscribers` and `list`
//! answer straight from what the hub reported at the last flush.

use std::collections::BTreeMap;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{ChannelStore, Page, Transition, Written};
use crate::backplane::BackplaneError;

/// In-process channel counts (channel -> subscribers). Bounded by the
/// node's channels with subscribers: a count of 0 removes the entry.
#[derive(Debug, Default)]
pub struct MemoryChannels {
    counts: Mutex<BTreeMap<String, u64>>,
}

impl MemoryChannels {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl ChannelStore for MemoryChannels {
    async fn write(&self, counts: &[(String, u64)]) -> Written {
        let mut map = self.counts.lock();
        let mut out = Vec::new();
        for (channel, n) in counts {
            let before = if *n == 0 {
                map.remove(channel)
            } else {
                map.insert(channel.clone(), *n)
            };
            match (before.is_some(), *n > 0) {
                (false, true) => out.push((channel.clone(), Transition::Occupied)),
                (true, false) => out.push((channel.clone(), Transition::Vacated)),
                _ => {}
            }
        }
        Written {
            transitions: out,
            ..Written::default()
        }
    }

    async fn own_channels(&self) -> Result<Vec<String>, BackplaneError> {
        Ok(self.counts.lock().keys().cloned().collect())
    }

    async fn subscribers(&self, channel: &str, _nodes: &[String]) -> Result<u64, BackplaneError> {
        Ok(self.counts.lock().get(channel).copied().unwrap_or(0))
    }

    async fn list(
        &self,
        _nodes: &[String],
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, BackplaneError> {
        let map = self.counts.lock();
        let start = match after {
            Some(a) if a >= prefix => std::ops::Bound::Excluded(a.to_owned()),
            _ => std::ops::Bound::Included(prefix.to_owned()),
        };
        let mut channels: Vec<(String, u64)> = map
            .range((start, std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit.saturating_add(1))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let next = if channels.len() > limit {
            channels.truncate(limit);
            channels.last().map(|(c, _)| c.clone())
        } else {
            None
        };
        Ok(Page { channels, next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(c: &str, n: u64) -> (String, u64) {
        (c.to_owned(), n)
    }

    #[tokio::test]
    async fn each_transition_is_reported_once() {
        let s = MemoryChannels::new();
        let t = s.write(&[w("a", 1), w("b", 0)]).await.transitions;
        assert_eq!(t, vec![("a".to_owned(), Transition::Occupied)]);
        // Same count again (an idempotent retry) or a new count: nothing.
        assert!(s.write(&[w("a", 1)]).await.transitions.is_empty());
        assert!(s.write(&[w("a", 3)]).await.transitions.is_empty());
        assert_eq!(s.subscribers("a", &[]).await.unwrap(), 3);
        let t = s.write(&[w("a", 0)]).await.transitions;
        assert_eq!(t, vec![("a".to_owned(), Transition::Vacated)]);
        assert!(s.write(&[w("a", 0)]).await.transitions.is_empty());
        assert_eq!(s.subscribers("a", &[]).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn list_pages_by_prefix_and_cursor() {
        let s = MemoryChannels::new();
        s.write(&[w("x:1", 1), w("x:2", 2), w("x:3", 3), w("y:1", 4)])
            .await;
        let p = s.list(&[], "x:", None, 2).await.unwrap();
        assert_eq!(p.channels, vec![w("x:1", 1), w("x:2", 2)]);
        assert_eq!(p.next.as_deref(), Some("x:2"));
        let p = s.list(&[], "x:", p.next.as_deref(), 2).await.unwrap();
        assert_eq!(p.channels, vec![w("x:3", 3)]);
        assert_eq!(p.next, None);
        let p = s.list(&[], "", Some("x:3"), 10).await.unwrap();
        assert_eq!(p.channels, vec![w("y:1", 4)]);
        // A cursor before the prefix starts at the prefix.
        let p = s.list(&[], "y", Some("a"), 10).await.unwrap();
        assert_eq!(p.channels, vec![w("y:1", 4)]);
    }
}
