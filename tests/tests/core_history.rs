//! History and recovery on the embedded backend: offsets, epochs, replay
//! with `since`, trimming, the history HTTP API, and no gap or duplicate
//! between replay and live delivery under concurrent publishing
//! (docs/protocol.md, "History and recovery").

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use tests::{Client, Gateway, GatewayBuilder, RECV_TIMEOUT};

/// Publishes `data` 1..=n to `channel` through the API; returns the offsets.
async fn publish_n(gw: &Gateway, channel: &str, n: u64) -> Result<Vec<Value>> {
    let api = gw.api();
    let mut offsets = Vec::new();
    for i in 1..=n {
        let r = api.publish(channel, json!({ "i": i })).await?;
        offsets.push(r["offset"].clone());
    }
    Ok(offsets)
}

/// Reads `n` messages and returns their (offset, data.i) pairs.
async fn read_messages(c: &mut Client, n: usize) -> Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let m = c.expect_type("message", RECV_TIMEOUT).await?;
        let offset = m["offset"]
            .as_u64()
            .with_context(|| format!("message without offset: {m}"))?;
        out.push((offset, m["data"]["i"].as_u64().unwrap_or(0)));
    }
    Ok(out)
}

fn epoch_of(v: &Value) -> Result<String> {
    match v["epoch"].as_str() {
        Some(e) if !e.is_empty() => Ok(e.to_owned()),
        _ => bail!("no non-empty string epoch in {v}"),
    }
}

#[tokio::test]
async fn offsets_count_up_and_subscribe_reports_the_top() -> Result<()> {
    let gw = Gateway::standard("hist_offsets").await?;
    let offsets = publish_n(&gw, "hist:a", 5).await?;
    ensure!(
        offsets == vec![json!(1), json!(2), json!(3), json!(4), json!(5)],
        "{offsets:?}"
    );

    let mut c = gw.connect_user("alice").await?;
    let s = c.subscribe("hist:a").await?;
    ensure!(
        s["offset"] == 5,
        "subscribed.offset must be the top offset: {s}"
    );
    epoch_of(&s)?;
    // Without since nothing is replayed: the next message is the live one.
    gw.api().publish("hist:a", json!({"i": 6})).await?;
    let m = c.expect_type("message", RECV_TIMEOUT).await?;
    ensure!(
        m["offset"] == 6 && m["data"]["i"] == 6,
        "first message after subscribe: {m}"
    );

    // A client publication gets an offset too.
    let r = c.publish("hist:a", json!({"i": 7})).await?;
    ensure!(r["offset"] == 7, "published.offset: {r}");
    Ok(())
}

#[tokio::test]
async fn since_replays_missed_publications_then_live() -> Result<()> {
    let gw = Gateway::standard("hist_since").await?;
    let mut first = gw.connect_user("alice").await?;
    let s = first.subscribe("hist:b").await?;
    let epoch = epoch_of(&s)?;
    publish_n(&gw, "hist:b", 5).await?;
    read_messages(&mut first, 2).await?;
    drop(first);

    let mut again = gw.connect_user("alice").await?;
    let s = again
        .subscribe_since("hist:b", json!({"offset": 2, "epoch": epoch}))
        .await?;
    ensure!(
        s["recovered"] == true,
        "recovery within retained history: {s}"
    );
    ensure!(
        s["offset"] == 5 && s["epoch"] == epoch.as_str(),
        "subscribed: {s}"
    );
    let got = read_messages(&mut again, 3).await?;
    ensure!(
        got == vec![(3, 3), (4, 4), (5, 5)],
        "replay after offset 2: {got:?}"
    );
    gw.api().publish("hist:b", json!({"i": 6})).await?;
    let got = read_messages(&mut again, 1).await?;
    ensure!(got == vec![(6, 6)], "live after replay: {got:?}");
    Ok(())
}

#[tokio::test]
async fn since_offset_zero_replays_everything_retained() -> Result<()> {
    let gw = Gateway::standard("hist_since_zero").await?;
    publish_n(&gw, "hist:log", 4).await?;
    let mut c = gw.connect_user("alice").await?;
    let s = c.subscribe_since("hist:log", json!({"offset": 0})).await?;
    ensure!(
        s["recovered"] == true,
        "offset 0 with nothing trimmed is a full recovery: {s}"
    );
    ensure!(s["offset"] == 4, "subscribed: {s}");
    let got = read_messages(&mut c, 4).await?;
    ensure!(
        got == vec![(1, 1), (2, 2), (3, 3), (4, 4)],
        "replay: {got:?}"
    );

    // An empty epoch matches any epoch too.
    let mut d = gw.connect_user("bob").await?;
    let s = d
        .subscribe_since("hist:log", json!({"offset": 2, "epoch": ""}))
        .await?;
    ensure!(s["recovered"] == true, "empty epoch matches: {s}");
    let got = read_messages(&mut d, 2).await?;
    ensure!(got == vec![(3, 3), (4, 4)], "replay: {got:?}");
    Ok(())
}

#[tokio::test]
async fn trimmed_history_replays_what_is_retained_and_says_not_recovered() -> Result<()> {
    let gw = Gateway::standard("hist_trimmed").await?;
    // `small` keeps 3 publications.
    let mut first = gw.connect_user("alice").await?;
    let epoch = epoch_of(&first.subscribe("small:t").await?)?;
    drop(first);
    publish_n(&gw, "small:t", 6).await?;

    let mut c = gw.connect_user("alice").await?;
    let s = c
        .subscribe_since("small:t", json!({"offset": 1, "epoch": epoch}))
        .await?;
    ensure!(
        s["recovered"] == false,
        "publications 2..3 were trimmed: {s}"
    );
    ensure!(s["offset"] == 6, "subscribed: {s}");
    let got = read_messages(&mut c, 3).await?;
    ensure!(
        got == vec![(4, 4), (5, 5), (6, 6)],
        "retained replay: {got:?}"
    );

    let mut d = gw.connect_user("bob").await?;
    let s = d.subscribe_since("small:t", json!({"offset": 0})).await?;
    ensure!(
        s["recovered"] == false,
        "offset 0 after trimming cannot be a full recovery: {s}"
    );
    let got = read_messages(&mut d, 3).await?;
    ensure!(
        got == vec![(4, 4), (5, 5), (6, 6)],
        "offset 0 replays everything retained: {got:?}"
    );

    let h = gw.api().history("small:t", "").await?;
    let offsets: Vec<Value> = h["messages"]
        .as_array()
        .map(|m| m.iter().map(|x| x["offset"].clone()).collect())
        .unwrap_or_default();
    ensure!(
        offsets == vec![json!(4), json!(5), json!(6)],
        "history API after trimming: {h}"
    );
    Ok(())
}

#[tokio::test]
async fn epoch_mismatch_replays_nothing() -> Result<()> {
    let gw = Gateway::standard("hist_epoch_mismatch").await?;
    publish_n(&gw, "hist:e", 3).await?;
    let mut c = gw.connect_user("alice").await?;
    let s = c
        .subscribe_since("hist:e", json!({"offset": 1, "epoch": "not-the-epoch"}))
        .await?;
    ensure!(s["recovered"] == false, "epoch mismatch: {s}");
    ensure!(s["offset"] == 3, "subscribed: {s}");
    gw.api().publish("hist:e", json!({"i": 4})).await?;
    let m = c.expect_type("message", RECV_TIMEOUT).await?;
    ensure!(
        m["offset"] == 4,
        "nothing may be replayed on an epoch mismatch; got {m}"
    );
    Ok(())
}

#[tokio::test]
async fn since_ahead_of_the_stream_is_not_recovered() -> Result<()> {
    let gw = Gateway::standard("hist_ahead").await?;
    publish_n(&gw, "hist:f", 2).await?;
    let mut c = gw.connect_user("alice").await?;
    let epoch = epoch_of(&gw.api().history("hist:f", "").await?)?;
    let s = c
        .subscribe_since("hist:f", json!({"offset": 50, "epoch": epoch}))
        .await?;
    ensure!(s["recovered"] == false, "since ahead of the stream: {s}");
    gw.api().publish("hist:f", json!({"i": 3})).await?;
    let m = c.expect_type("message", RECV_TIMEOUT).await?;
    ensure!(
        m["offset"] == 3,
        "live message after the refused recovery: {m}"
    );
    Ok(())
}

#[tokio::test]
async fn history_http_api_with_since_and_limit() -> Result<()> {
    let gw = Gateway::standard("hist_http").await?;
    let mut alice = gw.connect_user("alice").await?;
    let s = alice.subscribe("hist:h").await?;
    let epoch = epoch_of(&s)?;
    alice.publish("hist:h", json!({"i": 1})).await?;
    publish_n(&gw, "hist:h", 4).await?;
    let api = gw.api();

    let h = api.history("hist:h", "").await?;
    ensure!(
        h["channel"] == "hist:h" && h["epoch"] == epoch.as_str() && h["offset"] == 5,
        "{h}"
    );
    let msgs = h["messages"].as_array().cloned().unwrap_or_default();
    ensure!(msgs.len() == 5, "all 5 retained: {h}");
    ensure!(
        msgs[0]["offset"] == 1 && msgs[0]["from"] == "alice",
        "client publication: {h}"
    );
    ensure!(msgs[0]["data"] == json!({"i": 1}), "data: {h}");
    ensure!(
        msgs[1].get("from") == Some(&Value::Null),
        "API publication from null: {h}"
    );

    let h = api.history("hist:h", "since=2").await?;
    let offsets: Vec<u64> = offsets_of(&h);
    ensure!(offsets == vec![3, 4, 5], "since=2: {h}");

    let h = api.history("hist:h", "since=1&limit=2").await?;
    let offsets = offsets_of(&h);
    ensure!(
        offsets.len() == 2 && offsets.iter().all(|o| *o > 1) && offsets[0] < offsets[1],
        "since=1&limit=2 must give 2 increasing offsets after 1: {h}"
    );

    let h = api.history("hist:never", "").await?;
    ensure!(
        h["messages"] == json!([]),
        "unpublished channel has no messages: {h}"
    );
    Ok(())
}

fn offsets_of(h: &Value) -> Vec<u64> {
    h["messages"]
        .as_array()
        .map(|m| m.iter().filter_map(|x| x["offset"].as_u64()).collect())
        .unwrap_or_default()
}

/// The invariant of recovery: a subscriber joining while a publisher blasts
/// sees offsets since+1, since+2, ... up to the end: no gap, no duplicate,
/// whichever of replay or live delivery carries each one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_gap_no_duplicate_while_subscribing_during_a_blast() -> Result<()> {
    const TOTAL: u64 = 1500;
    let gw = GatewayBuilder::new()
        .name("hist_blast")
        .config(
            r#"
[namespaces.blast]
history_size = 10000
client_publish = true
allow_anonymous = true
"#,
        )
        .env("GATEWAY_RATE_LIMIT", 100_000)
        .env("GATEWAY_RATE_BURST", 100_000)
        .spawn()
        .await?;
    publish_n(&gw, "blast:x", 20).await?;
    let epoch = epoch_of(&gw.api().history("blast:x", "").await?)?;

    // The publisher pipelines requests and reads the replies afterwards.
    let mut publisher = gw.connect_user("pub").await?;
    let blast = tokio::spawn(async move {
        for i in 21..=TOTAL {
            let req = json!({"op": "publish", "channel": "blast:x", "data": {"i": i}, "id": i});
            publisher.send_json(&req).await?;
            if i % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
        let mut last = Value::Null;
        for _ in 21..=TOTAL {
            last = publisher
                .expect_type("published", Duration::from_secs(30))
                .await?;
        }
        anyhow::Ok(last)
    });

    // Subscribers join at different points of the blast, half with since.
    let mut subs = Vec::new();
    for k in 0..6u64 {
        let mut c = gw.connect_user(&format!("sub{k}")).await?;
        let s = if k % 2 == 0 {
            c.subscribe_since("blast:x", json!({"offset": 10 + k, "epoch": epoch}))
                .await?
        } else {
            c.subscribe("blast:x").await?
        };
        let start = if k % 2 == 0 {
            ensure!(s["recovered"] == true, "recovery during the blast: {s}");
            10 + k
        } else {
            s["offset"]
                .as_u64()
                .with_context(|| format!("subscribed without offset: {s}"))?
        };
        subs.push((k, start, c));
    }
    let last = blast.await??;
    ensure!(last["offset"] == TOTAL, "last publication's offset: {last}");

    for (k, start, mut c) in subs {
        let mut expected = start + 1;
        while expected <= TOTAL {
            let m = c
                .expect_type("message", RECV_TIMEOUT)
                .await
                .with_context(|| format!("subscriber {k} waiting for offset {expected}"))?;
            let offset = m["offset"].as_u64().unwrap_or(0);
            if offset != expected {
                bail!("subscriber {k} (start {start}): expected offset {expected}, got {m}");
            }
            if m["data"]["i"] != expected {
                bail!("subscriber {k}: offset {offset} carries the wrong data: {m}");
            }
            expected += 1;
        }
        c.expect_nothing(Duration::from_millis(200))
            .await
            .with_context(|| format!("subscriber {k} got more than the {TOTAL} publications"))?;
    }
    Ok(())
}

#[tokio::test]
async fn restart_of_the_embedded_node_changes_the_epoch() -> Result<()> {
    let mut gw = Gateway::standard("hist_restart_epoch").await?;
    publish_n(&gw, "hist:r", 3).await?;
    let old = epoch_of(&gw.api().history("hist:r", "").await?)?;
    gw.restart().await?;
    gw.api().publish("hist:r", json!({"i": 1})).await?;
    let mut c = gw.connect_user("alice").await?;
    let s = c
        .subscribe_since("hist:r", json!({"offset": 2, "epoch": old}))
        .await?;
    let new = epoch_of(&s)?;
    ensure!(
        new != old,
        "the embedded history was lost, its epoch must change: {s}"
    );
    ensure!(
        s["recovered"] == false,
        "recovery across a lost stream: {s}"
    );
    ensure!(s["offset"] == 1, "fresh stream starts at 1: {s}");
    c.expect_nothing(Duration::from_millis(300)).await?;
    Ok(())
}
