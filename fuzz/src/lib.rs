//! Fuzz entry points: one function per hostile-input parser of the gateway,
//! each taking raw bytes. The cargo-fuzz targets (`fuzz_targets/*.rs`, on
//! nightly) call them, and `gateway/tests/fuzz_corpus.rs` replays the
//! committed corpus and a seeded mutation run through the very same
//! functions on stable (it includes this file with `#[path]`).
//!
//! Invariant: an entry function returns normally for every input the
//! gateway must merely refuse; it panics (an `assert!`) only when the code
//! under test breaks a promise: a panic inside the parser, an accepted
//! frame with an invalid channel, an envelope that does not survive its own
//! round trip, a token accepted without a valid signature. No entry does
//! network I/O; the config entry reads only regular files under 64 KiB
//! named by the input.

use std::sync::OnceLock;

use clap::{CommandFactory, Parser};
use gateway::auth::Auth;
use gateway::backplane::Envelope;
use gateway::config::{Config, Settings};
use gateway::protocol::{parse_request, valid_channel, ClientOp, ServerFrame};
use gateway::redis::codec;
use serde_json::Value;

/// The HS256 secret of the JWT entry's node.
pub const JWT_SECRET: &str = "fuzz-secret-0123456789abcdef";

/// Separates the TOML file from the environment lines in a config input.
pub const CONFIG_SPLIT: &str = "\n%%\n";

/// The client frame parser (`protocol::parse_request`), as the reader calls
/// it on every text frame; a refusal is encoded as the error reply.
pub fn client_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_request(text) {
        Ok(req) => {
            if let Some(id) = &req.id {
                assert!(id.is_string() || id.is_number(), "id {id:?} accepted");
            }
            match &req.op {
                ClientOp::Subscribe { channel, .. }
                | ClientOp::Unsubscribe { channel }
                | ClientOp::Presence { channel } => {
                    assert!(valid_channel(channel), "channel {channel:?} accepted");
                }
                ClientOp::Publish { channel, data, .. } => {
                    assert!(valid_channel(channel), "channel {channel:?} accepted");
                    assert!(
                        serde_json::from_str::<Value>(data.get()).is_ok(),
                        "publish data {:?} is not JSON",
                        data.get()
                    );
                }
                ClientOp::Rpc { method, data } => {
                    assert!(
                        !method.is_empty() && method.len() <= 255,
                        "method {method:?} accepted"
                    );
                    assert!(
                        serde_json::from_str::<Value>(data.get()).is_ok(),
                        "rpc data {:?} is not JSON",
                        data.get()
                    );
                }
                ClientOp::Refresh { token } => {
                    assert!(!token.is_empty(), "empty token accepted");
                }
                ClientOp::Ping => {}
            }
        }
        Err((id, e)) => {
            let frame = ServerFrame::Error {
                id: id.as_ref(),
                code: e.code,
                message: &e.message,
            };
            let out = frame.encode();
            assert!(
                serde_json::from_str::<Value>(&out).is_ok(),
                "error reply {out:?} is not JSON"
            );
        }
    }
}

/// The Redis envelope codec (`redis::codec::decode`, as the pub/sub reader
/// and history reads call it): whatever decodes must encode, decode again
/// to the same encoding, and a publication's offset template must splice.
pub fn envelope(data: &[u8]) {
    let Ok(env) = codec::decode(data) else {
        return;
    };
    let first = codec::encode(&env);
    assert!(first.is_ok(), "decoded envelope does not encode: {env:?}");
    let first = first.unwrap_or_default();
    let again = codec::decode(first.as_bytes());
    assert!(again.is_ok(), "own encoding {first:?} does not decode");
    if let Ok(again) = again {
        let second = codec::encode(&again).unwrap_or_default();
        assert_eq!(first, second, "encoding not stable");
    }
    if let Envelope::Message(p) = &env {
        let borrowed = codec::encode_publication(p).unwrap_or_default();
        assert_eq!(borrowed, first, "encode_publication differs from encode");
        let mut q = p.clone();
        q.offset = None;
        q.epoch = None;
        let template = codec::offset_template(&q);
        assert!(template.is_ok(), "no offset template for {q:?}");
        let (pre, suf) = template.unwrap_or_default();
        let spliced = format!("{pre}42{suf}");
        let decoded = codec::decode(spliced.as_bytes());
        assert!(
            matches!(decoded, Ok(Envelope::Message(_))),
            "spliced {spliced:?} decodes to {decoded:?}"
        );
        if let Ok(Envelope::Message(r)) = decoded {
            assert_eq!(r.offset, Some(42), "spliced offset lost");
            assert_eq!(r.channel, p.channel, "spliced channel changed");
            assert_eq!(r.data.get(), p.data.get(), "spliced data changed");
        }
    }
}

/// `GATEWAY_*` variable -> long flag of every setting but the config file
/// path (the entry writes that file itself).
fn env_flags() -> &'static [(String, String)] {
    static FLAGS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    FLAGS.get_or_init(|| {
        Settings::command()
            .get_arguments()
            .filter_map(|a| {
                let env = a.get_env()?.to_string_lossy().into_owned();
                let long = a.get_long()?.to_owned();
                (env != "GATEWAY_CONFIG").then_some((env, long))
            })
            .collect()
    })
}

/// A path the config may read: a regular file under 64 KiB (never a
/// device, a FIFO or /proc).
fn harmless(path: &std::path::Path) -> bool {
    let s = path.to_string_lossy();
    !s.starts_with("/proc")
        && std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() < 65_536)
}

/// The config loader (`Config::from_settings`: the TOML file layered under
/// CLI + environment, then validated). The input is the TOML text, then
/// optionally [`CONFIG_SPLIT`] and `GATEWAY_*=value` lines; each line goes
/// through the same clap value parser its environment variable uses (as
/// the matching `--flag value`; the process environment is never touched).
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (toml_text, env_text) = match text.split_once(CONFIG_SPLIT) {
        Some((t, e)) => (t, e),
        None => (text.as_ref(), ""),
    };
    // The file's parse, as the loader does it; a path it names is read
    // only when it is harmless.
    let file = match toml::from_str::<Settings>(toml_text) {
        Ok(file) => file,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    if let Some(p) = &file.jwt_public_key_file {
        if !harmless(p) {
            return;
        }
    }
    let mut args = vec!["gateway".to_owned()];
    for line in env_text.lines().take(64) {
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        let Some((_, long)) = env_flags().iter().find(|(e, _)| e == name) else {
            continue;
        };
        if long.ends_with("file") && !harmless(std::path::Path::new(value)) {
            return;
        }
        args.push(format!("--{long}={value}"));
    }
    // Without a variable, skip clap: building its command is most of the
    // cost, and the parse of no arguments is the default.
    let parsed = if args.len() > 1 {
        Settings::try_parse_from(&args)
    } else {
        Ok(Settings::default())
    };
    let Ok(cli) = parsed else {
        return;
    };
    // The loader's own layering, without a file written per input.
    match Config::from_layers(cli, file) {
        Ok(config) => {
            for ch in ["chat:lobby", "x", "a:b:c"] {
                let _ = config.namespace(ch);
            }
            let _ = format!("{config:?}");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// URL-safe base64 without padding (RFC 7515's JWS encoding).
pub fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

fn auth() -> Option<&'static Auth> {
    static AUTH: OnceLock<Option<Auth>> = OnceLock::new();
    AUTH.get_or_init(|| {
        let settings = Settings {
            jwt_secret: Some(JWT_SECRET.to_owned()),
            auth_required: Some(true),
            ..Settings::default()
        };
        let config = Config::from_settings(settings).ok()?;
        Auth::new(&config).ok()
    })
    .as_ref()
}

/// Signs `header.payload` with [`JWT_SECRET`] (HS256) and returns the token.
pub fn signed_token(header: &[u8], payload: &[u8]) -> String {
    let message = format!("{}.{}", b64url(header), b64url(payload));
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
        .unwrap_or_default();
    format!("{message}.{sig}")
}

/// JWT claim parsing (`Auth::authenticate` on an HS256 node). The first
/// byte picks the shape: 0 = the rest is the claims JSON, signed with the
/// node's secret under a standard header (so the claims parser and the
/// claim checks see every input); 1 = the rest is `header 0xFF claims`,
/// both signed; otherwise the rest is the raw token text (unsigned: it must
/// never be accepted).
pub fn jwt(data: &[u8]) {
    let auth = auth();
    assert!(auth.is_some(), "the JWT entry's node config is refused");
    let Some(auth) = auth else {
        return;
    };
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (token, signed) = match mode {
        0 => (signed_token(br#"{"alg":"HS256","typ":"JWT"}"#, rest), true),
        1 => {
            let (h, c) = match rest.iter().position(|&b| b == 0xFF) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &b""[..]),
            };
            (signed_token(h, c), true)
        }
        _ => (String::from_utf8_lossy(rest).into_owned(), false),
    };
    match auth.authenticate(Some(&token), None) {
        Ok(id) => {
            assert!(signed, "unsigned token {token:?} accepted");
            let user = id.user.clone().unwrap_or_default();
            assert!(!user.is_empty(), "accepted a token without a user");
            for ch in ["chat:lobby", "a", &user] {
                let _ = id.may_subscribe(ch);
                let _ = id.may_publish(ch);
            }
            for p in id.subscribe.iter().chain(&id.publish).flatten() {
                let _ = id.may_subscribe(p);
                let _ = id.may_publish(p);
            }
        }
        Err(e) => {
            let _ = e.label();
        }
    }
}

/// The Pusher frame parser (`pusher::wire`), as the Pusher reader calls it
/// on every text frame: the frame, then its `data` as a subscribe, a
/// sign-in and a presence channel's `channel_data`. What is accepted must
/// stay in bounds, and whatever is relayed must encode to valid JSON.
pub fn pusher_frame(data: &[u8]) {
    use gateway::pusher::names::valid_channel as valid_pusher_channel;
    use gateway::pusher::wire::{self, ChannelData, ClientFrame, Out, Signin, Subscribe};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(frame) = serde_json::from_str::<ClientFrame>(text) else {
        return;
    };
    let Some(raw) = frame.data.as_deref() else {
        return;
    };
    if let Ok(s) = serde_json::from_str::<Subscribe>(raw.get()) {
        let _ = valid_pusher_channel(&s.channel);
        if let Some(cd) = &s.channel_data {
            if let Ok(d) = serde_json::from_str::<ChannelData>(cd) {
                let info_ok = d.user_info.as_deref().is_none_or(wire::relayable);
                if let (Some(id), true) = (wire::user_id(&d.user_id), info_ok) {
                    assert!(!id.is_empty() && id.len() <= 200, "user id {id:?} accepted");
                    let stored = wire::stored_member(&id, d.user_info.as_deref());
                    let member = wire::presence_member("1.1", "n", Some(&stored));
                    assert_eq!(member.user, id, "a stored member reads back");
                }
            }
        }
    }
    let _ = serde_json::from_str::<Signin>(raw.get());
    // The reader relays only data that parses as a value.
    if let (Some(channel), true) = (&frame.channel, wire::relayable(raw)) {
        let out = Out::Event {
            event: &frame.event,
            channel,
            data: raw,
            user_id: None,
        }
        .encode();
        assert!(
            serde_json::from_str::<Value>(&out).is_ok(),
            "a relayed frame is not JSON: {out:?}"
        );
    }
}
