//! `nuwax prune`: remove the backups the retention policy does not keep. The decision is
//! [`crate::retention::decide`], a pure function; this flow feeds it the catalog and carries it
//! out safely: the newest complete backup must verify before anything is deleted, every
//! deletion removes the file and then the row (journaled, so a crash in between is finished by
//! the next command), and leftovers of dead operations are cleaned.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Ctx;
use crate::archive::{self, NoProgress};
use crate::catalog::BackupRecord;
use crate::faults::{self, Crash};
use crate::retention::{Candidate, Decision, Policy, decide};
use crate::runner::{self, Operation, OperationKind};

/// What a prune journals before each deletion.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Journal {
    /// The backup being deleted: its file may be gone already, its row not yet.
    pub deleting: Option<i64>,
    pub path: Option<String>,
    /// Its services whose images are kept by tag: once the file is gone only this says so.
    #[serde(default)]
    pub kept: Vec<String>,
}

impl runner::Journal for Journal {
    const KIND: OperationKind = OperationKind::Prune;
}

#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub id: i64,
    pub kind: String,
    pub status: String,
    pub created_at: String,
    pub size_bytes: Option<i64>,
    pub keep: bool,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneOutcome {
    pub dry_run: bool,
    pub items: Vec<Item>,
    pub removed: Vec<i64>,
    pub freed_bytes: u64,
    /// The newest complete backup, verified before anything was deleted.
    pub verified: Option<i64>,
    pub leftovers_removed: Vec<PathBuf>,
    /// Each remote's own retention over the copies it holds.
    pub remotes: Vec<super::offsite::RemotePrune>,
}

pub async fn prune(ctx: &Ctx, policy: &Policy, dry_run: bool, now: DateTime<Utc>) -> Result<PruneOutcome> {
    policy.validate().map_err(|e| crate::Error::Config(format!("retention policy: {e}")))?;
    let project = &ctx.project.name;
    let storage = &ctx.project.storage_dir;
    if !storage.is_dir() {
        bail!(crate::Error::Config(format!(
            "the storage directory {} is not there (not mounted?): nothing was pruned",
            storage.display()
        )));
    }
    let mut records = ctx.catalog.list(project).await?;
    // Backups whose only archive is a remote's copy are that remote's to prune (`prune_remotes`).
    let offsite = super::offsite::offsite_only(&records);
    records.retain(|r| !offsite.contains(&r.id));
    // A complete row whose archive is gone is `missing`: not restorable, removed below.
    for r in records.iter_mut().filter(|r| r.is_complete()) {
        if !r.path.as_deref().is_some_and(|p| std::path::Path::new(p).is_file()) {
            if !dry_run {
                ctx.catalog.mark_missing(r.id).await?;
            }
            r.status = "missing".into();
        }
    }
    let newest = records.iter().filter(|r| r.is_complete()).max_by_key(|r| r.id).cloned();
    if newest.is_none() && records.iter().any(|r| r.status == "missing") {
        // Every archive gone at once is a lost mount far more often than a real loss.
        bail!(crate::Error::VerifyFailed {
            id: records.iter().map(|r| r.id).max().unwrap_or_default(),
            detail: format!(
                "no complete backup has its archive in {}: nothing was pruned (is the right disk mounted?)",
                storage.display()
            ),
        });
    }
    let mut protected: Vec<(i64, String)> = Vec::new();
    if let Some(n) = &newest {
        protected.push((n.id, "newest complete backup".into()));
    }
    if let Some(id) = ctx
        .catalog
        .upgrades(project)
        .await?
        .into_iter()
        .find(|u| u.status == "upgraded")
        .and_then(|u| u.backup_id)
    {
        protected.push((id, "backup of the latest successful upgrade".into()));
    }
    let candidates: Vec<Candidate> = records.iter().map(candidate).collect::<Result<_>>()?;
    let decisions = decide(&candidates, policy, &protected, now);
    let items: Vec<Item> = decisions.iter().map(|d| item(d, &records)).collect();
    let mut out = PruneOutcome {
        dry_run,
        items,
        removed: Vec::new(),
        freed_bytes: 0,
        verified: None,
        leftovers_removed: Vec::new(),
        remotes: Vec::new(),
    };
    let doomed: Vec<&BackupRecord> =
        decisions.iter().filter(|d| !d.keep).filter_map(|d| records.iter().find(|r| r.id == d.id)).collect();
    if dry_run {
        out.remotes = super::offsite::prune_remotes(ctx, true, now).await?;
        return Ok(out);
    }

    // Nothing goes unless the backup everything falls back on is sound.
    if doomed.iter().any(|r| r.is_complete()) {
        let n = newest.as_ref().context("no complete backup to fall back on")?;
        let (path, sum, cancel) = (
            PathBuf::from(n.path.clone().unwrap_or_default()),
            n.checksum.clone(),
            ctx.interrupt.cancel().clone(),
        );
        let verified =
            tokio::task::spawn_blocking(move || archive::verify(&path, sum.as_deref(), &cancel, &NoProgress))
                .await?;
        if let Err(e) = verified {
            bail!(crate::Error::VerifyFailed {
                id: n.id,
                detail: format!(
                    "{:#}; the newest complete backup must verify before anything is pruned: nothing was deleted",
                    anyhow::Error::from(e)
                )
            });
        }
        out.verified = Some(n.id);
    }

    let mut op = Operation::begin(ctx, Journal::default()).await?;
    let deleted = delete_all(&mut op, &doomed, &mut out).await;
    op.close(deleted.as_ref().err().map(|_| "failed")).await?;
    deleted?;
    out.leftovers_removed = super::recover::sweep(&ctx.project.storage_dir);
    // The remotes after the local archives: a backup pruned here whose copy a remote keeps
    // stays restorable from there.
    out.remotes = super::offsite::prune_remotes(ctx, false, now).await?;
    Ok(out)
}

/// Deletes each doomed backup, one journaled deletion after the other.
async fn delete_all(
    op: &mut Operation<'_, Journal>,
    doomed: &[&BackupRecord],
    out: &mut PruneOutcome,
) -> Result<()> {
    for r in doomed {
        op.ctx().interrupt.check()?;
        out.freed_bytes += delete_journaled(op, r).await?;
        out.removed.push(r.id);
    }
    Ok(())
}

/// `nuwax delete <id>`: a prune of one chosen backup, journaled as one. Returns the bytes freed.
pub async fn delete(ctx: &Ctx, rec: &BackupRecord) -> Result<u64> {
    let mut op = Operation::begin(ctx, Journal::default()).await?;
    let freed = delete_journaled(&mut op, rec).await;
    op.close(freed.as_ref().err().map(|_| "failed")).await?;
    freed
}

/// One deletion: journaled first (the backup, its file, the services whose image tags are
/// kept for it), then its file, its row, its tags.
async fn delete_journaled(op: &mut Operation<'_, Journal>, r: &BackupRecord) -> Result<u64> {
    // Once the file is gone, only the journal says which image tags to release.
    let kept = super::delete::kept_services(r, &op.ctx().project);
    op.advance(|j| *j = Journal { deleting: Some(r.id), path: r.path.clone(), kept: kept.clone() }).await?;
    let ctx = op.ctx();
    if let Some(p) = r.path.as_ref().filter(|_| faults::crash_armed(Crash::PruneAfterFile)) {
        // Die between the file and the row, as a power loss would.
        let _ = std::fs::remove_file(p);
        faults::crash(Crash::PruneAfterFile);
    }
    let freed = super::delete::remove(ctx, r).await?;
    faults::crash(Crash::PruneAfterRow);
    super::delete::release_tags(ctx, r.id, &kept).await;
    Ok(freed)
}

fn candidate(r: &BackupRecord) -> Result<Candidate> {
    let created_at = DateTime::parse_from_rfc3339(&r.created_at)
        .with_context(|| format!("backup {}: created_at {:?}", r.id, r.created_at))?
        .with_timezone(&Utc);
    Ok(Candidate { id: r.id, kind: r.kind.clone(), status: r.status.clone(), created_at })
}

fn item(d: &Decision, records: &[BackupRecord]) -> Item {
    let r = records.iter().find(|r| r.id == d.id);
    Item {
        id: d.id,
        kind: r.map(|r| r.kind.clone()).unwrap_or_default(),
        status: r.map(|r| r.status.clone()).unwrap_or_default(),
        created_at: r.map(|r| r.created_at.clone()).unwrap_or_default(),
        size_bytes: r.and_then(|r| r.size_bytes),
        keep: d.keep,
        reasons: d.reasons.clone(),
    }
}

/// Recovery of a prune (or delete) that died inside a deletion: whatever of its file, row and
/// image tags is left goes.
pub async fn recover(ctx: &Ctx, j: &Journal) -> Result<String> {
    let Some(id) = j.deleting else {
        return Ok("the prune had not started deleting".into());
    };
    if let Some(r) = ctx.catalog.get(id).await? {
        super::delete::remove(ctx, &r).await?;
    }
    super::delete::release_tags(ctx, id, &j.kept).await;
    Ok(format!("the prune's deletion of backup {id} was finished"))
}
