//! The command line: parse, set up (project, catalog, engine, lock, recovery), run one command,
//! render its result (text or `--json` on stdout; logs and progress on stderr), map errors to
//! exit codes. The only place that talks to the user.

mod args;
pub(crate) mod commands;
mod lifecycle;
mod offsite;
mod out;
mod progress;
pub(crate) mod render;
mod upgrade;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;

pub use args::{
    BackupArgs, CatalogCommand, Cli, Command, PackageCommand, PruneArgs, RemoteAddArgs, RemoteCommand,
    RollbackArgs, ScheduleCommand, ServeArgs, StorageCommand, TokenCommand, UpgradeArgs,
};

use out::{errln, outln};

use crate::catalog::Catalog;
use crate::engine::compose::{Compose, ComposeCliRunner};
use crate::engine::{DockerEngine, Engine, EngineError};
use crate::error::exit;
use crate::flows::Ctx;
use crate::interrupt::Interrupt;
use crate::lock::{LockError, ProjectLock};
use crate::project::Project;

/// Runs the command line and returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    init_tracing(&cli);
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            errln!("nuwax: error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    let (result, signal) = runtime.block_on(async move {
        let dir = cli.project_dir.clone();
        let interrupt = match Interrupt::install() {
            Ok(i) => i,
            Err(e) => return (Err(anyhow::anyhow!("installing signal handlers: {e}")), None),
        };
        // The command runs in its own task so that a panic anywhere in it is caught here, and
        // the services it may have stopped are started again through the journal.
        let r = match tokio::spawn(commands::run(cli, interrupt.clone())).await {
            Ok(r) => r,
            Err(join) => {
                errln!("nuwax: internal error: {join}; starting any stopped services again");
                if let Err(e) = recover_after_panic(dir).await {
                    errln!("nuwax: recovery after the internal error failed: {e:#}");
                }
                Err(anyhow::anyhow!("internal error: {join}"))
            }
        };
        (r, interrupt.received())
    });
    // Do not wait for blocking tasks a cancelled command may have left (they stop on their own).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    // A closed stdout is no error (see out.rs); a failed one is, once the command is done.
    let result =
        result.and_then(|()| out::finish().map_err(|e| anyhow::anyhow!("cannot write to stdout: {e}")));
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            let (code, e) = interrupted(exit_code(&e), e, signal);
            errln!("nuwax: error: {e:#}");
            if let Some(hint) = hint_of(&e) {
                errln!("hint: {hint}");
            }
            let reported = matches!(e.downcast_ref::<crate::Error>(), Some(crate::Error::Findings(_)));
            if json && !reported {
                let doc =
                    serde_json::json!({ "status": "failed", "error": format!("{e:#}"), "exit_code": code });
                outln!("{doc}");
            }
            ExitCode::from(code)
        }
    }
}

/// A command that failed after a signal exits 130 (SIGINT) or 143 (SIGTERM), whatever error
/// the signal caused on the way (a cancelled verification, a compose child that died with it),
/// and says so; an upgrade's own outcome (rolled back or not) says more and keeps its code.
fn interrupted(code: u8, e: anyhow::Error, signal: Option<&'static str>) -> (u8, anyhow::Error) {
    let Some(signal) = signal else { return (code, e) };
    if matches!(code, exit::UPGRADE_ROLLED_BACK | exit::UPGRADE_ROLLBACK_FAILED) {
        return (code, e);
    }
    let named =
        e.chain().any(|c| matches!(c.downcast_ref::<crate::Error>(), Some(crate::Error::Interrupted { .. })));
    let e = match named {
        true => e,
        false => e.context(crate::Error::Interrupted { signal }),
    };
    (crate::Error::Interrupted { signal }.exit_code(), e)
}

/// The one line of what to do next that an error carries, if any.
pub(crate) fn hint_of(e: &anyhow::Error) -> Option<String> {
    e.chain().find_map(|c| {
        c.downcast_ref::<crate::Error>()
            .and_then(|e| e.hint())
            .or_else(|| c.downcast_ref::<LockError>().map(|l| l.hint().to_string()))
    })
}

/// The exit code the CLI ends with for `e`.
pub(crate) fn exit_code(e: &anyhow::Error) -> u8 {
    for c in e.chain() {
        if let Some(e) = c.downcast_ref::<crate::Error>() {
            return e.exit_code();
        }
        if let Some(EngineError::Unreachable { .. }) = c.downcast_ref::<EngineError>() {
            return exit::ENGINE_UNREACHABLE;
        }
        if let Some(LockError::Held { .. }) = c.downcast_ref::<LockError>() {
            return exit::LOCKED;
        }
    }
    exit::FAILED
}

fn init_tracing(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "info",
        _ => "debug",
    };
    let filter =
        EnvFilter::try_from_env("NUWAX_LOG").unwrap_or_else(|_| EnvFilter::new(format!("nuwax={level}")));
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{Layer, filter::LevelFilter};
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .with_filter(filter);
    // `nuwax serve` shows each operation's log lines (info and above) on its page.
    let ops = crate::serve::ops::LogLayer.with_filter(LevelFilter::INFO);
    let _ = tracing_subscriber::registry().with(fmt).with(ops).try_init();
}

/// A line on stdout for the operator (`nuwax serve`'s login URL).
pub(crate) fn announce(line: &str) {
    outln!("{line}");
}

/// Connects to the engine, turning "unreachable" into the user-facing error.
pub(crate) async fn connect() -> Result<Arc<dyn Engine>> {
    match DockerEngine::connect().await {
        Ok(e) => Ok(Arc::new(e)),
        Err(EngineError::Unreachable { host, detail }) => {
            Err(crate::Error::EngineUnreachable { host, detail }.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// The project, its catalog and (when `engine`) a connected engine.
async fn context(cli: &Cli, engine: bool, interrupt: Interrupt) -> Result<Ctx> {
    if let Some(id) = &cli.identity {
        crate::archive::seal::load_identity_file(id)?;
    }
    let dir = cli.project_dir.clone().unwrap_or_else(|| ".".into());
    context_at(&dir, engine, interrupt).await
}

/// [`context`] for the project in `dir`.
pub(crate) async fn context_at(dir: &std::path::Path, engine: bool, interrupt: Interrupt) -> Result<Ctx> {
    let project = Project::discover(dir)?;
    if let Some(file) = &project.settings.identity_file {
        // Resolved against the project dir; kept in memory only. A missing key is only a
        // problem for what needs it (that error names it), not for every command.
        let file = project.dir.join(file);
        if let Err(e) = crate::archive::seal::load_identity_file(&file) {
            tracing::warn!("identity_file: {e:#}; encrypted archives cannot be read");
        }
    }
    let catalog = Catalog::open(&project.state_dir).await?;
    let engine = if engine { Some(connect().await?) } else { None };
    let compose = engine.as_ref().and_then(|_| compose_of(&project));
    Ok(Ctx { project, catalog, engine, compose, interrupt })
}

/// The compose CLI chosen or detected, once per command, before anything is touched; `None`
/// when there is none (flows that need it say so with the reason).
pub(crate) fn compose_of(project: &Project) -> Option<Arc<dyn Compose>> {
    let cli = project.compose_cli().ok()?;
    Some(Arc::new(ComposeCliRunner { cli, children: Some(project.state_dir.join("children")) }))
}

/// Before any command: if a previous nuwax died mid-operation, finish its recovery now. Only
/// when the lock is free (a live operation holds it) and only when there is something to do.
pub(crate) async fn recover_if_needed(ctx: &mut Ctx, lock: Option<&ProjectLock>) -> Result<()> {
    let _own;
    if lock.is_none() {
        match ProjectLock::try_acquire(&ctx.project.state_dir) {
            Ok(l) => _own = l,
            Err(_) => return Ok(()),
        }
    }
    if ctx.catalog.unfinished(&ctx.project.name).await?.is_empty() {
        ctx.catalog.fail_orphaned_pending(&ctx.project.name).await?;
        ctx.catalog.fail_orphaned_upgrades(&ctx.project.name).await?;
        // Files of a nuwax killed before it journaled anything (a package being unpacked).
        for p in crate::flows::recover::sweep(&ctx.project.storage_dir) {
            tracing::warn!("removed {}, left by a nuwax that died", p.display());
        }
        return Ok(());
    }
    if ctx.engine.is_none() {
        ctx.engine = Some(connect().await.map_err(|e| {
            e.context(
                "an earlier nuwax operation left services stopped and the engine is needed to start them",
            )
        })?);
    }
    if ctx.compose.is_none() {
        ctx.compose = compose_of(&ctx.project);
    }
    for r in crate::flows::recover::recover(ctx).await? {
        render::recovered(&r);
    }
    Ok(())
}

pub(crate) async fn recover_after_panic(dir: Option<std::path::PathBuf>) -> Result<()> {
    let project = Project::discover(&dir.unwrap_or_else(|| ".".into()))?;
    let catalog = Catalog::open(&project.state_dir).await?;
    let mut ctx = Ctx { project, catalog, engine: None, compose: None, interrupt: Interrupt::none() };
    recover_if_needed(&mut ctx, None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_that_failed_after_a_signal_exits_130_or_143_and_says_so() {
        let verify = || anyhow::Error::new(crate::Error::VerifyFailed { id: 3, detail: "cancelled".into() });
        assert_eq!(interrupted(7, verify(), None).0, 7);
        let (code, e) = interrupted(7, verify(), Some("SIGINT"));
        assert_eq!(code, 130);
        assert!(format!("{e:#}").starts_with("interrupted by SIGINT: backup 3 failed verification"), "{e:#}");
        assert_eq!(interrupted(6, anyhow::anyhow!("x"), Some("SIGTERM")).0, 143);
        // An upgrade's own outcome says more and keeps its code.
        let rolled = anyhow::Error::new(crate::Error::UpgradeRolledBack {
            to: "3".into(),
            cause: "interrupted by SIGINT".into(),
            backup_id: 2,
            state: "version 2 runs".into(),
        });
        assert_eq!(interrupted(11, rolled, Some("SIGINT")).0, 11);
    }
}
