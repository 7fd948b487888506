//! `remote add|list|test|remove`, `sync`, `import --from`, `verify --remote`, and the copy
//! lines other commands print: set up, call the offsite flow, render.

use anyhow::Result;
use serde_json::json;

use super::out::{errln, outln};
use super::{Cli, RemoteAddArgs, RemoteCommand, context, progress, recover_if_needed, render};
use crate::flows::offsite::{self, CopyOutcome};
use crate::interrupt::Interrupt;
use crate::lock::ProjectLock;
use crate::remote::{CopyPolicy, RemoteSettings, settings_file};

pub async fn remote(cli: &Cli, cmd: &RemoteCommand, interrupt: Interrupt) -> Result<()> {
    let ctx = context(cli, false, interrupt).await?;
    let toml = ctx.project.dir.join(crate::project::CONFIG_FILE);
    match cmd {
        RemoteCommand::Add(a) => {
            let r = settings(a)?;
            // Refused before nuwax.toml is touched: a URL nuwax cannot use.
            crate::remote::parse_url(&r.url)?;
            settings_file::add(&toml, &r)?;
            if cli.json {
                outln!("{}", json!({ "added": r, "file": toml }));
            } else {
                outln!("remote {} added to {}: {}", r.name, toml.display(), r.url);
                errln!(
                    "check it with `nuwax remote test {}`; `nuwax sync` copies the backups it wants",
                    r.name
                );
            }
        }
        RemoteCommand::Remove { name } => {
            if !settings_file::remove(&toml, name)? {
                anyhow::bail!(crate::Error::Config(format!("no remote {name:?} in {}", toml.display())));
            }
            if cli.json {
                outln!("{}", json!({ "removed": name }));
            } else {
                outln!("remote {name} removed from {} (its objects stay where they are)", toml.display());
            }
        }
        RemoteCommand::List => {
            let copies = ctx.catalog.copies(&ctx.project.name).await?;
            let rows: Vec<serde_json::Value> = ctx
                .project
                .settings
                .remotes
                .iter()
                .map(|r| {
                    let of = |s: &str| copies.iter().filter(|c| c.remote == r.name && c.status == s).count();
                    json!({ "name": r.name, "url": r.url, "endpoint": r.endpoint, "copy": r.copy, "kinds": r.kinds,
                            "copied": of("copied"), "pending": of("pending") })
                })
                .collect();
            if cli.json {
                outln!("{}", serde_json::to_string_pretty(&rows)?);
            } else if rows.is_empty() {
                outln!("no remotes (nuwax remote add NAME URL adds one)");
            } else {
                let mut t = render::table(&["name", "url", "copies", "copied", "pending"]);
                for r in &rows {
                    t.add_row(vec![
                        r["name"].as_str().unwrap_or_default().to_string(),
                        r["url"].as_str().unwrap_or_default().to_string(),
                        r["copy"].as_str().unwrap_or_default().to_string(),
                        r["copied"].to_string(),
                        r["pending"].to_string(),
                    ]);
                }
                outln!("{t}");
            }
        }
        RemoteCommand::Test { name } => {
            let p = offsite::test(&ctx, name).await?;
            if cli.json {
                outln!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                outln!("remote {}: {} ({} ms)", p.remote, if p.ok { "ok" } else { "FAILED" }, p.ms);
                outln!("  {}", p.detail);
            }
            if !p.ok {
                anyhow::bail!("remote {name} failed its test: {}", p.detail);
            }
        }
    }
    Ok(())
}

fn settings(a: &RemoteAddArgs) -> Result<RemoteSettings> {
    let copy = match a.copy.as_str() {
        "kinds" => CopyPolicy::Kinds,
        "scheduled" => CopyPolicy::Scheduled,
        _ => CopyPolicy::All,
    };
    if copy == CopyPolicy::Kinds && a.kinds.is_empty() {
        anyhow::bail!(crate::Error::Config("--copy kinds needs --kinds (manual, scheduled, ...)".into()));
    }
    Ok(RemoteSettings {
        name: a.name.clone(),
        url: a.url.clone(),
        endpoint: a.endpoint.clone(),
        region: a.region.clone(),
        credentials_file: a.credentials_file.clone(),
        copy,
        kinds: a.kinds.clone(),
        retention: None,
    })
}

pub async fn sync(cli: &Cli, only: Option<&str>, interrupt: Interrupt) -> Result<()> {
    let mut ctx = context(cli, false, interrupt).await?;
    let lock = ProjectLock::acquire(&ctx.project.state_dir)?;
    recover_if_needed(&mut ctx, Some(&lock)).await?;
    let bar = progress::bar(cli.json || cli.quiet);
    let out = offsite::sync(&ctx, only, &*bar).await;
    bar.done();
    let out = out?;
    if cli.json {
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else if out.is_empty() {
        outln!("nothing to copy: every remote holds what its policy wants");
    } else {
        for o in &out {
            copy_line(o);
        }
    }
    match out.iter().find(|o| o.status == "pending") {
        Some(o) => anyhow::bail!(
            "backup {} is not copied to {}: {}",
            o.backup_id,
            o.remote,
            o.detail.as_deref().unwrap_or("pending")
        ),
        None => Ok(()),
    }
}

/// One line per copy, as `backup` and `sync` print them.
pub fn copy_line(o: &CopyOutcome) {
    match o.status {
        "copied" => outln!(
            "  copied backup {} to {} ({}, {} ms; read back, sha256 matches)",
            o.backup_id,
            o.remote,
            crate::fsutil::human_bytes(o.bytes),
            o.ms
        ),
        "pending" => outln!(
            "  copy of backup {} to {} is PENDING ({}): `nuwax sync` retries it",
            o.backup_id,
            o.remote,
            o.detail.as_deref().unwrap_or("not done")
        ),
        _ => outln!(
            "  copy of backup {} to {} skipped: {}",
            o.backup_id,
            o.remote,
            o.detail.as_deref().unwrap_or("")
        ),
    }
}

pub async fn import_from(cli: &Cli, from: &str, interrupt: Interrupt) -> Result<()> {
    let mut ctx = context(cli, false, interrupt).await?;
    let lock = ProjectLock::acquire(&ctx.project.state_dir)?;
    recover_if_needed(&mut ctx, Some(&lock)).await?;
    let listed = offsite::list_remote(&ctx, from).await?;
    if !cli.json {
        outln!("remote {from} holds {} archive(s) of project {}", listed.len(), ctx.project.name);
    }
    let bar = progress::bar(cli.json || cli.quiet);
    let out = offsite::import_from(&ctx, from, &*bar).await;
    bar.done();
    let out = out?;
    if cli.json {
        let docs: Vec<_> =
            out.iter().map(|(name, i)| json!({ "remote_name": name, "imported": i })).collect();
        outln!("{}", serde_json::to_string_pretty(&docs)?);
        return Ok(());
    }
    for (name, i) in &out {
        outln!(
            "  imported {name} as backup {} (from backup {} of {})",
            i.id,
            i.from_backup_id,
            i.from_project
        );
    }
    let known = listed.iter().filter(|a| a.backup_id.is_some()).count();
    outln!(
        "{} archive(s) imported, {known} already in the catalog; `nuwax rollback ID` restores one",
        out.len()
    );
    Ok(())
}

pub async fn verify_remote(cli: &Cli, interrupt: Interrupt) -> Result<()> {
    let mut ctx = context(cli, false, interrupt).await?;
    recover_if_needed(&mut ctx, None).await?;
    let out = offsite::verify_remote(&ctx, None).await?;
    if cli.json {
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else if out.is_empty() {
        outln!("no copies on remotes to verify");
    } else {
        for c in &out {
            outln!(
                "{} backup {} on {}: {}",
                if c.ok { "ok  " } else { "FAIL" },
                c.backup_id,
                c.remote,
                c.detail
            );
        }
    }
    match out.iter().find(|c| !c.ok) {
        Some(c) => Err(crate::Error::VerifyFailed {
            id: c.backup_id,
            detail: format!("copy on {}: {}", c.remote, c.detail),
        }
        .into()),
        None => Ok(()),
    }
}
