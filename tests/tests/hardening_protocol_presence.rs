//! Hardening (issue 10, item 5): a subscribe/unsubscribe loop on a
//! join/leave channel cannot turn each allowed frame into a push to every
//! member: subscribes to join/leave channels have their own per-connection
//! rate (`join_leave_rate`, `join_leave_burst`), and a join and a leave of
//! one connection inside the coalescing window (`join_leave_coalesce_ms`)
//! cancel out (docs/security.md "Clients: replay, presence churn, tokens").

use std::time::Duration;

use anyhow::{bail, ensure, Result};
use serde_json::json;
use tests::{GatewayBuilder, RECV_TIMEOUT};
use tokio::time::Instant;

#[tokio::test]
async fn join_leave_pushes_per_allowed_frame_are_bounded() -> Result<()> {
    const CYCLES: usize = 60;
    let gw = GatewayBuilder::new()
        .name("hp_join_leave_churn")
        .standard_config()
        .env("GATEWAY_JOIN_LEAVE_RATE", 1)
        .env("GATEWAY_JOIN_LEAVE_BURST", 5)
        // Sent at once: the rate limit alone bounds the pushes here.
        .env("GATEWAY_JOIN_LEAVE_COALESCE_MS", 0)
        .spawn()
        .await?;
    let mut observer = gw.connect_user("observer").await?;
    observer.subscribe("chat:churn").await?;
    let mut attacker = gw.connect_user("mallory").await?;
    let start = Instant::now();
    let (mut subscribed, mut limited) = (0usize, 0usize);
    for _ in 0..CYCLES {
        let reply = attacker
            .request(json!({"op": "subscribe", "channel": "chat:churn"}))
            .await?;
        if reply["type"] == "subscribed" {
            subscribed += 1;
            attacker.unsubscribe("chat:churn").await?;
        } else {
            ensure!(reply["code"] == "rate_limited", "{reply}");
            limited += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    // A marker after the loop: every join/leave of the loop precedes it.
    gw.api().publish("chat:churn", json!("marker")).await?;
    let mut pushes = 0usize;
    loop {
        let f = observer.recv_json(RECV_TIMEOUT).await?;
        match f["type"].as_str() {
            Some("join" | "leave") => pushes += 1,
            Some("message") if f["data"] == "marker" => break,
            _ => {}
        }
    }
    let allowed = 5.0 + elapsed * 1.0 + 1.0;
    println!(
        "{CYCLES} subscribe/unsubscribe cycles in {elapsed:.2}s: {subscribed} subscribed, \
         {limited} rate_limited, {pushes} join/leave pushes to one member"
    );
    ensure!(
        (subscribed as f64) <= allowed && limited > 0,
        "join_leave_rate holds: {subscribed} subscribes allowed in {elapsed:.2}s (bound {allowed:.1})"
    );
    ensure!(
        pushes <= 2 * subscribed,
        "one join and one leave per allowed subscribe: {pushes} pushes"
    );
    Ok(())
}

/// With the default burst (128) a loop of quick subscribe/unsubscribe
/// cycles is allowed; coalescing sends the first join at once and then at
/// most one net change per window (before: one join and one leave per
/// cycle, 120 pushes to every member). The net state (left) still arrives.
#[tokio::test]
async fn join_leave_churn_inside_the_window_costs_members_one_push_per_window() -> Result<()> {
    const CYCLES: usize = 60;
    const WINDOW_MS: u64 = 500;
    let gw = GatewayBuilder::new()
        .name("hp_join_leave_coalesce")
        .standard_config()
        .env("GATEWAY_JOIN_LEAVE_COALESCE_MS", WINDOW_MS)
        .spawn()
        .await?;
    let mut observer = gw.connect_user("observer").await?;
    observer.subscribe("chat:churn").await?;
    let mut attacker = gw.connect_user("mallory").await?;
    let start = Instant::now();
    for _ in 0..CYCLES {
        attacker.subscribe("chat:churn").await?;
        attacker.unsubscribe("chat:churn").await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    // Read until the observer was told the net state: as many leaves as
    // joins (at least one of each), then nothing more for a window and a half.
    let (mut joins, mut leaves) = (0usize, 0usize);
    while leaves == 0 || joins != leaves {
        let f = observer.recv_json(RECV_TIMEOUT).await?;
        match f["type"].as_str() {
            Some("join") if f["user"] == "mallory" => joins += 1,
            Some("leave") if f["user"] == "mallory" => leaves += 1,
            _ => bail!("unexpected frame {f}"),
        }
    }
    observer
        .expect_nothing(Duration::from_millis(WINDOW_MS * 3 / 2))
        .await?;
    let pushes = joins + leaves;
    // The first join at once, then one change per window end.
    let bound = (elapsed * 1000.0 / WINDOW_MS as f64).floor() as usize + 3;
    println!(
        "{CYCLES} subscribe/unsubscribe cycles in {elapsed:.2}s: {pushes} join/leave pushes \
         to one member (bound {bound}; {} without coalescing)",
        2 * CYCLES
    );
    ensure!(
        pushes <= bound,
        "{pushes} join/leave pushes for {CYCLES} cycles in {elapsed:.2}s (bound {bound})"
    );
    Ok(())
}
