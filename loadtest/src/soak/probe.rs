//! The nodes seen from outside: `/metrics` scrapes with their gauges and
//! `/readyz`, each polled until a condition holds or a bound runs out.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use tokio::time::Instant;

use crate::common::metric_value;

/// Scrapes the text of a node's /metrics.
async fn gauges(http: &reqwest::Client, addr: SocketAddr) -> Result<String> {
    Ok(http
        .get(format!("http://{addr}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .text()
        .await?)
}

/// Polls every node's gauges until `want(node, text)` holds for all, at
/// most `bound`; returns the last texts.
pub(super) async fn wait_gauges(
    http: &reqwest::Client,
    addrs: &[SocketAddr],
    bound: Duration,
    want: impl Fn(usize, &str) -> bool,
) -> (bool, Vec<String>) {
    let deadline = Instant::now() + bound;
    let mut texts = vec![String::new(); addrs.len()];
    loop {
        for (i, a) in addrs.iter().enumerate() {
            if let Ok(t) = gauges(http, *a).await {
                texts[i] = t;
            }
        }
        if texts.iter().enumerate().all(|(i, t)| want(i, t)) {
            return (true, texts);
        }
        if Instant::now() >= deadline {
            return (false, texts);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(super) fn gauge(text: &str, name: &str) -> f64 {
    metric_value(text, name).unwrap_or(f64::NAN)
}

/// Waits until every node answers /readyz with 200, at most `bound`.
pub(super) async fn wait_ready(
    http: &reqwest::Client,
    addrs: &[SocketAddr],
    bound: Duration,
) -> bool {
    let deadline = Instant::now() + bound;
    loop {
        let mut all = true;
        for a in addrs {
            let ok = http
                .get(format!("http://{a}/readyz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            all &= ok;
        }
        if all {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The gauges with `task` in their name, keyed `node:name`, from each
/// node's /metrics text.
pub(super) fn task_gauges(texts: &[String]) -> BTreeMap<String, f64> {
    let mut task_gauges = BTreeMap::new();
    for (n, t) in texts.iter().enumerate() {
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split([' ', '{']).next().unwrap_or("");
            if name.contains("task") {
                task_gauges.insert(format!("{n}:{name}"), gauge(t, name));
            }
        }
    }
    task_gauges
}
