//! Helpers shared by the ops tests (`ops_*.rs`): where the deploy files and
//! the tools are, running a tool with a bound, reading the deploy files
//! (YAML as JSON, compose bind mounts), the local cluster
//! ([`local_cluster`]), the Redis fault proxy (`tests::RedisProxy`) and
//! Prometheus and its PromQL ([`promql`]).
//!
//! Gateway processes, free ports, signals and bounded waiting come from the
//! `tests` library crate; nothing here spawns a gateway on its own.

#![allow(dead_code, reason = "each ops test file uses a different subset")]
#![allow(unused_imports, reason = "each ops test file uses a different subset")]

pub mod local_cluster;
pub mod promql;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use serde_json::Value;

pub use local_cluster::{ClusterOptions, LocalCluster};
pub use promql::{collect_exprs, dashboard, metric_names, runnable_expr, Prometheus};
pub use tests::RedisProxy;

/// How long one run of a tool (promtool, haproxy -c, kubectl) may take.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(60);

/// `deploy/local-cluster`.
pub fn script() -> PathBuf {
    tests::workspace_root().join("deploy").join("local-cluster")
}

/// A file under `deploy/`.
pub fn deploy_path(rel: &str) -> PathBuf {
    tests::workspace_root().join("deploy").join(rel)
}

/// A tool from PATH or the sbin directories (Debian puts haproxy in
/// /usr/sbin); the error says how to get it.
pub fn tool(name: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    for dir in ["/usr/sbin", "/sbin", "/usr/local/sbin"] {
        let candidate = Path::new(dir).join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "`{name}` not found: scripts/test installs it (apt-get install haproxy prometheus), \
         or install it by hand"
    )
}

/// Runs a command to completion with a bound; returns stdout + stderr, or
/// an error with both when it fails or overruns.
pub async fn run_cmd(
    mut cmd: tokio::process::Command,
    timeout: Duration,
    what: &str,
) -> Result<String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().with_context(|| format!("spawning {what}"))?;
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .with_context(|| format!("{what} did not finish within {timeout:?}"))?
        .with_context(|| format!("waiting for {what}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        bail!("{what} failed ({}):\n{text}", output.status);
    }
    Ok(text)
}

/// A file's text; the error names the file.
pub fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// `v` as a string; the error says what `v` was meant to be.
pub fn str_of<'a>(v: &'a Value, what: &str) -> Result<&'a str> {
    v.as_str()
        .with_context(|| format!("{what}: expected a string, got {v}"))
}

/// Parses YAML (resolving `<<` merge keys, as docker compose does) into JSON.
pub fn yaml_to_json(text: &str, what: &str) -> Result<Value> {
    let mut yaml: serde_yaml::Value =
        serde_yaml::from_str(text).with_context(|| format!("parsing {what} as YAML"))?;
    yaml.apply_merge()
        .with_context(|| format!("resolving merge keys of {what}"))?;
    serde_json::to_value(&yaml).with_context(|| format!("{what}: not JSON-compatible"))
}

/// Every document of a multi-document YAML stream.
pub fn yaml_docs(text: &str, what: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let yaml = serde_yaml::Value::deserialize(doc)
            .with_context(|| format!("parsing a document of {what}"))?;
        if yaml.is_null() {
            continue;
        }
        docs.push(serde_json::to_value(&yaml).with_context(|| format!("{what}: not JSON"))?);
    }
    Ok(docs)
}

/// A YAML file under `deploy/`, as JSON.
pub fn deploy_yaml(rel: &str) -> Result<Value> {
    yaml_to_json(&read(&deploy_path(rel))?, rel)
}

/// `docker-compose.yml`, as JSON.
pub fn compose() -> Result<Value> {
    yaml_to_json(
        &read(&tests::workspace_root().join("docker-compose.yml"))?,
        "docker-compose.yml",
    )
}

/// The bind-mount sources (`./x:/y[:ro]`) of a compose service, checked to
/// exist; returns (source, target) pairs.
pub fn bind_mounts(svc: &Value, name: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for v in svc["volumes"].as_array().cloned().unwrap_or_default() {
        let spec = str_of(&v, &format!("{name} volume"))?;
        let mut parts = spec.split(':');
        let (Some(src), Some(dst)) = (parts.next(), parts.next()) else {
            bail!("{name}: bad volume {spec}");
        };
        if let Some(rel) = src.strip_prefix("./") {
            let path = tests::workspace_root().join(rel);
            ensure!(path.exists(), "{name} mounts {src}, which does not exist");
            out.push((rel.to_owned(), dst.to_owned()));
        }
    }
    Ok(out)
}

/// The compose gateway services, in the order HAProxy and Prometheus
/// number them.
pub const COMPOSE_GATEWAYS: [&str; 3] = ["gateway1", "gateway2", "gateway3"];

/// The port of a compose gateway service's `GATEWAY_LISTEN` (empty when
/// it has none).
pub fn compose_gateway_port(services: &Value, name: &str) -> String {
    services[name]["environment"]["GATEWAY_LISTEN"]
        .as_str()
        .unwrap_or_default()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned()
}
