//! `backup --dry-run`: what a backup would do now, from the same steps the backup runs (the
//! dump plan, the sources, who the stop takes, the room, one phase or two), with nothing
//! stopped, copied or recorded. Asking the servers which databases they hold is the one thing
//! it does inside containers, read-only, as the backup's own plan does.

use std::collections::BTreeSet;

use anyhow::Result;
use serde::Serialize;

use super::plan::{preflight, running_on};
use super::{BackupOptions, Takes, dumps, plan_sources, twophase};
use crate::archive::manifest::{DumpRecord, Skipped};
use crate::database::Mode;
use crate::engine::Container;
use crate::flows::Ctx;
use crate::flows::sources::Role;

/// The plan `backup --dry-run` prints (`--json`: this).
#[derive(Debug, Clone, Serialize)]
pub struct BackupPreview {
    pub project: String,
    pub service_version: String,
    /// How each service of the project is taken.
    pub services: Vec<ServicePlan>,
    /// The dumps it would take, in archive order.
    pub dumps: Vec<DumpRecord>,
    /// Each volume and bind mount it would copy, and whether it would hold one point in time.
    pub mounts: Vec<MountPlan>,
    /// Config files it would copy (archive paths).
    pub configs: Vec<String>,
    pub skipped: Vec<Skipped>,
    /// Why the copy would be made in one phase while stopped; `null`: two (while running, then
    /// only the changes while stopped).
    pub single_phase: Option<String>,
    /// `stop = "each"`: each group of linked services stopped in turn.
    pub stop_each: bool,
    /// `--no-stop`: nothing stopped, not one point in time.
    pub no_stop: bool,
    pub with_images: bool,
    /// What the data takes, as the preflight counts it, and the room it checks for.
    pub data_bytes: u64,
    pub needs_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServicePlan {
    pub service: String,
    pub running: bool,
    /// `stop`, `pause`, `dump`, `live`, `skip`, or `none` (not running: nothing to stop).
    pub how: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct MountPlan {
    /// `volume NAME` or `bind PATH`.
    pub item: String,
    pub point_in_time: bool,
    pub how: String,
}

/// The backup `opts` would make now; refused where the backup would refuse (a tool missing in
/// a container, no room), with the same error.
pub async fn preview(ctx: &Ctx, opts: &BackupOptions) -> Result<BackupPreview> {
    let containers = match &ctx.engine {
        Some(engine) => engine.project_containers(&ctx.project.name).await?,
        None => Vec::new(),
    };
    let dumps = match opts.stop_each {
        true => dumps::DumpPlan::default(),
        false => dumps::plan(ctx, &containers).await?,
    };
    let mut sources = plan_sources(ctx, opts, &containers, &dumps).await?;
    let takes = Takes::of(ctx, &containers, &dumps, opts.stop_each)?;
    let ran = takes.ran_by_mode();
    sources.read_live(&ran);
    let stop = opts.stop && ctx.engine.is_some();
    let (storage, plan, excludes, skip_dirs) = (
        ctx.project.storage_dir.clone(),
        sources.plan.clone(),
        sources.excludes.clone(),
        sources.skip_dirs.clone(),
    );
    let room =
        tokio::task::spawn_blocking(move || preflight(&storage, &plan, &excludes, &skip_dirs)).await??;
    let single_phase = match stop {
        true => twophase::one_phase(ctx, opts.snapshot, &sources, &containers, &room).map(|o| o.why),
        false => None,
    };
    let records = dumps.records();
    // Who runs while the data is read: as the backup records it on each mount.
    let mut running: BTreeSet<String> = records.iter().map(|d| d.service.clone()).collect();
    running.extend(ran.iter().cloned());
    if !stop {
        running.extend(containers.iter().filter(|c| c.is_running()).map(|c| c.service.clone()));
    }
    let paused: BTreeSet<String> = takes.pause.iter().map(|c| c.service.clone()).collect();
    let mut mounts = Vec::new();
    let mut configs = Vec::new();
    for s in &sources.plan {
        match &s.role {
            Role::Config { .. } => configs.push(s.prefix.clone()),
            Role::Images => {}
            Role::Mount { kind, name, destinations, .. } => {
                let on = running_on(destinations, &running);
                let paused_on = running_on(destinations, &paused);
                let how = match (on.is_empty(), paused_on.is_empty()) {
                    (false, _) if sources.live.contains(&s.prefix) => {
                        format!("read from the host while {} (after the stop, if any)", runs(&on))
                    }
                    (false, _) => format!("copied while {}", runs(&on)),
                    (true, false) => format!("copied while {} is paused", paused_on.join(", ")),
                    (true, true) => "copied while the services that mount it are stopped".to_string(),
                };
                let kind = match kind {
                    crate::archive::manifest::MountKind::Volume => "volume",
                    crate::archive::manifest::MountKind::Bind => "bind",
                };
                mounts.push(MountPlan { item: format!("{kind} {name}"), point_in_time: on.is_empty(), how });
            }
        }
    }
    Ok(BackupPreview {
        project: ctx.project.name.clone(),
        service_version: ctx.version().await?,
        services: services(&containers, &takes, stop),
        dumps: records,
        mounts,
        configs,
        skipped: sources.skipped,
        single_phase,
        stop_each: opts.stop_each,
        no_stop: !stop,
        with_images: opts.with_images,
        data_bytes: room.data,
        needs_bytes: room.archive,
    })
}

/// "app runs", "app, shop run".
fn runs(services: &[String]) -> String {
    match services.len() {
        1 => format!("{} runs", services[0]),
        _ => format!("{} run", services.join(", ")),
    }
}

fn services(containers: &[Container], takes: &Takes, stop: bool) -> Vec<ServicePlan> {
    let mut out: Vec<ServicePlan> = Vec::new();
    for c in containers {
        if out.iter().any(|s| s.service == c.service) {
            continue;
        }
        let running = c.is_running();
        let how = match takes.running.iter().find(|(s, _)| s == &c.service) {
            Some((_, mode)) => mode.as_str(),
            None if !running => "none",
            None if !stop => Mode::Live.as_str(),
            None if takes.pause.iter().any(|p| p.service == c.service) => Mode::Pause.as_str(),
            None => Mode::Stop.as_str(),
        };
        out.push(ServicePlan { service: c.service.clone(), running, how });
    }
    out.sort_by(|a, b| a.service.cmp(&b.service));
    out
}
