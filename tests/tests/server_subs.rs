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
