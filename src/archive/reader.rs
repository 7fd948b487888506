//! Reads archives back: the manifest alone (cheap), or a full verification pass that proves
//! every byte against the declarations and the digests in flat memory — the same pass
//! extraction writes from, through a [`Visitor`].

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::codec::{Counting, Decoder, RawReader, Tally, is_raw_read_error};
use super::manifest::{
    CHECKSUMS_NAME, Checksums, DIGESTS_NAME, DigestsInfo, DumpDigest, DumpRecord, EntryKind, EntryMeta,
    FORMAT_VERSION, INDEX_NAME, IndexInfo, MANIFEST_NAME, Manifest, digest_line, dump_part_name,
};
use super::seal::Opened;
use super::{BUF_SIZE, Cancel, Compression, Error, Progress, Result, detect_compression, hex};

/// Largest `manifest.json` / `checksums.json` accepted; guards memory against a corrupt size.
const MAX_JSON: u64 = 1 << 30;

/// What a successful [`verify`] saw.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifyReport {
    pub manifest: Manifest,
    /// Declared entries found (manifest and trailer not counted).
    pub entries: u64,
    pub content_bytes: u64,
    /// Size of the archive file.
    pub archive_bytes: u64,
    /// Hex sha256 of the archive file.
    pub archive_sha256: String,
    /// The dumps' sizes and digests, as read and as the trailer holds them.
    pub dumps: Vec<DumpDigest>,
}

/// Reads just the first entry. [`Error::Corrupt`] if it is not `manifest.json`,
/// [`Error::UnsupportedFormat`] if a newer nuwax wrote it.
pub fn read_manifest(path: &Path) -> Result<Manifest> {
    let mut archive = tar::Archive::new(open(path)?.0);
    let mut entries = archive.entries().map_err(read_error(path))?;
    let (manifest, _) = read_manifest_entry(path, entries.next())?;
    Ok(manifest)
}

/// Reads the manifest and then the declared entries, one at a time into `each`, from the start
/// of the archive only (its data is not read: see [`verify`] for that).
pub fn read_entries(path: &Path, mut each: impl FnMut(EntryMeta) -> Result<()>) -> Result<Manifest> {
    let manifest = read_manifest(path)?;
    match &manifest.index {
        None => manifest.entries.iter().cloned().try_for_each(&mut each)?,
        Some(index) => {
            let mut declared = Declarations::open(path, index)?;
            while let Some(decl) = declared.next()? {
                each(decl)?;
            }
            declared.finish()?;
        }
    }
    Ok(manifest)
}

/// Streams the dump `name` (see [`Manifest::dumps`]) into `out`, reading the archive only up
/// to its end: the dumps are at the start. Returns its size, parts and digest as read; the
/// caller holds them to the trailer's, which a [`verify`] of the archive returned.
pub fn read_dump(path: &Path, name: &str, out: &mut dyn io::Write, cancel: &Cancel) -> Result<DumpDigest> {
    let (stream, _) = open(path)?;
    let mut archive = tar::Archive::new(stream);
    let mut entries = archive.entries().map_err(read_error(path))?;
    let (manifest, manifest_digest) = read_manifest_entry(path, entries.next())?;
    let Some(part_bytes) = manifest.dump_part_bytes.filter(|_| manifest.index.is_some()) else {
        return Err(Error::MissingEntries { count: 1, first: name.to_owned() });
    };
    let index = entries.next().ok_or_else(|| Error::MissingEntries { count: 1, first: INDEX_NAME.into() })?;
    if entry_name(&index.map_err(read_error(path))?) != INDEX_NAME {
        return Err(Error::corrupt(format!("the second entry is not {INDEX_NAME}")));
    }
    let pass = Pass { path, cancel, progress: &super::NoProgress, manifest_digest: &manifest_digest };
    let mut sink = DumpSink { name, current: false, out };
    let mut buf = vec![0u8; BUF_SIZE];
    for dump in &manifest.dumps {
        let digest = pass.dump(&mut entries, dump, part_bytes, &mut buf, &mut sink)?;
        if dump.name == name {
            return Ok(digest);
        }
    }
    Err(Error::MissingEntries { count: 1, first: name.to_owned() })
}

/// Writes the content of one dump on.
struct DumpSink<'a> {
    name: &'a str,
    current: bool,
    out: &'a mut dyn io::Write,
}

impl Visitor for DumpSink<'_> {
    fn dump_start(&mut self, dump: &DumpRecord) -> Result<()> {
        self.current = dump.name == self.name;
        Ok(())
    }

    fn dump_content(&mut self, chunk: &[u8]) -> Result<()> {
        if self.current {
            self.out.write_all(chunk).map_err(Error::io(Path::new(self.name)))?;
        }
        Ok(())
    }
}

/// One full pass over the archive at `path`: whole-file sha256 (compared with
/// `expected_sha256` when given), the manifest first, every following entry declared, in order,
/// with its declared kind, size and metadata, every file's content digest equal to the
/// trailer's, the trailer last, and nothing declared missing.
pub fn verify(
    path: &Path,
    expected_sha256: Option<&str>,
    cancel: &Cancel,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    let walked = walk(path, cancel, progress, &mut ())?;
    report(walked, expected_sha256)
}

/// The report of a finished walk, once its whole-file digest matched `expected_sha256`.
pub(super) fn report(walked: Walked, expected_sha256: Option<&str>) -> Result<VerifyReport> {
    let archive_sha256 = hex(&walked.raw.hasher.clone().finalize());
    if let Some(expected) = expected_sha256.filter(|e| !e.eq_ignore_ascii_case(&archive_sha256)) {
        return Err(Error::ChecksumMismatch { expected: expected.to_owned(), actual: archive_sha256 });
    }
    Ok(VerifyReport {
        entries: walked.entries,
        content_bytes: walked.content_bytes,
        archive_bytes: walked.raw.bytes,
        archive_sha256,
        manifest: walked.manifest,
        dumps: walked.dumps,
    })
}

/// What a [`walk`] shows along the way. Verification needs none of it; extraction refuses
/// entries and writes them through it. Every hook may stop the walk with an error.
pub(super) trait Visitor {
    /// The manifest, before any other entry is read.
    fn manifest(&mut self, _manifest: &Manifest) -> Result<()> {
        Ok(())
    }

    /// Each declared entry, in order, before any entry's data (from the manifest in format 1,
    /// from `index.jsonl` in format 2).
    fn declare(&mut self, _decl: &EntryMeta) -> Result<()> {
        Ok(())
    }

    /// Every declaration was shown.
    fn declared_all(&mut self) -> Result<()> {
        Ok(())
    }

    /// Each tar entry after the manifest (trailer included), before it is matched against the
    /// manifest and before any of its data is read.
    fn screen(&mut self, _name: &str, _entry_type: tar::EntryType, _link: Option<&[u8]>) -> Result<()> {
        Ok(())
    }

    /// A declared entry whose header matched its declaration (so its size is the declared
    /// one), before its content.
    fn start(&mut self, _decl: &EntryMeta) -> Result<()> {
        Ok(())
    }

    /// The next chunk of the current file's content; never more than declared in total.
    fn content(&mut self, _chunk: &[u8]) -> Result<()> {
        Ok(())
    }

    /// The current entry's content was read in full.
    fn end(&mut self, _decl: &EntryMeta) -> Result<()> {
        Ok(())
    }

    /// A dump's parts follow (format 2, after the declarations, before the entries).
    fn dump_start(&mut self, _dump: &DumpRecord) -> Result<()> {
        Ok(())
    }

    /// The next chunk of the current dump.
    fn dump_content(&mut self, _chunk: &[u8]) -> Result<()> {
        Ok(())
    }
}

impl Visitor for () {}

/// What a successful [`walk`] saw (see [`VerifyReport`]).
pub(super) struct Walked {
    pub(super) manifest: Manifest,
    pub(super) entries: u64,
    pub(super) content_bytes: u64,
    /// The file end, holding the size and digest of the whole archive file.
    pub(super) raw: Tally,
    pub(super) dumps: Vec<DumpDigest>,
}

/// The one pass behind [`verify`] and extraction: everything [`verify`] checks, in archive
/// order, with `visitor` shown each step. Memory stays flat: the declarations and digests are
/// read as a stream and compared through digests (format 2; format 1 holds them in the
/// manifest and trailer, in memory), and an entry's size is checked before its data is read.
pub(super) fn walk(
    path: &Path,
    cancel: &Cancel,
    progress: &dyn Progress,
    visitor: &mut impl Visitor,
) -> Result<Walked> {
    let (stream, compression) = open(path)?;
    let mut archive = tar::Archive::new(stream);
    let mut entries = archive.entries().map_err(read_error(path))?;
    let (manifest, manifest_digest) = read_manifest_entry(path, entries.next())?;
    visitor.manifest(&manifest)?;
    let mut buf = vec![0u8; BUF_SIZE];
    let pass = Pass { path, cancel, progress, manifest_digest: &manifest_digest };
    let (next, content_bytes, trailer_end, dumps) = match &manifest.index {
        Some(index) => pass.v2(&mut entries, index, &manifest, &mut buf, visitor)?,
        None if !manifest.dumps.is_empty() => {
            return Err(Error::corrupt("the manifest declares dumps but no index (format 1)"));
        }
        None => {
            let (next, bytes, end) = pass.v1(&mut entries, &manifest, &mut buf, visitor)?;
            (next, bytes, end, Vec::new())
        }
    };
    if let Some(extra) = entries.next() {
        let extra = extra.map_err(read_error(path))?;
        return Err(Error::Undeclared { path: entry_name(&extra) });
    }
    let raw = check_end(path, archive.into_inner(), compression, trailer_end, &mut buf, cancel)?;
    Ok(Walked { entries: next, content_bytes, raw, manifest, dumps })
}

/// What both formats' passes need.
struct Pass<'a> {
    path: &'a Path,
    cancel: &'a Cancel,
    progress: &'a dyn Progress,
    manifest_digest: &'a str,
}

/// A line of `index.jsonl` longer than this is damage, not an entry.
const MAX_LINE: u64 = 1 << 20;

impl Pass<'_> {
    /// Format 1: the declarations are the manifest's, the digests the trailer's. Returns the
    /// entries found, their content bytes and where the trailer ends.
    fn v1<R: Read>(
        &self,
        entries: &mut tar::Entries<'_, R>,
        manifest: &Manifest,
        buf: &mut [u8],
        visitor: &mut impl Visitor,
    ) -> Result<(u64, u64, u64)> {
        let path = self.path;
        let declared = &manifest.entries;
        for decl in declared {
            visitor.declare(decl)?;
        }
        visitor.declared_all()?;
        self.progress.set_total(manifest.content_bytes());
        // Digests of the file entries in manifest order; paths are in the manifest already.
        let mut digests: Vec<[u8; 32]> = Vec::new();
        let mut content_bytes = 0u64;
        let mut next = 0usize;
        loop {
            self.cancel.check()?;
            let Some(entry) = entries.next() else {
                let (count, first) = match declared.get(next) {
                    Some(first) => (declared.len() - next, first.path.as_str()),
                    None => (1, CHECKSUMS_NAME),
                };
                return Err(Error::MissingEntries { count: count as u64, first: first.to_owned() });
            };
            let mut entry = entry.map_err(read_error(path))?;
            let name = entry_name(&entry);
            visitor.screen(&name, entry.header().entry_type(), entry.link_name_bytes().as_deref())?;
            if let Some(decl) = declared.get(next).filter(|d| d.path == name) {
                check_header(&entry, decl)?;
                visitor.start(decl)?;
                if decl.kind == EntryKind::File {
                    digests.push(self.content(&mut entry, decl, buf, visitor)?);
                    content_bytes += decl.size;
                }
                visitor.end(decl)?;
                next += 1;
                continue;
            }
            if name != CHECKSUMS_NAME || !is_regular(&entry) {
                return Err(Error::Undeclared { path: name });
            }
            if let Some(first) = declared.get(next) {
                let count = (declared.len() - next) as u64;
                return Err(Error::MissingEntries { count, first: first.path.clone() });
            }
            let bytes = read_json_entry(path, &mut entry)?;
            let trailer: Checksums = serde_json::from_slice(&bytes)
                .map_err(|e| Error::corrupt(format!("{CHECKSUMS_NAME} does not parse: {e}")))?;
            check_trailer(&trailer, declared, &digests, self.manifest_digest, content_bytes)?;
            let end = entry.raw_file_position() + entry.size().div_ceil(512) * 512;
            return Ok((next as u64, content_bytes, end));
        }
    }

    /// Format 2: `index.jsonl` is read line by line (each declaration shown to the visitor
    /// before any data), then every entry is held to its declaration, read again by a second
    /// reader of the file ([`Declarations`]). The digests of the files must make
    /// `checksums.jsonl`, whose digest the trailer holds.
    fn v2<R: Read>(
        &self,
        entries: &mut tar::Entries<'_, R>,
        index: &IndexInfo,
        manifest: &Manifest,
        buf: &mut [u8],
        visitor: &mut impl Visitor,
    ) -> Result<(u64, u64, u64, Vec<DumpDigest>)> {
        let path = self.path;
        let missing = |count: u64, first: &str| Error::MissingEntries { count, first: first.to_owned() };
        let mut entry = entries.next().ok_or_else(|| missing(index.entries + 2, INDEX_NAME))?;
        let mut index_entry = entry.map_err(read_error(path))?;
        if entry_name(&index_entry) != INDEX_NAME || !is_regular(&index_entry) {
            return Err(Error::corrupt(format!("the second entry is not {INDEX_NAME}")));
        }
        if index_entry.size() != index.bytes {
            let detail = format!("declared {} bytes, archive holds {}", index.bytes, index_entry.size());
            return Err(Error::mismatch(INDEX_NAME, detail));
        }
        self.read_index(&mut index_entry, index, visitor)?;
        drop(index_entry);
        self.progress.set_total(index.content_bytes);

        let part_bytes = match (manifest.dumps.is_empty(), manifest.dump_part_bytes) {
            (true, None) => 0,
            (false, Some(bytes)) if bytes > 0 => bytes,
            _ => return Err(Error::corrupt("dump_part_bytes does not go with the declared dumps")),
        };
        let mut dumps = Vec::with_capacity(manifest.dumps.len());
        for dump in &manifest.dumps {
            dumps.push(self.dump(entries, dump, part_bytes, buf, visitor)?);
        }

        // The declarations again, from a second reader of the same file, one at a time.
        let mut declared = Declarations::open(path, index)?;
        let mut sums = Sha256::new();
        let (mut found, mut files, mut content_bytes) = (0u64, 0u64, 0u64);
        let mut line = Vec::new();
        let mut digests_entry = loop {
            self.cancel.check()?;
            let decl = declared.next()?;
            let remaining = index.entries - found;
            entry = entries.next().ok_or_else(|| match &decl {
                Some(decl) => missing(remaining + 2, &decl.path),
                None => missing(2, DIGESTS_NAME),
            })?;
            let mut entry = entry.map_err(read_error(path))?;
            let name = entry_name(&entry);
            visitor.screen(&name, entry.header().entry_type(), entry.link_name_bytes().as_deref())?;
            let decl = match decl {
                Some(decl) if decl.path == name => decl,
                decl => match (name.as_str(), decl) {
                    (DIGESTS_NAME, None) if is_regular(&entry) => break entry,
                    (CHECKSUMS_NAME, None) => return Err(missing(1, DIGESTS_NAME)),
                    (DIGESTS_NAME | CHECKSUMS_NAME, Some(decl)) => {
                        return Err(missing(remaining, &decl.path));
                    }
                    _ => return Err(Error::Undeclared { path: name }),
                },
            };
            check_header(&entry, &decl)?;
            visitor.start(&decl)?;
            if decl.kind == EntryKind::File {
                let digest = self.content(&mut entry, &decl, buf, visitor)?;
                line.clear();
                digest_line(&decl.path, &hex(&digest), &mut line);
                sums.update(&line);
                files += 1;
                content_bytes += decl.size;
            }
            visitor.end(&decl)?;
            found += 1;
        };
        declared.finish()?;

        let mut stored = Sha256::new();
        let digests_bytes = digests_entry.size();
        let mut left = digests_bytes;
        while left > 0 {
            self.cancel.check()?;
            let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
            let n = digests_entry.read(&mut buf[..want]).map_err(read_error(path))?;
            if n == 0 {
                return Err(Error::corrupt(format!("archive ends inside {DIGESTS_NAME}")));
            }
            stored.update(&buf[..n]);
            left -= n as u64;
        }
        let stored = hex(&stored.finalize());
        if stored != hex(&sums.finalize()) {
            return Err(Error::mismatch(
                DIGESTS_NAME,
                "the content of the files differs from their digests (the archive is damaged)",
            ));
        }
        drop(digests_entry);

        let trailer_entry = entries.next().ok_or_else(|| missing(1, CHECKSUMS_NAME))?;
        let mut trailer_entry = trailer_entry.map_err(read_error(path))?;
        let name = entry_name(&trailer_entry);
        visitor.screen(&name, trailer_entry.header().entry_type(), None)?;
        if name != CHECKSUMS_NAME || !is_regular(&trailer_entry) {
            return Err(Error::Undeclared { path: name });
        }
        let bytes = read_json_entry(path, &mut trailer_entry)?;
        let trailer: Checksums = serde_json::from_slice(&bytes)
            .map_err(|e| Error::corrupt(format!("{CHECKSUMS_NAME} does not parse: {e}")))?;
        if trailer.manifest != self.manifest_digest {
            return Err(Error::mismatch(MANIFEST_NAME, format!("digest differs from {CHECKSUMS_NAME}")));
        }
        let expected = DigestsInfo { files, bytes: digests_bytes, sha256: stored };
        if trailer.digests.as_ref() != Some(&expected) || !trailer.files.is_empty() {
            return Err(Error::mismatch(
                DIGESTS_NAME,
                format!("differs from what {CHECKSUMS_NAME} says of it"),
            ));
        }
        if trailer.total_bytes != content_bytes
            || content_bytes != index.content_bytes
            || files != index.files
        {
            let detail = format!("total_bytes {} but the files hold {content_bytes}", trailer.total_bytes);
            return Err(Error::mismatch(CHECKSUMS_NAME, detail));
        }
        let same = dumps.len() == trailer.dumps.len()
            && dumps.iter().zip(&trailer.dumps).all(|(a, b)| a.same_bytes(b));
        if !same {
            let differs =
                dumps.iter().zip(&trailer.dumps).find(|(a, b)| !a.same_bytes(b)).map(|(a, _)| a.name.clone());
            let name = differs.unwrap_or_else(|| CHECKSUMS_NAME.to_owned());
            return Err(Error::mismatch(
                &name,
                format!("the dump differs from its digest in {CHECKSUMS_NAME}"),
            ));
        }
        let end = trailer_entry.raw_file_position() + trailer_entry.size().div_ceil(512) * 512;
        // The trailer's: the same bytes, with the row counts the writer took.
        Ok((found, content_bytes, end, trailer.dumps))
    }

    /// Reads one dump's parts: named in sequence, each [`Manifest::dump_part_bytes`] long but
    /// the last, which is shorter. Returns its size, parts and digest.
    fn dump<R: Read>(
        &self,
        entries: &mut tar::Entries<'_, R>,
        dump: &DumpRecord,
        part_bytes: u64,
        buf: &mut [u8],
        visitor: &mut impl Visitor,
    ) -> Result<DumpDigest> {
        visitor.dump_start(dump)?;
        let mut digest = DumpDigest { name: dump.name.clone(), ..DumpDigest::default() };
        let mut hasher = Sha256::new();
        loop {
            self.cancel.check()?;
            let want = dump_part_name(&dump.name, digest.parts);
            let entry =
                entries.next().ok_or_else(|| Error::MissingEntries { count: 1, first: want.clone() })?;
            let mut entry = entry.map_err(read_error(self.path))?;
            let name = entry_name(&entry);
            visitor.screen(&name, entry.header().entry_type(), entry.link_name_bytes().as_deref())?;
            if name != want || !is_regular(&entry) {
                return Err(Error::MissingEntries { count: 1, first: want });
            }
            let size = entry.size();
            if size > part_bytes {
                return Err(Error::mismatch(&want, format!("{size} bytes, parts hold at most {part_bytes}")));
            }
            let mut left = size;
            while left > 0 {
                self.cancel.check()?;
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let n = entry.read(&mut buf[..n]).map_err(read_error(self.path))?;
                if n == 0 {
                    return Err(Error::corrupt(format!("archive ends inside {want}")));
                }
                hasher.update(&buf[..n]);
                visitor.dump_content(&buf[..n])?;
                left -= n as u64;
                self.progress.inc(n as u64);
            }
            digest.bytes += size;
            digest.parts += 1;
            if size < part_bytes {
                break;
            }
        }
        digest.sha256 = hex(&hasher.finalize());
        Ok(digest)
    }

    /// Reads `index.jsonl` line by line, showing each declaration to `visitor`; the lines must
    /// be as many as declared and have the declared digest.
    fn read_index<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        index: &IndexInfo,
        visitor: &mut impl Visitor,
    ) -> Result<()> {
        let path = self.path;
        let mut reader = BufReader::with_capacity(1 << 16, entry);
        let (mut hasher, mut count, mut line) = (Sha256::new(), 0u64, Vec::new());
        loop {
            self.cancel.check()?;
            line.clear();
            let n = (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line).map_err(read_error(path))?;
            if n == 0 {
                break;
            }
            if line.last() != Some(&b'\n') {
                return Err(Error::corrupt(format!(
                    "{INDEX_NAME} line {} is cut short or too long",
                    count + 1
                )));
            }
            hasher.update(&line);
            let decl: EntryMeta = serde_json::from_slice(&line).map_err(|e| {
                Error::corrupt(format!("{INDEX_NAME} line {} does not parse: {e}", count + 1))
            })?;
            count += 1;
            visitor.declare(&decl)?;
        }
        if count != index.entries || hex(&hasher.finalize()) != index.sha256 {
            let detail = format!("{count} lines, {} declared, or a different digest", index.entries);
            return Err(Error::mismatch(INDEX_NAME, detail));
        }
        visitor.declared_all()
    }

    fn content<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        decl: &EntryMeta,
        buf: &mut [u8],
        visitor: &mut impl Visitor,
    ) -> Result<[u8; 32]> {
        read_content(self.path, entry, decl, buf, self.cancel, self.progress, visitor)
    }
}

/// `index.jsonl` read a second time, from its own reader of the archive file, so the walk can
/// hold each entry to its declaration without keeping the declarations: only the archive's
/// first two entries are decompressed twice.
struct Declarations {
    lines: io::Take<BufReader<Stream>>,
    line: Vec<u8>,
    hasher: Sha256,
    count: u64,
    index: IndexInfo,
    path: std::path::PathBuf,
}

impl Declarations {
    fn open(path: &Path, index: &IndexInfo) -> Result<Self> {
        let mut stream = BufReader::with_capacity(1 << 16, open(path)?.0);
        let size = plain_member(path, &mut stream, MANIFEST_NAME)?;
        io::copy(&mut (&mut stream).take(size.div_ceil(512) * 512), &mut io::sink())
            .map_err(read_error(path))?;
        let size = plain_member(path, &mut stream, INDEX_NAME)?;
        if size != index.bytes {
            return Err(Error::corrupt(format!("{INDEX_NAME} changed while it was read")));
        }
        Ok(Self {
            lines: stream.take(size),
            line: Vec::new(),
            hasher: Sha256::new(),
            count: 0,
            index: index.clone(),
            path: path.to_path_buf(),
        })
    }

    fn next(&mut self) -> Result<Option<EntryMeta>> {
        self.line.clear();
        let n = (&mut self.lines)
            .take(MAX_LINE)
            .read_until(b'\n', &mut self.line)
            .map_err(read_error(&self.path))?;
        if n == 0 {
            return Ok(None);
        }
        self.hasher.update(&self.line);
        self.count += 1;
        serde_json::from_slice(&self.line)
            .map(Some)
            .map_err(|e| Error::corrupt(format!("{INDEX_NAME} line {} does not parse: {e}", self.count)))
    }

    /// Both readers read the same declarations.
    fn finish(mut self) -> Result<()> {
        if self.next()?.is_some()
            || self.count != self.index.entries
            || hex(&self.hasher.finalize()) != self.index.sha256
        {
            return Err(Error::corrupt(format!("{INDEX_NAME} changed while it was read")));
        }
        Ok(())
    }
}

/// The size of the next member of a tar stream, which must be a plain file named `name` (the
/// writer puts no extension records before its own members).
fn plain_member(path: &Path, stream: &mut impl Read, name: &str) -> Result<u64> {
    let mut block = [0u8; 512];
    stream.read_exact(&mut block).map_err(read_error(path))?;
    let header = tar::Header::from_byte_slice(&block);
    if header.path_bytes().as_ref() != name.as_bytes() || !header.entry_type().is_file() {
        return Err(Error::corrupt(format!("{name} is not where the archive should have it")));
    }
    header.entry_size().map_err(|e| Error::corrupt(format!("{name}: bad tar header: {e}")))
}

/// Reads a file entry's content (exactly its declared size, checked against the header
/// before), handing it to `visitor` chunk by chunk; returns its digest.
fn read_content<R: Read>(
    path: &Path,
    entry: &mut tar::Entry<'_, R>,
    decl: &EntryMeta,
    buf: &mut [u8],
    cancel: &Cancel,
    progress: &dyn Progress,
    visitor: &mut impl Visitor,
) -> Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut remaining = decl.size;
    while remaining > 0 {
        cancel.check()?;
        let want = usize::try_from(remaining).unwrap_or(usize::MAX).min(buf.len());
        let n = entry.read(&mut buf[..want]).map_err(read_error(path))?;
        if n == 0 {
            return Err(Error::corrupt(format!("archive ends inside {}", decl.path)));
        }
        hasher.update(&buf[..n]);
        visitor.content(&buf[..n])?;
        remaining -= n as u64;
        progress.inc(n as u64);
    }
    Ok(hasher.finalize().into())
}

/// Size of the end-of-archive marker the writer puts after the trailer: two zero blocks, and
/// nothing after them (no padding to a record size).
const END_MARKER: u64 = 1024;

/// After the trailer the tar stream must hold the end-of-archive marker and nothing more
/// (proving it was not cut short, nor added to), and the file must end with the compressed
/// stream: one zstd frame (the multithreaded encoder writes its jobs as blocks of one frame),
/// one gzip member. A decoder would read past a skippable frame or into a second frame and a
/// tar reader stops at the marker, so without these checks bytes could be appended to an
/// archive unnoticed. Drains the file (checking `cancel`; memory stays at `buf`) so the
/// returned reader holds the digest of all of it.
fn check_end(
    path: &Path,
    stream: Stream,
    compression: Compression,
    trailer_end: u64,
    buf: &mut [u8],
    cancel: &Cancel,
) -> Result<Tally> {
    let Stream { inner: mut stream, tally } = stream;
    let end = trailer_end + END_MARKER;
    loop {
        cancel.check()?;
        let before = stream.count;
        let n = stream.read(buf).map_err(read_error(path))?;
        if n == 0 {
            break;
        }
        let in_marker = usize::try_from(end.saturating_sub(before)).unwrap_or(usize::MAX).min(n);
        if buf[..in_marker].iter().any(|&b| b != 0) {
            return Err(Error::corrupt("the end-of-archive marker is damaged"));
        }
    }
    if stream.count < end {
        return Err(Error::corrupt("the end-of-archive marker is missing or cut short"));
    }
    if stream.count > end {
        return Err(Error::corrupt(format!("{} after the end of the archive", bytes(stream.count - end))));
    }
    let mut raw = stream.inner.into_inner();
    if let Some(what) = after_stream(path, &mut raw, compression, buf, cancel)? {
        return Err(Error::corrupt(format!("{what} after the end of the compressed stream")));
    }
    drop(raw);
    let mut tally = tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    Ok(std::mem::take(&mut *tally))
}

/// What follows the compressed stream in `raw`, if anything, read to the end and named.
fn after_stream(
    path: &Path,
    raw: &mut impl BufRead,
    compression: Compression,
    buf: &mut [u8],
    cancel: &Cancel,
) -> Result<Option<String>> {
    let mut head = Vec::with_capacity(4);
    raw.take(4).read_to_end(&mut head).map_err(read_error(path))?;
    if head.is_empty() {
        return Ok(None);
    }
    let mut len = head.len() as u64;
    loop {
        cancel.check()?;
        match raw.read(buf).map_err(read_error(path))? {
            0 => break,
            n => len += n as u64,
        }
    }
    let same_format = detect_compression(&head) == compression;
    Ok(Some(match compression {
        Compression::Zstd if same_format => format!("a second zstd frame ({})", bytes(len)),
        Compression::Zstd if is_skippable_frame(&head) => format!("a zstd skippable frame ({})", bytes(len)),
        Compression::Gzip if same_format => format!("a second gzip member ({})", bytes(len)),
        _ => bytes(len),
    }))
}

/// zstd's skippable frames start with a magic number from 0x184D2A50 to 0x184D2A5F.
fn is_skippable_frame(head: &[u8]) -> bool {
    matches!(head, [b0, 0x2A, 0x4D, 0x18] if b0 & 0xF0 == 0x50)
}

fn bytes(n: u64) -> String {
    if n == 1 { "1 byte".into() } else { format!("{n} bytes") }
}

/// Hex sha256 of a whole file.
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(Error::io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(hex(&hasher.finalize())),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path)(e)),
        }
    }
}

/// An archive's bytes as the tar reader takes them: decompressed, decrypted when it is
/// encrypted, with the whole file's tally on the side.
struct Stream {
    inner: Counting<Decoder<Opened<BufReader<RawReader>>>>,
    tally: std::sync::Arc<std::sync::Mutex<Tally>>,
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

/// Opens `path` with the decryption and decompressor its first bytes call for.
fn open(path: &Path) -> Result<(Stream, Compression)> {
    let file = File::open(path).map_err(Error::io(path))?;
    let raw = RawReader::new(file);
    let tally = raw.tally();
    let mut raw = Opened::new(BufReader::with_capacity(BUF_SIZE, raw), path)?;
    let compression = detect_compression(raw.fill_buf().map_err(read_error(path))?);
    let decoder = match compression {
        // One frame: by default the decoder would go on into any frame that follows.
        Compression::Zstd => Decoder::Zstd(
            zstd::stream::read::Decoder::with_buffer(raw).map_err(Error::io(path))?.single_frame(),
        ),
        Compression::Gzip => Decoder::Gzip(Box::new(flate2::bufread::GzDecoder::new(raw))),
        Compression::None => Decoder::Plain(raw),
    };
    Ok((Stream { inner: Counting::new(decoder), tally }, compression))
}

/// The first entry must be `manifest.json`; returns it parsed and the digest of its bytes.
fn read_manifest_entry<R: Read>(
    path: &Path,
    first: Option<io::Result<tar::Entry<'_, R>>>,
) -> Result<(Manifest, String)> {
    let not_ours = || Error::corrupt(format!("the first entry is not {MANIFEST_NAME}"));
    let mut entry = first.ok_or_else(not_ours)?.map_err(read_error(path))?;
    if entry_name(&entry) != MANIFEST_NAME || !is_regular(&entry) {
        return Err(not_ours());
    }
    let bytes = read_json_entry(path, &mut entry)?;
    // Read the version alone first: a newer manifest may not parse as this one.
    #[derive(Deserialize)]
    struct Version {
        format_version: u32,
    }
    let version: Version = serde_json::from_slice(&bytes)
        .map_err(|e| Error::corrupt(format!("{MANIFEST_NAME} does not parse: {e}")))?;
    if version.format_version > FORMAT_VERSION {
        return Err(Error::UnsupportedFormat { found: version.format_version, supported: FORMAT_VERSION });
    }
    let manifest = serde_json::from_slice(&bytes)
        .map_err(|e| Error::corrupt(format!("{MANIFEST_NAME} does not parse: {e}")))?;
    Ok((manifest, hex(&Sha256::digest(&bytes))))
}

fn read_json_entry<R: Read>(path: &Path, entry: &mut tar::Entry<'_, R>) -> Result<Vec<u8>> {
    let size = entry.size();
    if size > MAX_JSON {
        return Err(Error::corrupt(format!("{} claims {size} bytes", entry_name(entry))));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    entry.read_to_end(&mut bytes).map_err(read_error(path))?;
    if bytes.len() as u64 != size {
        return Err(Error::corrupt(format!("archive ends inside {}", entry_name(entry))));
    }
    Ok(bytes)
}

fn check_header<R: Read>(entry: &tar::Entry<'_, R>, decl: &EntryMeta) -> Result<()> {
    let header = entry.header();
    let path = decl.path.as_str();
    let kind = match header.entry_type() {
        t if t.is_file() || t.is_contiguous() => EntryKind::File,
        t if t.is_dir() => EntryKind::Dir,
        t if t.is_symlink() => EntryKind::Symlink,
        t => {
            return Err(Error::mismatch(
                path,
                format!("unexpected tar entry type {:?}", t.as_byte() as char),
            ));
        }
    };
    if kind != decl.kind {
        return Err(Error::mismatch(path, format!("declared {:?}, archived as {kind:?}", decl.kind)));
    }
    let size = entry.size();
    let declared_size = if kind == EntryKind::File { decl.size } else { 0 };
    if size != declared_size {
        return Err(Error::mismatch(path, format!("declared {declared_size} bytes, archive holds {size}")));
    }
    let field =
        |value: io::Result<u64>| value.map_err(|e| Error::corrupt(format!("{path}: bad tar header: {e}")));
    let mode = header.mode().map_err(|e| Error::corrupt(format!("{path}: bad tar header: {e}")))? & 0o7777;
    if mode != decl.mode {
        return Err(Error::mismatch(path, format!("declared mode {:o}, archived {mode:o}", decl.mode)));
    }
    let mtime = i64::try_from(field(header.mtime())?).unwrap_or(i64::MAX);
    let checks = [("uid", decl.uid, field(header.uid())?), ("gid", decl.gid, field(header.gid())?)];
    for (what, want, got) in checks {
        if want != got {
            return Err(Error::mismatch(path, format!("declared {what} {want}, archived {got}")));
        }
    }
    if mtime != decl.mtime {
        return Err(Error::mismatch(path, format!("declared mtime {}, archived {mtime}", decl.mtime)));
    }
    if kind == EntryKind::Symlink {
        let target = entry.link_name_bytes().unwrap_or_default();
        if Some(target.as_ref()) != decl.link_target.as_deref().map(str::as_bytes) {
            return Err(Error::mismatch(path, "symlink target differs"));
        }
    }
    Ok(())
}

fn check_trailer(
    trailer: &Checksums,
    declared: &[EntryMeta],
    digests: &[[u8; 32]],
    manifest_digest: &str,
    content_bytes: u64,
) -> Result<()> {
    if trailer.manifest != manifest_digest {
        return Err(Error::mismatch(MANIFEST_NAME, format!("digest differs from {CHECKSUMS_NAME}")));
    }
    let files = declared.iter().filter(|e| e.kind == EntryKind::File);
    for (entry, digest) in files.zip(digests) {
        match trailer.files.get(&entry.path) {
            Some(listed) if *listed == hex(digest) => {}
            Some(_) => {
                return Err(Error::mismatch(
                    &entry.path,
                    format!("content differs from its digest in {CHECKSUMS_NAME}"),
                ));
            }
            None => {
                return Err(Error::mismatch(&entry.path, format!("no digest in {CHECKSUMS_NAME}")));
            }
        }
    }
    if trailer.files.len() != digests.len() {
        let files: std::collections::HashSet<&str> =
            declared.iter().filter(|e| e.kind == EntryKind::File).map(|e| e.path.as_str()).collect();
        let extra = trailer.files.keys().find(|p| !files.contains(p.as_str()));
        return Err(Error::Undeclared { path: extra.cloned().unwrap_or_else(|| CHECKSUMS_NAME.to_owned()) });
    }
    if trailer.total_bytes != content_bytes {
        let detail = format!("total_bytes {} but the files hold {content_bytes}", trailer.total_bytes);
        return Err(Error::mismatch(CHECKSUMS_NAME, detail));
    }
    Ok(())
}

/// Entry path as a string: GNU long names resolved, the trailing `/` of directories removed.
fn entry_name<R: Read>(entry: &tar::Entry<'_, R>) -> String {
    let bytes = entry.path_bytes();
    let bytes = bytes.strip_suffix(b"/").unwrap_or(&bytes);
    String::from_utf8_lossy(bytes).into_owned()
}

fn is_regular<R: Read>(entry: &tar::Entry<'_, R>) -> bool {
    entry.header().entry_type().is_file()
}

/// Errors while reading the archive file are I/O errors; anything else surfacing from the
/// decompressor or the tar parser means the content is damaged.
fn read_error(path: &Path) -> impl Fn(io::Error) -> Error + '_ {
    move |err| {
        if is_raw_read_error(&err) {
            Error::Io { path: path.to_path_buf(), source: err }
        } else {
            Error::corrupt(format!("{err} (the file is truncated or damaged)"))
        }
    }
}
