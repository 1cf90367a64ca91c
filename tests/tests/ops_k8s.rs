//! The kustomize manifests of deploy/k8s: the files kustomization.yaml
//! lists (and, with kubectl at hand, what kustomize renders) hold every
//! object the gateway needs, wired together (selectors, probes on the admin
//! port, drain-aware termination grace, config and secrets, HPA, PDB,
//! ServiceMonitor, PrometheusRule = alerts.yml); and the ConfigMap and
//! Secret start a real node. No Kubernetes cluster is needed.

mod ops_support;

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{ensure, Context, Result};
use ops_support::{
    deploy_path, deploy_yaml, read, run_cmd, str_of, tool, yaml_docs, yaml_to_json, CMD_TIMEOUT,
};
use serde_json::Value;
use tests::GatewayBuilder;

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
    let admin_port: u64 = str_of(&cm["GATEWAY_ADMIN_LISTEN"], "GATEWAY_ADMIN_LISTEN")?
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .parse()?;
    let listen_port: u64 = str_of(&cm["GATEWAY_LISTEN"], "GATEWAY_LISTEN")?
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
    let drain_ms: u64 = str_of(&cm["GATEWAY_DRAIN_GRACE_MS"], "GATEWAY_DRAIN_GRACE_MS")?.parse()?;
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
    let config_path = str_of(&cm["GATEWAY_CONFIG"], "GATEWAY_CONFIG")?;
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
        let target = str_of(&p["targetPort"], "targetPort")?;
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
    let redis_url = str_of(&secret_data["GATEWAY_REDIS_URL"], "GATEWAY_REDIS_URL")?;
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
    let sm_port = str_of(&sm["spec"]["endpoints"][0]["port"], "ServiceMonitor port")?;
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
    let alerts = deploy_yaml("prometheus/alerts.yml")?;
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
        let file = str_of(res, "resource")?;
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
        .config(str_of(&data["gateway.toml"], "gateway.toml")?);
    for (k, v) in data {
        if k.starts_with("GATEWAY_")
            && !["GATEWAY_LISTEN", "GATEWAY_ADMIN_LISTEN", "GATEWAY_CONFIG"].contains(&k.as_str())
        {
            builder = builder.env(k, str_of(v, k)?);
        }
    }
    for (k, v) in secret[0]["stringData"].as_object().context("stringData")? {
        if k != "GATEWAY_REDIS_URL" {
            builder = builder.env(k, str_of(v, k)?);
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
        strip(str_of(&data["gateway.toml"], "gateway.toml")?)
            == strip(&read(&deploy_path("gateway.toml"))?),
        "the ConfigMap's gateway.toml differs from deploy/gateway.toml"
    );
    Ok(())
}
