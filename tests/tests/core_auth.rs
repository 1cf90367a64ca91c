//! Authentication and authorisation: JWT (HS256, RS256) accepted and
//! refused before the upgrade, channel claims, token expiry during a
//! connection, the Origin allow-list, the API key and open development mode
//! (docs/protocol.md, "Connecting" and "JWT claims").

use std::time::Duration;

use anyhow::{ensure, Result};
use serde_json::{json, Value};
use tests::jwt::{self, SECRET};
use tests::{Gateway, GatewayBuilder, RECV_TIMEOUT};

async fn hs256_gateway(name: &str) -> Result<Gateway> {
    GatewayBuilder::new()
        .name(name)
        .standard_config()
        .env("GATEWAY_JWT_SECRET", SECRET)
        .spawn()
        .await
}

async fn rs256_gateway(name: &str) -> Result<Gateway> {
    GatewayBuilder::new()
        .name(name)
        .standard_config()
        .env(
            "GATEWAY_JWT_PUBLIC_KEY_FILE",
            jwt::rs256_public_key_path().display(),
        )
        .env("GATEWAY_AUTH_REQUIRED", "true")
        .spawn()
        .await
}

#[tokio::test]
async fn hs256_token_in_header_or_query_names_the_user() -> Result<()> {
    let gw = hs256_gateway("auth_hs256_ok").await?;
    let token = jwt::hs256(SECRET, &jwt::claims("alice"))?;
    let c = gw.client().bearer(&token).connect().await?;
    ensure!(
        c.user().as_deref() == Some("alice"),
        "welcome: {}",
        c.welcome
    );
    let c = gw.client().token_query(&token).connect().await?;
    ensure!(
        c.user().as_deref() == Some("alice"),
        "welcome via ?token=: {}",
        c.welcome
    );
    Ok(())
}

#[tokio::test]
async fn header_token_takes_precedence_over_query_token() -> Result<()> {
    let gw = hs256_gateway("auth_precedence").await?;
    let header = jwt::hs256(SECRET, &jwt::claims("from-header"))?;
    let query = jwt::hs256(SECRET, &jwt::claims("from-query"))?;
    let c = gw
        .client()
        .bearer(&header)
        .token_query(&query)
        .connect()
        .await?;
    ensure!(
        c.user().as_deref() == Some("from-header"),
        "welcome: {}",
        c.welcome
    );
    Ok(())
}

#[tokio::test]
async fn expired_token_is_refused_401() -> Result<()> {
    let gw = hs256_gateway("auth_expired").await?;
    let token = jwt::hs256(SECRET, &jwt::claims_expiring("alice", -3600))?;
    gw.client()
        .bearer(&token)
        .expect_refused()
        .await?
        .expect(401, "unauthorized")
}

#[tokio::test]
async fn badly_signed_token_is_refused_401() -> Result<()> {
    let gw = hs256_gateway("auth_bad_sig").await?;
    let other = jwt::hs256("some-other-secret-0123456789", &jwt::claims("alice"))?;
    gw.client()
        .bearer(&other)
        .expect_refused()
        .await?
        .expect(401, "unauthorized")?;
    let tampered = jwt::tamper_signature(&jwt::hs256(SECRET, &jwt::claims("alice"))?);
    gw.client()
        .bearer(&tampered)
        .expect_refused()
        .await?
        .expect(401, "unauthorized")?;
    gw.client()
        .bearer("not.a.jwt")
        .expect_refused()
        .await?
        .expect(401, "unauthorized")
}

#[tokio::test]
async fn alg_none_token_is_refused_401() -> Result<()> {
    let gw = hs256_gateway("auth_alg_none").await?;
    let token = jwt::alg_none(&jwt::claims("alice"));
    gw.client()
        .bearer(&token)
        .expect_refused()
        .await?
        .expect(401, "unauthorized")?;
    gw.client()
        .token_query(&token)
        .expect_refused()
        .await?
        .expect(401, "unauthorized")
}

#[tokio::test]
async fn rs256_token_is_refused_when_hs256_is_configured() -> Result<()> {
    let gw = hs256_gateway("auth_rs_on_hs").await?;
    let token = jwt::rs256(&jwt::claims("alice"))?;
    gw.client()
        .bearer(&token)
        .expect_refused()
        .await?
        .expect(401, "unauthorized")
}

#[tokio::test]
async fn rs256_accepted_and_hs256_confusion_refused_when_rs256_configured() -> Result<()> {
    let gw = rs256_gateway("auth_rs256").await?;
    let good = jwt::rs256(&jwt::claims("alice"))?;
    let c = gw.client().bearer(&good).connect().await?;
    ensure!(
        c.user().as_deref() == Some("alice"),
        "welcome: {}",
        c.welcome
    );

    let confused = jwt::hs256_keyed_with_public_key(&jwt::claims("alice"))?;
    gw.client()
        .bearer(&confused)
        .expect_refused()
        .await?
        .expect(401, "unauthorized")?;
    let foreign = jwt::rs256_foreign_key(&jwt::claims("alice"))?;
    gw.client()
        .bearer(&foreign)
        .expect_refused()
        .await?
        .expect(401, "unauthorized")?;
    let none = jwt::alg_none(&jwt::claims("alice"));
    gw.client()
        .bearer(&none)
        .expect_refused()
        .await?
        .expect(401, "unauthorized")
}

#[tokio::test]
async fn missing_token_is_refused_when_auth_is_required() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("auth_required")
        .standard_config()
        .env("GATEWAY_JWT_SECRET", SECRET)
        .env("GATEWAY_AUTH_REQUIRED", "true")
        .spawn()
        .await?;
    gw.client()
        .expect_refused()
        .await?
        .expect(401, "unauthorized")?;
    // ?user= is development mode only; it is no substitute for a token.
    gw.client()
        .query("user", "alice")
        .expect_refused()
        .await?
        .expect(401, "unauthorized")?;
    let token = jwt::hs256(SECRET, &jwt::claims("alice"))?;
    gw.client().bearer(&token).connect().await?;
    Ok(())
}

#[tokio::test]
async fn without_auth_required_a_missing_token_is_anonymous_and_user_param_ignored() -> Result<()> {
    let gw = hs256_gateway("auth_optional").await?;
    let c = gw.connect_anon().await?;
    ensure!(
        c.welcome.get("user") == Some(&Value::Null),
        "anonymous: {}",
        c.welcome
    );
    // With a key configured ?user= must not name the user.
    match gw.client().query("user", "admin").try_connect().await? {
        Ok(c) => ensure!(
            c.user().as_deref() != Some("admin"),
            "?user= authenticated a user although a JWT key is configured: {}",
            c.welcome
        ),
        Err(refused) => refused.expect(401, "unauthorized")?,
    }
    Ok(())
}

#[tokio::test]
async fn channel_claims_restrict_subscribe_and_publish() -> Result<()> {
    let gw = hs256_gateway("auth_channel_claims").await?;
    let mut claims = jwt::claims("alice");
    claims["channels"] = json!(["chat:*", "news"]);
    claims["publish"] = json!(["chat:allowed"]);
    let mut c = gw
        .client()
        .bearer(&jwt::hs256(SECRET, &claims)?)
        .connect()
        .await?;

    c.subscribe("chat:anything").await?;
    c.subscribe("news").await?;
    for channel in ["newsroom", "hist:x", "chat"] {
        let r = c
            .request(json!({"op": "subscribe", "channel": channel, "id": channel}))
            .await?;
        tests::check_error(&r, "forbidden")?;
        ensure!(r["id"] == channel, "error must echo the id: {r}");
    }
    c.publish("chat:allowed", json!(1)).await?;
    let r = c
        .request(json!({"op": "publish", "channel": "chat:other", "data": 1}))
        .await?;
    tests::check_error(&r, "forbidden")?;
    c.ping().await?;
    Ok(())
}

#[tokio::test]
async fn token_info_is_shown_in_presence() -> Result<()> {
    let gw = hs256_gateway("auth_info_presence").await?;
    let mut claims = jwt::claims("alice");
    claims["info"] = json!({"name": "Alice A."});
    let mut c = gw
        .client()
        .bearer(&jwt::hs256(SECRET, &claims)?)
        .connect()
        .await?;
    c.subscribe("chat:room").await?;
    let p = c.presence("chat:room").await?;
    let members = p["members"].as_array().cloned().unwrap_or_default();
    ensure!(
        members
            .iter()
            .any(|m| m["user"] == "alice" && m["info"] == json!({"name": "Alice A."})),
        "presence must show the token's info: {p}"
    );
    Ok(())
}

#[tokio::test]
async fn token_expiry_during_the_connection_closes_4002() -> Result<()> {
    // exp a few seconds ahead: enough to connect on a loaded machine.
    let gw = hs256_gateway("auth_expiry_close").await?;
    let token = jwt::hs256(SECRET, &jwt::claims_expiring("alice", 5))?;
    let mut c = gw.client().bearer(&token).connect().await?;
    let mut other = gw
        .client()
        .bearer(&jwt::hs256(SECRET, &jwt::claims("bob"))?)
        .connect()
        .await?;
    let (code, reason) = c.expect_close(Duration::from_secs(25)).await?;
    ensure!(
        code == 4002,
        "token expiry must close with 4002, got {code} {reason:?}"
    );
    ensure!(
        reason == "token_expired",
        "close reason must be token_expired: {reason:?}"
    );
    other.ping().await?;
    Ok(())
}

#[tokio::test]
async fn origin_outside_the_allow_list_is_refused_403() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("auth_origin")
        .standard_config()
        .env(
            "GATEWAY_ALLOWED_ORIGINS",
            "https://app.example.com,https://admin.example.com/",
        )
        .spawn()
        .await?;
    gw.client()
        .origin("https://evil.example.com")
        .expect_refused()
        .await?
        .expect(403, "forbidden")?;
    gw.client()
        .origin("https://app.example.com")
        .connect()
        .await?;
    gw.client()
        .origin("https://admin.example.com")
        .connect()
        .await?;
    Ok(())
}

#[tokio::test]
async fn api_key_is_required_when_configured() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("auth_api_key")
        .standard_config()
        .env("GATEWAY_API_KEY", "api-key-for-tests")
        .spawn()
        .await?;
    let mut c = gw.connect_user("alice").await?;
    c.subscribe("news").await?;

    let open = gw.api();
    open.get("/api/nodes")
        .await?
        .expect_error(401, "unauthorized")?;
    open.post(
        "/api/publish",
        &json!({"channel": "news", "data": "sneaky"}),
    )
    .await?
    .expect_error(401, "unauthorized")?;
    let wrong = gw.api_with_key("wrong-key");
    wrong
        .get("/api/nodes")
        .await?
        .expect_error(401, "unauthorized")?;

    let keyed = gw.api_with_key("api-key-for-tests");
    keyed.nodes().await?;
    keyed.publish("news", json!("legit")).await?;
    let m = c.expect_type("message", RECV_TIMEOUT).await?;
    ensure!(
        m["data"] == "legit",
        "the refused publication must not be delivered: {m}"
    );
    Ok(())
}

#[tokio::test]
async fn open_development_mode_names_users_with_query_param() -> Result<()> {
    let gw = Gateway::standard("auth_dev_mode").await?;
    let c = gw.connect_user("dev-alice").await?;
    ensure!(
        c.user().as_deref() == Some("dev-alice"),
        "welcome: {}",
        c.welcome
    );
    let anon = gw.connect_anon().await?;
    ensure!(
        anon.welcome.get("user") == Some(&Value::Null),
        "welcome: {}",
        anon.welcome
    );
    Ok(())
}
