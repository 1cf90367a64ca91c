//! The reader's side of the application backend proxy and of token
//! refresh: the subscribe, publish and rpc hooks for a client's ops, the
//! refresh hook at a proxied session's expiry, the in-band `refresh` op,
//! and server-side subscriptions (JWT `subs`, connect proxy `subs`).
//!
//! Everything here runs in the connection's own task, so the reader's
//! channel list and identity stay the one truth about the connection.

use serde_json::value::RawValue;
use serde_json::Value;

use super::reader::{Reader, SessionOutcome};
use crate::access::{self, Actor};
use crate::auth::AuthError;
use crate::hub::frame;
use crate::protocol::{close, CloseReason, ErrorCode, ReplyError, ServerFrame};
use crate::proxy::hooks::{
    ChannelRequest, PublishResult, RefreshRequest, RefreshResult, RpcRequest, RpcResult,
    SubscribeResult,
};
use crate::proxy::{Answer, HookKind, Refusal};

impl Reader {
    /// A refusal: close the connection when the backend asked to, and give
    /// the error the client gets.
    fn refused(&self, r: Refusal) -> ReplyError {
        if let Some(reason) = r.disconnect {
            self.handle.close(reason);
        }
        r.error
    }

    /// The subscribe hook, when configured: the subscription's own
    /// presence info, if the backend gave one.
    pub(super) async fn proxy_subscribe(
        &self,
        channel: &str,
    ) -> Result<Option<Box<RawValue>>, ReplyError> {
        let request = ChannelRequest {
            conn: &self.handle.id,
            user: self.identity.user.as_deref(),
            channel,
            data: None,
        };
        let answer = self
            .node
            .proxy
            .call_in::<SubscribeResult>(HookKind::Subscribe, Some(channel), &request)
            .await
            .map_err(|e| e.reply())?;
        match answer {
            None => Ok(None),
            Some(Answer::Result(r)) => Ok(r.info),
            Some(Answer::Refused(r)) => Err(self.refused(r)),
        }
    }

    /// The publish hook, when configured: the data to publish (the
    /// backend's rewrite, or the client's).
    pub(super) async fn proxy_publish(
        &self,
        channel: &str,
        data: Box<RawValue>,
    ) -> Result<Box<RawValue>, ReplyError> {
        if !self.node.proxy.has_in(HookKind::Publish, channel) {
            return Ok(data);
        }
        let request = ChannelRequest {
            conn: &self.handle.id,
            user: self.identity.user.as_deref(),
            channel,
            data: Some(&data),
        };
        let answer = self
            .node
            .proxy
            .call_in::<PublishResult>(HookKind::Publish, Some(channel), &request)
            .await
            .map_err(|e| e.reply())?;
        match answer {
            None => Ok(data),
            Some(Answer::Result(r)) => Ok(r.data.unwrap_or(data)),
            Some(Answer::Refused(r)) => Err(self.refused(r)),
        }
    }

    /// The `rpc` op.
    pub(super) async fn rpc(
        &self,
        method: &str,
        data: Box<RawValue>,
        id: Option<&Value>,
    ) -> Result<(), ReplyError> {
        let request = RpcRequest {
            conn: &self.handle.id,
            user: self.identity.user.as_deref(),
            method,
            data: &data,
        };
        let answer = self
            .node
            .proxy
            .call::<RpcResult>(HookKind::Rpc, &request)
            .await
            .map_err(|e| e.reply())?;
        match answer {
            None => Err(ReplyError::new(
                ErrorCode::NotFound,
                "rpc is not configured on this gateway",
            )),
            Some(Answer::Result(r)) => {
                let null;
                let data: &RawValue = match &r.data {
                    Some(d) => d,
                    None => {
                        null = RawValue::from_string("null".to_owned())
                            .map_err(|_| ReplyError::new(ErrorCode::Internal, "internal error"))?;
                        &null
                    }
                };
                self.handle.push(&frame(&ServerFrame::Rpc { id, data }));
                Ok(())
            }
            Some(Answer::Refused(r)) => Err(self.refused(r)),
        }
    }

    /// The `refresh` op: a new JWT of the same user moves the
    /// connection's expiry (the reader resets its timer when `exp`
    /// changes).
    pub(super) async fn refresh_token(
        &mut self,
        token: &str,
        id: Option<&Value>,
    ) -> Result<(), ReplyError> {
        if self.node.auth.open_mode() {
            return Err(ReplyError::bad_request(
                "no JWT key is configured on this gateway",
            ));
        }
        let fresh = self
            .node
            .auth
            .authenticate(Some(token), None)
            .map_err(|e| {
                metrics::counter!(crate::metrics::AUTH_FAILURES, "reason" => e.label())
                    .increment(1);
                let message = match e {
                    AuthError::Expired => "token expired",
                    _ => "invalid token",
                };
                ReplyError::new(ErrorCode::Unauthorized, message)
            })?;
        if fresh.user.is_none() || fresh.user != self.identity.user {
            return Err(ReplyError::new(
                ErrorCode::Forbidden,
                "the new token is for another user",
            ));
        }
        let Some(exp) = fresh.exp else {
            return Err(ReplyError::new(ErrorCode::Unauthorized, "invalid token"));
        };
        self.identity.exp = Some(exp);
        // A JWT's expiry is the token's: no refresh hook for it.
        self.identity.session = false;
        tracing::debug!(exp, "token refreshed");
        self.handle
            .push(&frame(&ServerFrame::Refreshed { id, exp }));
        Ok(())
    }

    /// A proxied session reached its expiry: ask the refresh hook.
    pub(super) async fn session_expired(&mut self) -> SessionOutcome {
        let request = RefreshRequest {
            conn: &self.handle.id,
            user: self.identity.user.as_deref(),
            expire_at: self.identity.exp,
        };
        let answer = self
            .node
            .proxy
            .call::<RefreshResult>(HookKind::Refresh, &request)
            .await;
        let now = crate::clock::now_us() / 1_000_000;
        match answer {
            Ok(Some(Answer::Result(RefreshResult {
                expired: false,
                expire_at: Some(exp),
            }))) if exp > now => {
                self.identity.exp = Some(exp);
                SessionOutcome::Extended(exp)
            }
            // Not configured, expired, or no later expiry: the session ends.
            Ok(None | Some(Answer::Result(_))) => {
                self.handle
                    .close(CloseReason::new(close::TOKEN_EXPIRED, "token_expired"));
                SessionOutcome::Closed
            }
            Ok(Some(Answer::Refused(r))) => {
                let reason = r
                    .disconnect
                    .unwrap_or_else(|| CloseReason::new(close::TOKEN_EXPIRED, "token_expired"));
                self.handle.close(reason);
                SessionOutcome::Closed
            }
            Err(_) => SessionOutcome::Retry,
        }
    }

    /// Subscribe this connection to `channel` on the server's behalf
    /// (JWT or connect proxy `subs`): the namespace must exist and the
    /// channel limit applies, but not the client's patterns nor the
    /// subscribe hook. The client gets `subscribed` with a null id.
    pub async fn server_subscribe(&mut self, channel: &str) -> Result<(), ReplyError> {
        if !crate::protocol::valid_channel(channel) {
            return Err(ReplyError::bad_request("invalid channel name"));
        }
        let node = self.node.clone();
        let ns = access::subscribe(&node.config, Actor::Api, channel)?;
        if self.channels.iter().any(|c| **c == *channel) {
            return Err(ReplyError::bad_request("already subscribed"));
        }
        self.check_channel_limit()?;
        node.subscribe(&self.handle, channel, ns, None, None, None)
            .await?;
        self.channels.push(channel.into());
        Ok(())
    }

    /// Unsubscribe on the server's behalf; the client gets `unsubscribed`
    /// with a null id. `not_found` when it was not subscribed.
    pub async fn server_unsubscribe(&mut self, channel: &str) -> Result<(), ReplyError> {
        let Some(at) = self.channels.iter().position(|c| **c == *channel) else {
            return Err(ReplyError::new(ErrorCode::NotFound, "not subscribed"));
        };
        self.channels.swap_remove(at);
        self.node.unsubscribe(&self.handle, channel).await;
        self.handle
            .push(&frame(&ServerFrame::Unsubscribed { id: None, channel }));
        Ok(())
    }

    /// A server-side (un)subscription from the HTTP API, in this task. A
    /// refused subscribe is told to the client as an `error` push (id
    /// null); unsubscribing a channel it is not in does nothing.
    pub async fn on_control(&mut self, c: crate::outbox::Control) {
        let result = if c.subscribe {
            self.server_subscribe(&c.channel).await
        } else {
            match self.server_unsubscribe(&c.channel).await {
                Err(e) if e.code == ErrorCode::NotFound => Ok(()),
                other => other,
            }
        };
        if let Err(e) = result {
            tracing::debug!(channel = %c.channel, error = %e.message, "server-side subscription refused");
            self.handle.push(&super::error_frame(None, &e));
        }
    }

    /// The server-side subscriptions of the identity, on connect. A
    /// refused one is logged and told to the client as an `error` frame
    /// (id null); the connection stays.
    pub async fn subscribe_initial(&mut self) {
        let subs = std::mem::take(&mut self.identity.subs);
        for channel in &subs {
            if let Err(e) = self.server_subscribe(channel).await {
                tracing::debug!(channel = %channel, error = %e.message, "server-side subscription refused");
                self.handle.push(&super::error_frame(None, &e));
            }
        }
    }
}

/// The connect hook for an upgrade without a JWT: the identity the backend
/// gave, or the HTTP refusal (401 `unauthorized` when the backend said
/// so, 403 `forbidden` for any other refusal, 503 `unavailable` when it
/// did not answer). The backend's text reaches the client only as the
/// message of an explicit refusal.
pub async fn connect_identity(
    node: &crate::node::Node,
    addr: std::net::IpAddr,
    headers: &axum::http::HeaderMap,
) -> Result<crate::auth::Identity, (&'static str, crate::api::ApiError)> {
    use crate::api::ApiError;
    use crate::proxy::hooks::{ConnectRequest, ConnectResult};

    let forwarded = node
        .proxy
        .headers
        .iter()
        .filter_map(|name| {
            let v = headers.get(name.as_str())?.to_str().ok()?;
            Some((name.as_str(), v))
        })
        .collect();
    let request = ConnectRequest {
        transport: "websocket",
        addr: addr.to_string(),
        headers: forwarded,
    };
    let answer = node
        .proxy
        .call::<ConnectResult>(HookKind::Connect, &request)
        .await
        .map_err(|e| {
            (
                "proxy",
                ApiError::new(ErrorCode::Unavailable, e.reply().message),
            )
        })?;
    let c = match answer {
        Some(Answer::Result(c)) => c,
        Some(Answer::Refused(r)) => {
            let code = if r.disconnect.is_none() && r.error.code == ErrorCode::Unauthorized {
                ErrorCode::Unauthorized
            } else {
                ErrorCode::Forbidden
            };
            metrics::counter!(crate::metrics::AUTH_FAILURES, "reason" => "proxy").increment(1);
            return Err(("auth", ApiError::new(code, r.error.message)));
        }
        None => {
            return Err((
                "auth",
                ApiError::new(ErrorCode::Unauthorized, "token required"),
            ))
        }
    };
    let now = crate::clock::now_us() / 1_000_000;
    if c.expire_at.is_some_and(|exp| exp <= now) {
        return Err((
            "auth",
            ApiError::new(ErrorCode::Unauthorized, "session expired"),
        ));
    }
    Ok(crate::auth::Identity {
        user: c.user.filter(|u| !u.is_empty()),
        exp: c.expire_at,
        subscribe: c.channels,
        publish: c.publish,
        info: c.info,
        subs: c.subs.into(),
        session: c.expire_at.is_some(),
    })
}
