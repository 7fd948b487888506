//! Small filesystem helpers: owner-only permissions, directory fsync, free space, sizes.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Creates `dir` (and parents) with mode 0700 when missing.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Best effort: owner read/write only.
pub fn make_private(path: &Path) {
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o600));
}

/// Replaces `path` with `bytes`: a temp file beside it, synced, renamed over it, the directory
/// synced, so `path` is the old or the new content, never half of one. The file keeps the mode
/// and owner of the one it replaces; a new file gets mode 0644.
pub fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically(path, bytes, 0o644)
}

/// [`replace_file`], with `new_mode` for a file that does not exist yet.
pub fn write_atomically(path: &Path, bytes: &[u8], new_mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let old = fs::metadata(path).ok();
    let mut tmp = tempfile::Builder::new()
        .prefix(".nuwax-new-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temp file in {}", dir.display()))?;
    tmp.write_all(bytes).with_context(|| format!("writing {}", tmp.path().display()))?;
    let mode = old.as_ref().map(|m| m.mode() & 0o7777).unwrap_or(new_mode);
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(mode))?;
    if let Some(m) = &old {
        // Only root can give a file away; as anyone else the file is ours already.
        let (uid, gid) = (rustix::fs::Uid::from_raw(m.uid()), rustix::fs::Gid::from_raw(m.gid()));
        if let Err(e) = rustix::fs::fchown(tmp.as_file(), Some(uid), Some(gid)) {
            tracing::debug!("keeping the owner of {}: {e}", path.display());
        }
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error).with_context(|| format!("replacing {}", path.display()))?;
    let _ = fsync_dir(dir);
    Ok(())
}

/// Makes a rename or a new file in `dir` durable.
/// Reads until `buf` is full or the input ends; returns how many bytes were read.
pub fn read_full(r: &mut impl io::Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Bytes available to an unprivileged writer in the filesystem holding `dir`.
pub fn free_space(dir: &Path) -> io::Result<u64> {
    // A directory not made yet (`backup --dry-run`) gets the room of the one it would be made in.
    let mut at = dir;
    let st = loop {
        match rustix::fs::statvfs(at) {
            Err(rustix::io::Errno::NOENT) if at.parent().is_some_and(|p| !p.as_os_str().is_empty()) => {
                at = at.parent().unwrap_or(at);
            }
            other => break other?,
        }
    };
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Proves `dir` is writable by creating and removing a file in it.
pub fn probe_writable(dir: &Path) -> io::Result<()> {
    let f = tempfile::Builder::new().prefix(".nuwax-probe-").tempfile_in(dir)?;
    drop(f);
    Ok(())
}

/// `1.5 GiB`, `320 KiB`, `12 B`.
/// Whether two paths name the same existing file.
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Whether two paths name the same directory: by identity when both exist, else by path.
pub fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.exists(), b.exists()) {
        (true, true) => same_file(a, b),
        _ => std::path::absolute(a).ok() == std::path::absolute(b).ok(),
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

/// `1.2 s`, `340 ms`, `2 min 5 s`.
pub fn human_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_a_person_writes_them() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(human_ms(340), "340 ms");
        assert_eq!(human_ms(1250), "1.2 s");
        assert_eq!(human_ms(125_000), "2 min 5 s");
    }
}

/// A file this process made and removes when the value is dropped (a crash leaves it behind,
/// to be swept or, when saved state points at it, reused). Renaming it away makes the removal
/// a no-op.
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct RemovedOnDrop {
    pub path: PathBuf,
}

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
