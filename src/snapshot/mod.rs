//! The snapshot: a mirror of the project's data kept on the storage filesystem
//! (`<storage>/.nuwax-snapshot/<project>/`), so that a backup copies the data while the services
//! run, stops them only to bring the mirror up to date with what changed since, and writes the
//! archive from the mirror once they run again.
//!
//! `data/` holds the mirrored trees under their archive paths (owner-only: directories 0700,
//! files 0600; the archive takes modes and owners from the source, never from the mirror).
//! `index.json` says, per file, the source's [`Stamp`] when it was copied. It is present only
//! while the mirror matches it: [`Snapshot::take_index`] removes it before the mirror changes
//! and [`Snapshot::commit`] writes it back after a sync to disk, so a crash in between leaves a
//! mirror without an index, whose files are then compared by content (reused, never trusted).

mod pass;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::archive::Stamp;
use crate::fsutil;
pub use pass::{Pass, PassKind, PassReport};

/// Under the storage dir; never swept as a leftover, never archived (the storage dir is skipped).
pub const DIR: &str = ".nuwax-snapshot";
const INDEX: &str = "index.json";
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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Index {
    pub files: HashMap<String, Record>,
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

    /// Where the mirror of archive path `prefix` is.
    pub fn data(&self, prefix: &str) -> PathBuf {
        self.dir.join(DATA).join(prefix)
    }

    fn data_root(&self) -> PathBuf {
        self.dir.join(DATA)
    }

    /// The index of the last completed sync, removed from disk before anything changes (a
    /// missing or unreadable index is an empty one: every file is compared by content).
    pub fn take_index(&self) -> io::Result<Index> {
        let path = self.dir.join(INDEX);
        let index = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!("{} is unreadable ({e}); comparing the snapshot by content", path.display());
                Index::default()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Index::default(),
            Err(e) => return Err(e),
        };
        match std::fs::remove_file(&path) {
            Ok(()) => fsutil::fsync_dir(&self.dir)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(index)
    }

    /// Flushes the filesystem the mirror is on.
    pub fn sync(&self) -> io::Result<()> {
        let data = std::fs::File::open(self.data_root())?;
        Ok(rustix::fs::syncfs(&data)?)
    }

    /// The mirror is on disk and matches `index`: written, so the next backup trusts it.
    pub fn commit(&self, index: &Index) -> io::Result<()> {
        self.sync()?;
        let bytes = serde_json::to_vec(index).map_err(io::Error::other)?;
        fsutil::write_atomically(&self.dir.join(INDEX), &bytes, 0o600).map_err(io::Error::other)
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
        Some(Usage { complete: dir.join(INDEX).is_file(), path: dir, bytes, files })
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
