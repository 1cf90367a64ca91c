//! Cluster-wide channel state (issue 12; docs/backend.md "Channel events"
//! and "Channel info API"): occupied/vacated exactly once per transition
//! cluster-wide, cluster-wide subscriber counts and the paginated listing
//! against the truth after random churn, a killed node's subscribers, and
//! the embedded single node.
//!
//! Exactly-once is proven with `gateway_channel_events_total{event}`
//! summed over the nodes: each node counts the events it emitted.

use std::collections::BTreeMap;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tests::cluster::{Cluster, Topology};
use tests::{eventually, Api, Client, Gateway, EVENTUALLY};

/// `gateway_channel_events_total{event="<event>"}` of one node's scrape.
fn events_in(text: &str, event: &str) -> u64 {
    let label = format!("event=\"{event}\"");
    text.lines()
        .filter(|l| l.starts_with("gateway_channel_events_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// The event counter summed over `apis`.
async fn events(apis: &[Api], event: &str) -> Result<u64> {
    let mut sum = 0;
    for api in apis {
        sum += events_in(&api.metrics().await?, event);
    }
    Ok(sum)
}

/// `subscribers` of `GET /api/channels/{channel}` on `api`.
async fn subscribers(api: &Api, channel: &str) -> Result<u64> {
    let body = api.get(&format!("/api/channels/{channel}")).await?.ok()?;
    body["subscribers"]
        .as_u64()
        .with_context(|| format!("no subscribers in {body}"))
}

/// Every page of `GET /api/channels?prefix=` at `limit` per page.
async fn list_all(api: &Api, prefix: &str, limit: usize) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let mut path = format!("/api/channels?prefix={prefix}&limit={limit}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let body = api.get(&path).await?.ok()?;
        let page = body["channels"].as_array().context("channels")?;
        ensure!(page.len() <= limit, "page longer than {limit}: {body}");
        for c in page {
            let name = c["channel"].as_str().context("channel")?.to_owned();
            if let Some(last) = out.keys().next_back() {
                ensure!(
                    &name > last,
                    "listing not sorted/unique: {name} after {last}"
                );
            }
            out.insert(name, c["subscribers"].as_u64().context("subscribers")?);
        }
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Ok(out),
        }
    }
    anyhow::bail!("listing did not end")
}

/// Wait until every api reports `want` subscribers of `channel`.
async fn settle(apis: &[Api], channel: &str, want: u64) -> Result<()> {
    eventually(
        EVENTUALLY,
        &format!("{channel} has {want} subscribers everywhere"),
        || async {
            for api in apis {
                if subscribers(api, channel).await.ok() != Some(want) {
                    return false;
                }
            }
            true
        },
    )
    .await
}

/// Wait until the event counters sum to (occupied, vacated).
async fn counted(apis: &[Api], occupied: u64, vacated: u64) -> Result<()> {
    let what = format!("occupied {occupied} and vacated {vacated} in total");
    eventually(EVENTUALLY, &what, || async {
        events(apis, "occupied").await.ok() == Some(occupied)
            && events(apis, "vacated").await.ok() == Some(vacated)
    })
    .await?;
    Ok(())
}

fn apis(cluster: &Cluster, n: usize) -> Vec<Api> {
    (1..=n).map(|i| cluster.api(i)).collect()
}

async fn occupied_and_vacated_are_emitted_once_per_transition(topology: Topology) -> Result<()> {
    let cluster = Cluster::builder("chinfo_once")
        .topology(topology)
        .start()
        .await?;
    let apis = apis(&cluster, 3);
    let ch = "room-once";
    let mut c1 = cluster.node(1).connect_anon().await?;
    let mut c2 = cluster.node(2).connect_anon().await?;
    let mut c3 = cluster.node(3).connect_anon().await?;

    c1.subscribe(ch).await?;
    settle(&apis, ch, 1).await?;
    counted(&apis, 1, 0).await?;
    c2.subscribe(ch).await?;
    c3.subscribe(ch).await?;
    settle(&apis, ch, 3).await?;
    c1.unsubscribe(ch).await?;
    c2.unsubscribe(ch).await?;
    settle(&apis, ch, 1).await?;
    // More subscribers and fewer, but never empty: still one occupied.
    counted(&apis, 1, 0).await?;
    c3.unsubscribe(ch).await?;
    settle(&apis, ch, 0).await?;
    counted(&apis, 1, 1).await?;
    c2.subscribe(ch).await?;
    settle(&apis, ch, 1).await?;
    counted(&apis, 2, 1).await?;
    c2.close(1000, "bye").await?;
    settle(&apis, ch, 0).await?;
    counted(&apis, 2, 2).await?;

    // Races: every channel subscribed by one client on each node at once,
    // then all of them leave at once: exactly one occupied and one vacated
    // per channel cluster-wide.
    const N: usize = 12;
    let mut clients: Vec<Client> = Vec::new();
    for n in 1..=3 {
        clients.push(cluster.node(n).connect_anon().await?);
    }
    let names: Vec<String> = (0..N).map(|i| format!("room-race{i:02}")).collect();
    let subs = clients.iter_mut().map(|c| {
        let names = names.clone();
        async move {
            for name in &names {
                c.subscribe(name).await?;
            }
            Ok::<_, anyhow::Error>(())
        }
    });
    futures_util::future::try_join_all(subs).await?;
    for name in &names {
        settle(&apis, name, 3).await?;
    }
    counted(&apis, 2 + N as u64, 2).await?;
    let unsubs = clients.iter_mut().map(|c| {
        let names = names.clone();
        async move {
            for name in &names {
                c.unsubscribe(name).await?;
            }
            Ok::<_, anyhow::Error>(())
        }
    });
    futures_util::future::try_join_all(unsubs).await?;
    for name in &names {
        settle(&apis, name, 0).await?;
    }
    counted(&apis, 2 + N as u64, 2 + N as u64).await?;
    Ok(())
}

/// A small deterministic generator (xorshift64*), seeded.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

async fn counts_and_listing_match_the_truth_after_random_churn(topology: Topology) -> Result<()> {
    let cluster = Cluster::builder("chinfo_churn")
        .topology(topology)
        .start()
        .await?;
    let apis = apis(&cluster, 3);
    const CLIENTS_PER_NODE: usize = 4;
    const CHANNELS: usize = 23;
    const OPS: usize = 300;
    let mut clients = Vec::new();
    for n in 1..=3 {
        for _ in 0..CLIENTS_PER_NODE {
            clients.push(cluster.node(n).connect_anon().await?);
        }
    }
    let names: Vec<String> = (0..CHANNELS)
        .map(|i| {
            // Two families, so the prefix filter has something to cut.
            if i % 5 == 0 {
                format!("other-c{i:02}")
            } else {
                format!("room-c{i:02}")
            }
        })
        .collect();
    let mut subscribed = vec![vec![false; CHANNELS]; clients.len()];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..OPS {
        let c = rng.below(clients.len());
        let ch = rng.below(CHANNELS);
        if subscribed[c][ch] {
            clients[c].unsubscribe(&names[ch]).await?;
        } else {
            clients[c].subscribe(&names[ch]).await?;
        }
        subscribed[c][ch] = !subscribed[c][ch];
    }
    // One client leaves by closing (its subscriptions go with it).
    let gone = rng.below(clients.len());
    clients[gone].close(1000, "bye").await?;
    subscribed[gone] = vec![false; CHANNELS];

    let mut truth: BTreeMap<String, u64> = BTreeMap::new();
    for (ch, name) in names.iter().enumerate() {
        let n = subscribed.iter().filter(|s| s[ch]).count() as u64;
        if n > 0 {
            truth.insert(name.clone(), n);
        }
    }
    let rooms: BTreeMap<String, u64> = truth
        .iter()
        .filter(|(k, _)| k.starts_with("room-"))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    ensure!(
        rooms.len() > 3,
        "the churn left too few channels: {truth:?}"
    );
    eventually(EVENTUALLY, "every node lists the truth", || async {
        for api in &apis {
            if list_all(api, "", 1000).await.ok().as_ref() != Some(&truth) {
                return false;
            }
        }
        true
    })
    .await?;
    for api in &apis {
        // Pages of 3 and of 1 across the cursor, and the prefix filter.
        ensure!(list_all(api, "", 3).await? == truth, "pages of 3");
        ensure!(
            list_all(api, "room-", 1).await? == rooms,
            "pages of 1, room-"
        );
        ensure!(
            list_all(api, "room-c1", 2).await?
                == rooms
                    .iter()
                    .filter(|(k, _)| k.starts_with("room-c1"))
                    .map(|(k, v)| (k.clone(), *v))
                    .collect::<BTreeMap<_, _>>()
        );
        for name in &names {
            let want = truth.get(name).copied().unwrap_or(0);
            let got = subscribers(api, name).await?;
            ensure!(got == want, "{name}: {got} subscribers, truth {want}");
        }
    }
    // Exactly one occupied per channel that ever had a subscriber... is not
    // what churn proves (a channel may empty and refill); what must hold:
    // occupied - vacated = channels occupied now.
    let occupied = events(&apis, "occupied").await?;
    let vacated = events(&apis, "vacated").await?;
    ensure!(
        occupied - vacated == truth.len() as u64,
        "occupied {occupied} - vacated {vacated} != {} occupied channels",
        truth.len()
    );
    Ok(())
}

async fn channel_info_reports_presence_history_and_bad_input(topology: Topology) -> Result<()> {
    let cluster = Cluster::builder("chinfo_fields")
        .topology(topology)
        .start()
        .await?;
    let api = cluster.api(1);
    let mut a1 = cluster.node(1).connect_user("alice").await?;
    let mut a2 = cluster.node(2).connect_user("alice").await?;
    let mut b = cluster.node(3).connect_user("bob").await?;
    for c in [&mut a1, &mut a2, &mut b] {
        c.subscribe("chat:info").await?;
    }
    for i in 0..3 {
        api.publish("hist:info", serde_json::json!({ "i": i }))
            .await?;
    }
    settle(&apis(&cluster, 3), "chat:info", 3).await?;
    let body = api.get("/api/channels/chat:info").await?.ok()?;
    ensure!(body["channel"] == "chat:info", "{body}");
    ensure!(body["presence"]["members"] == 3, "{body}");
    ensure!(body["presence"]["users"] == 2, "{body}");
    ensure!(body["history"].is_null(), "{body}");
    let body = api.get("/api/channels/hist:info").await?.ok()?;
    ensure!(body["subscribers"] == 0, "{body}");
    ensure!(body["presence"].is_null(), "{body}");
    ensure!(body["history"]["length"] == 3, "{body}");
    ensure!(body["history"]["top_offset"] == 3, "{body}");
    ensure!(body["history"]["epoch"].is_string(), "{body}");
    api.get("/api/channels/bad%20name")
        .await?
        .expect_error(400, "bad_request")?;
    api.get("/api/channels/nope:x")
        .await?
        .expect_error(400, "bad_request")?;
    api.get("/api/channels?limit=0")
        .await?
        .expect_error(400, "bad_request")?;
    api.get("/api/channels?limit=1001")
        .await?
        .expect_error(400, "bad_request")?;
    api.get("/api/channels?prefix=a%20b")
        .await?
        .expect_error(400, "bad_request")?;
    Ok(())
}

async fn a_killed_node_vacates_its_channels_after_the_purge(topology: Topology) -> Result<()> {
    let mut cluster = Cluster::builder("chinfo_kill")
        .topology(topology)
        .start()
        .await?;
    let live = apis(&cluster, 2);
    let mut s2 = cluster.node(2).connect_anon().await?;
    let mut s3 = cluster.node(3).connect_anon().await?;
    let mut solo = cluster.node(3).connect_anon().await?;
    s2.subscribe("room-shared").await?;
    s3.subscribe("room-shared").await?;
    solo.subscribe("room-solo").await?;
    let all = apis(&cluster, 3);
    settle(&all, "room-shared", 2).await?;
    settle(&all, "room-solo", 1).await?;
    counted(&all, 2, 0).await?;
    let before = events(&live, "occupied").await?;
    cluster.node_mut(3).kill();
    settle(&live, "room-shared", 1).await?;
    settle(&live, "room-solo", 0).await?;
    // The purge (by n1 or n2) vacates room-solo, once.
    eventually(EVENTUALLY, "one vacated from the purge", || async {
        events(&live, "vacated").await.ok() == Some(1)
    })
    .await?;
    ensure!(events(&live, "occupied").await? == before);
    for api in &live {
        let listed = list_all(api, "room-", 100).await?;
        ensure!(
            listed == BTreeMap::from([("room-shared".to_owned(), 1)]),
            "after the purge: {listed:?}"
        );
    }
    Ok(())
}

tests::topologies!(
    occupied_and_vacated_are_emitted_once_per_transition,
    counts_and_listing_match_the_truth_after_random_churn,
    channel_info_reports_presence_history_and_bad_input,
    a_killed_node_vacates_its_channels_after_the_purge,
);

#[tokio::test]
async fn the_embedded_node_serves_the_same_api_and_events() -> Result<()> {
    let gw = Gateway::standard("chinfo_embedded").await?;
    let api = gw.api();
    let apis = [api.clone()];
    let mut a = gw.connect_anon().await?;
    let mut b = gw.connect_anon().await?;
    a.subscribe("room-e1").await?;
    b.subscribe("room-e1").await?;
    b.subscribe("room-e2").await?;
    settle(&apis, "room-e1", 2).await?;
    settle(&apis, "room-e2", 1).await?;
    counted(&apis, 2, 0).await?;
    let listed = list_all(&api, "room-", 1).await?;
    ensure!(
        listed == BTreeMap::from([("room-e1".to_owned(), 2), ("room-e2".to_owned(), 1)]),
        "{listed:?}"
    );
    b.close(1000, "bye").await?;
    settle(&apis, "room-e2", 0).await?;
    settle(&apis, "room-e1", 1).await?;
    counted(&apis, 2, 1).await?;
    a.unsubscribe("room-e1").await?;
    settle(&apis, "room-e1", 0).await?;
    counted(&apis, 2, 2).await?;
    let body: Value = api.get("/api/channels").await?.ok()?;
    ensure!(
        body["channels"].as_array().is_some_and(Vec::is_empty),
        "{body}"
    );
    ensure!(body["next_cursor"].is_null(), "{body}");
    Ok(())
}
