//! `prune`, `schedule`, `storage migrate`, `catalog rebuild`, `doctor`: set up, call the flow,
//! render.

use std::time::Duration;

use anyhow::{Context, Result};

use super::out::outln;
use super::{Cli, PruneArgs, ScheduleCommand, context, progress, recover_if_needed, render};
use crate::catalog::BackupKind;
use crate::flows::Ctx;
use crate::flows::backup::{BackupOptions, backup};
use crate::fsutil::human_bytes;
use crate::interrupt::Interrupt;
use crate::lock::ProjectLock;
use crate::retention::Policy;
use crate::schedule::{DEFAULT_CRON, Schedule};

/// nuwax.toml's `[retention]`, with the flags' rules in place of its default rules.
fn policy(ctx: &Ctx, args: &PruneArgs) -> Policy {
    let mut p = ctx.project.settings.retention.clone().unwrap_or_default();
    let flags = [args.keep_last, args.keep_daily, args.keep_weekly, args.keep_monthly];
    if flags.iter().any(Option::is_some) || args.keep_within.is_some() {
        p.default.keep_last = args.keep_last;
        p.default.keep_daily = args.keep_daily;
        p.default.keep_weekly = args.keep_weekly;
        p.default.keep_monthly = args.keep_monthly;
        p.default.keep_within = args.keep_within.clone();
    }
    p
}

pub async fn prune(cli: &Cli, args: &PruneArgs, interrupt: Interrupt) -> Result<()> {
    let mut ctx = context(cli, false, interrupt).await?;
    let lock = ProjectLock::acquire(&ctx.project.state_dir)?;
    recover_if_needed(&mut ctx, Some(&lock)).await?;
    // Kept image tags are released with their backups when the engine answers.
    ctx.engine = super::connect().await.ok();
    let policy = policy(&ctx, args);
    let out = crate::flows::prune::prune(&ctx, &policy, args.dry_run, chrono::Utc::now()).await?;
    render_prune(cli, &out);
    match out.remotes.iter().find(|r| r.error.is_some()) {
        Some(r) => anyhow::bail!("pruning remote {}: {}", r.remote, r.error.as_deref().unwrap_or_default()),
        None => Ok(()),
    }
}

fn render_prune(cli: &Cli, o: &crate::flows::prune::PruneOutcome) {
    if cli.json {
        outln!("{}", serde_json::to_string_pretty(o).unwrap_or_default());
        return;
    }
    let mut t = render::table(&["id", "kind", "status", "created", "size", "", "why"]);
    for i in &o.items {
        t.add_row(vec![
            i.id.to_string(),
            i.kind.clone(),
            i.status.clone(),
            i.created_at.chars().take(19).collect(),
            i.size_bytes.map(|s| human_bytes(s as u64)).unwrap_or_default(),
            if i.keep { "keep".into() } else { "remove".into() },
            i.reasons.join(", "),
        ]);
    }
    outln!("{t}");
    for r in &o.remotes {
        let verb = if o.dry_run { "would remove" } else { "removed" };
        outln!(
            "remote {}: keeps the copies of {}; {verb} {}{}",
            r.remote,
            ids(&r.kept),
            ids(&r.removed),
            r.error.as_deref().map(|e| format!(" (stopped: {e})")).unwrap_or_default()
        );
    }
    if o.dry_run {
        outln!("dry run: nothing was deleted");
        return;
    }
    if let Some(v) = o.verified {
        outln!("backup {v} (the newest complete one) verified first");
    }
    outln!("removed {} backup(s), {} freed", o.removed.len(), human_bytes(o.freed_bytes));
    for l in &o.leftovers_removed {
        outln!("removed leftover {}", l.display());
    }
}

fn ids(v: &[i64]) -> String {
    match v.is_empty() {
        true => "none".into(),
        false => v.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
    }
}

pub async fn schedule(cli: &Cli, c: &ScheduleCommand, interrupt: Interrupt) -> Result<()> {
    let ctx = context(cli, false, interrupt.clone()).await?;
    let (cron, install) = match c {
        ScheduleCommand::Run { cron } => (cron, None),
        ScheduleCommand::Install { print, dir, cron } => (cron, Some((*print, dir))),
    };
    let expr = cron.clone().or(ctx.project.settings.schedule.clone()).unwrap_or_else(|| DEFAULT_CRON.into());
    let sched = Schedule::parse(&expr).map_err(crate::Error::Config)?;
    if let Some((print, dir)) = install {
        let exe = std::env::current_exe().context("finding the nuwax binary")?;
        let units = crate::schedule::systemd_units(&exe, &ctx.project.dir, &ctx.project.name, &sched)
            .map_err(crate::Error::Config)?;
        if print {
            outln!("# {}\n{}\n# {}\n{}", units.service_name, units.service, units.timer_name, units.timer);
            return Ok(());
        }
        let written = crate::schedule::write_units(&units, dir)
            .with_context(|| format!("writing the units into {}", dir.display()))?;
        for p in &written {
            outln!("wrote {}", p.display());
        }
        outln!("enable with: systemctl daemon-reload && systemctl enable --now {}", units.timer_name);
        return Ok(());
    }
    drop(ctx);
    run_schedule(cli, &sched, interrupt).await
}

/// The foreground scheduler: one run per due time, never two at once, never alongside another
/// nuwax operation; SIGINT/SIGTERM ends it (a run in progress is abandoned as a backup is:
/// services started again, the partial archive removed).
async fn run_schedule(cli: &Cli, sched: &Schedule, interrupt: Interrupt) -> Result<()> {
    tracing::warn!("schedule {:?} (local time); stop with SIGTERM or Ctrl-C", sched.expr());
    let mut n = 0u64;
    loop {
        let now = chrono::Local::now();
        let Some(next) = sched.next_after(now) else {
            tracing::warn!("the schedule has no next run; stopping");
            return Ok(());
        };
        tracing::warn!("next run at {}", next.format("%Y-%m-%d %H:%M:%S %Z"));
        let wait = (next - now).to_std().unwrap_or_default();
        let deadline = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < deadline {
            if interrupt.check().is_err() {
                tracing::warn!("stopped (no run in progress)");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200).min(deadline - tokio::time::Instant::now())).await;
        }
        n += 1;
        match run_once(cli, &interrupt).await {
            Ok(msg) => tracing::warn!("scheduled run {n}: {msg}"),
            Err(e) if interrupt.check().is_err() => {
                tracing::warn!("scheduled run {n} abandoned: {e:#}; services were started again; stopped");
                return Ok(());
            }
            Err(e) => tracing::error!("scheduled run {n} failed: {e:#}"),
        }
    }
}

async fn run_once(cli: &Cli, interrupt: &Interrupt) -> Result<String> {
    let mut ctx = context(cli, true, interrupt.clone()).await?;
    let lock = match ProjectLock::acquire(&ctx.project.state_dir) {
        Ok(l) => l,
        Err(e) => return Ok(format!("skipped: {e:#}")),
    };
    recover_if_needed(&mut ctx, Some(&lock)).await?;
    let opts = BackupOptions::for_project(&ctx.project, BackupKind::Scheduled, None, None)?;
    let b = backup(&ctx, &opts, std::sync::Arc::new(crate::archive::NoProgress)).await?;
    let policy = ctx.project.settings.retention.clone().unwrap_or_default();
    let p = crate::flows::prune::prune(&ctx, &policy, false, chrono::Utc::now()).await?;
    // Copies: this backup's, and any an unreachable remote still owes from earlier runs.
    let copies = crate::flows::offsite::sync(&ctx, None, &crate::archive::NoProgress).await?;
    let pending = copies.iter().filter(|c| c.status == "pending").count();
    Ok(format!(
        "backup {} complete ({}, downtime {}); prune removed {:?}; {} copied to remotes, {pending} pending",
        b.id,
        human_bytes(b.size_bytes),
        b.downtime_ms.map(crate::fsutil::human_ms).unwrap_or_else(|| "none".into()),
        p.removed,
        copies.iter().filter(|c| c.status == "copied").count()
    ))
}

pub async fn migrate(cli: &Cli, new_dir: &std::path::Path, interrupt: Interrupt) -> Result<()> {
    let mut ctx = context(cli, false, interrupt).await?;
    let lock = ProjectLock::acquire(&ctx.project.state_dir)?;
    recover_if_needed(&mut ctx, Some(&lock)).await?;
    let plan = crate::flows::storage::plan(&ctx, new_dir).await?;
    let bar = progress::bar(cli.json || cli.quiet);
    let out = crate::flows::storage::migrate(&ctx, plan, bar.clone()).await;
    bar.done();
    let out = out?;
    if cli.json {
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        outln!(
            "moved {} archive(s) ({}) from {} to {}; storage_dir set in {}",
            out.moved,
            human_bytes(out.bytes),
            out.from_dir.display(),
            out.to_dir.display(),
            out.config.display()
        );
        for w in &out.warnings {
            outln!("warning: {w}");
        }
    }
    Ok(())
}

pub async fn rebuild(cli: &Cli, from: Option<&str>, interrupt: Interrupt) -> Result<()> {
    let mut ctx = context(cli, false, interrupt).await?;
    let lock = ProjectLock::acquire(&ctx.project.state_dir)?;
    recover_if_needed(&mut ctx, Some(&lock)).await?;
    let fetched = match from {
        Some(remote) => {
            let bar = progress::bar(cli.json || cli.quiet);
            let f = crate::flows::offsite::fetch_for_rebuild(&ctx, remote, &*bar).await;
            bar.done();
            let f = f?;
            if !cli.json {
                outln!("fetched {} archive(s) from remote {remote}", f.len());
            }
            f
        }
        None => Vec::new(),
    };
    let out = crate::flows::rebuild::rebuild(&ctx).await?;
    if let Some(remote) = from {
        crate::flows::offsite::record_rebuilt(&ctx, remote, &fetched).await?;
    }
    if cli.json {
        outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    for (id, p) in &out.added {
        outln!("recorded backup {id} from {}", p.display());
    }
    for id in &out.marked_missing {
        outln!("backup {id}: archive missing");
    }
    for id in &out.found_again {
        outln!("backup {id}: archive found again");
    }
    for (p, why) in &out.skipped {
        outln!("skipped {}: {why}", p.display());
    }
    outln!(
        "{} archive(s) recorded, {} already known, {} marked missing",
        out.added.len(),
        out.known,
        out.marked_missing.len()
    );
    Ok(())
}

pub async fn doctor(cli: &Cli, interrupt: Interrupt) -> Result<()> {
    let ctx = context(cli, false, interrupt).await?;
    let engine = super::connect().await.map_err(|e| format!("{e:#}"));
    // Held while checking, so nothing starts halfway through; when another operation holds it,
    // its journal rows are live, not leftovers.
    let lock = ProjectLock::try_acquire(&ctx.project.state_dir);
    let running_now = lock.as_ref().err().map(|e| format!("{e:#}"));
    let findings = crate::flows::doctor::doctor(&ctx.project, &ctx.catalog, engine, running_now).await?;
    drop(lock);
    if cli.json {
        outln!("{}", serde_json::to_string_pretty(&findings)?);
    } else {
        for f in &findings {
            outln!("{} {:<11} {}", if f.ok { "ok  " } else { "FAIL" }, f.check, f.detail);
            if let Some(h) = &f.hint {
                outln!("     {:<11} hint: {h}", "");
            }
        }
    }
    let failed = findings.iter().filter(|f| !f.ok).count();
    if failed > 0 {
        return Err(crate::Error::Findings(failed).into());
    }
    Ok(())
}
