//! The Grafana dashboard and the alert rules query only metrics the gateway
//! declares (every `"gateway_..."` name in gateway/src), the dashboard has
//! the panels the operations docs promise, and its provisioning holds
//! together: unique panel ids on the grid, one provisioned datasource, and
//! a dashboard provider path that compose mounts.

mod ops_support;

use std::collections::BTreeSet;

use anyhow::{ensure, Context, Result};
use ops_support::{collect_exprs, compose, dashboard, deploy_yaml, metric_names, read, str_of};
use tests::workspace_root;

/// Metric names the gateway declares: every `"gateway_..."` string constant
/// in its source.
fn declared_metrics() -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    let mut stack = vec![workspace_root().join("gateway").join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = read(&path)?;
                for piece in text.split("\"gateway_").skip(1) {
                    let name: String = piece
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if piece[name.len()..].starts_with('"') {
                        names.insert(format!("gateway_{name}"));
                    }
                }
            }
        }
    }
    Ok(names)
}

/// Whether `name` is a declared metric, or a histogram series of one.
fn is_declared(name: &str, declared: &BTreeSet<String>) -> bool {
    declared.contains(name)
        || ["_bucket", "_count", "_sum"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| declared.contains(base))
        })
}

#[tokio::test]
async fn dashboard_and_alerts_use_only_declared_metrics() -> Result<()> {
    let declared = declared_metrics()?;
    ensure!(
        declared.contains("gateway_connections") && declared.contains("gateway_redis_up"),
        "could not find the gateway's metric names in gateway/src: {declared:?}"
    );
    let dash = dashboard()?;
    let mut exprs = Vec::new();
    collect_exprs(&dash, &mut exprs);
    ensure!(
        exprs.len() >= 20,
        "dashboard has only {} queries",
        exprs.len()
    );
    let alerts = deploy_yaml("prometheus/alerts.yml")?;
    let mut alert_exprs = Vec::new();
    collect_exprs(&alerts, &mut alert_exprs);
    ensure!(!alert_exprs.is_empty(), "no alert expressions found");
    let mut used = BTreeSet::new();
    for expr in exprs.iter().chain(&alert_exprs) {
        for name in metric_names(expr) {
            ensure!(
                is_declared(&name, &declared),
                "{name} (in {expr:?}) is not a metric the gateway declares"
            );
            used.insert(name);
        }
    }
    // The panels the issue asks for are there.
    for want in [
        "gateway_connections",
        "gateway_connections_accepted_total",
        "gateway_connections_refused_total",
        "gateway_disconnects_total",
        "gateway_messages_received_total",
        "gateway_messages_sent_total",
        "gateway_deliveries_total",
        "gateway_delivery_lag_seconds_bucket",
        "gateway_slow_consumers_total",
        "gateway_api_request_duration_seconds_bucket",
        "gateway_redis_up",
        "gateway_presence_refresh_duration_seconds_bucket",
        "gateway_proxy_requests_total",
        "gateway_proxy_duration_seconds_bucket",
        "gateway_webhook_events_total",
        "gateway_webhook_batches_total",
        "gateway_webhook_events_dropped_total",
        "gateway_webhook_queue_events",
        "gateway_channel_events_total",
        "gateway_channel_flush_errors_total",
    ] {
        ensure!(used.contains(want), "the dashboard never queries {want}");
    }

    // Grafana structure: unique panel ids, sane grid, one datasource uid
    // that the provisioning defines.
    let ds = deploy_yaml("grafana/provisioning/datasources/prometheus.yml")?;
    let uid = str_of(&ds["datasources"][0]["uid"], "datasource uid")?.to_owned();
    ensure!(
        ds["datasources"][0]["type"] == "prometheus",
        "datasource type: {ds}"
    );
    let mut ids = BTreeSet::new();
    let panels = dash["panels"].as_array().context("panels")?;
    for panel in panels {
        let id = panel["id"].as_u64().context("panel id")?;
        ensure!(ids.insert(id), "duplicate panel id {id}");
        let grid = &panel["gridPos"];
        let (x, w) = (
            grid["x"].as_u64().unwrap_or(99),
            grid["w"].as_u64().unwrap_or(99),
        );
        ensure!(
            x + w <= 24,
            "panel {} is outside the grid: {grid}",
            panel["title"]
        );
        if panel["type"] != "row" {
            ensure!(
                panel["datasource"]["uid"] == uid.as_str(),
                "panel {} uses datasource {} (provisioned: {uid})",
                panel["title"],
                panel["datasource"]
            );
            let targets = panel["targets"].as_array().context("targets")?;
            ensure!(!targets.is_empty(), "panel {} has no query", panel["title"]);
            for t in targets {
                ensure!(
                    t["datasource"]["uid"] == uid.as_str(),
                    "a query of {} uses another datasource",
                    panel["title"]
                );
            }
        }
    }
    let dash_provider = deploy_yaml("grafana/provisioning/dashboards/gateway.yml")?;
    let dash_path = str_of(
        &dash_provider["providers"][0]["options"]["path"],
        "provider path",
    )?;
    let compose = compose()?;
    let grafana_mounts = compose["services"]["grafana"]["volumes"]
        .as_array()
        .context("grafana volumes")?;
    ensure!(
        grafana_mounts.iter().any(|m| m
            .as_str()
            .is_some_and(|m| m.starts_with("./deploy/grafana/dashboards:")
                && m.contains(&format!(":{dash_path}")))),
        "the dashboard provider reads {dash_path}, which compose does not mount from ./deploy/grafana/dashboards"
    );
    Ok(())
}
