//! The databases a project runs: which service runs which server, told by what the container
//! runs (its entrypoint and command as the engine resolved them, the names of its environment)
//! or said by the operator (`nuwax.toml` or the `nuwax.database` label).
//!
//! Detection is a pure function of a [`Container`] and the settings, so `status`, `backup
//! --dry-run` and the flows all see the same answer.

pub mod dump;
pub mod load;
pub mod rows;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::engine::Container;

/// The label that names a service's database server when its command does not tell
/// (`nuwax.database=postgres`), or says it runs none (`nuwax.database=none`).
pub const LABEL_DATABASE: &str = "nuwax.database";

/// A database server nuwax knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Postgres,
    Mariadb,
    Mysql,
    Redis,
    /// SQLite files a service holds (no server: the service itself writes them).
    Sqlite,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Postgres => "postgres",
            Kind::Mariadb => "mariadb",
            Kind::Mysql => "mysql",
            Kind::Redis => "redis",
            Kind::Sqlite => "sqlite",
        }
    }

    /// The directories inside the container that hold the server's data files, as the official
    /// images (and nuwax's own) lay them out.
    pub fn data_dirs(self) -> &'static [&'static str] {
        match self {
            Kind::Postgres => &["/var/lib/postgresql"],
            Kind::Mariadb | Kind::Mysql => &["/var/lib/mysql"],
            Kind::Redis => &["/data"],
            // Its files are named one by one (`sqlite = [...]`); the mount holding them also
            // holds other files, which are copied.
            Kind::Sqlite => &[],
        }
    }

    /// Whether nuwax can dump it.
    pub fn dumpable(self) -> bool {
        matches!(self, Kind::Postgres | Kind::Mariadb | Kind::Mysql | Kind::Sqlite)
    }

    /// Whether a mount at `destination` (inside the container) holds the server's data files.
    pub fn holds_data(self, destination: &str) -> bool {
        self.data_dirs().iter().any(|d| {
            destination == *d || destination.strip_prefix(d).is_some_and(|rest| rest.starts_with('/'))
        })
    }

    /// Whether nuwax can dump (and load) this server's databases.
    pub fn can_dump(self) -> bool {
        matches!(self, Kind::Postgres | Kind::Mariadb | Kind::Mysql)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Postgres => "PostgreSQL",
            Kind::Mariadb => "MariaDB",
            Kind::Mysql => "MySQL",
            Kind::Redis => "Redis",
            Kind::Sqlite => "SQLite",
        })
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" => Ok(Kind::Postgres),
            "mariadb" => Ok(Kind::Mariadb),
            "mysql" => Ok(Kind::Mysql),
            "redis" => Ok(Kind::Redis),
            "sqlite" | "sqlite3" => Ok(Kind::Sqlite),
            other => Err(format!("unknown database {other:?}: postgres, mariadb, mysql, redis or none")),
        }
    }
}

/// The label that says how a backup takes a service's database (`nuwax.backup=stop`).
pub const LABEL_BACKUP: &str = "nuwax.backup";

/// How a backup takes a database server's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A dump taken inside its container while it runs (the default for PostgreSQL, MariaDB
    /// and MySQL, and for SQLite files when the container has `sqlite3`); its data files are
    /// not copied.
    Dump,
    /// Its data files, copied while it is stopped like any service's.
    Stop,
    /// Paused (frozen, not stopped) while the backup takes its moment, then unpaused: the
    /// shortest window for a service that writes (no shutdown, no restart), its files copied
    /// as a crash would leave them. For any service, not only databases.
    Pause,
    /// Kept running: its mounts are copied while it writes to them (each is marked as not one
    /// point in time). For any service whose files are safe to copy live, or a database whose
    /// own tool is not nuwax's to run.
    Live,
    /// Kept running and left out: the mounts only it uses are not backed up (listed as skipped;
    /// a rollback leaves them as they are). For caches and data kept elsewhere.
    Skip,
}

impl Mode {
    /// Whether the backup leaves the service running (and does not stop or pause it).
    pub fn keeps_running(self) -> bool {
        matches!(self, Mode::Dump | Mode::Live | Mode::Skip)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Dump => "dump",
            Mode::Stop => "stop",
            Mode::Pause => "pause",
            Mode::Live => "live",
            Mode::Skip => "skip",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "dump" => Ok(Mode::Dump),
            "stop" => Ok(Mode::Stop),
            "pause" => Ok(Mode::Pause),
            "live" => Ok(Mode::Live),
            "skip" => Ok(Mode::Skip),
            other => Err(format!(
                "backup must be \"dump\", \"stop\", \"pause\", \"live\" or \"skip\", not {other:?}"
            )),
        }
    }
}

/// `[services.NAME]` in nuwax.toml: what the operator says about one service.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSettings {
    /// The database server the service runs (`postgres`, `mariadb`, `mysql`, `redis`), or
    /// `none`, when its command does not tell.
    pub database: Option<String>,
    /// SQLite database files inside the container (absolute paths).
    #[serde(default)]
    pub sqlite: Vec<String>,
    /// How a backup takes the service: `dump` (its database, while it runs), `stop`, `pause`,
    /// `live` (copied while it runs) or `skip` (its own mounts left out).
    pub backup: Option<String>,
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Said {
    /// Told by the container's command and environment.
    Command,
    /// `nuwax.toml`.
    Settings,
    /// The `nuwax.database` label.
    Label,
}

/// The databases of one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Found {
    pub service: String,
    /// The server it runs, if any.
    pub kind: Option<Kind>,
    pub said: Said,
    /// What told it: the words of the command, or the setting.
    pub evidence: String,
    /// SQLite files it holds (paths inside the container).
    pub sqlite: Vec<String>,
    /// How a backup takes it (`dump` only for what nuwax can dump).
    pub backup: Mode,
    /// Who said how (`None`: the default, which for SQLite files holds only when the container
    /// has `sqlite3`).
    pub backup_said: Option<Said>,
}

/// What the settings say a service runs: `Some(None)` is "none".
fn said_kind(value: &str, whose: &str) -> anyhow::Result<Option<Kind>> {
    if value.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    match value.parse::<Kind>() {
        Ok(Kind::Sqlite) => Err(anyhow::anyhow!(
            "{whose}: SQLite has no server; name its files instead: sqlite = [\"/path/in/container.db\"]"
        )),
        Ok(k) => Ok(Some(k)),
        Err(e) => Err(anyhow::anyhow!("{whose}: {e}")),
    }
}

/// How the settings (`backup = ...` in `[services.NAME]` of nuwax.toml), else the label
/// `nuwax.backup=...`, say each service is taken, for the services where either says so.
pub fn said_modes(
    containers: &[Container],
    settings: &BTreeMap<String, ServiceSettings>,
) -> anyhow::Result<BTreeMap<String, Mode>> {
    let mut out = BTreeMap::new();
    for c in containers {
        let said = match settings.get(&c.service).and_then(|s| s.backup.as_deref()) {
            Some(v) => Some((v, format!("nuwax.toml: services.{}", c.service))),
            None => c
                .labels
                .get(LABEL_BACKUP)
                .map(|v| (v.as_str(), format!("label {LABEL_BACKUP} of {}", c.service))),
        };
        if let Some((v, whose)) = said {
            out.insert(c.service.clone(), v.parse::<Mode>().map_err(|e| anyhow::anyhow!("{whose}: {e}"))?);
        }
    }
    Ok(out)
}

/// The server a command runs, told by the names of the programs it names (`postgres`,
/// `mariadbd`, ...) anywhere in entrypoint + command, so that `docker-entrypoint.sh postgres`
/// and `gosu postgres postgres -c ...` both count; options (`-c`, `--x=y`) are not programs.
pub fn from_command(c: &Container) -> Option<(Kind, String)> {
    let words: Vec<&str> =
        c.command.iter().filter(|w| !w.starts_with('-')).map(|w| w.rsplit('/').next().unwrap_or(w)).collect();
    let has = |names: &[&str]| words.iter().any(|w| names.contains(w));
    let kind = if has(&["postgres", "postmaster"]) && !has(&["psql", "pg_dump", "pg_dumpall"]) {
        Kind::Postgres
    } else if has(&["mariadbd"]) {
        Kind::Mariadb
    } else if has(&["mysqld"]) {
        // MariaDB's images still start `mysqld` in older releases; their environment tells.
        let maria = c.env_names.iter().any(|n| n.starts_with("MARIADB_")) || c.image.contains("mariadb");
        if maria { Kind::Mariadb } else { Kind::Mysql }
    } else if has(&["redis-server"]) {
        Kind::Redis
    } else {
        return None;
    };
    Some((kind, format!("command `{}`", c.command.join(" "))))
}

/// The databases of each container's service: the settings first, then the label, then the
/// command. Services with neither a server nor SQLite files are left out.
pub fn detect(
    containers: &[Container],
    settings: &BTreeMap<String, ServiceSettings>,
) -> anyhow::Result<Vec<Found>> {
    let mut out: Vec<Found> = Vec::new();
    for c in containers {
        if out.iter().any(|f| f.service == c.service) {
            continue;
        }
        let set = settings.get(&c.service);
        let mut sqlite = set.map(|s| s.sqlite.clone()).unwrap_or_default();
        let mut seen = std::collections::BTreeSet::new();
        sqlite.retain(|p| seen.insert(p.clone()));
        if let Some(p) = sqlite.iter().find(|p| !p.starts_with('/')) {
            anyhow::bail!(
                "nuwax.toml: services.{}.sqlite: {p:?} is not an absolute path inside the container",
                c.service
            );
        }
        let (kind, said, evidence) = if let Some(v) = set.and_then(|s| s.database.as_deref()) {
            let whose = format!("nuwax.toml: services.{}.database", c.service);
            (said_kind(v, &whose)?, Said::Settings, format!("{whose} = {v:?}"))
        } else if let Some(v) = c.labels.get(LABEL_DATABASE) {
            let whose = format!("label {LABEL_DATABASE} of service {}", c.service);
            (said_kind(v, &whose)?, Said::Label, format!("label {LABEL_DATABASE}={v}"))
        } else {
            match from_command(c) {
                Some((k, e)) => (Some(k), Said::Command, e),
                None => (None, Said::Command, String::new()),
            }
        };
        // A service said to be dumped must have something to dump (the error below says so).
        let said_dump =
            set.and_then(|s| s.backup.as_deref()).or(c.labels.get(LABEL_BACKUP).map(String::as_str))
                == Some("dump");
        if kind.is_none() && sqlite.is_empty() && !said_dump {
            continue;
        }
        // SQLite files alone: the settings named them.
        let (said, evidence) = match evidence.is_empty() {
            true => (Said::Settings, format!("nuwax.toml: services.{}.sqlite", c.service)),
            false => (said, evidence),
        };
        // Dump mode needs every database of the service dumpable: a server nuwax cannot dump
        // (Redis) is copied while stopped, and so are the SQLite files beside it.
        let dumpable = match kind {
            Some(k) => k.dumpable(),
            None => !sqlite.is_empty(),
        };
        let (backup, backup_said) = match (set.and_then(|s| s.backup.as_deref()), c.labels.get(LABEL_BACKUP))
        {
            (Some(v), _) => (
                v.parse::<Mode>().map_err(|e| anyhow::anyhow!("nuwax.toml: services.{}: {e}", c.service))?,
                Some(Said::Settings),
            ),
            (None, Some(v)) => (
                v.parse::<Mode>()
                    .map_err(|e| anyhow::anyhow!("label {LABEL_BACKUP} of {}: {e}", c.service))?,
                Some(Said::Label),
            ),
            (None, None) if dumpable => (Mode::Dump, None),
            (None, None) => (Mode::Stop, None),
        };
        if backup == Mode::Dump && !dumpable {
            anyhow::bail!(
                "service {}: backup = \"dump\" needs PostgreSQL, MariaDB, MySQL or SQLite files \
                 (sqlite = [...]); {}",
                c.service,
                match kind {
                    Some(k) => format!("nuwax cannot dump {k} yet"),
                    None => "no database server was found in it".to_string(),
                }
            );
        }
        out.push(Found { service: c.service.clone(), kind, said, evidence, sqlite, backup, backup_said });
    }
    out.sort_by(|a, b| a.service.cmp(&b.service));
    Ok(out)
}

/// The companions SQLite keeps beside a database file while it is in use: a copy of them
/// taken apart from the database is worse than none.
pub const SQLITE_COMPANIONS: [&str; 3] = ["-wal", "-shm", "-journal"];

/// Of the mount destinations (paths inside a container), the one that holds `path`, the
/// deepest when mounts nest, and `path` relative to it. A mount of the file itself holds
/// nothing here: its companions would not be beside it on the host.
pub fn mount_holding<'a>(
    destinations: impl IntoIterator<Item = &'a str>,
    path: &str,
) -> Option<(&'a str, String)> {
    destinations
        .into_iter()
        .filter_map(|d| {
            let rel = match d.trim_end_matches('/') {
                "" => path.strip_prefix('/'),
                base => path.strip_prefix(base).and_then(|r| r.strip_prefix('/')),
            }?;
            (!rel.is_empty() && !rel.split('/').any(|c| c.is_empty() || c == "." || c == ".."))
                .then(|| (d, rel.to_string()))
        })
        .max_by_key(|(d, _)| d.len())
}

#[cfg(test)]
mod tests;
