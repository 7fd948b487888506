//! The steps of a backup around the archive: what it reads ([`Sources`]), writing the archive
//! while the services are stopped ([`write`]), and sealing it once they run again ([`seal`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use chrono::Utc;

use super::plan::{ManifestParts, build_manifest};
use super::{BackupOptions, Pending};
use crate::archive::manifest::{Manifest, ServiceRecord, Skipped};
use crate::archive::{self, ArchiveWriter, Progress, WriteOptions};
use crate::catalog::Completed;
use crate::database::rows;
use crate::engine::Engine;
use crate::flows::Ctx;
use crate::flows::sources::Role;
use crate::flows::sources::{Origin, Source};
use crate::fsutil;

/// What a backup reads: the sources in archive order and what was skipped finding them.
pub(super) struct Sources {
    pub plan: Vec<Source>,
    pub skipped: Vec<Skipped>,
    pub excludes: globset::GlobSet,
    /// The storage and state dirs: never archived, even inside a bind mount.
    pub skip_dirs: Vec<PathBuf>,
    /// The mounts left out because dumps hold their data.
    pub dumped: Vec<crate::archive::manifest::DumpedMount>,
    /// The prefixes of mounts a service the backup keeps running uses (`backup = "live"` or
    /// `"skip"`): read from the host when the archive is written, as `--no-stop` reads
    /// everything, never through the snapshot (whose copy while stopped must see no change).
    pub live: std::collections::BTreeSet<String>,
}

impl Sources {
    /// Marks the mounts that any of `services` uses as read live.
    pub fn read_live(&mut self, services: &[String]) {
        for s in &self.plan {
            if let Role::Mount { destinations, .. } = &s.role
                && destinations
                    .iter()
                    .any(|d| d.split_once(':').is_some_and(|(svc, _)| services.iter().any(|r| r == svc)))
            {
                self.live.insert(s.prefix.clone());
            }
        }
    }
}

/// The moment the data was read at.
pub(super) struct Moment {
    /// The services were stopped while their data was read.
    pub stopped: bool,
    /// The data was read while services ran.
    pub live: bool,
    /// Services killed at their stop timeout.
    pub killed: Vec<String>,
    /// The dumps started at that moment, each holding it (read into the archive first).
    pub dumps: Dumps,
    /// Services that ran while their mounts were read because the settings say so (`backup =
    /// "live"` or `"skip"`): those mounts are not one point in time.
    pub ran: Vec<String>,
}

/// The dumps a backup writes: their records and the running dumps, in the same order (behind
/// a lock only so that a [`Moment`] can be shared: the write takes them).
#[derive(Default)]
pub(super) struct Dumps {
    pub records: Vec<crate::archive::manifest::DumpRecord>,
    pub started: std::sync::Mutex<Vec<crate::database::dump::Started>>,
}

pub(super) struct Written {
    pub summary: archive::WriteSummary,
    pub manifest: Manifest,
    pub archive_ms: u64,
}

/// Per source of the plan, a scan already made and the tree to read it from (the snapshot).
pub(super) type Reads = Vec<Option<(archive::ScanResult, PathBuf)>>;

/// Scans every source (or takes the scan `reads` holds for it) and writes the archive to the
/// pending backup's temp file. Not synced: once the data is read the services can start again
/// first; [`seal`] syncs.
#[allow(clippy::too_many_arguments)]
pub(super) async fn write(
    ctx: &Ctx,
    opts: &BackupOptions,
    pending: &Pending,
    sources: &Sources,
    services: Vec<ServiceRecord>,
    moment: Moment,
    progress: Arc<dyn Progress>,
    reads: Reads,
) -> Result<Written> {
    ctx.interrupt.check()?;
    let started = Instant::now();
    let engine = ctx.engine.clone();
    let handle = tokio::runtime::Handle::current();
    let cancel = ctx.interrupt.cancel().clone();
    let (plan, mut skipped) = (sources.plan.clone(), sources.skipped.clone());
    let (excludes, skip_dirs) = (sources.excludes.clone(), sources.skip_dirs.clone());
    // Recorded only for the servers the backup did dump.
    let dumped: Vec<_> = (sources.dumped.iter())
        .filter(|m| moment.dumps.records.iter().any(|d| d.service == m.service))
        .cloned()
        .collect();
    let temp_path = pending.temp_path.clone();
    let parts = (
        pending.id,
        opts.kind.as_str().to_string(),
        ctx.project.name.clone(),
        ctx.project.dir.to_string_lossy().into_owned(),
        pending.version.clone(),
        pending.created_at,
    );
    let wopts = WriteOptions {
        compression: opts.compression,
        level: opts.level,
        threads: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
        rate_limit: opts.rate_limit,
        // The file is read back and verified once the services run again; that pass gives
        // the whole-file digest, so hashing the output while they are down is wasted time.
        hash_output: false,
        spill_dir: Some(ctx.project.storage_dir.clone()),
        recipients: opts.recipients.clone(),
    };
    let spill = ctx.project.storage_dir.clone();
    let written = tokio::task::spawn_blocking(move || -> Result<(archive::WriteSummary, Manifest)> {
        let mut scans = Vec::with_capacity(plan.len());
        let mut roots = Vec::with_capacity(plan.len());
        let mut reads = reads.into_iter();
        for s in &plan {
            if cancel.is_cancelled() {
                return Err(archive::Error::Cancelled.into());
            }
            if let Some(Some((scan, root))) = reads.next() {
                skipped.extend(scan.skipped.iter().cloned());
                scans.push(scan);
                roots.push(Some(root));
                continue;
            }
            roots.push(None);
            let scan = match &s.origin {
                Origin::Host(root) => {
                    let opts = archive::ScanOpts { spill_dir: Some(&spill), ..Default::default() };
                    archive::scan_host_with(&s.prefix, root, &excludes, &skip_dirs, opts)
                        .with_context(|| format!("reading {}", root.display()))?
                }
                Origin::Engine { container, path } => {
                    let stream = export(&handle, engine.as_deref(), container, path)?;
                    archive::scan_tar_stream_in(&s.prefix, stream, Some(&spill))
                        .with_context(|| format!("reading {path} through the engine"))?
                }
            };
            skipped.extend(scan.skipped.iter().cloned());
            scans.push(scan);
        }
        let (id, kind, project, project_dir, version, created_at) = parts;
        let manifest = build_manifest(ManifestParts {
            id,
            kind,
            project,
            project_dir,
            version,
            created_at,
            compression: wopts.compression,
            stopped: moment.stopped,
            live: moment.live,
            stop_killed: moment.killed,
            services,
            plan: &plan,
            scans: &scans,
            skipped,
        });
        let mut manifest = manifest;
        // The services being dumped ran while their other mounts were copied, and so did those
        // said live or skip; in a live backup, every service that ran.
        let mut ran: std::collections::BTreeSet<&str> =
            moment.dumps.records.iter().map(|d| d.service.as_str()).collect();
        ran.extend(moment.ran.iter().map(String::as_str));
        if moment.live {
            ran.extend(manifest.services.iter().filter(|s| s.running).map(|s| s.service.as_str()));
        }
        let ran: std::collections::BTreeSet<String> = ran.into_iter().map(str::to_string).collect();
        for m in &mut manifest.mounts {
            m.running = super::plan::running_on(&m.destinations, &ran);
        }
        let manifest = Manifest {
            dump_part_bytes: (!moment.dumps.records.is_empty()).then_some(archive::DUMP_PART_BYTES),
            dumped_mounts: dumped,
            dumps: moment.dumps.records,
            ..manifest
        };
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
        let lists: Vec<archive::Listing> = scans.iter().map(|s| s.entries.clone()).collect();
        w.write_manifest(&manifest, &lists)?;
        let started = moment.dumps.started.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        for started in started {
            let crate::database::dump::Started { spec, head, stream, .. } = started;
            let name = super::dumps::archive_name(&spec);
            let rest = tokio_util::io::SyncIoBridge::new_with_handle(stream.stdout, handle.clone());
            let counter = rows::Counter::new(spec.kind, &spec.format, spec.database.as_deref());
            let mut data =
                rows::Counted::new(std::io::Read::chain(std::io::Cursor::new(head), rest), counter);
            w.append_dump(&name, &mut data)
                .with_context(|| format!("dumping {name} from {}", spec.service))?;
            let ended = handle.block_on(stream.ended)?;
            crate::database::dump::finish(&spec, ended)?;
            match data.finish() {
                Some(rows) => w.set_dump_rows(&name, rows)?,
                None => tracing::debug!("{name}: no row counts (not counted, or not read as expected)"),
            }
        }
        for ((s, scan), read_root) in plan.iter().zip(&scans).zip(&roots) {
            match &s.origin {
                Origin::Host(root) => w
                    .append_host(&s.prefix, read_root.as_deref().unwrap_or(root), &scan.entries)
                    .with_context(|| format!("archiving {}", root.display()))?,
                Origin::Engine { container, path } => {
                    let stream = export(&handle, engine.as_deref(), container, path)?;
                    w.append_tar_stream(&s.prefix, stream, &scan.entries)
                        .with_context(|| format!("archiving {path} through the engine"))?
                }
            }
        }
        let summary = w.finish()?;
        Ok((summary, manifest))
    })
    .await
    .map_err(|e| anyhow::anyhow!("archiving panicked: {e}"))?;
    let (summary, manifest) = match written {
        // A cancelled write is the signal's doing: say so.
        Err(e) if matches!(e.downcast_ref::<archive::Error>(), Some(archive::Error::Cancelled)) => {
            ctx.interrupt.check()?;
            return Err(e);
        }
        other => other?,
    };
    Ok(Written { summary, manifest, archive_ms: started.elapsed().as_millis() as u64 })
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

/// What sealing measured.
pub(super) struct Sealed {
    pub archive_bytes: u64,
    pub content_bytes: u64,
    pub checksum: String,
    pub file_count: u64,
    pub sync_ms: u64,
    pub verify_ms: u64,
    /// Each dump's size and digest, as verified.
    pub dumps: Vec<crate::archive::manifest::DumpDigest>,
}

/// After the services are back: sync and verify the temp file, rename it into place, record
/// the backup complete.
pub(super) async fn seal(
    ctx: &Ctx,
    pending: &Pending,
    w: &Written,
    duration_ms: u64,
    downtime_ms: Option<u64>,
) -> Result<Sealed> {
    ctx.interrupt.check()?;
    let (id, temp, final_path) = (pending.id, pending.temp_path.as_path(), pending.final_path.as_path());
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
    .await?;
    ctx.interrupt.check()?;
    let report = report
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
    let file_count = report.manifest.file_count();
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
                live: w.manifest.live,
                stop_killed: w.manifest.stop_killed.clone(),
            },
        )
        .await?;
    Ok(Sealed {
        archive_bytes: report.archive_bytes,
        content_bytes: report.content_bytes,
        checksum: report.archive_sha256,
        file_count,
        sync_ms,
        verify_ms,
        dumps: report.dumps,
    })
}

trait PrivateMode {
    fn mode_private(&mut self) -> &mut Self;
}

impl PrivateMode for std::fs::OpenOptions {
    fn mode_private(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}
