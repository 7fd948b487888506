//! Finding the compose project: its directory, compose files, name (derived exactly as compose
//! derives it), `.env`, the optional `nuwax.toml`, and what the compose files say about services.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::Error;
use crate::engine::compose_cli::{ComposeChoice, ComposeCli, ComposeMissing};

/// Compose's own default file names, in its order of preference.
pub const COMPOSE_FILE_NAMES: [&str; 4] =
    ["compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml"];
const OVERRIDE_FILE_NAMES: [&str; 4] = [
    "compose.override.yaml",
    "compose.override.yml",
    "docker-compose.override.yml",
    "docker-compose.override.yaml",
];
pub const CONFIG_FILE: &str = "nuwax.toml";

/// `nuwax.toml`: everything optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub project_name: Option<String>,
    pub compose_files: Option<Vec<PathBuf>>,
    pub env_file: Option<PathBuf>,
    #[serde(default)]
    pub include: Vec<PathBuf>,
    #[serde(default)]
    pub exclude: Vec<String>,
    pub storage_dir: Option<PathBuf>,
    pub compression: Option<String>,
    pub level: Option<i32>,
    /// Seconds a service gets to stop when its container sets no stop timeout.
    pub stop_timeout: Option<u64>,
    /// Seconds to wait for each service to be running (and healthy) again.
    pub health_timeout: Option<u64>,
    pub service_version: Option<String>,
    /// `auto` (host when readable, else engine), `host` or `engine`.
    pub volume_access: Option<String>,
    /// `auto` (v2, else v1), `v2` (`docker compose`) or `v1` (`docker-compose`).
    /// `NUWAX_COMPOSE` overrides it.
    pub compose_cli: Option<String>,
    /// When `nuwax schedule run` backs up and prunes: a cron expression, local time.
    pub schedule: Option<String>,
    /// What `nuwax prune` keeps.
    pub retention: Option<crate::retention::Policy>,
    /// `false`: no snapshot (copy while stopped only, in one phase); the snapshot is removed.
    pub snapshot: Option<bool>,
    /// What a backup stops at once: the whole project (one point in time, the default) or each
    /// group of services linked by `depends_on` or a shared mount in turn.
    #[serde(default)]
    pub stop: StopMode,
    /// `[services.NAME]`: what the operator says about a service (its database, SQLite files).
    #[serde(default)]
    pub services: BTreeMap<String, crate::database::ServiceSettings>,
    /// age recipients (`age1...`) every archive is encrypted to as it is written.
    #[serde(default)]
    pub encrypt_to: Vec<String>,
    /// The age identity file that opens encrypted archives (restores, verify, show).
    pub identity_file: Option<PathBuf>,
    /// `[[remotes]]`: where copies of the backups go.
    #[serde(default)]
    pub remotes: Vec<crate::remote::RemoteSettings>,
}

/// `stop` in nuwax.toml.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StopMode {
    #[default]
    Project,
    Each,
}

/// What the compose files say about one service.
#[derive(Debug, Default, Clone)]
pub struct ComposeService {
    pub depends_on: BTreeSet<String>,
    /// Host paths of bind mounts (resolved against the project dir).
    pub binds: Vec<PathBuf>,
    /// Named volumes (compose-level names, not yet prefixed with the project).
    pub volumes: Vec<String>,
    /// `stop_grace_period`, in seconds.
    pub stop_grace_period: Option<u64>,
    /// `image:`, with `${VAR}` references resolved from the environment and the env file.
    pub image: Option<String>,
}

/// A discovered project, ready for the flows.
#[derive(Debug, Clone)]
pub struct Project {
    pub dir: PathBuf,
    pub name: String,
    pub compose_files: Vec<PathBuf>,
    pub env_file: PathBuf,
    /// Key/values of the env file (missing file → empty).
    pub env: BTreeMap<String, String>,
    pub settings: Settings,
    pub services: BTreeMap<String, ComposeService>,
    /// `volumes:` top-level entries: compose name → explicit `name:` when set.
    pub declared_volumes: BTreeMap<String, Option<String>>,
    pub storage_dir: PathBuf,
    pub state_dir: PathBuf,
    /// Which compose CLI to run (`NUWAX_COMPOSE`, else `compose_cli`, else auto).
    pub compose: ComposeChoice,
}

impl Project {
    /// Discover the project in `dir`. Environment: `COMPOSE_PROJECT_NAME`, `NUWAX_STORAGE_DIR`,
    /// `NUWAX_STATE_DIR`, `NUWAX_COMPOSE`.
    pub fn discover(dir: &Path) -> Result<Project> {
        let dir =
            std::fs::canonicalize(dir).with_context(|| format!("project directory {}", dir.display()))?;
        let settings = load_settings(&dir)?;
        let compose = ComposeChoice::from_env(settings.compose_cli.as_deref()).map_err(Error::Config)?;
        let compose_files = match &settings.compose_files {
            Some(files) => files.iter().map(|f| dir.join(f)).collect(),
            None => default_compose_files(&dir)?,
        };
        for f in &compose_files {
            if !f.is_file() {
                return Err(Error::Config(format!("compose file {} does not exist", f.display())).into());
            }
        }
        let env_file = dir.join(settings.env_file.clone().unwrap_or_else(|| ".env".into()));
        let env = read_env_file(&env_file)?;

        let mut top_name = None;
        let mut services = BTreeMap::new();
        let mut declared_volumes = BTreeMap::new();
        for f in &compose_files {
            let doc = parse_compose(f, &dir)?;
            top_name = doc.name.or(top_name);
            merge_services(&mut services, doc.services, &env);
            declared_volumes.extend(doc.volumes);
        }
        let name = settings
            .project_name
            .clone()
            .or_else(|| std::env::var("COMPOSE_PROJECT_NAME").ok().filter(|s| !s.is_empty()))
            .or_else(|| env.get("COMPOSE_PROJECT_NAME").cloned().filter(|s| !s.is_empty()))
            .or(top_name)
            .unwrap_or_else(|| {
                normalize_project_name(&dir.file_name().unwrap_or_default().to_string_lossy())
            });
        if name.is_empty() {
            return Err(Error::Config(format!(
                "cannot derive a compose project name from {}; set COMPOSE_PROJECT_NAME or project_name in nuwax.toml",
                dir.display()
            ))
            .into());
        }
        let storage_dir = std::env::var_os("NUWAX_STORAGE_DIR")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .or_else(|| settings.storage_dir.clone())
            .map(|p| dir.join(p))
            .unwrap_or_else(|| dir.join("backups"));
        let state_dir = std::env::var_os("NUWAX_STATE_DIR")
            .filter(|s| !s.is_empty())
            .map(|p| dir.join(p))
            .unwrap_or_else(|| dir.join(".nuwax"));
        Ok(Project {
            dir,
            name,
            compose_files,
            env_file,
            env,
            settings,
            services,
            declared_volumes,
            storage_dir,
            state_dir,
            compose,
        })
    }

    /// The version the project runs, as configured (`service_version`), else `0`.
    pub fn service_version(&self) -> String {
        self.settings.service_version.clone().unwrap_or_else(|| "0".into())
    }

    /// The compose CLI to run, as chosen or detected; see [`ComposeChoice::select`].
    pub fn compose_cli(&self) -> Result<ComposeCli, ComposeMissing> {
        self.compose.select()
    }

    /// Service → the services it depends on.
    pub fn dependencies(&self) -> BTreeMap<String, BTreeSet<String>> {
        self.services.iter().map(|(k, v)| (k.clone(), v.depends_on.clone())).collect()
    }
}

fn load_settings(dir: &Path) -> Result<Settings> {
    read_settings(&dir.join(CONFIG_FILE))
}

/// Reads a nuwax.toml; a missing file is the defaults.
pub fn read_settings(path: &Path) -> Result<Settings> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())).into())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Settings::default()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
    }
}

fn default_compose_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let main = COMPOSE_FILE_NAMES
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::NoComposeFile { dir: dir.to_path_buf() })?;
    let mut files = vec![main];
    if let Some(o) = OVERRIDE_FILE_NAMES.iter().map(|n| dir.join(n)).find(|p| p.is_file()) {
        files.push(o);
    }
    Ok(files)
}

/// Compose v2's normalisation (compose-go `NormalizeProjectName`): lowercase, keep
/// `[a-z0-9_-]`, trim leading `_`/`-`. Compose v1 differs only in not trimming.
pub fn normalize_project_name(s: &str) -> String {
    let kept: String = s
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
        .collect();
    kept.trim_start_matches(['_', '-']).to_string()
}

/// A `.env` file as compose reads it: `KEY=VALUE`, `#` comments, optional `export `, quotes.
pub fn read_env_file(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
    };
    Ok(parse_env(&text))
}

/// `KEY=value` lines of an env file (comments, blank lines and `export ` prefixes allowed).
pub fn parse_env(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            out.insert(k.trim().to_string(), v.to_string());
        }
    }
    out
}

/// The services the compose `files` define, read as [`Project::discover`] reads them, with
/// `env` as the env file.
pub fn read_services(
    files: &[PathBuf],
    dir: &Path,
    env: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, ComposeService>> {
    let mut services = BTreeMap::new();
    for f in files {
        merge_services(&mut services, parse_compose(f, dir)?.services, env);
    }
    Ok(services)
}

/// The top-level `volumes:` of the compose `files`: compose name → explicit `name:` when set.
pub fn read_volumes(files: &[PathBuf], dir: &Path) -> Result<BTreeMap<String, Option<String>>> {
    let mut volumes = BTreeMap::new();
    for f in files {
        volumes.extend(parse_compose(f, dir)?.volumes);
    }
    Ok(volumes)
}

/// A later compose file adds to (lists) or overrides (values) what earlier ones said.
fn merge_services(
    into: &mut BTreeMap<String, ComposeService>,
    from: BTreeMap<String, ComposeService>,
    env: &BTreeMap<String, String>,
) {
    for (k, v) in from {
        let s = into.entry(k).or_default();
        s.depends_on.extend(v.depends_on);
        s.binds.extend(v.binds);
        s.volumes.extend(v.volumes);
        s.stop_grace_period = v.stop_grace_period.or(s.stop_grace_period);
        s.image = v.image.map(|i| interpolate(&i, env)).or(s.image.take());
    }
}

struct ComposeDoc {
    name: Option<String>,
    services: BTreeMap<String, ComposeService>,
    volumes: BTreeMap<String, Option<String>>,
}

fn parse_compose(path: &Path, dir: &Path) -> Result<ComposeDoc> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    let name = doc.get("name").and_then(|v| v.as_str()).map(str::to_string);
    let mut services = BTreeMap::new();
    if let Some(map) = doc.get("services").and_then(|v| v.as_mapping()) {
        for (k, v) in map {
            let Some(k) = k.as_str() else { continue };
            let mut s = ComposeService {
                stop_grace_period: v.get("stop_grace_period").and_then(|d| match d {
                    serde_yaml_ng::Value::Number(n) => n.as_u64(),
                    serde_yaml_ng::Value::String(s) => parse_duration_secs(s),
                    _ => None,
                }),
                image: v.get("image").and_then(|i| i.as_str()).map(str::to_string),
                ..Default::default()
            };
            match v.get("depends_on") {
                Some(serde_yaml_ng::Value::Sequence(seq)) => {
                    s.depends_on.extend(seq.iter().filter_map(|d| d.as_str().map(str::to_string)))
                }
                Some(serde_yaml_ng::Value::Mapping(m)) => {
                    s.depends_on.extend(m.keys().filter_map(|d| d.as_str().map(str::to_string)))
                }
                _ => {}
            }
            for vol in v.get("volumes").and_then(|v| v.as_sequence()).into_iter().flatten() {
                match parse_volume(vol) {
                    Some(VolumeRef::Bind(src)) => s.binds.push(dir.join(expand_home(&src))),
                    Some(VolumeRef::Named(n)) => s.volumes.push(n),
                    None => {}
                }
            }
            services.insert(k.to_string(), s);
        }
    }
    let mut volumes = BTreeMap::new();
    if let Some(map) = doc.get("volumes").and_then(|v| v.as_mapping()) {
        for (k, v) in map {
            if let Some(k) = k.as_str() {
                volumes.insert(k.to_string(), v.get("name").and_then(|n| n.as_str()).map(str::to_string));
            }
        }
    }
    Ok(ComposeDoc { name, services, volumes })
}

/// Resolves `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}` (and `$$`) as compose does:
/// the process environment first, then the env file. Unset variables become empty.
pub fn interpolate(s: &str, env_file: &BTreeMap<String, String>) -> String {
    let lookup = |k: &str| std::env::var(k).ok().or_else(|| env_file.get(k).cloned());
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix('{') {
            let Some(end) = r.find('}') else {
                out.push_str("${");
                rest = r;
                continue;
            };
            let expr = &r[..end];
            rest = &r[end + 1..];
            let value = if let Some((k, d)) = expr.split_once(":-") {
                lookup(k).filter(|v| !v.is_empty()).unwrap_or_else(|| d.to_string())
            } else if let Some((k, d)) = expr.split_once('-') {
                lookup(k).unwrap_or_else(|| d.to_string())
            } else {
                lookup(expr.split(['?', ':']).next().unwrap_or(expr)).unwrap_or_default()
            };
            out.push_str(&value);
        } else {
            let n = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            if n == 0 {
                out.push('$');
            } else {
                out.push_str(&lookup(&rest[..n]).unwrap_or_default());
            }
            rest = &rest[n..];
        }
    }
    out.push_str(rest);
    out
}

/// Sets `storage_dir` in the nuwax.toml at `path` (created when missing), keeping every other
/// line: the key is replaced where it is, else added before the first table; `None` removes
/// it. Keeps the file's mode. Atomic.
pub fn set_storage_dir(path: &Path, dir: Option<&Path>) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
    };
    let line =
        dir.map(|d| format!("storage_dir = {}", toml::Value::String(d.to_string_lossy().into_owned())));
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let first_table = lines.iter().position(|l| l.trim_start().starts_with('[')).unwrap_or(lines.len());
    let existing = lines[..first_table].iter().position(|l| {
        let t = l.trim_start();
        t.starts_with("storage_dir") && t["storage_dir".len()..].trim_start().starts_with('=')
    });
    match (existing, line) {
        (Some(i), Some(line)) => lines[i] = line,
        (Some(i), None) => {
            lines.remove(i);
        }
        (None, Some(line)) => lines.insert(first_table, line),
        (None, None) => {}
    }
    let mut out = lines.join("\n");
    out.push('\n');
    // The result must still be a valid nuwax.toml.
    toml::from_str::<Settings>(&out).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    crate::fsutil::replace_file(path, out.as_bytes())
}

enum VolumeRef {
    Bind(String),
    Named(String),
}

fn parse_volume(v: &serde_yaml_ng::Value) -> Option<VolumeRef> {
    if let Some(s) = v.as_str() {
        let src = s.split(':').next()?;
        if s.split(':').count() < 2 {
            return None; // anonymous volume
        }
        return Some(if src.starts_with(['.', '/', '~']) {
            VolumeRef::Bind(src.to_string())
        } else {
            VolumeRef::Named(src.to_string())
        });
    }
    let typ = v.get("type")?.as_str()?;
    let src = v.get("source")?.as_str()?.to_string();
    match typ {
        "bind" => Some(VolumeRef::Bind(src)),
        "volume" => Some(VolumeRef::Named(src)),
        _ => None,
    }
}

/// Compose durations: `1m30s`, `10s`, `500ms`, `1h`, rounded up to whole seconds.
pub fn parse_duration_secs(s: &str) -> Option<u64> {
    let mut total_ms: u64 = 0;
    let mut num = String::new();
    let mut chars = s.trim().chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_alphabetic() {
                unit.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let v: f64 = num.parse().ok()?;
        num.clear();
        let ms = match unit.as_str() {
            "h" => 3_600_000.0,
            "m" => 60_000.0,
            "s" => 1000.0,
            "ms" => 1.0,
            "us" | "µs" => 0.001,
            "ns" => 0.000_001,
            _ => return None,
        };
        total_ms += (v * ms) as u64;
    }
    if !num.is_empty() {
        total_ms += (num.parse::<f64>().ok()? * 1000.0) as u64;
    }
    Some(total_ms.div_ceil(1000))
}

fn expand_home(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names_are_normalised_like_compose() {
        assert_eq!(normalize_project_name("My Site.v2"), "mysitev2");
        assert_eq!(normalize_project_name("_-demo"), "demo");
        assert_eq!(normalize_project_name("demo_app-1"), "demo_app-1");
    }

    #[test]
    fn compose_durations_become_seconds() {
        assert_eq!(parse_duration_secs("1m30s"), Some(90));
        assert_eq!(parse_duration_secs("10s"), Some(10));
        assert_eq!(parse_duration_secs("1500ms"), Some(2));
        assert_eq!(parse_duration_secs("2h"), Some(7200));
        assert_eq!(parse_duration_secs("5"), Some(5));
        assert_eq!(parse_duration_secs("ten"), None);
    }

    #[test]
    fn compose_file_is_read_for_dependencies_and_mounts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("compose.yaml"),
            "name: shop\nservices:\n  app:\n    image: x\n    depends_on: [db]\n    volumes: ['./up:/srv', 'data:/d', {type: bind, source: /etc/hosts, target: /h}]\n  db:\n    image: y\n    stop_grace_period: 1m\n    depends_on:\n      cache: {condition: service_healthy}\n  cache: {image: z}\nvolumes:\n  data: {}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join(".env"), "# c\nexport A=\"1\"\nB='two'\n").unwrap();
        let p = Project::discover(dir.path()).unwrap();
        assert_eq!(p.name, "shop");
        assert_eq!(p.env["A"], "1");
        assert_eq!(p.env["B"], "two");
        assert!(p.services["app"].depends_on.contains("db"));
        assert!(p.services["db"].depends_on.contains("cache"));
        assert_eq!(p.services["app"].volumes, vec!["data".to_string()]);
        assert_eq!(p.services["app"].binds.len(), 2);
        assert!(p.declared_volumes.contains_key("data"));
        assert_eq!(p.services["db"].stop_grace_period, Some(60));
    }
}
