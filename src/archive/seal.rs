//! Encryption at rest with age: an archive written for recipients (`encrypt_to` in nuwax.toml)
//! is encrypted as it is written, below the compression, so the file on disk and every copy of
//! it hold no plaintext, not even the manifest. Reading one needs an identity that opens it:
//! the identities this process was given (`identity_file`, `--identity`) are kept here, in
//! memory only, and every reader of archives asks for them.
//!
//! A backup is verified right after it is written, by a host that may hold no identity (only
//! the recipients' public keys): the writer adds a recipient of its own, made for that one
//! archive, whose identity stays in this process's memory and dies with it. It reads that
//! archive back and nothing else.

use std::io::{self, BufRead, Read, Write};
use std::path::Path;
use std::sync::{Arc, RwLock};

use super::{Error, Result};

/// How every age file starts.
pub const MAGIC: &[u8] = b"age-encryption.org/v1\n";

/// Whether `head`, a file's first bytes, is an age file.
pub fn is_encrypted(head: &[u8]) -> bool {
    head.starts_with(MAGIC)
}

type Key = Arc<dyn age::Identity + Send + Sync>;

static KEYS: RwLock<Vec<Key>> = RwLock::new(Vec::new());

fn keys() -> Vec<Key> {
    KEYS.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
}

fn add(key: Key) {
    KEYS.write().unwrap_or_else(std::sync::PoisonError::into_inner).push(key);
}

static LOADED: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Reads the identities of an age identity file (what `age-keygen` writes) for this process,
/// once per file. Returns how many it holds; a file with none is an error.
pub fn load_identity_file(path: &Path) -> anyhow::Result<usize> {
    let mut loaded = LOADED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if loaded.iter().any(|p| p == path) {
        return Ok(0);
    }
    let file = age::IdentityFile::from_file(path.to_string_lossy().into_owned())
        .map_err(|e| anyhow::anyhow!("reading the age identity file {}: {e}", path.display()))?;
    let ids = file
        .into_identities()
        .map_err(|e| anyhow::anyhow!("reading the age identity file {}: {e}", path.display()))?;
    anyhow::ensure!(!ids.is_empty(), "{} holds no age identity (AGE-SECRET-KEY-1...)", path.display());
    let n = ids.len();
    for id in ids {
        add(Arc::from(id));
    }
    loaded.push(path.to_path_buf());
    Ok(n)
}

/// Parses recipients (`age1...`), as nuwax.toml's `encrypt_to` gives them.
pub fn parse_recipients(list: &[String]) -> std::result::Result<Vec<Recipient>, String> {
    list.iter()
        .map(|r| {
            #[allow(deprecated)] // X25519 is what age 1.x tools use; age marks it "legacy".
            let parsed = r.trim().parse::<age::x25519::Recipient>();
            parsed
                .map(Recipient)
                .map_err(|e| format!("encrypt_to: {r:?} is not an age recipient (age1...): {e}"))
        })
        .collect()
}

/// One recipient an archive is encrypted to.
#[derive(Clone)]
pub struct Recipient(#[allow(deprecated)] age::x25519::Recipient);

impl std::fmt::Debug for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The output end of a writer: plain, or age-encrypted to the recipients.
pub(super) enum Sealer<W: Write> {
    Plain(W),
    Age(age::stream::StreamWriter<W>),
}

impl<W: Write> Sealer<W> {
    /// Plain without recipients; else encrypted to them and to a recipient of this process's
    /// own (see the module docs).
    pub(super) fn new(out: W, recipients: &[Recipient]) -> io::Result<Self> {
        if recipients.is_empty() {
            return Ok(Self::Plain(out));
        }
        #[allow(deprecated)]
        let own = age::x25519::Identity::generate();
        let own_recipient = own.to_public();
        let all: Vec<&dyn age::Recipient> = recipients
            .iter()
            .map(|r| &r.0 as &dyn age::Recipient)
            .chain(std::iter::once(&own_recipient as &dyn age::Recipient))
            .collect();
        let enc = age::Encryptor::with_recipients(all.into_iter()).map_err(io::Error::other)?;
        add(Arc::new(own));
        Ok(Self::Age(enc.wrap_output(out)?))
    }

    pub(super) fn finish(self) -> io::Result<W> {
        match self {
            Self::Plain(out) => Ok(out),
            Self::Age(w) => w.finish(),
        }
    }
}

impl<W: Write> Write for Sealer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(out) => out.write(buf),
            Self::Age(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(out) => out.flush(),
            Self::Age(w) => w.flush(),
        }
    }
}

/// The input end of a reader: the file's bytes, or what they decrypt to.
pub(super) enum Opened<R: BufRead> {
    Plain(R),
    Age(io::BufReader<age::stream::StreamReader<R>>),
}

impl<R: BufRead> Opened<R> {
    /// `raw` as it is, or decrypted when it is an age file (with the identities this process
    /// holds; none that opens it is [`Error::Encrypted`]).
    pub(super) fn new(mut raw: R, path: &Path) -> Result<Self> {
        let head = raw.fill_buf().map_err(Error::io(path))?;
        if !is_encrypted(head) {
            return Ok(Self::Plain(raw));
        }
        let keys = keys();
        let d = age::Decryptor::new_buffered(raw).map_err(|e| Error::corrupt(format!("age header: {e}")))?;
        match d.decrypt(keys.iter().map(|k| k.as_ref() as &dyn age::Identity)) {
            Ok(r) => Ok(Self::Age(io::BufReader::with_capacity(super::BUF_SIZE, r))),
            Err(age::DecryptError::NoMatchingKeys) => {
                Err(Error::Encrypted { path: path.to_path_buf(), identities: keys.len() })
            }
            Err(e) => Err(Error::corrupt(format!("age: {e}"))),
        }
    }
}

impl<R: BufRead> Read for Opened<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(r) => r.read(buf),
            // A damaged or cut chunk fails the read: corruption, as for the decompressors.
            Self::Age(r) => r.read(buf),
        }
    }
}

impl<R: BufRead> BufRead for Opened<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        match self {
            Self::Plain(r) => r.fill_buf(),
            Self::Age(r) => r.fill_buf(),
        }
    }

    fn consume(&mut self, n: usize) {
        match self {
            Self::Plain(r) => r.consume(n),
            Self::Age(r) => r.consume(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(deprecated)]
    fn sealed_bytes_hold_no_plaintext_and_open_only_with_an_identity() {
        #[allow(deprecated)]
        let operator = age::x25519::Identity::generate();
        let recipient = parse_recipients(&[operator.to_public().to_string()]).unwrap();
        let mut w = Sealer::new(Vec::new(), &recipient).unwrap();
        w.write_all(b"the secret marker").unwrap();
        let bytes = w.finish().unwrap();
        assert!(is_encrypted(&bytes));
        assert!(!bytes.windows(6).any(|w| w == b"secret"));
        // This process made the file: its own key opens it (the post-write verify).
        let mut out = Vec::new();
        Opened::new(&bytes[..], Path::new("x")).unwrap().read_to_end(&mut out).unwrap();
        assert_eq!(out, b"the secret marker");
        // A file for someone else is refused, naming what is missing.
        #[allow(deprecated)]
        let other = age::x25519::Identity::generate().to_public().to_string();
        let enc = age::Encryptor::with_recipients(std::iter::once(
            &other.parse::<age::x25519::Recipient>().unwrap() as &dyn age::Recipient,
        ))
        .unwrap();
        let mut w = enc.wrap_output(Vec::new()).unwrap();
        w.write_all(b"x").unwrap();
        let foreign = w.finish().unwrap();
        assert!(matches!(Opened::new(&foreign[..], Path::new("f")), Err(Error::Encrypted { .. })));
        assert!(parse_recipients(&["nope".into()]).unwrap_err().contains("not an age recipient"));
    }
}
