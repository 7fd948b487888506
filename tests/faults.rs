//! Faults during a backup, each ending with every previously running service running again and
//! no complete-looking archive left behind.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::require_docker;
use crate::support::{Demo, Tmpfs, add_bulk, stderr, without_dac_override};

/// Every service healthy, no archive (only a possible `lock`-free storage dir), and the catalog
/// shows no complete backup.
fn assert_nothing_complete_and_all_running(demo: &Demo) {
    demo.wait_healthy(&["db", "app", "worker"]);
    let leftovers: Vec<String> = demo
        .storage_files()
        .into_iter()
        .filter(|f| f.starts_with("backup_") || f.starts_with(".nuwax-partial"))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    assert!(demo.list().iter().all(|r| r["status"] != "complete"), "{:?}", demo.list());
}

/// Starts `nuwax backup` slowed down to `rate` bytes/s and waits until it is archiving. In one
/// phase (`--no-snapshot`): these tests are about signals while the archive is written with the
/// services stopped (tests/twophase.rs has the two-phase kills).
fn start_slow_backup(demo: &Demo, rate: u64) -> std::process::Child {
    let child = demo
        .nuwax()
        .args(["backup", "--no-snapshot"])
        .env("NUWAX_RATE_LIMIT", rate.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !demo.storage_files().iter().any(|f| f.starts_with(".nuwax-partial")) {
        assert!(Instant::now() < deadline, "archiving never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    child
}

#[test]
fn storage_dir_not_writable_refuses_before_stopping_anything() {
    let compose = require_docker!();
    let demo = Demo::new(compose);
    demo.up();
    std::fs::create_dir_all(demo.storage()).unwrap();
    std::fs::set_permissions(demo.storage(), std::fs::Permissions::from_mode(0o555)).unwrap();
    let started = demo.states();
    let mut cmd = demo.nuwax();
    cmd.arg("backup");
    let out = without_dac_override(cmd).output().unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not writable"), "{}", stderr(&out));
    // Nothing was stopped: the same containers, never restarted.
    assert_eq!(demo.states(), started);
    std::fs::set_permissions(demo.storage(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_nothing_complete_and_all_running(&demo);
}

#[test]
fn not_enough_free_space_is_refused_in_preflight() {
    let compose = require_docker!();
    if !crate::support::can_mount_tmpfs("not_enough_free_space") {
        return;
    }
    let demo = Demo::new(compose);
    demo.up();
    add_bulk(&demo, "dbdata", 8);
    let base = tempfile::tempdir().unwrap();
    let small = Tmpfs::new(base.path().join("small"), "2m");
    let out = demo.nuwax().arg("backup").env("NUWAX_STORAGE_DIR", small.0.as_path()).output().unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("not enough free space: needs ~")
            && err.contains(&small.0.as_path().display().to_string()),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(small.0.as_path()).unwrap().count(), 0);
    assert_nothing_complete_and_all_running(&demo);
}

#[test]
fn an_unreadable_file_in_a_volume_fails_the_backup_and_services_come_back() {
    let compose = require_docker!();
    let demo = Demo::new(compose);
    demo.up();
    let f = demo.volume_path("cache").join("unreadable");
    std::fs::write(&f, "secret").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o000)).unwrap();
    if crate::support::is_root() {
        // Owned by someone else, so even the owner bits do not let us in.
        std::os::unix::fs::lchown(&f, Some(4242), Some(4242)).unwrap();
    }
    let mut cmd = demo.nuwax();
    cmd.arg("backup");
    let out = without_dac_override(cmd).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("unreadable"), "error does not name the file: {}", stderr(&out));
    assert_nothing_complete_and_all_running(&demo);
    let list = demo.list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["status"], "failed");
}

fn signal_during_archiving(signal: rustix::process::Signal, name: &str, code: i32) {
    let compose = require_docker!();
    let demo = Demo::new(compose);
    demo.up();
    add_bulk(&demo, "dbdata", 16);
    let mut child = start_slow_backup(&demo, 2 << 20);
    assert!(demo.state_of("db").starts_with("exited"), "db not stopped while archiving: {:?}", demo.states());
    rustix::process::kill_process(rustix::process::Pid::from_raw(child.id() as i32).unwrap(), signal)
        .unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(code), "{err}");
    assert!(err.contains(&format!("interrupted by {name}")), "{err}");
    assert_nothing_complete_and_all_running(&demo);
    assert_eq!(demo.list()[0]["status"], "failed");
}

#[test]
fn sigint_during_archiving_restarts_services_and_leaves_no_archive() {
    signal_during_archiving(rustix::process::Signal::INT, "SIGINT", 130);
}

#[test]
fn sigterm_during_archiving_restarts_services_and_leaves_no_archive() {
    signal_during_archiving(rustix::process::Signal::TERM, "SIGTERM", 143);
}

#[test]
fn sigkill_during_archiving_is_recovered_by_the_next_command() {
    let compose = require_docker!();
    let demo = Demo::new(compose);
    demo.up();
    add_bulk(&demo, "dbdata", 16);
    let mut child = start_slow_backup(&demo, 2 << 20);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(demo.state_of("db").starts_with("exited"), "{:?}", demo.states());
    // Any command finds the dead backup and finishes it.
    let out = demo.run(&["list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("recovered an unfinished backup"), "{err}");
    assert_nothing_complete_and_all_running(&demo);
    let list = demo.list();
    assert_eq!(list[0]["status"], "failed");
    assert!(list[0]["error"].as_str().unwrap().contains("interrupted"));
    // And the next backup works.
    let out = demo.run(&["backup"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_second_backup_is_refused_while_one_runs_and_the_first_completes() {
    let compose = require_docker!();
    let demo = Demo::new(compose);
    demo.up();
    add_bulk(&demo, "dbdata", 6);
    let child = start_slow_backup(&demo, 4 << 20);
    let t = Instant::now();
    let out = demo.run(&["backup"]);
    assert!(t.elapsed() < Duration::from_secs(5), "the second backup waited instead of refusing");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("another nuwax operation is running (pid {})", child.id())),
        "{}",
        stderr(&out)
    );
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    demo.wait_healthy(&["db", "app", "worker"]);
    let list = demo.list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["status"], "complete");
}
