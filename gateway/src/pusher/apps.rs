//! The configured Pusher apps, looked up by key (the WebSocket path) and by
//! id (the HTTP API path), each with its count of connections on this
//! node (for `max_connections`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config::{AppConfig, PusherConfig};

/// One app and its live state on this node.
#[derive(Debug)]
pub struct App {
    /// Its configuration.
    pub config: AppConfig,
    connections: AtomicUsize,
}

/// A place among an app's connections on this node; given back on drop.
#[derive(Debug)]
pub struct AppSlot(Arc<App>);

impl Drop for AppSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

impl App {
    /// Take a connection place; `None` when the app holds
    /// `max_connections` here.
    pub fn take(self: &Arc<Self>) -> Option<AppSlot> {
        let prev = self.connections.fetch_add(1, Ordering::AcqRel);
        let max = self.config.max_connections;
        if max > 0 && prev >= max {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(AppSlot(self.clone()))
    }

    /// The app's connections on this node.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }
}

/// The apps by key and by id. Empty: the Pusher endpoints are off.
#[derive(Debug, Default)]
pub struct Apps {
    by_key: HashMap<String, Arc<App>>,
    by_id: HashMap<String, Arc<App>>,
    /// Announced `activity_timeout`, seconds.
    pub activity_timeout_secs: u64,
}

impl Apps {
    /// The apps of `config`.
    pub fn new(config: &PusherConfig) -> Self {
        let mut apps = Apps {
            activity_timeout_secs: config.activity_timeout_secs,
            ..Apps::default()
        };
        for c in &config.apps {
            let app = Arc::new(App {
                config: c.clone(),
                connections: AtomicUsize::new(0),
            });
            apps.by_key.insert(c.key.clone(), app.clone());
            apps.by_id.insert(c.id.clone(), app);
        }
        apps
    }

    /// Whether any app is configured.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The app with key `key`.
    pub fn by_key(&self, key: &str) -> Option<&Arc<App>> {
        self.by_key.get(key)
    }

    /// The app with id `id`.
    pub fn by_id(&self, id: &str) -> Option<&Arc<App>> {
        self.by_id.get(id)
    }

    /// Every app.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<App>> {
        self.by_id.values()
    }
}
