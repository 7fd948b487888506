//! Safe unpacking of package archives (tar, tar.gz, tar.zst, zip) into a fresh directory.
//!
//! Only regular files and directories are written. Every name is checked before anything is
//! written for it, no link is ever created, and files are created exclusively, so nothing can
//! land outside the destination.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::archive::Cancel;

use super::{Error, Result, check_cancel, rel_path_problem};

/// Unpacked content larger than this is refused: no sane package is that big, a zip bomb is.
pub(crate) const MAX_UNPACKED: u64 = 64 << 30;

const CHUNK: usize = 1 << 20;

/// The container format of a package file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Tar,
    TarGz,
    TarZst,
    Zip,
}

impl Format {
    /// The format of `path`, from its name, else from its first bytes.
    pub(crate) fn detect(path: &Path) -> Result<Option<Format>> {
        if let Some(format) = Self::from_name(&path.to_string_lossy()) {
            return Ok(Some(format));
        }
        let mut head = [0u8; 512];
        let mut file = File::open(path).map_err(Error::io(path))?;
        let n = crate::fsutil::read_full(&mut file, &mut head).map_err(Error::io(path))?;
        let head = &head[..n];
        Ok(if head.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]) {
            Some(Format::TarZst)
        } else if head.starts_with(&[0x1F, 0x8B]) {
            Some(Format::TarGz)
        } else if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
            Some(Format::Zip)
        } else if head.len() >= 262 && &head[257..262] == b"ustar" {
            Some(Format::Tar)
        } else {
            None
        })
    }

    /// The format a file name's extension calls for.
    pub(crate) fn from_name(name: &str) -> Option<Format> {
        let name = name.to_ascii_lowercase();
        [
            (".tar.gz", Format::TarGz),
            (".tgz", Format::TarGz),
            (".tar.zst", Format::TarZst),
            (".tzst", Format::TarZst),
            (".zip", Format::Zip),
            (".tar", Format::Tar),
        ]
        .into_iter()
        .find_map(|(ext, format)| name.ends_with(ext).then_some(format))
    }
}

/// Unpacks `archive` into the existing, empty directory `dest`.
pub(crate) fn unpack(archive: &Path, format: Format, dest: &Path, cancel: &Cancel) -> Result<()> {
    let file = File::open(archive).map_err(Error::io(archive))?;
    let reader = BufReader::with_capacity(CHUNK, file);
    let mut budget = MAX_UNPACKED;
    match format {
        Format::Tar => unpack_tar(archive, reader, dest, cancel, &mut budget),
        Format::TarGz => {
            unpack_tar(archive, flate2::bufread::GzDecoder::new(reader), dest, cancel, &mut budget)
        }
        Format::TarZst => {
            let decoder = zstd::stream::read::Decoder::with_buffer(reader).map_err(Error::io(archive))?;
            unpack_tar(archive, decoder, dest, cancel, &mut budget)
        }
        Format::Zip => unpack_zip(archive, reader, dest, cancel, &mut budget),
    }
}

/// The checked, normalised form of an archive entry name (`./a/b/` → `a/b`); `None` for the
/// archive root itself.
fn entry_name(raw: &[u8]) -> Result<Option<String>> {
    let shown = String::from_utf8_lossy(raw).into_owned();
    let Ok(name) = std::str::from_utf8(raw) else {
        return Err(Error::unsafe_entry(&shown, "its name is not UTF-8"));
    };
    let mut name = name.trim_end_matches('/');
    while let Some(rest) = name.strip_prefix("./") {
        name = rest.trim_start_matches('/');
    }
    if name.is_empty() || name == "." {
        return if raw.starts_with(b"/") {
            Err(Error::unsafe_entry(&shown, "is an absolute path"))
        } else {
            Ok(None)
        };
    }
    match rel_path_problem(name) {
        Some(why) => Err(Error::unsafe_entry(&shown, why)),
        None => Ok(Some(name.to_owned())),
    }
}

fn corrupt(archive: &Path, e: impl std::fmt::Display) -> Error {
    Error::invalid(archive, format!("cannot read the archive: {e}"))
}

fn unpack_tar(
    archive: &Path,
    reader: impl Read,
    dest: &Path,
    cancel: &Cancel,
    budget: &mut u64,
) -> Result<()> {
    let mut tar = tar::Archive::new(reader);
    for entry in tar.entries().map_err(|e| corrupt(archive, e))? {
        check_cancel(cancel)?;
        let mut entry = entry.map_err(|e| corrupt(archive, e))?;
        let raw = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        let name = match entry_name(&raw)? {
            Some(name) => name,
            None if kind.is_dir() => continue,
            None => return Err(Error::unsafe_entry("/", "is not a directory")),
        };
        use tar::EntryType as T;
        match kind {
            T::Directory => make_dir(dest, &name)?,
            T::Regular | T::Continuous => {
                let mode = entry.header().mode().unwrap_or(0o644);
                write_file(dest, &name, mode, &mut entry, cancel, budget)?;
            }
            // pax global headers (`git archive` writes one) carry no file.
            T::XGlobalHeader => {}
            other => return Err(Error::unsafe_entry(&name, refusal(kind_name(other)))),
        }
    }
    Ok(())
}

fn kind_name(kind: tar::EntryType) -> &'static str {
    use tar::EntryType as T;
    match kind {
        T::Symlink => "a symlink",
        T::Link => "a hard link",
        T::Char | T::Block => "a device node",
        T::Fifo => "a FIFO",
        _ => "an unsupported entry type",
    }
}

fn refusal(kind: &str) -> String {
    format!("it is {kind}; packages may hold only regular files and directories")
}

fn unpack_zip(
    archive: &Path,
    reader: impl Read + Seek,
    dest: &Path,
    cancel: &Cancel,
    budget: &mut u64,
) -> Result<()> {
    let mut zip = zip::ZipArchive::new(reader).map_err(|e| corrupt(archive, e))?;
    // The central directory lists everything up front: refuse a hostile archive before
    // writing any of it.
    let mut plan = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let file = zip.by_index_raw(i).map_err(|e| corrupt(archive, e))?;
        let name = entry_name(file.name_raw())?;
        let fmt = file.unix_mode().map(|m| m & 0o170_000);
        let is_dir = file.is_dir();
        let shown = name.clone().unwrap_or_else(|| "/".into());
        match fmt {
            None | Some(0) | Some(0o100_000) | Some(0o040_000) => {}
            Some(0o120_000) => return Err(Error::unsafe_entry(&shown, refusal("a symlink"))),
            Some(0o010_000) => return Err(Error::unsafe_entry(&shown, refusal("a FIFO"))),
            Some(0o020_000 | 0o060_000) => {
                return Err(Error::unsafe_entry(&shown, refusal("a device node")));
            }
            Some(_) => return Err(Error::unsafe_entry(&shown, refusal("an unsupported entry type"))),
        }
        if name.is_none() && !is_dir {
            return Err(Error::unsafe_entry("/", "is not a directory"));
        }
        let mode = file.unix_mode().map_or(0o644, |m| m & 0o7777);
        plan.push((name, is_dir || fmt == Some(0o040_000), mode));
    }
    for (i, (name, is_dir, mode)) in plan.into_iter().enumerate() {
        check_cancel(cancel)?;
        let Some(name) = name else { continue };
        if is_dir {
            make_dir(dest, &name)?;
        } else {
            let mut file = zip.by_index(i).map_err(|e| corrupt(archive, e))?;
            write_file(dest, &name, mode, &mut file, cancel, budget)?;
        }
    }
    Ok(())
}

fn make_dir(dest: &Path, name: &str) -> Result<()> {
    let path = dest.join(name);
    fs::create_dir_all(&path).map_err(Error::io(&path))
}

/// Writes `content` to the new file `dest/name`, creating its parents.
fn write_file(
    dest: &Path,
    name: &str,
    mode: u32,
    content: &mut impl Read,
    cancel: &Cancel,
    budget: &mut u64,
) -> Result<()> {
    let path = dest.join(name);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(Error::io(parent))?;
    }
    let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
    let mut out = match fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&path) {
        Ok(out) => out,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(Error::unsafe_entry(name, "it appears twice in the archive"));
        }
        Err(e) => return Err(Error::io(&path)(e)),
    };
    let mut buf = vec![0u8; CHUNK];
    loop {
        check_cancel(cancel)?;
        let n = match content.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::invalid(dest, format!("cannot read entry {name} of the archive: {e}")));
            }
        };
        let n64 = n as u64;
        if n64 > *budget {
            return Err(Error::unsafe_entry(
                name,
                format!("the package unpacks to more than {} GiB", MAX_UNPACKED >> 30),
            ));
        }
        *budget -= n64;
        out.write_all(&buf[..n]).map_err(Error::io(&path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(entry_name(b"./pkg/a.txt").unwrap().as_deref(), Some("pkg/a.txt"));
        assert_eq!(entry_name(b"pkg/").unwrap().as_deref(), Some("pkg"));
        assert_eq!(entry_name(b"./").unwrap(), None);
        for bad in [&b"../x"[..], b"/etc/passwd", b"a/../../x", b"a//b", b"/", b"a\\..\\b"] {
            assert!(matches!(entry_name(bad), Err(Error::Unsafe { .. })), "{:?}", bad);
        }
    }

    #[test]
    fn formats_by_name() {
        assert_eq!(Format::from_name("x/P.TAR.ZST"), Some(Format::TarZst));
        assert_eq!(Format::from_name("p.tgz"), Some(Format::TarGz));
        assert_eq!(Format::from_name("p.zip"), Some(Format::Zip));
        assert_eq!(Format::from_name("p.bin"), None);
    }
}
