//! Static checks of the deployment files (deploy/, docker-compose.yml):
//! `promtool check config` / `check rules` / `test rules`, `haproxy -c`,
//! the compose file and the kustomize output parsed and checked field by
//! field, the Dockerfile's shape, Grafana provisioning, every metric name in
//! the dashboard and the alerts declared by the gateway, and the container
//! health probe against a live node. No Docker engine or Kubernetes cluster
//! is needed.

mod ops_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use ops_support::{collect_exprs, dashboard, deploy_path, metric_names, run_cmd, tool};
use serde::Deserialize;
use serde_json::Value;
use tests::{workspace_root, GatewayBuilder};

const CMD_TIMEOUT: Duration = Duration::from_secs(60);

/// Parses YAML (resolving `<<` merge keys, as docker compose does) into JSON.
fn yaml_to_json(text: &str, what: &str) -> Result<Value> {
    let mut yaml: serde_yaml::Value =
        serde_yaml::from_str(text).with_context(|| format!("parsing {what} as YAML"))?;
    yaml.apply_merge()
        .with_context(|| format!("resolving merge keys of {what}"))?;
    serde_json::to_value(&yaml).with_context(|| format!("{what}: not JSON-compatible"))
}

/// Every document of a multi-document YAML stream.
fn yaml_docs(text: &str, what: &str) -> Result<Vec<Value>> {
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

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn s<'a>(v: &'a Value, what: &str) -> Result<&'a str> {
    v.as_str()
        .with_context(|| format!("{what}: expected a string, got {v}"))
}

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
async fn promtool_checks_config_and_rules_and_rule_tests_pass() -> Result<()> {
    let promtool = tool("promtool")?;
    let dir = deploy_path("prometheus");
    for args in [
        vec!["check", "config", "prometheus.yml"],
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts.test.yml"],
    ] {
        let mut cmd = tokio::process::Command::new(&promtool);
        cmd.args(&args).current_dir(&dir);
        let out = run_cmd(cmd, CMD_TIMEOUT, &format!("promtool {}", args.join(" "))).await?;
        eprintln!("promtool {}:\n{out}", args.join(" "));
    }

    // The rules cover the alerts the operations docs promise.
    let rules = yaml_to_json(&read(&dir.join("alerts.yml"))?, "alerts.yml")?;
    let alerts: BTreeSet<String> = rules["groups"]
        .as_array()
        .context("groups")?
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["alert"].as_str().map(str::to_owned))
        .collect();
    for want in [
        "GatewayNodeDown",
        "GatewayRedisDown",
        "GatewayDeliveryLagHigh",
        "GatewaySlowConsumerSpike",
        "GatewayConnectionRefusals",
    ] {
        ensure!(alerts.contains(want), "alerts.yml lacks {want}: {alerts:?}");
    }
    // Every alert has a unit test in alerts.test.yml.
    let tests_text = read(&dir.join("alerts.test.yml"))?;
    for alert in &alerts {
        ensure!(
            tests_text.contains(&format!("alertname: {alert}")),
            "alerts.test.yml has no test for {alert}"
        );
    }
    Ok(())
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
    let alerts = yaml_to_json(&read(&deploy_path("prometheus/alerts.yml"))?, "alerts.yml")?;
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
    ] {
        ensure!(used.contains(want), "the dashboard never queries {want}");
    }

    // Grafana structure: unique panel ids, sane grid, one datasource uid
    // that the provisioning defines.
    let ds = yaml_to_json(
        &read(&deploy_path(
            "grafana/provisioning/datasources/prometheus.yml",
        ))?,
        "datasource provisioning",
    )?;
    let uid = s(&ds["datasources"][0]["uid"], "datasource uid")?.to_owned();
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
    let dash_provider = yaml_to_json(
        &read(&deploy_path("grafana/provisioning/dashboards/gateway.yml"))?,
        "dashboard provisioning",
    )?;
    let dash_path = s(
        &dash_provider["providers"][0]["options"]["path"],
        "provider path",
    )?;
    let compose = yaml_to_json(
        &read(&workspace_root().join("docker-compose.yml"))?,
        "docker-compose.yml",
    )?;
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

/// The bind-mount sources (`./x:/y[:ro]`) of a compose service, checked to
/// exist; returns (source, target) pairs.
fn bind_mounts(svc: &Value, name: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for v in svc["volumes"].as_array().cloned().unwrap_or_default() {
        let spec = s(&v, &format!("{name} volume"))?;
        let mut parts = spec.split(':');
        let (Some(src), Some(dst)) = (parts.next(), parts.next()) else {
            bail!("{name}: bad volume {spec}");
        };
        if let Some(rel) = src.strip_prefix("./") {
            let path = workspace_root().join(rel);
            ensure!(path.exists(), "{name} mounts {src}, which does not exist");
            out.push((rel.to_owned(), dst.to_owned()));
        }
    }
    Ok(out)
}

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
    let compose = yaml_to_json(
        &read(&root.join("docker-compose.yml"))?,
        "docker-compose.yml",
    )?;
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
                    services.contains_key(s(dep, "depends_on")?),
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
        let dockerfile = s(&svc["build"]["dockerfile"], "build.dockerfile")?;
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
        let stop = duration_secs(s(&svc["stop_grace_period"], "stop_grace_period")?)?;
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

    // HAProxy: its config mounted, every node named, the client port
    // published; `haproxy -c` accepts the config with the compose env.
    let haproxy = &services["haproxy"];
    let env = haproxy["environment"].as_object().context("haproxy env")?;
    for (i, node) in ["gateway1", "gateway2", "gateway3"].iter().enumerate() {
        let want = format!("{node}:{gateway_port}");
        ensure!(
            env.get(&format!("GATEWAY{}", i + 1))
                .and_then(Value::as_str)
                == Some(want.as_str()),
            "haproxy GATEWAY{} should be {want}: {env:?}",
            i + 1
        );
    }
    let mounts = bind_mounts(haproxy, "haproxy")?;
    ensure!(
        mounts
            .iter()
            .any(|(src, _)| src == "deploy/haproxy/haproxy.cfg"),
        "haproxy does not mount deploy/haproxy/haproxy.cfg"
    );
    let ports: Vec<String> = haproxy["ports"]
        .as_array()
        .context("haproxy ports")?
        .iter()
        .filter_map(|p| p.as_str().map(str::to_owned))
        .collect();
    let lb_port = s(&env["LB_BIND"], "LB_BIND")?
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    ensure!(
        ports.iter().any(|p| p.ends_with(&format!(":{lb_port}"))),
        "haproxy does not publish its client port {lb_port}: {ports:?}"
    );
    let mut cmd = tokio::process::Command::new(tool("haproxy")?);
    cmd.args(["-c", "-f"])
        .arg(deploy_path("haproxy/haproxy.cfg"));
    for (k, v) in env {
        cmd.env(k, s(v, k)?);
    }
    run_cmd(cmd, CMD_TIMEOUT, "haproxy -c (compose environment)").await?;

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
    let prom_cfg = yaml_to_json(
        &read(&deploy_path("prometheus/prometheus.yml"))?,
        "prometheus.yml",
    )?;
    let rule_file = s(&prom_cfg["rule_files"][0], "rule_files[0]")?;
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
    let ds = yaml_to_json(
        &read(&deploy_path(
            "grafana/provisioning/datasources/prometheus.yml",
        ))?,
        "datasource",
    )?;
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

/// One Kubernetes object, by kind and name.
fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .with_context(|| format!("no {kind} named {name}"))
}

/// Whether every `selector` label is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|sel| !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

fn check_k8s(docs: &[Value]) -> Result<()> {
    for doc in docs {
        ensure!(
            doc["apiVersion"].is_string()
                && doc["kind"].is_string()
                && doc["metadata"]["name"].is_string(),
            "object without apiVersion/kind/metadata.name: {doc}"
        );
    }
    let configmap = find(docs, "ConfigMap", "gateway-config")?;
    let secret = find(docs, "Secret", "gateway-secrets")?;
    let deploy = find(docs, "Deployment", "gateway")?;
    let spec = &deploy["spec"];
    let pod = &spec["template"]["spec"];
    let pod_labels = &spec["template"]["metadata"]["labels"];
    ensure!(
        selects(&spec["selector"]["matchLabels"], pod_labels),
        "Deployment selector does not match its pods"
    );
    ensure!(
        spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0,
        "rolling updates should keep every pod until its replacement is ready"
    );
    let containers = pod["containers"].as_array().context("containers")?;
    let c = containers
        .iter()
        .find(|c| c["name"] == "gateway")
        .context("no container named gateway")?;
    let port_names: BTreeMap<String, u64> = c["ports"]
        .as_array()
        .context("ports")?
        .iter()
        .filter_map(|p| Some((p["name"].as_str()?.to_owned(), p["containerPort"].as_u64()?)))
        .collect();
    let cm = &configmap["data"];
    let admin_port: u64 = s(&cm["GATEWAY_ADMIN_LISTEN"], "GATEWAY_ADMIN_LISTEN")?
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .parse()?;
    let listen_port: u64 = s(&cm["GATEWAY_LISTEN"], "GATEWAY_LISTEN")?
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .parse()?;
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &c[probe]["httpGet"];
        ensure!(
            get["path"] == path,
            "{probe} should GET {path}: {}",
            c[probe]
        );
        let port = match &get["port"] {
            Value::String(name) => *port_names
                .get(name)
                .with_context(|| format!("{probe} names unknown port {name}"))?,
            other => other.as_u64().context("probe port")?,
        };
        ensure!(
            port == admin_port,
            "{probe} probes port {port}, but health is served on the admin listener {admin_port}"
        );
    }
    ensure!(
        port_names.values().any(|p| *p == listen_port),
        "no container port for GATEWAY_LISTEN {listen_port}"
    );
    let pre_stop = &c["lifecycle"]["preStop"];
    ensure!(pre_stop.is_object(), "no preStop hook");
    let pre_stop_secs = pre_stop["exec"]["command"]
        .as_array()
        .and_then(|cmd| {
            (cmd.first()? == "sleep")
                .then(|| cmd.get(1)?.as_str()?.parse::<u64>().ok())
                .flatten()
        })
        .or_else(|| pre_stop["sleep"]["seconds"].as_u64())
        .unwrap_or(0);
    let drain_ms: u64 = s(&cm["GATEWAY_DRAIN_GRACE_MS"], "GATEWAY_DRAIN_GRACE_MS")?.parse()?;
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .context("terminationGracePeriodSeconds")?;
    ensure!(
        grace * 1000 > drain_ms + pre_stop_secs * 1000,
        "terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop_secs}s + drain grace {drain_ms} ms"
    );
    let requests = &c["resources"]["requests"];
    ensure!(
        requests["cpu"].is_string() && requests["memory"].is_string(),
        "resource requests missing: {}",
        c["resources"]
    );
    let anti = &pod["affinity"]["podAntiAffinity"];
    let terms = anti["preferredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|t| t["podAffinityTerm"].clone())
                .collect::<Vec<_>>()
        })
        .or_else(|| {
            anti["requiredDuringSchedulingIgnoredDuringExecution"]
                .as_array()
                .cloned()
        })
        .context("no pod anti-affinity")?;
    ensure!(
        terms
            .iter()
            .any(|t| selects(&t["labelSelector"]["matchLabels"], pod_labels)),
        "anti-affinity does not select the gateway's own pods"
    );
    ensure!(
        pod["securityContext"]["runAsNonRoot"] == true,
        "pods should run as non-root"
    );
    // Config and secrets wired in.
    let env_from = c["envFrom"].as_array().context("envFrom")?;
    ensure!(
        env_from
            .iter()
            .any(|e| e["configMapRef"]["name"] == "gateway-config"),
        "the ConfigMap is not in envFrom"
    );
    ensure!(
        env_from
            .iter()
            .any(|e| e["secretRef"]["name"] == "gateway-secrets"),
        "the Secret is not in envFrom"
    );
    let config_path = s(&cm["GATEWAY_CONFIG"], "GATEWAY_CONFIG")?;
    let mount = c["volumeMounts"]
        .as_array()
        .context("volumeMounts")?
        .iter()
        .find(|m| {
            m["mountPath"]
                .as_str()
                .is_some_and(|p| config_path.starts_with(p))
        })
        .with_context(|| format!("GATEWAY_CONFIG {config_path} is not under a volume mount"))?;
    let volume = pod["volumes"]
        .as_array()
        .context("volumes")?
        .iter()
        .find(|v| v["name"] == mount["name"])
        .context("mounted volume not declared")?;
    ensure!(
        volume["configMap"]["name"] == "gateway-config" && cm["gateway.toml"].is_string(),
        "the config volume should come from the ConfigMap's gateway.toml"
    );
    ensure!(
        c["env"].to_string().contains("GATEWAY_NODE_ID"),
        "every pod needs its own GATEWAY_NODE_ID"
    );
    let secret_data = if secret["stringData"].is_object() {
        &secret["stringData"]
    } else {
        &secret["data"]
    };
    ensure!(
        secret_data["GATEWAY_REDIS_URL"].is_string() && secret_data["GATEWAY_API_KEY"].is_string(),
        "the Secret should carry GATEWAY_REDIS_URL and GATEWAY_API_KEY"
    );

    // Service in front of the pods, on a named container port.
    let svc = find(docs, "Service", "gateway")?;
    ensure!(
        selects(&svc["spec"]["selector"], pod_labels),
        "Service gateway does not select the pods"
    );
    for p in svc["spec"]["ports"].as_array().context("service ports")? {
        let target = s(&p["targetPort"], "targetPort")?;
        ensure!(
            port_names.contains_key(target),
            "Service targets unknown port {target}"
        );
    }
    // HPA on the Deployment.
    let hpa = docs
        .iter()
        .find(|d| d["kind"] == "HorizontalPodAutoscaler")
        .context("no HorizontalPodAutoscaler")?;
    ensure!(
        hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
            && hpa["spec"]["scaleTargetRef"]["name"] == "gateway",
        "HPA does not scale the gateway Deployment"
    );
    let min = hpa["spec"]["minReplicas"].as_u64().unwrap_or(1);
    let max = hpa["spec"]["maxReplicas"].as_u64().unwrap_or(0);
    ensure!(min >= 2 && max >= min, "HPA replicas {min}..{max}");
    // PDB over the pods.
    let pdb = docs
        .iter()
        .find(|d| d["kind"] == "PodDisruptionBudget")
        .context("no PodDisruptionBudget")?;
    ensure!(
        selects(&pdb["spec"]["selector"]["matchLabels"], pod_labels),
        "PDB does not select the gateway pods"
    );
    ensure!(
        pdb["spec"]["maxUnavailable"].is_number() || pdb["spec"]["minAvailable"].is_number(),
        "PDB without a budget"
    );
    // Dev Redis the Secret points at.
    let redis_url = s(&secret_data["GATEWAY_REDIS_URL"], "GATEWAY_REDIS_URL")?;
    let redis_svc = docs
        .iter()
        .find(|d| {
            d["kind"] == "Service"
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| redis_url.starts_with(&format!("redis://{n}:")))
        })
        .with_context(|| format!("no Service for the Redis URL {redis_url}"))?;
    let redis_deploy = docs
        .iter()
        .find(|d| {
            d["kind"] == "Deployment"
                && selects(
                    &redis_svc["spec"]["selector"],
                    &d["spec"]["template"]["metadata"]["labels"],
                )
        })
        .context("no Deployment behind the Redis Service")?;
    ensure!(
        redis_deploy["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("redis:")),
        "dev Redis image"
    );
    // ServiceMonitor -> admin Service -> admin port.
    let sm = docs
        .iter()
        .find(|d| d["kind"] == "ServiceMonitor")
        .context("no ServiceMonitor")?;
    let sm_port = s(&sm["spec"]["endpoints"][0]["port"], "ServiceMonitor port")?;
    let scraped = docs
        .iter()
        .find(|d| {
            d["kind"] == "Service"
                && selects(
                    &sm["spec"]["selector"]["matchLabels"],
                    &d["metadata"]["labels"],
                )
        })
        .context("the ServiceMonitor selects no Service")?;
    ensure!(
        selects(&scraped["spec"]["selector"], pod_labels),
        "the scraped Service does not select the gateway pods"
    );
    let port = scraped["spec"]["ports"]
        .as_array()
        .context("ports")?
        .iter()
        .find(|p| p["name"] == sm_port)
        .with_context(|| format!("scraped Service has no port {sm_port}"))?;
    let target = &port["targetPort"];
    let target_port = match target {
        Value::String(name) => port_names.get(name).copied(),
        other => other.as_u64(),
    };
    ensure!(
        target_port == Some(admin_port),
        "the ServiceMonitor scrapes port {target:?}, /metrics is on {admin_port}"
    );
    // PrometheusRule = alerts.yml.
    let rule = docs
        .iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .context("no PrometheusRule")?;
    let alerts = yaml_to_json(&read(&deploy_path("prometheus/alerts.yml"))?, "alerts.yml")?;
    ensure!(
        rule["spec"]["groups"] == alerts["groups"],
        "deploy/k8s/prometheusrule.yaml differs from deploy/prometheus/alerts.yml"
    );
    Ok(())
}

#[tokio::test]
async fn kustomize_output_has_every_required_object() -> Result<()> {
    let dir = deploy_path("k8s");
    let kustomization = yaml_to_json(
        &read(&dir.join("kustomization.yaml"))?,
        "kustomization.yaml",
    )?;
    let mut manual = Vec::new();
    for res in kustomization["resources"].as_array().context("resources")? {
        let file = s(res, "resource")?;
        let text = read(&dir.join(file))?;
        manual.extend(yaml_docs(&text, file)?);
    }
    check_k8s(&manual).context("manifests listed in kustomization.yaml")?;

    // With kubectl at hand, check what kustomize really renders too.
    match tool("kubectl") {
        Ok(kubectl) => {
            let mut cmd = tokio::process::Command::new(kubectl);
            cmd.arg("kustomize").arg(&dir);
            let rendered = run_cmd(cmd, CMD_TIMEOUT, "kubectl kustomize deploy/k8s").await?;
            let docs = yaml_docs(&rendered, "kustomize output")?;
            check_k8s(&docs).context("kubectl kustomize output")?;
            let kinds = |d: &[Value]| -> BTreeSet<String> {
                d.iter()
                    .map(|d| format!("{}/{}", d["kind"], d["metadata"]["name"]))
                    .collect()
            };
            ensure!(
                kinds(&docs) == kinds(&manual),
                "kustomize rendered {:?}, the files hold {:?}",
                kinds(&docs),
                kinds(&manual)
            );
            let image = find(&docs, "Deployment", "gateway")?["spec"]["template"]["spec"]
                ["containers"][0]["image"]
                .clone();
            ensure!(
                image
                    .as_str()
                    .is_some_and(|i| i.contains(':') && i != "gateway"),
                "kustomize `images` did not rewrite the gateway image: {image}"
            );
        }
        Err(e) => eprintln!("kubectl not available, checked the listed manifests only: {e}"),
    }
    Ok(())
}

#[tokio::test]
async fn k8s_configmap_and_secret_start_a_real_node() -> Result<()> {
    // The pod's settings, minus the addresses, run a real gateway: the
    // namespaces parse, auth_required is satisfied by the Secret's key.
    let dir = deploy_path("k8s");
    let cm = yaml_docs(&read(&dir.join("configmap.yaml"))?, "configmap.yaml")?;
    let secret = yaml_docs(&read(&dir.join("secret.yaml"))?, "secret.yaml")?;
    let data = cm[0]["data"].as_object().context("ConfigMap data")?;
    let mut builder = GatewayBuilder::new()
        .name("ops_k8s_config")
        .config(s(&data["gateway.toml"], "gateway.toml")?);
    for (k, v) in data {
        if k.starts_with("GATEWAY_")
            && !["GATEWAY_LISTEN", "GATEWAY_ADMIN_LISTEN", "GATEWAY_CONFIG"].contains(&k.as_str())
        {
            builder = builder.env(k, s(v, k)?);
        }
    }
    for (k, v) in secret[0]["stringData"].as_object().context("stringData")? {
        if k != "GATEWAY_REDIS_URL" {
            builder = builder.env(k, s(v, k)?);
        }
    }
    let gw = builder
        .env("GATEWAY_ADMIN_LISTEN", "127.0.0.1:0")
        .spawn()
        .await?;
    let admin = gw.admin_addr().context("admin listener")?;
    let api = tests::Api::new(&format!("http://{admin}"), None);
    ensure!(
        api.readyz().await? == 200,
        "node with the k8s config is not ready"
    );
    // Auth is required: an anonymous upgrade is refused.
    let refused = gw.client().expect_refused().await?;
    ensure!(
        refused.status == 401,
        "expected 401 without a token, got {}",
        refused.status
    );

    // deploy/gateway.toml (compose, local cluster) has the same namespaces.
    let strip = |t: &str| -> Vec<String> {
        t.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    };
    ensure!(
        strip(s(&data["gateway.toml"], "gateway.toml")?)
            == strip(&read(&deploy_path("gateway.toml"))?),
        "the ConfigMap's gateway.toml differs from deploy/gateway.toml"
    );
    Ok(())
}

#[tokio::test]
async fn dockerfile_is_multi_stage_non_root_with_healthcheck() -> Result<()> {
    let root = workspace_root();
    let text = read(&deploy_path("Dockerfile"))?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("FROM "))
        .map(|(i, _)| i)
        .collect();
    ensure!(
        froms.len() >= 3,
        "expected a multi-stage build, got {} stages",
        froms.len()
    );
    let last = *froms.last().context("no FROM")?;
    ensure!(
        lines[last].contains("-slim"),
        "the final stage should be a slim Debian image: {}",
        lines[last]
    );
    let final_stage = &lines[last..];
    let user = final_stage
        .iter()
        .rev()
        .find(|l| l.starts_with("USER "))
        .context("the final stage has no USER")?;
    ensure!(
        !user.contains("root") && !user.trim_start_matches("USER ").starts_with("0"),
        "the final stage runs as root: {user}"
    );
    ensure!(
        final_stage.iter().any(|l| l.starts_with("HEALTHCHECK ")),
        "no HEALTHCHECK in the final stage"
    );
    ensure!(
        !final_stage.iter().any(|l| l.contains("cargo ")),
        "the final stage must not build"
    );
    // Dependencies are cooked before the sources are copied in.
    let cook = lines
        .iter()
        .position(|l| l.contains("cargo chef cook"))
        .context("no cargo chef cook step")?;
    let copy_all = lines
        .iter()
        .enumerate()
        .skip(cook)
        .find(|(_, l)| l.starts_with("COPY . ."))
        .map(|(i, _)| i)
        .context("no COPY . . after cooking the dependencies")?;
    ensure!(
        lines[cook + 1..copy_all]
            .iter()
            .all(|l| !l.starts_with("FROM ")),
        "cook and the source build must be in the same stage"
    );
    // Files copied from the context exist and are not excluded.
    let ignore = read(&root.join(".dockerignore"))?;
    ensure!(
        ignore.lines().any(|l| l.trim() == "target"),
        ".dockerignore must exclude target"
    );
    for l in &lines {
        if let Some(rest) = l.strip_prefix("COPY ") {
            if rest.starts_with("--from") {
                continue;
            }
            let parts: Vec<&str> = rest.split_whitespace().collect();
            for src in &parts[..parts.len().saturating_sub(1)] {
                ensure!(root.join(src).exists(), "COPY {src}: no such file");
                for pattern in ignore.lines().map(str::trim) {
                    ensure!(
                        pattern.is_empty()
                            || pattern.starts_with('#')
                            || *src == "."
                            || !src.starts_with(pattern),
                        "COPY {src} is excluded by .dockerignore pattern {pattern}"
                    );
                }
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn container_healthcheck_script_probes_a_live_node() -> Result<()> {
    let gw = GatewayBuilder::new()
        .name("ops_healthcheck")
        .spawn()
        .await?;
    let script = deploy_path("healthcheck.sh");
    let probe = |listen: String, path: &'static str| {
        let script = script.clone();
        async move {
            let mut cmd = tokio::process::Command::new("bash");
            cmd.arg(&script).arg(path).env("GATEWAY_LISTEN", listen);
            cmd.env_remove("GATEWAY_ADMIN_LISTEN");
            cmd.stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            let status = tokio::time::timeout(CMD_TIMEOUT, cmd.status()).await??;
            anyhow::Ok(status.success())
        }
    };
    let addr = gw.addr()?;
    ensure!(
        probe(addr.to_string(), "/healthz").await?,
        "/healthz probe failed on a live node"
    );
    ensure!(
        probe(addr.to_string(), "/readyz").await?,
        "/readyz probe failed on a live node"
    );
    ensure!(
        !probe(addr.to_string(), "/no-such-path").await?,
        "a 404 must fail the probe"
    );
    let closed = ops_support::free_ports(1)?[0];
    ensure!(
        !probe(format!("0.0.0.0:{closed}"), "/healthz").await?,
        "a closed port must fail the probe"
    );
    Ok(())
}
