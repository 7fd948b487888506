//! The rollback's steps, each a function of what it needs: inside a stop scope [`restore`]
//! runs safety backup → stage → swap → create; a failed swap is undone.

use std::collections::BTreeSet;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::{Journal, Phase, Plan, Restored, RollbackOptions, engine, swap};
use crate::archive::{self, NoProgress, Progress, Target};
use crate::catalog::BackupKind;
use crate::engine::compose::Up;
use crate::engine::{Container, ImageRef};
use crate::faults::{self, Crash, Fail, Sigint};
use crate::flows::Ctx;
use crate::flows::backup::{BackupOptions, InScope, Prepared, prepare};
use crate::runner::{Operation, Scope};

/// The rollback inside a stop scope, whoever owns it. Whatever runs now is stopped too (in a
/// nested rollback, what the failed upgrade started). The safety backup goes into `safety`
/// (from `prepared`, copied before the stop, when given): its archive may still have to be
/// written once the services run again, whatever the rollback's outcome.
pub async fn restore<'c>(
    op: &mut Operation<'c, Journal>,
    scope: &mut Scope<'_>,
    opts: &RollbackOptions,
    plan: &Plan,
    prepared: Option<Prepared>,
    safety: &Mutex<Option<InScope<'c>>>,
    progress: Arc<dyn Progress>,
) -> Result<Restored> {
    let ctx = op.ctx();
    scope.stop(&ctx.engine()?.project_containers(&ctx.project.name).await?).await?;
    let ready = async {
        ctx.interrupt.check()?;
        let made = safety_backup(ctx, scope, opts, plan, prepared, progress.clone()).await?;
        let id = made.id();
        *safety.lock().unwrap_or_else(|e| e.into_inner()) = Some(made);
        op.advance(|j| j.safety_backup_id = Some(id)).await?;
        ctx.interrupt.check()?;
        if !op.journal.staged {
            stage(ctx, opts, plan, &op.journal, progress).await?;
            ctx.interrupt.check()?;
        }
        anyhow::Ok(id)
    }
    .await;
    let safety_id = match ready {
        Ok(id) => id,
        Err(e) => {
            // Nothing was replaced: only the staging goes.
            if let Err(u) = unstage(&op.journal).await {
                return Err(e.context(format!("and clearing the staging failed ({u:#})")));
            }
            return Err(e);
        }
    };
    let before = scope.services().clone();
    if !plan.loads.is_empty() {
        // Set back if loading the dumps fails and the swap is undone.
        let version = ctx.current_version().await?;
        op.advance(|j| j.version_before = version).await?;
    }
    let mut progress = SwapProgress::default();
    // The safety archive, when it was written inside the stop: what engine volumes are put
    // back from.
    let safety_archive = || {
        safety
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|s| s.archive().map(Path::to_path_buf))
    };
    if let Err(e) = swap_in(op, scope, &mut progress).await {
        let archive = safety_archive();
        return Err(match undo_failed(op, scope, before, &progress, archive.as_deref()).await {
            Ok(()) => e,
            Err(u) => e.context(format!(
                "putting the previous state back failed ({u:#}); restore it with `nuwax rollback {safety_id}` (the safety backup)"
            )),
        });
    }
    // From here on, forward only (but for the dumps' load). The old versions go once the
    // services run ([`cleanup`]).
    create(ctx, &op.journal).await?;
    if !plan.loads.is_empty()
        && let Err(e) = super::load::load(op, scope, plan).await
    {
        let archive = safety_archive();
        return Err(match undo_failed(op, scope, before, &progress, archive.as_deref()).await {
            Ok(()) => e.context("loading the backup's database dumps failed, so the rollback was undone"),
            Err(u) => e.context(format!(
                "loading the backup's database dumps failed, and putting the previous state back \
                 failed ({u:#}); restore it with `nuwax rollback {safety_id}` (the safety backup)"
            )),
        });
    }
    Ok(Restored { services: scope.services().iter().cloned().collect() })
}

/// A backup of the current state under the scope's stop, so the rollback can be rolled back.
/// Volumes restored through the engine are put back from its archive when the swap fails, so
/// then it is written inside the stop.
async fn safety_backup<'c>(
    ctx: &'c Ctx,
    scope: &Scope<'_>,
    opts: &RollbackOptions,
    plan: &Plan,
    prepared: Option<Prepared>,
    progress: Arc<dyn Progress>,
) -> Result<InScope<'c>> {
    let o = safety_options(opts, plan);
    let prepared = match prepared {
        Some(p) => p,
        None => {
            let containers = ctx.engine()?.project_containers(&ctx.project.name).await?;
            prepare(ctx, &o, &containers, Some("made inside the rollback's stop"), None, &[]).await?
        }
    };
    let made = prepared
        .freeze(ctx, &o, scope, progress)
        .await
        .context("the safety backup failed; nothing was changed")?;
    match made.archive() {
        Some(path) => tracing::warn!("safety backup {} made: {}", made.id(), path.display()),
        None => tracing::info!(
            "safety backup {}: copied, its archive is written once the services run",
            made.id()
        ),
    }
    Ok(made)
}

/// The safety backup's options: the rollback's, with a note naming it.
pub(super) fn safety_options(opts: &RollbackOptions, plan: &Plan) -> BackupOptions {
    let note = match opts.note.clone() {
        Some(n) => n,
        None => format!("the state before the rollback to backup {}", plan.backup_id),
    };
    BackupOptions { kind: BackupKind::PreRollback, note: Some(note), ..opts.safety.clone() }
}

/// Before the stop: the safety backup's copy while the services run, where its archive can wait
/// for the start (no volume is restored through the engine, whose undo needs it).
pub(super) async fn prepare_safety(
    ctx: &Ctx,
    opts: &RollbackOptions,
    plan: &Plan,
    journal: &Journal,
) -> Result<Prepared> {
    let one_phase = (!journal.engine.is_empty())
        .then_some("volumes restored through the engine are put back from its archive if the swap fails");
    prepare(ctx, &safety_options(opts, plan), &plan.containers, one_phase, Some(plan.safety_bytes), &[]).await
}

/// How far a swap got, for the way back.
#[derive(Default)]
struct SwapProgress {
    engine_touched: usize,
    retagged: usize,
    /// Containers removed to recreate a volume through the engine.
    removed: Vec<Container>,
}

/// Replaces every target, then points the image references back. Journaled first, together
/// with what the end of the scope must do: the services whose configs, image or volume change
/// come back through compose, and with the backup's configs the services are the backup's.
async fn swap_in(
    op: &mut Operation<'_, Journal>,
    scope: &mut Scope<'_>,
    progress: &mut SwapProgress,
) -> Result<()> {
    let ctx = op.ctx();
    let engine = ctx.engine()?;
    if op.journal.runs_as_backup() {
        scope.set_services(op.journal.backup_running.iter().cloned().collect()).await?;
    }
    scope.via_compose(op.journal.recreate.clone()).await?;
    op.advance(|j| j.phase = Phase::Swapping).await?;
    // The old versions stay beside their targets until the end, so a failure can put them back.
    let s = op.journal.slots.clone();
    tokio::task::spawn_blocking(move || swap::swap_in(&s)).await??;
    for s in &op.journal.engine {
        progress.engine_touched += 1;
        engine::replace(engine, &ctx.project.name, s, &s.tar, &mut progress.removed).await?;
        let _ = std::fs::remove_file(&s.tar);
    }
    for i in &op.journal.retag {
        let r = ImageRef::parse(&i.image);
        engine.tag_image(&i.image_id, r.repository(), r.tag()).await?;
        progress.retagged += 1;
    }
    faults::fail(Fail::RollbackAfterSwap)?;
    op.advance(|j| j.phase = Phase::Swapped).await?;
    set_version(ctx, &op.journal).await?;
    faults::crash(Crash::RollbackAfterSwap);
    faults::sigint(Sigint::RollbackAfterSwap);
    Ok(())
}

/// The configs are the backup's again, and so is the version.
async fn set_version(ctx: &Ctx, j: &Journal) -> Result<()> {
    if let Some(v) = &j.version {
        let reason = format!("rollback to backup {}", j.backup_id);
        ctx.catalog.set_version(&ctx.project.name, v, &reason).await?;
    }
    Ok(())
}

/// Puts back what a failed swap replaced, journaled first (a crash while undoing is undone
/// again, never finished).
async fn undo_failed(
    op: &mut Operation<'_, Journal>,
    scope: &mut Scope<'_>,
    services_before: BTreeSet<String>,
    progress: &SwapProgress,
    safety: Option<&Path>,
) -> Result<()> {
    let ctx = op.ctx();
    let journaled = op
        .advance(|j| {
            j.phase = Phase::Undoing;
            (j.engine_touched, j.retagged) = (progress.engine_touched, progress.retagged);
        })
        .await;
    faults::crash(Crash::RollbackWhileUndoing);
    let undone = match journaled {
        Ok(()) => super::load::undo(ctx, &op.journal, safety).await,
        Err(e) => Err(e),
    };
    undone?;
    op.advance(|j| j.phase = Phase::Undone).await?;
    scope.set_services(services_before).await?;
    // Containers removed to recreate a volume come back from the previous compose files: the
    // scope starts those that ran; those that did not are only created.
    let ran = |c: &&Container| scope.before().iter().any(|b| b.id == c.id && b.is_running());
    let idle: Vec<String> = super::services(progress.removed.iter().filter(|c| !ran(c)));
    ctx.compose()?.up(&ctx.project, Up::Create, &idle).await?;
    Ok(())
}

/// Images the backup ran that this host lacks, loaded from the archive (services untouched).
pub async fn load_images(ctx: &Ctx, plan: &Plan, prefix: &str) -> Result<()> {
    let engine = ctx.engine()?;
    let dir = tempfile::Builder::new()
        .prefix(".nuwax-load-")
        .tempdir_in(&ctx.project.storage_dir)
        .context("creating a directory to load images from")?;
    let file = dir.path().join("images.tar");
    let targets = vec![Target { prefix: prefix.to_string(), dest: file.clone() }];
    let (a, cancel) = (plan.archive.clone(), ctx.interrupt.cancel().clone());
    tokio::task::spawn_blocking(move || archive::extract(&a, &targets, &cancel, &NoProgress)).await??;
    engine.load_images(&file).await.context("loading the backup's images")?;
    for i in &plan.images {
        if engine.image_id(&i.image_id).await?.is_none() {
            bail!("image {} of {} is not in the backup's images either", i.image_id, i.service);
        }
    }
    Ok(())
}

/// Before anything stops: the backup does not change, so its trees are extracted beside their
/// targets while the services run, and only the swap is left for the stop. A failure (or a
/// signal) clears the staging; nothing was stopped or replaced.
pub(super) async fn prestage(
    op: &mut Operation<'_, Journal>,
    opts: &RollbackOptions,
    plan: &Plan,
    progress: Arc<dyn Progress>,
) -> Result<()> {
    let ctx = op.ctx();
    ctx.interrupt.check()?;
    stage(ctx, opts, plan, &op.journal, progress).await?;
    ctx.interrupt.check()?;
    op.advance(|j| j.staged = true).await
}

/// After a swap that stands: the replaced versions go, with the services running again (a
/// leftover is only disk space; the next rollback's staging removes it).
pub async fn cleanup(j: &Journal) {
    let s = j.slots.clone();
    match tokio::task::spawn_blocking(move || swap::cleanup(&s)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("removing the replaced versions: {e:#}"),
        Err(e) => tracing::warn!("removing the replaced versions: {e}"),
    }
}

/// The replaced trees still beside their targets (the state before the rollback).
pub(super) fn replaced(j: &Journal) -> Vec<String> {
    j.slots.iter().filter(|s| s.old.exists()).map(|s| s.old.display().to_string()).collect()
}

/// Nothing was replaced: the staging goes (host trees and engine volume tars).
pub(super) async fn unstage(j: &Journal) -> Result<()> {
    let s = j.slots.clone();
    engine::clear(&j.engine);
    tokio::task::spawn_blocking(move || swap::clear_staging(&s)).await?
}

/// Extracts every host target into its staging path and every engine volume into its tar.
async fn stage(
    ctx: &Ctx,
    opts: &RollbackOptions,
    plan: &Plan,
    journal: &Journal,
    progress: Arc<dyn Progress>,
) -> Result<()> {
    swap::clear_staging(&journal.slots)?;
    // Replaced versions an earlier rollback could not remove: not ours to put back, ever.
    swap::cleanup(&journal.slots)?;
    engine::clear(&journal.engine);
    for s in &journal.slots {
        if let Some(parent) = s.dest.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
    }
    let host = plan.items.iter().filter(|i| !i.via_engine);
    let (empty, host): (Vec<_>, Vec<_>) = host.zip(&journal.slots).partition(|(i, _)| i.empty);
    // A dumped server's data directory: empty, as the current one is owned and moded (the
    // server's entrypoint initializes it).
    for (_, s) in &empty {
        let meta = std::fs::metadata(&s.dest).with_context(|| format!("reading {}", s.dest.display()))?;
        std::fs::DirBuilder::new()
            .mode(meta.mode() & 0o7777)
            .create(&s.staging)
            .with_context(|| format!("creating {}", s.staging.display()))?;
        std::os::unix::fs::chown(&s.staging, Some(meta.uid()), Some(meta.gid()))
            .with_context(|| format!("owning {}", s.staging.display()))?;
    }
    let targets: Vec<Target> =
        host.iter().map(|(i, s)| Target { prefix: i.prefix.clone(), dest: s.staging.clone() }).collect();
    let p: Arc<dyn Progress> = match opts.safety.rate_limit {
        Some(rate) if rate > 0 => Arc::new(Throttled::new(progress.clone(), rate)),
        _ => progress.clone(),
    };
    let via_engine: Vec<(String, PathBuf)> = plan
        .items
        .iter()
        .filter(|i| i.via_engine)
        .zip(&journal.engine)
        .map(|(i, s)| (i.prefix.clone(), s.tar.clone()))
        .collect();
    // The SQLite dumps, each into the staged tree of the mount that held it.
    let sqlite: Vec<(super::sqlite::Place, PathBuf)> = plan
        .sqlite
        .iter()
        .map(|place| {
            let slot = host.iter().find(|(i, _)| i.prefix == place.prefix).map(|(_, s)| s.staging.clone());
            slot.map(|staged| (place.clone(), staged)).with_context(|| {
                format!("SQLite database {} of {}: its mount is not staged", place.path, place.service)
            })
        })
        .collect::<Result<_>>()?;
    let (a, cancel) = (plan.archive.clone(), ctx.interrupt.cancel().clone());
    tokio::task::spawn_blocking(move || {
        if !targets.is_empty() {
            archive::extract(&a, &targets, &cancel, &*p)?;
        }
        for (place, staged) in &sqlite {
            super::sqlite::write(&a, place, staged, &cancel)?;
        }
        for (prefix, tar) in &via_engine {
            engine::stage(&a, prefix, tar, &cancel, &*p)?;
        }
        anyhow::Ok(())
    })
    .await??;
    keep_local_storage(ctx, journal)?;
    // The staged trees must be on disk before they replace anything.
    tokio::task::spawn_blocking(rustix::fs::sync).await?;
    Ok(())
}

/// A rollback never moves the project's storage: a restored nuwax.toml keeps this project's
/// `storage_dir` (another site's backup, or one made before `storage migrate`, names another),
/// and its remotes and encryption settings.
fn keep_local_storage(ctx: &Ctx, journal: &Journal) -> Result<()> {
    let config = ctx.project.dir.join(crate::project::CONFIG_FILE);
    let Some(slot) = journal.slots.iter().find(|s| s.dest == config) else { return Ok(()) };
    if !slot.staging.is_file() {
        return Ok(());
    }
    let local = ctx.project.settings.storage_dir.clone();
    let theirs = crate::project::read_settings(&slot.staging)?.storage_dir;
    if theirs != local {
        let show = |d: &Option<PathBuf>| match d {
            Some(d) => d.display().to_string(),
            None => "the default (backups/)".into(),
        };
        tracing::warn!(
            "the backup's nuwax.toml stores backups in {}; this project keeps its own storage_dir, {}",
            show(&theirs),
            show(&local)
        );
        crate::project::set_storage_dir(&slot.staging, local.as_deref())?;
    }
    // Likewise where copies go and how archives are encrypted: this host's, not the backup's.
    if config.is_file() {
        let kept = crate::remote::settings_file::keep_local(&slot.staging, &config)?;
        if !kept.is_empty() {
            tracing::info!("the restored nuwax.toml keeps this project's {}", kept.join(", "));
        }
    }
    Ok(())
}

/// Finishes a swap (idempotent): host targets, volumes through the engine, image references,
/// the version; then the replaced versions go.
pub(super) async fn finish_swap(ctx: &Ctx, j: &Journal, keep_replaced: bool) -> Result<()> {
    let s = j.slots.clone();
    tokio::task::spawn_blocking(move || match keep_replaced {
        true => swap::swap_in(&s),
        false => swap::complete(&s),
    })
    .await??;
    let engine = ctx.engine.as_ref().context("finishing the rollback needs the Docker engine")?;
    engine::complete(&**engine, &ctx.project.name, &j.engine).await?;
    for i in &j.retag {
        let r = ImageRef::parse(&i.image);
        engine.tag_image(&i.image_id, r.repository(), r.tag()).await?;
    }
    set_version(ctx, j).await
}

/// Compose creates what the restored state needs, none of it started (the scope starts what
/// runs): with the configs back, every service of the restored files, orphans removed; else
/// the services whose volume was recreated and that were not running.
pub(super) async fn create(ctx: &Ctx, j: &Journal) -> Result<()> {
    if j.runs_as_backup() {
        let ctx = ctx.rediscover()?;
        ctx.compose()?.up(&ctx.project, Up::CreateAll, &[]).await?;
    } else if !j.create_only.is_empty() {
        ctx.compose()?.up(&ctx.project, Up::Create, &j.create_only).await?;
    }
    Ok(())
}

/// Puts back what a failed rollback changed: staging removed, swapped host trees renamed back,
/// volumes replaced through the engine restored from the safety backup, image references
/// pointed at what they named before.
pub(super) async fn undo(ctx: &Ctx, journal: &Journal, safety: Option<&Path>) -> Result<()> {
    let engine = ctx.engine()?;
    let s = journal.slots.clone();
    tokio::task::spawn_blocking(move || swap::undo(&s)).await??;
    engine::clear(&journal.engine);
    let (engine_touched, retagged) =
        (journal.engine_touched.min(journal.engine.len()), journal.retagged.min(journal.retag.len()));
    for slot in &journal.engine[..engine_touched] {
        let safety = safety.context("no safety backup to restore the volumes from")?;
        engine::undo(engine, &ctx.project.name, slot, safety, ctx.interrupt.cancel()).await?;
    }
    for i in &journal.retag[..retagged] {
        let r = ImageRef::parse(&i.image);
        match &i.current_id {
            Some(id) => engine.tag_image(id, r.repository(), r.tag()).await?,
            None => {
                engine.untag_image(&i.image).await?;
            }
        }
    }
    Ok(())
}

/// Slows extraction down to `rate` bytes/s by sleeping in the progress callback: the test hook
/// (`NUWAX_RATE_LIMIT`) that makes "killed during the restore" reproducible.
struct Throttled {
    inner: Arc<dyn Progress>,
    rate: u64,
    start: Instant,
    done: std::sync::atomic::AtomicU64,
}

impl Throttled {
    fn new(inner: Arc<dyn Progress>, rate: u64) -> Self {
        Throttled { inner, rate, start: Instant::now(), done: Default::default() }
    }
}

impl Progress for Throttled {
    fn set_total(&self, bytes: u64) {
        self.inner.set_total(bytes);
    }

    fn inc(&self, bytes: u64) {
        self.inner.inc(bytes);
        let done = self.done.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed) + bytes;
        let due = std::time::Duration::from_secs_f64(done as f64 / self.rate as f64);
        if let Some(wait) = due.checked_sub(self.start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}
