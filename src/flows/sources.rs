//! What a backup reads: the project's config files and every volume and bind mount its services
//! use, each once, with where to read it from (the host, or the engine's archive API).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::archive::manifest::{Access, MountKind, Skipped};
use crate::engine::{Container, Engine, MountType};
use crate::project::Project;

/// Where the bytes of a source come from.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Origin {
    Host(PathBuf),
    /// Through the engine: `container` mounts the data at `path`.
    Engine {
        container: String,
        path: String,
    },
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Role {
    Config {
        source: String,
    },
    /// The services' images, `docker save` format (`--with-images`).
    Images,
    Mount {
        kind: MountKind,
        name: String,
        source: String,
        destinations: Vec<String>,
    },
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Source {
    /// Archive path the data goes under.
    pub prefix: String,
    pub origin: Origin,
    pub role: Role,
}

impl Source {
    pub fn access(&self) -> Access {
        match self.origin {
            Origin::Host(_) => Access::Host,
            Origin::Engine { .. } => Access::Engine,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeAccess {
    Auto,
    Host,
    Engine,
}

impl std::str::FromStr for VolumeAccess {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(VolumeAccess::Auto),
            "host" => Ok(VolumeAccess::Host),
            "engine" => Ok(VolumeAccess::Engine),
            other => Err(format!("volume_access must be auto, host or engine, not {other:?}")),
        }
    }
}

/// The config files: compose files, the env file, `nuwax.toml`, and configured extra paths.
pub fn config_sources(project: &Project, skipped: &mut Vec<Skipped>) -> Vec<Source> {
    let mut paths: Vec<PathBuf> = project.compose_files.clone();
    paths.push(project.env_file.clone());
    paths.push(project.dir.join(crate::project::CONFIG_FILE));
    let optional = paths.len();
    paths.extend(project.settings.include.iter().map(|p| project.dir.join(p)));
    let mut out: Vec<Source> = Vec::new();
    for (i, path) in paths.into_iter().enumerate() {
        let rel = display_rel(&project.dir, &path);
        if std::fs::symlink_metadata(&path).is_err() {
            // The env file and nuwax.toml are optional; a configured include is not.
            if i >= optional - 2 && i < optional {
                continue;
            }
            tracing::warn!("{rel} does not exist; skipped");
            skipped.push(Skipped { path: rel, reason: "does not exist".into() });
            continue;
        }
        let prefix = format!("config/{}", archive_rel(&project.dir, &path));
        if out.iter().any(|s| s.prefix == prefix) {
            continue;
        }
        out.push(Source {
            prefix,
            origin: Origin::Host(resolve_root(path)),
            role: Role::Config { source: rel },
        });
    }
    out
}

/// A mount seen on one or more containers.
struct Found {
    kind: MountKind,
    source: PathBuf,
    /// `service:/path` for each container that mounts it.
    destinations: Vec<String>,
    /// A container that mounts it, and where: the way in through the engine.
    via: Option<(String, String)>,
}

/// Every named volume and bind mount of the project's containers, each once. Volumes labelled
/// with the project but mounted by no container are included too (read on the host only).
pub async fn mount_sources(
    project: &Project,
    engine: &dyn Engine,
    containers: &[Container],
    access: VolumeAccess,
    skipped: &mut Vec<Skipped>,
) -> anyhow::Result<Vec<Source>> {
    let mut found: BTreeMap<(u8, String), Found> = BTreeMap::new();
    for c in containers {
        for m in &c.mounts {
            let (key, kind) = match m.kind {
                MountType::Volume => match &m.name {
                    Some(n) => ((0, n.clone()), MountKind::Volume),
                    None => continue,
                },
                MountType::Bind => ((1, m.source.to_string_lossy().into_owned()), MountKind::Bind),
                MountType::Other => continue,
            };
            let e = found.entry(key).or_insert_with(|| Found {
                kind,
                source: m.source.clone(),
                destinations: Vec::new(),
                via: None,
            });
            e.destinations.push(format!("{}:{}", c.service, m.destination));
            e.via.get_or_insert_with(|| (c.id.clone(), m.destination.clone()));
        }
    }
    for v in engine.project_volumes(&project.name).await? {
        if !found.contains_key(&(0, v.clone())) {
            let source = engine.volume_mountpoint(&v).await?;
            found.insert(
                (0, v),
                Found { kind: MountKind::Volume, source, destinations: Vec::new(), via: None },
            );
        }
    }
    let mut out = Vec::new();
    for ((_, name), Found { kind, source, destinations, via }) in found {
        let src = source.to_string_lossy().into_owned();
        let prefix = match kind {
            MountKind::Volume => format!("volumes/{name}"),
            MountKind::Bind => format!("binds/{}", src.trim_start_matches('/')),
        };
        let role = Role::Mount { kind, name: name.clone(), source: src.clone(), destinations };
        let host_ok = std::fs::read_dir(&source).is_ok() || (kind == MountKind::Bind && source.is_file());
        let origin = match kind {
            MountKind::Bind => {
                // Followed: a symlinked bind source is what Docker mounts too.
                match std::fs::metadata(&source) {
                    Err(_) => {
                        tracing::warn!("bind mount source {src} does not exist; skipped");
                        skipped
                            .push(Skipped { path: src, reason: "bind mount source does not exist".into() });
                        continue;
                    }
                    Ok(md) if !(md.is_dir() || md.is_file()) => {
                        tracing::warn!("bind mount source {src} is not a file or directory; skipped");
                        skipped.push(Skipped {
                            path: src,
                            reason: "not a regular file or directory (socket or device)".into(),
                        });
                        continue;
                    }
                    Ok(_) => {}
                }
                Origin::Host(resolve_root(source))
            }
            MountKind::Volume => match (access, host_ok, via) {
                (VolumeAccess::Host | VolumeAccess::Auto, true, _) => Origin::Host(source),
                (VolumeAccess::Engine | VolumeAccess::Auto, _, Some((container, path))) => {
                    Origin::Engine { container, path }
                }
                (_, _, via) => {
                    let reason = if via.is_none() {
                        "volume mountpoint not readable on this host and no container mounts it"
                    } else {
                        "volume mountpoint not readable on this host (volume_access = host)"
                    };
                    tracing::warn!("volume {name}: {reason}; skipped");
                    skipped.push(Skipped { path: format!("volume:{name}"), reason: reason.into() });
                    continue;
                }
            },
        };
        out.push(Source { prefix, origin, role });
    }
    Ok(out)
}

/// Takes out of `plan` the mounts only `skip` services use (`backup = "skip"`), each listed in
/// `skipped`; a mount another service uses stays (and is read while they run).
pub fn drop_skipped(plan: &mut Vec<Source>, skip: &[String], skipped: &mut Vec<Skipped>) {
    if skip.is_empty() {
        return;
    }
    plan.retain(|s| {
        let Role::Mount { name, destinations, .. } = &s.role else { return true };
        let users: Vec<&str> =
            destinations.iter().filter_map(|d| d.split_once(':').map(|(svc, _)| svc)).collect();
        if users.is_empty() || !users.iter().all(|u| skip.iter().any(|k| k == u)) {
            return true;
        }
        let mut users = users;
        users.dedup();
        skipped.push(Skipped {
            path: name.clone(),
            reason: format!(
                "backup = \"skip\" for {}: not backed up, a rollback leaves it as it is",
                users.join(", ")
            ),
        });
        false
    });
}

/// Bind mounts named in the compose files, for `--no-docker` backups.
pub fn compose_bind_sources(project: &Project, skipped: &mut Vec<Skipped>) -> Vec<Source> {
    let mut binds: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    for (svc, s) in &project.services {
        for b in &s.binds {
            binds.entry(normalize(b)).or_default().push(svc.clone());
        }
        for v in &s.volumes {
            skipped.push(Skipped {
                path: format!("volume:{v}"),
                reason: format!("named volume of {svc}: not read without the engine (--no-docker)"),
            });
        }
    }
    let mut out = Vec::new();
    for (path, services) in binds {
        let src = path.to_string_lossy().into_owned();
        if std::fs::symlink_metadata(&path).is_err() {
            tracing::warn!("bind mount source {src} does not exist; skipped");
            skipped.push(Skipped { path: src, reason: "bind mount source does not exist".into() });
            continue;
        }
        out.push(Source {
            prefix: format!("binds/{}", src.trim_start_matches('/')),
            origin: Origin::Host(resolve_root(path)),
            role: Role::Mount {
                kind: MountKind::Bind,
                name: src.clone(),
                source: src,
                destinations: services,
            },
        });
    }
    out
}

/// The data a configured or mounted path stands for: a symlink *as the root* is followed (as
/// Docker follows it for a bind mount); symlinks inside are archived as symlinks.
fn resolve_root(path: PathBuf) -> PathBuf {
    std::fs::canonicalize(&path).unwrap_or(path)
}

/// `a/./b/../c` → `a/c`, without touching the filesystem (the path may not exist).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn display_rel(dir: &Path, path: &Path) -> String {
    let path = normalize(path);
    path.strip_prefix(dir)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| path.to_string_lossy().into_owned())
}

/// Inside the project: the relative path. Outside: `_abs/<absolute path>`.
fn archive_rel(dir: &Path, path: &Path) -> String {
    let path = normalize(path);
    match path.strip_prefix(dir) {
        Ok(rel) => rel.to_string_lossy().into_owned(),
        Err(_) => format!("_abs/{}", path.to_string_lossy().trim_start_matches('/')),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(name: &str, users: &[&str]) -> Source {
        Source {
            prefix: format!("volumes/{name}"),
            origin: Origin::Host(PathBuf::from(format!("/v/{name}"))),
            role: Role::Mount {
                kind: MountKind::Volume,
                name: name.into(),
                source: format!("/v/{name}"),
                destinations: users.iter().map(|u| format!("{u}:/data")).collect(),
            },
        }
    }

    #[test]
    fn a_skipped_service_leaves_out_only_the_mounts_no_other_service_uses() {
        let mut plan =
            vec![mount("cache", &["worker"]), mount("shared", &["worker", "app"]), mount("db", &["db"])];
        let mut skipped = Vec::new();
        drop_skipped(&mut plan, &["worker".to_string()], &mut skipped);
        let left: Vec<&str> = plan.iter().map(|s| s.prefix.as_str()).collect();
        assert_eq!(left, ["volumes/shared", "volumes/db"]);
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].path, "cache");
        assert!(skipped[0].reason.contains("backup = \"skip\" for worker"), "{}", skipped[0].reason);
        drop_skipped(&mut plan, &[], &mut skipped);
        assert_eq!(plan.len(), 2);
    }
}
