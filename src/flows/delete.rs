//! Removing one backup: its archive first, then its row, then the image tags kept for it,
//! under a prune's journal ([`crate::flows::prune::delete`]) so that a crash anywhere in
//! between is finished by the next command: never an archive nobody knows about, never a tag
//! kept for a backup that is gone.

use anyhow::Result;

use super::Ctx;
use crate::archive;
use crate::catalog::BackupRecord;

/// The services whose images are kept (by tag) for `rec`, as its manifest says. Read before
/// the archive goes: afterwards nothing says it.
/// An archive this host cannot read (encrypted, no identity here) names none: then every service
/// of the project's compose files is tried (a tag that is not there is no error).
pub fn kept_services(rec: &BackupRecord, project: &crate::project::Project) -> Vec<String> {
    let manifest = rec.path.as_deref().and_then(|p| archive::read_manifest(std::path::Path::new(p)).ok());
    match manifest {
        Some(m) => m.services.into_iter().filter(|s| s.keep_tag.is_some()).map(|s| s.service).collect(),
        None if rec.path.is_some() => project.services.keys().cloned().collect(),
        None => Vec::new(),
    }
}

/// Removes `rec`'s archive, then its row (kept, pointing at no archive, while a remote holds a
/// copy). Returns the bytes freed. The image tags kept for it
/// go with [`release_tags`], after the row: a journal that names them must come first (see
/// [`crate::flows::prune::delete`]), since nothing else says which they were.
pub async fn remove(ctx: &Ctx, rec: &BackupRecord) -> Result<u64> {
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
    // A copy on a remote still holds it: the row stays, pointing at no local archive, so that
    // the backup can still be fetched back and rolled back to (the remote's retention decides).
    if ctx.catalog.copies_of(rec.id).await?.iter().any(|c| c.is_copied()) {
        ctx.catalog.set_path(rec.id, None).await?;
    } else {
        ctx.catalog.delete(rec.id).await?;
    }
    Ok(freed)
}

/// Releases the image tags kept for backup `id` (services `kept`, see [`kept_services`]); a
/// tag already gone is fine, so recovery can run it again.
pub async fn release_tags(ctx: &Ctx, id: i64, kept: &[String]) {
    if kept.is_empty() {
        return;
    }
    match &ctx.engine {
        Some(engine) => {
            super::backup::release_images(&**engine, &ctx.project.name, id, kept.iter().map(String::as_str))
                .await
        }
        None => tracing::warn!("image tags kept for backup {id} stay in place (no engine)"),
    }
}
