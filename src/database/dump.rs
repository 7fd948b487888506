//! Dumps taken inside the database's own container, through the engine's exec API: no client on
//! the host, no temp file. A dump is started, held until the server has fixed the moment it
//! dumps ([`Started`]: the tool's transaction snapshot is taken), and then read as a stream
//! while everything else runs again.
//!
//! - PostgreSQL: `pg_dump -Fp --create --clean --if-exists` per database (each consistent in its
//!   own snapshot; all of them started while the writers are stopped, so they hold one moment),
//!   and `pg_dumpall --globals-only` for roles and tablespaces. Plain SQL rather than the custom
//!   format: the archive compresses, and the custom format's data blocks (uncompressed, each
//!   with its length) break zstd's matches, ~19% more after compression on the site's pgbench
//!   data. Archives made with the custom format (`pg_dump-custom`) still load ([`super::load`]).
//! - MariaDB / MySQL: `mariadb-dump` (`mysqldump`) `--single-transaction --all-databases
//!   --routines --events --triggers`.
//! - SQLite: `sqlite3 FILE "VACUUM INTO TMP"`, then TMP streamed out ([`sqlite`]). The one
//!   dump with a temp file, in the container's `/tmp`: SQLite writes a database by page
//!   offsets, which a pipe cannot take, and `.dump`'s SQL would not give the file back.
//!
//! Commands run through `sh -c` so that they take the user from the container's own environment
//! (`POSTGRES_USER`): nuwax never reads or passes a password.

use tokio::io::AsyncReadExt;

use super::Kind;
use crate::engine::{Engine, ExecEnd, ExecStream};

/// When a started dump has fixed its moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// At its first byte: `pg_dump` writes nothing before its snapshot, tables locked, is taken.
    /// It reads the whole catalog in its transaction (`getSchemaData`, which takes ACCESS SHARE
    /// on every table it dumps) before any output: the plain format's script is written by
    /// `RestoreArchive` at the end of `main` ("And finally we can do the actual output"), the
    /// custom format's header once the catalog was read.
    FirstByte,
    /// Once its output holds this text: `mariadb-dump` writes a header before it starts its
    /// transaction, and the first database's section only after.
    Marker(&'static str),
    /// When it has ended (small dumps taken whole inside the stop: roles).
    End,
}

/// One dump a backup takes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Spec {
    pub service: String,
    /// The container it runs in.
    pub container: String,
    pub kind: Kind,
    /// Its name in the archive, under `databases/`: `<service>/<file>`.
    pub name: String,
    /// The database it holds (`None`: all of them, or the server's globals).
    pub database: Option<String>,
    /// `pg_dump-plain` (new PostgreSQL dumps), `pg_dump-custom` (older archives), `sql`,
    /// `sqlite3-file`.
    pub format: String,
    pub cmd: Vec<String>,
}

impl Spec {
    pub fn ready(&self) -> Ready {
        match (self.kind, self.format.as_str()) {
            (Kind::Postgres, PG_PLAIN | "pg_dump-custom") => Ready::FirstByte,
            (Kind::Postgres, _) => Ready::End,
            // `cat` starts once `VACUUM INTO` has read its one transaction.
            (Kind::Sqlite, _) => Ready::FirstByte,
            _ => Ready::Marker("\n-- Current Database: "),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("{service}: {what}: {detail}")]
    Failed { service: String, what: String, detail: String },
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error("{service}: reading the dump: {source}")]
    Io { service: String, source: std::io::Error },
}

fn sh(script: String) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script]
}

/// `'s'` for a shell.
pub(super) fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The server's superuser, from the container's own environment.
pub(super) const PG_USER: &str = "\"${POSTGRES_USER:-postgres}\"";

/// The format of a PostgreSQL database's dump: `pg_dump`'s plain SQL script, which drops and
/// recreates its database (`--create --clean --if-exists`), so it loads into a fresh server
/// that already has it (`POSTGRES_DB`, `postgres`) or not.
pub const PG_PLAIN: &str = "pg_dump-plain";

/// What nuwax cannot dump (it copies that server's files while it is stopped).
fn not_dumped(service: &str, kind: Kind) -> DumpError {
    DumpError::Failed {
        service: service.into(),
        what: "dump".into(),
        detail: format!("nuwax cannot dump {kind} yet; its data is copied while it is stopped"),
    }
}

/// Runs `script` in the container and returns its stdout; a non-zero exit is an error with the
/// command's own message.
async fn query(
    engine: &dyn Engine,
    container: &str,
    service: &str,
    what: &str,
    script: String,
) -> Result<String, DumpError> {
    let out = engine.exec(container, &sh(script), None).await?;
    if out.exit_code != 0 {
        return Err(DumpError::Failed {
            service: service.into(),
            what: what.into(),
            detail: format!("exit {}: {}", out.exit_code, out.output.trim()),
        });
    }
    Ok(out.output)
}

/// The server's version and the dump tool's, as they report them.
pub async fn versions(
    engine: &dyn Engine,
    container: &str,
    service: &str,
    kind: Kind,
) -> Result<(String, String), DumpError> {
    let (server, tool) = match kind {
        Kind::Postgres => (
            format!("psql -U {PG_USER} -d postgres -qAtX -c 'SHOW server_version'"),
            "pg_dump --version".to_string(),
        ),
        Kind::Mariadb | Kind::Mysql => (
            "mariadb -N -e 'SELECT version()' 2>/dev/null || mysql -N -e 'SELECT version()'".to_string(),
            "mariadb-dump --version 2>/dev/null || mysqldump --version".to_string(),
        ),
        Kind::Sqlite => {
            // No server: the library the tool links is the version.
            let v = query(engine, container, service, "asking sqlite3's version", "sqlite3 -version".into())
                .await?;
            return Ok((v.trim().to_string(), v.trim().to_string()));
        }
        Kind::Redis => return Err(not_dumped(service, kind)),
    };
    let server = query(engine, container, service, "asking the server's version", server).await?;
    let tool = query(engine, container, service, "asking the dump tool's version", tool).await?;
    Ok((server.trim().to_string(), tool.trim().to_string()))
}

/// The dumps of one server: what to run for each, in the order they go into the archive.
pub async fn plan(
    engine: &dyn Engine,
    container: &str,
    service: &str,
    kind: Kind,
) -> Result<Vec<Spec>, DumpError> {
    let spec = |name: String, database: Option<String>, format: &str, script: String| Spec {
        service: service.to_string(),
        container: container.to_string(),
        kind,
        name: format!("{service}/{name}"),
        database,
        format: format.to_string(),
        cmd: sh(script),
    };
    match kind {
        Kind::Postgres => {
            let list = query(
                engine,
                container,
                service,
                "listing its databases",
                format!(
                    "psql -U {PG_USER} -d postgres -qAtX -c \
                     'SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname'"
                ),
            )
            .await?;
            Ok(postgres(list.lines().map(str::trim).filter(|l| !l.is_empty()))
                .into_iter()
                .map(|(name, database, format, script)| spec(name, database, format, script))
                .collect())
        }
        Kind::Mariadb | Kind::Mysql => Ok(vec![spec(
            "all-databases.sql".into(),
            None,
            "sql",
            "if command -v mariadb-dump >/dev/null; then d=mariadb-dump; else d=mysqldump; fi; \
             exec \"$d\" --single-transaction --all-databases --routines --events --triggers \
             --hex-blob --default-character-set=utf8mb4 --flush-privileges"
                .to_string(),
        )]),
        // Its dumps are of the files the settings name: [`sqlite`].
        Kind::Sqlite | Kind::Redis => Err(not_dumped(service, kind)),
    }
}

/// A PostgreSQL server's dumps, given its databases: the globals, then one plain script per
/// database, as (file name, database, format, script).
pub(super) fn postgres<'a>(
    databases: impl Iterator<Item = &'a str>,
) -> Vec<(String, Option<String>, &'static str, String)> {
    let mut out = vec![(
        "globals.sql".to_string(),
        None,
        "sql",
        format!("exec pg_dumpall -U {PG_USER} --globals-only"),
    )];
    for db in databases {
        // A database named `globals` must not take the roles' file: its `g` is escaped, as
        // `file_safe` escapes, so the name still reads back.
        let file = match file_safe(db) {
            f if f == "globals" => "%67lobals".to_string(),
            f => f,
        };
        out.push((
            format!("{file}.sql"),
            Some(db.to_string()),
            PG_PLAIN,
            format!("exec pg_dump -U {PG_USER} -Fp --create --clean --if-exists -d {}", quote(db)),
        ));
    }
    out
}

/// The dumps of a service's SQLite files (paths inside its container), one per file.
///
/// `VACUUM INTO` rather than `.backup`: it reads the database in one read transaction, which a
/// writer in WAL mode does not block, while the backup API copies 100 pages a step and starts
/// over whenever another process writes between two steps (it may never end under a busy
/// writer). Its output is a compacted, valid database of that moment. The temp file is removed
/// on every path the shell sees (a trap on exit and on HUP/INT/TERM; `cat` dying on a closed
/// pipe ends the script, which runs the exit trap). A missing file is an error, not a new empty
/// database (which `sqlite3` would create).
pub fn sqlite(container: &str, service: &str, paths: &[String]) -> Vec<Spec> {
    paths
        .iter()
        .map(|path| Spec {
            service: service.to_string(),
            container: container.to_string(),
            kind: Kind::Sqlite,
            name: format!("{service}/{}", file_safe(path.trim_start_matches('/'))),
            database: Some(path.clone()),
            format: SQLITE_FORMAT.to_string(),
            cmd: sh(format!(
                "f={}; [ -f \"$f\" ] || {{ echo \"no SQLite database at $f\" >&2; exit 1; }}; \
                 command -v sqlite3 >/dev/null || {{ echo 'sqlite3: not found' >&2; exit 127; }}; \
                 t=$(mktemp /tmp/nuwax-sqlite.XXXXXX) || exit 1; \
                 trap 'rm -f \"$t\"' EXIT; trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM; \
                 sqlite3 -bail -cmd '.timeout 30000' \"$f\" \"VACUUM INTO '$t'\" || exit 1; \
                 cat \"$t\"",
                quote(path)
            )),
        })
        .collect()
}

/// The format of a SQLite dump: the database file itself.
pub const SQLITE_FORMAT: &str = "sqlite3-file";

/// The first bytes of every SQLite database file.
pub const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// A database name as a file name: what is not `[A-Za-z0-9._-]` becomes `%XX`.
pub fn file_safe(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    match out.strip_prefix('.') {
        Some(rest) => format!("%2E{rest}"),
        None => out,
    }
}

/// A dump that has fixed its moment: the bytes read while waiting for that, and the rest of
/// its stdout, not yet read (the tool waits on its pipe until it is).
pub struct Started {
    pub spec: Spec,
    pub head: Vec<u8>,
    pub stream: ExecStream,
    /// It ended while being started ([`Ready::End`], or a small dump).
    pub eof: bool,
}

/// Starts `spec` and reads until it has fixed its moment (see [`Ready`]).
pub async fn start(engine: &dyn Engine, spec: Spec) -> Result<Started, DumpError> {
    let mut stream = engine.exec_stream(&spec.container, &spec.cmd, None).await?;
    let ready = spec.ready();
    let mut head: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut eof = false;
    loop {
        let n = stream
            .stdout
            .read(&mut buf)
            .await
            .map_err(|source| DumpError::Io { service: spec.service.clone(), source })?;
        if n == 0 {
            eof = true;
            break;
        }
        // Only the new bytes, and the marker's length before them, can complete it.
        let from = head.len().saturating_sub(MARKER_MAX);
        head.extend_from_slice(&buf[..n]);
        let done = match ready {
            Ready::FirstByte => true,
            Ready::Marker(m) => memchr_find(&head[from..], m.as_bytes()),
            Ready::End => false,
        };
        if done {
            break;
        }
    }
    Ok(Started { spec, head, stream, eof })
}

/// Longer than any [`Ready::Marker`].
const MARKER_MAX: usize = 64;

fn memchr_find(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Checks how a dump ended once its stdout is read: a non-zero exit is the tool's error.
pub fn finish(spec: &Spec, ended: ExecEnd) -> Result<ExecEnd, DumpError> {
    if ended.exit_code != 0 {
        let detail = ended.stderr.trim();
        return Err(DumpError::Failed {
            service: spec.service.clone(),
            what: format!("dumping {}", spec.name),
            detail: format!(
                "exit {}{}",
                ended.exit_code,
                if detail.is_empty() { String::new() } else { format!(": {detail}") }
            ),
        });
    }
    Ok(ended)
}
