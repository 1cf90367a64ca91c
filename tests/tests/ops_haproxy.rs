//! HAProxy as compose runs it: the haproxy service names every gateway on
//! its listen port, mounts deploy/haproxy/haproxy.cfg and publishes its
//! client port, and `haproxy -c` accepts the config with the service's
//! environment.

mod ops_support;

use anyhow::{ensure, Context, Result};
use ops_support::{
    bind_mounts, compose, compose_gateway_port, deploy_path, run_cmd, str_of, tool, CMD_TIMEOUT,
};
use serde_json::Value;

#[tokio::test]
async fn haproxy_config_is_wired_and_valid_in_the_compose_environment() -> Result<()> {
    let compose = compose()?;
    let services = compose["services"]
        .as_object()
        .context("compose has no services")?;
    let gateway_port = compose_gateway_port(&compose["services"], "gateway3");
    ensure!(
        !gateway_port.is_empty(),
        "gateway3 has no GATEWAY_LISTEN port"
    );

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
    let lb_port = str_of(&env["LB_BIND"], "LB_BIND")?
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
        cmd.env(k, str_of(v, k)?);
    }
    run_cmd(cmd, CMD_TIMEOUT, "haproxy -c (compose environment)").await?;
    Ok(())
}
