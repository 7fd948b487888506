//! Major-version upgrades of a real database server: the site's PostgreSQL 15 (Debian 12's
//! packages) to 17 (Debian 13's), by a package that names `db` in `reload`. The pre-upgrade
//! backup dumps the old server while it runs, the new server starts on a new volume and loads
//! the dumps; the old volume is never touched, so the way back is the old volume as it was.

use std::path::PathBuf;
use std::time::Duration;

use crate::require_docker;
use crate::support::site::{Site, newer_postgres_image};

/// A package moving `db` to `nuwax-postgres:17` on the volume `volume` (`pgdata17`: a new
/// one); `db_env` adds lines to db's environment.
fn package_to_17(site: &Site, volume: &str, db_env: &str) -> PathBuf {
    let pkg = site.dir.with_file_name(format!("{}-pkg-17", site.name));
    std::fs::create_dir_all(&pkg).unwrap();
    let compose = std::fs::read_to_string(site.dir.join("compose.yaml")).unwrap();
    let old_image = "image: ${NUWAX_SITE_PG_IMAGE:-nuwax-postgres:15}";
    assert!(compose.contains(old_image));
    let compose = compose
        .replacen(old_image, "image: nuwax-postgres:17", 1)
        .replace(
            "      - pgdata:/var/lib/postgresql/data",
            &format!("      - {volume}:/var/lib/postgresql/data"),
        )
        .replace("volumes:\n  pgdata:\n", "volumes:\n  pgdata:\n  pgdata17:\n")
        .replace("      POSTGRES_DB: site\n", &format!("      POSTGRES_DB: site\n{db_env}"));
    std::fs::write(pkg.join("compose.yaml"), compose).unwrap();
    std::fs::write(
        pkg.join("nuwax-package.toml"),
        "name = \"site\"\nversion = \"2\"\nreload = [\"db\"]\n\n[[files]]\nsrc = \"compose.yaml\"\ndest = \"compose.yaml\"\n",
    )
    .unwrap();
    pkg
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The PostgreSQL major version whose files a volume holds (its `PG_VERSION`).
fn files_version(volume: &str) -> String {
    let out = std::process::Command::new("docker")
        .args(["volume", "inspect", "-f", "{{.Mountpoint}}", volume])
        .output()
        .unwrap();
    assert!(out.status.success(), "volume {volume}: {}", stderr(&out));
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    std::fs::read_to_string(dir.join("PG_VERSION")).unwrap_or_default().trim().to_string()
}

fn site_on_15(compose: crate::support::ComposeCli) -> Site {
    newer_postgres_image();
    let site = Site::new(compose);
    site.up();
    std::thread::sleep(Duration::from_millis(1000));
    assert!(site.psql("SHOW server_version").starts_with("15."));
    site
}

/// The way back of a reload left version 1 exactly: PostgreSQL 15 on its old volume, the rows
/// without gap, the new volume gone.
fn assert_back_on_15(site: &Site) {
    site.wait_healthy(&["db", "app", "maria", "shop"]);
    assert!(site.psql("SHOW server_version").starts_with("15."), "the old server runs again");
    assert_eq!(files_version(&format!("{}_pgdata", site.name)), "15");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(site.psql("SELECT max(n) = count(*) FROM ticks"), "t", "the rows have no gap");
    let volumes = site.volumes();
    assert!(!volumes.iter().any(|v| v.ends_with("_pgdata17")), "the new volume is gone: {volumes:?}");
    let status = site.run(&["status"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("version   1"));
}

#[test]
fn postgres_15_to_17_reloads_the_data_and_keeps_the_old_volume() {
    let site = site_on_15(require_docker!());
    // The new server on the old one's data: refused before anything is touched.
    let same = package_to_17(&site, "pgdata", "");
    let out = site.run(&["upgrade", "--package", same.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("mounts the old server's data"), "{}", stderr(&out));
    std::fs::remove_dir_all(&same).unwrap();

    let pkg = package_to_17(&site, "pgdata17", "");
    let dry = site.run(&["upgrade", "--package", pkg.to_str().unwrap(), "--dry-run"]);
    assert!(dry.status.success(), "{}", stderr(&dry));
    let said = String::from_utf8_lossy(&dry.stdout);
    assert!(said.contains("reload postgres db") && said.contains("_pgdata17"), "{said}");

    let out = site.run(&["--json", "upgrade", "--package", pkg.to_str().unwrap()]);
    assert!(out.status.success(), "upgrade: {}", stderr(&out));
    let o: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(o["status"], "upgraded");
    site.wait_healthy(&["db", "app", "maria", "shop"]);
    assert!(site.psql("SHOW server_version").starts_with("17."), "the new server runs");
    assert_eq!(files_version(&format!("{}_pgdata17", site.name)), "17");
    assert_eq!(files_version(&format!("{}_pgdata", site.name)), "15", "the old data is untouched");
    // The app goes on writing into the reloaded table: every row of the dump, and no gap after.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(site.psql("SELECT max(n) = count(*) FROM ticks"), "t", "no gap and no duplicate");
    let backup = o["backup_id"].as_i64().unwrap().to_string();
    let shown = site.run(&["--json", "show", &backup]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    let dumps = shown.to_string();
    assert!(dumps.contains("databases/db/site.sql"), "the pre-upgrade backup holds the dump: {dumps}");
    let amcheck =
        site.exec("db", &["pg_amcheck", "-U", "postgres", "--all", "--install-missing", "--heapallindexed"]);
    assert!(amcheck.is_empty(), "pg_amcheck: {amcheck}");

    // And back: the pre-upgrade backup brings PostgreSQL 15 with the dump's rows.
    site.psql("CREATE TABLE made_by_version_2 (x int)");
    let out = site.run(&["rollback", &backup, "--yes"]);
    assert!(out.status.success(), "rollback: {}", stderr(&out));
    site.wait_healthy(&["db", "app", "maria", "shop"]);
    assert!(site.psql("SHOW server_version").starts_with("15."), "the old server runs again");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(site.psql("SELECT max(n) = count(*) FROM ticks"), "t", "no gap");
    assert_eq!(
        site.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'made_by_version_2'"),
        "0",
        "the data of the backup's moment, not of version 2's run"
    );
    // The server started fresh on the volume the backup's configs mount; version 2's volume is
    // no part of that backup and is left as it was.
    assert_eq!(files_version(&format!("{}_pgdata", site.name)), "15");
    assert_eq!(files_version(&format!("{}_pgdata17", site.name)), "17", "version 2's data is left alone");
}

/// The new server does not take the dump (the database uses `adminpack`, an extension
/// PostgreSQL 17 no longer ships): the upgrade rolls back to the old server on its untouched
/// volume and removes the new one.
#[test]
fn a_reload_that_fails_rolls_back_to_the_old_volume() {
    let site = site_on_15(require_docker!());
    site.psql("CREATE EXTENSION adminpack");
    let pkg = package_to_17(&site, "pgdata17", "");
    let out = site.run(&["upgrade", "--package", pkg.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(11), "rolled back: {err}");
    assert!(err.contains("loading the databases of db") && err.contains("adminpack"), "{err}");
    assert_back_on_15(&site);
}

/// SIGKILL while loading into the new server: the next command rolls the upgrade back.
#[test]
fn a_crash_while_reloading_is_rolled_back_by_the_next_command() {
    let site = site_on_15(require_docker!());
    let pkg = package_to_17(&site, "pgdata17", "");
    let out = site
        .nuwax()
        .args(["upgrade", "--package", pkg.to_str().unwrap()])
        .env("NUWAX_TEST_CRASH", "upgrade-while-loading")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the crash point aborts");
    let status = site.run(&["status"]);
    assert!(status.status.success(), "{}", stderr(&status));
    assert!(stderr(&status).contains("rolled back"), "{}", stderr(&status));
    assert_back_on_15(&site);
}
