//! Rows of the catalog as Rust types.

use std::path::PathBuf;

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackupKind {
    Manual,
    PreUpgrade,
    PreRollback,
    Scheduled,
}

impl BackupKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupKind::Manual => "manual",
            BackupKind::PreUpgrade => "pre-upgrade",
            BackupKind::PreRollback => "pre-rollback",
            BackupKind::Scheduled => "scheduled",
        }
    }
}

pub struct NewBackup<'a> {
    pub kind: BackupKind,
    pub project: &'a str,
    pub service_version: &'a str,
    pub compression: &'a str,
    pub created_at: DateTime<Utc>,
    pub note: Option<&'a str>,
}

pub struct Completed {
    pub path: PathBuf,
    pub size_bytes: u64,
    pub checksum: String,
    pub file_count: u64,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: u64,
    pub downtime_ms: Option<u64>,
    /// The data was copied while services ran.
    pub live: bool,
    /// Services killed at their stop timeout.
    pub stop_killed: Vec<String>,
}

/// A row of `backups`, as `list`, `show` and `--json` present it.
#[derive(Debug, Clone, Serialize)]
pub struct BackupRecord {
    pub id: i64,
    pub kind: String,
    pub status: String,
    pub project: String,
    pub service_version: String,
    pub path: Option<String>,
    pub size_bytes: Option<i64>,
    pub checksum: Option<String>,
    pub compression: String,
    pub file_count: Option<i64>,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub downtime_ms: Option<i64>,
    pub note: Option<String>,
    pub error: Option<String>,
    /// When the archive was found gone (then `status` reads `missing`).
    pub missing_at: Option<String>,
    /// The data was copied while services ran (`--no-stop`): not one point in time.
    pub live: bool,
    /// Services the engine killed because they did not stop within their stop timeout.
    pub stop_killed: Vec<String>,
    /// Its copies on remotes (`[[remotes]]`), copied or pending.
    pub copies: Vec<super::CopyRecord>,
}

impl BackupRecord {
    pub(crate) fn from_row(r: &SqliteRow) -> Result<Self> {
        Ok(BackupRecord {
            id: r.try_get("id")?,
            kind: r.try_get("kind")?,
            status: r.try_get("status")?,
            project: r.try_get("project")?,
            service_version: r.try_get("service_version")?,
            path: r.try_get("path")?,
            size_bytes: r.try_get("size_bytes")?,
            checksum: r.try_get("checksum")?,
            compression: r.try_get("compression")?,
            file_count: r.try_get("file_count")?,
            created_at: r.try_get("created_at")?,
            finished_at: r.try_get("finished_at")?,
            duration_ms: r.try_get("duration_ms")?,
            downtime_ms: r.try_get("downtime_ms")?,
            note: r.try_get("note")?,
            error: r.try_get("error")?,
            missing_at: r.try_get("missing_at")?,
            live: r.try_get::<i64, _>("live")? != 0,
            stop_killed: r
                .try_get::<Option<String>, _>("stop_killed")?
                .map(|s| serde_json::from_str(&s))
                .transpose()?
                .unwrap_or_default(),
            copies: Vec::new(),
        })
        .map(|mut b: BackupRecord| {
            if b.missing_at.is_some() && b.status == "complete" {
                b.status = "missing".into();
            }
            b
        })
    }

    pub fn is_complete(&self) -> bool {
        self.status == "complete"
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoppedService {
    pub service: String,
    pub id: String,
}

/// The kinds of operation the journal holds; recovery dispatches on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OperationKind {
    Backup,
    Rollback,
    Upgrade,
    Prune,
    StorageMigrate,
}

impl OperationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Backup => "backup",
            OperationKind::Rollback => "rollback",
            OperationKind::Upgrade => "upgrade",
            OperationKind::Prune => "prune",
            OperationKind::StorageMigrate => "storage-migrate",
        }
    }

    pub fn parse(s: &str) -> Option<OperationKind> {
        [
            OperationKind::Backup,
            OperationKind::Rollback,
            OperationKind::Upgrade,
            OperationKind::Prune,
            OperationKind::StorageMigrate,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for OperationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy)]
pub enum OperationState {
    Done,
    Recovered,
}

impl OperationState {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationState::Done => "done",
            OperationState::Recovered => "recovered",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Operation {
    pub id: i64,
    pub kind: OperationKind,
    pub pid: i64,
    pub backup_id: Option<i64>,
    pub stopped_services: Vec<StoppedService>,
    pub temp_path: Option<PathBuf>,
    pub started_at: String,
    /// The kind's journal ([`crate::runner::Journal`]); `None` in rows of older versions.
    pub detail: Option<serde_json::Value>,
    /// The stop scope ([`crate::runner::ScopeJournal`]); `None` in rows of older versions,
    /// which kept only `stopped_services`.
    pub scope: Option<serde_json::Value>,
}
