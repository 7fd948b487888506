//! A scan's entries in archive order: held in memory while they are few, spilled to a file past
//! [`SPILL_AFTER`], so a scan of millions of files costs a file on disk, not memory. Read back
//! as many times as needed, one entry at a time ([`Entries`]).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::manifest::EntryMeta;
use super::scan::Stamp;
use super::{Error, Result, binfmt};
use crate::fsutil::RemovedOnDrop;

/// Entries kept in memory before a listing moves to a file.
pub const SPILL_AFTER: usize = 4096;
/// Name prefix of spill files: a leftover of a dead process, swept with the others.
pub const SPILL_PREFIX: &str = ".nuwax-spill-";

/// One listed entry and, for a stamped scan, its source's [`Stamp`].
pub type Item = (EntryMeta, Option<Stamp>);

/// Declared entries that can be read from the start as often as needed, without holding them.
pub trait Entries: Send + Sync {
    fn entries(&self) -> Result<Box<dyn Iterator<Item = Result<EntryMeta>> + Send>>;
}

impl Entries for Vec<EntryMeta> {
    fn entries(&self) -> Result<Box<dyn Iterator<Item = Result<EntryMeta>> + Send>> {
        Ok(Box::new(self.clone().into_iter().map(Ok)))
    }
}

impl Entries for Listing {
    fn entries(&self) -> Result<Box<dyn Iterator<Item = Result<EntryMeta>> + Send>> {
        Ok(Box::new(self.iter()?.map(|item| item.map(|(entry, _)| entry))))
    }
}

/// Several listings, one after the other (the sources of one archive).
impl Entries for Vec<Listing> {
    fn entries(&self) -> Result<Box<dyn Iterator<Item = Result<EntryMeta>> + Send>> {
        let lists = self.to_vec();
        let mut iters = Vec::with_capacity(lists.len());
        for list in &lists {
            iters.push(list.entries()?);
        }
        Ok(Box::new(iters.into_iter().flatten()))
    }
}

/// A finished listing; clones share it. A spilled one's file is removed with the last clone
/// (unless the process dies first: then it is a leftover, and a frozen backup's saved state
/// may point at it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Listing {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    items: Arc<Vec<Item>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file: Option<Arc<RemovedOnDrop>>,
    len: u64,
}

impl Listing {
    /// A listing of `entries`, without stamps, in memory.
    pub fn from_entries(entries: Vec<EntryMeta>) -> Listing {
        let len = entries.len() as u64;
        Listing { items: Arc::new(entries.into_iter().map(|e| (e, None)).collect()), file: None, len }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the entries are in a file.
    pub fn is_spilled(&self) -> bool {
        self.file.is_some()
    }

    /// Reads the items from the start. A spill file must hold exactly [`Listing::len`] items:
    /// one cut short, even between two items, is an error, never a shorter listing.
    pub fn iter(&self) -> Result<ListingIter> {
        let Some(file) = &self.file else {
            return Ok(ListingIter(Source::Memory(Arc::clone(&self.items), 0)));
        };
        let path = file.path.clone();
        let mut reader =
            File::open(&path).map(|f| BufReader::with_capacity(1 << 16, f)).map_err(Error::io(&path))?;
        let mut magic = [0; SPILL_MAGIC.len()];
        let binary = match reader.read_exact(&mut magic) {
            Ok(()) => magic == *SPILL_MAGIC,
            // Shorter than the magic: an empty listing of an older version, or damage.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && self.len == 0 => false,
            Err(e) => return Err(binfmt::read_error(&path)(e)),
        };
        let (left, kind) = (self.len, if binary { Format::Binary } else { Format::Json(String::new()) });
        if !binary {
            reader.rewind().map_err(Error::io(&path))?;
        }
        Ok(ListingIter(Source::File { path, reader, left, kind }))
    }

    /// Every entry in memory: for tests and small listings.
    pub fn to_vec(&self) -> Result<Vec<EntryMeta>> {
        self.iter()?.map(|item| item.map(|(entry, _)| entry)).collect()
    }
}

/// Items of a [`Listing`], in order.
pub struct ListingIter(Source);

enum Source {
    Memory(Arc<Vec<Item>>, usize),
    /// A spill file, and how many of its items are still to come.
    File {
        path: PathBuf,
        reader: BufReader<File>,
        left: u64,
        kind: Format,
    },
    /// Read to the end, or failed.
    Done,
}

enum Format {
    Binary,
    /// A spill file of an older version: JSON lines (the line's buffer).
    Json(String),
}

impl Iterator for ListingIter {
    type Item = Result<Item>;

    fn next(&mut self) -> Option<Result<Item>> {
        let next = match &mut self.0 {
            Source::Memory(items, at) => {
                let item = items.get(*at).cloned();
                *at += 1;
                return item.map(Ok);
            }
            Source::Done => return None,
            Source::File { path, reader, left, kind } => {
                let next = next_in_file(reader, *left, kind).map_err(binfmt::read_error(path));
                *left = left.saturating_sub(1);
                next.transpose()?
            }
        };
        if next.is_err() {
            self.0 = Source::Done;
        }
        Some(next)
    }
}

/// The next item of a spill file that should hold `left` more.
fn next_in_file(reader: &mut BufReader<File>, left: u64, kind: &mut Format) -> std::io::Result<Option<Item>> {
    let at_end = reader.fill_buf()?.is_empty();
    match (left, at_end) {
        (0, true) => return Ok(None),
        (0, false) => return Err(binfmt::damaged("more items than the listing holds")),
        (_, true) => return Err(binfmt::truncated(&format!("{left} items missing at the end"))),
        _ => {}
    }
    match kind {
        Format::Binary => binfmt::decode(reader).map(Some),
        Format::Json(line) => {
            line.clear();
            reader.read_line(line)?;
            let item = serde_json::from_str(line);
            item.map(Some).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        }
    }
}

/// Builds a [`Listing`], moving it to a file in `dir` (the system's temp dir when `None`) once
/// it holds more than [`SPILL_AFTER`] entries.
pub struct ListingBuilder {
    dir: Option<PathBuf>,
    items: Vec<Item>,
    file: Option<(Arc<RemovedOnDrop>, BufWriter<File>)>,
    /// One item's bytes, reused.
    buf: Vec<u8>,
    len: u64,
}

impl ListingBuilder {
    pub fn new(dir: Option<&Path>) -> Self {
        Self { dir: dir.map(Path::to_path_buf), items: Vec::new(), file: None, buf: Vec::new(), len: 0 }
    }

    pub fn push(&mut self, entry: EntryMeta, stamp: Option<Stamp>) -> Result<()> {
        self.len += 1;
        if self.file.is_none() {
            self.items.push((entry, stamp));
            if self.items.len() > SPILL_AFTER {
                self.spill()?;
            }
            return Ok(());
        }
        self.write(&(entry, stamp))
    }

    pub fn finish(self) -> Result<Listing> {
        let Some((spill, mut out)) = self.file else {
            return Ok(Listing { items: Arc::new(self.items), file: None, len: self.len });
        };
        out.flush().map_err(Error::io(&spill.path))?;
        Ok(Listing { items: Arc::default(), file: Some(spill), len: self.len })
    }

    fn spill(&mut self) -> Result<()> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = self.dir.clone().unwrap_or_else(std::env::temp_dir);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{SPILL_PREFIX}{}-{n}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(Error::io(&path))?;
        let mut out = BufWriter::with_capacity(1 << 16, file);
        out.write_all(SPILL_MAGIC).map_err(Error::io(&path))?;
        self.file = Some((Arc::new(RemovedOnDrop { path }), out));
        for item in std::mem::take(&mut self.items) {
            self.write(&item)?;
        }
        Ok(())
    }

    fn write(&mut self, item: &Item) -> Result<()> {
        let Some((spill, out)) = &mut self.file else { return Ok(()) };
        self.buf.clear();
        binfmt::encode(item, &mut self.buf)
            .and_then(|()| out.write_all(&self.buf))
            .map_err(|e| Error::io(&spill.path)(e))
    }
}

/// Spill files start with this, then hold each item as [`binfmt::encode`] writes it. A file
/// without it holds JSON lines, as older versions spilled (a frozen backup's saved state may
/// point at one).
const SPILL_MAGIC: &[u8; 16] = b"nuwax-listing-2\n";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::EntryKind;

    fn entry(i: usize) -> EntryMeta {
        EntryMeta {
            path: format!("vol/f{i:06}"),
            kind: EntryKind::File,
            size: i as u64,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1,
            link_target: None,
        }
    }

    #[test]
    fn small_listings_stay_in_memory_and_large_ones_spill_and_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        for n in [0, 3, SPILL_AFTER, SPILL_AFTER + 1, 3 * SPILL_AFTER] {
            let mut b = ListingBuilder::new(Some(dir.path()));
            for i in 0..n {
                b.push(entry(i), None).unwrap();
            }
            let list = b.finish().unwrap();
            assert_eq!(list.len(), n as u64);
            assert_eq!(list.is_spilled(), n > SPILL_AFTER);
            // Read twice: each read starts from the beginning.
            for _ in 0..2 {
                let read = list.to_vec().unwrap();
                assert_eq!(read.len(), n);
                assert!(read.iter().enumerate().all(|(i, e)| *e == entry(i)));
            }
            // Saved and loaded (a frozen backup's state), the same entries.
            let copy: Listing = serde_json::from_slice(&serde_json::to_vec(&list).unwrap()).unwrap();
            assert_eq!(copy.to_vec().unwrap().len(), n);
            std::mem::forget(copy);
        }
        // The last clone of a spilled listing removes its file.
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn stamps_and_link_targets_read_back_and_a_spill_of_an_older_version_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let item = |i: usize| {
            let mut e = entry(i);
            (e.kind, e.link_target) = match i % 3 {
                0 => (EntryKind::Dir, None),
                1 => (EntryKind::Symlink, Some(format!("../t\"é{i}"))),
                _ => (EntryKind::File, None),
            };
            e.mtime = -(i as i64);
            let stamp = Stamp { dev: 1, ino: i as u64, size: 2, mtime_ns: -3 << 80, ctime_ns: i128::MAX };
            (e, i.is_multiple_of(2).then_some(stamp))
        };
        let n = SPILL_AFTER + 10;
        let mut b = ListingBuilder::new(Some(dir.path()));
        for i in 0..n {
            let (e, stamp) = item(i);
            b.push(e, stamp).unwrap();
        }
        let list = b.finish().unwrap();
        let read: Vec<Item> = list.iter().unwrap().map(Result::unwrap).collect();
        assert_eq!(read, (0..n).map(item).collect::<Vec<_>>());

        // JSON lines, no magic: what a frozen backup of an older version points at.
        let path = dir.path().join(format!("{SPILL_PREFIX}old"));
        let lines: Vec<String> = (0..n).map(|i| serde_json::to_string(&item(i)).unwrap()).collect();
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let old =
            Listing { items: Arc::default(), file: Some(Arc::new(RemovedOnDrop { path })), len: n as u64 };
        let read: Vec<Item> = old.iter().unwrap().map(Result::unwrap).collect();
        assert_eq!(read, (0..n).map(item).collect::<Vec<_>>());
    }

    #[test]
    fn a_spill_cut_short_even_between_two_items_or_grown_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let n = SPILL_AFTER + 10;
        let mut b = ListingBuilder::new(Some(dir.path()));
        for i in 0..n {
            b.push(entry(i), None).unwrap();
        }
        let list = b.finish().unwrap();
        let path = list.file.as_ref().unwrap().path.clone();
        let bytes = std::fs::read(&path).unwrap();
        let mut one = Vec::new();
        binfmt::encode(&(entry(0), None), &mut one).unwrap();
        assert_eq!(bytes.len(), SPILL_MAGIC.len() + n * one.len());

        let boundary = |k: usize| SPILL_MAGIC.len() + k * one.len();
        // Empty, inside the magic, right after it, between two items, inside one, one item short.
        for cut in [0, 10, boundary(0), boundary(7), boundary(7) + 3, boundary(n - 1)] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let read: Result<Vec<Item>> = list.iter().and_then(Iterator::collect);
            let text = format!("{:#}", anyhow::Error::from(read.unwrap_err()));
            assert!(
                text.contains("truncated") && text.contains(&*path.to_string_lossy()),
                "cut at {cut}: {text}"
            );
        }
        // An item more than the listing says.
        let mut grown = bytes.clone();
        grown.extend_from_slice(&one);
        std::fs::write(&path, &grown).unwrap();
        let read: Result<Vec<Item>> = list.iter().and_then(Iterator::collect);
        assert!(format!("{:#}", anyhow::Error::from(read.unwrap_err())).contains("more items"));
        // The same count holds for a spill of an older version (JSON lines).
        let lines: Vec<String> =
            (0..n - 1).map(|i| serde_json::to_string(&(entry(i), None::<Stamp>)).unwrap()).collect();
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let read: Result<Vec<Item>> = list.iter().and_then(Iterator::collect);
        assert!(format!("{:#}", anyhow::Error::from(read.unwrap_err())).contains("truncated"));
        // Intact, it reads, and the error did not stick to the listing.
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(list.to_vec().unwrap().len(), n);
    }
}
