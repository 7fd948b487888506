//! `nuwax upgrade` on the demo stack with a real engine: v1 → v2 → v3-broken and back.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::require_docker;
use crate::support::{ComposeCli, Demo, json, stderr, stdout, tree};

pub(crate) fn history(demo: &Demo) -> Vec<serde_json::Value> {
    let out = demo.run(&["--json", "history"]);
    assert!(out.status.success(), "history: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

pub(crate) fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// What must be exactly as before a failed upgrade: configs and data (the db's journal and
/// the worker's cache are written by the running services all the time).
pub(crate) struct Snapshot {
    compose: Vec<u8>,
    env: Vec<u8>,
    dbdata: std::collections::BTreeMap<String, tree::Node>,
    uploads: std::collections::BTreeMap<String, tree::Node>,
}

pub(crate) fn snapshot(demo: &Demo) -> Snapshot {
    let mut dbdata = tree::snapshot(&demo.volume_path("dbdata"));
    dbdata.remove("journal.log");
    Snapshot {
        compose: std::fs::read(demo.dir.join("compose.yaml")).unwrap(),
        env: std::fs::read(demo.dir.join(".env")).unwrap(),
        dbdata,
        uploads: tree::snapshot(&demo.dir.join("uploads")),
    }
}

pub(crate) fn assert_unchanged(demo: &Demo, before: &Snapshot) {
    let now = snapshot(demo);
    assert!(now.compose == before.compose, "compose.yaml differs");
    assert!(now.env == before.env, ".env differs: {}", String::from_utf8_lossy(&now.env));
    assert_eq!(now.dbdata, before.dbdata, "dbdata differs");
    assert_eq!(now.uploads, before.uploads, "uploads differ");
}

/// The demo running v1, the v2 package beside it, and what must come back after a failed upgrade.
pub(crate) struct V1 {
    pub demo: Demo,
    pub pkg: std::path::PathBuf,
    pub before: Snapshot,
    pub v1_image: String,
}

pub(crate) fn v1_with_package_2(compose: ComposeCli) -> V1 {
    let demo = Demo::new(compose);
    demo.up();
    let pkg = demo.package("2");
    let before = snapshot(&demo);
    let v1_image = demo.image_of("app");
    V1 { demo, pkg, before, v1_image }
}

#[test]
fn v1_to_v2_upgrades_and_v3_broken_rolls_back_automatically() {
    upgrades_and_rolls_back(require_docker!());
}

#[test]
fn v1_to_v2_upgrades_and_v3_broken_rolls_back_automatically_compose_v1() {
    upgrades_and_rolls_back(require_docker!(V1));
}

fn upgrades_and_rolls_back(compose: ComposeCli) {
    let demo = Demo::new(compose);
    demo.up();
    std::fs::write(demo.volume_path("dbdata").join("customer.txt"), "kept across upgrades").unwrap();
    let v1_image = demo.image_of("app");

    // The package as a file, built by `nuwax package build`, with its sha256 beside it.
    let pkg_dir = demo.package("2");
    let pkg = pkg_dir.parent().unwrap().join("nuwax-demo-2.tar.zst");
    let out = demo.run(&["package", "build", pkg_dir.to_str().unwrap(), "-o", pkg.to_str().unwrap()]);
    assert!(out.status.success(), "package build: {}", stderr(&out));
    assert!(Path::new(&format!("{}.sha256", pkg.display())).is_file());

    // --dry-run changes nothing.
    let before = snapshot(&demo);
    let out = demo.run(&["upgrade", "--package", pkg.to_str().unwrap(), "--dry-run"]);
    assert!(out.status.success(), "dry run: {}", stderr(&out));
    let plan = stdout(&out);
    assert!(plan.contains("1 -> 2") && plan.contains("dry run: nothing was changed"), "{plan}");
    assert_unchanged(&demo, &before);
    assert_eq!(demo.image_of("app"), v1_image);
    assert!(history(&demo).is_empty());

    // v1 -> v2.
    let out = demo.run(&["--json", "upgrade", "--package", pkg.to_str().unwrap()]);
    assert!(out.status.success(), "upgrade to v2: {}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["status"], "upgraded");
    let backup_id = v["backup_id"].as_i64().unwrap();
    demo.wait_healthy(&["db", "app", "worker"]);
    let v2_image = demo.image_of("app");
    assert_ne!(v2_image, v1_image, "app does not run the v2 image");
    let dbdata = demo.volume_path("dbdata");
    assert_eq!(read(&dbdata.join("schema_version")).trim(), "2", "the db did not migrate");
    assert!(read(&dbdata.join("hooks.log")).contains("v2 hook"), "the hook did not run");
    assert!(read(&demo.dir.join(".env")).contains("APP_VERSION=2"));
    let h = history(&demo);
    assert_eq!((h[0]["status"].as_str(), h[0]["backup_id"].as_i64()), (Some("upgraded"), Some(backup_id)));
    assert_eq!((h[0]["from_version"].as_str(), h[0]["to_version"].as_str()), (Some("1"), Some("2")));
    let backups = demo.list();
    let pre = backups.iter().find(|b| b["id"].as_i64() == Some(backup_id)).unwrap();
    assert_eq!(pre["kind"], "pre-upgrade");
    let status = stdout(&demo.run(&["status"]));
    assert!(status.contains("version   2") && status.contains("upgraded"), "{status}");
    let cli = format!(
        "compose   {} (v{}), chosen by NUWAX_COMPOSE={}",
        demo.compose.command.join(" "),
        demo.compose.version,
        demo.compose_choice()
    );
    assert!(status.contains(&cli), "{status}");

    // v2 -> v3-broken: the health gate fails and everything comes back as it was on v2.
    let before = snapshot(&demo);
    let pkg3 = demo.package("3-broken");
    let out = demo.run(&["upgrade", "--package", pkg3.to_str().unwrap(), "--health-timeout", "30"]);
    assert_eq!(out.status.code(), Some(11), "expected 'failed and rolled back': {}", stderr(&out));
    assert!(stderr(&out).contains("rolled back to backup"), "{}", stderr(&out));
    demo.wait_healthy(&["db", "app", "worker"]);
    assert_eq!(demo.image_of("app"), v2_image, "v2 is not running again");
    assert_unchanged(&demo, &before);
    assert!(demo.compose(&["ps", "-q", "search"]).stdout.is_empty(), "the broken service is still there");
    let h = history(&demo);
    assert_eq!(h[0]["status"], "rolled_back");
    assert!(h[0]["cause"].as_str().unwrap().contains("search"), "{}", h[0]["cause"]);
    assert!(h[0]["backup_id"].as_i64().unwrap() > backup_id);
    assert!(stdout(&demo.run(&["status"])).contains("version   2"));
}

#[test]
fn preflight_refusals_and_early_failures_change_nothing() {
    let compose = require_docker!();
    let V1 { demo, pkg, before, v1_image } = v1_with_package_2(compose);

    // A checksum that does not match: refused in preflight, nothing stopped.
    let out = demo.run(&["upgrade", "--package", pkg.to_str().unwrap(), "--sha256", &"0".repeat(64)]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));

    // A downgrade without --allow-downgrade; a package for a newer starting version; both reported.
    let manifest = pkg.join("nuwax-package.toml");
    let text = read(&manifest);
    std::fs::write(
        &manifest,
        text.replace("version = \"2\"", "version = \"0.9\"")
            .replace("min_from = \"1\"", "min_from = \"1.5\""),
    )
    .unwrap();
    let out = demo.run(&["upgrade", "--package", pkg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("--allow-downgrade") && err.contains("1.5 or later"), "{err}");
    std::fs::write(&manifest, &text).unwrap();

    // An image archive that does not load: the services are never stopped.
    let images = pkg.join("images/nuwax-demo-2.tar");
    let good = std::fs::read(&images).unwrap();
    let bad = bad_image_archive(&format!("{}:2", demo.repo));
    std::fs::write(&images, bad).unwrap();
    let out = demo.run(&["upgrade", "--package", pkg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("nothing was changed"), "{}", stderr(&out));
    assert_eq!(history(&demo)[0]["status"], "failed");
    std::fs::write(&images, good).unwrap();
    assert_unchanged(&demo, &before);
    assert_eq!(demo.image_of("app"), v1_image);

    // A failing hook: rolled back, v1 with its data.
    with_hook(&pkg, r#"command = ["sh", "-c", "echo migration failed >&2; exit 3"]"#);
    let out = demo.run(&["upgrade", "--package", pkg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(11), "{}", stderr(&out));
    assert!(stderr(&out).contains("exit code 3"), "{}", stderr(&out));
    demo.wait_healthy(&["db", "app", "worker"]);
    assert_unchanged(&demo, &before);
    assert_eq!(demo.image_of("app"), v1_image);
    assert_eq!(read(&demo.volume_path("dbdata").join("schema_version")).trim(), "1");
}

/// A `docker save` archive whose manifest names the image but whose config blob is missing.
fn bad_image_archive(tag: &str) -> Vec<u8> {
    let manifest = format!(r#"[{{"Config":"missing.json","RepoTags":["{tag}"],"Layers":[]}}]"#);
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(manifest.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "manifest.json", manifest.as_bytes()).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn sigkill_while_applying_is_rolled_back_by_the_next_command() {
    let compose = require_docker!();
    let V1 { demo, pkg, before, v1_image } = v1_with_package_2(compose);
    // A slow hook makes "in the middle of applying" a window the test can hit.
    let mut child = upgrade_until_slow_hook(&demo, &pkg, Stdio::null());
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(read(&demo.volume_path("dbdata").join("schema_version")).trim(), "2");

    // Any command finds the dead upgrade and rolls it back.
    let out = demo.run(&["list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("rolled back to backup"), "{}", stderr(&out));
    // The pre-upgrade backup was frozen in the snapshot: its archive was written first.
    assert!(stderr(&out).contains("written from the snapshot"), "{}", stderr(&out));
    demo.wait_healthy(&["db", "app", "worker"]);
    assert_eq!(demo.image_of("app"), v1_image);
    assert_unchanged(&demo, &before);
    assert_eq!(history(&demo)[0]["status"], "rolled_back");
}

/// Starts an upgrade whose hook takes a minute, and returns once the hook runs.
fn upgrade_until_slow_hook(demo: &Demo, pkg: &Path, stderr: Stdio) -> std::process::Child {
    with_hook(pkg, r#"command = ["sh", "-c", "touch /var/lib/db/hook-started; sleep 60"]"#);
    let mut child = demo
        .nuwax()
        .args(["upgrade", "--package", pkg.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let marker = demo.volume_path("dbdata").join("hook-started");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the upgrade never reached its hook");
        assert!(child.try_wait().unwrap().is_none(), "the upgrade ended before its hook");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

pub(crate) fn with_hook(pkg: &Path, command: &str) {
    let manifest = pkg.join("nuwax-package.toml");
    let text: String = read(&manifest)
        .lines()
        .map(|l| if l.starts_with("command") { command } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&manifest, text.replace("timeout = 60", "timeout = 120")).unwrap();
}

#[test]
fn no_auto_rollback_leaves_it_in_place_and_sigint_rolls_back() {
    let compose = require_docker!();
    let V1 { demo, pkg, before, v1_image } = v1_with_package_2(compose);

    // --no-auto-rollback: the failed v2 stays for inspection, services running; the message
    // names the backup that brings v1 back.
    with_hook(&pkg, r#"command = ["sh", "-c", "exit 4"]"#);
    let out = demo.run(&["upgrade", "--package", pkg.to_str().unwrap(), "--no-auto-rollback"]);
    assert_eq!(out.status.code(), Some(12), "{}", stderr(&out));
    let h = history(&demo);
    assert_eq!(h[0]["status"], "failed");
    let backup_id = h[0]["backup_id"].as_i64().unwrap();
    assert!(stderr(&out).contains(&format!("nuwax rollback {backup_id}")), "{}", stderr(&out));
    demo.wait_healthy(&["db", "app", "worker"]);
    assert_ne!(demo.image_of("app"), v1_image);
    assert!(read(&demo.dir.join(".env")).contains("APP_VERSION=2"));
    let out = demo.run(&["rollback", &backup_id.to_string(), "--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    demo.wait_healthy(&["db", "app", "worker"]);
    assert_unchanged(&demo, &before);
    assert_eq!(demo.image_of("app"), v1_image);

    // SIGINT while a hook runs: the upgrade stops there and rolls back.
    let child = upgrade_until_slow_hook(&demo, &pkg, Stdio::piped());
    let started = Instant::now();
    rustix::process::kill_process(rustix::process::Pid::from_child(&child), rustix::process::Signal::INT)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(50), "the hook was waited out");
    assert_eq!(out.status.code(), Some(11), "{}", stderr(&out));
    assert!(stderr(&out).contains("interrupted by SIGINT"), "{}", stderr(&out));
    demo.wait_healthy(&["db", "app", "worker"]);
    assert_eq!(demo.image_of("app"), v1_image);
    assert_unchanged(&demo, &before);
}
