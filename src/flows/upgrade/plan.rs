//! The upgrade's preflight: everything checked, nothing changed, every problem reported at once.
//! `--dry-run` prints the plan; the real run executes exactly it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::UpgradeOptions;
use crate::engine::{Container, ImageRef};
use crate::flows::Ctx;
use crate::fsutil;
use crate::package::{self, EnvChanges, Hook, Package, Probe, Version};
use crate::project::{ComposeService, Project};

/// One file the package places in the project.
#[derive(Debug, Clone, Serialize)]
pub struct FileStep {
    #[serde(skip)]
    pub src: PathBuf,
    pub dest: PathBuf,
    /// `add` or `replace` (`unchanged` when the bytes are the same).
    pub action: &'static str,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageNeed {
    pub service: String,
    pub image: String,
    /// `package` (loaded from it) or `present` (already on this host).
    pub source: &'static str,
}

/// What an upgrade will do.
#[derive(Debug, Serialize)]
pub struct Plan {
    pub package_name: String,
    pub package_source: String,
    pub package_sha256: Option<String>,
    pub from_version: String,
    pub to_version: String,
    pub files: Vec<FileStep>,
    pub env: Option<EnvChanges>,
    /// `docker load` archives, in order.
    pub images_to_load: Vec<String>,
    pub images: Vec<ImageNeed>,
    /// Services of the new version, all of which must become ready.
    pub services: Vec<String>,
    /// Services running now: stopped for the pre-upgrade backup.
    pub services_to_stop: Vec<String>,
    pub hooks: Vec<Hook>,
    pub probes: Vec<Probe>,
    /// Databases the new version's servers load from the pre-upgrade backup's dumps.
    pub reload: Vec<Reload>,
    /// What the pre-upgrade backup will hold.
    pub backup: String,
    pub warnings: Vec<String>,
    /// Bytes the pre-upgrade backup reads, as the room check estimated them.
    #[serde(skip)]
    pub backup_bytes: u64,
    #[serde(skip)]
    pub(super) package: Package,
}

/// A database server the new version starts on empty data and loads from the old server's
/// dump (a major-version upgrade), the old data left untouched for the way back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reload {
    pub service: String,
    /// `postgres`, `mariadb` or `mysql`.
    pub server: String,
    /// The old server's data: a volume name or a host path. Never touched.
    pub data_before: String,
    /// Volumes the new version gives the service that do not exist yet: compose creates them
    /// empty, and a rollback of the upgrade removes them.
    pub fresh_volumes: Vec<String>,
}

/// Every problem found, reported together; warnings for the plan.
#[derive(Default)]
struct Checks {
    problems: Vec<String>,
    warnings: Vec<String>,
}

/// Opens and checks the package and the project: package → versions → engine and compose →
/// files → the new compose files → images → hooks → room. Nothing is stopped or written
/// outside the package's own unpacked copy.
pub async fn plan(
    ctx: &Ctx,
    opts: &UpgradeOptions,
    progress: std::sync::Arc<dyn crate::archive::Progress>,
) -> Result<Plan> {
    let project = &ctx.project;
    let mut checks = Checks::default();
    // The package first: nothing else is worth checking against a package that is not intact.
    let package = open_package(ctx, opts, progress).await?;
    crate::faults::sigint(crate::faults::Sigint::UpgradePreflight);
    ctx.interrupt.check()?;
    let to = package.version();
    let from = ctx.current_version().await?;
    check_versions(&package, from.as_deref(), opts.allow_downgrade, &mut checks);
    if ctx.engine.is_none() {
        checks.problems.push("upgrade needs the Docker engine".into());
    }
    if let Err(e) = ctx.compose() {
        checks.problems.push(format!("{e:#}"));
    }
    let files = file_steps(&package, project);
    let compose_files = new_compose_files(project, &files);
    let services = new_services(&package, project, &compose_files, &mut checks);
    let images = image_needs(ctx, &package, &services, &mut checks).await;
    for h in &package.manifest.hooks {
        if !services.contains_key(&h.service) {
            checks.problems.push(format!(
                "hook {:?} runs in service {}, which the new version does not have",
                h.name, h.service
            ));
        }
    }
    let containers = match &ctx.engine {
        Some(e) => e.project_containers(&project.name).await.unwrap_or_default(),
        None => Vec::new(),
    };
    let reload = reloads(ctx, &package, &containers, &services, &compose_files, &mut checks).await;
    let estimate = check_room(ctx, &package, &containers, &mut checks).await;
    if !checks.problems.is_empty() {
        return Err(crate::Error::Preflight(checks.problems).into());
    }
    let mut running: Vec<String> =
        containers.iter().filter(|c| c.is_running()).map(|c| c.service.clone()).collect();
    running.dedup();
    Ok(Plan {
        package_name: package.manifest.name.clone(),
        package_source: package.source.clone(),
        package_sha256: package.sha256.clone(),
        from_version: from.unwrap_or_else(|| "unknown".into()),
        to_version: to.to_string(),
        files,
        env: package.manifest.env.clone(),
        images_to_load: package.manifest.images.clone(),
        images,
        services: services.keys().cloned().collect(),
        services_to_stop: running,
        hooks: package.manifest.hooks.clone(),
        probes: package.manifest.probes.clone(),
        reload,
        backup: format!(
            "a pre-upgrade backup of project {} (~{}: configs, volumes, bind mounts; images kept by tag)",
            project.name,
            fsutil::human_bytes(estimate)
        ),
        warnings: checks.warnings,
        backup_bytes: estimate,
        package,
    })
}

/// The package, its checksum proven and unpacked (downloads and hashing on the progress bar).
async fn open_package(
    ctx: &Ctx,
    opts: &UpgradeOptions,
    progress: std::sync::Arc<dyn crate::archive::Progress>,
) -> Result<Package> {
    let storage = &ctx.project.storage_dir;
    std::fs::create_dir_all(storage).with_context(|| format!("creating {}", storage.display()))?;
    let (source, sha, work, cancel) =
        (opts.package.clone(), opts.sha256.clone(), storage.clone(), ctx.interrupt.cancel().clone());
    let opened = tokio::task::spawn_blocking(move || {
        let o = package::OpenOptions { sha256: sha, work_dir: work, progress: &*progress, cancel: &cancel };
        package::open(&source, &o)
    })
    .await?;
    ctx.interrupt.check()?;
    Ok(opened.map_err(|e| crate::Error::Preflight(vec![format!("package {}: {e}", opts.package)]))?)
}

/// The package upgrades from the version this project runs, to a newer one (or a downgrade
/// that was asked for).
fn check_versions(package: &Package, from: Option<&str>, allow_downgrade: bool, checks: &mut Checks) {
    let to = package.version();
    match from.map(str::parse::<Version>) {
        None if package.min_from().is_some() => checks.problems.push(format!(
            "the package upgrades from version {} or later, and this project's version is unknown: \
             set service_version in nuwax.toml",
            package.manifest.min_from.as_deref().unwrap_or_default()
        )),
        None => checks
            .warnings
            .push("this project's current version is unknown (service_version in nuwax.toml)".into()),
        Some(Err(e)) => checks.problems.push(format!("the project's version {from:?} does not parse: {e}")),
        Some(Ok(from)) => {
            if let Some(min) = package.min_from().filter(|m| &from < m) {
                checks.problems.push(format!(
                    "the package upgrades from version {min} or later; this project runs {from}"
                ));
            }
            if to <= from && !allow_downgrade {
                checks.problems.push(format!(
                    "version {to} is not newer than the running {from}: pass --allow-downgrade to install it anyway"
                ));
            }
        }
    }
}

/// Each file the package places, and whether it adds, replaces or leaves one as it is.
fn file_steps(package: &Package, project: &Project) -> Vec<FileStep> {
    package
        .manifest
        .files
        .iter()
        .map(|f| {
            let src = package.path(&f.src);
            let dest = project.dir.join(&f.dest);
            let size = std::fs::metadata(&src).map(|m| m.len()).unwrap_or(0);
            let action = match std::fs::read(&dest) {
                Ok(old) if std::fs::read(&src).is_ok_and(|new| new == old) => "unchanged",
                Ok(_) => "replace",
                Err(_) => "add",
            };
            FileStep { src, dest, action, size }
        })
        .collect()
}

/// The compose files of the new version: the project's, each replaced by the package's copy
/// when it places one.
fn new_compose_files(project: &Project, files: &[FileStep]) -> Vec<PathBuf> {
    project
        .compose_files
        .iter()
        .map(|f| files.iter().find(|s| &s.dest == f).map(|s| s.src.clone()).unwrap_or_else(|| f.clone()))
        .collect()
}

/// The services of the new version: its compose files read with the env compose will read
/// (the project's env file as the package's changes leave it, when they are aimed at it).
fn new_services(
    package: &Package,
    project: &Project,
    compose_files: &[PathBuf],
    checks: &mut Checks,
) -> BTreeMap<String, ComposeService> {
    let env_text = std::fs::read_to_string(&project.env_file).unwrap_or_default();
    let new_env_text = match &package.manifest.env {
        Some(changes) if project.dir.join(&changes.file) == project.env_file => {
            package::apply_env(&env_text, changes)
        }
        _ => env_text,
    };
    let new_env = crate::project::parse_env(&new_env_text);
    crate::project::read_services(compose_files, &project.dir, &new_env).unwrap_or_else(|e| {
        checks.problems.push(format!("the new compose files do not parse: {e:#}"));
        BTreeMap::new()
    })
}

/// Each service's image is in the package or already on this host (no registry is asked).
async fn image_needs(
    ctx: &Ctx,
    package: &Package,
    services: &BTreeMap<String, ComposeService>,
    checks: &mut Checks,
) -> Vec<ImageNeed> {
    let mut in_package: BTreeSet<String> = BTreeSet::new();
    for a in package.image_archives() {
        match package::image_refs(&a) {
            Ok(refs) => in_package.extend(refs.iter().map(|r| ImageRef::parse(r).normalized())),
            Err(e) => checks.problems.push(format!("image archive {}: {e}", a.display())),
        }
    }
    let mut images = Vec::new();
    // Services often share one image: ask the engine once per reference.
    let mut present: BTreeMap<String, bool> = BTreeMap::new();
    for (service, s) in services {
        let Some(image) = &s.image else {
            checks.problems.push(format!(
                "service {service} of the new version names no image (builds are not supported)"
            ));
            continue;
        };
        let source = if in_package.contains(&ImageRef::parse(image).normalized()) {
            "package"
        } else if let Some(e) = &ctx.engine
            && match present.get(image) {
                Some(p) => *p,
                None => {
                    let p = e.image_id(image).await.ok().flatten().is_some();
                    present.insert(image.clone(), p);
                    p
                }
            }
        {
            "present"
        } else {
            checks.problems.push(format!(
                "image {image} of service {service} is neither in the package nor on this host (no registry is asked)"
            ));
            continue;
        };
        images.push(ImageNeed { service: service.clone(), image: image.clone(), source });
    }
    images
}

/// The package's `reload` services: each a running server nuwax can dump and load, whose new
/// version mounts none of the old server's data and only empty (or new) data.
async fn reloads(
    ctx: &Ctx,
    package: &Package,
    containers: &[Container],
    new: &BTreeMap<String, ComposeService>,
    compose_files: &[PathBuf],
    checks: &mut Checks,
) -> Vec<Reload> {
    let wanted = &package.manifest.reload;
    let Some(engine) = ctx.engine.as_ref().filter(|_| !wanted.is_empty()) else { return Vec::new() };
    let found = match crate::database::detect(containers, &ctx.project.settings.services) {
        Ok(f) => f,
        Err(e) => {
            checks.problems.push(format!("{e:#}"));
            return Vec::new();
        }
    };
    let declared = crate::project::read_volumes(compose_files, &ctx.project.dir).unwrap_or_default();
    let mut out = Vec::new();
    for service in wanted {
        let kind = found.iter().find(|f| &f.service == service).and_then(|f| f.kind);
        let Some(kind) = kind.filter(|k| k.can_dump()) else {
            checks.problems.push(format!(
                "reload: service {service} runs no database server nuwax can dump and load (PostgreSQL, MariaDB, MySQL)"
            ));
            continue;
        };
        let Some(c) = containers.iter().find(|c| &c.service == service && c.is_running()) else {
            checks.problems.push(format!(
                "reload: {kind} {service} is not running: the pre-upgrade backup dumps it from the running server; start it first"
            ));
            continue;
        };
        let Some(data) = c.mounts.iter().find(|m| kind.holds_data(&m.destination)) else {
            checks.problems.push(format!(
                "reload: the data of {kind} {service} is in no volume or bind mount: nothing would keep it for the way back"
            ));
            continue;
        };
        let Some(s) = new.get(service) else {
            checks.problems.push(format!("reload: the new version has no service {service}"));
            continue;
        };
        let before = data.name.clone().unwrap_or_else(|| data.source.display().to_string());
        let volumes: Vec<String> = s
            .volumes
            .iter()
            .map(|v| match declared.get(v) {
                Some(Some(name)) => name.clone(),
                _ => format!("{}_{v}", ctx.project.name),
            })
            .collect();
        if volumes.contains(&before) || s.binds.contains(&data.source) {
            checks.problems.push(format!(
                "reload: the new version of {service} mounts the old server's data ({before}): a new server \
                 cannot start on it, and the way back needs it untouched; give the new version's data a new volume"
            ));
            continue;
        }
        let mut fresh_volumes = Vec::new();
        for v in volumes.iter().filter(|v| !c.mounts.iter().any(|m| m.name.as_ref() == Some(*v))) {
            match engine.volume_spec(v).await {
                Ok(None) => fresh_volumes.push(v.clone()),
                Ok(Some(_)) => match engine.volume_mountpoint(v).await.map(|p| std::fs::read_dir(p).map(Iterator::count)) {
                    Ok(Ok(0)) => {}
                    Ok(Ok(_)) => checks.problems.push(format!(
                        "reload: volume {v} of the new {service} exists and holds data (an earlier attempt?): \
                         remove it (`docker volume rm {v}`) or name another"
                    )),
                    Ok(Err(e)) => checks.problems.push(format!("reload: reading volume {v}: {e}")),
                    Err(e) => checks.problems.push(format!("reload: volume {v}: {e:#}")),
                },
                Err(e) => checks.problems.push(format!("reload: volume {v}: {e:#}")),
            }
        }
        out.push(Reload {
            service: service.clone(),
            server: kind.as_str().to_string(),
            data_before: before,
            fresh_volumes,
        });
    }
    out
}

/// Room for the pre-upgrade backup and the unpacked package; returns the backup's estimate.
async fn check_room(ctx: &Ctx, package: &Package, containers: &[Container], checks: &mut Checks) -> u64 {
    let storage = &ctx.project.storage_dir;
    let estimate = crate::flows::backup::estimate(ctx, containers).await.unwrap_or(0);
    let package_size = dir_size(&package.root);
    match fsutil::free_space(storage) {
        Ok(free) if estimate + package_size + (1 << 20) > free => checks.problems.push(format!(
            "not enough free space in {}: the pre-upgrade backup needs ~{} and the package {}, {} free",
            storage.display(),
            fsutil::human_bytes(estimate),
            fsutil::human_bytes(package_size),
            fsutil::human_bytes(free)
        )),
        Ok(_) => {}
        Err(e) => checks.problems.push(format!("checking free space in {}: {e}", storage.display())),
    }
    estimate
}

fn dir_size(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}
