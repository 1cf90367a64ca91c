//! Issue 10, items 7 and 9 (the HTTP edge): the API takes JSON bodies only,
//! `Bearer` is case-insensitive, the API and the WebSocket path share one
//! JSON policy, and the pages and metrics are off or keyed once a key is
//! set. Real gateway, real HTTP.

use anyhow::{ensure, Result};
use serde_json::json;
use tests::{jwt, Gateway, GatewayBuilder, RECV_TIMEOUT};

const KEY: &str = "edge-test-api-key-0123456789";

#[tokio::test]
async fn api_refuses_bodies_that_are_not_json() -> Result<()> {
    let gw = Gateway::standard("edge_content_type").await?;
    let body = r#"{"channel":"news","data":1}"#;
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ] {
        let r = gw.api().post_raw("/api/publish", body, ct).await?;
        r.expect_error(415, "bad_request")?;
        ensure!(r.text.contains("application/json"), "{ct}: {}", r.text);
    }
    let r = gw
        .api()
        .post_raw(
            "/api/broadcast",
            r#"{"data":1}"#,
            "text/plain;charset=utf-8",
        )
        .await?;
    r.expect_error(415, "bad_request")?;
    // JSON (with parameters) still works.
    let r = gw
        .api()
        .post_raw("/api/publish", body, "application/json; charset=utf-8")
        .await?;
    ensure!(r.status == 200, "{}", r.text);
    Ok(())
}

#[tokio::test]
async fn bearer_is_case_insensitive() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("edge_bearer")
        .standard_config()
        .env("GATEWAY_API_KEY", KEY)
        .env("GATEWAY_JWT_SECRET", jwt::SECRET)
        .spawn()
        .await?;
    let http = reqwest::Client::new();
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let r = http
            .post(format!("{}/api/broadcast", gw.http_url()))
            .header("authorization", format!("{scheme} {KEY}"))
            .json(&json!({"data": 1}))
            .send()
            .await?;
        ensure!(r.status() == 200, "API key with {scheme:?}: {}", r.status());
    }
    // Wrong keys of every length are refused.
    for key in ["", "x", &KEY[..KEY.len() - 1], &format!("{KEY}x")] {
        let r = gw
            .api_with_key(key)
            .post("/api/broadcast", &json!({"data": 1}))
            .await?;
        r.expect_error(401, "unauthorized")?;
    }
    let token = jwt::hs256(jwt::SECRET, &jwt::claims("carol"))?;
    for scheme in ["bearer", "BEARER"] {
        let c = gw
            .client()
            .header("authorization", &format!("{scheme} {token}"))
            .connect()
            .await?;
        ensure!(
            c.user().as_deref() == Some("carol"),
            "{scheme}: {:?}",
            c.user()
        );
    }
    Ok(())
}

#[tokio::test]
async fn api_and_websocket_share_one_json_policy() -> Result<()> {
    let gw = Gateway::standard("edge_json_policy").await?;
    let deep = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    for data in [deep.as_str(), "1e999999"] {
        let body = format!(r#"{{"channel":"news","data":{data}}}"#);
        let r = gw
            .api()
            .post_raw("/api/publish", &body, "application/json")
            .await?;
        r.expect_error(400, "bad_request")?;
        let mut c = gw.connect_user("u").await?;
        c.send_raw_text(&format!(
            r#"{{"op":"publish","channel":"news","data":{data}}}"#
        ))
        .await?;
        c.expect_error("bad_request", RECV_TIMEOUT).await?;
    }
    Ok(())
}

#[tokio::test]
async fn pages_are_off_and_metrics_keyed_when_a_key_is_set() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("edge_pages_off")
        .env("GATEWAY_API_KEY", KEY)
        .env("GATEWAY_METRICS_REQUIRE_KEY", true)
        .spawn()
        .await?;
    let http = reqwest::Client::new();
    for path in ["/status", "/demo"] {
        let r = http.get(format!("{}{path}", gw.http_url())).send().await?;
        // Not served: the API's fallback answers (401 without the key).
        let status = r.status().as_u16();
        ensure!(status == 404 || status == 401, "{path}: {status}");
    }
    let r = http
        .get(format!("{}/metrics", gw.http_url()))
        .send()
        .await?;
    ensure!(r.status() == 401, "/metrics without key: {}", r.status());
    let r = http
        .get(format!("{}/metrics", gw.http_url()))
        .bearer_auth(KEY)
        .send()
        .await?;
    ensure!(r.status() == 200, "/metrics with key: {}", r.status());
    // Health probes never need the key.
    ensure!(gw.api().healthz().await? == 200, "healthz");
    // Explicitly enabled pages come back.
    let gw = GatewayBuilder::new()
        .name("edge_pages_on")
        .env("GATEWAY_API_KEY", KEY)
        .env("GATEWAY_PAGES", true)
        .spawn()
        .await?;
    let r = http.get(format!("{}/status", gw.http_url())).send().await?;
    ensure!(r.status() == 200, "/status enabled: {}", r.status());
    Ok(())
}
