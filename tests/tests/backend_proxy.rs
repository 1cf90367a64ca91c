//! The application backend proxy (docs/backend.md, "Proxy") against a real
//! HTTP backend in the test process ([`tests::Backend`]): connect by
//! cookie, refusals, subscribe and publish hooks, session refresh, rpc, and
//! a backend that is down, slow or saturated.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use tests::jwt::{self, SECRET};
use tests::{
    eventually, metric, Backend, BackendReply, Gateway, GatewayBuilder, EVENTUALLY, RECV_TIMEOUT,
};

/// A gateway with the standard namespaces, a JWT key (so JWT clients
/// still work) and the proxy `hooks` pointed at `backend`.
async fn gateway(name: &str, proxy: String) -> Result<Gateway> {
    GatewayBuilder::new()
        .name(name)
        .config(&format!("{}{proxy}", tests::STANDARD_CONFIG))
        .env("GATEWAY_JWT_SECRET", SECRET)
        .spawn()
        .await
}

/// Connect: a `session=<user>` cookie names the user; `session=banned`
/// is forbidden; no cookie is unauthorized. Other hooks allow.
fn cookie_rule(hook: &str, body: &Value) -> BackendReply {
    if hook != "connect" {
        return BackendReply::ok(json!({}));
    }
    let cookie = body["headers"]["cookie"].as_str().unwrap_or("");
    match cookie.strip_prefix("session=") {
        Some("banned") => BackendReply::refuse("forbidden", "banned"),
        Some(user) => BackendReply::ok(json!({"user": user, "info": {"via": "proxy"}})),
        None => BackendReply::refuse("unauthorized", "log in first"),
    }
}

#[tokio::test]
async fn connect_by_cookie_names_the_user_and_refusals_map_to_401_and_403() -> Result<()> {
    let backend = Backend::start(cookie_rule).await?;
    let gw = gateway("proxy_connect", backend.proxy_toml(&["connect"], 1000, 16)).await?;
    let c = gw
        .client()
        .header("Cookie", "session=alice")
        .header("X-Tenant", "t1")
        .header("X-Other", "not-forwarded")
        .connect()
        .await?;
    ensure!(
        c.user().as_deref() == Some("alice"),
        "welcome: {}",
        c.welcome
    );
    let seen = backend.requests_of("connect");
    ensure!(seen.len() == 1, "one connect request: {seen:?}");
    let body = &seen[0].body;
    ensure!(body["headers"]["cookie"] == "session=alice", "{body}");
    ensure!(
        body["headers"]["x-tenant"] == "t1",
        "configured header: {body}"
    );
    ensure!(
        body["headers"].get("x-other").is_none(),
        "unlisted header: {body}"
    );
    ensure!(
        body["transport"] == "websocket" && body["addr"] == "127.0.0.1",
        "{body}"
    );

    gw.client()
        .header("Cookie", "session=banned")
        .expect_refused()
        .await?
        .expect(403, "forbidden")?;
    gw.client()
        .expect_refused()
        .await?
        .expect(401, "unauthorized")?;
    // A JWT still authenticates without asking the backend.
    let token = jwt::hs256(SECRET, &jwt::claims("bob"))?;
    let before = backend.requests_of("connect").len();
    let c = gw.client().bearer(&token).connect().await?;
    ensure!(c.user().as_deref() == Some("bob"), "{}", c.welcome);
    ensure!(
        backend.requests_of("connect").len() == before,
        "JWT went to the backend"
    );
    Ok(())
}

#[tokio::test]
async fn subscribe_hook_allows_and_refuses() -> Result<()> {
    let backend = Backend::start(|hook, body| match (hook, body["channel"].as_str()) {
        ("connect", _) => BackendReply::ok(json!({"user": "u"})),
        ("subscribe", Some("chat:open")) => BackendReply::ok(json!({})),
        ("subscribe", Some("chat:vip")) => BackendReply::refuse("not_found", "no such room"),
        _ => BackendReply::refuse("whatever", "no"),
    })
    .await?;
    let gw = gateway(
        "proxy_subscribe",
        backend.proxy_toml(&["connect", "subscribe"], 1000, 16),
    )
    .await?;
    let mut c = gw.client().connect().await?;
    c.subscribe("chat:open").await?;
    let r = c
        .request(json!({"op": "subscribe", "channel": "chat:secret"}))
        .await?;
    tests::check_error(&r, "forbidden")?;
    let r = c
        .request(json!({"op": "subscribe", "channel": "chat:vip"}))
        .await?;
    tests::check_error(&r, "not_found")?;
    let seen = backend.requests_of("subscribe");
    ensure!(seen.len() == 3, "{seen:?}");
    ensure!(
        seen[0].body["user"] == "u" && seen[0].body["conn"] == c.conn(),
        "{:?}",
        seen[0]
    );
    // Refused subscribes left nothing behind: a publish reaches only chat:open.
    gw.api().publish("chat:secret", json!(1)).await?;
    gw.api().publish("chat:open", json!(2)).await?;
    let m = c.wait_for_type("message", RECV_TIMEOUT).await?;
    ensure!(m["channel"] == "chat:open", "{m}");
    Ok(())
}

#[tokio::test]
async fn subscribe_hook_info_is_the_members_presence_info() -> Result<()> {
    let big = "x".repeat(5000);
    let backend = Backend::start(move |hook, body| match (hook, body["channel"].as_str()) {
        ("connect", _) => BackendReply::ok(json!({"user": "mod", "info": {"name": "Mo"}})),
        ("subscribe", Some("chat:staff")) => {
            BackendReply::ok(json!({"info": {"role": "moderator"}}))
        }
        ("subscribe", Some("chat:huge")) => BackendReply::ok(json!({"info": big})),
        _ => BackendReply::ok(json!({})),
    })
    .await?;
    let gw = gateway(
        "proxy_subscribe_info",
        backend.proxy_toml(&["connect", "subscribe"], 1000, 16),
    )
    .await?;
    let mut c = gw.client().connect().await?;
    c.subscribe("chat:staff").await?;
    c.subscribe("chat:lobby").await?;
    let info_in = |body: &Value| body["members"][0]["info"].clone();
    let staff = gw
        .api()
        .get("/api/channels/chat:staff/presence")
        .await?
        .ok()?;
    ensure!(
        info_in(&staff) == json!({"role": "moderator"}),
        "the subscription's own info: {staff}"
    );
    let lobby = gw
        .api()
        .get("/api/channels/chat:lobby/presence")
        .await?
        .ok()?;
    ensure!(
        info_in(&lobby) == json!({"name": "Mo"}),
        "no info from the hook: the connection's: {lobby}"
    );
    // The client's presence op shows the same.
    let p = c
        .request_ok(
            json!({"op": "presence", "channel": "chat:staff"}),
            "presence",
        )
        .await?;
    ensure!(info_in(&p) == json!({"role": "moderator"}), "{p}");
    // More than 4096 bytes of info: an unusable answer, the subscribe is
    // refused as the backend being unavailable, and counted.
    let r = c
        .request(json!({"op": "subscribe", "channel": "chat:huge"}))
        .await?;
    tests::check_error(&r, "unavailable")?;
    let errors = metric(
        &gw.api(),
        "gateway_proxy_requests_total{hook=\"subscribe\",outcome=\"error\"}",
    )
    .await?;
    ensure!(errors == 1.0, "the bad answer counted: {errors}");
    c.request_ok(json!({"op": "ping"}), "pong").await?;
    Ok(())
}

#[tokio::test]
async fn a_namespace_has_its_own_hook_backend_or_none() -> Result<()> {
    let allow = |_: &str, _: &Value| BackendReply::ok(json!({}));
    let global = Backend::start(allow).await?;
    let orders = Backend::start(|hook, body| match (hook, body["channel"].as_str()) {
        ("subscribe", Some("orders:vip")) => BackendReply::refuse("forbidden", "not yours"),
        _ => BackendReply::ok(json!({})),
    })
    .await?;
    let config = format!(
        "{}{}
[namespaces.orders]
client_publish = true
[namespaces.orders.proxy]
publish = false
[namespaces.orders.proxy.subscribe]
url = \"{}\"
timeout_ms = 500

[namespaces.public]
client_publish = true
[namespaces.public.proxy]
subscribe = false
",
        tests::STANDARD_CONFIG,
        global.proxy_toml(&["subscribe", "publish"], 1000, 16),
        orders.url("subscribe"),
    );
    let gw = GatewayBuilder::new()
        .name("proxy_per_namespace")
        .config(&config)
        .env("GATEWAY_JWT_SECRET", SECRET)
        .spawn()
        .await?;
    let token = jwt::hs256(SECRET, &jwt::claims("n"))?;
    let mut c = gw.client().bearer(&token).connect().await?;
    c.subscribe("chat:a").await?;
    c.subscribe("orders:1").await?;
    let r = c
        .request(json!({"op": "subscribe", "channel": "orders:vip"}))
        .await?;
    tests::check_error(&r, "forbidden")?;
    c.subscribe("public:1").await?;
    let channels = |b: &Backend, hook: &str| -> Vec<String> {
        b.requests_of(hook)
            .iter()
            .map(|r| r.body["channel"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    ensure!(
        channels(&global, "subscribe") == ["chat:a"],
        "global: only the namespace without its own: {:?}",
        global.requests()
    );
    ensure!(
        channels(&orders, "subscribe") == ["orders:1", "orders:vip"],
        "{:?}",
        orders.requests()
    );
    // Publish: off for orders, global for public.
    c.publish("orders:1", json!(1)).await?;
    c.publish("public:1", json!(2)).await?;
    ensure!(
        channels(&global, "publish") == ["public:1"],
        "{:?}",
        global.requests()
    );
    ensure!(channels(&orders, "publish").is_empty());
    Ok(())
}

#[tokio::test]
async fn a_namespace_hook_set_to_true_or_with_a_bad_url_exits_64() -> Result<()> {
    for (toml, needle) in [
        (
            "[namespaces.orders.proxy]\nsubscribe = true\n",
            "orders.proxy.subscribe",
        ),
        (
            "[namespaces.orders.proxy.publish]\nurl = \"ftp://x\"\n",
            "orders.proxy.publish: url",
        ),
    ] {
        let (status, stderr) = GatewayBuilder::new()
            .name("proxy_ns_bad")
            .config(toml)
            .run_to_exit(Duration::from_secs(15))
            .await?;
        ensure!(status.code() == Some(64), "exit {status:?}: {stderr}");
        ensure!(stderr.contains(needle), "{needle}: {stderr}");
    }
    Ok(())
}

#[tokio::test]
async fn publish_hook_rewrites_and_refuses() -> Result<()> {
    let backend = Backend::start(|hook, body| match hook {
        "publish" if body["data"] == "bad" => BackendReply::refuse("forbidden", "no"),
        "publish" => BackendReply::ok(json!({"data": {"clean": body["data"]}})),
        _ => BackendReply::ok(json!({})),
    })
    .await?;
    let gw = gateway("proxy_publish", backend.proxy_toml(&["publish"], 1000, 16)).await?;
    let mut sub = gw.connect_user("s").await?;
    sub.subscribe("chat:room").await?;
    let mut publ = gw.connect_user("p").await?;
    publ.publish("chat:room", json!("hello")).await?;
    let m = sub.wait_for_type("message", RECV_TIMEOUT).await?;
    ensure!(m["data"] == json!({"clean": "hello"}), "rewritten: {m}");
    let r = publ
        .request(json!({"op": "publish", "channel": "chat:room", "data": "bad"}))
        .await?;
    tests::check_error(&r, "forbidden")?;
    sub.expect_nothing(Duration::from_millis(300)).await?;
    let seen = backend.requests_of("publish");
    ensure!(
        seen.len() == 2 && seen[0].body["channel"] == "chat:room",
        "{seen:?}"
    );
    Ok(())
}

#[tokio::test]
async fn refresh_extends_a_session_past_its_expiry_then_expired_closes_4002() -> Result<()> {
    // Sessions last 2 s; the first refresh extends by 2 s, the next says
    // expired.
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n = calls.clone();
    let backend = Backend::start(move |hook, _| match hook {
        "connect" => BackendReply::ok(json!({"user": "s", "expire_at": jwt::now_secs() + 2})),
        "refresh" if n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 => {
            BackendReply::ok(json!({"expire_at": jwt::now_secs() + 2}))
        }
        _ => BackendReply::ok(json!({"expired": true})),
    })
    .await?;
    let gw = gateway(
        "proxy_refresh",
        backend.proxy_toml(&["connect", "refresh"], 1000, 16),
    )
    .await?;
    let started = Instant::now();
    let mut c = gw.client().connect().await?;
    eventually(EVENTUALLY, "the first refresh request", || async {
        backend.requests_of("refresh").len() == 1
    })
    .await?;
    // Past its first expire_at, the connection still answers.
    c.request_ok(json!({"op": "ping"}), "pong").await?;
    let r = &backend.requests_of("refresh")[0].body;
    ensure!(r["user"] == "s" && r["conn"] == c.conn(), "{r}");
    let (code, reason) = c.expect_close(RECV_TIMEOUT).await?;
    ensure!(code == 4002, "closed {code} {reason}");
    ensure!(
        backend.requests_of("refresh").len() == 2,
        "{:?}",
        backend.requests()
    );
    ensure!(
        started.elapsed() >= Duration::from_secs(2),
        "closed before the extension ran out"
    );
    Ok(())
}

#[tokio::test]
async fn rpc_round_trip_and_refusal() -> Result<()> {
    let backend = Backend::start(|hook, body| match (hook, body["method"].as_str()) {
        ("rpc", Some("sum")) => {
            let sum: i64 = body["data"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_i64).sum())
                .unwrap_or(0);
            BackendReply::ok(json!({"data": {"sum": sum}}))
        }
        ("rpc", _) => BackendReply::refuse("not_found", "unknown method"),
        _ => BackendReply::ok(json!({})),
    })
    .await?;
    let gw = gateway("proxy_rpc", backend.proxy_toml(&["rpc"], 1000, 16)).await?;
    let token = jwt::hs256(SECRET, &jwt::claims("r"))?;
    let mut c = gw.client().bearer(&token).connect().await?;
    let r = c
        .request_ok(
            json!({"op": "rpc", "id": "x", "method": "sum", "data": [1, 2, 3]}),
            "rpc",
        )
        .await?;
    ensure!(r["id"] == "x" && r["data"] == json!({"sum": 6}), "{r}");
    let r = c.request(json!({"op": "rpc", "method": "nope"})).await?;
    tests::check_error(&r, "not_found")?;
    let seen = backend.requests_of("rpc");
    ensure!(
        seen[0].body["user"] == "r" && seen[0].body["method"] == "sum",
        "{:?}",
        seen[0]
    );
    // Without an rpc hook the op is not_found.
    let plain = gateway("proxy_rpc_off", String::new()).await?;
    let mut c = plain.connect_user("r").await?;
    let r = c.request(json!({"op": "rpc", "method": "sum"})).await?;
    tests::check_error(&r, "not_found")?;
    Ok(())
}

#[tokio::test]
async fn backend_down_refuses_with_503_promptly_and_others_are_served() -> Result<()> {
    // A port that was free a moment ago: nothing listens there.
    let port = tests::free_ports(1)?[0];
    let proxy = tests::backend::proxy_toml(
        &["connect", "rpc"],
        |h| format!("http://127.0.0.1:{port}/hook/{h}"),
        1000,
        16,
    );
    let gw = gateway("proxy_down", proxy).await?;
    let started = Instant::now();
    let refused = gw
        .client()
        .header("Cookie", "session=a")
        .expect_refused()
        .await?;
    refused.expect(503, "unavailable")?;
    ensure!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    ensure!(
        !refused.text.contains(&port.to_string()),
        "URL leaked: {}",
        refused.text
    );
    let token = jwt::hs256(SECRET, &jwt::claims("j"))?;
    let mut c = gw.client().bearer(&token).connect().await?;
    let r = c.request(json!({"op": "rpc", "method": "m"})).await?;
    tests::check_error(&r, "unavailable")?;
    ensure!(!r.to_string().contains("127.0.0.1"), "{r}");
    c.request_ok(json!({"op": "ping"}), "pong").await?;
    let errors = metric(
        &gw.api(),
        "gateway_proxy_requests_total{hook=\"connect\",outcome=\"error\"}",
    )
    .await?;
    ensure!(errors >= 1.0, "connect errors counted: {errors}");
    Ok(())
}

#[tokio::test]
async fn a_slow_backend_times_out_within_bound_and_other_clients_are_unaffected() -> Result<()> {
    let backend = Backend::start(|hook, body| match (hook, body["channel"].as_str()) {
        ("subscribe", Some("chat:slow")) => {
            BackendReply::ok(json!({})).after(Duration::from_secs(10))
        }
        ("connect", _) if body["headers"]["cookie"] == "slow" => {
            BackendReply::ok(json!({"user": "x"})).after(Duration::from_secs(10))
        }
        ("connect", _) => BackendReply::ok(json!({"user": "fast"})),
        _ => BackendReply::ok(json!({})),
    })
    .await?;
    let gw = gateway(
        "proxy_slow",
        backend.proxy_toml(&["connect", "subscribe"], 300, 16),
    )
    .await?;
    let mut slow = gw.client().connect().await?;
    let mut other = gw.client().connect().await?;
    let started = Instant::now();
    slow.send_json(&json!({"op": "subscribe", "id": 1, "channel": "chat:slow"}))
        .await?;
    // Meanwhile another client is served at once.
    other.subscribe("chat:fast").await?;
    let e = slow.expect_error("unavailable", RECV_TIMEOUT).await?;
    let took = started.elapsed();
    ensure!(e["id"] == 1, "{e}");
    ensure!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "timeout took {took:?}"
    );
    slow.request_ok(json!({"op": "ping"}), "pong").await?;
    let started = Instant::now();
    gw.client()
        .header("Cookie", "slow")
        .expect_refused()
        .await?
        .expect(503, "unavailable")?;
    ensure!(
        started.elapsed() < Duration::from_secs(3),
        "connect timeout took {:?}",
        started.elapsed()
    );
    ensure!(
        metric(
            &gw.api(),
            "gateway_proxy_requests_total{hook=\"subscribe\",outcome=\"timeout\"}"
        )
        .await?
            >= 1.0,
        "timeout counted"
    );
    Ok(())
}

#[tokio::test]
async fn a_full_hook_answers_unavailable_at_once() -> Result<()> {
    let backend = Backend::start(|hook, body| match (hook, body["method"].as_str()) {
        ("rpc", Some("hold")) => {
            BackendReply::ok(json!({"data": "held"})).after(Duration::from_secs(3))
        }
        _ => BackendReply::ok(json!({"data": "quick"})),
    })
    .await?;
    let gw = gateway("proxy_overload", backend.proxy_toml(&["rpc"], 5000, 1)).await?;
    let mut a = gw.connect_user("a").await?;
    let mut b = gw.connect_user("b").await?;
    a.send_json(&json!({"op": "rpc", "id": 1, "method": "hold"}))
        .await?;
    eventually(EVENTUALLY, "the backend holds a's request", || async {
        backend.in_flight() == 1
    })
    .await?;
    let started = Instant::now();
    let r = b.request(json!({"op": "rpc", "method": "quick"})).await?;
    tests::check_error(&r, "unavailable")?;
    ensure!(
        started.elapsed() < Duration::from_secs(1),
        "waited {:?}",
        started.elapsed()
    );
    ensure!(
        backend.requests_of("rpc").len() == 1,
        "b's request reached the backend"
    );
    let held = a.wait_for_type("rpc", RECV_TIMEOUT).await?;
    ensure!(held["data"] == "held", "{held}");
    // The permit is back: b is served now.
    let r = b
        .request_ok(json!({"op": "rpc", "method": "quick"}), "rpc")
        .await?;
    ensure!(r["data"] == "quick", "{r}");
    let overloaded = metric(
        &gw.api(),
        "gateway_proxy_requests_total{hook=\"rpc\",outcome=\"overloaded\"}",
    )
    .await
    .context("metric")?;
    ensure!(overloaded >= 1.0, "overloaded counted: {overloaded}");
    Ok(())
}
