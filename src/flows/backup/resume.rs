//! A backup frozen in the snapshot for another operation (a rollback's safety backup, the
//! pre-upgrade backup) is that operation's way back, so a crash before its archive is written
//! must not lose it. Inside the stop, once the delta is copied, the snapshot is synced and what
//! the archive is written from is saved beside the archive ([`save`]); the next command's
//! recovery writes and seals the archive from the snapshot ([`finish`]), as the dead process
//! would have. Nothing changes the snapshot in between: only backups of the project write it,
//! under the project lock that recovery holds first.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::twophase::Frozen;
use super::write::{Moment, Sources, seal};
use super::{BackupOptions, Journal, Pending, SnapshotUse, write_frozen};
use crate::archive::manifest::{ServiceRecord, Skipped};
use crate::archive::{NoProgress, ScanResult};
use crate::catalog::BackupKind;
use crate::flows::Ctx;
use crate::flows::sources::{Source, VolumeAccess};
use crate::fsutil;
use crate::snapshot::{Index, PassReport, Snapshot};

/// Leftover prefix: swept once recovery has finished every operation.
pub const PREFIX: &str = ".nuwax-frozen-";

/// What the archive of a frozen backup is written from.
#[derive(Serialize, Deserialize)]
pub(super) struct Saved<'a> {
    pub pending: Cow<'a, Pending>,
    pub kind: BackupKind,
    pub compression: String,
    pub level: i32,
    pub plan: Cow<'a, [Source]>,
    pub skipped: Cow<'a, [Skipped]>,
    pub skip_dirs: Cow<'a, [PathBuf]>,
    pub services: Cow<'a, [ServiceRecord]>,
    pub killed: Cow<'a, [String]>,
    pub reads: Cow<'a, [Option<(ScanResult, PathBuf)>]>,
    pub snapshot: Cow<'a, Snapshot>,
    pub index: Cow<'a, Index>,
}

/// Where backup `id`'s frozen state is saved.
pub(super) fn path(storage: &Path, id: i64) -> PathBuf {
    storage.join(format!("{PREFIX}{id}.json"))
}

/// Syncs the snapshot (what the saved state points at is on disk before it), then saves.
pub(super) async fn save(path: PathBuf, saved: &Saved<'_>) -> Result<()> {
    let bytes = serde_json::to_vec(saved).context("saving the frozen backup's state")?;
    let snap = saved.snapshot.clone().into_owned();
    tokio::task::spawn_blocking(move || -> Result<()> {
        snap.sync().with_context(|| format!("syncing {}", snap.dir().display()))?;
        fsutil::write_atomically(&path, &bytes, 0o600)
    })
    .await?
}

/// Recovery: writes, verifies and seals the archive of the frozen backup `j` from the
/// snapshot. An error leaves the abandoning to the caller.
pub(super) async fn finish(ctx: &Ctx, j: &Journal, path: &Path) -> Result<()> {
    let started = Instant::now();
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let saved: Saved<'static> =
        serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))?;
    drop(bytes);
    anyhow::ensure!(saved.pending.id == j.backup_id, "{} is not backup {}'s", path.display(), j.backup_id);
    if ctx.catalog.get(j.backup_id).await?.is_some_and(|r| r.is_complete()) {
        return Ok(());
    }
    let pending = saved.pending.into_owned();
    let _ = std::fs::remove_file(&pending.temp_path);
    let opts = BackupOptions {
        kind: saved.kind,
        note: None,
        compression: saved.compression.parse().map_err(|e| anyhow::anyhow!("{e}"))?,
        level: saved.level,
        stop: true,
        volume_access: VolumeAccess::Auto,
        rate_limit: crate::faults::rate_limit(),
        with_images: false,
        snapshot: SnapshotUse::On,
        stop_each: false,
        // As the backup was begun (its name says .age or not): the project's settings.
        recipients: crate::archive::seal::parse_recipients(&ctx.project.settings.encrypt_to)
            .unwrap_or_default(),
    };
    let sources = Sources {
        plan: saved.plan.into_owned(),
        skipped: saved.skipped.into_owned(),
        excludes: super::plan::build_excludes(&ctx.project.settings.exclude)?,
        skip_dirs: saved.skip_dirs.into_owned(),
        // A backup with dumps is sealed inside its stop: never frozen.
        dumped: Vec::new(),
        // Nothing runs through another operation's stop but dumped servers.
        live: Default::default(),
    };
    let moment = Moment {
        stopped: true,
        live: false,
        killed: saved.killed.into_owned(),
        dumps: Default::default(),
        ran: Vec::new(),
    };
    let services = saved.services.into_owned();
    let frozen = Frozen {
        snap: saved.snapshot.into_owned(),
        reads: saved.reads.into_owned(),
        index: saved.index.into_owned(),
        report: PassReport::default(),
    };
    let progress = Arc::new(NoProgress);
    let w = write_frozen(ctx, &opts, &pending, &sources, services, moment, progress, frozen).await?;
    seal(ctx, &pending, &w, started.elapsed().as_millis() as u64, None).await?;
    let _ = std::fs::remove_file(path);
    Ok(())
}
