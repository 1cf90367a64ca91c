//! Where the node's Redis connections go: [`Target`], the swappable client
//! of the current server (fixed in single mode, the Sentinel-resolved
//! primary in sentinel mode), with the hint that it may have moved; and
//! [`client_for`], a client for one address with the data-node or sentinel
//! credentials.

use ::redis::{
    Client, ConnectionAddr, ConnectionInfo, ErrorKind, ProtocolVersion, RedisConnectionInfo,
    RedisError, RedisResult,
};
use tokio::sync::{watch, Notify};

/// The server that commands and pub/sub go to, as a swappable client: fixed
/// in single mode; in sentinel mode the primary the sentinels name, set by
/// the watcher ([`super::sentinel`]) and `None` until it is first resolved.
///
/// Readers clone the client out (no lock is held across an await); the
/// subscriber watches it and reconnects when it changes.
pub(crate) struct Target {
    client: watch::Sender<Option<::redis::Client>>,
    /// Woken when a command suggests the primary moved (READONLY, MOVED,
    /// refused connection): the Sentinel watcher re-resolves (the cluster
    /// topology task re-reads the slot map) at once instead of at its next
    /// poll. Nobody waits on it in single mode.
    suspect: Notify,
}

impl Target {
    /// A target that never changes (single mode).
    pub(crate) fn fixed(client: ::redis::Client) -> Self {
        Self {
            client: watch::Sender::new(Some(client)),
            suspect: Notify::new(),
        }
    }

    /// A target not known yet (sentinel mode, before the first resolution).
    pub(crate) fn unresolved() -> Self {
        Self {
            client: watch::Sender::new(None),
            suspect: Notify::new(),
        }
    }

    /// The current client, `None` while the primary is unknown.
    pub(crate) fn client(&self) -> Option<::redis::Client> {
        self.client.borrow().clone()
    }

    /// Point new connections (and the subscriber) at `client`.
    pub(crate) fn set(&self, client: ::redis::Client) {
        self.client.send_replace(Some(client));
    }

    /// A receiver that sees every later [`Target::set`].
    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<::redis::Client>> {
        self.client.subscribe()
    }

    /// Tell the watcher the primary may have moved (a no-op in single mode).
    pub(crate) fn suspect(&self) {
        self.suspect.notify_one();
    }

    /// Resolves after the next [`Target::suspect`] (or at once if one came
    /// since the last wait).
    pub(crate) async fn suspected(&self) {
        self.suspect.notified().await;
    }

    /// Call [`Target::suspect`] when `e` is what talking to a demoted or
    /// dead primary gives.
    pub(crate) fn check(&self, e: &RedisError) {
        if matches!(
            e.kind(),
            ErrorKind::ReadOnly | ErrorKind::Moved | ErrorKind::Ask | ErrorKind::ClusterDown
        ) || e.is_connection_refusal()
            || e.is_io_error()
        {
            self.suspect();
        }
    }
}

/// The error of a connection attempt while the primary is unknown.
pub(crate) fn unresolved() -> RedisError {
    RedisError::from((
        ErrorKind::IoError,
        "Redis primary not resolved (no sentinel majority yet)",
    ))
}

/// A client for `host:port` with optional ACL credentials (opening one
/// from a `ConnectionInfo` parses nothing; it fails only in theory).
pub(super) fn client_for(
    host: &str,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    protocol: ProtocolVersion,
) -> RedisResult<Client> {
    Client::open(ConnectionInfo {
        addr: ConnectionAddr::Tcp(host.to_owned(), port),
        redis: RedisConnectionInfo {
            db: 0,
            username,
            password,
            protocol,
        },
    })
}
