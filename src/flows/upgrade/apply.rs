//! Applying the new version, inside the upgrade's stop: place its files and `.env` → compose
//! creates every service from them (none started) → before-start hooks → start what runs →
//! after-start hooks → health gate. Services the operator had stopped stay stopped; services
//! the package adds start.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{Journal, Plan, UpgradeOptions, health, reload};
use crate::engine::compose::{Up, run_container_name};
use crate::flows::Ctx;
use crate::package::{Hook, When};
use crate::runner::{Operation, Scope};

/// Returns the services of the new version left stopped (as they were before).
pub(super) async fn apply(
    op: &mut Operation<'_, Journal>,
    scope: &mut Scope<'_>,
    opts: &UpgradeOptions,
    plan: &Plan,
    reload_from: Option<&reload::Source>,
    hooks_run: &mut Vec<String>,
) -> Result<Vec<String>> {
    let ctx = op.ctx();
    ctx.interrupt.check()?;
    reload::stop_old(scope, plan).await?;
    // The configs placed next are the new version's, and so is the project from here on (a
    // failure rolls back to the backup, which sets its own).
    let reason = format!("upgrade {}", op.journal.upgrade_id);
    ctx.catalog.set_version(&ctx.project.name, &plan.to_version, &reason).await?;
    place_files(ctx, plan)?;
    ctx.interrupt.check()?;
    // The new compose files and env, as compose will read them.
    let new = ctx.rediscover()?;
    let old: BTreeSet<&String> = ctx.project.services.keys().collect();
    let run: BTreeSet<String> =
        new.project.services.keys().filter(|s| scope.keeps_running(s) || !old.contains(s)).cloned().collect();
    let left_stopped: Vec<String> =
        new.project.services.keys().filter(|s| !run.contains(*s)).cloned().collect();
    // Journaled before compose touches anything: from here every service that runs comes back
    // as the new version's container, never as the old one.
    scope.set_services(run.clone()).await?;
    scope.via_compose(run.iter().cloned()).await?;
    new.compose()?.up(&new.project, Up::CreateAll, &[]).await.context("creating the new version")?;
    if let Some(from) = reload_from {
        reload::load(op, scope, plan, from).await?;
        ctx.interrupt.check()?;
    }
    for h in plan.hooks.iter().filter(|h| h.when == When::BeforeStart) {
        before_start(&new, h).await?;
        hooks_run.push(h.name.clone());
    }
    ctx.interrupt.check()?;
    scope.start_now().await.context("starting the new version")?;
    let engine = ctx.engine()?;
    for h in plan.hooks.iter().filter(|h| h.when == When::AfterStart) {
        after_start(&new, h).await?;
        hooks_run.push(h.name.clone());
    }
    let services: Vec<String> = run.into_iter().collect();
    health::gate(engine, &ctx.project.name, &services, &plan.probes, opts.health_timeout, &ctx.interrupt)
        .await
        .context("health gate")?;
    Ok(left_stopped)
}

/// Files copied into place and `.env` edited, each atomically, keeping the mode and owner of
/// the file replaced.
fn place_files(ctx: &Ctx, plan: &Plan) -> Result<()> {
    for f in plan.files.iter().filter(|f| f.action != "unchanged") {
        let bytes = std::fs::read(&f.src).with_context(|| format!("reading {}", f.src.display()))?;
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&f.src)?.permissions()) & 0o7777;
        crate::fsutil::write_atomically(&f.dest, &bytes, mode)?;
    }
    if let Some(changes) = &plan.env {
        let path = ctx.project.dir.join(&changes.file);
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        crate::fsutil::replace_file(&path, crate::package::apply_env(&old, changes).as_bytes())?;
    }
    Ok(())
}

/// A before-start hook: a one-off container of the service's new image with its volumes and
/// env (`compose run --rm`); compose starts the services it depends on first.
async fn before_start(ctx: &Ctx, h: &Hook) -> Result<()> {
    let compose = ctx.compose()?;
    let timeout = Duration::from_secs(h.timeout);
    let run = compose.run(&ctx.project, &h.service, &h.command, h.user.as_deref(), timeout);
    let out: Result<_> = tokio::select! {
        r = run => r.map_err(anyhow::Error::from),
        () = interrupted(ctx) => Err(ctx.interrupt.check().unwrap_err().into()),
    };
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            // The one-off container may outlive the compose process that ran it.
            let name = run_container_name(&ctx.project.name, &h.service);
            if let Ok(engine) = ctx.engine() {
                let _ = engine.stop(&name, 0).await;
                let _ = engine.remove_container(&name).await;
            }
            return Err(e.context(format!("before-start hook {:?}", h.name)));
        }
    };
    if out.exit_code != 0 {
        bail!(
            "before-start hook {:?} failed with exit code {}: {}",
            h.name,
            out.exit_code,
            out.output.trim()
        );
    }
    Ok(())
}

/// An after-start hook, in a running container of its service.
async fn after_start(ctx: &Ctx, h: &Hook) -> Result<()> {
    let engine = ctx.engine()?;
    let c = engine
        .project_containers(&ctx.project.name)
        .await?
        .into_iter()
        .find(|c| c.service == h.service && c.is_running())
        .with_context(|| format!("hook {:?}: service {} is not running", h.name, h.service))?;
    let run = tokio::time::timeout(
        Duration::from_secs(h.timeout),
        engine.exec(&c.id, &h.command, h.user.as_deref()),
    );
    // A signal does not wait for the hook: the rollback stops its container anyway.
    let out = tokio::select! {
        r = run => r.map_err(|_| anyhow::anyhow!("hook {:?} did not finish within {} s", h.name, h.timeout))??,
        () = interrupted(ctx) => return Err(ctx.interrupt.check().unwrap_err().into()),
    };
    if out.exit_code != 0 {
        bail!("hook {:?} failed with exit code {}: {}", h.name, out.exit_code, out.output.trim());
    }
    Ok(())
}

/// Resolves once a signal arrived.
async fn interrupted(ctx: &Ctx) {
    while ctx.interrupt.check().is_ok() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
