//! Text and JSON rendering of command results. Data goes to stdout; notices to stderr.

use std::path::Path;

use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use serde_json::json;

use super::Cli;
use super::out::{errln, outln};
use crate::archive::VerifyReport;
use crate::archive::manifest::Manifest;
use crate::catalog::{BackupRecord, Operation};
use crate::engine::compose_cli::{ComposeCli, ComposeMissing};
use crate::engine::{Container, EngineInfo};
use crate::flows::backup::BackupOutcome;
use crate::flows::recover::Recovered;
use crate::fsutil::{human_bytes, human_ms};
use crate::project::Project;

pub(super) fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    t
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

pub fn backup(cli: &Cli, o: &BackupOutcome) {
    if cli.json {
        outln!("{}", serde_json::to_string_pretty(o).unwrap_or_default());
        return;
    }
    outln!("backup {} complete: {}", o.id, o.path.display());
    let dumped: u64 = o.dumps.iter().map(|d| d.bytes).sum();
    let total = o.content_bytes + dumped;
    let ratio = if o.size_bytes > 0 { total as f64 / o.size_bytes as f64 } else { 1.0 };
    let dumps = match o.dumps.len() {
        0 => String::new(),
        n => format!(" and {} in {n} database dump{}", human_bytes(dumped), if n == 1 { "" } else { "s" }),
    };
    outln!(
        "  size {} ({} of data in {} files{dumps}, ratio {ratio:.2}x, {})",
        human_bytes(o.size_bytes),
        human_bytes(o.content_bytes),
        o.file_count,
        o.compression
    );
    outln!(
        "  duration {} (archive {}, sync {}, verify {}), downtime {}",
        human_ms(o.duration_ms),
        human_ms(o.archive_ms),
        human_ms(o.sync_ms),
        human_ms(o.verify_ms),
        o.downtime_ms.map(human_ms).unwrap_or_else(|| "none (services not stopped)".into())
    );
    match (o.precopy_ms, o.delta_bytes, &o.single_phase) {
        (Some(pre), Some(delta), _) => outln!(
            "  copied while running in {}; while stopped only what changed since: {}",
            human_ms(pre),
            human_bytes(delta)
        ),
        (_, _, Some(why)) => outln!("  copied in one phase while stopped: {why}"),
        _ => {}
    }
    if !o.stop_windows.is_empty() {
        outln!("  stopped one group at a time (stop = \"each\"): each group is its own point in time");
        for w in &o.stop_windows {
            let ms = w.stopped_ms.map(human_ms).unwrap_or_else(|| "-".into());
            outln!("    {} down {ms}", w.services.join(", "));
        }
    } else if !o.services_stopped.is_empty() {
        let stopped: Vec<&String> =
            o.services_stopped.iter().filter(|s| !o.services_paused.contains(s)).collect();
        if !stopped.is_empty() {
            let names: Vec<&str> = stopped.iter().map(|s| s.as_str()).collect();
            outln!("  services stopped and started again: {}", names.join(", "));
        }
        if !o.services_paused.is_empty() {
            outln!("  services paused and unpaused (backup = \"pause\"): {}", o.services_paused.join(", "));
        }
    }
    for d in &o.dumps {
        outln!("  dumped {} ({}) while its server ran", d.name, human_bytes(d.bytes));
    }
    for s in &o.skipped {
        outln!("  skipped {}: {}", s.path, s.reason);
    }
    if o.items.iter().any(|i| !i.point_in_time) {
        outln!("  what holds one point in time:");
        for i in &o.items {
            let yes = if i.point_in_time { "yes" } else { "no " };
            outln!("    {yes}  {}: {}", i.item, i.how);
        }
    }
    for w in backup_warnings(o.live, &o.stop_killed) {
        outln!("  warning: {w}");
    }
    for c in &o.copies {
        super::offsite::copy_line(c);
    }
}

/// `backup --dry-run`: what the backup would do; nothing was changed.
pub fn backup_preview(cli: &Cli, p: &crate::flows::backup::BackupPreview) {
    if cli.json {
        outln!("{}", serde_json::to_string_pretty(p).unwrap_or_default());
        return;
    }
    outln!("backup of {} (version {}) would, changing nothing now:", p.project, p.service_version);
    let mut t = table(&["service", "running", "taken"]);
    for s in &p.services {
        let taken = match s.how {
            "stop" if p.stop_each => "stopped with its group (stop = \"each\")",
            "stop" => "stopped, then started again",
            "pause" => "paused, then unpaused (backup = \"pause\")",
            "dump" => "keeps running: its databases are dumped",
            "live" if p.no_stop => "keeps running (--no-stop): its mounts copied live",
            "live" => "keeps running (backup = \"live\"): its mounts copied live",
            "skip" => "keeps running (backup = \"skip\"): its own mounts left out",
            _ => "not running: nothing to stop",
        };
        t.add_row(vec![
            s.service.clone(),
            if s.running { "yes" } else { "no" }.to_string(),
            taken.to_string(),
        ]);
    }
    outln!("{t}");
    for d in &p.dumps {
        let db = d.database.as_deref().map(|d| format!(" {d}")).unwrap_or_default();
        outln!(
            "  dump {} of {}{db} ({} {}, {} {})",
            d.name,
            d.service,
            d.server,
            d.server_version,
            d.format,
            d.tool_version
        );
    }
    for m in &p.mounts {
        let yes = if m.point_in_time { "one point in time" } else { "NOT one point in time" };
        outln!("  copy {}: {} ({yes})", m.item, m.how);
    }
    outln!("  copy {} config file(s): {}", p.configs.len(), p.configs.join(", "));
    for s in &p.skipped {
        outln!("  skip {}: {}", s.path, s.reason);
    }
    if p.with_images {
        outln!("  store the services' images in the archive (--with-images)");
    }
    match (&p.single_phase, p.no_stop) {
        (_, true) => {
            outln!("  copy while the services run (--no-stop): the backup is live, not one point in time")
        }
        (Some(why), _) => outln!("  copy in one phase while the services are stopped: {why}"),
        (None, _) => outln!(
            "  copy into the snapshot while the services run, then only what changed while they are stopped"
        ),
    }
    outln!("  data ~{}; room checked for {}", human_bytes(p.data_bytes), human_bytes(p.needs_bytes));
}

/// What makes a backup less than one clean point in time.
fn backup_warnings(live: bool, killed: &[String]) -> Vec<String> {
    let mut w = Vec::new();
    if live {
        w.push(
            "live: the data was copied while services ran, not at one point in time; \
             rolling back to it needs --accept-live"
                .to_string(),
        );
    }
    for s in killed {
        w.push(format!(
            "{s} did not stop within its stop timeout and was killed: its data was copied after an unclean shutdown"
        ));
    }
    w
}

/// The short flags `list` shows.
fn backup_flags(r: &BackupRecord) -> String {
    let mut f = Vec::new();
    if r.live {
        f.push("LIVE".to_string());
    }
    if !r.stop_killed.is_empty() {
        f.push(format!("KILLED at stop: {}", r.stop_killed.join(", ")));
    }
    if let Some(n) = &r.note {
        f.push(n.chars().take(70).collect());
    }
    f.join("; ")
}

pub fn rollback_plan(cli: &Cli, p: &crate::flows::rollback::Plan) {
    if cli.json {
        outln!("{}", serde_json::to_string_pretty(p).unwrap_or_default());
        return;
    }
    outln!("rollback to backup {} ({}), {}", p.backup_id, p.created_at, p.archive.display());
    outln!("  a pre-rollback safety backup is made first");
    outln!(
        "  services to stop: {}",
        if p.services_to_stop.is_empty() { "none".to_string() } else { p.services_to_stop.join(", ") }
    );
    let mut t = table(&["replace", "name", "at", "size", "files"]);
    for i in &p.items {
        let at = match (&i.volume, i.via_engine, i.create) {
            (Some(v), true, true) => format!("volume {v} (created, filled through the engine)"),
            (Some(v), true, false) => format!("volume {v} (recreated through the engine)"),
            _ => i.dest.display().to_string(),
        };
        t.add_row(vec![
            i.kind.to_string(),
            i.name.clone(),
            at,
            human_bytes(i.size),
            i.file_count.to_string(),
        ]);
    }
    outln!("{t}");
    if let Some(images) = &p.load_images {
        outln!("  load the backup's images from {images} (some are missing on this host)");
    }
    for l in &p.loads {
        let names: Vec<&str> = l.dumps.iter().map(|d| d.name.as_str()).collect();
        outln!("  load into {} {} on fresh data: {}", l.server, l.service, names.join(", "));
    }
    for q in &p.sqlite {
        outln!(
            "  write SQLite database {} of {} back from {}: {}",
            q.path,
            q.service,
            q.dump,
            q.dest.display()
        );
    }
    for i in &p.images {
        if i.current_id.as_deref() == Some(i.image_id.as_str()) {
            outln!("  image {} ({}): unchanged", i.image, i.service);
        } else {
            outln!("  image {} ({}): re-tag to {}", i.image, i.service, i.image_id);
        }
    }
    if p.start_all {
        outln!("  the project has no containers: compose creates and starts them all afterwards");
    }
    for w in &p.warnings {
        outln!("  warning: {w}");
    }
    outln!("dry run: nothing was changed");
}

pub fn rollback(cli: &Cli, o: &crate::flows::rollback::RollbackOutcome) {
    if cli.json {
        outln!("{}", serde_json::to_string_pretty(o).unwrap_or_default());
        return;
    }
    outln!("rolled back to backup {}", o.backup_id);
    outln!("  safety backup {}: {}", o.safety_backup_id, o.safety_backup_path.display());
    match (&o.safety_single_phase, o.safety_precopy_ms) {
        (Some(why), _) => outln!("    made inside the stop ({why})"),
        (None, Some(ms)) => outln!(
            "    copied while running ({}), only the changes while stopped; archive written after the start",
            human_ms(ms)
        ),
        (None, None) => {}
    }
    for i in &o.restored {
        outln!("  restored {} {} ({}, {} files)", i.kind, i.name, human_bytes(i.size), i.file_count);
    }
    for i in &o.images_retagged {
        outln!("  image {} of {} points at {} again", i.image, i.service, i.image_id);
    }
    outln!(
        "  duration {}, downtime {}",
        human_ms(o.duration_ms),
        o.downtime_ms.map(human_ms).unwrap_or_else(|| "none".into())
    );
}

pub fn imported(cli: &Cli, i: &crate::flows::import::Imported) {
    if cli.json {
        outln!("{}", serde_json::to_string_pretty(i).unwrap_or_default());
        return;
    }
    outln!("imported as backup {}: {}", i.id, i.path.display());
    outln!(
        "  from {} (backup {} of project {}), {}, verified",
        i.source.display(),
        i.from_backup_id,
        i.from_project,
        human_bytes(i.size_bytes)
    );
}

pub fn list(cli: &Cli, records: &[BackupRecord]) {
    if cli.json {
        outln!("{}", serde_json::to_string_pretty(records).unwrap_or_default());
        return;
    }
    if records.is_empty() {
        outln!("no backups yet (nuwax backup makes one)");
        return;
    }
    let mut t = table(&[
        "id",
        "kind",
        "status",
        "version",
        "created (UTC)",
        "size",
        "downtime",
        "note",
        "where",
        "path / error",
    ]);
    for r in records {
        let created = r.created_at.get(..19).unwrap_or(&r.created_at).replace('T', " ");
        let last =
            if r.status == "failed" { opt(r.error.clone()) } else { opt(r.path.as_deref().map(file_name)) };
        t.add_row(vec![
            r.id.to_string(),
            r.kind.clone(),
            r.status.clone(),
            r.service_version.clone(),
            created,
            opt(r.size_bytes.map(|s| human_bytes(s as u64))),
            opt(r.downtime_ms.map(|d| human_ms(d as u64))),
            backup_flags(r),
            places(r),
            last,
        ]);
    }
    outln!("{t}");
}

/// Where a backup's archive is: "here", and each remote (pending ones marked so).
fn places(r: &BackupRecord) -> String {
    let here = r.path.is_some() && r.status == "complete";
    let mut v: Vec<String> = here.then(|| "here".to_string()).into_iter().collect();
    v.extend(r.copies.iter().map(|c| match c.is_copied() {
        true => c.remote.clone(),
        false => format!("{} (pending)", c.remote),
    }));
    if v.is_empty() { "-".into() } else { v.join(", ") }
}

fn file_name(p: &str) -> String {
    Path::new(p).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| p.to_string())
}

/// `show --json` (and `GET /api/backups/{id}`).
pub(crate) fn show_value(r: &BackupRecord, m: Option<&Manifest>) -> serde_json::Value {
    let summary = m.map(|m| {
        json!({
            "format_version": m.format_version, "nuwax_version": m.nuwax_version,
            "services": m.services, "mounts": m.mounts, "configs": m.configs,
            "skipped": m.skipped, "entries": m.entry_count(), "services_stopped": m.services_stopped,
            "dumps": m.dumps, "items": crate::flows::backup::moments(m),
        })
    });
    json!({ "record": r, "manifest": summary })
}

pub fn show(cli: &Cli, r: &BackupRecord, m: Option<&Manifest>) {
    if cli.json {
        outln!("{}", serde_json::to_string_pretty(&show_value(r, m)).unwrap_or_default());
        return;
    }
    outln!("backup {} ({}, {})", r.id, r.kind, r.status);
    outln!("  project      {} (version {})", r.project, r.service_version);
    outln!("  created      {}", r.created_at);
    outln!("  archive      {}", opt(r.path.clone()));
    outln!("  size         {}", opt(r.size_bytes.map(|s| human_bytes(s as u64))));
    outln!("  sha256       {}", opt(r.checksum.clone()));
    outln!("  files        {}", opt(r.file_count));
    outln!("  duration     {}", opt(r.duration_ms.map(|d| human_ms(d as u64))));
    outln!("  downtime     {}", opt(r.downtime_ms.map(|d| human_ms(d as u64))));
    outln!("  where        {}", places(r));
    for c in &r.copies {
        let when = c.copied_at.as_deref().map(|t| format!(", copied {t}")).unwrap_or_default();
        let checked = c.verified_at.as_deref().map(|t| format!(", read back {t}")).unwrap_or_default();
        let why = c.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
        outln!("    {} {} as {}{when}{checked}{why}", c.remote, c.status, c.name);
    }
    if let Some(n) = &r.note {
        outln!("  note         {n}");
    }
    if let Some(e) = &r.error {
        outln!("  error        {e}");
    }
    for w in backup_warnings(r.live, &r.stop_killed) {
        outln!("  warning      {w}");
    }
    let Some(m) = m else { return };
    let mut t = table(&["service", "image", "image id", "was running"]);
    for s in &m.services {
        t.add_row(vec![
            s.service.clone(),
            s.image.clone(),
            s.image_id.chars().take(19).collect(),
            s.running.to_string(),
        ]);
    }
    outln!("{t}");
    let mut t = table(&["kind", "name / source", "used by", "size", "files", "read via"]);
    for x in &m.mounts {
        t.add_row(vec![
            format!("{:?}", x.kind).to_lowercase(),
            x.name.clone(),
            x.destinations.join(", "),
            human_bytes(x.size),
            x.file_count.to_string(),
            format!("{:?}", x.access).to_lowercase(),
        ]);
    }
    for c in &m.configs {
        t.add_row(vec![
            "config".into(),
            c.source.clone(),
            "-".into(),
            human_bytes(c.size),
            c.file_count.to_string(),
            "host".into(),
        ]);
    }
    outln!("{t}");
    for x in m.mounts.iter().filter(|x| !x.running.is_empty()) {
        outln!(
            "  {} was copied while {} ran (its databases dumped): its other files are as read then",
            x.name,
            x.running.join(", ")
        );
    }
    for d in &m.dumps {
        outln!(
            "  dump {} of {} {} (database {}, {}; {} of server {})",
            d.name,
            d.server,
            d.service,
            d.database.as_deref().unwrap_or("all / globals"),
            d.format,
            d.tool_version,
            d.server_version
        );
    }
    for s in &m.skipped {
        outln!("  skipped {}: {}", s.path, s.reason);
    }
}

/// One backup's line of `verify --json`.
pub(crate) fn verify_value(r: &BackupRecord, res: &Result<VerifyReport, String>) -> serde_json::Value {
    match res {
        Ok(v) => {
            json!({ "id": r.id, "ok": true, "entries": v.entries, "content_bytes": v.content_bytes, "archive_bytes": v.archive_bytes })
        }
        Err(e) => json!({ "id": r.id, "ok": false, "error": e }),
    }
}

pub fn verify(cli: &Cli, results: &[(&BackupRecord, Result<VerifyReport, String>)]) {
    if cli.json {
        let docs: Vec<_> = results.iter().map(|(r, res)| verify_value(r, res)).collect();
        outln!("{}", serde_json::to_string_pretty(&docs).unwrap_or_default());
        return;
    }
    if results.is_empty() {
        outln!("no complete backups to verify");
    }
    for (r, res) in results {
        match res {
            Ok(v) => outln!(
                "backup {}: OK ({} entries, {} of data, sha256 matches)",
                r.id,
                v.entries,
                human_bytes(v.content_bytes)
            ),
            Err(e) => outln!("backup {}: FAILED: {e}", r.id),
        }
    }
}

pub fn deleted(cli: &Cli, r: &BackupRecord) {
    if cli.json {
        outln!("{}", json!({ "deleted": r.id, "path": r.path }));
    } else {
        outln!("deleted backup {} ({})", r.id, opt(r.path.clone()));
    }
}

pub fn recovered(r: &Recovered) {
    errln!(
        "nuwax: recovered an unfinished {} (operation {}, pid {}, started {}): {}",
        r.kind,
        r.operation,
        r.pid,
        r.started_at,
        if r.services_started.is_empty() {
            "no services to start".to_string()
        } else {
            format!("started {}", r.services_started.join(", "))
        },
    );
    if let Some(n) = &r.note {
        errln!("nuwax: {n}");
    }
}

pub fn recover(cli: &Cli, done: &[Recovered]) {
    if cli.json {
        outln!("{}", serde_json::to_string_pretty(done).unwrap_or_default());
        return;
    }
    if done.is_empty() {
        outln!("nothing to recover");
    }
    for r in done {
        recovered(r);
    }
}

pub fn init(cli: &Cli, p: &Project, config: &Path, wrote: bool) {
    if cli.json {
        outln!(
            "{}",
            json!({ "project": p.name, "config": config, "config_written": wrote, "storage_dir": p.storage_dir, "state_dir": p.state_dir })
        );
        return;
    }
    if wrote {
        outln!("wrote {}", config.display());
    } else {
        outln!("{} already exists; left as it is", config.display());
    }
    outln!("project {} ({})", p.name, p.dir.display());
    outln!("backups go to {}", p.storage_dir.display());
    outln!("catalog in {}", p.state_dir.display());
}

pub struct Status<'a> {
    pub project: &'a Project,
    pub compose: Result<ComposeCli, ComposeMissing>,
    pub engine: Option<String>,
    pub info: Option<EngineInfo>,
    pub containers: Option<Vec<Container>>,
    pub last: Option<BackupRecord>,
    pub version: Option<String>,
    pub last_upgrade: Option<crate::catalog::UpgradeRecord>,
    pub unfinished: Vec<Operation>,
    pub running_operation: Option<String>,
    /// The databases the services run (or why they could not be told).
    pub databases: Result<Vec<crate::database::Found>, String>,
    /// How the settings or labels say a backup takes each service (`backup = ...`).
    pub modes: Result<std::collections::BTreeMap<String, crate::database::Mode>, String>,
}

/// `status --json` (and the web console's `GET /api/status`).
pub(crate) fn status_value(s: &Status<'_>) -> serde_json::Value {
    let p = s.project;

    let services: Vec<_> = s
            .containers
            .iter()
            .flatten()
            .map(|c| json!({ "service": c.service, "container": c.name, "state": c.state, "health": c.health, "image": c.image, "image_id": c.image_id, "backup": backup_cell(s, &c.service) }))
            .collect();
    let doc = json!({
        "project": p.name, "dir": p.dir, "compose_files": p.compose_files, "service_version": s.version, "last_upgrade": s.last_upgrade,
        "compose_cli": s.compose.as_ref().ok(), "compose_choice": p.compose,
        "compose_error": s.compose.as_ref().err().map(ToString::to_string), "engine": s.info.as_ref().map(|i| json!({"host": i.host, "version": i.version, "api_version": i.api_version})),
        "engine_error": s.engine, "services": services, "last_backup": s.last, "unfinished_operations": s.unfinished,
        "running_operation": s.running_operation, "storage_dir": p.storage_dir,
        "databases": s.databases.as_ref().ok(), "databases_error": s.databases.as_ref().err(),
    });
    doc
}

pub fn status(cli: &Cli, s: &Status<'_>) {
    let p = s.project;
    if cli.json {
        outln!("{}", serde_json::to_string_pretty(&status_value(s)).unwrap_or_default());
        return;
    }
    outln!("project   {} ({})", p.name, p.dir.display());
    outln!("version   {}", s.version.as_deref().unwrap_or("unknown (set service_version in nuwax.toml)"));
    if let Some(u) = &s.last_upgrade {
        outln!(
            "last upgrade  {} {} -> {}: {} (backup {})",
            u.id,
            u.from_version,
            u.to_version,
            u.status,
            u.backup_id.map(|b| b.to_string()).unwrap_or_else(|| "-".into())
        );
    }
    match &s.compose {
        Ok(c) => outln!("compose   {}, {}", c.display(), p.compose.how()),
        Err(e) => outln!("compose   not usable: {e}"),
    }
    match (&s.info, &s.engine) {
        (Some(i), _) => outln!("engine    Docker {} (API {}) at {}", i.version, i.api_version, i.host),
        (None, Some(e)) => outln!("engine    unreachable: {e}"),
        _ => outln!("engine    unknown"),
    }
    outln!("storage   {}", p.storage_dir.display());
    match &s.last {
        Some(r) => outln!("last backup  {} ({}, {}) {}", r.id, r.kind, r.created_at, opt(r.path.clone())),
        None => outln!("last backup  none"),
    }
    if let Some(op) = &s.running_operation {
        outln!("running   {op}");
    }
    for op in &s.unfinished {
        outln!("unfinished  {} operation {} (pid {}, started {})", op.kind, op.id, op.pid, op.started_at);
    }
    match &s.containers {
        Some(cs) if !cs.is_empty() => {
            let mut t = table(&["service", "container", "state", "health", "image", "database", "backup"]);
            for c in cs {
                t.add_row(vec![
                    c.service.clone(),
                    c.name.clone(),
                    format!("{:?}", c.state).to_lowercase(),
                    c.health.map(|h| format!("{h:?}").to_lowercase()).unwrap_or_else(|| "-".into()),
                    c.image.clone(),
                    database_cell(s.databases.as_ref().ok(), &c.service),
                    backup_cell(s, &c.service).to_string(),
                ]);
            }
            outln!("{t}");
            if let Err(e) = &s.databases {
                outln!("databases  cannot tell: {e}");
            }
            if let Err(e) = &s.modes {
                outln!("backup modes  cannot tell: {e}");
            }
        }
        Some(_) => outln!("no containers of this project (compose up has not run?)"),
        None => {}
    }
}

/// "postgres (command)", "postgres, sqlite /data/app.db (nuwax.toml)", or "-".
fn database_cell(found: Option<&Vec<crate::database::Found>>, service: &str) -> String {
    let Some(f) = found.into_iter().flatten().find(|f| f.service == service) else { return "-".into() };
    let mut parts: Vec<String> = f.kind.map(|k| k.as_str().to_string()).into_iter().collect();
    parts.extend(f.sqlite.iter().map(|p| format!("sqlite {p}")));
    let said = match f.said {
        crate::database::Said::Command => "command",
        crate::database::Said::Settings => "nuwax.toml",
        crate::database::Said::Label => "label",
    };
    format!("{} ({said})", parts.join(", "))
}

/// How a backup takes the service: its database's mode when it runs one, else what the settings
/// or its label say (`backup = ...`), else stopped.
fn backup_cell(s: &Status<'_>, service: &str) -> &'static str {
    use crate::database::Mode;
    let found = s.databases.as_ref().ok().into_iter().flatten().find(|f| f.service == service);
    let mode = match found {
        Some(f) => Some((f.backup, f.backup_said, f.kind)),
        None => s.modes.as_ref().ok().and_then(|m| m.get(service)).map(|m| (*m, None, None)),
    };
    match mode {
        // SQLite files alone: dumped by default only when the container has `sqlite3`.
        Some((Mode::Dump, None, None)) if found.is_some() => "dumped if its container has sqlite3",
        Some((Mode::Dump, _, _)) => "dumped",
        Some((Mode::Pause, _, _)) => "paused",
        Some((Mode::Live, _, _)) => "copied live",
        Some((Mode::Skip, _, _)) => "skipped",
        Some((Mode::Stop, _, _)) | None => "stopped",
    }
}

/// `token new`: the new token, and where it is kept.
pub fn token(cli: &Cli, p: &Project, token: &str) {
    let file = p.state_dir.join(crate::serve::TOKEN_FILE);
    if cli.json {
        outln!("{}", json!({ "token": token, "file": file }));
        return;
    }
    outln!("{token}");
    errln!(
        "new console token in {} (owner-only); sessions opened with the old one are ended",
        file.display()
    );
}

pub const NUWAX_TOML_TEMPLATE: &str = r#"# nuwax.toml: settings for `nuwax` in this compose project. Every key is optional.

# Compose project name. Default: as compose derives it (COMPOSE_PROJECT_NAME, the compose
# file's `name:`, else the directory name).
# project_name = "mysite"

# Compose files. Default: compose.yaml / compose.yml / docker-compose.yml / docker-compose.yaml
# (plus the matching override file).
# compose_files = ["compose.yaml"]

# env_file = ".env"

# Extra files or directories to include in every backup (relative to this directory or absolute).
# include = ["config/", "/etc/mysite/"]

# Globs of paths to leave out (matched against paths inside each volume / bind mount / include).
# exclude = ["**/*.tmp", "cache/**"]

# Where archives go. Default: ./backups. NUWAX_STORAGE_DIR overrides this.
# storage_dir = "/var/backups/mysite"

# zstd (multithreaded), gzip or none, and the level (zstd 1-19, gzip 0-9). The default,
# zstd level 1, the fastest; level 3 makes text-heavy data a few percent smaller.
# compression = "zstd"
# level = 1

# Backups copy the data into a snapshot (<storage_dir>/.nuwax-snapshot/) while the services
# run, stop them only to copy what changed since, and write the archive after they start.
# The snapshot costs up to the data's size on disk; false removes it and copies while stopped.
# snapshot = true

# What a backup stops at once. "project" (the default): every service, one point in time.
# "each": one group of services at a time (those linked by depends_on, or sharing a mount),
# while the others run; each group is then its own point in time. Needs the snapshot.
# stop = "project"

# Seconds a service gets to stop when its compose file sets no stop_grace_period.
# stop_timeout = 10
# Seconds each service gets to be running (and healthy, when it has a healthcheck) again.
# health_timeout = 120

# The version this deployment runs; written into each backup's name and manifest.
# service_version = "1.0.0"

# How volume data is read: auto (from the host when readable, else through the engine),
# host, or engine (remote engines, rootless Docker, Docker Desktop).
# volume_access = "auto"

# The compose CLI that creates services (rollback, upgrade): auto (`docker compose` when it
# answers, else `docker-compose`), v2 (`docker compose` only) or v1 (`docker-compose` only).
# A chosen one that is missing is an error, not a fallback. NUWAX_COMPOSE overrides this.
# compose_cli = "auto"

# When `nuwax schedule run` makes a backup (kind scheduled) and then prunes: a cron expression
# in local time (5 fields, or 6 with seconds first). Default: daily at 03:00.
# schedule = "0 3 * * *"

# What `nuwax prune` keeps (flags override these). Complete backups kept by no rule go; the
# newest complete backup and the backup of the latest successful upgrade always stay; failed
# backups go. No rule at all keeps everything. Kinds: manual, scheduled, pre-upgrade,
# pre-rollback; a [retention.kinds.KIND] table replaces the rules for that kind.
# [retention]
# keep_last = 3
# keep_daily = 7
# keep_weekly = 4
# keep_monthly = 6
# keep_within = "2d"
# [retention.kinds.manual]
# keep_last = 20

# What a service runs, when its command does not tell (`nuwax status` shows what nuwax found in
# the `database` column). database: "postgres", "mariadb", "mysql", "redis" or "none"; sqlite:
# SQLite files, as paths inside the container. The label nuwax.database=NAME says the same.
# backup: "dump" (the default for PostgreSQL, MariaDB and MySQL: a dump taken inside its
# container while it runs, loaded back through it by a rollback; and for SQLite files when the
# container has sqlite3: `VACUUM INTO` while the service runs, written back in place by a
# rollback), "stop" (its files, copied while it is stopped; the default for any other service),
# "pause" (frozen, not stopped: its files as a crash would leave them), "live" (kept running, its
# mounts read while it writes: not one point in time) or "skip" (kept running, the mounts only it
# uses left out of the backup and left as they are by a rollback). The label
# nuwax.backup=dump|stop|pause|live|skip says the same. `nuwax backup --dry-run` shows the result.
# [services.db]
# database = "postgres"
# backup = "dump"
# [services.app]
# sqlite = ["/data/app.db"]
"#;
