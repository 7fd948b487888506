//! The mirror of one source, read in step with the source's scan: each directory of the mirror
//! is listed once, when the scan enters it, so what the source no longer holds is removed as
//! the scan passes it, and a file the index proves current costs one `stat` relative to its
//! directory instead of a lookup of its whole path.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use rustix::fs::{AtFlags, FileType};
use rustix::io::Errno;

use super::Snapshot;
use super::pass::remove_any;
use crate::archive::{self, OPEN_LEVELS, SortedDir};

/// What the mirror holds where the scan is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Seen {
    /// An entry of this type (as its directory says: `Unknown` on filesystems that do not).
    Held(FileType),
    /// Nothing.
    Absent,
    /// Not known from a listing (the source's root): ask the path.
    Unknown,
}

pub(super) struct Mirror<'a> {
    snap: &'a Snapshot,
    prefix: &'a str,
    /// The directories on the scan's path, the source's root first: archive path, and the
    /// mirror's listing of it (`None` where the mirror holds no directory there).
    levels: Vec<(String, Option<SortedDir>)>,
    /// The scan listed the source's root.
    rooted: bool,
}

impl<'a> Mirror<'a> {
    pub(super) fn new(snap: &'a Snapshot, prefix: &'a str) -> Self {
        Mirror { snap, prefix, levels: Vec::new(), rooted: false }
    }

    /// Moves to the scan's next entry `path`: what the mirror holds before it in its directory,
    /// and in the directories the scan has left, is removed.
    pub(super) fn visit(&mut self, path: &str) -> archive::Result<Seen> {
        if path == self.prefix {
            self.rooted = true;
            return Ok(Seen::Unknown);
        }
        let Some((parent, name)) = path.rsplit_once('/') else { return Ok(Seen::Unknown) };
        while self.levels.last().is_some_and(|(dir, _)| !is_ancestor(dir, parent)) {
            self.leave()?;
        }
        let Some((dir, listing)) = self.levels.last_mut() else { return Ok(Seen::Unknown) };
        if dir != parent {
            return Ok(Seen::Unknown);
        }
        let Some(listing) = listing else { return Ok(Seen::Absent) };
        while let Some((held, file_type)) = listing.current() {
            match held.cmp(name.as_bytes()) {
                std::cmp::Ordering::Less => {
                    let gone = self.snap.data(dir).join(OsStr::from_bytes(held));
                    remove_any(&gone).map_err(archive::Error::io(&gone))?;
                    listing.advance();
                }
                std::cmp::Ordering::Equal => {
                    listing.advance();
                    return Ok(Seen::Held(file_type));
                }
                std::cmp::Ordering::Greater => break,
            }
        }
        Ok(Seen::Absent)
    }

    /// After the directory entry `path` was visited and brought up to date: its listing, for
    /// the entries under it.
    pub(super) fn enter(&mut self, path: &str) -> archive::Result<()> {
        let dst = self.snap.data(path);
        let keep_open = self.levels.len() < OPEN_LEVELS;
        let (parent, name) = path.rsplit_once('/').unwrap_or_default();
        let listing = match self.levels.last() {
            Some((dir, Some(listing))) if dir == parent => {
                listing.open_child(name.as_bytes(), &dst, keep_open)
            }
            _ => SortedDir::open(rustix::fs::CWD, &dst, keep_open),
        };
        let listing = match listing {
            Ok(listing) => Some(listing),
            // Not a directory in the mirror (the pass could not make it one): nothing under it.
            Err(e)
                if matches!(Errno::from_io_error(&e), Some(Errno::NOENT | Errno::NOTDIR | Errno::LOOP)) =>
            {
                None
            }
            Err(e) => return Err(archive::Error::io(&dst)(e)),
        };
        self.levels.push((path.to_owned(), listing));
        Ok(())
    }

    /// Whether the mirror holds a regular file of `size` bytes at `path`, the entry just
    /// visited, where it saw `seen`.
    pub(super) fn holds_file(&self, path: &str, seen: Seen, size: u64) -> bool {
        let is_file = |st: rustix::fs::Stat| {
            FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
                && u64::try_from(st.st_size).ok() == Some(size)
        };
        let by_path = || rustix::fs::statat(rustix::fs::CWD, self.snap.data(path), AtFlags::SYMLINK_NOFOLLOW);
        match seen {
            Seen::Absent => false,
            Seen::Held(t) if t != FileType::RegularFile && t != FileType::Unknown => false,
            Seen::Held(_) => {
                let name = path.rsplit_once('/').map_or(path, |(_, name)| name);
                let listing = self.levels.last().and_then(|(_, listing)| listing.as_ref());
                match listing.and_then(SortedDir::fd) {
                    Some(fd) => rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW).is_ok_and(is_file),
                    None => by_path().is_ok_and(is_file),
                }
            }
            Seen::Unknown => by_path().is_ok_and(is_file),
        }
    }

    /// The scan is over: what the mirror holds beyond it is removed.
    pub(super) fn finish(mut self) -> archive::Result<()> {
        while !self.levels.is_empty() {
            self.leave()?;
        }
        if !self.rooted {
            // The scan did not list the source at all (not a file, directory or symlink).
            let gone = self.snap.data(self.prefix);
            remove_any(&gone).map_err(archive::Error::io(&gone))?;
        }
        Ok(())
    }

    /// The scan has left the innermost directory: what it did not visit there goes.
    fn leave(&mut self) -> archive::Result<()> {
        let Some((dir, Some(mut listing))) = self.levels.pop() else { return Ok(()) };
        while let Some((held, _)) = listing.current() {
            let gone: PathBuf = self.snap.data(&dir).join(OsStr::from_bytes(held));
            remove_any(&gone).map_err(archive::Error::io(&gone))?;
            listing.advance();
        }
        Ok(())
    }
}

/// `dir` is `path` or a directory above it.
fn is_ancestor(dir: &str, path: &str) -> bool {
    path.strip_prefix(dir).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}
