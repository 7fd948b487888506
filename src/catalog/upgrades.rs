//! Upgrades and the version each project runs.

use anyhow::{Context, Result};
use chrono::Utc;
use serde::Serialize;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::Catalog;

pub struct NewUpgrade<'a> {
    pub project: &'a str,
    pub package_name: &'a str,
    pub package_source: &'a str,
    pub package_sha256: Option<&'a str>,
    pub from_version: &'a str,
    pub to_version: &'a str,
}

/// How an upgrade ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpgradeStatus {
    Running,
    Upgraded,
    RolledBack,
    RollbackFailed,
    /// Failed and left in place (`--no-auto-rollback`), or failed before anything changed.
    Failed,
}

impl UpgradeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Upgraded => "upgraded",
            Self::RolledBack => "rolled_back",
            Self::RollbackFailed => "rollback_failed",
            Self::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct UpgradeRecord {
    pub id: i64,
    pub project: String,
    pub package_name: String,
    pub package_source: String,
    pub package_sha256: Option<String>,
    pub from_version: String,
    pub to_version: String,
    pub backup_id: Option<i64>,
    pub status: String,
    pub cause: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub downtime_ms: Option<i64>,
    pub rollback_safety_backup_id: Option<i64>,
}

impl UpgradeRecord {
    fn from_row(r: &SqliteRow) -> Result<Self> {
        Ok(UpgradeRecord {
            id: r.try_get("id")?,
            project: r.try_get("project")?,
            package_name: r.try_get("package_name")?,
            package_source: r.try_get("package_source")?,
            package_sha256: r.try_get("package_sha256")?,
            from_version: r.try_get("from_version")?,
            to_version: r.try_get("to_version")?,
            backup_id: r.try_get("backup_id")?,
            status: r.try_get("status")?,
            cause: r.try_get("cause")?,
            started_at: r.try_get("started_at")?,
            finished_at: r.try_get("finished_at")?,
            duration_ms: r.try_get("duration_ms")?,
            downtime_ms: r.try_get("downtime_ms")?,
            rollback_safety_backup_id: r.try_get("rollback_safety_backup_id")?,
        })
    }
}

/// How an upgrade ended, for [`Catalog::finish_upgrade`].
pub struct UpgradeEnd<'a> {
    pub status: UpgradeStatus,
    pub cause: Option<&'a str>,
    pub duration_ms: u64,
    pub downtime_ms: Option<u64>,
    pub rollback_safety_backup_id: Option<i64>,
}

impl Catalog {
    pub async fn begin_upgrade(&self, u: &NewUpgrade<'_>) -> Result<i64> {
        let r = sqlx::query(
            "INSERT INTO upgrades (project, package_name, package_source, package_sha256, from_version,
                                   to_version, status, started_at)
             VALUES (?, ?, ?, ?, ?, ?, 'running', ?)",
        )
        .bind(u.project)
        .bind(u.package_name)
        .bind(u.package_source)
        .bind(u.package_sha256)
        .bind(u.from_version)
        .bind(u.to_version)
        .bind(Utc::now().to_rfc3339())
        .execute(self.pool())
        .await?;
        Ok(r.last_insert_rowid())
    }

    pub async fn set_upgrade_backup(&self, id: i64, backup_id: i64) -> Result<()> {
        sqlx::query("UPDATE upgrades SET backup_id = ? WHERE id = ?")
            .bind(backup_id)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Marks `running` upgrades that no running operation journals as failed: their process
    /// died before it journaled anything (nothing had changed). Only under the project lock.
    pub async fn fail_orphaned_upgrades(&self, project: &str) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE upgrades SET status = 'failed', finished_at = ?,
             cause = 'interrupted: nuwax ended before the upgrade changed anything'
             WHERE project = ? AND status = 'running' AND id NOT IN
               (SELECT json_extract(detail, '$.upgrade_id') FROM operations
                WHERE state = 'running' AND kind = 'upgrade' AND detail IS NOT NULL)",
        )
        .bind(chrono::Utc::now().to_rfc3339())
        .bind(project)
        .execute(self.pool())
        .await
        .context("cleaning up the upgrades")?;
        Ok(r.rows_affected())
    }

    pub async fn finish_upgrade(&self, id: i64, end: &UpgradeEnd<'_>) -> Result<()> {
        sqlx::query(
            "UPDATE upgrades SET status = ?, cause = ?, finished_at = ?, duration_ms = ?, downtime_ms = ?,
                                 rollback_safety_backup_id = ?
             WHERE id = ?",
        )
        .bind(end.status.as_str())
        .bind(end.cause)
        .bind(Utc::now().to_rfc3339())
        .bind(end.duration_ms as i64)
        .bind(end.downtime_ms.map(|d| d as i64))
        .bind(end.rollback_safety_backup_id)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn get_upgrade(&self, id: i64) -> Result<Option<UpgradeRecord>> {
        let row =
            sqlx::query("SELECT * FROM upgrades WHERE id = ?").bind(id).fetch_optional(self.pool()).await?;
        row.as_ref().map(UpgradeRecord::from_row).transpose()
    }

    /// Newest first.
    pub async fn upgrades(&self, project: &str) -> Result<Vec<UpgradeRecord>> {
        let rows = sqlx::query("SELECT * FROM upgrades WHERE project = ? ORDER BY id DESC")
            .bind(project)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(UpgradeRecord::from_row).collect()
    }

    /// The version the catalog says the project runs (set by upgrades and rollbacks).
    pub async fn version(&self, project: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT version FROM project_versions WHERE project = ?")
            .bind(project)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(|r| r.get::<String, _>("version")))
    }

    pub async fn set_version(&self, project: &str, version: &str, reason: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO project_versions (project, version, updated_at, reason) VALUES (?, ?, ?, ?)
             ON CONFLICT (project) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at,
                                                 reason = excluded.reason",
        )
        .bind(project)
        .bind(version)
        .bind(Utc::now().to_rfc3339())
        .bind(reason)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::OperationKind;

    #[tokio::test]
    async fn an_upgrade_no_running_operation_journals_is_failed_and_a_journaled_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).await.unwrap();
        let new = NewUpgrade {
            project: "p",
            package_name: "demo",
            package_source: "pkg",
            package_sha256: None,
            from_version: "1",
            to_version: "2",
        };
        let orphan = catalog.begin_upgrade(&new).await.unwrap();
        let live = catalog.begin_upgrade(&new).await.unwrap();
        let detail = serde_json::json!({ "phase": "backup", "upgrade_id": live });
        catalog.begin_operation(OperationKind::Upgrade, "p", None, &detail).await.unwrap();
        assert_eq!(catalog.fail_orphaned_upgrades("p").await.unwrap(), 1);
        let rows = catalog.upgrades("p").await.unwrap();
        assert_eq!(rows.iter().find(|u| u.id == orphan).unwrap().status, "failed");
        assert_eq!(rows.iter().find(|u| u.id == live).unwrap().status, "running");
    }
}
