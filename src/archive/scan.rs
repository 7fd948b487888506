//! Lists what an archive will hold, before anything is written: a host directory tree, or a
//! tar stream from the engine's archive API.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use globset::GlobSet;

use super::listing::{Listing, ListingBuilder};
use super::manifest::{EntryKind, EntryMeta, Skipped};
use super::{Error, Result, check_archive_path, walk};

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
pub(super) struct Found {
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

    pub(super) fn push(&mut self, entry: EntryMeta, stamp: Option<Stamp>) -> Result<()> {
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

    pub(super) fn skip(&mut self, path: String, reason: impl Into<String>) {
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
    walk::walk_host("count", root, excludes, skip_dirs, opts, &mut found)?;
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
    walk::walk_host(prefix, root, excludes, skip_dirs, opts, &mut found)?;
    found.finish()
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

/// Tar headers of this format hold no negative times; pre-1970 mtimes are stored as 0.
pub(super) fn clamp_mtime(mtime: i64) -> i64 {
    mtime.max(0)
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
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    use super::*;

    /// The order and the stamps the snapshot's index and the archive rely on: depth first,
    /// names by bytes, as `walkdir` sorted by file name lists them; deeper than the levels kept
    /// open too (a file and a symlink after each deep directory: read once it is open again).
    #[test]
    fn a_scan_lists_depth_first_by_name_bytes_and_stamps_as_std_does() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let names = ["a", "a.b", "a-b", "a b", "B", "b", "ä", "z"];
        let mut deep = root.join("deep");
        for _ in 0..crate::archive::OPEN_LEVELS + 3 {
            deep.push("d");
            fs::create_dir_all(&deep).unwrap();
            fs::write(deep.with_file_name("e"), b"after").unwrap();
            std::os::unix::fs::symlink("d/e", deep.with_file_name("l")).unwrap();
        }
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
