//! One operation per project at a time: an exclusive lock on `<state_dir>/lock` holding the pid.
//! The kernel drops the lock when the process dies, so a stale lock file never blocks anyone.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Why the lock was not taken: a caller branches on [`LockError::Held`] (wait, skip, or exit 3).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    #[error("another nuwax operation is running (pid {pid})")]
    Held { pid: String },
    #[error("locking {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl LockError {
    /// What the operator can do next.
    pub fn hint(&self) -> &'static str {
        match self {
            LockError::Held { .. } => "wait for it to finish; `nuwax status` shows what it is doing",
            LockError::Io { .. } => {
                "check the permissions of the state directory (.nuwax or NUWAX_STATE_DIR)"
            }
        }
    }
}

type Result<T> = std::result::Result<T, LockError>;

pub const LOCK_FILE: &str = "lock";

/// Held for as long as the value lives.
#[derive(Debug)]
pub struct ProjectLock {
    _file: File,
    pub path: PathBuf,
}

/// How long an operation waits for the lock: read-only commands hold it for a moment to run
/// recovery, and an operation started in that moment should not be refused for it.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

impl ProjectLock {
    /// Takes the lock, waiting up to a second for a momentary holder; else fails with
    /// [`LockError::Held`] naming the holder's pid. For operations that change things.
    pub fn acquire(state_dir: &Path) -> Result<ProjectLock> {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            match Self::try_acquire(state_dir) {
                Err(LockError::Held { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    /// Takes the lock at once or fails with [`LockError::Held`]: for read-only commands, which
    /// skip their recovery check rather than wait.
    pub fn try_acquire(state_dir: &Path) -> Result<ProjectLock> {
        let path = state_dir.join(LOCK_FILE);
        let io = |source| LockError::Io { path: path.clone(), source };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|source| LockError::Io { path: state_dir.to_path_buf(), source })?;
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(LockError::Held {
                    pid: if pid.is_empty() { "unknown".into() } else { pid.into() },
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        let written = (|| {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            write!(file, "{}", std::process::id())?;
            file.flush()
        })();
        written.map_err(io)?;
        Ok(ProjectLock { _file: file, path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = ProjectLock::acquire(dir.path()).unwrap();
        let err = ProjectLock::try_acquire(dir.path()).unwrap_err();
        assert!(matches!(err, LockError::Held { .. }));
        assert_eq!(
            err.to_string(),
            format!("another nuwax operation is running (pid {})", std::process::id())
        );
        drop(first);
        ProjectLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn an_operation_waits_out_a_momentary_holder() {
        let dir = tempfile::tempdir().unwrap();
        let brief = ProjectLock::try_acquire(dir.path()).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(brief);
        });
        // flock locks belong to the open file, so a second open in this process contends too.
        ProjectLock::acquire(dir.path()).unwrap();
        release.join().unwrap();
    }
}
