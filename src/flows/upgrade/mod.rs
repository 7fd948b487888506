//! `nuwax upgrade --package P`: end healthy on the new version or, automatically, back on the
//! old one with its data, with one backup id tying the two together.
//!
//! plan (preflight) → load the package's images (services untouched) → the pre-upgrade
//! backup's copy into the snapshot (services running) → [stop] → the pre-upgrade backup frozen
//! (only what changed since copied; its id recorded at once) → apply (place files and `.env`,
//! compose creates the new version, before-start hooks, start, after-start hooks, health gate)
//! → on failure, the backup's archive written and the rollback to it inside the same scope →
//! [start] → the backup's archive written from the snapshot → record. A crash before the new
//! version passed its gate is rolled back by the next nuwax command (which first writes the
//! frozen backup's archive); one after it keeps the new version.

mod apply;
mod back;
mod health;
mod plan;
mod reload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::Ctx;
use super::backup::{self, BackupOptions, InScope, Prepared};
use crate::archive::Progress;
use crate::catalog::{BackupKind, NewUpgrade, UpgradeEnd, UpgradeStatus};
use crate::faults::{self, Sigint};
use crate::interrupt::Interrupt;
use crate::runner::{self, Operation, OperationKind, Scope};
pub use back::recover;
use back::roll_back;
pub use plan::{FileStep, ImageNeed, Plan, Reload, plan};

#[derive(Debug, Clone)]
pub struct UpgradeOptions {
    /// A directory, archive or URL.
    pub package: String,
    /// The published sha256 of the package file (`--sha256`).
    pub sha256: Option<String>,
    pub allow_downgrade: bool,
    /// `false` with `--no-auto-rollback`: a failed upgrade stays in place for inspection.
    pub auto_rollback: bool,
    /// Options of the pre-upgrade backup (and of the rollback's safety backup).
    pub backup: BackupOptions,
    /// How long the new version has to become healthy.
    pub health_timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpgradeOutcome {
    pub upgrade_id: i64,
    pub from_version: String,
    pub to_version: String,
    pub backup_id: i64,
    /// The pre-upgrade backup's copy while the services ran (its archive was written after the
    /// new version started); `null` when it was made in one phase inside the stop.
    pub backup_precopy_ms: Option<u64>,
    /// Why the pre-upgrade backup was made in one phase inside the stop, when it was.
    pub backup_single_phase: Option<String>,
    pub status: &'static str,
    pub hooks_run: Vec<String>,
    /// Services of the new version running and healthy.
    pub services: Vec<String>,
    /// Services of the new version created but left stopped, as they were before.
    pub left_stopped: Vec<String>,
    pub duration_ms: u64,
    pub downtime_ms: Option<u64>,
    /// Databases loaded into their new servers from the pre-upgrade backup's dumps (that
    /// backup was then sealed inside the stop); their old data is kept as it was.
    pub reloaded: Vec<Reload>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The pre-upgrade backup: nothing changed yet.
    #[default]
    Backup,
    /// The new version is being placed and started: recovery rolls back.
    Applying,
    /// The new version passed its health gate; the pre-upgrade backup's archive is being
    /// written: recovery keeps the new version.
    Applied,
    /// Rolling back to the pre-upgrade backup: recovery finishes that.
    RollingBack,
}

/// The journal of a running upgrade: what recovery needs to roll it back after a crash.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Journal {
    pub phase: Phase,
    pub upgrade_id: i64,
    pub backup_id: Option<i64>,
    pub from_version: String,
    pub to_version: String,
    /// Files the package adds (they did not exist before): a rollback removes them, since the
    /// backup cannot say they were absent.
    #[serde(default)]
    pub added: Vec<PathBuf>,
    /// The package's unpacked copy (`.nuwax-pkg-*`), removed by recovery.
    #[serde(default)]
    pub unpacked: Option<PathBuf>,
    /// The operation of the rollback this upgrade runs (phase `rolling_back`).
    #[serde(default)]
    pub rollback_op: Option<i64>,
    /// Database services the new version reloads from the pre-upgrade backup's dumps: their old
    /// data stays as it is, and a rollback keeps it.
    #[serde(default)]
    pub reload: Vec<String>,
    /// Volumes the new version's reloaded servers got, created by this upgrade: a rollback
    /// removes them.
    #[serde(default)]
    pub fresh_volumes: Vec<String>,
}

impl runner::Journal for Journal {
    const KIND: OperationKind = OperationKind::Upgrade;
}

/// How the work inside the scope ended.
enum Ended {
    Upgraded { backup_id: i64, hooks_run: Vec<String>, services: Vec<String>, left_stopped: Vec<String> },
    LeftInPlace { backup_id: i64, cause: String },
    RolledBack { backup_id: i64, cause: String, safety: i64 },
    RollbackFailed { backup_id: i64, cause: String, error: String },
}

pub async fn upgrade(
    ctx: &Ctx,
    opts: &UpgradeOptions,
    plan: Plan,
    progress: Arc<dyn Progress>,
) -> Result<UpgradeOutcome> {
    let started = Instant::now();
    let engine = ctx.engine()?;
    let project = &ctx.project;
    let upgrade_id = ctx
        .catalog
        .begin_upgrade(&NewUpgrade {
            project: &project.name,
            package_name: &plan.package_name,
            package_source: &plan.package_source,
            package_sha256: plan.package_sha256.as_deref(),
            from_version: &plan.from_version,
            to_version: &plan.to_version,
        })
        .await?;
    let end = |status, cause: Option<String>, downtime: Option<u64>, safety: Option<i64>| {
        record_end(ctx, upgrade_id, started, status, cause, downtime, safety)
    };

    let journal = Journal {
        phase: Phase::Backup,
        upgrade_id,
        backup_id: None,
        from_version: plan.from_version.clone(),
        to_version: plan.to_version.clone(),
        added: plan.files.iter().filter(|f| f.action == "add").map(|f| f.dest.clone()).collect(),
        unpacked: plan.package.unpacked().map(PathBuf::from),
        rollback_op: None,
        reload: plan.reload.iter().map(|r| r.service.clone()).collect(),
        fresh_volumes: plan.reload.iter().flat_map(|r| r.fresh_volumes.iter().cloned()).collect(),
    };
    let mut op = Operation::begin(ctx, journal).await?;
    // Images first: loading them does not touch the running services.
    for a in plan.package.image_archives() {
        if let Err(e) = engine.load_images(&a).await {
            let cause = format!("image archive {} failed to load: {e}", a.display());
            end(UpgradeStatus::Failed, Some(cause.clone()), None, None).await?;
            op.close(Some("failed before any change")).await?;
            bail!("{cause}; nothing was changed, services untouched");
        }
    }
    let containers = engine.project_containers(&project.name).await?;
    let o = BackupOptions {
        kind: BackupKind::PreUpgrade,
        note: Some(format!("before upgrade to {} {}", plan.package_name, plan.to_version)),
        ..opts.backup.clone()
    };
    // While the services run: the pre-upgrade backup's copy into the snapshot. Servers the new
    // version reloads keep running into the stop, to be dumped there.
    let reloaded = op.journal.reload.clone();
    let prepared = match backup::prepare(ctx, &o, &containers, None, Some(plan.backup_bytes), &reloaded).await
    {
        Ok(p) => p,
        Err(e) => {
            end(UpgradeStatus::Failed, Some(format!("the pre-upgrade backup failed: {e:#}")), None, None)
                .await?;
            op.close(Some("failed before any change")).await?;
            return Err(e.context("the pre-upgrade backup failed; nothing was changed, services untouched"));
        }
    };
    faults::pause(faults::Pause::UpgradeBeforeStop).await;
    let (plan_ref, o_ref) = (&plan, &o);
    let held = std::sync::Mutex::new(None);
    let held_ref = &held;
    let after = progress.clone();
    let to_stop: Vec<_> = containers.iter().filter(|c| !reloaded.contains(&c.service)).cloned().collect();
    let (ended, started_again) = op
        .with_stopped_apart(&to_stop, |op, scope| {
            Box::pin(async move {
                let id = pre_upgrade_backup(op, scope, o_ref, prepared, held_ref, progress.clone()).await?;
                Ok(apply_or_roll_back(op, scope, opts, plan_ref, id, held_ref, progress).await)
            })
        })
        .await;
    let downtime = op.scope().and_then(|s| s.downtime_ms);
    // With the services running again: the pre-upgrade backup's archive, from the snapshot,
    // finished whatever signal comes once the upgrade changed anything (it is the way back).
    let calm = Ctx { interrupt: Interrupt::none(), ..ctx.clone() };
    let held = held.lock().unwrap_or_else(|e| e.into_inner()).take();
    if held.is_some() {
        faults::pause(faults::Pause::UpgradeBackupArchive).await;
    }
    let (made, unwritten) = match held {
        Some(h) => match h.complete(if ended.is_ok() { &calm } else { ctx }, after).await {
            Ok(b) => (Some(b), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        },
        None => (None, None),
    };
    let ended = match ended {
        Ok(e) => e,
        Err(e) => {
            // The stop or the pre-upgrade backup failed: nothing changed.
            let e = match started_again {
                Ok(()) => e,
                Err(s) => s.context(format!("{e:#}; and then starting the services again failed")),
            };
            end(UpgradeStatus::Failed, Some(format!("the pre-upgrade backup failed: {e:#}")), downtime, None)
                .await?;
            op.close(Some("failed before any change")).await?;
            return Err(e.context("the pre-upgrade backup failed; nothing was changed"));
        }
    };
    op.close(None).await?;
    // Services the end of the scope could not bring back, said with the outcome.
    let down = started_again.err().map(|e| format!("; but services did not all come back: {e:#}"));
    let upgrade = Recorded { ctx, upgrade_id, started, downtime, from: plan.from_version.clone() };
    let mut outcome = upgrade.conclude(ended, down, unwritten, plan.to_version.clone()).await?;
    if let Some(b) = made {
        outcome.backup_precopy_ms = b.precopy_ms;
        outcome.backup_single_phase = b.single_phase;
    }
    outcome.reloaded = plan.reload.clone();
    Ok(outcome)
}

/// An upgrade's row, for recording how it ended.
struct Recorded<'a> {
    ctx: &'a Ctx,
    upgrade_id: i64,
    started: Instant,
    downtime: Option<u64>,
    from: String,
}

impl Recorded<'_> {
    async fn end(&self, status: UpgradeStatus, cause: Option<String>, safety: Option<i64>) -> Result<()> {
        record_end(self.ctx, self.upgrade_id, self.started, status, cause, self.downtime, safety).await
    }

    /// Records how the upgrade ended and turns it into the command's outcome.
    /// `unwritten`: why the pre-upgrade backup's archive could not be written after the stop.
    async fn conclude(
        &self,
        ended: Ended,
        down: Option<String>,
        unwritten: Option<String>,
        to: String,
    ) -> Result<UpgradeOutcome> {
        match ended {
            Ended::Upgraded { backup_id, hooks_run, services, left_stopped } => {
                let lost = unwritten
                    .map(|e| format!("the pre-upgrade backup {backup_id} could not be written: {e}"));
                self.end(UpgradeStatus::Upgraded, lost.clone(), None).await?;
                if let Some(down) = down {
                    bail!(crate::Error::ServicesDown { detail: format!("upgraded to {to}{down}") });
                }
                if let Some(lost) = lost {
                    bail!(
                        "upgraded to {to} and the new version runs, but {lost}; there is no backup of version {} \
                         from this upgrade: run `nuwax backup` now",
                        self.from
                    );
                }
                Ok(UpgradeOutcome {
                    upgrade_id: self.upgrade_id,
                    from_version: self.from.clone(),
                    to_version: to,
                    backup_id,
                    backup_precopy_ms: None,
                    backup_single_phase: None,
                    status: "upgraded",
                    hooks_run,
                    services,
                    left_stopped,
                    duration_ms: self.started.elapsed().as_millis() as u64,
                    downtime_ms: self.downtime,
                    reloaded: Vec::new(),
                })
            }
            Ended::LeftInPlace { backup_id, cause } => {
                self.end(UpgradeStatus::Failed, Some(cause.clone()), None).await?;
                let back = match unwritten {
                    None => format!("go back with `nuwax rollback {backup_id}` (the pre-upgrade backup)"),
                    Some(e) => format!("and the pre-upgrade backup {backup_id} could not be written ({e})"),
                };
                bail!(crate::Error::UpgradeNotRolledBack {
                    to,
                    cause,
                    state: format!(
                        "--no-auto-rollback left it in place for inspection, services as the failure left them{}; {back}",
                        down.unwrap_or_default()
                    ),
                })
            }
            Ended::RolledBack { backup_id, cause, safety } if down.is_none() => {
                // Down from the first stop until the old version was healthy again.
                self.end(UpgradeStatus::RolledBack, Some(cause.clone()), Some(safety)).await?;
                bail!(crate::Error::UpgradeRolledBack {
                    to,
                    cause,
                    backup_id,
                    state: format!("version {} is running again with its data", self.from),
                })
            }
            Ended::RolledBack { backup_id, cause, .. } => {
                let error = format!("the data of backup {backup_id} is back{}", down.unwrap_or_default());
                self.rollback_failed(to, backup_id, cause, error).await
            }
            Ended::RollbackFailed { backup_id, cause, error } => {
                let error = format!("{error}{}", down.unwrap_or_default());
                self.rollback_failed(to, backup_id, cause, error).await
            }
        }
    }

    async fn rollback_failed<T>(
        &self,
        to: String,
        backup_id: i64,
        cause: String,
        error: String,
    ) -> Result<T> {
        let all = format!("{cause}; rollback: {error}");
        self.end(UpgradeStatus::RollbackFailed, Some(all), None).await?;
        bail!(crate::Error::UpgradeNotRolledBack {
            to,
            cause,
            state: format!(
                "the automatic rollback failed too: {error}. The pre-upgrade backup {backup_id} holds version {}: \
                 run `nuwax rollback {backup_id} --yes`, then `nuwax status`",
                self.from
            ),
        })
    }
}

/// The pre-upgrade backup, under the upgrade's stop: frozen in the snapshot (or, in one phase,
/// written and sealed) and its id recorded at once. A frozen one waits in `held` for its archive.
async fn pre_upgrade_backup<'c>(
    op: &mut Operation<'c, Journal>,
    scope: &Scope<'_>,
    o: &BackupOptions,
    prepared: Prepared,
    held: &std::sync::Mutex<Option<InScope<'c>>>,
    progress: Arc<dyn Progress>,
) -> Result<i64> {
    let ctx = op.ctx();
    ctx.interrupt.check()?;
    let made = prepared.freeze(ctx, o, scope, progress).await?;
    let id = made.id();
    match made.archive() {
        Some(path) => tracing::warn!("pre-upgrade backup {id} made: {}", path.display()),
        None => tracing::warn!(
            "pre-upgrade backup {id} frozen in the snapshot; its archive is written after the start"
        ),
    }
    *held.lock().unwrap_or_else(|e| e.into_inner()) = Some(made);
    ctx.catalog.set_upgrade_backup(op.journal.upgrade_id, id).await?;
    op.advance(|j| {
        j.backup_id = Some(id);
        j.phase = Phase::Applying;
    })
    .await?;
    Ok(id)
}

/// Applies the new version; on failure writes the pre-upgrade backup's archive (when `held`
/// still has it) and rolls back to it in the same scope (unless `--no-auto-rollback`).
async fn apply_or_roll_back<'c>(
    op: &mut Operation<'c, Journal>,
    scope: &mut Scope<'_>,
    opts: &UpgradeOptions,
    plan: &Plan,
    backup_id: i64,
    held: &std::sync::Mutex<Option<InScope<'c>>>,
    progress: Arc<dyn Progress>,
) -> Ended {
    let ctx = op.ctx();
    let mut hooks_run = Vec::new();
    let applied = match reload::source(held, &plan.reload) {
        Ok(from) => apply::apply(op, scope, opts, plan, from.as_ref(), &mut hooks_run).await,
        Err(e) => Err(e),
    };
    let cause = match applied {
        Ok(left_stopped) => {
            // Gated: from here a crash keeps the new version.
            if let Err(e) = op.advance(|j| j.phase = Phase::Applied).await {
                tracing::warn!("journaling the upgrade as applied: {e:#}");
            }
            let services = scope.services().iter().cloned().collect();
            return Ended::Upgraded { backup_id, hooks_run, services, left_stopped };
        }
        Err(e) => format!("{e:#}"),
    };
    tracing::error!("upgrade to {} failed: {cause}", plan.to_version);
    if !opts.auto_rollback {
        return Ended::LeftInPlace { backup_id, cause };
    }
    if let Err(e) = op.advance(|j| j.phase = Phase::RollingBack).await {
        return Ended::RollbackFailed { backup_id, cause, error: format!("{e:#}") };
    }
    faults::sigint(Sigint::UpgradeRollingBack);
    // The way back is the safe path: a signal (the one that stopped the upgrade, or a later one)
    // does not stop it.
    let calm = Ctx { interrupt: Interrupt::none(), ..ctx.clone() };
    let frozen = held.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(h) = frozen
        && let Err(e) = h.complete(&calm, progress.clone()).await
    {
        let error = format!("the pre-upgrade backup {backup_id} could not be written: {e:#}");
        return Ended::RollbackFailed { backup_id, cause, error };
    }
    match roll_back(&calm, op, Some(scope), &opts.backup, backup_id, &op.journal.clone(), progress).await {
        Ok(safety) => Ended::RolledBack { backup_id, cause, safety },
        Err(e) => Ended::RollbackFailed { backup_id, cause, error: format!("{e:#}") },
    }
}

async fn record_end(
    ctx: &Ctx,
    upgrade_id: i64,
    started: Instant,
    status: UpgradeStatus,
    cause: Option<String>,
    downtime_ms: Option<u64>,
    safety: Option<i64>,
) -> Result<()> {
    let e = UpgradeEnd {
        status,
        cause: cause.as_deref(),
        duration_ms: started.elapsed().as_millis() as u64,
        downtime_ms,
        rollback_safety_backup_id: safety,
    };
    ctx.catalog.finish_upgrade(upgrade_id, &e).await.context("recording the upgrade's end")
}
