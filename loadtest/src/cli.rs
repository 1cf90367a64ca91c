//! Options shared by every scenario, and turning them into worker specs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::common::{http_base, loopback_ips, Endpoints};
use crate::pusher::PusherApp;
use crate::worker::{split, Group, Mode, WorkerSpec};

/// Most sockets one worker process may hold (the limit here is ~20,000
/// open files per process).
pub const MAX_PER_WORKER: u64 = 14_999;

/// Where to connect, how, and where to report.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Gateway WebSocket URLs, comma separated or repeated; clients are
    /// spread over them round-robin.
    #[arg(
        long = "url",
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:8080/ws"
    )]
    pub urls: Vec<String>,
    /// HTTP API base URLs (default: derived from --url).
    #[arg(long = "api", value_delimiter = ',')]
    pub api: Vec<String>,
    /// /metrics URLs (default: <api>/metrics; set when the gateways use
    /// an admin listener).
    #[arg(long = "metrics", value_delimiter = ',')]
    pub metrics: Vec<String>,
    /// API key for the HTTP API (`Authorization: Bearer`).
    #[arg(long, env = "LOADTEST_API_KEY")]
    pub api_key: Option<String>,
    /// HS256 secret: clients authenticate with a JWT (sub = user id).
    /// Without it they connect with ?user= (open development mode).
    #[arg(long, env = "LOADTEST_JWT_SECRET")]
    pub jwt_secret: Option<String>,
    /// Client source addresses 127.0.0.1 ..= 127.0.0.N (spreads the
    /// ephemeral ports over several addresses).
    #[arg(long, default_value_t = 16)]
    pub src_addrs: u8,
    /// Sockets per worker process at most (< 15,000).
    #[arg(long, default_value_t = 12_000)]
    pub per_worker: u64,
    /// Runtime threads per worker process.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Connection attempts in flight at most (over all workers).
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Connection attempts per second over all workers (0 = as fast as
    /// the concurrency allows).
    #[arg(long, default_value_t = 0.0)]
    pub connect_rate: f64,
    /// Bound on connect + upgrade + welcome + subscribe replies, ms.
    #[arg(long, default_value_t = 30_000)]
    pub connect_timeout_ms: u64,
    /// Initial read buffer per client socket, bytes.
    #[arg(long, default_value_t = 4096)]
    pub read_buf: usize,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    pub no_progress: bool,
    /// Set (by `idle` and `fanout` from `--protocol pusher`): the clients
    /// speak Pusher to this app.
    #[arg(skip)]
    pub pusher: Option<PusherApp>,
}

impl ClientArgs {
    /// Defaults pointing at `urls` (for the suite and tests).
    pub fn for_urls(urls: Vec<String>) -> Self {
        Self {
            urls,
            api: Vec::new(),
            metrics: Vec::new(),
            api_key: None,
            jwt_secret: None,
            src_addrs: 16,
            per_worker: 12_000,
            threads: 2,
            connect_concurrency: 256,
            connect_rate: 0.0,
            connect_timeout_ms: 30_000,
            read_buf: 4096,
            json: None,
            no_progress: false,
            pusher: None,
        }
    }

    /// Checks the options.
    pub fn validate(&self) -> Result<()> {
        if self.per_worker == 0 || self.per_worker > MAX_PER_WORKER {
            bail!("--per-worker must be 1..={MAX_PER_WORKER}");
        }
        if self.urls.is_empty() {
            bail!("give at least one --url");
        }
        Ok(())
    }

    /// The endpoints part of a worker spec.
    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            urls: self.urls.clone(),
            src_ips: loopback_ips(self.src_addrs),
            jwt_secret: self.jwt_secret.clone(),
            read_buf: self.read_buf,
            connect_timeout_ms: self.connect_timeout_ms,
            pusher: self.pusher.clone(),
        }
    }

    /// HTTP API bases.
    pub fn api_bases(&self) -> Result<Vec<String>> {
        if !self.api.is_empty() {
            return Ok(self
                .api
                .iter()
                .map(|a| a.trim_end_matches('/').to_owned())
                .collect());
        }
        self.urls.iter().map(|u| http_base(u)).collect()
    }

    /// /metrics URLs.
    pub fn metrics_urls(&self) -> Result<Vec<String>> {
        if !self.metrics.is_empty() {
            return Ok(self.metrics.clone());
        }
        Ok(self
            .api_bases()?
            .into_iter()
            .map(|b| format!("{b}/metrics"))
            .collect())
    }

    /// An HTTP client (with the API key header when set).
    pub fn http(&self) -> Result<reqwest::Client> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(key) = &self.api_key {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))?,
            );
        }
        Ok(reqwest::Client::builder()
            .default_headers(headers)
            .pool_max_idle_per_host(256)
            .timeout(Duration::from_secs(30))
            .build()?)
    }

    /// Worker specs for `total` clients: contiguous index ranges of at most
    /// `per_worker`, connect concurrency and rate shared among them.
    pub fn worker_specs(
        &self,
        total: u64,
        user_prefix: &str,
        groups: Vec<Group>,
        mode: impl Fn(usize) -> Mode,
    ) -> Vec<WorkerSpec> {
        let ranges = split(total, self.per_worker);
        let n = ranges.len();
        ranges
            .into_iter()
            .enumerate()
            .map(|(id, (first, count))| WorkerSpec {
                id,
                ep: self.endpoints(),
                first,
                count,
                connect_concurrency: (self.connect_concurrency / n).max(1),
                connect_rate: self.connect_rate / n as f64,
                user_prefix: user_prefix.to_owned(),
                groups: groups.clone(),
                mode: mode(id),
            })
            .collect()
    }

    /// A progress bar on stderr (hidden with --no-progress or without a
    /// terminal).
    pub fn bar(&self, len: u64, what: &str) -> ProgressBar {
        let bar = if self.no_progress {
            ProgressBar::hidden()
        } else {
            ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
        };
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:>14} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec}",
        ) {
            bar.set_style(style);
        }
        bar.set_message(what.to_owned());
        bar
    }
}

/// `total` split into `parts` near-equal shares.
pub fn shares(total: u64, parts: usize) -> Vec<u64> {
    let parts = parts.max(1) as u64;
    (0..parts)
        .map(|w| total / parts + u64::from(w < total % parts))
        .collect()
}
