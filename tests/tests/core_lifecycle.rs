//! Process and connection lifecycle: heartbeat timeout, graceful drain on
//! SIGTERM, exit code 64 on bad configuration
//! (docs/protocol.md, "Heartbeat" and "Close codes"; docs/configuration.md,
//! "Startup, output and exit codes").

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use tests::{eventually, GatewayBuilder, RawWs};
use tokio::time::Instant;

#[tokio::test]
async fn silent_client_is_closed_4003_after_ping_interval_plus_pong_timeout() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("life_heartbeat_timeout")
        .standard_config()
        .env("GATEWAY_PING_INTERVAL_MS", 500)
        .env("GATEWAY_PONG_TIMEOUT_MS", 500)
        .spawn()
        .await?;
    let mut raw = RawWs::connect(gw.addr()?, "/ws?user=silent").await?;
    let started = Instant::now();
    let report = raw.read_until_close(Duration::from_secs(20)).await?;
    let took = started.elapsed();
    ensure!(
        report.pings >= 1,
        "the server must ping a silent client: {report:?}"
    );
    match report.close {
        Some((4003, reason)) => {
            ensure!(
                reason == "heartbeat_timeout",
                "close reason must be heartbeat_timeout: {reason:?}"
            )
        }
        Some((code, reason)) => bail!("silent client closed with {code} {reason:?}, expected 4003"),
        None => bail!("silent client's stream ended without a close frame: {report:?}"),
    }
    // 500 + 500 ms of silence: not long before, and well within 10 s.
    ensure!(
        took >= Duration::from_millis(700),
        "closed too early, after {took:?}"
    );
    ensure!(
        took <= Duration::from_secs(10),
        "closed too late, after {took:?}"
    );
    Ok(())
}

#[tokio::test]
async fn reading_client_survives_several_ping_intervals() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("life_heartbeat_ok")
        .standard_config()
        .env("GATEWAY_PING_INTERVAL_MS", 500)
        .env("GATEWAY_PONG_TIMEOUT_MS", 500)
        .spawn()
        .await?;
    let mut c = gw.connect_user("alice").await?;
    ensure!(
        c.welcome["ping_interval_ms"] == 500,
        "welcome: {}",
        c.welcome
    );
    // Reading answers the server's pings; six intervals pass without a close.
    c.expect_nothing(Duration::from_secs(3)).await?;
    c.ping().await?;
    Ok(())
}

#[tokio::test]
async fn sigterm_drains_with_1001_then_exits_0() -> Result<()> {
    let mut gw = GatewayBuilder::new()
        .name("life_drain")
        .standard_config()
        .env("GATEWAY_DRAIN_GRACE_MS", 3000)
        .spawn()
        .await?;
    let api = gw.api();
    ensure!(api.readyz().await? == 200, "ready before the drain");
    let mut clients = Vec::new();
    for user in ["a", "b", "c"] {
        let mut c = gw.connect_user(user).await?;
        c.subscribe("news").await?;
        clients.push(c);
    }
    gw.sigterm()?;
    eventually(
        Duration::from_secs(10),
        "/readyz answers 503 while draining",
        || {
            let api = api.clone();
            async move { api.readyz().await.is_ok_and(|s| s == 503) }
        },
    )
    .await?;
    // New upgrades are refused while draining (if the drain is still on).
    match gw.client().query("user", "late").try_connect().await {
        Ok(Ok(c)) => bail!(
            "a new connection was accepted while draining: {}",
            c.welcome
        ),
        Ok(Err(refused)) => refused.expect(503, "unavailable")?,
        Err(e) => eprintln!("late connection failed below HTTP (drain finished?): {e:#}"),
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let (code, reason) = c
            .expect_close(Duration::from_secs(15))
            .await
            .with_context(|| format!("client {i} during the drain"))?;
        ensure!(
            code == 1001,
            "draining node must close with 1001, got {code} {reason:?}"
        );
        ensure!(
            reason == "shutdown",
            "close reason must be shutdown: {reason:?}"
        );
    }
    let status = gw.wait_exit(Duration::from_secs(20)).await?;
    ensure!(
        status.code() == Some(0),
        "drained gateway must exit 0, got {status}"
    );
    Ok(())
}

/// The listening line is the documented "started" signal: a SIGINT sent
/// right after it must already drain and exit 0 (the handlers must be
/// installed before the line is printed), not kill the process.
#[tokio::test]
async fn sigint_right_after_start_drains_and_exits_0() -> Result<()> {
    let mut gw = GatewayBuilder::new()
        .name("life_drain_idle")
        .standard_config()
        .env("GATEWAY_DRAIN_GRACE_MS", 2000)
        .spawn()
        .await?;
    gw.sigint()?;
    let status = gw.wait_exit(Duration::from_secs(15)).await?;
    ensure!(
        status.code() == Some(0),
        "SIGINT must drain and exit 0, got {status}"
    );
    Ok(())
}

/// Runs a gateway that must refuse its configuration: exit 64 and a stderr
/// message naming one of `settings`.
async fn expect_exit_64(builder: GatewayBuilder, settings: &[&str]) -> Result<()> {
    let (status, stderr) = builder.run_to_exit(Duration::from_secs(20)).await?;
    ensure!(
        status.code() == Some(64),
        "bad configuration must exit 64, got {status}; stderr:\n{stderr}"
    );
    let lower = stderr.to_lowercase();
    ensure!(
        settings
            .iter()
            .any(|s| lower.contains(s) || lower.contains(&s.replace('_', "-"))),
        "stderr must name the setting ({settings:?}):\n{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn unparsable_number_exits_64() -> Result<()> {
    let b = GatewayBuilder::new()
        .name("life_bad_number")
        .env("GATEWAY_MAX_MESSAGE_SIZE", "abc");
    expect_exit_64(b, &["max_message_size"]).await
}

#[tokio::test]
async fn zero_limit_exits_64() -> Result<()> {
    let b = GatewayBuilder::new()
        .name("life_zero")
        .env("GATEWAY_MAX_CONNECTIONS", 0);
    expect_exit_64(b, &["max_connections"]).await
}

#[tokio::test]
async fn invalid_toml_exits_64() -> Result<()> {
    let (status, stderr) = GatewayBuilder::new()
        .name("life_bad_toml")
        .config("this is [not toml\n")
        .run_to_exit(Duration::from_secs(20))
        .await?;
    ensure!(
        status.code() == Some(64),
        "invalid TOML must exit 64, got {status}; stderr:\n{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn unknown_key_in_config_file_exits_64() -> Result<()> {
    let b = GatewayBuilder::new()
        .name("life_unknown_key")
        .config("max_conections = 5\n");
    expect_exit_64(b, &["max_conections"]).await
}

#[tokio::test]
async fn unknown_namespace_option_exits_64() -> Result<()> {
    let (status, stderr) = GatewayBuilder::new()
        .name("life_unknown_ns_option")
        .config("[namespaces.chat]\npresense = true\n")
        .run_to_exit(Duration::from_secs(20))
        .await?;
    ensure!(
        status.code() == Some(64),
        "unknown namespace option must exit 64, got {status}; stderr:\n{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn auth_required_without_a_key_exits_64() -> Result<()> {
    let b = GatewayBuilder::new()
        .name("life_auth_no_key")
        .env("GATEWAY_AUTH_REQUIRED", "true");
    expect_exit_64(b, &["auth_required", "jwt"]).await
}

#[tokio::test]
async fn invalid_node_id_exits_64() -> Result<()> {
    let b = GatewayBuilder::new()
        .name("life_bad_node_id")
        .env("GATEWAY_NODE_ID", "has space");
    expect_exit_64(b, &["node_id"]).await
}

#[tokio::test]
async fn queue_bytes_below_4096_exits_64() -> Result<()> {
    let b = GatewayBuilder::new()
        .name("life_small_queue")
        .env("GATEWAY_QUEUE_BYTES", 100);
    expect_exit_64(b, &["queue_bytes"]).await
}

#[tokio::test]
async fn presence_refresh_not_below_ttl_exits_64() -> Result<()> {
    let b = GatewayBuilder::new()
        .name("life_presence_refresh")
        .env("GATEWAY_PRESENCE_TTL_MS", 1000)
        .env("GATEWAY_PRESENCE_REFRESH_MS", 1000);
    expect_exit_64(b, &["presence_refresh_ms", "presence_ttl_ms"]).await
}

#[tokio::test]
async fn both_jwt_keys_exits_64() -> Result<()> {
    let b = GatewayBuilder::new()
        .name("life_two_keys")
        .env("GATEWAY_JWT_SECRET", tests::jwt::SECRET)
        .env(
            "GATEWAY_JWT_PUBLIC_KEY_FILE",
            tests::jwt::rs256_public_key_path().display(),
        );
    expect_exit_64(b, &["jwt_secret", "jwt_public_key_file"]).await
}

#[tokio::test]
async fn short_jwt_secret_exits_64() -> Result<()> {
    let b = GatewayBuilder::new()
        .name("life_short_secret")
        .env("GATEWAY_JWT_SECRET", "short");
    expect_exit_64(b, &["jwt_secret"]).await
}

#[tokio::test]
async fn unreadable_public_key_file_exits_64() -> Result<()> {
    let b = GatewayBuilder::new()
        .name("life_missing_pem")
        .env("GATEWAY_JWT_PUBLIC_KEY_FILE", "/nonexistent/key.pem");
    expect_exit_64(b, &["jwt_public_key_file"]).await
}

#[tokio::test]
async fn missing_config_file_exits_64() -> Result<()> {
    let b = GatewayBuilder::new()
        .name("life_missing_config")
        .env("GATEWAY_CONFIG", "/nonexistent/gateway.toml");
    expect_exit_64(b, &["config", "gateway.toml"]).await
}

/// CLI > env > TOML file > default, per setting (docs/configuration.md).
#[tokio::test]
async fn env_overrides_the_file_and_the_file_overrides_the_default() -> Result<()> {
    let file = format!(
        "max_channels_per_connection = 1\n{}",
        tests::STANDARD_CONFIG
    );
    let from_file = GatewayBuilder::new()
        .name("life_precedence_file")
        .config(&file)
        .spawn()
        .await?;
    let mut c = from_file.connect_user("alice").await?;
    c.subscribe("one").await?;
    let r = c
        .request(serde_json::json!({"op": "subscribe", "channel": "two"}))
        .await?;
    tests::check_error(&r, "forbidden").context("the file's limit of 1 applies")?;

    let from_env = GatewayBuilder::new()
        .name("life_precedence_env")
        .config(&file)
        .env("GATEWAY_MAX_CHANNELS_PER_CONNECTION", 2)
        .spawn()
        .await?;
    let mut c = from_env.connect_user("alice").await?;
    c.subscribe("one").await?;
    c.subscribe("two")
        .await
        .context("the env limit of 2 overrides the file's 1")?;
    let r = c
        .request(serde_json::json!({"op": "subscribe", "channel": "three"}))
        .await?;
    tests::check_error(&r, "forbidden").context("the env limit of 2 applies")?;
    Ok(())
}
