//! The container image: deploy/Dockerfile is a multi-stage, non-root build
//! with a HEALTHCHECK whose COPY sources exist and survive .dockerignore,
//! and its health probe script (deploy/healthcheck.sh) tells a live node
//! from a wrong path and a closed port. No Docker engine is needed.

mod ops_support;

use anyhow::{ensure, Context, Result};
use ops_support::{deploy_path, read, CMD_TIMEOUT};
use tests::{workspace_root, GatewayBuilder};

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
    let closed = tests::free_ports(1)?[0];
    ensure!(
        !probe(format!("0.0.0.0:{closed}"), "/healthz").await?,
        "a closed port must fail the probe"
    );
    Ok(())
}
