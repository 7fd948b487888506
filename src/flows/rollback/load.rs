//! After the swap: each database server whose dumps the backup holds is started alone on its
//! fresh data directory (the others stay stopped), and its dumps are loaded through it, streamed
//! from the archive into the loader's stdin and held to the digests the verifying pass read. A
//! failure, or a crash (the servers are journaled first), puts the swap back: the servers' old
//! data directories were only moved aside.

use std::path::Path;

use anyhow::{Context, Result, bail};

use super::{Journal, Plan, steps};
use crate::archive::{self, Cancel};
use crate::database;
use crate::faults::{self, Crash};
use crate::flows::Ctx;
use crate::runner::{Operation, Scope};

/// Loads every dump of `plan` (journaled: the servers being loaded).
pub(super) async fn load(op: &mut Operation<'_, Journal>, scope: &Scope<'_>, plan: &Plan) -> Result<()> {
    let ctx = op.ctx();
    let engine = ctx.engine()?;
    let servers: Vec<String> = plan.loads.iter().map(|l| l.service.clone()).collect();
    op.advance(|j| j.loading = servers.clone()).await?;
    for l in &plan.loads {
        scope
            .start_these_now(std::slice::from_ref(&l.service))
            .await
            .with_context(|| format!("starting {} on its fresh data to load its dumps", l.service))?;
        let c = engine
            .project_containers(&ctx.project.name)
            .await?
            .into_iter()
            .find(|c| c.service == l.service && c.is_running())
            .with_context(|| format!("{} is not running after its start", l.service))?;
        for (i, (d, want)) in l.dumps.iter().zip(&l.digests).enumerate() {
            let cmd = database::load::command(d)
                .with_context(|| format!("nuwax cannot load {} ({} {})", d.name, d.server, d.format))?;
            tracing::info!("loading {} into {} ({} bytes)", d.name, l.service, want.bytes);
            if i == 0 {
                faults::crash(Crash::RollbackWhileLoading);
            }
            let (reader, writer) = tokio::io::duplex(1 << 20);
            let (archive, name) = (plan.archive.clone(), d.name.clone());
            let handle = tokio::runtime::Handle::current();
            // Deaf to signals like the rest of the rollback from the swap on.
            let feed = tokio::task::spawn_blocking(move || {
                let mut w = tokio_util::io::SyncIoBridge::new_with_handle(writer, handle);
                let read = archive::read_dump(&archive, &name, &mut w, &Cancel::default());
                let _ = w.shutdown();
                read
            });
            let out = engine.exec_stdin(&c.id, &cmd, None, Box::pin(reader)).await?;
            let fed = feed.await?;
            if out.exit_code != 0 {
                bail!(
                    "loading {} into {} failed (exit {}): {}",
                    d.name,
                    l.service,
                    out.exit_code,
                    out.output.trim()
                );
            }
            let digest = fed.with_context(|| format!("reading {} from the archive", d.name))?;
            if digest != *want {
                bail!("{} read back differs from what the archive's verification read", d.name);
            }
            if !out.output.trim().is_empty() {
                tracing::info!("{} says: {}", l.service, out.output.trim());
            }
        }
    }
    op.advance(|j| j.loading.clear()).await
}

/// Puts back a rollback whose load failed or was cut short: the servers being loaded are
/// stopped, the swapped trees renamed back, image references pointed back, the version set
/// back. Journaled as undoing first.
pub(super) async fn undo(ctx: &Ctx, j: &Journal, safety: Option<&Path>) -> Result<()> {
    let engine = ctx.engine()?;
    for c in engine.project_containers(&ctx.project.name).await? {
        if j.loading.contains(&c.service) && c.is_running() {
            engine.stop(&c.id, 30).await.with_context(|| format!("stopping {}", c.service))?;
        }
    }
    steps::undo(ctx, j, safety).await?;
    if let Some(v) = &j.version_before {
        let reason = format!("undoing the rollback to backup {}", j.backup_id);
        ctx.catalog.set_version(&ctx.project.name, v, &reason).await?;
    }
    Ok(())
}
