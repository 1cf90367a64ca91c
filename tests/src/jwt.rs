//! JWT minting for auth tests.
//!
//! HS256 tokens use a shared secret; RS256 tokens use the committed test
//! key pair in `tests/fixtures/` (generated once with `openssl genrsa 2048`
//! and `openssl rsa -pubout`; test-only, never a real key). Hostile tokens
//! (`alg: none`, algorithm confusion, a foreign RSA key) are built here too.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// The HS256 secret most auth tests configure.
pub const SECRET: &str = "integration-test-secret-0123456789abcdef";

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Claims `{sub, exp: now + 1 h}`; add fields with `claims["x"] = ...`.
pub fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now_secs() + 3600})
}

/// Claims that expire `secs` from now (negative: already expired).
pub fn claims_expiring(sub: &str, secs: i64) -> Value {
    json!({"sub": sub, "exp": now_secs() + secs})
}

/// An HS256 token signed with `secret`.
pub fn hs256(secret: &str, claims: &Value) -> Result<String> {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .context("signing HS256 token")
}

/// Path of the RS256 public key (PEM) to configure with
/// `GATEWAY_JWT_PUBLIC_KEY_FILE`.
pub fn rs256_public_key_path() -> PathBuf {
    crate::fixtures_dir().join("jwt_rs256_public.pem")
}

fn rs256_with(file: &str, claims: &Value) -> Result<String> {
    let path = crate::fixtures_dir().join(file);
    let pem = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let key = EncodingKey::from_rsa_pem(&pem).context("parsing RSA private key")?;
    encode(&Header::new(Algorithm::RS256), claims, &key).context("signing RS256 token")
}

/// An RS256 token signed with the test key matching
/// [`rs256_public_key_path`].
pub fn rs256(claims: &Value) -> Result<String> {
    rs256_with("jwt_rs256_private.pem", claims)
}

/// An RS256 token signed with a different RSA key (bad signature).
pub fn rs256_foreign_key(claims: &Value) -> Result<String> {
    rs256_with("jwt_rs256_other_private.pem", claims)
}

/// The classic algorithm-confusion token: HS256, keyed with the bytes of
/// the server's RSA public key PEM.
pub fn hs256_keyed_with_public_key(claims: &Value) -> Result<String> {
    let path = rs256_public_key_path();
    let pem = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(&pem),
    )
    .context("signing HS256 token")
}

/// An unsigned token with header `{"alg":"none","typ":"JWT"}` and an empty
/// signature.
pub fn alg_none(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string().as_bytes());
    format!("{header}.{payload}.")
}

/// `token` with its signature replaced by garbage of the same shape.
pub fn tamper_signature(token: &str) -> String {
    match token.rsplit_once('.') {
        Some((head, sig)) => {
            let flipped: String = sig
                .chars()
                .map(|c| if c == 'A' { 'B' } else { 'A' })
                .collect();
            format!("{head}.{flipped}")
        }
        None => format!("{token}x"),
    }
}
