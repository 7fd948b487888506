//! Lists what an archive will hold, before anything is written: a host directory tree, or a
//! tar stream from the engine's archive API.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use globset::GlobSet;
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};

use super::listing::{Listing, ListingBuilder, get};
use super::manifest::{EntryKind, EntryMeta, Skipped};
use super::{Error, Result, check_archive_path};

/// What a scan found. `entries` are in archive order (a directory before its content), each
/// with its [`Stamp`] when the scan was stamped.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScanResult {
    pub entries: Listing,
    pub skipped: Vec<Skipped>,
    /// Sum of the sizes of the regular files.
    pub size: u64,
    /// Number of regular files.
    pub file_count: u64,
}

/// How a host scan keeps what it finds.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanOpts<'a> {
    /// Record each entry's [`Stamp`] (for the snapshot's quick check).
    pub stamped: bool,
    /// Where a long listing spills (the system's temp dir when `None`).
    pub spill_dir: Option<&'a Path>,
    /// Only count (sizes and entries); the listing stays empty.
    pub count_only: bool,
}

/// What identifies a file's content without reading it: if none of these changed, neither did
/// the content (the ctime cannot be set from user space, so a write the mtime hides shows here).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl Stamp {
    pub fn of(meta: &fs::Metadata) -> Stamp {
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Writes the stamp as spill and index files hold it (five numbers, little-endian).
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.dev.to_le_bytes());
        out.extend_from_slice(&self.ino.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.mtime_ns.to_le_bytes());
        out.extend_from_slice(&self.ctime_ns.to_le_bytes());
    }

    /// Reads a stamp [`Stamp::encode`] wrote.
    pub(crate) fn decode(r: &mut impl Read) -> io::Result<Stamp> {
        Ok(Stamp {
            dev: u64::from_le_bytes(get(r)?),
            ino: u64::from_le_bytes(get(r)?),
            size: u64::from_le_bytes(get(r)?),
            mtime_ns: i128::from_le_bytes(get(r)?),
            ctime_ns: i128::from_le_bytes(get(r)?),
        })
    }

    /// [`Stamp::of`] a `stat` result (the same numbers, without `std`'s `statx`).
    // The field types of `struct stat` vary by architecture.
    #[allow(clippy::unnecessary_cast)]
    pub(crate) fn of_stat(st: &rustix::fs::Stat) -> Stamp {
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Stamp {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            size: st.st_size as u64,
            mtime_ns: ns(st.st_mtime as i64, st.st_mtime_nsec as i64),
            ctime_ns: ns(st.st_ctime as i64, st.st_ctime_nsec as i64),
        }
    }
}

/// A scan in progress.
struct Found {
    list: Option<ListingBuilder>,
    entries: u64,
    skipped: Vec<Skipped>,
    size: u64,
    file_count: u64,
}

impl Found {
    fn new(opts: ScanOpts<'_>) -> Found {
        let list = (!opts.count_only).then(|| ListingBuilder::new(opts.spill_dir));
        Found { list, entries: 0, skipped: Vec::new(), size: 0, file_count: 0 }
    }

    fn push(&mut self, entry: EntryMeta, stamp: Option<Stamp>) -> Result<()> {
        if entry.kind == EntryKind::File {
            self.size += entry.size;
            self.file_count += 1;
        }
        self.entries += 1;
        match &mut self.list {
            Some(list) => list.push(entry, stamp),
            None => Ok(()),
        }
    }

    fn skip(&mut self, path: String, reason: impl Into<String>) {
        self.skipped.push(Skipped { path, reason: reason.into() });
    }

    fn finish(self) -> Result<ScanResult> {
        let entries = match self.list {
            Some(list) => list.finish()?,
            None => Listing::default(),
        };
        Ok(ScanResult { entries, skipped: self.skipped, size: self.size, file_count: self.file_count })
    }
}

/// Entries and bytes a host tree holds (as [`scan_host`] counts them), nothing listed.
pub fn count_host(root: &Path, excludes: &GlobSet, skip_dirs: &[PathBuf]) -> Result<(u64, u64)> {
    let opts = ScanOpts { count_only: true, ..ScanOpts::default() };
    let mut found = Found::new(opts);
    walk_host("count", root, excludes, skip_dirs, opts, &mut found)?;
    Ok((found.entries, found.size))
}

/// Walks `root` (a directory or a single file, never following symlinks, `root` included) and
/// lists it as entries named `prefix/<relative path>`; `root` itself is the entry `prefix`.
///
/// `excludes` are matched against the path relative to `root` and against the absolute path;
/// excluded directories are not entered. `skip_dirs` are host directories never to enter
/// (nuwax's own storage); they are reported as skipped. Sockets, FIFOs, devices and names that
/// are not UTF-8 are reported as skipped. An unreadable directory is an error: a backup that
/// silently misses data is worse than one that fails.
pub fn scan_host(prefix: &str, root: &Path, excludes: &GlobSet, skip_dirs: &[PathBuf]) -> Result<ScanResult> {
    scan_host_with(prefix, root, excludes, skip_dirs, ScanOpts::default())
}

/// [`scan_host`], also recording each entry's [`Stamp`] (for the snapshot's quick check).
pub fn scan_host_stamped(
    prefix: &str,
    root: &Path,
    excludes: &GlobSet,
    skip_dirs: &[PathBuf],
) -> Result<ScanResult> {
    scan_host_with(prefix, root, excludes, skip_dirs, ScanOpts { stamped: true, ..ScanOpts::default() })
}

/// [`scan_host`] as `opts` say.
pub fn scan_host_with(
    prefix: &str,
    root: &Path,
    excludes: &GlobSet,
    skip_dirs: &[PathBuf],
    opts: ScanOpts<'_>,
) -> Result<ScanResult> {
    let mut found = Found::new(opts);
    walk_host(prefix, root, excludes, skip_dirs, opts, &mut found)?;
    found.finish()
}

fn walk_host(
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

/// Lists a tar stream shaped like the engine's `GET /containers/{id}/archive?path=P` output:
/// entries named `<basename of P>/...`, the first being `<basename of P>` itself. The first
/// component is replaced by `prefix`. Entry data is read and discarded.
pub fn scan_tar_stream(prefix: &str, reader: impl Read) -> Result<ScanResult> {
    scan_tar_stream_in(prefix, reader, None)
}

/// [`scan_tar_stream`], spilling a long listing to `spill_dir`.
pub fn scan_tar_stream_in(prefix: &str, reader: impl Read, spill_dir: Option<&Path>) -> Result<ScanResult> {
    check_archive_path(prefix)?;
    let mut archive = tar::Archive::new(reader);
    let mut names = StreamNames::new(prefix);
    let mut out = Found::new(ScanOpts { spill_dir, ..ScanOpts::default() });
    let entries = archive.entries().map_err(Error::io(prefix))?;
    for entry in entries {
        let entry = entry.map_err(Error::io(prefix))?;
        match names.classify(&entry)? {
            StreamItem::Entry(meta) => out.push(meta, None)?,
            StreamItem::Skipped(skipped) => out.skipped.push(skipped),
            StreamItem::Ignored => {}
        }
    }
    out.finish()
}

/// What one entry of an engine tar stream becomes.
pub(super) enum StreamItem {
    Entry(EntryMeta),
    Skipped(Skipped),
    /// Tar bookkeeping (PAX global headers), not content.
    Ignored,
}

/// Maps the names of an engine tar stream to archive paths, checking that they all live under
/// the same first component.
pub(super) struct StreamNames<'a> {
    prefix: &'a str,
    base: Option<Vec<u8>>,
}

impl<'a> StreamNames<'a> {
    pub(super) fn new(prefix: &'a str) -> Self {
        Self { prefix, base: None }
    }

    pub(super) fn classify<R: Read>(&mut self, entry: &tar::Entry<'_, R>) -> Result<StreamItem> {
        let header = entry.header();
        let entry_type = header.entry_type();
        if entry_type.is_pax_global_extensions() {
            return Ok(StreamItem::Ignored);
        }
        let path = match self.map(&entry.path_bytes())? {
            Ok(path) => path,
            Err(lossy) => {
                let reason = "name is not valid UTF-8".to_owned();
                return Ok(StreamItem::Skipped(Skipped { path: lossy, reason }));
            }
        };
        let skipped = |reason: String| Ok(StreamItem::Skipped(Skipped { path: path.clone(), reason }));
        let (kind, size, link_target) = if entry_type.is_file() || entry_type.is_contiguous() {
            (EntryKind::File, entry.size(), None)
        } else if entry_type.is_dir() {
            (EntryKind::Dir, 0, None)
        } else if entry_type.is_symlink() {
            let target = entry.link_name_bytes().unwrap_or_default();
            match String::from_utf8(target.into_owned()) {
                Ok(target) => (EntryKind::Symlink, 0, Some(target)),
                Err(_) => return skipped("symlink target is not valid UTF-8".into()),
            }
        } else if entry_type.is_hard_link() {
            // Its data was sent once, under the first name; it cannot be re-read for this one.
            let target = entry.link_name_bytes().unwrap_or_default();
            let target = String::from_utf8_lossy(&target);
            return skipped(format!("hard link to {target} (not supported through the engine)"));
        } else {
            return skipped(stream_special_reason(entry_type));
        };
        let field = |value: io::Result<u64>, what: &str| {
            value.map_err(|err| Error::corrupt(format!("{path}: bad {what} in tar header: {err}")))
        };
        let mtime = field(header.mtime(), "mtime")?;
        Ok(StreamItem::Entry(EntryMeta {
            mode: header.mode().map_err(|err| Error::corrupt(format!("{path}: bad mode: {err}")))? & 0o7777,
            uid: field(header.uid(), "uid")?,
            gid: field(header.gid(), "gid")?,
            mtime: i64::try_from(mtime).unwrap_or(i64::MAX),
            path,
            kind,
            size,
            link_target,
        }))
    }

    /// `Ok(archive path)`, or `Err(lossy path)` when the name is not UTF-8.
    fn map(&mut self, raw: &[u8]) -> Result<std::result::Result<String, String>> {
        let mut parts = raw.split(|&b| b == b'/').filter(|c| !c.is_empty() && *c != b".");
        let Some(first) = parts.next() else {
            return Err(Error::corrupt("engine tar stream has an entry with an empty name"));
        };
        let rest: Vec<&[u8]> = parts.collect();
        if first == b".." || rest.iter().any(|c| *c == b"..") {
            let name = String::from_utf8_lossy(raw);
            return Err(Error::corrupt(format!("engine tar stream entry {name:?} contains `..`")));
        }
        match &self.base {
            None => self.base = Some(first.to_vec()),
            Some(base) if base == first => {}
            Some(_) => {
                let name = String::from_utf8_lossy(raw);
                return Err(Error::corrupt(format!(
                    "engine tar stream entry {name:?} is outside the requested path"
                )));
            }
        }
        let mut path = self.prefix.to_owned();
        let mut lossy = false;
        for part in rest {
            path.push('/');
            match std::str::from_utf8(part) {
                Ok(part) => path.push_str(part),
                Err(_) => {
                    lossy = true;
                    path.push_str(&String::from_utf8_lossy(part));
                }
            }
        }
        Ok(if lossy { Err(path) } else { Ok(path) })
    }
}

fn archive_path(prefix: &str, rel: &Path) -> Option<String> {
    let rel = rel.to_str()?;
    Some(if rel.is_empty() { prefix.to_owned() } else { format!("{prefix}/{rel}") })
}

fn lossy_path(prefix: &str, rel: &Path) -> String {
    format!("{prefix}/{}", rel.to_string_lossy())
}

/// Tar headers of this format hold no negative times; pre-1970 mtimes are stored as 0.
pub(super) fn clamp_mtime(mtime: i64) -> i64 {
    mtime.max(0)
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

fn stream_special_reason(entry_type: tar::EntryType) -> String {
    match entry_type {
        tar::EntryType::Fifo => "FIFO (special files are not archived)".into(),
        tar::EntryType::Char => "character device (special files are not archived)".into(),
        tar::EntryType::Block => "block device (special files are not archived)".into(),
        other => format!("unsupported tar entry type {:?}", other.as_byte() as char),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;

    use super::*;

    /// The order and the stamps the snapshot's index and the archive rely on: depth first,
    /// names by bytes, as `walkdir` sorted by file name lists them; deeper than the levels kept
    /// open too.
    #[test]
    fn a_scan_lists_depth_first_by_name_bytes_and_stamps_as_std_does() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let names = ["a", "a.b", "a-b", "a b", "B", "b", "ä", "z"];
        let mut deep = root.join("deep");
        for _ in 0..OPEN_LEVELS + 3 {
            deep.push("d");
        }
        fs::create_dir_all(&deep).unwrap();
        fs::write(deep.join("f"), b"deep").unwrap();
        for dir in ["", "a", "a/a"] {
            for name in names {
                let path = root.join(dir).join(name);
                if name.len() == 1 {
                    fs::create_dir_all(&path).unwrap();
                } else {
                    fs::write(&path, name).unwrap();
                }
            }
        }
        std::os::unix::fs::symlink("a", root.join("a/link")).unwrap();
        fs::write(root.join(OsStr::from_bytes(b"bad\xff")), b"").unwrap();

        let opts = ScanOpts { stamped: true, ..ScanOpts::default() };
        let scan = scan_host_with("vol", &root, &GlobSet::empty(), &[], opts).unwrap();
        let listed: Vec<_> = scan.entries.iter().unwrap().map(Result::unwrap).collect();
        let expected: Vec<_> = WalkDirSorted::new(&root)
            .filter(|(rel, _)| std::str::from_utf8(rel).is_ok())
            .map(|(rel, meta)| {
                let rel = String::from_utf8(rel).unwrap();
                (if rel.is_empty() { "vol".to_owned() } else { format!("vol/{rel}") }, Stamp::of(&meta))
            })
            .collect();
        let got: Vec<_> = listed.iter().map(|(e, stamp)| (e.path.clone(), stamp.unwrap())).collect();
        assert_eq!(got, expected);
        assert_eq!(scan.skipped.len(), 1);
    }

    /// `walkdir`'s listing, sorted by file name, with `std`'s `lstat` of each entry.
    struct WalkDirSorted(walkdir::IntoIter, PathBuf);

    impl WalkDirSorted {
        fn new(root: &Path) -> Self {
            WalkDirSorted(walkdir::WalkDir::new(root).sort_by_file_name().into_iter(), root.to_owned())
        }
    }

    impl Iterator for WalkDirSorted {
        type Item = (Vec<u8>, fs::Metadata);

        fn next(&mut self) -> Option<Self::Item> {
            let entry = self.0.next()?.unwrap();
            let rel = entry.path().strip_prefix(&self.1).unwrap().as_os_str().as_bytes().to_vec();
            Some((rel, fs::symlink_metadata(entry.path()).unwrap()))
        }
    }
}
