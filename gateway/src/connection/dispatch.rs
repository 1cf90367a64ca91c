//! A client's ops, one at a time: the permission checks of
//! [`crate::access`] (which also look the namespace up, once), then the
//! node's operation, then the reply queued on the connection.

use serde_json::Value;

use super::reader::Reader;
use crate::access::{self, Actor};
use crate::hub::frame;
use crate::metrics as m;
use crate::protocol::{ClientOp, ErrorCode, ReplyError, ServerFrame};
use crate::proxy::HookKind;

impl Reader {
    /// `forbidden` when the connection holds `max_channels_per_connection`
    /// channels (client and server-side subscribes alike).
    pub(super) fn check_channel_limit(&self) -> Result<(), ReplyError> {
        let max = self.node.config.max_channels_per_connection;
        if self.channels.len() >= max {
            return Err(ReplyError::new(
                ErrorCode::Forbidden,
                format!("max_channels_per_connection ({max}) reached"),
            ));
        }
        Ok(())
    }

    /// Run one op; an `Err` becomes the op's error reply.
    pub(super) async fn on_op(
        &mut self,
        op: ClientOp,
        id: Option<&Value>,
    ) -> Result<(), ReplyError> {
        let node = self.node.clone();
        let actor = Actor::Client(&self.identity);
        match op {
            ClientOp::Subscribe { channel, since } => {
                metrics::counter!(m::MESSAGES_RECEIVED, "op" => "subscribe").increment(1);
                let ns = access::subscribe(&node.config, actor, &channel)?;
                self.check_channel_limit()?;
                // Each subscribe here pushes a join (and later a leave) to
                // every member: a sub/unsub loop must not multiply frames.
                if ns.join_leave && self.join_leave.check() != crate::ratelimit::Verdict::Allow {
                    metrics::counter!(m::RATE_LIMITED).increment(1);
                    return Err(ReplyError::new(
                        ErrorCode::RateLimited,
                        "join_leave_rate exceeded for this channel's namespace",
                    ));
                }
                if self.channels.iter().any(|c| **c == *channel) {
                    return Err(ReplyError::bad_request("already subscribed"));
                }
                // Boxed, and only when configured: the proxy's request
                // future is large and most nodes have no hook.
                let info = if node.proxy.has_in(HookKind::Subscribe, &channel) {
                    Box::pin(self.proxy_subscribe(&channel)).await?
                } else {
                    None
                };
                // "Already subscribed" is also the hub's answer (it knows).
                let replayed = node
                    .subscribe(&self.handle, &channel, ns, since, id, info)
                    .await?;
                self.channels.push(channel.into_boxed_str());
                if replayed > 0 {
                    // A replay costs the client one token per started
                    // `replay_token_bytes`, on top of the frame's own.
                    let per = node.config.clients.replay_token_bytes;
                    self.limiter.charge(replayed.div_ceil(per) as f64);
                }
                Ok(())
            }
            ClientOp::Unsubscribe { channel } => {
                metrics::counter!(m::MESSAGES_RECEIVED, "op" => "unsubscribe").increment(1);
                let Some(at) = self.channels.iter().position(|c| **c == *channel) else {
                    return Err(ReplyError::new(ErrorCode::NotFound, "not subscribed"));
                };
                self.channels.swap_remove(at);
                node.unsubscribe(&self.handle, &channel).await;
                self.handle.push(&frame(&ServerFrame::Unsubscribed {
                    id,
                    channel: &channel,
                }));
                Ok(())
            }
            ClientOp::Publish {
                channel,
                data,
                echo,
            } => {
                metrics::counter!(m::MESSAGES_RECEIVED, "op" => "publish").increment(1);
                let ns = access::publish(&node.config, actor, &channel)?;
                let data = if node.proxy.has_in(HookKind::Publish, &channel) {
                    Box::pin(self.proxy_publish(&channel, data)).await?
                } else {
                    data
                };
                let exclude = (!echo).then(|| self.handle.id.to_string());
                let from = self.identity.user.clone();
                let hook = node.webhooks.wants_client_publish(ns).then(|| data.clone());
                let offset = node
                    .publish(&channel, ns, data, from, exclude, "client")
                    .await?;
                let user = self.identity.user.as_deref();
                node.webhooks
                    .client_publish(hook, &channel, user, &self.handle.id);
                self.handle
                    .push(&frame(&ServerFrame::Published { id, offset }));
                Ok(())
            }
            ClientOp::Presence { channel } => {
                metrics::counter!(m::MESSAGES_RECEIVED, "op" => "presence").increment(1);
                access::presence(&node.config, actor, &channel)?;
                let members = node.presence_members(&channel).await?;
                // Capped: one 70-byte request must not queue a reply as
                // large as the channel (the HTTP API, the backend's, is not).
                let shown = members
                    .len()
                    .min(node.config.clients.presence_reply_max_members);
                self.handle.push(&frame(&ServerFrame::Presence {
                    id,
                    channel: &channel,
                    members: &members[..shown],
                    total: members.len(),
                    truncated: shown < members.len(),
                }));
                Ok(())
            }
            ClientOp::Ping => {
                metrics::counter!(m::MESSAGES_RECEIVED, "op" => "ping").increment(1);
                self.handle.push(&frame(&ServerFrame::Pong { id }));
                Ok(())
            }
            ClientOp::Rpc { method, data } => {
                metrics::counter!(m::MESSAGES_RECEIVED, "op" => "rpc").increment(1);
                Box::pin(self.rpc(&method, data, id)).await
            }
            ClientOp::Refresh { token } => {
                metrics::counter!(m::MESSAGES_RECEIVED, "op" => "refresh").increment(1);
                self.refresh_token(&token, id).await
            }
        }
    }
}
