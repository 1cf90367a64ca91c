//! The envelope wire format on Redis: compact serde JSON of
//! [`Envelope`] (externally tagged, e.g. `{"message":{...}}`).
//!
//! Invariant: the `data` payload bytes are never re-encoded. A publication
//! with history gets its offset inside the publish Lua script, which only
//! concatenates `prefix .. offset .. suffix` around bytes produced here
//! (see [`offset_template`]); it never parses the JSON.

use crate::backplane::{BackplaneError, Envelope, Publication};

/// Encode an envelope for PUBLISH or a history entry.
pub fn encode(envelope: &Envelope) -> Result<String, BackplaneError> {
    serde_json::to_string(envelope)
        .map_err(|e| BackplaneError::Protocol(format!("cannot encode envelope: {e}")))
}

/// Encode a publication as its [`Envelope::Message`], without copying it.
pub fn encode_publication(publication: &Publication) -> Result<String, BackplaneError> {
    /// Serializes exactly like `Envelope::Message` (externally tagged).
    #[derive(serde::Serialize)]
    #[serde(rename_all = "snake_case")]
    enum Borrowed<'a> {
        Message(&'a Publication),
    }
    serde_json::to_string(&Borrowed::Message(publication))
        .map_err(|e| BackplaneError::Protocol(format!("cannot encode envelope: {e}")))
}

/// Decode an envelope received from Redis.
pub fn decode(bytes: &[u8]) -> Result<Envelope, BackplaneError> {
    serde_json::from_slice(bytes)
        .map_err(|e| BackplaneError::Protocol(format!("cannot decode envelope: {e}")))
}

/// The opening of every encoded [`Envelope::Message`].
const MESSAGE_OPEN: &str = r#"{"message":{"#;

/// Split the encoding of a publication without offset and epoch (see
/// [`Publication::clear_position`]) into `(prefix, suffix)` so that `prefix + offset +
/// suffix` is the encoding of the publication with that offset. The offset
/// field goes first in the object; field order does not matter to the
/// decoder.
pub fn offset_template(publication: &Publication) -> Result<(String, String), BackplaneError> {
    let json = encode_publication(publication)?;
    let rest = json.strip_prefix(MESSAGE_OPEN).ok_or_else(|| {
        BackplaneError::Protocol("unexpected envelope encoding (no message opening)".into())
    })?;
    // A publication always has fields, so `rest` starts with one: join it
    // to the offset with a comma.
    Ok((format!(r#"{MESSAGE_OPEN}"offset":"#), format!(",{rest}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn publication(data: &str) -> Result<Publication, serde_json::Error> {
        Ok(Publication {
            channel: "chat:a".into(),
            data: RawValue::from_string(data.to_owned())?,
            from: Some("alice".into()),
            offset: None,
            epoch: None,
            exclude: None,
            ts_us: 7,
        })
    }

    #[test]
    fn round_trip_keeps_raw_bytes() -> TestResult {
        let data = r#"{"url":"a/b","n":1.50,"s":"\u00e9"}"#;
        let bytes = encode(&Envelope::Message(publication(data)?))?;
        let Envelope::Message(p) = decode(bytes.as_bytes())? else {
            return Err("not a message".into());
        };
        assert_eq!(p.data.get(), data);
        assert_eq!(p.offset, None);
        assert_eq!(p.from.as_deref(), Some("alice"));
        Ok(())
    }

    #[test]
    fn template_inserts_offset_without_touching_data() -> TestResult {
        let data = r#"[1, 2.0, "x/y"]"#;
        let (prefix, suffix) = offset_template(&publication(data)?)?;
        let json = format!("{prefix}42{suffix}");
        let Envelope::Message(p) = decode(json.as_bytes())? else {
            return Err("not a message".into());
        };
        assert_eq!(p.offset, Some(42));
        assert_eq!(p.data.get(), data);
        assert_eq!(p.ts_us, 7);
        Ok(())
    }

    #[test]
    fn other_envelopes_round_trip() -> TestResult {
        let env = Envelope::DisconnectUser {
            user: "u".into(),
            code: 4004,
            reason: "bye".into(),
        };
        let bytes = encode(&env)?;
        assert!(matches!(
            decode(bytes.as_bytes())?,
            Envelope::DisconnectUser { code: 4004, .. }
        ));
        assert!(decode(b"{\"nope\":1}").is_err());
        Ok(())
    }
}
