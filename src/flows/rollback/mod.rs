//! `nuwax rollback <ID>`: make the project what backup `<ID>` holds — configs, volumes, bind
//! mounts and the images the services ran — or change nothing.
//!
//! plan (verify the archive, check every target, image and byte of room; nothing touched) →
//! journal + stop → safety backup (`pre-rollback`) → extract into staging beside each target →
//! swap (journaled) → point image references back → start, recreating services whose image
//! differs → wait healthy.

pub mod swap;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::json;

use super::Ctx;
use super::backup::{BackupOptions, backup};
use crate::archive::{self, NoProgress, Progress, Target};
use crate::catalog::{BackupKind, BackupRecord, OperationState};
use crate::engine::Container;
use crate::fsutil;
use crate::guard::ServiceGuard;
use swap::Slot;

#[derive(Debug, Clone)]
pub struct RollbackOptions {
    pub id: i64,
    /// Restore volumes and bind mounts (`--config-only` turns this off).
    pub data: bool,
    /// Restore compose files, `.env` and other configs (`--data-only` turns this off).
    pub config: bool,
    /// Options for the safety backup.
    pub safety: BackupOptions,
}

/// One thing the rollback replaces.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    /// `volume`, `bind` or `config`.
    pub kind: &'static str,
    pub name: String,
    /// Archive path the data comes from.
    pub prefix: String,
    pub dest: PathBuf,
    pub size: u64,
    pub file_count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageStep {
    pub service: String,
    /// The reference the service's compose file names.
    pub image: String,
    /// The id the backup's service ran, which `image` will point at again.
    pub image_id: String,
    /// What `image` points at now (`None`: the tag does not exist).
    pub current_id: Option<String>,
}

/// What a rollback will do: `--dry-run` prints it; the real run executes exactly it.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub backup_id: i64,
    pub archive: PathBuf,
    pub created_at: String,
    pub services_to_stop: Vec<String>,
    pub items: Vec<Item>,
    pub images: Vec<ImageStep>,
    /// Archive path of the images to `docker load` first, when some are missing here.
    pub load_images: Option<String>,
    pub warnings: Vec<String>,
    #[serde(skip)]
    containers: Vec<Container>,
}

impl Plan {
    pub fn volumes(&self) -> usize {
        self.items.iter().filter(|i| i.kind != "config").count()
    }

    pub fn files(&self) -> u64 {
        self.items.iter().map(|i| i.file_count).sum()
    }
}

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

/// Everything checked, nothing touched.
pub async fn plan(ctx: &Ctx, opts: &RollbackOptions) -> Result<Plan> {
    let engine = ctx.engine.as_ref().context("rollback needs the Docker engine")?;
    let project = &ctx.project;
    let rec: BackupRecord = ctx
        .catalog
        .get(opts.id)
        .await?
        .filter(|r| r.project == project.name)
        .ok_or(crate::Error::BackupNotFound { id: opts.id })?;
    if !rec.is_complete() {
        bail!(crate::Error::Config(format!(
            "backup {} is {}, not complete: it cannot be restored",
            rec.id, rec.status
        )));
    }
    let archive = PathBuf::from(rec.path.clone().unwrap_or_default());
    if !archive.is_file() {
        bail!(crate::Error::VerifyFailed {
            id: rec.id,
            detail: format!("archive {} is missing", archive.display())
        });
    }
    // Every byte, before anything else, in one pass: the whole file against the catalog's
    // checksum, every entry against manifest and trailer, and the extraction rules for what
    // will be restored. A damaged or hostile archive is found here, services untouched.
    let refused = |e: archive::Error| crate::Error::VerifyFailed {
        id: rec.id,
        detail: format!("{:#}", anyhow::Error::from(e)),
    };
    let (a, sum, cancel) = (archive.clone(), rec.checksum.clone(), ctx.interrupt.cancel().clone());
    let (data, config) = (opts.data, opts.config);
    let report = tokio::task::spawn_blocking(move || {
        let manifest = archive::read_manifest(&a)?;
        let mut targets: Vec<Target> = Vec::new();
        let nowhere = || PathBuf::from("/nonexistent");
        if data {
            targets.extend(
                manifest.mounts.iter().map(|m| Target { prefix: m.archive_path.clone(), dest: nowhere() }),
            );
        }
        if config {
            targets.extend(
                manifest.configs.iter().map(|c| Target { prefix: c.archive_path.clone(), dest: nowhere() }),
            );
        }
        archive::verify_extractable(&a, sum.as_deref(), &targets, &cancel)
    })
    .await?
    .map_err(refused)?;
    let manifest = report.manifest;
    let mut warnings = Vec::new();
    if manifest.project != project.name {
        warnings.push(format!(
            "the backup was made for project {:?}; restoring into {:?}",
            manifest.project, project.name
        ));
    }

    let mut items = Vec::new();
    if opts.data {
        for m in &manifest.mounts {
            let (kind, dest) = match m.kind {
                archive::manifest::MountKind::Volume => {
                    let name = local_volume(&manifest.project, &project.name, &m.name);
                    if name != m.name {
                        warnings.push(format!("volume {} is restored into this project's {}", m.name, name));
                    }
                    (
                        "volume",
                        engine.volume_mountpoint(&name).await.with_context(|| {
                            format!(
                                "volume {name} does not exist (create it with `compose up --no-start` first)"
                            )
                        })?,
                    )
                }
                archive::manifest::MountKind::Bind => {
                    let dest =
                        local_bind(manifest.project_dir.as_deref(), &project.dir, Path::new(&m.source));
                    if dest != Path::new(&m.source) {
                        warnings.push(format!("bind mount {} is restored into {}", m.source, dest.display()));
                    }
                    ("bind", dest)
                }
            };
            if kind == "volume" && std::fs::read_dir(&dest).is_err() {
                bail!(
                    "volume {} is not reachable on this host at {}; restoring through the engine is not supported yet",
                    m.name,
                    dest.display()
                );
            }
            items.push(Item {
                kind,
                name: m.name.clone(),
                prefix: m.archive_path.clone(),
                dest,
                size: m.size,
                file_count: m.file_count,
            });
        }
    }
    if opts.config {
        for c in &manifest.configs {
            let src = Path::new(&c.source);
            let dest = if src.is_absolute() { src.to_path_buf() } else { project.dir.join(src) };
            items.push(Item {
                kind: "config",
                name: c.source.clone(),
                prefix: c.archive_path.clone(),
                dest,
                size: c.size,
                file_count: c.file_count,
            });
        }
    }
    for s in &manifest.skipped {
        warnings.push(format!(
            "{} was skipped when the backup was made ({}); it is left as it is",
            s.path, s.reason
        ));
    }

    // Images: the ids the backup's services ran must still exist (kept by their nuwax-keep tag).
    let mut images = Vec::new();
    let mut load_images = false;
    let mut seen = std::collections::BTreeSet::new();
    for s in manifest.services.iter().filter(|s| !s.image.is_empty() && !s.image_id.is_empty()) {
        if !seen.insert(s.service.clone()) {
            continue;
        }
        if engine.image_id(&s.image_id).await?.is_none() {
            match &manifest.images_archive {
                Some(_) => load_images = true,
                None => bail!(
                    "image {} ({}) of service {} is no longer on this host and the backup holds no images \
                     (made without --with-images); it cannot be rolled back to",
                    s.image_id,
                    s.image,
                    s.service
                ),
            }
        }
        images.push(ImageStep {
            service: s.service.clone(),
            image: s.image.clone(),
            image_id: s.image_id.clone(),
            current_id: engine.image_id(&s.image).await?,
        });
    }

    // Services are recreated by compose when configs come back or an image differs.
    let compose_needed = items.iter().any(|i| i.kind == "config")
        || images.iter().any(|i| i.current_id.as_deref() != Some(i.image_id.as_str()));
    if compose_needed && crate::engine::compose_cli::ComposeCli::detect().is_none() {
        bail!(
            "rollback recreates the services with the compose CLI, and neither `docker compose` nor `docker-compose` was found"
        );
    }

    // Room for the staged copies, on each target's filesystem.
    let mut need: BTreeMap<PathBuf, u64> = BTreeMap::new();
    for i in &items {
        let parent = existing_ancestor(i.dest.parent().unwrap_or(Path::new("/")));
        *need.entry(parent).or_default() += i.size + 4096 * i.file_count;
    }
    for (dir, bytes) in need {
        let free =
            fsutil::free_space(&dir).with_context(|| format!("checking free space in {}", dir.display()))?;
        if bytes + (1 << 20) > free {
            bail!(crate::Error::NoSpace {
                needed: fsutil::human_bytes(bytes),
                free: fsutil::human_bytes(free),
                dir
            });
        }
    }

    let containers = engine.project_containers(&project.name).await?;
    Ok(Plan {
        backup_id: rec.id,
        archive,
        created_at: rec.created_at,
        services_to_stop: containers.iter().filter(|c| c.is_running()).map(|c| c.service.clone()).collect(),
        items,
        images,
        load_images: manifest.images_archive.clone().filter(|_| load_images),
        warnings,
        containers,
    })
}

/// The volume of this project that takes what the backup's volume `name` held: for a backup
/// made under another project name (another machine, `nuwax import`), this project's volume
/// with the same compose key — never the other project's, even when it exists on this host.
fn local_volume(from: &str, to: &str, name: &str) -> String {
    match name.strip_prefix(&format!("{from}_")) {
        Some(key) if from != to => format!("{to}_{key}"),
        _ => name.to_string(),
    }
}

/// A bind source inside the backed-up project's directory maps into this project's directory.
fn local_bind(from_dir: Option<&str>, to_dir: &Path, source: &Path) -> PathBuf {
    match from_dir.and_then(|d| source.strip_prefix(d).ok()) {
        Some(rel) => to_dir.join(rel),
        None => source.to_path_buf(),
    }
}

fn existing_ancestor(p: &Path) -> PathBuf {
    let mut p = p.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            return PathBuf::from("/");
        }
    }
    p
}

/// Executes `plan`. If anything fails after the first stop, what was already swapped is put
/// back, the services are started, and the error says what state things are in.
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
        let dir = tempfile::Builder::new()
            .prefix(".nuwax-load-")
            .tempdir_in(&ctx.project.storage_dir)
            .context("creating a directory to load images from")?;
        let file = dir.path().join("images.tar");
        let targets = vec![Target { prefix: prefix.clone(), dest: file.clone() }];
        let (a, cancel) = (plan.archive.clone(), ctx.interrupt.cancel().clone());
        tokio::task::spawn_blocking(move || archive::extract(&a, &targets, &cancel, &NoProgress)).await??;
        engine.load_images(&file).await.context("loading the backup's images")?;
        for i in &plan.images {
            if engine.image_id(&i.image_id).await?.is_none() {
                bail!("image {} of {} is not in the backup's images either", i.image_id, i.service);
            }
        }
    }

    // 1. Journal what is about to happen, then stop — once, for the safety backup and the restore.
    let slots: Vec<Slot> = plan.items.iter().map(|i| Slot::new(&i.dest, plan.backup_id)).collect();
    let op = ctx.catalog.begin_operation("rollback", &ctx.project.name, None, None).await?;
    let detail = |phase: &str, safety: Option<i64>| json!({ "phase": phase, "backup_id": plan.backup_id, "safety_backup_id": safety, "slots": slots });
    ctx.catalog.set_detail(op, &detail("staging", None)).await?;
    let containers = engine.project_containers(&ctx.project.name).await?;
    let mut guard = ServiceGuard::new(engine.clone(), ctx.project.dependencies(), ctx.timeouts());
    let mut safety = None;
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
        let safety_id = made.id;
        safety = Some(made);
        ctx.catalog.set_detail(op, &detail("staging", Some(safety_id))).await?;
        ctx.interrupt.check()?;
        // 3. Extract into staging beside each target.
        swap::clear_staging(&slots)?;
        for s in &slots {
            if let Some(parent) = s.dest.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
        }
        let targets: Vec<Target> = plan
            .items
            .iter()
            .zip(&slots)
            .map(|(i, s)| Target { prefix: i.prefix.clone(), dest: s.staging.clone() })
            .collect();
        let p: Arc<dyn Progress> = match opts.safety.rate_limit {
            Some(rate) if rate > 0 => Arc::new(Throttled::new(progress.clone(), rate)),
            _ => progress.clone(),
        };
        let (a, cancel) = (plan.archive.clone(), ctx.interrupt.cancel().clone());
        tokio::task::spawn_blocking(move || {
            archive::extract(&a, &targets, &cancel, &*p)?;
            // The staged trees must be on disk before they replace anything.
            rustix::fs::sync();
            anyhow::Ok(())
        })
        .await??;
        ctx.interrupt.check()?;
        // 4. Swap. From here on a crash is finished forward by recovery.
        ctx.catalog.set_detail(op, &detail("swapping", Some(safety_id))).await?;
        let s2 = slots.clone();
        tokio::task::spawn_blocking(move || swap::complete(&s2)).await??;
        ctx.catalog.set_detail(op, &detail("swapped", Some(safety_id))).await?;
        // 5. Image references back to the backup's ids.
        for i in &plan.images {
            if i.current_id.as_deref() != Some(i.image_id.as_str()) {
                let (repo, tag) = split_reference(&i.image);
                engine.tag_image(&i.image_id, &repo, &tag).await?;
            }
        }
        anyhow::Ok(())
    }
    .await;

    if let Err(e) = result {
        // Before the swap: staging only. During it: put back what was swapped.
        let undo = tokio::task::spawn_blocking({
            let s = slots.clone();
            move || swap::undo(&s)
        })
        .await?;
        let restart = guard.restart().await;
        let state = match (&undo, &restart) {
            (Ok(()), Ok(_)) => "the project is as it was before the rollback, services running".to_string(),
            (Err(u), _) => format!(
                "putting the previous data back failed ({u:#}); restore it with `nuwax rollback {}` (the safety backup)",
                safety.as_ref().map(|b| b.id.to_string()).unwrap_or_else(|| "<id>".into())
            ),
            (Ok(()), Err(r)) => format!("data is as before, but services did not all start: {r:#}"),
        };
        if undo.is_ok() && restart.is_ok() {
            ctx.catalog.finish_operation(op, OperationState::Done, Some("failed, undone")).await?;
        }
        return Err(e.context(format!("rollback to backup {} failed; {state}", plan.backup_id)));
    }

    // 6. Start again. When configs were restored or an image differs, the containers must be
    // recreated from the restored compose files (compose decides which); the old containers are
    // never started, so nothing runs the new code or config on the old data, even briefly.
    let mut stopped: Vec<String> = guard.stopped().iter().map(|c| c.service.clone()).collect();
    stopped.dedup();
    let stale = plan.images.iter().any(|i| {
        plan.containers
            .iter()
            .any(|c| c.service == i.service && c.image_id != i.image_id && stopped.contains(&c.service))
    });
    let configs_restored = plan.items.iter().any(|i| i.kind == "config");
    let downtime = if !stopped.is_empty() && (configs_restored || stale) {
        match recreate(ctx, &stopped).await {
            Ok(()) => {
                let d = guard.elapsed_ms();
                guard.disarm();
                d
            }
            Err(e) => {
                let restart = guard.restart().await;
                return Err(e.context(format!(
                    "the data of backup {} is in place, but recreating the services failed{}",
                    plan.backup_id,
                    match restart {
                        Ok(_) => "; the previous containers were started again".to_string(),
                        Err(r) => format!("; starting the previous containers failed too: {r:#}"),
                    }
                )));
            }
        }
    } else {
        guard.restart().await?
    };
    ctx.catalog.finish_operation(op, OperationState::Done, None).await?;
    let safety = safety.context("the safety backup is missing")?;
    Ok(RollbackOutcome {
        backup_id: plan.backup_id,
        safety_backup_id: safety.id,
        safety_backup_path: safety.path,
        restored: plan.items,
        images_retagged: plan
            .images
            .into_iter()
            .filter(|i| i.current_id.as_deref() != Some(i.image_id.as_str()))
            .collect(),
        services_started: stopped,
        duration_ms: started.elapsed().as_millis() as u64,
        downtime_ms: downtime,
    })
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

/// `compose up -d --no-build --no-deps SERVICES` so containers run the images their (restored)
/// compose file names, then waits for them.
async fn recreate(ctx: &Ctx, services: &[String]) -> Result<()> {
    let cli = crate::engine::compose_cli::ComposeCli::detect()
        .context("services must be recreated on the backup's images, but no compose CLI was found")?;
    let mut args = vec!["up", "-d", "--no-build", "--no-deps"];
    args.extend(services.iter().map(String::as_str));
    let mut cmd = cli.command(&ctx.project.dir, &ctx.project.name, &ctx.project.compose_files, &args);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    if !out.status.success() {
        bail!(
            "{} {}: {}",
            cli.command.join(" "),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let engine = ctx.engine.as_ref().context("no engine")?;
    let containers: Vec<Container> = engine
        .project_containers(&ctx.project.name)
        .await?
        .into_iter()
        .filter(|c| services.contains(&c.service))
        .collect();
    crate::guard::start_and_wait(&**engine, &containers, &ctx.project.dependencies(), ctx.timeouts().ready)
        .await
}

/// `repo:tag` → (repo, tag); `repo` alone → (repo, latest). A registry port is not a tag.
fn split_reference(r: &str) -> (String, String) {
    match r.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo.to_string(), tag.to_string()),
        _ => (r.to_string(), "latest".to_string()),
    }
}

/// Recovery of a rollback a dead nuwax left: before the swap, its staging is removed (the
/// project is as before); from the swap on, the swap is finished (the project is as the backup).
pub fn recover_slots(detail: &serde_json::Value) -> Result<&'static str> {
    let phase = detail.get("phase").and_then(|p| p.as_str()).unwrap_or("staging");
    let slots: Vec<Slot> =
        serde_json::from_value(detail.get("slots").cloned().unwrap_or_default()).unwrap_or_default();
    match phase {
        "staging" => {
            swap::clear_staging(&slots)?;
            Ok("the rollback had not replaced anything: the project is as before it")
        }
        _ => {
            swap::complete(&slots)?;
            Ok("the rollback's data swap was finished: the project holds the backup's data")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_reference;

    #[test]
    fn volumes_of_another_project_map_by_their_compose_key() {
        use super::local_volume;
        assert_eq!(local_volume("shop", "shop", "shop_data"), "shop_data");
        assert_eq!(local_volume("old", "new", "old_data"), "new_data");
        assert_eq!(local_volume("old", "new", "external_vol"), "external_vol");
    }

    #[test]
    fn references_split_into_repo_and_tag() {
        assert_eq!(split_reference("nuwax-demo:1"), ("nuwax-demo".into(), "1".into()));
        assert_eq!(split_reference("registry:5000/app"), ("registry:5000/app".into(), "latest".into()));
        assert_eq!(split_reference("registry:5000/app:2"), ("registry:5000/app".into(), "2".into()));
    }
}
