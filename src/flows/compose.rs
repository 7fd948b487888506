//! `up` through the detected compose CLI, for what only compose can do: create containers from
//! the (restored or upgraded) compose files. Starting and stopping existing containers goes
//! through the engine.

use anyhow::{Context, Result, bail};

use super::Ctx;
use crate::engine::Container;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Up {
    /// `up -d --no-build`: every service, created where missing or changed, started.
    All,
    /// `up -d --no-build --remove-orphans`: as `All`, and containers of services the compose
    /// files no longer define are stopped and removed.
    AllRemoveOrphans,
    /// `up --no-start --no-build --remove-orphans`: every service created, none started,
    /// orphans removed.
    CreateAll,
    /// `up -d --no-build --no-deps SERVICES`.
    Services,
    /// `up --no-start --no-build --no-deps SERVICES`: created, left stopped.
    CreateOnly,
}

impl Up {
    /// Whether it acts on every service (else on the ones named).
    fn whole(self) -> bool {
        matches!(self, Up::All | Up::AllRemoveOrphans | Up::CreateAll)
    }
}

/// Runs compose `up` in the project directory, then (unless `CreateOnly`) starts and waits for
/// the containers of `services` (of every service for `All`) to be running and healthy.
pub async fn up(ctx: &Ctx, mode: Up, services: &[String]) -> Result<Vec<Container>> {
    if !run_up(ctx, mode, services).await? || matches!(mode, Up::CreateOnly | Up::CreateAll) {
        return Ok(Vec::new());
    }
    let project = &ctx.project;
    let engine = ctx.engine.as_ref().context("no engine")?;
    let containers: Vec<Container> = engine
        .project_containers(&project.name)
        .await?
        .into_iter()
        .filter(|c| mode.whole() || services.contains(&c.service))
        .collect();
    crate::guard::start_and_wait(&**engine, &containers, &project.dependencies(), ctx.timeouts().ready)
        .await?;
    Ok(containers)
}

/// Runs compose `up` and returns without waiting for anything; `false` when there was
/// nothing to run.
pub async fn run_up(ctx: &Ctx, mode: Up, services: &[String]) -> Result<bool> {
    if !mode.whole() && services.is_empty() {
        return Ok(false);
    }
    let cli = ctx.project.compose_cli().context("services must be created with the compose CLI")?;
    let mut args = match mode {
        Up::All => vec!["up", "-d", "--no-build"],
        Up::AllRemoveOrphans => vec!["up", "-d", "--no-build", "--remove-orphans"],
        Up::CreateAll => vec!["up", "--no-start", "--no-build", "--remove-orphans"],
        Up::Services => vec!["up", "-d", "--no-build", "--no-deps"],
        Up::CreateOnly => vec!["up", "--no-start", "--no-build", "--no-deps"],
    };
    if !mode.whole() {
        args.extend(services.iter().map(String::as_str));
    }
    let project = &ctx.project;
    let mut cmd = cli.command(&project.dir, &project.name, &project.compose_files, &args);
    tracing::info!("running {} {}", cli.command.join(" "), args.join(" "));
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    if !out.status.success() {
        bail!(
            "{} {} failed: {}",
            cli.command.join(" "),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(true)
}
