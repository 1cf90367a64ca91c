//! Bad client input, one case per test: each must be answered with the
//! documented `error` (docs/protocol.md, "Error codes"), the connection must
//! keep working (except for an oversized frame, which closes it with 1009),
//! and a bystander on the same node must be unaffected.

use anyhow::{ensure, Result};
use serde_json::{json, Value};
use tests::{Client, Gateway, GatewayBuilder, RECV_TIMEOUT};

/// A gateway, the misbehaving client and a bystander subscribed to `watch`.
async fn setup(name: &str) -> Result<(Gateway, Client, Client)> {
    let gw = Gateway::standard(name).await?;
    let bad = gw.connect_user("mallory").await?;
    let mut bystander = gw.connect_user("bob").await?;
    bystander.subscribe("watch").await?;
    Ok((gw, bad, bystander))
}

/// The bystander still gets publications; `bad` (if given) still answers.
async fn assert_unaffected(
    gw: &Gateway,
    bad: Option<&mut Client>,
    bystander: &mut Client,
) -> Result<()> {
    if let Some(bad) = bad {
        bad.ping().await?;
        bad.subscribe("watch").await?;
    }
    gw.api().publish("watch", json!("still-fine")).await?;
    let m = bystander.expect_type("message", RECV_TIMEOUT).await?;
    ensure!(m["data"] == "still-fine", "bystander: {m}");
    Ok(())
}

/// Sends `request`, expects `bad_request` echoing `id`, checks health.
async fn refused_with_id(name: &str, request: Value, id: Value) -> Result<()> {
    let (gw, mut bad, mut bystander) = setup(name).await?;
    bad.send_json(&request).await?;
    let e = bad.expect_error("bad_request", RECV_TIMEOUT).await?;
    ensure!(e["id"] == id, "error for {request} must echo id {id}: {e}");
    assert_unaffected(&gw, Some(&mut bad), &mut bystander).await
}

#[tokio::test]
async fn non_json_text_is_bad_request() -> Result<()> {
    let (gw, mut bad, mut bystander) = setup("bad_non_json").await?;
    bad.send_raw_text("this is {not json").await?;
    let e = bad.expect_error("bad_request", RECV_TIMEOUT).await?;
    ensure!(e.get("id") == Some(&Value::Null), "id must be null: {e}");
    assert_unaffected(&gw, Some(&mut bad), &mut bystander).await
}

#[tokio::test]
async fn json_that_is_not_an_object_is_bad_request() -> Result<()> {
    let (gw, mut bad, mut bystander) = setup("bad_not_object").await?;
    for text in [r#"[{"op":"ping","id":1}]"#, r#""ping""#, "42", "null"] {
        bad.send_raw_text(text).await?;
        let e = bad.expect_error("bad_request", RECV_TIMEOUT).await?;
        ensure!(
            e.get("id") == Some(&Value::Null),
            "id must be null for {text}: {e}"
        );
    }
    assert_unaffected(&gw, Some(&mut bad), &mut bystander).await
}

#[tokio::test]
async fn unknown_op_is_bad_request() -> Result<()> {
    refused_with_id(
        "bad_unknown_op",
        json!({"op": "explode", "id": 11}),
        json!(11),
    )
    .await
}

#[tokio::test]
async fn missing_op_is_bad_request() -> Result<()> {
    refused_with_id(
        "bad_missing_op",
        json!({"id": "no-op", "channel": "x"}),
        json!("no-op"),
    )
    .await
}

#[tokio::test]
async fn missing_field_is_bad_request() -> Result<()> {
    refused_with_id(
        "bad_missing_field",
        json!({"op": "subscribe", "id": 12}),
        json!(12),
    )
    .await
}

#[tokio::test]
async fn wrongly_typed_field_is_bad_request() -> Result<()> {
    let req = json!({"op": "subscribe", "channel": 42, "id": "t"});
    refused_with_id("bad_wrong_type", req, json!("t")).await
}

#[tokio::test]
async fn invalid_channel_names_are_bad_request() -> Result<()> {
    let (gw, mut bad, mut bystander) = setup("bad_channel_name").await?;
    let too_long = "a".repeat(256);
    for (i, name) in [
        "",
        "has space",
        "semi;colon",
        "bang!",
        "ünïcode",
        too_long.as_str(),
    ]
    .into_iter()
    .enumerate()
    {
        let r = bad
            .request(json!({"op": "subscribe", "channel": name, "id": i}))
            .await?;
        tests::check_error(&r, "bad_request")?;
        ensure!(r["id"] == i, "error must echo id: {r}");
    }
    // 255 bytes of the allowed charset is fine.
    let longest = format!("x{}", "a".repeat(254));
    bad.subscribe(&longest).await?;
    bad.subscribe("ok_-.@/=AZ09").await?;
    assert_unaffected(&gw, Some(&mut bad), &mut bystander).await
}

#[tokio::test]
async fn unknown_namespace_is_bad_request() -> Result<()> {
    let req = json!({"op": "subscribe", "channel": "nosuchns:room", "id": 13});
    refused_with_id("bad_unknown_ns", req, json!(13)).await
}

#[tokio::test]
async fn publish_to_unknown_namespace_is_bad_request() -> Result<()> {
    let req = json!({"op": "publish", "channel": "nosuchns:room", "data": 1, "id": 14});
    refused_with_id("bad_unknown_ns_pub", req, json!(14)).await
}

#[tokio::test]
async fn binary_frame_is_bad_request_and_connection_stays() -> Result<()> {
    let (gw, mut bad, mut bystander) = setup("bad_binary").await?;
    bad.send_binary(br#"{"op":"ping","id":1}"#.to_vec()).await?;
    let e = bad.expect_error("bad_request", RECV_TIMEOUT).await?;
    ensure!(
        e.get("id") == Some(&Value::Null),
        "id must be null for a binary frame: {e}"
    );
    assert_unaffected(&gw, Some(&mut bad), &mut bystander).await
}

#[tokio::test]
async fn oversized_frame_gets_too_large_then_close_1009() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("bad_oversized")
        .standard_config()
        .env("GATEWAY_MAX_MESSAGE_SIZE", 4096)
        .spawn()
        .await?;
    let mut bad = gw.connect_user("mallory").await?;
    let mut bystander = gw.connect_user("bob").await?;
    bystander.subscribe("watch").await?;

    // Just under the limit is fine.
    let fits = json!({"op": "publish", "channel": "watch", "data": "a".repeat(3900)});
    bad.request_ok(fits, "published").await?;
    let m = bystander.expect_type("message", RECV_TIMEOUT).await?;
    ensure!(
        m["data"].as_str().map(str::len) == Some(3900),
        "near-limit publication lost"
    );

    let big = json!({"op": "publish", "channel": "watch", "data": "a".repeat(20_000), "id": 1});
    bad.send_json(&big).await?;
    bad.expect_error("too_large", RECV_TIMEOUT).await?;
    let (code, reason) = bad.expect_close(RECV_TIMEOUT).await?;
    ensure!(
        code == 1009,
        "oversized frame must close with 1009, got {code} {reason:?}"
    );
    ensure!(
        reason == "too_large",
        "close reason must be too_large, got {reason:?}"
    );

    assert_unaffected(&gw, None, &mut bystander).await?;
    let mut again = gw.connect_user("mallory").await?;
    again.ping().await?;
    Ok(())
}
