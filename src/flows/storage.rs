//! `nuwax storage migrate <NEW_DIR>`: move every archive to another directory (another
//! filesystem too) without the catalog ever pointing at a file that is not there.
//!
//! plan (writable, room) → journal `copying` → copy each archive to a hidden name, fsync,
//! check its sha256 against the catalog, rename → one transaction switches every path and the
//! journal to `switched` → `storage_dir` in nuwax.toml → old files removed → done. A crash while
//! copying is undone (the copies go); from `switched` on it is finished (the old files go).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::Ctx;
use crate::archive::{self, Progress};
use crate::fsutil;
use crate::runner::{self, Operation, OperationKind};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Move {
    pub id: i64,
    pub from: PathBuf,
    pub to: PathBuf,
    pub size: u64,
    pub checksum: Option<String>,
    /// `to` existed before the migration (a copy the operator made): never removed by an undo.
    #[serde(default)]
    pub preexisting: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Copies are being made; the catalog points at the originals. Undone after a crash.
    #[default]
    Copying,
    /// The catalog points at the copies. Finished after a crash.
    Switched,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Journal {
    pub phase: Phase,
    pub from_dir: PathBuf,
    pub to_dir: PathBuf,
    pub moves: Vec<Move>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MigrateOutcome {
    pub from_dir: PathBuf,
    pub to_dir: PathBuf,
    pub moved: usize,
    pub bytes: u64,
    pub config: PathBuf,
    pub warnings: Vec<String>,
}

/// Checks the destination before anything is copied: it can be created and written, and it
/// has room for every archive.
pub async fn plan(ctx: &Ctx, to: &Path) -> Result<Journal> {
    let from_dir = ctx.project.storage_dir.clone();
    let to_dir = std::path::absolute(to).with_context(|| format!("resolving {}", to.display()))?;
    if fsutil::same_dir(&from_dir, &to_dir) {
        bail!(crate::Error::Config(format!("{} is already the storage directory", to_dir.display())));
    }
    super::backup::check_storage(&to_dir)?;
    let mut moves = Vec::new();
    for r in ctx.catalog.list(&ctx.project.name).await? {
        let Some(path) = r.path.as_deref().map(PathBuf::from) else { continue };
        if r.status == "missing" || !path.is_file() {
            tracing::warn!("backup {}: {} is not there; it stays as it is", r.id, path.display());
            continue;
        }
        let name = path.file_name().context("an archive path without a file name")?;
        let size = std::fs::metadata(&path)?.len();
        let to = to_dir.join(name);
        let preexisting = to.exists();
        moves.push(Move { id: r.id, to, from: path, size, checksum: r.checksum, preexisting });
    }
    let need: u64 = moves.iter().map(|m| m.size).sum();
    let free = fsutil::free_space(&to_dir)?;
    if need + (1 << 20) > free {
        bail!(crate::Error::NoSpace {
            needed: fsutil::human_bytes(need),
            free: fsutil::human_bytes(free),
            dir: to_dir
        });
    }
    Ok(Journal { phase: Phase::Copying, from_dir, to_dir, moves })
}

impl runner::Journal for Journal {
    const KIND: OperationKind = OperationKind::StorageMigrate;
}

pub async fn migrate(ctx: &Ctx, j: Journal, progress: Arc<dyn Progress>) -> Result<MigrateOutcome> {
    let mut op = Operation::begin(ctx, j).await?;
    progress.set_total(op.journal.moves.iter().map(|m| m.size).sum());
    let copied = {
        let (moves, cancel, p) = (op.journal.moves.clone(), ctx.interrupt.cancel().clone(), progress.clone());
        tokio::task::spawn_blocking(move || copy_all(&moves, &cancel, &*p)).await?
    };
    if let Err(e) = copied {
        undo(&op.journal);
        op.close(Some("failed, undone")).await?;
        return Err(e.context("storage migration failed; the archives stay where they were"));
    }
    // One transaction: every path, and the journal's phase with them.
    op.journal.phase = Phase::Switched;
    let paths: Vec<(i64, String)> =
        op.journal.moves.iter().map(|m| (m.id, m.to.to_string_lossy().into_owned())).collect();
    ctx.catalog.switch_paths(&paths, op.id(), &serde_json::to_value(&op.journal)?).await?;
    let (config, warnings) = finish(ctx, &op.journal)?;
    let j = op.journal.clone();
    op.close(None).await?;
    Ok(MigrateOutcome {
        from_dir: j.from_dir.clone(),
        to_dir: j.to_dir.clone(),
        moved: j.moves.len(),
        bytes: j.moves.iter().map(|m| m.size).sum(),
        config,
        warnings,
    })
}

/// Copies each archive to a hidden name beside its destination, proves it, renames it. An
/// archive already there with the right checksum (a resumed migration) is not copied again.
fn copy_all(moves: &[Move], cancel: &archive::Cancel, progress: &dyn Progress) -> Result<()> {
    for m in moves {
        cancel.check()?;
        if m.to.is_file() && proven(&m.to, m.checksum.as_deref())? {
            progress.inc(m.size);
            continue;
        }
        let tmp = hidden(&m.to);
        copy_file(&m.from, &tmp, cancel, progress)?;
        if !proven(&tmp, m.checksum.as_deref())? {
            let _ = std::fs::remove_file(&tmp);
            bail!("the copy of {} does not match its checksum", m.from.display());
        }
        std::fs::rename(&tmp, &m.to).with_context(|| format!("renaming {}", tmp.display()))?;
    }
    if let Some(dir) = moves.first().and_then(|m| m.to.parent()) {
        fsutil::fsync_dir(dir)?;
    }
    Ok(())
}

fn proven(path: &Path, checksum: Option<&str>) -> Result<bool> {
    let sum = archive::file_sha256(path)?;
    Ok(checksum.is_none_or(|c| c.eq_ignore_ascii_case(&sum)))
}

fn hidden(to: &Path) -> PathBuf {
    let name = to.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    to.with_file_name(format!(".nuwax-copy-{name}"))
}

fn copy_file(from: &Path, to: &Path, cancel: &archive::Cancel, progress: &dyn Progress) -> Result<()> {
    use std::io::{Read, Write};
    let mut src = std::fs::File::open(from).with_context(|| format!("opening {}", from.display()))?;
    let mut dst = std::fs::File::create(to).with_context(|| format!("creating {}", to.display()))?;
    fsutil::make_private(to);
    let mut buf = vec![0u8; 1 << 20];
    // Test hook (`NUWAX_RATE_LIMIT`, bytes/s): makes "killed while copying" reproducible.
    let rate = crate::faults::rate_limit();
    let (started, mut done) = (std::time::Instant::now(), 0u64);
    loop {
        cancel.check()?;
        if let Some(rate) = rate.filter(|r| *r > 0) {
            let due = std::time::Duration::from_secs_f64(done as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let n = src.read(&mut buf).with_context(|| format!("reading {}", from.display()))?;
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n]).with_context(|| format!("writing {}", to.display()))?;
        progress.inc(n as u64);
        done += n as u64;
    }
    dst.sync_all().with_context(|| format!("syncing {}", to.display()))?;
    Ok(())
}

/// Before the switch: the copies go, the catalog still points at the originals.
fn undo(j: &Journal) {
    for m in &j.moves {
        let _ = std::fs::remove_file(hidden(&m.to));
        if m.from.is_file() && !m.preexisting {
            let _ = std::fs::remove_file(&m.to);
        }
    }
}

/// After the switch: nuwax.toml names the new directory, the originals go.
fn finish(ctx: &Ctx, j: &Journal) -> Result<(PathBuf, Vec<String>)> {
    let config = ctx.project.dir.join(crate::project::CONFIG_FILE);
    crate::project::set_storage_dir(&config, Some(&j.to_dir))?;
    let mut warnings = Vec::new();
    if std::env::var_os("NUWAX_STORAGE_DIR").is_some_and(|v| !v.is_empty()) {
        warnings.push(format!(
            "NUWAX_STORAGE_DIR is set and overrides nuwax.toml: point it at {} too",
            j.to_dir.display()
        ));
    }
    for m in &j.moves {
        if m.to.is_file() {
            match std::fs::remove_file(&m.from) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warnings.push(format!("{} could not be removed: {e}", m.from.display())),
            }
        }
    }
    // The snapshot is not moved: the next backup makes a new one beside the archives.
    if !crate::fsutil::same_dir(&j.from_dir, &j.to_dir)
        && let Err(e) = crate::snapshot::Snapshot::remove(&j.from_dir, &ctx.project.name)
    {
        warnings.push(format!("the snapshot in {} could not be removed: {e}", j.from_dir.display()));
    }
    Ok((config, warnings))
}

/// Recovery of a migration a dead nuwax left.
pub fn recover(ctx: &Ctx, j: &Journal) -> Result<String> {
    if j.phase == Phase::Switched {
        finish(ctx, j)?;
        return Ok(format!("the storage migration to {} was finished", j.to_dir.display()));
    }
    undo(j);
    Ok(format!(
        "the storage migration to {} was undone: the archives stay in {}",
        j.to_dir.display(),
        j.from_dir.display()
    ))
}
