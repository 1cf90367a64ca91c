//! Protocol v1 against one embedded node: every op, every push, id echo,
//! delivery to users, connections and channels, echo and exclude rules,
//! presence with join/leave (docs/protocol.md, "Frames").

use anyhow::{ensure, Result};
use serde_json::{json, Value};
use tests::{Gateway, GatewayBuilder, EVENTUALLY, RECV_TIMEOUT};

#[tokio::test]
async fn welcome_has_documented_fields() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("welcome_fields")
        .standard_config()
        .env("GATEWAY_NODE_ID", "proto-node_1")
        .env("GATEWAY_PING_INTERVAL_MS", 12345)
        .spawn()
        .await?;
    let alice = gw.connect_user("alice").await?;
    let w = &alice.welcome;
    ensure!(w["type"] == "welcome", "welcome: {w}");
    ensure!(
        w["node"] == "proto-node_1",
        "welcome.node must be the node id: {w}"
    );
    ensure!(
        w["user"] == "alice",
        "welcome.user must be the ?user= id: {w}"
    );
    ensure!(
        w["ping_interval_ms"] == 12345,
        "welcome.ping_interval_ms must be the setting: {w}"
    );
    let conn = w["conn"].as_str().unwrap_or_default();
    ensure!(
        conn.starts_with("proto-node_1."),
        "conn id must look like <node_id>.<boot>.<seq>: {w}"
    );
    ensure!(
        conn.split('.').count() == 3,
        "conn id must look like <node_id>.<boot>.<seq>: {w}"
    );

    let anon = gw.connect_anon().await?;
    ensure!(
        anon.welcome.get("user") == Some(&Value::Null),
        "anonymous welcome must carry user: null: {}",
        anon.welcome
    );
    ensure!(
        anon.conn() != alice.conn(),
        "two connections share a conn id"
    );
    Ok(())
}

#[tokio::test]
async fn ping_echoes_numeric_string_and_missing_ids() -> Result<()> {
    let gw = Gateway::standard("ping_ids").await?;
    let mut c = gw.connect_user("alice").await?;

    c.send_json(&json!({"op": "ping", "id": 7})).await?;
    let r = c.expect_type("pong", RECV_TIMEOUT).await?;
    ensure!(r["id"] == 7, "numeric id not echoed: {r}");

    c.send_json(&json!({"op": "ping", "id": "req-abc"})).await?;
    let r = c.expect_type("pong", RECV_TIMEOUT).await?;
    ensure!(r["id"] == "req-abc", "string id not echoed: {r}");

    c.send_json(&json!({"op": "ping"})).await?;
    let r = c.expect_type("pong", RECV_TIMEOUT).await?;
    ensure!(
        r.get("id") == Some(&Value::Null),
        "reply without request id must carry id: null: {r}"
    );
    Ok(())
}

#[tokio::test]
async fn subscribe_publish_unsubscribe_round_trip() -> Result<()> {
    let gw = Gateway::standard("sub_pub_unsub").await?;
    let mut alice = gw.connect_user("alice").await?;
    let mut bob = gw.connect_user("bob").await?;

    let r = alice
        .request(json!({"op": "subscribe", "channel": "news", "id": "s1"}))
        .await?;
    ensure!(
        r["type"] == "subscribed" && r["channel"] == "news",
        "subscribe reply: {r}"
    );
    ensure!(r["id"] == "s1", "subscribe reply must echo id: {r}");
    alice.subscribe("marker").await?;

    let r = bob
        .request(json!({"op": "publish", "channel": "news", "data": {"x": 1}, "id": 99}))
        .await?;
    ensure!(
        r["type"] == "published" && r["id"] == 99,
        "publish reply: {r}"
    );
    ensure!(
        r.get("offset") == Some(&Value::Null),
        "offset must be null without history: {r}"
    );

    let m = alice.expect_type("message", RECV_TIMEOUT).await?;
    ensure!(m["channel"] == "news", "message.channel: {m}");
    ensure!(m["data"] == json!({"x": 1}), "message.data: {m}");
    ensure!(
        m.get("offset") == Some(&Value::Null),
        "message.offset must be null: {m}"
    );
    ensure!(
        m["from"] == "bob",
        "message.from must be the publishing user: {m}"
    );

    let r = alice
        .request(json!({"op": "unsubscribe", "channel": "news", "id": 5}))
        .await?;
    ensure!(
        r["type"] == "unsubscribed" && r["channel"] == "news",
        "unsubscribe reply: {r}"
    );
    ensure!(r["id"] == 5, "unsubscribe reply must echo id: {r}");

    bob.publish("news", json!("after-unsubscribe")).await?;
    bob.publish("marker", json!("marker")).await?;
    let m = alice.expect_type("message", RECV_TIMEOUT).await?;
    ensure!(
        m["channel"] == "marker",
        "after unsubscribe the next message must be the marker, got {m}"
    );
    Ok(())
}

#[tokio::test]
async fn api_publication_has_null_sender() -> Result<()> {
    let gw = Gateway::standard("api_pub_from").await?;
    let mut alice = gw.connect_user("alice").await?;
    alice.subscribe("news").await?;
    let answer = gw.api().publish("news", json!({"n": [1, 2, 3]})).await?;
    ensure!(
        answer.get("offset") == Some(&Value::Null),
        "API publish must answer {{offset: null}} without history: {answer}"
    );
    let m = alice.expect_type("message", RECV_TIMEOUT).await?;
    ensure!(m["data"] == json!({"n": [1, 2, 3]}), "message: {m}");
    ensure!(
        m.get("from") == Some(&Value::Null),
        "API publication must have from: null: {m}"
    );
    Ok(())
}

#[tokio::test]
async fn publisher_gets_own_publication_only_with_echo() -> Result<()> {
    let gw = Gateway::standard("echo").await?;
    let mut alice = gw.connect_user("alice").await?;
    let mut bob = gw.connect_user("bob").await?;
    alice.subscribe("room").await?;
    bob.subscribe("room").await?;

    alice.publish("room", json!("no-echo")).await?;
    alice.publish_echo("room", json!("with-echo")).await?;

    let m = bob.expect_type("message", RECV_TIMEOUT).await?;
    ensure!(m["data"] == "no-echo", "bob's first message: {m}");
    let m = bob.expect_type("message", RECV_TIMEOUT).await?;
    ensure!(m["data"] == "with-echo", "bob's second message: {m}");

    let m = alice.expect_type("message", RECV_TIMEOUT).await?;
    ensure!(
        m["data"] == "with-echo",
        "publisher without echo must not receive its publication; first frame was {m}"
    );
    ensure!(m["from"] == "alice", "echoed message.from: {m}");
    Ok(())
}

#[tokio::test]
async fn api_publish_exclude_skips_that_connection() -> Result<()> {
    let gw = Gateway::standard("exclude").await?;
    let mut alice = gw.connect_user("alice").await?;
    let mut bob = gw.connect_user("bob").await?;
    alice.subscribe("room").await?;
    bob.subscribe("room").await?;
    let api = gw.api();

    api.publish_excluding("room", json!("excluded"), &alice.conn())
        .await?;
    api.publish("room", json!("everyone")).await?;

    let m = alice.expect_type("message", RECV_TIMEOUT).await?;
    ensure!(m["data"] == "everyone", "excluded connection received {m}");
    let m = bob.expect_type("message", RECV_TIMEOUT).await?;
    ensure!(
        m["data"] == "excluded",
        "bob must receive the excluding publication: {m}"
    );
    let m = bob.expect_type("message", RECV_TIMEOUT).await?;
    ensure!(m["data"] == "everyone", "bob's second message: {m}");
    Ok(())
}

#[tokio::test]
async fn broadcast_reaches_every_connection() -> Result<()> {
    let gw = Gateway::standard("broadcast").await?;
    let mut clients = vec![
        gw.connect_user("alice").await?,
        gw.connect_user("bob").await?,
        gw.connect_anon().await?,
    ];
    clients[0].subscribe("room").await?;
    gw.api().broadcast(json!({"notice": "maintenance"})).await?;
    for c in &mut clients {
        let b = c.expect_type("broadcast", RECV_TIMEOUT).await?;
        ensure!(
            b["data"] == json!({"notice": "maintenance"}),
            "broadcast: {b}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn user_send_reaches_every_device_of_that_user_only() -> Result<()> {
    let gw = Gateway::standard("user_send").await?;
    let mut phone = gw.connect_user("alice").await?;
    let mut laptop = gw.connect_user("alice").await?;
    let mut bob = gw.connect_user("bob").await?;
    let api = gw.api();

    api.send_to_user("alice", json!({"hello": "alice"})).await?;
    api.send_to_user("bob", json!("for-bob")).await?;
    for device in [&mut phone, &mut laptop] {
        let d = device.expect_type("direct", RECV_TIMEOUT).await?;
        ensure!(
            d["data"] == json!({"hello": "alice"}),
            "direct to alice: {d}"
        );
    }
    let d = bob.expect_type("direct", RECV_TIMEOUT).await?;
    ensure!(
        d["data"] == "for-bob",
        "bob received another user's direct message: {d}"
    );
    Ok(())
}

#[tokio::test]
async fn connection_send_reaches_only_that_connection() -> Result<()> {
    let gw = Gateway::standard("conn_send").await?;
    let mut phone = gw.connect_user("alice").await?;
    let mut laptop = gw.connect_user("alice").await?;
    let api = gw.api();

    api.send_to_conn(&phone.conn(), json!("to-phone")).await?;
    api.send_to_conn(&laptop.conn(), json!("to-laptop")).await?;
    let d = phone.expect_type("direct", RECV_TIMEOUT).await?;
    ensure!(d["data"] == "to-phone", "phone: {d}");
    let d = laptop.expect_type("direct", RECV_TIMEOUT).await?;
    ensure!(
        d["data"] == "to-laptop",
        "laptop got another connection's message first: {d}"
    );
    Ok(())
}

#[tokio::test]
async fn sending_to_offline_user_or_connection_is_not_an_error() -> Result<()> {
    let gw = Gateway::standard("send_offline").await?;
    let api = gw.api();
    api.send_to_user("nobody", json!(1)).await?;
    let conn = format!("{}.0.424242", "nosuchnode");
    api.send_to_conn(&conn, json!(1)).await?;
    Ok(())
}

#[tokio::test]
async fn presence_op_and_join_leave_pushes() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("presence_join_leave")
        .standard_config()
        .env("GATEWAY_NODE_ID", "pnode")
        .spawn()
        .await?;
    let mut alice = gw.connect_user("alice").await?;
    let mut bob = gw.connect_user("bob").await?;
    alice.subscribe("chat:room").await?;
    bob.subscribe("chat:room").await?;

    let bob_conn = bob.conn();
    let j = alice
        .wait_for(RECV_TIMEOUT, "join of bob", |v| {
            v["type"] == "join" && v["user"] == "bob"
        })
        .await?;
    ensure!(
        j["channel"] == "chat:room" && j["conn"] == bob_conn.as_str(),
        "join push: {j}"
    );

    let r = alice
        .request(json!({"op": "presence", "channel": "chat:room", "id": "p"}))
        .await?;
    ensure!(
        r["type"] == "presence" && r["id"] == "p" && r["channel"] == "chat:room",
        "{r}"
    );
    let members = r["members"].as_array().cloned().unwrap_or_default();
    ensure!(members.len() == 2, "presence must list alice and bob: {r}");
    for (user, conn) in [("alice", alice.conn()), ("bob", bob.conn())] {
        ensure!(
            members
                .iter()
                .any(|m| m["user"] == user && m["conn"] == conn.as_str() && m["node"] == "pnode"),
            "presence lacks {{user: {user}, conn: {conn}, node: pnode}}: {r}"
        );
    }

    bob.unsubscribe("chat:room").await?;
    let l = alice
        .wait_for(RECV_TIMEOUT, "leave of bob", |v| {
            v["type"] == "leave" && v["user"] == "bob"
        })
        .await?;
    ensure!(
        l["channel"] == "chat:room" && l["conn"] == bob_conn.as_str(),
        "leave push: {l}"
    );

    // A disconnect is a leave too.
    let mut carol = gw.connect_user("carol").await?;
    carol.subscribe("chat:room").await?;
    alice
        .wait_for(RECV_TIMEOUT, "join of carol", |v| {
            v["type"] == "join" && v["user"] == "carol"
        })
        .await?;
    carol.close(1000, "bye").await?;
    drop(carol);
    alice
        .wait_for(RECV_TIMEOUT, "leave of carol after disconnect", |v| {
            v["type"] == "leave" && v["user"] == "carol"
        })
        .await?;

    let api = gw.api();
    tests::eventually(EVENTUALLY, "HTTP presence lists only alice", || async {
        api.presence("chat:room").await.is_ok_and(|p| {
            p["channel"] == "chat:room"
                && p["members"]
                    .as_array()
                    .is_some_and(|m| m.len() == 1 && m[0]["user"] == "alice")
        })
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn presence_is_refused_where_not_enabled() -> Result<()> {
    let gw = Gateway::standard("presence_disabled").await?;
    let mut alice = gw.connect_user("alice").await?;
    alice.subscribe("news").await?;
    let r = alice
        .request(json!({"op": "presence", "channel": "news"}))
        .await?;
    ensure!(
        r["type"] == "error",
        "presence in a namespace without presence must fail: {r}"
    );
    Ok(())
}

#[tokio::test]
async fn client_publish_forbidden_where_namespace_disallows_it() -> Result<()> {
    let gw = Gateway::standard("client_publish_off").await?;
    let mut alice = gw.connect_user("alice").await?;
    let mut bob = gw.connect_user("bob").await?;
    bob.subscribe("ro:feed").await?;
    let r = alice
        .request(json!({"op": "publish", "channel": "ro:feed", "data": 1, "id": 3}))
        .await?;
    tests::check_error(&r, "forbidden")?;
    ensure!(r["id"] == 3, "error must echo the id: {r}");

    // Only the HTTP API may publish there.
    gw.api().publish("ro:feed", json!("from-api")).await?;
    let m = bob.expect_type("message", RECV_TIMEOUT).await?;
    ensure!(
        m["data"] == "from-api",
        "refused publication was delivered: {m}"
    );
    Ok(())
}

#[tokio::test]
async fn anonymous_cannot_subscribe_where_namespace_requires_a_user() -> Result<()> {
    let gw = Gateway::standard("anon_refused").await?;
    let mut anon = gw.connect_anon().await?;
    let r = anon
        .request(json!({"op": "subscribe", "channel": "private:x", "id": 1}))
        .await?;
    tests::check_error(&r, "unauthorized")?;
    ensure!(r["id"] == 1, "error must echo the id: {r}");
    anon.subscribe("news").await?;

    let mut alice = gw.connect_user("alice").await?;
    alice.subscribe("private:x").await?;
    Ok(())
}
