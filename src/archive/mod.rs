//! The archive format: one tar stream (optionally zstd- or gzip-compressed) that starts with
//! `manifest.json`, holds every declared entry in order and ends with `checksums.json`.

pub(crate) mod binfmt;
mod codec;
mod extract;
mod host;
pub(crate) mod listing;
pub mod manifest;
mod reader;
mod repack;
mod scan;
pub mod seal;
mod tarfmt;
mod walk;
mod writer;

use std::fmt;
use std::io;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use extract::{ExtractReport, Target, check_extractable, extract, verify_extractable};
pub(crate) use host::HostTree;
pub use listing::{Entries, Item, Listing, ListingBuilder, ListingIter, SPILL_AFTER, SPILL_PREFIX};
pub use manifest::{Checksums, EntryKind, EntryMeta, FORMAT_VERSION, Manifest, Skipped};
pub use reader::{VerifyReport, file_sha256, read_dump, read_entries, read_manifest, verify};
pub use repack::repack;
pub use scan::{
    ScanOpts, ScanResult, Stamp, count_host, scan_host, scan_host_stamped, scan_host_with, scan_tar_stream,
    scan_tar_stream_in,
};
pub(crate) use walk::{OPEN_LEVELS, SortedDir};
pub use writer::{ArchiveWriter, DUMP_PART_BYTES, WriteOptions, WriteSummary};

/// Size of the buffers used to copy entry content. Large copies keep the per-syscall and
/// per-call overhead negligible next to hashing and compression.
pub(crate) const BUF_SIZE: usize = 1 << 20;

/// How the tar stream is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Zstd,
    Gzip,
    None,
}

impl Compression {
    /// File extension of an archive with this compression (without the leading dot).
    pub fn extension(self) -> &'static str {
        match self {
            Self::Zstd => "tar.zst",
            Self::Gzip => "tar.gz",
            Self::None => "tar",
        }
    }

    /// Name recorded in the manifest and accepted by [`FromStr`].
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Zstd => "zstd",
            Self::Gzip => "gzip",
            Self::None => "none",
        }
    }

    /// zstd 1: on the benchmark's mixed data (scripts/bench) it is ~30% faster than level 3 at
    /// the same size, and the archive phase is the services' downtime.
    pub fn default_level(self) -> i32 {
        match self {
            Self::Zstd => 1,
            Self::Gzip => 6,
            Self::None => 0,
        }
    }

    /// Levels accepted by [`ArchiveWriter::new`]. zstd stops at 19: the "ultra" levels above
    /// need hundreds of MiB of window memory per worker.
    pub fn level_range(self) -> RangeInclusive<i32> {
        match self {
            Self::Zstd => 1..=19,
            Self::Gzip => 0..=9,
            Self::None => 0..=0,
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A compression name that is none of `zstd`, `zst`, `gzip`, `gz`, `none`.
#[derive(Debug, thiserror::Error)]
#[error("unknown compression {0:?} (expected zstd, gzip or none)")]
pub struct UnknownCompression(pub String);

impl FromStr for Compression {
    type Err = UnknownCompression;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "zstd" | "zst" => Ok(Self::Zstd),
            "gzip" | "gz" => Ok(Self::Gzip),
            "none" => Ok(Self::None),
            _ => Err(UnknownCompression(s.to_owned())),
        }
    }
}

/// Tells the compression of an archive from its first bytes (4 are enough).
pub fn detect_compression(first_bytes: &[u8]) -> Compression {
    if first_bytes.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]) {
        Compression::Zstd
    } else if first_bytes.starts_with(&[0x1F, 0x8B]) {
        Compression::Gzip
    } else {
        Compression::None
    }
}

/// Errors of the archive engine. I/O errors always name the file or entry they concern.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading a file, directory or input stream failed.
    #[error("I/O error on {}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// Writing the archive to its destination failed.
    #[error("cannot write the archive")]
    Output(#[source] io::Error),
    #[error("cancelled")]
    Cancelled,
    /// The source changed between the scan and the moment its data was read.
    #[error("{} changed while it was being archived: {detail}", path.display())]
    Changed { path: PathBuf, detail: String },
    /// Not a nuwax archive, or damaged: bad tar, bad compression, truncated.
    #[error("not a valid nuwax archive: {detail}")]
    Corrupt { detail: String },
    /// An entry that the manifest does not declare at this position.
    #[error("entry {path} is not declared in the manifest at this position")]
    Undeclared { path: String },
    /// An entry whose kind, size, metadata or content differs from what was declared.
    #[error("entry {path} does not match what the archive declares: {detail}")]
    Mismatch { path: String, detail: String },
    #[error("{count} declared entries are missing from the archive, the first is {first}")]
    MissingEntries { count: u64, first: String },
    /// The whole archive file does not have the expected digest.
    #[error("archive checksum mismatch: expected {expected}, found {actual}")]
    ChecksumMismatch { expected: String, actual: String },
    /// An entry extraction will not write: an unsafe name, a kind other than file, directory or
    /// symlink, a symlink leaving its destination, a parent that is not an extracted directory.
    #[error("refusing to extract {path}: {reason}")]
    Refused { path: String, reason: String },
    /// An age-encrypted archive that none of the identities this process holds opens.
    #[error(
        "{} is encrypted (age) and {} opens it: give nuwax the identity (identity_file in nuwax.toml, or --identity PATH)",
        path.display(),
        if *identities == 0 { "no identity was given that".to_string() } else { format!("none of the {identities} identities given") }
    )]
    Encrypted { path: PathBuf, identities: usize },
    #[error("archive format version {found} is newer than this nuwax supports ({supported})")]
    UnsupportedFormat { found: u32, supported: u32 },
    /// The API was used out of order or with arguments it cannot honour (a bug in the caller).
    #[error("invalid use of the archive engine: {0}")]
    Usage(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    pub(crate) fn changed(path: impl Into<PathBuf>, detail: impl Into<String>) -> Error {
        Error::Changed { path: path.into(), detail: detail.into() }
    }

    pub(crate) fn corrupt(detail: impl Into<String>) -> Error {
        Error::Corrupt { detail: detail.into() }
    }

    pub(crate) fn mismatch(path: &str, detail: impl Into<String>) -> Error {
        Error::Mismatch { path: path.to_owned(), detail: detail.into() }
    }

    pub(crate) fn refused(path: &str, reason: impl Into<String>) -> Error {
        Error::Refused { path: path.to_owned(), reason: reason.into() }
    }
}

/// Cooperative cancellation, checked between entries and at least every 1 MiB copied.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// Clears a cancellation, for work that must run after it (a rollback after an interrupt).
    pub fn reset(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn check(&self) -> Result<()> {
        if self.is_cancelled() { Err(Error::Cancelled) } else { Ok(()) }
    }
}

/// Progress sink, fed with the number of bytes of entry content processed.
pub trait Progress: Send + Sync {
    fn set_total(&self, _bytes: u64) {}
    fn inc(&self, bytes: u64);
    /// The entry (an archive path) or dump being read or written now.
    fn item(&self, _name: &str) {}
}

/// A [`Progress`] that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn inc(&self, _bytes: u64) {}
}

/// Lower-case hex of a digest.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Why `path` is not a safe archive path (relative, `/`-separated, no empty, `.` or `..`
/// component), if it is not. Extraction relies on this, so the writer refuses anything else.
pub(crate) fn archive_path_problem(path: &str) -> Option<&'static str> {
    if path.contains('\0') {
        Some("contains a NUL byte")
    } else if path.starts_with('/') {
        Some("is an absolute path")
    } else if path.split('/').any(|c| c == "..") {
        Some("has a `..` component")
    } else if path.split('/').any(|c| c.is_empty() || c == ".") {
        Some("has an empty or `.` component")
    } else {
        None
    }
}

pub(crate) fn check_archive_path(path: &str) -> Result<()> {
    match archive_path_problem(path) {
        Some(problem) => Err(Error::Usage(format!("invalid archive path {path:?}: {problem}"))),
        None => Ok(()),
    }
}
