//! The invariants, checked after the operation and the next command. Each violation names its
//! invariant and says what was found.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use crate::images::Images;
use crate::plan::{Op, Package, Plan, Signal};
use crate::project::{Project, SERVICES};
use crate::sh::{self, Exit};
use crate::state::{State, TREES, Tree, diff, path_of};

#[derive(Debug, Clone)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

impl Violation {
    pub fn new(invariant: &'static str, detail: impl Into<String>) -> Violation {
        Violation { invariant, detail: detail.into() }
    }
}

pub struct Facts<'a> {
    pub p: &'a Project<'a>,
    pub plan: &'a Plan,
    pub before: &'a State,
    /// Rollback: the target backup and the trees it holds.
    pub target: Option<(i64, &'a BTreeMap<String, Tree>)>,
    pub exit: Exit,
    /// The signal reached nuwax while it ran.
    pub hit: bool,
    pub images: &'a Images,
}

pub fn check(f: &Facts) -> Vec<Violation> {
    let mut v = Vec::new();
    exit_code(f, &mut v);
    services(f, &mut v);
    let after = match State::capture(f.p) {
        Ok(s) => s,
        Err(e) => {
            v.push(Violation::new("state readable", format!("{e:#}")));
            return v;
        }
    };
    journal(f, &after, &mut v);
    storage(f, &after, &mut v);
    leftovers(f, &mut v);
    keep_tags(f, &after, &mut v);
    catalog(f, &after, &mut v);
    match f.plan.op {
        Op::Backup | Op::Prune => unchanged(f, &after, &mut v),
        Op::Rollback => rollback(f, &after, &mut v),
        Op::Upgrade => upgrade(f, &after, &mut v),
    }
    v
}

/// A signalled command exits 130/143, unless it completed first (its normal code) or it is an
/// upgrade reporting its outcome (11/12); SIGKILL kills it.
fn exit_code(f: &Facts, v: &mut Vec<Violation>) {
    let normal: &[i32] = match (f.plan.op, f.plan.package) {
        (Op::Upgrade, Package::V3Broken) => &[11],
        _ => &[0],
    };
    let upgrade = f.plan.op == Op::Upgrade;
    let ok = match (f.hit, f.plan.signal, f.exit) {
        (_, _, Exit::TimedOut) => {
            v.push(Violation::new(
                "no hang",
                format!("still running after {} s", crate::project::TIMEOUT.as_secs()),
            ));
            return;
        }
        (false, _, Exit::Code(c)) => normal.contains(&c),
        (true, Signal::KillNuwax | Signal::KillGroup, Exit::Signal(9)) => true,
        (true, _, Exit::Code(c)) if normal.contains(&c) || c == 0 => true,
        (true, _, Exit::Code(11 | 12)) if upgrade => true,
        (true, Signal::IntGroup, Exit::Code(130)) | (true, Signal::TermNuwax, Exit::Code(143)) => true,
        _ => false,
    };
    if !ok {
        let sig = if f.hit { f.plan.signal.name() } else { "no signal" };
        v.push(Violation::new("exit code", format!("{} after {sig}", f.exit)));
    }
}

/// Every service that ran before runs again (healthy), and nothing else of the project does.
fn services(f: &Facts, v: &mut Vec<Violation>) {
    let want: Vec<&str> = f.before.images.keys().map(String::as_str).collect();
    if let Err(e) = f.p.wait_healthy(&want, Duration::from_secs(90)) {
        v.push(Violation::new("services running", e));
    }
    let cs = f.p.containers();
    let stray: Vec<String> = cs
        .iter()
        .filter(|c| !want.contains(&c.service.as_str()))
        .map(|c| format!("{} ({})", c.name, c.state))
        .collect();
    if !stray.is_empty() {
        v.push(Violation::new("no stray containers", stray.join(", ")));
    }
    for s in &want {
        let n = cs.iter().filter(|c| c.service == *s).count();
        if n > 1 {
            v.push(Violation::new("no stray containers", format!("{n} containers of service {s}")));
        }
    }
}

/// No pending backup, no unfinished operation, nothing left for `nuwax recover`, no upgrade
/// recorded as still running.
fn journal(f: &Facts, after: &State, v: &mut Vec<Violation>) {
    for b in after.backups.iter().filter(|b| b["status"] == "pending") {
        v.push(Violation::new("no pending backup", format!("backup {} is pending", b["id"])));
    }
    match f.p.nuwax_json(&["status"]) {
        Ok(s) => {
            if s["unfinished_operations"].as_array().is_some_and(|a| !a.is_empty()) {
                v.push(Violation::new("no unfinished operation", s["unfinished_operations"].to_string()));
            }
            if !s["running_operation"].is_null() {
                v.push(Violation::new(
                    "no unfinished operation",
                    format!("status: {}", s["running_operation"]),
                ));
            }
        }
        Err(e) => v.push(Violation::new("status works", format!("{e:#}"))),
    }
    match f.p.nuwax_json(&["recover"]) {
        Ok(Value::Array(a)) if a.is_empty() => {}
        Ok(other) => v.push(Violation::new("recover has nothing to do", other.to_string())),
        Err(e) => v.push(Violation::new("recover has nothing to do", format!("{e:#}"))),
    }
    for h in after.history.iter().filter(|h| h["status"] == "running") {
        v.push(Violation::new(
            "no running upgrade",
            format!(
                "upgrade {} ({} -> {}) is still `running` in history",
                h["id"], h["from_version"], h["to_version"]
            ),
        ));
    }
    let out = f.p.nuwax(&["verify", "--all"]);
    if !out.ok() {
        v.push(Violation::new("complete backups verify", out.brief()));
    }
}

/// The storage dir holds complete archives (and `downloads/`) only; every complete row's file
/// is there.
fn storage(f: &Facts, after: &State, v: &mut Vec<Violation>) {
    let complete: BTreeSet<_> = after.complete().filter_map(path_of).collect();
    let dir = f.p.storage();
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if name == "downloads" && path.is_dir() {
            continue;
        }
        if name.starts_with("backup_") {
            if !complete.contains(&path) {
                let row = after.backups.iter().find(|b| path_of(b).as_ref() == Some(&path));
                let what =
                    row.map_or("no row".to_string(), |r| format!("backup {} is {}", r["id"], r["status"]));
                v.push(Violation::new("no complete-looking partial file", format!("{name} ({what})")));
            }
            continue;
        }
        v.push(Violation::new("no stray files in storage", name));
    }
    for p in &complete {
        if !sh::exists(p) {
            v.push(Violation::new("complete backups have their archive", p.display().to_string()));
        }
    }
}

/// No staging or old trees (`.*.nuwax-new-*`, `.*.nuwax-old-*`) beside the configs, the bind
/// mount or the volumes; no carrier container left.
fn leftovers(f: &Facts, v: &mut Vec<Violation>) {
    let mut found = Vec::new();
    for e in std::fs::read_dir(&f.p.dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.contains(".nuwax-") {
            found.push(name);
        }
    }
    for key in ["dbdata", "cache"] {
        let Ok(data) = f.p.volume_path(key) else { continue };
        let Some(parent) = data.parent() else { continue };
        for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
            if e.file_name() != "_data" {
                found.push(e.path().display().to_string());
            }
        }
    }
    let carriers = crate::project::quiet(std::process::Command::new("docker").args([
        "ps",
        "-a",
        "--format",
        "{{.Names}}",
        "--filter",
        &format!("name=nuwax-restore-{}_", f.p.name),
    ]));
    found.extend(carriers.split_whitespace().map(|c| format!("container {c}")));
    if !found.is_empty() {
        v.push(Violation::new("no leftovers beside the data", found.join(", ")));
    }
}

/// Each complete backup keeps its services' images tagged; a backup gone from the catalog has
/// released its tags.
fn keep_tags(f: &Facts, after: &State, v: &mut Vec<Violation>) {
    let tags: BTreeSet<String> =
        crate::run::image_tags(&format!("nuwax-keep/{}-*", f.p.name)).into_iter().collect();
    for b in after.complete() {
        let id = b["id"].as_i64().unwrap_or_default();
        let missing: Vec<&str> = SERVICES
            .iter()
            .copied()
            .filter(|s| !tags.contains(&format!("nuwax-keep/{}-{s}:backup-{id}", f.p.name)))
            .collect();
        if !missing.is_empty() {
            v.push(Violation::new(
                "complete backups keep their images",
                format!("backup {id}: no tag for {missing:?}"),
            ));
        }
    }
    for b in &f.before.backups {
        let id = b["id"].as_i64().unwrap_or_default();
        if after.backup(id).is_none() {
            let left: Vec<&String> = tags.iter().filter(|t| t.ends_with(&format!(":backup-{id}"))).collect();
            if !left.is_empty() {
                v.push(Violation::new(
                    "removed backups release their images",
                    format!("backup {id}: {left:?}"),
                ));
            }
        }
    }
}

/// Rows keep their status; only a prune removes rows, and never one whose file stays; new rows
/// are complete or failed.
fn catalog(f: &Facts, after: &State, v: &mut Vec<Violation>) {
    for b in &f.before.backups {
        let id = b["id"].as_i64().unwrap_or_default();
        match after.backup(id) {
            Some(a) if a["status"] != b["status"] => v.push(Violation::new(
                "catalog rows keep their status",
                format!("backup {id}: {} -> {}", b["status"], a["status"]),
            )),
            Some(_) => {}
            None if f.plan.op != Op::Prune => {
                v.push(Violation::new("catalog rows stay", format!("backup {id} ({}) is gone", b["status"])))
            }
            None => {
                if let Some(p) = path_of(b).filter(|p| sh::exists(p)) {
                    v.push(Violation::new(
                        "a pruned backup's file goes",
                        format!("backup {id} left the catalog, {} is still there", p.display()),
                    ));
                }
            }
        }
    }
    let new: Vec<&Value> =
        after.backups.iter().filter(|a| f.before.backup(a["id"].as_i64().unwrap_or(-1)).is_none()).collect();
    for a in &new {
        if a["status"] != "complete" && a["status"] != "failed" && a["status"] != "pending" {
            v.push(Violation::new(
                "new backups end complete or failed",
                format!("backup {} is {}", a["id"], a["status"]),
            ));
        }
    }
    match f.plan.op {
        Op::Backup => {
            let complete = new.iter().filter(|a| a["status"] == "complete").count();
            if new.len() > 1 || (f.exit.ok() && complete != 1) {
                let rows: Vec<String> = new.iter().map(|a| format!("{} {}", a["id"], a["status"])).collect();
                v.push(Violation::new("a backup adds one row", format!("{} with new rows {rows:?}", f.exit)));
            }
        }
        Op::Prune => {
            let mut ids: Vec<i64> = f.before.complete().filter_map(|b| b["id"].as_i64()).collect();
            ids.sort_unstable();
            if let Some(newest) = ids.last()
                && after.backup(*newest).is_none_or(|a| a["status"] != "complete")
            {
                v.push(Violation::new(
                    "prune keeps the newest complete backup",
                    format!("backup {newest} is gone"),
                ));
            }
            if f.exit.ok() {
                let keep: BTreeSet<i64> = ids.iter().rev().take(f.plan.keep_last as usize).copied().collect();
                let now: BTreeSet<i64> = after.backups.iter().filter_map(|a| a["id"].as_i64()).collect();
                if keep != now {
                    v.push(Violation::new(
                        "prune keeps what the policy keeps",
                        format!("kept {now:?}, expected {keep:?}"),
                    ));
                }
            }
        }
        Op::Rollback | Op::Upgrade => {}
    }
}

/// A backup or a prune changes no data, no config, no image, no version.
fn unchanged(f: &Facts, after: &State, v: &mut Vec<Violation>) {
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
fn rollback(f: &Facts, after: &State, v: &mut Vec<Violation>) {
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
fn upgrade(f: &Facts, after: &State, v: &mut Vec<Violation>) {
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
        if let Some(s) = status.as_deref().filter(|s| !matches!(*s, "rolled_back" | "failed")) {
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
