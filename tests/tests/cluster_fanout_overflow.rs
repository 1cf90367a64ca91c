//! The fan-out workers keep the Redis reader free (issue 9, "Done when"):
//! one channel is flooded with a fan-out large enough to fill its worker's
//! queue while the node also receives a second channel (on another worker).
//! The second channel's messages keep arriving on time and in order, the
//! reader never stalls (readiness and the liveness probe pass throughout),
//! and the flooded subscribers are told, with close code 4005
//! (`missed_messages`), instead of silently missing messages.
//!
//! The queues hold more envelopes than the calm channel ever gets, so only
//! the flood can overflow, however late a loaded machine runs the workers.
//!
//! The flood goes straight into Redis as one pipelined burst of PUBLISH
//! commands in the envelope format of docs/redis.md: faster than any
//! publisher of ours, and the node cannot tell the difference.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::json;
use tests::cluster::Cluster;
use tests::metric;
use tests::RECV_TIMEOUT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const WORKERS: usize = 2;
const FLOOD_SUBSCRIBERS: usize = 300;
const FLOOD_MESSAGES: usize = 5_000;
const CALM_MESSAGES: u64 = 40;
/// "On time" for the calm channel, generous for a loaded 2-core machine and
/// a debug build; a stalled reader would hold it for the whole flood.
const ON_TIME: Duration = Duration::from_secs(2);

/// Two channel names that the node fans out on different workers.
fn channels() -> (String, String) {
    let flood = "room-flood".to_owned();
    let w = gateway::fanout::worker_for(&flood, WORKERS);
    let calm = (0..)
        .map(|i| format!("room-calm-{i}"))
        .find(|c| gateway::fanout::worker_for(c, WORKERS) != w)
        .unwrap_or_default();
    (flood, calm)
}

/// RESP encoding of one command.
fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// PUBLISH `n` envelopes of `channel` to its pub/sub name in one pipelined
/// write, and read the replies back (bounded).
async fn flood(cluster: &Cluster, channel: &str, n: usize) -> Result<()> {
    let name = cluster.channel_name(channel);
    let mut burst = Vec::new();
    for i in 0..n {
        let envelope = json!({"message": {"channel": channel, "data": {"n": i}, "ts_us": 0}});
        burst.extend(resp(&["PUBLISH", &name, &envelope.to_string()]));
    }
    let mut redis = TcpStream::connect(("127.0.0.1", cluster.redis.port())).await?;
    redis.write_all(&burst).await?;
    // One ":<receivers>\r\n" reply per command.
    let mut lines = 0;
    let mut buf = vec![0u8; 64 * 1024];
    tokio::time::timeout(Duration::from_secs(60), async {
        while lines < n {
            let got = redis.read(&mut buf).await?;
            ensure!(got > 0, "Redis closed the flood connection");
            lines += buf[..got].iter().filter(|b| **b == b'\n').count();
        }
        Ok(())
    })
    .await
    .context("Redis did not answer the flood in time")?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_worker_leaves_the_reader_and_other_channels_alone() -> Result<()> {
    let cluster = Cluster::builder("fanout-overflow")
        .nodes(1)
        .env("GATEWAY_FANOUT_WORKERS", WORKERS)
        // Larger than the whole calm traffic (so only the flood can
        // overflow, however late the calm worker runs on a loaded machine),
        // far smaller than the flood.
        .env("GATEWAY_FANOUT_QUEUE_SIZE", CALM_MESSAGES + 24)
        .start()
        .await?;
    let node = cluster.node(1);
    let api = cluster.api(1);
    let (flood_channel, calm_channel) = channels();

    let mut flooded = Vec::new();
    for i in 0..FLOOD_SUBSCRIBERS {
        let mut c = node.connect_user(&format!("f{i}")).await?;
        c.subscribe(&flood_channel).await?;
        flooded.push(c);
    }
    let mut calm = node.connect_user("calm").await?;
    calm.subscribe(&calm_channel).await?;
    let probe_failures = metric(&api, "gateway_redis_probe_failures_total").await?;

    // The calm channel: one publication every 50 ms through the API, each
    // stamped with its send time; its subscriber checks order and delay.
    let calm_api = cluster.api(1);
    let calm_name = calm_channel.clone();
    let publisher = tokio::spawn(async move {
        for seq in 1..=CALM_MESSAGES {
            calm_api.publish(&calm_name, json!({ "seq": seq })).await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::Ok(())
    });
    let receiver = tokio::spawn(async move {
        let mut worst = Duration::ZERO;
        for seq in 1..=CALM_MESSAGES {
            let waited = Instant::now();
            let m = calm
                .expect_type("message", RECV_TIMEOUT)
                .await
                .with_context(|| format!("calm message {seq}"))?;
            ensure!(m["data"]["seq"] == seq, "calm channel out of order: {m}");
            worst = worst.max(waited.elapsed());
        }
        anyhow::Ok((worst, calm))
    });
    // Readiness is polled all along (the probe's health is part of it).
    let ready_api = cluster.api(1);
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let readiness = tokio::spawn(async move {
        let mut polls = 0u32;
        loop {
            let r = ready_api.get("/readyz").await?;
            ensure!(r.status == 200, "readyz {} during the flood", r.status);
            polls += 1;
            tokio::select! {
                _ = &mut stop_rx => return anyhow::Ok(polls),
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    });

    flood(&cluster, &flood_channel, FLOOD_MESSAGES).await?;

    // Every flooded subscriber is told, with the documented code.
    for (i, c) in flooded.iter_mut().enumerate() {
        let (code, reason) = c
            .expect_close(Duration::from_secs(60))
            .await
            .with_context(|| format!("flooded subscriber {i}"))?;
        ensure!(
            code == 4005 && reason == "missed_messages",
            "flooded subscriber {i} closed with {code} {reason:?}"
        );
    }
    publisher.await??;
    let (worst, mut calm) = receiver.await??;
    ensure!(
        worst <= ON_TIME,
        "calm channel messages were held back {worst:?} by the flood"
    );
    let _ = stop_tx.send(());
    let polls = readiness.await??;
    ensure!(polls >= 3, "readiness was polled only {polls} times");
    // The calm subscriber was not touched.
    calm.request_ok(json!({"op": "ping"}), "pong").await?;
    let overflow = metric(&api, "gateway_fanout_overflow_total").await?;
    ensure!(overflow > 0.0, "no overflow was counted");
    let failures = metric(&api, "gateway_redis_probe_failures_total").await?;
    ensure!(
        failures == probe_failures,
        "the liveness probe failed during the flood ({probe_failures} -> {failures})"
    );
    Ok(())
}
