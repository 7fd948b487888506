//! The health gate: within a deadline every service of the new version is running, healthy
//! where it has a healthcheck, not restarting in a loop, and the package's HTTP probes answer.
//! Fails early when a service turns unhealthy or exits: waiting out the timeout would only
//! lengthen the downtime before the rollback.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::engine::{Container, Engine, Health, State};
use crate::interrupt::Interrupt;
use crate::package::Probe;

/// Restarts seen during the gate that count as a loop.
const RESTART_LOOP: i64 = 2;

pub async fn gate(
    engine: &dyn Engine,
    project: &str,
    services: &[String],
    probes: &[Probe],
    timeout: Duration,
    interrupt: &Interrupt,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut baseline: BTreeMap<String, i64> = BTreeMap::new();
    loop {
        interrupt.check()?;
        let containers = engine.project_containers(project).await?;
        let mut waiting = Vec::new();
        for service in services {
            let of_service: Vec<&Container> = containers.iter().filter(|c| &c.service == service).collect();
            if of_service.is_empty() {
                waiting.push(format!("{service}: no container"));
            }
            for c in of_service {
                let base = *baseline.entry(c.id.clone()).or_insert(c.restart_count);
                if c.restart_count - base >= RESTART_LOOP {
                    bail!("service {service} is restarting in a loop ({} restarts)", c.restart_count - base);
                }
                if c.health == Some(Health::Unhealthy) {
                    bail!("service {service} is unhealthy");
                }
                match (c.state, c.exit_code) {
                    // A one-shot service (a migration, `restart: "no"`) that did its job.
                    (State::Exited, Some(0)) if !c.has_healthcheck => {}
                    (State::Exited | State::Dead, Some(code)) if code != 0 && c.restart_count == base => {
                        // With a restart policy the engine brings it back within a moment; the
                        // restart-loop check decides then. Without one, it stays down.
                        if !restarts(c) {
                            bail!("service {service} exited with code {code}");
                        }
                        waiting.push(format!("{service}: exited ({code})"));
                    }
                    _ if !c.is_ready() => waiting.push(format!("{service}: {}", describe(c))),
                    _ => {}
                }
            }
        }
        if waiting.is_empty() {
            let mut failed = Vec::new();
            for p in probes {
                if let Err(e) = probe(p, &containers).await {
                    failed.push(format!("probe {:?}: {e}", p.name));
                }
            }
            if failed.is_empty() {
                return Ok(());
            }
            waiting = failed;
        }
        if Instant::now() >= deadline {
            bail!("not healthy within {} s: {}", timeout.as_secs(), waiting.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Whether the engine restarts this container by itself (a restart policy other than `no`).
fn restarts(c: &Container) -> bool {
    c.restart_policy.as_deref().is_some_and(|p| !p.is_empty() && p != "no")
}

fn describe(c: &Container) -> String {
    match (c.state, c.health) {
        (State::Running, Some(h)) => format!("running, {h:?}").to_lowercase(),
        (s, _) => format!("{s:?}").to_lowercase(),
    }
}

/// One HTTP GET; a host that names a service is that service's container address.
async fn probe(p: &Probe, containers: &[Container]) -> Result<()> {
    let url = resolve(&p.url, containers);
    let (expect_status, expect_body) = (p.expect_status, p.expect_body.clone());
    let timeout = Duration::from_secs(p.timeout.clamp(1, 30));
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .timeout_global(Some(timeout))
            .build()
            .into();
        let mut resp = agent.get(&url).call().map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp.body_mut().with_config().limit(1 << 20).read_to_string().unwrap_or_default();
        if status != expect_status {
            bail!("{url}: HTTP {status}, expected {expect_status}");
        }
        if let Some(want) = expect_body.filter(|w| !body.contains(w.as_str())) {
            bail!("{url}: the answer does not contain {want:?}");
        }
        Ok(())
    })
    .await?
}

/// `http://app:8080/x` → `http://<app's address>:8080/x` when `app` is a service.
fn resolve(url: &str, containers: &[Container]) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let end = rest.find(['/', ':', '?']).unwrap_or(rest.len());
    let host = &rest[..end];
    match containers
        .iter()
        .find(|c| c.service == host && c.state == State::Running)
        .and_then(|c| c.ips.first())
    {
        Some(ip) => format!("{scheme}://{ip}{}", &rest[end..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fake::FakeEngine;

    async fn gate_of(engine: &FakeEngine, services: &[&str]) -> Result<()> {
        let services: Vec<String> = services.iter().map(|s| s.to_string()).collect();
        gate(engine, "p", &services, &[], Duration::from_secs(2), &Interrupt::none()).await
    }

    #[tokio::test]
    async fn the_gate_passes_ready_and_finished_one_shot_services_and_fails_fast_otherwise() {
        let e = FakeEngine::new();
        e.add("db", true, &[], vec![]);
        e.add("migrate", false, &[], vec![]);
        e.update("migrate", |c| c.exit_code = Some(0));
        gate_of(&e, &["db", "migrate"]).await.unwrap();

        let started = std::time::Instant::now();
        e.update("migrate", |c| c.exit_code = Some(3));
        let err = gate_of(&e, &["db", "migrate"]).await.unwrap_err();
        assert!(err.to_string().contains("exited with code 3"), "{err}");
        e.update("db", |c| {
            c.has_healthcheck = true;
            c.health = Some(Health::Unhealthy);
        });
        assert!(gate_of(&e, &["db"]).await.unwrap_err().to_string().contains("unhealthy"));
        assert!(started.elapsed() < Duration::from_secs(1), "did not fail fast");

        // With a restart policy an exit is waited for; the deadline then says what is missing.
        e.update("migrate", |c| c.restart_policy = Some("unless-stopped".into()));
        let err = gate_of(&e, &["migrate", "search"]).await.unwrap_err().to_string();
        assert!(err.contains("not healthy within") && err.contains("search: no container"), "{err}");
    }

    #[test]
    fn service_names_in_probe_urls_become_container_addresses() {
        let mut c = crate::engine::fake::FakeEngine::container("app");
        c.ips = vec!["172.18.0.3".into()];
        assert_eq!(resolve("http://app:8080/version", &[c.clone()]), "http://172.18.0.3:8080/version");
        assert_eq!(resolve("http://app/x", &[c.clone()]), "http://172.18.0.3/x");
        assert_eq!(resolve("http://example.org/x", &[c]), "http://example.org/x");
    }
}
