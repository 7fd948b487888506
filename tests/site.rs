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
