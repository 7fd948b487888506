//! The way back of an upgrade: the rollback to its pre-upgrade backup, inside the upgrade's
//! scope when it fails, or as an operation of its own when recovery finds it dead.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};

use super::{Journal, Phase, record_end};
use crate::archive::Progress;
use crate::catalog::{BackupKind, UpgradeStatus};
use crate::flows::Ctx;
use crate::flows::backup::BackupOptions;
use crate::flows::rollback::{self, RollbackOptions};
use crate::runner::{Operation, Recovery, Scope};

/// Rolls back to the pre-upgrade backup (configs, data, images) with the rollback flow: inside
/// `scope` when given, else as an operation of its own (recovery). Returns the safety backup.
pub(super) async fn roll_back(
    ctx: &Ctx,
    op: &mut Operation<'_, Journal>,
    scope: Option<&mut Scope<'_>>,
    backup: &BackupOptions,
    backup_id: i64,
    j: &Journal,
    progress: Arc<dyn Progress>,
) -> Result<i64> {
    for f in &j.added {
        match std::fs::remove_file(f) {
            Ok(()) => tracing::warn!("removed {}, which the upgrade had added", f.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow::Error::new(e).context(format!("removing {}", f.display()))),
        }
    }
    // The files on disk are the new version's now: read the project as they describe it.
    let ctx = &ctx.rediscover()?;
    let ropts = RollbackOptions {
        id: backup_id,
        data: true,
        config: true,
        safety: BackupOptions { kind: BackupKind::PreRollback, ..backup.clone() },
        note: Some(format!(
            "the failed upgrade to {} as it stood (version {}), before rolling back to backup {backup_id}",
            j.to_version, j.to_version
        )),
        accept_live: true,
        keep_data: j.reload.clone(),
    };
    let plan = rollback::plan(ctx, &ropts).await?;
    let Some(scope) = scope else {
        let done = rollback::rollback(ctx, &ropts, plan, progress).await?;
        super::reload::remove_fresh(ctx.engine()?, j).await;
        return Ok(done.safety_backup_id);
    };
    if let Some(prefix) = &plan.load_images {
        rollback::load_images(ctx, &plan, prefix).await?;
    }
    let mut rop = Operation::begin(ctx, rollback::Journal::new(ctx, &plan)).await?;
    op.advance(|j| j.rollback_op = Some(rop.id())).await?;
    // Inside the upgrade's stop, the safety backup is made in one phase there.
    let safety = std::sync::Mutex::new(None);
    let restored = rollback::restore(&mut rop, scope, &ropts, &plan, None, &safety, progress.clone()).await;
    if restored.is_ok() {
        rollback::cleanup(&rop.journal).await;
    }
    rollback::close(&mut rop, &restored).await?;
    let safety = safety.into_inner().unwrap_or_else(|e| e.into_inner());
    restored?;
    let safety = safety.context("the rollback made no safety backup")?;
    let safety = safety.complete(ctx, progress).await?.id;
    super::reload::remove_fresh(ctx.engine()?, j).await;
    Ok(safety)
}

/// Recovery of an upgrade a dead nuwax (operation `op_id`) left: nothing to do before the
/// pre-upgrade backup was complete; after it, a rollback to that backup, unless the upgrade's
/// own rollback had got as far as its swap (then its recovery, which ran first, finished it).
pub async fn recover(ctx: &Ctx, j: &Journal) -> Result<Recovery> {
    if let Some(dir) = &j.unpacked {
        let _ = std::fs::remove_dir_all(dir);
    }
    let started = Instant::now();
    if let (Some(backup_id), Phase::Applied) = (j.backup_id, j.phase) {
        // The new version had passed its gate; only the pre-upgrade backup's archive was left
        // (its own recovery, which ran first, wrote it from the snapshot or gave it up).
        let written = ctx.catalog.get(backup_id).await?.is_some_and(|r| r.is_complete());
        let lost = (!written).then(|| format!("the pre-upgrade backup {backup_id} could not be finished"));
        record_end(ctx, j.upgrade_id, started, UpgradeStatus::Upgraded, lost.clone(), None, None).await?;
        return Ok(Recovery::note(match lost {
            None => format!(
                "the upgrade to {} had passed its health gate: it stays, its pre-upgrade backup {backup_id} is complete",
                j.to_version
            ),
            Some(lost) => format!(
                "the upgrade to {} had passed its health gate: it stays, but {lost}: run `nuwax backup`",
                j.to_version
            ),
        }));
    }
    let (Some(backup_id), Phase::Applying | Phase::RollingBack) = (j.backup_id, j.phase) else {
        let cause = Some("interrupted before anything changed".to_string());
        record_end(ctx, j.upgrade_id, started, UpgradeStatus::Failed, cause, None, None).await?;
        return Ok(Recovery::note(format!(
            "the upgrade to {} was interrupted before anything changed",
            j.to_version
        )));
    };
    let finished = match j.rollback_op {
        Some(id) => ctx
            .catalog
            .operation_detail(id)
            .await?
            .and_then(|d| rollback::phase_of(&d))
            .is_some_and(|p| matches!(p, rollback::Phase::Swapping | rollback::Phase::Swapped)),
        None => false,
    };
    let rolled = match finished {
        true => Ok(None),
        false => {
            let backup = BackupOptions::for_project(&ctx.project, BackupKind::PreRollback, None, None)?;
            let progress: Arc<dyn Progress> = Arc::new(crate::archive::NoProgress);
            let mut op = Operation::begin(ctx, j.clone()).await?;
            let r = roll_back(ctx, &mut op, None, &backup, backup_id, j, progress).await;
            op.close(Some("recovery")).await?;
            r.map(Some)
        }
    };
    match rolled {
        Ok(safety) => {
            let cause = Some("interrupted; rolled back by recovery".to_string());
            record_end(ctx, j.upgrade_id, started, UpgradeStatus::RolledBack, cause, None, safety).await?;
            let note = format!(
                "the upgrade to {} was interrupted: rolled back to backup {backup_id} (version {})",
                j.to_version, j.from_version
            );
            // A rollback of its own started the services; the upgrade's scope names the new ones.
            Ok(if finished { Recovery::note(note) } else { Recovery::services_handled(note) })
        }
        Err(err) => {
            let cause = Some(format!("interrupted; rollback failed: {err:#}"));
            record_end(ctx, j.upgrade_id, started, UpgradeStatus::RollbackFailed, cause, None, None).await?;
            Err(err.context(format!(
                "the upgrade to {} was interrupted and rolling it back failed; run `nuwax rollback {backup_id} --yes`",
                j.to_version
            )))
        }
    }
}
