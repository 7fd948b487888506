//! `nuwax catalog rebuild`: the catalog from the archives alone. Every archive in the storage
//! directory that the catalog does not know is verified and recorded from its own manifest;
//! rows whose archive is gone are marked missing (and unmarked when it is back).

use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

use super::Ctx;
use crate::archive::{self, NoProgress};
use crate::catalog::Rebuilt;

#[derive(Debug, Clone, Serialize)]
pub struct RebuildOutcome {
    /// Archives recorded again: (id, path).
    pub added: Vec<(i64, PathBuf)>,
    pub marked_missing: Vec<i64>,
    pub found_again: Vec<i64>,
    /// Archives left out, with why.
    pub skipped: Vec<(PathBuf, String)>,
    pub known: usize,
}

pub async fn rebuild(ctx: &Ctx) -> Result<RebuildOutcome> {
    let project = &ctx.project;
    let records = ctx.catalog.list(&project.name).await?;
    let mut out = RebuildOutcome {
        added: Vec::new(),
        marked_missing: Vec::new(),
        found_again: Vec::new(),
        skipped: Vec::new(),
        known: 0,
    };
    let offsite = super::offsite::offsite_only(&records);
    for r in records.iter().filter(|r| !offsite.contains(&r.id)) {
        let exists = r.path.as_deref().is_some_and(|p| std::path::Path::new(p).is_file());
        match (r.status.as_str(), exists) {
            ("complete", false) => {
                ctx.catalog.mark_missing(r.id).await?;
                out.marked_missing.push(r.id);
            }
            ("missing", true) => {
                ctx.catalog.clear_missing(r.id).await?;
                out.found_again.push(r.id);
            }
            _ => {}
        }
    }
    let known: Vec<PathBuf> = records.iter().filter_map(|r| r.path.as_deref().map(PathBuf::from)).collect();
    for path in archives_in(&project.storage_dir) {
        if known.iter().any(|k| crate::fsutil::same_file(k, &path)) {
            out.known += 1;
            continue;
        }
        let (p, cancel) = (path.clone(), ctx.interrupt.cancel().clone());
        let checked =
            tokio::task::spawn_blocking(move || archive::verify(&p, None, &cancel, &NoProgress)).await?;
        let report = match checked {
            Ok(r) => r,
            Err(e) => {
                out.skipped.push((path, format!("does not verify: {:#}", anyhow::Error::from(e))));
                continue;
            }
        };
        let m = &report.manifest;
        if m.project != project.name {
            out.skipped
                .push((path, format!("belongs to project {:?}: add it with `nuwax import`", m.project)));
            continue;
        }
        let id = ctx
            .catalog
            .insert_rebuilt(&Rebuilt {
                id: m.backup_id,
                kind: &m.kind,
                project: &m.project,
                service_version: m.service_version.as_deref().unwrap_or("0"),
                path: &path,
                size_bytes: report.archive_bytes,
                checksum: &report.archive_sha256,
                compression: &m.compression,
                file_count: m.file_count(),
                created_at: &m.created_at,
            })
            .await?;
        out.added.push((id, path));
    }
    Ok(out)
}

/// `backup_*` archives directly in `dir`, by name.
pub fn archives_in(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("backup_")
                && [".tar", ".tar.zst", ".tar.gz"]
                    .iter()
                    .any(|x| n.ends_with(x) || n.ends_with(&format!("{x}.age")))
        })
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}
