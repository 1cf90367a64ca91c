//! HTTP server API against one embedded node: error shape, user status,
//! nodes, presence, disconnects, health and metrics
//! (docs/protocol.md, "HTTP server API v1").

use anyhow::{ensure, Context, Result};
use serde_json::json;
use tests::{eventually, Gateway, GatewayBuilder, EVENTUALLY, RECV_TIMEOUT};

#[tokio::test]
async fn api_errors_have_documented_shape() -> Result<()> {
    let gw = Gateway::standard("api_errors").await?;
    let api = gw.api();

    let r = api.post("/api/publish", &json!({"data": 1})).await?;
    r.expect_error(400, "bad_request")
        .context("publish without channel")?;

    let r = api
        .post(
            "/api/publish",
            &json!({"channel": "bad channel", "data": 1}),
        )
        .await?;
    r.expect_error(400, "bad_request")
        .context("publish to an invalid channel name")?;

    let r = api
        .post("/api/publish", &json!({"channel": "nosuchns:x", "data": 1}))
        .await?;
    r.expect_error(400, "bad_request")
        .context("publish to an unknown namespace")?;

    let r = api
        .post("/api/publish", &json!({"channel": 7, "data": 1}))
        .await?;
    r.expect_error(400, "bad_request")
        .context("publish with a numeric channel")?;

    let r = api
        .post_raw("/api/publish", "{not json", "application/json")
        .await?;
    r.expect_error(400, "bad_request")
        .context("publish with a non-JSON body")?;

    let r = api.post("/api/broadcast", &json!({})).await?;
    r.expect_error(400, "bad_request")
        .context("broadcast without data")?;

    // Query strings and path segments that do not parse, and a method a
    // route does not take: the same JSON error shape, not axum's text.
    for path in [
        "/api/channels/hist:x/history?limit=abc",
        "/api/channels/hist:x/history?since=-1",
        "/api/channels?limit=x",
        "/api/users/%FF",
    ] {
        let r = api.get(path).await?;
        r.expect_error(400, "bad_request").context(path)?;
        ensure!(
            r.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{path}: a message says what is wrong: {}",
            r.text
        );
    }
    let r = api.get("/api/publish").await?;
    r.expect_error(405, "bad_request")
        .context("GET on a POST route")?;
    Ok(())
}

#[tokio::test]
async fn user_status_lists_every_connection() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("api_user_status")
        .standard_config()
        .env("GATEWAY_NODE_ID", "unode")
        .spawn()
        .await?;
    let api = gw.api();
    let nobody = api.user("nobody").await?;
    ensure!(nobody["user"] == "nobody", "user field: {nobody}");
    ensure!(
        nobody["online"] == false,
        "offline user must be online: false: {nobody}"
    );
    ensure!(
        nobody["connections"] == json!([]),
        "offline user has no connections: {nobody}"
    );

    let phone = gw.connect_user("alice").await?;
    let laptop = gw.connect_user("alice").await?;
    let expected: Vec<String> = vec![phone.conn(), laptop.conn()];
    let body = tests::eventually_some(EVENTUALLY, "alice online with 2 connections", || async {
        let body = api.user("alice").await.ok()?;
        (body["connections"].as_array()?.len() == 2).then_some(body)
    })
    .await?;
    ensure!(
        body["user"] == "alice" && body["online"] == true,
        "user status: {body}"
    );
    let conns = body["connections"].as_array().cloned().unwrap_or_default();
    for conn in &expected {
        ensure!(
            conns
                .iter()
                .any(|c| c["conn"] == conn.as_str() && c["node"] == "unode"),
            "connection {conn} on node unode missing from {body}"
        );
    }

    drop(phone);
    drop(laptop);
    eventually(
        EVENTUALLY,
        "alice offline after both devices left",
        || async { api.is_online("alice").await.is_ok_and(|online| !online) },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn nodes_lists_this_node_with_counts() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("api_nodes")
        .standard_config()
        .env("GATEWAY_NODE_ID", "nodes-test")
        .spawn()
        .await?;
    let api = gw.api();
    let mut a = gw.connect_user("alice").await?;
    let mut b = gw.connect_user("bob").await?;
    let _c = gw.connect_anon().await?;
    a.subscribe("news").await?;
    b.subscribe("news").await?;
    a.subscribe("chat:room").await?;

    let node = tests::eventually_some(EVENTUALLY, "node reports 3 connections", || async {
        let body = api.nodes().await.ok()?;
        let node = body["nodes"].as_array()?.first()?.clone();
        (node["connections"] == 3).then_some(body)
    })
    .await?;
    let nodes = node["nodes"].as_array().cloned().unwrap_or_default();
    ensure!(
        nodes.len() == 1,
        "a single node must list itself only: {node}"
    );
    let me = &nodes[0];
    ensure!(me["id"] == "nodes-test", "node id: {me}");
    ensure!(
        me["subscriptions"].as_u64().is_some_and(|n| n >= 2),
        "subscriptions: {me}"
    );
    ensure!(!me["started_at"].is_null(), "started_at missing: {me}");
    ensure!(
        me["version"].as_str().is_some_and(|v| !v.is_empty()),
        "version: {me}"
    );
    Ok(())
}

#[tokio::test]
async fn http_presence_lists_members_with_node() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("api_presence")
        .standard_config()
        .env("GATEWAY_NODE_ID", "presnode")
        .spawn()
        .await?;
    let api = gw.api();
    let mut alice = gw.connect_user("alice").await?;
    let mut bob = gw.connect_user("bob").await?;
    alice.subscribe("chat:lobby").await?;
    bob.subscribe("chat:lobby").await?;
    let body = tests::eventually_some(EVENTUALLY, "2 members in chat:lobby", || async {
        let body = api.presence("chat:lobby").await.ok()?;
        (body["members"].as_array()?.len() == 2).then_some(body)
    })
    .await?;
    ensure!(body["channel"] == "chat:lobby", "presence channel: {body}");
    let members = body["members"].as_array().cloned().unwrap_or_default();
    for c in [&alice, &bob] {
        let user = c.user().unwrap_or_default();
        ensure!(
            members.iter().any(|m| m["user"] == user.as_str()
                && m["conn"] == c.conn().as_str()
                && m["node"] == "presnode"),
            "member {user} missing or wrong: {body}"
        );
    }
    bob.unsubscribe("chat:lobby").await?;
    eventually(EVENTUALLY, "bob leaves the presence list", || async {
        api.presence("chat:lobby")
            .await
            .is_ok_and(|b| b["members"].as_array().is_some_and(|m| m.len() == 1))
    })
    .await?;
    let empty = api.presence("chat:empty").await?;
    ensure!(
        empty["members"] == json!([]),
        "empty channel presence: {empty}"
    );
    Ok(())
}

#[tokio::test]
async fn disconnect_user_closes_every_device_with_4004() -> Result<()> {
    let gw = Gateway::standard("api_disconnect_user").await?;
    let mut phone = gw.connect_user("alice").await?;
    let mut laptop = gw.connect_user("alice").await?;
    let mut bob = gw.connect_user("bob").await?;
    let r = gw
        .api()
        .post("/api/users/alice/disconnect", &json!({}))
        .await?;
    ensure!(
        r.status == 200,
        "disconnect answered {}: {}",
        r.status,
        r.text
    );
    for c in [&mut phone, &mut laptop] {
        let (code, reason) = c.expect_close(RECV_TIMEOUT).await?;
        ensure!(
            code == 4004,
            "default disconnect code must be 4004, got {code} {reason:?}"
        );
        ensure!(
            reason == "disconnected",
            "default reason must be disconnected: {reason:?}"
        );
    }
    bob.ping().await?;
    Ok(())
}

#[tokio::test]
async fn disconnect_connection_with_custom_code_and_reason() -> Result<()> {
    let gw = Gateway::standard("api_disconnect_conn").await?;
    let mut phone = gw.connect_user("alice").await?;
    let mut laptop = gw.connect_user("alice").await?;
    let path = format!("/api/connections/{}/disconnect", phone.conn());
    let r = gw
        .api()
        .post(&path, &json!({"code": 4321, "reason": "bye now"}))
        .await?;
    ensure!(
        r.status == 200,
        "disconnect answered {}: {}",
        r.status,
        r.text
    );
    let (code, reason) = phone.expect_close(RECV_TIMEOUT).await?;
    ensure!(
        code == 4321 && reason == "bye now",
        "close: {code} {reason:?}"
    );
    laptop.ping().await?;
    Ok(())
}

#[tokio::test]
async fn disconnect_with_code_outside_4000_4999_is_refused() -> Result<()> {
    let gw = Gateway::standard("api_disconnect_badcode").await?;
    let mut alice = gw.connect_user("alice").await?;
    for code in [1000, 3999, 5000] {
        let r = gw
            .api()
            .post("/api/users/alice/disconnect", &json!({"code": code}))
            .await?;
        r.expect_error(400, "bad_request")
            .with_context(|| format!("disconnect with code {code}"))?;
    }
    alice.ping().await?;
    Ok(())
}

#[tokio::test]
async fn health_readiness_and_metrics() -> Result<()> {
    let gw = Gateway::standard("api_health").await?;
    let api = gw.api();
    ensure!(api.healthz().await? == 200, "healthz");
    ensure!(api.readyz().await? == 200, "readyz");
    let mut c = gw.connect_user("alice").await?;
    c.ping().await?;
    let text = api.metrics().await?;
    ensure!(
        text.lines().any(|l| l.starts_with("gateway_")),
        "metrics must expose gateway_* series:\n{text}"
    );
    ensure!(
        text.lines()
            .all(|l| l.is_empty() || l.starts_with('#') || l.split_whitespace().count() >= 2),
        "metrics is not Prometheus text:\n{text}"
    );
    Ok(())
}

#[tokio::test]
async fn admin_listener_serves_health_and_metrics() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("api_admin_listener")
        .standard_config()
        .env("GATEWAY_ADMIN_LISTEN", "127.0.0.1:0")
        .spawn()
        .await?;
    let admin = gw.admin_addr().context("no 'admin listening on' line")?;
    ensure!(
        Some(admin) != gw.addr().ok(),
        "admin and main listener share {admin}"
    );
    let admin_api = tests::Api::new(&format!("http://{admin}"), None);
    ensure!(admin_api.healthz().await? == 200, "admin /healthz");
    ensure!(admin_api.readyz().await? == 200, "admin /readyz");
    admin_api.metrics().await?;
    // The main listener keeps /ws and /api.
    let mut c = gw.connect_user("alice").await?;
    c.ping().await?;
    gw.api().nodes().await?;
    Ok(())
}
