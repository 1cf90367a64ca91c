//! WebSocket client speaking protocol v1 (docs/protocol.md).
//!
//! [`ClientBuilder`] sets query parameters and headers (`Authorization`,
//! `Origin`) and either connects ([`ClientBuilder::connect`], reading the
//! `welcome` frame) or expects a refusal before the upgrade
//! ([`ClientBuilder::expect_refused`], returning the HTTP status and error
//! body).
//!
//! [`Client`] reads frames only when a test asks, with a bounded timeout;
//! reading also answers the server's pings (tungstenite does that), so a
//! client that is not polled is a client that does not read. Replies are
//! matched to requests by `id`; pushes that arrive while waiting for a reply
//! are kept in order and returned by the next `recv_*` call.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::RECV_TIMEOUT;

/// Bound on the TCP connect plus WebSocket handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The HTTP refusal of an upgrade.
#[derive(Debug, Clone)]
pub struct Refused {
    /// HTTP status.
    pub status: u16,
    /// The body parsed as JSON (`Value::Null` when absent or not JSON).
    pub body: Value,
    /// The raw body text (as much as arrived with the headers).
    pub text: String,
}

impl Refused {
    /// `body.error.code`, if present.
    pub fn error_code(&self) -> Option<&str> {
        self.body.get("error")?.get("code")?.as_str()
    }

    /// Fails unless the refusal has `status` and the documented error body
    /// with `code`.
    pub fn expect(&self, status: u16, code: &str) -> Result<()> {
        if self.status != status || self.error_code() != Some(code) {
            bail!(
                "expected refusal {status} with error code {code:?}, got {} with body {:?}",
                self.status,
                self.text
            );
        }
        Ok(())
    }
}

/// Builds a connection to `/ws`.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    url: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    read_welcome: bool,
    recv_buffer: Option<u32>,
}

impl ClientBuilder {
    /// A builder for `url` (`ws://ADDR/ws`).
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            query: Vec::new(),
            headers: Vec::new(),
            read_welcome: true,
            recv_buffer: None,
        }
    }

    /// Adds a query parameter (percent-encoded).
    pub fn query(mut self, key: &str, value: &str) -> Self {
        self.query.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Adds a request header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// `Authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    /// `?token=<token>`.
    pub fn token_query(self, token: &str) -> Self {
        self.query("token", token)
    }

    /// `Origin: <origin>`.
    pub fn origin(self, origin: &str) -> Self {
        self.header("origin", origin)
    }

    /// Do not read the welcome frame on connect.
    pub fn no_welcome(mut self) -> Self {
        self.read_welcome = false;
        self
    }

    /// Sets SO_RCVBUF before connecting, so a client that stops reading
    /// stops the server's writes quickly (slow-consumer tests).
    pub fn recv_buffer(mut self, bytes: u32) -> Self {
        self.recv_buffer = Some(bytes);
        self
    }

    fn full_url(&self) -> String {
        if self.query.is_empty() {
            return self.url.clone();
        }
        let query: Vec<String> = self
            .query
            .iter()
            .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
            .collect();
        format!("{}?{}", self.url, query.join("&"))
    }

    /// Connects; `Ok(Err(refused))` when the server answered the upgrade
    /// with an HTTP error.
    pub async fn try_connect(self) -> Result<std::result::Result<Client, Refused>> {
        let url = self.full_url();
        let mut request = url
            .as_str()
            .into_client_request()
            .context("building request")?;
        for (name, value) in &self.headers {
            request.headers_mut().insert(
                HeaderName::from_bytes(name.as_bytes())?,
                HeaderValue::from_str(value)?,
            );
        }
        let host = request.uri().host().context("url without host")?.to_owned();
        let port = request.uri().port_u16().unwrap_or(80);
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await?
            .next()
            .with_context(|| format!("cannot resolve {host}:{port}"))?;
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(bytes) = self.recv_buffer {
            socket.set_recv_buffer_size(bytes)?;
        }
        let handshake = async {
            let stream = socket
                .connect(addr)
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            stream.set_nodelay(true)?;
            Ok::<_, anyhow::Error>(
                tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream)).await,
            )
        };
        let result = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| anyhow!("WebSocket handshake with {url} timed out"))??;
        let ws = match result {
            Ok((ws, _response)) => ws,
            Err(WsError::Http(response)) => {
                let text = response
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                let body = serde_json::from_str(&text).unwrap_or(Value::Null);
                return Ok(Err(Refused {
                    status: response.status().as_u16(),
                    body,
                    text,
                }));
            }
            Err(e) => return Err(anyhow!(e).context(format!("WebSocket handshake with {url}"))),
        };
        let mut client = Client {
            ws,
            pending: VecDeque::new(),
            close: None,
            next_id: 1,
            welcome: Value::Null,
        };
        if self.read_welcome {
            client.welcome = client.expect_type("welcome", RECV_TIMEOUT).await?;
        }
        Ok(Ok(client))
    }

    /// Connects and reads the welcome frame; fails on a refusal.
    pub async fn connect(self) -> Result<Client> {
        match self.try_connect().await? {
            Ok(client) => Ok(client),
            Err(refused) => bail!(
                "connection refused with HTTP {}: {}",
                refused.status,
                refused.text
            ),
        }
    }

    /// Expects the upgrade to be refused; returns the refusal.
    pub async fn expect_refused(self) -> Result<Refused> {
        match self.try_connect().await? {
            Ok(client) => bail!(
                "expected the upgrade to be refused, got welcome {}",
                client.welcome
            ),
            Err(refused) => Ok(refused),
        }
    }
}

/// What one read produced, control frames aside.
#[derive(Debug)]
#[allow(
    dead_code,
    reason = "payloads are shown through Debug in failure messages"
)]
enum Incoming {
    Json(Value),
    Text(String),
    Binary(usize),
    Close(u16, String),
    End(String),
}

/// A connected WebSocket client.
#[derive(Debug)]
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Pushes read while waiting for a reply, in arrival order.
    pending: VecDeque<Value>,
    /// The close frame, once one was read.
    close: Option<(u16, String)>,
    next_id: u64,
    /// The `welcome` frame (`Null` when built with `no_welcome`).
    pub welcome: Value,
}

impl Client {
    /// `welcome.conn`.
    pub fn conn(&self) -> String {
        self.welcome_str("conn")
    }

    /// `welcome.node`.
    pub fn node(&self) -> String {
        self.welcome_str("node")
    }

    /// `welcome.user` (`None` when null / anonymous).
    pub fn user(&self) -> Option<String> {
        self.welcome
            .get("user")
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    fn welcome_str(&self, field: &str) -> String {
        self.welcome
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }

    /// Sends a JSON text frame.
    pub async fn send_json(&mut self, value: &Value) -> Result<()> {
        self.send(Message::text(value.to_string())).await
    }

    /// Sends an arbitrary text frame.
    pub async fn send_raw_text(&mut self, text: &str) -> Result<()> {
        self.send(Message::text(text.to_owned())).await
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, data: Vec<u8>) -> Result<()> {
        self.send(Message::binary(data)).await
    }

    /// Sends a close frame with `code` and `reason`.
    pub async fn close(&mut self, code: u16, reason: &str) -> Result<()> {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_owned().into(),
        };
        self.send(Message::Close(Some(frame))).await
    }

    /// A complete client-initiated close: sends a close frame with `code`
    /// and `reason`, then reads until the server's close reply (or the end
    /// of the stream), bounded by [`RECV_TIMEOUT`].
    pub async fn close_handshake(&mut self, code: u16, reason: &str) -> Result<()> {
        self.close(code, reason).await?;
        let deadline = Instant::now() + RECV_TIMEOUT;
        loop {
            match self.read(deadline).await {
                None => bail!("no close reply within {RECV_TIMEOUT:?}"),
                Some(Incoming::Close(..) | Incoming::End(_)) => return Ok(()),
                Some(_) => {}
            }
        }
    }

    async fn send(&mut self, msg: Message) -> Result<()> {
        tokio::time::timeout(RECV_TIMEOUT, self.ws.send(msg))
            .await
            .map_err(|_| anyhow!("sending a frame timed out"))?
            .context("sending a frame")
    }

    /// Reads the next non-control frame from the socket, or `None` when the
    /// deadline passes first.
    async fn read(&mut self, deadline: Instant) -> Option<Incoming> {
        if let Some((code, reason)) = &self.close {
            return Some(Incoming::Close(*code, reason.clone()));
        }
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            let incoming = match next {
                None => Incoming::End("stream ended".to_owned()),
                Some(Err(e)) => Incoming::End(format!("read error: {e}")),
                Some(Ok(Message::Text(text))) => match serde_json::from_str(text.as_str()) {
                    Ok(value) => Incoming::Json(value),
                    Err(_) => Incoming::Text(text.as_str().to_owned()),
                },
                Some(Ok(Message::Binary(data))) => Incoming::Binary(data.len()),
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = match frame {
                        Some(f) => (u16::from(f.code), f.reason.as_str().to_owned()),
                        None => (1005, String::new()),
                    };
                    self.close = Some((code, reason.clone()));
                    Incoming::Close(code, reason)
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            };
            return Some(incoming);
        }
    }

    /// The next JSON frame (pending pushes first); fails on timeout, close,
    /// or a frame that is not a JSON text frame.
    pub async fn recv_json(&mut self, timeout: Duration) -> Result<Value> {
        if let Some(value) = self.pending.pop_front() {
            return Ok(value);
        }
        let deadline = Instant::now() + timeout;
        match self.read(deadline).await {
            None => bail!("no frame within {timeout:?}"),
            Some(Incoming::Json(value)) => Ok(value),
            Some(other) => bail!("expected a JSON text frame, got {other:?}"),
        }
    }

    /// The next JSON frame, which must have `type == ty`.
    pub async fn expect_type(&mut self, ty: &str, timeout: Duration) -> Result<Value> {
        let value = self
            .recv_json(timeout)
            .await
            .with_context(|| format!("waiting for a {ty:?} frame"))?;
        if value.get("type").and_then(Value::as_str) != Some(ty) {
            bail!("expected a {ty:?} frame, got {value}");
        }
        Ok(value)
    }

    /// Reads JSON frames, dropping those that do not match, until one
    /// matches `pred`.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let value = match self.recv_json(left).await {
                Ok(value) => value,
                Err(e) => bail!("waiting for {what}: {e}; skipped frames: {skipped:?}"),
            };
            if pred(&value) {
                return Ok(value);
            }
            skipped.push(value);
        }
    }

    /// Like [`Client::wait_for`], for a frame with `type == ty`.
    pub async fn wait_for_type(&mut self, ty: &str, timeout: Duration) -> Result<Value> {
        self.wait_for(timeout, &format!("a {ty:?} frame"), |v| {
            v.get("type").and_then(Value::as_str) == Some(ty)
        })
        .await
    }

    /// Sends `request` (an object with `op`) with a fresh numeric `id` unless
    /// it has one, and returns the frame whose `id` echoes it (a reply or an
    /// `error`). Pushes read meanwhile are kept for later `recv_*` calls.
    pub async fn request(&mut self, mut request: Value) -> Result<Value> {
        let obj = request
            .as_object_mut()
            .context("request must be a JSON object")?;
        if !obj.contains_key("id") {
            obj.insert("id".to_owned(), json!(self.next_id));
            self.next_id += 1;
        }
        let id = obj.get("id").cloned().unwrap_or(Value::Null);
        self.send_json(&request).await?;
        let deadline = Instant::now() + RECV_TIMEOUT;
        loop {
            match self.read(deadline).await {
                None => bail!("no reply to {request} within {RECV_TIMEOUT:?}"),
                Some(Incoming::Json(value)) => {
                    if value.get("id") == Some(&id) {
                        return Ok(value);
                    }
                    self.pending.push_back(value);
                }
                Some(other) => bail!("waiting for the reply to {request}, got {other:?}"),
            }
        }
    }

    /// Sends `request` and fails unless the reply has `type == ty`.
    pub async fn request_ok(&mut self, request: Value, ty: &str) -> Result<Value> {
        let reply = self.request(request.clone()).await?;
        if reply.get("type").and_then(Value::as_str) != Some(ty) {
            bail!("request {request} expected a {ty:?} reply, got {reply}");
        }
        Ok(reply)
    }

    /// `subscribe`; fails unless answered `subscribed`.
    pub async fn subscribe(&mut self, channel: &str) -> Result<Value> {
        self.request_ok(json!({"op": "subscribe", "channel": channel}), "subscribed")
            .await
    }

    /// `subscribe` with `since`; fails unless answered `subscribed`.
    pub async fn subscribe_since(&mut self, channel: &str, since: Value) -> Result<Value> {
        let req = json!({"op": "subscribe", "channel": channel, "since": since});
        self.request_ok(req, "subscribed").await
    }

    /// `unsubscribe`; fails unless answered `unsubscribed`.
    pub async fn unsubscribe(&mut self, channel: &str) -> Result<Value> {
        self.request_ok(
            json!({"op": "unsubscribe", "channel": channel}),
            "unsubscribed",
        )
        .await
    }

    /// `publish` without echo; fails unless answered `published`.
    pub async fn publish(&mut self, channel: &str, data: Value) -> Result<Value> {
        let req = json!({"op": "publish", "channel": channel, "data": data});
        self.request_ok(req, "published").await
    }

    /// `publish` with `echo: true`; fails unless answered `published`.
    pub async fn publish_echo(&mut self, channel: &str, data: Value) -> Result<Value> {
        let req = json!({"op": "publish", "channel": channel, "data": data, "echo": true});
        self.request_ok(req, "published").await
    }

    /// `presence`; fails unless answered `presence`.
    pub async fn presence(&mut self, channel: &str) -> Result<Value> {
        self.request_ok(json!({"op": "presence", "channel": channel}), "presence")
            .await
    }

    /// `ping`; fails unless answered `pong`.
    pub async fn ping(&mut self) -> Result<Value> {
        self.request_ok(json!({"op": "ping"}), "pong").await
    }

    /// Expects an `error` frame (next frame) with `code`; returns it.
    pub async fn expect_error(&mut self, code: &str, timeout: Duration) -> Result<Value> {
        let frame = self.expect_type("error", timeout).await?;
        check_error(&frame, code)?;
        Ok(frame)
    }

    /// Reads until the server's close frame and returns `(code, reason)`,
    /// skipping data frames sent before it (a slow consumer's backlog).
    /// Fails when the stream ends without a close frame.
    pub async fn expect_close(&mut self, timeout: Duration) -> Result<(u16, String)> {
        let deadline = Instant::now() + timeout;
        let mut skipped = self.pending.len();
        self.pending.clear();
        loop {
            match self.read(deadline).await {
                None => bail!("no close frame within {timeout:?} (skipped {skipped} frames)"),
                Some(Incoming::Close(code, reason)) => return Ok((code, reason)),
                Some(Incoming::End(why)) => bail!(
                    "connection ended without a close frame ({why}; skipped {skipped} frames)"
                ),
                Some(_) => skipped += 1,
            }
        }
    }

    /// Asserts that no data frame (and no close) arrives for `duration`;
    /// control frames are answered and ignored.
    pub async fn expect_nothing(&mut self, duration: Duration) -> Result<()> {
        if let Some(value) = self.pending.pop_front() {
            bail!("expected no frame, but {value} was pending");
        }
        match self.read(Instant::now() + duration).await {
            None => Ok(()),
            Some(other) => bail!("expected no frame for {duration:?}, got {other:?}"),
        }
    }

    /// The close frame read so far, if any.
    pub fn close_frame(&self) -> Option<&(u16, String)> {
        self.close.as_ref()
    }

    /// The underlying stream, for tests that need raw control.
    pub fn stream_mut(&mut self) -> &mut WebSocketStream<MaybeTlsStream<TcpStream>> {
        &mut self.ws
    }
}

/// Fails unless `frame` is an `error` with `code` and a string `message`.
pub fn check_error(frame: &Value, code: &str) -> Result<()> {
    if frame.get("type").and_then(Value::as_str) != Some("error")
        || frame.get("code").and_then(Value::as_str) != Some(code)
    {
        bail!("expected an error with code {code:?}, got {frame}");
    }
    if !frame.get("message").is_some_and(Value::is_string) {
        bail!("error frame lacks a string `message`: {frame}");
    }
    if frame.get("id").is_none() {
        bail!("error frame lacks `id` (must be the request id or null): {frame}");
    }
    Ok(())
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
