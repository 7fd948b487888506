//! Volumes restored through the engine: for a volume this host cannot reach (a remote or
//! rootless engine, `volume_access = engine`) or that does not exist yet. The backup's content
//! is first repacked into a tar in the storage directory (staging); then the volume is recreated
//! empty and the tar uploaded through the archive API into a container that is created for it
//! and never started. Every step is idempotent, so recovery can run a replace again from the top.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::archive::{self, Cancel, Progress};
use crate::engine::{Container, Engine, LABEL_PROJECT, LABEL_VOLUME, VolumeSpec};

/// Where the carrier container mounts the volume; the staged tar's top entry has this name.
const MOUNT: &str = ".nuwax-restore";

/// One volume restored through the engine.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EngineSlot {
    pub volume: String,
    /// The backup's content for the volume, staged as a tar. Removed once the volume holds it,
    /// so a missing tar means this slot is done.
    pub tar: PathBuf,
    /// How to create the volume again: its current spec, or compose's labels for a new one.
    pub spec: VolumeSpec,
    /// An image present on this host for the carrier container.
    pub image: String,
    /// Whether the volume existed before the rollback.
    pub existed: bool,
}

impl EngineSlot {
    pub fn new(volume: &str, project: &str, storage: &Path, backup_id: i64, image: &str) -> Self {
        let key = volume.strip_prefix(&format!("{project}_")).unwrap_or(volume);
        EngineSlot {
            volume: volume.to_string(),
            tar: storage.join(format!(".nuwax-restore-{backup_id}-{volume}.tar")),
            spec: VolumeSpec {
                name: volume.to_string(),
                driver: "local".into(),
                labels: [(LABEL_PROJECT, project), (LABEL_VOLUME, key)]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                options: Default::default(),
            },
            image: image.to_string(),
            existed: false,
        }
    }

    fn carrier(&self) -> String {
        format!("nuwax-restore-{}", self.volume)
    }
}

/// Writes the entries under `prefix` of `archive` to the slot's tar, verifying the archive on
/// the way; the tar appears complete or not at all. Blocking.
pub fn stage(
    archive: &Path,
    prefix: &str,
    tar: &Path,
    cancel: &Cancel,
    progress: &dyn Progress,
) -> Result<()> {
    use std::io::Write;
    let part = tar.with_extension("part");
    let result = (|| {
        let file = std::fs::File::create(&part).with_context(|| format!("creating {}", part.display()))?;
        let mut out = std::io::BufWriter::with_capacity(archive::BUF_SIZE, file);
        archive::repack(archive, prefix, MOUNT, &mut out, cancel, progress)?;
        out.flush()?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&part, tar).with_context(|| format!("renaming {}", part.display()))?;
        anyhow::Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result
}

/// Removes staged tars (a rollback undone before its swap).
pub fn clear(slots: &[EngineSlot]) {
    for s in slots {
        let _ = std::fs::remove_file(&s.tar);
        let _ = std::fs::remove_file(s.tar.with_extension("part"));
    }
}

/// Recreates the volume empty and uploads `tar` into it. The project's containers that mount
/// it are removed first (they are stopped; the engine keeps a volume while any container
/// refers to it) and added to `removed` as they go (so a failure halfway still says which),
/// for the caller to have compose create them again.
pub async fn replace(
    engine: &dyn Engine,
    project: &str,
    slot: &EngineSlot,
    tar: &Path,
    removed: &mut Vec<Container>,
) -> Result<()> {
    // A carrier a crash left behind.
    engine.remove_container(&slot.carrier()).await?;
    let users: Vec<Container> = engine
        .project_containers(project)
        .await?
        .into_iter()
        .filter(|c| c.mounts.iter().any(|m| m.name.as_deref() == Some(slot.volume.as_str())))
        .collect();
    for c in &users {
        if c.is_running() {
            bail!(
                "container {} uses volume {} and is running; it must be stopped first",
                c.name,
                slot.volume
            );
        }
        engine.remove_container(&c.id).await?;
        removed.push(c.clone());
    }
    engine.remove_volume(&slot.volume).await.with_context(|| {
        format!("removing volume {} (is a container outside the project using it?)", slot.volume)
    })?;
    engine.create_volume(&slot.spec).await?;
    let id = engine.create_carrier(&slot.carrier(), &slot.image, &slot.volume, &format!("/{MOUNT}")).await?;
    let uploaded = engine.upload(&id, "/", tar).await;
    engine.remove_container(&id).await?;
    uploaded.with_context(|| format!("uploading the backup's data into volume {}", slot.volume))?;
    Ok(())
}

/// Runs [`replace`] for every slot whose tar is still there, then removes the tar.
pub async fn complete(engine: &dyn Engine, project: &str, slots: &[EngineSlot]) -> Result<Vec<Container>> {
    let mut removed = Vec::new();
    for s in slots {
        if !s.tar.exists() {
            continue;
        }
        replace(engine, project, s, &s.tar, &mut removed).await?;
        std::fs::remove_file(&s.tar).with_context(|| format!("removing {}", s.tar.display()))?;
    }
    Ok(removed)
}

/// Puts a volume replaced by a failed rollback back as the safety backup holds it (or removes
/// it when it did not exist before).
pub async fn undo(
    engine: &dyn Engine,
    project: &str,
    slot: &EngineSlot,
    safety_archive: &Path,
    cancel: &Cancel,
) -> Result<()> {
    if !slot.existed {
        engine.remove_container(&slot.carrier()).await?;
        engine.remove_volume(&slot.volume).await?;
        return Ok(());
    }
    let manifest = archive::read_manifest(safety_archive)?;
    let mount = manifest
        .mounts
        .iter()
        .find(|m| m.name == slot.volume)
        .with_context(|| format!("the safety backup does not hold volume {}", slot.volume))?;
    let tar = slot.tar.with_extension("undo");
    let (a, p, t, c) =
        (safety_archive.to_path_buf(), mount.archive_path.clone(), tar.clone(), cancel.clone());
    tokio::task::spawn_blocking(move || stage(&a, &p, &t, &c, &archive::NoProgress)).await??;
    let result = replace(engine, project, slot, &tar, &mut Vec::new()).await;
    let _ = std::fs::remove_file(&tar);
    result
}
