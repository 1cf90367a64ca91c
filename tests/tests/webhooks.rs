//! Webhook delivery (docs/backend.md, "Webhooks"): a real gateway process
//! POSTs its events to a real HTTP receiver in the test process
//! ([`WebhookSink`]). Covers the events this node emits (connection_closed,
//! client_publish per namespace), batching by count and time, the
//! signature, unique ids, retry through a 10 s outage with order kept, the
//! queue bound, no retry on 400, the shutdown flush, and bad settings.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use tests::webhook_sink::verify;
use tests::{eventually, opcode, Gateway, GatewayBuilder, RawWs, WebhookSink, EVENTUALLY};
use tokio::time::Instant;

const SECRET: &str = "webhook-test-secret-0123456789";

/// Namespaces: `hooked` sends client_publish webhooks, `plain` does not.
const CONFIG: &str = r#"
[default_namespace]
client_publish = true
allow_anonymous = true

[namespaces.hooked]
client_publish = true
allow_anonymous = true
webhook_client_publish = true

[namespaces.plain]
client_publish = true
allow_anonymous = true
"#;

fn builder(name: &str, sink: &WebhookSink) -> GatewayBuilder {
    GatewayBuilder::new()
        .name(name)
        .config(CONFIG)
        .env("GATEWAY_WEBHOOK_URL", sink.url())
        .env("GATEWAY_WEBHOOK_SECRET", SECRET)
        .env("GATEWAY_WEBHOOK_BATCH_MAX_WAIT_MS", 100)
        .env("GATEWAY_WEBHOOK_RETRY_INITIAL_MS", 100)
        .env("GATEWAY_WEBHOOK_RETRY_MAX_MS", 1000)
}

/// The value of the series of `name` whose labels include `label="value"`.
async fn labelled(gw: &Gateway, name: &str, label: &str, value: &str) -> Result<f64> {
    let text = gw.api().metrics().await?;
    Ok(tests::metric_labelled(&text, name, label, value))
}

async fn gauge(gw: &Gateway, name: &str) -> Result<f64> {
    tests::metric(&gw.api(), name).await
}

/// Publish `n` messages `{"seq": from..from+n}` to `channel` from one
/// client, all sent before any reply is read (so they come together), and
/// wait for every `published`.
async fn publish_burst(c: &mut tests::Client, channel: &str, from: u64, n: u64) -> Result<()> {
    for seq in from..from + n {
        c.send_json(&json!({"op": "publish", "id": seq, "channel": channel, "data": {"seq": seq}}))
            .await?;
    }
    for _ in 0..n {
        c.wait_for_type("published", tests::RECV_TIMEOUT).await?;
    }
    Ok(())
}

async fn retries(gw: &Gateway) -> Result<f64> {
    labelled(gw, "gateway_webhook_batches_total", "outcome", "retry").await
}

fn of_name<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["name"] == name).collect()
}

/// The `seq` of each client_publish event, in order.
fn seqs(events: &[Value]) -> Vec<u64> {
    of_name(events, "client_publish")
        .iter()
        .filter_map(|e| e["data"]["seq"].as_u64())
        .collect()
}

/// Events without repeats of an id (a retry whose answer was lost may
/// deliver a batch twice: backends deduplicate by id), in first-seen order.
fn dedupe(events: &[Value]) -> Vec<Value> {
    let mut seen = HashSet::new();
    events
        .iter()
        .filter(|e| seen.insert(e["id"].as_str().unwrap_or_default().to_owned()))
        .cloned()
        .collect()
}

#[tokio::test]
async fn connection_closed_reports_each_connection_with_its_code_and_reason() -> Result<()> {
    let sink = WebhookSink::start().await?;
    let gw = builder("webhooks_closed", &sink).spawn().await?;
    let mut normal = gw.connect_user("alice").await?;
    let mut kicked = gw.connect_user("bob").await?;
    let mut bad = RawWs::connect(gw.addr()?, "/ws").await?;
    let welcome = bad
        .read_frame(tests::RECV_TIMEOUT)
        .await?
        .context("welcome frame")?;
    let welcome: Value = serde_json::from_slice(&welcome.payload)?;
    let bad_id = welcome["conn"].as_str().context("conn")?.to_owned();
    let (normal_id, kicked_id) = (normal.conn(), kicked.conn());

    normal.close_handshake(1000, "bye").await?;
    let answer = gw
        .api()
        .post(
            &format!("/api/connections/{kicked_id}/disconnect"),
            &json!({"code": 4321, "reason": "kicked"}),
        )
        .await?;
    ensure!(answer.status == 200, "disconnect answered {answer:?}");
    ensure!(kicked.expect_close(tests::RECV_TIMEOUT).await?.0 == 4321);
    // Invalid UTF-8 in a text frame: closed 1007 by the server.
    bad.send_frame(opcode::TEXT, b"{\"op\":\"ping\",\"x\":\"\xff\"}")
        .await?;
    let bad_close = bad
        .read_until_close(tests::RECV_TIMEOUT)
        .await?
        .close
        .context("close frame")?;

    let events = sink
        .wait_events(EVENTUALLY, "three connection_closed events", |e| {
            of_name(e, "connection_closed").len() >= 3
        })
        .await?;
    let closed = of_name(&events, "connection_closed");
    ensure!(closed.len() == 3, "exactly three closes: {closed:#?}");
    let find = |conn: &str| -> Result<&Value> {
        closed
            .iter()
            .copied()
            .find(|e| e["conn"] == conn)
            .with_context(|| format!("no connection_closed for {conn}: {closed:#?}"))
    };
    let e = find(&normal_id)?;
    ensure!(
        e["code"] == 1000 && e["reason"] == "normal" && e["user"] == "alice",
        "{e}"
    );
    let e = find(&kicked_id)?;
    ensure!(
        e["code"] == 4321 && e["reason"] == "api_disconnect" && e["user"] == "bob",
        "{e}"
    );
    let e = find(&bad_id)?;
    ensure!(
        e["code"] == u64::from(bad_close.0) && e["code"] == 1007,
        "{e} vs {bad_close:?}"
    );
    ensure!(
        e["reason"] == "invalid_payload" && e["user"].is_null(),
        "{e}"
    );
    for e in &closed {
        let id = e["id"].as_str().context("id")?;
        ensure!(id.starts_with(&format!("{}:", normal.node())), "id {id}");
        ensure!(
            e["time_ms"].as_u64().is_some_and(|t| t > 1_600_000_000_000),
            "{e}"
        );
    }
    // Every request: signed, JSON, from this node.
    for r in sink.received() {
        ensure!(
            verify(SECRET, &r),
            "signature does not verify: {}",
            r.summary()
        );
        ensure!(
            r.header("content-type") == Some("application/json"),
            "{}",
            r.summary()
        );
        ensure!(r.json["node"] == normal.node(), "{}", r.json);
        ensure!(r.header("x-gateway-node") == Some(normal.node().as_str()));
    }
    ensure!(
        labelled(
            &gw,
            "gateway_webhook_events_total",
            "name",
            "connection_closed"
        )
        .await?
            == 3.0
    );
    Ok(())
}

#[tokio::test]
async fn client_publish_is_sent_only_for_the_opted_in_namespace() -> Result<()> {
    let sink = WebhookSink::start().await?;
    let gw = builder("webhooks_client_publish", &sink).spawn().await?;
    let mut c = gw.connect_user("carol").await?;
    c.publish("plain:a", json!({"seq": 1})).await?;
    c.publish("hooked:a", json!({"seq": 2, "text": "hi"}))
        .await?;
    c.publish("plain:b", json!({"seq": 3})).await?;
    c.publish("nons", json!({"seq": 4})).await?;
    // Sent in order: once seq 5 is in, any event for 1, 3 or 4 would be too.
    c.publish("hooked:b", json!({"seq": 5})).await?;
    let events = sink
        .wait_events(EVENTUALLY, "client_publish of seq 5", |e| {
            seqs(e).contains(&5)
        })
        .await?;
    ensure!(
        seqs(&events) == [2, 5],
        "only the hooked namespace: {events:#?}"
    );
    let e = of_name(&events, "client_publish")[0];
    ensure!(e["channel"] == "hooked:a", "{e}");
    ensure!(e["user"] == "carol" && e["conn"] == c.conn(), "{e}");
    ensure!(e["data"] == json!({"seq": 2, "text": "hi"}), "{e}");
    ensure!(
        labelled(
            &gw,
            "gateway_webhook_events_total",
            "name",
            "client_publish"
        )
        .await?
            == 2.0
    );
    Ok(())
}

#[tokio::test]
async fn events_that_come_together_share_a_batch_and_a_lone_one_waits_at_most_the_max_wait(
) -> Result<()> {
    let sink = WebhookSink::start().await?;
    let gw = builder("webhooks_batching", &sink)
        .env("GATEWAY_WEBHOOK_BATCH_MAX_WAIT_MS", 300)
        .env("GATEWAY_WEBHOOK_BATCH_MAX_EVENTS", 8)
        .spawn()
        .await?;
    let mut c = gw.connect_user("dave").await?;
    publish_burst(&mut c, "hooked:burst", 0, 20).await?;
    let events = sink
        .wait_events(EVENTUALLY, "20 client_publish events", |e| {
            seqs(e).len() >= 20
        })
        .await?;
    ensure!(
        seqs(&events) == (0..20).collect::<Vec<_>>(),
        "in order: {events:#?}"
    );
    let sizes: Vec<usize> = sink.received().iter().map(|r| r.events().len()).collect();
    ensure!(
        sizes.iter().all(|&n| n <= 8),
        "no batch above webhook_batch_max_events: {sizes:?}"
    );
    ensure!(
        sizes.len() <= 6 && sizes.iter().any(|&n| n >= 4),
        "20 events sent together travel in a few full batches, not one request each: {sizes:?}"
    );
    // A lone event: sent once the max wait has passed, not before, and not
    // much later.
    let before = sink.received().len();
    let started = Instant::now();
    c.publish("hooked:lone", json!({"seq": 100})).await?;
    let events = sink
        .wait_events(EVENTUALLY, "the lone event", |e| seqs(e).contains(&100))
        .await?;
    let took = sink
        .received()
        .iter()
        .find(|r| r.events().iter().any(|e| e["data"]["seq"] == 100))
        .map(|r| r.at.duration_since(started))
        .context("request of the lone event")?;
    ensure!(sink.received().len() == before + 1, "one request for it");
    ensure!(seqs(&events).last() == Some(&100));
    ensure!(
        took >= Duration::from_millis(250),
        "a lone event waits for company (300 ms): arrived after {took:?}"
    );
    ensure!(
        took <= Duration::from_millis(300 + 1500),
        "a lone event arrives within the max wait (300 ms, +1.5 s slack): {took:?}"
    );
    Ok(())
}

#[tokio::test]
async fn signature_verifies_with_the_secret_only_and_ids_are_unique() -> Result<()> {
    let sink = WebhookSink::start().await?;
    let gw = builder("webhooks_signature", &sink)
        .env("GATEWAY_WEBHOOK_HEADERS", "X-Api-Key: k-123,X-Env: test")
        .spawn()
        .await?;
    let mut c = gw.connect_user("erin").await?;
    for round in 0..3 {
        publish_burst(&mut c, "hooked:sig", round * 10, 10).await?;
    }
    let events = sink
        .wait_events(EVENTUALLY, "30 events", |e| seqs(e).len() >= 30)
        .await?;
    let ids: HashSet<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    ensure!(ids.len() == events.len(), "ids unique: {events:#?}");
    let received = sink.received();
    ensure!(!received.is_empty());
    let now_ms = u128::from(u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?);
    for r in &received {
        ensure!(
            verify(SECRET, r),
            "verifies with the secret: {}",
            r.summary()
        );
        ensure!(
            !verify("webhook-test-secret-0123456780", r),
            "must not verify with another secret"
        );
        let mut tampered = r.clone();
        let mut body = tampered.body.to_vec();
        body.push(b' ');
        tampered.body = body.into();
        ensure!(!verify(SECRET, &tampered), "a changed body must not verify");
        let mut shifted = r.clone();
        let ts: u128 = r
            .header("x-gateway-timestamp")
            .context("timestamp")?
            .parse()?;
        ensure!(
            ts <= now_ms && now_ms - ts < 60_000,
            "timestamp is recent unix ms: {ts}"
        );
        shifted
            .headers
            .insert("x-gateway-timestamp".into(), (ts + 1).to_string());
        ensure!(!verify(SECRET, &shifted), "the timestamp is signed");
        ensure!(
            r.header("x-api-key") == Some("k-123"),
            "extra header: {}",
            r.summary()
        );
        ensure!(
            r.header("x-env") == Some("test"),
            "extra header: {}",
            r.summary()
        );
        ensure!(r.json["time_ms"].as_u64().is_some(), "{}", r.json);
    }
    Ok(())
}

#[tokio::test]
async fn receiver_down_for_10_s_then_every_event_arrives_in_order() -> Result<()> {
    let mut sink = WebhookSink::start().await?;
    let gw = builder("webhooks_outage", &sink).spawn().await?;
    let mut c = gw.connect_user("frank").await?;
    // The path works first (and the gateway holds a pooled connection).
    c.publish("hooked:o", json!({"seq": 0})).await?;
    sink.wait_events(EVENTUALLY, "seq 0", |e| seqs(e) == [0])
        .await?;
    sink.stop().await?;
    let down = Instant::now();
    for seq in 1..=30 {
        c.publish("hooked:o", json!({"seq": seq})).await?;
    }
    // The outage lasts 10 s; in every 2.5 s of it the retries go on.
    let mut last = retries(&gw).await?;
    while down.elapsed() < Duration::from_secs(10) {
        let window = Duration::from_millis(2500);
        eventually(
            window + Duration::from_secs(2),
            "retries go on while down",
            || async { retries(&gw).await.is_ok_and(|r| r > last) },
        )
        .await?;
        last = retries(&gw).await?;
        let held = gauge(&gw, "gateway_webhook_queue_events").await?;
        ensure!(held >= 30.0, "30 events held while down, gauge {held}");
        // Not a sync sleep: the scenario's duration, with the retry
        // counter asserted throughout.
        tokio::time::sleep(window.min(Duration::from_secs(10).saturating_sub(down.elapsed())))
            .await;
    }
    ensure!(sink.events().len() == 1, "nothing arrives while down");
    ensure!(last >= 5.0, "retried through the outage: {last}");
    sink.restart().await?;
    let events = sink
        .wait_events(EVENTUALLY, "every event after the outage", |e| {
            seqs(&dedupe(e)).len() >= 31
        })
        .await?;
    let unique = dedupe(&events);
    ensure!(
        seqs(&unique) == (0..=30).collect::<Vec<_>>(),
        "each event once, in emit order: {unique:#?}"
    );
    eventually(EVENTUALLY, "queue gauge back to 0", || async {
        gauge(&gw, "gateway_webhook_queue_events")
            .await
            .is_ok_and(|g| g == 0.0)
    })
    .await?;
    ensure!(
        labelled(
            &gw,
            "gateway_webhook_events_dropped_total",
            "reason",
            "queue_full"
        )
        .await?
            == 0.0
    );
    // Logged once per change of state, not per attempt.
    eventually(EVENTUALLY, "recovery logged", || async {
        gw.stderr().contains("webhook delivery recovered")
    })
    .await?;
    let log = gw.stderr();
    ensure!(
        log.matches("webhook delivery failing").count() == 1,
        "one warning for the outage:\n{log}"
    );
    ensure!(
        log.matches("webhook delivery recovered").count() == 1,
        "{log}"
    );
    Ok(())
}

#[tokio::test]
async fn a_full_queue_keeps_exactly_the_bound_and_counts_the_rest_as_dropped() -> Result<()> {
    let mut sink = WebhookSink::start().await?;
    let gw = builder("webhooks_queue_bound", &sink)
        .env("GATEWAY_WEBHOOK_QUEUE_SIZE", 20)
        .env("GATEWAY_WEBHOOK_EVENTS", "client_publish")
        .spawn()
        .await?;
    let mut c = gw.connect_user("gina").await?;
    sink.stop().await?;
    for seq in 0..30 {
        c.publish("hooked:q", json!({"seq": seq})).await?;
    }
    eventually(EVENTUALLY, "10 events dropped as queue_full", || async {
        labelled(
            &gw,
            "gateway_webhook_events_dropped_total",
            "reason",
            "queue_full",
        )
        .await
        .is_ok_and(|d| d == 10.0)
    })
    .await?;
    ensure!(gauge(&gw, "gateway_webhook_queue_events").await? == 20.0);
    sink.restart().await?;
    sink.wait_events(EVENTUALLY, "the 20 held events", |e| {
        seqs(&dedupe(e)).len() >= 20
    })
    .await?;
    // Filtered out by webhook_events: a close is not even counted.
    let mut other = gw.connect_user("gina2").await?;
    other.close_handshake(1000, "bye").await?;
    eventually(EVENTUALLY, "the other connection is gone", || async {
        tests::metric(&gw.api(), "gateway_connections")
            .await
            .is_ok_and(|n| n == 1.0)
    })
    .await?;
    // A marker after them: once it is in, nothing else is coming.
    c.publish("hooked:q", json!({"seq": 999})).await?;
    let events = sink
        .wait_events(EVENTUALLY, "the marker", |e| seqs(e).contains(&999))
        .await?;
    let mut want: Vec<u64> = (0..20).collect();
    want.push(999);
    ensure!(
        seqs(&dedupe(&events)) == want,
        "exactly the first 20 (the bound), then the marker: {:?}",
        seqs(&events)
    );
    ensure!(
        labelled(
            &gw,
            "gateway_webhook_events_total",
            "name",
            "client_publish"
        )
        .await?
            == 31.0
    );
    ensure!(
        of_name(&events, "connection_closed").is_empty(),
        "{events:#?}"
    );
    ensure!(
        labelled(
            &gw,
            "gateway_webhook_events_total",
            "name",
            "connection_closed"
        )
        .await?
            == 0.0
    );
    Ok(())
}

#[tokio::test]
async fn the_byte_bound_drops_large_events_that_do_not_fit() -> Result<()> {
    let mut sink = WebhookSink::start().await?;
    let gw = builder("webhooks_queue_bytes", &sink)
        .env("GATEWAY_WEBHOOK_QUEUE_BYTES", 1 << 20)
        .env("GATEWAY_WEBHOOK_EVENTS", "client_publish")
        .spawn()
        .await?;
    let mut c = gw.connect_user("lee").await?;
    sink.stop().await?;
    let pad = "x".repeat(60_000);
    let total = 25u64;
    for seq in 0..total {
        c.publish("hooked:big", json!({"seq": seq, "pad": pad}))
            .await?;
    }
    let dropped = labelled(
        &gw,
        "gateway_webhook_events_dropped_total",
        "reason",
        "queue_full",
    )
    .await?;
    let held = gauge(&gw, "gateway_webhook_queue_events").await?;
    ensure!(
        (15.0..=17.0).contains(&held) && held + dropped == total as f64,
        "1 MiB holds at most 17 events of 60 kB: held {held}, dropped {dropped}"
    );
    sink.restart().await?;
    let events = sink
        .wait_events(EVENTUALLY, "the held events", |e| {
            seqs(&dedupe(e)).len() >= held as usize
        })
        .await?;
    let want: Vec<u64> = (0..held as u64).collect();
    ensure!(seqs(&dedupe(&events)) == want, "the first ones, in order");
    Ok(())
}

#[tokio::test]
async fn a_400_is_not_retried_and_is_counted_rejected() -> Result<()> {
    let sink = WebhookSink::start().await?;
    sink.set_status(400);
    let gw = builder("webhooks_rejected", &sink)
        .env("GATEWAY_WEBHOOK_EVENTS", "client_publish")
        .spawn()
        .await?;
    let mut c = gw.connect_user("hank").await?;
    c.publish("hooked:r", json!({"seq": 1})).await?;
    eventually(EVENTUALLY, "batch counted rejected", || async {
        labelled(&gw, "gateway_webhook_batches_total", "outcome", "rejected")
            .await
            .is_ok_and(|r| r == 1.0)
    })
    .await?;
    sink.set_status(200);
    c.publish("hooked:r", json!({"seq": 2})).await?;
    let events = sink
        .wait_events(EVENTUALLY, "seq 2", |e| seqs(e).contains(&2))
        .await?;
    ensure!(seqs(&events) == [2], "seq 1 was dropped: {events:#?}");
    let statuses: Vec<u16> = sink.received().iter().map(|r| r.status).collect();
    ensure!(
        statuses == [400, 200],
        "the 400 was not retried: {statuses:?}"
    );
    ensure!(labelled(&gw, "gateway_webhook_batches_total", "outcome", "retry").await? == 0.0);
    ensure!(
        labelled(
            &gw,
            "gateway_webhook_events_dropped_total",
            "reason",
            "rejected"
        )
        .await?
            == 1.0
    );
    ensure!(gw.stderr().matches("rejected a batch").count() == 1);
    Ok(())
}

#[tokio::test]
async fn a_503_is_retried_until_accepted() -> Result<()> {
    let sink = WebhookSink::start().await?;
    sink.set_status(503);
    let gw = builder("webhooks_503", &sink)
        .env("GATEWAY_WEBHOOK_EVENTS", "client_publish")
        .spawn()
        .await?;
    let mut c = gw.connect_user("ivy").await?;
    c.publish("hooked:r", json!({"seq": 1})).await?;
    eventually(EVENTUALLY, "three attempts answered 503", || async {
        sink.received().len() >= 3
    })
    .await?;
    sink.set_status(200);
    let events = sink
        .wait_events(EVENTUALLY, "seq 1 accepted", |e| seqs(e) == [1])
        .await?;
    ensure!(events[0]["data"]["seq"] == 1);
    let received = sink.received();
    ensure!(
        received.windows(2).all(|w| w[0].body == w[1].body),
        "a retry sends the same body"
    );
    ensure!(labelled(&gw, "gateway_webhook_batches_total", "outcome", "ok").await? == 1.0);
    Ok(())
}

#[tokio::test]
async fn shutdown_delivers_queued_events_within_the_bound() -> Result<()> {
    let sink = WebhookSink::start().await?;
    // Events would wait 20 s for company: only the shutdown flush sends
    // them sooner.
    let mut gw = builder("webhooks_shutdown", &sink)
        .env("GATEWAY_WEBHOOK_BATCH_MAX_WAIT_MS", 20_000)
        .env("GATEWAY_WEBHOOK_FLUSH_TIMEOUT_MS", 5_000)
        .spawn()
        .await?;
    let mut c = gw.connect_user("jack").await?;
    let conn = c.conn();
    for seq in 0..5 {
        c.publish("hooked:s", json!({"seq": seq})).await?;
    }
    eventually(EVENTUALLY, "five events queued", || async {
        gauge(&gw, "gateway_webhook_queue_events")
            .await
            .is_ok_and(|g| g == 5.0)
    })
    .await?;
    ensure!(sink.received().is_empty(), "held for the batch wait");
    let started = Instant::now();
    gw.sigterm()?;
    ensure!(c.expect_close(tests::RECV_TIMEOUT).await?.0 == 1001);
    drop(c);
    let status = gw.wait_exit(Duration::from_secs(15)).await?;
    let took = started.elapsed();
    ensure!(status.success(), "clean exit: {status:?}");
    ensure!(took < Duration::from_secs(10), "drained in {took:?}");
    let events = sink.events();
    ensure!(seqs(&events) == [0, 1, 2, 3, 4], "{events:#?}");
    let closed = of_name(&events, "connection_closed");
    ensure!(
        closed.len() == 1
            && closed[0]["conn"] == conn
            && closed[0]["code"] == 1001
            && closed[0]["reason"] == "shutdown",
        "the drain's close is flushed too: {closed:#?}"
    );
    Ok(())
}

#[tokio::test]
async fn shutdown_with_the_receiver_down_gives_up_after_the_flush_timeout() -> Result<()> {
    let mut sink = WebhookSink::start().await?;
    let mut gw = builder("webhooks_shutdown_down", &sink)
        .env("GATEWAY_WEBHOOK_FLUSH_TIMEOUT_MS", 1_500)
        .env("GATEWAY_WEBHOOK_EVENTS", "client_publish")
        .spawn()
        .await?;
    let mut c = gw.connect_user("kim").await?;
    sink.stop().await?;
    c.publish("hooked:s", json!({"seq": 1})).await?;
    eventually(EVENTUALLY, "a retry", || async {
        labelled(&gw, "gateway_webhook_batches_total", "outcome", "retry")
            .await
            .is_ok_and(|r| r >= 1.0)
    })
    .await?;
    let started = Instant::now();
    gw.sigterm()?;
    ensure!(c.expect_close(tests::RECV_TIMEOUT).await?.0 == 1001);
    drop(c);
    let status = gw.wait_exit(Duration::from_secs(15)).await?;
    let took = started.elapsed();
    ensure!(status.success(), "clean exit: {status:?}");
    ensure!(
        took < Duration::from_millis(1_500 + 3_000),
        "the flush gives up after its 1.5 s: {took:?}"
    );
    let log = gw.stderr();
    ensure!(log.contains("shutdown flush"), "the loss is logged:\n{log}");
    Ok(())
}

#[tokio::test]
async fn bad_webhook_settings_exit_64_naming_the_setting() -> Result<()> {
    for (env, value, setting) in [
        ("GATEWAY_WEBHOOK_SECRET", "", "webhook_secret"),
        ("GATEWAY_WEBHOOK_SECRET", "short", "webhook_secret"),
        (
            "GATEWAY_WEBHOOK_EVENTS",
            "connection_closed,nope",
            "webhook_events",
        ),
        ("GATEWAY_WEBHOOK_QUEUE_SIZE", "0", "webhook_queue_size"),
    ] {
        let mut b = GatewayBuilder::new()
            .name("webhooks_bad_config")
            .env("GATEWAY_WEBHOOK_URL", "http://127.0.0.1:9/hook");
        if env != "GATEWAY_WEBHOOK_SECRET" {
            b = b.env("GATEWAY_WEBHOOK_SECRET", SECRET);
        }
        if !value.is_empty() {
            b = b.env(env, value);
        }
        let (status, stderr) = b.run_to_exit(Duration::from_secs(15)).await?;
        if status.code() != Some(64) {
            bail!("{env}={value:?}: exit {status:?}, want 64\n{stderr}");
        }
        ensure!(
            stderr.contains(&format!("`{setting}`")),
            "{env}={value:?} must name {setting}: {stderr}"
        );
    }
    let (status, stderr) = GatewayBuilder::new()
        .name("webhooks_bad_url")
        .env("GATEWAY_WEBHOOK_URL", "ftp://example.com/")
        .env("GATEWAY_WEBHOOK_SECRET", SECRET)
        .run_to_exit(Duration::from_secs(15))
        .await?;
    ensure!(
        status.code() == Some(64) && stderr.contains("`webhook_url`"),
        "{stderr}"
    );
    Ok(())
}
