//! The snapshot's index on disk: per source, a section of records (archive path, the source's
//! stamp when the file was copied), in the order a scan lists the source (depth first, names
//! sorted). A pass reads the old records alongside its scan and writes the new ones as it goes,
//! so neither is held in memory whatever the number of files.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use serde::{Deserialize, Serialize};

use super::Record;
use crate::fsutil::{self, RemovedOnDrop};

/// The committed index, in the snapshot's directory.
pub(super) const COMMITTED: &str = "index.jsonl";
/// The index of format 1 (one JSON map): no longer read, removed (its mirror is compared by
/// content once).
pub(super) const LEGACY: &str = "index.json";
/// Name prefix of the index files a pass is reading or writing: never trusted after a crash.
const WORKING: &str = "index.";
const WORKING_SUFFIX: &str = ".work.jsonl";

/// Records of the mirrored files, per source prefix. Empty: nothing is proven current.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Index {
    /// Removed with the last clone, unless committed (renamed into place) first.
    file: Option<Arc<RemovedOnDrop>>,
    /// Per source prefix: byte offset of its first record and how many there are.
    sections: BTreeMap<String, (u64, u64)>,
}

/// One line of the file: a section's start (an object), or a record of it (an array). Not an
/// untagged enum: serde cannot buffer the stamps' 128-bit times.
enum Line {
    Source { source: String },
    Record(String, Record),
}

#[derive(Serialize, Deserialize)]
struct SourceLine {
    source: String,
}

impl Line {
    fn parse(line: &str) -> io::Result<Line> {
        let parsed = if line.starts_with('{') {
            serde_json::from_str::<SourceLine>(line).map(|l| Line::Source { source: l.source })
        } else {
            serde_json::from_str::<(String, Record)>(line).map(|(path, record)| Line::Record(path, record))
        };
        parsed.map_err(io::Error::other)
    }

    fn to_bytes(&self) -> io::Result<Vec<u8>> {
        let bytes = match self {
            Line::Source { source } => serde_json::to_vec(&SourceLine { source: source.clone() }),
            Line::Record(path, record) => serde_json::to_vec(&(path, record)),
        };
        bytes.map_err(io::Error::other)
    }
}

impl Index {
    /// Files the index proves.
    pub fn files(&self) -> u64 {
        self.sections.values().map(|(_, n)| n).sum()
    }

    /// Reads an index file's sections (a pass over its lines, nothing kept but the offsets).
    pub(super) fn load(path: PathBuf) -> io::Result<Index> {
        let mut reader = BufReader::with_capacity(1 << 16, File::open(&path)?);
        let (mut sections, mut current, mut offset) = (BTreeMap::new(), None::<String>, 0u64);
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line)? as u64;
            if n == 0 {
                break;
            }
            offset += n;
            match Line::parse(&line)? {
                Line::Source { source } => {
                    sections.insert(source.clone(), (offset, 0));
                    current = Some(source);
                }
                Line::Record(..) => {
                    let section = current.as_ref().and_then(|s| sections.get_mut(s));
                    let section = section.ok_or_else(|| io::Error::other("a record before any source"))?;
                    section.1 += 1;
                }
            }
        }
        Ok(Index { file: Some(Arc::new(RemovedOnDrop { path })), sections })
    }

    /// The records of source `prefix`, in scan order.
    pub(super) fn cursor(&self, prefix: &str) -> io::Result<Cursor> {
        let (Some(file), Some(&(offset, count))) = (&self.file, self.sections.get(prefix)) else {
            return Ok(Cursor { reader: None, left: 0, next: None, line: String::new() });
        };
        let mut f = File::open(&file.path)?;
        f.seek(SeekFrom::Start(offset))?;
        let mut cursor = Cursor {
            reader: Some(BufReader::with_capacity(1 << 16, f)),
            left: count,
            next: None,
            line: String::new(),
        };
        cursor.advance()?;
        Ok(cursor)
    }

    /// Moves the index file to `to` (the committed name).
    pub(super) fn persist(&self, to: &Path) -> io::Result<()> {
        match &self.file {
            Some(file) => std::fs::rename(&file.path, to),
            None => fsutil::write_atomically(to, b"", 0o600).map_err(io::Error::other),
        }
    }
}

/// Removes the working files a dead pass left (and the legacy index) from snapshot `dir`.
pub(super) fn clear_working(dir: &Path) -> io::Result<()> {
    let _ = std::fs::remove_file(dir.join(LEGACY));
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(WORKING) && name.ends_with(WORKING_SUFFIX) {
            let _ = std::fs::remove_file(dir.join(&*name));
        }
    }
    Ok(())
}

/// A fresh working file name in snapshot `dir`.
pub(super) fn working(dir: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, AtomicOrdering::Relaxed);
    dir.join(format!("{WORKING}{}-{n}{WORKING_SUFFIX}", std::process::id()))
}

/// The order a scan lists paths in: depth first, siblings by name (bytes).
pub(super) fn scan_order(a: &str, b: &str) -> Ordering {
    a.split('/').cmp(b.split('/'))
}

/// Old records of one source, read in step with a scan of it.
pub(super) struct Cursor {
    reader: Option<BufReader<File>>,
    left: u64,
    next: Option<(String, Record)>,
    line: String,
}

impl Cursor {
    /// The record of `path`, if the index has one; `path`s must come in scan order.
    pub(super) fn find(&mut self, path: &str) -> io::Result<Option<Record>> {
        while let Some((p, record)) = &self.next {
            match scan_order(p, path) {
                Ordering::Less => self.advance()?,
                Ordering::Equal => {
                    let record = *record;
                    self.advance()?;
                    return Ok(Some(record));
                }
                Ordering::Greater => return Ok(None),
            }
        }
        Ok(None)
    }

    fn advance(&mut self) -> io::Result<()> {
        self.next = None;
        let Some(reader) = self.reader.as_mut().filter(|_| self.left > 0) else { return Ok(()) };
        self.left -= 1;
        self.line.clear();
        reader.read_line(&mut self.line)?;
        match Line::parse(&self.line)? {
            Line::Record(path, record) => self.next = Some((path, record)),
            Line::Source { .. } => return Err(io::Error::other("the index ends a section early")),
        }
        Ok(())
    }
}

/// The new index a pass writes, one source after another (its file goes if it is dropped
/// unfinished).
pub(crate) struct Writer {
    file: Arc<RemovedOnDrop>,
    out: BufWriter<File>,
    offset: u64,
    sections: BTreeMap<String, (u64, u64)>,
    current: Option<String>,
}

impl Writer {
    pub(super) fn create(path: PathBuf) -> io::Result<Writer> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
        Ok(Writer {
            file: Arc::new(RemovedOnDrop { path }),
            out: BufWriter::with_capacity(1 << 16, file),
            offset: 0,
            sections: BTreeMap::new(),
            current: None,
        })
    }

    pub(super) fn source(&mut self, prefix: &str) -> io::Result<()> {
        self.line(&Line::Source { source: prefix.to_owned() })?;
        self.sections.insert(prefix.to_owned(), (self.offset, 0));
        self.current = Some(prefix.to_owned());
        Ok(())
    }

    pub(super) fn record(&mut self, path: &str, record: Record) -> io::Result<()> {
        self.line(&Line::Record(path.to_owned(), record))?;
        if let Some(section) = self.current.as_ref().and_then(|s| self.sections.get_mut(s)) {
            section.1 += 1;
        }
        Ok(())
    }

    pub(super) fn finish(mut self) -> io::Result<Index> {
        self.out.flush()?;
        Ok(Index { file: Some(self.file), sections: self.sections })
    }

    fn line(&mut self, line: &Line) -> io::Result<()> {
        let mut bytes = line.to_bytes()?;
        bytes.push(b'\n');
        self.out.write_all(&bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }
}
