//! The catalog: SQLite through sqlx (WAL), migrations embedded from `migrations/`.
//! Backups (`pending` → `complete` | `failed`), the operations journal, upgrades and versions.

mod copies;
mod lifecycle;
mod records;
mod upgrades;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

pub use copies::CopyRecord;
pub use lifecycle::*;
pub use records::*;
pub use upgrades::*;

pub const CATALOG_FILE: &str = "catalog.db";

#[derive(Clone)]
pub struct Catalog {
    pool: SqlitePool,
    path: PathBuf,
}

impl Catalog {
    /// Opens (creating when missing) `<state_dir>/catalog.db`, owner-only, and migrates it.
    pub async fn open(state_dir: &Path) -> Result<Catalog> {
        crate::fsutil::create_private_dir(state_dir)?;
        let path = state_dir.join(CATALOG_FILE);
        let opts = SqliteConnectOptions::from_str("sqlite://")?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(std::time::Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(opts)
            .await
            .with_context(|| format!("opening the catalog {}", path.display()))?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .with_context(|| format!("migrating the catalog {}", path.display()))?;
        for f in [
            path.clone(),
            state_dir.join(format!("{CATALOG_FILE}-wal")),
            state_dir.join(format!("{CATALOG_FILE}-shm")),
        ] {
            crate::fsutil::make_private(&f);
        }
        Ok(Catalog { pool, path })
    }

    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Inserts a `pending` backup and returns its id.
    pub async fn insert_pending(&self, new: &NewBackup<'_>) -> Result<i64> {
        let r = sqlx::query(
            "INSERT INTO backups (kind, status, project, service_version, compression, created_at, note)
             VALUES (?, 'pending', ?, ?, ?, ?, ?)",
        )
        .bind(new.kind.as_str())
        .bind(new.project)
        .bind(new.service_version)
        .bind(new.compression)
        .bind(new.created_at.to_rfc3339())
        .bind(new.note)
        .execute(&self.pool)
        .await
        .context("recording the new backup")?;
        Ok(r.last_insert_rowid())
    }

    /// Marks a backup complete, with everything measured. Only after the verified rename.
    pub async fn complete(&self, id: i64, done: &Completed) -> Result<()> {
        sqlx::query(
            "UPDATE backups SET status = 'complete', path = ?, size_bytes = ?, checksum = ?, file_count = ?,
             finished_at = ?, duration_ms = ?, downtime_ms = ?, live = ?, stop_killed = ?, error = NULL
             WHERE id = ?",
        )
        .bind(done.path.to_string_lossy().as_ref())
        .bind(done.size_bytes as i64)
        .bind(&done.checksum)
        .bind(done.file_count as i64)
        .bind(done.finished_at.to_rfc3339())
        .bind(done.duration_ms as i64)
        .bind(done.downtime_ms.map(|d| d as i64))
        .bind(done.live as i64)
        .bind(match done.stop_killed.is_empty() {
            true => None,
            false => Some(serde_json::to_string(&done.stop_killed)?),
        })
        .bind(id)
        .execute(&self.pool)
        .await
        .context("marking the backup complete")?;
        Ok(())
    }

    pub async fn fail(&self, id: i64, error: &str, downtime_ms: Option<u64>) -> Result<()> {
        sqlx::query(
            "UPDATE backups SET status = 'failed', error = ?, finished_at = ?,
             downtime_ms = COALESCE(?, downtime_ms) WHERE id = ? AND status != 'complete'",
        )
        .bind(error)
        .bind(chrono::Utc::now().to_rfc3339())
        .bind(downtime_ms.map(|d| d as i64))
        .bind(id)
        .execute(&self.pool)
        .await
        .context("marking the backup failed")?;
        Ok(())
    }

    /// Marks `pending` backups that no running operation owns as failed: their process died
    /// before it could journal anything. Only call while holding the project lock.
    pub async fn fail_orphaned_pending(&self, project: &str) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE backups SET status = 'failed', finished_at = ?,
             error = 'interrupted: nuwax ended before the backup started'
             WHERE project = ? AND status = 'pending' AND id NOT IN
               (SELECT backup_id FROM operations WHERE state = 'running' AND backup_id IS NOT NULL)",
        )
        .bind(chrono::Utc::now().to_rfc3339())
        .bind(project)
        .execute(&self.pool)
        .await
        .context("cleaning up the catalog")?;
        Ok(r.rows_affected())
    }

    pub async fn get(&self, id: i64) -> Result<Option<BackupRecord>> {
        let row = sqlx::query("SELECT * FROM backups WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .context("reading the catalog")?;
        let mut rec = row.map(|r| BackupRecord::from_row(&r)).transpose()?;
        if let Some(r) = &mut rec {
            r.copies = self.copies_of(r.id).await?;
        }
        Ok(rec)
    }

    /// All backups of the project, oldest first, with their copies.
    pub async fn list(&self, project: &str) -> Result<Vec<BackupRecord>> {
        let rows = sqlx::query("SELECT * FROM backups WHERE project = ? ORDER BY id")
            .bind(project)
            .fetch_all(&self.pool)
            .await
            .context("reading the catalog")?;
        let mut records: Vec<BackupRecord> =
            rows.iter().map(BackupRecord::from_row).collect::<Result<_>>()?;
        let copies = self.copies(project).await?;
        for r in &mut records {
            r.copies = copies.iter().filter(|c| c.backup_id == r.id).cloned().collect();
        }
        Ok(records)
    }

    pub async fn last_complete(&self, project: &str) -> Result<Option<BackupRecord>> {
        let row = sqlx::query(
            "SELECT * FROM backups WHERE project = ? AND status = 'complete' AND missing_at IS NULL
             ORDER BY id DESC LIMIT 1",
        )
        .bind(project)
        .fetch_optional(&self.pool)
        .await
        .context("reading the catalog")?;
        row.map(|r| BackupRecord::from_row(&r)).transpose()
    }

    pub async fn delete(&self, id: i64) -> Result<()> {
        sqlx::query("DELETE FROM copies WHERE backup_id = ?").bind(id).execute(&self.pool).await?;
        sqlx::query("UPDATE operations SET backup_id = NULL WHERE backup_id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM backups WHERE id = ?").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    /// Opens a journal entry for an operation of this process, holding its journal.
    pub async fn begin_operation(
        &self,
        kind: OperationKind,
        project: &str,
        backup_id: Option<i64>,
        detail: &serde_json::Value,
    ) -> Result<i64> {
        let r = sqlx::query(
            "INSERT INTO operations (kind, project, pid, backup_id, state, detail, started_at)
             VALUES (?, ?, ?, ?, 'running', ?, ?)",
        )
        .bind(kind.as_str())
        .bind(project)
        .bind(std::process::id() as i64)
        .bind(backup_id)
        .bind(detail.to_string())
        .bind(chrono::Utc::now().to_rfc3339())
        .execute(&self.pool)
        .await
        .context("writing the operations journal")?;
        Ok(r.last_insert_rowid())
    }

    /// Writes an operation's stop scope (JSON). Called before the first stop and before each
    /// change of what the end of the scope must do.
    pub async fn set_scope(&self, op: i64, scope: &impl serde::Serialize) -> Result<()> {
        sqlx::query("UPDATE operations SET scope = ? WHERE id = ?")
            .bind(serde_json::to_string(scope)?)
            .bind(op)
            .execute(&self.pool)
            .await
            .context("writing the operations journal")?;
        Ok(())
    }

    /// Records what the operation is doing (JSON), before it does it.
    pub async fn set_detail(&self, op: i64, detail: &serde_json::Value) -> Result<()> {
        sqlx::query("UPDATE operations SET detail = ? WHERE id = ?")
            .bind(detail.to_string())
            .bind(op)
            .execute(&self.pool)
            .await
            .context("writing the operations journal")?;
        Ok(())
    }

    pub async fn finish_operation(&self, op: i64, state: OperationState, note: Option<&str>) -> Result<()> {
        sqlx::query(
            "UPDATE operations SET state = ?, finished_at = ?, note = COALESCE(?, note) WHERE id = ?",
        )
        .bind(state.as_str())
        .bind(chrono::Utc::now().to_rfc3339())
        .bind(note)
        .bind(op)
        .execute(&self.pool)
        .await
        .context("writing the operations journal")?;
        Ok(())
    }

    /// The journal of operation `id` (running or not).
    pub async fn operation_detail(&self, id: i64) -> Result<Option<serde_json::Value>> {
        let row = sqlx::query("SELECT detail FROM operations WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .context("reading the operations journal")?;
        Ok(match row {
            Some(r) => {
                r.try_get::<Option<String>, _>("detail")?.map(|d| serde_json::from_str(&d)).transpose()?
            }
            None => None,
        })
    }

    /// Operations of the project still marked running.
    pub async fn unfinished(&self, project: &str) -> Result<Vec<Operation>> {
        let rows =
            sqlx::query("SELECT * FROM operations WHERE project = ? AND state = 'running' ORDER BY id DESC")
                .bind(project)
                .fetch_all(&self.pool)
                .await
                .context("reading the operations journal")?;
        rows.iter()
            .map(|r| {
                let kind: String = r.try_get("kind")?;
                Ok(Operation {
                    id: r.try_get("id")?,
                    kind: OperationKind::parse(&kind).with_context(|| {
                        format!(
                            "operation {}: unknown kind {kind:?}",
                            r.try_get::<i64, _>("id").unwrap_or_default()
                        )
                    })?,
                    pid: r.try_get("pid")?,
                    backup_id: r.try_get("backup_id")?,
                    stopped_services: serde_json::from_str(r.try_get::<&str, _>("stopped_services")?)?,
                    temp_path: r.try_get::<Option<String>, _>("temp_path")?.map(PathBuf::from),
                    started_at: r.try_get("started_at")?,
                    detail: r
                        .try_get::<Option<String>, _>("detail")?
                        .map(|d| serde_json::from_str(&d))
                        .transpose()?,
                    scope: r
                        .try_get::<Option<String>, _>("scope")?
                        .map(|d| serde_json::from_str(&d))
                        .transpose()?,
                })
            })
            .collect()
    }
}
