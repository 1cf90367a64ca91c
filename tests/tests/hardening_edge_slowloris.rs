//! Issue 10, item 1 (the socket edge): a client that never finishes its
//! request headers is dropped within the header timeout, oversized headers
//! are refused, and the handshake phase and each client address have
//! bounded connection counts and connect rates. Real gateway, real sockets.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tests::{GatewayBuilder, EVENTUALLY};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until EOF or an error (a reset counts as closed); returns what
/// arrived. Fails if the socket stays open past `within`.
async fn closed_within(sock: &mut TcpStream, within: Duration) -> Result<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(within, async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    if read.is_err() {
        bail!(
            "socket still open after {within:?} (received {:?})",
            String::from_utf8_lossy(&got)
        );
    }
    Ok(String::from_utf8_lossy(&got).into_owned())
}

/// Bound on a close caused by a 1 s header timeout: generous for a loaded
/// machine, yet below the 10 s default, so a configured timeout that were
/// not applied fails the test instead of passing on the default.
const ONE_SECOND_TIMEOUT_CLOSE: Duration = Duration::from_secs(8);

async fn partial_upgrade(addr: SocketAddr) -> Result<TcpStream> {
    let mut sock = TcpStream::connect(addr).await.context("connect")?;
    sock.write_all(b"GET /ws?user=slow HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        .await?;
    Ok(sock)
}

#[tokio::test]
async fn partial_headers_are_dropped_within_the_header_timeout() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("edge_slowloris_timeout")
        .env("GATEWAY_HEADER_TIMEOUT_MS", 1000)
        .spawn()
        .await?;
    let addr = gw.addr()?;
    let started = Instant::now();
    let mut socks = Vec::new();
    for _ in 0..20 {
        socks.push(partial_upgrade(addr).await?);
    }
    // One more that sends nothing at all.
    socks.push(TcpStream::connect(addr).await?);
    for sock in &mut socks {
        closed_within(sock, ONE_SECOND_TIMEOUT_CLOSE).await?;
    }
    let took = started.elapsed();
    ensure!(took < ONE_SECOND_TIMEOUT_CLOSE, "took {took:?}");
    // A real client still gets in.
    gw.connect_user("real").await?;
    Ok(())
}

#[tokio::test]
async fn oversized_headers_are_refused() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("edge_slowloris_header_size")
        .env("GATEWAY_MAX_HEADER_BYTES", 16384)
        // Far beyond the bound below: only the size cap can close this
        // socket in time (with the default 10 s header timeout a plain close
        // after the timeout passed for a refusal, cap or no cap).
        .env("GATEWAY_HEADER_TIMEOUT_MS", 60_000)
        .spawn()
        .await?;
    let mut sock = partial_upgrade(gw.addr()?).await?;
    let filler = format!("X-Filler: {}\r\n", "a".repeat(1000));
    // 100 KB of unterminated headers: far past the 16 KiB cap. The server
    // may close while we write; a failed write is the refusal too.
    for _ in 0..100 {
        if sock.write_all(filler.as_bytes()).await.is_err() {
            break;
        }
    }
    let answer = closed_within(&mut sock, Duration::from_secs(15)).await?;
    ensure!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "expected 431 or a plain close, got {answer:?}"
    );
    gw.connect_user("real").await?;
    Ok(())
}

#[tokio::test]
async fn the_handshake_phase_is_capped() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("edge_pending_cap")
        .env("GATEWAY_HEADER_TIMEOUT_MS", 60_000)
        .env("GATEWAY_MAX_PENDING_CONNECTIONS", 4)
        .spawn()
        .await?;
    let addr = gw.addr()?;
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(partial_upgrade(addr).await?);
    }
    // The fifth socket in the handshake phase is answered 503 and closed
    // (it sends nothing, so the close is clean and the answer readable).
    let mut over = TcpStream::connect(addr).await?;
    let answer = closed_within(&mut over, Duration::from_secs(15)).await?;
    ensure!(answer.starts_with("HTTP/1.1 503"), "got {answer:?}");
    // Once the idle ones leave, clients get in again.
    drop(idle);
    tests::eventually(
        EVENTUALLY,
        "a client connects after the idle sockets left",
        || async { gw.connect_user("real").await.is_ok() },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_slow_api_body_is_answered_408() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("edge_body_timeout")
        .env("GATEWAY_BODY_TIMEOUT_MS", 500)
        .spawn()
        .await?;
    let mut sock = TcpStream::connect(gw.addr()?).await?;
    // Headers promise 100 bytes; 10 arrive, then nothing.
    sock.write_all(
        b"POST /api/broadcast HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"data\": 1",
    )
    .await?;
    let answer = closed_within(&mut sock, Duration::from_secs(15)).await?;
    ensure!(answer.starts_with("HTTP/1.1 408"), "got {answer:?}");
    Ok(())
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("edge_keepalive_idle")
        .env("GATEWAY_HEADER_TIMEOUT_MS", 1000)
        .spawn()
        .await?;
    let mut sock = TcpStream::connect(gw.addr()?).await?;
    sock.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    // The answer arrives, then the idle connection is closed.
    let answer = closed_within(&mut sock, ONE_SECOND_TIMEOUT_CLOSE).await?;
    ensure!(answer.starts_with("HTTP/1.1 200"), "got {answer:?}");
    Ok(())
}

/// After a burst of sockets ends, the node gives the memory they held back
/// to the system (`memory.rs`: glibc keeps freed memory in its arenas; RSS
/// stayed at the burst's peak before, 35 MiB against an 8 MiB baseline
/// after 2,000 slowloris sockets). The RSS itself is the benchmark's
/// (`scripts/slowloris.py`); here, that a trim follows the burst.
#[tokio::test]
async fn memory_is_given_back_after_a_burst_of_sockets() -> Result<()> {
    const SOCKETS: usize = 600;
    let gw = GatewayBuilder::new()
        .name("edge_memory_trim")
        .env("GATEWAY_HEADER_TIMEOUT_MS", 60_000)
        .spawn()
        .await?;
    let addr = gw.addr()?;
    let api = gw.api();
    let trims = || async {
        let text = api.metrics().await?;
        tests::metric_value(&text, "gateway_memory_trims_total")
            .context("gateway_memory_trims_total not exported")
    };
    ensure!(trims().await? == 0.0, "a trim before any burst");
    let mut socks = Vec::with_capacity(SOCKETS);
    for _ in 0..SOCKETS {
        socks.push(partial_upgrade(addr).await?);
    }
    tests::eventually(
        EVENTUALLY,
        "the burst is in the handshake phase",
        || async {
            let text = api.metrics().await.unwrap_or_default();
            tests::metric_value(&text, "gateway_edge_pending_connections")
                .is_some_and(|n| n >= SOCKETS as f64)
        },
    )
    .await?;
    drop(socks);
    tests::eventually(
        Duration::from_secs(30),
        "a trim after the burst",
        || async { trims().await.is_ok_and(|n| n >= 1.0) },
    )
    .await?;
    Ok(())
}
