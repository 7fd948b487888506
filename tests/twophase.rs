//! Backups in two phases: the copy into the snapshot while the services run, then, while they
//! are stopped, only what changed since. What the archive holds, what a kill leaves, what a
//! full disk does, and that restoring it is exact.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::require_docker;
use crate::support::{Demo, Tmpfs, add_bulk, gnu_untar, json, kill_held, stderr, tree};

/// Starts `nuwax --json backup ARGS` held at `point` (`NUWAX_TEST_PAUSE`); returns once it is there.
fn backup_held_at(demo: &Demo, point: &str, pause: &Path, args: &[&str]) -> Child {
    let args: Vec<&str> = ["backup"].into_iter().chain(args.iter().copied()).collect();
    held_at(demo, point, pause, &args)
}

/// Starts `nuwax --json ARGS` held at `point`; returns once it is there.
fn held_at(demo: &Demo, point: &str, pause: &Path, args: &[&str]) -> Child {
    let mut cmd = demo.nuwax();
    cmd.arg("--json").args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    crate::support::held_at(cmd, point, pause)
}

/// `state.txt` in the cache volume, backed up as "as backed up", then changed: the volume's
/// path and the backup (`--json`).
fn backed_up_then_changed(demo: &Demo) -> (PathBuf, serde_json::Value) {
    let vol = demo.volume_path("cache");
    std::fs::write(vol.join("state.txt"), "as backed up").unwrap();
    let target = json(&demo.run(&["--json", "backup"]));
    std::fs::write(vol.join("state.txt"), "changed after the backup").unwrap();
    (vol, target)
}

fn finish(mut child: Child) -> (std::process::ExitStatus, String, String) {
    let status = child.wait().unwrap();
    let (mut out, mut err) = (String::new(), String::new());
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (status, out, err)
}

fn snapshot_data(demo: &Demo) -> PathBuf {
    demo.storage().join(".nuwax-snapshot").join(&demo.name).join("data")
}

fn sha(p: &Path) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

#[test]
fn what_changes_between_the_copy_while_running_and_the_stop_is_in_the_archive() {
    let compose = require_docker!();
    let demo = Demo::new(compose);
    demo.up();
    let vol = demo.volume_path("cache");
    std::fs::write(vol.join("kept.txt"), "kept").unwrap();
    std::fs::write(vol.join("deleted.txt"), "deleted in the window").unwrap();
    let big: Vec<u8> = (0..16u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(vol.join("big.bin"), &big).unwrap();

    let pause = demo.dir.join("pause");
    let child = backup_held_at(&demo, "backup-after-precopy", &pause, &[]);
    // Copied while running: nothing was stopped for it.
    assert!(snapshot_data(&demo).join(format!("volumes/{}/big.bin", demo.volume("cache"))).is_file());
    assert_eq!(demo.state_of("db"), "running/healthy");
    std::fs::write(vol.join("new.txt"), "written after the copy").unwrap();
    std::fs::remove_file(vol.join("deleted.txt")).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(vol.join("big.bin")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"changed in place", 9 << 20).unwrap();
    drop(f);
    std::fs::remove_file(&pause).unwrap();
    let (status, out, err) = finish(child);
    assert!(status.success(), "{err}");
    let o: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(o["precopy_ms"].is_u64() && o["stopped_ms"].is_u64() && o["single_phase"].is_null(), "{o}");
    // A few changed bytes of a 16 MiB file cost a block, not the file (the db's own writes add a little).
    let delta = o["delta_bytes"].as_u64().unwrap();
    assert!(delta < 4 << 20, "delta {delta} bytes: {o}");

    let x = gnu_untar(Path::new(o["path"].as_str().unwrap()));
    let in_archive = x.path().join("volumes").join(demo.volume("cache"));
    assert_eq!(std::fs::read_to_string(in_archive.join("new.txt")).unwrap(), "written after the copy");
    assert!(!in_archive.join("deleted.txt").exists());
    assert_eq!(std::fs::read_to_string(in_archive.join("kept.txt")).unwrap(), "kept");
    assert_eq!(sha(&in_archive.join("big.bin")), sha(&vol.join("big.bin")));
    let out = demo.run(&["verify", &o["id"].to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    // `show` and `list` carry the downtime; `doctor` shows the snapshot.
    let shown = demo.run(&["show", &o["id"].to_string()]);
    assert!(crate::support::stdout(&shown).contains("downtime"), "{}", crate::support::stdout(&shown));
    let doctor = demo.run(&["doctor"]);
    let text = crate::support::stdout(&doctor);
    assert!(text.contains(".nuwax-snapshot") && text.contains("up to date"), "{text}");
}

#[test]
fn sigkill_during_the_copy_while_running_stops_nothing_and_leaves_a_reusable_snapshot() {
    let compose = require_docker!();
    let demo = Demo::new(compose);
    demo.up();
    add_bulk(&demo, "dbdata", 32);
    let before = demo.started_at();
    let mut child = demo
        .nuwax()
        .args(["backup"])
        .env("NUWAX_RATE_LIMIT", (4u64 << 20).to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !snapshot_data(&demo).join("volumes").exists() {
        assert!(Instant::now() < deadline, "the copy while running never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(demo.started_at(), before, "a service was stopped or restarted");
    // No backup row, no operation to recover: only the snapshot, without its index.
    let out = demo.run(&["list"]);
    assert!(out.status.success() && !stderr(&out).contains("recovered"), "{}", stderr(&out));
    assert!(demo.list().is_empty(), "{:?}", demo.list());
    assert!(!demo.storage().join(".nuwax-snapshot").join(&demo.name).join("index.bin").exists());
    // The next backup reuses it (compared by content) and is exact.
    let out = demo.run(&["--json", "backup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let o = json(&out);
    assert!(o["precopy_ms"].is_u64(), "{o}");
    let x = gnu_untar(Path::new(o["path"].as_str().unwrap()));
    let bulk = x.path().join("volumes").join(demo.volume("dbdata")).join("bulk.bin");
    assert_eq!(sha(&bulk), sha(&demo.volume_path("dbdata").join("bulk.bin")));
    demo.wait_healthy(&["db", "app", "worker"]);
}

#[test]
fn sigkill_while_stopped_for_the_changes_is_recovered_by_the_next_command() {
    let compose = require_docker!();
    let demo = Demo::new(compose);
    demo.up();
    let pause = demo.dir.join("pause");
    let child = backup_held_at(&demo, "backup-stopped", &pause, &[]);
    assert!(demo.state_of("db").starts_with("exited"), "{:?}", demo.states());
    kill_held(child, &pause);
    let out = demo.run(&["list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("recovered an unfinished backup"), "{}", stderr(&out));
    demo.wait_healthy(&["db", "app", "worker"]);
    let list = demo.list();
    assert_eq!(list[0]["status"], "failed", "{list:?}");
    assert!(
        demo.storage_files().iter().all(|f| !f.starts_with("backup_") && !f.starts_with(".nuwax-partial"))
    );
    let out = demo.run(&["--json", "backup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(json(&out)["precopy_ms"].is_u64());
}

#[test]
fn without_room_for_the_snapshot_the_backup_says_so_and_copies_in_one_phase() {
    let compose = require_docker!();
    if !crate::support::can_mount_tmpfs("without_room_for_the_snapshot") {
        return;
    }
    let demo = Demo::new(compose);
    demo.up();
    let base = tempfile::tempdir().unwrap();
    let on = |storage: &Path, args: &[&str]| {
        demo.nuwax().args(args).env("NUWAX_STORAGE_DIR", storage).output().unwrap()
    };
    // Seen before copying: room for the archive, not for the snapshot as well.
    add_bulk(&demo, "dbdata", 8);
    let small = Tmpfs::new(base.path().join("a"), "14m");
    let out = on(&small.0, &["--json", "backup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let o = json(&out);
    assert!(o["single_phase"].as_str().unwrap().contains("not enough room"), "{o}");
    assert!(o["precopy_ms"].is_null() && o["stopped_ms"].is_u64(), "{o}");
    assert!(!small.0.join(".nuwax-snapshot").exists());
    std::fs::remove_file(demo.volume_path("dbdata").join("bulk.bin")).unwrap();

    // Found while copying: many small files take far more room on disk than their bytes.
    let many = demo.volume_path("cache").join("many");
    std::fs::create_dir(&many).unwrap();
    for i in 0..3000 {
        std::fs::write(many.join(format!("{i}")), "x").unwrap();
    }
    let small = Tmpfs::new(base.path().join("b"), "10m");
    let out = on(&small.0, &["--json", "backup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let o = json(&out);
    assert!(o["single_phase"].as_str().unwrap().contains("did not fit"), "{o}");
    assert!(!small.0.join(".nuwax-snapshot").join(&demo.name).exists());
    let out = on(&small.0, &["verify", &o["id"].to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    demo.wait_healthy(&["db", "app", "worker"]);
}

#[test]
fn a_rollback_to_a_two_phase_backup_is_byte_identical_to_one_to_a_one_phase_backup() {
    let compose = require_docker!();
    let demo = Demo::new(compose);
    demo.up();
    add_bulk(&demo, "dbdata", 4);
    // The writers stop, so both backups hold the same data; app runs, so there is a stop.
    let out = demo.compose(&["stop", "worker", "db"]);
    assert!(out.status.success());
    let two = json(&demo.run(&["--json", "backup"]));
    let one = json(&demo.run(&["--json", "backup", "--no-snapshot"]));
    assert!(two["precopy_ms"].is_u64() && two["single_phase"].is_null(), "{two}");
    assert_eq!(one["single_phase"], "--no-snapshot", "{one}");

    let restored = |b: &serde_json::Value| {
        std::fs::write(demo.volume_path("dbdata").join("bulk.bin"), "replaced").unwrap();
        std::fs::write(demo.dir.join("uploads/extra.txt"), "replaced").unwrap();
        let out = demo.run(&["rollback", &b["id"].to_string(), "--yes"]);
        assert!(out.status.success(), "{}", stderr(&out));
        (tree::snapshot(&demo.volume_path("dbdata")), tree::snapshot(&demo.dir.join("uploads")))
    };
    let (a, b) = (restored(&two), restored(&one));
    assert!(a.0.contains_key("bulk.bin") && !a.1.contains_key("extra.txt"));
    assert_eq!(a, b);
}

#[test]
fn a_rollbacks_safety_backup_is_copied_while_running_and_holds_what_changed_before_the_stop() {
    let compose = require_docker!();
    let demo = Demo::new(compose);
    demo.up();
    let (vol, target) = backed_up_then_changed(&demo);
    add_bulk(&demo, "cache", 8);

    let pause = demo.dir.join("pause");
    let before = demo.started_at();
    let child =
        held_at(&demo, "rollback-before-stop", &pause, &["rollback", &target["id"].to_string(), "--yes"]);
    // The backup is staged and the safety backup copied, all while the services run.
    assert_eq!(demo.started_at(), before, "a service was stopped before the rollback's stop");
    assert!(snapshot_data(&demo).join(format!("volumes/{}/bulk.bin", demo.volume("cache"))).is_file());
    std::fs::write(vol.join("late.txt"), "written after the safety copy, before the stop").unwrap();
    std::fs::remove_file(&pause).unwrap();
    let (status, out, err) = finish(child);
    assert!(status.success(), "{err}");
    let o: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(o["safety_precopy_ms"].is_u64() && o["safety_single_phase"].is_null(), "{o}");
    assert_eq!(std::fs::read_to_string(vol.join("state.txt")).unwrap(), "as backed up");
    assert!(!vol.join("late.txt").exists());

    // The safety backup holds the state at the stop, late write included, and verifies.
    let safety = o["safety_backup_id"].to_string();
    let out = demo.run(&["verify", &safety]);
    assert!(out.status.success(), "{}", stderr(&out));
    let x = gnu_untar(Path::new(o["safety_backup_path"].as_str().unwrap()));
    let held = x.path().join("volumes").join(demo.volume("cache"));
    assert_eq!(std::fs::read_to_string(held.join("state.txt")).unwrap(), "changed after the backup");
    assert!(held.join("late.txt").is_file() && held.join("bulk.bin").is_file());
    demo.wait_healthy(&["db", "app", "worker"]);
}

#[test]
fn sigkill_while_a_rollbacks_safety_archive_is_written_finishes_it_from_the_snapshot() {
    let compose = require_docker!();
    let demo = Demo::new(compose);
    demo.up();
    let (vol, target) = backed_up_then_changed(&demo);

    let pause = demo.dir.join("pause");
    let child =
        held_at(&demo, "rollback-safety-archive", &pause, &["rollback", &target["id"].to_string(), "--yes"]);
    // The rollback is done and the services run before the safety archive is written.
    assert_eq!(std::fs::read_to_string(vol.join("state.txt")).unwrap(), "as backed up");
    demo.wait_healthy(&["db", "app", "worker"]);
    kill_held(child, &pause);
    let out = demo.run(&["list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("written from the snapshot"), "{}", stderr(&out));
    // The next command wrote the safety backup from the snapshot the stop froze: complete,
    // verified, holding the state before the rollback; nothing partial or replaced stays.
    let list = demo.list();
    let safety = list.iter().find(|r| r["kind"] == "pre-rollback").expect("a safety backup row");
    assert_eq!(safety["status"], "complete", "{list:?}");
    let v = demo.run(&["verify", &safety["id"].to_string()]);
    assert!(v.status.success(), "{}", stderr(&v));
    let x = gnu_untar(Path::new(safety["path"].as_str().unwrap()));
    let held = x.path().join("volumes").join(demo.volume("cache"));
    assert_eq!(std::fs::read_to_string(held.join("state.txt")).unwrap(), "changed after the backup");
    let files = demo.storage_files();
    assert!(
        files.iter().all(|f| !f.starts_with(".nuwax-partial") && !f.starts_with(".nuwax-frozen")),
        "{files:?}"
    );
    let beside: Vec<String> = std::fs::read_dir(vol.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("nuwax-old") || n.contains("nuwax-new"))
        .collect();
    assert!(beside.is_empty(), "{beside:?}");
    assert_eq!(std::fs::read_to_string(vol.join("state.txt")).unwrap(), "as backed up");
    demo.wait_healthy(&["db", "app", "worker"]);
    // Rolling back to it brings the state before the first rollback back.
    let back = demo.run(&["rollback", &safety["id"].to_string(), "--yes"]);
    assert!(back.status.success(), "{}", stderr(&back));
    assert_eq!(std::fs::read_to_string(vol.join("state.txt")).unwrap(), "changed after the backup");
    // The next backup is exact.
    let o = json(&demo.run(&["--json", "backup"]));
    assert!(o["precopy_ms"].is_u64(), "{o}");
    let x = gnu_untar(Path::new(o["path"].as_str().unwrap()));
    let held = x.path().join("volumes").join(demo.volume("cache"));
    assert_eq!(std::fs::read_to_string(held.join("state.txt")).unwrap(), "changed after the backup");
}

#[test]
fn stop_each_stops_one_group_of_linked_services_at_a_time_while_the_others_run() {
    let compose = require_docker!();
    let demo = Demo::new(compose);
    // The worker no longer depends on the app: {app, db} and {worker} are separate groups.
    let file = demo.dir.join("compose.yaml");
    let yaml = std::fs::read_to_string(&file).unwrap();
    let unlinked = yaml.replace("    depends_on:\n      app:\n        condition: service_healthy\n", "");
    assert_ne!(yaml, unlinked);
    std::fs::write(&file, unlinked).unwrap();
    let mut toml = std::fs::read_to_string(demo.dir.join("nuwax.toml")).unwrap();
    toml.push_str("stop = \"each\"\n");
    std::fs::write(demo.dir.join("nuwax.toml"), toml).unwrap();
    demo.up();
    std::fs::write(demo.volume_path("cache").join("state.txt"), "worker data").unwrap();

    let pause = demo.dir.join("pause");
    let child = backup_held_at(&demo, "backup-stopped", &pause, &[]);
    // The first window: app and db down, the worker runs.
    assert!(demo.state_of("db").starts_with("exited") && demo.state_of("app").starts_with("exited"));
    assert_eq!(demo.state_of("worker"), "running/healthy", "{:?}", demo.states());
    std::fs::remove_file(&pause).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !pause.exists() {
        assert!(Instant::now() < deadline, "the second window never came");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The second: the worker down, app and db back and healthy.
    assert!(demo.state_of("worker").starts_with("exited"), "{:?}", demo.states());
    assert_eq!(demo.state_of("db"), "running/healthy", "{:?}", demo.states());
    assert_eq!(demo.state_of("app"), "running/healthy", "{:?}", demo.states());
    std::fs::remove_file(&pause).unwrap();
    let (status, out, err) = finish(child);
    assert!(status.success(), "{err}");
    let o: serde_json::Value = serde_json::from_str(&out).unwrap();
    let windows: Vec<Vec<String>> = o["stop_windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let mut s: Vec<String> = serde_json::from_value(w["services"].clone()).unwrap();
            s.sort();
            s
        })
        .collect();
    assert_eq!(windows, vec![vec!["app".to_string(), "db".into()], vec!["worker".into()]], "{o}");
    let longest =
        o["stop_windows"].as_array().unwrap().iter().map(|w| w["stopped_ms"].as_u64().unwrap()).max();
    assert_eq!(o["downtime_ms"].as_u64(), longest, "{o}");
    // Everything is in the archive, and it verifies.
    let out = demo.run(&["verify", &o["id"].to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let x = gnu_untar(Path::new(o["path"].as_str().unwrap()));
    let cache = x.path().join("volumes").join(demo.volume("cache"));
    assert_eq!(std::fs::read_to_string(cache.join("state.txt")).unwrap(), "worker data");
    assert!(x.path().join("volumes").join(demo.volume("dbdata")).join("data.db").is_file());
    demo.wait_healthy(&["db", "app", "worker"]);
}

#[test]
fn an_upgrades_pre_upgrade_backup_copies_while_running_and_only_the_changes_inside_the_stop() {
    let compose = require_docker!();
    let crate::upgrade::V1 { demo, pkg, .. } = crate::upgrade::v1_with_package_2(compose);
    let pause = demo.dir.join("pause");
    let child =
        held_at(&demo, "upgrade-before-stop", &pause, &["upgrade", "--package", pkg.to_str().unwrap()]);
    // The copy while running is done and nothing was stopped.
    for (service, state) in demo.states() {
        assert_eq!(state, "running/healthy", "{service}");
    }
    let dbdata = demo.volume_path("dbdata");
    std::fs::write(dbdata.join("late.txt"), "written after the copy while running").unwrap();
    std::fs::remove_file(&pause).unwrap();
    let (status, out, err) = finish(child);
    assert!(status.success(), "{err}");
    let o: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(o["status"], "upgraded", "{o}");
    assert!(o["backup_precopy_ms"].is_u64() && o["backup_single_phase"].is_null(), "{o}");
    let id = o["backup_id"].as_i64().unwrap();
    let list = demo.list();
    let pre = list.iter().find(|r| r["id"].as_i64() == Some(id)).expect("the pre-upgrade backup");
    assert_eq!(pre["status"], "complete", "{pre}");
    let v = demo.run(&["verify", &id.to_string()]);
    assert!(v.status.success(), "{}", stderr(&v));
    let x = gnu_untar(Path::new(pre["path"].as_str().unwrap()));
    let held = x.path().join("volumes").join(demo.volume("dbdata"));
    assert_eq!(
        std::fs::read_to_string(held.join("late.txt")).unwrap(),
        "written after the copy while running"
    );
    // The v1 schema, not what v2's migration wrote after the stop.
    assert_eq!(std::fs::read_to_string(held.join("schema_version")).unwrap().trim(), "1");
    assert!(
        demo.storage_files().iter().all(|f| !f.starts_with(".nuwax-frozen")),
        "{:?}",
        demo.storage_files()
    );
}

#[test]
fn sigkill_after_an_upgrades_gate_keeps_the_new_version_and_finishes_its_pre_upgrade_backup() {
    let compose = require_docker!();
    let crate::upgrade::V1 { demo, pkg, before, v1_image } = crate::upgrade::v1_with_package_2(compose);
    let pause = demo.dir.join("pause");
    let child =
        held_at(&demo, "upgrade-backup-archive", &pause, &["upgrade", "--package", pkg.to_str().unwrap()]);
    // The new version passed its gate and runs; the pre-upgrade archive is not written yet.
    demo.wait_healthy(&["db", "app", "worker"]);
    assert_ne!(demo.image_of("app"), v1_image);
    kill_held(child, &pause);
    let out = demo.run(&["list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("written from the snapshot") && err.contains("passed its health gate"), "{err}");
    // The upgrade stands, recorded as done, and its pre-upgrade backup is complete.
    demo.wait_healthy(&["db", "app", "worker"]);
    assert_ne!(demo.image_of("app"), v1_image);
    let h = crate::upgrade::history(&demo);
    assert_eq!(h[0]["status"], "upgraded", "{h:?}");
    let id = h[0]["backup_id"].as_i64().unwrap();
    let list = demo.list();
    let pre = list.iter().find(|r| r["id"].as_i64() == Some(id)).expect("the pre-upgrade backup");
    assert_eq!(pre["status"], "complete", "{pre}");
    assert!(
        demo.storage_files()
            .iter()
            .all(|f| !f.starts_with(".nuwax-partial") && !f.starts_with(".nuwax-frozen")),
        "{:?}",
        demo.storage_files()
    );
    // It is the way back to v1, exactly.
    let back = demo.run(&["rollback", &id.to_string(), "--yes"]);
    assert!(back.status.success(), "{}", stderr(&back));
    demo.wait_healthy(&["db", "app", "worker"]);
    assert_eq!(demo.image_of("app"), v1_image);
    crate::upgrade::assert_unchanged(&demo, &before);
}
