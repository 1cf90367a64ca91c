//! Prometheus against the live local cluster (`deploy/local-cluster` with
//! Prometheus scraping every second): every node's target is up, the alert
//! rules are loaded and evaluate cleanly, and after traffic that exercises
//! every metric (connections, refusals, publishes, fan-out, errors, rate
//! limiting, a slow consumer, history replays, presence refreshes, and a
//! Redis stall that makes the nodes notice, count and recover, and
//! subscribes through a namespace's proxy hook to a real application
//! backend) every query of the Grafana dashboard returns data through
//! Prometheus's HTTP API.
//! `promtool check metrics` passes on each node's real scrape.

mod ops_support;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use ops_support::{
    collect_exprs, dashboard, deploy_path, read, run_cmd, runnable_expr, tool, ClusterOptions,
    LocalCluster, Prometheus,
};
use serde_json::{json, Value};
use tests::backend::{Backend, BackendReply};
use tests::{
    eventually, eventually_some, metric_sum, metric_value, signal, ClientBuilder, RECV_TIMEOUT,
};
use tokio::io::AsyncWriteExt;

const WAIT: Duration = Duration::from_secs(60);

/// Sends SIGCONT to a stopped process when dropped, so a failing test never
/// leaves Redis frozen.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = signal(self.0, "CONT");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_node_and_every_dashboard_query_has_data() -> Result<()> {
    let started = tokio::time::Instant::now();
    // An application backend for the subscribe hook of a `hooked`
    // namespace (deploy/gateway.toml plus that namespace), so the
    // dashboard's proxy panels have data: gateway_proxy_* series appear
    // with a hook's first request. It allows `hooked:ok` and refuses the
    // rest.
    let backend = Backend::start(|_, body| match body["channel"].as_str() {
        Some("hooked:ok") => BackendReply::ok(json!({})),
        _ => BackendReply::refuse("forbidden", "not this channel"),
    })
    .await?;
    let config = format!(
        "{}\n[namespaces.hooked]\n[namespaces.hooked.proxy.subscribe]\nurl = \"{}\"\ntimeout_ms = 1000\n",
        read(&deploy_path("gateway.toml"))?,
        backend.url("subscribe"),
    );
    let cluster = LocalCluster::up(
        ClusterOptions::new("prom")
            .prometheus()
            .config(&config)
            .env("GATEWAY_PRESENCE_REFRESH_MS", 1000)
            .env("GATEWAY_PRESENCE_TTL_MS", 5000)
            .env("GATEWAY_ALLOWED_ORIGINS", "http://allowed.example")
            .env("GATEWAY_QUEUE_BYTES", 65_536)
            .env("GATEWAY_REDIS_TIMEOUT_MS", 500)
            .redis_proxy(),
    )
    .await?;
    let prom = Prometheus::new(&cluster.prom_url())?;

    // Every node's target is up.
    let node_targets: BTreeSet<String> = (0..3)
        .map(|i| format!("127.0.0.1:{}", cluster.node_ports[i]))
        .collect();
    eventually(
        WAIT,
        "Prometheus reports all three gateway targets up",
        || async {
            let Ok(targets) = prom.active_targets().await else {
                return false;
            };
            let up: BTreeSet<String> = targets
                .iter()
                .filter(|t| t["labels"]["job"] == "gateway" && t["health"] == "up")
                .filter_map(|t| t["labels"]["instance"].as_str().map(str::to_owned))
                .collect();
            up == node_targets
        },
    )
    .await?;
    let up = prom.query("up{job=\"gateway\"} == 1").await?;
    ensure!(up.len() == 3, "up == 1 for {} targets: {up:?}", up.len());

    // The alert rules are loaded.
    let groups = prom.rule_groups().await?;
    let rules: Vec<&Value> = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    ensure!(
        rules.len() >= 5 && rules.iter().all(|r| r["type"] == "alerting"),
        "alert rules not loaded: {groups:?}"
    );

    // Traffic. Clients through HAProxy on presence and history channels.
    let lb = ClientBuilder::new(&cluster.ws_url());
    let mut clients = Vec::new();
    for i in 0..6 {
        let mut c = lb.clone().query("user", &format!("p{i}")).connect().await?;
        c.subscribe("chat:ops").await?;
        c.subscribe_since("task:ops", json!({"offset": 0})).await?;
        clients.push(c);
    }
    let api = cluster.lb_api();
    for n in 0..10 {
        api.publish("task:ops", json!({"n": n})).await?;
    }
    for c in &mut clients {
        c.wait_for(RECV_TIMEOUT, "the last task message", |v| {
            v["type"] == "message" && v["data"]["n"] == 9
        })
        .await?;
    }
    clients[0].publish("chat:ops", json!("hello")).await?;
    for c in &mut clients[1..] {
        c.wait_for(RECV_TIMEOUT, "the client publication", |v| {
            v["type"] == "message" && v["channel"] == "chat:ops"
        })
        .await?;
    }
    // A refused op (error reply), presence, history, users, nodes.
    let reply = clients[0]
        .request(json!({"op": "subscribe", "channel": "nosuchns:x"}))
        .await?;
    ensure!(reply["type"] == "error", "expected an error reply: {reply}");
    clients[0].presence("chat:ops").await?;
    api.presence("chat:ops").await?;
    api.history("task:ops", "since=0&limit=5").await?;
    api.user("p0").await?;
    api.nodes().await?;
    // Subscribes through the proxy hook: allowed and refused, on every
    // node (clients are spread by HAProxy).
    for c in &mut clients {
        c.subscribe("hooked:ok").await?;
        let reply = c
            .request(json!({"op": "subscribe", "channel": "hooked:no"}))
            .await?;
        ensure!(
            reply["type"] == "error",
            "the backend refuses hooked:no: {reply}"
        );
    }
    ensure!(
        backend.requests_of("subscribe").len() >= 12,
        "the subscribe hook got {} requests",
        backend.requests_of("subscribe").len()
    );
    // A refused upgrade (origin) and a rate-limited client.
    let refused = lb
        .clone()
        .origin("http://evil.example")
        .expect_refused()
        .await?;
    ensure!(refused.status == 403, "origin refusal: {}", refused.status);
    let mut flood = lb.clone().query("user", "flood").connect().await?;
    {
        // 600 frames in one write: far above 100/s with a burst of 200,
        // however slow the machine.
        use futures_util::SinkExt;
        use tokio_tungstenite::tungstenite::Message;
        let ws = flood.stream_mut();
        for _ in 0..600 {
            ws.feed(Message::text(r#"{"op":"ping"}"#)).await?;
        }
        ws.flush().await?;
    }
    eventually(WAIT, "a node counts rate-limited frames", || async {
        let mut limited = 0.0;
        for i in 0..3 {
            if let Ok(text) = cluster.node_api(i).metrics().await {
                limited += metric_sum(&text, "gateway_rate_limited_total");
            }
        }
        limited >= 1.0
    })
    .await?;
    drop(flood);

    // A slow consumer on node1: a tiny receive buffer and no reading while
    // large publications pile up past the 64 KiB queue.
    let node1 = cluster.node_api(0);
    let mut slow = ClientBuilder::new(&cluster.node_ws(0))
        .query("user", "slow")
        .recv_buffer(4096)
        .connect()
        .await?;
    slow.subscribe("slowfeed").await?;
    let pad = "x".repeat(16_000);
    let mut slow_closed = false;
    for _ in 0..2000 {
        node1.publish("slowfeed", json!({ "pad": pad })).await?;
        let text = node1.metrics().await?;
        if metric_value(&text, "gateway_slow_consumers_total").unwrap_or(0.0) >= 1.0 {
            slow_closed = true;
            break;
        }
    }
    ensure!(
        slow_closed,
        "no slow consumer after 2000 large publications"
    );
    drop(slow);

    // Redis stalls (SIGSTOP): every node notices (probe fails, calls time
    // out, /readyz 503), an API publish fails; then Redis resumes and every
    // node reconnects and becomes ready again.
    let redis_pid = cluster.pid("redis")?;
    signal(redis_pid, "STOP")?;
    let resume = Resume(redis_pid);
    eventually(WAIT, "every node reports gateway_redis_up 0", || async {
        let mut down = 0;
        for i in 0..3 {
            if let Ok(text) = cluster.node_api(i).metrics().await {
                if metric_value(&text, "gateway_redis_up") == Some(0.0) {
                    down += 1;
                }
            }
        }
        down == 3
    })
    .await?;
    let during = node1
        .post("/api/publish", &json!({"channel": "task:ops", "data": 1}))
        .await?;
    ensure!(
        during.status == 503,
        "publish while Redis is stalled should be 503 unavailable: {} {}",
        during.status,
        during.text
    );
    // The RedisDown alert's condition holds in Prometheus.
    eventually(
        WAIT,
        "Prometheus sees gateway_redis_up == 0 on all nodes",
        || async {
            prom.query("gateway_redis_up == 0")
                .await
                .is_ok_and(|r| r.len() == 3)
        },
    )
    .await?;
    drop(resume);
    eventually(
        WAIT,
        "every node ready again after Redis resumed",
        || async {
            let mut ready = 0;
            for i in 0..3 {
                if cluster.node_api(i).readyz().await.ok() == Some(200) {
                    ready += 1;
                }
            }
            ready == 3
        },
    )
    .await?;
    cluster.wait_lb_all_up(WAIT).await?;

    // Redis keeps answering commands but the pub/sub connections deliver
    // nothing: every node's liveness probe fails, it drops the connection
    // and reconnects.
    let proxy = cluster.proxy.as_ref().context("no redis proxy")?;
    proxy.freeze_pubsub();
    eventually(
        WAIT,
        "every node counts a failed liveness probe",
        || async {
            let mut failed = 0;
            for i in 0..3 {
                if let Ok(text) = cluster.node_api(i).metrics().await {
                    if metric_value(&text, "gateway_redis_probe_failures_total").unwrap_or(0.0)
                        >= 1.0
                    {
                        failed += 1;
                    }
                }
            }
            failed == 3
        },
    )
    .await?;
    proxy.thaw();
    eventually(
        WAIT,
        "every node reconnected its pub/sub and is ready",
        || async {
            let mut ok = 0;
            for i in 0..3 {
                let api = cluster.node_api(i);
                let reconnected = api.metrics().await.is_ok_and(|text| {
                    metric_value(&text, "gateway_redis_reconnects_total").unwrap_or(0.0) >= 1.0
                });
                if reconnected && api.readyz().await.ok() == Some(200) {
                    ok += 1;
                }
            }
            ok == 3
        },
    )
    .await?;
    cluster.wait_lb_all_up(WAIT).await?;

    // Traffic after the recovery, so rates and lag have fresh samples.
    for n in 10..20 {
        api.publish("task:ops", json!({"n": n})).await?;
    }
    for c in &mut clients {
        c.wait_for(RECV_TIMEOUT, "a task message after the Redis stall", |v| {
            v["type"] == "message" && v["data"]["n"] == 19
        })
        .await?;
    }

    // promtool check metrics on each node's real scrape.
    let promtool = tool("promtool")?;
    for i in 0..3 {
        let text = cluster.node_api(i).metrics().await?;
        ensure!(
            metric_sum(&text, "gateway_connections_accepted_total") >= 1.0,
            "node{} accepted no connection",
            i + 1
        );
        let mut cmd = tokio::process::Command::new(&promtool);
        cmd.args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        let mut stdin = child.stdin.take().context("promtool stdin")?;
        stdin.write_all(text.as_bytes()).await?;
        drop(stdin);
        let out = tokio::time::timeout(WAIT, child.wait_with_output()).await??;
        ensure!(
            out.status.success(),
            "promtool check metrics failed on node{}: {}{}",
            i + 1,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The generated Prometheus config passes promtool too.
    let mut cmd = tokio::process::Command::new(&promtool);
    cmd.args(["check", "config"])
        .arg(cluster.state.join("prometheus.yml"));
    run_cmd(cmd, WAIT, "promtool check config (local cluster)").await?;

    // Every dashboard query returns data.
    let dash = dashboard()?;
    let mut exprs = Vec::new();
    collect_exprs(&dash, &mut exprs);
    // The node variable's query: label_values(gateway_node_info, instance).
    let var = dash["templating"]["list"][0]["definition"]
        .as_str()
        .context("templating variable definition")?;
    let (metric, label) = var
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
        .and_then(|r| r.split_once(','))
        .context("variable is not label_values(metric, label)")?;
    exprs.push(format!("count by ({}) ({})", label.trim(), metric.trim()));
    let mut queries: Vec<String> = exprs.iter().map(|e| runnable_expr(e)).collect();
    queries.sort();
    queries.dedup();
    let total = queries.len();
    let missing = std::sync::Mutex::new(queries);
    let take = || match missing.lock() {
        Ok(mut guard) => std::mem::take(&mut *guard),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    };
    let put_back = |left: Vec<String>| match missing.lock() {
        Ok(mut guard) => *guard = left,
        Err(poisoned) => *poisoned.into_inner() = left,
    };
    let outcome = eventually(
        Duration::from_secs(90),
        "every dashboard query returns data",
        || {
            let pending = take();
            let prom = prom.clone();
            let put_back = &put_back;
            async move {
                let mut left = Vec::new();
                for expr in pending {
                    match prom.query(&expr).await {
                        Ok(result) if !result.is_empty() => {}
                        Ok(_) => left.push(expr),
                        Err(e) => {
                            eprintln!("[ops] query error: {e:#}");
                            left.push(expr);
                        }
                    }
                }
                let done = left.is_empty();
                put_back(left);
                done
            }
        },
    )
    .await;
    outcome.with_context(|| format!("dashboard queries without data: {:#?}", take()))?;
    eprintln!(
        "[ops] all {total} dashboard queries return data; test took {:?}",
        started.elapsed()
    );

    // The node variable lists every node.
    let nodes = prom
        .query(&format!("count by ({}) ({})", label.trim(), metric.trim()))
        .await?;
    ensure!(nodes.len() == 3, "node variable values: {nodes:?}");
    // Lag quantiles are real numbers after the traffic.
    let p99 = eventually_some(WAIT, "a numeric lag p99", || async {
        let r = prom
            .query("histogram_quantile(0.99, sum by (le) (rate(gateway_delivery_lag_seconds_bucket[1m])))")
            .await
            .ok()?;
        let v: f64 = r.first()?["value"][1].as_str()?.parse().ok()?;
        v.is_finite().then_some(v)
    })
    .await?;
    eprintln!("[ops] delivery lag p99 over the last minute: {p99:.6} s");
    drop(clients);
    Ok(())
}
