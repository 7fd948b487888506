//! What the project holds at one moment: each data tree as a map of path -> (kind, mode,
//! owner, mtime, sha256), the configs, the images its services run, and what nuwax says
//! (catalog, version, upgrade history).

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::project::Project;

/// Relative path -> "kind mode uid:gid [mtime sha256 | -> target]".
pub type Tree = BTreeMap<String, String>;

/// The trees compared, by name: the two volumes, the bind mount, the configs.
pub const TREES: [&str; 4] = ["dbdata", "cache", "uploads", "configs"];

/// Files the demo's services write all the time while they run: never compared.
pub fn live(tree: &str, rel: &str) -> bool {
    match tree {
        "dbdata" => rel == "journal.log",
        "cache" => matches!(rel, "runs" | "pages/index.html" | "pages/index.html.tmp"),
        _ => false,
    }
}

/// The configs nuwax backs up, in the project directory.
const CONFIGS: [&str; 3] = [".env", "compose.yaml", "nuwax.toml"];

/// The data trees and configs of `p`, live files left out.
pub fn trees(p: &Project) -> Result<BTreeMap<String, Tree>> {
    let mut out = BTreeMap::new();
    for key in ["dbdata", "cache"] {
        out.insert(key.to_string(), tree(&p.volume_path(key)?, key)?);
    }
    out.insert("uploads".into(), tree(&p.dir.join("uploads"), "uploads")?);
    let mut configs = Tree::new();
    for f in CONFIGS {
        let path = p.dir.join(f);
        if path.symlink_metadata().is_ok() {
            configs.insert(f.to_string(), node(&path)?);
        }
    }
    out.insert("configs".into(), configs);
    Ok(out)
}

/// Everything under `root` (not following symlinks), live files of `name` left out.
pub fn tree(root: &Path, name: &str) -> Result<Tree> {
    let mut out = Tree::new();
    for e in walkdir::WalkDir::new(root).follow_links(false).min_depth(1).sort_by_file_name() {
        let e = e.with_context(|| format!("walking {}", root.display()))?;
        let rel = e.path().strip_prefix(root).unwrap_or(e.path()).to_string_lossy().into_owned();
        if live(name, &rel) {
            continue;
        }
        out.insert(rel, node(e.path())?);
    }
    Ok(out)
}

fn node(path: &Path) -> Result<String> {
    let md = path.symlink_metadata().with_context(|| format!("stat {}", path.display()))?;
    let ft = md.file_type();
    let head = format!("{:o} {}:{}", md.mode() & 0o7777, md.uid(), md.gid());
    Ok(if ft.is_symlink() {
        format!("symlink {head} -> {}", std::fs::read_link(path)?.display())
    } else if ft.is_dir() {
        // Directory mtimes move whenever an entry is added or removed: not compared.
        format!("dir {head}")
    } else if ft.is_file() {
        format!("file {head} {} {}", md.mtime(), sha256(path)?)
    } else {
        format!("other {head}")
    })
}

pub fn sha256(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Up to `max` differences between two trees, one per line.
pub fn diff(expected: &Tree, actual: &Tree, max: usize) -> String {
    let mut d = Vec::new();
    for (k, v) in expected {
        match actual.get(k) {
            None => d.push(format!("missing {k}")),
            Some(w) if w != v => d.push(format!("changed {k}: {v} => {w}")),
            _ => {}
        }
    }
    for k in actual.keys().filter(|k| !expected.contains_key(*k)) {
        d.push(format!("extra {k}"));
    }
    let n = d.len();
    d.truncate(max);
    if n > max {
        d.push(format!("... {} more", n - max));
    }
    d.join("; ")
}

/// The project as nuwax and the engine see it.
#[derive(Debug, Clone)]
pub struct State {
    pub trees: BTreeMap<String, Tree>,
    /// Service -> image id it runs.
    pub images: BTreeMap<String, String>,
    /// `nuwax --json list`.
    pub backups: Vec<Value>,
    /// `nuwax status --json`'s service_version.
    pub version: Option<String>,
    /// `nuwax --json history`, newest first.
    pub history: Vec<Value>,
}

impl State {
    pub fn capture(p: &Project) -> Result<State> {
        let status = p.nuwax_json(&["status"])?;
        Ok(State {
            trees: trees(p)?,
            images: p.images(),
            backups: array(p.nuwax_json(&["list"])?),
            version: status["service_version"].as_str().map(String::from),
            history: array(p.nuwax_json(&["history"])?),
        })
    }

    /// The backup row `id`.
    pub fn backup(&self, id: i64) -> Option<&Value> {
        self.backups.iter().find(|b| b["id"].as_i64() == Some(id))
    }

    pub fn complete(&self) -> impl Iterator<Item = &Value> {
        self.backups.iter().filter(|b| b["status"] == "complete")
    }
}

pub fn array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        _ => Vec::new(),
    }
}

/// A row's archive path.
pub fn path_of(row: &Value) -> Option<PathBuf> {
    row["path"].as_str().map(PathBuf::from)
}
