//! Prometheus from the tests' side: a client of its HTTP API, and the
//! PromQL the deploy files hold (every `expr` of the Grafana dashboard and
//! the alert rules, the `gateway_*` names in them, a dashboard query made
//! runnable outside Grafana).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::deploy_path;

/// A Prometheus HTTP API client.
#[derive(Debug, Clone)]
pub struct Prometheus {
    base: String,
    http: reqwest::Client,
}

impl Prometheus {
    /// A client for `base` (`http://127.0.0.1:PORT`).
    pub fn new(base: &str) -> Result<Self> {
        Ok(Self {
            base: base.to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        })
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .get(&url)
            .query(query)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        let body: Value = resp
            .json()
            .await
            .with_context(|| format!("GET {url}: body is not JSON"))?;
        if !status.is_success() || body["status"] != "success" {
            bail!("GET {url} {query:?} answered {status}: {body}");
        }
        Ok(body["data"].clone())
    }

    /// An instant query; returns `data.result` (fails on a query error).
    pub async fn query(&self, expr: &str) -> Result<Vec<Value>> {
        let data = self.get("/api/v1/query", &[("query", expr)]).await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// `data.activeTargets` of /api/v1/targets.
    pub async fn active_targets(&self) -> Result<Vec<Value>> {
        let data = self.get("/api/v1/targets", &[]).await?;
        Ok(data["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// `data.groups` of /api/v1/rules.
    pub async fn rule_groups(&self) -> Result<Vec<Value>> {
        let data = self.get("/api/v1/rules", &[]).await?;
        Ok(data["groups"].as_array().cloned().unwrap_or_default())
    }
}

/// Every `expr` string anywhere in a (Grafana dashboard) JSON document.
pub fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(items) => {
            for v in items {
                collect_exprs(v, out);
            }
        }
        _ => {}
    }
}

/// The dashboard JSON (deploy/grafana/dashboards/gateway.json).
pub fn dashboard() -> Result<Value> {
    let path = deploy_path("grafana/dashboards/gateway.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// A dashboard query made runnable against Prometheus: Grafana's
/// `$__rate_interval` / `$__interval` / `$__range` become fixed windows and
/// the `$instance` variable matches every node.
pub fn runnable_expr(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m")
        .replace("$instance", ".*")
}

/// Every `gateway_*` metric name used in a PromQL expression.
pub fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("gateway_") {
        let start = i + pos;
        let boundary = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_' || c == b'"' || c == b'=')
        };
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            names.push(expr[start..end].to_owned());
        }
        i = end;
    }
    names
}
