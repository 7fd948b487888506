//! The database dumps of a backup: which running servers are dumped (rather than copied while
//! stopped), the data mounts their dumps replace, and starting every dump inside the stop so
//! that each has fixed its moment before the services that write to it start again.
//!
//! A service's SQLite files are dumped the same way (the service keeps running: it is their
//! writer); the mount that holds them is still copied, without them and their companions
//! (`-wal`, `-shm`, `-journal`), whose live copy would not be a database.

use anyhow::Result;

use crate::archive::manifest::{DumpRecord, DumpedMount, Skipped};
use crate::database::{self, Kind, Mode, dump};
use crate::engine::{Container, Engine};
use crate::flows::Ctx;
use crate::flows::sources::{Origin, Role, Source};

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

    /// Globs (absolute host paths) that keep the dumped SQLite files and their companions out of
    /// the copy of the mounts holding them, each file listed in `skipped`. Refused when a file
    /// is on no mount (a rollback could not put it back), or on a volume read through the
    /// engine (whose copy cannot leave files out).
    pub fn sqlite_excludes(
        &self,
        containers: &[Container],
        plan: &[Source],
        skipped: &mut Vec<Skipped>,
    ) -> Result<Vec<String>> {
        let mut globs = Vec::new();
        for spec in self.servers.iter().filter(|s| s.kind == Kind::Sqlite).flat_map(|s| &s.specs) {
            let path = spec.database.as_deref().unwrap_or_default();
            let service = &spec.service;
            let c = containers.iter().find(|c| c.id == spec.container);
            let mounts = c.map(|c| c.mounts.as_slice()).unwrap_or_default();
            let Some((dest, rel)) =
                database::mount_holding(mounts.iter().map(|m| m.destination.as_str()), path)
            else {
                anyhow::bail!(crate::Error::Config(format!(
                    "service {service}: SQLite database {path} is not on a volume or bind mount of its \
                     directory, so a rollback could not put its dump back; mount the directory, or \
                     set [services.{service}] backup = \"stop\""
                )));
            };
            let at = format!("{service}:{dest}");
            let source = plan
                .iter()
                .find(|s| matches!(&s.role, Role::Mount { destinations, .. } if destinations.contains(&at)));
            let root = match source.map(|s| &s.origin) {
                Some(Origin::Host(root)) => root,
                Some(Origin::Engine { .. }) => anyhow::bail!(crate::Error::Config(format!(
                    "service {service}: SQLite database {path} is on a volume this host cannot read (it is \
                     read through the engine, which cannot leave the live database out); run nuwax where \
                     the volume's mountpoint is readable (as root), or set [services.{service}] backup = \"stop\""
                ))),
                None => anyhow::bail!(crate::Error::Config(format!(
                    "service {service}: the mount at {dest} holding SQLite database {path} is not backed up \
                     (see the skipped paths); set [services.{service}] backup = \"stop\""
                ))),
            };
            let file = root.join(&rel).to_string_lossy().into_owned();
            for suffix in std::iter::once("").chain(database::SQLITE_COMPANIONS) {
                globs.push(globset::escape(&format!("{file}{suffix}")));
            }
            skipped.push(Skipped {
                path: format!("{service}:{path}"),
                reason: format!(
                    "SQLite database of {service} (and its -wal, -shm, -journal): dumped instead, while \
                     {service} ran"
                ),
            });
        }
        Ok(globs)
    }

    /// Takes out of `plan` the mounts that hold a dumped server's data files (mounted by it
    /// under its data directory, by nothing else): the dump holds that data. Returns them.
    pub fn drop_data_mounts(&self, plan: &mut Vec<Source>, skipped: &mut Vec<Skipped>) -> Vec<DumpedMount> {
        let mut dropped = Vec::new();
        plan.retain(|s| {
            let Role::Mount { kind, name, destinations, .. } = &s.role else { return true };
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
                    dropped.push(DumpedMount {
                        service: srv.service.clone(),
                        kind: *kind,
                        name: name.clone(),
                        destinations: destinations.clone(),
                    });
                    false
                }
                None => true,
            }
        });
        dropped
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
        let Some(c) = containers.iter().find(|c| c.service == f.service && c.is_running()) else {
            tracing::info!("{} is not running: its database files are copied instead of dumps", f.service);
            continue;
        };
        if let Some(kind) = f.kind {
            servers.push(server(&**engine, c, kind).await?);
        }
        if f.sqlite.is_empty() {
            continue;
        }
        match dump::versions(&**engine, &c.id, &f.service, Kind::Sqlite).await {
            Ok((server_version, tool_version)) => servers.push(Server {
                service: f.service.clone(),
                kind: Kind::Sqlite,
                specs: dump::sqlite(&c.id, &f.service, &f.sqlite),
                tool_version,
                server_version,
            }),
            // Dumped by default only when the container has the tool.
            Err(e) if f.backup_said.is_none() && f.kind.is_none() => tracing::info!(
                "{e}: the SQLite files of {} are copied while it is stopped (backup = \"dump\" in \
                 [services.{}] makes this an error)",
                f.service,
                f.service
            ),
            Err(e) => return Err(e.into()),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::manifest::MountKind;
    use crate::engine::fake::FakeEngine;
    use crate::engine::{Mount, MountType};

    fn notes(paths: &[&str]) -> DumpPlan {
        let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        DumpPlan {
            servers: vec![Server {
                service: "notes".into(),
                kind: Kind::Sqlite,
                specs: dump::sqlite("id-notes", "notes", &paths),
                tool_version: "3.40.1".into(),
                server_version: "3.40.1".into(),
            }],
        }
    }

    fn volume(origin: Origin) -> Source {
        Source {
            prefix: "volumes/site_notes".into(),
            origin,
            role: Role::Mount {
                kind: MountKind::Volume,
                name: "site_notes".into(),
                source: "/v/site_notes/_data".into(),
                destinations: vec!["notes:/data".into()],
            },
        }
    }

    fn container() -> Container {
        let mut c = FakeEngine::container("notes");
        c.mounts.push(Mount {
            kind: MountType::Volume,
            name: Some("site_notes".into()),
            source: "/v/site_notes/_data".into(),
            destination: "/data".into(),
        });
        c
    }

    #[test]
    fn sqlite_files_and_their_companions_leave_the_copy_of_their_mount() {
        let plan = vec![volume(Origin::Host("/v/site_notes/_data".into()))];
        let mut skipped = Vec::new();
        let globs =
            notes(&["/data/db/notes.db"]).sqlite_excludes(&[container()], &plan, &mut skipped).unwrap();
        let set = crate::flows::backup::plan::build_excludes(&globs).unwrap();
        for f in ["notes.db", "notes.db-wal", "notes.db-shm", "notes.db-journal"] {
            assert!(set.is_match(format!("/v/site_notes/_data/db/{f}")), "{f}");
        }
        for f in ["notes.db.bak", "other.db", "notes.db-walx"] {
            assert!(!set.is_match(format!("/v/site_notes/_data/db/{f}")), "{f}");
        }
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].path, "notes:/data/db/notes.db");
        assert!(skipped[0].reason.contains("dumped instead"));
    }

    #[test]
    fn a_sqlite_file_nuwax_could_not_put_back_is_refused() {
        let mut skipped = Vec::new();
        let engine = vec![volume(Origin::Engine { container: "id-notes".into(), path: "/data".into() })];
        let err =
            notes(&["/data/notes.db"]).sqlite_excludes(&[container()], &engine, &mut skipped).unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
        let host = vec![volume(Origin::Host("/v/site_notes/_data".into()))];
        let err = notes(&["/var/notes.db"]).sqlite_excludes(&[container()], &host, &mut skipped).unwrap_err();
        assert!(err.to_string().contains("not on a volume or bind mount"), "{err}");
        let err = notes(&["/data/notes.db"]).sqlite_excludes(&[container()], &[], &mut skipped).unwrap_err();
        assert!(err.to_string().contains("not backed up"), "{err}");
    }
}
