//! Issue 10, items 1 and 8: per-address connection and connect-rate
//! limits, per-user connection limits, and the trusted-proxy address
//! resolution they use. Real gateway, real sockets on loopback.

use anyhow::{ensure, Result};
use tests::{GatewayBuilder, EVENTUALLY};

#[tokio::test]
async fn one_address_cannot_take_more_than_its_connections() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("edge_per_ip")
        .env("GATEWAY_IP_LIMITS_PRIVATE", true)
        .env("GATEWAY_MAX_CONNECTIONS_PER_IP", 3)
        .spawn()
        .await?;
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(gw.connect_user(&format!("u{i}")).await?);
    }
    let refused = gw.client().query("user", "u9").expect_refused().await?;
    refused.expect(429, "rate_limited")?;
    ensure!(
        refused.text.contains("address"),
        "the refusal names the reason: {}",
        refused.text
    );
    // A slot comes back when a connection leaves.
    held.pop();
    tests::eventually(EVENTUALLY, "a connection after one left", || async {
        gw.connect_user("u9").await.is_ok()
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn one_address_cannot_connect_faster_than_its_rate() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("edge_connect_rate")
        .env("GATEWAY_IP_LIMITS_PRIVATE", true)
        .env("GATEWAY_CONNECT_RATE_PER_IP", 1)
        .env("GATEWAY_CONNECT_BURST_PER_IP", 3)
        .spawn()
        .await?;
    let mut refused = None;
    // The burst is 3 connects; at 1/s at most a few more can slip in while
    // this loop runs, so 20 attempts must meet a refusal.
    for i in 0..20 {
        match gw
            .client()
            .query("user", &format!("u{i}"))
            .try_connect()
            .await?
        {
            Ok(c) => drop(c),
            Err(r) => {
                refused = Some(r);
                break;
            }
        }
    }
    let refused = refused.ok_or_else(|| anyhow::anyhow!("20 connects in a row were accepted"))?;
    refused.expect(429, "rate_limited")?;
    Ok(())
}

#[tokio::test]
async fn loopback_is_not_limited_by_default() -> Result<()> {
    // Behind a load balancer without trusted proxies every client has the
    // balancer's (private) address: the defaults must not refuse them.
    let gw = GatewayBuilder::new()
        .name("edge_private_exempt")
        .env("GATEWAY_MAX_CONNECTIONS_PER_IP", 2)
        .env("GATEWAY_CONNECT_RATE_PER_IP", 1)
        .env("GATEWAY_CONNECT_BURST_PER_IP", 1)
        .spawn()
        .await?;
    let mut held = Vec::new();
    for i in 0..6 {
        held.push(gw.connect_user(&format!("u{i}")).await?);
    }
    Ok(())
}

#[tokio::test]
async fn forwarded_clients_are_limited_by_their_own_address() -> Result<()> {
    // 127.0.0.1 is the trusted proxy: its clients are told apart by
    // X-Forwarded-For, and the proxy itself is never limited.
    let gw = GatewayBuilder::new()
        .name("edge_forwarded")
        .env("GATEWAY_TRUSTED_PROXIES", "127.0.0.1")
        .env("GATEWAY_MAX_CONNECTIONS_PER_IP", 2)
        .spawn()
        .await?;
    let from = |ip: &str, user: &str| {
        gw.client()
            .query("user", user)
            .header("x-forwarded-for", ip)
    };
    let _a1 = from("203.0.113.7", "a1").connect().await?;
    let _a2 = from("203.0.113.7", "a2").connect().await?;
    from("203.0.113.7", "a3")
        .expect_refused()
        .await?
        .expect(429, "rate_limited")?;
    // Another client behind the same proxy is unaffected.
    let _b = from("198.51.100.1", "b1").connect().await?;
    let _c = from("198.51.100.1", "b2").connect().await?;
    Ok(())
}

#[tokio::test]
async fn one_user_cannot_take_more_than_its_connections() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("edge_per_user")
        .env("GATEWAY_MAX_CONNECTIONS_PER_USER", 2)
        .spawn()
        .await?;
    let _a = gw.connect_user("alice").await?;
    let mut b = gw.connect_user("alice").await?;
    let refused = gw.client().query("user", "alice").expect_refused().await?;
    refused.expect(429, "rate_limited")?;
    ensure!(refused.text.contains("user"), "{}", refused.text);
    // Others are unaffected; alice gets a slot back when one leaves.
    let _bob = gw.connect_user("bob").await?;
    b.close(1000, "bye").await?;
    drop(b);
    tests::eventually(EVENTUALLY, "alice connects after one left", || async {
        gw.connect_user("alice").await.is_ok()
    })
    .await?;
    Ok(())
}
