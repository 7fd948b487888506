//! `nuwax-package.toml`: the manifest types and their validation, which reports every problem
//! at once so a package author fixes them in one round.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Error, MANIFEST_FILE, Result, Version, rel_path_problem};

/// The manifest of a package. Required keys missing from the file come out empty and are
/// reported by [`PackageManifest::problems`], so every problem shows up together.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageManifest {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub files: Vec<FileEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<EnvChanges>,
    #[serde(default)]
    pub images: Vec<String>,
    #[serde(default)]
    pub hooks: Vec<Hook>,
    #[serde(default)]
    pub probes: Vec<Probe>,
    /// Database services whose new version starts on empty data and is loaded from a dump of
    /// the old server, taken by the pre-upgrade backup (a major-version upgrade: PostgreSQL 15
    /// to 17, MariaDB to a newer series). The old data stays untouched for the way back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reload: Vec<String>,
}

/// A file the upgrade places into the project directory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative path inside the package.
    #[serde(default)]
    pub src: String,
    /// Relative path inside the project directory.
    #[serde(default)]
    pub dest: String,
}

/// Changes to the project's `.env` file (see [`apply_env`](super::apply_env)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvChanges {
    #[serde(default = "default_env_file")]
    pub file: String,
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub unset: Vec<String>,
}

impl Default for EnvChanges {
    fn default() -> Self {
        Self { file: default_env_file(), set: BTreeMap::new(), unset: Vec::new() }
    }
}

/// When a hook runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum When {
    /// In a running container of the service, once the new version is up.
    #[default]
    AfterStart,
    /// In a one-off container of the service's new image, with its volumes and env, after the
    /// new version's containers are created and before any of them starts (migrations).
    BeforeStart,
}

/// A command run for a service of the new version: in its running container after the new
/// version started, or (`when = "before-start"`) in a one-off container before it starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub command: Vec<String>,
    /// Seconds.
    #[serde(default = "default_hook_timeout")]
    pub timeout: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default)]
    pub when: When,
}

/// An HTTP check of the health gate. The URL's host may be a compose service name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub url: String,
    #[serde(default = "default_expect_status")]
    pub expect_status: u16,
    /// A substring the response body must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_body: Option<String>,
    /// Seconds.
    #[serde(default = "default_probe_timeout")]
    pub timeout: u64,
}

fn default_env_file() -> String {
    ".env".into()
}

fn default_hook_timeout() -> u64 {
    300
}

fn default_expect_status() -> u16 {
    200
}

fn default_probe_timeout() -> u64 {
    60
}

impl PackageManifest {
    /// Parses manifest text. Syntax errors and unknown keys are one problem each.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        toml::from_str(text).map_err(|e| {
            let mut msg = format!("{MANIFEST_FILE}: {}", e.to_string().trim_end());
            // The classic TOML trap: a top-level key written after a [table] belongs to it.
            let top = ["name", "version", "min_from", "description", "images", "files", "hooks", "probes"];
            if top.iter().any(|k| msg.contains(&format!("unknown field `{k}`"))) {
                msg.push_str(
                    "\n(top-level keys must come before the first [table] or [[table]] in the file)",
                );
            }
            msg
        })
    }

    /// Reads and validates the manifest of the package rooted at `root`.
    pub fn load(root: &Path) -> Result<Self> {
        let path = root.join(MANIFEST_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::invalid(root, format!("{MANIFEST_FILE} not found")));
            }
            Err(e) => return Err(Error::io(&path)(e)),
        };
        let manifest = Self::parse(&text).map_err(|p| Error::invalid(root, p))?;
        let problems = manifest.problems(Some(root));
        if problems.is_empty() {
            Ok(manifest)
        } else {
            Err(Error::Invalid { path: root.to_owned(), problems })
        }
    }

    /// Every problem with the manifest; with `root`, also checks that the files it names exist
    /// as regular files inside the package.
    pub fn problems(&self, root: Option<&Path>) -> Vec<String> {
        let mut p = Vec::new();
        if self.name.trim().is_empty() {
            p.push("`name` is required".to_owned());
        }
        if self.version.is_empty() {
            p.push("`version` is required".to_owned());
        } else if let Err(e) = self.version.parse::<Version>() {
            p.push(format!("`version`: {e}"));
        }
        if let Some(Err(e)) = self.min_from.as_deref().map(str::parse::<Version>) {
            p.push(format!("`min_from`: {e}"));
        }
        let canonical_root = root.map(|r| r.canonicalize().map_err(|e| (r, e)));
        let mut dests = HashSet::new();
        for (i, f) in self.files.iter().enumerate() {
            check_src(&mut p, &format!("files[{i}].src"), &f.src, canonical_root.as_ref());
            match rel_path_problem(&f.dest) {
                Some(why) => p.push(format!("files[{i}].dest {:?} {why}", f.dest)),
                None if !dests.insert(f.dest.as_str()) => {
                    p.push(format!("files[{i}].dest {:?} is named twice", f.dest));
                }
                None => {}
            }
        }
        if let Some(env) = &self.env {
            env_problems(&mut p, env);
        }
        for (i, image) in self.images.iter().enumerate() {
            check_src(&mut p, &format!("images[{i}]"), image, canonical_root.as_ref());
        }
        for (i, h) in self.hooks.iter().enumerate() {
            let at = format!("hooks[{i}]");
            if h.name.trim().is_empty() {
                p.push(format!("{at}.name is required"));
            }
            if h.service.trim().is_empty() {
                p.push(format!("{at}.service is required"));
            }
            if h.command.is_empty() || h.command[0].is_empty() {
                p.push(format!("{at}.command must be a non-empty list, e.g. [\"sh\", \"-c\", \"...\"]"));
            }
            if h.timeout == 0 {
                p.push(format!("{at}.timeout must be at least 1 second"));
            }
        }
        let mut reloads = HashSet::new();
        for (i, service) in self.reload.iter().enumerate() {
            if service.trim().is_empty() {
                p.push(format!("reload[{i}] must name a service"));
            } else if !reloads.insert(service.as_str()) {
                p.push(format!("reload[{i}]: service {service:?} is named twice"));
            }
        }
        for (i, probe) in self.probes.iter().enumerate() {
            let at = format!("probes[{i}]");
            if probe.name.trim().is_empty() {
                p.push(format!("{at}.name is required"));
            }
            if let Some(why) = url_problem(&probe.url) {
                p.push(format!("{at}.url {:?} {why}", probe.url));
            }
            if !(100..=599).contains(&probe.expect_status) {
                p.push(format!("{at}.expect_status {} is not an HTTP status", probe.expect_status));
            }
            if probe.timeout == 0 {
                p.push(format!("{at}.timeout must be at least 1 second"));
            }
        }
        p
    }
}

type CanonicalRoot<'a> = std::result::Result<std::path::PathBuf, (&'a Path, std::io::Error)>;

/// Checks a path naming a file in the package: safe, and (with a root) a regular file that,
/// symlinks resolved, is still inside the root.
fn check_src(p: &mut Vec<String>, at: &str, rel: &str, root: Option<&CanonicalRoot<'_>>) {
    if let Some(why) = rel_path_problem(rel) {
        p.push(format!("{at} {rel:?} {why}"));
        return;
    }
    let root = match root {
        None => return,
        Some(Ok(root)) => root,
        Some(Err((root, e))) => {
            p.push(format!("{at} {rel:?}: cannot resolve the package root {}: {e}", root.display()));
            return;
        }
    };
    match root.join(rel).canonicalize() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            p.push(format!("{at} {rel:?} does not exist in the package"));
        }
        Err(e) => p.push(format!("{at} {rel:?}: {e}")),
        Ok(real) if !real.starts_with(root) => {
            p.push(format!("{at} {rel:?} is a symlink leading outside the package"));
        }
        Ok(real) => match fs::metadata(&real) {
            Ok(m) if m.is_file() => {}
            Ok(_) => p.push(format!("{at} {rel:?} is not a regular file")),
            Err(e) => p.push(format!("{at} {rel:?}: {e}")),
        },
    }
}

fn env_problems(p: &mut Vec<String>, env: &EnvChanges) {
    if let Some(why) = rel_path_problem(&env.file) {
        p.push(format!("env.file {:?} {why}", env.file));
    }
    for (key, value) in &env.set {
        if !is_env_key(key) {
            p.push(format!("env.set key {key:?} is not a variable name (letters, digits, `_`)"));
        }
        if value.contains(['\n', '\r']) {
            p.push(format!("env.set.{key} contains a line break, which a .env line cannot hold"));
        }
        if env.unset.contains(key) {
            p.push(format!("env key {key:?} is both set and unset"));
        }
    }
    for key in &env.unset {
        if !is_env_key(key) {
            p.push(format!("env.unset key {key:?} is not a variable name (letters, digits, `_`)"));
        }
    }
}

pub(crate) fn is_env_key(key: &str) -> bool {
    let mut bytes = key.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn url_problem(url: &str) -> Option<String> {
    if url.is_empty() {
        return Some("is required".into());
    }
    let uri: ureq::http::Uri = match url.parse() {
        Ok(uri) => uri,
        Err(e) => return Some(format!("is not a URL: {e}")),
    };
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Some(
                "uses https, which probes do not support: the health gate talks plain HTTP to \
                 containers on the compose network; use http://"
                    .into(),
            );
        }
        _ => return Some("must start with http://".into()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Some("has no host (use a compose service name, e.g. http://app:8080/)".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_optional_keys() {
        let m = PackageManifest::parse(
            "name = \"x\"\nversion = \"1\"\n[env]\n[[hooks]]\nname = \"h\"\nservice = \"db\"\n\
             command = [\"true\"]\n[[probes]]\nname = \"p\"\nurl = \"http://app/\"\n",
        )
        .unwrap();
        assert_eq!(m.env.as_ref().unwrap().file, ".env");
        assert_eq!(m.hooks[0].timeout, 300);
        assert_eq!((m.probes[0].expect_status, m.probes[0].timeout), (200, 60));
        assert!(m.problems(None).is_empty(), "{:?}", m.problems(None));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = PackageManifest::parse("name = \"x\"\nversion = \"1\"\nimage = []\n").unwrap_err();
        assert!(e.contains("image"), "{e}");
    }

    #[test]
    fn top_level_key_after_a_table_gets_a_hint() {
        let e = PackageManifest::parse("name = \"x\"\nversion = \"1\"\n[env]\nimages = []\n").unwrap_err();
        assert!(e.contains("before the first [table]"), "{e}");
    }

    #[test]
    fn reload_names_each_service_once() {
        let m = PackageManifest::parse("name = \"x\"\nversion = \"1\"\nreload = [\"db\"]\n").unwrap();
        assert_eq!(m.reload, ["db"]);
        assert!(m.problems(None).is_empty());
        let m = PackageManifest::parse("name = \"x\"\nversion = \"1\"\nreload = [\"db\", \"\", \"db\"]\n")
            .unwrap();
        let p = m.problems(None).join("; ");
        assert!(p.contains("reload[1] must name a service") && p.contains("named twice"), "{p}");
    }

    #[test]
    fn probe_urls() {
        assert!(url_problem("http://app:8080/version").is_none());
        assert!(url_problem("https://app/").unwrap().contains("https"));
        assert!(url_problem("ftp://app/").is_some());
        assert!(url_problem("app:8080").is_some());
        assert!(url_problem("not a url").is_some());
    }
}
