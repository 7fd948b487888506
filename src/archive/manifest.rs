//! The self-describing part of an archive: `manifest.json` (first entry) and
//! `checksums.json` (last entry). The catalog can be rebuilt from these alone.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Bumped when the archive layout changes in a way older readers cannot handle. Version 2
/// declares the entries in `index.jsonl` (second entry) instead of the manifest, and lists the
/// file digests in `checksums.jsonl` (before the trailer), so neither side holds every entry in
/// memory. Version 1 archives are still read.
pub const FORMAT_VERSION: u32 = 2;
/// Name of the second entry (format 2): one [`EntryMeta`] per line, the declared entries.
pub const INDEX_NAME: &str = "index.jsonl";
/// Name of the entry before the trailer (format 2): one [`FileDigest`] per line, per file.
pub const DIGESTS_NAME: &str = "checksums.jsonl";
/// Name of the first entry of every archive.
pub const MANIFEST_NAME: &str = "manifest.json";
/// Name of the last entry of every archive.
pub const CHECKSUMS_NAME: &str = "checksums.json";
/// Digest used for per-entry and whole-archive checksums.
pub const CHECKSUM_ALGORITHM: &str = "sha256";

/// Everything a backup holds, written before any data so a reader knows what to expect.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format_version: u32,
    pub nuwax_version: String,
    pub backup_id: i64,
    /// `manual`, `pre-upgrade`, `pre-rollback` or `scheduled`.
    pub kind: String,
    pub project: String,
    /// The project directory on the machine that made the backup (maps bind mounts on restore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_dir: Option<String>,
    pub service_version: Option<String>,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub compression: String,
    /// Whether the services were stopped while their data was read.
    pub services_stopped: bool,
    /// The data was copied while services ran (`backup --no-stop`, `--no-docker`): it is not
    /// one point in time, and a rollback to it needs `--accept-live`.
    #[serde(default)]
    pub live: bool,
    /// Services the engine SIGKILLed because they did not stop within their stop timeout:
    /// their data was copied after an unclean shutdown.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop_killed: Vec<String>,
    pub services: Vec<ServiceRecord>,
    /// Named volumes and bind mounts, each once.
    pub mounts: Vec<MountRecord>,
    /// Compose files, `.env`, `nuwax.toml` and extra configured paths.
    pub configs: Vec<ConfigRecord>,
    pub skipped: Vec<Skipped>,
    /// Archive path of the services' images in `docker save` format (`backup --with-images`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images_archive: Option<String>,
    /// Format 1: every entry that follows the manifest, in archive order (the trailer
    /// excluded). Empty in format 2, whose entries are declared in [`INDEX_NAME`].
    #[serde(default)]
    pub entries: Vec<EntryMeta>,
    /// Format 2: what [`INDEX_NAME`] holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<IndexInfo>,
    /// Format 2: database dumps, in archive order, right after [`INDEX_NAME`]. Each is stored as
    /// parts `<name>.000000`, `<name>.000001`, ... of [`Manifest::dump_part_bytes`] bytes
    /// each but the last, which is shorter (maybe empty): a dump's size is not known until it
    /// ends, and a tar header needs it. Their sizes and digests are in the trailer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dumps: Vec<DumpRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dump_part_bytes: Option<u64>,
    /// The mounts holding the dumped servers' data files, left out of the archive (the dumps
    /// hold that data): a rollback starts each server on them emptied, then loads its dumps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dumped_mounts: Vec<DumpedMount>,
    pub checksums: ChecksumInfo,
}

/// A mount whose data a dump holds instead (see [`Manifest::dumped_mounts`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DumpedMount {
    /// The server it holds the data of.
    pub service: String,
    pub kind: MountKind,
    /// Volume name for volumes, absolute host path for binds.
    pub name: String,
    /// Where the services mount it: `service:/path`.
    pub destinations: Vec<String>,
}

/// Archive paths under this prefix hold dumps only.
pub const DUMPS_PREFIX: &str = "databases/";

/// A database dump the archive holds (see [`Manifest::dumps`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DumpRecord {
    /// Archive name, under [`DUMPS_PREFIX`]: `databases/<service>/<file>`.
    pub name: String,
    pub service: String,
    /// `postgres`, `mariadb`, `mysql`, `sqlite`.
    pub server: String,
    /// The database it holds (SQLite: the file's path inside the container); none for a whole
    /// server's or its globals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// `pg_dump-plain` (a database's SQL script, `psql` loads it), `pg_dump-custom` (archives
    /// made before; `pg_restore` loads it), `sql`, or `sqlite3-file` (the database file, written
    /// back in place).
    pub format: String,
    /// The dump tool's version, as it says it.
    pub tool_version: String,
    pub server_version: String,
}

/// What the trailer says of one dump: its size, parts and digest over all its bytes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct DumpDigest {
    pub name: String,
    pub bytes: u64,
    pub parts: u64,
    pub sha256: String,
    /// Rows per table, counted from the dump as it was written (`database::rows`); absent for
    /// dumps nuwax does not count and in archives made before. A load is checked against them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<std::collections::BTreeMap<String, u64>>,
}

impl DumpDigest {
    /// Whether `other` says the same bytes (the counts are not read back from the bytes).
    pub fn same_bytes(&self, other: &DumpDigest) -> bool {
        self.name == other.name
            && self.bytes == other.bytes
            && self.parts == other.parts
            && self.sha256 == other.sha256
    }
}

/// The archive name of part `seq` of dump `name`.
pub fn dump_part_name(name: &str, seq: u64) -> String {
    format!("{name}.{seq:06}")
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceRecord {
    pub service: String,
    pub container: String,
    pub image: String,
    pub image_id: String,
    pub running: bool,
    /// `repo:tag` nuwax put on `image_id` so pruning cannot remove it (absent when tagging failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_tag: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    Volume,
    Bind,
}

/// How the data of a mount was read.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Straight from the host filesystem (volume mountpoint or bind source).
    Host,
    /// Through the engine's archive API from a (stopped) container.
    Engine,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MountRecord {
    pub kind: MountKind,
    /// Volume name for volumes, absolute host path for binds.
    pub name: String,
    /// Host path the data was read from (volume mountpoint or bind source).
    pub source: String,
    /// Where the services mount it: `service:/path`.
    pub destinations: Vec<String>,
    /// Archive directory (or file, for a single-file bind) holding the data.
    pub archive_path: String,
    pub access: Access,
    pub size: u64,
    pub file_count: u64,
    /// Services of its destinations that kept running while it was copied (their databases
    /// dumped instead: the SQLite files in it): its other files are as they were read then, not
    /// frozen by a stop.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub running: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConfigRecord {
    /// Path relative to the project directory (absolute when outside it).
    pub source: String,
    pub archive_path: String,
    pub size: u64,
    pub file_count: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// One archive entry as declared in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EntryMeta {
    /// Archive path: relative, `/`-separated, no `..`, no trailing slash.
    pub path: String,
    pub kind: EntryKind,
    /// Content length for files, 0 otherwise.
    pub size: u64,
    /// Permission bits including setuid/setgid/sticky (`0o7777` mask).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// Symlink target, verbatim (never followed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
}

/// What the manifest says of [`INDEX_NAME`]: enough to check it, and to know the backup's size,
/// without reading it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct IndexInfo {
    /// Declared entries (lines).
    pub entries: u64,
    /// File entries among them.
    pub files: u64,
    /// Total content bytes of the files.
    pub content_bytes: u64,
    /// Size of the index entry.
    pub bytes: u64,
    /// Hex digest of the index entry.
    pub sha256: String,
}

/// One line of [`DIGESTS_NAME`]: a file entry and the digest of its content, in archive order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileDigest {
    pub path: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChecksumInfo {
    pub algorithm: String,
    /// Name of the trailer entry holding the per-entry digests.
    pub trailer: String,
}

impl Default for ChecksumInfo {
    fn default() -> Self {
        Self { algorithm: CHECKSUM_ALGORITHM.into(), trailer: CHECKSUMS_NAME.into() }
    }
}

/// The trailer: written last, proves every byte of every file entry and of the manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Checksums {
    pub algorithm: String,
    /// Hex digest of the exact `manifest.json` bytes in the archive.
    pub manifest: String,
    /// Format 1: archive path → hex digest of the file's content, for every file entry.
    /// Empty in format 2, whose digests are in [`DIGESTS_NAME`].
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// Total content bytes of all file entries.
    pub total_bytes: u64,
    /// Format 2: the digest of [`DIGESTS_NAME`] and how many files it lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digests: Option<DigestsInfo>,
    /// Format 2: each dump's size and digest, in archive order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dumps: Vec<DumpDigest>,
}

/// What the trailer says of [`DIGESTS_NAME`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct DigestsInfo {
    pub files: u64,
    pub bytes: u64,
    pub sha256: String,
}

impl Manifest {
    /// Declared entries, whatever the format.
    pub fn entry_count(&self) -> u64 {
        self.index.as_ref().map_or(self.entries.len() as u64, |i| i.entries)
    }

    /// File entries, whatever the format.
    pub fn file_count(&self) -> u64 {
        self.index.as_ref().map_or_else(
            || self.entries.iter().filter(|e| e.kind == EntryKind::File).count() as u64,
            |i| i.files,
        )
    }

    /// Content bytes of the files, whatever the format.
    pub fn content_bytes(&self) -> u64 {
        self.index.as_ref().map_or_else(
            || self.entries.iter().filter(|e| e.kind == EntryKind::File).map(|e| e.size).sum(),
            |i| i.content_bytes,
        )
    }
}

/// Appends `entry`'s line of [`INDEX_NAME`] to `out`: the writer and every reader make it the
/// same way, so the digest of the lines proves the entries are the declared ones.
pub(super) fn index_line(entry: &EntryMeta, out: &mut Vec<u8>) {
    // Serializing a plain struct into memory cannot fail.
    let _ = serde_json::to_writer(&mut *out, entry);
    out.push(b'\n');
}

/// Appends a file's line of [`DIGESTS_NAME`] to `out` (a [`FileDigest`]).
pub(super) fn digest_line(path: &str, sha256: &str, out: &mut Vec<u8>) {
    #[derive(Serialize)]
    struct Line<'a> {
        path: &'a str,
        sha256: &'a str,
    }
    let _ = serde_json::to_writer(&mut *out, &Line { path, sha256 });
    out.push(b'\n');
}
