//! `nuwax upgrade --package P`: end healthy on the new version or, automatically, back on the
//! old one with its data, with one backup id tying the two together.
//!
//! preflight (plan) → load the package's images (services untouched) → journal + stop →
//! pre-upgrade backup (its id recorded at once) → place files and `.env` → compose `up -d` →
//! hooks → health gate → record. A failure after the stop rolls back to that backup with the
//! rollback flow; a crash is rolled back by the next nuwax command.

mod health;
mod plan;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::Ctx;
use super::backup::{BackupOptions, backup};
use super::compose::{Up, run_up};
use super::rollback::{self, RollbackOptions};
use crate::archive::Progress;
use crate::catalog::{BackupKind, NewUpgrade, OperationState, UpgradeEnd, UpgradeStatus};
use crate::guard::ServiceGuard;
pub use plan::{FileStep, ImageNeed, Plan, plan};

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
    pub status: &'static str,
    pub hooks_run: Vec<String>,
    pub services: Vec<String>,
    pub duration_ms: u64,
    pub downtime_ms: Option<u64>,
}

/// The journal of a running upgrade: what recovery needs to roll it back after a crash.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Journal {
    /// `backup` (nothing changed yet), `applying`, `rolling_back`.
    phase: String,
    upgrade_id: i64,
    backup_id: Option<i64>,
    from_version: String,
    to_version: String,
    /// Files the package adds (they did not exist before): a rollback removes them, since the
    /// backup cannot say they were absent.
    #[serde(default)]
    added: Vec<std::path::PathBuf>,
}

pub async fn upgrade(
    ctx: &Ctx,
    opts: &UpgradeOptions,
    plan: Plan,
    progress: Arc<dyn Progress>,
) -> Result<UpgradeOutcome> {
    let started = Instant::now();
    let engine = ctx.engine.clone().context("upgrade needs the Docker engine")?;
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

    // 1. Images first: loading them does not touch the running services.
    for a in plan.package.image_archives() {
        if let Err(e) = engine.load_images(&a).await {
            let cause = format!("image archive {} failed to load: {e}", a.display());
            end(UpgradeStatus::Failed, Some(cause.clone()), None, None).await?;
            bail!("{cause}; nothing was changed, services untouched");
        }
    }

    // 2. Journal, stop, pre-upgrade backup under the same stop.
    let mut journal = Journal {
        phase: "backup".into(),
        upgrade_id,
        backup_id: None,
        from_version: plan.from_version.clone(),
        to_version: plan.to_version.clone(),
        added: plan.files.iter().filter(|f| f.action == "add").map(|f| f.dest.clone()).collect(),
    };
    let op = ctx.catalog.begin_operation("upgrade", &project.name, None, None).await?;
    ctx.catalog.set_detail(op, &serde_json::to_value(&journal)?).await?;
    let containers = engine.project_containers(&project.name).await?;
    let mut guard = ServiceGuard::new(engine.clone(), project.dependencies(), ctx.timeouts());
    let made = async {
        guard.stop(&ctx.catalog, op, &containers).await?;
        ctx.interrupt.check()?;
        let o = BackupOptions {
            kind: BackupKind::PreUpgrade,
            note: Some(format!("before upgrade to {} {}", plan.package_name, plan.to_version)),
            stopped_by_caller: Some(containers.clone()),
            ..opts.backup.clone()
        };
        backup(ctx, &o, progress.clone()).await
    }
    .await;
    let made = match made {
        Ok(m) => m,
        Err(e) => {
            let restart = guard.restart().await;
            let cause = format!("the pre-upgrade backup failed: {e:#}");
            end(UpgradeStatus::Failed, Some(cause), None, None).await?;
            if restart.is_ok() {
                ctx.catalog
                    .finish_operation(op, OperationState::Done, Some("failed before any change"))
                    .await?;
            }
            return Err(e.context("the pre-upgrade backup failed; nothing was changed"));
        }
    };
    let backup_id = made.id;
    ctx.catalog.set_upgrade_backup(upgrade_id, backup_id).await?;
    journal.backup_id = Some(backup_id);
    journal.phase = "applying".into();
    ctx.catalog.set_detail(op, &serde_json::to_value(&journal)?).await?;
    tracing::warn!("pre-upgrade backup {backup_id} made: {}", made.path.display());

    // 3–4. Apply, hooks, health gate.
    let mut hooks_run = Vec::new();
    let applied = apply(ctx, opts, &plan, &mut guard, &mut hooks_run).await;
    let downtime = guard.elapsed_ms();
    let cause = match applied {
        Ok(()) => {
            ctx.catalog
                .set_version(&project.name, &plan.to_version, &format!("upgrade {upgrade_id}"))
                .await?;
            end(UpgradeStatus::Upgraded, None, downtime, None).await?;
            ctx.catalog.finish_operation(op, OperationState::Done, None).await?;
            return Ok(UpgradeOutcome {
                upgrade_id,
                from_version: plan.from_version,
                to_version: plan.to_version,
                backup_id,
                status: "upgraded",
                hooks_run,
                services: plan.services,
                duration_ms: started.elapsed().as_millis() as u64,
                downtime_ms: downtime,
            });
        }
        Err(e) => format!("{e:#}"),
    };
    tracing::error!("upgrade to {} failed: {cause}", plan.to_version);

    // 5. Failure after the stop.
    if !opts.auto_rollback {
        // Failed before compose took the services over: the old ones start again as they were.
        if !guard.stopped().is_empty()
            && let Err(e) = guard.restart().await
        {
            tracing::error!("starting the services again: {e:#}");
        }
        end(UpgradeStatus::Failed, Some(cause.clone()), downtime, None).await?;
        ctx.catalog.finish_operation(op, OperationState::Done, Some("failed, left in place")).await?;
        bail!(crate::Error::UpgradeNotRolledBack {
            to: plan.to_version,
            cause,
            state: format!(
                "--no-auto-rollback left it in place for inspection, services as the failure left them; \
                 go back with `nuwax rollback {backup_id}` (the pre-upgrade backup)"
            ),
        });
    }
    // A signal that stopped the upgrade must not stop the rollback it calls for.
    ctx.interrupt.reset();
    journal.phase = "rolling_back".into();
    ctx.catalog.set_detail(op, &serde_json::to_value(&journal)?).await?;
    match roll_back(ctx, &opts.backup, backup_id, &journal.added, &plan.from_version, progress).await {
        Ok(safety) => {
            // Down from the first stop until the old version was healthy again.
            end(UpgradeStatus::RolledBack, Some(cause.clone()), guard.elapsed_ms(), Some(safety)).await?;
            ctx.catalog.finish_operation(op, OperationState::Done, Some("rolled back")).await?;
            bail!(crate::Error::UpgradeRolledBack {
                to: plan.to_version,
                cause,
                backup_id,
                state: format!("version {} is running again with its data", plan.from_version),
            })
        }
        Err(e) => {
            end(UpgradeStatus::RollbackFailed, Some(format!("{cause}; rollback: {e:#}")), downtime, None)
                .await?;
            ctx.catalog.finish_operation(op, OperationState::Done, Some("rollback failed")).await?;
            bail!(crate::Error::UpgradeNotRolledBack {
                to: plan.to_version,
                cause,
                state: format!(
                    "the automatic rollback failed too: {e:#}. The pre-upgrade backup {backup_id} holds version {}: \
                     run `nuwax rollback {backup_id} --yes`, then `nuwax status`",
                    plan.from_version
                ),
            })
        }
    }
}

/// Places the new files and `.env`, lets compose create the new version, runs the hooks and
/// waits for the health gate.
async fn apply(
    ctx: &Ctx,
    opts: &UpgradeOptions,
    plan: &Plan,
    guard: &mut ServiceGuard,
    hooks_run: &mut Vec<String>,
) -> Result<()> {
    let project = &ctx.project;
    ctx.interrupt.check()?;
    for f in plan.files.iter().filter(|f| f.action != "unchanged") {
        place(&f.src, &f.dest)?;
    }
    if let Some(changes) = &plan.env {
        let path = project.dir.join(&changes.file);
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        write_atomically(&path, crate::package::apply_env(&old, changes).as_bytes())?;
    }
    ctx.interrupt.check()?;
    // The new compose files and env, as compose will read them.
    let new_ctx = ctx.rediscover()?;
    // Compose takes over the services from here: it creates them from the new files.
    guard.disarm();
    run_up(&new_ctx, Up::AllRemoveOrphans, &[]).await.context("starting the new version")?;
    let engine = ctx.engine.as_ref().context("no engine")?;
    for h in &plan.hooks {
        // The hook's service must be up (and healthy) first; the gate fails fast if it is not.
        let service = std::slice::from_ref(&h.service);
        health::gate(&**engine, &project.name, service, &[], opts.health_timeout, &ctx.interrupt)
            .await
            .with_context(|| format!("before hook {:?}", h.name))?;
        let c = engine
            .project_containers(&project.name)
            .await?
            .into_iter()
            .find(|c| c.service == h.service && c.is_running())
            .with_context(|| format!("hook {:?}: service {} is not running", h.name, h.service))?;
        let run = tokio::time::timeout(
            Duration::from_secs(h.timeout),
            engine.exec(&c.id, &h.command, h.user.as_deref()),
        );
        // A signal does not wait for the hook: the rollback stops its container anyway.
        let interrupted = async {
            while ctx.interrupt.check().is_ok() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        let out = tokio::select! {
            r = run => r.map_err(|_| anyhow::anyhow!("hook {:?} did not finish within {} s", h.name, h.timeout))??,
            () = interrupted => ctx.interrupt.check().map(|_| unreachable!())?,
        };
        if out.exit_code != 0 {
            bail!("hook {:?} failed with exit code {}: {}", h.name, out.exit_code, out.output.trim());
        }
        hooks_run.push(h.name.clone());
    }
    health::gate(&**engine, &project.name, &plan.services, &plan.probes, opts.health_timeout, &ctx.interrupt)
        .await
        .context("health gate")
}

/// Rolls back to the pre-upgrade backup (configs, data, images) with the rollback flow and
/// records the version again. Returns the rollback's safety backup id.
async fn roll_back(
    ctx: &Ctx,
    backup: &BackupOptions,
    backup_id: i64,
    added: &[std::path::PathBuf],
    from_version: &str,
    progress: Arc<dyn Progress>,
) -> Result<i64> {
    for f in added {
        match std::fs::remove_file(f) {
            Ok(()) => tracing::warn!("removed {}, which the upgrade had added", f.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow::Error::new(e).context(format!("removing {}", f.display()))),
        }
    }
    // The files on disk are the new version's now: read the project as they describe it.
    let ctx = ctx.rediscover()?;
    let ropts = RollbackOptions {
        id: backup_id,
        data: true,
        config: true,
        safety: BackupOptions { kind: BackupKind::PreRollback, ..backup.clone() },
    };
    let plan = rollback::plan(&ctx, &ropts).await?;
    let done = rollback::rollback(&ctx, &ropts, plan, progress).await?;
    ctx.catalog
        .set_version(&ctx.project.name, from_version, &format!("rollback to backup {backup_id}"))
        .await?;
    Ok(done.safety_backup_id)
}

/// Recovery of an upgrade a dead nuwax left: nothing to do before the pre-upgrade backup was
/// complete (the caller starts the stopped services); after it, a rollback to that backup.
pub async fn recover(ctx: &Ctx, detail: &serde_json::Value) -> Result<String> {
    let j: Journal = serde_json::from_value(detail.clone()).unwrap_or_default();
    let started = Instant::now();
    let (Some(backup_id), "applying" | "rolling_back") = (j.backup_id, j.phase.as_str()) else {
        let cause = Some("interrupted before anything changed".to_string());
        record_end(ctx, j.upgrade_id, started, UpgradeStatus::Failed, cause, None, None).await?;
        return Ok(format!("the upgrade to {} was interrupted before anything changed", j.to_version));
    };
    let backup = BackupOptions::for_project(&ctx.project, BackupKind::PreRollback, None, None)?;
    let progress: Arc<dyn Progress> = Arc::new(crate::archive::NoProgress);
    match roll_back(ctx, &backup, backup_id, &j.added, &j.from_version, progress).await {
        Ok(safety) => {
            let cause = Some("interrupted; rolled back by recovery".to_string());
            record_end(ctx, j.upgrade_id, started, UpgradeStatus::RolledBack, cause, None, Some(safety))
                .await?;
            Ok(format!(
                "the upgrade to {} was interrupted: rolled back to backup {backup_id} (version {})",
                j.to_version, j.from_version
            ))
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
    ctx.catalog.finish_upgrade(upgrade_id, &e).await
}

/// Copies `src` over `dest` through a temp file beside it and a rename: `dest` is the old or
/// the new file, never half of one.
fn place(src: &std::path::Path, dest: &std::path::Path) -> Result<()> {
    let bytes = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
    write_atomically(dest, &bytes)?;
    if let Ok(m) = std::fs::metadata(src) {
        let _ = std::fs::set_permissions(dest, m.permissions());
    }
    Ok(())
}

fn write_atomically(dest: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = dest.parent().context("a file without a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".nuwax-new-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temp file in {}", dir.display()))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(dest).map_err(|e| e.error).with_context(|| format!("replacing {}", dest.display()))?;
    let _ = crate::fsutil::fsync_dir(dir);
    Ok(())
}
