//! docker-compose.yml parsed and checked field by field: every service is
//! there with an image or build, a healthcheck, existing bind mounts and
//! known dependencies; the gateways are distinct cluster nodes built from
//! deploy/Dockerfile with their config mounted and a stop grace above the
//! drain grace; Prometheus loads the mounted rules and scrapes every
//! gateway; Grafana's provisioning is mounted. No Docker engine is needed.
//! (HAProxy's wiring is ops_haproxy.rs.)

mod ops_support;

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use ops_support::{bind_mounts, compose, deploy_yaml, str_of};
use serde_json::Value;
use tests::workspace_root;

fn duration_secs(text: &str) -> Result<f64> {
    let (num, unit) = text.split_at(
        text.find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(text.len()),
    );
    let n: f64 = num
        .parse()
        .with_context(|| format!("bad duration {text}"))?;
    Ok(match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => bail!("bad duration unit in {text}"),
    })
}

#[tokio::test]
async fn compose_file_is_complete_and_consistent() -> Result<()> {
    let root = workspace_root();
    let compose = compose()?;
    let services = compose["services"]
        .as_object()
        .context("compose has no services")?;
    for want in [
        "redis",
        "gateway1",
        "gateway2",
        "gateway3",
        "haproxy",
        "prometheus",
        "grafana",
    ] {
        let svc = services
            .get(want)
            .with_context(|| format!("compose lacks service {want}"))?;
        ensure!(
            svc["image"].is_string() || svc["build"].is_object(),
            "{want} has neither image nor build"
        );
        let test = svc["healthcheck"]["test"].as_array();
        ensure!(
            test.is_some_and(|t| t.len() >= 2 && t[0] == "CMD"),
            "{want} lacks a healthcheck: {}",
            svc["healthcheck"]
        );
        bind_mounts(svc, want)?;
        if let Some(deps) = svc["depends_on"].as_object() {
            for dep in deps.keys() {
                ensure!(
                    services.contains_key(dep),
                    "{want} depends on unknown {dep}"
                );
            }
        } else if let Some(deps) = svc["depends_on"].as_array() {
            for dep in deps {
                ensure!(
                    services.contains_key(str_of(dep, "depends_on")?),
                    "{want} depends on unknown {dep}"
                );
            }
        }
    }

    // Gateways: built from deploy/Dockerfile, in cluster mode on the redis
    // service, distinct node ids, config mounted where GATEWAY_CONFIG says,
    // stop grace above the drain grace.
    let mut node_ids = BTreeSet::new();
    let mut gateway_port = None;
    for name in ["gateway1", "gateway2", "gateway3"] {
        let svc = &services[name];
        let dockerfile = str_of(&svc["build"]["dockerfile"], "build.dockerfile")?;
        ensure!(
            root.join(dockerfile).is_file() && svc["build"]["context"] == ".",
            "{name}: build {} does not point at deploy/Dockerfile",
            svc["build"]
        );
        let env = svc["environment"]
            .as_object()
            .with_context(|| format!("{name}: environment must be a map"))?;
        let get = |k: &str| env.get(k).and_then(Value::as_str).unwrap_or_default();
        ensure!(
            get("GATEWAY_REDIS_URL").starts_with("redis://redis:"),
            "{name}: GATEWAY_REDIS_URL must point at the redis service: {env:?}"
        );
        ensure!(
            node_ids.insert(get("GATEWAY_NODE_ID").to_owned()),
            "{name}: node id not distinct"
        );
        let config = get("GATEWAY_CONFIG");
        let mounts = bind_mounts(svc, name)?;
        ensure!(
            mounts
                .iter()
                .any(|(src, dst)| dst == config && src == "deploy/gateway.toml"),
            "{name}: GATEWAY_CONFIG={config} is not mounted from deploy/gateway.toml: {mounts:?}"
        );
        let port = get("GATEWAY_LISTEN")
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        gateway_port = Some(port);
        let drain_ms: f64 = get("GATEWAY_DRAIN_GRACE_MS").parse().unwrap_or(30000.0);
        let stop = duration_secs(str_of(&svc["stop_grace_period"], "stop_grace_period")?)?;
        ensure!(
            stop * 1000.0 > drain_ms,
            "{name}: stop_grace_period {stop}s must exceed the drain grace {drain_ms} ms"
        );
        let health = svc["healthcheck"]["test"].to_string();
        ensure!(
            health.contains("/readyz") && health.contains("gateway-healthcheck"),
            "{name}: healthcheck should probe /readyz with gateway-healthcheck: {health}"
        );
    }
    ensure!(node_ids.len() == 3, "node ids: {node_ids:?}");
    let gateway_port = gateway_port.unwrap_or_default();

    // Prometheus: config and rules mounted side by side, scraping the three
    // gateway services.
    let prom = &services["prometheus"];
    let mounts = bind_mounts(prom, "prometheus")?;
    let prom_cfg_dst = mounts
        .iter()
        .find(|(src, _)| src == "deploy/prometheus/prometheus.yml")
        .map(|(_, dst)| dst.clone())
        .context("prometheus does not mount deploy/prometheus/prometheus.yml")?;
    let rules_dst = mounts
        .iter()
        .find(|(src, _)| src == "deploy/prometheus/alerts.yml")
        .map(|(_, dst)| dst.clone())
        .context("prometheus does not mount deploy/prometheus/alerts.yml")?;
    let cfg_dir = Path::new(&prom_cfg_dst).parent().context("config dir")?;
    let prom_cfg = deploy_yaml("prometheus/prometheus.yml")?;
    let rule_file = str_of(&prom_cfg["rule_files"][0], "rule_files[0]")?;
    ensure!(
        cfg_dir.join(rule_file) == Path::new(&rules_dst),
        "prometheus.yml loads {rule_file}, compose mounts the rules at {rules_dst}"
    );
    ensure!(
        prom["command"].to_string().contains(&prom_cfg_dst),
        "prometheus is not started with --config.file={prom_cfg_dst}"
    );
    let jobs = prom_cfg["scrape_configs"]
        .as_array()
        .context("scrape_configs")?;
    let gw_job = jobs
        .iter()
        .find(|j| j["job_name"] == "gateway")
        .context("no scrape job named gateway (the alerts use job=\"gateway\")")?;
    let targets: BTreeSet<String> = gw_job["static_configs"][0]["targets"]
        .as_array()
        .context("targets")?
        .iter()
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect();
    let want: BTreeSet<String> = ["gateway1", "gateway2", "gateway3"]
        .iter()
        .map(|n| format!("{n}:{gateway_port}"))
        .collect();
    ensure!(
        targets == want,
        "gateway scrape targets {targets:?}, want {want:?}"
    );

    // Grafana: provisioning mounted, UI published.
    let grafana = &services["grafana"];
    let mounts = bind_mounts(grafana, "grafana")?;
    ensure!(
        mounts
            .iter()
            .any(|(src, dst)| src == "deploy/grafana/provisioning"
                && dst == "/etc/grafana/provisioning"),
        "grafana provisioning not mounted: {mounts:?}"
    );
    ensure!(
        grafana["ports"].to_string().contains("3000:3000"),
        "grafana UI not published on 3000"
    );
    let ds = deploy_yaml("grafana/provisioning/datasources/prometheus.yml")?;
    ensure!(
        ds["datasources"][0]["url"] == "http://prometheus:9090",
        "datasource should point at the prometheus service: {ds}"
    );
    ensure!(
        services["redis"]["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("redis:")),
        "redis image"
    );
    Ok(())
}
