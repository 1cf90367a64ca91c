//! Per-node and per-connection limits: max connections, channels per
//! connection, rate limiting and abuse, slow consumers
//! (docs/protocol.md, "Limits" and "Close codes").

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::json;
use tests::{eventually, eventually_some, GatewayBuilder, EVENTUALLY, RECV_TIMEOUT};

#[tokio::test]
async fn connections_above_max_connections_are_refused_503() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("limit_max_conns")
        .standard_config()
        .env("GATEWAY_MAX_CONNECTIONS", 2)
        .spawn()
        .await?;
    let mut a = gw.connect_user("a").await?;
    let mut b = gw.connect_user("b").await?;
    gw.client()
        .query("user", "c")
        .expect_refused()
        .await?
        .expect(503, "unavailable")?;
    // The HTTP API is not a WebSocket connection: still served.
    gw.api().nodes().await?;
    b.ping().await?;

    a.close(1000, "done").await?;
    drop(a);
    let ws = gw.client().query("user", "c");
    let mut c = eventually_some(EVENTUALLY, "a freed slot accepts a new connection", || {
        let ws = ws.clone();
        async move { ws.try_connect().await.ok()?.ok() }
    })
    .await?;
    c.ping().await?;
    gw.client()
        .query("user", "d")
        .expect_refused()
        .await?
        .expect(503, "unavailable")?;
    Ok(())
}

/// A connection the client closed cleanly is no longer open: its
/// `max_connections` slot and its place in `/api/nodes` are released at
/// once, not after some internal close timeout. (5 s is far above any
/// scheduling delay and below the server's 10 s close grace.)
#[tokio::test]
async fn a_cleanly_closed_connection_frees_its_slot_promptly() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("limit_slot_release")
        .standard_config()
        .env("GATEWAY_MAX_CONNECTIONS", 1)
        .spawn()
        .await?;
    let mut a = gw.connect_user("a").await?;
    a.ping().await?;
    a.close_handshake(1000, "done").await?;
    drop(a);
    let api = gw.api();
    eventually(
        Duration::from_secs(5),
        "/api/nodes counts 0 connections",
        || {
            let api = api.clone();
            async move {
                api.nodes()
                    .await
                    .is_ok_and(|n| n["nodes"][0]["connections"] == 0)
            }
        },
    )
    .await?;
    let ws = gw.client().query("user", "b");
    let mut b = eventually_some(Duration::from_secs(5), "the freed slot accepts b", || {
        let ws = ws.clone();
        async move { ws.try_connect().await.ok()?.ok() }
    })
    .await?;
    b.ping().await?;
    Ok(())
}

#[tokio::test]
async fn subscriptions_above_the_per_connection_limit_are_forbidden() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("limit_max_channels")
        .standard_config()
        .env("GATEWAY_MAX_CHANNELS_PER_CONNECTION", 3)
        .spawn()
        .await?;
    let mut c = gw.connect_user("alice").await?;
    for ch in ["one", "two", "three"] {
        c.subscribe(ch).await?;
    }
    let r = c
        .request(json!({"op": "subscribe", "channel": "four", "id": "x"}))
        .await?;
    tests::check_error(&r, "forbidden")?;
    ensure!(r["id"] == "x", "error must echo the id: {r}");

    // The refused channel delivers nothing; the others still do.
    let api = gw.api();
    api.publish("four", json!("not-subscribed")).await?;
    api.publish("one", json!("subscribed")).await?;
    let m = c.expect_type("message", RECV_TIMEOUT).await?;
    ensure!(m["channel"] == "one", "refused subscription delivered {m}");

    // Another connection has its own budget; a freed slot can be reused.
    let mut other = gw.connect_user("bob").await?;
    other.subscribe("four").await?;
    c.unsubscribe("two").await?;
    c.subscribe("four").await?;
    Ok(())
}

#[tokio::test]
async fn exceeding_the_rate_limit_answers_rate_limited() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("limit_rate")
        .standard_config()
        .env("GATEWAY_RATE_LIMIT", 1)
        .env("GATEWAY_RATE_BURST", 5)
        .spawn()
        .await?;
    let mut c = gw.connect_user("alice").await?;
    let mut bystander = gw.connect_user("bob").await?;
    // Burst of 5, then 3 over: refused, but not a further burst (no 4501).
    for id in 1..=8 {
        c.send_json(&json!({"op": "ping", "id": id})).await?;
    }
    let mut pongs = 0;
    let mut limited = Vec::new();
    for _ in 1..=8 {
        let r = c.recv_json(RECV_TIMEOUT).await?;
        match r["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") => {
                tests::check_error(&r, "rate_limited")?;
                limited.push(r["id"].clone());
            }
            _ => bail!("unexpected frame {r}"),
        }
    }
    ensure!(
        pongs >= 5,
        "the burst of 5 must be served, got {pongs} pongs"
    );
    ensure!(
        !limited.is_empty(),
        "8 frames at once with burst 5 must be rate limited"
    );
    ensure!(
        limited
            .iter()
            .all(|id| id.as_u64().is_some_and(|n| (1..=8).contains(&n))),
        "rate_limited errors must echo the request ids: {limited:?}"
    );
    // The bucket refills at 1/s: stay quiet for a bit over a second, then the
    // connection works again. (This wait is the behaviour under test.)
    c.expect_nothing(Duration::from_millis(1500)).await?;
    c.ping().await?;
    bystander.ping().await?;
    Ok(())
}

#[tokio::test]
async fn sustained_abuse_closes_4501() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("limit_abuse")
        .standard_config()
        .env("GATEWAY_RATE_LIMIT", 2)
        .env("GATEWAY_RATE_BURST", 5)
        .spawn()
        .await?;
    let mut c = gw.connect_user("mallory").await?;
    let mut bystander = gw.connect_user("bob").await?;
    for id in 1..=100 {
        if c.send_json(&json!({"op": "ping", "id": id})).await.is_err() {
            break; // already closed by the server
        }
    }
    let (code, reason) = c.expect_close(RECV_TIMEOUT).await?;
    ensure!(
        code == 4501,
        "sustained abuse must close with 4501, got {code} {reason:?}"
    );
    ensure!(reason == "abuse", "close reason must be abuse: {reason:?}");
    bystander.ping().await?;
    Ok(())
}

/// A client that stops reading fills its queue and is closed with 4001;
/// a healthy subscriber of the same channel gets every publication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_4001_and_healthy_subscriber_gets_everything() -> Result<()> {
    const PAD: usize = 8000;
    const MAX_PUBLISH: u64 = 4000;
    let gw = GatewayBuilder::new()
        .name("limit_slow_consumer")
        .standard_config()
        .env("GATEWAY_QUEUE_BYTES", 131_072)
        .spawn()
        .await?;
    let api = gw.api();
    // A tiny receive buffer so the kernel soaks up little before the
    // server's queue has to hold the backlog.
    let mut slow = gw
        .client()
        .query("user", "slow")
        .recv_buffer(4096)
        .connect()
        .await?;
    slow.subscribe("big").await?;
    let mut healthy = gw.connect_user("healthy").await?;
    healthy.subscribe("big").await?;

    let reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        loop {
            let m = healthy
                .expect_type("message", Duration::from_secs(30))
                .await?;
            if m["data"] == "end" {
                return anyhow::Ok(seqs);
            }
            seqs.push(m["data"]["seq"].as_u64().unwrap_or(u64::MAX));
        }
    });

    let pad = "p".repeat(PAD);
    let mut published = 0;
    let mut slow_gone = false;
    while published < MAX_PUBLISH {
        api.publish("big", json!({"seq": published, "pad": pad}))
            .await?;
        published += 1;
        if published % 25 == 0 && !api.is_online("slow").await? {
            slow_gone = true;
            break;
        }
    }
    api.publish("big", json!("end")).await?;
    let seqs = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .context("healthy subscriber did not finish")???;
    let expected: Vec<u64> = (0..published).collect();
    ensure!(
        seqs == expected,
        "healthy subscriber must get all {published} publications in order; got {} (first gap near {:?})",
        seqs.len(),
        seqs.iter().zip(&expected).position(|(a, b)| a != b)
    );

    // Read what the slow client was sent: its backlog, then the close.
    let close = slow.expect_close(Duration::from_secs(30)).await;
    if !slow_gone {
        bail!(
            "the server still lists the slow consumer after {published} publications of {PAD} \
             bytes (queue_bytes 131072); its stream then gave: {close:?}"
        );
    }
    let (code, reason) = close.context("slow consumer's stream")?;
    ensure!(
        code == 4001,
        "slow consumer must be closed with 4001, got {code} {reason:?}"
    );
    ensure!(
        reason == "slow_consumer",
        "close reason must be slow_consumer: {reason:?}"
    );
    eventually(EVENTUALLY, "slow user offline", || {
        let api = api.clone();
        async move { api.is_online("slow").await.is_ok_and(|o| !o) }
    })
    .await?;
    Ok(())
}
