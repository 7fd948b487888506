//! The snapshot's index on disk: per source, a section of records (archive path, the source's
//! stamp when the file was copied), in the order a scan lists the source (depth first, names
//! sorted). A pass reads the old records alongside its scan and writes the new ones as it goes,
//! so neither is held in memory whatever the number of files.
//!
//! The file is binary (a pass reads and writes a record per file, while the services may be
//! stopped): [`MAGIC`], then lines that are a tag byte and the line's fields, strings after
//! their length as a `u32`, numbers little-endian. A source line (tag 0) is its prefix; a
//! record (tag 1) is the path, the [`Stamp`] as `Stamp::encode` writes it, and the racy flag.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use serde::{Deserialize, Serialize};

use super::Record;
use crate::archive::binfmt::{eof_is_truncated, get, get_bytes, get_str, put_str, read_error, truncated};
use crate::archive::{self, Error, Stamp};
use crate::fsutil::{self, RemovedOnDrop};

/// The committed index, in the snapshot's directory.
pub(super) const COMMITTED: &str = "index.bin";
/// Indexes of earlier formats (one JSON map; JSON lines): never read. One beside `index.bin`
/// means an older version synced the mirror since, so neither is trusted.
pub(super) const LEGACY: [&str; 2] = ["index.json", "index.jsonl"];
/// Name prefix of the index files a pass is reading or writing: never trusted after a crash.
const WORKING: &str = "index.";
/// Working files end in one of these (the second as earlier formats named them).
const WORKING_SUFFIXES: [&str; 2] = [".work", ".work.jsonl"];
/// The first bytes of an index file of this format.
const MAGIC: &[u8; 16] = b"nuwax-index-3\n\0\0";
const SOURCE: u8 = 0;
const RECORD: u8 = 1;
/// A record's bytes after its path: the stamp and the racy flag.
const RECORD_TAIL: usize = 8 * 3 + 16 * 2 + 1;

/// Records of the mirrored files, per source prefix. Empty: nothing is proven current.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Index {
    /// Removed with the last clone, unless committed (renamed into place) first.
    file: Option<Arc<RemovedOnDrop>>,
    /// Per source prefix: byte offset of its first record and how many there are.
    sections: BTreeMap<String, (u64, u64)>,
}

/// What the first bytes of an index file say it is.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Format {
    /// This format.
    Current,
    /// JSON lines (or nothing), as earlier versions wrote: a frozen backup an older version
    /// saved names such a working file.
    Legacy,
    Damaged,
}

impl Format {
    pub(super) fn of(path: &Path) -> io::Result<Format> {
        let mut head = Vec::with_capacity(MAGIC.len());
        File::open(path)?.take(MAGIC.len() as u64).read_to_end(&mut head)?;
        Ok(if head == MAGIC {
            Format::Current
        } else if head.is_empty() || head[0] == b'{' {
            Format::Legacy
        } else {
            Format::Damaged
        })
    }
}

impl Index {
    /// Files the index proves.
    pub fn files(&self) -> u64 {
        self.sections.values().map(|(_, n)| n).sum()
    }

    /// Reads the sections of index file `path`, of this format (a pass over its lines, nothing
    /// kept but the offsets).
    pub(super) fn load(path: PathBuf) -> io::Result<Index> {
        let mut reader = BufReader::with_capacity(1 << 16, File::open(&path)?);
        if get::<{ MAGIC.len() }>(&mut reader).ok().as_ref() != Some(MAGIC) {
            return Err(damaged("not an index of this format"));
        }
        let (mut sections, mut current, mut offset) = (BTreeMap::new(), None::<String>, MAGIC.len() as u64);
        while !reader.fill_buf()?.is_empty() {
            match get::<1>(&mut reader)? {
                [SOURCE] => {
                    let source = get_str(&mut reader).map_err(eof_is_truncated)?;
                    offset += 1 + 4 + source.len() as u64;
                    sections.insert(source.clone(), (offset, 0));
                    current = Some(source);
                }
                [RECORD] => {
                    let len = u32::from_le_bytes(get(&mut reader).map_err(eof_is_truncated)?);
                    let skip = i64::from(len) + RECORD_TAIL as i64;
                    reader.seek_relative(skip)?;
                    offset += 1 + 4 + skip as u64;
                    let section = current.as_ref().and_then(|s| sections.get_mut(s));
                    let section = section.ok_or_else(|| damaged("a record before any source"))?;
                    section.1 += 1;
                }
                _ => return Err(damaged("an unknown line")),
            }
        }
        // A truncated last record: the seek went past the end.
        if reader.get_ref().metadata()?.len() != offset {
            return Err(truncated("it ends inside a record"));
        }
        Ok(Index { file: Some(Arc::new(RemovedOnDrop { path })), sections })
    }

    /// The records of source `prefix`, in scan order. An index of an earlier format (a frozen
    /// backup an older version saved) has none: its mirror is compared by content.
    pub(super) fn cursor(&self, prefix: &str) -> archive::Result<Cursor> {
        let mut cursor = Cursor { reader: None, left: 0, next: None, path: Vec::new(), file: PathBuf::new() };
        let (Some(file), Some(&(offset, count))) = (&self.file, self.sections.get(prefix)) else {
            return Ok(cursor);
        };
        if Format::of(&file.path).map_err(Error::io(&file.path))? != Format::Current {
            return Ok(cursor);
        }
        let mut f = File::open(&file.path).map_err(Error::io(&file.path))?;
        f.seek(SeekFrom::Start(offset)).map_err(Error::io(&file.path))?;
        cursor.reader = Some(BufReader::with_capacity(1 << 16, f));
        cursor.left = count;
        cursor.file.clone_from(&file.path);
        cursor.advance()?;
        Ok(cursor)
    }

    /// Moves the index file to `to` (the committed name). An index of an earlier format (the
    /// working file a frozen backup of an older version names) is not moved: an empty one
    /// goes in its place, so the mirror is compared by content.
    pub(super) fn persist(&self, to: &Path) -> archive::Result<()> {
        if let Some(file) = &self.file {
            match Format::of(&file.path).map_err(Error::io(&file.path))? {
                Format::Current => return std::fs::rename(&file.path, to).map_err(Error::io(to)),
                Format::Legacy | Format::Damaged => {
                    tracing::debug!("{} is no index of this format; not kept", file.path.display());
                }
            }
        }
        fsutil::write_atomically(to, MAGIC, 0o600)
            .map_err(|e| Error::io(to)(io::Error::other(format!("{e:#}"))))
    }
}

fn damaged(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("damaged index: {what}"))
}

/// Removes the working files a dead pass left (and the legacy indexes) from snapshot `dir`.
pub(super) fn clear_working(dir: &Path) -> io::Result<()> {
    for legacy in LEGACY {
        let _ = std::fs::remove_file(dir.join(legacy));
    }
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(WORKING) && WORKING_SUFFIXES.iter().any(|s| name.ends_with(s)) {
            let _ = std::fs::remove_file(dir.join(&*name));
        }
    }
    Ok(())
}

/// A fresh working file name in snapshot `dir`.
pub(super) fn working(dir: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, AtomicOrdering::Relaxed);
    dir.join(format!("{WORKING}{}-{n}{}", std::process::id(), WORKING_SUFFIXES[0]))
}

/// The order a scan lists paths in: depth first, siblings by name (bytes).
fn scan_order(a: &[u8], b: &[u8]) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    a.split(|&c| c == b'/').cmp(b.split(|&c| c == b'/'))
}

/// Old records of one source, read in step with a scan of it.
pub(super) struct Cursor {
    reader: Option<BufReader<File>>,
    left: u64,
    /// The record at hand; its path is in `path`.
    next: Option<Record>,
    path: Vec<u8>,
    /// The index file (for messages).
    file: PathBuf,
}

impl Cursor {
    /// The record of `path`, if the index has one; `path`s must come in scan order.
    pub(super) fn find(&mut self, path: &str) -> archive::Result<Option<Record>> {
        while let Some(record) = self.next {
            match scan_order(&self.path, path.as_bytes()) {
                Ordering::Less => self.advance()?,
                Ordering::Equal => {
                    self.advance()?;
                    return Ok(Some(record));
                }
                Ordering::Greater => return Ok(None),
            }
        }
        Ok(None)
    }

    fn advance(&mut self) -> archive::Result<()> {
        self.next = None;
        let Some(reader) = self.reader.as_mut().filter(|_| self.left > 0) else { return Ok(()) };
        self.left -= 1;
        let mut read = || -> io::Result<Record> {
            if get::<1>(reader)? != [RECORD] {
                return Err(damaged("a section ends early"));
            }
            get_bytes(reader, &mut self.path)?;
            let stamp = Stamp::decode(reader)?;
            let racy = get::<1>(reader)? != [0];
            Ok(Record { stamp, racy })
        };
        self.next = Some(read().map_err(read_error(&self.file))?);
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
    /// One line's bytes, reused.
    buf: Vec<u8>,
}

impl Writer {
    pub(super) fn create(path: PathBuf) -> archive::Result<Writer> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path);
        let mut out = BufWriter::with_capacity(1 << 16, file.map_err(Error::io(&path))?);
        out.write_all(MAGIC).map_err(Error::io(&path))?;
        Ok(Writer {
            file: Arc::new(RemovedOnDrop { path }),
            out,
            offset: MAGIC.len() as u64,
            sections: BTreeMap::new(),
            current: None,
            buf: Vec::new(),
        })
    }

    pub(super) fn source(&mut self, prefix: &str) -> archive::Result<()> {
        self.buf.clear();
        self.buf.push(SOURCE);
        put_str(&mut self.buf, prefix).map_err(Error::io(&self.file.path))?;
        self.line()?;
        self.sections.insert(prefix.to_owned(), (self.offset, 0));
        self.current = Some(prefix.to_owned());
        Ok(())
    }

    pub(super) fn record(&mut self, path: &str, record: Record) -> archive::Result<()> {
        self.buf.clear();
        self.buf.push(RECORD);
        put_str(&mut self.buf, path).map_err(Error::io(&self.file.path))?;
        record.stamp.encode(&mut self.buf);
        self.buf.push(u8::from(record.racy));
        self.line()?;
        if let Some(section) = self.current.as_ref().and_then(|s| self.sections.get_mut(s)) {
            section.1 += 1;
        }
        Ok(())
    }

    pub(super) fn finish(mut self) -> archive::Result<Index> {
        self.out.flush().map_err(Error::io(&self.file.path))?;
        Ok(Index { file: Some(self.file), sections: self.sections })
    }

    fn line(&mut self) -> archive::Result<()> {
        self.out.write_all(&self.buf).map_err(Error::io(&self.file.path))?;
        self.offset += self.buf.len() as u64;
        Ok(())
    }
}
