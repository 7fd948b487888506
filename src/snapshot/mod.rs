//! The snapshot: a mirror of the project's data kept on the storage filesystem
//! (`<storage>/.nuwax-snapshot/<project>/`), so that a backup copies the data while the services
//! run, stops them only to bring the mirror up to date with what changed since, and writes the
//! archive from the mirror once they run again.
//!
//! `data/` holds the mirrored trees under their archive paths (owner-only: directories 0700,
//! files 0600; the archive takes modes and owners from the source, never from the mirror).
//! `index.bin` says, per file, the source's [`Stamp`] when it was copied (`index.rs`: per
//! source, in scan order, read and written as a stream; `mirror.rs` reads the mirror's
//! directories in step with the same scan). It is present only while the mirror
//! matches it: [`Snapshot::take_index`] moves it aside before the mirror changes and
//! [`Snapshot::commit`] puts the new one in place after a sync to disk, so a crash in between
//! leaves a mirror without an index, whose files are then compared by content (reused, never
//! trusted).

mod index;
mod mirror;
mod pass;
mod sparse;

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::archive::{self, Stamp};
use crate::fsutil;
pub use index::Index;
pub use pass::{Pass, PassKind, PassReport};

/// Under the storage dir; never swept as a leftover, never archived (the storage dir is skipped).
pub const DIR: &str = ".nuwax-snapshot";
const DATA: &str = "data";

/// One project's mirror.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    dir: PathBuf,
}

/// Per archive path of a mirrored file: the source's stamp when it was copied, and whether that
/// stamp is too recent to prove the copy current (a write in the same clock tick as the copy
/// leaves the stamp unchanged).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub stamp: Stamp,
    pub racy: bool,
}

/// What `doctor` shows of a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub path: PathBuf,
    pub bytes: u64,
    pub files: u64,
    /// The index is there: the last sync completed.
    pub complete: bool,
}

impl Snapshot {
    pub fn dir_for(storage: &Path, project: &str) -> PathBuf {
        storage.join(DIR).join(project)
    }

    /// Opens (creating owner-only) the project's snapshot under `storage`.
    pub fn open(storage: &Path, project: &str) -> io::Result<Snapshot> {
        let dir = Self::dir_for(storage, project);
        for d in [storage.join(DIR), dir.clone(), dir.join(DATA)] {
            fsutil::create_private_dir(&d).map_err(io::Error::other)?;
        }
        Ok(Snapshot { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The storage dir the snapshot is in (where long listings spill).
    pub fn storage(&self) -> Option<&Path> {
        self.dir.parent().and_then(Path::parent)
    }

    /// Where the mirror of archive path `prefix` is.
    pub fn data(&self, prefix: &str) -> PathBuf {
        self.dir.join(DATA).join(prefix)
    }

    fn data_root(&self) -> PathBuf {
        self.dir.join(DATA)
    }

    /// The index of the last completed sync, moved aside before anything changes (a missing
    /// or unreadable index is an empty one: every file is compared by content). What a dead
    /// pass left is removed.
    pub fn take_index(&self) -> io::Result<Index> {
        let committed = self.dir.join(index::COMMITTED);
        // An index of an earlier format beside it: an older version synced the mirror since
        // (a downgrade, then this one again) without a word to `index.bin`, which is stale.
        // It goes first, so a crash before the rest cannot leave it looking trusted.
        if index::LEGACY.iter().any(|name| self.dir.join(name).symlink_metadata().is_ok()) {
            match std::fs::remove_file(&committed) {
                Ok(()) => fsutil::fsync_dir(&self.dir)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        index::clear_working(&self.dir)?;
        let taken = index::working(&self.dir);
        match std::fs::rename(&committed, &taken) {
            Ok(()) => fsutil::fsync_dir(&self.dir)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Index::default()),
            Err(e) => return Err(e),
        }
        let loaded = match index::Format::of(&taken) {
            Ok(index::Format::Current) => Index::load(taken.clone()),
            // Written by an earlier version: its mirror is compared by content, as after an
            // upgrade.
            Ok(index::Format::Legacy) => {
                tracing::debug!("{} is of an earlier format; not used", committed.display());
                let _ = std::fs::remove_file(&taken);
                return Ok(Index::default());
            }
            Ok(index::Format::Damaged) => {
                Err(io::Error::new(io::ErrorKind::InvalidData, "damaged index: it does not start as one"))
            }
            Err(e) => Err(e),
        };
        Ok(loaded.unwrap_or_else(|e| {
            tracing::warn!("{} is unreadable ({e}); comparing the snapshot by content", committed.display());
            let _ = std::fs::remove_file(&taken);
            Index::default()
        }))
    }

    /// A new index file for a pass to write.
    pub(super) fn new_index(&self) -> archive::Result<index::Writer> {
        index::Writer::create(index::working(&self.dir))
    }

    /// Flushes the filesystem the mirror is on.
    pub fn sync(&self) -> io::Result<()> {
        let data = std::fs::File::open(self.data_root())?;
        Ok(rustix::fs::syncfs(&data)?)
    }

    /// The mirror is on disk and matches `index`: put in place, so the next backup trusts it.
    pub fn commit(&self, index: &Index) -> archive::Result<()> {
        self.sync().map_err(archive::Error::io(self.data_root()))?;
        index.persist(&self.dir.join(index::COMMITTED))?;
        fsutil::fsync_dir(&self.dir).map_err(archive::Error::io(&self.dir))
    }

    /// Removes the project's snapshot; `true` when there was one.
    pub fn remove(storage: &Path, project: &str) -> io::Result<bool> {
        let dir = Self::dir_for(storage, project);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {
                // The parent goes too when no other project keeps a snapshot there.
                let _ = std::fs::remove_dir(storage.join(DIR));
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Bytes on disk the project's snapshot holds, if there is one.
    pub fn usage(storage: &Path, project: &str) -> Option<Usage> {
        let dir = Self::dir_for(storage, project);
        if !dir.is_dir() {
            return None;
        }
        let (mut bytes, mut files) = (0, 0);
        for e in walkdir::WalkDir::new(dir.join(DATA)).into_iter().flatten() {
            if let Ok(m) = e.metadata() {
                use std::os::unix::fs::MetadataExt;
                bytes += m.blocks() * 512;
                files += u64::from(m.is_file());
            }
        }
        Some(Usage { complete: dir.join(index::COMMITTED).is_file(), path: dir, bytes, files })
    }
}

/// `true` for the error a full filesystem gives.
pub fn is_no_space(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::StorageFull) {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests;
