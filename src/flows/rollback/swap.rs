//! Putting restored trees in place: each target is first extracted into a staging path beside it
//! (same filesystem), then swapped in with two renames. The journal says which phase a rollback
//! was in, and the three paths per target say how far each swap got, so a crash at any point is
//! finished (after the swap began) or undone (before it) — never a half-old, half-new tree.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One target and its two neighbours.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Slot {
    /// The live path: a volume's `_data`, a bind source, a config file.
    pub dest: PathBuf,
    /// Where the backup's version is extracted first.
    pub staging: PathBuf,
    /// Where the current version goes during the swap, removed after it.
    pub old: PathBuf,
}

impl Slot {
    pub fn new(dest: &Path, backup_id: i64) -> Slot {
        let name =
            dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "root".into());
        let parent = dest.parent().unwrap_or(Path::new("/"));
        Slot {
            dest: dest.to_path_buf(),
            staging: parent.join(format!(".{name}.nuwax-new-{backup_id}")),
            old: parent.join(format!(".{name}.nuwax-old-{backup_id}")),
        }
    }
}

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

fn remove_any(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(md) if md.is_dir() => {
            // Extracted trees may hold 0o000 directories; make them removable first.
            make_writable(p);
            std::fs::remove_dir_all(p)
        }
        Ok(_) => std::fs::remove_file(p),
    }
}

fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for e in walkdir::WalkDir::new(dir).follow_links(false).into_iter().flatten() {
        if e.file_type().is_dir() {
            let _ = std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o700));
        }
    }
}

/// Removes staging leftovers (before extracting, or to undo a rollback that never swapped).
pub fn clear_staging(slots: &[Slot]) -> Result<()> {
    for s in slots {
        remove_any(&s.staging).with_context(|| format!("removing {}", s.staging.display()))?;
    }
    Ok(())
}

/// Swaps every slot (or finishes swaps a crash interrupted), then removes the old versions.
/// Idempotent: running it again after it finished changes nothing.
pub fn complete(slots: &[Slot]) -> Result<()> {
    swap_in(slots)?;
    cleanup(slots)
}

/// Swaps every slot whose staged version is still waiting; the old versions stay beside them
/// (for [`undo`]) until [`cleanup`].
pub fn swap_in(slots: &[Slot]) -> Result<()> {
    for s in slots {
        if !exists(&s.staging) {
            continue; // already swapped
        }
        if exists(&s.dest) {
            if exists(&s.old) {
                remove_any(&s.old).with_context(|| format!("removing {}", s.old.display()))?;
            }
            std::fs::rename(&s.dest, &s.old).with_context(|| format!("moving {} aside", s.dest.display()))?;
        }
        std::fs::rename(&s.staging, &s.dest)
            .with_context(|| format!("moving the restored {} into place", s.dest.display()))?;
        sync_parent(&s.dest);
    }
    Ok(())
}

/// Removes the old versions: from here on the swap can no longer be undone.
pub fn cleanup(slots: &[Slot]) -> Result<()> {
    for s in slots {
        remove_any(&s.old).with_context(|| format!("removing {}", s.old.display()))?;
    }
    Ok(())
}

/// Puts back the old versions of slots already swapped (a swap that failed halfway).
pub fn undo(slots: &[Slot]) -> Result<()> {
    for s in slots {
        if exists(&s.old) {
            if exists(&s.dest) {
                // The restored version moves back to staging, to be cleared below.
                remove_any(&s.staging)?;
                std::fs::rename(&s.dest, &s.staging)?;
            }
            std::fs::rename(&s.old, &s.dest).with_context(|| format!("putting {} back", s.dest.display()))?;
            sync_parent(&s.dest);
        }
    }
    clear_staging(slots)
}

fn sync_parent(p: &Path) {
    if let Some(parent) = p.parent() {
        let _ = crate::fsutil::fsync_dir(parent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Vec<Slot>) {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("vol/_data");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::write(a.join("f"), "old").unwrap();
        let b = t.path().join(".env");
        std::fs::write(&b, "OLD=1").unwrap();
        let slots = vec![Slot::new(&a, 7), Slot::new(&b, 7)];
        std::fs::create_dir_all(&slots[0].staging).unwrap();
        std::fs::write(slots[0].staging.join("f"), "new").unwrap();
        std::fs::write(&slots[1].staging, "NEW=1").unwrap();
        (t, slots)
    }

    #[test]
    fn complete_swaps_everything_and_is_idempotent() {
        let (_t, slots) = setup();
        complete(&slots).unwrap();
        assert_eq!(std::fs::read_to_string(slots[0].dest.join("f")).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(&slots[1].dest).unwrap(), "NEW=1");
        assert!(!exists(&slots[0].old) && !exists(&slots[1].staging));
        complete(&slots).unwrap();
        assert_eq!(std::fs::read_to_string(&slots[1].dest).unwrap(), "NEW=1");
    }

    #[test]
    fn a_crash_between_the_two_renames_is_finished() {
        let (_t, slots) = setup();
        // As if killed after moving the first target aside.
        std::fs::rename(&slots[0].dest, &slots[0].old).unwrap();
        complete(&slots).unwrap();
        assert_eq!(std::fs::read_to_string(slots[0].dest.join("f")).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(&slots[1].dest).unwrap(), "NEW=1");
    }

    #[test]
    fn undo_puts_the_old_versions_back() {
        let (_t, slots) = setup();
        std::fs::rename(&slots[0].dest, &slots[0].old).unwrap();
        std::fs::rename(&slots[0].staging, &slots[0].dest).unwrap();
        undo(&slots).unwrap();
        assert_eq!(std::fs::read_to_string(slots[0].dest.join("f")).unwrap(), "old");
        assert_eq!(std::fs::read_to_string(&slots[1].dest).unwrap(), "OLD=1");
        assert!(!exists(&slots[0].staging) && !exists(&slots[1].staging) && !exists(&slots[0].old));
    }
}
