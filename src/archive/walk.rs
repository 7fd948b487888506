//! The walk of a host tree a scan lists: depth first, each directory's names sorted by bytes,
//! every entry looked up relative to its open directory (one `stat` per entry, no path walk
//! from the root). A container may change its volume while a running pass walks it: a child
//! directory is opened with `O_NOFOLLOW` and a symlink read relative to its directory, so a
//! directory swapped for a symlink is never followed.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use globset::GlobSet;
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::manifest::{EntryKind, EntryMeta};
use super::scan::{Found, ScanOpts, Stamp, clamp_mtime};
use super::{Error, Result, check_archive_path};

/// Directories this deep and deeper keep their descriptor only while the walk lists them, not
/// while it is below them (it opens them again, one component at a time, on its way back up),
/// so a deep tree cannot run out of file descriptors.
pub(crate) const OPEN_LEVELS: usize = 64;

/// Walks `root` as [`super::scan_host`] says, into `out`.
pub(super) fn walk_host(
    prefix: &str,
    root: &Path,
    excludes: &GlobSet,
    skip_dirs: &[PathBuf],
    opts: ScanOpts<'_>,
    out: &mut Found,
) -> Result<()> {
    check_archive_path(prefix)?;
    // Compare directories by identity, so a storage dir is recognised whatever path spells it.
    let skip_ids: Vec<(u64, u64)> = skip_dirs
        .iter()
        .filter_map(|dir| rustix::fs::stat(dir).ok())
        .map(|st| Stamp::of_stat(&st))
        .map(|stamp| (stamp.dev, stamp.ino))
        .collect();
    let walk = Walk { prefix, excludes, skip_ids, opts };

    // The root is never followed if it is a symlink; an error reading it is the scan's.
    let meta = rustix::fs::statat(rustix::fs::CWD, root, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| Error::io(root)(e.into()))?;
    if !walk.found(b"", root, &meta, None, out)? {
        return Ok(());
    }
    // `host` and `rel` are the path of the entry at hand; a level keeps their lengths for its
    // directory.
    let mut host = root.as_os_str().as_bytes().to_vec();
    let mut rel = Vec::new();
    let dir = SortedDir::open(rustix::fs::CWD, root, true).map_err(Error::io(root))?;
    let mut levels = vec![(dir, host.len(), 0)];
    loop {
        let depth = levels.len();
        let Some((dir, _, _)) = levels.last() else { break };
        if dir.current().is_none() {
            levels.pop();
            continue;
        }
        if dir.fd().is_none() && !reopen_innermost(&mut levels, &host)? {
            // Replaced or gone: what it held is no longer there to list.
            levels.pop();
            continue;
        }
        let Some((dir, host_len, rel_len)) = levels.last_mut() else { break };
        let Some((name, _)) = dir.current() else { continue };
        host.truncate(*host_len);
        rel.truncate(*rel_len);
        if host.last().is_some_and(|&c| c != b'/') {
            host.push(b'/');
        }
        let name_at = host.len();
        host.extend_from_slice(name);
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(name);
        dir.advance();
        let name = &host[name_at..];
        let host_path = Path::new(OsStr::from_bytes(&host));
        if walk.excluded(Path::new(OsStr::from_bytes(&rel)), host_path) {
            continue;
        }
        let meta = match dir.stat(name, host_path) {
            Ok(meta) => meta,
            // Deleted between listing its parent and reading it: nothing left to back up.
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(Error::io(host_path)(err)),
        };
        if !walk.found(&rel, host_path, &meta, Some((&*dir, name)), out)? {
            continue;
        }
        let child = match dir.open_child(name, host_path, true) {
            Ok(child) => child,
            // Gone, or no longer a directory (a symlink now): listed as the directory it was,
            // with nothing under it; reading it back finds the change.
            Err(err) if replaced(&err) => continue,
            Err(err) => return Err(Error::io(host_path)(err)),
        };
        if depth > OPEN_LEVELS {
            dir.release();
        }
        levels.push((child, host.len(), rel.len()));
    }
    Ok(())
}

/// Opens the innermost level again (its descriptor went while the walk was below it, deep in
/// the tree) from the deepest level kept open, never through a symlink, and only if it is the
/// directory listed; `false` when it was replaced or is gone.
fn reopen_innermost(levels: &mut [(SortedDir, usize, usize)], host: &[u8]) -> Result<bool> {
    let (kept, deep) = levels.split_at_mut(OPEN_LEVELS);
    let (anchor, anchor_len, _) = &kept[OPEN_LEVELS - 1];
    let (dir, host_len, _) = deep.last_mut().expect("only levels below the anchor close");
    let anchor = anchor.fd().expect("the levels above it stay open");
    match dir.reopen(anchor, &host[*anchor_len + 1..*host_len]) {
        Ok(()) => Ok(true),
        Err(e) if replaced(&e) => Ok(false),
        Err(e) => Err(Error::io(Path::new(OsStr::from_bytes(&host[..*host_len])))(e)),
    }
}

/// The error of a lookup of an entry that is gone or no longer a directory.
fn replaced(e: &io::Error) -> bool {
    matches!(Errno::from_io_error(e), Some(Errno::NOENT | Errno::NOTDIR | Errno::LOOP))
}

/// What a host walk matches each entry against.
struct Walk<'a> {
    prefix: &'a str,
    excludes: &'a GlobSet,
    skip_ids: Vec<(u64, u64)>,
    opts: ScanOpts<'a>,
}

impl Walk<'_> {
    /// `excludes` match the path relative to the root or the host path; an excluded directory
    /// is not entered.
    fn excluded(&self, rel: &Path, host: &Path) -> bool {
        !self.excludes.is_empty() && (self.excludes.is_match(rel) || self.excludes.is_match(host))
    }

    /// Lists the entry at `rel` (relative to the root, `host` on the host; `at`: its directory
    /// and name, `None` for the root) as `meta` describes it, or reports it skipped; `true`
    /// when it is a directory to enter.
    fn found(
        &self,
        rel: &[u8],
        host: &Path,
        meta: &rustix::fs::Stat,
        at: Option<(&SortedDir, &[u8])>,
        out: &mut Found,
    ) -> Result<bool> {
        let rel = Path::new(OsStr::from_bytes(rel));
        let Some(path) = archive_path(self.prefix, rel) else {
            out.skip(lossy_path(self.prefix, rel), "name is not valid UTF-8");
            return Ok(false);
        };
        let meta = HostMeta::of(meta);
        let is_dir = meta.file_type == FileType::Directory;
        if is_dir && self.skip_ids.contains(&(meta.stamp.dev, meta.stamp.ino)) {
            out.skip(path, "nuwax storage or state directory");
            return Ok(false);
        }
        let (kind, size, link_target) = match meta.file_type {
            FileType::RegularFile => (EntryKind::File, meta.stamp.size, None),
            FileType::Directory => (EntryKind::Dir, 0, None),
            FileType::Symlink => {
                let target = match at {
                    Some((dir, name)) => dir.read_link(name, host),
                    None => {
                        rustix::fs::readlinkat(rustix::fs::CWD, host, Vec::new()).map_err(io::Error::from)
                    }
                };
                let target = match target {
                    Ok(target) => target.into_bytes(),
                    // Gone since its `stat`: nothing left to back up.
                    Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
                    Err(err) => return Err(Error::io(host)(err)),
                };
                match String::from_utf8(target) {
                    Ok(target) => (EntryKind::Symlink, 0, Some(target)),
                    Err(_) => {
                        out.skip(path, "symlink target is not valid UTF-8");
                        return Ok(false);
                    }
                }
            }
            other => {
                out.skip(path, special_reason(other));
                return Ok(false);
            }
        };
        let entry = EntryMeta {
            path,
            kind,
            size,
            mode: meta.mode & 0o7777,
            uid: meta.uid,
            gid: meta.gid,
            mtime: clamp_mtime(meta.mtime),
            link_target,
        };
        out.push(entry, self.opts.stamped.then_some(meta.stamp))?;
        Ok(is_dir)
    }
}

/// What a scan takes from a `stat`.
struct HostMeta {
    file_type: FileType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
    stamp: Stamp,
}

impl HostMeta {
    // The field types of `struct stat` vary by architecture.
    #[allow(clippy::unnecessary_cast)]
    fn of(st: &rustix::fs::Stat) -> HostMeta {
        HostMeta {
            file_type: FileType::from_raw_mode(st.st_mode as rustix::fs::RawMode),
            mode: st.st_mode as u32,
            uid: st.st_uid as u64,
            gid: st.st_gid as u64,
            mtime: st.st_mtime as i64,
            stamp: Stamp::of_stat(st),
        }
    }
}

/// One directory's names in the order a scan lists them (by bytes), each with the type the
/// directory gave, read at once: a scan holds one per level of the path it is at. Its
/// descriptor, while kept open, serves lookups relative to it.
pub(crate) struct SortedDir {
    fd: Option<OwnedFd>,
    /// Device and inode of the directory read (a directory opened again must be this one).
    id: (u64, u64),
    names: Vec<u8>,
    /// Per entry: where its name is in `names`, and its type.
    entries: Vec<(u32, u32, FileType)>,
    next: usize,
}

impl SortedDir {
    /// Reads the directory `name` (relative to `dir`), never following a symlink there,
    /// keeping it open when `keep_open`.
    pub(crate) fn open(
        dir: BorrowedFd<'_>,
        name: impl rustix::path::Arg,
        keep_open: bool,
    ) -> io::Result<SortedDir> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(dir, name, flags, Mode::empty())?;
        let Stamp { dev, ino, .. } = Stamp::of_stat(&rustix::fs::fstat(&fd)?);
        let (reader, fd) = if keep_open { (Dir::read_from(&fd)?, Some(fd)) } else { (Dir::new(fd)?, None) };
        let (mut names, mut entries) = (Vec::new(), Vec::new());
        let offset = |n: usize| u32::try_from(n).map_err(|_| io::Error::other("directory too large to list"));
        for item in reader {
            let item = item?;
            let name = item.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let start = offset(names.len())?;
            names.extend_from_slice(name);
            entries.push((start, offset(names.len())?, item.file_type()));
        }
        let name = |&(start, end, _): &(u32, u32, FileType)| &names[start as usize..end as usize];
        entries.sort_unstable_by(|a, b| name(a).cmp(name(b)));
        Ok(SortedDir { fd, id: (dev, ino), names, entries, next: 0 })
    }

    /// The entry at hand (`None` past the last): its name, and its type as the directory gave it
    /// (`Unknown` on filesystems that do not say).
    pub(crate) fn current(&self) -> Option<(&[u8], FileType)> {
        let &(start, end, file_type) = self.entries.get(self.next)?;
        Some((&self.names[start as usize..end as usize], file_type))
    }

    /// The directory's descriptor, if it is open.
    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(AsFd::as_fd)
    }

    pub(crate) fn advance(&mut self) {
        self.next += 1;
    }

    /// Closes the descriptor (the listing stays).
    fn release(&mut self) {
        self.fd = None;
    }

    /// Opens the directory again at `rel` under `anchor`, a component at a time without
    /// following a symlink; `NOTDIR` when something else is there now.
    fn reopen(&mut self, anchor: BorrowedFd<'_>, rel: &[u8]) -> io::Result<()> {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut fd: Option<OwnedFd> = None;
        for component in rel.split(|&c| c == b'/') {
            let at = fd.as_ref().map_or(anchor, AsFd::as_fd);
            fd = Some(rustix::fs::openat(at, component, flags, Mode::empty())?);
        }
        let fd = fd.ok_or_else(|| io::Error::from(Errno::INVAL))?;
        let Stamp { dev, ino, .. } = Stamp::of_stat(&rustix::fs::fstat(&fd)?);
        if (dev, ino) != self.id {
            return Err(Errno::NOTDIR.into());
        }
        self.fd = Some(fd);
        Ok(())
    }

    /// `lstat` of entry `name`, whose path is `path`.
    pub(crate) fn stat(&self, name: &[u8], path: &Path) -> io::Result<rustix::fs::Stat> {
        let nofollow = AtFlags::SYMLINK_NOFOLLOW;
        Ok(match &self.fd {
            Some(fd) => rustix::fs::statat(fd, name, nofollow)?,
            None => rustix::fs::statat(rustix::fs::CWD, path, nofollow)?,
        })
    }

    /// The target of the symlink `name` (whose path is `path`).
    pub(crate) fn read_link(&self, name: &[u8], path: &Path) -> io::Result<std::ffi::CString> {
        Ok(match &self.fd {
            Some(fd) => rustix::fs::readlinkat(fd, name, Vec::new())?,
            None => rustix::fs::readlinkat(rustix::fs::CWD, path, Vec::new())?,
        })
    }

    /// Reads the directory entry `name` (whose path is `path`) is, never through a symlink.
    pub(crate) fn open_child(&self, name: &[u8], path: &Path, keep_open: bool) -> io::Result<SortedDir> {
        match &self.fd {
            Some(fd) => SortedDir::open(fd.as_fd(), name, keep_open),
            None => SortedDir::open(rustix::fs::CWD, path, keep_open),
        }
    }
}

fn archive_path(prefix: &str, rel: &Path) -> Option<String> {
    let rel = rel.to_str()?;
    Some(if rel.is_empty() { prefix.to_owned() } else { format!("{prefix}/{rel}") })
}

fn lossy_path(prefix: &str, rel: &Path) -> String {
    format!("{prefix}/{}", rel.to_string_lossy())
}

fn special_reason(file_type: FileType) -> &'static str {
    match file_type {
        FileType::Fifo => "FIFO (special files are not archived)",
        FileType::Socket => "socket (special files are not archived)",
        FileType::BlockDevice => "block device (special files are not archived)",
        FileType::CharacterDevice => "character device (special files are not archived)",
        _ => "unsupported file type",
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    /// A directory swapped for a symlink between its listing and its opening (a container
    /// changing its volume under a running pass) is not entered; a symlink is read relative to
    /// its directory; a deep directory opened again must be the one listed.
    #[test]
    fn a_directory_swapped_for_a_symlink_is_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, outside) = (tmp.path().join("root"), tmp.path().join("outside"));
        for dir in [root.join("sub/deeper"), outside.join("deeper")] {
            fs::create_dir_all(dir).unwrap();
        }
        std::os::unix::fs::symlink("target", root.join("link")).unwrap();
        let top = SortedDir::open(rustix::fs::CWD, &root, true).unwrap();
        let sub = top.open_child(b"sub", &root.join("sub"), true).unwrap();
        let mut deeper = sub.open_child(b"deeper", &root.join("sub/deeper"), true).unwrap();
        deeper.release();
        deeper.reopen(top.fd().unwrap(), b"sub/deeper").unwrap();
        deeper.release();

        fs::rename(root.join("sub"), tmp.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("sub")).unwrap();
        let err = top.open_child(b"sub", &root.join("sub"), true).err().unwrap();
        assert!(replaced(&err), "{err}");
        let err = deeper.reopen(top.fd().unwrap(), b"sub/deeper").unwrap_err();
        assert!(replaced(&err), "{err}");
        // A directory of the same name in its place is another one.
        fs::remove_file(root.join("sub")).unwrap();
        fs::rename(&outside, root.join("sub")).unwrap();
        let err = deeper.reopen(top.fd().unwrap(), b"sub/deeper").unwrap_err();
        assert!(replaced(&err), "{err}");

        // Read through the directory's descriptor, not its path (gone now).
        fs::rename(&root, tmp.path().join("elsewhere")).unwrap();
        let target = top.read_link(b"link", &root.join("link")).unwrap();
        assert_eq!(target.as_bytes(), b"target");
    }
}
