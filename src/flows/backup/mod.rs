//! `nuwax backup`: preflight → record pending → journal + stop → scan → archive → start →
//! verify → rename → record complete. Services are started again on every path out.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use chrono::Utc;
use serde::Serialize;

mod plan;
pub(crate) use plan::check_storage;

use plan::{ManifestParts, build_excludes, build_manifest, preflight, sanitize};

/// `backup_{kind}_v{version}_{YYYY-MM-DD_HH-MM-SS}_{id}.tar.zst` (or `.tar.gz`, `.tar`).
pub fn archive_name(
    kind: BackupKind,
    version: &str,
    created_at: chrono::DateTime<Utc>,
    id: i64,
    compression: Compression,
) -> String {
    format!(
        "backup_{}_v{}_{}_{}.{}",
        kind.as_str(),
        sanitize(version),
        created_at.format("%Y-%m-%d_%H-%M-%S"),
        id,
        compression.extension()
    )
}

use super::Ctx;
use super::sources::{self, Origin, Source, VolumeAccess};
use crate::archive::manifest::{Manifest, ServiceRecord, Skipped};
use crate::archive::{self, ArchiveWriter, Compression, Progress, WriteOptions};
use crate::catalog::{BackupKind, Completed, NewBackup, OperationState};
use crate::engine::{Container, Engine, keep_tag};
use crate::fsutil;
use crate::guard::ServiceGuard;

#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub kind: BackupKind,
    pub note: Option<String>,
    pub compression: Compression,
    pub level: i32,
    /// `false` with `--no-stop`: read the data while the services run.
    pub stop: bool,
    pub volume_access: VolumeAccess,
    /// Bytes/s of content; a test hook for slow archiving (`NUWAX_RATE_LIMIT`).
    pub rate_limit: Option<u64>,
    /// Also store the services' images (`docker save` format) for restores on another machine.
    pub with_images: bool,
    /// The caller (a rollback, an upgrade) has already stopped the services, journaled, and will
    /// start them: these are the containers as they were before it stopped them. The caller has
    /// also checked, before stopping, that the backup fits ([`estimate`]).
    pub stopped_by_caller: Option<Vec<Container>>,
}

impl BackupOptions {
    /// The project's settings (nuwax.toml, `NUWAX_VOLUME_ACCESS`, `NUWAX_RATE_LIMIT`), with
    /// `compression` and `level` overriding them when given.
    pub fn for_project(
        project: &crate::project::Project,
        kind: BackupKind,
        compression: Option<&str>,
        level: Option<i32>,
    ) -> Result<BackupOptions> {
        let s = &project.settings;
        let compression: Compression = match compression.or(s.compression.as_deref()) {
            Some(c) => c.parse().map_err(|e| crate::Error::Config(format!("compression: {e}")))?,
            None => Compression::Zstd,
        };
        let level = level.or(s.level).unwrap_or(compression.default_level());
        if !compression.level_range().contains(&level) {
            return Err(crate::Error::Config(format!(
                "compression level {level} is out of range for {} ({:?})",
                compression.as_str(),
                compression.level_range()
            ))
            .into());
        }
        let volume_access = match std::env::var("NUWAX_VOLUME_ACCESS").ok().or(s.volume_access.clone()) {
            Some(v) => v.parse::<VolumeAccess>().map_err(crate::Error::Config)?,
            None => VolumeAccess::Auto,
        };
        Ok(BackupOptions {
            kind,
            note: None,
            compression,
            level,
            stop: true,
            volume_access,
            rate_limit: std::env::var("NUWAX_RATE_LIMIT").ok().and_then(|v| v.parse().ok()),
            with_images: false,
            stopped_by_caller: None,
        })
    }
}

/// What `backup` reports (`--json` prints this).
#[derive(Debug, Clone, Serialize)]
pub struct BackupOutcome {
    pub id: i64,
    pub path: PathBuf,
    pub status: &'static str,
    pub kind: &'static str,
    pub size_bytes: u64,
    pub content_bytes: u64,
    pub file_count: u64,
    pub compression: &'static str,
    pub checksum: String,
    pub duration_ms: u64,
    /// Reading the data and writing the archive (the services' downtime is this plus stop/start).
    pub archive_ms: u64,
    /// Flushing the archive to disk, done after the services are back.
    pub sync_ms: u64,
    pub verify_ms: u64,
    /// First stop to last service ready; `null` when nothing was stopped.
    pub downtime_ms: Option<u64>,
    pub services_stopped: Vec<String>,
    pub services_touched: bool,
    pub skipped: Vec<Skipped>,
}

/// Roughly how many bytes a backup of the project would hold now (sizes of what this host can
/// read; nothing is stopped): for preflights of flows that make a backup later.
pub async fn estimate(ctx: &Ctx, containers: &[crate::engine::Container]) -> Result<u64> {
    let project = &ctx.project;
    let mut skipped = Vec::new();
    let mut plan = sources::config_sources(project, &mut skipped);
    if let Some(engine) = &ctx.engine {
        plan.extend(
            sources::mount_sources(project, &**engine, containers, VolumeAccess::Auto, &mut skipped).await?,
        );
    }
    let excludes = build_excludes(&project.settings.exclude)?;
    let skip_dirs = vec![project.storage_dir.clone(), project.state_dir.clone()];
    Ok(tokio::task::spawn_blocking(move || plan::estimate(&plan, &excludes, &skip_dirs)).await?)
}

pub async fn backup(ctx: &Ctx, opts: &BackupOptions, progress: Arc<dyn Progress>) -> Result<BackupOutcome> {
    let started = Instant::now();
    let project = &ctx.project;
    let mut skipped = Vec::new();

    // Everything that can be known without stopping anything.
    let mut containers = match (&opts.stopped_by_caller, &ctx.engine) {
        (Some(before), _) => before.clone(),
        (None, Some(engine)) => engine.project_containers(&project.name).await?,
        (None, None) => Vec::new(),
    };
    // Compose v1 keeps stop_grace_period to itself; the compose file still says it.
    for c in containers.iter_mut().filter(|c| c.stop_timeout.is_none()) {
        c.stop_timeout = project.services.get(&c.service).and_then(|s| s.stop_grace_period);
    }
    if ctx.engine.is_some() && containers.is_empty() {
        tracing::warn!(
            "no containers of compose project {:?} found; backing up files and labelled volumes only",
            project.name
        );
    }
    let mut plan = sources::config_sources(project, &mut skipped);
    plan.extend(match &ctx.engine {
        Some(engine) => {
            sources::mount_sources(project, &**engine, &containers, opts.volume_access, &mut skipped).await?
        }
        None => sources::compose_bind_sources(project, &mut skipped),
    });
    check_storage(&project.storage_dir)?;
    // Images do not change while the services run: saved before anything stops, into a spool
    // file in the storage dir that the archive then takes in like any other file.
    let spool = ImageSpool(project.storage_dir.join(format!(".nuwax-images-{}", std::process::id())));
    if opts.with_images {
        let engine = ctx.engine.as_ref().context("--with-images needs the Docker engine")?;
        plan.push(spool.save(&**engine, &containers).await?);
    }
    let excludes = build_excludes(&project.settings.exclude)?;
    let skip_dirs = vec![project.storage_dir.clone(), project.state_dir.clone()];
    // A caller that stopped the services already checked the room in its own plan, before the
    // stop (rollback, upgrade): walking the data again here would only lengthen the downtime.
    if opts.stopped_by_caller.is_none() {
        preflight(project.storage_dir.as_path(), &plan, &excludes, &skip_dirs)?;
    }
    ctx.interrupt.check()?;

    let created_at = Utc::now();
    let version = ctx.current_version().await?.unwrap_or_else(|| project.service_version());
    let id = ctx
        .catalog
        .insert_pending(&NewBackup {
            kind: opts.kind,
            project: &project.name,
            service_version: &version,
            compression: opts.compression.as_str(),
            created_at,
            note: opts.note.as_deref(),
        })
        .await?;
    let final_path =
        project.storage_dir.join(archive_name(opts.kind, &version, created_at, id, opts.compression));
    let temp_path = project.storage_dir.join(format!(".nuwax-partial-{id}.tmp"));
    let op = ctx.catalog.begin_operation("backup", &project.name, Some(id), Some(&temp_path)).await?;
    tracing::info!(id, path = %final_path.display(), "backup started");

    let mut guard = match opts.stopped_by_caller {
        Some(_) => None,
        None => {
            ctx.engine.as_ref().map(|e| ServiceGuard::new(e.clone(), project.dependencies(), ctx.timeouts()))
        }
    };
    let services: Vec<ServiceRecord> = containers
        .iter()
        .map(|c| ServiceRecord {
            service: c.service.clone(),
            container: c.name.clone(),
            image: c.image.clone(),
            image_id: c.image_id.clone(),
            running: c.is_running(),
            keep_tag: None,
        })
        .collect();
    let mut services = services;
    if let Some(engine) = &ctx.engine {
        keep_images(&**engine, &project.name, id, &mut services).await;
    }

    let work = Work {
        ctx,
        opts,
        id,
        op,
        created_at,
        plan: &plan,
        containers: &containers,
        services,
        skipped,
        excludes,
        skip_dirs,
        temp_path: &temp_path,
        progress,
    };
    let result = work.run(guard.as_mut()).await;

    // Always: start what was stopped, whatever happened above.
    let stopped_names: Vec<String> =
        guard.as_ref().map(|g| g.stopped().iter().map(|c| c.service.clone()).collect()).unwrap_or_default();
    let restart = match guard.as_mut() {
        Some(g) if !g.stopped().is_empty() => Some(g.restart().await),
        _ => None,
    };
    let downtime_ms = guard.as_ref().and_then(|g| g.elapsed_ms());
    let restart_failed = matches!(restart, Some(Err(_)));

    let result = match (result, restart) {
        (Ok(w), None | Some(Ok(_))) => {
            finish(ctx, id, &temp_path, &final_path, w, started, downtime_ms).await
        }
        // Services left down outrank the first error: it decides the exit code and the hint.
        (Err(e), Some(Err(r))) => {
            Err(r.context(format!("{e:#}; and then starting the services again failed")))
        }
        (Ok(_), Some(Err(r))) => Err(r),
        (Err(e), _) => Err(e),
    };
    match result {
        Ok(mut outcome) => {
            ctx.catalog.finish_operation(op, OperationState::Done, None).await?;
            outcome.services_stopped = stopped_names;
            outcome.duration_ms = started.elapsed().as_millis() as u64;
            Ok(outcome)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&temp_path);
            if let Some(engine) = &ctx.engine {
                release_images(&**engine, &project.name, id, containers.iter().map(|c| c.service.as_str()))
                    .await;
            }
            let msg = format!("{e:#}");
            ctx.catalog.fail(id, &msg, downtime_ms).await?;
            // With services still down the journal stays open: the next nuwax run (or
            // `nuwax recover`) tries to start them again.
            if !restart_failed {
                ctx.catalog.finish_operation(op, OperationState::Done, Some("failed")).await?;
            }
            Err(e.context(format!("backup {id} failed")))
        }
    }
}

struct Work<'a> {
    ctx: &'a Ctx,
    opts: &'a BackupOptions,
    id: i64,
    op: i64,
    created_at: chrono::DateTime<Utc>,
    plan: &'a [Source],
    containers: &'a [Container],
    services: Vec<ServiceRecord>,
    skipped: Vec<Skipped>,
    excludes: globset::GlobSet,
    skip_dirs: Vec<PathBuf>,
    temp_path: &'a Path,
    progress: Arc<dyn Progress>,
}

struct Written {
    summary: archive::WriteSummary,
    manifest: Manifest,
    archive_ms: u64,
}

impl Work<'_> {
    /// Stop (unless `--no-stop`), scan, archive. Services are restarted by the caller.
    async fn run(self, guard: Option<&mut ServiceGuard>) -> Result<Written> {
        let ctx = self.ctx;
        let stopping = (self.opts.stop && guard.is_some()) || self.opts.stopped_by_caller.is_some();
        ctx.interrupt.check()?;
        if let (true, Some(guard)) = (self.opts.stop, guard) {
            guard.stop(&ctx.catalog, self.op, self.containers).await?;
        }
        ctx.interrupt.check()?;
        let archive_started = Instant::now();

        let engine = ctx.engine.clone();
        let handle = tokio::runtime::Handle::current();
        let cancel = ctx.interrupt.cancel().clone();
        let Work {
            opts,
            id,
            created_at,
            plan,
            services,
            mut skipped,
            excludes,
            skip_dirs,
            temp_path,
            progress,
            ..
        } = self;
        let plan = plan.to_vec();
        let temp_path = temp_path.to_path_buf();
        let project = ctx.project.name.clone();
        let project_dir = ctx.project.dir.to_string_lossy().into_owned();
        let version = ctx.project.service_version();
        let wopts = WriteOptions {
            compression: opts.compression,
            level: opts.level,
            threads: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
            rate_limit: opts.rate_limit,
            // The file is read back and verified once the services run again; that pass gives
            // the whole-file digest, so hashing the output while they are down is wasted time.
            hash_output: false,
        };
        let kind = opts.kind.as_str().to_string();
        let written = tokio::task::spawn_blocking(move || -> Result<(archive::WriteSummary, Manifest)> {
            let mut scans = Vec::with_capacity(plan.len());
            for s in &plan {
                if cancel.is_cancelled() {
                    return Err(archive::Error::Cancelled.into());
                }
                let scan = match &s.origin {
                    Origin::Host(root) => archive::scan_host(&s.prefix, root, &excludes, &skip_dirs)
                        .with_context(|| format!("reading {}", root.display()))?,
                    Origin::Engine { container, path } => {
                        let stream = export(&handle, engine.as_deref(), container, path)?;
                        archive::scan_tar_stream(&s.prefix, stream)
                            .with_context(|| format!("reading {path} through the engine"))?
                    }
                };
                skipped.extend(scan.skipped.iter().cloned());
                scans.push(scan);
            }
            let manifest = build_manifest(ManifestParts {
                id,
                kind,
                project,
                project_dir,
                version,
                created_at,
                compression: wopts.compression,
                stopped: stopping,
                services,
                plan: &plan,
                scans: &scans,
                skipped,
            });
            progress.set_total(scans.iter().map(|s| s.size).sum());
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode_private()
                .open(&temp_path)
                .with_context(|| format!("creating {}", temp_path.display()))?;
            let mut w = ArchiveWriter::new(
                std::io::BufWriter::with_capacity(1 << 20, &file),
                &wopts,
                cancel.clone(),
                progress.clone(),
            )?;
            w.write_manifest(&manifest)?;
            for (s, scan) in plan.iter().zip(&scans) {
                match &s.origin {
                    Origin::Host(root) => w
                        .append_host(&s.prefix, root, &scan.entries)
                        .with_context(|| format!("archiving {}", root.display()))?,
                    Origin::Engine { container, path } => {
                        let stream = export(&handle, engine.as_deref(), container, path)?;
                        w.append_tar_stream(&s.prefix, stream, &scan.entries)
                            .with_context(|| format!("archiving {path} through the engine"))?
                    }
                }
            }
            // Not synced here: the data is read, so the services can start again first; `finish`
            // syncs before the archive is verified, renamed and recorded.
            let summary = w.finish()?;
            Ok((summary, manifest))
        })
        .await
        .map_err(|e| anyhow::anyhow!("archiving panicked: {e}"))?;
        let (summary, manifest) = match written {
            Err(e)
                if e.downcast_ref::<archive::Error>()
                    .is_some_and(|a| matches!(a, archive::Error::Cancelled)) =>
            {
                ctx.interrupt.check()?;
                return Err(e);
            }
            other => other?,
        };
        Ok(Written { summary, manifest, archive_ms: archive_started.elapsed().as_millis() as u64 })
    }
}

/// The directory `docker save` output is spooled into; removed when the backup ends.
struct ImageSpool(PathBuf);

impl ImageSpool {
    async fn save(&self, engine: &dyn Engine, containers: &[Container]) -> Result<Source> {
        let mut ids: Vec<String> =
            containers.iter().map(|c| c.image_id.clone()).filter(|i| !i.is_empty()).collect();
        ids.sort();
        ids.dedup();
        let _ = std::fs::remove_dir_all(&self.0);
        fsutil::create_private_dir(&self.0)?;
        let file = self.0.join("images.tar");
        let mut out =
            tokio::fs::File::create(&file).await.with_context(|| format!("creating {}", file.display()))?;
        let mut stream = engine.save_images(&ids).await?;
        tokio::io::copy(&mut stream, &mut out).await.context("saving the services' images")?;
        out.sync_all().await?;
        Ok(Source {
            prefix: "images/images.tar".into(),
            origin: Origin::Host(file),
            role: sources::Role::Images,
        })
    }
}

impl Drop for ImageSpool {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Tags each service's image with [`keep_tag`] so a rollback to this backup finds it. A failure
/// is a warning: the backup itself is still good, only the image may be pruned later.
async fn keep_images(engine: &dyn Engine, project: &str, id: i64, services: &mut [ServiceRecord]) {
    for s in services.iter_mut().filter(|s| !s.image_id.is_empty()) {
        let (repo, tag) = keep_tag(project, &s.service, id);
        match engine.tag_image(&s.image_id, &repo, &tag).await {
            Ok(()) => s.keep_tag = Some(format!("{repo}:{tag}")),
            Err(e) => tracing::warn!("could not tag the image of {} to keep it for rollback: {e}", s.service),
        }
    }
}

/// Removes the tags [`keep_images`] made for backup `id`.
pub async fn release_images<'a>(
    engine: &dyn Engine,
    project: &str,
    id: i64,
    services: impl IntoIterator<Item = &'a str>,
) {
    let services: std::collections::BTreeSet<&str> = services.into_iter().collect();
    for service in services {
        let (repo, tag) = keep_tag(project, service, id);
        if let Err(e) = engine.untag_image(&format!("{repo}:{tag}")).await {
            tracing::warn!("could not remove the image tag {repo}:{tag}: {e}");
        }
    }
}

fn export(
    handle: &tokio::runtime::Handle,
    engine: Option<&dyn Engine>,
    container: &str,
    path: &str,
) -> Result<impl std::io::Read + use<>> {
    let engine = engine.context("the engine is needed to read this volume")?;
    let stream = handle.block_on(engine.export_path(container, path))?;
    Ok(tokio_util::io::SyncIoBridge::new_with_handle(stream, handle.clone()))
}

/// After the services are back: verify the temp file, rename it into place, record it complete.
async fn finish(
    ctx: &Ctx,
    id: i64,
    temp: &Path,
    final_path: &Path,
    w: Written,
    started: Instant,
    downtime_ms: Option<u64>,
) -> Result<BackupOutcome> {
    ctx.interrupt.check()?;
    let sync_started = Instant::now();
    let t = temp.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&t).and_then(|f| f.sync_all()))
        .await?
        .with_context(|| format!("syncing {}", temp.display()))?;
    let sync_ms = sync_started.elapsed().as_millis() as u64;
    let verify_started = Instant::now();
    let (t, sha, cancel) =
        (temp.to_path_buf(), w.summary.archive_sha256.clone(), ctx.interrupt.cancel().clone());
    // Every entry against the manifest and trailer, and the bytes on disk are what was written
    // (the size, and the digest when the writer hashed). The digest recorded is of this file.
    let report = tokio::task::spawn_blocking(move || {
        archive::verify(&t, sha.as_deref(), &cancel, &archive::NoProgress)
    })
    .await?
    .map_err(|e| crate::Error::VerifyFailed { id, detail: format!("{:#}", anyhow::Error::from(e)) })?;
    let verify_ms = verify_started.elapsed().as_millis() as u64;
    if report.archive_bytes != w.summary.archive_bytes {
        anyhow::bail!(crate::Error::VerifyFailed {
            id,
            detail: format!(
                "{} bytes were written, {} read back",
                w.summary.archive_bytes, report.archive_bytes
            ),
        });
    }
    ctx.interrupt.check()?;
    std::fs::rename(temp, final_path)
        .with_context(|| format!("renaming {} to {}", temp.display(), final_path.display()))?;
    let dir = final_path.parent().unwrap_or(Path::new("."));
    fsutil::fsync_dir(dir).with_context(|| format!("syncing {}", dir.display()))?;
    let file_count =
        w.manifest.entries.iter().filter(|e| e.kind == archive::manifest::EntryKind::File).count() as u64;
    let duration_ms = started.elapsed().as_millis() as u64;
    ctx.catalog
        .complete(
            id,
            &Completed {
                path: final_path.to_path_buf(),
                size_bytes: w.summary.archive_bytes,
                checksum: report.archive_sha256.clone(),
                file_count,
                finished_at: Utc::now(),
                duration_ms,
                downtime_ms,
            },
        )
        .await?;
    let compression = match w.manifest.compression.as_str() {
        "zstd" => "zstd",
        "gzip" => "gzip",
        _ => "none",
    };
    Ok(BackupOutcome {
        id,
        path: final_path.to_path_buf(),
        status: "complete",
        kind: kind_str(&w.manifest.kind),
        size_bytes: report.archive_bytes,
        content_bytes: report.content_bytes,
        file_count,
        compression,
        checksum: report.archive_sha256.clone(),
        duration_ms,
        archive_ms: w.archive_ms,
        sync_ms,
        verify_ms,
        downtime_ms,
        services_stopped: Vec::new(),
        services_touched: w.manifest.services_stopped,
        skipped: w.manifest.skipped,
    })
}

fn kind_str(k: &str) -> &'static str {
    match k {
        "pre-upgrade" => "pre-upgrade",
        "pre-rollback" => "pre-rollback",
        "scheduled" => "scheduled",
        _ => "manual",
    }
}

trait PrivateMode {
    fn mode_private(&mut self) -> &mut Self;
}

impl PrivateMode for std::fs::OpenOptions {
    fn mode_private(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

#[cfg(test)]
mod tests;
