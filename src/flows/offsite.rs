//! Copies of the backups on remotes: made after a backup completes (never holding it up: a
//! remote that cannot be reached leaves the copy pending for `nuwax sync`), read back and held
//! to the archive's sha256 before they count, fetched back when a rollback needs an archive
//! this host no longer has, listed and fetched onto a new machine (`import --from`, `catalog
//! rebuild --from`), pruned by each remote's own policy, and verified (`verify --remote`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Ctx;
use crate::archive::Progress;
use crate::catalog::{BackupRecord, CopyRecord};
use crate::remote::{Remote, RemoteError, RemoteSettings};

/// The backups whose only archive is a copy on a remote: no local path, a copy there.
pub fn offsite_only(records: &[BackupRecord]) -> BTreeSet<i64> {
    records
        .iter()
        .filter(|r| r.path.is_none() && r.is_complete() && r.copies.iter().any(CopyRecord::is_copied))
        .map(|r| r.id)
        .collect()
}

/// What happened to one copy.
#[derive(Debug, Clone, Serialize)]
pub struct CopyOutcome {
    pub backup_id: i64,
    pub remote: String,
    /// `copied`, `pending` (unreachable or failed: `nuwax sync` tries again) or `skipped`.
    pub status: &'static str,
    pub bytes: u64,
    pub ms: u64,
    pub detail: Option<String>,
}

fn remote_of<'a>(ctx: &'a Ctx, name: &str) -> Result<&'a RemoteSettings> {
    ctx.project.settings.remotes.iter().find(|r| r.name == name).ok_or_else(|| {
        crate::Error::Config(format!("no remote {name:?} in nuwax.toml (nuwax remote list shows them)"))
            .into()
    })
}

fn open(ctx: &Ctx, settings: &RemoteSettings) -> Result<Remote> {
    Remote::open(settings, &ctx.project.name)
}

/// The archive file name a remote holds a backup under.
fn object_name(rec: &BackupRecord) -> Option<String> {
    let p = rec.path.as_deref()?;
    Path::new(p).file_name().map(|n| n.to_string_lossy().into_owned())
}

/// Copies backup `rec` to `remote`: uploaded, read back, held to the archive's sha256, then
/// recorded. Any failure leaves it pending (and says why); it never fails the caller.
async fn copy_one(
    ctx: &Ctx,
    settings: &RemoteSettings,
    rec: &BackupRecord,
    progress: &dyn Progress,
) -> Result<CopyOutcome> {
    let t = std::time::Instant::now();
    let (Some(name), Some(sum)) = (object_name(rec), rec.checksum.clone()) else {
        return Ok(CopyOutcome {
            backup_id: rec.id,
            remote: settings.name.clone(),
            status: "skipped",
            bytes: 0,
            ms: 0,
            detail: Some("no local archive to copy".into()),
        });
    };
    ctx.catalog.copy_pending(rec.id, &settings.name, &name, None).await?;
    let local = PathBuf::from(rec.path.clone().unwrap_or_default());
    let result: Result<u64> = async {
        let remote = open(ctx, settings)?;
        let sent = remote.put(&local, &name, progress).await?;
        // What counts is what the remote holds, read back: not what was sent.
        let (got, bytes) = remote.digest(&name).await?;
        if got != sum {
            let _ = remote.delete(&name).await;
            anyhow::bail!(
                "read back {bytes} bytes with sha256 {got}, not the archive's {sum}: removed again"
            );
        }
        ctx.catalog.copy_done(rec.id, &settings.name, &name, bytes, &got).await?;
        Ok(sent)
    }
    .await;
    let ms = t.elapsed().as_millis() as u64;
    match result {
        Ok(bytes) => Ok(CopyOutcome {
            backup_id: rec.id,
            remote: settings.name.clone(),
            status: "copied",
            bytes,
            ms,
            detail: None,
        }),
        Err(e) => {
            let detail = format!("{e:#}");
            tracing::warn!(
                "copy of backup {} to {}: {detail}; it stays pending (nuwax sync retries)",
                rec.id,
                settings.name
            );
            ctx.catalog.copy_pending(rec.id, &settings.name, &name, Some(&detail)).await?;
            let unreachable = e.downcast_ref::<RemoteError>().is_some_and(RemoteError::is_unreachable);
            let detail = if unreachable { detail } else { format!("failed: {detail}") };
            Ok(CopyOutcome {
                backup_id: rec.id,
                remote: settings.name.clone(),
                status: "pending",
                bytes: 0,
                ms,
                detail: Some(detail),
            })
        }
    }
}

/// After a backup completed: a copy to each remote whose policy wants its kind.
pub async fn after_backup(ctx: &Ctx, backup_id: i64, progress: &dyn Progress) -> Result<Vec<CopyOutcome>> {
    let Some(rec) = ctx.catalog.get(backup_id).await? else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for settings in ctx.project.settings.remotes.iter().filter(|r| r.wants(&rec.kind)) {
        out.push(copy_one(ctx, settings, &rec, progress).await?);
    }
    Ok(out)
}

/// `nuwax sync`: every complete backup with a local archive that a remote's policy wants and
/// that is not copied there yet (pending, failed, or never tried) is copied now.
pub async fn sync(ctx: &Ctx, only: Option<&str>, progress: &dyn Progress) -> Result<Vec<CopyOutcome>> {
    if let Some(name) = only {
        remote_of(ctx, name)?;
    }
    let records = ctx.catalog.list(&ctx.project.name).await?;
    let copies = ctx.catalog.copies(&ctx.project.name).await?;
    let mut out = Vec::new();
    for settings in ctx.project.settings.remotes.iter().filter(|r| only.is_none_or(|o| o == r.name)) {
        for rec in records.iter().filter(|r| r.is_complete() && r.path.is_some() && settings.wants(&r.kind)) {
            let done =
                copies.iter().any(|c| c.backup_id == rec.id && c.remote == settings.name && c.is_copied());
            if done {
                continue;
            }
            ctx.interrupt.check()?;
            let o = copy_one(ctx, settings, rec, progress).await?;
            let down = o.status == "pending" && !o.detail.as_deref().is_some_and(|d| d.starts_with("failed"));
            out.push(o);
            // An unreachable remote: the rest would wait on it too.
            if down {
                break;
            }
        }
    }
    Ok(out)
}

/// Makes sure backup `rec`'s archive is on this host: when it is gone, it is fetched from a
/// remote that holds a copy, held to the recorded sha256 and put where the catalog says (or
/// into the storage dir). Returns the record as it is now.
pub async fn ensure_local(ctx: &Ctx, rec: BackupRecord, progress: &dyn Progress) -> Result<BackupRecord> {
    if rec.path.as_deref().is_some_and(|p| Path::new(p).is_file())
        || !rec.is_complete() && rec.status != "missing"
    {
        return Ok(rec);
    }
    let copies: Vec<CopyRecord> =
        ctx.catalog.copies_of(rec.id).await?.into_iter().filter(CopyRecord::is_copied).collect();
    if copies.is_empty() {
        return Ok(rec);
    }
    let storage = &ctx.project.storage_dir;
    crate::fsutil::create_private_dir(storage)?;
    let mut problems = Vec::new();
    for c in &copies {
        let Ok(settings) = remote_of(ctx, &c.remote) else {
            problems.push(format!("{}: not in nuwax.toml any more", c.remote));
            continue;
        };
        let dest = storage.join(&c.name);
        tracing::info!("backup {}: fetching its archive from remote {}", rec.id, c.remote);
        let fetched: Result<()> = async {
            let remote = open(ctx, settings)?;
            let temp = storage.join(format!(".nuwax-fetch-{}-{}", rec.id, std::process::id()));
            let (sum, _) = remote.get(&c.name, &temp, progress).await?;
            if rec.checksum.as_deref().is_some_and(|want| want != sum) {
                let _ = std::fs::remove_file(&temp);
                anyhow::bail!(
                    "the copy's sha256 {sum} is not the archive's {}",
                    rec.checksum.as_deref().unwrap_or_default()
                );
            }
            std::fs::rename(&temp, &dest).with_context(|| format!("putting {} in place", dest.display()))?;
            crate::fsutil::fsync_dir(storage)?;
            ctx.catalog.set_path(rec.id, Some(&dest.to_string_lossy())).await?;
            Ok(())
        }
        .await;
        match fetched {
            Ok(()) => return ctx.catalog.get(rec.id).await?.context("the backup's row went away"),
            Err(e) => problems.push(format!("{}: {e:#}", c.remote)),
        }
    }
    anyhow::bail!(
        "backup {}'s archive is not on this host and no remote gave it back: {}",
        rec.id,
        problems.join("; ")
    )
}

/// An archive a remote holds, and whether the catalog knows it.
#[derive(Debug, Clone, Serialize)]
pub struct RemoteArchive {
    pub name: String,
    pub size_bytes: u64,
    /// The backup it is a copy of, when the catalog knows it.
    pub backup_id: Option<i64>,
}

/// The archives remote `name` holds for this project.
pub async fn list_remote(ctx: &Ctx, name: &str) -> Result<Vec<RemoteArchive>> {
    let settings = remote_of(ctx, name)?;
    let held = open(ctx, settings)?.list().await?;
    let copies = ctx.catalog.copies(&ctx.project.name).await?;
    Ok(held
        .into_iter()
        .map(|h| RemoteArchive {
            backup_id: copies.iter().find(|c| c.remote == name && c.name == h.name).map(|c| c.backup_id),
            name: h.name,
            size_bytes: h.size_bytes,
        })
        .collect())
}

/// `nuwax import --from REMOTE`: every archive the remote holds that the catalog does not know
/// is fetched, verified, checked safe to extract and recorded (as `import` does), and its copy
/// recorded. Returns what was imported, with the remote's names.
pub async fn import_from(
    ctx: &Ctx,
    name: &str,
    progress: &dyn Progress,
) -> Result<Vec<(String, super::import::Imported)>> {
    let settings = remote_of(ctx, name)?;
    let remote = open(ctx, settings)?;
    let storage = &ctx.project.storage_dir;
    crate::fsutil::create_private_dir(storage)?;
    let mut out = Vec::new();
    for a in list_remote(ctx, name).await?.into_iter().filter(|a| a.backup_id.is_none()) {
        ctx.interrupt.check()?;
        let temp = storage.join(format!(".nuwax-fetch-{}-{}", std::process::id(), out.len()));
        let (sum, bytes) = remote.get(&a.name, &temp, progress).await?;
        let origin = format!("remote {name} ({})", a.name);
        let imported = super::import::import_with(ctx, &temp, super::import::Take::Move { origin }).await;
        let _ = std::fs::remove_file(&temp);
        let imported = imported.with_context(|| format!("{} from remote {name}", a.name))?;
        ctx.catalog.copy_done(imported.id, name, &a.name, bytes, &sum).await?;
        out.push((a.name, imported));
    }
    Ok(out)
}

/// `nuwax catalog rebuild --from REMOTE`: the archives the remote holds that this host does not
/// have are fetched into the storage dir under their own names, for the rebuild to record
/// (keeping their ids where free). Returns their names.
pub async fn fetch_for_rebuild(ctx: &Ctx, name: &str, progress: &dyn Progress) -> Result<Vec<String>> {
    let settings = remote_of(ctx, name)?;
    let remote = open(ctx, settings)?;
    let storage = &ctx.project.storage_dir;
    crate::fsutil::create_private_dir(storage)?;
    let mut out = Vec::new();
    for a in remote.list().await? {
        let dest = storage.join(&a.name);
        if dest.exists() {
            continue;
        }
        ctx.interrupt.check()?;
        let temp = storage.join(format!(".nuwax-fetch-{}-{}", std::process::id(), out.len()));
        remote.get(&a.name, &temp, progress).await?;
        std::fs::rename(&temp, &dest).with_context(|| format!("putting {} in place", dest.display()))?;
        out.push(a.name);
    }
    crate::fsutil::fsync_dir(storage)?;
    Ok(out)
}

/// After a rebuild: the archives it recorded from `name` are copies there.
pub async fn record_rebuilt(ctx: &Ctx, name: &str, fetched: &[String]) -> Result<()> {
    for r in ctx.catalog.list(&ctx.project.name).await? {
        if let (Some(n), Some(sum), Some(size)) = (object_name(&r), r.checksum.as_deref(), r.size_bytes)
            && fetched.contains(&n)
        {
            ctx.catalog.copy_done(r.id, name, &n, u64::try_from(size).unwrap_or(0), sum).await?;
        }
    }
    Ok(())
}

/// One remote's part of a prune.
#[derive(Debug, Clone, Serialize)]
pub struct RemotePrune {
    pub remote: String,
    pub kept: Vec<i64>,
    pub removed: Vec<i64>,
    pub error: Option<String>,
}

/// Each remote's retention (its own `retention`, else the project's) over the copies it holds:
/// the objects it does not keep are removed, then their copy rows; a backup left with neither
/// a local archive nor a copy loses its row. The newest copy on each remote always stays.
pub async fn prune_remotes(ctx: &Ctx, dry_run: bool, now: DateTime<Utc>) -> Result<Vec<RemotePrune>> {
    let mut out = Vec::new();
    let records = ctx.catalog.list(&ctx.project.name).await?;
    let copies = ctx.catalog.copies(&ctx.project.name).await?;
    for settings in &ctx.project.settings.remotes {
        let policy =
            settings.retention.clone().or_else(|| ctx.project.settings.retention.clone()).unwrap_or_default();
        policy
            .validate()
            .map_err(|e| crate::Error::Config(format!("remote {}: retention: {e}", settings.name)))?;
        let here: Vec<&CopyRecord> =
            copies.iter().filter(|c| c.remote == settings.name && c.is_copied()).collect();
        let candidates: Vec<crate::retention::Candidate> = records
            .iter()
            .filter(|r| here.iter().any(|c| c.backup_id == r.id))
            .map(|r| {
                Ok(crate::retention::Candidate {
                    id: r.id,
                    kind: r.kind.clone(),
                    status: "complete".into(),
                    created_at: DateTime::parse_from_rfc3339(&r.created_at)?.with_timezone(&Utc),
                })
            })
            .collect::<Result<_>>()?;
        let newest =
            candidates.iter().max_by_key(|c| c.id).map(|c| (c.id, "newest copy on this remote".to_string()));
        let decisions = crate::retention::decide(&candidates, &policy, newest.as_slice(), now);
        let mut p =
            RemotePrune { remote: settings.name.clone(), kept: Vec::new(), removed: Vec::new(), error: None };
        for d in &decisions {
            if d.keep {
                p.kept.push(d.id);
            }
        }
        if dry_run {
            p.removed = decisions.iter().filter(|d| !d.keep).map(|d| d.id).collect();
            out.push(p);
            continue;
        }
        let remote = match open(ctx, settings) {
            Ok(r) => r,
            Err(e) => {
                p.error = Some(format!("{e:#}"));
                out.push(p);
                continue;
            }
        };
        for d in decisions.iter().filter(|d| !d.keep) {
            let Some(c) = here.iter().find(|c| c.backup_id == d.id) else { continue };
            if let Err(e) = remote.delete(&c.name).await {
                p.error = Some(format!("{e:#}"));
                break;
            }
            ctx.catalog.forget_copy(d.id, &settings.name).await?;
            p.removed.push(d.id);
            let gone_here = ctx.catalog.get(d.id).await?.is_some_and(|r| r.path.is_none());
            if gone_here && !ctx.catalog.copies_of(d.id).await?.iter().any(CopyRecord::is_copied) {
                ctx.catalog.delete(d.id).await?;
            }
        }
        out.push(p);
    }
    Ok(out)
}

/// One copy read back.
#[derive(Debug, Clone, Serialize)]
pub struct CopyCheck {
    pub backup_id: i64,
    pub remote: String,
    pub ok: bool,
    pub detail: String,
}

/// `verify --remote`: every recorded copy read back whole and held to its archive's sha256. A
/// copy that is not whole is no longer counted (pending: `sync` copies it again).
pub async fn verify_remote(ctx: &Ctx, only: Option<&str>) -> Result<Vec<CopyCheck>> {
    let records = ctx.catalog.list(&ctx.project.name).await?;
    let mut out = Vec::new();
    for c in ctx.catalog.copies(&ctx.project.name).await?.into_iter().filter(CopyRecord::is_copied) {
        if only.is_some_and(|o| o != c.remote) {
            continue;
        }
        ctx.interrupt.check()?;
        let want = records
            .iter()
            .find(|r| r.id == c.backup_id)
            .and_then(|r| r.checksum.clone())
            .or(c.sha256.clone());
        let got = match remote_of(ctx, &c.remote).and_then(|s| open(ctx, s)) {
            Ok(remote) => remote.digest(&c.name).await,
            Err(e) => Err(e),
        };
        let (ok, detail) = match (&got, &want) {
            (Ok((sum, bytes)), Some(w)) if sum == w => (true, format!("{bytes} bytes, sha256 {sum}")),
            (Ok((sum, _)), w) => {
                (false, format!("sha256 {sum}, the archive's is {}", w.as_deref().unwrap_or("unknown")))
            }
            (Err(e), _) => (false, format!("{e:#}")),
        };
        let unreachable = got
            .as_ref()
            .err()
            .and_then(|e| e.downcast_ref::<RemoteError>())
            .is_some_and(RemoteError::is_unreachable);
        if !unreachable {
            ctx.catalog.copy_verified(c.backup_id, &c.remote, (!ok).then_some(detail.as_str())).await?;
        }
        out.push(CopyCheck { backup_id: c.backup_id, remote: c.remote, ok, detail });
    }
    Ok(out)
}

/// `nuwax remote test NAME`.
pub async fn test(ctx: &Ctx, name: &str) -> Result<crate::remote::Probe> {
    let settings = remote_of(ctx, name)?;
    Ok(open(ctx, settings)?.probe().await)
}
