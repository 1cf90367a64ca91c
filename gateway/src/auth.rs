//! Client authentication (JWT HS256 or RS256, `sub` = user id, `exp` and
//! `nbf` enforced, `iss` / `aud` when configured), channel permission patterns from claims, the origin
//! allow-list, and the HTTP API key check.
//!
//! Only the configured algorithm is accepted: `alg: none` and any other
//! algorithm are refused. Without a key the node is in open development
//! mode: `?user=` names the user.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::Config;

/// Why a connection attempt was refused (bounded set, used as metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token where one is required.
    #[error("token required")]
    Missing,
    /// The token expired.
    #[error("token expired")]
    Expired,
    /// Bad signature, wrong algorithm, malformed, or missing claims.
    #[error("invalid token")]
    Invalid,
    /// The `Origin` is not allowed.
    #[error("origin not allowed")]
    Origin,
}

impl AuthError {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Expired => "expired",
            AuthError::Invalid => "invalid",
            AuthError::Origin => "origin",
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    publish: Option<Vec<String>>,
    #[serde(default)]
    info: Option<Box<RawValue>>,
    #[serde(default)]
    subs: Option<Vec<String>>,
}

/// Who a connection is and what it may do.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// User id; `None` for anonymous.
    pub user: Option<String>,
    /// Token expiry, seconds since the Unix epoch.
    pub exp: Option<u64>,
    /// Channel patterns it may subscribe to; `None` = any.
    pub subscribe: Option<Vec<String>>,
    /// Channel patterns it may publish to; `None` = any.
    pub publish: Option<Vec<String>>,
    /// Presence info (moved to the connection's handle at the upgrade).
    pub info: Option<Box<RawValue>>,
    /// Channels subscribed on connect (server-side subscriptions).
    pub subs: Box<[String]>,
    /// Whether `exp` is a proxied session's (connect proxy `expire_at`):
    /// at expiry the refresh hook is asked instead of closing at once.
    pub session: bool,
}

impl Identity {
    /// May subscribe to `channel`?
    pub fn may_subscribe(&self, channel: &str) -> bool {
        allowed(self.subscribe.as_deref(), channel)
    }
    /// May publish to `channel`?
    pub fn may_publish(&self, channel: &str) -> bool {
        allowed(self.publish.as_deref(), channel)
    }
}

/// Whether `channel` matches one of `patterns` (exact, or prefix ending
/// in `*`); `None` allows everything.
pub fn allowed(patterns: Option<&[String]>, channel: &str) -> bool {
    let Some(patterns) = patterns else {
        return true;
    };
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => channel.starts_with(prefix),
        None => p == channel,
    })
}

/// The claim checks: `exp` and `sub` required; `nbf` checked when present;
/// `iss` / `aud` required and matched only when configured (jsonwebtoken
/// skips a configured `iss` when the claim is absent, so both are also made
/// required claims). No leeway: the gateway's clock is the reference.
fn validation(alg: Algorithm, limits: &crate::config::ClientLimits) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = 0;
    v.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    if let Some(iss) = &limits.jwt_issuer {
        v.set_issuer(&[iss]);
        required.push("iss");
    }
    match &limits.jwt_audience {
        Some(aud) => {
            v.set_audience(&[aud]);
            required.push("aud");
        }
        None => v.validate_aud = false,
    }
    v.set_required_spec_claims(&required);
    v
}

/// The node's authenticator.
pub struct Auth {
    key: Option<(DecodingKey, Validation)>,
    required: bool,
    origins: Vec<String>,
    api_key: Option<String>,
}

impl Auth {
    /// Build from validated config (keys were checked by the config).
    pub fn new(config: &Config) -> Result<Self, jsonwebtoken::errors::Error> {
        let key = if let Some(secret) = &config.jwt_secret {
            Some((
                DecodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
            ))
        } else if let Some(pem) = &config.jwt_public_key_pem {
            Some((DecodingKey::from_rsa_pem(pem)?, Algorithm::RS256))
        } else {
            None
        };
        let key = key.map(|(k, alg)| (k, validation(alg, &config.clients)));
        Ok(Self {
            key,
            required: config.auth_required,
            origins: config
                .allowed_origins
                .iter()
                .map(|o| o.to_ascii_lowercase())
                .collect(),
            api_key: config.api_key.clone(),
        })
    }

    /// Whether the node runs in open development mode (no key).
    pub fn open_mode(&self) -> bool {
        self.key.is_none()
    }

    /// Check the `Origin` header (absent = non-browser client, allowed).
    pub fn check_origin(&self, origin: Option<&str>) -> Result<(), AuthError> {
        match origin {
            Some(o) if !self.origins.is_empty() => {
                let o = o.trim_end_matches('/').to_ascii_lowercase();
                if self.origins.contains(&o) {
                    Ok(())
                } else {
                    Err(AuthError::Origin)
                }
            }
            _ => Ok(()),
        }
    }

    /// Authenticate a connection from its token (header or query) and, in
    /// open mode only, its `?user=`.
    pub fn authenticate(
        &self,
        token: Option<&str>,
        dev_user: Option<&str>,
    ) -> Result<Identity, AuthError> {
        let Some((key, validation)) = &self.key else {
            return Ok(Identity {
                user: dev_user.filter(|u| !u.is_empty()).map(str::to_owned),
                ..Identity::default()
            });
        };
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return if self.required {
                Err(AuthError::Missing)
            } else {
                Ok(Identity::default())
            };
        };
        let data =
            jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid,
            })?;
        let c = data.claims;
        if c.sub.is_empty() {
            return Err(AuthError::Invalid);
        }
        Ok(Identity {
            user: Some(c.sub),
            exp: Some(c.exp),
            subscribe: c.channels,
            publish: c.publish,
            info: c.info,
            subs: c.subs.unwrap_or_default().into(),
            session: false,
        })
    }

    /// Check the HTTP API's bearer key. Both sides are hashed (SHA-256)
    /// and the digests compared in constant time, so neither the content
    /// nor the length of the key shows in the time taken.
    pub fn check_api_key(&self, authorization: Option<&str>) -> bool {
        let Some(expected) = &self.api_key else {
            return true;
        };
        let Some(given) = authorization.and_then(bearer) else {
            return false;
        };
        let sha = |v: &str| ring::digest::digest(&ring::digest::SHA256, v.as_bytes());
        let (a, b) = (sha(given), sha(expected));
        a.as_ref()
            .iter()
            .zip(b.as_ref())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    }
}

/// The credentials of an `Authorization: Bearer <token>` header; the scheme
/// is case-insensitive (RFC 6750 and RFC 9110, 11.1). `None` for another
/// scheme or an empty token.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim_start().split_once(' ')?;
    let token = token.trim_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn config(secret: Option<&str>, required: bool) -> Config {
        let mut args = vec!["gateway".to_owned()];
        if let Some(s) = secret {
            args.push("--jwt-secret".into());
            args.push(s.into());
        }
        if required {
            args.push("--auth-required".into());
            args.push("true".into());
        }
        let s = <crate::config::Settings as clap::Parser>::try_parse_from(args).unwrap();
        Config::from_settings(s).unwrap()
    }

    fn now() -> u64 {
        crate::clock::now_us() / 1_000_000
    }

    const SECRET: &str = "0123456789abcdef0123";

    fn token(claims: serde_json::Value, secret: &str, alg: Algorithm) -> String {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn hs256_good_expired_bad_and_none() {
        let auth = Auth::new(&config(Some(SECRET), true)).unwrap();
        let good = token(
            serde_json::json!({"sub":"u1","exp":now()+60,"channels":["chat:*"],"info":{"n":1}}),
            SECRET,
            Algorithm::HS256,
        );
        let id = auth.authenticate(Some(&good), None).unwrap();
        assert_eq!(id.user.as_deref(), Some("u1"));
        assert!(id.may_subscribe("chat:a") && !id.may_subscribe("news"));
        assert!(id.may_publish("anything"));
        assert_eq!(id.info.unwrap().get(), r#"{"n":1}"#);
        let expired = token(
            serde_json::json!({"sub":"u1","exp":now()-5}),
            SECRET,
            Algorithm::HS256,
        );
        assert_eq!(
            auth.authenticate(Some(&expired), None).unwrap_err(),
            AuthError::Expired
        );
        let bad = token(
            serde_json::json!({"sub":"u1","exp":now()+60}),
            "another-secret-0000000",
            Algorithm::HS256,
        );
        assert_eq!(
            auth.authenticate(Some(&bad), None).unwrap_err(),
            AuthError::Invalid
        );
        let hs512 = token(
            serde_json::json!({"sub":"u1","exp":now()+60}),
            SECRET,
            Algorithm::HS512,
        );
        assert_eq!(
            auth.authenticate(Some(&hs512), None).unwrap_err(),
            AuthError::Invalid
        );
        let none = format!(
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
            "eyJzdWIiOiJ1MSIsImV4cCI6OTk5OTk5OTk5OX0"
        );
        assert_eq!(
            auth.authenticate(Some(&none), None).unwrap_err(),
            AuthError::Invalid
        );
        assert_eq!(
            auth.authenticate(None, Some("x")).unwrap_err(),
            AuthError::Missing
        );
        let no_sub = token(
            serde_json::json!({"exp":now()+60}),
            SECRET,
            Algorithm::HS256,
        );
        assert_eq!(
            auth.authenticate(Some(&no_sub), None).unwrap_err(),
            AuthError::Invalid
        );
    }

    #[test]
    fn open_mode_takes_query_user_and_optional_auth_allows_anonymous() {
        let open = Auth::new(&config(None, false)).unwrap();
        assert!(open.open_mode());
        assert_eq!(
            open.authenticate(None, Some("alice"))
                .unwrap()
                .user
                .as_deref(),
            Some("alice")
        );
        assert_eq!(open.authenticate(None, None).unwrap().user, None);
        let optional = Auth::new(&config(Some(SECRET), false)).unwrap();
        assert_eq!(
            optional.authenticate(None, Some("alice")).unwrap().user,
            None
        );
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("BEARER  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearerabc"), None);
    }

    #[test]
    fn patterns_and_api_key() {
        assert!(allowed(Some(&["a".into(), "b:*".into()]), "b:c"));
        assert!(!allowed(Some(&["a".into()]), "ab"));
        assert!(allowed(None, "x"));
    }
}
