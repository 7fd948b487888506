//! After the swap: each database server whose dumps the backup holds is started alone on its
//! fresh data directory (the others stay stopped), and its dumps are loaded through it, streamed
//! from the archive into the loader's stdin and held to the digests the verifying pass read. A
//! failure, or a crash (the servers are journaled first), puts the swap back: the servers' old
//! data directories were only moved aside.

use std::path::Path;

use anyhow::{Context, Result, bail};

use super::{Journal, Plan, steps};
use crate::archive::manifest::{DumpDigest, DumpRecord};
use crate::archive::{self, Cancel};
use crate::database;
use crate::faults::{self, Crash};
use crate::flows::Ctx;
use crate::runner::{Operation, Scope};

/// Loads every dump of `plan` (journaled: the servers being loaded).
pub(super) async fn load(op: &mut Operation<'_, Journal>, scope: &Scope<'_>, plan: &Plan) -> Result<()> {
    let ctx = op.ctx();
    let servers: Vec<String> = plan.loads.iter().map(|l| l.service.clone()).collect();
    op.advance(|j| j.loading = servers.clone()).await?;
    for l in &plan.loads {
        scope
            .start_these_now(std::slice::from_ref(&l.service))
            .await
            .with_context(|| format!("starting {} on its fresh data to load its dumps", l.service))?;
        faults::crash(Crash::RollbackWhileLoading);
        feed(ctx, &plan.archive, &l.service, &l.dumps, &l.digests).await?;
    }
    op.advance(|j| j.loading.clear()).await
}

/// Loads `dumps` from `archive` into `service`'s running server, in order: each streamed into
/// its loader's stdin, the loader's exit status checked, the bytes read held to `digests` (as a
/// verifying pass read them). Deaf to signals: its callers finish what they began.
pub(crate) async fn feed(
    ctx: &Ctx,
    archive: &Path,
    service: &str,
    dumps: &[DumpRecord],
    digests: &[DumpDigest],
) -> Result<()> {
    let engine = ctx.engine()?;
    let c = engine
        .project_containers(&ctx.project.name)
        .await?
        .into_iter()
        .find(|c| c.service == service && c.is_running())
        .with_context(|| format!("{service} is not running after its start"))?;
    for (d, want) in dumps.iter().zip(digests) {
        let cmd = database::load::command(d)
            .with_context(|| format!("nuwax cannot load {} ({} {})", d.name, d.server, d.format))?;
        tracing::info!("loading {} into {service} ({} bytes)", d.name, want.bytes);
        let (reader, writer) = tokio::io::duplex(1 << 20);
        let (archive, name) = (archive.to_path_buf(), d.name.clone());
        let handle = tokio::runtime::Handle::current();
        let fed = tokio::task::spawn_blocking(move || {
            let mut w = tokio_util::io::SyncIoBridge::new_with_handle(writer, handle);
            let read = archive::read_dump(&archive, &name, &mut w, &Cancel::default());
            let _ = w.shutdown();
            read
        });
        let out = engine.exec_stdin(&c.id, &cmd, None, Box::pin(reader)).await?;
        let fed = fed.await?;
        if out.exit_code != 0 {
            bail!("loading {} into {service} failed (exit {}): {}", d.name, out.exit_code, out.output.trim());
        }
        let digest = fed.with_context(|| format!("reading {} from the archive", d.name))?;
        if !digest.same_bytes(want) {
            bail!("{} read back differs from what the archive's verification read", d.name);
        }
        if !out.output.trim().is_empty() {
            tracing::info!("{service} says: {}", out.output.trim());
        }
        if let Some(rows) = &want.rows {
            check_rows(engine, &c.id, service, d, rows).await?;
        }
    }
    Ok(())
}

/// Holds what the server now holds to the rows the dump held, table by table.
async fn check_rows(
    engine: &dyn crate::engine::Engine,
    container: &str,
    service: &str,
    d: &DumpRecord,
    rows: &std::collections::BTreeMap<String, u64>,
) -> Result<()> {
    let Some((cmd, script)) = database::rows::check(d, rows) else { return Ok(()) };
    let out =
        engine.exec_stdin(container, &cmd, None, Box::pin(std::io::Cursor::new(script.into_bytes()))).await?;
    if out.exit_code != 0 {
        bail!(
            "counting the rows {} loaded into {service} failed (exit {}): {}",
            d.name,
            out.exit_code,
            out.output.trim()
        );
    }
    let differ = database::rows::mismatches(rows, &out.output)
        .map_err(|e| anyhow::anyhow!("counting the rows {} loaded into {service}: {e}", d.name))?;
    if let Some((table, want, got)) = differ.first() {
        bail!(
            "after loading {} into {service}, table {table} holds {got} rows where the dump held {want}{}",
            d.name,
            match differ.len() {
                1 => String::new(),
                n => format!(" ({} more tables differ)", n - 1),
            }
        );
    }
    tracing::info!("{service}: {} tables hold the rows {} held", rows.len(), d.name);
    Ok(())
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
