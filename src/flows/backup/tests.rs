//! Backup flow unit tests against the fake engine.

use std::path::PathBuf;

use super::*;
use crate::archive::{self, NoProgress};
use crate::catalog::Catalog;
use crate::engine::fake::{FakeCompose, FakeEngine};
use crate::engine::{Mount, MountType};
use crate::interrupt::Interrupt;

struct Fixture {
    _tmp: tempfile::TempDir,
    ctx: Ctx,
    engine: Arc<FakeEngine>,
    volume: PathBuf,
}

async fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shop");
    std::fs::create_dir_all(dir.join("uploads")).unwrap();
    std::fs::write(dir.join("uploads/a.txt"), "upload").unwrap();
    std::fs::write(
        dir.join("compose.yaml"),
        "services: {db: {image: x}, app: {image: y, depends_on: [db]}}\n",
    )
    .unwrap();
    std::fs::write(dir.join(".env"), "A=1\n").unwrap();
    let volume = tmp.path().join("volumes/shop_data/_data");
    std::fs::create_dir_all(volume.join("empty")).unwrap();
    std::fs::write(volume.join("db.bin"), vec![7u8; 100_000]).unwrap();
    let engine = Arc::new(FakeEngine::new());
    let vol = Mount {
        kind: MountType::Volume,
        name: Some("shop_data".into()),
        source: volume.clone(),
        destination: "/data".into(),
    };
    let bind =
        Mount { kind: MountType::Bind, name: None, source: dir.join("uploads"), destination: "/up".into() };
    engine.add("db", true, &[], vec![vol]);
    engine.add("app", true, &[], vec![bind]);
    engine.add("cron", false, &[], vec![]);
    engine.add_volume("shop_data", volume.clone());
    let project = crate::project::Project::discover(&dir).unwrap();
    let catalog = Catalog::open(&project.state_dir).await.unwrap();
    let compose =
        Some(Arc::new(FakeCompose::new(engine.clone())) as Arc<dyn crate::engine::compose::Compose>);
    let ctx = Ctx { project, catalog, engine: Some(engine.clone()), compose, interrupt: Interrupt::none() };
    Fixture { _tmp: tmp, ctx, engine, volume }
}

fn opts() -> BackupOptions {
    BackupOptions {
        kind: BackupKind::Manual,
        note: None,
        compression: Compression::Zstd,
        level: 3,
        stop: true,
        volume_access: VolumeAccess::Auto,
        rate_limit: None,
        with_images: false,
        snapshot: super::SnapshotUse::On,
        stop_each: false,
        recipients: Vec::new(),
    }
}

#[tokio::test]
async fn backup_stops_in_order_archives_everything_and_records_it() {
    let f = fixture().await;
    let out = backup(&f.ctx, &opts(), Arc::new(NoProgress)).await.unwrap();
    assert_eq!(
        f.engine.calls(),
        [
            "tag nuwax-keep/shop-db:backup-1",
            "tag nuwax-keep/shop-app:backup-1",
            "tag nuwax-keep/shop-cron:backup-1",
            "stop app",
            "stop db",
            "start db",
            "start app"
        ]
    );
    assert_eq!(f.engine.tags()["nuwax-keep/shop-db:backup-1"], "sha256:db");
    let m = archive::read_manifest(&out.path).unwrap();
    assert!(m.services.iter().all(|s| s.keep_tag.is_some()));
    assert_eq!(out.services_stopped.len(), 2);
    let (m, entries) = read_entries(&out.path);
    let names: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    assert!(names.contains(&"volumes/shop_data/db.bin") && names.contains(&"volumes/shop_data/empty"));
    assert!(names.contains(&"config/compose.yaml") && names.contains(&"config/.env"));
    assert!(names.iter().any(|n| n.starts_with("binds/") && n.ends_with("uploads/a.txt")));
    assert_eq!(m.services.iter().filter(|s| s.running).count(), 2);
    let rec = f.ctx.catalog.get(out.id).await.unwrap().unwrap();
    assert_eq!(rec.status, "complete");
    assert_eq!(rec.checksum.as_deref(), Some(out.checksum.as_str()));
    assert!(f.ctx.catalog.unfinished(&f.ctx.project.name).await.unwrap().is_empty());
    assert!(f.volume.exists());
}

#[tokio::test]
async fn a_service_that_does_not_come_back_fails_the_backup_and_keeps_the_journal_open() {
    let f = fixture().await;
    f.engine.fail_start("app");
    let err = backup(&f.ctx, &opts(), Arc::new(NoProgress)).await.unwrap_err();
    assert!(format!("{err:#}").contains("services did not come back"), "{err:#}");
    let recs = f.ctx.catalog.list(&f.ctx.project.name).await.unwrap();
    assert_eq!(recs[0].status, "failed");
    assert!(f.engine.tags().is_empty(), "keep tags of a failed backup stay: {:?}", f.engine.tags());
    // The next run (or `nuwax recover`) will try to start app again.
    let open = f.ctx.catalog.unfinished(&f.ctx.project.name).await.unwrap();
    assert_eq!(open.len(), 1);
    let leftovers: Vec<_> = std::fs::read_dir(&f.ctx.project.storage_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != crate::snapshot::DIR)
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn no_stop_reads_while_running_and_records_no_downtime() {
    let f = fixture().await;
    let out = backup(&f.ctx, &BackupOptions { stop: false, ..opts() }, Arc::new(NoProgress)).await.unwrap();
    assert!(f.engine.calls().iter().all(|c| c.starts_with("tag ")), "{:?}", f.engine.calls());
    assert_eq!(out.downtime_ms, None);
    assert!(!archive::read_manifest(&out.path).unwrap().services_stopped);
}

#[tokio::test]
async fn a_symlinked_bind_source_is_followed_at_the_root_only() {
    let f = fixture().await;
    let uploads = f.ctx.project.dir.join("uploads");
    let real = f.ctx.project.dir.join("real-uploads");
    std::fs::rename(&uploads, &real).unwrap();
    std::os::unix::fs::symlink(&real, &uploads).unwrap();
    std::os::unix::fs::symlink("/etc", real.join("etc-link")).unwrap();
    let out = backup(&f.ctx, &opts(), Arc::new(NoProgress)).await.unwrap();
    let (_, entries) = read_entries(&out.path);
    let bind: Vec<_> = entries.iter().filter(|e| e.path.starts_with("binds/")).collect();
    assert!(bind.iter().any(|e| e.path.ends_with("uploads/a.txt")), "{bind:?}");
    let link = bind.iter().find(|e| e.path.ends_with("uploads/etc-link")).unwrap();
    assert_eq!(link.link_target.as_deref(), Some("/etc"));
}

/// Each archive's content under `prefix`, extracted: (relative path, file content).
fn extracted(archive_path: &std::path::Path, prefix: &str) -> Vec<(String, Option<Vec<u8>>)> {
    let dest = tempfile::tempdir().unwrap();
    let out = dest.path().join("x");
    let targets = vec![archive::Target { prefix: prefix.into(), dest: out.clone() }];
    archive::extract(archive_path, &targets, &archive::Cancel::new(), &NoProgress).unwrap();
    walkdir::WalkDir::new(&out)
        .sort_by_file_name()
        .into_iter()
        .map(|e| {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(&out).unwrap().to_string_lossy().into_owned();
            (rel, e.file_type().is_file().then(|| std::fs::read(e.path()).unwrap()))
        })
        .collect()
}

#[tokio::test]
async fn two_phases_archive_exactly_what_one_phase_archives_and_off_removes_the_snapshot() {
    let f = fixture().await;
    let two = backup(&f.ctx, &opts(), Arc::new(NoProgress)).await.unwrap();
    assert!(two.precopy_ms.is_some() && two.delta_bytes == Some(0), "{two:?}");
    assert_eq!((two.single_phase.as_deref(), two.stopped_ms), (None, two.downtime_ms));
    let storage = &f.ctx.project.storage_dir;
    assert!(crate::snapshot::Snapshot::usage(storage, "shop").is_some_and(|u| u.complete));

    // Changed since: the snapshot follows, and the archive holds the change.
    std::fs::write(f.volume.join("db.bin"), vec![8u8; 100_000]).unwrap();
    std::fs::write(f.volume.join("new"), "new").unwrap();
    let again = backup(&f.ctx, &opts(), Arc::new(NoProgress)).await.unwrap();
    let off = BackupOptions { snapshot: SnapshotUse::Off("--no-snapshot"), ..opts() };
    let one = backup(&f.ctx, &off, Arc::new(NoProgress)).await.unwrap();
    assert_eq!(one.single_phase.as_deref(), Some("--no-snapshot"));
    assert!(one.precopy_ms.is_none() && crate::snapshot::Snapshot::usage(storage, "shop").is_none());

    let (a, b) = (archive::read_manifest(&again.path).unwrap(), archive::read_manifest(&one.path).unwrap());
    assert_eq!(a.entries, b.entries);
    assert_eq!(a.index, b.index);
    assert_eq!((&a.mounts, &a.configs, a.services_stopped), (&b.mounts, &b.configs, b.services_stopped));
    for prefix in ["volumes/shop_data", "config/compose.yaml"] {
        assert_eq!(extracted(&again.path, prefix), extracted(&one.path, prefix), "{prefix}");
    }
    assert!(extracted(&again.path, "volumes/shop_data").contains(&("new".into(), Some(b"new".to_vec()))));
}

fn read_entries(path: &std::path::Path) -> (archive::Manifest, Vec<archive::EntryMeta>) {
    let mut entries = Vec::new();
    let m = archive::read_entries(path, |e| {
        entries.push(e);
        Ok(())
    })
    .unwrap();
    (m, entries)
}
