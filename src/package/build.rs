//! Building a package file from a package directory, and reading the image names out of the
//! `docker save` archives a package carries.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::unpack::Format;
use super::{Error, MANIFEST_FILE, PackageManifest, Result};
use crate::archive::hex;

/// A package file written by [`build`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Built {
    pub path: PathBuf,
    pub sha256: String,
    /// Bytes.
    pub size: u64,
}

/// Validates the package directory `dir` and writes it to `out` as a `.tar.zst` or `.tar.gz`
/// (by `out`'s extension), plus `<out>.sha256` in sha256sum format.
///
/// The archive holds one top-level directory `<name>-<version>/` with the manifest and the
/// files it names (symlinks inside the package are stored as the files they point to); other
/// files in `dir` are left out. `out` appears only once complete.
pub fn build(dir: &Path, out: &Path) -> Result<Built> {
    let format = Format::from_name(&out.to_string_lossy());
    if !matches!(format, Some(Format::TarZst | Format::TarGz)) {
        return Err(Error::invalid(out, "the output name must end in .tar.zst or .tar.gz"));
    }
    let manifest = PackageManifest::load(dir)?;
    let top = format!("{}-{}", safe_component(&manifest.name), safe_component(&manifest.version));
    let mut files = vec![MANIFEST_FILE.to_owned()];
    let mut seen = BTreeSet::new();
    for rel in manifest.files.iter().map(|f| &f.src).chain(&manifest.images) {
        if seen.insert(rel.as_str()) && rel != MANIFEST_FILE {
            files.push(rel.clone());
        }
    }

    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp =
        tempfile::Builder::new().prefix(".nuwax-build-").tempfile_in(parent).map_err(Error::io(parent))?;
    let file = tmp.as_file().try_clone().map_err(Error::io(tmp.path()))?;
    let hashing =
        HashingWriter { inner: BufWriter::with_capacity(1 << 20, file), hasher: Sha256::new(), size: 0 };
    let HashingWriter { mut inner, hasher, size } = if format == Some(Format::TarZst) {
        let mut encoder = zstd::stream::write::Encoder::new(hashing, 3).map_err(Error::io(out))?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
        // Multithreading is best effort: a zstd built without it still writes a valid archive.
        let _ = encoder.multithread(u32::try_from(threads).unwrap_or(1));
        let encoder = write_tar(encoder, dir, &top, &files, out)?;
        encoder.finish().map_err(Error::io(out))?
    } else {
        let encoder = flate2::write::GzEncoder::new(hashing, flate2::Compression::default());
        let encoder = write_tar(encoder, dir, &top, &files, out)?;
        encoder.finish().map_err(Error::io(out))?
    };
    inner.flush().map_err(Error::io(out))?;
    drop(inner);
    tmp.as_file().sync_all().map_err(Error::io(out))?;
    tmp.persist(out).map_err(|e| Error::io(out)(e.error))?;
    fs::set_permissions(out, fs::Permissions::from_mode(0o644)).map_err(Error::io(out))?;

    let sha256 = hex(&hasher.finalize());
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut sidecar = out.as_os_str().to_owned();
    sidecar.push(".sha256");
    let sidecar = PathBuf::from(sidecar);
    fs::write(&sidecar, format!("{sha256}  {name}\n")).map_err(Error::io(&sidecar))?;
    Ok(Built { path: out.to_owned(), sha256, size })
}

/// `s` with anything but letters, digits, `.`, `_`, `-` replaced, for the top-level directory.
fn safe_component(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect()
}

fn write_tar<W: Write>(w: W, dir: &Path, top: &str, files: &[String], out: &Path) -> Result<W> {
    let mut tar = tar::Builder::new(w);
    let mut dirs = BTreeSet::new();
    for rel in files {
        let full = format!("{top}/{rel}");
        // Directory entries first, so any tar tool recreates the tree with sane modes.
        let mut at = 0;
        while let Some(i) = full[at..].find('/') {
            let d = &full[..at + i];
            if dirs.insert(d.to_owned()) {
                let mut header = header(tar::EntryType::Directory, 0o755, 0);
                header.set_path(d).map_err(Error::io(dir.join(rel)))?;
                header.set_cksum();
                tar.append(&header, io::empty()).map_err(Error::io(out))?;
            }
            at += i + 1;
        }
        let src = dir.join(rel);
        let file = File::open(&src).map_err(Error::io(&src))?;
        let meta = file.metadata().map_err(Error::io(&src))?;
        let mode = if meta.permissions().mode() & 0o111 != 0 { 0o755 } else { 0o644 };
        let mut header = header(tar::EntryType::Regular, mode, meta.len());
        header.set_mtime(
            meta.modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs()),
        );
        // append_data writes a GNU long-name entry when the path needs one.
        let reader = BufReader::with_capacity(1 << 20, file).take(meta.len());
        tar.append_data(&mut header, &full, reader).map_err(Error::io(&src))?;
    }
    tar.into_inner().map_err(Error::io(out))
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The image names (`RepoTags`) in the `manifest.json` of a `docker save` archive, in order.
pub fn image_refs(docker_save_tar: &Path) -> Result<Vec<String>> {
    let path = docker_save_tar;
    let file = File::open(path).map_err(Error::io(path))?;
    let mut tar = tar::Archive::new(file);
    let bad = |detail: String| Error::invalid(path, detail);
    let entries = tar.entries_with_seek().map_err(|e| bad(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("not a tar archive: {e}")))?;
        let name = entry.path_bytes();
        if name.as_ref() != b"manifest.json" && name.as_ref() != b"./manifest.json" {
            continue;
        }
        let mut text = String::new();
        entry.read_to_string(&mut text).map_err(Error::io(path))?;
        let items: Vec<SaveManifestItem> = serde_json::from_str(&text)
            .map_err(|e| bad(format!("manifest.json is not a `docker save` manifest: {e}")))?;
        return Ok(items.into_iter().flat_map(|i| i.repo_tags.unwrap_or_default()).collect());
    }
    Err(bad("no manifest.json inside: not a `docker save` archive".into()))
}

#[derive(serde::Deserialize)]
struct SaveManifestItem {
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
}
