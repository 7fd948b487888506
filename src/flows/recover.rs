//! Finishing what a dead nuwax left behind: start the services it had stopped, mark its backup
//! failed, remove its temp file. Runs at the start of every command that can take the project
//! lock, and on demand as `nuwax recover`.

use std::collections::BTreeSet;

use anyhow::Result;
use serde::Serialize;

use super::Ctx;
use crate::catalog::OperationState;
use crate::guard::start_and_wait;

#[derive(Debug, Clone, Serialize)]
pub struct Recovered {
    pub operation: i64,
    pub kind: String,
    pub pid: i64,
    pub started_at: String,
    pub backup_id: Option<i64>,
    pub services_started: Vec<String>,
    pub temp_removed: Option<String>,
    /// What recovery did to the data, for rollbacks.
    pub note: Option<String>,
}

/// Recovers every unfinished operation of the project. The caller holds the project lock, so
/// their processes are gone (or it is this process, after a panic).
pub async fn recover(ctx: &Ctx) -> Result<Vec<Recovered>> {
    let mut out = Vec::new();
    for op in ctx.catalog.unfinished(&ctx.project.name).await? {
        let mut services_started = Vec::new();
        let finished = match (op.kind.as_str(), op.detail.clone()) {
            ("rollback", Some(detail)) => super::rollback::recover(ctx, &detail).await.map(Some),
            ("upgrade", Some(detail)) => super::upgrade::recover(ctx, &detail).await.map(Some),
            ("storage-migrate", Some(detail)) => super::storage::recover(ctx, &detail).map(Some),
            ("prune", Some(detail)) => super::prune::recover(ctx, &detail).await.map(Some),
            _ => Ok(None),
        };
        // A recovery that cannot finish must not block every later command (including the
        // rollback that would fix things): it is reported, the services are started, and the
        // operation is closed.
        let compose_owned = finished.is_ok()
            && op.kind == "rollback"
            && op.detail.as_ref().is_some_and(super::rollback::compose_owns_services);
        let note = match finished {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("operation {} ({}) could not be finished: {e:#}", op.id, op.kind);
                Some(format!(
                    "could not be finished ({e:#}); the project may be between two states: \
                     `nuwax list` shows the backups, `nuwax rollback <id>` restores a known one"
                ))
            }
        };
        if !op.stopped_services.is_empty() && !compose_owned {
            let engine = ctx.engine.as_ref().ok_or_else(|| {
                anyhow::anyhow!(
                    "operation {} (pid {}) left services stopped ({}); the Docker engine is needed to start them",
                    op.id,
                    op.pid,
                    op.stopped_services.iter().map(|s| s.service.as_str()).collect::<Vec<_>>().join(", ")
                )
            })?;
            let wanted: BTreeSet<&str> = op.stopped_services.iter().map(|s| s.id.as_str()).collect();
            let containers: Vec<_> = engine
                .project_containers(&ctx.project.name)
                .await?
                .into_iter()
                .filter(|c| wanted.contains(c.id.as_str()))
                .collect();
            start_and_wait(&**engine, &containers, &ctx.project.dependencies(), ctx.timeouts().ready).await?;
            services_started = containers.iter().map(|c| c.service.clone()).collect();
            // Containers removed on the way (a volume recreated through the engine) come back
            // from the compose files, as the services ran before.
            let mut gone: Vec<String> = op
                .stopped_services
                .iter()
                .filter(|s| !containers.iter().any(|c| c.id == s.id))
                .map(|s| s.service.clone())
                .collect();
            gone.sort();
            gone.dedup();
            gone.retain(|s| !services_started.contains(s));
            if !gone.is_empty() {
                tracing::warn!("recreating {} with compose: their containers are gone", gone.join(", "));
                super::compose::up(ctx, super::compose::Up::Services, &gone).await?;
                services_started.extend(gone);
            }
        }
        let mut temp_removed = None;
        if let Some(temp) = &op.temp_path
            && std::fs::remove_file(temp).is_ok()
        {
            temp_removed = Some(temp.display().to_string());
        }
        if let Some(id) = op.backup_id {
            let msg = format!(
                "interrupted: nuwax (pid {}) ended before the backup finished; recovered by pid {}",
                op.pid,
                std::process::id()
            );
            ctx.catalog.fail(id, &msg, None).await?;
        }
        ctx.catalog.finish_operation(op.id, OperationState::Recovered, Some("recovered")).await?;
        out.push(Recovered {
            operation: op.id,
            kind: op.kind,
            pid: op.pid,
            started_at: op.started_at,
            backup_id: op.backup_id,
            services_started,
            temp_removed,
            note,
        });
    }
    let orphans = ctx.catalog.fail_orphaned_pending(&ctx.project.name).await?;
    if orphans > 0 {
        tracing::warn!(
            "marked {orphans} backup(s) failed that a dead nuwax left pending before it stopped anything"
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::catalog::{BackupKind, Catalog, NewBackup};
    use crate::engine::Engine;
    use crate::engine::fake::FakeEngine;
    use crate::guard::{Interrupt, ServiceGuard, Timeouts};

    async fn pending(catalog: &Catalog, project: &str) -> i64 {
        let new = NewBackup {
            kind: BackupKind::Manual,
            project,
            service_version: "0",
            compression: "zstd",
            created_at: chrono::Utc::now(),
            note: None,
        };
        catalog.insert_pending(&new).await.unwrap()
    }

    #[tokio::test]
    async fn a_dead_backup_is_finished_by_the_next_run() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("compose.yaml"),
            "services: {db: {image: x}, app: {image: y, depends_on: [db]}}\n",
        )
        .unwrap();
        let project = crate::project::Project::discover(dir.path()).unwrap();
        let catalog = Catalog::open(&project.state_dir).await.unwrap();
        let engine = Arc::new(FakeEngine::new());
        engine.add("db", true, &[], vec![]);
        engine.add("app", true, &[], vec![]);
        engine.add("cron", false, &[], vec![]);
        // A backup that stopped its services and then "died" (never restarted them).
        let id = pending(&catalog, &project.name).await;
        let temp = dir.path().join("partial.tmp");
        std::fs::write(&temp, b"half an archive").unwrap();
        let op = catalog.begin_operation("backup", &project.name, Some(id), Some(&temp)).await.unwrap();
        let containers = engine.project_containers("x").await.unwrap();
        ServiceGuard::new(engine.clone(), project.dependencies(), Timeouts::default())
            .stop(&catalog, op, &containers)
            .await
            .unwrap();
        assert!(engine.running().is_empty());

        // And one whose process died before it journaled anything.
        let orphan = pending(&catalog, &project.name).await;
        let ctx = Ctx { project, catalog, engine: Some(engine.clone()), interrupt: Interrupt::none() };
        let done = recover(&ctx).await.unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(engine.calls()[2..], ["start db".to_string(), "start app".to_string()]);
        assert!(!temp.exists());
        let rec = ctx.catalog.get(id).await.unwrap().unwrap();
        assert_eq!(rec.status, "failed");
        assert_eq!(ctx.catalog.get(orphan).await.unwrap().unwrap().status, "failed");
        assert!(ctx.catalog.unfinished(&ctx.project.name).await.unwrap().is_empty());
        // Nothing left to do the second time.
        assert!(recover(&ctx).await.unwrap().is_empty());
    }
}
