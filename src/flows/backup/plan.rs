//! The parts of a backup decided before and around the archive: the manifest, the preflight
//! checks, exclude globs, file naming.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::Utc;

use serde::Serialize;

use crate::archive::manifest::{
    ChecksumInfo, ConfigRecord, FORMAT_VERSION, Manifest, MountKind, MountRecord, ServiceRecord, Skipped,
};
use crate::archive::{self, Compression, ScanResult};
use crate::flows::sources::{Origin, Role, Source};
use crate::fsutil;

pub(super) struct ManifestParts<'a> {
    pub id: i64,
    pub kind: String,
    pub project: String,
    pub project_dir: String,
    pub version: String,
    pub created_at: chrono::DateTime<Utc>,
    pub compression: Compression,
    pub stopped: bool,
    pub live: bool,
    pub stop_killed: Vec<String>,
    pub services: Vec<ServiceRecord>,
    pub plan: &'a [Source],
    pub scans: &'a [ScanResult],
    pub skipped: Vec<Skipped>,
}

pub(super) fn build_manifest(p: ManifestParts<'_>) -> Manifest {
    let mut mounts = Vec::new();
    let mut configs = Vec::new();
    let mut images_archive = None;
    for (s, scan) in p.plan.iter().zip(p.scans) {
        match &s.role {
            Role::Images => images_archive = Some(s.prefix.clone()),
            Role::Config { source } => configs.push(ConfigRecord {
                source: source.clone(),
                archive_path: s.prefix.clone(),
                size: scan.size,
                file_count: scan.file_count,
            }),
            Role::Mount { kind, name, source, destinations } => mounts.push(MountRecord {
                kind: *kind,
                name: name.clone(),
                source: source.clone(),
                destinations: destinations.clone(),
                archive_path: s.prefix.clone(),
                access: s.access(),
                size: scan.size,
                file_count: scan.file_count,
                running: Vec::new(),
            }),
        }
    }
    Manifest {
        format_version: FORMAT_VERSION,
        nuwax_version: crate::VERSION.to_string(),
        backup_id: p.id,
        kind: p.kind,
        project: p.project,
        project_dir: Some(p.project_dir),
        service_version: Some(p.version),
        created_at: p.created_at.to_rfc3339(),
        compression: p.compression.as_str().to_string(),
        services_stopped: p.stopped,
        live: p.live,
        stop_killed: p.stop_killed,
        services: p.services,
        mounts,
        configs,
        skipped: p.skipped,
        images_archive,
        // Declared beside it, from the scans (the archive's index).
        entries: Vec::new(),
        index: None,
        dumps: Vec::new(),
        dump_part_bytes: None,
        dumped_mounts: Vec::new(),
        checksums: ChecksumInfo::default(),
    }
}

/// Refuses before anything is stopped: an unwritable storage dir.
pub(crate) fn check_storage(storage: &Path) -> Result<()> {
    fsutil::create_private_dir(storage).map_err(|e| crate::Error::StorageNotWritable {
        dir: storage.to_path_buf(),
        detail: format!("{e:#}"),
    })?;
    fsutil::probe_writable(storage).map_err(|e| crate::Error::StorageNotWritable {
        dir: storage.to_path_buf(),
        detail: e.to_string(),
    })?;
    Ok(())
}

/// Bytes an archive of `plan` needs at most: the host sources' sizes, uncompressed.
pub(super) fn estimate(plan: &[Source], excludes: &globset::GlobSet, skip_dirs: &[PathBuf]) -> u64 {
    let mut estimate: u64 = 0;
    for s in plan {
        if let Origin::Host(root) = &s.origin
            && let Ok((entries, size)) = archive::count_host(root, excludes, skip_dirs)
        {
            // Headers and the index add ~1 KiB per entry; compression usually saves more, but
            // incompressible data is common (media, already-compressed dumps): assume none.
            estimate += size + 1024 * entries;
        }
    }
    estimate
}

/// What the preflight found: the bytes the sources hold (as [`estimate`] counts them) and the
/// room the archive needs.
pub(super) struct Room {
    pub data: u64,
    pub archive: u64,
}

impl Room {
    pub fn for_data(data: u64) -> Room {
        Room { data, archive: data + data / 20 + (1 << 20) }
    }
}

/// The room a backup of `plan` takes: the data as [`estimate`] counts it, plus a margin so the
/// archive does not fill the disk to the last byte.
pub(super) fn room(plan: &[Source], excludes: &globset::GlobSet, skip_dirs: &[PathBuf]) -> Room {
    Room::for_data(estimate(plan, excludes, skip_dirs))
}

/// Refuses before anything is stopped: not enough room for the data.
pub(super) fn preflight(
    storage: &Path,
    plan: &[Source],
    excludes: &globset::GlobSet,
    skip_dirs: &[PathBuf],
) -> Result<Room> {
    let room = room(plan, excludes, skip_dirs);
    let free = fsutil::free_space(storage)
        .with_context(|| format!("checking free space in {}", storage.display()))?;
    if room.archive > free {
        return Err(crate::Error::NoSpace {
            needed: fsutil::human_bytes(room.archive),
            free: fsutil::human_bytes(free),
            dir: storage.to_path_buf(),
        }
        .into());
    }
    Ok(room)
}

pub(super) fn build_excludes(globs: &[String]) -> Result<globset::GlobSet> {
    let mut b = globset::GlobSetBuilder::new();
    for g in globs {
        b.add(globset::Glob::new(g).map_err(|e| crate::Error::Config(format!("exclude glob {g:?}: {e}")))?);
    }
    Ok(b.build()?)
}

pub(super) fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' }).collect()
}

/// Of the services that mount a source (`service:/path` destinations), those in `ran`.
pub(super) fn running_on(destinations: &[String], ran: &std::collections::BTreeSet<String>) -> Vec<String> {
    let mut on: Vec<String> = destinations
        .iter()
        .filter_map(|d| d.split_once(':').map(|(s, _)| s))
        .filter(|s| ran.contains(*s))
        .map(str::to_string)
        .collect();
    on.dedup();
    on
}

/// Whether one item of a backup holds one point in time, and how it was read.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ItemMoment {
    /// A dump's archive name, or `volume NAME` / `bind PATH`.
    pub item: String,
    pub point_in_time: bool,
    pub how: String,
}

/// What each dump and mount of `m` holds: a dump is its server's transaction; a mount is one
/// moment unless services that mount it ran while it was read (`backup --no-stop`, or the
/// other files of a mount whose SQLite files were dumped).
pub fn moments(m: &Manifest) -> Vec<ItemMoment> {
    let dumps = m.dumps.iter().map(|d| ItemMoment {
        item: d.name.clone(),
        point_in_time: true,
        how: format!("dumped by {} in one transaction while {} ran", d.server, d.service),
    });
    let mounts = m.mounts.iter().map(|mount| {
        let kind = match mount.kind {
            MountKind::Volume => "volume",
            MountKind::Bind => "bind",
        };
        let how = match (mount.running.is_empty(), m.services_stopped) {
            (false, _) => format!("copied while {} ran", mount.running.join(", ")),
            (true, true) => "copied while the services that mount it were stopped".to_string(),
            (true, false) => "copied while no service that mounts it ran".to_string(),
        };
        ItemMoment { item: format!("{kind} {}", mount.name), point_in_time: mount.running.is_empty(), how }
    });
    dumps.chain(mounts).collect()
}
