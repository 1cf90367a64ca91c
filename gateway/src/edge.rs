//! The edge's admission state: sockets in the handshake phase (a bounded
//! count), connections and connect rate per client address, connections
//! per user, and the rate-limited log of refusals (docs/security.md, "The
//! edge: connections, HTTP and limits").
//!
//! Invariants: every admitted key holds a [`KeyGuard`], and its count goes
//! down exactly once, when the guard drops. A table entry lives while its
//! key holds a connection or its connect bucket has not refilled; stale
//! entries are swept, so a table is bounded by the live connections plus
//! the keys seen in the last `burst / rate` seconds.
//!
//! Which addresses are limited: the socket peer, unless it is a trusted
//! proxy (then the forwarded client address, checked at the upgrade); and
//! loopback and private peers only with `ip_limits_private` (a load
//! balancer without `trusted_proxies` has one private address for all of
//! its clients). IPv6 clients are counted per /64 (one host has a /64).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::Config;

/// Gauge: sockets in the handshake phase (accepted, not yet upgraded).
pub const PENDING: &str = "gateway_edge_pending_connections";
/// Counter: HTTP connections the edge dropped, by reason (`header_timeout`,
/// `header_too_large`, `bad_request`, `body_timeout`, `io`, `accept_error`).
pub const DROPPED: &str = "gateway_edge_dropped_total";

/// Reasons of `gateway_connections_refused_total` added by the edge.
pub const REFUSAL_REASONS: [&str; 4] = ["pending_limit", "ip_limit", "ip_rate", "user_limit"];

/// Describe the edge's metrics and export their counters at 0.
pub fn describe_metrics() {
    metrics::describe_gauge!(PENDING, "Sockets accepted and not yet upgraded or closed.");
    metrics::describe_counter!(DROPPED, "HTTP connections dropped by the edge, by reason.");
    for reason in [
        "header_timeout",
        "header_too_large",
        "bad_request",
        "body_timeout",
        "io",
        "accept_error",
    ] {
        metrics::counter!(DROPPED, "reason" => reason).absolute(0);
    }
    for reason in REFUSAL_REASONS {
        metrics::counter!(crate::metrics::CONNECTIONS_REFUSED, "reason" => reason).absolute(0);
    }
    metrics::gauge!(PENDING).set(0.0);
}

/// Why a key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The key holds its maximum of connections.
    TooMany,
    /// The key's connect bucket is empty.
    TooFast,
}

#[derive(Debug)]
struct Entry {
    count: usize,
    tokens: f64,
    at: Instant,
}

/// Connection counts (and an optional connect rate) per key, sharded.
#[derive(Debug)]
pub struct KeyedLimits<K> {
    shards: Vec<Mutex<HashMap<K, Entry>>>,
    hasher: RandomState,
    max: usize,
    /// Tokens per second and burst; `None`: counts only.
    rate: Option<(f64, f64)>,
}

const SHARDS: usize = 16;

/// A shard of at least this many entries is swept of idle ones whenever it
/// is full (its next insert would grow the table): it grows only when its
/// live entries need the room, and a sweep is paid for by the inserts that
/// filled the table since the last one.
const SWEEP_SLACK: usize = 1024;

impl<K: Hash + Eq + Clone> KeyedLimits<K> {
    /// At most `max` connections per key, and `rate` (per second, burst)
    /// new ones when given.
    pub fn new(max: usize, rate: Option<(u32, u32)>) -> Arc<Self> {
        Arc::new(Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            max,
            rate: rate.map(|(r, b)| (f64::from(r), f64::from(b))),
        })
    }

    fn shard(&self, key: &K) -> &Mutex<HashMap<K, Entry>> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        &self.shards[i]
    }

    fn refill(&self, e: &mut Entry, now: Instant) {
        if let Some((rate, burst)) = self.rate {
            let dt = now.saturating_duration_since(e.at).as_secs_f64();
            e.tokens = (e.tokens + dt * rate).min(burst);
        }
        e.at = now;
    }

    fn idle(&self, e: &Entry, now: Instant) -> bool {
        e.count == 0
            && match self.rate {
                None => true,
                Some((rate, burst)) => {
                    e.tokens + now.saturating_duration_since(e.at).as_secs_f64() * rate >= burst
                }
            }
    }

    /// Admit one connection of `key`, or say why not.
    pub fn acquire(self: &Arc<Self>, key: K) -> Result<KeyGuard<K>, Refusal> {
        let now = Instant::now();
        let mut shard = self.shard(&key).lock();
        if shard.len() >= SWEEP_SLACK && shard.capacity() <= shard.len() {
            shard.retain(|_, e| !self.idle(e, now));
        }
        let burst = self.rate.map_or(0.0, |(_, b)| b);
        let e = shard.entry(key.clone()).or_insert(Entry {
            count: 0,
            tokens: burst,
            at: now,
        });
        self.refill(e, now);
        if e.count >= self.max {
            return Err(Refusal::TooMany);
        }
        if self.rate.is_some() {
            if e.tokens < 1.0 {
                return Err(Refusal::TooFast);
            }
            e.tokens -= 1.0;
        }
        e.count += 1;
        drop(shard);
        Ok(KeyGuard {
            limits: self.clone(),
            key: Some(key),
        })
    }

    fn release(&self, key: &K) {
        let now = Instant::now();
        let mut shard = self.shard(key).lock();
        let remove = match shard.get_mut(key) {
            Some(e) => {
                e.count = e.count.saturating_sub(1);
                self.idle(e, now)
            }
            None => false,
        };
        if remove {
            shard.remove(key);
        }
    }

    /// Connections `key` holds now.
    pub fn count(&self, key: &K) -> usize {
        self.shard(key).lock().get(key).map_or(0, |e| e.count)
    }

    /// Keys in the tables (live or not yet refilled).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Whether the tables are empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One admitted connection of a key; gives it back when dropped.
#[derive(Debug)]
pub struct KeyGuard<K: Hash + Eq + Clone> {
    limits: Arc<KeyedLimits<K>>,
    key: Option<K>,
}

impl<K: Hash + Eq + Clone> Drop for KeyGuard<K> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.limits.release(&key);
        }
    }
}

/// What a request carries from its socket's admission: the handshake-phase
/// permit and the address guard. `/ws` takes both (the upgrade keeps the
/// guard, and gives the permit back once upgraded); otherwise they go when
/// the socket closes.
#[derive(Clone, Default)]
pub struct Admitted(Arc<Mutex<AdmittedParts>>);

#[derive(Default)]
struct AdmittedParts {
    permit: Option<OwnedSemaphorePermit>,
    ip: Option<KeyGuard<std::net::IpAddr>>,
}

impl Admitted {
    /// A socket's admission: its handshake-phase permit and address guard.
    pub fn new(permit: OwnedSemaphorePermit, ip: Option<KeyGuard<IpAddr>>) -> Self {
        Self(Arc::new(Mutex::new(AdmittedParts {
            permit: Some(permit),
            ip,
        })))
    }

    /// Take the permit and the address guard (once; later calls get `None`s).
    pub fn take(
        &self,
    ) -> (
        Option<OwnedSemaphorePermit>,
        Option<KeyGuard<std::net::IpAddr>>,
    ) {
        let mut parts = self.0.lock();
        (parts.permit.take(), parts.ip.take())
    }
}

/// The node's edge admission state.
#[derive(Debug)]
pub struct Edge {
    /// Permits for sockets in the handshake phase (`max_pending_connections`).
    pub pending: Arc<Semaphore>,
    /// Its size.
    pub max_pending: usize,
    /// The most sockets in the handshake phase since the last
    /// [`Edge::take_pending_peak`] (for `memory.rs`).
    pending_peak: std::sync::atomic::AtomicUsize,
    /// Connections and connect rate per client address.
    pub ips: Arc<KeyedLimits<IpAddr>>,
    trusted: Vec<IpAddr>,
    limit_private: bool,
}

impl Edge {
    /// The edge state of a node with `config`. The handshake-phase cap is
    /// clamped to half the process's file limit (with a warning), so
    /// sockets that never finish their headers cannot take every file
    /// descriptor (Redis, upgraded clients and health probes keep theirs).
    pub fn new(config: &Config) -> Self {
        let e = &config.edge;
        let mut max_pending = e.max_pending_connections;
        if let Some(files) = file_limit() {
            let half = usize::try_from(files / 2).unwrap_or(usize::MAX).max(1);
            if max_pending > half {
                tracing::warn!(
                    max_pending_connections = max_pending,
                    file_limit = files,
                    using = half,
                    "max_pending_connections is above half the file limit: using half (raise the limit with ulimit -n / LimitNOFILE)"
                );
                max_pending = half;
            }
        }
        Self {
            pending: Arc::new(Semaphore::new(max_pending)),
            max_pending,
            pending_peak: std::sync::atomic::AtomicUsize::new(0),
            ips: KeyedLimits::new(
                e.max_connections_per_ip,
                Some((e.connect_rate_per_ip, e.connect_burst_per_ip)),
            ),
            trusted: config.trusted_proxies.clone(),
            limit_private: e.ip_limits_private,
        }
    }

    /// Whether `peer` is a trusted proxy.
    pub fn is_trusted(&self, peer: IpAddr) -> bool {
        self.trusted.contains(&peer) || self.trusted.contains(&canonical(peer))
    }

    /// The key `ip` is limited under, `None` when it is not limited.
    pub fn ip_key(&self, ip: IpAddr) -> Option<IpAddr> {
        let ip = canonical(ip);
        if !self.limit_private && is_private(ip) {
            return None;
        }
        Some(match ip {
            IpAddr::V6(v6) => {
                let s = v6.segments();
                IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
            }
            v4 => v4,
        })
    }

    /// Sockets in the handshake phase now.
    pub fn pending(&self) -> usize {
        self.max_pending
            .saturating_sub(self.pending.available_permits())
    }

    /// Record the handshake-phase count after a socket took its permit.
    pub fn note_pending(&self) {
        self.pending_peak
            .fetch_max(self.pending(), std::sync::atomic::Ordering::Relaxed);
    }

    /// The handshake-phase peak since the last call (and reset it).
    pub fn take_pending_peak(&self) -> usize {
        self.pending_peak
            .swap(0, std::sync::atomic::Ordering::Relaxed)
    }
}

/// The soft limit of open files of this process (Linux `/proc/self/limits`),
/// `None` where it cannot be read or is unlimited.
pub fn file_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_file_limit(&text)
}

fn parse_file_limit(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// An IPv4-mapped IPv6 address as IPv4; others as they are.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Loopback, private, link-local, CGNAT (100.64/10) or unique-local.
pub fn is_private(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let s0 = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (s0 & 0xfe00) == 0xfc00
                || (s0 & 0xffc0) == 0xfe80
        }
    }
}

/// A log line that is written at most once per period per call site, with
/// the number suppressed since (no floods under attack).
#[derive(Debug, Default)]
pub struct RareLog {
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

/// Period of [`RareLog`].
const RARE_LOG_PERIOD: Duration = Duration::from_secs(10);

impl RareLog {
    /// A new log site (usable in a `static`).
    pub const fn new() -> Self {
        Self {
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(suppressed)` when a line may be written now.
    pub fn allow(&self) -> Option<u64> {
        let now = crate::clock::now_ms();
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < RARE_LOG_PERIOD.as_millis() as u64 {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self
            .last_ms
            .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn counts_and_rate_per_key() {
        let l = KeyedLimits::new(2, Some((1, 2)));
        let a = l.acquire(1u8).unwrap();
        let b = l.acquire(1u8).unwrap();
        assert_eq!(l.acquire(1u8).unwrap_err(), Refusal::TooMany);
        drop(a);
        // The bucket (burst 2) is empty now.
        assert_eq!(l.acquire(1u8).unwrap_err(), Refusal::TooFast);
        tokio::time::advance(Duration::from_millis(1100)).await;
        let c = l.acquire(1u8).unwrap();
        assert_eq!(l.count(&1), 2);
        assert!(l.acquire(2u8).is_ok());
        drop((b, c));
        tokio::time::advance(Duration::from_secs(5)).await;
        // Refilled and unused: a drop of the last guard removes it.
        let d = l.acquire(1u8).unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(d);
        assert_eq!(l.count(&1), 0);
    }

    #[test]
    fn file_limit_is_read() {
        let text = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 1048576              files\n";
        assert_eq!(parse_file_limit(text), Some(1024));
        assert_eq!(
            parse_file_limit("Max open files  unlimited unlimited files"),
            None
        );
    }

    #[test]
    fn private_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.0.1",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "203.0.113.7", "2001:db8::1", "::ffff:8.8.8.8"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }
}
