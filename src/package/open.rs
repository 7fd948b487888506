//! Opening a package: classify the source, check the published sha256 before reading anything
//! else, unpack into a private temporary directory, find the root and validate the manifest.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::fetch::{fetch, is_url};
use super::unpack::{Format, unpack};
use super::{
    Error, MANIFEST_FILE, Package, PackageManifest, Result, UNPACK_PREFIX, Version, check_cancel,
    normalize_sha256,
};
use crate::archive::{Cancel, Progress, hex};

/// How to open a package.
pub struct OpenOptions<'a> {
    /// The expected sha256 (from `--sha256`); overrides any sidecar file.
    pub sha256: Option<String>,
    /// Downloads (`downloads/`) and unpacked copies (`.nuwax-pkg-*`) go below it.
    pub work_dir: PathBuf,
    /// Fed with the bytes of the package file downloaded or hashed.
    pub progress: &'a dyn Progress,
    pub cancel: &'a Cancel,
}

/// Opens, checks and validates the package at `source`: a directory, an archive file or an
/// `http(s)://` URL of one. Blocking: call it from `spawn_blocking` in async code.
pub fn open(source: &str, opts: &OpenOptions<'_>) -> Result<Package> {
    let given = match opts.sha256.as_deref() {
        None => None,
        Some(s) => Some(normalize_sha256(s).ok_or_else(|| {
            Error::invalid(
                Path::new(source),
                format!("the expected sha256 {s:?} is not 64 hexadecimal digits"),
            )
        })?),
    };
    if is_url(source) {
        let fetched = fetch(source, given, opts)?;
        return open_file(source, &fetched.path, fetched.sha256, opts);
    }
    if source.contains("://") {
        return Err(Error::Unsupported { source_name: source.to_owned() });
    }
    let path = Path::new(source);
    let meta = fs::metadata(path).map_err(Error::io(path))?;
    if meta.is_dir() {
        if given.is_some() {
            return Err(Error::invalid(
                path,
                "a checksum was given, but a directory package has none: pass the package file \
                 instead, or drop --sha256",
            ));
        }
        return load(source, path.to_owned(), None, None);
    }
    if !meta.is_file() {
        return Err(Error::Unsupported { source_name: source.to_owned() });
    }
    let expected = match given {
        Some(given) => Some(given),
        None => sidecar_sha256(path)?,
    };
    let actual = file_sha256(path, opts)?;
    match expected {
        Some(expected) if expected != actual => {
            return Err(Error::Checksum { source_name: source.to_owned(), expected, actual });
        }
        Some(_) => {}
        None => tracing::warn!(
            "no sha256 was published for {source} (no {source}.sha256, no --sha256): not verified"
        ),
    }
    open_file(source, path, actual, opts)
}

/// Unpacks the checked package file `path` and loads it.
fn open_file(source: &str, path: &Path, sha256: String, opts: &OpenOptions<'_>) -> Result<Package> {
    let Some(format) = Format::detect(path)? else {
        return Err(Error::Unsupported { source_name: source.to_owned() });
    };
    fs::create_dir_all(&opts.work_dir).map_err(Error::io(&opts.work_dir))?;
    let tmp = tempfile::Builder::new()
        .prefix(UNPACK_PREFIX)
        .tempdir_in(&opts.work_dir)
        .map_err(Error::io(&opts.work_dir))?;
    unpack(path, format, tmp.path(), opts.cancel)?;
    let root = find_root(tmp.path()).ok_or_else(|| {
        Error::invalid(
            path,
            format!(
                "no {MANIFEST_FILE} at the root of the archive or inside its single top-level \
                 directory"
            ),
        )
    })?;
    load(source, root, Some(sha256), Some(tmp))
}

/// The directory holding the manifest: the unpacked root, or its only top-level directory.
fn find_root(dir: &Path) -> Option<PathBuf> {
    if dir.join(MANIFEST_FILE).is_file() {
        return Some(dir.to_owned());
    }
    let mut dirs = fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        // macOS's zip tool adds resource forks next to the real content.
        .filter(|e| e.file_name() != "__MACOSX")
        .map(|e| e.path());
    let only = dirs.next()?;
    (dirs.next().is_none() && only.is_dir() && only.join(MANIFEST_FILE).is_file()).then_some(only)
}

fn load(
    source: &str,
    root: PathBuf,
    sha256: Option<String>,
    unpacked: Option<tempfile::TempDir>,
) -> Result<Package> {
    let manifest = PackageManifest::load(&root)?;
    let version: Version = manifest.version.parse().map_err(|e| Error::invalid(&root, format!("{e}")))?;
    Ok(Package { root, manifest, sha256, source: source.to_owned(), version, _unpacked: unpacked })
}

/// The checksum in `<file>.sha256`, if that file exists.
fn sidecar_sha256(path: &Path) -> Result<Option<String>> {
    let mut sidecar = path.as_os_str().to_owned();
    sidecar.push(".sha256");
    let sidecar = PathBuf::from(sidecar);
    let text = match fs::read_to_string(&sidecar) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&sidecar)(e)),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match parse_sidecar(&text, &name) {
        Some(sha) => Ok(Some(sha)),
        None => Err(Error::invalid(
            &sidecar,
            format!("not in sha256sum format (`<64 hex digits>  {name}`): fix or delete it"),
        )),
    }
}

/// The checksum for `name` in sha256sum output (`<hex>  <name>`, `<hex> *<name>`), or a lone
/// hex digest. With several lines, the one naming `name` wins.
pub(crate) fn parse_sidecar(text: &str, name: &str) -> Option<String> {
    let lines: Vec<(&str, &str)> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once(char::is_whitespace) {
            Some((hash, rest)) => (hash, rest.trim_start().trim_start_matches('*')),
            None => (l, ""),
        })
        .collect();
    let pick = match lines.as_slice() {
        [only] => only.0,
        many => many.iter().find(|(_, n)| Path::new(n).file_name().is_some_and(|f| f == name))?.0,
    };
    normalize_sha256(pick)
}

/// sha256 of a file, reporting progress and honouring cancellation.
pub(crate) fn file_sha256(path: &Path, opts: &OpenOptions<'_>) -> Result<String> {
    let mut file = File::open(path).map_err(Error::io(path))?;
    if let Ok(meta) = file.metadata() {
        opts.progress.set_total(meta.len());
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        check_cancel(opts.cancel)?;
        match file.read(&mut buf) {
            Ok(0) => return Ok(hex(&hasher.finalize())),
            Ok(n) => {
                hasher.update(&buf[..n]);
                opts.progress.inc(n as u64);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn sidecar_formats() {
        assert_eq!(parse_sidecar(&format!("{H}  p.tar.zst\n"), "p.tar.zst").as_deref(), Some(H));
        assert_eq!(parse_sidecar(&format!("{}\n", H.to_uppercase()), "x").as_deref(), Some(H));
        assert_eq!(parse_sidecar(&format!("{H} *p.zip"), "p.zip").as_deref(), Some(H));
        let many = format!("{}  a.zip\n{H}  dir/p.zip\n", "0".repeat(64));
        assert_eq!(parse_sidecar(&many, "p.zip").as_deref(), Some(H));
        assert_eq!(parse_sidecar("nonsense  p.zip", "p.zip"), None);
        assert_eq!(parse_sidecar("", "p.zip"), None);
    }
}
