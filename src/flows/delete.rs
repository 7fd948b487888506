//! Removing one backup: its archive first, then its row, then the image tags kept for it. A
//! crash in between leaves a row pointing at nothing (shown as `missing`, removed by the next
//! prune), never an archive nobody knows about.

use anyhow::Result;

use super::Ctx;
use crate::archive;
use crate::catalog::BackupRecord;

/// Deletes `rec` (its archive, row and keep-tags). Returns the bytes freed.
pub async fn delete_backup(ctx: &Ctx, rec: &BackupRecord) -> Result<u64> {
    let path = rec.path.as_deref().map(std::path::Path::new);
    let kept: Vec<String> = path
        .and_then(|p| archive::read_manifest(p).ok())
        .map(|m| m.services.into_iter().filter(|s| s.keep_tag.is_some()).map(|s| s.service).collect())
        .unwrap_or_default();
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
