//! Shared pieces: gateway endpoints and client addressing, tokens, wall
//! clock, latency histograms, /metrics and /proc readers.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::pusher::PusherApp;
use crate::wire;

/// Microseconds since the Unix epoch (the clock every process here shares,
/// so a send time stamped by one process can be compared in another).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Where clients connect and how they authenticate. Connection `i`
/// (a global index) goes to `urls[i % urls.len()]` from source address
/// `src_ips[i % src_ips.len()]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoints {
    /// Gateway WebSocket URLs (`ws://127.0.0.1:8080/ws`).
    pub urls: Vec<String>,
    /// Client source addresses (127.0.0.x).
    pub src_ips: Vec<Ipv4Addr>,
    /// HS256 secret: clients send `Authorization: Bearer <jwt>`; without it
    /// they connect with `?user=` (open development mode).
    pub jwt_secret: Option<String>,
    /// Initial read buffer per client socket.
    pub read_buf: usize,
    /// Bound on TCP connect + upgrade + welcome + subscribe replies.
    pub connect_timeout_ms: u64,
    /// Set: clients speak Pusher protocol 7 to this app on `/app/{key}`
    /// (crate::pusher) instead of v1 on the URL's path.
    #[serde(default)]
    pub pusher: Option<PusherApp>,
}

/// One resolved gateway URL.
#[derive(Debug, Clone)]
pub struct Node {
    /// Socket address.
    pub addr: SocketAddr,
    /// Host header.
    pub host: String,
    /// Path with any query.
    pub path: String,
}

impl Endpoints {
    /// Resolves the URLs.
    pub fn nodes(&self) -> Result<Vec<Node>> {
        if self.urls.is_empty() {
            bail!("no gateway URL given");
        }
        self.urls
            .iter()
            .map(|u| {
                let (addr, host, path) = wire::parse_ws_url(u)?;
                Ok(Node { addr, host, path })
            })
            .collect()
    }

    /// Source address of connection `i`.
    pub fn src(&self, i: u64) -> Option<Ipv4Addr> {
        if self.src_ips.is_empty() {
            None
        } else {
            Some(self.src_ips[(i % self.src_ips.len() as u64) as usize])
        }
    }

    /// Request path and bearer token for `user` on `node` (Pusher: the
    /// app's path, no token).
    pub fn auth(&self, node: &Node, user: &str) -> Result<(String, Option<String>)> {
        if let Some(app) = &self.pusher {
            return Ok((crate::pusher::ws_path(&app.key), None));
        }
        match &self.jwt_secret {
            Some(secret) => Ok((node.path.clone(), Some(token(secret, user)?))),
            None => {
                let sep = if node.path.contains('?') { '&' } else { '?' };
                Ok((format!("{}{sep}user={user}", node.path), None))
            }
        }
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
}

/// An HS256 JWT for `user`, valid for a day.
pub fn token(secret: &str, user: &str) -> Result<String> {
    let claims = Claims {
        sub: user,
        exp: now_us() / 1_000_000 + 86_400,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .context("minting a JWT")
}

/// `127.0.0.1 ..= 127.0.0.n`.
pub fn loopback_ips(n: u8) -> Vec<Ipv4Addr> {
    (1..=n.max(1))
        .map(|i| Ipv4Addr::new(127, 0, 0, i))
        .collect()
}

/// `ws://host:port/path` -> `http://host:port`.
pub fn http_base(ws_url: &str) -> Result<String> {
    let rest = ws_url
        .strip_prefix("ws://")
        .with_context(|| format!("{ws_url:?} is not a ws:// URL"))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    Ok(format!("http://{hostport}"))
}

/// A latency histogram in microseconds (1 us .. 10 min, 3 digits).
pub fn new_hist() -> Histogram<u64> {
    #[allow(clippy::expect_used)] // constant, valid bounds
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// A histogram as (value, count) pairs, for shipping between processes.
pub type HistPairs = Vec<(u64, u64)>;

/// Histogram -> pairs.
pub fn hist_pairs(h: &Histogram<u64>) -> HistPairs {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// Adds pairs into a histogram.
pub fn hist_merge(h: &mut Histogram<u64>, pairs: &HistPairs) {
    for &(v, n) in pairs {
        let _ = h.record_n(v.clamp(1, 600_000_000), n);
    }
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

impl Latency {
    /// Summarises a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p95_ms: ms(h.value_at_quantile(0.95)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }

    /// `p50 1.2 ms, p90 ..., max ...`.
    pub fn line(&self) -> String {
        format!(
            "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms (n={})",
            self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms, self.count
        )
    }
}

/// Adds `b` into `a` (error counts by kind).
pub fn merge_counts(a: &mut BTreeMap<String, u64>, b: &BTreeMap<String, u64>) {
    for (k, v) in b {
        *a.entry(k.clone()).or_default() += v;
    }
}

/// Reads `gateway_connections` (summed over label sets) from each
/// `/metrics` URL.
pub async fn connections_gauge(
    http: &reqwest::Client,
    metrics_urls: &[String],
) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for url in metrics_urls {
        let text = http
            .get(url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .with_context(|| format!("GET {url}"))?
            .text()
            .await?;
        out.push(metric_value(&text, "gateway_connections").unwrap_or(f64::NAN));
    }
    Ok(out)
}

/// The value of an unlabelled (or the sum of a labelled) Prometheus metric.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

/// Process figures from /proc.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ProcSample {
    /// Resident set size, KiB (VmRSS).
    pub rss_kib: u64,
    /// User + system CPU time, clock ticks.
    pub cpu_ticks: u64,
}

/// Reads VmRSS and utime+stime of `pid`.
pub fn proc_sample(pid: u32) -> Result<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the ")" that closes the command name: state is field 3,
    // utime field 14, stime field 15 (1-based, man 5 proc).
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok(ProcSample {
        rss_kib,
        cpu_ticks: num(11) + num(12),
    })
}

/// The machine's `TcpExt: ListenOverflows` counter (/proc/net/netstat):
/// SYNs dropped because a listener's accept queue was full. Machine-wide,
/// so a delta over a run on this otherwise quiet loopback is the gateway's.
pub fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines();
    while let Some(names) = lines.next() {
        let values = lines.next()?;
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let i = names
            .split_whitespace()
            .position(|n| n == "ListenOverflows")?;
        return values.split_whitespace().nth(i)?.parse().ok();
    }
    None
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 when unknown).
pub fn clk_tck() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// Raises the soft open-files limit to the hard limit; returns (soft, hard).
pub fn raise_nofile() -> (u64, u64) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => {
            let hard = rlimit::Resource::NOFILE
                .get()
                .map(|(_, h)| h)
                .unwrap_or(soft);
            (soft, hard)
        }
        Err(_) => (0, 0),
    }
}

/// Writes `value` as pretty JSON to `path` (creating parent directories).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// Fixed-width payload `prefix` padded with `x` to `size` bytes.
pub fn pad(mut s: String, size: usize) -> String {
    while s.len() < size {
        s.push('x');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_metric_values() {
        let text = "# HELP gateway_connections x\n# TYPE gateway_connections gauge\n\
                    gateway_connections 42\ngateway_connections_accepted_total 7\n\
                    m{a=\"1\"} 2\nm{a=\"2\"} 3\n";
        assert_eq!(metric_value(text, "gateway_connections"), Some(42.0));
        assert_eq!(metric_value(text, "m"), Some(5.0));
        assert_eq!(metric_value(text, "nope"), None);
    }

    #[test]
    fn histogram_round_trips_through_pairs() {
        let mut h = new_hist();
        for v in [5u64, 5, 100, 2000, 2000, 2000] {
            h.record(v).unwrap();
        }
        let mut g = new_hist();
        hist_merge(&mut g, &hist_pairs(&h));
        assert_eq!(g.len(), 6);
        assert_eq!(g.value_at_quantile(0.5), h.value_at_quantile(0.5));
    }

    #[test]
    fn reads_the_listen_overflow_counter() {
        assert!(listen_overflows().is_some());
    }

    #[test]
    fn reads_own_proc_sample() {
        let s = proc_sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0);
    }
}
