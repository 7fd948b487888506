//! The flows: each combines the engine, the archive format and the catalog into one operation.
//! A flow never builds a bollard request or an SQL string itself.

pub mod backup;
pub mod delete;
pub mod doctor;
pub mod import;
pub mod offsite;
pub mod prune;
pub mod rebuild;
pub mod recover;
pub mod rollback;
pub mod sources;
pub mod storage;
pub mod upgrade;

use std::sync::Arc;

use anyhow::Context as _;

use crate::catalog::Catalog;
use crate::engine::Engine;
use crate::engine::compose::{Compose, ComposeError};
use crate::interrupt::Interrupt;
use crate::project::Project;

/// What every flow needs: the project, its catalog, the engine (absent with `--no-docker`),
/// the compose CLI (detected once, before anything is touched), and the signal watcher.
#[derive(Clone)]
pub struct Ctx {
    pub project: Project,
    pub catalog: Catalog,
    pub engine: Option<Arc<dyn Engine>>,
    pub compose: Option<Arc<dyn Compose>>,
    pub interrupt: Interrupt,
}

/// How long services get to stop and to come back.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Used when a container sets no stop timeout of its own.
    pub stop: u64,
    /// For each dependency level to be running (and healthy) again.
    pub ready: std::time::Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { stop: 10, ready: std::time::Duration::from_secs(120) }
    }
}

impl Ctx {
    /// Backup `id` of this project, or [`crate::Error::BackupNotFound`].
    pub async fn record(&self, id: i64) -> anyhow::Result<crate::catalog::BackupRecord> {
        Ok(self
            .catalog
            .get(id)
            .await?
            .filter(|r| r.project == self.project.name)
            .ok_or(crate::Error::BackupNotFound { id })?)
    }

    /// The same context with the project read again from disk: after an upgrade placed new
    /// compose files, or a rollback restored old ones.
    pub fn rediscover(&self) -> anyhow::Result<Ctx> {
        Ok(Ctx {
            project: crate::project::Project::discover(&self.project.dir)?,
            catalog: self.catalog.clone(),
            engine: self.engine.clone(),
            compose: self.compose.clone(),
            interrupt: self.interrupt.clone(),
        })
    }

    /// The engine, for flows that cannot do without it.
    pub fn engine(&self) -> anyhow::Result<&dyn Engine> {
        self.engine.as_deref().context("the Docker engine is needed for this")
    }

    /// The compose CLI chosen or detected when the command started.
    pub fn compose(&self) -> anyhow::Result<&dyn Compose> {
        match self.compose.as_deref() {
            Some(c) => Ok(c),
            None => {
                let detail = match self.project.compose_cli() {
                    Err(e) => e.to_string(),
                    Ok(_) => "it was not there when this command started".into(),
                };
                Err(ComposeError::Missing { detail }.into())
            }
        }
    }

    /// The version of the configs on disk, the one source every record of it reads: the
    /// catalog's, which the step that places or restores configs sets in the same step, else
    /// `service_version` from nuwax.toml; `None` when neither says.
    pub async fn current_version(&self) -> anyhow::Result<Option<String>> {
        Ok(self
            .catalog
            .version(&self.project.name)
            .await?
            .or_else(|| self.project.settings.service_version.clone()))
    }

    /// [`Self::current_version`], `0` when unknown: what backups are named and recorded with.
    pub async fn version(&self) -> anyhow::Result<String> {
        Ok(self.current_version().await?.unwrap_or_else(|| "0".into()))
    }

    pub fn timeouts(&self) -> Timeouts {
        let d = Timeouts::default();
        Timeouts {
            stop: self.project.settings.stop_timeout.unwrap_or(d.stop),
            ready: self
                .project
                .settings
                .health_timeout
                .map(std::time::Duration::from_secs)
                .unwrap_or(d.ready),
        }
    }
}
