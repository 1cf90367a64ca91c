//! Who may do what on which channel: the namespace lookup and the permission
//! checks, written once for the WebSocket ops and the HTTP API. Each check
//! returns the channel's namespace options, so an op looks its namespace up
//! exactly once and hands the options on to the node.
//!
//! The HTTP API is trusted (it holds the API key): for it only the
//! namespace's own settings apply (history or presence enabled). A client is
//! checked against the namespace (anonymous allowed, client publish allowed)
//! and against its token's channel patterns.

use crate::auth::Identity;
use crate::backplane::HistoryOptions;
use crate::config::{Config, NamespaceOptions};
use crate::protocol::{ErrorCode, ReplyError};

/// Who asks.
#[derive(Clone, Copy)]
pub enum Actor<'a> {
    /// The HTTP API.
    Api,
    /// A client connection with this identity.
    Client(&'a Identity),
}

/// The namespace options of `channel`, or `bad_request` when its namespace
/// is not configured.
pub fn namespace<'c>(
    config: &'c Config,
    channel: &str,
) -> Result<&'c NamespaceOptions, ReplyError> {
    config
        .namespace(channel)
        .ok_or_else(|| ReplyError::bad_request("unknown namespace"))
}

fn client_may_use(
    identity: &Identity,
    ns: &NamespaceOptions,
    channel: &str,
) -> Result<(), ReplyError> {
    if identity.user.is_none() && !ns.allow_anonymous {
        return Err(ReplyError::new(
            ErrorCode::Unauthorized,
            format!("anonymous connections may not use {channel:?}"),
        ));
    }
    Ok(())
}

fn client_may_read(
    identity: &Identity,
    ns: &NamespaceOptions,
    channel: &str,
) -> Result<(), ReplyError> {
    client_may_use(identity, ns, channel)?;
    if !identity.may_subscribe(channel) {
        return Err(ReplyError::new(
            ErrorCode::Forbidden,
            "token does not allow this channel",
        ));
    }
    Ok(())
}

/// May `actor` subscribe to `channel`?
pub fn subscribe<'c>(
    config: &'c Config,
    actor: Actor<'_>,
    channel: &str,
) -> Result<&'c NamespaceOptions, ReplyError> {
    let ns = namespace(config, channel)?;
    if let Actor::Client(identity) = actor {
        client_may_read(identity, ns, channel)?;
    }
    Ok(ns)
}

/// May `actor` publish to `channel`?
pub fn publish<'c>(
    config: &'c Config,
    actor: Actor<'_>,
    channel: &str,
) -> Result<&'c NamespaceOptions, ReplyError> {
    let ns = namespace(config, channel)?;
    if let Actor::Client(identity) = actor {
        client_may_use(identity, ns, channel)?;
        if !ns.client_publish {
            return Err(ReplyError::new(
                ErrorCode::Forbidden,
                "clients may not publish in this namespace",
            ));
        }
        if !identity.may_publish(channel) {
            return Err(ReplyError::new(
                ErrorCode::Forbidden,
                "token does not allow publishing here",
            ));
        }
    }
    Ok(ns)
}

/// May `actor` read `channel`'s presence (and is presence enabled there)?
pub fn presence<'c>(
    config: &'c Config,
    actor: Actor<'_>,
    channel: &str,
) -> Result<&'c NamespaceOptions, ReplyError> {
    // Reading presence takes what subscribing takes.
    let ns = subscribe(config, actor, channel)?;
    if !ns.tracks_presence() {
        return Err(ReplyError::bad_request(
            "presence is not enabled for this namespace",
        ));
    }
    Ok(ns)
}

/// May `actor` read `channel`'s history? Returns its history settings.
pub fn history(
    config: &Config,
    actor: Actor<'_>,
    channel: &str,
) -> Result<HistoryOptions, ReplyError> {
    // Reading history takes what subscribing takes.
    subscribe(config, actor, channel)?
        .history()
        .ok_or_else(|| ReplyError::bad_request("history is not enabled for this namespace"))
}
