//! The flows: each combines the engine, the archive format and the catalog into one operation.
//! A flow never builds a bollard request or an SQL string itself.

pub mod backup;
pub mod compose;
pub mod delete;
pub mod doctor;
pub mod import;
pub mod prune;
pub mod rebuild;
pub mod recover;
pub mod rollback;
pub mod sources;
pub mod storage;
pub mod upgrade;

use std::sync::Arc;

use crate::catalog::Catalog;
use crate::engine::Engine;
use crate::guard::{Interrupt, Timeouts};
use crate::project::Project;

/// What every flow needs: the project, its catalog, the engine (absent with `--no-docker`),
/// and the signal watcher.
pub struct Ctx {
    pub project: Project,
    pub catalog: Catalog,
    pub engine: Option<Arc<dyn Engine>>,
    pub interrupt: Interrupt,
}

impl Ctx {
    /// The same context with the project read again from disk: after an upgrade placed new
    /// compose files, or a rollback restored old ones.
    pub fn rediscover(&self) -> anyhow::Result<Ctx> {
        Ok(Ctx {
            project: crate::project::Project::discover(&self.project.dir)?,
            catalog: self.catalog.clone(),
            engine: self.engine.clone(),
            interrupt: self.interrupt.clone(),
        })
    }

    /// The version the project runs: as the last upgrade or rollback left it in the catalog,
    /// else `service_version` from nuwax.toml; `None` when neither says.
    pub async fn current_version(&self) -> anyhow::Result<Option<String>> {
        Ok(self
            .catalog
            .version(&self.project.name)
            .await?
            .or_else(|| self.project.settings.service_version.clone()))
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
