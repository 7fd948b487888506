//! The few tar records nuwax writes: GNU headers with literal names (long names and link
//! targets as GNU `L`/`K` records), written by hand so names and targets stay byte-exact.

use std::io::{self, Write};

use tar::{EntryType, Header};

use super::manifest::{EntryKind, EntryMeta};

const BLOCK: u64 = 512;
/// Size of the name and link name fields of a tar header.
const NAME_FIELD: usize = 100;

/// Writes the header(s) of `meta`. Directories get the conventional trailing `/`.
pub(super) fn write_header(out: &mut impl Write, meta: &EntryMeta) -> io::Result<()> {
    let mut header = Header::new_gnu();
    let mut name = meta.path.clone().into_bytes();
    let entry_type = match meta.kind {
        EntryKind::File => EntryType::Regular,
        EntryKind::Dir => {
            name.push(b'/');
            EntryType::Directory
        }
        EntryKind::Symlink => EntryType::Symlink,
    };
    if name.len() >= NAME_FIELD {
        write_long(out, EntryType::GNULongName, &name)?;
    }
    let field = &mut header.as_old_mut().name;
    let len = name.len().min(NAME_FIELD);
    field[..len].copy_from_slice(&name[..len]);
    if let Some(target) = meta.link_target.as_deref().map(str::as_bytes) {
        if target.len() >= NAME_FIELD {
            write_long(out, EntryType::GNULongLink, target)?;
        }
        let field = &mut header.as_old_mut().linkname;
        let len = target.len().min(NAME_FIELD);
        field[..len].copy_from_slice(&target[..len]);
    }
    header.set_entry_type(entry_type);
    header.set_mode(meta.mode & 0o7777);
    header.set_uid(meta.uid);
    header.set_gid(meta.gid);
    header.set_mtime(u64::try_from(meta.mtime).unwrap_or(0));
    header.set_size(if meta.kind == EntryKind::File { meta.size } else { 0 });
    header.set_cksum();
    out.write_all(header.as_bytes())
}

/// A GNU `././@LongLink` record carrying a name or link target that does not fit its field.
fn write_long(out: &mut impl Write, kind: EntryType, value: &[u8]) -> io::Result<()> {
    let mut header = Header::new_gnu();
    let name = b"././@LongLink";
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    // GNU tar counts the terminating NUL.
    let size = value.len() as u64 + 1;
    header.set_size(size);
    header.set_entry_type(kind);
    header.set_cksum();
    out.write_all(header.as_bytes())?;
    out.write_all(value)?;
    out.write_all(&[0])?;
    pad(out, size)
}

/// Zero padding after `len` content bytes, up to the next 512-byte block.
pub(super) fn pad(out: &mut impl Write, len: u64) -> io::Result<()> {
    let rest = (BLOCK - len % BLOCK) % BLOCK;
    out.write_all(&[0; BLOCK as usize][..usize::try_from(rest).unwrap_or(0)])
}

/// Metadata of the manifest and trailer entries.
pub(super) fn meta_file(name: &str, size: u64, mtime: i64) -> EntryMeta {
    EntryMeta {
        path: name.to_owned(),
        kind: EntryKind::File,
        size,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime,
        link_target: None,
    }
}

/// Seconds since the epoch of an RFC 3339 UTC timestamp (`2024-05-01T12:00:00Z`), 0 if it
/// does not parse. Only used as the mtime of `manifest.json`, so a fallback is harmless.
pub(super) fn rfc3339_seconds(s: &str) -> i64 {
    let num = |range: std::ops::Range<usize>| s.get(range).and_then(|v| v.parse::<i64>().ok());
    let parts = (num(0..4), num(5..7), num(8..10), num(11..13), num(14..16), num(17..19));
    let (Some(y), Some(m), Some(d), Some(hh), Some(mm), Some(ss)) = parts else {
        return 0;
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days * 86_400 + hh * 3600 + mm * 60 + ss).max(0)
}

#[cfg(test)]
mod tests {
    use super::rfc3339_seconds;

    #[test]
    fn parses_rfc3339() {
        assert_eq!(rfc3339_seconds("1970-01-01T00:00:00Z"), 0);
        assert_eq!(rfc3339_seconds("2024-02-29T12:34:56Z"), 1_709_210_096);
        assert_eq!(rfc3339_seconds("2001-09-09T01:46:40+00:00"), 1_000_000_000);
        assert_eq!(rfc3339_seconds("garbage"), 0);
    }
}
