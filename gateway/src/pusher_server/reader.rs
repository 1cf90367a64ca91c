//! A Pusher connection's reader (the connection task): reads frames,
//! applies the node's rate limit, hands each event to its handler one at a
//! time ([`super::channels`]), answers `pusher:ping`, watches the heartbeat
//! (silence past the ping interval plus the pong timeout closes with 4201)
//! and, for apps that require it, the sign-in deadline (4009).

use std::sync::Arc;

use axum::extract::ws::{Message, Utf8Bytes};
use futures_util::{Stream, StreamExt};
use tokio::time::{sleep_until, Instant};

use crate::metrics as m;
use crate::node::Node;
use crate::outbox::ConnHandle;
use crate::protocol::{close, CloseReason};
use crate::pusher::apps::App;
use crate::pusher::wire::{ClientFrame, Out};
use crate::ratelimit::{RateLimiter, Verdict};

/// One subscribed channel.
pub(super) struct Sub {
    /// The hub name (`!app!channel`).
    pub(super) hub: Box<str>,
    /// Presence channels: the member's user id.
    pub(super) user: Option<Box<str>>,
}

/// A signed-in user.
pub(super) struct User {
    /// `id` of the signed `user_data`.
    pub(super) id: Box<str>,
    /// `user_info` of it, if any (presence channels subscribed without
    /// channel data show it).
    pub(super) info: Option<Box<serde_json::value::RawValue>>,
}

/// The reader's state.
pub struct PusherReader {
    pub(super) node: Arc<Node>,
    pub(super) app: Arc<App>,
    pub(super) handle: Arc<ConnHandle>,
    pub(super) channels: Vec<Sub>,
    /// Every frame (the node's `rate_limit` / `rate_burst`).
    pub(super) limiter: RateLimiter,
    /// Client events (the app's `client_event_rate`).
    pub(super) client_events: RateLimiter,
    pub(super) user: Option<User>,
}

/// Count a received event under `op` (Pusher's event name, or a class).
pub(super) fn received(op: &'static str) {
    metrics::counter!(m::MESSAGES_RECEIVED, "op" => op, "protocol" => "pusher").increment(1);
}

impl PusherReader {
    /// A reader for `handle`, a connection of `app`.
    pub fn new(node: Arc<Node>, app: Arc<App>, handle: Arc<ConnHandle>) -> Self {
        let rate = app.config.client_event_rate;
        Self {
            limiter: RateLimiter::new(node.config.rate_limit, node.config.rate_burst),
            client_events: RateLimiter::new(rate, rate),
            node,
            app,
            handle,
            channels: Vec::new(),
            user: None,
        }
    }

    /// Queue a frame.
    pub(super) fn send(&self, out: &Out<'_>) {
        self.handle.push(&Utf8Bytes::from(out.encode()));
    }

    /// Queue a `pusher:error` (counted by code).
    pub(super) fn error(&self, code: Option<u16>, message: &str) {
        let label = match code {
            Some(4009) => "unauthorized",
            Some(4301) => "client_event_refused",
            Some(4100) => "over_capacity",
            _ => "bad_request",
        };
        metrics::counter!(m::ERRORS, "code" => label, "protocol" => "pusher").increment(1);
        self.send(&Out::Error { code, message });
    }

    /// Read until the peer goes away or the handle is closed; returns the
    /// stream for the close handshake.
    pub async fn read_loop<S>(&mut self, mut stream: S) -> S
    where
        S: Stream<Item = Result<Message, axum::Error>> + Unpin,
    {
        let config = self.node.config.clone();
        let silence = config.ping_interval + config.pong_timeout;
        let heartbeat = sleep_until(Instant::now() + silence);
        let signin_by = self
            .app
            .config
            .user_authentication
            .then(|| Instant::now() + self.app.config.user_auth_timeout);
        let signin = sleep_until(signin_by.unwrap_or_else(Instant::now));
        let handle = self.handle.clone();
        let attention = handle.attention();
        tokio::pin!(heartbeat, signin, attention);
        loop {
            tokio::select! {
                biased;
                _ = &mut attention => {
                    if handle.is_closing() {
                        break;
                    }
                    // Server-side subscriptions are a v1 API: dropped.
                    while handle.take_control().is_some() {}
                    attention.set(handle.attention());
                }
                _ = &mut signin, if signin_by.is_some() && self.user.is_none() => {
                    self.handle.close(CloseReason::new(close::UNAUTHORIZED, "not signed in within the app's timeout"));
                }
                _ = &mut heartbeat => {
                    self.handle.close(CloseReason::new(close::HEARTBEAT_TIMEOUT, "pong reply not received"));
                }
                next = stream.next() => match next {
                    None => break,
                    Some(Err(e)) => {
                        match crate::connection::reader::read_error_close(e) {
                            Some(r) if r.code == close::TOO_LARGE => {
                                received("too_large");
                                self.error(None, "frame exceeds max_message_size");
                                self.handle.close(r);
                            }
                            Some(r) => {
                                received("invalid");
                                self.handle.close(r);
                            }
                            None => {}
                        }
                        break;
                    }
                    Some(Ok(msg)) => {
                        heartbeat.as_mut().reset(Instant::now() + silence);
                        match msg {
                            Message::Text(text) => {
                                m::hot().bytes_in.increment(text.len() as u64);
                                Box::pin(self.on_text(&text)).await;
                            }
                            Message::Binary(b) => {
                                m::hot().bytes_in.increment(b.len() as u64);
                                received("binary");
                                if self.admit() {
                                    self.error(None, "binary frames are not supported; send JSON text");
                                }
                            }
                            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => {}
                        }
                    }
                },
            }
        }
        stream
    }

    /// Take a rate-limit token for one frame; sustained abuse closes.
    fn admit(&mut self) -> bool {
        match self.limiter.check() {
            Verdict::Allow => true,
            Verdict::Refuse => {
                metrics::counter!(m::RATE_LIMITED, "protocol" => "pusher").increment(1);
                self.error(None, "rate limit exceeded");
                false
            }
            Verdict::Abuse => {
                metrics::counter!(m::RATE_LIMITED, "protocol" => "pusher").increment(1);
                tracing::info!("sustained rate-limit abuse, closing");
                self.handle.close(CloseReason::new(close::ABUSE, "abuse"));
                false
            }
        }
    }

    async fn on_text(&mut self, text: &str) {
        let frame: ClientFrame = match serde_json::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                received("invalid");
                if self.admit() {
                    tracing::debug!(error = %e, "bad pusher frame");
                    self.error(None, &format!("invalid frame: {e}"));
                }
                return;
            }
        };
        if !self.admit() {
            return;
        }
        match frame.event.as_str() {
            "pusher:ping" => {
                received("pusher:ping");
                self.send(&Out::Pong);
            }
            "pusher:pong" => received("pusher:pong"),
            "pusher:subscribe" => {
                received("pusher:subscribe");
                match parse(frame.data.as_deref()) {
                    Ok(s) => self.subscribe(s).await,
                    Err(e) => self.error(None, &format!("pusher:subscribe: {e}")),
                }
            }
            "pusher:unsubscribe" => {
                received("pusher:unsubscribe");
                match parse::<crate::pusher::wire::Unsubscribe>(frame.data.as_deref()) {
                    Ok(u) => self.unsubscribe(&u.channel).await,
                    Err(e) => self.error(None, &format!("pusher:unsubscribe: {e}")),
                }
            }
            "pusher:signin" => {
                received("pusher:signin");
                match parse(frame.data.as_deref()) {
                    Ok(s) => self.signin(s).await,
                    Err(e) => self.error(None, &format!("pusher:signin: {e}")),
                }
            }
            name if name.starts_with("client-") => {
                received("client_event");
                self.client_event(frame).await;
            }
            _ => {
                received("unknown");
                self.error(None, &format!("unsupported event {:?}", frame.event));
            }
        }
    }
}

/// The `data` of an event as `T` (an object, or a string holding one).
fn parse<T: serde::de::DeserializeOwned>(
    data: Option<&serde_json::value::RawValue>,
) -> Result<T, String> {
    let data = data.ok_or("missing data")?;
    match serde_json::from_str::<T>(data.get()) {
        Ok(v) => Ok(v),
        Err(first) => serde_json::from_str::<String>(data.get())
            .ok()
            .and_then(|inner| serde_json::from_str::<T>(&inner).ok())
            .ok_or_else(|| first.to_string()),
    }
}
