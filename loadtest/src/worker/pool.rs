//! The parent's handle on its worker processes: starts them (the spec as
//! the first stdin line), sends commands, gathers their events, stops them;
//! and splits the clients among them.
//!
//! Invariants: every wait for an event is bounded; a worker's fatal error
//! is an error of the call that waits; workers are killed when the handle
//! drops (`kill_on_drop`) or when they do not exit within 10 s of a stop.

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::protocol::{Cmd, Ev, StopReport, WorkerSpec};

/// The parent's handle on its worker processes.
pub struct Pool {
    children: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
    rx: mpsc::UnboundedReceiver<(usize, Ev)>,
    /// Workers whose stdout ended.
    exited: HashSet<usize>,
}

impl Pool {
    /// Starts one worker process per spec.
    pub async fn spawn(specs: &[WorkerSpec], threads: usize) -> Result<Pool> {
        let exe = std::env::current_exe().context("locating the loadtest binary")?;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        for spec in specs {
            let mut child = Command::new(&exe)
                .arg("__worker")
                .arg("--threads")
                .arg(threads.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("spawning worker {}", exe.display()))?;
            let mut stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let mut line = serde_json::to_string(spec)?;
            line.push('\n');
            stdin.write_all(line.as_bytes()).await?;
            stdin.flush().await?;
            let tx = tx.clone();
            let id = spec.id;
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match serde_json::from_str::<Ev>(&line) {
                        Ok(ev) => {
                            let _ = tx.send((id, ev));
                        }
                        Err(e) => eprintln!("worker {id}: unparsable line ({e}): {line}"),
                    }
                }
                let _ = tx.send((id, Ev::Exited));
            });
            children.push(child);
            stdins.push(Some(stdin));
        }
        Ok(Pool {
            children,
            stdins,
            rx,
            exited: HashSet::new(),
        })
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.children.len()
    }

    /// Sends a command to one worker.
    pub async fn send(&mut self, worker: usize, cmd: &Cmd) -> Result<()> {
        let stdin = self
            .stdins
            .get_mut(worker)
            .and_then(Option::as_mut)
            .with_context(|| format!("worker {worker} has no stdin"))?;
        let mut line = serde_json::to_string(cmd)?;
        line.push('\n');
        stdin
            .write_all(line.as_bytes())
            .await
            .with_context(|| format!("writing to worker {worker}"))?;
        stdin.flush().await?;
        Ok(())
    }

    /// Sends a command to every worker.
    pub async fn send_all(&mut self, cmd: &Cmd) -> Result<()> {
        for w in 0..self.workers() {
            self.send(w, cmd).await?;
        }
        Ok(())
    }

    /// The next event, within `timeout`. A worker's fatal error or
    /// unexpected exit is an error.
    pub async fn next(&mut self, timeout: Duration) -> Result<(usize, Ev)> {
        let (w, ev) = tokio::time::timeout(timeout, self.rx.recv())
            .await
            .map_err(|_| anyhow!("no event from the workers within {timeout:?}"))?
            .context("every worker is gone")?;
        match ev {
            Ev::Fatal { error } => bail!("worker {w} failed: {error}"),
            Ev::Exited => {
                self.exited.insert(w);
                Ok((w, Ev::Exited))
            }
            ev => Ok((w, ev)),
        }
    }

    /// Collects one `T` per worker (events `pick` maps to `Some`), handing
    /// every other event to `other` (progress). Bounded by `timeout`.
    pub async fn collect<T>(
        &mut self,
        timeout: Duration,
        mut pick: impl FnMut(Ev) -> Option<T>,
        mut other: impl FnMut(usize, &Ev),
    ) -> Result<Vec<T>> {
        let deadline = Instant::now() + timeout;
        let mut got: Vec<Option<T>> = (0..self.workers()).map(|_| None).collect();
        while got.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            let (w, ev) = self.next(left).await?;
            if matches!(ev, Ev::Exited) {
                if got.get(w).is_some_and(Option::is_none) {
                    bail!("worker {w} exited before reporting");
                }
                continue;
            }
            other(w, &ev);
            if let Some(t) = pick(ev) {
                if let Some(slot) = got.get_mut(w) {
                    *slot = Some(t);
                }
            }
        }
        Ok(got.into_iter().flatten().collect())
    }

    /// Stops every worker (clean closes) and collects their stop reports;
    /// kills what does not exit in time.
    pub async fn stop(mut self) -> Result<Vec<StopReport>> {
        let sent = self.send_all(&Cmd::Stop).await;
        let reports = match sent {
            Ok(()) => {
                self.collect(
                    Duration::from_secs(30),
                    |ev| match ev {
                        Ev::Stopped(r) => Some(r),
                        _ => None,
                    },
                    |_, _| {},
                )
                .await
            }
            Err(e) => Err(e),
        };
        for stdin in &mut self.stdins {
            stdin.take();
        }
        for child in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        reports
    }
}

/// Splits `total` clients into workers of at most `per_worker` each, in
/// contiguous global index ranges: (first, count) per worker.
pub fn split(total: u64, per_worker: u64) -> Vec<(u64, u64)> {
    let per_worker = per_worker.max(1);
    let workers = total.div_ceil(per_worker).max(1);
    let base = total / workers;
    let extra = total % workers;
    let mut first = 0;
    (0..workers)
        .map(|w| {
            let count = base + u64::from(w < extra);
            let r = (first, count);
            first += count;
            r
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_evenly_under_the_cap() {
        assert_eq!(split(10, 12_000), vec![(0, 10)]);
        assert_eq!(split(15_000, 12_000), vec![(0, 7_500), (7_500, 7_500)]);
        assert_eq!(
            split(25_001, 12_000),
            vec![(0, 8_334), (8_334, 8_334), (16_668, 8_333)]
        );
        assert_eq!(split(0, 5), vec![(0, 0)]);
    }
}
