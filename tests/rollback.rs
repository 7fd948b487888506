//! `nuwax rollback` on the demo stack with a real engine.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::require_docker;
use crate::support::{ComposeCli, Demo, gnu_untar, json, stderr, tree};

pub(crate) fn backup(demo: &Demo) -> (i64, PathBuf) {
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

fn bind_in(x: &Path, p: &Path) -> PathBuf {
    x.join(format!("binds/{}", p.display().to_string().trim_start_matches('/')))
}

#[test]
fn rollback_brings_back_data_config_and_image_exactly_and_can_be_undone() {
    rollback_brings_back_everything(require_docker!());
}

#[test]
fn rollback_brings_back_data_config_and_image_exactly_and_can_be_undone_compose_v1() {
    rollback_brings_back_everything(require_docker!(V1));
}

fn rollback_brings_back_everything(compose: ComposeCli) {
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
    let before = demo.started_at();

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

    assert_eq!(demo.started_at(), before, "a service was restarted");
    assert_eq!(tree::snapshot(&uploads), before_tree);
    assert_eq!(demo.list().len(), 1, "a safety backup was made although nothing was done");
}

#[test]
fn sigkill_during_the_restore_is_undone_by_the_next_command() {
    let compose = require_docker!();
    let demo = Demo::new(compose);
    demo.up();
    crate::support::add_bulk(&demo, "dbdata", 12);
    let (id, _) = backup(&demo);
    let dbdata = demo.volume_path("dbdata");
    std::fs::write(dbdata.join("after.txt"), "written after the backup").unwrap();
    let staging = dbdata.parent().unwrap().join(format!("._data.nuwax-new-{id}"));

    let mut child = demo
        .nuwax()
        .args(["rollback", &id.to_string(), "--yes"])
        .env("NUWAX_RATE_LIMIT", (6u64 << 20).to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while !staging.exists() {
        assert!(std::time::Instant::now() < deadline, "the restore never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    // The backup is extracted before anything stops: the services never went down.
    assert_eq!(demo.state_of("db"), "running/healthy", "{:?}", demo.states());

    // The next command finds the dead rollback: nothing was swapped yet, so it is undone.
    let out = demo.run(&["list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("recovered an unfinished rollback"), "{}", stderr(&out));
    demo.wait_healthy(&["db", "app", "worker"]);
    assert!(!staging.exists(), "staging left behind");
    assert_eq!(std::fs::read_to_string(dbdata.join("after.txt")).unwrap(), "written after the backup");

    // And the rollback can then be done.
    let out = demo.run(&["rollback", &id.to_string(), "--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!dbdata.join("after.txt").exists());
    demo.wait_healthy(&["db", "app", "worker"]);
}

#[test]
fn config_only_and_data_only_restrict_what_is_restored() {
    let compose = require_docker!();
    let demo = Demo::new(compose);
    demo.up();
    let (id, _) = backup(&demo);
    let dbdata = demo.volume_path("dbdata");
    let env = std::fs::read_to_string(demo.dir.join(".env")).unwrap();
    std::fs::write(dbdata.join("after.txt"), "after").unwrap();
    std::fs::write(demo.dir.join(".env"), format!("{env}EXTRA=1\n")).unwrap();

    let out = demo.run(&["rollback", &id.to_string(), "--yes", "--config-only"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(demo.dir.join(".env")).unwrap(), env);
    assert!(dbdata.join("after.txt").exists(), "--config-only restored data");

    std::fs::write(demo.dir.join(".env"), format!("{env}EXTRA=2\n")).unwrap();
    let out = demo.run(&["rollback", &id.to_string(), "--yes", "--data-only"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!dbdata.join("after.txt").exists(), "--data-only did not restore data");
    assert!(
        std::fs::read_to_string(demo.dir.join(".env")).unwrap().ends_with("EXTRA=2\n"),
        "--data-only restored .env"
    );
    demo.wait_healthy(&["db", "app", "worker"]);
}

#[test]
fn hostile_archives_imported_and_rolled_back_to_are_refused_with_services_untouched() {
    use nuwax::archive::manifest::{Access, EntryKind, MountKind, MountRecord};

    use crate::extract::{Data, bytes, craft_manifest, header, member, meta};

    let compose = require_docker!();
    let demo = Demo::new(compose);
    demo.up();
    let (_, good) = backup(&demo);
    let base = nuwax::archive::read_manifest(&good).unwrap();
    let vol = demo.volume("dbdata");
    let prefix = format!("volumes/{vol}");
    let outside = tempfile::tempdir().unwrap();
    let before = demo.started_at();
    let root = meta(&prefix, EntryKind::Dir, 0, None);
    let escape = format!(
        "{}{}",
        "../".repeat(12),
        outside.path().join("evil").display().to_string().trim_start_matches('/')
    );
    let fifo = meta(&format!("{prefix}/fifo"), EntryKind::File, 0, None);
    type Case = (&'static str, Vec<nuwax::archive::manifest::EntryMeta>, Vec<(tar::Header, Data)>);
    let cases: Vec<Case> = vec![
        (
            "symlink out of the volume",
            vec![root.clone(), meta(&format!("{prefix}/evil"), EntryKind::Symlink, 0, Some(&escape))],
            vec![],
        ),
        (
            "a FIFO",
            vec![root.clone(), fifo.clone()],
            vec![(header(&fifo, tar::EntryType::Fifo, 0), Data::Bytes(vec![]))],
        ),
        (
            "a .. path",
            vec![root.clone(), meta(&format!("{prefix}/../../../escape"), EntryKind::File, 3, None)],
            vec![],
        ),
    ];
    for (what, declared, extra) in cases {
        let mut m = base.clone();
        m.mounts = vec![MountRecord {
            kind: MountKind::Volume,
            name: vol.clone(),
            source: String::new(),
            destinations: vec![],
            archive_path: prefix.clone(),
            access: Access::Host,
            size: 0,
            file_count: 0,
            running: vec![],
        }];
        m.configs.clear();
        let mut members = bytes(
            declared.iter().take(if extra.is_empty() { declared.len() } else { 1 }).map(member).collect(),
        );
        members.extend(extra);
        m.entries = declared;
        let path = outside.path().join("hostile.tar");
        craft_manifest(&path, nuwax::archive::Compression::None, &m, members);
        let out = demo.run(&["--json", "import", path.to_str().unwrap()]);
        if out.status.success() {
            let id = json(&out)["id"].as_i64().unwrap().to_string();
            let out = demo.run(&["rollback", &id, "--yes"]);
            assert_eq!(out.status.code(), Some(7), "{what}: rollback was not refused: {}", stderr(&out));
        } else {
            assert_eq!(out.status.code(), Some(7), "{what}: {}", stderr(&out));
        }
        assert_eq!(
            std::fs::read_dir(outside.path()).unwrap().count(),
            1,
            "{what}: something was written outside"
        );
        std::fs::remove_file(&path).unwrap();
    }
    assert_eq!(demo.started_at(), before, "a service was stopped");
}

#[test]
fn import_moves_a_site_to_a_new_server_with_nothing_created_yet() {
    let compose = require_docker!();
    let a = Demo::new(compose.clone());
    a.up();
    std::fs::write(a.volume_path("dbdata").join("moved.txt"), "from server A").unwrap();
    let (_, archive) = backup(&a);
    // Server B: the project directory only; no containers, no volumes.
    let b = Demo::new(compose);
    let out = b.run(&["--json", "import", archive.to_str().unwrap()]);
    assert!(out.status.success(), "import: {}", stderr(&out));
    let id = json(&out)["id"].as_i64().unwrap();
    assert_eq!(b.list()[0]["status"], "complete");
    let out = b.run(&["rollback", &id.to_string(), "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(crate::support::stdout(&out).contains("created, filled through the engine"));
    let out = b.run(&["rollback", &id.to_string(), "--yes"]);
    assert!(out.status.success(), "rollback on B: {}", stderr(&out));
    // The rollback created and started the services itself.
    b.wait_healthy(&["db", "app", "worker"]);
    assert_eq!(std::fs::read_to_string(b.volume_path("dbdata").join("moved.txt")).unwrap(), "from server A");
    let x = gnu_untar(&archive);
    let vol = x.path().join(format!("volumes/{}", a.volume("dbdata")));
    tree::assert_same(&vol, &b.volume_path("dbdata"), &["journal.log"]);
    tree::assert_same(&bind_in(x.path(), &a.dir.join("uploads")), &b.dir.join("uploads"), &[]);
}

#[test]
fn volumes_are_restored_exactly_through_the_engine() {
    let compose = require_docker!();
    let demo = Demo::new(compose);
    demo.up();
    let dbdata = demo.volume_path("dbdata");
    std::fs::create_dir_all(dbdata.join("keep/empty")).unwrap();
    std::fs::write(dbdata.join("keep/old.txt"), "v1 data").unwrap();
    // The volume root's own owner and mode are part of the data too.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::fs::set_permissions(&dbdata, std::fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::chown(&dbdata, Some(999), Some(998)).unwrap();
    let (id, archive) = backup(&demo);
    std::fs::write(dbdata.join("keep/old.txt"), "v2 data").unwrap();
    std::fs::remove_dir(dbdata.join("keep/empty")).unwrap();
    std::fs::write(dbdata.join("added.bin"), vec![1u8; 5000]).unwrap();
    std::os::unix::fs::chown(&dbdata, Some(0), Some(0)).unwrap();

    let out = demo
        .nuwax()
        .args(["--json", "rollback", &id.to_string(), "--yes", "--data-only"])
        .env("NUWAX_VOLUME_ACCESS", "engine")
        .output()
        .unwrap();
    assert!(out.status.success(), "rollback: {}", stderr(&out));
    demo.wait_healthy(&["db", "app", "worker"]);
    let dbdata = demo.volume_path("dbdata");
    let x = gnu_untar(&archive);
    let vol = x.path().join(format!("volumes/{}", demo.volume("dbdata")));
    // Bytes, modes, owners, symlinks, empty directories and mtimes, the volume root included.
    tree::assert_same(&vol, &dbdata, &["journal.log"]);
    assert!(!dbdata.join("added.bin").exists());
    let root = std::fs::metadata(&dbdata).unwrap();
    assert_eq!((root.uid(), root.gid(), root.mode() & 0o7777), (999, 998, 0o750));
    let leftovers = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("name=nuwax-restore-{}", demo.name)])
        .output()
        .unwrap();
    assert!(leftovers.stdout.is_empty(), "carrier containers left behind");
    assert!(!demo.storage_files().iter().any(|f| f.contains("nuwax-restore")), "{:?}", demo.storage_files());
}

#[test]
fn with_images_an_image_missing_on_this_host_is_loaded_from_the_archive() {
    let compose = require_docker!();
    let demo = Demo::new(compose);
    demo.up();
    // An image no other test shares: the app container committed under this test's tag.
    let out =
        Command::new("docker").args(["commit", &container_of(&demo, "app"), &demo.image]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(demo.compose(&["up", "-d", "--no-build"]).status.success());
    demo.wait_healthy(&["db", "app", "worker"]);
    let unique = image_of(&demo, "app");

    let out = demo.run(&["--json", "backup", "--with-images"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    let manifest = nuwax::archive::read_manifest(Path::new(v["path"].as_str().unwrap())).unwrap();
    assert_eq!(manifest.images_archive.as_deref(), Some("images/images.tar"));
    assert!(!demo.storage_files().iter().any(|f| f.starts_with(".nuwax-images")), "spool left behind");

    // The image disappears from this host: no container, no tag keeps it.
    assert!(demo.compose(&["down"]).status.success());
    let kept = format!("nuwax-keep/{}-app:backup-{}", demo.name, v["id"]);
    let tags = [
        demo.image.clone(),
        kept,
        format!("nuwax-keep/{}-db:backup-{}", demo.name, v["id"]),
        format!("nuwax-keep/{}-worker:backup-{}", demo.name, v["id"]),
    ];
    crate::support::remove_images(&tags.iter().map(String::as_str).collect::<Vec<_>>(), false);
    let inspect =
        || Command::new("docker").args(["image", "inspect", &unique]).output().unwrap().status.success();
    assert!(!inspect(), "the test failed to remove the image");

    // No containers are left either: the rollback creates and starts them.
    let out = demo.run(&["rollback", &v["id"].to_string(), "--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(inspect(), "the image was not loaded from the archive");
    let out = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", &demo.image])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), unique);
    demo.wait_healthy(&["db", "app", "worker"]);
    assert_eq!(image_of(&demo, "app"), unique);
}

#[test]
fn a_failure_after_the_swap_puts_everything_back_including_volumes_replaced_through_the_engine() {
    failure_after_the_swap(false);
}

/// Killed while putting things back after a failure: the next command undoes (never finishes
/// the rollback the failed run was abandoning).
#[test]
fn a_crash_while_undoing_a_failed_rollback_is_undone_by_the_next_command() {
    failure_after_the_swap(true);
}

fn failure_after_the_swap(crash_while_undoing: bool) {
    let compose = require_docker!();
    let demo = Demo::new(compose);
    demo.up();
    let dbdata = demo.volume_path("dbdata");
    std::fs::write(dbdata.join("state.txt"), "at backup time").unwrap();
    let (id, _) = backup(&demo);
    std::fs::write(dbdata.join("state.txt"), "current").unwrap();
    std::fs::write(demo.dir.join("uploads/current.txt"), "current upload").unwrap();
    std::fs::write(demo.dir.join(".env"), "APP_VERSION=1\nAPP_TITLE=current\n").unwrap();
    let uploads_before = tree::snapshot(&demo.dir.join("uploads"));

    let mut cmd = demo.nuwax();
    cmd.args(["rollback", &id.to_string(), "--yes"])
        .env("NUWAX_VOLUME_ACCESS", "engine")
        .env("NUWAX_TEST_FAIL", "rollback-after-swap");
    if crash_while_undoing {
        cmd.env("NUWAX_TEST_CRASH", "rollback-while-undoing");
    }
    let out = cmd.output().unwrap();
    if crash_while_undoing {
        assert!(out.status.code().is_none(), "expected an abort: {}", stderr(&out));
        let out = demo.nuwax().arg("list").env("NUWAX_VOLUME_ACCESS", "engine").output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stderr(&out).contains("the failed rollback was undone"), "{}", stderr(&out));
    } else {
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("as it was before the rollback, services running"), "{err}");
    }
    demo.wait_healthy(&["db", "app", "worker"]);
    let dbdata = demo.volume_path("dbdata");
    assert_eq!(std::fs::read_to_string(dbdata.join("state.txt")).unwrap(), "current");
    assert_eq!(tree::snapshot(&demo.dir.join("uploads")), uploads_before);
    assert_eq!(std::fs::read_to_string(demo.dir.join(".env")).unwrap(), "APP_VERSION=1\nAPP_TITLE=current\n");
    assert!(!demo.storage_files().iter().any(|f| f.contains("nuwax-restore")), "{:?}", demo.storage_files());
}
