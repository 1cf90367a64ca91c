//! The Prometheus config and alert rules of deploy/prometheus pass
//! `promtool check config`, `check rules` and their rule unit tests
//! (`test rules`), cover the alerts the operations docs promise, and every
//! alert has a unit test.

mod ops_support;

use std::collections::BTreeSet;

use anyhow::{ensure, Context, Result};
use ops_support::{deploy_path, read, run_cmd, tool, yaml_to_json, CMD_TIMEOUT};

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
        "GatewayProxyHookFailing",
        "GatewayProxyHookSlow",
        "GatewayWebhookDeliveryFailing",
        "GatewayWebhookEventsDropped",
        "GatewayWebhookQueueBacklog",
        "GatewayChannelFlushErrors",
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
