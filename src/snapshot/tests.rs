use std::path::Path;

use super::{Index, Pass, PassKind, Snapshot};
use crate::archive::Cancel;

fn pass(snap: &Snapshot, old: &Index, kind: PassKind, root: &Path) -> (Index, super::PassReport) {
    let mut p = Pass::new(snap, old, kind, Cancel::new(), None);
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
