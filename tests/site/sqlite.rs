//! The site's SQLite app (`notes`): its database dumped with `VACUUM INTO` inside its container
//! while it keeps writing, and written back in place by a rollback.

use std::path::Path;
use std::time::Duration;

use super::json_of;
use crate::require_docker;
use crate::support::site::{SERVICES, Site};

/// `(count(*), max(n))` of the notes in the backup's dump of notes.db, read by `sqlite3` in the
/// notes container from a copy, and what `PRAGMA integrity_check` says of it.
fn dumped_notes(site: &Site, archive: &Path) -> ((u64, u64), String) {
    use nuwax::archive::Cancel;
    let mut bytes = Vec::new();
    nuwax::archive::read_dump(archive, "databases/notes/data%2Fnotes.db", &mut bytes, &Cancel::default())
        .unwrap();
    assert!(bytes.starts_with(b"SQLite format 3\0"), "the dump is a database file");
    let mut child = std::process::Command::new("docker")
        .args(["exec", "-i", &site.container_id("notes"), "sh", "-c", "cat > /tmp/check.db"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &bytes).unwrap();
    assert!(child.wait().unwrap().success());
    let q = |sql: &str| site.exec("notes", &["sqlite3", "/tmp/check.db", sql]);
    let counted = q("SELECT count(*) || ' ' || max(n) FROM notes");
    let check = q("PRAGMA integrity_check");
    site.exec("notes", &["rm", "-f", "/tmp/check.db"]);
    let (count, max) = counted.split_once(' ').unwrap();
    ((count.parse().unwrap(), max.parse().unwrap()), check)
}

/// A backup dumps notes.db while notes keeps writing (never stopped or restarted), and leaves
/// the live file and its companions out of the copy of its volume, whose other files it keeps.
/// After rows are deleted and added, a rollback writes the dump back in place before notes
/// starts: the rows are the dump's, with no gap, and SQLite finds the file sound.
#[test]
fn the_sqlite_app_is_dumped_while_it_writes_and_written_back_by_a_rollback() {
    let compose = require_docker!();
    let site = Site::new(compose);
    site.up();
    std::thread::sleep(Duration::from_millis(1000));
    let started = site.started_at("notes");

    let b = json_of(&site, &["backup"]);
    let dumps: Vec<&str> =
        b["dumps"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert!(dumps.contains(&"databases/notes/data%2Fnotes.db"), "{dumps:?}");
    let stopped = b["services_stopped"].to_string();
    assert!(!stopped.contains("notes"), "notes keeps running: {stopped}");
    assert_eq!(site.started_at("notes"), started, "notes was never stopped or restarted");
    assert!(b["skipped"].to_string().contains("notes:/data/notes.db"), "{}", b["skipped"]);
    assert_eq!(b["live"], false);

    let archive = std::path::PathBuf::from(b["path"].as_str().unwrap());
    let manifest = nuwax::archive::read_manifest(&archive).unwrap();
    let dump = manifest.dumps.iter().find(|d| d.service == "notes").unwrap();
    assert_eq!((dump.server.as_str(), dump.format.as_str()), ("sqlite", "sqlite3-file"));
    assert_eq!(dump.database.as_deref(), Some("/data/notes.db"));
    assert!(dump.tool_version.starts_with("3."), "{}", dump.tool_version);
    let volume = manifest.mounts.iter().find(|m| m.name.ends_with("_notesdata")).unwrap();
    assert_eq!(volume.running, ["notes"], "its other files were copied while notes ran");
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("notes");
    let targets = vec![nuwax::archive::Target { prefix: volume.archive_path.clone(), dest: dest.clone() }];
    let cancel = nuwax::archive::Cancel::default();
    nuwax::archive::extract(&archive, &targets, &cancel, &nuwax::archive::NoProgress).unwrap();
    let mut files: Vec<String> = std::fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["about.txt"], "the database and its companions are dumped, not copied");

    let ((count, dumped), check) = dumped_notes(&site, &archive);
    assert_eq!((count, check.as_str()), (dumped, "ok"), "the dump holds 1..{dumped} and is sound");
    assert!(dumped > 5, "{dumped}");
    let max = |site: &Site| site.notes("SELECT max(n) FROM notes").parse::<u64>().unwrap();
    assert!(max(&site) > dumped, "notes kept writing");

    // Changes after the backup: rows deleted and added, the plain file changed.
    site.notes("DELETE FROM notes WHERE n % 2 = 0");
    site.notes("INSERT INTO notes (n) VALUES (1000000)");
    site.exec("notes", &["sh", "-c", "echo changed > /data/about.txt"]);

    let id = b["id"].as_i64().unwrap().to_string();
    let show = site.run(&["show", &id]);
    let said = String::from_utf8_lossy(&show.stdout);
    assert!(said.contains("dump databases/notes/data%2Fnotes.db of sqlite notes"), "{said}");
    assert!(said.contains("was copied while notes ran"), "{said}");
    let status = site.run(&["status"]);
    let said = String::from_utf8_lossy(&status.stdout);
    assert!(said.contains("sqlite /data/notes.db (nuwax.toml)"), "{said}");
    assert!(said.contains("dumped if its container has sqlite3"), "{said}");
    let plan = site.run(&["rollback", &id, "--dry-run"]);
    let said = String::from_utf8_lossy(&plan.stdout);
    assert!(said.contains("write SQLite database /data/notes.db of notes"), "{said}");
    json_of(&site, &["rollback", &id, "--yes"]);
    site.wait_healthy(&SERVICES);
    let upto = site.notes(&format!("SELECT count(*) || ' ' || max(n) FROM notes WHERE n <= {dumped}"));
    assert_eq!(upto, format!("{dumped} {dumped}"), "the dump's rows, with no gap");
    assert_eq!(
        site.notes("SELECT count(*) FROM notes WHERE n >= 1000000"),
        "0",
        "the row added since is gone"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(site.notes("SELECT max(n) = count(*) FROM notes"), "1", "notes goes on from the dump, no gap");
    assert!(max(&site) > dumped, "notes writes again");
    assert_eq!(site.notes("PRAGMA integrity_check"), "ok");
    assert_eq!(site.notes("PRAGMA journal_mode"), "wal");
    assert_eq!(site.exec("notes", &["cat", "/data/about.txt"]), "notes: a SQLite app");
}

/// A declared SQLite file that is not there fails the backup with the dump's own message: the
/// record is failed, no partial file or temp file is left, everything runs and notes was never
/// stopped. Without `sqlite3` in the container, `backup = "dump"` refuses before anything is
/// recorded, and the default copies notes' files while it is stopped instead.
#[test]
fn a_failing_sqlite_dump_fails_the_backup_cleanly() {
    let compose = require_docker!();
    let site = Site::new(compose);
    site.up();
    let started = site.started_at("notes");
    let toml = site.dir.join("nuwax.toml");
    let settings = std::fs::read_to_string(&toml).unwrap();
    let with = |extra: &str| {
        let s = settings.replace(r#"sqlite = ["/data/notes.db"]"#, extra);
        std::fs::write(&toml, s).unwrap();
    };
    with(r#"sqlite = ["/data/notes.db", "/data/missing.db"]"#);
    let out = site.run(&["backup"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no SQLite database at /data/missing.db"), "{err}");
    site.wait_healthy(&SERVICES);
    assert_eq!(site.started_at("notes"), started, "notes was never stopped");
    site.assert_one_failed_backup_and_no_file();
    let tmp = site.exec("notes", &["ls", "-a", "/tmp"]);
    assert!(!tmp.contains("nuwax-sqlite"), "the dumps' temp files are gone: {tmp}");

    // sqlite3 renamed away: said "dump", the backup is refused before anything is recorded.
    let sqlite3 = site.exec("notes", &["sh", "-c", "command -v sqlite3"]);
    site.exec("notes", &["mv", &sqlite3, &format!("{sqlite3}.away")]);
    with("sqlite = [\"/data/notes.db\"]\nbackup = \"dump\"");
    let out = site.run(&["backup"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sqlite3") && err.contains("not found"), "{err}");
    assert_eq!(json_of(&site, &["list"]).as_array().unwrap().len(), 1, "nothing new was recorded");

    // By default, notes' files are copied while it is stopped instead.
    with(r#"sqlite = ["/data/notes.db"]"#);
    let b = json_of(&site, &["backup"]);
    assert!(b["services_stopped"].to_string().contains("notes"), "{}", b["services_stopped"]);
    assert!(!b["dumps"].to_string().contains("notes"), "{}", b["dumps"]);
    site.exec("notes", &["mv", &format!("{sqlite3}.away"), &sqlite3]);
    site.wait_healthy(&SERVICES);
}
