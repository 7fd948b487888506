//! One function per command: set up what it needs, call the flow, render the result.

use anyhow::{Context, Result};

use super::{Cli, Command, context, progress, recover_if_needed, render};
use crate::archive;
use crate::catalog::BackupKind;
use crate::flows::backup::{BackupOptions, backup};
use crate::interrupt::Interrupt;
use crate::lock::ProjectLock;
use crate::project::Project;

pub async fn run(cli: Cli, interrupt: Interrupt) -> Result<()> {
    match &cli.command {
        Command::Init => init(&cli),
        Command::Status => status(&cli, interrupt).await,
        Command::Upgrade(args) => super::upgrade::run_upgrade(&cli, args, interrupt).await,
        Command::History => super::upgrade::history(&cli, interrupt).await,
        Command::Prune(args) => super::lifecycle::prune(&cli, args, interrupt).await,
        Command::Schedule(c) => super::lifecycle::schedule(&cli, c, interrupt).await,
        Command::Storage(super::StorageCommand::Migrate { new_dir }) => {
            super::lifecycle::migrate(&cli, new_dir, interrupt).await
        }
        Command::Catalog(super::CatalogCommand::Rebuild { from }) => {
            super::lifecycle::rebuild(&cli, from.as_deref(), interrupt).await
        }
        Command::Remote(cmd) => super::offsite::remote(&cli, cmd, interrupt).await,
        Command::Sync { remote } => super::offsite::sync(&cli, remote.as_deref(), interrupt).await,
        Command::Doctor => super::lifecycle::doctor(&cli, interrupt).await,
        Command::Serve(args) => {
            let dir = cli.project_dir.clone().unwrap_or_else(|| ".".into());
            let opts = crate::serve::ServeOptions {
                dir,
                listen: args.listen,
                allow_remote: args.allow_remote,
                max_upload: args.max_upload.saturating_mul(1 << 20),
            };
            crate::serve::serve(opts, interrupt).await
        }
        Command::Token(super::TokenCommand::New) => {
            let ctx = context(&cli, false, interrupt).await?;
            let token = crate::serve::new_token(&ctx.project.state_dir)?;
            render::token(&cli, &ctx.project, &token);
            Ok(())
        }
        Command::Package(super::PackageCommand::Build { dir, output }) => {
            super::upgrade::package_build(&cli, dir, output)
        }
        Command::Backup(args) => {
            let mut ctx = context(&cli, !args.no_docker, interrupt).await?;
            let lock = ProjectLock::acquire(&ctx.project.state_dir)?;
            recover_if_needed(&mut ctx, Some(&lock)).await?;
            let opts = backup_options(&ctx.project, args)?;
            if args.dry_run {
                let preview = crate::flows::backup::preview(&ctx, &opts).await?;
                render::backup_preview(&cli, &preview);
                return Ok(());
            }
            if args.no_docker {
                tracing::warn!("--no-docker: services were not touched; named volumes are not included");
            }
            let bar = progress::bar(cli.json || cli.quiet);
            let outcome = backup(&ctx, &opts, bar.clone()).await;
            bar.done();
            let mut outcome = outcome?;
            // The backup is complete and the services run: the copies never hold them up.
            let bar = progress::bar(cli.json || cli.quiet);
            outcome.copies = crate::flows::offsite::after_backup(&ctx, outcome.id, &*bar).await?;
            bar.done();
            ctx.catalog.close().await;
            render::backup(&cli, &outcome);
            Ok(())
        }
        Command::List => {
            let mut ctx = context(&cli, false, interrupt).await?;
            recover_if_needed(&mut ctx, None).await?;
            let records = ctx.catalog.list(&ctx.project.name).await?;
            render::list(&cli, &records);
            Ok(())
        }
        Command::Show { id } => {
            let mut ctx = context(&cli, false, interrupt).await?;
            recover_if_needed(&mut ctx, None).await?;
            let rec = ctx.record(*id).await?;
            let manifest =
                rec.path.as_ref().and_then(|p| archive::read_manifest(std::path::Path::new(p)).ok());
            render::show(&cli, &rec, manifest.as_ref());
            Ok(())
        }
        Command::Verify { remote: true, .. } => super::offsite::verify_remote(&cli, interrupt).await,
        Command::Verify { id, all, .. } => {
            let mut ctx = context(&cli, false, interrupt).await?;
            recover_if_needed(&mut ctx, None).await?;
            let records = if *all {
                ctx.catalog.list(&ctx.project.name).await?.into_iter().filter(|r| r.is_complete()).collect()
            } else {
                let id = id.expect("clap requires an id without --all");
                vec![ctx.record(id).await?]
            };
            let mut results = Vec::new();
            for rec in &records {
                let res = if !rec.is_complete() {
                    Err(format!("status is {}, not complete: not restorable", rec.status))
                } else {
                    let path = std::path::PathBuf::from(rec.path.clone().unwrap_or_default());
                    let (sum, cancel) = (rec.checksum.clone(), ctx.interrupt.cancel().clone());
                    let bar = progress::bar(cli.json || cli.quiet);
                    let b = bar.clone();
                    let r = tokio::task::spawn_blocking(move || {
                        archive::verify(&path, sum.as_deref(), &cancel, &*b)
                    })
                    .await?;
                    bar.done();
                    ctx.interrupt.check()?;
                    r.map_err(|e| format!("{:#}", anyhow::Error::from(e)))
                };
                results.push((rec, res));
            }
            render::verify(&cli, &results);
            match results.iter().find(|(_, r)| r.is_err()) {
                Some((rec, Err(e))) => {
                    Err(crate::Error::VerifyFailed { id: rec.id, detail: e.clone() }.into())
                }
                _ => Ok(()),
            }
        }
        Command::Delete { id } => {
            let mut ctx = context(&cli, false, interrupt).await?;
            let lock = ProjectLock::acquire(&ctx.project.state_dir)?;
            recover_if_needed(&mut ctx, Some(&lock)).await?;
            let rec = ctx.record(*id).await?;
            if ctx.engine.is_none() {
                ctx.engine = super::connect().await.ok();
            }
            crate::flows::prune::delete(&ctx, &rec).await?;
            render::deleted(&cli, &rec);
            Ok(())
        }
        Command::Import { from: Some(from), .. } => super::offsite::import_from(&cli, from, interrupt).await,
        Command::Import { archive, .. } => {
            let archive = archive.as_deref().expect("clap requires an archive without --from");
            let mut ctx = context(&cli, false, interrupt).await?;
            let lock = ProjectLock::acquire(&ctx.project.state_dir)?;
            recover_if_needed(&mut ctx, Some(&lock)).await?;
            let imported = crate::flows::import::import(&ctx, archive).await?;
            render::imported(&cli, &imported);
            Ok(())
        }
        Command::Rollback(args) => rollback(&cli, args, interrupt).await,
        Command::Recover => {
            let mut ctx = context(&cli, false, interrupt).await?;
            let _lock = ProjectLock::acquire(&ctx.project.state_dir)?;
            if !ctx.catalog.unfinished(&ctx.project.name).await?.is_empty() {
                ctx.engine = Some(super::connect().await?);
                ctx.compose = super::compose_of(&ctx.project);
            }
            let done = crate::flows::recover::recover(&ctx).await?;
            render::recover(&cli, &done);
            Ok(())
        }
    }
}

async fn rollback(cli: &Cli, args: &crate::cli::RollbackArgs, interrupt: Interrupt) -> Result<()> {
    use crate::flows::rollback::{RollbackOptions, plan, rollback};
    let mut ctx = context(cli, true, interrupt).await?;
    let lock = ProjectLock::acquire(&ctx.project.state_dir)?;
    recover_if_needed(&mut ctx, Some(&lock)).await?;
    let opts = RollbackOptions {
        keep_data: Vec::new(),
        id: args.id,
        data: !args.config_only,
        config: !args.data_only,
        safety: BackupOptions::for_project(&ctx.project, BackupKind::PreRollback, None, None)?,
        note: None,
        accept_live: args.accept_live,
    };
    // An archive this host no longer has comes back from a remote that holds a copy.
    let bar = progress::bar(cli.json || cli.quiet);
    let fetched = crate::flows::offsite::ensure_local(&ctx, ctx.record(args.id).await?, &*bar).await;
    bar.done();
    fetched?;
    let plan = plan(&ctx, &opts).await?;
    if args.dry_run {
        render::rollback_plan(cli, &plan);
        return Ok(());
    }
    if !args.yes {
        confirm(&format!(
            "Rollback will replace the data of {} volumes and {} files. Continue?",
            plan.volumes(),
            plan.files()
        ))?;
    }
    let bar = progress::bar(cli.json || cli.quiet);
    let outcome = rollback(&ctx, &opts, plan, bar.clone()).await;
    bar.done();
    render::rollback(cli, &outcome?);
    Ok(())
}

/// Asks on the terminal; without one, refuses.
fn confirm(question: &str) -> Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Err(crate::Error::NotConfirmed { what: "rollback" }.into());
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    match answer.trim() {
        "y" | "Y" | "yes" | "YES" => Ok(()),
        _ => Err(crate::Error::Declined.into()),
    }
}

fn backup_options(project: &Project, args: &crate::cli::BackupArgs) -> Result<BackupOptions> {
    let mut o =
        BackupOptions::for_project(project, BackupKind::Manual, args.compression.as_deref(), args.level)?;
    o.note = args.note.clone();
    o.stop = !args.no_stop;
    o.with_images = args.with_images;
    if args.no_snapshot {
        o.snapshot = crate::flows::backup::SnapshotUse::Off("--no-snapshot");
    }
    if args.kind == "scheduled" {
        o.kind = BackupKind::Scheduled;
    }
    Ok(o)
}

fn init(cli: &Cli) -> Result<()> {
    let dir = cli.project_dir.clone().unwrap_or_else(|| ".".into());
    // Find the project first: nothing is written where there is no compose project.
    Project::discover(&dir)?;
    let config = dir.join(crate::project::CONFIG_FILE);
    let wrote = if config.exists() {
        false
    } else {
        std::fs::write(&config, render::NUWAX_TOML_TEMPLATE)
            .with_context(|| format!("writing {}", config.display()))?;
        true
    };
    let project = Project::discover(&dir)?;
    crate::fsutil::create_private_dir(&project.storage_dir)?;
    crate::fsutil::create_private_dir(&project.state_dir)?;
    render::init(cli, &project, &config, wrote);
    Ok(())
}

async fn status(cli: &Cli, interrupt: Interrupt) -> Result<()> {
    let mut ctx = context(cli, false, interrupt).await?;
    recover_if_needed(&mut ctx, None).await?;
    let facts = StatusFacts::gather(&ctx).await?;
    render::status(cli, &facts.status(&ctx));
    Ok(())
}

/// What `status` shows, gathered (the engine asked, the catalog read); the CLI renders it and
/// the web console sends its JSON.
pub(crate) struct StatusFacts {
    engine: std::result::Result<(), String>,
    info: Option<crate::engine::EngineInfo>,
    containers: Option<Vec<crate::engine::Container>>,
    last: Option<crate::catalog::BackupRecord>,
    version: Option<String>,
    last_upgrade: Option<crate::catalog::UpgradeRecord>,
    unfinished: Vec<crate::catalog::Operation>,
    running_operation: Option<String>,
    databases: std::result::Result<Vec<crate::database::Found>, String>,
    modes: std::result::Result<std::collections::BTreeMap<String, crate::database::Mode>, String>,
}

impl StatusFacts {
    pub(crate) async fn gather(ctx: &crate::flows::Ctx) -> Result<StatusFacts> {
        let engine = match super::connect().await {
            Ok(e) => Ok(e),
            Err(e) => Err(format!("{e:#}")),
        };
        let (info, containers) = match &engine {
            Ok(e) => (e.info().await.ok(), e.project_containers(&ctx.project.name).await.ok()),
            Err(_) => (None, None),
        };
        let services = &ctx.project.settings.services;
        let found = containers.as_deref().unwrap_or_default();
        Ok(StatusFacts {
            engine: engine.map(|_| ()),
            info,
            last: ctx.catalog.last_complete(&ctx.project.name).await?,
            unfinished: ctx.catalog.unfinished(&ctx.project.name).await?,
            databases: crate::database::detect(found, services).map_err(|e| format!("{e:#}")),
            modes: crate::database::said_modes(found, services).map_err(|e| format!("{e:#}")),
            running_operation: match ProjectLock::try_acquire(&ctx.project.state_dir) {
                Ok(_) => None,
                Err(e) => Some(format!("{e}")),
            },
            version: ctx.current_version().await?,
            last_upgrade: ctx.catalog.upgrades(&ctx.project.name).await?.into_iter().next(),
            containers,
        })
    }

    pub(crate) fn status<'a>(&'a self, ctx: &'a crate::flows::Ctx) -> render::Status<'a> {
        render::Status {
            project: &ctx.project,
            compose: ctx.project.compose_cli(),
            engine: self.engine.clone().err(),
            info: self.info.clone(),
            containers: self.containers.clone(),
            last: self.last.clone(),
            version: self.version.clone(),
            last_upgrade: self.last_upgrade.clone(),
            unfinished: self.unfinished.clone(),
            running_operation: self.running_operation.clone(),
            databases: self.databases.clone(),
            modes: self.modes.clone(),
        }
    }
}
