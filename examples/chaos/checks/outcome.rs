//! What each operation may change: nothing (backup, prune), everything or nothing to the
//! target backup (rollback), or one whole version (upgrade).

use super::{Facts, Violation};
use crate::plan::Package;
use crate::project::SERVICES;
use crate::sh::Exit;
use crate::state::{State, TREES, Tree, diff};

/// A backup or a prune changes no data, no config, no image, no version.
pub fn unchanged(f: &Facts, after: &State, v: &mut Vec<Violation>) {
    for key in TREES {
        let (b, a) = (&f.before.trees[key], &after.trees[key]);
        if a != b {
            v.push(Violation::new("data unchanged", format!("{key}: {}", diff(b, a, 8))));
        }
    }
    same_images_and_version(f, after, v);
}

fn same_images_and_version(f: &Facts, after: &State, v: &mut Vec<Violation>) {
    if after.images != f.before.images {
        v.push(Violation::new("images unchanged", format!("{:?} -> {:?}", f.before.images, after.images)));
    }
    if after.version != f.before.version {
        v.push(Violation::new("version unchanged", format!("{:?} -> {:?}", f.before.version, after.version)));
    }
}

/// Each tree is exactly as before or exactly as the target backup holds it, all of them on the
/// same side; a rollback that exited 0 is on the target's side.
pub fn rollback(f: &Facts, after: &State, v: &mut Vec<Violation>) {
    let Some((id, target)) = f.target else { return };
    let mut sides: Vec<(&str, &str)> = Vec::new();
    for key in TREES {
        let (b, t, a) = (&f.before.trees[key], &target[key], &after.trees[key]);
        match (a == b, a == t) {
            (true, true) => {}
            (true, false) => sides.push((key, "before")),
            (false, true) => sides.push((key, "target")),
            (false, false) => v.push(Violation::new(
                "rollback: each tree is before or target",
                format!("{key} (backup {id}): vs target: {}; vs before: {}", diff(t, a, 6), diff(b, a, 6)),
            )),
        }
    }
    let before: Vec<&str> = sides.iter().filter(|s| s.1 == "before").map(|s| s.0).collect();
    let restored: Vec<&str> = sides.iter().filter(|s| s.1 == "target").map(|s| s.0).collect();
    if !before.is_empty() && !restored.is_empty() {
        v.push(Violation::new(
            "rollback: never a mix",
            format!("restored: {restored:?}; as before: {before:?} (backup {id})"),
        ));
    }
    if f.exit.ok() && !before.is_empty() {
        v.push(Violation::new(
            "rollback: exit 0 means restored",
            format!("as before: {before:?} (backup {id})"),
        ));
    }
    same_images_and_version(f, after, v);
}

/// The old version with its data, or the new version; status and history say which runs.
pub fn upgrade(f: &Facts, after: &State, v: &mut Vec<Violation>) {
    let (from, to) = match f.plan.package {
        Package::V2 => (1, 2),
        Package::V3Broken => (2, 3),
    };
    let old = f.before.images.get("app").cloned().unwrap_or_default();
    let new = f.images.id(to).to_string();
    let runs = |id: &str| SERVICES.iter().all(|s| after.images.get(*s).map(String::as_str) == Some(id));
    let newest = (after.history.len() > f.before.history.len()).then(|| &after.history[0]);
    let status = newest.map(|h| h["status"].as_str().unwrap_or_default().to_string());
    if runs(&old) {
        for key in TREES {
            let (b, a) = (&f.before.trees[key], &after.trees[key]);
            if a != b {
                v.push(Violation::new(
                    "upgrade: old version with its data",
                    format!("{key}: {}", diff(b, a, 8)),
                ));
            }
        }
        if after.version != f.before.version {
            v.push(Violation::new(
                "upgrade: status says what runs",
                format!("v{from} runs, status says {:?}", after.version),
            ));
        }
        // (`running` is reported on its own, see `journal`.)
        if let Some(s) = status.as_deref().filter(|s| !matches!(*s, "rolled_back" | "failed" | "running")) {
            v.push(Violation::new(
                "upgrade: history says what runs",
                format!("v{from} runs, history says {s}"),
            ));
        }
        if f.exit.ok() {
            v.push(Violation::new("upgrade: exit code says what runs", format!("exit 0 but v{from} runs")));
        }
    } else if runs(&new) {
        if f.plan.package == Package::V3Broken {
            v.push(Violation::new("upgrade: a broken version never stays", "v3-broken runs"));
        }
        // The demo's own files follow the version (migration, hook); everything else stays.
        let demo = |t: &Tree| -> Tree {
            t.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "data.db" | "schema_version" | "hooks.log"))
                .map(|(k, x)| (k.clone(), x.clone()))
                .collect()
        };
        for key in ["dbdata", "cache", "uploads"] {
            let (b, a) = (demo(&f.before.trees[key]), demo(&after.trees[key]));
            if a != b {
                v.push(Violation::new("upgrade: data kept", format!("{key}: {}", diff(&b, &a, 8))));
            }
        }
        let schema =
            f.p.volume_path("dbdata")
                .ok()
                .and_then(|d| std::fs::read_to_string(d.join("schema_version")).ok());
        if schema.as_deref().map(str::trim) != Some(&to.to_string()) {
            v.push(Violation::new(
                "upgrade: the db migrated",
                format!("v{to} runs, schema_version {schema:?}"),
            ));
        }
        let env = std::fs::read_to_string(f.p.dir.join(".env")).unwrap_or_default();
        if !env.lines().any(|l| l == format!("APP_VERSION={to}")) {
            v.push(Violation::new("upgrade: .env says what runs", format!("v{to} runs, .env: {env:?}")));
        }
        if after.version.as_deref() != Some(&to.to_string()) {
            v.push(Violation::new(
                "upgrade: status says what runs",
                format!("v{to} runs, status says {:?}", after.version),
            ));
        }
        if status.as_deref() != Some("upgraded") {
            v.push(Violation::new(
                "upgrade: history says what runs",
                format!("v{to} runs, history says {status:?}"),
            ));
        }
        if matches!(f.exit, Exit::Code(11 | 12)) {
            v.push(Violation::new("upgrade: exit code says what runs", format!("{} but v{to} runs", f.exit)));
        }
    } else {
        v.push(Violation::new(
            "upgrade: one version runs",
            format!("images {:?}; v{from} is {old}, v{to} is {new}", after.images),
        ));
    }
}
