//! Where each backup's copies are: one row per backup and remote (see migrations/0006).

use anyhow::{Context, Result};
use chrono::Utc;
use serde::Serialize;
use sqlx::Row;

use super::Catalog;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CopyRecord {
    pub backup_id: i64,
    pub remote: String,
    /// The object's name on the remote.
    pub name: String,
    /// `pending` or `copied`.
    pub status: String,
    pub size_bytes: Option<i64>,
    pub sha256: Option<String>,
    pub copied_at: Option<String>,
    pub verified_at: Option<String>,
    pub attempts: i64,
    pub error: Option<String>,
}

impl CopyRecord {
    pub fn is_copied(&self) -> bool {
        self.status == "copied"
    }
}

fn row(r: &sqlx::sqlite::SqliteRow) -> Result<CopyRecord> {
    Ok(CopyRecord {
        backup_id: r.try_get("backup_id")?,
        remote: r.try_get("remote")?,
        name: r.try_get("name")?,
        status: r.try_get("status")?,
        size_bytes: r.try_get("size_bytes")?,
        sha256: r.try_get("sha256")?,
        copied_at: r.try_get("copied_at")?,
        verified_at: r.try_get("verified_at")?,
        attempts: r.try_get("attempts")?,
        error: r.try_get("error")?,
    })
}

impl Catalog {
    /// Every copy of the project's backups, by backup then remote.
    pub async fn copies(&self, project: &str) -> Result<Vec<CopyRecord>> {
        let rows = sqlx::query(
            "SELECT c.* FROM copies c JOIN backups b ON b.id = c.backup_id WHERE b.project = ?
             ORDER BY c.backup_id, c.remote",
        )
        .bind(project)
        .fetch_all(self.pool())
        .await
        .context("reading the catalog's copies")?;
        rows.iter().map(row).collect()
    }

    pub async fn copies_of(&self, backup_id: i64) -> Result<Vec<CopyRecord>> {
        let rows = sqlx::query("SELECT * FROM copies WHERE backup_id = ? ORDER BY remote")
            .bind(backup_id)
            .fetch_all(self.pool())
            .await
            .context("reading the catalog's copies")?;
        rows.iter().map(row).collect()
    }

    /// A copy wanted and not whole there (yet): one more attempt, and why it did not work.
    pub async fn copy_pending(
        &self,
        backup_id: i64,
        remote: &str,
        name: &str,
        error: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO copies (backup_id, remote, name, status, attempts, error, updated_at)
             VALUES (?, ?, ?, 'pending', ?, ?, ?)
             ON CONFLICT (backup_id, remote) DO UPDATE SET name = excluded.name, status = 'pending',
               attempts = attempts + excluded.attempts, error = excluded.error, updated_at = excluded.updated_at",
        )
        .bind(backup_id)
        .bind(remote)
        .bind(name)
        .bind(i64::from(error.is_some()))
        .bind(error)
        .bind(Utc::now().to_rfc3339())
        .execute(self.pool())
        .await
        .context("recording a pending copy")?;
        Ok(())
    }

    /// The object is whole: its size and sha256 as read back.
    pub async fn copy_done(
        &self,
        backup_id: i64,
        remote: &str,
        name: &str,
        size: u64,
        sha256: &str,
    ) -> Result<()> {
        let now = Utc::now().to_rfc3339();
        sqlx::query(
            "INSERT INTO copies (backup_id, remote, name, status, size_bytes, sha256, copied_at, verified_at, updated_at)
             VALUES (?, ?, ?, 'copied', ?, ?, ?, ?, ?)
             ON CONFLICT (backup_id, remote) DO UPDATE SET name = excluded.name, status = 'copied',
               size_bytes = excluded.size_bytes, sha256 = excluded.sha256, copied_at = excluded.copied_at,
               verified_at = excluded.verified_at, error = NULL, updated_at = excluded.updated_at",
        )
        .bind(backup_id)
        .bind(remote)
        .bind(name)
        .bind(i64::try_from(size).unwrap_or(i64::MAX))
        .bind(sha256)
        .bind(&now)
        .bind(&now)
        .bind(&now)
        .execute(self.pool())
        .await
        .context("recording a copy")?;
        Ok(())
    }

    /// A copy read back whole and equal to the archive (`verify --remote`), or found otherwise.
    pub async fn copy_verified(&self, backup_id: i64, remote: &str, problem: Option<&str>) -> Result<()> {
        let now = Utc::now().to_rfc3339();
        let q = match problem {
            None => sqlx::query("UPDATE copies SET verified_at = ?, error = NULL, updated_at = ? WHERE backup_id = ? AND remote = ?")
                .bind(now.clone())
                .bind(now),
            // Not whole: no longer taken for a copy; `sync` copies it again.
            Some(p) => sqlx::query("UPDATE copies SET status = 'pending', error = ?, updated_at = ? WHERE backup_id = ? AND remote = ?")
                .bind(p.to_string())
                .bind(now),
        };
        q.bind(backup_id).bind(remote).execute(self.pool()).await.context("recording a verified copy")?;
        Ok(())
    }

    pub async fn forget_copy(&self, backup_id: i64, remote: &str) -> Result<()> {
        sqlx::query("DELETE FROM copies WHERE backup_id = ? AND remote = ?")
            .bind(backup_id)
            .bind(remote)
            .execute(self.pool())
            .await
            .context("removing a copy from the catalog")?;
        Ok(())
    }

    /// Points the backup at its local archive (fetched back from a remote), or at none (pruned
    /// here while a copy holds it).
    pub async fn set_path(&self, id: i64, path: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE backups SET path = ?, missing_at = NULL WHERE id = ?")
            .bind(path)
            .bind(id)
            .execute(self.pool())
            .await
            .context("recording where a backup's archive is")?;
        Ok(())
    }
}
