//! Stop → work → always start. The services about to be stopped are written to the operations
//! journal *before* the first stop, so that whatever happens next — an error, a panic, a signal,
//! a SIGKILL — they are started again: by [`ServiceGuard::restart`] in this process, or by
//! `flows::recover` in the next one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::future::join_all;

use crate::archive::Cancel;
use crate::catalog::{Catalog, StoppedService};
use crate::engine::order::start_levels;
use crate::engine::{Container, Engine, EngineError};

/// How long services get to stop and to come back.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Used when a container sets no stop timeout of its own.
    pub stop: u64,
    /// For each dependency level to be running (and healthy) again.
    pub ready: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { stop: 10, ready: Duration::from_secs(120) }
    }
}

pub struct ServiceGuard {
    engine: Arc<dyn Engine>,
    deps: BTreeMap<String, BTreeSet<String>>,
    timeouts: Timeouts,
    stopped: Vec<Container>,
    first_stop: Option<Instant>,
}

impl ServiceGuard {
    /// `deps`: service → services it depends on (compose file and v2 labels merged).
    pub fn new(
        engine: Arc<dyn Engine>,
        deps: BTreeMap<String, BTreeSet<String>>,
        timeouts: Timeouts,
    ) -> Self {
        ServiceGuard { engine, deps, timeouts, stopped: Vec::new(), first_stop: None }
    }

    /// Journals, then stops the running containers among `containers`, dependents first.
    /// On error the containers stopped so far stay listed for [`Self::restart`].
    pub async fn stop(&mut self, catalog: &Catalog, op: i64, containers: &[Container]) -> Result<()> {
        let running: Vec<Container> = containers.iter().filter(|c| c.is_running()).cloned().collect();
        let journal: Vec<StoppedService> =
            running.iter().map(|c| StoppedService { service: c.service.clone(), id: c.id.clone() }).collect();
        catalog.record_stopped(op, &journal).await?;
        self.stopped = running;
        self.first_stop = Some(Instant::now());
        let mut levels = levels_of(&self.stopped, &self.deps);
        levels.reverse();
        for level in levels {
            let results = join_all(level.iter().map(|c| {
                let t = c.stop_timeout.unwrap_or(self.timeouts.stop);
                tracing::info!(service = %c.service, container = %c.name, timeout_s = t, "stopping");
                self.engine.stop(&c.id, t)
            }))
            .await;
            for (c, r) in level.iter().zip(results) {
                r.map_err(|e| anyhow::anyhow!("stopping {} ({}): {e}", c.service, c.name))?;
            }
        }
        Ok(())
    }

    /// Milliseconds since the first stop, when anything was stopped.
    pub fn elapsed_ms(&self) -> Option<u64> {
        self.first_stop.map(|t| t.elapsed().as_millis() as u64)
    }

    /// Someone else (compose, recreating the containers) has started the services: nothing is
    /// left for [`Self::restart`] to do.
    pub fn disarm(&mut self) {
        self.stopped.clear();
    }

    /// Containers removed since they were stopped (compose creates them again): nothing to
    /// start for them.
    pub fn forget(&mut self, removed: &[Container]) {
        self.stopped.retain(|c| !removed.iter().any(|r| r.id == c.id));
    }

    pub fn stopped(&self) -> &[Container] {
        &self.stopped
    }

    /// Starts everything [`Self::stop`] stopped, dependencies first, waiting for each level to be
    /// running and healthy. Tries every service even when one fails. Returns the downtime.
    pub async fn restart(&mut self) -> Result<Option<u64>> {
        let stopped = std::mem::take(&mut self.stopped);
        start_and_wait(&*self.engine, &stopped, &self.deps, self.timeouts.ready).await?;
        Ok(self.elapsed_ms())
    }
}

/// Starts `containers` level by level and waits for them to be ready. Every container is tried;
/// the error lists each one that did not come back.
pub async fn start_and_wait(
    engine: &dyn Engine,
    containers: &[Container],
    deps: &BTreeMap<String, BTreeSet<String>>,
    ready_timeout: Duration,
) -> Result<()> {
    let mut failures = Vec::new();
    for level in levels_of(containers, deps) {
        let results = join_all(level.iter().map(|c| async move {
            tracing::info!(service = %c.service, container = %c.name, "starting");
            engine.start(&c.id).await?;
            wait_ready(engine, &c.id, ready_timeout).await
        }))
        .await;
        for (c, r) in level.iter().zip(results) {
            if let Err(e) = r {
                failures.push(format!("{} ({}): {e}", c.service, c.name));
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(crate::Error::ServicesDown { detail: failures.join("; ") }.into())
    }
}

async fn wait_ready(engine: &dyn Engine, id: &str, timeout: Duration) -> Result<(), EngineError> {
    let deadline = Instant::now() + timeout;
    loop {
        let c = engine.inspect(id).await?;
        if c.is_ready() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let what = match (c.state, c.health) {
                (crate::engine::State::Running, Some(h)) => format!("health {h:?}").to_lowercase(),
                (s, _) => format!("state {s:?}").to_lowercase(),
            };
            return Err(EngineError::Api {
                op: "wait for",
                target: c.name,
                detail: format!("not ready after {}s ({what})", timeout.as_secs()),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn levels_of<'a>(
    containers: &'a [Container],
    deps: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<Vec<&'a Container>> {
    let services: BTreeSet<String> = containers.iter().map(|c| c.service.clone()).collect();
    let mut all_deps = deps.clone();
    for c in containers {
        all_deps.entry(c.service.clone()).or_default().extend(c.depends_on.iter().cloned());
    }
    start_levels(&services, &all_deps)
        .into_iter()
        .map(|level| containers.iter().filter(|c| level.contains(&c.service)).collect())
        .collect()
}

/// SIGINT/SIGTERM seen by this process. Installing it replaces the default "die at once", so the
/// flows decide where to stop: the archive writer through [`Cancel`], the flows by [`Self::check`].
#[derive(Clone)]
pub struct Interrupt {
    signal: Arc<AtomicU8>,
    cancel: Cancel,
}

const NONE: u8 = 0;
const SIGINT: u8 = 2;
const SIGTERM: u8 = 15;

impl Interrupt {
    /// Starts listening. Must be called inside the tokio runtime.
    pub fn install() -> std::io::Result<Interrupt> {
        use tokio::signal::unix::{SignalKind, signal};
        let me = Interrupt { signal: Arc::new(AtomicU8::new(NONE)), cancel: Cancel::default() };
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let m = me.clone();
        tokio::spawn(async move {
            loop {
                let sig = tokio::select! {
                    _ = int.recv() => SIGINT,
                    _ = term.recv() => SIGTERM,
                };
                let first = m.signal.compare_exchange(NONE, sig, Ordering::SeqCst, Ordering::SeqCst).is_ok();
                m.cancel.cancel();
                if first {
                    eprintln!(
                        "nuwax: {} received: stopping at the next safe point; services will be started again",
                        name(sig)
                    );
                } else {
                    eprintln!("nuwax: still finishing up (starting services again); please wait");
                }
            }
        });
        Ok(me)
    }

    /// An interrupt that never fires (tests, library use).
    pub fn none() -> Interrupt {
        Interrupt { signal: Arc::new(AtomicU8::new(NONE)), cancel: Cancel::default() }
    }

    pub fn cancel(&self) -> &Cancel {
        &self.cancel
    }

    /// Takes back a signal that was acted on, so that what must follow it (the rollback of an
    /// interrupted upgrade) runs; a further signal interrupts that in turn.
    pub fn reset(&self) {
        self.signal.store(NONE, Ordering::SeqCst);
        self.cancel.reset();
    }

    /// `Err(Interrupted)` once a signal arrived.
    pub fn check(&self) -> Result<(), crate::Error> {
        match self.signal.load(Ordering::SeqCst) {
            NONE => Ok(()),
            sig => Err(crate::Error::Interrupted { signal: name(sig) }),
        }
    }
}

fn name(sig: u8) -> &'static str {
    if sig == SIGTERM { "SIGTERM" } else { "SIGINT" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fake::FakeEngine;

    #[tokio::test]
    async fn stops_dependents_first_and_starts_only_what_ran() {
        let engine = Arc::new(FakeEngine::new());
        engine.add("db", true, &[], vec![]);
        engine.add("app", true, &["db"], vec![]);
        engine.add("worker", true, &["app"], vec![]);
        engine.add("batch", false, &["db"], vec![]);
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).await.unwrap();
        let op = catalog.begin_operation("backup", "p", None, None).await.unwrap();
        let containers = engine.project_containers("p").await.unwrap();
        let mut guard = ServiceGuard::new(engine.clone(), BTreeMap::new(), Timeouts::default());
        guard.stop(&catalog, op, &containers).await.unwrap();
        assert!(engine.running().is_empty());
        let journal = catalog.unfinished("p").await.unwrap();
        assert_eq!(journal[0].stopped_services.len(), 3);
        guard.restart().await.unwrap();
        assert_eq!(
            engine.calls(),
            ["stop worker", "stop app", "stop db", "start db", "start app", "start worker"]
        );
        let mut running = engine.running();
        running.sort();
        assert_eq!(running, ["app", "db", "worker"]);
    }

    #[tokio::test]
    async fn a_failing_start_still_starts_the_others_and_is_reported() {
        let engine = Arc::new(FakeEngine::new());
        engine.add("db", true, &[], vec![]);
        engine.add("app", true, &[], vec![]);
        engine.fail_start("db");
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).await.unwrap();
        let op = catalog.begin_operation("backup", "p", None, None).await.unwrap();
        let containers = engine.project_containers("p").await.unwrap();
        let mut guard = ServiceGuard::new(engine.clone(), BTreeMap::new(), Timeouts::default());
        guard.stop(&catalog, op, &containers).await.unwrap();
        let err = guard.restart().await.unwrap_err();
        assert!(err.to_string().contains("db"), "{err}");
        assert_eq!(engine.running(), ["app"]);
    }
}
