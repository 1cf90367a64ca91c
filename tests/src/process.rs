//! OS-level plumbing shared by every launcher: free ports, signals, and the
//! state of a process as Linux `/proc` reports it.
//!
//! Invariant: ports come from the OS (bind to port 0), never from a fixed
//! range; a signal that could not be delivered is an error, not a warning.

use std::net::{SocketAddr, TcpListener};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// `n` distinct loopback ports the OS just handed out (all bound at once,
/// then released; a racing process may still take one, so callers that
/// bind them later retry with new ports).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("binding 127.0.0.1:0")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Whether `addr` can be bound right now the way the gateway binds it
/// (`SO_REUSEADDR`, so connections in TIME_WAIT do not count as taken).
pub fn port_free(addr: SocketAddr) -> bool {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    };
    socket
        .and_then(|s| {
            s.set_reuseaddr(true)?;
            s.bind(addr)
        })
        .is_ok()
}

/// Sends `signal` (a kill(1) name: "TERM", "INT", "STOP", "CONT", ...) to
/// process `pid`.
pub fn signal(pid: u32, signal: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed: {status}");
    }
    Ok(())
}

/// Sends `SIGSTOP` (`freeze`) or `SIGCONT` to `pid`; after a SIGSTOP, waits
/// until every thread has stopped (the signal is asynchronous), so nothing
/// sent to the process afterwards is answered. `what` names it in errors.
pub async fn freeze(pid: u32, freeze: bool, what: &str) -> Result<()> {
    signal(pid, if freeze { "STOP" } else { "CONT" })?;
    if freeze {
        crate::eventually(
            crate::EVENTUALLY,
            &format!("every thread of {what} {pid} stopped"),
            || async move { all_threads_stopped(pid) },
        )
        .await?;
    }
    Ok(())
}

/// Whether every thread of process `pid` is stopped (Linux `/proc`).
pub fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for task in tasks.flatten() {
        any = true;
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        if proc_state(&stat) != Some("T") {
            return false;
        }
    }
    any
}

/// Whether process `pid` exists and is not a zombie (Linux `/proc`).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => proc_state(&stat).is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The state letter of a `/proc/.../stat` line: the first field after the
/// parenthesised command name.
fn proc_state(stat: &str) -> Option<&str> {
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_state_skips_a_command_name_with_spaces_and_parens() {
        assert_eq!(proc_state("42 (a (b) c) S 1 2"), Some("S"));
        assert_eq!(proc_state("garbage"), None);
    }

    #[test]
    fn free_ports_are_distinct() -> Result<()> {
        let ports = free_ports(4)?;
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ports.len());
        Ok(())
    }
}
