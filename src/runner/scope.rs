//! The stop scope: the one place services are stopped and started again. What it stops is
//! journaled before the first stop; at its end, on every path, [`ensure_running`] brings back
//! every service it keeps running, and recovery calls the same function after a crash.
//!
//! It works by service, not by container: a flow may hand services over to compose (their
//! configs, image or volumes changed under them), and then they come back as new containers
//! created from the compose files as they are at that moment. An old container of such a
//! service is never started again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};

use crate::catalog::StoppedService;
use crate::engine::compose::Up;
use crate::engine::order::start_levels;
use crate::engine::{Container, Engine, Health, State};
use crate::flows::Ctx;

/// What a scope has done and must still do, as written to the operations journal.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScopeJournal {
    /// The containers stopped, in stop order.
    #[serde(default)]
    pub stopped: Vec<StoppedService>,
    /// The services left running at the end: those that ran before the stop, as the operation
    /// may have changed the set (an upgrade's new services; the services of a restored backup).
    #[serde(default)]
    pub services: BTreeSet<String>,
    /// Services that come back through compose (`up -d --no-deps`), never by starting the
    /// container that was stopped.
    #[serde(default)]
    pub compose: BTreeSet<String>,
    /// The operation's own work had ended when it was closed with services still down: recovery
    /// only starts them.
    #[serde(default)]
    pub ended: bool,
}

/// What a scope did, for the flow's outcome.
#[derive(Debug, Clone, Default)]
pub struct ScopeReport {
    /// Services stopped, in stop order.
    pub stopped: Vec<String>,
    /// Services the engine SIGKILLed at their stop timeout.
    pub killed: Vec<String>,
    /// Services paused rather than stopped (also in `stopped`).
    pub paused: Vec<String>,
    /// First stop to the last service ready again; `None` when nothing was stopped.
    pub downtime_ms: Option<u64>,
}

/// Services stopped by one operation; created only by [`super::Operation::with_stopped`].
pub struct Scope<'c> {
    ctx: &'c Ctx,
    /// The operation whose row journals this scope.
    owner: i64,
    journal: ScopeJournal,
    before: Vec<Container>,
    first_stop: Option<Instant>,
    killed: Vec<String>,
    paused: Vec<String>,
}

impl<'c> Scope<'c> {
    pub(super) fn new(ctx: &'c Ctx, owner: i64, before: Vec<Container>) -> Scope<'c> {
        Scope {
            ctx,
            owner,
            journal: ScopeJournal::default(),
            before,
            first_stop: None,
            killed: Vec::new(),
            paused: Vec::new(),
        }
    }

    /// The project's containers as they were when the scope began, before anything stopped.
    pub fn before(&self) -> &[Container] {
        &self.before
    }

    /// Whether the operation leaves `service` running: what a backup made inside the scope
    /// records as running, though the scope has it stopped right now.
    pub fn keeps_running(&self, service: &str) -> bool {
        self.journal.services.contains(service)
    }

    pub fn services(&self) -> &BTreeSet<String> {
        &self.journal.services
    }

    /// Journals, then stops the running containers among `containers`, dependents first. Can be
    /// called again inside the scope (a rollback nested in an upgrade stops what the upgrade
    /// started); each stop adds to what the end of the scope starts.
    pub async fn stop(&mut self, containers: &[Container]) -> Result<()> {
        let engine = self.ctx.engine()?;
        let running = self.take(containers).await?;
        if running.is_empty() {
            return Ok(());
        }
        let deps = dependencies(self.ctx, &running);
        let mut levels = start_levels(&running.iter().map(|c| c.service.clone()).collect(), &deps);
        levels.reverse();
        for level in levels {
            let batch: Vec<&Container> = running.iter().filter(|c| level.contains(&c.service)).collect();
            let results = join_all(batch.iter().map(|c| {
                let t = stop_timeout(self.ctx, c);
                tracing::info!(service = %c.service, container = %c.name, timeout_s = t, "stopping");
                engine.stop(&c.id, t)
            }))
            .await;
            for (c, r) in batch.iter().zip(results) {
                r.map_err(|e| anyhow::anyhow!("stopping {} ({}): {e}", c.service, c.name))?;
                // 137 = 128 + SIGKILL: the engine killed it at the end of its stop timeout.
                if let Ok(after) = engine.inspect(&c.id).await
                    && after.exit_code == Some(137)
                {
                    tracing::warn!(
                        "{} did not stop within {} s and was killed: its data was copied after an unclean shutdown",
                        c.service,
                        stop_timeout(self.ctx, c)
                    );
                    self.killed.push(c.service.clone());
                }
            }
        }
        Ok(())
    }

    /// Journals, then pauses the running containers among `containers` (the cgroup freezer: no
    /// shutdown, no restart, their files as a crash would leave them). The end of the scope, or
    /// recovery, unpauses them as it starts what it stopped.
    pub async fn pause(&mut self, containers: &[Container]) -> Result<()> {
        let engine = self.ctx.engine()?;
        let running = self.take(containers).await?;
        let results = join_all(running.iter().map(|c| {
            tracing::info!(service = %c.service, container = %c.name, "pausing");
            engine.pause(&c.id)
        }))
        .await;
        for (c, r) in running.iter().zip(results) {
            r.map_err(|e| anyhow::anyhow!("pausing {} ({}): {e}", c.service, c.name))?;
            self.paused.push(c.service.clone());
        }
        Ok(())
    }

    /// The running containers among `containers` this scope does not hold yet, journaled as
    /// its own (the end of the scope starts them) before the caller stops or pauses them.
    async fn take(&mut self, containers: &[Container]) -> Result<Vec<Container>> {
        let known: BTreeSet<&str> = self.journal.stopped.iter().map(|s| s.id.as_str()).collect();
        let running: Vec<Container> =
            containers.iter().filter(|c| c.is_running() && !known.contains(c.id.as_str())).cloned().collect();
        if running.is_empty() {
            return Ok(running);
        }
        for c in &running {
            self.journal.stopped.push(StoppedService { service: c.service.clone(), id: c.id.clone() });
            self.journal.services.insert(c.service.clone());
        }
        self.save().await?;
        self.first_stop.get_or_insert_with(Instant::now);
        Ok(running)
    }

    /// From now on these services come back through compose, created from the compose files as
    /// they are then: their configs, image or volumes changed under their old containers.
    /// Journaled before the change it announces.
    pub async fn via_compose(&mut self, services: impl IntoIterator<Item = String>) -> Result<()> {
        let before = self.journal.compose.len();
        self.journal.compose.extend(services);
        if self.journal.compose.len() != before {
            self.save().await?;
        }
        Ok(())
    }

    /// The services the operation leaves running from now on, in place of those it stopped:
    /// an upgrade adds the package's new services, a rollback restoring configs runs the
    /// backup's. Journaled.
    pub async fn set_services(&mut self, services: BTreeSet<String>) -> Result<()> {
        if self.journal.services != services {
            self.journal.services = services;
            self.save().await?;
        }
        Ok(())
    }

    /// Brings the scope's services up now, for a body that goes on with them running (an
    /// upgrade's after-start hooks and health gate). The end of the scope checks again.
    pub async fn start_now(&self) -> Result<()> {
        ensure_running(self.ctx, &self.journal).await
    }

    pub fn killed(&self) -> &[String] {
        &self.killed
    }

    async fn save(&self) -> Result<()> {
        self.ctx.catalog.set_scope(self.owner, &self.journal).await
    }

    /// The end of the scope: every service it keeps is running (and healthy) again.
    pub(super) async fn finish(&mut self) -> (Result<()>, ScopeReport) {
        let result = match self.journal.services.is_empty() {
            true => Ok(()),
            false => ensure_running(self.ctx, &self.journal).await,
        };
        let report = ScopeReport {
            stopped: self.journal.stopped.iter().map(|s| s.service.clone()).collect(),
            killed: self.killed.clone(),
            paused: self.paused.clone(),
            downtime_ms: self.first_stop.map(|t| t.elapsed().as_millis() as u64),
        };
        (result, report)
    }

    pub(super) fn journal(&self) -> &ScopeJournal {
        &self.journal
    }

    /// Starts `services` now, inside the scope, as its end would (by the engine, or through
    /// compose for those handed to it) and waits until they are ready: for a flow that needs one
    /// service running while the others stay stopped (a database loading its dump).
    pub async fn start_these_now(&self, services: &[String]) -> Result<()> {
        let mut j = self.journal.clone();
        j.services = services.iter().cloned().collect();
        ensure_running(self.ctx, &j).await
    }
}

/// The stop timeout of a container: its own, else the compose file's `stop_grace_period`
/// (compose v1 keeps it to itself), else nuwax.toml's.
fn stop_timeout(ctx: &Ctx, c: &Container) -> u64 {
    c.stop_timeout
        .or_else(|| ctx.project.services.get(&c.service).and_then(|s| s.stop_grace_period))
        .unwrap_or(ctx.timeouts().stop)
}

/// Service → the services it depends on: the compose files, and compose v2's labels.
/// Service → the services it depends on: the compose files' and the containers' own labels.
pub fn dependencies(ctx: &Ctx, containers: &[Container]) -> BTreeMap<String, BTreeSet<String>> {
    let mut deps = ctx.project.dependencies();
    for c in containers {
        deps.entry(c.service.clone()).or_default().extend(c.depends_on.iter().cloned());
    }
    deps
}

/// Brings every service of `journal.services` to running and ready, dependencies first: a
/// running container is left alone; a service handed to compose, or whose stopped container is
/// gone, is created and started by compose from the compose files as they are now; any other
/// is started by the engine. Every service is tried; the error names each one that did not
/// come back ([`crate::Error::ServicesDown`]). Used at the end of every scope and by recovery.
pub async fn ensure_running(ctx: &Ctx, journal: &ScopeJournal) -> Result<()> {
    let engine = ctx.engine()?;
    // The files as they are now: a rollback may have restored others.
    let current = ctx.rediscover().ok();
    let ctx = current.as_ref().unwrap_or(ctx);
    let stopped: BTreeSet<&str> = journal.stopped.iter().map(|s| s.id.as_str()).collect();
    let containers = engine.project_containers(&ctx.project.name).await?;
    let deps = dependencies(ctx, &containers);
    let mut failures = Vec::new();
    // Containers unpaused here: their processes never stopped, so running is ready (the engine
    // calls a paused container unhealthy, and says so until its next probe, which may be far).
    let mut unpaused: BTreeSet<String> = BTreeSet::new();
    for level in start_levels(&journal.services, &deps) {
        let containers = engine.project_containers(&ctx.project.name).await?;
        // A container of a service handed to compose that nuwax itself stopped is stale.
        let usable =
            |c: &&Container| !(journal.compose.contains(&c.service) && stopped.contains(c.id.as_str()));
        let (mut by_compose, mut by_engine) = (Vec::new(), Vec::new());
        for service in &level {
            let of: Vec<&Container> =
                containers.iter().filter(|c| &c.service == service).filter(usable).collect();
            if of.iter().any(|c| c.is_running()) {
                continue;
            }
            let mine: Vec<&Container> =
                of.iter().filter(|c| stopped.contains(c.id.as_str())).copied().collect();
            unpaused.extend(mine.iter().filter(|c| c.state == State::Paused).map(|c| c.id.clone()));
            match mine.is_empty() {
                true => by_compose.push(service.clone()),
                false => by_engine.extend(mine),
            }
        }
        if !by_compose.is_empty() {
            tracing::info!("creating and starting {} with compose", by_compose.join(", "));
            let up = match ctx.compose() {
                Ok(compose) => {
                    compose.up(&ctx.project, Up::Start, &by_compose).await.map_err(anyhow::Error::from)
                }
                Err(e) => Err(e),
            };
            if let Err(e) = up {
                failures.push(format!("{}: {e:#}", by_compose.join(", ")));
            }
        }
        for r in join_all(by_engine.iter().map(|c| async move {
            tracing::info!(service = %c.service, container = %c.name, "starting");
            engine.start(&c.id).await.map_err(|e| format!("{} ({}): {e}", c.service, c.name))
        }))
        .await
        {
            if let Err(e) = r {
                failures.push(e);
            }
        }
        // Whatever compose left running is the service now (it keeps a container whose config
        // did not change, and starts it).
        let now = engine.project_containers(&ctx.project.name).await?;
        let waiting: Vec<&Container> =
            now.iter().filter(|c| level.contains(&c.service)).filter(|c| c.is_running()).collect();
        for service in level.iter().filter(|s| !waiting.iter().any(|c| &&c.service == s)) {
            if !failures.iter().any(|f| f.contains(service.as_str())) {
                failures.push(format!("{service}: no running container"));
            }
        }
        let ready = ctx.timeouts().ready;
        let waits = waiting.iter().map(|c| wait_ready(engine, &c.id, ready, unpaused.contains(&c.id)));
        for (c, r) in waiting.iter().zip(join_all(waits).await) {
            if let Err(e) = r {
                failures.push(format!("{} ({}): {e}", c.service, c.name));
            }
        }
    }
    match failures.is_empty() {
        true => Ok(()),
        false => Err(crate::Error::ServicesDown { detail: failures.join("; ") }.into()),
    }
}

/// Waits until the container is running and healthy (where it has a healthcheck; just running
/// when it was `unpaused`). Gives up at once when it turns unhealthy, or exits with nothing to
/// restart it.
async fn wait_ready(engine: &dyn Engine, id: &str, timeout: Duration, unpaused: bool) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let c = engine.inspect(id).await.map_err(|e| e.to_string())?;
        if c.is_ready() || (unpaused && c.state == State::Running) {
            return Ok(());
        }
        if c.health == Some(Health::Unhealthy) {
            return Err("unhealthy".into());
        }
        if matches!(c.state, State::Exited | State::Dead)
            && c.restart_policy.as_deref().is_none_or(|p| p == "no" || p.is_empty())
        {
            return Err(format!("exited with code {}", c.exit_code.unwrap_or(-1)));
        }
        if Instant::now() >= deadline {
            let what = match (c.state, c.health) {
                (State::Running, Some(h)) => format!("health {h:?}").to_lowercase(),
                (s, _) => format!("state {s:?}").to_lowercase(),
            };
            return Err(format!("not ready after {} s ({what})", timeout.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
