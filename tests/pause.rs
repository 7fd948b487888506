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

fn started_at(site: &Site, service: &str) -> String {
    let out = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.State.StartedAt}} {{.State.Paused}}", &site.container_id(service)])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The apps are paused while the dumps take their moment, never restarted; the dump holds the
/// app's rows up to the moment it froze (its note of the last row may lag that row by one: a
/// paused writer is caught between its insert and its note, as a crash would catch it).
#[test]
fn paused_apps_are_frozen_not_restarted() {
    let site = paused_site(require_docker!());
    let before = started_at(&site, "app");
    let out = site.run(&["--json", "backup"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let b: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut paused: Vec<&str> =
        b["services_paused"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    paused.sort();
    assert_eq!(paused, ["app", "shop"]);
    assert_eq!(started_at(&site, "app"), before, "the app was never restarted, and is not paused now");
    assert!(before.ends_with("false"));
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
    let pause = site.dir.join("pause");
    let mut child = site
        .nuwax()
        .arg("backup")
        .env("NUWAX_TEST_PAUSE", "backup-stopped")
        .env("NUWAX_TEST_PAUSE_FILE", &pause)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !pause.exists() {
        assert!(std::time::Instant::now() < deadline, "nuwax never reached the pause");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(started_at(&site, "app").ends_with("true"), "the app is paused");
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_file(&pause);
    let status = site.run(&["status"]);
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    site.wait_healthy(&["db", "app", "maria", "shop"]);
    assert!(started_at(&site, "app").ends_with("false"), "unpaused");
    let n = |s: &Site| s.psql("SELECT max(n) FROM ticks").parse::<u64>().unwrap();
    let was = n(&site);
    std::thread::sleep(Duration::from_millis(500));
    assert!(n(&site) > was, "the app writes again");
}
