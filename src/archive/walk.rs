//! The walk of a host tree a scan lists: depth first, each directory's names sorted by bytes,
//! every entry looked up relative to its open directory (one `stat` per entry, no path walk
//! from the root).

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use globset::GlobSet;
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};

use super::manifest::{EntryKind, EntryMeta};
use super::scan::{Found, ScanOpts, Stamp, clamp_mtime};
use super::{Error, Result, check_archive_path};

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
    if !walk.found(b"", root, &meta, out)? {
        return Ok(());
    }
    // Depth first, each directory's names sorted by bytes. `host` and `rel` are the path of the
    // entry at hand; a level keeps their lengths for its directory.
    let mut host = root.as_os_str().as_bytes().to_vec();
    let mut rel = Vec::new();
    let dir = SortedDir::open(rustix::fs::CWD, root, OFlags::empty(), true).map_err(Error::io(root))?;
    let mut levels = vec![(dir, host.len(), 0)];
    loop {
        let keep_open = levels.len() < OPEN_LEVELS;
        let Some((dir, host_len, rel_len)) = levels.last_mut() else { break };
        let Some((name, _)) = dir.current() else {
            levels.pop();
            continue;
        };
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
        if !walk.found(&rel, host_path, &meta, out)? {
            continue;
        }
        let child = match dir.open_child(name, host_path, OFlags::empty(), keep_open) {
            Ok(child) => child,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(Error::io(host_path)(err)),
        };
        levels.push((child, host.len(), rel.len()));
    }
    Ok(())
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

    /// Lists the entry at `rel` (relative to the root, `host` on the host) as `meta` describes
    /// it, or reports it skipped; `true` when it is a directory to enter.
    fn found(&self, rel: &[u8], host: &Path, meta: &rustix::fs::Stat, out: &mut Found) -> Result<bool> {
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
                let target = match fs::read_link(host) {
                    Ok(target) => target,
                    Err(err) if is_not_found(Some(&err)) => return Ok(false),
                    Err(err) => return Err(Error::io(host)(err)),
                };
                match target.into_os_string().into_string() {
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

/// Directories this deep and deeper are read and closed at once (their entries are then looked
/// up by path), so a deep tree cannot run out of file descriptors.
pub(crate) const OPEN_LEVELS: usize = 64;

/// One directory's names in the order a scan lists them (by bytes), each with the type the
/// directory gave, read at once: a scan holds one per level of the path it is at. Its
/// descriptor, kept open, serves lookups relative to it.
pub(crate) struct SortedDir {
    fd: Option<OwnedFd>,
    names: Vec<u8>,
    /// Per entry: where its name is in `names`, and its type.
    entries: Vec<(u32, u32, FileType)>,
    next: usize,
}

impl SortedDir {
    /// Reads the directory `name` (relative to `dir`; `flags` such as `NOFOLLOW` added to the
    /// open), keeping it open when `keep_open`.
    pub(crate) fn open(
        dir: BorrowedFd<'_>,
        name: impl rustix::path::Arg,
        flags: OFlags,
        keep_open: bool,
    ) -> io::Result<SortedDir> {
        let flags = flags | OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(dir, name, flags, Mode::empty())?;
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
        Ok(SortedDir { fd, names, entries, next: 0 })
    }

    /// The entry at hand (`None` past the last): its name, and its type as the directory gave it
    /// (`Unknown` on filesystems that do not say).
    pub(crate) fn current(&self) -> Option<(&[u8], FileType)> {
        let &(start, end, file_type) = self.entries.get(self.next)?;
        Some((&self.names[start as usize..end as usize], file_type))
    }

    /// The directory's descriptor, if it was kept open.
    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(AsFd::as_fd)
    }

    pub(crate) fn advance(&mut self) {
        self.next += 1;
    }

    /// `lstat` of entry `name`, whose path is `path`.
    pub(crate) fn stat(&self, name: &[u8], path: &Path) -> io::Result<rustix::fs::Stat> {
        let nofollow = AtFlags::SYMLINK_NOFOLLOW;
        Ok(match &self.fd {
            Some(fd) => rustix::fs::statat(fd, name, nofollow)?,
            None => rustix::fs::statat(rustix::fs::CWD, path, nofollow)?,
        })
    }

    /// Reads the directory entry `name` (whose path is `path`) is.
    pub(crate) fn open_child(
        &self,
        name: &[u8],
        path: &Path,
        flags: OFlags,
        keep_open: bool,
    ) -> io::Result<SortedDir> {
        match &self.fd {
            Some(fd) => SortedDir::open(fd.as_fd(), name, flags, keep_open),
            None => SortedDir::open(rustix::fs::CWD, path, flags, keep_open),
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

fn is_not_found(err: Option<&io::Error>) -> bool {
    err.is_some_and(|e| e.kind() == io::ErrorKind::NotFound)
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
