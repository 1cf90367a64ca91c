//! The Pusher protocol on one node (docs/pusher.md): the handshake and
//! Pusher's refusals, public/private/presence subscriptions with their
//! signatures, client events, sign-in and server-to-user channels,
//! terminate, the signed HTTP API and its refusals, Pusher-format webhooks,
//! and the close codes Pusher clients act on. Real gateway process, real
//! WebSocket and HTTP clients.

use std::time::Duration;

use anyhow::{ensure, Result};
use serde_json::{json, Value};
use tests::pusher::{app_toml, data, event, PusherClient, PusherRest, APP};
use tests::{Gateway, RawWs, WebhookSink, RECV_TIMEOUT};

async fn node(name: &str, extra: &str) -> Result<Gateway> {
    Gateway::builder()
        .name(name)
        .config(&app_toml(extra))
        .spawn()
        .await
}

#[tokio::test]
async fn the_handshake_gives_a_numeric_socket_id_and_refuses_like_pusher() -> Result<()> {
    let gw = node("pusher_handshake", "").await?;
    let c = PusherClient::connect(&gw).await?;
    let (a, b) = c.socket_id.split_once('.').expect("a dot");
    ensure!(
        !a.is_empty() && a.bytes().chain(b.bytes()).all(|x| x.is_ascii_digit()),
        "socket id {} is not digits.digits",
        c.socket_id
    );
    ensure!(
        c.activity_timeout == 30,
        "activity_timeout {}",
        c.activity_timeout
    );
    // Unknown key, missing or unsupported protocol: a pusher:error, then
    // the same code as the close code (4000-4099: do not reconnect).
    for (path, code) in [
        ("/app/nope?protocol=7", 4001),
        ("/app/test-key", 4008),
        ("/app/test-key?protocol=8", 4007),
        ("/app/test-key?protocol=abc", 4006),
    ] {
        let mut raw = RawWs::connect(gw.addr()?, path).await?;
        let report = raw.read_until_close(RECV_TIMEOUT).await?;
        let text = report.texts.join("\n");
        ensure!(
            text.contains("pusher:error") && text.contains(&code.to_string()),
            "{path}: {text}"
        );
        ensure!(
            report.close.as_ref().map(|c| c.0) == Some(code),
            "{path}: {:?}",
            report.close
        );
    }
    Ok(())
}

#[tokio::test]
async fn public_private_and_rest_events_with_socket_exclusion() -> Result<()> {
    let gw = node("pusher_events", "").await?;
    let rest = PusherRest::new(&gw)?;
    let mut a = PusherClient::connect(&gw).await?;
    let mut b = PusherClient::connect(&gw).await?;
    for c in [&mut a, &mut b] {
        c.subscribe("news").await?;
        c.subscribe("private-orders").await?;
    }
    rest.trigger(&["news", "private-orders"], "shipped", r#"{"id":1}"#)
        .await?;
    for c in [&mut a, &mut b] {
        for ch in ["news", "private-orders"] {
            let f = c.expect_on("shipped", ch).await?;
            ensure!(f["data"] == r#"{"id":1}"#, "data is the string sent: {f}");
        }
    }
    // socket_id excludes that connection only.
    rest.post(
        "/events",
        &json!({"name": "only-b", "channel": "news", "data": "x", "socket_id": a.socket_id}),
    )
    .await?
    .ok()?;
    b.expect_on("only-b", "news").await?;
    a.ws.expect_nothing(Duration::from_millis(500)).await?;
    // A private channel with a wrong or missing signature is refused.
    for auth in [json!("test-key:0000"), Value::Null] {
        let reply = b
            .subscribe_raw(json!({"channel": "private-other", "auth": auth}))
            .await?;
        ensure!(event(&reply) == "pusher:subscription_error", "{reply}");
        ensure!(
            reply["data"]["status"] == 401 && reply["data"]["type"] == "AuthError",
            "{reply}"
        );
    }
    // A signature for another socket is refused too.
    let stolen =
        gateway::pusher::sign::channel_auth(APP.key, APP.secret, &a.socket_id, "private-x", None);
    let reply = b
        .subscribe_raw(json!({"channel": "private-x", "auth": stolen}))
        .await?;
    ensure!(event(&reply) == "pusher:subscription_error", "{reply}");
    // A second subscribe to a channel held is answered again, no change.
    b.subscribe("news").await?;
    rest.trigger(&["news"], "once", "1").await?;
    b.expect_on("once", "news").await?;
    b.ws.expect_nothing(Duration::from_millis(300)).await?;
    // Bad channel names are refused, the connection stays.
    let reply = b.subscribe_raw(json!({"channel": "bad name"})).await?;
    ensure!(event(&reply) == "pusher:subscription_error", "{reply}");
    b.send("pusher:ping", json!({}), None).await?;
    b.expect_event("pusher:pong", RECV_TIMEOUT).await?;
    Ok(())
}

#[tokio::test]
async fn client_events_reach_others_never_the_sender_and_are_limited() -> Result<()> {
    let gw = node("pusher_client_events", "client_event_rate = 5").await?;
    let mut a = PusherClient::connect(&gw).await?;
    let mut b = PusherClient::connect(&gw).await?;
    a.subscribe("private-chat").await?;
    b.subscribe("private-chat").await?;
    a.send("client-typing", json!({"who": "a"}), Some("private-chat"))
        .await?;
    let got = b.expect_on("client-typing", "private-chat").await?;
    ensure!(got["data"]["who"] == "a", "{got}");
    ensure!(
        got.get("user_id").is_none(),
        "no user_id on private channels: {got}"
    );
    a.ws.expect_nothing(Duration::from_millis(300)).await?;
    // Data that is not valid JSON for strict parsers (a lone surrogate,
    // found by the fuzz run) is refused, not relayed.
    a.ws.send_raw_text(
        r#"{"event":"client-typing","channel":"private-chat","data":{"x\ud800":1}}"#,
    )
    .await?;
    let e = a.expect_event("pusher:error", RECV_TIMEOUT).await?;
    ensure!(e["data"]["code"] == 4301, "{e}");
    b.ws.expect_nothing(Duration::from_millis(300)).await?;
    // Public channels, unsubscribed channels: refused with 4301.
    a.subscribe("lobby").await?;
    a.send("client-x", json!({}), Some("lobby")).await?;
    let e = a.expect_event("pusher:error", RECV_TIMEOUT).await?;
    ensure!(e["data"]["code"] == 4301, "{e}");
    a.send("client-x", json!({}), Some("private-elsewhere"))
        .await?;
    let e = a.expect_event("pusher:error", RECV_TIMEOUT).await?;
    ensure!(e["data"]["code"] == 4301, "{e}");
    // Over the app's rate (5/s, burst 5): 20 at once, some refused, at most
    // the burst plus what refilled arrive.
    for i in 0..20 {
        a.send("client-burst", json!({ "i": i }), Some("private-chat"))
            .await?;
    }
    let e = a.expect_event("pusher:error", RECV_TIMEOUT).await?;
    ensure!(
        e["data"]["code"] == 4301 && e["data"]["message"].as_str().unwrap_or("").contains("rate"),
        "{e}"
    );
    let mut arrived = 0;
    while let Ok(f) = b.ws.recv_json(Duration::from_millis(700)).await {
        if event(&f) == "client-burst" {
            arrived += 1;
        }
    }
    ensure!(
        (5..20).contains(&arrived),
        "{arrived} of 20 arrived past a rate of 5/s"
    );
    Ok(())
}

#[tokio::test]
async fn an_app_without_client_events_refuses_them() -> Result<()> {
    let toml = format!(
        "[[pusher.apps]]\nid = \"{}\"\nkey = \"{}\"\nsecret = \"{}\"\n",
        APP.id, APP.key, APP.secret
    );
    let gw = Gateway::builder()
        .name("pusher_no_client_events")
        .config(&toml)
        .spawn()
        .await?;
    let mut a = PusherClient::connect(&gw).await?;
    a.subscribe("private-chat").await?;
    a.send("client-x", json!({}), Some("private-chat")).await?;
    let e = a.expect_event("pusher:error", RECV_TIMEOUT).await?;
    ensure!(e["data"]["code"] == 4301, "{e}");
    Ok(())
}

#[tokio::test]
async fn presence_lists_users_once_and_announces_first_and_last_connections() -> Result<()> {
    let gw = node("pusher_presence", "").await?;
    let mut watcher = PusherClient::connect(&gw).await?;
    let members = watcher
        .join("presence-room", "w", json!({"name": "W"}))
        .await?;
    ensure!(
        members["count"] == 1 && members["ids"] == json!(["w"]),
        "{members}"
    );
    // Two devices of user u: one member_added.
    let mut u1 = PusherClient::connect(&gw).await?;
    let m = u1.join("presence-room", "u", json!({"name": "U"})).await?;
    ensure!(m["count"] == 2 && m["hash"]["w"]["name"] == "W", "{m}");
    let added = watcher
        .expect_on("pusher_internal:member_added", "presence-room")
        .await?;
    ensure!(
        data(&added) == json!({"user_id": "u", "user_info": {"name": "U"}}),
        "{added}"
    );
    let mut u2 = PusherClient::connect(&gw).await?;
    let m = u2.join("presence-room", "u", json!({"name": "U"})).await?;
    ensure!(m["count"] == 2, "one entry per user: {m}");
    // Client events on presence carry the sender's user id.
    u2.send("client-hi", json!(1), Some("presence-room"))
        .await?;
    let hi = watcher.expect_on("client-hi", "presence-room").await?;
    ensure!(hi["user_id"] == "u", "{hi}");
    // The first device leaving is not the user leaving.
    u1.ws.close(1000, "bye").await?;
    watcher
        .ws
        .expect_nothing(Duration::from_millis(700))
        .await?;
    // The last one is: one member_removed.
    u2.send(
        "pusher:unsubscribe",
        json!({"channel": "presence-room"}),
        None,
    )
    .await?;
    let removed = watcher
        .expect_on("pusher_internal:member_removed", "presence-room")
        .await?;
    ensure!(data(&removed) == json!({"user_id": "u"}), "{removed}");
    // A bad presence signature, or user_info past the limit, is refused.
    let mut bad = PusherClient::connect(&gw).await?;
    let reply = bad
        .subscribe_raw(json!({"channel": "presence-room", "auth": "test-key:00", "channel_data": "{\"user_id\":\"x\"}"}))
        .await?;
    ensure!(reply["data"]["status"] == 401, "{reply}");
    let big = "x".repeat(2000);
    let err = bad.join("presence-room", "x", json!({ "big": big })).await;
    ensure!(
        err.is_err(),
        "user_info of 2 kB is over the 1024-byte default"
    );
    Ok(())
}

#[tokio::test]
async fn signin_user_channels_and_terminate() -> Result<()> {
    let gw = node("pusher_signin", "").await?;
    let rest = PusherRest::new(&gw)?;
    let mut a = PusherClient::connect(&gw).await?;
    let mut other = PusherClient::connect(&gw).await?;
    // Only the connection signed in as u7 may take its server-to-user channel.
    let reply = other
        .subscribe_raw(json!({"channel": "#server-to-user-u7"}))
        .await?;
    ensure!(event(&reply) == "pusher:subscription_error", "{reply}");
    a.signin("u7").await?;
    a.subscribe("#server-to-user-u7").await?;
    // sendToUser: an event on the user's channel.
    rest.trigger(&["#server-to-user-u7"], "notice", "hello")
        .await?;
    a.expect_on("notice", "#server-to-user-u7").await?;
    // terminate_connections closes every connection of the user with 4009.
    let mut a2 = PusherClient::connect(&gw).await?;
    a2.signin("u7").await?;
    other.signin("someone-else").await?;
    rest.post("/users/u7/terminate_connections", &json!({}))
        .await?
        .ok()?;
    for c in [&mut a, &mut a2] {
        let (code, _) = c.ws.expect_close(RECV_TIMEOUT).await?;
        ensure!(code == 4009, "closed with {code}");
    }
    other.send("pusher:ping", json!({}), None).await?;
    other.expect_event("pusher:pong", RECV_TIMEOUT).await?;
    // A bad sign-in closes with 4009.
    let mut bad = PusherClient::connect(&gw).await?;
    bad.send(
        "pusher:signin",
        json!({"auth": "test-key:00", "user_data": "{\"id\":\"u7\"}"}),
        None,
    )
    .await?;
    let (code, _) = bad.ws.expect_close(RECV_TIMEOUT).await?;
    ensure!(code == 4009, "bad sign-in closed with {code}");
    Ok(())
}

#[tokio::test]
async fn the_rest_api_refuses_bad_signatures_stale_timestamps_and_wrong_bodies() -> Result<()> {
    let gw = node("pusher_rest_refusals", "max_event_bytes = 100").await?;
    let rest = PusherRest::new(&gw)?;
    let path = format!("/apps/{}/events", APP.id);
    let body = serde_json::to_vec(&json!({"name": "e", "channels": ["c"], "data": "d"}))?;
    let now = PusherRest::now();
    // The right request passes.
    let q = rest.signed_query("POST", &path, &[], &body, now);
    let ok = rest.send_raw("POST", &path, &q, body.clone()).await?;
    ensure!(ok.status == 200, "{ok:?}");
    // Body changed after signing: body_md5 no longer matches.
    let other = serde_json::to_vec(&json!({"name": "e", "channels": ["c"], "data": "other"}))?;
    let r = rest.send_raw("POST", &path, &q, other).await?;
    ensure!(r.status == 401 && r.body.contains("body_md5"), "{r:?}");
    // Stale and future timestamps (past 600 s).
    for ts in [now - 700, now + 700] {
        let q = rest.signed_query("POST", &path, &[], &body, ts);
        let r = rest.send_raw("POST", &path, &q, body.clone()).await?;
        ensure!(r.status == 401 && r.body.contains("Timestamp"), "{r:?}");
    }
    // Within the window passes.
    let q = rest.signed_query("POST", &path, &[], &body, now - 500);
    ensure!(rest.send_raw("POST", &path, &q, body.clone()).await?.status == 200);
    // Wrong secret, wrong key.
    let mut wrong = PusherRest::new(&gw)?;
    wrong.secret = "not-the-secret".into();
    let r = wrong
        .post(
            "/events",
            &json!({"name": "e", "channels": ["c"], "data": "d"}),
        )
        .await?;
    ensure!(
        r.status == 401 && r.body.contains("Invalid signature"),
        "{r:?}"
    );
    let mut wrong = PusherRest::new(&gw)?;
    wrong.key = "other-key".into();
    let r = wrong
        .post(
            "/events",
            &json!({"name": "e", "channels": ["c"], "data": "d"}),
        )
        .await?;
    ensure!(r.status == 401, "{r:?}");
    // A tampered query parameter breaks the signature.
    let q = rest.signed_query(
        "GET",
        &format!("/apps/{}/channels", APP.id),
        &[("filter_by_prefix", "a")],
        &[],
        now,
    );
    let r = rest
        .send_raw(
            "GET",
            &format!("/apps/{}/channels", APP.id),
            &q.replace("filter_by_prefix=a", "filter_by_prefix=b"),
            Vec::new(),
        )
        .await?;
    ensure!(r.status == 401, "{r:?}");
    // Unknown app: 404.
    let mut unknown = PusherRest::new(&gw)?;
    unknown.id = "no-such-app".into();
    let r = unknown
        .post(
            "/events",
            &json!({"name": "e", "channels": ["c"], "data": "d"}),
        )
        .await?;
    ensure!(r.status == 404, "{r:?}");
    // Malformed events: 400; data over max_event_bytes: 413.
    for bad in [
        json!({"name": "e", "data": "d"}),
        json!({"name": "e", "channels": ["bad name"], "data": "d"}),
        json!({"name": "e", "channels": ["c"], "channel": "c", "data": "d"}),
        json!({"name": "e", "channels": ["c"], "data": "d", "socket_id": "abc"}),
        json!({"name": "", "channels": ["c"], "data": "d"}),
    ] {
        let r = rest.post("/events", &bad).await?;
        ensure!(r.status == 400, "{bad}: {r:?}");
    }
    let r = rest
        .post(
            "/events",
            &json!({"name": "e", "channels": ["c"], "data": "x".repeat(101)}),
        )
        .await?;
    ensure!(r.status == 413, "{r:?}");
    let r = rest.post("/batch_events", &json!({"batch": []})).await?;
    ensure!(r.status == 400, "{r:?}");
    Ok(())
}

#[tokio::test]
async fn the_rest_api_reports_channels_users_and_batches() -> Result<()> {
    let gw = node("pusher_rest_info", "").await?;
    let rest = PusherRest::new(&gw)?;
    let mut a = PusherClient::connect(&gw).await?;
    let mut b = PusherClient::connect(&gw).await?;
    a.join("presence-lobby", "ua", json!({})).await?;
    b.join("presence-lobby", "ub", json!({})).await?;
    a.subscribe("news").await?;
    b.subscribe("private-b").await?;
    b.signin("ub").await?;
    b.subscribe("#server-to-user-ub").await?;
    // Channel counts settle within a flush interval.
    tests::eventually(RECV_TIMEOUT, "channel counts", || async {
        rest.get("/channels", &[])
            .await
            .ok()
            .and_then(|r| r.ok().ok())
            .is_some_and(|v| v["channels"].as_object().is_some_and(|m| m.len() == 3))
    })
    .await?;
    let all = rest.get("/channels", &[]).await?.ok()?;
    let names: Vec<&String> = all["channels"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    ensure!(
        names == ["news", "presence-lobby", "private-b"],
        "internal channels are not listed: {all}"
    );
    let presence = rest
        .get(
            "/channels",
            &[("filter_by_prefix", "presence-"), ("info", "user_count")],
        )
        .await?
        .ok()?;
    ensure!(
        presence["channels"]["presence-lobby"]["user_count"] == 2,
        "{presence}"
    );
    let r = rest.get("/channels", &[("info", "user_count")]).await?;
    ensure!(
        r.status == 400,
        "user_count needs the presence- prefix: {r:?}"
    );
    let one = rest
        .get(
            "/channels/presence-lobby",
            &[("info", "user_count,subscription_count")],
        )
        .await?
        .ok()?;
    ensure!(
        one == json!({"occupied": true, "user_count": 2, "subscription_count": 2}),
        "{one}"
    );
    let empty = rest
        .get("/channels/nobody-here", &[("info", "subscription_count")])
        .await?
        .ok()?;
    ensure!(
        empty == json!({"occupied": false, "subscription_count": 0}),
        "{empty}"
    );
    let r = rest
        .get("/channels/news", &[("info", "user_count")])
        .await?;
    ensure!(r.status == 400, "user_count of a public channel: {r:?}");
    let users = rest
        .get("/channels/presence-lobby/users", &[])
        .await?
        .ok()?;
    ensure!(
        users == json!({"users": [{"id": "ua"}, {"id": "ub"}]}),
        "{users}"
    );
    ensure!(rest.get("/channels/news/users", &[]).await?.status == 400);
    // A batch: every event checked first, then each delivered.
    let batch = rest
        .post(
            "/batch_events",
            &json!({"batch": [
                {"name": "one", "channel": "news", "data": "1"},
                {"name": "two", "channel": "presence-lobby", "data": "2"},
            ]}),
        )
        .await?;
    batch.ok()?;
    a.expect_on("one", "news").await?;
    a.expect_on("two", "presence-lobby").await?;
    let r = rest
        .post(
            "/batch_events",
            &json!({"batch": [
                {"name": "fine", "channel": "news", "data": "1"},
                {"name": "bad", "channel": "bad name", "data": "2"},
            ]}),
        )
        .await?;
    ensure!(r.status == 400, "{r:?}");
    a.ws.expect_nothing(Duration::from_millis(500)).await?;
    Ok(())
}

#[tokio::test]
async fn webhooks_are_in_pushers_format_and_signed_with_the_app_secret() -> Result<()> {
    let sink = WebhookSink::start().await?;
    let gw = node(
        "pusher_webhooks",
        &format!("webhook_url = \"{}\"", sink.url()),
    )
    .await?;
    let mut a = PusherClient::connect(&gw).await?;
    let mut b = PusherClient::connect(&gw).await?;
    a.join("presence-r", "ua", json!({})).await?;
    b.join("presence-r", "ub", json!({})).await?;
    a.send("client-ping", json!({"k": 1}), Some("presence-r"))
        .await?;
    b.expect_on("client-ping", "presence-r").await?;
    // Occupancy is flushed each interval: an occupy and vacate inside one
    // cancel out (docs/backend.md), so the close waits for the first.
    sink.wait_events(RECV_TIMEOUT, "channel_occupied", |evs| {
        evs.iter().any(|e| e["name"] == "channel_occupied")
    })
    .await?;
    b.ws.close(1000, "bye").await?;
    a.ws.close(1000, "bye").await?;
    let names = [
        "channel_occupied",
        "member_added",
        "client_event",
        "member_removed",
        "channel_vacated",
    ];
    let events = sink
        .wait_events(RECV_TIMEOUT, "the Pusher events", |evs| {
            names.iter().all(|n| evs.iter().any(|e| e["name"] == *n))
                && evs.iter().filter(|e| e["name"] == "member_removed").count() == 2
        })
        .await?;
    let added: Vec<&Value> = events
        .iter()
        .filter(|e| e["name"] == "member_added")
        .collect();
    ensure!(
        added.len() == 2 && added.iter().all(|e| e["channel"] == "presence-r"),
        "{added:?}"
    );
    let client = events
        .iter()
        .find(|e| e["name"] == "client_event")
        .expect("checked");
    ensure!(
        client["event"] == "client-ping"
            && client["data"] == r#"{"k":1}"#
            && client["socket_id"] == a.socket_id.as_str()
            && client["user_id"] == "ua",
        "{client}"
    );
    for r in sink.received() {
        ensure!(r.header("x-pusher-key") == Some(APP.key), "{}", r.summary());
        let want = gateway::pusher::sign::hmac_hex(APP.secret, &[&r.body]);
        ensure!(
            r.header("x-pusher-signature") == Some(want.as_str()),
            "{}",
            r.summary()
        );
        ensure!(r.json["time_ms"].is_u64(), "{}", r.summary());
    }
    Ok(())
}

#[tokio::test]
async fn pusher_close_codes_for_heartbeat_and_drain() -> Result<()> {
    let gw = Gateway::builder()
        .name("pusher_close_codes")
        .config(&app_toml(""))
        .env("GATEWAY_PING_INTERVAL_MS", 300)
        .env("GATEWAY_PONG_TIMEOUT_MS", 300)
        .spawn()
        .await?;
    // A client that never answers pings: 4201 (pong not received).
    let mut raw = RawWs::connect(gw.addr()?, "/app/test-key?protocol=7").await?;
    let report = raw.read_until_close(RECV_TIMEOUT).await?;
    ensure!(
        report.close.as_ref().map(|c| c.0) == Some(4201),
        "{:?}",
        report.close
    );
    ensure!(
        report.texts.iter().any(|t| t.contains("4201")),
        "a pusher:error first: {:?}",
        report.texts
    );
    // A frame over max_message_size: a pusher:error, then 1009 (as v1).
    let mut big = PusherClient::connect(&gw).await?;
    big.ws
        .send_raw_text(&format!(
            "{{\"event\":\"client-x\",\"data\":\"{}\"}}",
            "x".repeat(70_000)
        ))
        .await?;
    let e = big.expect_event("pusher:error", RECV_TIMEOUT).await?;
    ensure!(
        e["data"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("max_message_size"),
        "{e}"
    );
    let (code, _) = big.ws.expect_close(RECV_TIMEOUT).await?;
    ensure!(code == 1009, "an oversized frame closed with {code}");
    // Draining: 4200 (reconnect at once).
    let mut c = PusherClient::connect(&gw).await?;
    gw.sigterm()?;
    let (code, _) = c.ws.expect_close(RECV_TIMEOUT).await?;
    ensure!(code == 4200, "drain closed with {code}");
    Ok(())
}

#[tokio::test]
async fn v1_broadcasts_and_listings_keep_to_v1() -> Result<()> {
    let gw = node("pusher_beside_v1", "").await?;
    let mut p = PusherClient::connect(&gw).await?;
    p.subscribe("news").await?;
    let mut v1 = gw.connect_user("alice").await?;
    v1.subscribe("room").await?;
    gw.api()
        .post("/api/broadcast", &json!({"data": {"x": 1}}))
        .await?
        .ok()?;
    v1.wait_for_type("broadcast", RECV_TIMEOUT).await?;
    p.ws.expect_nothing(Duration::from_millis(500)).await?;
    tests::eventually(RECV_TIMEOUT, "the v1 listing", || async {
        gw.api()
            .get("/api/channels")
            .await
            .ok()
            .and_then(|r| r.ok().ok())
            .is_some_and(|v| v["channels"] == json!([{"channel": "room", "subscribers": 1}]))
    })
    .await?;
    Ok(())
}
