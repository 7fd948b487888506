//! How a backup takes each service, said in nuwax.toml: `backup = "live"` (kept running, its
//! mounts read while it runs) and `backup = "skip"` (kept running, its own mounts left out), and
//! `backup --dry-run`, which says all of it and changes nothing.

use crate::require_docker;
use crate::support::{Demo, json, stderr};

fn item<'a>(items: &'a serde_json::Value, prefix: &str) -> &'a serde_json::Value {
    items
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["item"].as_str().unwrap().starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {items}"))
}

#[test]
fn live_and_skip_services_keep_running_and_the_dry_run_says_so_first() {
    let demo = Demo::new(require_docker!());
    let toml = demo.dir.join("nuwax.toml");
    let mut text = std::fs::read_to_string(&toml).unwrap();
    text.push_str("\n[services.app]\nbackup = \"live\"\n\n[services.worker]\nbackup = \"skip\"\n");
    std::fs::write(&toml, text).unwrap();
    demo.up();
    let (cache, uploads) = (demo.volume_path("cache"), demo.dir.join("uploads"));
    std::fs::write(cache.join("marker"), "before").unwrap();
    std::fs::write(uploads.join("file"), "before").unwrap();
    let started = demo.started_at();

    // The dry run: who stops, what is read live, what is left out; nothing is touched.
    let out = demo.run(&["--json", "backup", "--dry-run"]);
    assert!(out.status.success(), "dry run: {}", stderr(&out));
    let plan = json(&out);
    let how: Vec<(&str, &str)> = (plan["services"].as_array().unwrap().iter())
        .map(|s| (s["service"].as_str().unwrap(), s["how"].as_str().unwrap()))
        .collect();
    assert_eq!(how, [("app", "live"), ("db", "stop"), ("worker", "skip")]);
    let bind = item(&plan["mounts"], "bind ");
    assert_eq!(bind["point_in_time"], false, "{bind}");
    assert_eq!(item(&plan["mounts"], &format!("volume {}", demo.volume("dbdata")))["point_in_time"], true);
    let skipped = plan["skipped"].to_string();
    assert!(skipped.contains(&demo.volume("cache")) && skipped.contains("skip"), "{skipped}");
    assert!(!plan["mounts"].to_string().contains(&demo.volume("cache")), "{}", plan["mounts"]);
    assert!(demo.list().is_empty(), "a dry run records nothing");
    assert_eq!(demo.started_at(), started, "a dry run stops nothing");
    assert!(!demo.storage_files().iter().any(|f| f.starts_with("backup_")), "{:?}", demo.storage_files());

    // The backup does what it said: only db stops, app and worker run on.
    let out = demo.run(&["--json", "backup"]);
    assert!(out.status.success(), "backup: {}", stderr(&out));
    let b = json(&out);
    assert_eq!(b["services_stopped"], serde_json::json!(["db"]));
    let now = demo.started_at();
    assert_ne!(now[0], started[0], "db was stopped and started");
    assert_eq!(now[1..], started[1..], "app and worker were never restarted");
    let bind = item(&b["items"], "bind ");
    assert_eq!(bind["point_in_time"], false, "{bind}");
    assert!(bind["how"].as_str().unwrap().contains("app"), "{bind}");
    assert_eq!(item(&b["items"], &format!("volume {}", demo.volume("dbdata")))["point_in_time"], true);
    assert!(b["skipped"].to_string().contains(&demo.volume("cache")));
    assert_eq!(b["live"], false, "one service read live does not make the backup live");

    // A rollback brings back what the backup holds and leaves the skipped volume as it is.
    std::fs::write(cache.join("marker"), "after").unwrap();
    std::fs::write(uploads.join("file"), "after").unwrap();
    let id = b["id"].to_string();
    let out = demo.run(&["rollback", &id, "--yes"]);
    assert!(out.status.success(), "rollback: {}", stderr(&out));
    assert_eq!(std::fs::read_to_string(uploads.join("file")).unwrap(), "before");
    assert_eq!(std::fs::read_to_string(demo.volume_path("cache").join("marker")).unwrap(), "after");
    demo.wait_healthy(&["db", "app", "worker"]);
}
