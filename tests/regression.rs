//! Regression tests for what trying nuwax on real stacks found (issue 9), named `i9_*`. Each
//! failed before its fix; the signal races are made reachable by the test hooks of
//! `src/faults.rs` (`NUWAX_TEST_SIGINT` sends SIGINT to nuwax's own process group, as a
//! terminal's Ctrl-C does, so the test runs nuwax as a group of its own).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::require_docker;
use crate::rollback::backup;
use crate::support::{ComposeCli, Demo, json, stderr, stdout};
use crate::upgrade::{V1, history, read, v1_with_package_2};

#[test]
fn i9_a_backup_after_an_upgrade_holds_the_version_that_runs_in_its_manifest() {
    let V1 { demo, pkg, .. } = v1_with_package_2(require_docker!());
    upgrade_ok(&demo, &pkg);
    let (id, archive) = backup(&demo);
    let m = nuwax::archive::read_manifest(&archive).unwrap();
    assert_eq!(m.service_version.as_deref(), Some("2"), "the manifest says another version");
    assert!(archive.file_name().unwrap().to_string_lossy().contains("_v2_"), "{}", archive.display());
    // The catalog rebuilt from the archives alone says so too.
    std::fs::remove_dir_all(demo.dir.join(".nuwax")).unwrap();
    let out = demo.run(&["catalog", "rebuild"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let row = demo.list().into_iter().find(|r| r["id"] == id).unwrap();
    assert_eq!(row["service_version"], "2", "{row}");
}

#[test]
fn i9_moving_a_site_with_import_and_rollback_keeps_the_new_sites_storage() {
    let compose = require_docker!();
    let a = Demo::new(compose.clone());
    let a_store = a.dir.parent().unwrap().join("a-store");
    let toml = read(&a.dir.join("nuwax.toml"));
    std::fs::write(a.dir.join("nuwax.toml"), format!("storage_dir = {:?}\n{toml}", a_store)).unwrap();
    a.up();
    let out = a.run(&["--json", "backup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let archive = PathBuf::from(json(&out)["path"].as_str().unwrap());
    assert!(archive.starts_with(&a_store));

    let b = Demo::new(compose);
    let out = b.run(&["--json", "import", archive.to_str().unwrap()]);
    assert!(out.status.success(), "import: {}", stderr(&out));
    let id = json(&out)["id"].as_i64().unwrap();
    let out = b.run(&["rollback", &id.to_string(), "--yes"]);
    assert!(out.status.success(), "rollback on B: {}", stderr(&out));
    assert!(stderr(&out).contains("keeps its own storage_dir"), "{}", stderr(&out));
    b.wait_healthy(&["db", "app", "worker"]);
    assert!(!read(&b.dir.join("nuwax.toml")).contains("storage_dir"), "{}", read(&b.dir.join("nuwax.toml")));
    // B's next backup goes to B's storage, and B's doctor knows nothing of A's archives.
    let (_, next) = backup(&b);
    assert!(next.starts_with(b.storage()), "{}", next.display());
    let out = b.run(&["--json", "doctor"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

#[test]
fn i9_an_upgrade_leaves_the_services_the_operator_had_stopped_stopped() {
    let V1 { demo, pkg, .. } = v1_with_package_2(require_docker!());
    let out = demo.compose(&["stop", "worker"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = upgrade_ok(&demo, &pkg);
    assert_eq!(v["left_stopped"], serde_json::json!(["worker"]), "{v}");
    demo.wait_healthy(&["db", "app"]);
    let worker = demo.state_of("worker");
    assert!(!worker.starts_with("running"), "worker runs after the upgrade: {worker}");
    // Created with the new version, ready to be started by the operator.
    assert_eq!(image_of_container(&demo, "worker"), demo.image_of("app"));
    let out = demo.run(&["upgrade", "--package", pkg.to_str().unwrap(), "--dry-run", "--allow-downgrade"]);
    assert!(stdout(&out).contains("what was stopped stays stopped"), "{}", stdout(&out));
}

#[test]
fn i9_before_start_hooks_run_before_the_new_version_and_their_failure_rolls_back() {
    let V1 { demo, pkg, .. } = v1_with_package_2(require_docker!());
    // Fails when the new db already started (it logs `start schema=2` when it does).
    add_before_start_hook(
        &pkg,
        "db",
        "if grep -q 'start schema=2' /var/lib/db/journal.log; then exit 9; fi; echo migrated > /var/lib/db/premigrated",
    );
    let v = upgrade_ok(&demo, &pkg);
    assert!(v["hooks_run"].as_array().unwrap().iter().any(|h| h == "migrate"), "{v}");
    assert_eq!(read(&demo.volume_path("dbdata").join("premigrated")).trim(), "migrated");

    // A failing before-start hook fails the upgrade before the hook's service or anything
    // depending on it ran (compose starts what the hook's service depends on, db here).
    let pkg3 = demo.package("3-broken");
    add_before_start_hook(&pkg3, "app", "exit 5");
    let since = unix_now();
    let out = demo.run(&["upgrade", "--package", pkg3.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(11), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("before-start hook \"migrate\" failed with exit code 5"),
        "{}",
        stderr(&out)
    );
    let started = started_since(since, &format!("{}:3", demo.repo));
    let new = |s: &str| format!("{}-{s}-", demo.name);
    assert!(
        started.iter().all(|n| !(n.starts_with(&new("app"))
            || n.starts_with(&new("worker"))
            || n.starts_with(&new("search")))
            || n.contains("nuwax-hook")),
        "v3 containers started: {started:?}"
    );
    demo.wait_healthy(&["db", "app", "worker"]);
    assert_eq!(status_version(&demo), "2");
}

#[test]
fn i9_a_service_killed_at_its_stop_timeout_is_recorded_and_shown() {
    let demo = Demo::new(require_docker!());
    // A worker that ignores SIGTERM, with a one-second grace period.
    std::fs::write(
        demo.dir.join("compose.override.yaml"),
        "services:\n  worker:\n    stop_grace_period: 1s\n    command: [\"sh\", \"-c\", \"trap '' TERM; touch /tmp/worker.ready; while true; do sleep 1; done\"]\n",
    )
    .unwrap();
    demo.up();
    let out = demo.run(&["--json", "backup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["stop_killed"], serde_json::json!(["worker"]), "{v}");
    let archive = PathBuf::from(v["path"].as_str().unwrap());
    assert_eq!(manifest_json(&archive)["stop_killed"], serde_json::json!(["worker"]));
    let id = v["id"].as_i64().unwrap().to_string();
    assert_eq!(demo.list()[0]["stop_killed"], serde_json::json!(["worker"]));
    assert!(stdout(&demo.run(&["list"])).contains("KILLED at stop: worker"));
    assert!(stdout(&demo.run(&["show", &id])).contains("worker did not stop within its stop timeout"));
    let out = demo.run(&["backup"]);
    assert!(stdout(&out).contains("warning: worker did not stop"), "{}", stdout(&out));
    demo.wait_healthy(&["db", "app", "worker"]);
}

#[test]
fn i9_a_no_stop_backup_is_live_and_rolling_back_to_it_needs_accept_live() {
    let demo = Demo::new(require_docker!());
    demo.up();
    let out = demo.run(&["--json", "backup", "--no-stop"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["live"], true, "{v}");
    assert_eq!(manifest_json(Path::new(v["path"].as_str().unwrap()))["live"], true);
    let id = v["id"].as_i64().unwrap().to_string();
    assert_eq!(demo.list()[0]["live"], true);
    assert!(stdout(&demo.run(&["list"])).contains("LIVE"));
    let states = demo.states();
    let out = demo.run(&["rollback", &id, "--yes"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("--accept-live"), "{}", stderr(&out));
    assert_eq!(demo.states(), states, "services were touched");
    let out = demo.run(&["rollback", &id, "--yes", "--accept-live"]);
    assert!(out.status.success(), "{}", stderr(&out));
    demo.wait_healthy(&["db", "app", "worker"]);
}

#[test]
fn i9_an_upgrade_keeps_the_mode_and_owner_of_env() {
    let V1 { demo, pkg, .. } = v1_with_package_2(require_docker!());
    let env = demo.dir.join(".env");
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o644)).unwrap();
    let owner = if crate::support::is_root() { 1234 } else { std::fs::metadata(&env).unwrap().uid() };
    if crate::support::is_root() {
        std::os::unix::fs::chown(&env, Some(owner), Some(owner)).unwrap();
    }
    upgrade_ok(&demo, &pkg);
    let m = std::fs::metadata(&env).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o644);
    assert_eq!((m.uid(), m.gid()), (owner, owner));
    assert!(read(&env).contains("APP_VERSION=2"));
}

#[test]
fn i9_ctrl_c_right_after_a_rollback_swap_finishes_it_and_never_starts_old_containers_on_it() {
    let (demo, v1_backup, v1_image) = v1_backup_then_v2(require_docker!());
    let out = group(demo.nuwax())
        .args(["rollback", &v1_backup.to_string(), "--yes"])
        .env("NUWAX_TEST_SIGINT", "rollback-after-swap")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("so it was finished"), "{}", stderr(&out));
    assert_on_v1(&demo, &v1_image);
}

#[test]
fn i9_recovery_that_finishes_a_rollback_across_versions_records_the_version() {
    let (demo, v1_backup, v1_image) = v1_backup_then_v2(require_docker!());
    let out = demo
        .nuwax()
        .args(["rollback", &v1_backup.to_string(), "--yes"])
        .env("NUWAX_TEST_CRASH", "rollback-after-swap")
        .output()
        .unwrap();
    assert!(out.status.code().is_none(), "expected an abort: {}", stderr(&out));
    let out = demo.run(&["list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("was finished"), "{}", stderr(&out));
    assert_on_v1(&demo, &v1_image);
}

#[test]
fn i9_ctrl_c_during_the_automatic_rollback_of_a_failed_upgrade_leaves_the_old_version_running() {
    let V1 { demo, pkg, .. } = v1_with_package_2(require_docker!());
    upgrade_ok(&demo, &pkg);
    let v2_image = demo.image_of("app");
    let pkg3 = demo.package("3-broken");
    let out = group(demo.nuwax())
        .args(["upgrade", "--package", pkg3.to_str().unwrap(), "--health-timeout", "30"])
        .env("NUWAX_TEST_SIGINT", "upgrade-rolling-back")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(11), "{}", stderr(&out));
    // Nothing left for a later command to start: running and healthy as nuwax exits.
    for s in ["db", "app", "worker"] {
        assert_eq!(demo.state_of(s), "running/healthy", "{s}: {:?}", demo.states());
    }
    assert_eq!(demo.image_of("app"), v2_image);
    assert_eq!(status_version(&demo), "2");
}

#[test]
fn i9_the_safety_backup_of_a_failed_upgrade_holds_and_says_the_failed_version() {
    let V1 { demo, pkg, .. } = v1_with_package_2(require_docker!());
    upgrade_ok(&demo, &pkg);
    let pkg3 = demo.package("3-broken");
    let out = demo.run(&["upgrade", "--package", pkg3.to_str().unwrap(), "--health-timeout", "30"]);
    assert_eq!(out.status.code(), Some(11), "{}", stderr(&out));
    let h = history(&demo);
    let safety = h[0]["rollback_safety_backup_id"].as_i64().unwrap();
    let row = demo.list().into_iter().find(|r| r["id"] == safety).unwrap();
    assert_eq!(
        (row["kind"].as_str(), row["service_version"].as_str()),
        (Some("pre-rollback"), Some("3")),
        "{row}"
    );
    assert!(row["note"].as_str().unwrap().contains("the failed upgrade to 3"), "{row}");
    // It holds the moment as the upgrade meant it: every service of version 3 running.
    let m = nuwax::archive::read_manifest(Path::new(row["path"].as_str().unwrap())).unwrap();
    for s in ["app", "worker", "search"] {
        assert!(
            m.services.iter().any(|r| r.service == s && r.running),
            "{s} not running in {:?}",
            m.services
        );
    }
    // Rolling back to it brings the broken version back, and says so, quickly.
    let started = Instant::now();
    let out = demo.run(&["rollback", &safety.to_string(), "--yes"]);
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    assert!(stderr(&out).contains("search") && stderr(&out).contains("unhealthy"), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(90), "took {:?}", started.elapsed());
    assert_eq!(status_version(&demo), "3");
}

#[test]
fn i9_a_killed_upgrade_leaves_no_unpacked_package_and_doctor_names_leftovers() {
    let V1 { demo, pkg, .. } = v1_with_package_2(require_docker!());
    crate::upgrade::with_hook(&pkg, r#"command = ["sh", "-c", "touch /var/lib/db/hook-started; sleep 60"]"#);
    // As a file, so nuwax unpacks it into the storage dir.
    let file = pkg.parent().unwrap().join("nuwax-demo-2.tar.zst");
    let out = demo.run(&["package", "build", pkg.to_str().unwrap(), "-o", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut child = demo
        .nuwax()
        .args(["upgrade", "--package", file.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let marker = demo.volume_path("dbdata").join("hook-started");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !marker.exists() {
        assert!(Instant::now() < deadline && child.try_wait().unwrap().is_none(), "never reached its hook");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(demo.storage_files().iter().any(|f| f.starts_with(".nuwax-pkg-")), "{:?}", demo.storage_files());
    child.kill().unwrap();
    child.wait().unwrap();
    let out = demo.run(&["list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The snapshot stays on purpose (the recovery's rollback copied its safety backup into it).
    let leftover = |f: &String| f.starts_with(".nuwax-") && f != ".nuwax-snapshot";
    assert!(!demo.storage_files().iter().any(leftover), "{:?}", demo.storage_files());
    demo.wait_healthy(&["db", "app", "worker"]);
    // A leftover no journal names (a nuwax killed while unpacking) is named by doctor.
    std::fs::create_dir(demo.storage().join(".nuwax-pkg-dead")).unwrap();
    let out = demo.run(&["--json", "doctor"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains(".nuwax-pkg-dead"), "{}", stdout(&out));
    let out = demo.run(&["recover"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!demo.storage_files().iter().any(leftover), "{:?}", demo.storage_files());
}

/// Found by the chaos trial (seed 10087: SIGKILL to a prune's group at 0.43 s): a prune killed
/// after a backup's row was gone left that backup's image tags behind for good.
#[test]
fn i9_a_prune_or_delete_killed_after_a_backups_row_releases_its_image_tags() {
    let demo = Demo::new(require_docker!());
    demo.up();
    let ids: Vec<i64> = (0..3).map(|_| backup(&demo).0).collect();
    let tags = |id: i64| {
        ["app", "db", "worker"].map(|s| format!("nuwax-keep/{}-{s}:backup-{id}", demo.name)).to_vec()
    };
    let exists =
        |tag: &str| Command::new("docker").args(["image", "inspect", tag]).output().unwrap().status.success();
    assert!(tags(ids[0]).iter().all(|t| exists(t)), "the demo keeps no image tags");

    for (what, args) in [
        ("prune", vec!["prune".to_string(), "--keep-last".into(), "2".into()]),
        ("delete", vec!["delete".to_string(), ids[1].to_string()]),
    ] {
        let gone = if what == "prune" { ids[0] } else { ids[1] };
        let out = demo.nuwax().args(&args).env("NUWAX_TEST_CRASH", "prune-after-row").output().unwrap();
        assert!(!out.status.success(), "{what} did not crash: {}", stderr(&out));
        assert!(exists(&tags(gone)[0]), "{what} crashed after releasing the tags");
        let out = demo.run(&["list"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("deletion of backup {gone} was finished")),
            "{}",
            stderr(&out)
        );
        let left: Vec<String> = tags(gone).into_iter().filter(|t| exists(t)).collect();
        assert!(left.is_empty(), "{what}: tags of deleted backup {gone} left: {left:?}");
        assert!(demo.list().iter().all(|r| r["id"] != gone));
    }
    assert!(tags(ids[2]).iter().all(|t| exists(t)), "the kept backup lost its tags");
}

#[test]
fn i9_ctrl_c_during_an_upgrade_preflight_exits_130_and_says_so() {
    let V1 { demo, pkg, .. } = v1_with_package_2(require_docker!());
    let out = group(demo.nuwax())
        .args(["upgrade", "--package", pkg.to_str().unwrap()])
        .env("NUWAX_TEST_SIGINT", "upgrade-preflight")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("interrupted by SIGINT"), "{}", stderr(&out));
    assert!(history(&demo).is_empty());
}

/// nuwax as a process group of its own: its `NUWAX_TEST_SIGINT` reaches nuwax, not the test.
pub(crate) fn group(mut c: Command) -> Command {
    c.process_group(0);
    c
}

fn upgrade_ok(demo: &Demo, pkg: &Path) -> serde_json::Value {
    let out: Output = demo.run(&["--json", "upgrade", "--package", pkg.to_str().unwrap()]);
    assert!(out.status.success(), "upgrade: {}", stderr(&out));
    json(&out)
}

/// The project's version as `nuwax status` says it.
fn status_version(demo: &Demo) -> String {
    let out = demo.run(&["--json", "status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    json(&out)["service_version"].as_str().unwrap_or_default().to_string()
}

/// The image id of the (possibly stopped) container of `service`.
fn image_of_container(demo: &Demo, service: &str) -> String {
    let id = demo.compose(&["ps", "-aq", service]);
    let id = String::from_utf8_lossy(&id.stdout).trim().to_string();
    let out = Command::new("docker").args(["inspect", "--format", "{{.Image}}", &id]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Adds a before-start hook named `migrate` running `script` for `service` to a package.
fn add_before_start_hook(pkg: &Path, service: &str, script: &str) {
    let manifest = pkg.join("nuwax-package.toml");
    let hook = format!(
        "\n[[hooks]]\nname = \"migrate\"\nservice = \"{service}\"\nwhen = \"before-start\"\ncommand = [\"sh\", \"-c\", {script:?}]\ntimeout = 60\n"
    );
    std::fs::write(&manifest, format!("{}{hook}", read(&manifest))).unwrap();
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Names of containers of `image` the engine started since `since` (seconds since the epoch).
fn started_since(since: u64, image: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["events", "--since", &since.to_string(), "--until", &(unix_now() + 1).to_string()])
        .args(["--filter", "event=start", "--filter", &format!("image={image}")])
        .args(["--format", "{{.Actor.Attributes.name}}"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// The demo at v1 with a backup of it, then upgraded to v2: (demo, the v1 backup, v1's image).
fn v1_backup_then_v2(compose: ComposeCli) -> (Demo, i64, String) {
    let V1 { demo, pkg, v1_image, .. } = v1_with_package_2(compose);
    let (id, _) = backup(&demo);
    upgrade_ok(&demo, &pkg);
    assert_eq!(read(&demo.volume_path("dbdata").join("schema_version")).trim(), "2");
    (demo, id, v1_image)
}

/// Version 1 runs with version 1's data, and every record says so.
fn assert_on_v1(demo: &Demo, v1_image: &str) {
    demo.wait_healthy(&["db", "app", "worker"]);
    for s in ["db", "app", "worker"] {
        assert_eq!(demo.image_of(s), v1_image, "{s} does not run version 1");
    }
    assert!(read(&demo.dir.join(".env")).contains("APP_VERSION=1"));
    // A version-2 container started on the restored data would have migrated it forward.
    assert_eq!(read(&demo.volume_path("dbdata").join("schema_version")).trim(), "1");
    assert_eq!(status_version(demo), "1");
}

/// An archive's manifest as JSON.
fn manifest_json(archive: &Path) -> serde_json::Value {
    serde_json::to_value(nuwax::archive::read_manifest(archive).unwrap()).unwrap()
}
