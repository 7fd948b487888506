use std::path::Path;

use super::{Index, Pass, PassKind, Snapshot};
use crate::archive::Cancel;

fn pass(snap: &Snapshot, old: &Index, kind: PassKind, root: &Path) -> (Index, super::PassReport) {
    run(Pass::new(snap, old, kind, Cancel::new(), None), root)
}

fn run(mut p: Pass<'_>, root: &Path) -> (Index, super::PassReport) {
    let none = globset::GlobSet::empty();
    p.source("volumes/data", root, &none, &[]).unwrap();
    p.finish().unwrap()
}

fn tree(dir: &Path) -> Vec<(String, Option<Vec<u8>>, Option<String>)> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(dir).unwrap().to_string_lossy().into_owned();
        let ft = e.file_type();
        let content = ft.is_file().then(|| std::fs::read(e.path()).unwrap());
        let link =
            ft.is_symlink().then(|| std::fs::read_link(e.path()).unwrap().to_string_lossy().into_owned());
        out.push((rel, content, link));
    }
    out
}

#[test]
fn a_pass_makes_the_mirror_what_the_source_holds_and_removes_what_it_no_longer_does() {
    let (src, storage) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::create_dir_all(src.path().join("a/b")).unwrap();
    std::fs::write(src.path().join("a/b/f"), b"one").unwrap();
    std::fs::write(src.path().join("gone"), b"x").unwrap();
    std::os::unix::fs::symlink("a/b/f", src.path().join("link")).unwrap();
    let snap = Snapshot::open(storage.path(), "p").unwrap();
    let (index, _) = pass(&snap, &Index::default(), PassKind::Running, src.path());
    assert_eq!(tree(src.path()), tree(&snap.data("volumes/data")));

    std::fs::remove_file(src.path().join("gone")).unwrap();
    std::fs::remove_dir_all(src.path().join("a")).unwrap();
    std::fs::write(src.path().join("a"), b"now a file").unwrap();
    std::fs::remove_file(src.path().join("link")).unwrap();
    std::os::unix::fs::symlink("elsewhere", src.path().join("link")).unwrap();
    let (_, report) = pass(&snap, &index, PassKind::Stopped, src.path());
    assert_eq!(tree(src.path()), tree(&snap.data("volumes/data")));
    assert_eq!(report.files_updated, 1);
    // Owner-only, whatever the source's modes.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(snap.data("volumes/data/a")).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0);
}

#[test]
fn a_file_changed_in_a_few_bytes_costs_one_block_not_the_whole_file() {
    let (src, storage) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let big: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(src.path().join("db"), &big).unwrap();
    let snap = Snapshot::open(storage.path(), "p").unwrap();
    let (index, first) = pass(&snap, &Index::default(), PassKind::Running, src.path());
    assert_eq!(first.bytes_written + first.bytes_reflinked, 8 << 20);

    let f = std::fs::OpenOptions::new().write(true).open(src.path().join("db")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"changed", 5 << 20).unwrap();
    let (_, second) = pass(&snap, &index, PassKind::Stopped, src.path());
    assert_eq!(tree(src.path()), tree(&snap.data("volumes/data")));
    assert!(second.bytes_written <= 1 << 20, "{second:?}");
    assert_eq!(second.files_updated, 1);
}

#[test]
fn files_the_index_proves_current_are_not_read_and_a_lost_index_means_comparing() {
    let (src, storage) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for i in 0..20 {
        std::fs::write(src.path().join(format!("f{i}")), format!("file {i}")).unwrap();
    }
    // Older than the racy window, so the stamps prove the copies.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let snap = Snapshot::open(storage.path(), "p").unwrap();
    let (index, _) = pass(&snap, &Index::default(), PassKind::Running, src.path());
    snap.commit(&index).unwrap();

    let old = snap.take_index().unwrap();
    assert_eq!(old.files(), 20);
    let (_, r) = pass(&snap, &old, PassKind::Stopped, src.path());
    assert_eq!((r.files_current, r.files_updated, r.bytes_written), (20, 0, 0));

    // Taken and never committed (a crash): nothing is trusted, everything compared, nothing written.
    let lost = snap.take_index().unwrap();
    assert_eq!(lost.files(), 0);
    let (_, r) = pass(&snap, &lost, PassKind::Running, src.path());
    assert_eq!((r.files_current, r.files_updated, r.bytes_written), (0, 20, 0));
}

#[test]
fn what_the_mirror_holds_beyond_the_source_goes_at_every_depth() {
    use std::os::unix::ffi::OsStrExt;
    let (src, storage) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for dir in ["b/c/d", "b/e", "f", "g-h"] {
        std::fs::create_dir_all(src.path().join(dir)).unwrap();
    }
    for file in ["a", "b/c/d/x", "b/c/y", "b/e/z", "b.z", "f/1", "g-h/2"] {
        std::fs::write(src.path().join(file), file).unwrap();
    }
    let snap = Snapshot::open(storage.path(), "p").unwrap();
    let (index, _) = pass(&snap, &Index::default(), PassKind::Running, src.path());

    // What a source held once, or what came from elsewhere: before, between and after the
    // names the source holds, at every level, of every kind.
    let mirror = snap.data("volumes/data");
    for dir in ["0/old", "b/c/d/zz", "b/ba", "g/deep/er", "f/0"] {
        std::fs::create_dir_all(mirror.join(dir)).unwrap();
    }
    for file in ["00", "b/c/d/w", "b/c/d/zz/q", "b/c/z", "b/e/zz", "b/a", "b.y", "f/2", "zzz"] {
        std::fs::write(mirror.join(file), b"stray").unwrap();
    }
    std::fs::write(mirror.join(std::ffi::OsStr::from_bytes(b"b/\xff")), b"not UTF-8").unwrap();
    std::os::unix::fs::symlink("a", mirror.join("b/c/d/y")).unwrap();
    // And what the source no longer holds.
    std::fs::remove_dir_all(src.path().join("b/e")).unwrap();
    std::fs::remove_file(src.path().join("g-h/2")).unwrap();
    let (_, report) = pass(&snap, &index, PassKind::Stopped, src.path());
    assert_eq!(tree(src.path()), tree(&mirror));
    assert_eq!(report.bytes_written, 0, "{report:?}");

    // A source that is gone altogether leaves nothing of it in the mirror.
    let gone = src.path().join("gone");
    let snap_index = Index::default();
    let mut p = Pass::new(&snap, &snap_index, PassKind::Running, Cancel::new(), None);
    p.source("volumes/data", &gone, &globset::GlobSet::empty(), &[]).unwrap_err();
    let fifo = src.path().join("fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    p.source("volumes/data", &fifo, &globset::GlobSet::empty(), &[]).unwrap();
    assert!(std::fs::symlink_metadata(&mirror).is_err());
}

#[test]
fn a_copy_the_index_proves_is_copied_again_when_the_mirror_lost_it_or_it_changed_size() {
    let (src, storage) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::create_dir(src.path().join("d")).unwrap();
    for i in 0..6 {
        std::fs::write(src.path().join(format!("d/f{i}")), format!("file {i}")).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let snap = Snapshot::open(storage.path(), "p").unwrap();
    let (index, _) = pass(&snap, &Index::default(), PassKind::Running, src.path());
    snap.commit(&index).unwrap();

    let mirror = snap.data("volumes/data/d");
    std::fs::remove_file(mirror.join("f1")).unwrap();
    std::fs::write(mirror.join("f2"), b"fil").unwrap();
    std::fs::remove_file(mirror.join("f3")).unwrap();
    std::fs::create_dir(mirror.join("f3")).unwrap();
    std::fs::remove_file(mirror.join("f4")).unwrap();
    std::os::unix::fs::symlink("f0", mirror.join("f4")).unwrap();
    let old = snap.take_index().unwrap();
    let (_, r) = pass(&snap, &old, PassKind::Stopped, src.path());
    assert_eq!(tree(src.path()), tree(&snap.data("volumes/data")));
    assert_eq!((r.files_current, r.files_updated), (2, 4), "{r:?}");
}

#[test]
fn an_index_of_an_earlier_format_or_a_damaged_one_is_not_trusted() {
    let (src, storage) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::write(src.path().join("f"), b"x").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let snap = Snapshot::open(storage.path(), "p").unwrap();
    let (index, _) = pass(&snap, &Index::default(), PassKind::Running, src.path());
    snap.commit(&index).unwrap();
    let committed = snap.dir().join(super::index::COMMITTED);
    let bytes = std::fs::read(&committed).unwrap();

    // Cut short anywhere: the record is gone, so the index is.
    for len in [0, 10, bytes.len() - 1] {
        std::fs::write(&committed, &bytes[..len]).unwrap();
        assert_eq!(snap.take_index().unwrap().files(), 0, "cut at {len}");
    }
    std::fs::write(&committed, &bytes).unwrap();
    assert_eq!(snap.take_index().unwrap().files(), 1);

    // The JSON lines of an earlier version: removed, and the mirror compared by content.
    let legacy = snap.dir().join("index.jsonl");
    std::fs::write(&legacy, b"{\"source\":\"volumes/data\"}\n").unwrap();
    assert_eq!(snap.take_index().unwrap().files(), 0);
    assert!(!legacy.exists());
}

#[test]
fn an_index_beside_one_of_an_earlier_format_is_stale_and_both_go() {
    let (src, storage) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::write(src.path().join("f"), b"x").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let snap = Snapshot::open(storage.path(), "p").unwrap();
    let (index, _) = pass(&snap, &Index::default(), PassKind::Running, src.path());
    snap.commit(&index).unwrap();
    // An older version ran since (a downgrade, then this one again): it synced the mirror and
    // wrote its own index, leaving `index.bin` as it was.
    let (committed, legacy) = (snap.dir().join(super::index::COMMITTED), snap.dir().join("index.jsonl"));
    std::fs::write(&legacy, b"{\"source\":\"volumes/data\"}\n").unwrap();
    let old = snap.take_index().unwrap();
    assert_eq!(old.files(), 0);
    assert!(!committed.exists() && !legacy.exists());
    let (_, r) = pass(&snap, &old, PassKind::Stopped, src.path());
    assert_eq!((r.files_current, r.files_updated, r.bytes_written), (0, 1, 0));
}

#[test]
fn a_frozen_backup_of_an_older_version_names_an_index_of_its_format_which_is_not_kept() {
    let (src, storage) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::write(src.path().join("f"), b"x").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let snap = Snapshot::open(storage.path(), "p").unwrap();
    pass(&snap, &Index::default(), PassKind::Running, src.path());
    // The working index (JSON lines) an older version's `.nuwax-frozen-<id>.json` names.
    let work = snap.dir().join("index.1-0.work.jsonl");
    let line =
        r#"["volumes/data/f",{"stamp":{"dev":1,"ino":2,"size":1,"mtime_ns":3,"ctime_ns":4},"racy":false}]"#;
    std::fs::write(&work, format!("{{\"source\":\"volumes/data\"}}\n{line}\n")).unwrap();
    let saved = serde_json::json!({ "file": work, "sections": { "volumes/data": [26, 1] } });
    let frozen: Index = serde_json::from_value(saved).unwrap();

    // Read, it proves nothing (and is no error): the mirror is compared by content.
    let (_, r) = pass(&snap, &frozen, PassKind::Stopped, src.path());
    assert_eq!((r.files_current, r.files_updated), (0, 1), "{r:?}");
    // Committed, it is not renamed into place: an empty index of this format is.
    snap.commit(&frozen).unwrap();
    let committed = snap.dir().join(super::index::COMMITTED);
    assert_eq!(super::index::Format::of(&committed).unwrap(), super::index::Format::Current);
    drop(frozen);
    assert!(!work.exists());
    assert_eq!(snap.take_index().unwrap().files(), 0);
}

#[test]
fn an_uncommitted_snapshot_shows_as_incomplete_and_remove_deletes_it() {
    let (src, storage) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::write(src.path().join("f"), b"x").unwrap();
    let snap = Snapshot::open(storage.path(), "p").unwrap();
    let none = globset::GlobSet::empty();
    let old = Index::default();
    let mut p = Pass::new(&snap, &old, PassKind::Running, Cancel::new(), None);
    let scan = crate::archive::scan_host_stamped("volumes/data", src.path(), &none, &[]).unwrap();
    assert!(scan.entries.iter().unwrap().all(|item| item.unwrap().1.is_some()));
    std::fs::write(src.path().join("f"), b"longer now").unwrap();
    // The scan inside `source` sees the new size; a vanished file is not an error either.
    p.source("volumes/data", src.path(), &none, &[]).unwrap();
    p.finish().unwrap();
    assert!(Snapshot::usage(storage.path(), "p").is_some_and(|u| u.files == 1 && !u.complete));
    assert!(Snapshot::remove(storage.path(), "p").unwrap());
    assert!(Snapshot::usage(storage.path(), "p").is_none());
}

/// A loop-mounted filesystem image for the reflink tests, unmounted and removed on drop.
struct LoopFs {
    dir: tempfile::TempDir,
}

impl LoopFs {
    /// `None` (and a loud line) when this machine cannot make one: not root, or no mkfs.
    fn new(fs: &str) -> Option<LoopFs> {
        let mkfs = format!("mkfs.{fs}");
        let have = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {mkfs}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !have || !rustix::process::geteuid().is_root() {
            // CI installs the tools and runs as root: there a skip is a failure.
            assert!(std::env::var_os("CI").is_none(), "{mkfs} (or root) missing in CI");
            eprintln!("SKIPPED (no {mkfs}, or not root): reflink test on {fs}");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let (img, mnt) = (dir.path().join("fs.img"), dir.path().join("mnt"));
        std::fs::create_dir(&mnt).unwrap();
        std::fs::File::create(&img).unwrap().set_len(320 << 20).unwrap();
        let opts: &[&str] = if fs == "xfs" { &["-q", "-m", "reflink=1"] } else { &["-q"] };
        let ok = |c: &mut std::process::Command| c.status().is_ok_and(|s| s.success());
        assert!(ok(std::process::Command::new(&mkfs).args(opts).arg(&img)), "{mkfs} failed");
        assert!(
            ok(std::process::Command::new("mount").arg("-o").arg("loop").arg(&img).arg(&mnt)),
            "mount failed"
        );
        Some(LoopFs { dir })
    }

    fn mnt(&self) -> std::path::PathBuf {
        self.dir.path().join("mnt")
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.mnt()).status();
    }
}

/// On a filesystem with reflinks (XFS, btrfs), the snapshot shares the source's blocks: no data
/// is copied, and the copy stays the copy when the source changes afterwards.
fn reflinks_on(fs: &str) {
    let Some(loopfs) = LoopFs::new(fs) else { return };
    let (src, storage) = (loopfs.mnt().join("src"), loopfs.mnt().join("storage"));
    std::fs::create_dir_all(&src).unwrap();
    let big: Vec<u8> = (0..16u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(src.join("db"), &big).unwrap();
    let snap = Snapshot::open(&storage, "p").unwrap();
    let (index, first) = pass(&snap, &Index::default(), PassKind::Running, &src);
    assert_eq!((first.bytes_reflinked, first.bytes_written), (16 << 20, 0), "{first:?}");
    assert_eq!(std::fs::read(snap.data("volumes/data/db")).unwrap(), big);

    // Changed in place: cloned again, not compared block by block.
    let f = std::fs::OpenOptions::new().write(true).open(src.join("db")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"changed", 9 << 20).unwrap();
    drop(f);
    std::thread::sleep(std::time::Duration::from_millis(10));
    let (_, second) = pass(&snap, &index, PassKind::Stopped, &src);
    assert_eq!((second.bytes_reflinked, second.bytes_written), (16 << 20, 0), "{second:?}");
    let copied = std::fs::read(snap.data("volumes/data/db")).unwrap();
    assert_eq!(copied, std::fs::read(src.join("db")).unwrap());

    // The clone is a copy: writing the source leaves it as it was.
    std::fs::write(src.join("db"), b"overwritten").unwrap();
    assert_eq!(std::fs::read(snap.data("volumes/data/db")).unwrap(), copied);
}

#[test]
fn on_xfs_the_snapshot_is_made_of_reflinks() {
    reflinks_on("xfs");
}

#[test]
fn on_btrfs_the_snapshot_is_made_of_reflinks() {
    reflinks_on("btrfs");
}

/// Data at a few places of a 64 MiB file, one of them off the 1 MiB blocks, and a hole to the
/// end: the bytes of data it holds.
fn write_sparse(path: &Path) -> u64 {
    let f = std::fs::File::create(path).unwrap();
    let mut data = 0;
    for (at, len) in [(0, 1 << 20), ((5 << 20) + 12_345, 3 << 19), (40 << 20, 2 << 20)] {
        let bytes: Vec<u8> = (0..len).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8 | 1).collect();
        std::os::unix::fs::FileExt::write_all_at(&f, &bytes, at).unwrap();
        data += u64::from(len);
    }
    f.set_len(64 << 20).unwrap();
    data
}

/// What `path` costs on disk.
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Whether the filesystem keeps `path` (a file written with holes) sparse and says where its
/// holes are; if not, a loud line: the test checks content only.
fn keeps_holes(path: &Path) -> bool {
    let f = std::fs::File::open(path).unwrap();
    let size = f.metadata().unwrap().len();
    let kept = rustix::fs::seek(&f, rustix::fs::SeekFrom::Hole(0)).is_ok_and(|h| h < size);
    if !kept {
        eprintln!("SKIPPED (the filesystem of {} keeps no holes): allocation checks", path.display());
    }
    kept
}

#[test]
fn a_sparse_file_costs_its_data_in_the_mirror_not_its_size() {
    let (src, storage) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let data = write_sparse(&src.path().join("disk.img"));
    let snap = Snapshot::open(storage.path(), "p").unwrap();
    let (_, first) = pass(&snap, &Index::default(), PassKind::Running, src.path());
    assert_eq!(tree(src.path()), tree(&snap.data("volumes/data")));
    let copy = snap.data("volumes/data/disk.img");
    if !keeps_holes(&src.path().join("disk.img")) {
        return;
    }
    // Within the filesystem's blocks around the data that is off them.
    let slack = 16 << 10;
    assert!(allocated(&copy) <= data + slack, "{} bytes on disk for {data} of data", allocated(&copy));
    if first.bytes_reflinked == 0 {
        assert!((data..=data + slack).contains(&first.bytes_written), "{first:?}");
        assert_eq!(first.bytes_written + first.bytes_holes, 64 << 20, "{first:?}");
    }

    // Compared again (no index): the holes are neither read nor written.
    let (_, second) = pass(&snap, &Index::default(), PassKind::Running, src.path());
    assert_eq!(second.bytes_written, 0, "{second:?}");
    assert!(second.bytes_reflinked > 0 || second.bytes_compared <= data + slack, "{second:?}");
    assert!(allocated(&copy) <= data + slack);
}

#[test]
fn a_hole_punched_in_the_source_is_punched_in_its_copy() {
    let (src, storage) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("db");
    let big: Vec<u8> = (0..16u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 | 1).collect();
    std::fs::write(&file, &big).unwrap();
    let snap = Snapshot::open(storage.path(), "p").unwrap();
    let (index, _) = pass(&snap, &Index::default(), PassKind::Running, src.path());
    let copy = snap.data("volumes/data/db");
    let dense = allocated(&copy);

    // 8 MiB freed from an offset off the filesystem's blocks, and the file grown by a hole.
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    let flags = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
    if let Err(e) = rustix::fs::fallocate(&f, flags, (3 << 20) + 100, 8 << 20) {
        eprintln!("SKIPPED (cannot punch a hole here: {e}): a hole punched in the source");
        return;
    }
    f.set_len(24 << 20).unwrap();
    drop(f);
    let (_, r) = pass(&snap, &index, PassKind::Stopped, src.path());
    assert_eq!(tree(src.path()), tree(&snap.data("volumes/data")));
    if !keeps_holes(&file) || r.bytes_reflinked > 0 {
        return;
    }
    // The blocks the hole starts and ends in, partly zeroed, are written; the hole is punched.
    assert!(r.bytes_written <= 2 << 20, "{r:?}");
    assert!(r.bytes_holes >= (8 << 20) - 4096 + (8 << 20), "{r:?}");
    let sparse = allocated(&copy);
    assert!(sparse + (7 << 20) <= dense, "{dense} bytes on disk before, {sparse} after");
    assert!(sparse <= allocated(&file) + (16 << 10), "{sparse} bytes, the source {}", allocated(&file));
}

#[test]
fn a_dense_file_is_copied_as_it_was_and_an_unchanged_one_costs_no_write() {
    let (src, storage) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Zeros written as data are data: a dense source is copied whole, not searched for zeros.
    let mut big: Vec<u8> = (0..8u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    big[2 << 20..4 << 20].fill(0);
    std::fs::write(src.path().join("db"), &big).unwrap();
    let snap = Snapshot::open(storage.path(), "p").unwrap();
    let (_, first) = pass(&snap, &Index::default(), PassKind::Running, src.path());
    assert_eq!(std::fs::read(snap.data("volumes/data/db")).unwrap(), big);
    assert_eq!(first.bytes_holes, 0, "{first:?}");
    assert_eq!(first.bytes_written + first.bytes_reflinked, 8 << 20, "{first:?}");

    let (_, second) = pass(&snap, &Index::default(), PassKind::Running, src.path());
    assert_eq!((second.bytes_written, second.bytes_holes), (0, 0), "{second:?}");
    assert!(second.bytes_reflinked > 0 || second.bytes_compared == 8 << 20, "{second:?}");
    assert_eq!(std::fs::read(snap.data("volumes/data/db")).unwrap(), big);
}

#[test]
fn where_filesystems_know_no_holes_blocks_of_zeros_are_holes_and_zeros_are_written() {
    let (src, storage) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("disk.img");
    write_sparse(&file);
    let snap = Snapshot::open(storage.path(), "p").unwrap();
    let old = Index::default();
    let p = || Pass::new(&snap, &old, PassKind::Running, Cancel::new(), None).without_holes();
    let (_, first) = run(p(), src.path());
    assert_eq!(tree(src.path()), tree(&snap.data("volumes/data")));
    if first.bytes_reflinked == 0 {
        // The 1 MiB blocks the data touches: 0, 5, 6 and 40-41.
        assert_eq!(first.bytes_written, 5 << 20, "{first:?}");
        assert_eq!(first.bytes_holes, 59 << 20, "{first:?}");
    }

    // Data gone from the source, where the mirror cannot punch: zeros are written over it.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, &vec![0; 2 << 20], 40 << 20))
        .unwrap();
    let (_, second) = run(p(), src.path());
    assert_eq!(tree(src.path()), tree(&snap.data("volumes/data")));
    if second.bytes_reflinked == 0 {
        assert_eq!(second.bytes_written, 2 << 20, "{second:?}");
    }
}
