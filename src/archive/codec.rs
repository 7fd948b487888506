//! The byte layers under the tar stream: compression on the way out, decompression on the way
//! in, and at the file end the counting and hashing that give the whole-archive digest.

use std::fs::File;
use std::io::{self, BufRead, Read, Write};

use sha2::{Digest, Sha256};

use super::Compression;

/// Size of one zstd worker job (see `Encoder::new`).
const ZSTD_JOB_SIZE: u32 = 2 << 20;
/// The window below level 3, whose own is 2 MiB (level 1's is 512 KiB). A dump's rows repeat
/// at distances a small window misses: on a pgbench dump, level 1 with this window is a fifth
/// smaller than with its own, at the same speed (`zstd -1 -T2 -B2MiB --zstd=wlog=21`), and a
/// level raised mid-frame cannot widen the frame's window.
const ZSTD_MIN_WINDOW_LOG: u32 = 21;
/// More zstd workers than this only add memory (~6 MiB each): the calling thread, which reads,
/// hashes and feeds them, cannot keep more busy at the default level.
const ZSTD_MAX_WORKERS: u32 = 8;

/// The output end: counts (and with a hasher, hashes) every byte that reaches `W`.
pub(super) struct HashingWriter<W> {
    pub(super) inner: W,
    pub(super) hasher: Option<Sha256>,
    pub(super) bytes: u64,
}

impl<W> HashingWriter<W> {
    pub(super) fn new(inner: W, hash: bool) -> Self {
        Self { inner, hasher: hash.then(Sha256::new), bytes: 0 }
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub(super) enum Encoder<W: Write> {
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Gzip(flate2::write::GzEncoder<W>),
    Plain(W),
}

impl<W: Write> Encoder<W> {
    pub(super) fn new(out: W, compression: Compression, level: i32, threads: u32) -> io::Result<Self> {
        Ok(match compression {
            Compression::Zstd => {
                let mut enc = zstd::stream::write::Encoder::new(out, level)?;
                // The frame checksum lets `zstd -t` check an archive without nuwax; it is cheap.
                enc.include_checksum(true)?;
                if level < 3 {
                    enc.set_parameter(zstd::stream::raw::CParameter::WindowLog(ZSTD_MIN_WINDOW_LOG))?;
                }
                if threads > 0 {
                    enc.multithread(threads.min(ZSTD_MAX_WORKERS))?;
                    // zstd's default jobs (4x the window, 8 MiB at level 3) hold ~120 MiB with two
                    // workers; 2 MiB jobs compress as well on our data and need a third of that.
                    enc.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB_SIZE))?;
                }
                Self::Zstd(enc)
            }
            Compression::Gzip => {
                let level = flate2::Compression::new(level.unsigned_abs());
                Self::Gzip(flate2::write::GzEncoder::new(out, level))
            }
            Compression::None => Self::Plain(out),
        })
    }

    pub(super) fn finish(self) -> io::Result<W> {
        match self {
            Self::Zstd(enc) => enc.finish(),
            Self::Gzip(enc) => enc.finish(),
            Self::Plain(out) => Ok(out),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Zstd(enc) => enc.write(buf),
            Self::Gzip(enc) => enc.write(buf),
            Self::Plain(out) => out.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Zstd(enc) => enc.flush(),
            Self::Gzip(enc) => enc.flush(),
            Self::Plain(out) => out.flush(),
        }
    }
}

/// Whether an error surfacing from the decoders came from reading the file itself.
pub(super) fn is_raw_read_error(err: &io::Error) -> bool {
    err.get_ref().is_some_and(|inner| inner.is::<RawReadError>())
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct RawReadError(io::Error);

/// The file end of the pipeline: hashes and counts every byte read from disk, and marks its
/// errors so they are told apart from corruption found further up. The tally is shared, so it
/// can be read once the layers above (decryption) are done with the file.
pub(super) struct RawReader {
    file: File,
    tally: std::sync::Arc<std::sync::Mutex<Tally>>,
}

/// The whole file's digest and size, as read.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) hasher: Sha256,
    pub(super) bytes: u64,
}

impl RawReader {
    pub(super) fn new(file: File) -> Self {
        Self { file, tally: Default::default() }
    }

    /// A handle on what this reader has read so far.
    pub(super) fn tally(&self) -> std::sync::Arc<std::sync::Mutex<Tally>> {
        self.tally.clone()
    }
}

impl Read for RawReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.file.read(buf) {
                Ok(n) => {
                    let mut t = self.tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    t.hasher.update(&buf[..n]);
                    t.bytes += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io::Error::new(e.kind(), RawReadError(e))),
            }
        }
    }
}

pub(super) enum Decoder<R: BufRead> {
    Zstd(zstd::stream::read::Decoder<'static, R>),
    Gzip(Box<flate2::bufread::GzDecoder<R>>),
    Plain(R),
}

impl<R: BufRead> Decoder<R> {
    pub(super) fn into_inner(self) -> R {
        match self {
            Self::Zstd(d) => d.finish(),
            Self::Gzip(d) => d.into_inner(),
            Self::Plain(r) => r,
        }
    }
}

impl<R: BufRead> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Zstd(d) => d.read(buf),
            Self::Gzip(d) => d.read(buf),
            Self::Plain(r) => r.read(buf),
        }
    }
}

/// Counts decompressed bytes, to check where the tar stream ends.
pub(super) struct Counting<R> {
    pub(super) inner: R,
    pub(super) count: u64,
}

impl<R> Counting<R> {
    pub(super) fn new(inner: R) -> Self {
        Self { inner, count: 0 }
    }
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}
