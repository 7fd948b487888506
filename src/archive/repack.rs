//! One archive prefix as a plain tar of its own, for restores the engine performs: a volume
//! this host cannot reach is filled through the engine's archive API from this tar.

use std::io::Write;
use std::path::Path;

use super::extract::locate_in;
use super::manifest::{EntryKind, EntryMeta};
use super::reader::{Visitor, walk};
use super::{Cancel, Error, ExtractReport, Progress, Result, check_archive_path, tarfmt};

/// Verifies `archive` in one pass (as [`verify`](super::verify)) and writes the entries under
/// `prefix` to `out` as a tar whose top entry is `root` (the prefix entry renamed) and whose
/// other entries are `root/<path below the prefix>`, with the archived owners, modes, mtimes and
/// symlinks. `out` holds a complete tar only when this returns `Ok`.
pub fn repack(
    archive: &Path,
    prefix: &str,
    root: &str,
    out: &mut dyn Write,
    cancel: &Cancel,
    progress: &dyn Progress,
) -> Result<ExtractReport> {
    check_archive_path(prefix)?;
    check_archive_path(root)?;
    let mut r = Repacker { prefix, root, out, current: None, report: ExtractReport::default() };
    walk(archive, cancel, progress, &mut r)?;
    // End of archive: two zero blocks.
    r.out.write_all(&[0u8; 1024]).map_err(Error::io(Path::new("<restore tar>")))?;
    Ok(r.report)
}

struct Repacker<'a> {
    prefix: &'a str,
    root: &'a str,
    out: &'a mut dyn Write,
    /// The entry being copied, when it is under the prefix.
    current: Option<EntryMeta>,
    report: ExtractReport,
}

impl Repacker<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).map_err(Error::io(Path::new("<restore tar>")))
    }
}

impl Visitor for Repacker<'_> {
    fn start(&mut self, decl: &EntryMeta) -> Result<()> {
        let Some(rel) = locate_in(&decl.path, self.prefix) else {
            self.current = None;
            return Ok(());
        };
        let path = if rel.is_empty() { self.root.to_string() } else { format!("{}/{rel}", self.root) };
        let meta = EntryMeta { path, ..decl.clone() };
        let mut header = Vec::with_capacity(512);
        tarfmt::write_header(&mut header, &meta).map_err(Error::io(Path::new("<restore tar>")))?;
        self.write(&header)?;
        self.report.entries += 1;
        self.current = Some(meta);
        Ok(())
    }

    fn content(&mut self, chunk: &[u8]) -> Result<()> {
        if self.current.is_some() {
            self.write(chunk)?;
            self.report.bytes += chunk.len() as u64;
        }
        Ok(())
    }

    fn end(&mut self, _decl: &EntryMeta) -> Result<()> {
        if let Some(meta) = self.current.take().filter(|m| m.kind == EntryKind::File) {
            let mut padding = Vec::new();
            tarfmt::pad(&mut padding, meta.size).map_err(Error::io(Path::new("<restore tar>")))?;
            self.write(&padding)?;
        }
        Ok(())
    }
}
