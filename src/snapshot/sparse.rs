//! Where a file's data is and where its holes are, so the mirror of a sparse file (a VM image,
//! a database file with holes) costs its data, not its apparent size.

use std::fs::File;
use std::io;
use std::ops::Range;

use rustix::fs::{FallocateFlags, SeekFrom};
use rustix::io::Errno;

/// What a file can say of its holes before `size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Layout {
    /// No hole before the end (most files): one `lseek` told, and nothing more is asked.
    Dense,
    /// Holes, found region by region with `SEEK_DATA`/`SEEK_HOLE`.
    Sparse,
    /// The filesystem cannot tell: blocks of zeros are taken for holes.
    Unknown,
}

impl Layout {
    pub(super) fn of(f: &File, size: u64) -> Layout {
        if size == 0 {
            return Layout::Dense;
        }
        match rustix::fs::seek(f, SeekFrom::Hole(0)) {
            Ok(hole) if hole >= size => Layout::Dense,
            Ok(_) => Layout::Sparse,
            Err(_) => Layout::Unknown,
        }
    }
}

/// The region of `f` from `at` (below `size`): where it ends, and whether it holds data.
/// What `lseek` cannot answer is taken for data, which is always copied correctly.
pub(super) fn region(f: &File, at: u64, size: u64) -> (u64, bool) {
    match rustix::fs::seek(f, SeekFrom::Data(at)) {
        Ok(data) if data > at => (data.min(size), false),
        // Nothing but a hole to the end (or the file shrank: the stamp check after the copy
        // sees that).
        Err(Errno::NXIO) => (size, false),
        _ => {
            let end = rustix::fs::seek(f, SeekFrom::Hole(at)).unwrap_or(size);
            (end.clamp(at + 1, size), true)
        }
    }
}

/// Whether `f` may hold data (not only holes) in `range`. Where the filesystem cannot tell,
/// it may.
pub(super) fn holds_data(f: &File, range: &Range<u64>) -> bool {
    match rustix::fs::seek(f, SeekFrom::Data(range.start)) {
        Ok(data) => data < range.end,
        Err(Errno::NXIO) => false,
        Err(_) => true,
    }
}

/// Frees `range` of `f`, which then reads as zeros; the size stays.
pub(super) fn punch(f: &File, range: &Range<u64>) -> io::Result<()> {
    let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
    Ok(rustix::fs::fallocate(f, flags, range.start, range.end - range.start)?)
}

pub(super) fn is_zero(buf: &[u8]) -> bool {
    // A page at a time, OR-ing its bytes: that compiles to vector code, where a loop stopping
    // at the first non-zero byte does not.
    buf.chunks(4096).all(|page| page.iter().fold(0, |acc, &b| acc | b) == 0)
}
