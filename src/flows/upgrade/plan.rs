//! The upgrade's preflight: everything checked, nothing changed, every problem reported at once.
//! `--dry-run` prints the plan; the real run executes exactly it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use super::UpgradeOptions;
use crate::flows::Ctx;
use crate::fsutil;
use crate::package::{self, EnvChanges, Hook, Package, Probe, Version};

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
    /// What the pre-upgrade backup will hold.
    pub backup: String,
    pub warnings: Vec<String>,
    #[serde(skip)]
    pub(super) package: Package,
}

/// Opens and checks the package and the project. Nothing is stopped or written outside the
/// package's own unpacked copy.
pub async fn plan(
    ctx: &Ctx,
    opts: &UpgradeOptions,
    progress: std::sync::Arc<dyn crate::archive::Progress>,
) -> Result<Plan> {
    let project = &ctx.project;
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    std::fs::create_dir_all(&project.storage_dir)
        .with_context(|| format!("creating {}", project.storage_dir.display()))?;

    // The package first: nothing else is worth checking against a package that is not intact.
    let (source, sha, work, cancel) = (
        opts.package.clone(),
        opts.sha256.clone(),
        project.storage_dir.clone(),
        ctx.interrupt.cancel().clone(),
    );
    let package = tokio::task::spawn_blocking(move || {
        // Downloads (and hashing a local file) show on the progress bar.
        let o = package::OpenOptions { sha256: sha, work_dir: work, progress: &*progress, cancel: &cancel };
        package::open(&source, &o)
    })
    .await?
    .map_err(|e| crate::Error::Preflight(vec![format!("package {}: {e}", opts.package)]))?;
    let to = package.version();
    crate::faults::sigint(crate::faults::Sigint::UpgradePreflight);
    ctx.interrupt.check()?;

    // Version order.
    let from = ctx.current_version().await?;
    match from.as_deref().map(str::parse::<Version>) {
        None if package.min_from().is_some() => problems.push(format!(
            "the package upgrades from version {} or later, and this project's version is unknown: \
             set service_version in nuwax.toml",
            package.manifest.min_from.as_deref().unwrap_or_default()
        )),
        None => {
            warnings.push("this project's current version is unknown (service_version in nuwax.toml)".into())
        }
        Some(Err(e)) => problems.push(format!("the project's version {:?} does not parse: {e}", from)),
        Some(Ok(from)) => {
            if let Some(min) = package.min_from().filter(|m| &from < m) {
                problems.push(format!(
                    "the package upgrades from version {min} or later; this project runs {from}"
                ));
            }
            if to <= from && !opts.allow_downgrade {
                problems.push(format!(
                    "version {to} is not newer than the running {from}: pass --allow-downgrade to install it anyway"
                ));
            }
        }
    }

    // The engine and compose.
    let engine = ctx.engine.clone();
    if engine.is_none() {
        problems.push("upgrade needs the Docker engine".into());
    }
    if let Err(e) = ctx.compose() {
        problems.push(format!("{e:#}"));
    }

    // Files, and the compose files and env the new version will have.
    let mut files = Vec::new();
    for f in &package.manifest.files {
        let src = package.path(&f.src);
        let dest = project.dir.join(&f.dest);
        let size = std::fs::metadata(&src).map(|m| m.len()).unwrap_or(0);
        let action = match std::fs::read(&dest) {
            Ok(old) if std::fs::read(&src).is_ok_and(|new| new == old) => "unchanged",
            Ok(_) => "replace",
            Err(_) => "add",
        };
        files.push(FileStep { src, dest, action, size });
    }
    // The env compose will read: the project's env file, as the package's changes leave it when
    // they are aimed at that file (apply writes them to `changes.file` either way).
    let env_text = std::fs::read_to_string(&project.env_file).unwrap_or_default();
    let new_env_text = match &package.manifest.env {
        Some(changes) if project.dir.join(&changes.file) == project.env_file => {
            package::apply_env(&env_text, changes)
        }
        _ => env_text,
    };
    let new_env = crate::project::parse_env(&new_env_text);
    let compose_files: Vec<PathBuf> = project
        .compose_files
        .iter()
        .map(|f| files.iter().find(|s| &s.dest == f).map(|s| s.src.clone()).unwrap_or_else(|| f.clone()))
        .collect();
    let services = match crate::project::read_services(&compose_files, &project.dir, &new_env) {
        Ok(s) => s,
        Err(e) => {
            problems.push(format!("the new compose files do not parse: {e:#}"));
            BTreeMap::new()
        }
    };

    // Images: each service's image is in the package or already here.
    let mut in_package: BTreeSet<String> = BTreeSet::new();
    for a in package.image_archives() {
        match package::image_refs(&a) {
            Ok(refs) => in_package.extend(refs),
            Err(e) => problems.push(format!("image archive {}: {e}", a.display())),
        }
    }
    let mut images = Vec::new();
    // Services often share one image: ask the engine once per reference.
    let mut present: BTreeMap<String, bool> = BTreeMap::new();
    for (service, s) in &services {
        let Some(image) = &s.image else {
            problems.push(format!(
                "service {service} of the new version names no image (builds are not supported)"
            ));
            continue;
        };
        let normalized = if image.contains(':') || image.contains('@') {
            image.clone()
        } else {
            format!("{image}:latest")
        };
        let source = if in_package.contains(&normalized) || in_package.contains(image) {
            "package"
        } else if let Some(e) = &engine
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
            problems.push(format!(
                "image {image} of service {service} is neither in the package nor on this host (no registry is asked)"
            ));
            continue;
        };
        images.push(ImageNeed { service: service.clone(), image: image.clone(), source });
    }
    for h in &package.manifest.hooks {
        if !services.contains_key(&h.service) {
            problems.push(format!(
                "hook {:?} runs in service {}, which the new version does not have",
                h.name, h.service
            ));
        }
    }

    // Room for the pre-upgrade backup and the unpacked package.
    let containers = match &engine {
        Some(e) => e.project_containers(&project.name).await.unwrap_or_default(),
        None => Vec::new(),
    };
    let estimate = crate::flows::backup::estimate(ctx, &containers).await.unwrap_or(0);
    let package_size = dir_size(&package.root);
    match fsutil::free_space(&project.storage_dir) {
        Ok(free) if estimate + package_size + (1 << 20) > free => problems.push(format!(
            "not enough free space in {}: the pre-upgrade backup needs ~{} and the package {}, {} free",
            project.storage_dir.display(),
            fsutil::human_bytes(estimate),
            fsutil::human_bytes(package_size),
            fsutil::human_bytes(free)
        )),
        Ok(_) => {}
        Err(e) => problems.push(format!("checking free space in {}: {e}", project.storage_dir.display())),
    }

    if !problems.is_empty() {
        return Err(crate::Error::Preflight(problems).into());
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
        backup: format!(
            "a pre-upgrade backup of project {} (~{}: configs, volumes, bind mounts; images kept by tag)",
            project.name,
            fsutil::human_bytes(estimate)
        ),
        warnings,
        package,
    })
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
