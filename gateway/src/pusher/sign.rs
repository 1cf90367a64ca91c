//! Pusher's signatures: lowercase hex HMAC-SHA256 with the app secret over
//! a string that names what is authorised (a channel subscription, a
//! sign-in, an HTTP API request, a webhook body), compared in constant
//! time; and the MD5 of an API request's body.

use md5::{Digest, Md5};
use ring::hmac;

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out
}

/// Hex HMAC-SHA256 of `parts` (concatenated) with `secret`.
pub fn hmac_hex(secret: &str, parts: &[&[u8]]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    for p in parts {
        ctx.update(p);
    }
    hex(ctx.sign().as_ref())
}

/// Constant-time equality of two strings.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The `auth` a client must send to subscribe `socket_id` to `channel`
/// (`channel_data` for presence): `key:hex(HMAC(secret,
/// "socket_id:channel[:channel_data]"))`.
pub fn channel_auth(
    key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> String {
    let sig = match channel_data {
        Some(d) => hmac_hex(
            secret,
            &[
                socket_id.as_bytes(),
                b":",
                channel.as_bytes(),
                b":",
                d.as_bytes(),
            ],
        ),
        None => hmac_hex(secret, &[socket_id.as_bytes(), b":", channel.as_bytes()]),
    };
    format!("{key}:{sig}")
}

/// The `auth` of a `pusher:signin`: `key:hex(HMAC(secret,
/// "socket_id::user::user_data"))`.
pub fn signin_auth(key: &str, secret: &str, socket_id: &str, user_data: &str) -> String {
    let sig = hmac_hex(
        secret,
        &[socket_id.as_bytes(), b"::user::", user_data.as_bytes()],
    );
    format!("{key}:{sig}")
}

/// Lowercase hex MD5 of an API request body (`body_md5`).
pub fn md5_hex(body: &[u8]) -> String {
    hex(&Md5::digest(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The key and secret of Pusher's documented examples; the expected
    // values were computed independently (Python's hmac and hashlib).
    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";

    #[test]
    fn private_channel_auth_matches_pushers_docs() {
        assert_eq!(
            channel_auth(KEY, SECRET, "1234.1234", "private-foobar", None),
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
    }

    #[test]
    fn presence_channel_auth_matches_pushers_docs() {
        let data = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;
        assert_eq!(
            channel_auth(KEY, SECRET, "1234.1234", "presence-foobar", Some(data)),
            "278d425bdf160c739803:31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80"
        );
    }

    #[test]
    fn api_signature_and_md5_match_pushers_docs() {
        let body = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        assert_eq!(md5_hex(body.as_bytes()), "ec365a775a4cd0599faeb73354201b6f");
        let to_sign = "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f";
        assert_eq!(
            hmac_hex(SECRET, &[to_sign.as_bytes()]),
            "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
    }

    #[test]
    fn comparison_is_exact() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
    }
}
