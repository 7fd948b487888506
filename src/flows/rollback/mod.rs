//! `nuwax rollback <ID>`: make the project what backup `<ID>` holds — configs, volumes, bind
//! mounts and the images the services ran — or change nothing.
//!
//! plan (verify the archive, check every target, image and byte of room; nothing touched) →
//! journal + stop → safety backup (`pre-rollback`) → stage (extract beside each host target, a
//! tar per volume restored through the engine) → swap (journaled) → point image references back
//! → start, with compose creating the containers whose config, image or volume changed → wait
//! healthy. A failure after the stop puts the previous state back; a crash is finished (from
//! the swap on) or undone (before it) by the next command.

pub mod engine;
mod plan;
pub mod swap;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::Ctx;
use super::backup::{BackupOptions, backup};
use super::compose::{Up, up};
use crate::archive::{self, NoProgress, Progress, Target};
use crate::catalog::{BackupKind, OperationState};
use crate::engine::Container;
use crate::guard::ServiceGuard;
use engine::EngineSlot;
pub use plan::{ImageStep, Item, Plan, RollbackOptions, plan};
use swap::Slot;

#[derive(Debug, Clone, Serialize)]
pub struct RollbackOutcome {
    pub backup_id: i64,
    pub safety_backup_id: i64,
    pub safety_backup_path: PathBuf,
    pub restored: Vec<Item>,
    pub images_retagged: Vec<ImageStep>,
    pub services_started: Vec<String>,
    pub duration_ms: u64,
    pub downtime_ms: Option<u64>,
}

/// What a rollback has left to do, written to the operations journal before each phase: enough
/// for the next nuwax to finish it (from the swap on) or undo it (before) after a crash.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Journal {
    /// `staging`, `swapping` or `swapped`.
    pub phase: String,
    pub backup_id: i64,
    pub safety_backup_id: Option<i64>,
    /// Host targets: volumes reachable here, bind mounts, configs.
    #[serde(default)]
    pub slots: Vec<Slot>,
    /// Volumes restored through the engine.
    #[serde(default)]
    pub engine: Vec<EngineSlot>,
    /// Image references to point back at the backup's ids.
    #[serde(default)]
    pub retag: Vec<ImageStep>,
    /// Services compose creates again (or just starts) and starts: `up -d --no-deps`.
    #[serde(default)]
    pub recreate: Vec<String>,
    /// Services compose creates and leaves stopped (they were not running before).
    #[serde(default)]
    pub create_only: Vec<String>,
    /// No containers existed: `up -d` of the whole project.
    #[serde(default)]
    pub start_all: bool,
    /// Configs were restored: compose creates every service of the restored files (removing
    /// containers of services they do not define) before starting `recreate`.
    #[serde(default)]
    pub remove_orphans: bool,
    /// While undoing a failed rollback (`undoing`): how many engine volumes and image tags the
    /// failed run had replaced, so recovery can undo exactly those.
    #[serde(default)]
    pub engine_touched: usize,
    #[serde(default)]
    pub retagged: usize,
}

impl Journal {
    fn new(ctx: &Ctx, plan: &Plan) -> Journal {
        let storage = &ctx.project.storage_dir;
        let slots = plan.items.iter().filter(|i| !i.via_engine).map(|i| Slot::new(&i.dest, plan.backup_id));
        let engine = plan.items.iter().filter(|i| i.via_engine).map(|i| {
            let volume = i.volume.clone().unwrap_or_default();
            let image = plan.carrier_image.clone().unwrap_or_default();
            let mut s = EngineSlot::new(&volume, &ctx.project.name, storage, plan.backup_id, &image);
            s.existed = !i.create;
            s
        });
        let running: Vec<String> = services(plan.containers.iter().filter(|c| c.is_running()));
        let users = |running: bool| -> Vec<String> {
            services(plan.containers.iter().filter(|c| {
                c.is_running() == running
                    && c.mounts.iter().any(|m| {
                        plan.items.iter().any(|i| i.via_engine && i.volume.is_some() && m.name == i.volume)
                    })
            }))
        };
        let stale = plan.images.iter().any(|i| {
            plan.containers
                .iter()
                .any(|c| c.service == i.service && c.image_id != i.image_id && c.is_running())
        });
        let configs = plan.items.iter().any(|i| i.kind == "config");
        // With the configs back, the services are those of the backup, running as they ran then.
        let mut backup_running = plan.backup_running.clone();
        backup_running.sort();
        backup_running.dedup();
        let recreate = if plan.start_all {
            Vec::new()
        } else if configs {
            backup_running
        } else if stale {
            running
        } else {
            users(true)
        };
        Journal {
            phase: "staging".into(),
            backup_id: plan.backup_id,
            safety_backup_id: None,
            slots: slots.collect(),
            engine: engine.collect(),
            retag: plan
                .images
                .iter()
                .filter(|i| i.current_id.as_deref() != Some(&i.image_id))
                .cloned()
                .collect(),
            recreate,
            create_only: if configs { Vec::new() } else { users(false) },
            start_all: plan.start_all,
            remove_orphans: configs && !plan.start_all,
            engine_touched: 0,
            retagged: 0,
        }
    }
}

fn services<'a>(containers: impl Iterator<Item = &'a Container>) -> Vec<String> {
    let mut s: Vec<String> = containers.map(|c| c.service.clone()).collect();
    s.sort();
    s.dedup();
    s
}

/// Executes `plan`. If anything fails after the first stop, the previous state is put back
/// (swapped host trees renamed back, volumes replaced through the engine restored from the
/// safety backup, image references pointed back), the services are started, and the error
/// says what state things are in.
pub async fn rollback(
    ctx: &Ctx,
    opts: &RollbackOptions,
    plan: Plan,
    progress: Arc<dyn Progress>,
) -> Result<RollbackOutcome> {
    let started = Instant::now();
    let engine = ctx.engine.clone().context("rollback needs the Docker engine")?;
    ctx.interrupt.check()?;

    // 0. Images the backup ran that this host lacks come out of the archive (services untouched).
    if let Some(prefix) = &plan.load_images {
        load_images(ctx, &plan, prefix).await?;
    }

    // 1. Journal what is about to happen, then stop — once, for the safety backup and the restore.
    let mut journal = Journal::new(ctx, &plan);
    let op = ctx.catalog.begin_operation("rollback", &ctx.project.name, None, None).await?;
    ctx.catalog.set_detail(op, &serde_json::to_value(&journal)?).await?;
    let containers = plan.containers.clone();
    let mut guard = ServiceGuard::new(engine.clone(), ctx.project.dependencies(), ctx.timeouts());
    let mut safety = None;
    // How far the swap got: engine slots replaced (or being replaced), images re-tagged.
    let (mut engine_touched, mut retagged) = (0usize, 0usize);
    let mut removed: Vec<Container> = Vec::new();
    let result = async {
        guard.stop(&ctx.catalog, op, &containers).await?;
        ctx.interrupt.check()?;
        // 2. A safety backup of the current state (services already stopped by this guard), so
        // this rollback can itself be rolled back.
        let safety_opts = BackupOptions {
            kind: BackupKind::PreRollback,
            note: Some(format!("before rollback to {}", plan.backup_id)),
            stopped_by_caller: Some(containers.clone()),
            ..opts.safety.clone()
        };
        let made = backup(ctx, &safety_opts, progress.clone())
            .await
            .context("the safety backup failed; nothing was changed")?;
        tracing::warn!("safety backup {} made: {}", made.id, made.path.display());
        journal.safety_backup_id = Some(made.id);
        safety = Some(made);
        ctx.catalog.set_detail(op, &serde_json::to_value(&journal)?).await?;
        ctx.interrupt.check()?;
        // 3. Stage: host targets beside themselves, engine volumes as tars.
        stage(ctx, opts, &plan, &journal, progress.clone()).await?;
        ctx.interrupt.check()?;
        // 4. Swap. From here on a crash is finished forward by recovery.
        journal.phase = "swapping".into();
        ctx.catalog.set_detail(op, &serde_json::to_value(&journal)?).await?;
        // The old versions stay beside their targets until the end, so a failure can put them
        // back.
        let s2 = journal.slots.clone();
        tokio::task::spawn_blocking(move || swap::swap_in(&s2)).await??;
        for s in &journal.engine {
            engine_touched += 1;
            engine::replace(&*engine, &ctx.project.name, s, &s.tar, &mut removed).await?;
            let _ = std::fs::remove_file(&s.tar);
        }
        // 5. Image references back to the backup's ids.
        for i in &journal.retag {
            let (repo, tag) = split_reference(&i.image);
            engine.tag_image(&i.image_id, &repo, &tag).await?;
            retagged += 1;
        }
        if std::env::var("NUWAX_TEST_FAIL").as_deref() == Ok("rollback-after-swap") {
            // Test hook: a failure after everything was replaced, to prove the way back.
            bail!("injected failure after the swap (NUWAX_TEST_FAIL)");
        }
        journal.phase = "swapped".into();
        ctx.catalog.set_detail(op, &serde_json::to_value(&journal)?).await?;
        anyhow::Ok(())
    }
    .await;
    guard.forget(&removed);

    if let Err(e) = result {
        // Before the swap began nothing was replaced: only staging goes. From then on the way
        // back is journaled first, so a crash while undoing is undone again, never finished.
        let state = if journal.phase == "staging" {
            let s2 = journal.slots.clone();
            engine::clear(&journal.engine);
            tokio::task::spawn_blocking(move || swap::clear_staging(&s2)).await?
        } else {
            journal.phase = "undoing".into();
            (journal.engine_touched, journal.retagged) = (engine_touched, retagged);
            ctx.catalog.set_detail(op, &serde_json::to_value(&journal)?).await?;
            if std::env::var("NUWAX_TEST_CRASH").as_deref() == Ok("rollback-while-undoing") {
                // Test hook: die with the way back journaled but not taken.
                std::process::abort();
            }
            let undone = undo(ctx, &journal, safety.as_ref().map(|s| s.path.as_path())).await;
            if undone.is_ok() {
                journal.phase = "undone".into();
                ctx.catalog.set_detail(op, &serde_json::to_value(&journal)?).await?;
            }
            undone
        };
        let restart = async {
            guard.restart().await?;
            // Containers removed to recreate a volume come back from the previous compose files,
            // running if they ran before the stop.
            let ran = |c: &&Container| containers.iter().any(|b| b.id == c.id && b.is_running());
            up(ctx, Up::Services, &services(removed.iter().filter(ran))).await?;
            up(ctx, Up::CreateOnly, &services(removed.iter().filter(|c| !ran(c)))).await?;
            anyhow::Ok(())
        }
        .await;
        let safety_id = safety.as_ref().map(|b| b.id.to_string()).unwrap_or_else(|| "<id>".into());
        let state = match (&state, &restart) {
            (Ok(()), Ok(())) => "the project is as it was before the rollback, services running".to_string(),
            (Err(u), _) => format!(
                "putting the previous state back failed ({u:#}); restore it with `nuwax rollback {safety_id}` (the safety backup)"
            ),
            (Ok(()), Err(r)) => format!("data is as before, but services did not all start: {r:#}"),
        };
        if state.starts_with("the project is as it was") {
            ctx.catalog.finish_operation(op, OperationState::Done, Some("failed, undone")).await?;
        }
        return Err(e.context(format!("rollback to backup {} failed; {state}", plan.backup_id)));
    }

    // The swap stands: the old versions go (a leftover is only disk space, not a failure).
    let s2 = journal.slots.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || swap::cleanup(&s2)).await? {
        tracing::warn!("removing the replaced versions: {e:#}");
    }

    // 6. Start again. Where configs were restored, an image differs or a volume was recreated,
    // compose creates the containers from the restored compose files; the old containers are
    // never started on the restored data, so nothing runs the new code on the old data.
    let started_services = match start(ctx, &journal, &mut guard).await {
        Ok(s) => s,
        Err(e) => {
            // Whatever can run, runs; the journal stays open for `nuwax recover`.
            if let Err(r) = guard.restart().await {
                tracing::warn!("starting the remaining services: {r:#}");
            }
            return Err(e.context(format!(
                "the data of backup {} is in place, but starting the services failed; \
                 `nuwax recover` tries again, `nuwax rollback {}` goes back to the state before",
                plan.backup_id,
                safety.as_ref().map(|b| b.id).unwrap_or_default()
            )));
        }
    };
    let downtime = guard.elapsed_ms();
    if plan.items.iter().any(|i| i.kind == "config") {
        // The configs are the backup's again, and so is the version.
        let reason = format!("rollback to backup {}", plan.backup_id);
        ctx.catalog.set_version(&ctx.project.name, &plan.service_version, &reason).await?;
    }
    ctx.catalog.finish_operation(op, OperationState::Done, None).await?;
    let safety = safety.context("the safety backup is missing")?;
    Ok(RollbackOutcome {
        backup_id: plan.backup_id,
        safety_backup_id: safety.id,
        safety_backup_path: safety.path,
        restored: plan.items,
        images_retagged: journal.retag,
        services_started: started_services,
        duration_ms: started.elapsed().as_millis() as u64,
        downtime_ms: downtime,
    })
}

async fn load_images(ctx: &Ctx, plan: &Plan, prefix: &str) -> Result<()> {
    let engine = ctx.engine.as_ref().context("no engine")?;
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
    let host: Vec<&Item> = plan.items.iter().filter(|i| !i.via_engine).collect();
    let targets: Vec<Target> = host
        .iter()
        .zip(&journal.slots)
        .map(|(i, s)| Target { prefix: i.prefix.clone(), dest: s.staging.clone() })
        .collect();
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
    let (a, cancel) = (plan.archive.clone(), ctx.interrupt.cancel().clone());
    tokio::task::spawn_blocking(move || {
        if !targets.is_empty() {
            archive::extract(&a, &targets, &cancel, &*p)?;
        }
        for (prefix, tar) in &via_engine {
            engine::stage(&a, prefix, tar, &cancel, &*p)?;
        }
        // The staged trees must be on disk before they replace anything.
        rustix::fs::sync();
        anyhow::Ok(())
    })
    .await?
}

/// Puts back what a failed rollback changed: staging removed, swapped host trees renamed back,
/// volumes replaced through the engine restored from the safety backup, image references
/// pointed at what they named before.
async fn undo(ctx: &Ctx, journal: &Journal, safety: Option<&std::path::Path>) -> Result<()> {
    let engine = ctx.engine.as_ref().context("no engine")?;
    let s = journal.slots.clone();
    tokio::task::spawn_blocking(move || swap::undo(&s)).await??;
    engine::clear(&journal.engine);
    let (engine_touched, retagged) =
        (journal.engine_touched.min(journal.engine.len()), journal.retagged.min(journal.retag.len()));
    for slot in &journal.engine[..engine_touched] {
        let safety = safety.context("no safety backup to restore the volumes from")?;
        engine::undo(&**engine, &ctx.project.name, slot, safety, ctx.interrupt.cancel()).await?;
    }
    for i in &journal.retag[..retagged] {
        let (repo, tag) = split_reference(&i.image);
        match &i.current_id {
            Some(id) => engine.tag_image(id, &repo, &tag).await?,
            None => {
                engine.untag_image(&i.image).await?;
            }
        }
    }
    Ok(())
}

/// Starts the project after the swap: compose for what must be created, the engine for the
/// rest. Returns the services started.
async fn start(ctx: &Ctx, journal: &Journal, guard: &mut ServiceGuard) -> Result<Vec<String>> {
    if journal.start_all {
        let started = up(ctx, Up::All, &[]).await?;
        return Ok(services(started.iter()));
    }
    if journal.remove_orphans {
        // Compose owns every container from here: the restored files say what exists.
        let ctx = ctx.rediscover()?;
        up(&ctx, Up::CreateAll, &[]).await?;
        let started = up(&ctx, Up::Services, &journal.recreate).await?;
        guard.disarm();
        return Ok(services(started.iter()));
    }
    let mut started = services(guard.stopped().iter());
    let recreated = up(ctx, Up::Services, &journal.recreate).await?;
    up(ctx, Up::CreateOnly, &journal.create_only).await?;
    // What compose did not just start is started as it was.
    guard.forget(
        &guard
            .stopped()
            .iter()
            .filter(|c| journal.recreate.contains(&c.service))
            .cloned()
            .collect::<Vec<_>>(),
    );
    guard.restart().await?;
    started.extend(services(recreated.iter()));
    started.sort();
    started.dedup();
    Ok(started)
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

/// `repo:tag` → (repo, tag); `repo` alone → (repo, latest). A registry port is not a tag.
pub(crate) fn split_reference(r: &str) -> (String, String) {
    match r.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo.to_string(), tag.to_string()),
        _ => (r.to_string(), "latest".to_string()),
    }
}

/// Whether finishing this rollback hands every service to compose (configs restored, or no
/// containers before): then the containers it had stopped are not started again as they were.
pub fn compose_owns_services(detail: &serde_json::Value) -> bool {
    let j: Journal = serde_json::from_value(detail.clone()).unwrap_or_default();
    matches!(j.phase.as_str(), "swapping" | "swapped") && (j.remove_orphans || j.start_all)
}

/// Recovery of a rollback a dead nuwax left. Before the swap: its staging is removed and the
/// project is as before (the caller starts the services it had stopped). From the swap on: the
/// swap is finished, image references point at the backup's ids and compose creates what the
/// rollback would have.
pub async fn recover(ctx: &Ctx, detail: &serde_json::Value) -> Result<String> {
    let journal: Journal = serde_json::from_value(detail.clone()).unwrap_or_default();
    match journal.phase.as_str() {
        "undone" => return Ok("the failed rollback had been undone: the project is as before it".into()),
        "undoing" => {
            let safety = match journal.safety_backup_id {
                Some(id) => ctx.catalog.get(id).await?.and_then(|r| r.path).map(PathBuf::from),
                None => None,
            };
            undo(ctx, &journal, safety.as_deref()).await?;
            return Ok("the failed rollback was undone: the project is as before it".into());
        }
        _ => {}
    }
    if journal.phase == "staging" || journal.phase.is_empty() {
        let s = journal.slots.clone();
        tokio::task::spawn_blocking(move || swap::clear_staging(&s)).await??;
        engine::clear(&journal.engine);
        return Ok("the rollback had not replaced anything: the project is as before it".into());
    }
    let s = journal.slots.clone();
    tokio::task::spawn_blocking(move || swap::complete(&s)).await??;
    let engine = ctx.engine.as_ref().context("finishing the rollback needs the Docker engine")?;
    engine::complete(&**engine, &ctx.project.name, &journal.engine).await?;
    for i in &journal.retag {
        let (repo, tag) = split_reference(&i.image);
        engine.tag_image(&i.image_id, &repo, &tag).await?;
    }
    let ctx = &ctx.rediscover()?;
    match journal.start_all {
        true => {
            up(ctx, Up::All, &[]).await?;
        }
        false => {
            if journal.remove_orphans {
                up(ctx, Up::CreateAll, &[]).await?;
            }
            up(ctx, Up::Services, &journal.recreate).await?;
            up(ctx, Up::CreateOnly, &journal.create_only).await?;
        }
    }
    Ok(format!(
        "the rollback to backup {} was finished: the project holds the backup's data",
        journal.backup_id
    ))
}

#[cfg(test)]
mod tests {
    use super::split_reference;

    #[test]
    fn references_split_into_repo_and_tag() {
        assert_eq!(split_reference("nuwax-demo:1"), ("nuwax-demo".into(), "1".into()));
        assert_eq!(split_reference("registry:5000/app"), ("registry:5000/app".into(), "latest".into()));
        assert_eq!(split_reference("registry:5000/app:2"), ("registry:5000/app".into(), "2".into()));
    }
}
