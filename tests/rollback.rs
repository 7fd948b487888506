//! `nuwax rollback` on the demo stack with a real engine.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::require_docker;
use crate::support::{Demo, gnu_untar, json, stderr, tree};

fn backup(demo: &Demo) -> (i64, PathBuf) {
    let out = demo.run(&["--json", "backup"]);
    assert!(out.status.success(), "backup: {}", stderr(&out));
    let v = json(&out);
    (v["id"].as_i64().unwrap(), PathBuf::from(v["path"].as_str().unwrap()))
}

fn container_of(demo: &Demo, service: &str) -> String {
    let out = demo.compose(&["ps", "-q", service]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn image_of(demo: &Demo, service: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "--format", "{{.Image}}", &container_of(demo, service)])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn started_at(demo: &Demo) -> Vec<String> {
    ["db", "app", "worker"]
        .iter()
        .map(|s| {
            let out = Command::new("docker")
                .args(["inspect", "--format", "{{.Id}} {{.State.StartedAt}}", &container_of(demo, s)])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
        .collect()
}

fn bind_in(x: &Path, p: &Path) -> PathBuf {
    x.join(format!("binds/{}", p.display().to_string().trim_start_matches('/')))
}

#[test]
fn rollback_brings_back_data_config_and_image_exactly_and_can_be_undone() {
    let compose = require_docker!();
    let demo = Demo::new(compose);
    demo.up();
    let dbdata = demo.volume_path("dbdata");
    let uploads = demo.dir.join("uploads");
    std::fs::create_dir_all(dbdata.join("keep/empty")).unwrap();
    std::fs::write(dbdata.join("keep/old.txt"), "v1 data").unwrap();
    let (id, archive) = backup(&demo);
    let old_image = image_of(&demo, "app");

    // Change everything: data, a bind mount, .env, and the image the services run.
    std::fs::write(dbdata.join("keep/old.txt"), "v2 data").unwrap();
    std::fs::remove_dir(dbdata.join("keep/empty")).unwrap();
    std::fs::write(dbdata.join("added.bin"), vec![1u8; 5000]).unwrap();
    std::fs::remove_file(uploads.join("README.txt")).unwrap();
    std::fs::write(uploads.join("new-upload.txt"), "new").unwrap();
    std::fs::write(demo.dir.join(".env"), "APP_VERSION=2\nAPP_TITLE=changed\n").unwrap();
    let out =
        Command::new("docker").args(["commit", &container_of(&demo, "app"), &demo.image]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = demo.compose(&["up", "-d", "--no-build"]);
    assert!(out.status.success(), "{}", stderr(&out));
    demo.wait_healthy(&["db", "app", "worker"]);
    assert_ne!(image_of(&demo, "app"), old_image, "the test failed to change the image");

    let out = demo.run(&["--json", "rollback", &id.to_string(), "--yes"]);
    assert!(out.status.success(), "rollback: {}", stderr(&out));
    let v = json(&out);
    let safety = v["safety_backup_id"].as_i64().unwrap();
    demo.wait_healthy(&["db", "app", "worker"]);

    let x = gnu_untar(&archive);
    let vol = x.path().join(format!("volumes/{}", demo.volume("dbdata")));
    // The db appends to its journal as soon as it runs again.
    tree::assert_same(&vol, &dbdata, &["journal.log"]);
    let journal = std::fs::read(dbdata.join("journal.log")).unwrap();
    assert!(journal.starts_with(&std::fs::read(vol.join("journal.log")).unwrap()));
    tree::assert_same(&bind_in(x.path(), &uploads), &uploads, &[]);
    assert_eq!(
        std::fs::read(demo.dir.join(".env")).unwrap(),
        std::fs::read(x.path().join("config/.env")).unwrap()
    );
    assert_eq!(image_of(&demo, "app"), old_image, "app does not run the backup's image");
    assert!(!dbdata.join("added.bin").exists());

    // Rolling back to the safety backup undoes the rollback.
    let out = demo.run(&["--json", "rollback", &safety.to_string(), "--yes"]);
    assert!(out.status.success(), "rollback to safety: {}", stderr(&out));
    demo.wait_healthy(&["db", "app", "worker"]);
    assert_eq!(std::fs::read_to_string(dbdata.join("keep/old.txt")).unwrap(), "v2 data");
    assert!(dbdata.join("added.bin").exists() && uploads.join("new-upload.txt").exists());
    assert_eq!(std::fs::read_to_string(demo.dir.join(".env")).unwrap(), "APP_VERSION=2\nAPP_TITLE=changed\n");
    assert_ne!(image_of(&demo, "app"), old_image);
}

#[test]
fn dry_run_and_refusals_change_nothing() {
    let compose = require_docker!();
    let demo = Demo::new(compose);
    demo.up();
    let (id, archive) = backup(&demo);
    // (The bind mount holds still; the volumes' services write to them all the time.)
    let uploads = demo.dir.join("uploads");
    std::fs::write(uploads.join("after.txt"), "after").unwrap();
    let before_tree = tree::snapshot(&uploads);
    let before = started_at(&demo);

    let out = demo.run(&["rollback", &id.to_string(), "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan = crate::support::stdout(&out);
    assert!(plan.contains("dry run: nothing was changed") && plan.contains(&demo.volume("dbdata")), "{plan}");

    // No terminal to ask on and no --yes: refused.
    let out = demo.run(&["rollback", &id.to_string()]);
    assert_eq!(out.status.code(), Some(10), "{}", stderr(&out));

    // A damaged archive is found before anything is stopped.
    let bytes = std::fs::read(&archive).unwrap();
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    std::fs::write(&archive, &flipped).unwrap();
    let out = demo.run(&["rollback", &id.to_string(), "--yes"]);
    assert_eq!(out.status.code(), Some(7), "bit flip: {}", stderr(&out));
    std::fs::write(&archive, &bytes[..bytes.len() / 2]).unwrap();
    let out = demo.run(&["rollback", &id.to_string(), "--yes"]);
    assert_eq!(out.status.code(), Some(7), "truncated: {}", stderr(&out));

    assert_eq!(started_at(&demo), before, "a service was restarted");
    assert_eq!(tree::snapshot(&uploads), before_tree);
    assert_eq!(demo.list().len(), 1, "a safety backup was made although nothing was done");
}
