//! What keeps the catalog honest over time: archives gone missing, paths switched by a storage
//! migration, rows rebuilt from archives, SQLite's own integrity check.

use std::path::Path;

use anyhow::{Context, Result};
use chrono::Utc;
use sqlx::Row;

use super::Catalog;

/// A row recreated from an archive's manifest.
pub struct Rebuilt<'a> {
    /// The id the manifest names; used when it is free.
    pub id: i64,
    pub kind: &'a str,
    pub project: &'a str,
    pub service_version: &'a str,
    pub path: &'a Path,
    pub size_bytes: u64,
    pub checksum: &'a str,
    pub compression: &'a str,
    pub file_count: u64,
    pub created_at: &'a str,
}

impl Catalog {
    pub async fn mark_missing(&self, id: i64) -> Result<()> {
        sqlx::query("UPDATE backups SET missing_at = ? WHERE id = ? AND missing_at IS NULL")
            .bind(Utc::now().to_rfc3339())
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn clear_missing(&self, id: i64) -> Result<()> {
        sqlx::query("UPDATE backups SET missing_at = NULL WHERE id = ?")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Points every `(id, path)` at its new path and writes the operation's detail, in one
    /// transaction: the catalog never points half at the old, half at the new directory.
    pub async fn switch_paths(
        &self,
        paths: &[(i64, String)],
        op: i64,
        detail: &serde_json::Value,
    ) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        for (id, path) in paths {
            sqlx::query("UPDATE backups SET path = ? WHERE id = ?")
                .bind(path)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE operations SET detail = ? WHERE id = ?")
            .bind(detail.to_string())
            .bind(op)
            .execute(&mut *tx)
            .await?;
        tx.commit().await.context("switching the catalog's archive paths")?;
        Ok(())
    }

    /// Inserts a complete backup found in the storage directory; returns its id (the
    /// manifest's when free, else a new one).
    pub async fn insert_rebuilt(&self, r: &Rebuilt<'_>) -> Result<i64> {
        let taken =
            sqlx::query("SELECT 1 FROM backups WHERE id = ?").bind(r.id).fetch_optional(self.pool()).await?;
        let id = if taken.is_none() { Some(r.id) } else { None };
        let row = sqlx::query(
            "INSERT INTO backups (id, kind, status, project, service_version, path, size_bytes, checksum,
                                  compression, file_count, created_at, finished_at, note)
             VALUES (?, ?, 'complete', ?, ?, ?, ?, ?, ?, ?, ?, ?, 'rebuilt from the archive')",
        )
        .bind(id)
        .bind(r.kind)
        .bind(r.project)
        .bind(r.service_version)
        .bind(r.path.to_string_lossy().as_ref())
        .bind(r.size_bytes as i64)
        .bind(r.checksum)
        .bind(r.compression)
        .bind(r.file_count as i64)
        .bind(r.created_at)
        .bind(Utc::now().to_rfc3339())
        .execute(self.pool())
        .await
        .context("recording a rebuilt backup")?;
        Ok(row.last_insert_rowid())
    }

    /// SQLite's `PRAGMA integrity_check`: empty when the database is sound.
    pub async fn integrity_problems(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("PRAGMA integrity_check").fetch_all(self.pool()).await?;
        Ok(rows.iter().filter_map(|r| r.try_get::<String, _>(0).ok()).filter(|s| s != "ok").collect())
    }
}
