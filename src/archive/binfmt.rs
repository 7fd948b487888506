//! The byte layout of listing spills and of the snapshot's index: numbers little-endian,
//! strings after their length as a `u32`, optional fields after a byte saying whether they are
//! there. Both files are written once and read back a few times per backup, a record per file,
//! so neither may cost much per entry.

use std::io::{self, Read};
use std::path::Path;

use super::manifest::{EntryKind, EntryMeta};
use super::scan::Stamp;
use super::{Error, Item};

/// A string longer than this is damage, not a path or a link target.
const MAX_STR: usize = 1 << 20;

impl Stamp {
    /// Writes the stamp as spill and index files hold it (five numbers).
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.dev.to_le_bytes());
        out.extend_from_slice(&self.ino.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.mtime_ns.to_le_bytes());
        out.extend_from_slice(&self.ctime_ns.to_le_bytes());
    }

    /// Reads a stamp [`Stamp::encode`] wrote.
    pub(crate) fn decode(r: &mut impl Read) -> io::Result<Stamp> {
        Ok(Stamp {
            dev: u64::from_le_bytes(get(r)?),
            ino: u64::from_le_bytes(get(r)?),
            size: u64::from_le_bytes(get(r)?),
            mtime_ns: i128::from_le_bytes(get(r)?),
            ctime_ns: i128::from_le_bytes(get(r)?),
        })
    }
}

/// An item as a spill file holds it: the path, then kind, size, mode, uid, gid and mtime, then
/// the link target and the stamp, each optional.
pub(super) fn encode((entry, stamp): &Item, out: &mut Vec<u8>) -> io::Result<()> {
    put_str(out, &entry.path)?;
    out.push(match entry.kind {
        EntryKind::File => 0,
        EntryKind::Dir => 1,
        EntryKind::Symlink => 2,
    });
    out.extend_from_slice(&entry.size.to_le_bytes());
    out.extend_from_slice(&entry.mode.to_le_bytes());
    out.extend_from_slice(&entry.uid.to_le_bytes());
    out.extend_from_slice(&entry.gid.to_le_bytes());
    out.extend_from_slice(&entry.mtime.to_le_bytes());
    out.push(u8::from(entry.link_target.is_some()));
    if let Some(target) = &entry.link_target {
        put_str(out, target)?;
    }
    out.push(u8::from(stamp.is_some()));
    if let Some(stamp) = stamp {
        stamp.encode(out);
    }
    Ok(())
}

/// Reads an item [`encode`] wrote.
pub(super) fn decode(r: &mut impl Read) -> io::Result<Item> {
    let path = get_str(r)?;
    let kind = match get::<1>(r)? {
        [0] => EntryKind::File,
        [1] => EntryKind::Dir,
        [2] => EntryKind::Symlink,
        _ => return Err(damaged("an unknown entry kind")),
    };
    let size = u64::from_le_bytes(get(r)?);
    let mode = u32::from_le_bytes(get(r)?);
    let uid = u64::from_le_bytes(get(r)?);
    let gid = u64::from_le_bytes(get(r)?);
    let mtime = i64::from_le_bytes(get(r)?);
    let link_target = if get::<1>(r)? == [0] { None } else { Some(get_str(r)?) };
    let stamp = if get::<1>(r)? == [0] { None } else { Some(Stamp::decode(r)?) };
    Ok((EntryMeta { path, kind, size, mode, uid, gid, mtime, link_target }, stamp))
}

/// Appends `s` after its length. Paths this long cannot be recorded (no filesystem makes them).
pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) -> io::Result<()> {
    let len = u32::try_from(s.len()).ok().filter(|&n| n as usize <= MAX_STR);
    let len = len.ok_or_else(|| {
        let what = format!("a name of {} bytes is longer than the {MAX_STR} a record may hold", s.len());
        io::Error::new(io::ErrorKind::InvalidInput, what)
    })?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Reads the bytes of a string [`put_str`] wrote into `buf`, not checked to be UTF-8.
pub(crate) fn get_bytes(r: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<()> {
    let len = u32::from_le_bytes(get(r)?) as usize;
    if len > MAX_STR {
        return Err(damaged("a string too long"));
    }
    buf.resize(len, 0);
    r.read_exact(buf)
}

pub(crate) fn get_str(r: &mut impl Read) -> io::Result<String> {
    let mut bytes = Vec::new();
    get_bytes(r, &mut bytes)?;
    String::from_utf8(bytes).map_err(|_| damaged("a string that is not UTF-8"))
}

pub(crate) fn get<const N: usize>(r: &mut impl Read) -> io::Result<[u8; N]> {
    let mut bytes = [0; N];
    r.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// The file holds something its writer never wrote.
pub(crate) fn damaged(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("damaged file: {what}"))
}

/// An error reading spill or index file `path`, naming it; a file that ends inside a record
/// is truncated (not the bare "failed to fill whole buffer" of `read_exact`).
pub(crate) fn read_error(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |e| Error::io(path)(eof_is_truncated(e))
}

/// `read_exact` found the end of the file inside a record: the file is truncated.
pub(crate) fn eof_is_truncated(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof { truncated("it ends inside a record") } else { e }
}

/// The file is shorter than what wrote it: `detail` says how it shows.
pub(crate) fn truncated(detail: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("truncated: {detail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_read_is_truncated_and_names_the_file_and_a_long_name_says_what_it_is() {
        let mut buf = Vec::new();
        put_str(&mut buf, "vol/a").unwrap();
        let err = get_str(&mut &buf[..buf.len() - 1]).unwrap_err();
        let err = read_error(Path::new("/s/.nuwax-spill-1-0"))(err);
        let text = format!("{:#}", anyhow::Error::from(err));
        assert!(text.contains("/s/.nuwax-spill-1-0") && text.contains("truncated"), "{text}");

        let long = "x".repeat(MAX_STR + 1);
        let err = put_str(&mut buf, &long).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(!err.to_string().contains("damaged"), "{err}");
    }
}
