//! The site stack (`compose/site`): real PostgreSQL and MariaDB servers built from Debian
//! packages, and apps writing to them.

mod sqlite;

use std::time::Duration;

use crate::require_docker;
use crate::support::site::{SERVICES, Site};

/// The site comes up from the locally built images, its apps write rows, and nuwax tells which
/// services run which database server (and that the apps, which run in the same images, do not).
#[test]
fn the_site_runs_real_databases_and_nuwax_tells_which() {
    let compose = require_docker!();
    let site = Site::new(compose);
    site.up();
    let ticks = |s: &Site| s.psql("SELECT count(*) FROM ticks").parse::<u64>().unwrap();
    let before = ticks(&site);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(ticks(&site) > before, "the app writes rows");
    assert_eq!(site.psql("SELECT max(n) = count(*) FROM ticks"), "t", "ticks have no gap");
    assert!(site.mariadb("SELECT count(*) FROM orders").parse::<u64>().unwrap() > 0);
    assert!(site.psql("SHOW server_version").starts_with("15."));
    assert!(site.mariadb("SELECT version()").starts_with("10.11."));

    let out = site.run(&["--json", "status"]);
    assert!(out.status.success(), "status: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let dbs: Vec<(String, String, String)> = v["databases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["service"].as_str().unwrap().into(),
                d["kind"].as_str().unwrap_or("-").into(),
                d["said"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        dbs,
        vec![
            ("db".into(), "postgres".into(), "command".into()),
            ("maria".into(), "mariadb".into(), "command".into()),
            ("notes".into(), "-".into(), "settings".into())
        ]
    );
    let notes = &v["databases"][2];
    assert_eq!((&notes["sqlite"][0], &notes["backup"]), (&"/data/notes.db".into(), &"dump".into()));
}

/// Dumps run inside the servers' own containers through the engine's exec API and stream out:
/// PostgreSQL per database as a plain SQL script plus the globals, MariaDB whole. A dump that
/// fails ends with the tool's own message.
#[test]
fn dumps_stream_out_of_the_database_containers() {
    use nuwax::database::{Kind, dump};
    use tokio::io::AsyncReadExt;
    let compose = require_docker!();
    let site = Site::new(compose);
    site.up();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let engine = nuwax::engine::DockerEngine::connect().await.unwrap();
        let db = site.container_id("db");
        let specs = dump::plan(&engine, &db, "db", Kind::Postgres).await.unwrap();
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["db/globals.sql", "db/postgres.sql", "db/site.sql"]);
        let (server, tool) = dump::versions(&engine, &db, "db", Kind::Postgres).await.unwrap();
        assert!(server.starts_with("15."), "{server}");
        assert!(tool.starts_with("pg_dump (PostgreSQL) 15."), "{tool}");

        let all = |started: dump::Started| async move {
            let mut bytes = started.head;
            let mut stream = started.stream;
            stream.stdout.read_to_end(&mut bytes).await.unwrap();
            let end = dump::finish(&started.spec, (stream.ended).await.unwrap());
            (bytes, end)
        };
        let site_dump = specs.iter().find(|s| s.name == "db/site.sql").unwrap().clone();
        let started = dump::start(&engine, site_dump.clone()).await.unwrap();
        assert!(started.head.starts_with(b"--\n-- PostgreSQL database dump"), "pg_dump's plain format");
        let (bytes, end) = all(started).await;
        end.unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("\nCOPY public.ticks "), "{} bytes", bytes.len());
        let (drop, create) = (text.find("DROP DATABASE IF EXISTS site;"), text.find("CREATE DATABASE site "));
        assert!(drop.is_some() && drop < create, "the script recreates its database");

        let globals = specs[0].clone();
        let started = dump::start(&engine, globals).await.unwrap();
        assert!(started.eof, "the globals are read whole when started");
        assert!(String::from_utf8_lossy(&started.head).contains("CREATE ROLE postgres"));

        // A database that does not exist: the tool's error, not an empty dump.
        let mut missing = site_dump.clone();
        missing.cmd[2] = missing.cmd[2].replace("'site'", "'nosuchdb'");
        let (_, end) = all(dump::start(&engine, missing).await.unwrap()).await;
        let err = end.unwrap_err().to_string();
        assert!(err.contains("nosuchdb") && err.contains("does not exist"), "{err}");

        let maria = site.container_id("maria");
        let specs = dump::plan(&engine, &maria, "maria", Kind::Mariadb).await.unwrap();
        assert_eq!(specs.len(), 1);
        let started = dump::start(&engine, specs[0].clone()).await.unwrap();
        assert!(!started.eof);
        assert!(String::from_utf8_lossy(&started.head).contains("\n-- Current Database: "));
        let (bytes, end) = all(started).await;
        end.unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("CREATE TABLE `orders`") && text.contains("INSERT INTO `orders`"));
        assert!(text.contains("\n-- Dump completed"), "{}", &text[text.len().saturating_sub(200)..]);
    });
}

/// The whole path of a dump, through the real servers: streamed out of the container into an
/// archive's dump parts, verified, read back alone and loaded into the server through the
/// engine's exec stdin. PostgreSQL through nuwax's loader, over the live database (its app
/// stopped), MariaDB over a dropped table.
#[test]
fn a_dump_goes_from_the_server_into_an_archive_and_back_into_the_server() {
    use nuwax::archive::manifest::DumpRecord;
    use nuwax::archive::{ArchiveWriter, Cancel, Compression, NoProgress, WriteOptions};
    use nuwax::database::{Kind, dump, rows};
    use nuwax::engine::Engine;
    let compose = require_docker!();
    let site = Site::new(compose);
    site.up();
    std::thread::sleep(Duration::from_millis(500));
    let ticks_before = site.psql("SELECT count(*) FROM ticks").parse::<u64>().unwrap();
    let orders_before = site.mariadb("SELECT count(*) FROM orders").parse::<u64>().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("dumps.tar.zst");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let engine = std::sync::Arc::new(rt.block_on(nuwax::engine::DockerEngine::connect()).unwrap());
    let (db, maria) = (site.container_id("db"), site.container_id("maria"));

    let pg = rt
        .block_on(dump::plan(engine.as_ref(), &db, "db", Kind::Postgres))
        .unwrap()
        .into_iter()
        .find(|s| s.name == "db/site.sql")
        .unwrap();
    let my = rt.block_on(dump::plan(engine.as_ref(), &maria, "maria", Kind::Mariadb)).unwrap().remove(0);
    let record = |s: &dump::Spec| DumpRecord {
        name: format!("databases/{}", s.name),
        service: s.service.clone(),
        server: s.kind.as_str().into(),
        database: s.database.clone(),
        format: s.format.clone(),
        tool_version: "t".into(),
        server_version: "s".into(),
    };
    let mut m = crate::support::manifest(1, vec![], Compression::Zstd);
    let pg_record = record(&pg);
    m.dumps = vec![pg_record.clone(), record(&my)];
    m.dump_part_bytes = Some(64 * 1024);
    let opts = WriteOptions::default();
    let mut w = ArchiveWriter::new(
        std::fs::File::create(&archive).unwrap(),
        &opts,
        Cancel::default(),
        std::sync::Arc::new(NoProgress),
    )
    .unwrap();
    w.write_manifest(&m, &Vec::<nuwax::archive::EntryMeta>::new()).unwrap();
    let my_record = record(&my);
    let mut counted = Vec::new();
    for spec in [pg, my] {
        let started = rt.block_on(dump::start(engine.as_ref(), spec)).unwrap();
        let dump::Started { spec, head, stream, .. } = started;
        let bridge = tokio_util::io::SyncIoBridge::new_with_handle(stream.stdout, rt.handle().clone());
        let counter = rows::Counter::new(spec.kind, &spec.format, spec.database.as_deref());
        let mut reader = rows::Counted::new(std::io::Read::chain(&head[..], bridge), counter);
        let name = format!("databases/{}", spec.name);
        // Outside the runtime: the bridge blocks on the runtime's handle for each read.
        let digest = w.append_dump(&name, &mut reader).unwrap();
        assert!(digest.bytes > 0);
        dump::finish(&spec, rt.block_on(stream.ended).unwrap()).unwrap();
        counted.push(reader.finish().expect("the dump reads as expected: its rows are counted"));
    }
    w.finish().unwrap();
    let report = nuwax::archive::verify(&archive, None, &Cancel::default(), &NoProgress).unwrap();
    assert_eq!(report.dumps.len(), 2);
    let (pg_rows, my_rows) = (counted[0].clone(), counted[1].clone());
    assert!(!my_rows.keys().any(|t| t.starts_with("`mysql`.")), "the server's own tables are not counted");
    // What the server holds, held to what the dump held: the mismatches, as the rollback sees them.
    let check = |record: &DumpRecord, rows: &std::collections::BTreeMap<String, u64>, container: &str| {
        let (cmd, script) = rows::check(record, rows).unwrap();
        let out = rt
            .block_on(engine.exec_stdin(
                container,
                &cmd,
                None,
                Box::pin(std::io::Cursor::new(script.into_bytes())),
            ))
            .unwrap();
        assert_eq!(out.exit_code, 0, "{}", out.output);
        rows::mismatches(rows, &out.output).unwrap()
    };

    // PostgreSQL: the script drops `site` and makes it again from the dump, through the loader
    // a rollback runs (its app stopped: a database in use is not dropped).
    let mut bytes = Vec::new();
    nuwax::archive::read_dump(&archive, "databases/db/site.sql", &mut bytes, &Cancel::default()).unwrap();
    let load = |cmd: &[String], bytes: Vec<u8>, container: &str| {
        rt.block_on(engine.exec_stdin(container, cmd, None, Box::pin(std::io::Cursor::new(bytes)))).unwrap()
    };
    let loader = nuwax::database::load::command(&pg_record).unwrap();
    site.compose(&["stop", "app"]);
    site.psql("CREATE TABLE made_after (x int)");
    let out = load(&loader, bytes, &db);
    assert_eq!(out.exit_code, 0, "{}", out.output);
    let restored = site.psql("SELECT count(*) || '|' || max(n) FROM ticks");
    let (count, max) = restored.split_once('|').unwrap();
    assert_eq!(count, max, "no gap in the dumped ticks");
    assert!(count.parse::<u64>().unwrap() >= ticks_before, "{count} < {ticks_before}");
    assert_eq!(site.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'made_after'"), "0");
    assert_eq!(pg_rows.get("public.ticks").map(u64::to_string).as_deref(), Some(count), "{pg_rows:?}");
    assert_eq!(check(&pg_record, &pg_rows, &db), vec![], "the loaded database holds the dump's rows");
    site.psql("DELETE FROM ticks WHERE n = 1");
    let n: u64 = count.parse().unwrap();
    assert_eq!(check(&pg_record, &pg_rows, &db), vec![("public.ticks".to_string(), n, n - 1)]);
    // A load that fails stops at its first error and says why.
    let out = load(&loader, b"SELECT * FROM nosuchtable;\nCREATE TABLE never (x int);\n".to_vec(), &db);
    assert_ne!(out.exit_code, 0);
    assert!(out.output.contains("nosuchtable"), "{}", out.output);
    let never = site.exec(
        "db",
        &[
            "psql",
            "-U",
            "postgres",
            "-d",
            "template1",
            "-qAtX",
            "-c",
            "SELECT count(*) FROM pg_tables WHERE tablename = 'never'",
        ],
    );
    assert_eq!(never, "0", "nothing runs after the first error");

    // MariaDB: the dropped table comes back.
    let mut bytes = Vec::new();
    nuwax::archive::read_dump(&archive, "databases/maria/all-databases.sql", &mut bytes, &Cancel::default())
        .unwrap();
    site.compose(&["stop", "shop"]);
    site.mariadb("DROP TABLE orders");
    let out = load(&["mariadb".to_string()], bytes, &maria);
    assert_eq!(out.exit_code, 0, "{}", out.output);
    let (count, max) = {
        let r = site.mariadb("SELECT count(*), max(n) FROM orders");
        let mut it = r.split_whitespace();
        (it.next().unwrap().to_string(), it.next().unwrap().to_string())
    };
    assert_eq!(count, max);
    assert!(count.parse::<u64>().unwrap() >= orders_before);
    assert_eq!(my_rows.get("`shop`.`orders`").map(u64::to_string), Some(count), "{my_rows:?}");
    assert_eq!(check(&my_record, &my_rows, &maria), vec![], "the loaded server holds the dump's rows");
}

/// `nuwax --json ARGS`, which must succeed; its JSON.
fn json_of(site: &Site, args: &[&str]) -> serde_json::Value {
    let out = site.run(&[&["--json"], args].concat());
    assert!(
        out.status.success(),
        "nuwax {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The highest tick in the backup's own dump of `site` (read from the `COPY` data of its plain
/// script), and the `last-tick` the app had noted in the backup's uploads.
pub(crate) fn backup_moment(archive: &std::path::Path) -> (u64, u64) {
    use nuwax::archive::{Cancel, NoProgress, Target};
    let mut bytes = Vec::new();
    nuwax::archive::read_dump(archive, "databases/db/site.sql", &mut bytes, &Cancel::default()).unwrap();
    let max = copy_rows(&String::from_utf8(bytes).unwrap(), "public.ticks")
        .iter()
        .map(|row| row.split('\t').next().unwrap().parse::<u64>().unwrap())
        .max()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let manifest = nuwax::archive::read_manifest(archive).unwrap();
    let uploads = manifest.mounts.iter().find(|m| m.name.ends_with("/uploads")).unwrap();
    let dest = dir.path().join("uploads");
    let targets = vec![Target { prefix: uploads.archive_path.clone(), dest: dest.clone() }];
    nuwax::archive::extract(archive, &targets, &Cancel::default(), &NoProgress).unwrap();
    let noted = std::fs::read_to_string(dest.join("last-tick")).unwrap();
    (max, noted.trim().parse().unwrap())
}

/// The rows of `table`'s `COPY ... FROM stdin` in a plain dump, one text line each.
fn copy_rows<'a>(script: &'a str, table: &str) -> Vec<&'a str> {
    let start = format!("COPY {table} (");
    let mut lines = script.lines().skip_while(|l| !l.starts_with(&start));
    assert!(lines.next().is_some(), "no COPY of {table} in the dump");
    lines.take_while(|l| *l != "\\.").collect()
}

/// A backup of the site dumps PostgreSQL and MariaDB while they run (only the apps stop), at
/// one point in time with the files: the dump's last tick is the one the app noted in its
/// uploads. Rolling back loads the dumps into fresh servers: the dropped table and the
/// database made since are gone, the rows are the dump's with no gap, and the servers' own
/// checks pass.
#[test]
fn dump_mode_backs_up_hot_and_rolls_back_through_the_databases() {
    let compose = require_docker!();
    let site = Site::new(compose);
    site.up();
    std::thread::sleep(Duration::from_millis(1000));
    let db_started =
        site.exec("db", &["psql", "-U", "postgres", "-qAtX", "-c", "SELECT pg_postmaster_start_time()"]);

    let b = json_of(&site, &["backup"]);
    let dumps: Vec<&str> =
        b["dumps"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(
        dumps,
        [
            "databases/db/globals.sql",
            "databases/db/postgres.sql",
            "databases/db/site.sql",
            "databases/maria/all-databases.sql",
            "databases/notes/data%2Fnotes.db"
        ]
    );
    let mut stopped: Vec<&str> =
        b["services_stopped"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    stopped.sort();
    assert_eq!(stopped, ["app", "shop"], "the database servers (and notes, SQLite's writer) keep running");
    let again =
        site.exec("db", &["psql", "-U", "postgres", "-qAtX", "-c", "SELECT pg_postmaster_start_time()"]);
    assert_eq!(db_started, again, "PostgreSQL was never restarted");
    let skipped = b["skipped"].to_string();
    assert!(skipped.contains("pgdata") && skipped.contains("dumped instead"), "{skipped}");
    let archive = std::path::PathBuf::from(b["path"].as_str().unwrap());
    let (dumped, noted) = backup_moment(&archive);
    assert_eq!(dumped, noted, "the dump and the files hold the same moment");
    // The trailer holds each table's rows as dumped: the rollback holds its loads to them.
    use nuwax::archive::{Cancel, NoProgress};
    let report = nuwax::archive::verify(&archive, None, &Cancel::default(), &NoProgress).unwrap();
    let rows_of = |name: &str| report.dumps.iter().find(|d| d.name == name).and_then(|d| d.rows.clone());
    assert_eq!(rows_of("databases/db/site.sql").and_then(|r| r.get("public.ticks").copied()), Some(dumped));
    assert!(rows_of("databases/maria/all-databases.sql").is_some_and(|r| r.contains_key("`shop`.`orders`")));
    assert_eq!(rows_of("databases/db/globals.sql"), None, "roles are not counted");

    // Changes after the backup.
    site.psql("DROP TABLE ticks");
    site.psql("CREATE DATABASE extra");
    site.compose(&["stop", "shop"]);
    site.mariadb("DROP TABLE orders");
    site.compose(&["start", "shop"]);

    let id = b["id"].as_i64().unwrap().to_string();
    let plan = json_of(&site, &["rollback", &id, "--dry-run"]);
    let warnings = plan["warnings"].to_string();
    assert!(!warnings.contains("left as it is"), "what the dumps hold is restored through them: {warnings}");
    let r = json_of(&site, &["rollback", &id, "--yes"]);
    assert_eq!(r["backup_id"].as_i64().unwrap().to_string(), id);
    site.wait_healthy(&SERVICES);
    let dbs = site.psql("SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database");
    assert_eq!(dbs, "postgres,site,template0,template1", "the database made since is gone");
    let (count, max) = {
        let r = site.psql(&format!("SELECT count(*) || ' ' || max(n) FROM ticks WHERE n <= {dumped}"));
        let mut it = r.split(' ').map(|x| x.parse::<u64>().unwrap());
        (it.next().unwrap(), it.next().unwrap())
    };
    assert_eq!((count, max), (dumped, dumped), "the dump's rows, no gap");
    let amcheck =
        site.exec("db", &["pg_amcheck", "-U", "postgres", "--all", "--install-missing", "--heapallindexed"]);
    assert!(amcheck.is_empty(), "pg_amcheck: {amcheck}");
    let orders = site.mariadb("SELECT count(*) = max(n) FROM orders");
    assert_eq!(orders, "1", "orders are back, with no gap");
    let check = site.exec("maria", &["mariadb-check", "--all-databases"]);
    assert!(
        check.lines().all(|l| l.ends_with("OK")
            || l.starts_with("note")
            || l.trim().is_empty()
            || !l.contains("error")),
        "{check}"
    );
    let logs = String::from_utf8_lossy(&site.compose(&["logs", "db"]).stdout).into_owned();
    assert!(
        !logs.contains("was interrupted") && !logs.contains("automatic recovery"),
        "no crash recovery: {logs}"
    );
}

/// `backup --no-stop` stops nothing: the databases are dumped hot, each in its transaction, and
/// the files copied live; the backup says, item by item, which holds one point in time.
#[test]
fn a_backup_without_a_stop_says_per_item_what_holds_one_point_in_time() {
    let compose = require_docker!();
    let site = Site::new(compose);
    site.up();
    let b = json_of(&site, &["backup", "--no-stop"]);
    assert_eq!(b["live"], true);
    assert!(b["services_stopped"].as_array().unwrap().is_empty(), "{}", b["services_stopped"]);
    let items: Vec<(String, bool, String)> = b["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let s = |k: &str| i[k].as_str().unwrap().to_string();
            (s("item"), i["point_in_time"].as_bool().unwrap(), s("how"))
        })
        .collect();
    let of =
        |name: &str| items.iter().find(|i| i.0.contains(name)).unwrap_or_else(|| panic!("{name}: {items:?}"));
    for dump in
        ["databases/db/site.sql", "databases/maria/all-databases.sql", "databases/notes/data%2Fnotes.db"]
    {
        assert!(of(dump).1, "{:?}", of(dump));
    }
    let uploads = of("/uploads");
    assert!(!uploads.1 && uploads.2.contains("app"), "{uploads:?}");
    assert!(
        !items.iter().any(|i| i.0.contains("pgdata")),
        "the server's data is dumped, not copied: {items:?}"
    );
    // The text says it too.
    let out = site.run(&["backup", "--no-stop"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("what holds one point in time:"), "{text}");
    assert!(text.lines().any(|l| l.contains("no ") && l.contains("/uploads: copied while app")), "{text}");
    site.wait_healthy(&SERVICES);
}

/// A dump tool missing from the container refuses the backup before anything stops; one that
/// fails while dumping fails the backup with the tool's message: the apps run again, the record
/// is failed, no partial file is left.
#[test]
fn a_failing_dump_fails_the_backup_cleanly() {
    let compose = require_docker!();
    let site = Site::new(compose);
    site.up();
    let pg_dump = site.exec("db", &["sh", "-c", "command -v pg_dump"]);
    site.exec("db", &["mv", &pg_dump, &format!("{pg_dump}.away")]);
    let out = site.run(&["backup"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pg_dump") && err.contains("not found"), "{err}");
    assert_eq!(json_of(&site, &["list"]), serde_json::json!([]), "refused before anything was recorded");

    // A pg_dump that answers its version and then fails, as on a full disk.
    let fake = format!(
        "#!/bin/sh\ncase \"$1\" in --version) exec {pg_dump}.away --version;; esac\n\
         echo 'pg_dump: error: could not write to output file: No space left on device' >&2\nexit 1\n"
    );
    site.exec("db", &["sh", "-c", &format!("printf '%s' \"$0\" > {pg_dump} && chmod 755 {pg_dump}"), &fake]);
    let out = site.run(&["backup"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space left on device"), "{err}");
    site.wait_healthy(&SERVICES);
    site.assert_one_failed_backup_and_no_file();
}

/// SIGKILL (abort) while a rollback loads the first dump: the next command undoes the rollback
/// (the servers' old data directories were only moved aside), and the site is as before it.
#[test]
fn a_crash_while_loading_a_dump_is_undone_by_the_next_command() {
    let compose = require_docker!();
    let site = Site::new(compose);
    site.up();
    let b = json_of(&site, &["backup"]);
    site.psql("CREATE TABLE after_backup (x int)");
    let id = b["id"].as_i64().unwrap().to_string();
    let out = site
        .nuwax()
        .args(["rollback", &id, "--yes"])
        .env("NUWAX_TEST_CRASH", "rollback-while-loading")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the crash point aborts");
    let status = site.run(&["status"]);
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let said = String::from_utf8_lossy(&status.stderr);
    assert!(said.contains("undone"), "{said}");
    site.wait_healthy(&SERVICES);
    assert_eq!(
        site.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'after_backup'"),
        "1",
        "as before the rollback"
    );
    assert_eq!(site.psql("SELECT max(n) = count(*) FROM ticks"), "t");
}

/// SIGKILL once the dumps are started and the apps run again, before the dumps are read: the
/// dump processes end with nuwax's connection, the next command abandons the backup (failed,
/// no partial file) and every service runs.
#[test]
fn sigkill_while_dumps_are_held_leaves_nothing_behind() {
    let compose = require_docker!();
    let site = Site::new(compose);
    site.up();
    // More than the pipes between pg_dump and nuwax hold, so that pg_dump waits on them.
    site.psql("CREATE TABLE big AS SELECT g, md5(g::text) || repeat('x', 1000) AS pad FROM generate_series(1, 40000) g");
    let (child, pause) = site.held_at("backup-dumps-started", &["backup"]);
    assert!(site.exec("db", &["busybox", "ps", "-o", "args"]).contains("pg_dump"), "the dumps are held");
    crate::support::kill_held(child, &pause);
    let status = site.run(&["status"]);
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert!(String::from_utf8_lossy(&status.stderr).contains("abandoned"));
    site.wait_healthy(&SERVICES);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while site.exec("db", &["busybox", "ps", "-o", "args"]).contains("pg_dump") {
        assert!(std::time::Instant::now() < deadline, "a pg_dump outlived nuwax");
        std::thread::sleep(Duration::from_millis(200));
    }
    let list = json_of(&site, &["list"]);
    assert_eq!(list[0]["status"], "failed");
    let partial = std::fs::read_dir(site.dir.join("backups"))
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with(".nuwax-partial"));
    assert!(!partial);
}
