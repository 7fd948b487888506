//! The databases a project runs: which service runs which server, told by what the container
//! runs (its entrypoint and command as the engine resolved them, the names of its environment)
//! or said by the operator (`nuwax.toml` or the `nuwax.database` label).
//!
//! Detection is a pure function of a [`Container`] and the settings, so `status`, `backup
//! --dry-run` and the flows all see the same answer.

pub mod dump;
pub mod load;

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
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Postgres => "postgres",
            Kind::Mariadb => "mariadb",
            Kind::Mysql => "mysql",
            Kind::Redis => "redis",
        }
    }

    /// The directories inside the container that hold the server's data files, as the official
    /// images (and nuwax's own) lay them out.
    pub fn data_dirs(self) -> &'static [&'static str] {
        match self {
            Kind::Postgres => &["/var/lib/postgresql"],
            Kind::Mariadb | Kind::Mysql => &["/var/lib/mysql"],
            Kind::Redis => &["/data"],
        }
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
    /// and MySQL); its data files are not copied.
    Dump,
    /// Its data files, copied while it is stopped like any service's.
    Stop,
    /// Paused (frozen, not stopped) while the backup takes its moment, then unpaused: the
    /// shortest window for a service that writes (no shutdown, no restart), its files copied
    /// as a crash would leave them. For any service, not only databases.
    Pause,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "dump" => Ok(Mode::Dump),
            "stop" => Ok(Mode::Stop),
            "pause" => Ok(Mode::Pause),
            other => Err(format!("backup must be \"dump\", \"stop\" or \"pause\", not {other:?}")),
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
    /// How a backup takes the service: `dump` (its database, while it runs), `stop` or `pause`.
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
    /// How a backup takes it (`dump` only for a server nuwax can dump).
    pub backup: Mode,
}

/// What the settings say a service runs: `Some(None)` is "none".
fn said_kind(value: &str, whose: &str) -> anyhow::Result<Option<Kind>> {
    if value.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    value.parse::<Kind>().map(Some).map_err(|e| anyhow::anyhow!("{whose}: {e}"))
}

/// The services a backup pauses instead of stopping: `backup = "pause"` in nuwax.toml, else
/// the label `nuwax.backup=pause`.
pub fn paused(
    containers: &[Container],
    settings: &BTreeMap<String, ServiceSettings>,
) -> anyhow::Result<std::collections::BTreeSet<String>> {
    let mut out = std::collections::BTreeSet::new();
    for c in containers {
        let said = match settings.get(&c.service).and_then(|s| s.backup.as_deref()) {
            Some(v) => Some((v, format!("nuwax.toml: services.{}", c.service))),
            None => c
                .labels
                .get(LABEL_BACKUP)
                .map(|v| (v.as_str(), format!("label {LABEL_BACKUP} of {}", c.service))),
        };
        if let Some((v, whose)) = said
            && v.parse::<Mode>().map_err(|e| anyhow::anyhow!("{whose}: {e}"))? == Mode::Pause
        {
            out.insert(c.service.clone());
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
        let sqlite = set.map(|s| s.sqlite.clone()).unwrap_or_default();
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
        if kind.is_none() && sqlite.is_empty() {
            continue;
        }
        let evidence =
            if evidence.is_empty() { format!("nuwax.toml: services.{}.sqlite", c.service) } else { evidence };
        let dumpable = matches!(kind, Some(Kind::Postgres | Kind::Mariadb | Kind::Mysql));
        let backup = match (set.and_then(|s| s.backup.as_deref()), c.labels.get(LABEL_BACKUP)) {
            (Some(v), _) => {
                v.parse::<Mode>().map_err(|e| anyhow::anyhow!("nuwax.toml: services.{}: {e}", c.service))?
            }
            (None, Some(v)) => v
                .parse::<Mode>()
                .map_err(|e| anyhow::anyhow!("label {LABEL_BACKUP} of {}: {e}", c.service))?,
            (None, None) if dumpable => Mode::Dump,
            (None, None) => Mode::Stop,
        };
        if backup == Mode::Dump && !dumpable {
            anyhow::bail!(
                "service {}: backup = \"dump\" needs PostgreSQL, MariaDB or MySQL; {}",
                c.service,
                match kind {
                    Some(k) => format!("nuwax cannot dump {k} yet"),
                    None => "no database server was found in it".to_string(),
                }
            );
        }
        out.push(Found { service: c.service.clone(), kind, said, evidence, sqlite, backup });
    }
    out.sort_by(|a, b| a.service.cmp(&b.service));
    Ok(out)
}

#[cfg(test)]
mod tests;
