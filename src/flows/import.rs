//! `nuwax import <ARCHIVE>`: add an archive made elsewhere (another server, an older install) to
//! this project's catalog, after verifying every byte, so it can be rolled back to. Moving a site
//! to a new machine is `import` + `rollback`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Ctx;
use crate::archive;
use crate::catalog::{BackupKind, Completed, NewBackup};
use crate::fsutil;

#[derive(Debug, Clone, Serialize)]
pub struct Imported {
    pub id: i64,
    pub path: PathBuf,
    pub source: PathBuf,
    pub from_project: String,
    pub from_backup_id: i64,
    pub size_bytes: u64,
}

/// What happens to the source once it verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Take {
    /// Copied into the storage dir; the source stays (`nuwax import`).
    Copy,
    /// Moved into the storage dir (an upload nuwax wrote itself, named so in the backup's
    /// note); copied when it is on another filesystem, then removed.
    Move { origin: String },
}

/// `nuwax import`: the archive at `source` verified, checked safe to extract, and recorded.
pub async fn import(ctx: &Ctx, source: &Path) -> Result<Imported> {
    import_with(ctx, source, Take::Copy).await
}

/// [`import`], taking the source as `take` says. Nothing is recorded unless every byte verifies
/// and every entry passes the extraction rules a rollback would apply (a hostile archive is
/// refused here, not when it is rolled back to).
pub async fn import_with(ctx: &Ctx, source: &Path, take: Take) -> Result<Imported> {
    let source = std::fs::canonicalize(source).with_context(|| format!("archive {}", source.display()))?;
    let (s, cancel) = (source.clone(), ctx.interrupt.cancel().clone());
    let report = tokio::task::spawn_blocking(move || {
        let manifest = archive::read_manifest(&s)?;
        let nowhere = || PathBuf::from("/nonexistent");
        let targets: Vec<archive::Target> = (manifest.mounts.iter().map(|m| &m.archive_path))
            .chain(manifest.configs.iter().map(|c| &c.archive_path))
            .map(|prefix| archive::Target { prefix: prefix.clone(), dest: nowhere() })
            .collect();
        archive::verify_extractable(&s, None, &targets, &cancel)
    })
    .await?
    .map_err(|e| crate::Error::ArchiveVerifyFailed {
        path: source.clone(),
        detail: format!("{:#}", anyhow::Error::from(e)),
    })?;
    let m = &report.manifest;
    let kind = match m.kind.as_str() {
        "pre-upgrade" => BackupKind::PreUpgrade,
        "pre-rollback" => BackupKind::PreRollback,
        "scheduled" => BackupKind::Scheduled,
        _ => BackupKind::Manual,
    };
    let created_at: DateTime<Utc> = DateTime::parse_from_rfc3339(&m.created_at)
        .map(|d| d.with_timezone(&Utc))
        .unwrap_or_else(|_| Utc::now());
    let compression = match m.compression.as_str() {
        "zstd" => archive::Compression::Zstd,
        "gzip" => archive::Compression::Gzip,
        _ => archive::Compression::None,
    };
    let version = m.service_version.clone().unwrap_or_else(|| "0".into());
    let from = match &take {
        Take::Copy => source.display().to_string(),
        Take::Move { origin } => origin.clone(),
    };
    let note = format!("imported from {from} (backup {} of project {})", m.backup_id, m.project);
    let storage = &ctx.project.storage_dir;
    fsutil::create_private_dir(storage)?;
    let id = ctx
        .catalog
        .insert_pending(&NewBackup {
            kind,
            project: &ctx.project.name,
            service_version: &version,
            compression: compression.as_str(),
            created_at,
            note: Some(&note),
        })
        .await?;
    let encrypted = archive::seal::is_encrypted(&head(&source)?);
    let name = super::backup::archive_name(kind, &version, created_at, id, compression, encrypted);
    let final_path = storage.join(name);
    let temp = storage.join(format!(".nuwax-partial-{id}.tmp"));
    let result = async {
        let (s, t, want) = (source.clone(), temp.clone(), report.archive_sha256.clone());
        tokio::task::spawn_blocking(move || -> Result<()> {
            let moving = matches!(take, Take::Move { .. });
            if !(moving && std::fs::rename(&s, &t).is_ok()) {
                copy_private(&s, &t)?;
            }
            if moving {
                let _ = std::fs::remove_file(&s);
            }
            // The copy is what the catalog will point at: prove it, not the source.
            let got = archive::file_sha256(&t)?;
            anyhow::ensure!(
                got == want,
                "the copy of {} differs from the original ({got} != {want})",
                s.display()
            );
            Ok(())
        })
        .await??;
        std::fs::rename(&temp, &final_path)?;
        fsutil::fsync_dir(storage)?;
        ctx.catalog
            .complete(
                id,
                &Completed {
                    path: final_path.clone(),
                    size_bytes: report.archive_bytes,
                    checksum: report.archive_sha256.clone(),
                    file_count: m.file_count(),
                    finished_at: Utc::now(),
                    duration_ms: 0,
                    downtime_ms: None,
                    live: m.live,
                    stop_killed: m.stop_killed.clone(),
                },
            )
            .await
    }
    .await;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&temp);
        ctx.catalog.fail(id, &format!("{e:#}"), None).await?;
        return Err(e.context(format!("importing {}", source.display())));
    }
    Ok(Imported {
        id,
        path: final_path,
        source,
        from_project: m.project.clone(),
        from_backup_id: m.backup_id,
        size_bytes: report.archive_bytes,
    })
}

/// The first bytes of a file (enough to tell an age file).
fn head(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::with_capacity(64);
    std::fs::File::open(path)
        .with_context(|| format!("opening {}", path.display()))?
        .take(64)
        .read_to_end(&mut buf)?;
    Ok(buf)
}

fn copy_private(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut src = std::fs::File::open(from).with_context(|| format!("opening {}", from.display()))?;
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .with_context(|| format!("creating {}", to.display()))?;
    std::io::copy(&mut src, &mut dst).with_context(|| format!("copying to {}", to.display()))?;
    dst.sync_all()?;
    Ok(())
}
