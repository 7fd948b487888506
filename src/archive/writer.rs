//! Writes an archive: manifest first, then the declared entries read from the host or from an
//! engine tar stream (hashed while copied), then the checksums trailer.

use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::codec::{Encoder, HashingWriter};
use super::host::HostTree;
use super::manifest::{
    CHECKSUM_ALGORITHM, CHECKSUMS_NAME, Checksums, EntryKind, EntryMeta, MANIFEST_NAME, Manifest,
};
use super::scan::{StreamItem, StreamNames};
use super::{BUF_SIZE, Cancel, Compression, Error, Progress, Result, check_archive_path, hex, tarfmt};

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
/// `append_*` for the declared entries in manifest order, then [`finish`](Self::finish).
pub struct ArchiveWriter<W: Write> {
    out: BufWriter<Encoder<HashingWriter<W>>>,
    cancel: Cancel,
    progress: Arc<dyn Progress>,
    limiter: Option<RateLimiter>,
    buf: Vec<u8>,
    manifest_written: bool,
    /// The manifest's entries; every appended entry must be the next one.
    declared: Vec<EntryMeta>,
    next: usize,
    checksums: Checksums,
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
        let encoder =
            Encoder::new(sink, opts.compression, opts.level, opts.threads).map_err(Error::Output)?;
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
            manifest_written: false,
            declared: Vec::new(),
            next: 0,
            checksums: Checksums { algorithm: CHECKSUM_ALGORITHM.into(), ..Checksums::default() },
        })
    }

    /// Writes `manifest.json`; must be called first, exactly once.
    pub fn write_manifest(&mut self, m: &Manifest) -> Result<()> {
        if self.manifest_written {
            return Err(Error::Usage("write_manifest called twice".into()));
        }
        for entry in &m.entries {
            check_archive_path(&entry.path)?;
            if entry.path == MANIFEST_NAME || entry.path == CHECKSUMS_NAME {
                return Err(Error::Usage(format!("entry path {} is reserved", entry.path)));
            }
        }
        let bytes = serde_json::to_vec_pretty(m).map_err(|e| Error::Usage(e.to_string()))?;
        self.checksums.manifest = hex(&Sha256::digest(&bytes));
        let meta =
            tarfmt::meta_file(MANIFEST_NAME, bytes.len() as u64, tarfmt::rfc3339_seconds(&m.created_at));
        tarfmt::write_header(&mut self.out, &meta).map_err(Error::Output)?;
        self.out.write_all(&bytes).map_err(Error::Output)?;
        tarfmt::pad(&mut self.out, bytes.len() as u64).map_err(Error::Output)?;
        self.declared.clone_from(&m.entries);
        self.manifest_written = true;
        let total = m.entries.iter().filter(|e| e.kind == EntryKind::File).map(|e| e.size).sum();
        self.progress.set_total(total);
        Ok(())
    }

    /// Writes `entries` (from `scan_host(prefix, root, ..)`, in order), reading their data from
    /// `root` now. A file whose kind or size no longer matches its entry is [`Error::Changed`].
    pub fn append_host(&mut self, prefix: &str, root: &Path, entries: &[EntryMeta]) -> Result<()> {
        let mut tree = HostTree::new(prefix, root);
        for entry in entries {
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
        entries: &[EntryMeta],
    ) -> Result<()> {
        let mut archive = tar::Archive::new(reader);
        let mut names = StreamNames::new(prefix);
        let mut expected = entries.iter();
        for item in archive.entries().map_err(Error::io(prefix))? {
            self.cancel.check()?;
            let mut item = item.map_err(Error::io(prefix))?;
            let StreamItem::Entry(found) = names.classify(&item)? else {
                continue;
            };
            let Some(entry) = expected.next() else {
                return Err(Error::changed(&found.path, "appeared after the scan"));
            };
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
        if let Some(missing) = expected.next() {
            return Err(Error::changed(&missing.path, "vanished after the scan"));
        }
        Ok(())
    }

    /// Writes `checksums.json` and the end-of-archive marker, finishes the compressor and
    /// flushes. Does not fsync: the caller owns the file.
    pub fn finish(mut self) -> Result<WriteSummary> {
        if !self.manifest_written {
            return Err(Error::Usage("finish called before write_manifest".into()));
        }
        if let Some(first) = self.declared.get(self.next) {
            let count = (self.declared.len() - self.next) as u64;
            return Err(Error::MissingEntries { count, first: first.path.clone() });
        }
        let bytes = serde_json::to_vec_pretty(&self.checksums).map_err(|e| Error::Usage(e.to_string()))?;
        let meta = tarfmt::meta_file(CHECKSUMS_NAME, bytes.len() as u64, 0);
        let out = &mut self.out;
        tarfmt::write_header(out, &meta)
            .and_then(|()| out.write_all(&bytes))
            .and_then(|()| tarfmt::pad(out, bytes.len() as u64))
            .and_then(|()| out.write_all(&[0; 1024]))
            .map_err(Error::Output)?;
        let encoder = self.out.into_inner().map_err(|e| Error::Output(e.into_error()))?;
        let mut sink = encoder.finish().map_err(Error::Output)?;
        sink.inner.flush().map_err(Error::Output)?;
        Ok(WriteSummary {
            archive_bytes: sink.bytes,
            archive_sha256: sink.hasher.map(|h| hex(&h.finalize())),
            content_bytes: self.checksums.total_bytes,
            entries: self.declared.len() as u64,
        })
    }

    fn expect_next(&mut self, entry: &EntryMeta) -> Result<()> {
        if !self.manifest_written {
            return Err(Error::Usage("entries appended before write_manifest".into()));
        }
        match self.declared.get(self.next) {
            Some(declared) if declared == entry => {
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
        self.checksums.files.insert(entry.path.clone(), hex(&hasher.finalize()));
        self.checksums.total_bytes += entry.size;
        Ok(())
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
