//! Catalog lifecycle with a real engine: prune, scheduled backups, storage migration, rebuild,
//! doctor.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::require_docker;
use crate::support::{Demo, Tmpfs, add_bulk, json, stderr, stdout, without_dac_override};

/// A backup (services stopped: the db writes all the time, so `--no-stop` could see a file
/// change while it is read, and rightly fail).
fn quick_backup(demo: &Demo) -> (i64, PathBuf) {
    let out = demo.run(&["--json", "backup"]);
    assert!(out.status.success(), "backup: {}", stderr(&out));
    let v = json(&out);
    (v["id"].as_i64().unwrap(), PathBuf::from(v["path"].as_str().unwrap()))
}

fn ids(demo: &Demo) -> Vec<i64> {
    demo.list().iter().map(|r| r["id"].as_i64().unwrap()).collect()
}

/// Every record that is complete points at an archive that verifies.
fn assert_catalog_honest(demo: &Demo) {
    for r in demo.list() {
        if r["status"] == "complete" {
            assert!(Path::new(r["path"].as_str().unwrap()).is_file(), "{r}");
        }
    }
    let out = demo.run(&["verify", "--all"]);
    assert!(out.status.success(), "verify --all: {}{}", stdout(&out), stderr(&out));
}

/// `rollback ID --data-only` brings back the marker as backup ID held it.
fn assert_data_rolled_back_to(demo: &Demo, id: i64) {
    let out = demo.run(&["rollback", &id.to_string(), "--yes", "--data-only"]);
    assert!(out.status.success(), "{}", stderr(&out));
    demo.wait_healthy(&["db", "app", "worker"]);
    let marker = demo.volume_path("dbdata").join("marker.txt");
    assert_eq!(std::fs::read_to_string(marker).unwrap(), "as in backup 1");
}

#[test]
fn prune_keeps_what_the_policy_says_and_survives_a_crash_between_file_and_row() {
    let compose = require_docker!();
    let demo = Demo::new(compose);
    demo.up();
    let made: Vec<(i64, PathBuf)> = (0..4).map(|_| quick_backup(&demo)).collect();
    let leftover = demo.storage().join(".nuwax-partial-999.tmp");
    std::fs::write(&leftover, "half an archive").unwrap();

    // --dry-run: the plan, with a reason for each kept one; nothing deleted.
    let out = demo.run(&["--json", "prune", "--keep-last", "2", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan = json(&out);
    let removes: Vec<i64> = plan["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["keep"] == false)
        .map(|i| i["id"].as_i64().unwrap())
        .collect();
    assert_eq!(removes, vec![made[1].0, made[0].0]);
    assert!(plan["items"][0]["reasons"].to_string().contains("newest complete backup"), "{plan}");
    assert!(made.iter().all(|(_, p)| p.is_file()));

    // The newest complete backup does not verify: nothing is deleted.
    let newest = &made[3].1;
    let good = std::fs::read(newest).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    std::fs::write(newest, &bad).unwrap();
    let out = demo.run(&["prune", "--keep-last", "2"]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("nothing was deleted"), "{}", stderr(&out));
    assert_eq!(ids(&demo).len(), 4);
    std::fs::write(newest, &good).unwrap();

    // Killed between removing a file and its row: the next command finishes the deletion.
    let mut cmd = demo.nuwax();
    cmd.args(["prune", "--keep-last", "2"]).env("NUWAX_TEST_CRASH", "prune-after-file");
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let out = demo.run(&["list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("deletion of backup"), "{}", stderr(&out));
    assert_catalog_honest(&demo);

    let out = demo.run(&["prune", "--keep-last", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(ids(&demo), vec![made[2].0, made[3].0]);
    assert!(!made[0].1.exists() && !made[1].1.exists());
    assert!(!leftover.exists(), "leftover not cleaned");
    assert_catalog_honest(&demo);
}

/// Reads a child's stderr (written to a file) until `needle` shows up.
fn wait_for_log(log: &Path, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(log) {
            let _ = f.read_to_string(&mut s);
        }
        if s.contains(needle) {
            return s;
        }
        assert!(Instant::now() < deadline, "{needle:?} never logged:\n{s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sigterm(child: &std::process::Child) {
    rustix::process::kill_process(rustix::process::Pid::from_child(child), rustix::process::Signal::TERM)
        .unwrap();
}

#[test]
fn schedule_runs_back_up_and_prune_and_sigterm_leaves_services_running() {
    let compose = require_docker!();
    let demo = Demo::new(compose);
    demo.up();
    let toml = demo.dir.join("nuwax.toml");
    let mut text = std::fs::read_to_string(&toml).unwrap();
    text.push_str("\n[retention]\nkeep_last = 1\n");
    std::fs::write(&toml, text).unwrap();

    // Every 4 seconds (a test-only schedule with a seconds field): two runs, each pruning.
    let log = demo.dir.parent().unwrap().join("schedule.log");
    let child = demo
        .nuwax()
        .args(["schedule", "run", "--cron", "*/4 * * * * *"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let text = wait_for_log(&log, "scheduled run 2:", Duration::from_secs(90));
    sigterm(&child);
    let status = child.wait_with_output().unwrap().status;
    assert!(status.success(), "{status:?}\n{text}");
    let list = demo.list();
    let complete: Vec<_> = list.iter().filter(|r| r["status"] == "complete").collect();
    assert_eq!(complete.len(), 1, "keep_last = 1 keeps one: {list:?}");
    assert_eq!(complete[0]["kind"], "scheduled");
    assert!(complete[0]["id"].as_i64().unwrap() >= 2, "{list:?}");
    demo.wait_healthy(&["db", "app", "worker"]);

    // SIGTERM in the middle of a run: the run is abandoned, the services come back.
    add_bulk(&demo, "dbdata", 12);
    let log2 = demo.dir.parent().unwrap().join("schedule2.log");
    let child = demo
        .nuwax()
        .args(["schedule", "run", "--cron", "*/2 * * * * *"])
        .env("NUWAX_RATE_LIMIT", (3u64 << 20).to_string())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log2).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !demo.state_of("db").starts_with("exited") {
        assert!(Instant::now() < deadline, "no run stopped the services");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    sigterm(&child);
    let status = child.wait_with_output().unwrap().status;
    let text = std::fs::read_to_string(&log2).unwrap();
    assert!(status.success(), "{status:?}\n{text}");
    assert!(text.contains("abandoned"), "{text}");
    demo.wait_healthy(&["db", "app", "worker"]);
    assert!(
        !demo.storage_files().iter().any(|f| f.starts_with(".nuwax-partial")),
        "{:?}",
        demo.storage_files()
    );
    assert!(demo.list().iter().all(|r| r["status"] != "pending"));
}

#[test]
fn storage_migrates_to_another_filesystem_resumes_after_sigkill_and_rolls_back_from_there() {
    let compose = require_docker!();
    if !crate::support::can_mount_tmpfs("storage_migrates") {
        return;
    }
    let demo = Demo::new(compose);
    demo.up();
    add_bulk(&demo, "dbdata", 16);
    std::fs::write(demo.volume_path("dbdata").join("marker.txt"), "as in backup 1").unwrap();
    let (first, _) = quick_backup(&demo);
    quick_backup(&demo);
    std::fs::write(demo.volume_path("dbdata").join("marker.txt"), "changed later").unwrap();
    let base = demo.dir.parent().unwrap().to_path_buf();

    // A destination without room is refused before anything is copied.
    let tiny = Tmpfs::new(base.join("tiny"), "1m");
    let out = demo.run(&["storage", "migrate", tiny.0.join("store").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    drop(tiny);

    // Killed while copying: the next command undoes it; every record still verifies.
    let big = Tmpfs::new(base.join("big"), "512m");
    let dest = big.0.join("store");
    let mut child = demo
        .nuwax()
        .args(["storage", "migrate", dest.to_str().unwrap()])
        .env("NUWAX_RATE_LIMIT", (4u64 << 20).to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let copying = || {
        std::fs::read_dir(&dest)
            .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with(".nuwax-copy-")))
            .unwrap_or(false)
    };
    while !copying() {
        assert!(Instant::now() < deadline, "the copy never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let out = demo.run(&["list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("was undone"), "{}", stderr(&out));
    assert!(!copying(), "a partial copy was left behind");
    assert_catalog_honest(&demo);

    // Run again: done, every record under the new directory, the old files gone.
    let out = demo.run(&["storage", "migrate", dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    for r in demo.list() {
        assert!(r["path"].as_str().unwrap().starts_with(dest.to_str().unwrap()), "{r}");
    }
    assert!(demo.storage_files().iter().all(|f| !f.starts_with("backup_")), "{:?}", demo.storage_files());
    assert!(std::fs::read_to_string(demo.dir.join("nuwax.toml")).unwrap().contains(dest.to_str().unwrap()));
    assert_catalog_honest(&demo);

    // And a rollback from the new location.
    assert_data_rolled_back_to(&demo, first);
    // Later backups go to the new directory (the catalog is gone with the tmpfs otherwise).
    let (_, path) = quick_backup(&demo);
    assert!(path.starts_with(&dest));
    let _ = demo.compose(&["down", "-v", "--timeout", "2"]);
}

#[test]
fn a_lost_catalog_is_rebuilt_from_the_archives_and_rolled_back_from() {
    let compose = require_docker!();
    let demo = Demo::new(compose);
    demo.up();
    std::fs::write(demo.volume_path("dbdata").join("marker.txt"), "as in backup 1").unwrap();
    let (first, _) = quick_backup(&demo);
    let (second, second_path) = quick_backup(&demo);
    std::fs::write(demo.volume_path("dbdata").join("marker.txt"), "changed later").unwrap();

    for f in ["catalog.db", "catalog.db-wal", "catalog.db-shm"] {
        let _ = std::fs::remove_file(demo.dir.join(".nuwax").join(f));
    }
    assert!(demo.list().is_empty());
    let out = demo.run(&["catalog", "rebuild"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(ids(&demo), vec![first, second]);
    assert!(demo.list().iter().all(|r| r["status"] == "complete"));
    assert_catalog_honest(&demo);

    assert_data_rolled_back_to(&demo, first);

    // An archive that disappears is marked missing by the next rebuild.
    std::fs::remove_file(&second_path).unwrap();
    let out = demo.run(&["catalog", "rebuild"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = demo.list().into_iter().find(|r| r["id"].as_i64() == Some(second)).unwrap();
    assert_eq!(r["status"], "missing");
}

fn doctor(demo: &Demo, cmd: Option<Command>) -> (Option<i32>, serde_json::Value) {
    let mut c = cmd.unwrap_or_else(|| demo.nuwax());
    c.args(["--json", "doctor"]);
    let out = c.output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json: {e}: {}{}", stdout(&out), stderr(&out)));
    (out.status.code(), v)
}

fn failed_checks(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .filter(|f| f["ok"] == false)
        .map(|f| format!("{}: {} (hint: {})", f["check"], f["detail"], f["hint"]))
        .collect()
}

#[test]
fn doctor_reports_a_healthy_project_and_each_broken_part() {
    let compose = require_docker!();
    let demo = Demo::new(compose);
    demo.up();
    let (_, path) = quick_backup(&demo);

    let (code, v) = doctor(&demo, None);
    assert_eq!(code, Some(0), "{:?}", failed_checks(&v));
    let compose = v.as_array().unwrap().iter().find(|f| f["check"] == "compose").unwrap();
    let detail = compose["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("docker compose (v2.") && detail.ends_with("chosen by NUWAX_COMPOSE=v2"),
        "{detail}"
    );

    // The engine down.
    let mut c = demo.nuwax();
    c.env("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    let (code, v) = doctor(&demo, Some(c));
    assert_eq!(code, Some(1));
    let failed = failed_checks(&v);
    assert!(failed.len() == 1 && failed[0].starts_with("\"engine\""), "{failed:?}");

    // The storage directory not writable.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(demo.storage(), std::fs::Permissions::from_mode(0o500)).unwrap();
    let (code, v) = doctor(&demo, Some(without_dac_override(demo.nuwax())));
    std::fs::set_permissions(demo.storage(), std::fs::Permissions::from_mode(0o700)).unwrap();
    if crate::support::is_root() || !cfg!(unix) {
        assert_eq!(code, Some(1));
        assert!(failed_checks(&v).iter().any(|f| f.starts_with("\"storage\"")), "{v}");
    }

    // An archive gone.
    std::fs::remove_file(&path).unwrap();
    let (code, v) = doctor(&demo, None);
    assert_eq!(code, Some(1));
    let failed = failed_checks(&v);
    assert!(failed.iter().any(|f| f.starts_with("\"archives\"") && f.contains("gone")), "{failed:?}");
}
