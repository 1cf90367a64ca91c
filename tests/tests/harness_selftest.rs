//! Self-tests of the harness pieces that no core test exercises on their
//! own: the redis-server handle, the JWT minting, bounded polling.

use std::time::Duration;

use anyhow::{ensure, Result};
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tests::jwt::{self, SECRET};
use tests::{eventually, unique_prefix, RedisServer, Resp};

#[tokio::test]
async fn redis_server_serves_stops_and_restarts_empty_on_the_same_port() -> Result<()> {
    let mut redis = RedisServer::start().await?;
    let other = RedisServer::start().await?;
    ensure!(
        redis.port() != other.port(),
        "two servers share port {}",
        redis.port()
    );
    ensure!(
        redis.url() == format!("redis://127.0.0.1:{}", redis.port()),
        "{}",
        redis.url()
    );

    let prefix = unique_prefix("selftest");
    let key = format!("{prefix}:k");
    ensure!(
        redis.cmd(&["SET", &key, "v"]).await? == Resp::Simple("OK".into()),
        "SET"
    );
    ensure!(
        redis.cmd(&["GET", &key]).await? == Resp::Bulk(Some(b"v".to_vec())),
        "GET"
    );
    ensure!(
        redis.keys(&format!("{prefix}:*")).await? == vec![key.clone()],
        "KEYS"
    );
    ensure!(
        other.keys("*").await?.is_empty(),
        "servers must not share data"
    );

    let port = redis.port();
    redis.stop();
    ensure!(!redis.is_running(), "stopped server still running");
    ensure!(
        redis.cmd(&["PING"]).await.is_err(),
        "stopped server still answers"
    );
    redis.restart().await?;
    ensure!(redis.port() == port, "restart must reuse the port");
    ensure!(
        redis.cmd(&["GET", &key]).await? == Resp::Bulk(None),
        "data must not survive"
    );
    Ok(())
}

#[test]
fn unique_prefixes_differ() {
    let a = unique_prefix("x y");
    let b = unique_prefix("x y");
    assert_ne!(a, b);
    assert!(
        a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "{a}"
    );
}

#[test]
fn hs256_tokens_verify_with_the_secret_only() -> Result<()> {
    let token = jwt::hs256(SECRET, &jwt::claims("alice"))?;
    let data = decode::<Value>(
        &token,
        &DecodingKey::from_secret(SECRET.as_bytes()),
        &Validation::new(Algorithm::HS256),
    )?;
    ensure!(data.claims["sub"] == "alice", "{:?}", data.claims);
    let wrong = decode::<Value>(
        &token,
        &DecodingKey::from_secret(b"another-secret-entirely"),
        &Validation::new(Algorithm::HS256),
    );
    ensure!(wrong.is_err(), "verified with the wrong secret");
    let tampered = jwt::tamper_signature(&token);
    let bad = decode::<Value>(
        &tampered,
        &DecodingKey::from_secret(SECRET.as_bytes()),
        &Validation::new(Algorithm::HS256),
    );
    ensure!(bad.is_err(), "tampered token verified");
    let expired = jwt::hs256(SECRET, &jwt::claims_expiring("alice", -3600))?;
    let exp = decode::<Value>(
        &expired,
        &DecodingKey::from_secret(SECRET.as_bytes()),
        &Validation::new(Algorithm::HS256),
    );
    ensure!(exp.is_err(), "expired token verified");
    Ok(())
}

#[test]
fn rs256_tokens_verify_with_the_fixture_public_key_only() -> Result<()> {
    let pem = std::fs::read(jwt::rs256_public_key_path())?;
    let key = DecodingKey::from_rsa_pem(&pem)?;
    let token = jwt::rs256(&jwt::claims("bob"))?;
    let data = decode::<Value>(&token, &key, &Validation::new(Algorithm::RS256))?;
    ensure!(data.claims["sub"] == "bob", "{:?}", data.claims);
    let foreign = jwt::rs256_foreign_key(&jwt::claims("bob"))?;
    ensure!(
        decode::<Value>(&foreign, &key, &Validation::new(Algorithm::RS256)).is_err(),
        "foreign key verified"
    );
    let confused = jwt::hs256_keyed_with_public_key(&jwt::claims("bob"))?;
    ensure!(
        decode_header(&confused)?.alg == Algorithm::HS256,
        "confusion token alg"
    );
    Ok(())
}

#[test]
fn alg_none_token_has_none_header_and_empty_signature() -> Result<()> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let token = jwt::alg_none(&jwt::claims("eve"));
    let parts: Vec<&str> = token.split('.').collect();
    ensure!(parts.len() == 3 && parts[2].is_empty(), "{token}");
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0])?)?;
    ensure!(header["alg"] == "none", "{header}");
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1])?)?;
    ensure!(claims["sub"] == "eve", "{claims}");
    Ok(())
}

#[tokio::test]
async fn eventually_is_bounded_and_returns_early() -> Result<()> {
    let started = tokio::time::Instant::now();
    let err = eventually(Duration::from_millis(200), "never true", || async { false }).await;
    ensure!(err.is_err(), "a false condition must fail");
    ensure!(started.elapsed() < Duration::from_secs(5), "not bounded");
    let mut n = 0;
    eventually(Duration::from_secs(5), "third try", || {
        n += 1;
        let done = n >= 3;
        async move { done }
    })
    .await?;
    ensure!(n == 3, "polled {n} times");
    Ok(())
}
