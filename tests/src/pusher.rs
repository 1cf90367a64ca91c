//! Pusher-protocol test clients (docs/pusher.md): a WebSocket client that
//! speaks Pusher protocol 7 over [`Client`] and signs its own private and
//! presence subscriptions with the app secret (as an app's auth endpoint
//! would), and a signed HTTP API client. Signatures come from
//! `gateway::pusher::sign`, whose values are checked against independently
//! computed vectors there; the JS suite (tests/pusher) uses the official
//! `pusher` library instead.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use gateway::pusher::sign;
use serde_json::{json, Value};

use crate::{Client, ClientBuilder, Gateway};

/// The app every Pusher test configures.
#[derive(Debug, Clone)]
pub struct PusherApp {
    /// `app_id`.
    pub id: &'static str,
    /// Key.
    pub key: &'static str,
    /// Secret.
    pub secret: &'static str,
}

/// `test-app` / `test-key` / `test-secret-123`.
pub const APP: PusherApp = PusherApp {
    id: "test-app",
    key: "test-key",
    secret: "test-secret-123",
};

/// A `[[pusher.apps]]` table for [`APP`] with client events on, plus
/// `extra` lines inside the table.
pub fn app_toml(extra: &str) -> String {
    format!(
        "[[pusher.apps]]\nid = \"{}\"\nkey = \"{}\"\nsecret = \"{}\"\nclient_events = true\n{extra}\n",
        APP.id, APP.key, APP.secret
    )
}

/// The `data` of a Pusher frame, parsed when it is a JSON string.
pub fn data(frame: &Value) -> Value {
    match frame.get("data") {
        Some(Value::String(s)) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
        Some(v) => v.clone(),
        None => Value::Null,
    }
}

/// The event name of a frame.
pub fn event(frame: &Value) -> &str {
    frame.get("event").and_then(Value::as_str).unwrap_or("")
}

/// A Pusher-protocol WebSocket connection.
pub struct PusherClient {
    /// The underlying client (raw JSON frames).
    pub ws: Client,
    /// From `pusher:connection_established`.
    pub socket_id: String,
    /// From `pusher:connection_established`.
    pub activity_timeout: u64,
}

impl PusherClient {
    /// Connect to `gw` as [`APP`] and wait for `connection_established`.
    pub async fn connect(gw: &Gateway) -> Result<Self> {
        Self::connect_key(gw, APP.key).await
    }

    /// Connect with app key `key`; the first frame must be
    /// `connection_established`.
    pub async fn connect_key(gw: &Gateway, key: &str) -> Result<Self> {
        let url = format!("ws://{}/app/{key}", gw.addr()?);
        let mut ws = ClientBuilder::new(&url)
            .query("protocol", "7")
            .query("client", "rust-test")
            .query("version", "1.0")
            .no_welcome()
            .connect()
            .await?;
        let first = ws.recv_json(crate::RECV_TIMEOUT).await?;
        if event(&first) != "pusher:connection_established" {
            bail!("expected connection_established, got {first}");
        }
        let d = data(&first);
        let socket_id = d["socket_id"].as_str().context("socket_id")?.to_owned();
        Ok(Self {
            ws,
            socket_id,
            activity_timeout: d["activity_timeout"].as_u64().unwrap_or(0),
        })
    }

    /// Send `{"event", "data", "channel"?}`.
    pub async fn send(&mut self, event: &str, data: Value, channel: Option<&str>) -> Result<()> {
        let mut frame = json!({ "event": event, "data": data });
        if let Some(c) = channel {
            frame["channel"] = json!(c);
        }
        self.ws.send_json(&frame).await
    }

    /// Wait for a frame with event name `name` (skipping others).
    pub async fn expect_event(&mut self, name: &str, timeout: Duration) -> Result<Value> {
        self.ws
            .wait_for(timeout, &format!("pusher event {name:?}"), |v| {
                event(v) == name
            })
            .await
    }

    /// Wait for `name` on `channel`.
    pub async fn expect_on(&mut self, name: &str, channel: &str) -> Result<Value> {
        self.ws
            .wait_for(
                crate::RECV_TIMEOUT,
                &format!("{name:?} on {channel:?}"),
                |v| event(v) == name && v["channel"] == channel,
            )
            .await
    }

    /// Subscribe with the `auth` (and `channel_data`) given; the reply
    /// (subscription_succeeded or subscription_error) is returned.
    pub async fn subscribe_raw(&mut self, data: Value) -> Result<Value> {
        let channel = data["channel"].as_str().unwrap_or_default().to_owned();
        self.send("pusher:subscribe", data, None).await?;
        self.ws
            .wait_for(crate::RECV_TIMEOUT, "the subscribe's reply", |v| {
                v["channel"] == channel.as_str()
                    && matches!(
                        event(v),
                        "pusher_internal:subscription_succeeded" | "pusher:subscription_error"
                    )
            })
            .await
    }

    /// Subscribe to a public or private channel (signed as the app's auth
    /// endpoint would); must succeed.
    pub async fn subscribe(&mut self, channel: &str) -> Result<Value> {
        let mut d = json!({ "channel": channel });
        if channel.starts_with("private-") {
            d["auth"] = json!(sign::channel_auth(
                APP.key,
                APP.secret,
                &self.socket_id,
                channel,
                None
            ));
        }
        let reply = self.subscribe_raw(d).await?;
        if event(&reply) != "pusher_internal:subscription_succeeded" {
            bail!("subscribe to {channel} failed: {reply}");
        }
        Ok(reply)
    }

    /// Join presence channel `channel` as `user` with `info`; returns the
    /// members object of the reply (`{"ids","hash","count"}`).
    pub async fn join(&mut self, channel: &str, user: &str, info: Value) -> Result<Value> {
        let channel_data = json!({ "user_id": user, "user_info": info }).to_string();
        let auth = sign::channel_auth(
            APP.key,
            APP.secret,
            &self.socket_id,
            channel,
            Some(&channel_data),
        );
        let reply = self
            .subscribe_raw(
                json!({ "channel": channel, "auth": auth, "channel_data": channel_data }),
            )
            .await?;
        if event(&reply) != "pusher_internal:subscription_succeeded" {
            bail!("join {channel} failed: {reply}");
        }
        Ok(data(&reply)["presence"].clone())
    }

    /// Sign in as `user` (`user_data` `{"id": user}`); waits for success.
    pub async fn signin(&mut self, user: &str) -> Result<()> {
        let user_data = json!({ "id": user }).to_string();
        let auth = sign::signin_auth(APP.key, APP.secret, &self.socket_id, &user_data);
        self.send(
            "pusher:signin",
            json!({ "auth": auth, "user_data": user_data }),
            None,
        )
        .await?;
        self.expect_event("pusher:signin_success", crate::RECV_TIMEOUT)
            .await?;
        Ok(())
    }
}

/// A signed Pusher HTTP API client for [`APP`] (or another key/secret).
pub struct PusherRest {
    base: String,
    /// App id used in paths.
    pub id: String,
    /// `auth_key`.
    pub key: String,
    /// Signing secret.
    pub secret: String,
    http: reqwest::Client,
}

/// Status and body text of an answer.
#[derive(Debug)]
pub struct RestAnswer {
    /// HTTP status.
    pub status: u16,
    /// Body text.
    pub body: String,
}

impl RestAnswer {
    /// The body as JSON (must be 200).
    pub fn ok(&self) -> Result<Value> {
        if self.status != 200 {
            bail!("expected 200, got {}: {}", self.status, self.body);
        }
        Ok(serde_json::from_str(&self.body)?)
    }
}

impl PusherRest {
    /// A client of `gw`'s HTTP API for [`APP`].
    pub fn new(gw: &Gateway) -> Result<Self> {
        Ok(Self {
            base: format!("http://{}", gw.addr()?),
            id: APP.id.to_owned(),
            key: APP.key.to_owned(),
            secret: APP.secret.to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()?,
        })
    }

    /// The signed query for `method` `path` with `params` and `body`, at
    /// Unix second `ts`.
    pub fn signed_query(
        &self,
        method: &str,
        path: &str,
        params: &[(&str, &str)],
        body: &[u8],
        ts: u64,
    ) -> String {
        let mut all: Vec<(String, String)> = vec![
            ("auth_key".into(), self.key.clone()),
            ("auth_timestamp".into(), ts.to_string()),
            ("auth_version".into(), "1.0".into()),
        ];
        if !body.is_empty() {
            all.push(("body_md5".into(), sign::md5_hex(body)));
        }
        all.extend(
            params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        all.sort();
        let query: Vec<String> = all.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let query = query.join("&");
        let signature = sign::hmac_hex(
            &self.secret,
            &[format!("{method}\n{path}\n{query}").as_bytes()],
        );
        format!("{query}&auth_signature={signature}")
    }

    /// Now, in Unix seconds.
    pub fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    /// Send `method` `path?query` with `body` as is.
    pub async fn send_raw(
        &self,
        method: &str,
        path: &str,
        query: &str,
        body: Vec<u8>,
    ) -> Result<RestAnswer> {
        let url = format!("{}{path}?{query}", self.base);
        let req = match method {
            "POST" => self
                .http
                .post(url)
                .header("content-type", "application/json")
                .body(body),
            _ => self.http.get(url),
        };
        let resp = req.send().await?;
        Ok(RestAnswer {
            status: resp.status().as_u16(),
            body: resp.text().await?,
        })
    }

    /// A signed POST of `body` to `/apps/{id}{path}`.
    pub async fn post(&self, path: &str, body: &Value) -> Result<RestAnswer> {
        let path = format!("/apps/{}{path}", self.id);
        let body = serde_json::to_vec(body)?;
        let query = self.signed_query("POST", &path, &[], &body, Self::now());
        self.send_raw("POST", &path, &query, body).await
    }

    /// A signed GET of `/apps/{id}{path}` with `params`.
    pub async fn get(&self, path: &str, params: &[(&str, &str)]) -> Result<RestAnswer> {
        let path = format!("/apps/{}{path}", self.id);
        let query = self.signed_query("GET", &path, params, &[], Self::now());
        self.send_raw("GET", &path, &query, Vec::new()).await
    }

    /// Trigger `name` with string `data` on `channels`.
    pub async fn trigger(&self, channels: &[&str], name: &str, data: &str) -> Result<Value> {
        self.post(
            "/events",
            &json!({ "name": name, "channels": channels, "data": data }),
        )
        .await?
        .ok()
    }
}
