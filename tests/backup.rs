//! `nuwax backup` on the demo stack with a real engine: what the archive holds, what the catalog
//! says, which services run afterwards.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::require_docker;
use crate::support::{ComposeCli, Demo, gnu_untar, json, stderr, tree};

/// Adds the shapes a backup must keep to a directory: nested and empty dirs, a symlink, odd
/// modes, another owner, a long unicode name.
fn add_odd_files(dir: &Path) {
    let t = dir.join("odd");
    std::fs::create_dir_all(t.join("empty/deeper-empty")).unwrap();
    std::fs::create_dir_all(t.join("nested/a/b")).unwrap();
    std::fs::write(
        t.join("nested/a/b/data.bin"),
        (0..70_000u32).map(|i| (i * 31 % 251) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    std::fs::write(t.join("secret.key"), "k").unwrap();
    std::fs::set_permissions(t.join("secret.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(t.join("script.sh"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(t.join("script.sh"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    symlink("nested/a/b/data.bin", t.join("link")).unwrap();
    symlink("/does/not/exist", t.join("dangling")).unwrap();
    let long = format!("{}-ünïcødé-名前.txt", "x".repeat(120));
    std::fs::write(t.join(long), "long").unwrap();
    if crate::support::is_root() {
        std::os::unix::fs::lchown(t.join("secret.key"), Some(1234), Some(4321)).unwrap();
    }
}

fn archive_path(v: &serde_json::Value) -> PathBuf {
    PathBuf::from(v["path"].as_str().unwrap())
}

#[test]
fn backup_holds_every_volume_bind_and_config_exactly_and_services_come_back() {
    backup_holds_everything(require_docker!());
}

#[test]
fn backup_holds_every_volume_bind_and_config_exactly_and_services_come_back_compose_v1() {
    backup_holds_everything(require_docker!(V1));
}

fn backup_holds_everything(compose: ComposeCli) {
    let demo = Demo::new(compose);
    demo.up();
    // A service that was stopped stays stopped.
    let out = demo.compose(&["stop", "worker"]);
    assert!(out.status.success());
    let dbdata = demo.volume_path("dbdata");
    add_odd_files(&dbdata);
    add_odd_files(&demo.dir.join("uploads"));

    let out = demo.run(&["--json", "backup", "--note", "first"]);
    assert!(out.status.success(), "backup failed: {}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["status"], "complete");
    assert!(v["id"].as_i64().unwrap() >= 1);
    assert!(v["downtime_ms"].as_u64().unwrap() > 0);
    let path = archive_path(&v);
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("backup_manual_v1_") && name.ends_with(&format!("_{}.tar.zst", v["id"])),
        "{name}"
    );
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

    // Running services run again; the stopped one stays stopped.
    assert_eq!(demo.state_of("db"), "running/healthy");
    assert_eq!(demo.state_of("app"), "running/healthy");
    assert!(demo.state_of("worker").starts_with("exited"), "{:?}", demo.states());

    // GNU tar reads it; every byte, mode, owner, symlink and empty dir is there.
    let x = gnu_untar(&path);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(x.path().join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["project"], demo.name.as_str());
    assert_eq!(manifest["backup_id"], v["id"]);
    let vol = x.path().join(format!("volumes/{}", demo.volume("dbdata")));
    // The db appends to its journal again once it runs: the archive holds a prefix of it.
    tree::assert_same(&dbdata, &vol, &["journal.log"]);
    let now = std::fs::read(dbdata.join("journal.log")).unwrap();
    let then = std::fs::read(vol.join("journal.log")).unwrap();
    assert!(
        now.starts_with(&then) && then.ends_with(b"shutdown\n"),
        "journal in the archive is not the stopped db's"
    );
    let uploads = demo.dir.join("uploads");
    tree::assert_same(
        &uploads,
        &x.path().join(format!("binds/{}", uploads.display().to_string().trim_start_matches('/'))),
        &[],
    );
    let cache = demo.volume_path("cache");
    tree::assert_same(&cache, &x.path().join(format!("volumes/{}", demo.volume("cache"))), &[]);
    for f in ["compose.yaml", ".env"] {
        assert_eq!(
            std::fs::read(demo.dir.join(f)).unwrap(),
            std::fs::read(x.path().join("config").join(f)).unwrap(),
            "{f}"
        );
    }
    assert!(x.path().join("checksums.json").is_file());
    let services: Vec<&str> =
        manifest["services"].as_array().unwrap().iter().map(|s| s["service"].as_str().unwrap()).collect();
    assert_eq!(services, ["app", "db", "worker"]);
    assert!(
        manifest["services"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["image_id"].as_str().unwrap().starts_with("sha256:"))
    );

    // The catalog agrees, and verify proves it.
    let list = demo.list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["status"], "complete");
    assert_eq!(list[0]["path"], v["path"]);
    assert_eq!(list[0]["size_bytes"], v["size_bytes"]);
    assert_eq!(list[0]["note"], "first");
    let out = demo.run(&["verify", &v["id"].to_string()]);
    assert!(out.status.success(), "verify: {}", stderr(&out));
    let out = demo.run(&["show", &v["id"].to_string()]);
    assert!(out.status.success() && crate::support::stdout(&out).contains("dbdata"));

    // Each service's image is kept by a tag until the backup is deleted.
    let kept = format!("nuwax-keep/{}-db:backup-{}", demo.name, v["id"]);
    let inspect = |r: &str| {
        Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", r]).output().unwrap()
    };
    let db_image =
        manifest["services"].as_array().unwrap().iter().find(|s| s["service"] == "db").unwrap()["image_id"]
            .clone();
    assert_eq!(String::from_utf8_lossy(&inspect(&kept).stdout).trim(), db_image.as_str().unwrap());
    let out = demo.run(&["delete", &v["id"].to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!path.exists());
    assert!(!inspect(&kept).status.success(), "keep tag survived delete");
    assert!(demo.list().is_empty());
}

#[test]
fn gzip_and_plain_archives_and_engine_volume_access_hold_the_same_data() {
    let compose = require_docker!();
    let demo = Demo::new(compose);
    demo.up();
    add_odd_files(&demo.volume_path("cache"));
    let mut trees = Vec::new();
    for (args, env) in [
        (vec!["--json", "backup", "--compression", "gzip", "--level", "1"], None),
        (vec!["--json", "backup", "--compression", "none"], None),
        (vec!["--json", "backup"], Some("engine")),
    ] {
        let mut cmd = demo.nuwax();
        cmd.args(&args);
        if let Some(a) = env {
            cmd.env("NUWAX_VOLUME_ACCESS", a);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let v = json(&out);
        let path = archive_path(&v);
        let manifest = nuwax::archive::read_manifest(&path).unwrap();
        let cache = manifest.mounts.iter().find(|m| m.name == demo.volume("cache")).unwrap();
        let expect = if env.is_some() {
            nuwax::archive::manifest::Access::Engine
        } else {
            nuwax::archive::manifest::Access::Host
        };
        assert_eq!(cache.access, expect);
        let x = gnu_untar(&path);
        trees.push((x.path().join(format!("volumes/{}/odd", demo.volume("cache"))), x));
    }
    // The worker rewrites its own files on every start; the tree the test made holds still.
    let odd = demo.volume_path("cache").join("odd");
    for (t, _) in &trees {
        tree::assert_same(&odd, t, &[]);
    }
    assert_eq!(demo.state_of("worker"), "running/healthy");
}

#[test]
fn a_missing_bind_mount_is_skipped_with_a_warning_and_recorded() {
    let compose = require_docker!();
    let demo = Demo::new(compose);
    demo.up();
    let uploads = demo.dir.join("uploads");
    std::fs::remove_dir_all(&uploads).unwrap();
    let out = demo.run(&["--json", "backup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not exist"), "no warning: {}", stderr(&out));
    let v = json(&out);
    let manifest = nuwax::archive::read_manifest(&archive_path(&v)).unwrap();
    assert!(manifest.skipped.iter().any(|s| s.path == uploads.to_string_lossy()), "{:?}", manifest.skipped);
    assert!(v["skipped"].as_array().unwrap().iter().any(|s| s["path"] == uploads.to_string_lossy().as_ref()));
}

#[test]
fn an_unreachable_engine_is_one_clear_line_and_no_docker_backs_up_files_only() {
    let compose = require_docker!();
    let demo = Demo::new(compose);
    let out =
        demo.nuwax().args(["backup"]).env("DOCKER_HOST", "unix:///nonexistent/docker.sock").output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("cannot reach the Docker engine at unix:///nonexistent/docker.sock"), "{err}");
    assert!(err.contains("--no-docker"), "no hint: {err}");
    assert!(demo.list().is_empty());

    let out = demo
        .nuwax()
        .args(["--json", "backup", "--no-docker"])
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("services were not touched"));
    let v = json(&out);
    assert_eq!(v["downtime_ms"], serde_json::Value::Null);
    let x = gnu_untar(&archive_path(&v));
    assert!(x.path().join("config/compose.yaml").is_file());
    let uploads = demo.dir.join("uploads");
    tree::assert_same(
        &uploads,
        &x.path().join(format!("binds/{}", uploads.display().to_string().trim_start_matches('/'))),
        &[],
    );
}
