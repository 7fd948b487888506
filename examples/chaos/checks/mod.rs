//! The invariants, checked after the operation and the next command. Each violation names its
//! invariant and says what was found. What each operation may change is in outcome.rs.

mod outcome;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use crate::images::Images;
use crate::plan::{Op, Package, Plan, Signal};
use crate::project::{Project, SERVICES};
use crate::sh::{self, Exit};
use crate::state::{State, Tree, path_of};

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
    /// nuwax printed nothing before it ended.
    pub silent: bool,
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
        Op::Backup | Op::Prune => outcome::unchanged(f, &after, &mut v),
        Op::Rollback => outcome::rollback(f, &after, &mut v),
        Op::Upgrade => outcome::upgrade(f, &after, &mut v),
    }
    v
}

/// A signalled command exits 130/143, unless it completed first (its normal code) or it is an
/// upgrade reporting its outcome (11/12); SIGKILL kills it; a signal before nuwax printed
/// anything may end it the default way.
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
        // A signal in nuwax's first milliseconds, before it installed its handlers, ends it the
        // default way (a shell shows 130/143); fine as long as it had done nothing yet.
        (true, Signal::IntGroup, Exit::Signal(2)) | (true, Signal::TermNuwax, Exit::Signal(15))
            if f.silent =>
        {
            true
        }
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

/// The storage dir holds complete archives (and `downloads/`, the owner-only snapshot) only;
/// every complete row's file is there.
fn storage(f: &Facts, after: &State, v: &mut Vec<Violation>) {
    let complete: BTreeSet<_> = after.complete().filter_map(path_of).collect();
    let dir = f.p.storage();
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if name == "downloads" && path.is_dir() {
            continue;
        }
        // The snapshot two-phase backups copy into: kept between backups, owner-only.
        if name == ".nuwax-snapshot" && path.is_dir() {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).map(|m| m.permissions().mode()).unwrap_or(0);
            if mode & 0o077 != 0 {
                v.push(Violation::new("the snapshot is owner-only", format!("{name}: mode {mode:o}")));
            }
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
