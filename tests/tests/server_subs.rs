//! Server-side subscriptions (docs/backend.md, "Server-side
//! subscriptions"): channels named by the JWT `subs` claim or the connect
//! proxy's `subs` are subscribed on connect, with `subscribed` pushes of a
//! null id; an unknown namespace is refused with an `error` and the
//! connection stays.

use anyhow::{ensure, Result};
use serde_json::{json, Value};
use tests::jwt::{self, SECRET};
use tests::{Backend, BackendReply, GatewayBuilder, RECV_TIMEOUT};

#[tokio::test]
async fn the_subs_claim_subscribes_on_connect() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("subs_claim")
        .standard_config()
        .env("GATEWAY_JWT_SECRET", SECRET)
        .spawn()
        .await?;
    let mut claims = jwt::claims("alice");
    claims["subs"] = json!(["news", "chat:lobby", "nope:x"]);
    // `channels` does not limit what the server subscribes.
    claims["channels"] = json!(["other"]);
    let token = jwt::hs256(SECRET, &claims)?;
    let mut c = gw.client().bearer(&token).connect().await?;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(c.recv_json(RECV_TIMEOUT).await?);
    }
    let subscribed: Vec<&Value> = got.iter().filter(|f| f["type"] == "subscribed").collect();
    ensure!(subscribed.len() == 2, "{got:?}");
    ensure!(subscribed.iter().all(|f| f["id"].is_null()), "{got:?}");
    ensure!(
        subscribed[0]["channel"] == "news" && subscribed[1]["channel"] == "chat:lobby",
        "{got:?}"
    );
    let err = got
        .iter()
        .find(|f| f["type"] == "error")
        .cloned()
        .unwrap_or_default();
    tests::check_error(&err, "bad_request")?;
    gw.api().publish("chat:lobby", json!("hi")).await?;
    let m = c.wait_for_type("message", RECV_TIMEOUT).await?;
    ensure!(m["channel"] == "chat:lobby" && m["data"] == "hi", "{m}");
    // They are ordinary subscriptions: the client may leave them.
    c.unsubscribe("news").await?;
    Ok(())
}

#[tokio::test]
async fn the_connect_proxy_subs_subscribe_on_connect() -> Result<()> {
    let backend = Backend::start(|_, _| {
        BackendReply::ok(json!({"user": "p", "subs": ["chat:from-backend"]}))
    })
    .await?;
    let gw = GatewayBuilder::new()
        .name("subs_proxy")
        .config(&format!(
            "{}{}",
            tests::STANDARD_CONFIG,
            backend.proxy_toml(&["connect"], 1000, 16)
        ))
        .spawn()
        .await?;
    let mut c = gw.client().connect().await?;
    ensure!(c.user().as_deref() == Some("p"), "{}", c.welcome);
    let s = c.expect_type("subscribed", RECV_TIMEOUT).await?;
    ensure!(
        s["channel"] == "chat:from-backend" && s["id"].is_null(),
        "{s}"
    );
    gw.api().publish("chat:from-backend", json!(7)).await?;
    let m = c.wait_for_type("message", RECV_TIMEOUT).await?;
    ensure!(m["data"] == 7, "{m}");
    Ok(())
}

/// Reads frames until one of `ty` for `channel`, with a null id.
async fn expect_push(c: &mut tests::Client, ty: &str, channel: &str) -> Result<Value> {
    let f = c
        .wait_for(RECV_TIMEOUT, &format!("{ty} {channel}"), |f| {
            f["type"] == ty && f["channel"] == channel
        })
        .await?;
    ensure!(f["id"].is_null(), "server push with an id: {f}");
    Ok(f)
}

#[tokio::test]
async fn api_user_subscribe_and_unsubscribe_reach_devices_on_three_nodes() -> Result<()> {
    let cluster = tests::cluster::Cluster::builder("subs_api_user")
        .nodes(3)
        .start()
        .await?;
    // alice has a device on every node; bob is on node 3.
    let mut a1 = cluster.node(1).connect_user("alice").await?;
    let mut a2 = cluster.node(2).connect_user("alice").await?;
    let mut a3 = cluster.node(3).connect_user("alice").await?;
    let mut bob = cluster.node(3).connect_user("bob").await?;
    // From node 1's API, for devices on all three nodes.
    let r = cluster
        .api(1)
        .post(
            "/api/users/alice/subscribe",
            &json!({"channel": "chat:team"}),
        )
        .await?;
    r.ok()?;
    for c in [&mut a1, &mut a2, &mut a3] {
        expect_push(c, "subscribed", "chat:team").await?;
    }
    cluster
        .api(2)
        .publish("chat:team", json!("for the team"))
        .await?;
    for c in [&mut a1, &mut a2, &mut a3] {
        let m = c.wait_for_type("message", RECV_TIMEOUT).await?;
        ensure!(m["data"] == "for the team", "{m}");
    }
    // The subscriptions are counted cluster-wide (one per device).
    let api3 = cluster.api(3);
    tests::eventually(RECV_TIMEOUT, "3 subscribers of chat:team", || async {
        match api3
            .get("/api/channels/chat:team")
            .await
            .and_then(|r| r.ok())
        {
            Ok(v) => v["subscribers"] == 3,
            Err(_) => false,
        }
    })
    .await?;
    bob.expect_nothing(std::time::Duration::from_millis(300))
        .await?;
    // The subscription is the connection's own: a client subscribe is now a duplicate.
    let r = a2
        .request(json!({"op": "subscribe", "channel": "chat:team"}))
        .await?;
    tests::check_error(&r, "bad_request")?;
    // One of bob's connections, on node 3, subscribed from node 1.
    cluster
        .api(1)
        .post(
            &format!("/api/connections/{}/subscribe", bob.conn()),
            &json!({"channel": "chat:team"}),
        )
        .await?
        .ok()?;
    expect_push(&mut bob, "subscribed", "chat:team").await?;
    cluster
        .api(3)
        .post(
            "/api/users/alice/unsubscribe",
            &json!({"channel": "chat:team"}),
        )
        .await?
        .ok()?;
    for c in [&mut a1, &mut a2, &mut a3] {
        expect_push(c, "unsubscribed", "chat:team").await?;
    }
    // bob's subscription is his own: alice's unsubscribe leaves it.
    cluster
        .api(1)
        .publish("chat:team", json!("bob only"))
        .await?;
    let m = bob.wait_for_type("message", RECV_TIMEOUT).await?;
    ensure!(m["data"] == "bob only", "{m}");
    for c in [&mut a1, &mut a2, &mut a3] {
        c.expect_nothing(std::time::Duration::from_millis(200))
            .await?;
    }
    // Unknown namespace or invalid channel: refused up front.
    let r = cluster
        .api(1)
        .post("/api/users/alice/subscribe", &json!({"channel": "nope:x"}))
        .await?;
    ensure!(
        r.status == 400 && r.error_code() == Some("bad_request"),
        "{}",
        r.text
    );
    let r = cluster
        .api(1)
        .post("/api/users/alice/subscribe", &json!({"channel": "a b"}))
        .await?;
    ensure!(r.status == 400, "{}", r.text);
    Ok(())
}

#[tokio::test]
async fn api_connection_subscribe_reaches_one_connection_on_another_node() -> Result<()> {
    let cluster = tests::cluster::Cluster::builder("subs_api_conn")
        .nodes(2)
        .start()
        .await?;
    let mut target = cluster.node(2).connect_user("carol").await?;
    let mut sibling = cluster.node(2).connect_user("carol").await?;
    cluster
        .api(1)
        .post(
            &format!("/api/connections/{}/subscribe", target.conn()),
            &json!({"channel": "news"}),
        )
        .await?
        .ok()?;
    expect_push(&mut target, "subscribed", "news").await?;
    cluster.api(1).publish("news", json!(1)).await?;
    let m = target.wait_for_type("message", RECV_TIMEOUT).await?;
    ensure!(m["data"] == 1, "{m}");
    sibling
        .expect_nothing(std::time::Duration::from_millis(300))
        .await?;
    cluster
        .api(1)
        .post(
            &format!("/api/connections/{}/unsubscribe", target.conn()),
            &json!({"channel": "news"}),
        )
        .await?
        .ok()?;
    expect_push(&mut target, "unsubscribed", "news").await?;
    Ok(())
}

#[tokio::test]
async fn api_subscribe_respects_the_channel_limit() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("subs_api_limit")
        .standard_config()
        .env("GATEWAY_MAX_CHANNELS_PER_CONNECTION", 1)
        .spawn()
        .await?;
    let mut c = gw.connect_user("dave").await?;
    c.subscribe("news").await?;
    gw.api()
        .post(
            &format!("/api/connections/{}/subscribe", c.conn()),
            &json!({"channel": "chat:more"}),
        )
        .await?
        .ok()?;
    let e = c.expect_error("forbidden", RECV_TIMEOUT).await?;
    ensure!(e["id"].is_null(), "{e}");
    ensure!(
        e["message"]
            .as_str()
            .unwrap_or("")
            .contains("max_channels_per_connection"),
        "{e}"
    );
    Ok(())
}
