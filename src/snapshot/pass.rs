//! One sync of the mirror with its sources: scan each source, copy what the index cannot prove
//! current (a whole new file, a reflink where the filesystem has them, else only the blocks
//! that differ, leaving the source's holes holes), and remove what the sources no longer hold.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use globset::GlobSet;

use super::index::{self, Cursor};
use super::mirror::{Mirror, Seen};
use super::sparse::{self, Layout};
use super::{Index, Record, Snapshot};
use crate::archive::{self, Cancel, EntryKind, HostTree, ScanResult, Stamp};

/// Blocks compared and rewritten one at a time.
const BLOCK: usize = 1 << 20;
/// A file whose ctime is this close to the moment it was copied may have changed in the same
/// clock tick without its stamp showing it: its copy is compared again next time.
const RACY_NS: i128 = 1_000_000_000;

/// While the services run, entries that change or vanish under the copy are left for the next
/// pass; while they are stopped, nothing may change, and a change is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassKind {
    Running,
    Stopped,
}

/// What a pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Bytes written into the mirror (whole new files and the blocks that differed; never the
    /// sources' holes, unless the mirror's filesystem cannot punch one).
    pub bytes_written: u64,
    /// Bytes of the sources' holes (or, where the source's filesystem cannot tell, of blocks of
    /// zeros) that the mirror holds as holes: neither written nor compared.
    pub bytes_holes: u64,
    /// Bytes of files cloned by reflink (no data copied).
    pub bytes_reflinked: u64,
    /// Bytes read to compare a file whose stamp changed with its copy.
    pub bytes_compared: u64,
    /// Files whose copy was brought up to date.
    pub files_updated: u64,
    /// Files the index proved current.
    pub files_current: u64,
    /// Entries that changed under a running pass, left for the next.
    pub files_deferred: u64,
}

pub struct Pass<'a> {
    snap: &'a Snapshot,
    old: &'a Index,
    /// The new index, once the first source is passed.
    new: Option<index::Writer>,
    kind: PassKind,
    cancel: Cancel,
    report: PassReport,
    /// The sources passed, and the directories above each (what `finish` keeps of the mirror's
    /// top; inside a source, [`Pass::source`] removes what it no longer holds).
    sources: HashSet<String>,
    above: HashSet<String>,
    reflink: bool,
    /// The mirror's filesystem can punch holes (until it says it cannot).
    punch: bool,
    /// Sources are asked where their holes are (tests turn this off to take the path of
    /// filesystems that cannot tell).
    seek_holes: bool,
    rate: Option<(u64, Instant, u64)>,
    bufs: (Vec<u8>, Vec<u8>),
}

impl<'a> Pass<'a> {
    pub fn new(
        snap: &'a Snapshot,
        old: &'a Index,
        kind: PassKind,
        cancel: Cancel,
        rate: Option<u64>,
    ) -> Self {
        Pass {
            snap,
            old,
            new: None,
            kind,
            cancel,
            report: PassReport::default(),
            sources: HashSet::new(),
            above: HashSet::new(),
            reflink: true,
            punch: true,
            seek_holes: true,
            rate: rate.map(|r| (r, Instant::now(), 0)),
            bufs: (vec![0; BLOCK], vec![0; BLOCK]),
        }
    }

    /// As if neither the sources' nor the mirror's filesystem knew holes.
    #[cfg(test)]
    pub(super) fn without_holes(mut self) -> Self {
        (self.punch, self.seek_holes) = (false, false);
        self
    }

    /// Brings the mirror of `prefix` up to date with `root`; returns the scan, which describes
    /// the source as it was read (the archive's entries, when the services are stopped).
    pub fn source(
        &mut self,
        prefix: &str,
        root: &Path,
        excludes: &GlobSet,
        skip_dirs: &[PathBuf],
    ) -> archive::Result<ScanResult> {
        let opts = archive::ScanOpts { stamped: true, spill_dir: self.snap.storage(), ..Default::default() };
        let scan = archive::scan_host_with(prefix, root, excludes, skip_dirs, opts)?;
        let mut parent = Path::new(prefix).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            self.above.insert(p.to_string_lossy().into_owned());
            parent = p.parent();
        }
        self.sources.insert(prefix.to_owned());
        if self.new.is_none() {
            self.new = Some(self.snap.new_index()?);
        }
        if let Some(new) = &mut self.new {
            new.source(prefix)?;
        }
        let mut old = self.old.cursor(prefix)?;
        if let Some(p) = self.snap.data(prefix).parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(p)
                .map_err(archive::Error::io(p))?;
        }
        let mut tree = HostTree::new(prefix, root);
        let mut mirror = Mirror::new(self.snap, prefix);
        for item in scan.entries.iter()? {
            let (entry, stamp) = item?;
            self.cancel.check()?;
            let seen = mirror.visit(&entry.path)?;
            match self.entry(&mut tree, &mut old, &mirror, &entry, seen, stamp.unwrap_or_default()) {
                Ok(()) => {}
                Err(e @ (archive::Error::Changed { .. } | archive::Error::Io { .. }))
                    if self.kind == PassKind::Running && changed_under_us(&e) =>
                {
                    tracing::debug!("snapshot: {e}; left for the next pass");
                    self.report.files_deferred += 1;
                }
                Err(e) => return Err(e),
            }
            if entry.kind == EntryKind::Dir {
                mirror.enter(&entry.path)?;
            }
        }
        mirror.finish()?;
        Ok(scan)
    }

    /// Removes from the mirror what no source holds; returns the new index.
    pub fn finish(self) -> archive::Result<(Index, PassReport)> {
        let root = self.snap.data_root();
        let mut walk = walkdir::WalkDir::new(&root).min_depth(1).follow_links(false).into_iter();
        while let Some(item) = walk.next() {
            self.cancel.check()?;
            let item = item.map_err(|e| archive::Error::io(&root)(e.into()))?;
            let rel = item.path().strip_prefix(&root).unwrap_or(item.path()).to_str().unwrap_or_default();
            if self.sources.contains(rel) {
                if item.file_type().is_dir() {
                    walk.skip_current_dir();
                }
                continue;
            }
            if self.above.contains(rel) && item.file_type().is_dir() {
                continue;
            }
            if item.file_type().is_dir() {
                walk.skip_current_dir();
            }
            remove_any(item.path()).map_err(archive::Error::io(item.path()))?;
        }
        let index = match self.new {
            Some(new) => new.finish()?,
            None => Index::default(),
        };
        Ok((index, self.report))
    }

    fn entry(
        &mut self,
        tree: &mut HostTree<'_>,
        old: &mut Cursor,
        mirror: &Mirror<'_>,
        entry: &archive::EntryMeta,
        seen: Seen,
        stamp: Stamp,
    ) -> archive::Result<()> {
        if entry.kind == EntryKind::File {
            // The common case, kept to a lookup in the index and a `stat` of the copy.
            let known = old.find(&entry.path)?;
            if known.is_some_and(|r| r.stamp == stamp && !r.racy)
                && mirror.holds_file(&entry.path, seen, entry.size)
            {
                self.report.files_current += 1;
                return self.record(&entry.path, Record { stamp, racy: false });
            }
        }
        let host = tree.host_path(&entry.path)?;
        let dst = self.snap.data(&entry.path);
        match entry.kind {
            EntryKind::Dir => {
                tree.enter_dir(&entry.path, &host)?;
                ensure_dir(&dst).map_err(archive::Error::io(&dst))
            }
            EntryKind::Symlink => {
                tree.check_symlink(entry, &host)?;
                let target = entry.link_target.as_deref().unwrap_or_default();
                ensure_symlink(&dst, target).map_err(archive::Error::io(&dst))
            }
            EntryKind::File => {
                let copied_at = now_ns();
                let src = tree.open_file(entry, &host)?;
                self.update(&src, &host, &dst, entry.size)?;
                self.report.files_updated += 1;
                // Changed while it was copied: the copy proves nothing, the next pass copies again.
                let after = rustix::fs::fstat(&src).map(|st| Stamp::of_stat(&st));
                let after = after.map_err(|e| archive::Error::io(&host)(e.into()))?;
                if after != stamp {
                    if self.kind == PassKind::Stopped {
                        return Err(archive::Error::changed(
                            &host,
                            "changed while the services were stopped",
                        ));
                    }
                    self.report.files_deferred += 1;
                    return Ok(());
                }
                let racy = stamp.ctime_ns + RACY_NS >= copied_at || stamp.mtime_ns + RACY_NS >= copied_at;
                self.record(&entry.path, Record { stamp, racy })
            }
        }
    }

    fn record(&mut self, path: &str, record: Record) -> archive::Result<()> {
        match &mut self.new {
            Some(new) => new.record(path, record),
            None => Ok(()),
        }
    }

    /// Makes `dst` hold the first `size` bytes of `src`.
    fn update(&mut self, src: &File, host: &Path, dst: &Path, size: u64) -> archive::Result<()> {
        let mut existing = match std::fs::symlink_metadata(dst) {
            Ok(m) if m.is_file() => true,
            Ok(_) => {
                remove_any(dst).map_err(archive::Error::io(dst))?;
                false
            }
            Err(_) => false,
        };
        let out = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(dst)
            .map_err(archive::Error::io(dst))?;
        if self.reflink && self.rate.is_none() {
            match rustix::fs::ioctl_ficlone(&out, src) {
                Ok(()) if out.metadata().is_ok_and(|m| m.len() == size) => {
                    self.report.bytes_reflinked += size;
                    return Ok(());
                }
                // Grew or shrank since the scan: copied below, which checks the size, over a
                // clone that holds data now.
                Ok(()) => existing = true,
                Err(_) => self.reflink = false,
            }
        }
        let layout = if self.seek_holes { Layout::of(src, size) } else { Layout::Unknown };
        let zeros_are_holes = layout == Layout::Unknown;
        let pair = Pair { src, host, out: &out, dst, size, existing, zeros_are_holes };
        let mut at = 0;
        while at < size {
            self.cancel.check()?;
            let (end, data) = match layout {
                Layout::Sparse => sparse::region(src, at, size),
                Layout::Dense | Layout::Unknown => (size, true),
            };
            if data {
                self.copy(&pair, at..end)?;
            } else {
                self.hole(&pair, at..end)?;
            }
            at = end;
        }
        // Past the last block written, a new copy is a hole up to `size`.
        out.set_len(size).map_err(archive::Error::io(dst))?;
        Ok(())
    }

    /// Copies `range` of the source, block by block, writing the blocks that differ.
    fn copy(&mut self, pair: &Pair<'_>, range: Range<u64>) -> archive::Result<()> {
        let mut off = range.start;
        while off < range.end {
            self.cancel.check()?;
            let want = usize::try_from(range.end - off).unwrap_or(BLOCK).min(BLOCK);
            let n = read_full_at(pair.src, &mut self.bufs.0[..want], off)
                .map_err(archive::Error::io(pair.host))?;
            if n < want {
                let detail =
                    format!("shrank: {} of {} bytes left unread", pair.size - off - n as u64, pair.size);
                return Err(archive::Error::changed(pair.host, detail));
            }
            let block = off..off + n as u64;
            if pair.zeros_are_holes && sparse::is_zero(&self.bufs.0[..n]) {
                self.hole(pair, block)?;
            } else {
                let same = pair.existing && {
                    let m = read_full_at(pair.out, &mut self.bufs.1[..n], off)
                        .map_err(archive::Error::io(pair.dst))?;
                    self.report.bytes_compared += n as u64;
                    m == n && self.bufs.0[..n] == self.bufs.1[..n]
                };
                if !same {
                    pair.out.write_all_at(&self.bufs.0[..n], off).map_err(archive::Error::io(pair.dst))?;
                    self.report.bytes_written += n as u64;
                }
            }
            off += n as u64;
            self.throttle(n as u64)?;
        }
        Ok(())
    }

    /// Makes `range`, a hole of the source, read as zeros in the copy, as a hole where it can:
    /// a new copy has nothing there; an existing one may have a hole already, or gets one
    /// punched, or zeros written where it holds anything else.
    fn hole(&mut self, pair: &Pair<'_>, range: Range<u64>) -> archive::Result<()> {
        let len = range.end - range.start;
        if !pair.existing || !sparse::holds_data(pair.out, &range) {
            self.report.bytes_holes += len;
            return Ok(());
        }
        if self.punch {
            match sparse::punch(pair.out, &range) {
                Ok(()) => {
                    self.report.bytes_holes += len;
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(
                        "snapshot: cannot punch holes in {} ({e}); writing zeros",
                        pair.dst.display()
                    );
                    self.punch = false;
                }
            }
        }
        let mut off = range.start;
        while off < range.end {
            self.cancel.check()?;
            let want = usize::try_from(range.end - off).unwrap_or(BLOCK).min(BLOCK);
            let n = read_full_at(pair.out, &mut self.bufs.1[..want], off)
                .map_err(archive::Error::io(pair.dst))?;
            self.report.bytes_compared += n as u64;
            // Past the copy's end, `set_len` makes zeros.
            if !sparse::is_zero(&self.bufs.1[..n]) {
                self.bufs.1[..n].fill(0);
                pair.out.write_all_at(&self.bufs.1[..n], off).map_err(archive::Error::io(pair.dst))?;
                self.report.bytes_written += n as u64;
            }
            off += want as u64;
            // Reading the copy is the cost here: it counts against the rate like the source's
            // blocks do.
            self.throttle(n as u64)?;
        }
        Ok(())
    }

    fn throttle(&mut self, n: u64) -> archive::Result<()> {
        let Some((rate, start, done)) = &mut self.rate else { return Ok(()) };
        *done += n;
        #[allow(clippy::cast_precision_loss)]
        let due = Duration::from_secs_f64(*done as f64 / *rate as f64);
        while start.elapsed() < due {
            self.cancel.check()?;
            std::thread::sleep((due - start.elapsed()).min(Duration::from_millis(20)));
        }
        Ok(())
    }
}

/// A source file and its copy in the mirror, as one update sees them.
struct Pair<'f> {
    src: &'f File,
    host: &'f Path,
    out: &'f File,
    dst: &'f Path,
    /// The source's size when it was scanned: what the copy is made to hold.
    size: u64,
    /// The copy was there before: its blocks are compared, not assumed empty.
    existing: bool,
    /// The source's filesystem cannot say where its holes are: a block of zeros is one.
    zeros_are_holes: bool,
}

/// The source changed or vanished under a pass: not an error while the services run.
fn changed_under_us(e: &archive::Error) -> bool {
    match e {
        archive::Error::Changed { .. } => true,
        archive::Error::Io { source, .. } => source.kind() == io::ErrorKind::NotFound,
        _ => false,
    }
}

fn ensure_dir(dst: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(dst) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => remove_any(dst)?,
        Err(_) => {}
    }
    std::fs::DirBuilder::new().mode(0o700).create(dst)
}

fn ensure_symlink(dst: &Path, target: &str) -> io::Result<()> {
    match std::fs::read_link(dst) {
        Ok(t) if t.as_os_str() == target => return Ok(()),
        _ => {
            if std::fs::symlink_metadata(dst).is_ok() {
                remove_any(dst)?;
            }
        }
    }
    std::os::unix::fs::symlink(target, dst)
}

pub(super) fn remove_any(p: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn read_full_at(f: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], off + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn now_ns() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128)
}
