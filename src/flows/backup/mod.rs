//! `nuwax backup`, as named steps: sources (nothing stopped) → room → record pending + journal →
//! keep images → [stop] → write → [start] → seal (sync, verify, rename, record complete).
//! The stop and start are the runner's scope. A backup made inside another operation's scope
//! ([`backup_in`]: the pre-upgrade backup, a rollback's safety backup) is the same steps
//! without a scope of its own. Any failure abandons the backup: temp file and image tags go,
//! the row is marked failed; recovery does the same after a crash.

mod around;
mod dumps;
mod images;
mod plan;
mod preview;
mod resume;
mod twophase;
mod windows;
mod write;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use chrono::Utc;
use serde::{Deserialize, Serialize};

pub use around::{InScope, Prepared, prepare};
pub use images::release_images;
pub(crate) use plan::check_storage;
pub use plan::{ItemMoment, moments};
pub use preview::{BackupPreview, preview};
pub use twophase::SnapshotUse;

use super::Ctx;
use super::sources::{self, VolumeAccess};
use crate::archive::manifest::{ServiceRecord, Skipped};
use crate::archive::{Compression, Progress};
use crate::catalog::{BackupKind, NewBackup};
use crate::database::Mode;
use crate::engine::Container;
use crate::runner::{self, Operation, OperationKind, Scope, ScopeReport};
use images::{ImageSpool, keep_images};
use plan::{build_excludes, preflight, sanitize};
use twophase::Phases;
use write::{Dumps, Moment, Sources, Written, seal, write};

/// `backup_{kind}_v{version}_{YYYY-MM-DD_HH-MM-SS}_{id}.tar.zst` (or `.tar.gz`, `.tar`), and
/// `.age` after it when the archive is encrypted.
pub fn archive_name(
    kind: BackupKind,
    version: &str,
    created_at: chrono::DateTime<Utc>,
    id: i64,
    compression: Compression,
    encrypted: bool,
) -> String {
    format!(
        "backup_{}_v{}_{}_{}.{}{}",
        kind.as_str(),
        sanitize(version),
        created_at.format("%Y-%m-%d_%H-%M-%S"),
        id,
        compression.extension(),
        if encrypted { ".age" } else { "" }
    )
}

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
    /// Copy while running into the snapshot, and only the changes while stopped.
    pub snapshot: SnapshotUse,
    /// `stop = "each"`: stop one group of linked services at a time (two phases only).
    pub stop_each: bool,
    /// `encrypt_to` in nuwax.toml: the archive is encrypted to these age recipients.
    pub recipients: Vec<crate::archive::seal::Recipient>,
}

impl BackupOptions {
    /// The project's settings (nuwax.toml, `NUWAX_VOLUME_ACCESS`), with `compression` and
    /// `level` overriding them when given.
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
            rate_limit: crate::faults::rate_limit(),
            with_images: false,
            snapshot: match s.snapshot {
                Some(false) => SnapshotUse::Off("snapshot = false in nuwax.toml"),
                _ => SnapshotUse::On,
            },
            stop_each: s.stop == crate::project::StopMode::Each,
            recipients: crate::archive::seal::parse_recipients(&s.encrypt_to)
                .map_err(crate::Error::Config)?,
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
    /// The version of the configs the backup holds.
    pub service_version: String,
    pub size_bytes: u64,
    pub content_bytes: u64,
    pub file_count: u64,
    pub compression: &'static str,
    pub checksum: String,
    pub duration_ms: u64,
    /// The copy into the snapshot while the services ran; `null` in one phase.
    pub precopy_ms: Option<u64>,
    /// Bytes the copy while stopped wrote into the snapshot (what changed since the copy while
    /// running); `null` in one phase.
    pub delta_bytes: Option<u64>,
    /// First stop to last service ready (the same as `downtime_ms`); `null` when nothing stopped.
    pub stopped_ms: Option<u64>,
    /// Why the data was copied in one phase while stopped (no snapshot), when it was.
    pub single_phase: Option<String>,
    /// With `stop = "each"`: each group of services stopped in turn and for how long (the
    /// downtime is the longest). Empty when the project stopped as one.
    pub stop_windows: Vec<StopWindow>,
    /// Reading the data and writing the archive: after the services started again when two
    /// phases were used, else part of the downtime.
    pub archive_ms: u64,
    /// Flushing the archive to disk, done after the services are back.
    pub sync_ms: u64,
    pub verify_ms: u64,
    /// First stop to last service ready; `null` when nothing was stopped.
    pub downtime_ms: Option<u64>,
    pub services_stopped: Vec<String>,
    /// Services paused instead (`backup = "pause"`; also in `services_stopped`).
    pub services_paused: Vec<String>,
    pub services_touched: bool,
    /// The data was copied while services ran: not one point in time.
    pub live: bool,
    /// Services the engine killed because they did not stop within their stop timeout.
    pub stop_killed: Vec<String>,
    pub skipped: Vec<Skipped>,
    /// The database dumps it holds (taken inside the servers' containers while they ran).
    pub dumps: Vec<crate::archive::manifest::DumpDigest>,
    /// Per dump and mount, whether it holds one point in time.
    pub items: Vec<ItemMoment>,
    /// Its copies to the remotes (made after it completed; see [`crate::flows::offsite`]).
    pub copies: Vec<crate::flows::offsite::CopyOutcome>,
}

/// One stop of `stop = "each"`.
#[derive(Debug, Clone, Serialize)]
pub struct StopWindow {
    pub services: Vec<String>,
    /// First stop to last service ready, for this group.
    pub stopped_ms: Option<u64>,
}

/// What a backup operation journals: enough to abandon it after a crash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    pub backup_id: i64,
    pub temp_path: PathBuf,
    /// Where the verified archive is renamed to: removed when the row never became complete.
    #[serde(default)]
    pub final_path: Option<PathBuf>,
    /// Services whose images were tagged to keep them: released when the backup fails.
    #[serde(default)]
    pub tagged: Vec<String>,
    /// Frozen in the snapshot for another operation, its state saved here: recovery writes
    /// the archive instead of abandoning it.
    #[serde(default)]
    pub frozen: Option<PathBuf>,
}

impl runner::Journal for Journal {
    const KIND: OperationKind = OperationKind::Backup;

    fn backup_id(&self) -> Option<i64> {
        Some(self.backup_id)
    }
}

/// The backup row and its paths, recorded before anything is written.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Pending {
    pub id: i64,
    pub version: String,
    pub created_at: chrono::DateTime<Utc>,
    pub temp_path: PathBuf,
    pub final_path: PathBuf,
}

/// Roughly how many bytes a backup of the project would hold now (sizes of what this host can
/// read; nothing is stopped): for preflights of flows that make a backup later.
pub async fn estimate(ctx: &Ctx, containers: &[Container]) -> Result<u64> {
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

/// `nuwax backup`: copies the data into the snapshot while the services run, stops them to copy
/// what changed since, starts them, then writes and verifies the archive from the snapshot
/// (without a snapshot: stops them for the whole archive; `--no-stop`: never stops them).
pub async fn backup(ctx: &Ctx, opts: &BackupOptions, progress: Arc<dyn Progress>) -> Result<BackupOutcome> {
    let started = Instant::now();
    let containers = match &ctx.engine {
        Some(engine) => engine.project_containers(&ctx.project.name).await?,
        None => Vec::new(),
    };
    if ctx.engine.is_some() && containers.is_empty() {
        tracing::warn!(
            "no containers of compose project {:?} found; backing up files and labelled volumes only",
            ctx.project.name
        );
    }
    // Running database servers are dumped inside their containers (they keep running) unless
    // the settings say otherwise; with `stop = "each"` each is copied within its window.
    let dumps = match opts.stop_each {
        true => dumps::DumpPlan::default(),
        false => dumps::plan(ctx, &containers).await?,
    };
    let (mut sources, _spool) = find_sources(ctx, opts, &containers, &dumps).await?;
    let takes = Takes::of(ctx, &containers, &dumps, opts.stop_each)?;
    let (to_stop, to_pause) = (takes.stop.clone(), takes.pause.clone());
    let ran = takes.ran_by_mode();
    sources.read_live(&ran);
    let records = dumps.records();
    let room = preflight(&ctx.project.storage_dir, &sources.plan, &sources.excludes, &sources.skip_dirs)?;
    ctx.interrupt.check()?;
    let stop = opts.stop && ctx.engine.is_some();
    let live = !stop && (ctx.engine.is_none() || containers.iter().any(Container::is_running));
    let (pre, mut phases) = match stop {
        true => copy_while_running(ctx, opts.snapshot, &sources, &containers, &room).await?,
        false => (None, PhaseReport::default()),
    };
    if pre.is_some() {
        crate::faults::pause(crate::faults::Pause::BackupAfterPrecopy).await;
    }
    ctx.interrupt.check()?;
    let services = service_records(&containers, |c| c.is_running());
    let (mut op, pending, services) = begin(ctx, opts, services).await?;
    let mut report = None;
    let written = match (stop, &pre) {
        (true, Some(pre)) if opts.stop_each => {
            let each = stop_each(&mut op, pre, &sources, &takes.stop).await;
            let (frozen, killed, r, windows) = each;
            phases.windows = windows;
            report = Some(r);
            match frozen {
                Ok(frozen) => {
                    phases.delta_bytes = Some(frozen.report.bytes_written);
                    let moment =
                        Moment { stopped: true, live: false, killed, dumps: Default::default(), ran };
                    write_frozen(ctx, opts, &pending, &sources, services, moment, progress, frozen).await
                }
                Err(e) => Err(e),
            }
        }
        (true, Some(pre)) => {
            let (sources, dumps, to_pause) = (&sources, &dumps, &to_pause);
            let frozen = op
                .with_stopped(&to_stop, |_, scope| {
                    Box::pin(async move {
                        scope.pause(to_pause).await?;
                        crate::faults::pause(crate::faults::Pause::BackupStopped).await;
                        let frozen = twophase::delta(ctx, pre, sources).await?;
                        let started = start_dumps(ctx, dumps).await?;
                        Ok((frozen, scope.killed().to_vec(), started))
                    })
                })
                .await;
            match frozen {
                Ok((frozen, killed, started)) => {
                    if !started.is_empty() {
                        crate::faults::pause(crate::faults::Pause::BackupDumpsStarted).await;
                    }
                    phases.delta_bytes = Some(frozen.report.bytes_written);
                    let dumps = Dumps { records, started: started.into() };
                    let moment = Moment { stopped: true, live: false, killed, dumps, ran };
                    write_frozen(ctx, opts, &pending, sources, services, moment, progress, frozen).await
                }
                Err(e) => Err(e),
            }
        }
        (true, None) => {
            let (pending, sources, dumps, to_pause) = (&pending, &sources, &dumps, &to_pause);
            op.with_stopped(&to_stop, |_, scope| {
                Box::pin(async move {
                    scope.pause(to_pause).await?;
                    let dumps = Dumps { records, started: start_dumps(ctx, dumps).await?.into() };
                    let killed = scope.killed().to_vec();
                    let moment = Moment { stopped: true, live: false, killed, dumps, ran };
                    write(ctx, opts, pending, sources, services, moment, progress, Vec::new()).await
                })
            })
            .await
        }
        (false, _) => {
            let dumps = match start_dumps(ctx, &dumps).await {
                Ok(started) => Dumps { records, started: started.into() },
                Err(e) => {
                    return finish(ctx, op, &pending, Err(e), ScopeReport::default(), phases, started).await;
                }
            };
            let moment = Moment { stopped: false, live, killed: Vec::new(), dumps, ran };
            write(ctx, opts, &pending, &sources, services, moment, progress, Vec::new()).await
        }
    };
    let report = report.unwrap_or_else(|| op.scope().cloned().unwrap_or_default());
    finish(ctx, op, &pending, written, report, phases, started).await
}

/// Who a backup's stop takes and how: stopped, paused, or left running (a server it dumps, a
/// service the settings say `live` or `skip`). The backup and its `--dry-run` use the same.
#[derive(Debug, Clone)]
pub(super) struct Takes {
    /// Stopped by the scope (with `stop = "each"`: grouped into windows).
    pub stop: Vec<Container>,
    /// Paused by the scope instead (`backup = "pause"`).
    pub pause: Vec<Container>,
    /// Running services the backup never stops, and why.
    pub running: Vec<(String, Mode)>,
}

impl Takes {
    fn of(ctx: &Ctx, containers: &[Container], dumps: &dumps::DumpPlan, stop_each: bool) -> Result<Takes> {
        let mut modes = crate::database::said_modes(containers, &ctx.project.settings.services)?;
        // With `stop = "each"` every group is stopped in turn, the paused ones too.
        if stop_each {
            modes.retain(|_, m| *m != Mode::Pause);
        }
        let mut takes = Takes { stop: Vec::new(), pause: Vec::new(), running: Vec::new() };
        for c in containers {
            // A server said `dump` that the plan does not dump does not run (or `stop = "each"`
            // copies it in its window): it is stopped like any service.
            let mode = match (dumps.serves(c), modes.get(&c.service)) {
                (true, _) => Mode::Dump,
                (false, Some(Mode::Dump) | None) => Mode::Stop,
                (false, Some(m)) => *m,
            };
            match mode {
                _ if mode.keeps_running() => {
                    if c.is_running() && !takes.running.iter().any(|(s, _)| s == &c.service) {
                        takes.running.push((c.service.clone(), mode));
                    }
                }
                Mode::Pause => takes.pause.push(c.clone()),
                _ => takes.stop.push(c.clone()),
            }
        }
        Ok(takes)
    }

    /// The running services left running because the settings say so (not the dumped servers,
    /// which the dumps record).
    fn ran_by_mode(&self) -> Vec<String> {
        self.running.iter().filter(|(_, m)| *m != Mode::Dump).map(|(s, _)| s.clone()).collect()
    }
}

/// Starts the backup's dumps (inside its stop: each fixes its moment before the services that
/// write to it start again).
async fn start_dumps(ctx: &Ctx, plan: &dumps::DumpPlan) -> Result<Vec<crate::database::dump::Started>> {
    if plan.servers.is_empty() {
        return Ok(Vec::new());
    }
    let t = Instant::now();
    let started = dumps::start(ctx.engine()?, plan).await?;
    tracing::info!("{} dumps started in {} ms", started.len(), t.elapsed().as_millis());
    Ok(started)
}

/// The archive, written from the snapshot the stop froze; once it is, the snapshot's index is
/// committed for the next backup.
#[allow(clippy::too_many_arguments)]
async fn write_frozen(
    ctx: &Ctx,
    opts: &BackupOptions,
    pending: &Pending,
    sources: &Sources,
    services: Vec<ServiceRecord>,
    moment: Moment,
    progress: Arc<dyn Progress>,
    frozen: twophase::Frozen,
) -> Result<Written> {
    let w = write(ctx, opts, pending, sources, services, moment, progress, frozen.reads).await;
    if w.is_ok() {
        twophase::commit(frozen.snap, frozen.index).await;
    }
    w
}

/// `stop = "each"`: each group of linked services stopped in turn for the changes to its data
/// (the snapshot's pass spans the windows). Returns the frozen copy, the services killed at
/// their stop timeout, the scopes' report taken together (the downtime is the longest window)
/// and each window.
async fn stop_each(
    op: &mut Operation<'_, Journal>,
    pre: &twophase::Precopied,
    sources: &Sources,
    containers: &[Container],
) -> (Result<twophase::Frozen>, Vec<String>, ScopeReport, Vec<StopWindow>) {
    let ctx = op.ctx();
    let pass = windows::WindowPass::start(ctx, pre, sources);
    let (mut killed, mut report, mut each) = (Vec::new(), ScopeReport::default(), Vec::new());
    // A group whose services mount nothing is never stopped: there is nothing of theirs to copy.
    for w in windows::windows(ctx, containers, sources).into_iter().filter(|w| !w.sources.is_empty()) {
        if let Err(e) = ctx.interrupt.check() {
            return (Err(e.into()), killed, report, each);
        }
        let copy = pass.window(w.sources.clone());
        let done = op
            .with_stopped(&w.containers, |_, scope| {
                Box::pin(async move {
                    crate::faults::pause(crate::faults::Pause::BackupStopped).await;
                    copy.run(ctx).await?;
                    Ok(scope.killed().to_vec())
                })
            })
            .await;
        let r = op.scope().cloned().unwrap_or_default();
        each.push(StopWindow { services: r.stopped.clone(), stopped_ms: r.downtime_ms });
        report.stopped.extend(r.stopped);
        report.killed.extend(r.killed);
        report.downtime_ms = report.downtime_ms.max(r.downtime_ms);
        match done {
            Ok(k) => killed.extend(k),
            Err(e) => return (Err(e), killed, report, each),
        }
    }
    (pass.finish(ctx).await, killed, report, each)
}

/// Before the stop: into the snapshot while the services run, when two phases are possible;
/// else why not.
async fn copy_while_running(
    ctx: &Ctx,
    snapshot: SnapshotUse,
    sources: &Sources,
    containers: &[Container],
    room: &plan::Room,
) -> Result<(Option<twophase::Precopied>, PhaseReport)> {
    let mut phases = PhaseReport::default();
    let why = match twophase::decide(ctx, snapshot, sources, containers, room) {
        Phases::Two(snap) => match twophase::precopy(ctx, snap, sources).await? {
            Ok(pre) => {
                phases.precopy_ms = Some(pre.ms);
                return Ok((Some(pre), phases));
            }
            Err(why) => {
                tracing::warn!("{why}: copying in one phase while the services are stopped");
                why
            }
        },
        Phases::One(why) => {
            tracing::info!("copying in one phase while the services are stopped: {why}");
            why
        }
    };
    phases.single_phase = Some(why);
    Ok((None, phases))
}

/// How the copy went: two phases, or one and why.
#[derive(Debug, Default)]
struct PhaseReport {
    precopy_ms: Option<u64>,
    delta_bytes: Option<u64>,
    single_phase: Option<String>,
    windows: Vec<StopWindow>,
}

/// A backup inside another operation's scope, in one phase: the services that scope stopped
/// stay stopped (and count as running for what the backup records); starting them is the
/// scope's. The caller checked the room before its stop.
pub async fn backup_in(
    ctx: &Ctx,
    opts: &BackupOptions,
    scope: &Scope<'_>,
    progress: Arc<dyn Progress>,
) -> Result<BackupOutcome> {
    let containers = ctx.engine()?.project_containers(&ctx.project.name).await?;
    let prepared =
        around::prepare(ctx, opts, &containers, Some("made inside another operation's stop"), None, &[])
            .await?;
    prepared.freeze(ctx, opts, scope, progress.clone()).await?.complete(ctx, progress).await
}

/// Config files and every mount of `containers`; the images spooled when asked for.
async fn find_sources(
    ctx: &Ctx,
    opts: &BackupOptions,
    containers: &[Container],
    dumps: &dumps::DumpPlan,
) -> Result<(Sources, Option<ImageSpool>)> {
    let mut sources = plan_sources(ctx, opts, containers, dumps).await?;
    let project = &ctx.project;
    check_storage(&project.storage_dir)?;
    let mut spool = None;
    if opts.with_images {
        let engine = ctx.engine.as_ref().context("--with-images needs the Docker engine")?;
        let s = ImageSpool(project.storage_dir.join(format!(".nuwax-images-{}", std::process::id())));
        sources.plan.push(s.save(&**engine, containers).await?);
        spool = Some(s);
    }
    Ok((sources, spool))
}

/// What a backup of `containers` reads (nothing is written): config files and every mount but
/// those the dumps replace and those only `skip` services use.
async fn plan_sources(
    ctx: &Ctx,
    opts: &BackupOptions,
    containers: &[Container],
    dumps: &dumps::DumpPlan,
) -> Result<Sources> {
    let project = &ctx.project;
    let mut skipped = Vec::new();
    let mut plan = sources::config_sources(project, &mut skipped);
    plan.extend(match &ctx.engine {
        Some(engine) => {
            sources::mount_sources(project, &**engine, containers, opts.volume_access, &mut skipped).await?
        }
        None => sources::compose_bind_sources(project, &mut skipped),
    });
    let dumped = dumps.drop_data_mounts(&mut plan, &mut skipped);
    let skip: Vec<String> = (crate::database::said_modes(containers, &project.settings.services)?)
        .into_iter()
        .filter_map(|(service, mode)| (mode == Mode::Skip).then_some(service))
        .collect();
    sources::drop_skipped(&mut plan, &skip, &mut skipped);
    let sqlite = dumps.sqlite_excludes(containers, &plan, &mut skipped)?;
    let excludes = build_excludes(&[project.settings.exclude.clone(), sqlite].concat())?;
    let skip_dirs = vec![project.storage_dir.clone(), project.state_dir.clone()];
    Ok(Sources { plan, skipped, excludes, skip_dirs, dumped, live: Default::default() })
}

/// Each container as the manifest records it; `running` says which the project runs.
fn service_records(containers: &[Container], running: impl Fn(&Container) -> bool) -> Vec<ServiceRecord> {
    containers
        .iter()
        .map(|c| ServiceRecord {
            service: c.service.clone(),
            container: c.name.clone(),
            image: c.image.clone(),
            image_id: c.image_id.clone(),
            running: running(c),
            keep_tag: None,
        })
        .collect()
}

/// Records the pending backup and opens its operation, then tags the images it keeps.
async fn begin<'c>(
    ctx: &'c Ctx,
    opts: &BackupOptions,
    mut services: Vec<ServiceRecord>,
) -> Result<(Operation<'c, Journal>, Pending, Vec<ServiceRecord>)> {
    let project = &ctx.project;
    let created_at = Utc::now();
    let version = ctx.version().await?;
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
    let pending = Pending {
        id,
        final_path: project.storage_dir.join(archive_name(
            opts.kind,
            &version,
            created_at,
            id,
            opts.compression,
            !opts.recipients.is_empty(),
        )),
        temp_path: project.storage_dir.join(format!(".nuwax-partial-{id}.tmp")),
        version,
        created_at,
    };
    let tagged: Vec<String> =
        services.iter().filter(|s| !s.image_id.is_empty()).map(|s| s.service.clone()).collect();
    let journal = Journal {
        backup_id: id,
        temp_path: pending.temp_path.clone(),
        final_path: Some(pending.final_path.clone()),
        tagged,
        frozen: None,
    };
    let op = Operation::begin(ctx, journal).await?;
    tracing::info!(id, path = %pending.final_path.display(), "backup started");
    if let Some(engine) = &ctx.engine {
        keep_images(&**engine, &project.name, id, &mut services).await;
    }
    Ok((op, pending, services))
}

/// Seals what was written, or abandons the backup; closes the operation either way.
async fn finish(
    ctx: &Ctx,
    mut op: Operation<'_, Journal>,
    pending: &Pending,
    written: Result<Written>,
    report: ScopeReport,
    phases: PhaseReport,
    started: Instant,
) -> Result<BackupOutcome> {
    let sealed = match written {
        Ok(w) => {
            let duration = started.elapsed().as_millis() as u64;
            seal(ctx, pending, &w, duration, report.downtime_ms).await.map(|s| (w, s))
        }
        Err(e) => Err(e),
    };
    if let Some(f) = &op.journal.frozen {
        let _ = std::fs::remove_file(f);
    }
    match sealed {
        Ok((w, s)) => {
            op.close(None).await?;
            Ok(BackupOutcome {
                id: pending.id,
                path: pending.final_path.clone(),
                status: "complete",
                kind: kind_str(&w.manifest.kind),
                service_version: pending.version.clone(),
                size_bytes: s.archive_bytes,
                content_bytes: s.content_bytes,
                file_count: s.file_count,
                compression: match w.manifest.compression.as_str() {
                    "zstd" => "zstd",
                    "gzip" => "gzip",
                    _ => "none",
                },
                checksum: s.checksum,
                duration_ms: started.elapsed().as_millis() as u64,
                precopy_ms: phases.precopy_ms,
                delta_bytes: phases.delta_bytes,
                stopped_ms: report.downtime_ms,
                single_phase: phases.single_phase,
                stop_windows: phases.windows,
                archive_ms: w.archive_ms,
                sync_ms: s.sync_ms,
                verify_ms: s.verify_ms,
                downtime_ms: report.downtime_ms,
                services_stopped: report.stopped,
                services_paused: report.paused,
                services_touched: w.manifest.services_stopped,
                live: w.manifest.live,
                items: plan::moments(&w.manifest),
                stop_killed: w.manifest.stop_killed,
                skipped: w.manifest.skipped,
                dumps: s.dumps,
                copies: Vec::new(),
            })
        }
        Err(e) => {
            abandon(ctx, &op.journal, &format!("{e:#}"), report.downtime_ms).await?;
            op.close(Some("failed")).await?;
            Err(e.context(format!("backup {} failed", pending.id)))
        }
    }
}

/// A backup that will not complete: its temp file (and an archive renamed into place whose row
/// never became complete) and image tags go, its row is marked failed.
async fn abandon(ctx: &Ctx, j: &Journal, error: &str, downtime_ms: Option<u64>) -> Result<()> {
    let _ = std::fs::remove_file(&j.temp_path);
    if ctx.catalog.get(j.backup_id).await?.is_some_and(|r| r.is_complete()) {
        // Recorded complete before the process died: nothing to abandon.
        return Ok(());
    }
    if let Some(f) = &j.final_path {
        let _ = std::fs::remove_file(f);
    }
    if let Some(engine) = &ctx.engine {
        release_images(&**engine, &ctx.project.name, j.backup_id, j.tagged.iter().map(String::as_str)).await;
    }
    ctx.catalog.fail(j.backup_id, error, downtime_ms).await
}

/// Recovery of a backup a dead nuwax (pid `pid`) left: finished from the snapshot when its
/// stop had frozen it for another operation, else abandoned.
pub async fn recover(ctx: &Ctx, j: &Journal, pid: i64) -> Result<String> {
    let mut why = format!("nuwax (pid {pid}) ended before the backup finished");
    if let Some(saved) = &j.frozen {
        tracing::warn!("backup {}: writing its archive from the snapshot its stop froze", j.backup_id);
        match resume::finish(ctx, j, saved).await {
            Ok(()) => {
                return Ok(format!(
                    "backup {} was finished: its archive was written from the snapshot its stop had frozen",
                    j.backup_id
                ));
            }
            Err(e) => why = format!("{why}, and writing it from the snapshot failed: {e:#}"),
        }
        let _ = std::fs::remove_file(saved);
    }
    let msg = format!("interrupted: {why}; recovered by pid {}", std::process::id());
    abandon(ctx, j, &msg, None).await?;
    Ok(format!("backup {} was abandoned (marked failed, its partial file removed): {why}", j.backup_id))
}

fn kind_str(k: &str) -> &'static str {
    match k {
        "pre-upgrade" => "pre-upgrade",
        "pre-rollback" => "pre-rollback",
        "scheduled" => "scheduled",
        _ => "manual",
    }
}

#[cfg(test)]
mod tests;
