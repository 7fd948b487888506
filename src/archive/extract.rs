//! Safe extraction: writes the entries under chosen archive prefixes into fresh destinations in
//! the same single pass that verifies the archive, and refuses anything that could write
//! outside them. On any error, every destination it created is removed again.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, Gid, Mode, OFlags, Timespec, Timestamps, UTIME_OMIT, Uid};
use rustix::io::Errno;

use super::manifest::{EntryKind, EntryMeta};
use super::reader::{Visitor, walk};
use super::{Cancel, Error, NoProgress, Progress, Result, archive_path_problem, check_archive_path};

/// Where the entries under one archive prefix go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Archive path, e.g. `volumes/demo_dbdata` or `config/compose.yaml`.
    pub prefix: String,
    /// Must not exist yet. [`extract`] creates it as a directory, or as a file or symlink when
    /// the prefix entry itself is one; its parent must exist.
    pub dest: PathBuf,
}

/// What [`extract`] wrote, or [`check_extractable`] would write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtractReport {
    /// Entries under the targets (their prefix entries included).
    pub entries: u64,
    /// Content bytes of the files among them.
    pub bytes: u64,
}

/// One pass over `archive` that verifies it as [`verify`](super::verify) does and writes the
/// entries under each target's prefix below its `dest` (the prefix entry becomes `dest`);
/// other entries are read past. Ownership (numeric, skipped when not root and not permitted,
/// in which case setuid/setgid are dropped, as GNU tar does), modes, mtimes, symlinks and
/// empty directories come out as archived; directory modes and mtimes are set last.
///
/// Nothing is written outside the dests: names are checked, every directory is opened relative
/// to its parent without following symlinks, files are created with `O_EXCL | O_NOFOLLOW`. On
/// any error, everything created under the dests is removed before returning. Content is not
/// fsynced: sync the filesystem before relying on it.
pub fn extract(
    archive: &Path,
    targets: &[Target],
    cancel: &Cancel,
    progress: &dyn Progress,
) -> Result<ExtractReport> {
    check_targets(targets)?;
    check_dests(targets)?;
    let mut extractor = Extractor::new(targets, true);
    let result = walk(archive, cancel, progress, &mut extractor).and_then(|_| extractor.finish_dirs());
    match result {
        Ok(()) => Ok(extractor.report),
        Err(err) => {
            extractor.remove_created();
            Err(err)
        }
    }
}

/// The checks of [`extract`] without writing anything, returning the same report. The dests
/// are not looked at (a dry run has no staging directories yet), only the archive.
pub fn check_extractable(archive: &Path, targets: &[Target], cancel: &Cancel) -> Result<ExtractReport> {
    check_targets(targets)?;
    let mut extractor = Extractor::new(targets, false);
    walk(archive, cancel, &NoProgress, &mut extractor)?;
    Ok(extractor.report)
}

/// [`verify`](super::verify) and [`check_extractable`] in one pass: the whole file against
/// `expected_sha256`, every entry against manifest and trailer, and the extraction rules for
/// the entries under `targets`.
pub fn verify_extractable(
    archive: &Path,
    expected_sha256: Option<&str>,
    targets: &[Target],
    cancel: &Cancel,
) -> Result<super::VerifyReport> {
    check_targets(targets)?;
    let mut extractor = Extractor::new(targets, false);
    let walked = walk(archive, cancel, &NoProgress, &mut extractor)?;
    super::reader::report(walked, expected_sha256)
}

/// Prefixes must be valid archive paths, none inside another (an entry would have two homes).
fn check_targets(targets: &[Target]) -> Result<()> {
    for (i, a) in targets.iter().enumerate() {
        check_archive_path(&a.prefix)?;
        if let Some(b) = targets[..i]
            .iter()
            .find(|b| locate_in(&a.prefix, &b.prefix).is_some() || locate_in(&b.prefix, &a.prefix).is_some())
        {
            return Err(Error::Usage(format!("target prefixes {} and {} overlap", b.prefix, a.prefix)));
        }
    }
    Ok(())
}

/// Dests must not exist, and none may lie inside another: path-based creation of the inner one
/// could otherwise pass through a symlink the outer one's archive content put there.
fn check_dests(targets: &[Target]) -> Result<()> {
    let mut seen: Vec<PathBuf> = Vec::new();
    for target in targets {
        let dest = &target.dest;
        match fs::symlink_metadata(dest) {
            Ok(_) => return Err(Error::Usage(format!("destination {} already exists", dest.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(dest)(e)),
        }
        let abs = std::path::absolute(dest).map_err(Error::io(dest))?;
        if let Some(other) = seen.iter().find(|o| o.starts_with(&abs) || abs.starts_with(o)) {
            let detail = format!("destinations {} and {} overlap", other.display(), abs.display());
            return Err(Error::Usage(detail));
        }
        seen.push(abs);
    }
    Ok(())
}

/// The path of `path` relative to `prefix` ("" for the prefix itself), if it is under it.
pub(super) fn locate_in<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    if path == prefix {
        return Some("");
    }
    path.strip_prefix(prefix)?.strip_prefix('/')
}

/// Whether a symlink at `rel` (relative to its dest root) points outside that root.
///
/// Absolute targets are allowed: volumes hold container paths (`/var/lib/db/current`) that mean
/// something only inside the container, and extraction never follows a symlink, so no target
/// can redirect a write. Relative ones are resolved lexically from the link's directory and may
/// not climb above the root at any point; a relative link that *is* the dest lives outside its
/// own root, so it always escapes. Other symlinks on the way are not resolved: like absolute
/// ones, what they reach is the business of whoever follows them later, never of extraction.
fn link_escapes(rel: &str, target: &str) -> bool {
    if target.starts_with('/') {
        return false;
    }
    if rel.is_empty() {
        return true;
    }
    let mut depth = rel.matches('/').count();
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." => match depth.checked_sub(1) {
                Some(up) => depth = up,
                None => return true,
            },
            _ => depth += 1,
        }
    }
    false
}

struct Extractor<'a> {
    targets: &'a [Target],
    write: bool,
    root: bool,
    trees: Vec<Tree>,
    /// The checks of the declarations, then (afresh) of the entries as archived.
    declared: Shape,
    archived: Shape,
    /// The file being written and its host path (for messages).
    file: Option<(File, PathBuf)>,
    /// Whether the current entry is under a target.
    extracting: bool,
    report: ExtractReport,
}

impl<'a> Extractor<'a> {
    fn new(targets: &'a [Target], write: bool) -> Self {
        let trees = targets.iter().map(|t| Tree {
            dest: t.dest.clone(),
            created: false,
            stack: Vec::new(),
            unfinished: Vec::new(),
        });
        Self {
            targets,
            write,
            root: rustix::process::geteuid().is_root(),
            trees: trees.collect(),
            declared: Shape::new(targets.len()),
            archived: Shape::new(targets.len()),
            file: None,
            extracting: false,
            report: ExtractReport::default(),
        }
    }

    fn locate<'p>(&self, path: &'p str) -> Option<(usize, &'p str)> {
        self.targets.iter().enumerate().find_map(|(i, t)| locate_in(path, &t.prefix).map(|rel| (i, rel)))
    }

    /// The owners, modes and mtimes of the directories still unfinished, children before
    /// parents (each other directory was finished when the walk left it).
    fn finish_dirs(&mut self) -> Result<()> {
        if !self.write {
            return Ok(());
        }
        for t in 0..self.trees.len() {
            self.leave_dirs(t, None)?;
            self.trees[t].stack.clear();
        }
        Ok(())
    }

    /// Finishes the directories of tree `t` that entry `rel` is not in (all of them for
    /// `None`): the walk is depth first, so nothing more goes into them. Creating entries
    /// changes a directory's mtime, and a read-only mode would stop its content from being
    /// written, so both are set only now.
    fn leave_dirs(&mut self, t: usize, rel: Option<&str>) -> Result<()> {
        let root = self.root;
        let tree = &mut self.trees[t];
        while let Some((dir, _)) = tree.unfinished.last() {
            if rel.is_some_and(|rel| is_within(rel, dir)) {
                break;
            }
            let Some((dir, decl)) = tree.unfinished.pop() else { break };
            let host = tree.host(&dir);
            let (parent, name) = tree.at(&dir, &decl)?;
            let fd = rustix::fs::openat(parent, name, dir_flags(), Mode::empty()).map_err(io_err(&host))?;
            let owned = owned(rustix::fs::fchown(&fd, uid(&decl), gid(&decl)), root, &host)?;
            rustix::fs::fchmod(&fd, mode(&decl, owned)).map_err(io_err(&host))?;
            rustix::fs::futimens(&fd, &times(&decl)).map_err(io_err(&host))?;
        }
        Ok(())
    }

    /// Removes every dest this extraction created (and so all it wrote), best effort.
    fn remove_created(&mut self) {
        self.file = None;
        for tree in self.trees.iter_mut().filter(|t| t.created) {
            tree.stack.clear();
            if let Err(err) = remove_all(&tree.dest) {
                tracing::warn!("could not remove the partial extraction {}: {err}", tree.dest.display());
            }
        }
    }
}

impl Visitor for Extractor<'_> {
    /// Everything that can be refused from the declarations alone is refused here, before
    /// anything is written; the walk then holds every entry to the same rules.
    fn declare(&mut self, decl: &EntryMeta) -> Result<()> {
        self.declared.check(self.targets, decl)
    }

    fn declared_all(&mut self) -> Result<()> {
        if let Some(t) = self.declared.found.iter().position(|f| !f) {
            return Err(Error::Usage(format!("{} is not in the archive", self.targets[t].prefix)));
        }
        Ok(())
    }

    fn screen(&mut self, name: &str, entry_type: tar::EntryType, link: Option<&[u8]>) -> Result<()> {
        if let Some(problem) = archive_path_problem(name) {
            return Err(Error::refused(name, format!("the name {problem}")));
        }
        let reason = match entry_type {
            t if t.is_file() || t.is_contiguous() || t.is_dir() || t.is_symlink() => return Ok(()),
            t if t.is_hard_link() => {
                format!("hard link to {}", String::from_utf8_lossy(link.unwrap_or_default()))
            }
            t if t.is_character_special() => "character device".to_owned(),
            t if t.is_block_special() => "block device".to_owned(),
            t if t.is_fifo() => "FIFO".to_owned(),
            t => format!("unsupported tar entry type {:?}", char::from(t.as_byte())),
        };
        Err(Error::refused(name, reason))
    }

    fn start(&mut self, decl: &EntryMeta) -> Result<()> {
        self.archived.check(self.targets, decl)?;
        let located = self.locate(&decl.path);
        self.extracting = located.is_some();
        let Some((t, rel)) = located.filter(|_| self.write) else {
            self.report.entries += u64::from(self.extracting);
            return Ok(());
        };
        self.report.entries += 1;
        if !rel.is_empty() {
            self.leave_dirs(t, Some(rel))?;
        }
        let tree = &mut self.trees[t];
        let host = tree.host(rel);
        match decl.kind {
            EntryKind::Dir => {
                tree.mkdir(rel, decl, &host)?;
                tree.unfinished.push((rel.to_owned(), decl.clone()));
            }
            EntryKind::File => {
                let (dir, name) = tree.at(rel, decl)?;
                let flags =
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let fd = rustix::fs::openat(dir, name, flags, Mode::from(0o600)).map_err(io_err(&host))?;
                tree.created = true;
                self.file = Some((File::from(fd), host));
            }
            EntryKind::Symlink => {
                let target = decl.link_target.as_deref().unwrap_or_default();
                let (dir, name) = tree.at(rel, decl)?;
                rustix::fs::symlinkat(target, dir, name).map_err(io_err(&host))?;
                tree.created = true;
                let (dir, name) = tree.at(rel, decl)?;
                let nofollow = AtFlags::SYMLINK_NOFOLLOW;
                let result = rustix::fs::chownat(dir, name, uid(decl), gid(decl), nofollow);
                owned(result, self.root, &host)?;
                rustix::fs::utimensat(dir, name, &times(decl), nofollow).map_err(io_err(&host))?;
            }
        }
        Ok(())
    }

    fn content(&mut self, chunk: &[u8]) -> Result<()> {
        if self.extracting {
            self.report.bytes += chunk.len() as u64;
        }
        if let Some((file, host)) = &mut self.file {
            file.write_all(chunk).map_err(Error::io(&*host))?;
        }
        Ok(())
    }

    /// Owner before mode (chown clears setuid/setgid), mtime last.
    fn end(&mut self, decl: &EntryMeta) -> Result<()> {
        if let Some((file, host)) = self.file.take() {
            let owned = owned(rustix::fs::fchown(&file, uid(decl), gid(decl)), self.root, &host)?;
            rustix::fs::fchmod(&file, mode(decl, owned)).map_err(io_err(&host))?;
            rustix::fs::futimens(&file, &times(decl)).map_err(io_err(&host))?;
        }
        Ok(())
    }
}

/// `path` is below `dir` (both relative to a dest; "" is the dest itself).
fn is_within(path: &str, dir: &str) -> bool {
    dir.is_empty() || path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'))
}

/// The rules every declared entry under a target must follow, checked one entry at a time in
/// flat memory: a safe name, owners in range, symlinks that stay inside their destination, and
/// a depth-first order, each entry's parent being a directory on the path down to the last
/// one (so a directory, once left, gets nothing more). What this leaves unchecked (a name
/// declared twice inside a target) fails extraction, which never replaces an existing entry.
struct Shape {
    /// Per target: its prefix entry was seen.
    found: Vec<bool>,
    /// Per target: the directories from its root down to the last one entered.
    path: Vec<Vec<String>>,
}

impl Shape {
    fn new(targets: usize) -> Self {
        Self { found: vec![false; targets], path: vec![Vec::new(); targets] }
    }

    fn check(&mut self, targets: &[Target], decl: &EntryMeta) -> Result<()> {
        let path = decl.path.as_str();
        if let Some(problem) = archive_path_problem(path) {
            return Err(Error::refused(path, format!("the name {problem}")));
        }
        let located =
            targets.iter().enumerate().find_map(|(i, t)| locate_in(path, &t.prefix).map(|r| (i, r)));
        let Some((t, rel)) = located else { return Ok(()) };
        if u32::try_from(decl.uid).is_err() || u32::try_from(decl.gid).is_err() {
            return Err(Error::refused(path, "uid or gid out of range"));
        }
        match (decl.kind, decl.link_target.as_deref()) {
            (EntryKind::Symlink, None | Some("")) => return Err(Error::refused(path, "empty symlink")),
            (EntryKind::Symlink, Some(target)) if target.contains('\0') => {
                return Err(Error::refused(path, "symlink target contains a NUL byte"));
            }
            (EntryKind::Symlink, Some(target)) if link_escapes(rel, target) => {
                let reason = format!("symlink to {target} points outside its destination");
                return Err(Error::refused(path, reason));
            }
            _ => {}
        }
        let dirs = &mut self.path[t];
        if rel.is_empty() {
            if std::mem::replace(&mut self.found[t], true) {
                return Err(Error::refused(path, "declared twice"));
            }
            dirs.clear();
        } else {
            let parent = rel.rsplit_once('/').map_or("", |(parent, _)| parent);
            while dirs.last().is_some_and(|dir| dir != parent && !is_within(parent, dir)) {
                dirs.pop();
            }
            if !self.found[t] || dirs.last().map(String::as_str) != Some(parent) {
                return Err(Error::refused(path, "its parent is not a directory extracted before it"));
            }
        }
        if decl.kind == EntryKind::Dir {
            dirs.push(rel.to_owned());
        }
        Ok(())
    }
}

/// One target's destination: the directories opened so far, each relative to its parent.
struct Tree {
    dest: PathBuf,
    /// Whether `dest` was created by this extraction (and so is ours to remove).
    created: bool,
    /// (path relative to dest, descriptor): dest ("") at the bottom, then the directories down
    /// to the one last used.
    stack: Vec<(String, OwnedFd)>,
    /// Directories created whose owner, mode and mtime are not set yet: the path down to the
    /// last one created.
    unfinished: Vec<(String, EntryMeta)>,
}

impl Tree {
    fn host(&self, rel: &str) -> PathBuf {
        if rel.is_empty() { self.dest.clone() } else { self.dest.join(rel) }
    }

    fn mkdir(&mut self, rel: &str, decl: &EntryMeta, host: &Path) -> Result<()> {
        let (dir, name) = self.at(rel, decl)?;
        // Owner-only until [`Extractor::finish_dirs`] gives it its archived mode.
        rustix::fs::mkdirat(dir, name, Mode::RWXU).map_err(io_err(host))?;
        self.created = true;
        if rel.is_empty() {
            let fd = rustix::fs::openat(CWD, host, dir_flags(), Mode::empty()).map_err(io_err(host))?;
            self.stack.push((String::new(), fd));
        }
        Ok(())
    }

    /// The open parent directory of `rel` and its last component; for the dest itself
    /// (`rel == ""`), the current directory and the dest path. Each directory is opened
    /// relative to its parent with `O_NOFOLLOW`, so no symlink is ever followed on the way.
    fn at<'s, 'r: 's>(&'s mut self, rel: &'r str, decl: &EntryMeta) -> Result<(BorrowedFd<'s>, &'s Path)> {
        if rel.is_empty() {
            return Ok((CWD, &self.dest));
        }
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let is_ancestor = |dir: &str| {
            dir.is_empty() || parent == dir || parent.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
        };
        while self.stack.last().is_some_and(|(dir, _)| !is_ancestor(dir)) {
            self.stack.pop();
        }
        let not_dir =
            || Error::refused(&decl.path, "its parent is not a directory created by this extraction");
        let open_len = self.stack.last().ok_or_else(not_dir)?.0.len();
        if parent.len() > open_len {
            let start = if open_len == 0 { 0 } else { open_len + 1 };
            for component in parent[start..].split('/') {
                let (top, top_fd) = self.stack.last().ok_or_else(not_dir)?;
                let path = if top.is_empty() { component.to_owned() } else { format!("{top}/{component}") };
                let fd = match rustix::fs::openat(top_fd, component, dir_flags(), Mode::empty()) {
                    Ok(fd) => fd,
                    Err(Errno::LOOP | Errno::NOTDIR | Errno::NOENT) => return Err(not_dir()),
                    Err(e) => return Err(Error::io(self.dest.join(&path))(e.into())),
                };
                self.stack.push((path, fd));
            }
        }
        let (_, fd) = self.stack.last().ok_or_else(not_dir)?;
        Ok((fd.as_fd(), Path::new(name)))
    }
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn uid(decl: &EntryMeta) -> Option<Uid> {
    u32::try_from(decl.uid).ok().map(Uid::from_raw)
}

fn gid(decl: &EntryMeta) -> Option<Gid> {
    u32::try_from(decl.gid).ok().map(Gid::from_raw)
}

/// Whether the owner was set. Not being allowed to is fine unless root: then it is an error.
fn owned(result: rustix::io::Result<()>, root: bool, host: &Path) -> Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(Errno::PERM) if !root => Ok(false),
        Err(e) => Err(Error::io(host)(e.into())),
    }
}

/// The archived mode; setuid/setgid only with the archived owner, as GNU tar does.
fn mode(decl: &EntryMeta, owned: bool) -> Mode {
    let bits = if owned { decl.mode } else { decl.mode & !0o6000 };
    Mode::from_raw_mode(bits & 0o7777)
}

/// The archived mtime; the access time stays the extraction's.
fn times(decl: &EntryMeta) -> Timestamps {
    Timestamps {
        last_access: Timespec { tv_sec: 0, tv_nsec: UTIME_OMIT },
        last_modification: Timespec { tv_sec: decl.mtime, tv_nsec: 0 },
    }
}

fn io_err(host: &Path) -> impl FnOnce(Errno) -> Error + '_ {
    move |e| Error::io(host)(e.into())
}

/// Removes `path` and everything below it without following symlinks. Directories whose
/// archived mode shuts their owner out are opened up first (only matters when not root).
fn remove_all(path: &Path) -> io::Result<()> {
    if !fs::symlink_metadata(path)?.is_dir() {
        return fs::remove_file(path);
    }
    if fs::remove_dir_all(path).is_ok() {
        return Ok(());
    }
    open_up(path);
    fs::remove_dir_all(path)
}

fn open_up(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            open_up(&entry.path());
        }
    }
}
