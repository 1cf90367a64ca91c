//! Sampling of the gateway processes: RSS, open file descriptors (the
//! Redis connections among them counted apart) and threads, read from
//! /proc; the quiet-moment counts the leak check compares; the
//! least-squares RSS slope of each process after its warm-up.
//!
//! Invariants: a process that cannot be read gives 0, never an error (a
//! killed node is simply absent from later samples); every loop is bounded.

use std::time::Duration;

use serde::Serialize;

use crate::common::proc_sample;

/// One sample of one gateway process.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the churn started.
    pub t_secs: f64,
    /// Node index.
    pub node: usize,
    /// Process id.
    pub pid: u32,
    /// VmRSS, KiB.
    pub rss_kib: u64,
    /// Entries of /proc/<pid>/fd.
    pub fds: u64,
    /// Entries of /proc/<pid>/task.
    pub threads: u64,
}

impl Sample {
    /// Reads process `pid` (node `node`) now, `t_secs` into the churn.
    pub(super) fn take(t_secs: f64, node: usize, pid: u32, redis_port: u16) -> Self {
        let c = counts(pid, redis_port);
        let rss = proc_sample(pid).map_or(0, |s| s.rss_kib);
        Sample {
            t_secs,
            node,
            pid,
            rss_kib: rss,
            fds: c.fds,
            threads: c.threads,
        }
    }
}

/// Descriptors and threads of one process at a quiet moment.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    /// Open file descriptors.
    pub fds: u64,
    /// Of which TCP sockets to the Redis port (the pool and the pub/sub
    /// link: they grow with load up to the pool size, so they are not
    /// counted as a leak).
    pub redis_fds: u64,
    /// Threads.
    pub threads: u64,
}

impl Counts {
    /// Descriptors that are not Redis connections.
    pub(super) fn own_fds(&self) -> u64 {
        self.fds.saturating_sub(self.redis_fds)
    }
}

/// Per-process figures.
#[derive(Debug, Clone, Serialize)]
pub struct ProcOut {
    /// Node index.
    pub node: usize,
    /// Process id.
    pub pid: u32,
    /// Samples after this process's warm-up.
    pub samples: usize,
    /// RSS slope after warm-up, KiB per minute.
    pub rss_slope_kib_per_min: Option<f64>,
    /// First and last RSS after warm-up, KiB.
    pub rss_first_kib: Option<u64>,
    /// Last RSS sample, KiB.
    pub rss_last_kib: Option<u64>,
    /// Largest RSS sample, KiB.
    pub rss_max_kib: Option<u64>,
}

/// Entries of a /proc directory (0 when unreadable).
fn entries(path: &str) -> u64 {
    std::fs::read_dir(path).map_or(0, |d| d.count() as u64)
}

/// Socket inodes of TCP connections to 127.0.0.1:`port` (/proc/net/tcp).
fn redis_inodes(port: u16) -> Vec<u64> {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let want = format!("0100007F:{port:04X}");
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&want.as_str()))
                .then(|| f.get(9).and_then(|i| i.parse().ok()))
                .flatten()
        })
        .collect()
}

fn counts(pid: u32, redis_port: u16) -> Counts {
    let inodes = redis_inodes(redis_port);
    let mut fds = 0;
    let mut redis_fds = 0;
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in dir.flatten() {
            fds += 1;
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            let t = target.to_string_lossy();
            let inode = t
                .strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|n| n.parse::<u64>().ok());
            if inode.is_some_and(|i| inodes.contains(&i)) {
                redis_fds += 1;
            }
        }
    }
    Counts {
        fds,
        redis_fds,
        threads: entries(&format!("/proc/{pid}/task")),
    }
}

/// Least-squares slope of (t, y), per minute of t seconds.
fn slope_per_min(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let mt = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mt).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mt) * (p.1 - my)).sum();
    if sxx <= 0.0 {
        return None;
    }
    Some(sxy / sxx * 60.0)
}

/// Descriptors and threads of `pid` once quiet: the smallest of readings
/// over 12 s (an idle tokio blocking thread exits after 10 s), so before
/// and after are read alike.
pub(super) async fn quiet_counts(pids: &[u32], redis_port: u16) -> Vec<Counts> {
    let mut best: Vec<Counts> = pids.iter().map(|&p| counts(p, redis_port)).collect();
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for (b, &p) in best.iter_mut().zip(pids) {
            let c = counts(p, redis_port);
            if c.own_fds() < b.own_fds() {
                b.fds = c.fds;
                b.redis_fds = c.redis_fds;
            }
            b.threads = b.threads.min(c.threads);
        }
    }
    best
}

/// The RSS figures of every process (node, pid) in `samples`, in order of
/// first appearance, over its samples from `warm(node, pid)` seconds on.
pub(super) fn rss_figures(samples: &[Sample], warm: impl Fn(usize, u32) -> f64) -> Vec<ProcOut> {
    let mut procs = Vec::new();
    let mut seen: Vec<(usize, u32)> = Vec::new();
    for s in samples {
        if !seen.contains(&(s.node, s.pid)) {
            seen.push((s.node, s.pid));
        }
    }
    for (node, pid) in seen {
        let from = warm(node, pid);
        let mine: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.pid == pid && s.t_secs >= from)
            .collect();
        let pts: Vec<(f64, f64)> = mine.iter().map(|s| (s.t_secs, s.rss_kib as f64)).collect();
        procs.push(ProcOut {
            node,
            pid,
            samples: mine.len(),
            rss_slope_kib_per_min: slope_per_min(&pts),
            rss_first_kib: mine.first().map(|s| s.rss_kib),
            rss_last_kib: mine.last().map(|s| s.rss_kib),
            rss_max_kib: mine.iter().map(|s| s.rss_kib).max(),
        });
    }
    procs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_a_slope() {
        let pts: Vec<(f64, f64)> = (0..10)
            .map(|i| (i as f64 * 60.0, 100.0 + i as f64))
            .collect();
        let s = slope_per_min(&pts).unwrap_or(f64::NAN);
        assert!((s - 1.0).abs() < 1e-9, "{s}");
        assert_eq!(slope_per_min(&pts[..2]), None);
    }
}
