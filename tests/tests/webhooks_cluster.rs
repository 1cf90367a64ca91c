//! Webhooks of cluster-wide channel state on 3 nodes (issue 12;
//! docs/backend.md "Channel events" and "Webhooks"): a scripted sequence of
//! subscribes, unsubscribes and closes across the nodes, with a user on two
//! devices, produces exactly the occupied/vacated and member events it
//! should, each once, from the node that made the change, every request
//! signed. Runs on one Redis and on a Redis Cluster.
//!
//! Exactly once: each step waits for its events (or, for a step that must
//! produce none, for the channel's count to settle) before the next, and at
//! the end every node emits a marker event after everything else it sent;
//! a node sends in emit order, so a late duplicate would arrive before its
//! marker, and the list is compared whole.

use std::collections::HashSet;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tests::cluster::{Cluster, Topology};
use tests::webhook_sink::verify;
use tests::{eventually, Api, WebhookSink, EVENTUALLY};

const SECRET: &str = "webhook-cluster-secret-0123456789";
const CH: &str = "chat:wh";

/// (name, channel, user) of an event; user "" for channel events.
type Ev = (String, String, String);

/// The [`Ev`] of an event.
fn key(e: &Value) -> Ev {
    let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
    (s("name"), s("channel"), s("user"))
}

fn ev(name: &str, user: &str) -> Ev {
    (name.to_owned(), CH.to_owned(), user.to_owned())
}

/// The events about `CH` received so far.
fn about(sink: &WebhookSink) -> Vec<Ev> {
    sink.events()
        .iter()
        .map(key)
        .filter(|(_, c, _)| c == CH)
        .collect()
}

/// Waits until every node reports `want` subscribers of `CH`.
async fn settle(apis: &[Api], want: u64) -> Result<()> {
    eventually(
        EVENTUALLY,
        &format!("{CH} has {want} subscribers"),
        || async {
            for api in apis {
                let Ok(r) = api.get(&format!("/api/channels/{CH}")).await else {
                    return false;
                };
                if r.body["subscribers"].as_u64() != Some(want) {
                    return false;
                }
            }
            true
        },
    )
    .await
}

async fn channel_and_member_events_arrive_once_each(topology: Topology) -> Result<()> {
    let mut sink = WebhookSink::start().await?;
    let cluster = Cluster::builder("wh_cluster")
        .topology(topology)
        .env("GATEWAY_WEBHOOK_URL", sink.url())
        .env("GATEWAY_WEBHOOK_SECRET", SECRET)
        .env(
            "GATEWAY_WEBHOOK_EVENTS",
            "channel_occupied,channel_vacated,member_added,member_removed",
        )
        .env("GATEWAY_WEBHOOK_BATCH_MAX_WAIT_MS", "20")
        .start()
        .await?;
    let apis: Vec<Api> = (1..=3).map(|n| cluster.api(n)).collect();
    let mut alice1 = cluster.node(1).connect_user("alice").await?;
    let mut alice2 = cluster.node(2).connect_user("alice").await?;
    let mut bob3 = cluster.node(3).connect_user("bob").await?;
    let mut bob2 = cluster.node(2).connect_user("bob").await?;
    let mut want = Vec::new();

    // alice's first device: the channel is occupied, alice is a member.
    alice1.subscribe(CH).await?;
    want.extend([ev("channel_occupied", ""), ev("member_added", "alice")]);
    want = expect(&sink, &want, 2).await?;
    // Her second device, on another node: nothing new.
    alice2.subscribe(CH).await?;
    settle(&apis, 2).await?;
    want = expect(&sink, &want, 1).await?;
    // bob on the third node: a member, the channel already occupied.
    bob3.subscribe(CH).await?;
    want.push(ev("member_added", "bob"));
    want = expect(&sink, &want, 1).await?;
    // alice leaves from one device: still a member through the other.
    alice1.unsubscribe(CH).await?;
    settle(&apis, 2).await?;
    want = expect(&sink, &want, 1).await?;
    // ... and from the other: removed.
    alice2.unsubscribe(CH).await?;
    want.push(ev("member_removed", "alice"));
    want = expect(&sink, &want, 1).await?;
    // The last subscriber leaves: removed, and the channel is vacated.
    bob3.unsubscribe(CH).await?;
    want.extend([ev("member_removed", "bob"), ev("channel_vacated", "")]);
    settle(&apis, 0).await?;
    want = expect(&sink, &want, 2).await?;
    // bob again, from another node; then his socket closes.
    bob2.subscribe(CH).await?;
    want.extend([ev("channel_occupied", ""), ev("member_added", "bob")]);
    settle(&apis, 1).await?;
    want = expect(&sink, &want, 2).await?;
    bob2.close(1000, "bye").await?;
    want.extend([ev("member_removed", "bob"), ev("channel_vacated", "")]);
    settle(&apis, 0).await?;
    expect(&sink, &want, 2).await?;

    // Markers: one occupied per node, sent after all it sent before.
    let mut markers = Vec::new();
    for n in 1..=3 {
        let mut c = cluster.node(n).connect_user(&format!("m{n}")).await?;
        c.subscribe(&format!("chat:marker{n}")).await?;
        markers.push(c);
    }
    sink.wait_events(EVENTUALLY, "a marker from every node", |events| {
        (1..=3).all(|n| {
            events.iter().any(|e| {
                e["name"] == "channel_occupied" && e["channel"] == format!("chat:marker{n}")
            })
        })
    })
    .await?;
    let got = about(&sink);
    ensure!(
        got.len() == 10,
        "exactly the 10 events of the sequence, each once: {got:?}"
    );

    // Every request is signed with the secret (and not with another); ids
    // are unique; each event names the node that sent it.
    let received = sink.received();
    ensure!(!received.is_empty(), "no request received");
    let mut ids = HashSet::new();
    for r in &received {
        ensure!(verify(SECRET, r), "bad signature: {}", r.summary());
        ensure!(
            !verify("another-secret-0123456789", r),
            "wrong secret verifies"
        );
        for e in r.events() {
            let id = e["id"].as_str().context("event id")?.to_owned();
            ensure!(ids.insert(id.clone()), "event id {id} twice");
        }
    }
    sink.stop().await?;
    Ok(())
}

/// Waits until the events about `CH` are `want`, where the last `tail`
/// (the events of the latest step) may come in any order: the member event
/// is emitted by the subscribe or leave itself, the channel event by the
/// next occupancy flush.
async fn expect(sink: &WebhookSink, want: &[Ev], tail: usize) -> Result<Vec<Ev>> {
    let split = want.len() - tail;
    let mut want_tail = want[split..].to_vec();
    want_tail.sort();
    eventually(EVENTUALLY, &format!("events {want:?}"), || {
        let got = about(sink);
        let ok = got.len() == want.len() && got[..split] == want[..split] && {
            let mut t = got[split..].to_vec();
            t.sort();
            t == want_tail
        };
        async move { ok }
    })
    .await
    .with_context(|| format!("got {:?}", about(sink)))?;
    Ok(about(sink))
}

tests::topologies!(channel_and_member_events_arrive_once_each);
