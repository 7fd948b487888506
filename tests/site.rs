//! The site stack (`compose/site`): real PostgreSQL and MariaDB servers built from Debian
//! packages, and apps writing to them.

use std::time::Duration;

use crate::require_docker;
use crate::support::site::Site;

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
                d["kind"].as_str().unwrap().into(),
                d["said"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        dbs,
        vec![
            ("db".into(), "postgres".into(), "command".into()),
            ("maria".into(), "mariadb".into(), "command".into())
        ]
    );
}

/// Dumps run inside the servers' own containers through the engine's exec API and stream out:
/// PostgreSQL per database in the custom format plus the globals, MariaDB whole. A dump that
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
        assert_eq!(names, ["db/globals.sql", "db/postgres.pgdump", "db/site.pgdump"]);
        let (server, tool) = dump::versions(&engine, &db, "db", Kind::Postgres).await.unwrap();
        assert!(server.starts_with("15."), "{server}");
        assert!(tool.starts_with("pg_dump (PostgreSQL) 15."), "{tool}");

        let all = |started: dump::Started| async move {
            let mut bytes = started.head;
            let mut stream = started.stream;
            stream.stdout.read_to_end(&mut bytes).await.unwrap();
            let end = dump::finish(&started.spec, (stream.ended).await.unwrap()).await;
            (bytes, end)
        };
        let site_dump = specs.iter().find(|s| s.name == "db/site.pgdump").unwrap().clone();
        let started = dump::start(&engine, site_dump.clone()).await.unwrap();
        assert!(started.head.starts_with(b"PGDMP"), "pg_dump's custom format");
        let (bytes, end) = all(started).await;
        end.unwrap();
        assert!(bytes.len() > 1000 && bytes.windows(5).any(|w| w == b"ticks"), "{} bytes", bytes.len());

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
/// engine's exec stdin. PostgreSQL into a new database, MariaDB over a dropped table.
#[test]
fn a_dump_goes_from_the_server_into_an_archive_and_back_into_the_server() {
    use nuwax::archive::manifest::DumpRecord;
    use nuwax::archive::{ArchiveWriter, Cancel, Compression, NoProgress, WriteOptions};
    use nuwax::database::{Kind, dump};
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
        .find(|s| s.name == "db/site.pgdump")
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
    m.dumps = vec![record(&pg), record(&my)];
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
    for spec in [pg, my] {
        let started = rt.block_on(dump::start(engine.as_ref(), spec)).unwrap();
        let dump::Started { spec, head, stream, .. } = started;
        let bridge = tokio_util::io::SyncIoBridge::new_with_handle(stream.stdout, rt.handle().clone());
        let reader = std::io::Read::chain(&head[..], bridge);
        let name = format!("databases/{}", spec.name);
        // Outside the runtime: the bridge blocks on the runtime's handle for each read.
        let digest = w.append_dump(&name, reader).unwrap();
        assert!(digest.bytes > 0);
        rt.block_on(async { dump::finish(&spec, stream.ended.await.unwrap()).await }).unwrap();
    }
    w.finish().unwrap();
    let report = nuwax::archive::verify(&archive, None, &Cancel::default(), &NoProgress).unwrap();
    assert_eq!(report.dumps.len(), 2);

    // PostgreSQL: into a new database, through pg_restore's stdin.
    let mut bytes = Vec::new();
    nuwax::archive::read_dump(&archive, "databases/db/site.pgdump", &mut bytes, &Cancel::default()).unwrap();
    site.psql("CREATE DATABASE restored");
    let load = |cmd: &str, bytes: Vec<u8>, container: &str| {
        let cmd: Vec<String> = ["sh", "-c", cmd].iter().map(|s| s.to_string()).collect();
        rt.block_on(engine.exec_stdin(container, &cmd, None, Box::pin(std::io::Cursor::new(bytes)))).unwrap()
    };
    let out = load("pg_restore -U postgres -d restored --exit-on-error", bytes.clone(), &db);
    assert_eq!(out.exit_code, 0, "{}", out.output);
    let restored = site.exec(
        "db",
        &["psql", "-U", "postgres", "-d", "restored", "-qAtX", "-c", "SELECT count(*), max(n) FROM ticks"],
    );
    let (count, max) = restored.split_once('|').unwrap();
    assert_eq!(count, max, "no gap in the dumped ticks");
    assert!(count.parse::<u64>().unwrap() >= ticks_before, "{count} < {ticks_before}");
    // A load that fails says why.
    let out = load("pg_restore -U postgres -d nosuchdb --exit-on-error", bytes, &db);
    assert_ne!(out.exit_code, 0);
    assert!(out.output.contains("nosuchdb"), "{}", out.output);

    // MariaDB: the dropped table comes back.
    let mut bytes = Vec::new();
    nuwax::archive::read_dump(&archive, "databases/maria/all-databases.sql", &mut bytes, &Cancel::default())
        .unwrap();
    site.compose(&["stop", "shop"]);
    site.mariadb("DROP TABLE orders");
    let out = load("mariadb", bytes, &maria);
    assert_eq!(out.exit_code, 0, "{}", out.output);
    let (count, max) = {
        let r = site.mariadb("SELECT count(*), max(n) FROM orders");
        let mut it = r.split_whitespace();
        (it.next().unwrap().to_string(), it.next().unwrap().to_string())
    };
    assert_eq!(count, max);
    assert!(count.parse::<u64>().unwrap() >= orders_before);
}
