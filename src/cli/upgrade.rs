//! `upgrade`, `history` and `package build`: set up, call the flow, render.

use anyhow::Result;

use super::out::outln;
use super::{Cli, UpgradeArgs, context, progress, recover_if_needed, render};
use crate::catalog::{BackupKind, UpgradeRecord};
use crate::flows::backup::BackupOptions;
use crate::flows::upgrade::{Plan, UpgradeOptions, UpgradeOutcome, plan, upgrade};
use crate::fsutil::human_bytes;
use crate::interrupt::Interrupt;
use crate::lock::ProjectLock;

pub async fn run_upgrade(cli: &Cli, args: &UpgradeArgs, interrupt: Interrupt) -> Result<()> {
    let mut ctx = context(cli, true, interrupt).await?;
    let lock = ProjectLock::acquire(&ctx.project.state_dir)?;
    recover_if_needed(&mut ctx, Some(&lock)).await?;
    let opts = UpgradeOptions {
        package: args.package.clone(),
        sha256: args.sha256.clone(),
        allow_downgrade: args.allow_downgrade,
        auto_rollback: !args.no_auto_rollback,
        backup: BackupOptions::for_project(&ctx.project, BackupKind::PreUpgrade, None, None)?,
        health_timeout: args
            .health_timeout
            .map(std::time::Duration::from_secs)
            .unwrap_or(ctx.timeouts().ready),
    };
    let bar = progress::bar(cli.json || cli.quiet);
    let plan = plan(&ctx, &opts, bar.clone()).await;
    let plan = match plan {
        Ok(p) => p,
        Err(e) => {
            bar.done();
            return Err(e);
        }
    };
    if args.dry_run {
        bar.done();
        render_plan(cli, &plan);
        return Ok(());
    }
    let outcome = upgrade(&ctx, &opts, plan, bar.clone()).await;
    bar.done();
    render_outcome(cli, &outcome?);
    Ok(())
}

pub async fn history(cli: &Cli, interrupt: Interrupt) -> Result<()> {
    let mut ctx = context(cli, false, interrupt).await?;
    recover_if_needed(&mut ctx, None).await?;
    let upgrades = ctx.catalog.upgrades(&ctx.project.name).await?;
    if cli.json {
        outln!("{}", serde_json::to_string_pretty(&upgrades)?);
        return Ok(());
    }
    if upgrades.is_empty() {
        outln!("no upgrades yet");
        return Ok(());
    }
    let mut t =
        render::table(&["id", "started", "from", "to", "outcome", "backup", "took", "downtime", "cause"]);
    for u in &upgrades {
        t.add_row(history_row(u));
    }
    outln!("{t}");
    Ok(())
}

fn history_row(u: &UpgradeRecord) -> Vec<String> {
    let secs =
        |ms: Option<i64>| ms.map(|m| format!("{:.1} s", m as f64 / 1000.0)).unwrap_or_else(|| "-".into());
    vec![
        u.id.to_string(),
        u.started_at.chars().take(19).collect(),
        u.from_version.clone(),
        u.to_version.clone(),
        u.status.clone(),
        u.backup_id.map(|b| b.to_string()).unwrap_or_else(|| "-".into()),
        secs(u.duration_ms),
        secs(u.downtime_ms),
        u.cause.clone().unwrap_or_default().chars().take(60).collect(),
    ]
}

pub fn package_build(cli: &Cli, dir: &std::path::Path, out: &std::path::Path) -> Result<()> {
    let built = crate::package::build(dir, out)?;
    if cli.json {
        outln!(
            "{}",
            serde_json::json!({"path": built.path, "sha256": built.sha256, "size_bytes": built.size})
        );
    } else {
        outln!("{}  {} ({})", built.sha256, built.path.display(), human_bytes(built.size));
    }
    Ok(())
}

fn render_plan(cli: &Cli, p: &Plan) {
    if cli.json {
        outln!("{}", serde_json::to_string_pretty(p).unwrap_or_default());
        return;
    }
    outln!("upgrade {} {} -> {} ({})", p.package_name, p.from_version, p.to_version, p.package_source);
    if let Some(sha) = &p.package_sha256 {
        outln!("  package sha256 {sha}");
    }
    outln!("  first: {}", p.backup);
    outln!(
        "  services to stop: {}",
        if p.services_to_stop.is_empty() { "none".into() } else { p.services_to_stop.join(", ") }
    );
    for a in &p.images_to_load {
        outln!("  load images from {a}");
    }
    for f in &p.files {
        outln!("  {} {} ({})", f.action, f.dest.display(), human_bytes(f.size));
    }
    if let Some(env) = &p.env {
        for (k, v) in &env.set {
            outln!("  set {k}={v} in {}", env.file);
        }
        for k in &env.unset {
            outln!("  unset {k} in {}", env.file);
        }
    }
    for i in &p.images {
        outln!("  service {} runs {} ({})", i.service, i.image, i.source);
    }
    outln!(
        "  then: compose creates the new version's services ({}); what ran before and what the package adds starts, what was stopped stays stopped",
        p.services.join(", ")
    );
    for r in &p.reload {
        outln!(
            "  reload {} {}: dumped by the pre-upgrade backup (sealed inside the stop), loaded into the new server on new data{}; the old data ({}) is kept untouched for the way back",
            r.server,
            r.service,
            if r.fresh_volumes.is_empty() {
                String::new()
            } else {
                format!(" ({})", r.fresh_volumes.join(", "))
            },
            r.data_before
        );
    }
    for h in &p.hooks {
        let when = match h.when {
            crate::package::When::BeforeStart => "before start, in a one-off container of",
            crate::package::When::AfterStart => "after start, in",
        };
        outln!("  hook {:?} {when} {}: {}", h.name, h.service, h.command.join(" "));
    }
    for pr in &p.probes {
        outln!("  probe {:?}: GET {} expects {}", pr.name, pr.url, pr.expect_status);
    }
    for w in &p.warnings {
        outln!("  warning: {w}");
    }
    outln!("dry run: nothing was changed");
}

fn render_outcome(cli: &Cli, o: &UpgradeOutcome) {
    if cli.json {
        outln!("{}", serde_json::to_string_pretty(o).unwrap_or_default());
        return;
    }
    outln!(
        "upgraded {} -> {} (upgrade {}, pre-upgrade backup {})",
        o.from_version,
        o.to_version,
        o.upgrade_id,
        o.backup_id
    );
    match (&o.backup_single_phase, o.backup_precopy_ms) {
        (Some(why), _) => outln!("  pre-upgrade backup made inside the stop ({why})"),
        (None, Some(ms)) if !o.reloaded.is_empty() => outln!(
            "  pre-upgrade backup copied while running ({}), then the changes and the database dumps while stopped; sealed inside the stop",
            crate::fsutil::human_ms(ms)
        ),
        (None, Some(ms)) => outln!(
            "  pre-upgrade backup copied while running ({}), only the changes while stopped; archive written after the start",
            crate::fsutil::human_ms(ms)
        ),
        (None, None) => {}
    }
    for r in &o.reloaded {
        outln!(
            "  {} {}: loaded into the new server; the old data ({}) is kept untouched as the way back: remove it once you no longer need it",
            r.server,
            r.service,
            r.data_before
        );
    }
    if !o.hooks_run.is_empty() {
        outln!("  hooks run: {}", o.hooks_run.join(", "));
    }
    outln!("  services healthy: {}", o.services.join(", "));
    if !o.left_stopped.is_empty() {
        outln!("  left stopped, as they were (created with the new version): {}", o.left_stopped.join(", "));
    }
    let downtime =
        o.downtime_ms.map(|d| format!("{:.1} s", d as f64 / 1000.0)).unwrap_or_else(|| "none".into());
    outln!("  took {:.1} s, downtime {downtime}", o.duration_ms as f64 / 1000.0);
}
