//! What a run ran on and when: the machine, the load average, the commit,
//! the date stamp of the result files.
//!
//! Invariants: nothing here fails a run (an unreadable file or a failing
//! `git` gives an empty or default value).

use std::time::Duration;

use serde_json::{json, Value};
use tokio::process::Command;

use super::nodes::run_cmd;

/// The machine this ran on.
pub(crate) fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned());
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| {
            v.split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
        });
    json!({
        "cpu": model,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "mem_gib": mem_kib.map(|k| (k as f64 / 1048576.0 * 10.0).round() / 10.0),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "nofile": crate::common::raise_nofile(),
    })
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `YYYY-MM-DDTHHMMSSZ` from the Unix time.
pub(crate) fn stamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

pub(crate) async fn git_commit() -> String {
    let rev = run_cmd(
        Command::new("git").args(["rev-parse", "--short", "HEAD"]),
        "git rev-parse",
        Duration::from_secs(10),
    )
    .await
    .unwrap_or_default();
    let dirty = run_cmd(
        Command::new("git").args(["status", "--porcelain", "gateway"]),
        "git status",
        Duration::from_secs(10),
    )
    .await
    .map(|s| !s.trim().is_empty())
    .unwrap_or(false);
    format!(
        "{}{}",
        rev.trim(),
        if dirty { " (gateway/ modified)" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_dates() {
        assert_eq!(stamp(0), "1970-01-01T000000Z");
        assert_eq!(stamp(1_700_000_000), "2023-11-14T221320Z");
        assert_eq!(stamp(951_782_400), "2000-02-29T000000Z");
    }
}
