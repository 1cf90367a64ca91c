//! HTTP server API client (docs/protocol.md, "HTTP server API v1").
//!
//! [`Api`] returns every answer as an [`ApiResponse`] (status + JSON body,
//! or the raw text when the body is not JSON) so tests can assert refusals
//! as precisely as successes; the `*_ok` helpers fail unless the status is
//! 200.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Bound on one HTTP call.
const HTTP_TIMEOUT: Duration = Duration::from_secs(15);

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    /// HTTP status code.
    pub status: u16,
    /// The body parsed as JSON (`Value::Null` when empty or not JSON).
    pub body: Value,
    /// The raw body text.
    pub text: String,
}

impl ApiResponse {
    /// `body.error.code` of an error answer, if present.
    pub fn error_code(&self) -> Option<&str> {
        self.body.get("error")?.get("code")?.as_str()
    }

    /// Fails unless the status is 200; returns the body.
    pub fn ok(self) -> Result<Value> {
        if self.status != 200 {
            bail!("expected HTTP 200, got {}: {}", self.status, self.text);
        }
        Ok(self.body)
    }

    /// Fails unless the answer is the documented error shape with `status`
    /// and `code`.
    pub fn expect_error(&self, status: u16, code: &str) -> Result<()> {
        if self.status != status || self.error_code() != Some(code) {
            bail!(
                "expected HTTP {status} with error code {code:?}, got {}: {}",
                self.status,
                self.text
            );
        }
        let message = self.body.pointer("/error/message").and_then(Value::as_str);
        if message.is_none() {
            bail!("error body lacks error.message (string): {}", self.text);
        }
        Ok(())
    }
}

/// Client for one gateway's HTTP API.
#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    key: Option<String>,
    http: reqwest::Client,
}

impl Api {
    /// A client for `base` (`http://ADDR`), with an optional API key.
    pub fn new(base: &str, key: Option<&str>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self {
            base: base.trim_end_matches('/').to_owned(),
            key: key.map(str::to_owned),
            http,
        }
    }

    /// The same client with a different (or no) API key.
    pub fn with_key(&self, key: Option<&str>) -> Self {
        Self {
            base: self.base.clone(),
            key: key.map(str::to_owned),
            http: self.http.clone(),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> Result<ApiResponse> {
        let req = match &self.key {
            Some(key) => req.bearer_auth(key),
            None => req,
        };
        let resp = req.send().await.with_context(|| format!("HTTP {what}"))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .with_context(|| format!("reading body of {what}"))?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(ApiResponse { status, body, text })
    }

    /// GET `path` (starting with `/`).
    pub async fn get(&self, path: &str) -> Result<ApiResponse> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.get(&url), &format!("GET {path}")).await
    }

    /// POST `path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<ApiResponse> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.post(&url).json(body), &format!("POST {path}"))
            .await
    }

    /// POST `path` with a raw body and content type.
    pub async fn post_raw(
        &self,
        path: &str,
        body: &str,
        content_type: &str,
    ) -> Result<ApiResponse> {
        let url = format!("{}{path}", self.base);
        let req = self
            .http
            .post(&url)
            .header("content-type", content_type)
            .body(body.to_owned());
        self.send(req, &format!("POST {path}")).await
    }

    /// POST /api/publish; fails unless 200; returns the body (`{offset}`).
    pub async fn publish(&self, channel: &str, data: Value) -> Result<Value> {
        self.post("/api/publish", &json!({"channel": channel, "data": data}))
            .await?
            .ok()
    }

    /// POST /api/publish with `exclude`; fails unless 200.
    pub async fn publish_excluding(
        &self,
        channel: &str,
        data: Value,
        exclude: &str,
    ) -> Result<Value> {
        let body = json!({"channel": channel, "data": data, "exclude": exclude});
        self.post("/api/publish", &body).await?.ok()
    }

    /// POST /api/broadcast; fails unless 200.
    pub async fn broadcast(&self, data: Value) -> Result<Value> {
        self.post("/api/broadcast", &json!({ "data": data }))
            .await?
            .ok()
    }

    /// POST /api/users/{user}/send; fails unless 200.
    pub async fn send_to_user(&self, user: &str, data: Value) -> Result<Value> {
        self.post(&format!("/api/users/{user}/send"), &json!({ "data": data }))
            .await?
            .ok()
    }

    /// POST /api/connections/{conn}/send; fails unless 200.
    pub async fn send_to_conn(&self, conn: &str, data: Value) -> Result<Value> {
        self.post(
            &format!("/api/connections/{conn}/send"),
            &json!({ "data": data }),
        )
        .await?
        .ok()
    }

    /// GET /api/channels/{channel}/presence; fails unless 200.
    pub async fn presence(&self, channel: &str) -> Result<Value> {
        self.get(&format!("/api/channels/{channel}/presence"))
            .await?
            .ok()
    }

    /// GET /api/channels/{channel}/history with an optional query string
    /// (`since=2&limit=3`); fails unless 200.
    pub async fn history(&self, channel: &str, query: &str) -> Result<Value> {
        let path = if query.is_empty() {
            format!("/api/channels/{channel}/history")
        } else {
            format!("/api/channels/{channel}/history?{query}")
        };
        self.get(&path).await?.ok()
    }

    /// GET /api/users/{user}; fails unless 200.
    pub async fn user(&self, user: &str) -> Result<Value> {
        self.get(&format!("/api/users/{user}")).await?.ok()
    }

    /// Whether GET /api/users/{user} says `online: true`.
    pub async fn is_online(&self, user: &str) -> Result<bool> {
        let body = self.user(user).await?;
        body.get("online")
            .and_then(Value::as_bool)
            .context("user answer lacks bool `online`")
    }

    /// GET /api/nodes; fails unless 200.
    pub async fn nodes(&self) -> Result<Value> {
        self.get("/api/nodes").await?.ok()
    }

    /// Status of GET /readyz.
    pub async fn readyz(&self) -> Result<u16> {
        Ok(self.get("/readyz").await?.status)
    }

    /// Status of GET /healthz.
    pub async fn healthz(&self) -> Result<u16> {
        Ok(self.get("/healthz").await?.status)
    }

    /// Body of GET /metrics; fails unless 200.
    pub async fn metrics(&self) -> Result<String> {
        let resp = self.get("/metrics").await?;
        if resp.status != 200 {
            bail!("GET /metrics answered {}: {}", resp.status, resp.text);
        }
        Ok(resp.text)
    }
}
