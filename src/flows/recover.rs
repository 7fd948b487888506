//! Finishing what a dead nuwax left behind. Every open operation, newest first (so a nested
//! rollback is finished before the upgrade that ran it): its kind's own `recover`, chosen by
//! [`OperationKind`], then its stop scope brought back with [`ensure_running`]. Runs at the
//! start of every command that can take the project lock, and on demand as `nuwax recover`.

use anyhow::{Context, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Ctx;
use crate::catalog::{Operation, OperationKind, OperationState};
use crate::runner::{Recovery, ScopeJournal, ensure_running};

#[derive(Debug, Clone, Serialize)]
pub struct Recovered {
    pub operation: i64,
    pub kind: String,
    pub pid: i64,
    pub started_at: String,
    pub backup_id: Option<i64>,
    pub services_started: Vec<String>,
    /// What recovery did to the data.
    pub note: Option<String>,
}

/// Recovers every unfinished operation of the project. The caller holds the project lock, so
/// their processes are gone (or it is this process, after a panic).
pub async fn recover(ctx: &Ctx) -> Result<Vec<Recovered>> {
    let mut out = Vec::new();
    // A compose the dead nuwax started may still be running: let it finish first.
    let children = ctx.project.state_dir.join("children");
    let left = crate::engine::compose::wait_for_orphans(&children, ctx.timeouts().ready).await;
    if !left.is_empty() {
        tracing::warn!("compose (pid {left:?}) still runs; recovering anyway");
    }
    for op in ctx.catalog.unfinished(&ctx.project.name).await? {
        let scope = scope_of(&op);
        let done = match scope.ended {
            true => Ok(Recovery::note("its own work had ended; its services were still down")),
            false => recover_kind(ctx, &op).await,
        };
        // A recovery that cannot finish must not block every later command (including the
        // rollback that would fix things): it is reported, the services are started, and the
        // operation is closed.
        let (mut note, handled) = match done {
            Ok(r) => (r.note, r.services_handled),
            Err(e) => {
                tracing::error!("operation {} ({}) could not be finished: {e:#}", op.id, op.kind);
                let note = format!(
                    "could not be finished ({e:#}); the project may be between two states: \
                     `nuwax list` shows the backups, `nuwax rollback <id>` restores a known one"
                );
                (note, false)
            }
        };
        let mut services_started = Vec::new();
        if !handled && !scope.services.is_empty() {
            if ctx.engine.is_none() {
                anyhow::bail!(
                    "operation {} (pid {}) left services stopped ({}); the Docker engine is needed to start them",
                    op.id,
                    op.pid,
                    scope.services.iter().cloned().collect::<Vec<_>>().join(", ")
                );
            }
            // Services that cannot come back (a broken version's) must not block every later
            // command either: said once, and the operation is closed.
            match ensure_running(ctx, &scope).await {
                Ok(()) => services_started = scope.services.iter().cloned().collect(),
                Err(e) => {
                    tracing::error!(
                        "operation {} ({}): services did not all come back: {e:#}",
                        op.id,
                        op.kind
                    );
                    note =
                        format!("{note}; services did not all come back ({e:#}): `nuwax status` shows them");
                }
            }
        }
        ctx.catalog.finish_operation(op.id, OperationState::Recovered, Some("recovered")).await?;
        out.push(Recovered {
            operation: op.id,
            kind: op.kind.as_str().to_string(),
            pid: op.pid,
            started_at: op.started_at,
            backup_id: op.backup_id,
            services_started,
            note: Some(note),
        });
    }
    ctx.catalog.fail_orphaned_upgrades(&ctx.project.name).await?;
    let orphans = ctx.catalog.fail_orphaned_pending(&ctx.project.name).await?;
    if orphans > 0 {
        tracing::warn!(
            "marked {orphans} backup(s) failed that a dead nuwax left pending before it stopped anything"
        );
    }
    for p in sweep(&ctx.project.storage_dir) {
        tracing::warn!("removed {}, left by a nuwax that died", p.display());
    }
    Ok(out)
}

/// Names of what operations keep in the storage dir while they run: partial archives, staged
/// restores, image spools, unpacked packages, loaded images, half-copied archives.
pub const LEFTOVER_PREFIXES: [&str; 9] = [
    ".nuwax-partial-",
    ".nuwax-fetch-",
    ".nuwax-restore-",
    ".nuwax-images-",
    ".nuwax-pkg-",
    ".nuwax-load-",
    ".nuwax-copy-",
    ".nuwax-frozen-",
    crate::archive::SPILL_PREFIX,
];

/// The files and dirs in `storage` that only a running operation would own.
pub fn leftovers(storage: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found: Vec<std::path::PathBuf> = std::fs::read_dir(storage)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| LEFTOVER_PREFIXES.iter().any(|p| e.file_name().to_string_lossy().starts_with(p)))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// Removes [`leftovers`]. Only for a caller that holds the project lock, once every open
/// operation is recovered: then no live operation owns any of them.
pub fn sweep(storage: &std::path::Path) -> Vec<std::path::PathBuf> {
    leftovers(storage)
        .into_iter()
        .filter(|p| match std::fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(p).is_ok(),
            _ => std::fs::remove_file(p).is_ok(),
        })
        .collect()
}

/// The dispatch: each kind's own recovery with its own journal.
async fn recover_kind(ctx: &Ctx, op: &Operation) -> Result<Recovery> {
    Ok(match op.kind {
        OperationKind::Backup => {
            let j = match &op.detail {
                Some(d) => parse(d)?,
                // Rows of older versions kept only the backup id and the temp path.
                None => super::backup::Journal {
                    backup_id: op.backup_id.context("a backup operation without its backup")?,
                    temp_path: op.temp_path.clone().unwrap_or_default(),
                    final_path: None,
                    tagged: Vec::new(),
                    frozen: None,
                },
            };
            Recovery::note(super::backup::recover(ctx, &j, op.pid).await?)
        }
        OperationKind::Rollback => Recovery::note(super::rollback::recover(ctx, &journal(op)?).await?),
        OperationKind::Upgrade => super::upgrade::recover(ctx, &journal(op)?).await?,
        OperationKind::Prune => Recovery::note(super::prune::recover(ctx, &journal(op)?).await?),
        OperationKind::StorageMigrate => Recovery::note(super::storage::recover(ctx, &journal(op)?)?),
    })
}

fn journal<J: DeserializeOwned + Default>(op: &Operation) -> Result<J> {
    match &op.detail {
        Some(d) => parse(d),
        None => Ok(J::default()),
    }
}

fn parse<J: DeserializeOwned>(d: &serde_json::Value) -> Result<J> {
    serde_json::from_value(d.clone()).context("reading the operation's journal")
}

/// The operation's stop scope; rows of older versions kept only the containers they stopped.
fn scope_of(op: &Operation) -> ScopeJournal {
    if let Some(s) = op.scope.as_ref().and_then(|s| serde_json::from_value(s.clone()).ok()) {
        return s;
    }
    let mut s = ScopeJournal {
        stopped: op.stopped_services.clone(),
        services: op.stopped_services.iter().map(|s| s.service.clone()).collect(),
        ..ScopeJournal::default()
    };
    // An older rollback that had begun its swap: its services must be created again from the
    // restored files, never started as the containers they were.
    let swapping =
        op.kind == OperationKind::Rollback
            && op.detail.as_ref().and_then(super::rollback::phase_of).is_some_and(|p| {
                matches!(p, super::rollback::Phase::Swapping | super::rollback::Phase::Swapped)
            });
    if swapping {
        s.compose = s.services.clone();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{BackupKind, Catalog, NewBackup, StoppedService};
    use crate::engine::Engine;

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
        let (ctx, engine) = crate::engine::fake::fake_ctx(
            dir.path(),
            "services: {db: {image: x}, app: {image: y, depends_on: [db]}}\n",
            &[("db", true, &[]), ("app", true, &[]), ("cron", false, &[])],
        )
        .await;
        // A backup that stopped its services and then "died" (never restarted them).
        let id = pending(&ctx.catalog, &ctx.project.name).await;
        let temp = dir.path().join("partial.tmp");
        std::fs::write(&temp, b"half an archive").unwrap();
        let j = crate::flows::backup::Journal {
            backup_id: id,
            temp_path: temp.clone(),
            final_path: None,
            tagged: vec![],
            frozen: None,
        };
        let op = crate::runner::Operation::begin(&ctx, j).await.unwrap();
        let mut scope = ScopeJournal::default();
        for c in engine.project_containers("x").await.unwrap().iter().filter(|c| c.is_running()) {
            scope.stopped.push(StoppedService { service: c.service.clone(), id: c.id.clone() });
            scope.services.insert(c.service.clone());
            engine.stop(&c.id, 1).await.unwrap();
        }
        ctx.catalog.set_scope(op.id(), &scope).await.unwrap();
        drop(op);
        assert!(engine.running().is_empty());

        // And one whose process died before it journaled anything.
        let orphan = pending(&ctx.catalog, &ctx.project.name).await;
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
