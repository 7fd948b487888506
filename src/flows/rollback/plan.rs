//! The rollback plan: everything checked, nothing touched. `--dry-run` prints it; the real run
//! executes exactly it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::super::Ctx;
use super::super::backup::BackupOptions;
use super::super::sources::VolumeAccess;
use crate::archive::manifest::Manifest;
use crate::archive::{self, Target};
use crate::catalog::BackupRecord;
use crate::engine::Container;
use crate::fsutil;

#[derive(Debug, Clone)]
pub struct RollbackOptions {
    pub id: i64,
    /// Restore volumes and bind mounts (`--config-only` turns this off).
    pub data: bool,
    /// Restore compose files, `.env` and other configs (`--data-only` turns this off).
    pub config: bool,
    /// Options for the safety backup.
    pub safety: BackupOptions,
    /// What the safety backup's note says it holds (a default names the rollback).
    pub note: Option<String>,
    /// Restore a backup copied while services ran (`--accept-live`).
    pub accept_live: bool,
    /// Database services whose data is left as it is and whose dumps are not loaded: the way
    /// back from an upgrade that reloaded them into a new server, whose old data it never
    /// touched.
    pub keep_data: Vec<String>,
}

/// One thing the rollback replaces.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    /// `volume`, `bind` or `config`.
    pub kind: &'static str,
    pub name: String,
    /// Archive path the data comes from.
    pub prefix: String,
    /// Host path; for volumes the mountpoint the engine reports (unused when `via_engine`).
    pub dest: PathBuf,
    pub size: u64,
    pub file_count: u64,
    /// This project's volume that receives the data (volumes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// The volume is recreated and filled through the engine's archive API, because this host
    /// cannot reach its mountpoint, `volume_access = engine`, or it does not exist yet.
    pub via_engine: bool,
    /// The volume does not exist: the rollback creates it.
    pub create: bool,
    /// A dumped database server's data: replaced by an empty directory, which the server
    /// initializes and its dumps are loaded into (nothing is extracted).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub empty: bool,
}

/// The dumps of one database server a rollback loads, in order, once its data directory is
/// fresh and it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Load {
    pub service: String,
    pub server: String,
    pub dumps: Vec<crate::archive::manifest::DumpRecord>,
    /// Their sizes and digests, as the verifying pass read them.
    pub digests: Vec<crate::archive::manifest::DumpDigest>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageStep {
    pub service: String,
    /// The reference the service's compose file names.
    pub image: String,
    /// The id the backup's service ran, which `image` will point at again.
    pub image_id: String,
    /// What `image` points at now (`None`: the tag does not exist).
    pub current_id: Option<String>,
}

/// What a rollback will do: `--dry-run` prints it; the real run executes exactly it.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub backup_id: i64,
    pub archive: PathBuf,
    pub created_at: String,
    /// The version the project ran when the backup was made.
    pub service_version: String,
    pub services_to_stop: Vec<String>,
    pub items: Vec<Item>,
    pub images: Vec<ImageStep>,
    /// Archive path of the images to `docker load` first, when some are missing here.
    pub load_images: Option<String>,
    /// The database dumps loaded into their servers after the swap.
    pub loads: Vec<Load>,
    /// The SQLite dumps written into the staged mounts that held them, before the swap.
    pub sqlite: Vec<super::sqlite::Place>,
    pub warnings: Vec<String>,
    /// The project has no containers (never started here, or `compose down`): the rollback
    /// creates and starts them all with the compose CLI.
    pub start_all: bool,
    /// An image present here that the containers filling volumes through the engine are
    /// created from (they are never started).
    #[serde(skip)]
    pub(super) carrier_image: Option<String>,
    /// Services that ran when the backup was made.
    #[serde(skip)]
    pub(super) backup_running: Vec<String>,
    #[serde(skip)]
    pub(super) containers: Vec<Container>,
    /// Bytes the safety backup reads, as the room check estimated them.
    #[serde(skip)]
    pub safety_bytes: u64,
}

impl Plan {
    pub fn volumes(&self) -> usize {
        self.items.iter().filter(|i| i.kind != "config").count()
    }

    pub fn files(&self) -> u64 {
        self.items.iter().map(|i| i.file_count).sum()
    }
}

/// Everything checked, nothing touched: record → archive (one verifying pass) → what is
/// replaced where → images → the project's containers and compose → room.
pub async fn plan(ctx: &Ctx, opts: &RollbackOptions) -> Result<Plan> {
    let engine = ctx.engine.as_ref().context("rollback needs the Docker engine")?;
    let (rec, archive) = restorable(ctx, opts.id).await?;
    let (manifest, digests) = verify(ctx, &rec, &archive, opts).await?;
    let mut warnings = warnings_of(&manifest, opts, rec.id, &ctx.project.name)?;
    let mut items = Vec::new();
    let containers = engine.project_containers(&ctx.project.name).await?;
    let (mut loads, mut sqlite) = (Vec::new(), Vec::new());
    if opts.data {
        items.extend(mount_items(&**engine, &manifest, opts, &ctx.project, &mut warnings).await?);
        sqlite = super::sqlite::places(&manifest, &digests, &items)?;
        loads = loads_of(&manifest, &digests);
        loads.retain(|l| !opts.keep_data.contains(&l.service));
        items.extend(fresh_data_items(&**engine, &manifest, &ctx.project, &loads, &containers).await?);
    }
    if opts.config {
        items.extend(config_items(&manifest, &ctx.project));
    }
    let (images, load_images) = image_steps(&**engine, &manifest).await?;
    let start_all = containers.is_empty();
    // Services are recreated by compose when configs come back, an image differs, a volume is
    // recreated under them, or there are none yet.
    let compose_needed = start_all
        || items.iter().any(|i| i.kind == "config" || i.via_engine)
        || images.iter().any(|i| i.current_id.as_deref() != Some(i.image_id.as_str()));
    if compose_needed && let Err(e) = ctx.compose() {
        bail!("rollback recreates the services with the compose CLI: {e:#}");
    }
    let carrier_image = images
        .first()
        .map(|i| i.image_id.clone())
        .or_else(|| containers.iter().map(|c| c.image_id.clone()).find(|i| !i.is_empty()));
    if items.iter().any(|i| i.via_engine) && carrier_image.is_none() {
        bail!(
            "volumes must be restored through the engine, which needs an image to create the \
             container that receives the data, and neither the backup nor the project names one"
        );
    }
    let safety_bytes = check_room(ctx, &containers, &items).await?;
    Ok(Plan {
        backup_id: rec.id,
        archive,
        created_at: rec.created_at,
        service_version: rec.service_version.clone(),
        services_to_stop: containers.iter().filter(|c| c.is_running()).map(|c| c.service.clone()).collect(),
        items,
        images,
        load_images: manifest.images_archive.clone().filter(|_| load_images),
        loads,
        sqlite,
        warnings,
        start_all,
        carrier_image,
        backup_running: manifest.services.iter().filter(|s| s.running).map(|s| s.service.clone()).collect(),
        containers,
        safety_bytes,
    })
}

/// Backup `id`: this project's, complete, its archive there.
async fn restorable(ctx: &Ctx, id: i64) -> Result<(BackupRecord, PathBuf)> {
    let rec: BackupRecord = ctx
        .catalog
        .get(id)
        .await?
        .filter(|r| r.project == ctx.project.name)
        .ok_or(crate::Error::BackupNotFound { id })?;
    if !rec.is_complete() {
        bail!(crate::Error::Config(format!(
            "backup {} is {}, not complete: it cannot be restored",
            rec.id, rec.status
        )));
    }
    let archive = PathBuf::from(rec.path.clone().unwrap_or_default());
    if !archive.is_file() {
        bail!(crate::Error::VerifyFailed {
            id: rec.id,
            detail: format!("archive {} is missing", archive.display())
        });
    }
    Ok((rec, archive))
}

/// Every byte, before anything else, in one pass: the whole file against the catalog's
/// checksum, every entry against manifest and trailer, and the extraction rules for what will
/// be restored. A damaged or hostile archive is found here, services untouched.
async fn verify(
    ctx: &Ctx,
    rec: &BackupRecord,
    archive: &Path,
    opts: &RollbackOptions,
) -> Result<(Manifest, Vec<crate::archive::manifest::DumpDigest>)> {
    let refused = |e: archive::Error| crate::Error::VerifyFailed {
        id: rec.id,
        detail: format!("{:#}", anyhow::Error::from(e)),
    };
    let (a, sum, cancel) = (archive.to_path_buf(), rec.checksum.clone(), ctx.interrupt.cancel().clone());
    let (data, config) = (opts.data, opts.config);
    let report = tokio::task::spawn_blocking(move || {
        let manifest = archive::read_manifest(&a)?;
        let mut targets: Vec<Target> = Vec::new();
        let nowhere = || PathBuf::from("/nonexistent");
        if data {
            targets.extend(
                manifest.mounts.iter().map(|m| Target { prefix: m.archive_path.clone(), dest: nowhere() }),
            );
        }
        if config {
            targets.extend(
                manifest.configs.iter().map(|c| Target { prefix: c.archive_path.clone(), dest: nowhere() }),
            );
        }
        archive::verify_extractable(&a, sum.as_deref(), &targets, &cancel)
    })
    .await?;
    ctx.interrupt.check()?;
    let report = report.map_err(refused)?;
    Ok((report.manifest, report.dumps))
}

/// The backup's dumps loaded through their servers, by server, in archive order (SQLite's are
/// files, written back by `sqlite.rs`).
fn loads_of(manifest: &Manifest, digests: &[crate::archive::manifest::DumpDigest]) -> Vec<Load> {
    let mut loads: Vec<Load> = Vec::new();
    for (d, digest) in manifest.dumps.iter().zip(digests).filter(|(d, _)| d.server != "sqlite") {
        match loads.iter_mut().find(|l| l.service == d.service) {
            Some(l) => {
                l.dumps.push(d.clone());
                l.digests.push(digest.clone());
            }
            None => loads.push(Load {
                service: d.service.clone(),
                server: d.server.clone(),
                dumps: vec![d.clone()],
                digests: vec![digest.clone()],
            }),
        }
    }
    loads
}

/// The data volumes of each server whose dumps are loaded: each is replaced by an empty
/// directory (the old one kept beside it until the rollback stands), so the server starts
/// fresh and a failed load puts the old one back. They are the mounts the backup left out for
/// its dumps (after a major-version upgrade, the old server's volume, which the backup's
/// configs mount again, not the new one); archives made before recorded them not, and take the
/// server's mounts now. A volume or directory that is not there is made empty by compose.
async fn fresh_data_items(
    engine: &dyn crate::engine::Engine,
    manifest: &Manifest,
    project: &crate::project::Project,
    loads: &[Load],
    containers: &[Container],
) -> Result<Vec<Item>> {
    let mut items: Vec<Item> = Vec::new();
    for l in loads {
        let kind: crate::database::Kind = l.server.parse().map_err(anyhow::Error::msg)?;
        let recorded: Vec<_> = manifest.dumped_mounts.iter().filter(|m| m.service == l.service).collect();
        // (volume name, host path, where the server mounts it)
        let mut mounts: Vec<(Option<String>, PathBuf, String)> = Vec::new();
        if recorded.is_empty() {
            let Some(c) = containers.iter().find(|c| c.service == l.service) else { continue };
            for m in c.mounts.iter().filter(|m| kind.holds_data(&m.destination)) {
                if m.kind == crate::engine::MountType::Other {
                    bail!(unreachable_data(kind, &l.service, &m.destination, &m.source));
                }
                mounts.push((m.name.clone(), m.source.clone(), m.destination.clone()));
            }
        }
        for m in recorded {
            let at = m.destinations.first().cloned().unwrap_or_default();
            match m.kind {
                archive::manifest::MountKind::Bind => {
                    let dest = local_bind(manifest.project_dir.as_deref(), &project.dir, Path::new(&m.name));
                    if dest.exists() {
                        mounts.push((None, dest, at));
                    }
                }
                archive::manifest::MountKind::Volume => {
                    let name = local_volume(&manifest.project, &project.name, &m.name);
                    if engine.volume_spec(&name).await?.is_some() {
                        mounts.push((Some(name.clone()), engine.volume_mountpoint(&name).await?, at));
                    }
                }
            }
        }
        for (volume, source, at) in mounts {
            if items.iter().any(|i| i.dest == source) {
                continue;
            }
            if std::fs::read_dir(&source).is_err() {
                bail!(unreachable_data(kind, &l.service, &at, &source));
            }
            items.push(Item {
                kind: if volume.is_some() { "volume" } else { "bind" },
                name: volume.clone().unwrap_or_else(|| source.display().to_string()),
                prefix: String::new(),
                dest: source,
                size: 0,
                file_count: 0,
                volume,
                via_engine: false,
                create: false,
                empty: true,
            });
        }
    }
    Ok(items)
}

fn unreachable_data(kind: crate::database::Kind, service: &str, at: &str, source: &Path) -> String {
    format!(
        "the data of {kind} {service} ({at}) is not reachable on this host at {}: loading its dump needs it",
        source.display()
    )
}

/// What the operator should know before: another project's backup, a live one (refused
/// without `--accept-live`), services killed when it was made, paths skipped then.
fn warnings_of(manifest: &Manifest, opts: &RollbackOptions, id: i64, project: &str) -> Result<Vec<String>> {
    if manifest.live && !opts.accept_live {
        bail!(crate::Error::Preflight(vec![format!(
            "backup {id} was copied while services ran (live, not one point in time): a database in it \
             may hold data from several moments; pass --accept-live to restore it anyway"
        )]));
    }
    let mut warnings = Vec::new();
    if manifest.project != project {
        warnings.push(format!(
            "the backup was made for project {:?}; restoring into {project:?}",
            manifest.project
        ));
    }
    if manifest.live {
        warnings.push("the backup is live: its data was copied while services ran".into());
    }
    for s in &manifest.stop_killed {
        warnings.push(format!(
            "{s} was killed at its stop timeout when the backup was made: its data needs its own crash recovery"
        ));
    }
    // What the dumps hold instead is restored through them, not left as it is.
    let dumped =
        |s: &&archive::manifest::Skipped| !manifest.dumps.is_empty() && s.reason.contains("dumped instead");
    for s in manifest.skipped.iter().filter(|s| !dumped(s)) {
        warnings.push(format!(
            "{} was skipped when the backup was made ({}); it is left as it is",
            s.path, s.reason
        ));
    }
    Ok(warnings)
}

/// Each volume and bind mount of the backup, and where it goes here: a volume through its host
/// mountpoint, or through the engine when this host cannot reach it or it does not exist yet.
async fn mount_items(
    engine: &dyn crate::engine::Engine,
    manifest: &Manifest,
    opts: &RollbackOptions,
    project: &crate::project::Project,
    warnings: &mut Vec<String>,
) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for m in &manifest.mounts {
        let item = Item {
            kind: "bind",
            name: m.name.clone(),
            prefix: m.archive_path.clone(),
            dest: PathBuf::new(),
            size: m.size,
            file_count: m.file_count,
            volume: None,
            via_engine: false,
            create: false,
            empty: false,
        };
        if m.kind == archive::manifest::MountKind::Bind {
            let dest = local_bind(manifest.project_dir.as_deref(), &project.dir, Path::new(&m.source));
            if dest != Path::new(&m.source) {
                warnings.push(format!("bind mount {} is restored into {}", m.source, dest.display()));
            }
            items.push(Item { dest, ..item });
            continue;
        }
        let name = local_volume(&manifest.project, &project.name, &m.name);
        if name != m.name {
            warnings.push(format!("volume {} is restored into this project's {}", m.name, name));
        }
        let exists = engine.volume_spec(&name).await?.is_some();
        let dest = match exists {
            true => engine.volume_mountpoint(&name).await?,
            false => PathBuf::new(),
        };
        let reachable = exists && std::fs::read_dir(&dest).is_ok();
        let via_engine = match (opts.safety.volume_access, reachable) {
            (VolumeAccess::Host, false) if exists => bail!(
                "volume {name} is not reachable on this host at {} (volume_access = host); \
                 use volume_access = auto or engine to restore it through the engine",
                dest.display()
            ),
            (VolumeAccess::Engine, _) | (_, false) => true,
            _ => false,
        };
        items.push(Item { kind: "volume", dest, volume: Some(name), via_engine, create: !exists, ..item });
    }
    Ok(items)
}

/// Each config file of the backup, at its place in this project.
fn config_items(manifest: &Manifest, project: &crate::project::Project) -> Vec<Item> {
    manifest
        .configs
        .iter()
        .map(|c| {
            let src = Path::new(&c.source);
            Item {
                kind: "config",
                name: c.source.clone(),
                prefix: c.archive_path.clone(),
                dest: if src.is_absolute() { src.to_path_buf() } else { project.dir.join(src) },
                size: c.size,
                file_count: c.file_count,
                volume: None,
                via_engine: false,
                create: false,
                empty: false,
            }
        })
        .collect()
}

/// The image each of the backup's services ran must still exist (kept by its nuwax-keep tag)
/// or be in the archive (`backup --with-images`; then it is loaded first: the `bool`).
async fn image_steps(
    engine: &dyn crate::engine::Engine,
    manifest: &Manifest,
) -> Result<(Vec<ImageStep>, bool)> {
    let mut images = Vec::new();
    let mut load_images = false;
    let mut seen = std::collections::BTreeSet::new();
    for s in manifest.services.iter().filter(|s| !s.image.is_empty() && !s.image_id.is_empty()) {
        if !seen.insert(s.service.clone()) {
            continue;
        }
        if engine.image_id(&s.image_id).await?.is_none() {
            match &manifest.images_archive {
                Some(_) => load_images = true,
                None => bail!(
                    "image {} ({}) of service {} is no longer on this host and the backup holds no images \
                     (made without --with-images); it cannot be rolled back to",
                    s.image_id,
                    s.image,
                    s.service
                ),
            }
        }
        images.push(ImageStep {
            service: s.service.clone(),
            image: s.image.clone(),
            image_id: s.image_id.clone(),
            current_id: engine.image_id(&s.image).await?,
        });
    }
    Ok((images, load_images))
}

/// Room for the staged copies, on each target's filesystem (the tars of volumes restored
/// through the engine are staged in the storage directory), and for the safety backup, which
/// is made after the stop without checking again. Returns what the safety backup reads.
async fn check_room(ctx: &Ctx, containers: &[Container], items: &[Item]) -> Result<u64> {
    let storage = &ctx.project.storage_dir;
    let mut need: BTreeMap<PathBuf, u64> = BTreeMap::new();
    let safety = super::super::backup::estimate(ctx, containers).await?;
    *need.entry(existing_ancestor(storage)).or_default() += safety + safety / 20;
    for i in items {
        let dir = match i.via_engine {
            true => existing_ancestor(storage),
            false => existing_ancestor(i.dest.parent().unwrap_or(Path::new("/"))),
        };
        *need.entry(dir).or_default() += i.size + 4096 * i.file_count;
    }
    for (dir, bytes) in need {
        let free =
            fsutil::free_space(&dir).with_context(|| format!("checking free space in {}", dir.display()))?;
        if bytes + (1 << 20) > free {
            bail!(crate::Error::NoSpace {
                needed: fsutil::human_bytes(bytes),
                free: fsutil::human_bytes(free),
                dir
            });
        }
    }
    Ok(safety)
}

/// The volume of this project that takes what the backup's volume `name` held: for a backup
/// made under another project name (another machine, `nuwax import`), this project's volume
/// with the same compose key — never the other project's, even when it exists on this host.
fn local_volume(from: &str, to: &str, name: &str) -> String {
    match name.strip_prefix(&format!("{from}_")) {
        Some(key) if from != to => format!("{to}_{key}"),
        _ => name.to_string(),
    }
}

/// A bind source inside the backed-up project's directory maps into this project's directory.
fn local_bind(from_dir: Option<&str>, to_dir: &Path, source: &Path) -> PathBuf {
    match from_dir.and_then(|d| source.strip_prefix(d).ok()) {
        Some(rel) => to_dir.join(rel),
        None => source.to_path_buf(),
    }
}

fn existing_ancestor(p: &Path) -> PathBuf {
    let mut p = p.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            return PathBuf::from("/");
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::local_volume;

    #[test]
    fn volumes_of_another_project_map_by_their_compose_key() {
        assert_eq!(local_volume("shop", "shop", "shop_data"), "shop_data");
        assert_eq!(local_volume("old", "new", "old_data"), "new_data");
        assert_eq!(local_volume("old", "new", "external_vol"), "external_vol");
    }
}
