//! The demo images, built once per harness invocation (v1, and v2/v3 when upgrades run) and
//! tagged per run. Builds and removals hold the file lock the tests hold
//! (`$TMPDIR/nuwax-test-images.lock`, see tests/support): removing a tag also removes the
//! untagged parent images another build may be reusing from the legacy builder's cache.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{Context, Result, ensure};

use crate::project::{TIMEOUT, quiet};
use crate::sh::{self, Log};

pub struct Images {
    /// `nuwax-chaos-base-<id>`: its tags `:1`, `:2`, `:3` are the builds.
    pub base: String,
    /// Version -> image id.
    pub ids: BTreeMap<u32, String>,
}

struct Lock(#[allow(dead_code)] std::fs::File);

fn lock() -> Result<Lock> {
    let path = std::env::temp_dir().join("nuwax-test-images.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.lock().with_context(|| format!("locking {}", path.display()))?;
    Ok(Lock(f))
}

impl Images {
    /// Builds the demo image of each of `versions` with compose/demo/build-images.
    pub fn build(repo: &std::path::Path, id: &str, versions: &[u32], log: &Log) -> Result<Images> {
        let base = format!("nuwax-chaos-base-{id}");
        let mut ids = BTreeMap::new();
        for v in versions {
            let tag = format!("{base}:{v}");
            let out = {
                let _l = lock()?;
                sh::run(
                    Command::new(repo.join("compose/demo/build-images")).arg(&tag).arg(v.to_string()),
                    log,
                    TIMEOUT,
                )
            };
            ensure!(out.ok(), "build-images {tag}: {}", out.brief());
            let image = quiet(Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", &tag]));
            ensure!(!image.trim().is_empty(), "no image {tag} after building it");
            ids.insert(*v, image.trim().to_string());
        }
        Ok(Images { base, ids })
    }

    /// Tags the build of `version` as `tag`.
    pub fn tag(&self, version: u32, tag: &str, log: &Log) -> Result<()> {
        let from = format!("{}:{version}", self.base);
        let out = sh::run(Command::new("docker").args(["tag", &from, tag]), log, TIMEOUT);
        ensure!(out.ok(), "docker tag {from} {tag}: {}", out.brief());
        Ok(())
    }

    pub fn id(&self, version: u32) -> &str {
        self.ids.get(&version).map(String::as_str).unwrap_or("")
    }

    /// Removes the builds' tags (the runs' tags are gone by then).
    pub fn remove_all(&self, log: &Log) {
        let tags: Vec<String> = self.ids.keys().map(|v| format!("{}:{v}", self.base)).collect();
        remove(&tags, log);
    }
}

/// `docker image rm TAG` for each tag on its own (a missing one must not keep the others), under
/// the lock; tags that do not exist are skipped quietly.
pub fn remove(tags: &[String], log: &Log) {
    let Ok(_l) = lock() else { return };
    for t in tags {
        let exists = quiet(Command::new("docker").args(["image", "inspect", "--format", "x", t]));
        if !exists.trim().is_empty() {
            let _ = sh::run(Command::new("docker").args(["image", "rm", t]), log, TIMEOUT);
        }
    }
}
