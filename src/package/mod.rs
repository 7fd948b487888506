//! Upgrade packages: a directory, archive or URL holding `nuwax-package.toml` and the files it
//! names. This module opens, checks and builds them; it never talks to Docker.
//!
//! [`open`] accepts a directory, a `.tar.gz` / `.tar.zst` / `.zip` of one, or an `http(s)://`
//! URL of such a file, checks the published sha256 before reading anything else, unpacks into a
//! private temporary directory and validates the manifest. [`build`] does the reverse.

mod build;
mod env;
mod fetch;
mod manifest;
mod open;
mod unpack;
mod version;

use std::io;
use std::path::{Path, PathBuf};

pub use build::{Built, build, image_refs};
pub use env::apply_env;
pub use manifest::{EnvChanges, FileEntry, Hook, PackageManifest, Probe, When};
pub use open::{OpenOptions, open};
pub use version::{Version, VersionError};

/// File name of the manifest at the package root.
pub const MANIFEST_FILE: &str = "nuwax-package.toml";

/// Prefix of the temporary directories packages are unpacked into, below
/// [`OpenOptions::work_dir`]. They are removed when the [`Package`] is dropped.
pub const UNPACK_PREFIX: &str = ".nuwax-pkg-";

/// A package that was opened, checked and validated.
#[derive(Debug)]
pub struct Package {
    /// The directory holding `nuwax-package.toml`; every path in the manifest is relative to it.
    pub root: PathBuf,
    pub manifest: PackageManifest,
    /// sha256 of the package file (archive or download); `None` for a directory.
    pub sha256: Option<String>,
    /// What the user passed: a path or a URL.
    pub source: String,
    version: Version,
    /// Keeps the unpacked copy alive as long as the package.
    _unpacked: Option<tempfile::TempDir>,
}

impl Package {
    /// `rel` (a manifest path) below the package root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// The unpacked copy below the storage dir (`.nuwax-pkg-*`), removed when the package is
    /// dropped; `None` for a directory package.
    pub fn unpacked(&self) -> Option<&std::path::Path> {
        self._unpacked.as_ref().map(|t| t.path())
    }

    /// The version the package upgrades to.
    pub fn version(&self) -> Version {
        self.version.clone()
    }

    /// The lowest version the package upgrades from, if it says.
    pub fn min_from(&self) -> Option<Version> {
        self.manifest.min_from.as_deref().and_then(|v| v.parse().ok())
    }

    /// The `docker save` archives to load, in manifest order.
    pub fn image_archives(&self) -> Vec<PathBuf> {
        self.manifest.images.iter().map(|rel| self.path(rel)).collect()
    }
}

/// Errors of opening, checking and building packages. Each names the file, entry or URL and
/// says what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(
        "checksum mismatch for {source_name}: expected sha256 {expected}, got {actual}; the file \
         is damaged or not the published one: download it again or check the expected checksum"
    )]
    Checksum { source_name: String, expected: String, actual: String },
    #[error("package {} is invalid:\n  - {}", path.display(), problems.join("\n  - "))]
    Invalid { path: PathBuf, problems: Vec<String> },
    #[error(
        "refusing to unpack package entry {entry:?}: {reason}; a package may hold only regular \
         files and directories below its root: rebuild it with `nuwax package build`"
    )]
    Unsafe { entry: String, reason: String },
    #[error("cannot download {url}: {detail}")]
    Download { url: String, detail: String },
    #[error(
        "{source_name} is not a package: pass a directory, a .tar.gz, .tar.zst or .zip file, or \
         an http(s):// URL of one"
    )]
    Unsupported { source_name: String },
    #[error("I/O error on {}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("cancelled")]
    Cancelled,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    pub(crate) fn invalid(path: &Path, problem: impl Into<String>) -> Error {
        Error::Invalid { path: path.to_owned(), problems: vec![problem.into()] }
    }

    pub(crate) fn unsafe_entry(entry: &str, reason: impl Into<String>) -> Error {
        Error::Unsafe { entry: entry.to_owned(), reason: reason.into() }
    }
}

fn check_cancel(cancel: &crate::archive::Cancel) -> Result<()> {
    if cancel.is_cancelled() { Err(Error::Cancelled) } else { Ok(()) }
}

/// Why `rel` is not a safe relative path inside a package or project (`/`-separated, no empty,
/// `.` or `..` component, not absolute), if it is not.
pub(crate) fn rel_path_problem(rel: &str) -> Option<&'static str> {
    if rel.is_empty() {
        Some("is empty")
    } else if rel.contains('\\') {
        Some("contains a backslash (use `/`)")
    } else {
        crate::archive::archive_path_problem(rel)
    }
}

/// `hex` if it is a sha256 in hex (any case), lower-cased.
pub(crate) fn normalize_sha256(hex: &str) -> Option<String> {
    let hex = hex.trim();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| hex.to_ascii_lowercase())
}
