//! User-facing error classes: each has an exit code and a one-line hint of what to do next.
//!
//! Subsystems return their own typed errors (or `anyhow` with context); the CLI looks for one of
//! these anywhere in the cause chain to pick the exit code.

use std::path::PathBuf;

/// Exit codes, documented in README.md.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const LOCKED: u8 = 3;
    pub const ENGINE_UNREACHABLE: u8 = 4;
    pub const PROJECT: u8 = 5;
    pub const PREFLIGHT: u8 = 6;
    pub const VERIFY_FAILED: u8 = 7;
    pub const SERVICES_DOWN: u8 = 8;
    pub const NOT_FOUND: u8 = 9;
    pub const NOT_CONFIRMED: u8 = 10;
    /// `upgrade`: failed, and rolled back to the pre-upgrade backup (services on the old version).
    pub const UPGRADE_ROLLED_BACK: u8 = 11;
    /// `upgrade`: failed, and the rollback failed too (or was not attempted with
    /// `--no-auto-rollback`): the message says what state things are in.
    pub const UPGRADE_ROLLBACK_FAILED: u8 = 12;
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot reach the Docker engine at {host}: {detail}")]
    EngineUnreachable { host: String, detail: String },
    #[error(
        "no compose file in {dir} (looked for compose.yaml, compose.yml, docker-compose.yml, docker-compose.yaml)"
    )]
    NoComposeFile { dir: PathBuf },
    #[error("{0}")]
    Config(String),
    #[error("not enough free space: needs ~{needed}, {free} free in {dir}")]
    NoSpace { needed: String, free: String, dir: PathBuf },
    #[error("storage directory {dir} is not writable: {detail}")]
    StorageNotWritable { dir: PathBuf, detail: String },
    #[error("backup {id} not found")]
    BackupNotFound { id: i64 },
    #[error("backup {id} failed verification: {detail}")]
    VerifyFailed { id: i64, detail: String },
    /// An archive file that is not (yet) a backup in the catalog, e.g. one given to `import`.
    #[error("archive {} failed verification: {detail}", path.display())]
    ArchiveVerifyFailed { path: PathBuf, detail: String },
    #[error("interrupted by {signal}")]
    Interrupted { signal: &'static str },
    #[error("services did not come back: {detail}")]
    ServicesDown { detail: String },
    #[error("{what} needs confirmation and there is no terminal to ask on")]
    NotConfirmed { what: &'static str },
    #[error("cancelled: nothing was changed")]
    Declined,
    /// `doctor` found problems; it printed them itself.
    #[error("doctor found {0} problem(s)")]
    Findings(usize),
    #[error("preflight found {} problem(s), nothing was changed:\n  - {}", .0.len(), .0.join("\n  - "))]
    Preflight(Vec<String>),
    #[error("upgrade to {to} failed ({cause}); rolled back to backup {backup_id}: {state}")]
    UpgradeRolledBack { to: String, cause: String, backup_id: i64, state: String },
    #[error("upgrade to {to} failed ({cause}), and {state}")]
    UpgradeNotRolledBack { to: String, cause: String, state: String },
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::EngineUnreachable { .. } => exit::ENGINE_UNREACHABLE,
            Error::NoComposeFile { .. } | Error::Config(_) => exit::PROJECT,
            Error::NoSpace { .. } | Error::StorageNotWritable { .. } | Error::Preflight(_) => exit::PREFLIGHT,
            Error::UpgradeRolledBack { .. } => exit::UPGRADE_ROLLED_BACK,
            Error::Findings(_) => exit::FAILED,
            Error::UpgradeNotRolledBack { .. } => exit::UPGRADE_ROLLBACK_FAILED,
            Error::BackupNotFound { .. } => exit::NOT_FOUND,
            Error::VerifyFailed { .. } | Error::ArchiveVerifyFailed { .. } => exit::VERIFY_FAILED,
            Error::Interrupted { signal } => {
                if *signal == "SIGTERM" {
                    143
                } else {
                    exit::INTERRUPTED
                }
            }
            Error::ServicesDown { .. } => exit::SERVICES_DOWN,
            Error::NotConfirmed { .. } | Error::Declined => exit::NOT_CONFIRMED,
        }
    }

    /// What the operator can do next, when there is something useful to say.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Error::EngineUnreachable { .. } => {
                "start dockerd, set DOCKER_HOST, or pass --no-docker to back up files only".into()
            }
            Error::NoComposeFile { .. } => {
                "run nuwax inside the compose project or pass --project-dir DIR".into()
            }
            Error::NoSpace { .. } => {
                "free some space, prune old backups, or set storage_dir / NUWAX_STORAGE_DIR to a larger disk"
                    .into()
            }
            Error::StorageNotWritable { .. } => {
                "fix the permissions, or set storage_dir / NUWAX_STORAGE_DIR".into()
            }
            Error::BackupNotFound { .. } => "`nuwax list` shows the backups in the catalog".into(),
            Error::ServicesDown { .. } => {
                "check `docker ps -a` and the service logs, then `nuwax recover` to retry starting them"
                    .into()
            }
            _ => return None,
        })
    }
}
