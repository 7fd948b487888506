//! Writes an archive: the manifest, the index of the declared entries, the entries read from
//! the host or from an engine tar stream (hashed while copied), their digests, the trailer.
//! Memory stays flat: the declared entries are read from their [`Entries`] as they are needed,
//! and the digests go to a temp file once they outgrow a buffer.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::codec::{Encoder, HashingWriter};
use super::host::HostTree;
use super::listing::Entries;
use super::manifest::{
    CHECKSUM_ALGORITHM, CHECKSUMS_NAME, Checksums, DIGESTS_NAME, DUMPS_PREFIX, DigestsInfo, DumpDigest,
    EntryKind, EntryMeta, INDEX_NAME, IndexInfo, MANIFEST_NAME, Manifest, digest_line, dump_part_name,
    index_line,
};
use super::scan::{StreamItem, StreamNames};
use super::seal::{Recipient, Sealer};
use super::{BUF_SIZE, Cancel, Compression, Error, Progress, Result, check_archive_path, hex, tarfmt};

/// Digest lines kept in memory before they move to a temp file.
const DIGESTS_IN_MEMORY: usize = 1 << 20;
/// Bytes of a dump per part: each part is held in memory while its size is not yet known.
pub const DUMP_PART_BYTES: u64 = 8 << 20;
/// The zstd level dumps are compressed at, at least. SQL text shrinks a fifth more at 3 than at
/// the archives' default 1 (measured on the site's pgbench dump: `scripts/bench-site`), and the
/// dump tool, not the compressor, sets the pace.
pub const DUMP_MIN_LEVEL: i32 = 3;

/// How to write an archive.
#[derive(Clone, Debug)]
pub struct WriteOptions {
    pub compression: Compression,
    pub level: i32,
    /// zstd worker threads (at most 8 are used); 0 compresses on the calling thread.
    pub threads: u32,
    /// Bytes per second of entry content; a test hook to make archiving slow.
    pub rate_limit: Option<u64>,
    /// Hash the output as it is written ([`WriteSummary::archive_sha256`]). A caller that
    /// verifies the file afterwards anyway (which yields the same digest) turns this off to
    /// take the hashing out of the time the services are down.
    pub hash_output: bool,
    /// Where the file digests go once they outgrow memory (the system's temp dir when `None`).
    pub spill_dir: Option<PathBuf>,
    /// Encrypt the archive to these age recipients as it is written (see [`super::seal`]).
    pub recipients: Vec<Recipient>,
}

impl Default for WriteOptions {
    fn default() -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            compression: Compression::Zstd,
            level: Compression::Zstd.default_level(),
            threads: u32::try_from(threads).unwrap_or(1),
            rate_limit: None,
            hash_output: true,
            spill_dir: None,
            recipients: Vec::new(),
        }
    }
}

/// What [`ArchiveWriter::finish`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteSummary {
    /// Bytes written to the output (after compression).
    pub archive_bytes: u64,
    /// Hex sha256 of every byte written to the output (`None` without `hash_output`).
    pub archive_sha256: Option<String>,
    /// Total content bytes of the file entries.
    pub content_bytes: u64,
    /// Number of declared entries written (manifest and trailer not counted).
    pub entries: u64,
}

/// Streams one archive into `W`. Call [`write_manifest`](Self::write_manifest) first, then
/// `append_*` for the declared entries in their order, then [`finish`](Self::finish).
pub struct ArchiveWriter<W: Write> {
    out: BufWriter<Encoder<Sealer<HashingWriter<W>>>>,
    cancel: Cancel,
    progress: Arc<dyn Progress>,
    limiter: Option<RateLimiter>,
    buf: Vec<u8>,
    /// The declared entries from the one after the last appended (set by `write_manifest`);
    /// every appended entry must be the next one.
    declared: Option<Box<dyn Iterator<Item = Result<EntryMeta>> + Send>>,
    index: IndexInfo,
    next: u64,
    checksums: Checksums,
    digests: DigestLines,
    /// The dumps the manifest declares, and the part size; `checksums.dumps` holds those done.
    dumps: Vec<String>,
    part_bytes: u64,
    /// The level the files are compressed at, and the dumps' when it differs (zstd with
    /// workers, which take a new level at their next job).
    level: i32,
    dump_level: Option<i32>,
}

impl<W: Write> ArchiveWriter<W> {
    pub fn new(out: W, opts: &WriteOptions, cancel: Cancel, progress: Arc<dyn Progress>) -> Result<Self> {
        if !opts.compression.level_range().contains(&opts.level) {
            return Err(Error::Usage(format!(
                "{} level {} is outside {:?}",
                opts.compression,
                opts.level,
                opts.compression.level_range()
            )));
        }
        let sink = HashingWriter::new(out, opts.hash_output);
        let sealed = Sealer::new(sink, &opts.recipients).map_err(Error::Output)?;
        let encoder =
            Encoder::new(sealed, opts.compression, opts.level, opts.threads).map_err(Error::Output)?;
        // Enough chunks per second that throttling stays smooth and cancellation prompt.
        let chunk = opts
            .rate_limit
            .map_or(BUF_SIZE, |rate| usize::try_from(rate / 16).unwrap_or(BUF_SIZE).clamp(512, BUF_SIZE));
        Ok(Self {
            out: BufWriter::with_capacity(BUF_SIZE, encoder),
            cancel,
            progress,
            limiter: opts.rate_limit.filter(|&r| r > 0).map(RateLimiter::new),
            buf: vec![0; chunk],
            declared: None,
            index: IndexInfo::default(),
            next: 0,
            checksums: Checksums { algorithm: CHECKSUM_ALGORITHM.into(), ..Checksums::default() },
            digests: DigestLines::new(opts.spill_dir.clone()),
            dumps: Vec::new(),
            part_bytes: DUMP_PART_BYTES,
            level: opts.level,
            dump_level: (opts.compression == Compression::Zstd
                && opts.threads > 0
                && opts.level < DUMP_MIN_LEVEL)
                .then_some(DUMP_MIN_LEVEL),
        })
    }

    /// Writes `manifest.json` (with `m.entries` empty: the entries are `entries`) and the index
    /// of `entries`; must be called first, exactly once. `entries` is read three times: to
    /// measure the index for the manifest, to write it, and to check each appended entry.
    pub fn write_manifest(&mut self, m: &Manifest, entries: &dyn Entries) -> Result<()> {
        if self.declared.is_some() {
            return Err(Error::Usage("write_manifest called twice".into()));
        }
        if !m.entries.is_empty() || m.index.is_some() {
            return Err(Error::Usage("the manifest declares no entries: they are passed beside it".into()));
        }
        for (i, d) in m.dumps.iter().enumerate() {
            check_archive_path(&d.name)?;
            if !d.name.starts_with(DUMPS_PREFIX) || m.dumps[..i].iter().any(|o| o.name == d.name) {
                return Err(Error::Usage(format!("dump name {} is not unique under {DUMPS_PREFIX}", d.name)));
            }
        }
        if m.dumps.is_empty() != m.dump_part_bytes.is_none() {
            return Err(Error::Usage("dump_part_bytes is set exactly when there are dumps".into()));
        }
        let mut index = IndexInfo::default();
        let mut hasher = Sha256::new();
        let mut line = Vec::new();
        for entry in entries.entries()? {
            let entry = entry?;
            check_archive_path(&entry.path)?;
            if [MANIFEST_NAME, INDEX_NAME, DIGESTS_NAME, CHECKSUMS_NAME].contains(&entry.path.as_str())
                || entry.path.starts_with(DUMPS_PREFIX)
                || entry.path == DUMPS_PREFIX.trim_end_matches('/')
            {
                return Err(Error::Usage(format!("entry path {} is reserved", entry.path)));
            }
            line.clear();
            index_line(&entry, &mut line);
            hasher.update(&line);
            index.bytes += line.len() as u64;
            index.entries += 1;
            if entry.kind == EntryKind::File {
                index.files += 1;
                index.content_bytes += entry.size;
            }
        }
        index.sha256 = hex(&hasher.finalize());
        let m = Manifest { index: Some(index.clone()), ..m.clone() };
        let bytes = serde_json::to_vec_pretty(&m).map_err(|e| Error::Usage(e.to_string()))?;
        self.checksums.manifest = hex(&Sha256::digest(&bytes));
        let mtime = tarfmt::rfc3339_seconds(&m.created_at);
        self.write_member(MANIFEST_NAME, &bytes, mtime)?;

        tarfmt::write_header(&mut self.out, &tarfmt::meta_file(INDEX_NAME, index.bytes, mtime))
            .map_err(Error::Output)?;
        let (mut hasher, mut written) = (Sha256::new(), 0u64);
        for entry in entries.entries()? {
            self.cancel.check()?;
            line.clear();
            index_line(&entry?, &mut line);
            hasher.update(&line);
            written += line.len() as u64;
            if written > index.bytes {
                break;
            }
            self.out.write_all(&line).map_err(Error::Output)?;
        }
        if written != index.bytes || hex(&hasher.finalize()) != index.sha256 {
            return Err(Error::Usage("the declared entries changed while they were written".into()));
        }
        tarfmt::pad(&mut self.out, index.bytes).map_err(Error::Output)?;
        self.progress.set_total(index.content_bytes);
        self.declared = Some(entries.entries()?);
        self.index = index;
        self.dumps = m.dumps.iter().map(|d| d.name.clone()).collect();
        if let Some(bytes) = m.dump_part_bytes {
            if bytes == 0 || bytes > 1 << 30 {
                return Err(Error::Usage(format!("dump_part_bytes {bytes} is not in 1..=1 GiB")));
            }
            self.part_bytes = bytes;
        }
        Ok(())
    }

    /// Writes the next declared dump (see [`Manifest::dumps`]), read from `data` to its end, as
    /// parts. Dumps come after [`write_manifest`](Self::write_manifest), in their declared
    /// order, before any declared entry. Holds one part in memory.
    pub fn append_dump(&mut self, name: &str, mut data: impl Read) -> Result<DumpDigest> {
        self.progress.item(name);
        if self.declared.is_none() || self.next > 0 {
            return Err(Error::Usage("dumps go after the manifest and before the entries".into()));
        }
        let done = self.checksums.dumps.len();
        if self.dumps.get(done).map(String::as_str) != Some(name) {
            return Err(Error::Undeclared { path: name.to_owned() });
        }
        if let Some(level) = self.dump_level.filter(|_| done == 0) {
            self.set_level(level)?;
        }
        let part_bytes = usize::try_from(self.part_bytes).unwrap_or(usize::MAX);
        let mut part: Vec<u8> = Vec::with_capacity(part_bytes.min(1 << 20));
        let mut hasher = Sha256::new();
        let mut digest = DumpDigest { name: name.to_owned(), ..DumpDigest::default() };
        let mtime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
        loop {
            part.clear();
            while part.len() < part_bytes {
                self.cancel.check()?;
                let want = (part_bytes - part.len()).min(self.buf.len());
                let n = match data.read(&mut self.buf[..want]) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Error::io(Path::new(name))(e)),
                };
                if n == 0 {
                    break;
                }
                part.extend_from_slice(&self.buf[..n]);
                self.progress.inc(n as u64);
                if let Some(limiter) = &mut self.limiter {
                    limiter.throttle(n as u64, &self.cancel)?;
                }
            }
            let meta = tarfmt::meta_file(&dump_part_name(name, digest.parts), part.len() as u64, mtime);
            tarfmt::write_header(&mut self.out, &meta).map_err(Error::Output)?;
            self.out.write_all(&part).map_err(Error::Output)?;
            tarfmt::pad(&mut self.out, part.len() as u64).map_err(Error::Output)?;
            hasher.update(&part);
            digest.bytes += part.len() as u64;
            digest.parts += 1;
            if part.len() < part_bytes {
                break;
            }
        }
        digest.sha256 = hex(&hasher.finalize());
        self.checksums.dumps.push(digest.clone());
        if self.dump_level.is_some() && self.checksums.dumps.len() == self.dumps.len() {
            self.set_level(self.level)?;
        }
        Ok(digest)
    }

    /// Records the row counts of the dump `name`, appended before (see [`DumpDigest::rows`]).
    pub fn set_dump_rows(&mut self, name: &str, rows: std::collections::BTreeMap<String, u64>) -> Result<()> {
        match self.checksums.dumps.iter_mut().find(|d| d.name == name) {
            Some(d) => {
                d.rows = Some(rows);
                Ok(())
            }
            None => Err(Error::Undeclared { path: name.to_owned() }),
        }
    }

    /// Ends the compressor's current job and compresses what follows at `level` (zstd with
    /// workers: the level is one of the parameters they take mid-frame).
    fn set_level(&mut self, level: i32) -> Result<()> {
        self.out.flush().map_err(Error::Output)?;
        if let Encoder::Zstd(enc) = self.out.get_mut() {
            enc.set_parameter(zstd::stream::raw::CParameter::CompressionLevel(level))
                .map_err(Error::Output)?;
        }
        Ok(())
    }

    fn dumps_done(&self) -> Result<()> {
        match self.dumps.get(self.checksums.dumps.len()) {
            Some(missing) => Err(Error::MissingEntries {
                count: (self.dumps.len() - self.checksums.dumps.len()) as u64,
                first: missing.clone(),
            }),
            None => Ok(()),
        }
    }

    /// A small file entry (manifest, trailer) whose bytes are in memory.
    fn write_member(&mut self, name: &str, bytes: &[u8], mtime: i64) -> Result<()> {
        let meta = tarfmt::meta_file(name, bytes.len() as u64, mtime);
        tarfmt::write_header(&mut self.out, &meta).map_err(Error::Output)?;
        self.out.write_all(bytes).map_err(Error::Output)?;
        tarfmt::pad(&mut self.out, bytes.len() as u64).map_err(Error::Output)
    }

    /// Writes `entries` (from `scan_host(prefix, root, ..)`, in order), reading their data from
    /// `root` now. A file whose kind or size no longer matches its entry is [`Error::Changed`].
    pub fn append_host(&mut self, prefix: &str, root: &Path, entries: &dyn Entries) -> Result<()> {
        let mut tree = HostTree::new(prefix, root);
        for entry in entries.entries()? {
            let entry = &entry?;
            self.cancel.check()?;
            self.expect_next(entry)?;
            let host = tree.host_path(&entry.path)?;
            match entry.kind {
                EntryKind::Dir => {
                    tree.enter_dir(&entry.path, &host)?;
                    self.write_entry(entry, io::empty(), &host)?;
                }
                EntryKind::Symlink => {
                    tree.check_symlink(entry, &host)?;
                    self.write_entry(entry, io::empty(), &host)?;
                }
                EntryKind::File => {
                    let mut file = tree.open_file(entry, &host)?;
                    self.write_entry(entry, &mut file, &host)?;
                    // Growth after the size check would be silently cut off otherwise.
                    if file.read(&mut [0u8; 1]).map_err(Error::io(&host))? != 0 {
                        return Err(Error::changed(&host, "grew while it was being read"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes `entries` (from `scan_tar_stream(prefix, ..)` of an earlier fetch of the same
    /// path) from a fresh engine tar stream. Every stream entry must match the next expected
    /// entry (path, kind, size, link target), else [`Error::Changed`].
    pub fn append_tar_stream(
        &mut self,
        prefix: &str,
        reader: impl Read,
        entries: &dyn Entries,
    ) -> Result<()> {
        let mut archive = tar::Archive::new(reader);
        let mut names = StreamNames::new(prefix);
        let mut expected = entries.entries()?;
        for item in archive.entries().map_err(Error::io(prefix))? {
            self.cancel.check()?;
            let mut item = item.map_err(Error::io(prefix))?;
            let StreamItem::Entry(found) = names.classify(&item)? else {
                continue;
            };
            let Some(entry) = expected.next().transpose()? else {
                return Err(Error::changed(&found.path, "appeared after the scan"));
            };
            let entry = &entry;
            let same = found.path == entry.path
                && found.kind == entry.kind
                && found.size == entry.size
                && found.link_target == entry.link_target;
            if !same {
                let detail = format!(
                    "expected {} ({:?}, {} bytes), the engine sent {} ({:?}, {} bytes)",
                    entry.path, entry.kind, entry.size, found.path, found.kind, found.size
                );
                return Err(Error::changed(&entry.path, detail));
            }
            self.expect_next(entry)?;
            let path = PathBuf::from(&entry.path);
            self.write_entry(entry, &mut item, &path)?;
        }
        if let Some(missing) = expected.next().transpose()? {
            return Err(Error::changed(&missing.path, "vanished after the scan"));
        }
        Ok(())
    }

    /// Writes `checksums.json` and the end-of-archive marker, finishes the compressor and
    /// flushes. Does not fsync: the caller owns the file.
    pub fn finish(mut self) -> Result<WriteSummary> {
        if self.declared.is_some() {
            self.dumps_done()?;
        }
        let Some(declared) = &mut self.declared else {
            return Err(Error::Usage("finish called before write_manifest".into()));
        };
        if let Some(first) = declared.next().transpose()? {
            let count = self.index.entries - self.next;
            return Err(Error::MissingEntries { count, first: first.path });
        }
        self.checksums.digests = Some(self.digests.copy_into(&mut self.out, &self.cancel)?);
        let bytes = serde_json::to_vec_pretty(&self.checksums).map_err(|e| Error::Usage(e.to_string()))?;
        self.write_member(CHECKSUMS_NAME, &bytes, 0)?;
        self.out.write_all(&[0; 1024]).map_err(Error::Output)?;
        let encoder = self.out.into_inner().map_err(|e| Error::Output(e.into_error()))?;
        let mut sink = encoder.finish().and_then(Sealer::finish).map_err(Error::Output)?;
        sink.inner.flush().map_err(Error::Output)?;
        Ok(WriteSummary {
            archive_bytes: sink.bytes,
            archive_sha256: sink.hasher.map(|h| hex(&h.finalize())),
            content_bytes: self.checksums.total_bytes,
            entries: self.index.entries,
        })
    }

    fn expect_next(&mut self, entry: &EntryMeta) -> Result<()> {
        if self.next == 0 && self.declared.is_some() {
            self.dumps_done()?;
        }
        let Some(declared) = &mut self.declared else {
            return Err(Error::Usage("entries appended before write_manifest".into()));
        };
        match declared.next().transpose()? {
            Some(declared) if declared == *entry => {
                self.next += 1;
                Ok(())
            }
            _ => Err(Error::Undeclared { path: entry.path.clone() }),
        }
    }

    /// Header, exactly `entry.size` bytes from `data` (hashed on the way), padding.
    fn write_entry(&mut self, entry: &EntryMeta, mut data: impl Read, source: &Path) -> Result<()> {
        tarfmt::write_header(&mut self.out, entry).map_err(Error::Output)?;
        if entry.kind != EntryKind::File {
            return Ok(());
        }
        self.progress.item(&entry.path);
        let mut hasher = Sha256::new();
        let mut remaining = entry.size;
        while remaining > 0 {
            self.cancel.check()?;
            let want = usize::try_from(remaining).unwrap_or(usize::MAX).min(self.buf.len());
            let n = match data.read(&mut self.buf[..want]) {
                Ok(0) => {
                    let detail = format!("shrank: {} of {} bytes left unread", remaining, entry.size);
                    return Err(Error::changed(source, detail));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(source)(e)),
            };
            hasher.update(&self.buf[..n]);
            self.out.write_all(&self.buf[..n]).map_err(Error::Output)?;
            remaining -= n as u64;
            self.progress.inc(n as u64);
            if let Some(limiter) = &mut self.limiter {
                limiter.throttle(n as u64, &self.cancel)?;
            }
        }
        tarfmt::pad(&mut self.out, entry.size).map_err(Error::Output)?;
        self.digests.push(&entry.path, &hex(&hasher.finalize()))?;
        self.checksums.total_bytes += entry.size;
        Ok(())
    }
}

/// The lines of `checksums.jsonl`, in memory until they outgrow [`DIGESTS_IN_MEMORY`], then in
/// an anonymous temp file (gone with the process, whatever happens to it).
struct DigestLines {
    dir: Option<PathBuf>,
    mem: Vec<u8>,
    file: Option<BufWriter<File>>,
    info: DigestsInfo,
    hasher: Sha256,
}

impl DigestLines {
    fn new(dir: Option<PathBuf>) -> Self {
        Self { dir, mem: Vec::new(), file: None, info: DigestsInfo::default(), hasher: Sha256::new() }
    }

    fn push(&mut self, path: &str, sha256: &str) -> Result<()> {
        let start = self.mem.len();
        digest_line(path, sha256, &mut self.mem);
        self.hasher.update(&self.mem[start..]);
        self.info.bytes += (self.mem.len() - start) as u64;
        self.info.files += 1;
        if self.mem.len() >= DIGESTS_IN_MEMORY {
            if self.file.is_none() {
                let file = match &self.dir {
                    Some(dir) => tempfile::tempfile_in(dir),
                    None => tempfile::tempfile(),
                };
                self.file = Some(BufWriter::with_capacity(1 << 16, file.map_err(Error::Output)?));
            }
            if let Some(file) = &mut self.file {
                file.write_all(&self.mem).map_err(Error::Output)?;
            }
            self.mem.clear();
        }
        Ok(())
    }

    /// Writes the `checksums.jsonl` entry into `out`.
    fn copy_into(&mut self, out: &mut impl Write, cancel: &Cancel) -> Result<DigestsInfo> {
        let meta = tarfmt::meta_file(DIGESTS_NAME, self.info.bytes, 0);
        tarfmt::write_header(out, &meta).map_err(Error::Output)?;
        if let Some(file) = self.file.take() {
            let mut file = file.into_inner().map_err(|e| Error::Output(e.into_error()))?;
            file.rewind().map_err(Error::Output)?;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                cancel.check()?;
                match file.read(&mut buf).map_err(Error::Output)? {
                    0 => break,
                    n => out.write_all(&buf[..n]).map_err(Error::Output)?,
                }
            }
        }
        out.write_all(&self.mem).map_err(Error::Output)?;
        tarfmt::pad(out, self.info.bytes).map_err(Error::Output)?;
        let mut info = std::mem::take(&mut self.info);
        info.sha256 = hex(&std::mem::take(&mut self.hasher).finalize());
        Ok(info)
    }
}

/// Sleeps so that content flows at no more than `rate` bytes per second on average.
struct RateLimiter {
    rate: u64,
    start: Instant,
    bytes: u64,
}

impl RateLimiter {
    fn new(rate: u64) -> Self {
        Self { rate, start: Instant::now(), bytes: 0 }
    }

    fn throttle(&mut self, n: u64, cancel: &Cancel) -> Result<()> {
        self.bytes += n;
        #[allow(clippy::cast_precision_loss)]
        let due = Duration::from_secs_f64(self.bytes as f64 / self.rate as f64);
        loop {
            cancel.check()?;
            let elapsed = self.start.elapsed();
            if elapsed >= due {
                return Ok(());
            }
            std::thread::sleep((due - elapsed).min(Duration::from_millis(20)));
        }
    }
}
