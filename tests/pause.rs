//! `backup = "pause"`: a service the backup freezes (the cgroup freezer) instead of stopping,
//! for the shortest window a writer can have: no shutdown, no restart.

use std::time::Duration;

use crate::require_docker;
use crate::site::backup_moment;
use crate::support::site::Site;

fn paused_site(compose: crate::support::ComposeCli) -> Site {
    let site = Site::new(compose);
    let toml = site.dir.join("nuwax.toml");
    let mut text = std::fs::read_to_string(&toml).unwrap();
    text.push_str("\n[services.app]\nbackup = \"pause\"\n\n[services.shop]\nbackup = \"pause\"\n");
    std::fs::write(&toml, text).unwrap();
    site.up();
    std::thread::sleep(Duration::from_millis(1000));
    site
}

/// The apps are paused while the dumps take their moment, never restarted; the dump holds the
/// app's rows up to the moment it froze (its note of the last row may lag that row by one: a
/// paused writer is caught between its insert and its note, as a crash would catch it).
#[test]
fn paused_apps_are_frozen_not_restarted() {
    let site = paused_site(require_docker!());
    let before = site.started_at("app");
    assert!(!site.is_paused("app"));
    let out = site.run(&["--json", "backup"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let b: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut paused: Vec<&str> =
        b["services_paused"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    paused.sort();
    assert_eq!(paused, ["app", "shop"]);
    assert_eq!(site.started_at("app"), before, "the app was never restarted");
    assert!(!site.is_paused("app"), "and is not paused now");
    let archive = std::path::PathBuf::from(b["path"].as_str().unwrap());
    let (dumped, noted) = backup_moment(&archive);
    assert!(dumped == noted || dumped == noted + 1, "dumped {dumped}, noted {noted}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(site.psql("SELECT max(n) = count(*) FROM ticks"), "t", "the app goes on, no gap");
    assert!(site.psql("SELECT max(n) FROM ticks").parse::<u64>().unwrap() > dumped);
}

/// SIGKILL while the apps are paused: the next command unpauses them.
#[test]
fn sigkill_while_paused_is_unpaused_by_the_next_command() {
    let site = paused_site(require_docker!());
    let (child, pause) = site.held_at("backup-stopped", &["backup"]);
    assert!(site.is_paused("app"), "the app is paused");
    crate::support::kill_held(child, &pause);
    let status = site.run(&["status"]);
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    site.wait_healthy(&["db", "app", "maria", "shop"]);
    assert!(!site.is_paused("app"), "unpaused");
    let n = |s: &Site| s.psql("SELECT max(n) FROM ticks").parse::<u64>().unwrap();
    let was = n(&site);
    std::thread::sleep(Duration::from_millis(500));
    assert!(n(&site) > was, "the app writes again");
}
