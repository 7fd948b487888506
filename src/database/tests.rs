use std::collections::BTreeMap;

use super::*;
use crate::engine::fake::FakeEngine;

fn container(service: &str, command: &[&str], env: &[&str], image: &str) -> Container {
    Container {
        command: command.iter().map(|s| s.to_string()).collect(),
        env_names: env.iter().map(|s| s.to_string()).collect(),
        image: image.to_string(),
        ..FakeEngine::container(service)
    }
}

fn kinds(found: &[Found]) -> Vec<(String, Option<Kind>)> {
    found.iter().map(|f| (f.service.clone(), f.kind)).collect()
}

#[test]
fn the_official_images_commands_tell_their_server() {
    let cs = [
        container(
            "pg",
            &["docker-entrypoint.sh", "postgres"],
            &["PGDATA", "POSTGRES_PASSWORD"],
            "postgres:15",
        ),
        container("pg2", &["/usr/local/bin/docker-entrypoint.sh", "postgres", "-c", "fsync=on"], &[], "x"),
        container("gosu", &["gosu", "postgres", "postgres"], &[], "x"),
        container("maria", &["docker-entrypoint.sh", "mariadbd"], &["MARIADB_ROOT_PASSWORD"], "mariadb:11"),
        container("oldmaria", &["docker-entrypoint.sh", "mysqld"], &["MARIADB_VERSION"], "mariadb:10.3"),
        container("mysql", &["docker-entrypoint.sh", "mysqld"], &["MYSQL_ROOT_PASSWORD"], "mysql:8"),
        container("cache", &["docker-entrypoint.sh", "redis-server", "--appendonly", "yes"], &[], "redis:7"),
    ];
    let found = detect(&cs, &BTreeMap::new()).unwrap();
    assert_eq!(
        kinds(&found),
        vec![
            ("cache".into(), Some(Kind::Redis)),
            ("gosu".into(), Some(Kind::Postgres)),
            ("maria".into(), Some(Kind::Mariadb)),
            ("mysql".into(), Some(Kind::Mysql)),
            ("oldmaria".into(), Some(Kind::Mariadb)),
            ("pg".into(), Some(Kind::Postgres)),
            ("pg2".into(), Some(Kind::Postgres)),
        ]
    );
    assert!(found.iter().all(|f| f.said == Said::Command));
    assert_eq!(found[5].evidence, "command `docker-entrypoint.sh postgres`");
}

#[test]
fn clients_and_apps_in_a_database_image_are_not_servers() {
    // The site's app runs in the PostgreSQL image with the image's environment: its command
    // is what counts.
    let cs = [
        container("app", &["/app/run", "app"], &["PGDATA", "PG_MAJOR"], "nuwax-postgres:15"),
        container("backup", &["pg_dump", "-U", "postgres", "-h", "db"], &[], "postgres:15"),
        container("web", &["nginx", "-g", "daemon off;"], &[], "nginx"),
    ];
    assert_eq!(detect(&cs, &BTreeMap::new()).unwrap(), Vec::<Found>::new());
}

#[test]
fn settings_and_labels_say_what_the_command_does_not() {
    let mut labelled = container("custom", &["/start.sh"], &[], "acme/db");
    labelled.labels.insert(LABEL_DATABASE.into(), "postgresql".into());
    let mut denied = container("notdb", &["postgres"], &[], "x");
    denied.labels.insert(LABEL_DATABASE.into(), "none".into());
    let cs =
        [labelled, denied, container("app", &["/srv/app"], &[], "x"), container("m", &["/run.sh"], &[], "x")];
    let mut settings = BTreeMap::new();
    settings.insert(
        "app".to_string(),
        ServiceSettings { database: None, sqlite: vec!["/data/app.db".into()], backup: None },
    );
    settings.insert(
        "m".to_string(),
        ServiceSettings { database: Some("MariaDB".into()), sqlite: vec![], backup: Some("stop".into()) },
    );
    let found = detect(&cs, &settings).unwrap();
    assert_eq!(
        kinds(&found),
        vec![
            ("app".into(), None),
            ("custom".into(), Some(Kind::Postgres)),
            ("m".into(), Some(Kind::Mariadb))
        ]
    );
    assert_eq!(found[0].sqlite, vec!["/data/app.db".to_string()]);
    assert_eq!(
        (found[0].said, found[0].evidence.as_str()),
        (Said::Settings, "nuwax.toml: services.app.sqlite")
    );
    assert_eq!(found[1].said, Said::Label);
    assert_eq!(found[2].said, Said::Settings);
    assert_eq!(found[2].evidence, "nuwax.toml: services.m.database = \"MariaDB\"");
    assert_eq!((found[1].backup, found[2].backup), (Mode::Dump, Mode::Stop));
    assert_eq!(
        (found[0].backup, found[0].backup_said),
        (Mode::Dump, None),
        "SQLite files: dumped by default"
    );
    assert_eq!(found[2].backup_said, Some(Said::Settings));
}

#[test]
fn sqlite_files_are_dumped_unless_a_server_beside_them_cannot_be() {
    let mut said_stop = container("b", &["/srv/app"], &[], "x");
    said_stop.labels.insert(LABEL_BACKUP.into(), "stop".into());
    let cs = [
        container("a", &["/srv/app"], &[], "x"),
        said_stop,
        container("cache", &["redis-server"], &[], "redis"),
    ];
    let files = |paths: &[&str]| ServiceSettings {
        database: None,
        sqlite: paths.iter().map(|p| p.to_string()).collect(),
        backup: None,
    };
    let mut settings = BTreeMap::new();
    settings.insert("a".to_string(), files(&["/data/a.db", "/data/b.db", "/data/a.db"]));
    settings.insert("b".to_string(), files(&["/data/b.db"]));
    settings.insert("cache".to_string(), files(&["/data/c.db"]));
    let found = detect(&cs, &settings).unwrap();
    let modes: Vec<(&str, Mode, Option<Said>)> =
        found.iter().map(|f| (f.service.as_str(), f.backup, f.backup_said)).collect();
    assert_eq!(
        modes,
        [
            ("a", Mode::Dump, None),
            ("b", Mode::Stop, Some(Said::Label)),
            // Redis's data would be copied while it runs: the whole service is stopped.
            ("cache", Mode::Stop, None),
        ]
    );
    assert_eq!(found[0].sqlite, ["/data/a.db", "/data/b.db"], "each file once");
    // SQLite is no server to name.
    settings.insert(
        "a".to_string(),
        ServiceSettings { database: Some("sqlite".into()), sqlite: vec![], backup: None },
    );
    let err = detect(&cs, &settings).unwrap_err().to_string();
    assert!(err.contains("sqlite = ["), "{err}");
}

#[test]
fn the_mount_holding_a_file_is_the_deepest_that_contains_it() {
    let dests = ["/data", "/data/db", "/", "/data/db/notes.db", "/srv"];
    assert_eq!(mount_holding(dests, "/data/db/notes.db"), Some(("/data/db", "notes.db".into())));
    assert_eq!(mount_holding(dests, "/data/x/a.db"), Some(("/data", "x/a.db".into())));
    assert_eq!(mount_holding(dests, "/var/a.db"), Some(("/", "var/a.db".into())));
    assert_eq!(mount_holding(["/data"], "/database/a.db"), None, "a prefix is not a parent");
    assert_eq!(mount_holding(["/data/a.db"], "/data/a.db"), None, "a file mounted alone");
    assert_eq!(mount_holding(["/data/"], "/data/../etc/x"), None);
}

#[test]
fn a_sqlite_dump_is_vacuumed_into_a_temp_file_that_always_goes() {
    let specs = dump::sqlite("c1", "notes", &["/data/it's.db".to_string()]);
    assert_eq!(specs.len(), 1);
    let s = &specs[0];
    assert_eq!((s.name.as_str(), s.database.as_deref()), ("notes/data%2Fit%27s.db", Some("/data/it's.db")));
    assert_eq!(
        (s.kind, s.format.as_str(), s.ready()),
        (Kind::Sqlite, dump::SQLITE_FORMAT, dump::Ready::FirstByte)
    );
    let script = &s.cmd[2];
    assert!(script.starts_with(r"f='/data/it'\''s.db';"), "{script}");
    assert!(script.contains("[ -f \"$f\" ] ||"), "a missing file is an error, not a new database");
    assert!(script.contains("trap 'rm -f \"$t\"' EXIT") && script.contains("VACUUM INTO"), "{script}");
    assert!(!script.contains("exec "), "the shell stays to remove the temp file");
}

#[test]
fn a_wrong_setting_is_an_error_that_names_it() {
    let cs = [container("db", &["/x"], &[], "x")];
    let mut settings = BTreeMap::new();
    settings.insert(
        "db".to_string(),
        ServiceSettings { database: Some("oracle".into()), sqlite: vec![], backup: None },
    );
    let err = detect(&cs, &settings).unwrap_err().to_string();
    assert!(err.contains("services.db.database") && err.contains("oracle"), "{err}");
    settings.insert(
        "db".to_string(),
        ServiceSettings { database: None, sqlite: vec!["app.db".into()], backup: None },
    );
    let err = detect(&cs, &settings).unwrap_err().to_string();
    assert!(err.contains("services.db.sqlite") && err.contains("absolute"), "{err}");
    // dump mode for what nuwax cannot dump, or a mode that does not exist.
    let mut redis = container("cache", &["redis-server"], &[], "redis");
    redis.labels.insert(LABEL_BACKUP.into(), "dump".into());
    let err = detect(&[redis], &BTreeMap::new()).unwrap_err().to_string();
    assert!(err.contains("cannot dump Redis"), "{err}");
    settings.insert(
        "db".to_string(),
        ServiceSettings { database: Some("postgres".into()), sqlite: vec![], backup: Some("copy".into()) },
    );
    let err = detect(&cs, &settings).unwrap_err().to_string();
    assert!(err.contains("\"dump\", \"stop\", \"pause\", \"live\" or \"skip\""), "{err}");
}

#[test]
fn how_a_service_is_taken_is_said_by_the_settings_or_a_label() {
    let mut labelled = container("worker", &["/run"], &[], "x");
    labelled.labels.insert(LABEL_BACKUP.into(), "pause".into());
    let cs = [container("app", &["/srv/app"], &[], "x"), labelled, container("web", &["/srv/web"], &[], "x")];
    let mut settings = BTreeMap::new();
    settings
        .insert("app".to_string(), ServiceSettings { backup: Some("pause".into()), ..Default::default() });
    settings.insert("web".to_string(), ServiceSettings { backup: Some("skip".into()), ..Default::default() });
    let modes = said_modes(&cs, &settings).unwrap();
    let modes: Vec<(&str, Mode)> = modes.iter().map(|(s, m)| (s.as_str(), *m)).collect();
    assert_eq!(modes, [("app", Mode::Pause), ("web", Mode::Skip), ("worker", Mode::Pause)]);
    // The settings win over the label.
    settings
        .insert("worker".to_string(), ServiceSettings { backup: Some("live".into()), ..Default::default() });
    assert_eq!(said_modes(&cs, &settings).unwrap()["worker"], Mode::Live);
    assert!(Mode::Live.keeps_running() && Mode::Skip.keeps_running() && !Mode::Pause.keeps_running());
    settings
        .insert("web".to_string(), ServiceSettings { backup: Some("freeze".into()), ..Default::default() });
    let err = super::said_modes(&cs, &settings).unwrap_err().to_string();
    assert!(err.contains("services.web") && err.contains("pause"), "{err}");
}

#[test]
fn postgres_dumps_each_database_as_a_plain_script_that_recreates_it() {
    let dumps = dump::postgres(["postgres", "site", "globals", "it's"].into_iter());
    let names: Vec<(&str, Option<&str>, &str)> =
        dumps.iter().map(|(n, d, f, _)| (n.as_str(), d.as_deref(), *f)).collect();
    assert_eq!(
        names,
        [
            ("globals.sql", None, "sql"),
            ("postgres.sql", Some("postgres"), dump::PG_PLAIN),
            ("site.sql", Some("site"), dump::PG_PLAIN),
            ("%67lobals.sql", Some("globals"), dump::PG_PLAIN),
            ("it%27s.sql", Some("it's"), dump::PG_PLAIN),
        ],
        "a database named `globals` does not take the roles' file"
    );
    let script = &dumps[4].3;
    assert!(
        script.starts_with("exec pg_dump -U \"${POSTGRES_USER:-postgres}\" -Fp --create --clean --if-exists"),
        "{script}"
    );
    assert!(script.ends_with(r"-d 'it'\''s'"), "{script}");
    assert!(dumps[0].3.contains("pg_dumpall") && dumps[0].3.contains("--globals-only"));
    let (name, database, format, script) = dumps[2].clone();
    let spec = dump::Spec {
        service: "db".into(),
        container: "c1".into(),
        kind: Kind::Postgres,
        name,
        database,
        format: format.into(),
        cmd: vec![script],
    };
    assert_eq!(spec.ready(), dump::Ready::FirstByte, "pg_dump writes its script after its snapshot");
}
