//! Hardening (issue 10, item 9, protocol part): binary frames pay the rate
//! limit, invalid UTF-8 closes with 1007, JWT `nbf`/`iss`/`aud`, and the
//! presence reply's member cap (docs/protocol.md, docs/security.md
//! "Clients: replay, presence churn, tokens").

use anyhow::{ensure, Context, Result};
use serde_json::json;
use tests::{eventually, jwt, opcode, Gateway, GatewayBuilder, RawWs, EVENTUALLY, RECV_TIMEOUT};

/// Binary frames are refused, but each one still takes a rate-limit token:
/// a flood of them gets `rate_limited` and then the abuse close, exactly as
/// a flood of text frames does.
#[tokio::test]
async fn binary_frames_are_charged_to_the_rate_limit() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("hp_binary_rate")
        .standard_config()
        .env("GATEWAY_RATE_LIMIT", 1)
        .env("GATEWAY_RATE_BURST", 3)
        .spawn()
        .await?;
    let mut c = gw.connect_user("mallory").await?;
    for _ in 0..6 {
        c.send_binary(b"\x01\x02".to_vec()).await?;
    }
    let mut codes = Vec::new();
    for _ in 0..6 {
        let e = c.expect_type("error", RECV_TIMEOUT).await?;
        codes.push(e["code"].as_str().unwrap_or_default().to_owned());
    }
    ensure!(
        codes.iter().any(|c| c == "rate_limited"),
        "6 binary frames against a burst of 3 must meet the rate limit; got {codes:?}"
    );
    Ok(())
}

/// A text frame that is not UTF-8 closes with 1007 (RFC 6455 7.4.1), not 1000.
#[tokio::test]
async fn invalid_utf8_text_closes_with_1007() -> Result<()> {
    let gw = Gateway::standard("hp_utf8").await?;
    let mut raw = RawWs::connect(gw.addr()?, "/ws?user=mallory").await?;
    raw.send_frame(opcode::TEXT, b"{\"op\":\"ping\",\"x\":\"\xff\xfe\"}")
        .await?;
    let report = raw.read_until_close(RECV_TIMEOUT).await?;
    let code = report.close.as_ref().map(|c| c.0);
    ensure!(
        code == Some(1007),
        "invalid UTF-8 must close with 1007, got {:?}",
        report.close
    );
    Ok(())
}

async fn jwt_gateway(name: &str, extra: &[(&str, &str)]) -> Result<Gateway> {
    let mut b = GatewayBuilder::new()
        .name(name)
        .standard_config()
        .env("GATEWAY_JWT_SECRET", jwt::SECRET)
        .env("GATEWAY_AUTH_REQUIRED", "true");
    for (k, v) in extra {
        b = b.env(k, v);
    }
    b.spawn().await
}

/// A token whose `nbf` is tomorrow is not valid today.
#[tokio::test]
async fn a_token_not_valid_before_tomorrow_is_refused_today() -> Result<()> {
    let gw = jwt_gateway("hp_jwt_nbf", &[]).await?;
    let mut claims = jwt::claims("alice");
    claims["nbf"] = json!(jwt::now_secs() + 86_400);
    let token = jwt::hs256(jwt::SECRET, &claims)?;
    gw.client()
        .bearer(&token)
        .expect_refused()
        .await?
        .expect(401, "unauthorized")?;
    // nbf in the past is fine.
    let mut claims = jwt::claims("alice");
    claims["nbf"] = json!(jwt::now_secs() - 10);
    let token = jwt::hs256(jwt::SECRET, &claims)?;
    let mut c = gw.client().bearer(&token).connect().await?;
    c.ping().await?;
    Ok(())
}

/// With `jwt_issuer` and `jwt_audience` set, a token is accepted only with
/// that issuer and that audience (a string or an array containing it).
#[tokio::test]
async fn configured_issuer_and_audience_are_required_and_matched() -> Result<()> {
    let gw = jwt_gateway(
        "hp_jwt_iss_aud",
        &[
            ("GATEWAY_JWT_ISSUER", "https://auth.example"),
            ("GATEWAY_JWT_AUDIENCE", "gateway"),
        ],
    )
    .await?;
    let token = |iss: Option<&str>, aud: Option<serde_json::Value>| {
        let mut claims = jwt::claims("alice");
        if let Some(iss) = iss {
            claims["iss"] = json!(iss);
        }
        if let Some(aud) = aud {
            claims["aud"] = aud;
        }
        jwt::hs256(jwt::SECRET, &claims)
    };
    for (what, t) in [
        (
            "matching iss + aud",
            token(Some("https://auth.example"), Some(json!("gateway")))?,
        ),
        (
            "aud array containing ours",
            token(
                Some("https://auth.example"),
                Some(json!(["other", "gateway"])),
            )?,
        ),
    ] {
        let mut c = gw
            .client()
            .bearer(&t)
            .connect()
            .await
            .with_context(|| format!("{what} must be accepted"))?;
        c.ping().await?;
    }
    for (what, t) in [
        (
            "wrong aud",
            token(Some("https://auth.example"), Some(json!("other")))?,
        ),
        ("no aud", token(Some("https://auth.example"), None)?),
        (
            "wrong iss",
            token(Some("https://evil.example"), Some(json!("gateway")))?,
        ),
        ("no iss", token(None, Some(json!("gateway")))?),
    ] {
        gw.client()
            .bearer(&t)
            .expect_refused()
            .await
            .with_context(|| format!("{what} must be refused"))?
            .expect(401, "unauthorized")
            .with_context(|| what.to_owned())?;
    }
    Ok(())
}

/// Without `jwt_audience`, a token that carries an `aud` is still accepted
/// (the audience is only checked when one is configured).
#[tokio::test]
async fn without_a_configured_audience_a_token_with_aud_is_accepted() -> Result<()> {
    let gw = jwt_gateway("hp_jwt_aud_unset", &[]).await?;
    let mut claims = jwt::claims("alice");
    claims["aud"] = json!("whatever");
    claims["iss"] = json!("whoever");
    let token = jwt::hs256(jwt::SECRET, &claims)?;
    let mut c = gw.client().bearer(&token).connect().await?;
    c.ping().await?;
    Ok(())
}

/// A presence reply lists at most `presence_reply_max_members` members and
/// says how many there are (`total`) and whether the list was cut
/// (`truncated`).
#[tokio::test]
async fn presence_reply_is_capped_and_tells_the_total() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("hp_presence_cap")
        .standard_config()
        .env("GATEWAY_PRESENCE_REPLY_MAX_MEMBERS", 3)
        .spawn()
        .await?;
    let mut members = Vec::new();
    for i in 0..5 {
        let mut c = gw.connect_user(&format!("u{i}")).await?;
        c.subscribe("chat:capped").await?;
        members.push(c);
    }
    let mut asker = gw.connect_user("asker").await?;
    let reply = asker.presence("chat:capped").await?;
    let listed = reply["members"].as_array().map_or(0, Vec::len);
    ensure!(listed == 3, "3 members listed, got {listed}: {reply}");
    ensure!(reply["total"] == 5, "total 5: {reply}");
    ensure!(reply["truncated"] == true, "truncated: {reply}");
    // Below the cap: the whole list, truncated false.
    drop(members.split_off(2));
    let api = gw.api();
    eventually(
        EVENTUALLY,
        "the members that left are gone from presence",
        || {
            let api = api.clone();
            async move {
                api.presence("chat:capped")
                    .await
                    .ok()
                    .and_then(|p| p["members"].as_array().map(Vec::len))
                    == Some(2)
            }
        },
    )
    .await?;
    let reply = asker.presence("chat:capped").await?;
    ensure!(
        reply["total"] == 2 && reply["truncated"] == false,
        "{reply}"
    );
    ensure!(
        reply["members"].as_array().map_or(0, Vec::len) == 2,
        "{reply}"
    );
    Ok(())
}
