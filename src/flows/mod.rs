//! The flows: each combines the engine, the archive format and the catalog into one operation.
//! A flow never builds a bollard request or an SQL string itself.

pub mod backup;
pub mod compose;
pub mod import;
pub mod recover;
pub mod rollback;
pub mod sources;

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
