//! `nuwax doctor`: everything nuwax relies on, checked and reported with a hint each. Read-only.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use serde::Serialize;

use crate::archive;
use crate::catalog::Catalog;
use crate::engine::Engine;
use crate::fsutil;
use crate::project::Project;

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub ok: bool,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

fn ok(check: &'static str, detail: String) -> Finding {
    Finding { check, ok: true, detail, hint: None }
}

fn bad(check: &'static str, detail: String, hint: &str) -> Finding {
    Finding { check, ok: false, detail, hint: Some(hint.to_string()) }
}

pub async fn doctor(
    project: &Project,
    catalog: &Catalog,
    engine: std::result::Result<Arc<dyn Engine>, String>,
    running_now: Option<String>,
) -> Result<Vec<Finding>> {
    let mut out = Vec::new();
    match &engine {
        Ok(e) => match e.info().await {
            Ok(i) => {
                out.push(ok("engine", format!("Docker {} (API {}) at {}", i.version, i.api_version, i.host)))
            }
            Err(err) => out.push(bad("engine", err.to_string(), "check that dockerd runs and DOCKER_HOST")),
        },
        Err(err) => out.push(bad("engine", err.clone(), "start dockerd or set DOCKER_HOST")),
    }
    match project.compose_cli() {
        Ok(c) => out.push(ok(
            "compose",
            format!("{} (compose v{}), {}", c.display(), c.major, project.compose.how()),
        )),
        Err(e) => out.push(bad(
            "compose",
            e.to_string(),
            if project.compose.want == crate::engine::compose_cli::Want::Auto {
                "install the compose plugin (v2) or docker-compose (v1); rollback and upgrade need it"
            } else {
                "install the compose CLI chosen, or set NUWAX_COMPOSE / compose_cli to another (auto detects)"
            },
        )),
    }
    let storage = &project.storage_dir;
    match super::backup::check_storage(storage) {
        Ok(()) => {
            let free = fsutil::free_space(storage).map(fsutil::human_bytes).unwrap_or_else(|e| e.to_string());
            out.push(ok("storage", format!("{} writable, {free} free", storage.display())));
        }
        Err(e) => out.push(bad(
            "storage",
            format!("{e:#}"),
            "fix its permissions, or move it with `nuwax storage migrate DIR`",
        )),
    }
    match catalog.integrity_problems().await {
        Ok(p) if p.is_empty() => {
            out.push(ok("catalog", format!("{} passes SQLite's integrity check", catalog.path().display())))
        }
        Ok(p) => out.push(bad(
            "catalog",
            p.join("; "),
            "restore .nuwax/catalog.db from a copy, or `nuwax catalog rebuild` into a new one",
        )),
        Err(e) => out.push(bad(
            "catalog",
            format!("{e:#}"),
            "the catalog cannot be read: `nuwax catalog rebuild` into a new one",
        )),
    }

    // Archives on disk against catalog rows.
    let records = catalog.list(&project.name).await?;
    let offsite = super::offsite::offsite_only(&records);
    let gone: Vec<String> = records
        .iter()
        .filter(|r| !offsite.contains(&r.id))
        .filter(|r| {
            r.status == "missing"
                || (r.is_complete() && !r.path.as_deref().is_some_and(|p| std::path::Path::new(p).is_file()))
        })
        .map(|r| r.id.to_string())
        .collect();
    let known: Vec<PathBuf> = records.iter().filter_map(|r| r.path.as_deref().map(PathBuf::from)).collect();
    let unknown: Vec<String> = super::rebuild::archives_in(storage)
        .into_iter()
        .filter(|p| !known.iter().any(|k| fsutil::same_file(k, p)))
        .map(|p| p.display().to_string())
        .collect();
    let complete = records.iter().filter(|r| r.is_complete()).count();
    if gone.is_empty() && unknown.is_empty() {
        out.push(ok("archives", format!("{complete} complete backup(s), each with its archive")));
    }
    if !gone.is_empty() {
        out.push(bad(
            "archives",
            format!("the archives of backup(s) {} are gone", gone.join(", ")),
            "`nuwax prune` removes their rows; `nuwax catalog rebuild` marks them missing",
        ));
    }
    if !unknown.is_empty() {
        out.push(bad(
            "archives",
            format!("archives the catalog does not know: {}", unknown.join(", ")),
            "`nuwax catalog rebuild` records them",
        ));
    }

    match catalog.unfinished(&project.name).await {
        // Journaled operations of a live process are not leftovers.
        Ok(_) if running_now.is_some() => {
            out.push(ok("operations", running_now.clone().unwrap_or_default()));
        }
        Ok(ops) if ops.is_empty() => out.push(ok("operations", "no unfinished operation".into())),
        Ok(ops) => out.push(bad(
            "operations",
            ops.iter()
                .map(|o| format!("{} {} (pid {}, {})", o.kind, o.id, o.pid, o.started_at))
                .collect::<Vec<_>>()
                .join("; "),
            "`nuwax recover` finishes them (any nuwax command that can take the lock does too)",
        )),
        Err(e) => out.push(bad("operations", format!("{e:#}"), "see the catalog check")),
    }

    // Files only a running operation owns: with none running, a dead one left them.
    let left = super::recover::leftovers(storage);
    match (&running_now, left.is_empty()) {
        (Some(_), _) | (None, true) => out.push(ok("leftovers", "none".into())),
        (None, false) => out.push(bad(
            "leftovers",
            left.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
            "a nuwax that died left them: any nuwax command that can take the lock (`nuwax recover`) removes them",
        )),
    }

    out.push(snapshot(project));

    // The images rollbacks need, kept by their nuwax-keep tags.
    if let Ok(e) = &engine {
        let mut lost = BTreeSet::new();
        let mut kept = 0;
        for r in records.iter().filter(|r| r.is_complete()) {
            let Some(m) =
                r.path.as_deref().and_then(|p| archive::read_manifest(std::path::Path::new(p)).ok())
            else {
                continue;
            };
            for s in m.services.iter().filter(|s| !s.image_id.is_empty()) {
                kept += 1;
                if e.image_id(&s.image_id).await.ok().flatten().is_none() && m.images_archive.is_none() {
                    lost.insert(format!("backup {} {} ({})", r.id, s.service, s.image_id));
                }
            }
        }
        if lost.is_empty() {
            out.push(ok("images", format!("all {kept} image(s) the backups ran are present")));
        } else {
            out.push(bad(
                "images",
                format!("gone: {}", lost.into_iter().collect::<Vec<_>>().join(", ")),
                "rolling back to these backups cannot restore their images; back up with --with-images to keep them in the archive",
            ));
        }
    }
    out.extend(remotes(project, &records).await);
    if let Some(f) = encryption(project) {
        out.push(f);
    }
    Ok(out)
}

/// Encrypted archives and the identity that opens them: without one on this host, nuwax can
/// write backups but not restore them, not even to undo a crashed upgrade on its own.
fn encryption(project: &Project) -> Option<Finding> {
    let s = &project.settings;
    if s.encrypt_to.is_empty() {
        return None;
    }
    let n = s.encrypt_to.len();
    Some(match &s.identity_file {
        Some(f) if project.dir.join(f).is_file() => ok(
            "encryption",
            format!("archives encrypted to {n} recipient(s); identity_file {} is here", f.display()),
        ),
        Some(f) => bad(
            "encryption",
            format!("archives encrypted to {n} recipient(s); identity_file {} is not there", f.display()),
            "restores (and the automatic recovery of a crashed upgrade) need it: put it back, or pass --identity",
        ),
        None => ok(
            "encryption",
            format!(
                "archives encrypted to {n} recipient(s); no identity on this host: restores need --identity (the \
                 recovery of a crashed upgrade too)"
            ),
        ),
    })
}

/// Each remote: reachable (listed, nothing written), what it holds, and the copies it owes.
async fn remotes(project: &Project, records: &[crate::catalog::BackupRecord]) -> Vec<Finding> {
    let mut out = Vec::new();
    for r in &project.settings.remotes {
        let pending =
            records.iter().flat_map(|b| &b.copies).filter(|c| c.remote == r.name && !c.is_copied()).count();
        let listed = match crate::remote::Remote::open(r, &project.name) {
            Ok(remote) => remote.list().await,
            Err(e) => Err(e),
        };
        match (listed, pending) {
            (Ok(held), 0) => {
                out.push(ok("remote", format!("{}: {} archive(s) there, none pending", r.name, held.len())))
            }
            (Ok(held), n) => out.push(bad(
                "remote",
                format!("{}: {} archive(s) there, {n} copy(ies) pending", r.name, held.len()),
                "`nuwax sync` copies them",
            )),
            (Err(e), _) => out.push(bad(
                "remote",
                format!("{}: {e:#}", r.name),
                "check the URL, the credentials and the network; `nuwax remote test NAME`",
            )),
        }
    }
    out
}

/// The snapshot backups copy into while the services run: where, how big, whether its last
/// sync completed (it is informational: an incomplete one is compared by content next time).
fn snapshot(project: &Project) -> Finding {
    let (storage, name) = (&project.storage_dir, &project.name);
    let detail = match crate::snapshot::Snapshot::usage(storage, name) {
        None if project.settings.snapshot == Some(false) => "off (snapshot = false in nuwax.toml)".into(),
        None => "none yet (the next backup makes it)".into(),
        Some(u) => format!(
            "{}: {} in {} files, {}; `snapshot = false` in nuwax.toml or `backup --no-snapshot` removes it",
            u.path.display(),
            crate::fsutil::human_bytes(u.bytes),
            u.files,
            if u.complete {
                "up to date with the last backup"
            } else {
                "incomplete (the next backup compares it)"
            }
        ),
    };
    ok("snapshot", detail)
}
