//! In-band token refresh (docs/protocol.md, op `refresh`; docs/backend.md,
//! "Token refresh"): a fresh JWT of the same user moves the connection's
//! expiry without a reconnect; another user's token, an invalid or expired
//! one are refused and leave the old expiry in force.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use serde_json::json;
use tests::jwt::{self, SECRET};
use tests::{Gateway, GatewayBuilder, RECV_TIMEOUT};

async fn gateway(name: &str) -> Result<Gateway> {
    GatewayBuilder::new()
        .name(name)
        .standard_config()
        .env("GATEWAY_JWT_SECRET", SECRET)
        .spawn()
        .await
}

#[tokio::test]
async fn a_fresh_token_extends_the_connection_past_its_first_exp() -> Result<()> {
    let gw = gateway("refresh_extends").await?;
    let first = jwt::hs256(SECRET, &jwt::claims_expiring("alice", 2))?;
    let mut c = gw.client().bearer(&first).connect().await?;
    let started = Instant::now();
    let exp = jwt::now_secs() + 3600;
    let fresh = jwt::hs256(SECRET, &json!({"sub": "alice", "exp": exp}))?;
    let r = c
        .request_ok(
            json!({"op": "refresh", "id": 9, "token": fresh}),
            "refreshed",
        )
        .await?;
    ensure!(r["id"] == 9 && r["exp"] == exp, "{r}");
    // Well past the first token's expiry: nothing, in particular no close.
    c.expect_nothing(Duration::from_secs(3)).await?;
    ensure!(
        started.elapsed() >= Duration::from_secs(3),
        "waited long enough"
    );
    c.request_ok(json!({"op": "ping"}), "pong").await?;
    Ok(())
}

#[tokio::test]
async fn another_users_or_a_bad_token_is_refused_and_the_old_exp_still_closes_4002() -> Result<()> {
    let gw = gateway("refresh_refused").await?;
    let first = jwt::hs256(SECRET, &jwt::claims_expiring("alice", 2))?;
    let mut c = gw.client().bearer(&first).connect().await?;
    let mallory = jwt::hs256(SECRET, &jwt::claims_expiring("mallory", 3600))?;
    let r = c
        .request(json!({"op": "refresh", "token": mallory}))
        .await?;
    tests::check_error(&r, "forbidden")?;
    let forged = jwt::hs256(
        "another-secret-000000000",
        &jwt::claims_expiring("alice", 3600),
    )?;
    let r = c.request(json!({"op": "refresh", "token": forged})).await?;
    tests::check_error(&r, "unauthorized")?;
    let expired = jwt::hs256(SECRET, &jwt::claims_expiring("alice", -10))?;
    let r = c
        .request(json!({"op": "refresh", "token": expired}))
        .await?;
    tests::check_error(&r, "unauthorized")?;
    let r = c.request(json!({"op": "refresh", "id": "m"})).await?;
    tests::check_error(&r, "bad_request")?;
    let (code, reason) = c.expect_close(RECV_TIMEOUT).await?;
    ensure!(code == 4002, "closed with {code} {reason}");
    Ok(())
}

#[tokio::test]
async fn a_refreshed_connection_still_closes_4002_at_its_new_exp() -> Result<()> {
    let gw = gateway("refresh_then_expire").await?;
    let first = jwt::hs256(SECRET, &jwt::claims_expiring("alice", 1))?;
    let mut c = gw.client().bearer(&first).connect().await?;
    let started = Instant::now();
    let fresh = jwt::hs256(SECRET, &jwt::claims_expiring("alice", 3))?;
    c.request_ok(json!({"op": "refresh", "token": fresh}), "refreshed")
        .await?;
    let (code, _) = c.expect_close(RECV_TIMEOUT).await?;
    ensure!(code == 4002, "closed with {code}");
    ensure!(
        started.elapsed() >= Duration::from_millis(1900),
        "closed at the old exp: {:?}",
        started.elapsed()
    );
    Ok(())
}
