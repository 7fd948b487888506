//! Reads the entries of a host scan back for writing, refusing anything that changed since the
//! scan: every entry is opened relative to its already-opened parent directory without
//! following symlinks, so a directory swapped for a symlink cannot lead the reads out of the
//! tree (a container can change its volume while the backup runs).

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use super::manifest::EntryMeta;
use super::{Error, Result, check_archive_path};

/// The entries of one prefix. Entries come parent-first, so a stack of open directories
/// serves them in order; entries in any other order still work, with more `openat` calls.
pub(crate) struct HostTree<'a> {
    prefix: &'a str,
    root: &'a Path,
    /// (path relative to root, `O_PATH` descriptor), the root ("") at the bottom.
    stack: Vec<(String, OwnedFd)>,
}

impl<'a> HostTree<'a> {
    pub(crate) fn new(prefix: &'a str, root: &'a Path) -> Self {
        Self { prefix, root, stack: Vec::new() }
    }

    /// Host path of an archive path under the prefix (for messages; reads go through descriptors).
    pub(crate) fn host_path(&self, path: &str) -> Result<PathBuf> {
        let rel = self.relative(path)?;
        Ok(if rel.is_empty() { self.root.to_path_buf() } else { self.root.join(rel) })
    }

    /// Checks that the entry is still a directory and opens it for its children.
    pub(crate) fn enter_dir(&mut self, path: &str, host: &Path) -> Result<()> {
        let rel = self.relative(path)?;
        if rel.is_empty() {
            self.stack.clear();
            let fd = open_dir(rustix::fs::CWD, self.root, host)?;
            self.stack.push((String::new(), fd));
            return Ok(());
        }
        let (dir, name) = self.parent(rel)?;
        let fd = open_dir(dir, name, host)?;
        self.stack.push((rel.to_owned(), fd));
        Ok(())
    }

    /// Checks that the entry is still a symlink with the scanned target.
    pub(crate) fn check_symlink(&mut self, entry: &EntryMeta, host: &Path) -> Result<()> {
        let rel = self.relative(&entry.path)?;
        let (dir, name) = self.parent(rel)?;
        let target = rustix::fs::readlinkat(dir, name, Vec::new())
            .map_err(|e| changed_or_io(host, e, "is no longer a symlink"))?;
        if Some(target.as_bytes()) != entry.link_target.as_deref().map(str::as_bytes) {
            return Err(Error::changed(host, "symlink target changed"));
        }
        Ok(())
    }

    /// Opens the entry's file after checking it is still a regular file of the scanned size.
    pub(crate) fn open_file(&mut self, entry: &EntryMeta, host: &Path) -> Result<File> {
        let rel = self.relative(&entry.path)?;
        let (dir, name) = self.parent(rel)?;
        // NONBLOCK: opening a FIFO that replaced the file must not hang the backup.
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(dir, name, flags, Mode::empty())
            .map_err(|e| changed_or_io(host, e, "is no longer a regular file"))?;
        let stat = rustix::fs::fstat(&fd).map_err(|e| Error::io(host)(e.into()))?;
        if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(Error::changed(host, "is no longer a regular file"));
        }
        if u64::try_from(stat.st_size).ok() != Some(entry.size) {
            let detail = format!("size changed from {} to {} bytes", entry.size, stat.st_size);
            return Err(Error::changed(host, detail));
        }
        Ok(File::from(fd))
    }

    fn relative<'e>(&self, path: &'e str) -> Result<&'e str> {
        if path == self.prefix {
            return Ok("");
        }
        match path.strip_prefix(self.prefix).and_then(|rest| rest.strip_prefix('/')) {
            Some(rel) => check_archive_path(rel).map(|()| rel),
            None => Err(Error::Usage(format!("entry {path} is not under prefix {}", self.prefix))),
        }
    }

    /// The open parent directory of `rel` and its last component; for the root itself
    /// (`rel == ""`: a single file or symlink), the current directory and the root path.
    fn parent<'r>(&mut self, rel: &'r str) -> Result<(BorrowedFd<'_>, &'r Path)>
    where
        'a: 'r,
    {
        if rel.is_empty() {
            return Ok((rustix::fs::CWD, self.root));
        }
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let is_ancestor = |dir: &str| {
            dir.is_empty() || parent == dir || parent.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
        };
        while self.stack.last().is_some_and(|(dir, _)| !is_ancestor(dir)) {
            self.stack.pop();
        }
        if self.stack.is_empty() {
            let fd = open_dir(rustix::fs::CWD, self.root, self.root)?;
            self.stack.push((String::new(), fd));
        }
        // Open the directories between the deepest open ancestor and `parent`, if any.
        let open_len = self.stack.last().map_or(0, |(dir, _)| dir.len());
        if parent.len() > open_len {
            let start = if open_len == 0 { 0 } else { open_len + 1 };
            for component in parent[start..].split('/') {
                let (top, top_fd) = self.stack.last().expect("the root is on the stack");
                let path = if top.is_empty() { component.to_owned() } else { format!("{top}/{component}") };
                let fd = open_dir(top_fd.as_fd(), component, &self.root.join(&path))?;
                self.stack.push((path, fd));
            }
        }
        let (_, fd) = self.stack.last().expect("the root is on the stack");
        Ok((fd.as_fd(), Path::new(name)))
    }
}

fn open_dir(dir: BorrowedFd<'_>, name: impl rustix::path::Arg, host: &Path) -> Result<OwnedFd> {
    // O_PATH: entering a directory needs only search permission, as the scan did.
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(dir, name, flags, Mode::empty())
        .map_err(|e| changed_or_io(host, e, "is no longer a directory"))
}

/// Errors that mean "the tree changed since the scan" become [`Error::Changed`]; the rest
/// (permissions, I/O) stay I/O errors.
fn changed_or_io(host: &Path, err: Errno, kind_detail: &str) -> Error {
    match err {
        Errno::NOENT => Error::changed(host, "vanished after the scan"),
        Errno::NOTDIR | Errno::LOOP | Errno::INVAL | Errno::ISDIR => Error::changed(host, kind_detail),
        other => Error::io(host)(other.into()),
    }
}
