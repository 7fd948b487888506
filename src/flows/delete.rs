//! Removing one backup: its archive first, then its row, then the image tags kept for it. A
//! crash in between leaves a row pointing at nothing (shown as `missing`, removed by the next
//! prune), never an archive nobody knows about.

use anyhow::Result;

use super::Ctx;
use crate::archive;
use crate::catalog::BackupRecord;

/// The services whose images are kept (by tag) for `rec`, as its manifest says. Read before
/// the archive goes: afterwards nothing says it.
pub fn kept_services(rec: &BackupRecord) -> Vec<String> {
    rec.path
        .as_deref()
        .and_then(|p| archive::read_manifest(std::path::Path::new(p)).ok())
        .map(|m| m.services.into_iter().filter(|s| s.keep_tag.is_some()).map(|s| s.service).collect())
        .unwrap_or_default()
}

/// Deletes `rec` (its archive, row and the keep-tags of `kept`, see [`kept_services`]).
/// Returns the bytes freed.
pub async fn delete_backup(ctx: &Ctx, rec: &BackupRecord, kept: &[String]) -> Result<u64> {
    let path = rec.path.as_deref().map(std::path::Path::new);
    let mut freed = 0;
    if let Some(p) = path {
        freed = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        match std::fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow::Error::new(e).context(format!("removing {}", p.display()))),
        }
    }
    ctx.catalog.delete(rec.id).await?;
    if !kept.is_empty() {
        match &ctx.engine {
            Some(engine) => {
                super::backup::release_images(
                    &**engine,
                    &ctx.project.name,
                    rec.id,
                    kept.iter().map(String::as_str),
                )
                .await
            }
            None => tracing::warn!("image tags kept for backup {} stay in place (no engine)", rec.id),
        }
    }
    Ok(freed)
}
