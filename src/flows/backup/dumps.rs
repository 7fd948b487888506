//! The database dumps of a backup: which running servers are dumped (rather than copied while
//! stopped), the data mounts their dumps replace, and starting every dump inside the stop so
//! that each has fixed its moment before the services that write to it start again.

use anyhow::Result;

use crate::archive::manifest::{DumpRecord, Skipped};
use crate::database::{self, Kind, Mode, dump};
use crate::engine::{Container, Engine};
use crate::flows::Ctx;
use crate::flows::sources::{Role, Source};

/// One server a backup dumps.
#[derive(Debug, Clone)]
pub(super) struct Server {
    pub service: String,
    pub kind: Kind,
    pub specs: Vec<dump::Spec>,
    pub tool_version: String,
    pub server_version: String,
}

/// The servers a backup dumps; empty when none (or no engine).
#[derive(Debug, Clone, Default)]
pub(super) struct DumpPlan {
    pub servers: Vec<Server>,
}

impl DumpPlan {
    /// Whether the backup dumps this container's server (then it keeps running).
    pub fn serves(&self, c: &Container) -> bool {
        self.servers.iter().any(|s| s.service == c.service)
    }

    /// The manifest's dump records, in archive order.
    pub fn records(&self) -> Vec<DumpRecord> {
        self.servers
            .iter()
            .flat_map(|s| {
                s.specs.iter().map(move |spec| DumpRecord {
                    name: archive_name(spec),
                    service: s.service.clone(),
                    server: s.kind.as_str().to_string(),
                    database: spec.database.clone(),
                    format: spec.format.clone(),
                    tool_version: s.tool_version.clone(),
                    server_version: s.server_version.clone(),
                })
            })
            .collect()
    }

    /// Takes out of `plan` the mounts that hold a dumped server's data files (mounted by it
    /// under its data directory, by nothing else): the dump holds that data.
    pub fn drop_data_mounts(&self, plan: &mut Vec<Source>, skipped: &mut Vec<Skipped>) {
        plan.retain(|s| {
            let Role::Mount { name, destinations, .. } = &s.role else { return true };
            let server = self.servers.iter().find(|srv| {
                !destinations.is_empty()
                    && destinations.iter().all(|d| {
                        d.split_once(':').is_some_and(|(service, path)| {
                            service == srv.service && srv.kind.holds_data(path)
                        })
                    })
            });
            match server {
                Some(srv) => {
                    skipped.push(Skipped {
                        path: name.clone(),
                        reason: format!("data of {} {}: dumped instead", srv.kind, srv.service),
                    });
                    false
                }
                None => true,
            }
        });
    }
}

/// The dump's name in the archive.
pub(super) fn archive_name(spec: &dump::Spec) -> String {
    format!("{}{}", crate::archive::manifest::DUMPS_PREFIX, spec.name)
}

/// The running servers the project's settings and commands say to dump, with their dumps
/// listed and versions asked (nothing is stopped). A server that does not run is copied while
/// stopped, as it is anyway.
pub(super) async fn plan(ctx: &Ctx, containers: &[Container]) -> Result<DumpPlan> {
    let Some(engine) = &ctx.engine else { return Ok(DumpPlan::default()) };
    let found = database::detect(containers, &ctx.project.settings.services)?;
    let mut servers = Vec::new();
    for f in found.into_iter().filter(|f| f.backup == Mode::Dump) {
        let Some(kind) = f.kind else { continue };
        let Some(c) = containers.iter().find(|c| c.service == f.service && c.is_running()) else {
            tracing::info!("{} {} is not running: its files are copied instead of a dump", kind, f.service);
            continue;
        };
        servers.push(server(&**engine, c, kind).await?);
    }
    Ok(DumpPlan { servers })
}

/// The dumps of `services`, whose servers must run and be ones nuwax can dump: for a backup
/// another operation loads a database from (an upgrade that reloads it into a new server).
pub(super) async fn plan_for(ctx: &Ctx, containers: &[Container], services: &[String]) -> Result<DumpPlan> {
    if services.is_empty() {
        return Ok(DumpPlan::default());
    }
    let engine = ctx.engine()?;
    let found = database::detect(containers, &ctx.project.settings.services)?;
    let mut servers = Vec::new();
    for service in services {
        let kind = found.iter().find(|f| &f.service == service).and_then(|f| f.kind);
        let Some(kind) = kind.filter(|k| k.can_dump()) else {
            anyhow::bail!(
                "service {service} runs no database server nuwax can dump (PostgreSQL, MariaDB, MySQL)"
            );
        };
        let Some(c) = containers.iter().find(|c| &c.service == service && c.is_running()) else {
            anyhow::bail!("{kind} {service} is not running: its databases cannot be dumped");
        };
        servers.push(server(engine, c, kind).await?);
    }
    Ok(DumpPlan { servers })
}

/// One running server's dumps and versions, asked inside its container.
async fn server(engine: &dyn Engine, c: &Container, kind: Kind) -> Result<Server> {
    let specs = dump::plan(engine, &c.id, &c.service, kind).await?;
    let (server_version, tool_version) = dump::versions(engine, &c.id, &c.service, kind).await?;
    Ok(Server { service: c.service.clone(), kind, specs, tool_version, server_version })
}

/// Starts every dump at once and waits until each has fixed its moment: called inside the
/// stop, so that all of them, and the files, hold one point in time. In archive order.
pub(super) async fn start(engine: &dyn Engine, plan: &DumpPlan) -> Result<Vec<dump::Started>> {
    let specs = plan.servers.iter().flat_map(|s| s.specs.iter());
    Ok(futures_util::future::try_join_all(specs.map(|spec| dump::start(engine, spec.clone()))).await?)
}
