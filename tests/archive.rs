//! The archive engine: round trips through GNU tar, verification of damaged archives, scans of
//! host trees and engine tar streams, change detection and cancellation.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{PermissionsExt, lchown};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use globset::{Glob, GlobSet, GlobSetBuilder};
use nuwax::archive::manifest::{ChecksumInfo, EntryKind, EntryMeta, FORMAT_VERSION, Manifest};
use nuwax::archive::{
    ArchiveWriter, Cancel, Compression, Error, NoProgress, ScanResult, WriteOptions, WriteSummary,
    detect_compression, file_sha256, read_manifest, scan_host, scan_tar_stream, verify,
};
use proptest::prelude::*;
use rustix::fs::{AtFlags, CWD, Timespec, Timestamps};

const ALL: [Compression; 3] = [Compression::Zstd, Compression::Gzip, Compression::None];

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn manifest(entries: Vec<EntryMeta>, compression: Compression) -> Manifest {
    Manifest {
        format_version: FORMAT_VERSION,
        nuwax_version: "test".into(),
        backup_id: 7,
        kind: "manual".into(),
        project: "demo".into(),
        service_version: None,
        created_at: "2024-05-01T12:00:00Z".into(),
        compression: compression.as_str().into(),
        services_stopped: true,
        services: vec![],
        mounts: vec![],
        configs: vec![],
        skipped: vec![],
        entries,
        checksums: ChecksumInfo::default(),
    }
}

fn opts(compression: Compression) -> WriteOptions {
    WriteOptions { compression, level: compression.default_level(), threads: 2, rate_limit: None }
}

fn scan(prefix: &str, root: &Path) -> ScanResult {
    scan_host(prefix, root, &GlobSet::empty(), &[]).unwrap()
}

/// Scans `root` under `prefix` and archives it into `out`.
fn archive_tree(prefix: &str, root: &Path, out: &Path, opts: &WriteOptions) -> (ScanResult, WriteSummary) {
    let scanned = scan(prefix, root);
    let summary =
        write_archive(out, opts, &scanned.entries, |w| w.append_host(prefix, root, &scanned.entries))
            .unwrap();
    (scanned, summary)
}

fn write_archive(
    out: &Path,
    opts: &WriteOptions,
    entries: &[EntryMeta],
    body: impl FnOnce(&mut ArchiveWriter<fs::File>) -> nuwax::archive::Result<()>,
) -> nuwax::archive::Result<WriteSummary> {
    let file = fs::File::create(out).unwrap();
    let mut writer = ArchiveWriter::new(file, opts, Cancel::default(), Arc::new(NoProgress))?;
    writer.write_manifest(&manifest(entries.to_vec(), opts.compression))?;
    body(&mut writer)?;
    writer.finish()
}

fn check(path: &Path) -> nuwax::archive::Result<nuwax::archive::VerifyReport> {
    verify(path, None, &Cancel::default(), &NoProgress)
}

fn decompress(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match detect_compression(bytes) {
        Compression::Zstd => zstd::stream::read::Decoder::new(bytes).unwrap().read_to_end(&mut out).unwrap(),
        Compression::Gzip => flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).unwrap(),
        Compression::None => return bytes.to_vec(),
    };
    out
}

/// Extracts with GNU tar, fed the decompressed stream so only tar's reading is under test.
fn gnu_extract(archive: &Path, dest: &Path) {
    let tar = decompress(&fs::read(archive).unwrap());
    let mut child = Command::new("tar")
        .args(["--numeric-owner", "-xpf", "-", "-C"])
        .arg(dest)
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("GNU tar is installed");
    child.stdin.take().unwrap().write_all(&tar).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "tar -x failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Same entries (path, kind, size, mode, owner, mtime, target) and the same file bytes.
fn assert_same_tree(prefix: &str, original: &Path, original_scan: &ScanResult, extracted: &Path) {
    let again = scan(prefix, extracted);
    assert_eq!(again.entries, original_scan.entries);
    for entry in original_scan.entries.iter().filter(|e| e.kind == EntryKind::File) {
        let rel = entry.path.strip_prefix(prefix).unwrap().trim_start_matches('/');
        let (a, b) = if rel.is_empty() {
            (original.to_path_buf(), extracted.to_path_buf())
        } else {
            (original.join(rel), extracted.join(rel))
        };
        assert!(fs::read(&a).unwrap() == fs::read(&b).unwrap(), "content of {} differs", entry.path);
    }
}

// ---- random trees -----------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Meta {
    mode: u32,
    mtime: i64,
    owner: (u32, u32),
}

#[derive(Debug, Clone)]
enum Node {
    File(Vec<u8>, Meta),
    Symlink(String, Meta),
    Dir(BTreeMap<String, Node>, Meta),
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z]{1,8}",
        2 => "[a-zA-Z0-9 ._,+=-]{1,12}".prop_filter("not . or ..", |s| s != "." && s != ".."),
        1 => prop::sample::select(vec!["ünïcödé", "日本語のファイル", "emoji 🎉", "new\nline", "back\\slash", "-dash"])
            .prop_map(String::from),
        1 => "[a-z]{101,180}",
        1 => "[é]{55,100}",
    ]
}

fn target() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,8}",
        Just("/etc/passwd".to_string()),
        Just("../up/../x".to_string()),
        Just("a//b/./c/".to_string()),
        "/[a-z]{110,200}",
        "[a-z]{100,250}",
    ]
}

fn meta(modes: &'static [u32]) -> impl Strategy<Value = Meta> {
    let owners: Vec<(u32, u32)> = if is_root() {
        vec![(0, 0), (1000, 1000), (65534, 65534), (123_456, 7), (2_000_000, 3_000_000)]
    } else {
        let me = (rustix::process::getuid().as_raw(), rustix::process::getgid().as_raw());
        vec![me]
    };
    (prop::sample::select(modes), 0i64..4_000_000_000, prop::sample::select(owners))
        .prop_map(|(mode, mtime, owner)| Meta { mode, mtime, owner })
}

fn file_modes() -> &'static [u32] {
    if is_root() {
        &[0o644, 0o600, 0o000, 0o755, 0o4755, 0o2755, 0o1644, 0o444, 0o7777, 0o6711]
    } else {
        &[0o644, 0o600, 0o755, 0o444, 0o640]
    }
}

fn dir_modes() -> &'static [u32] {
    if is_root() {
        &[0o755, 0o700, 0o1777, 0o2775, 0o555, 0o000, 0o3750]
    } else {
        &[0o755, 0o700, 0o750, 0o1777]
    }
}

fn tree() -> impl Strategy<Value = Node> {
    let file =
        (prop::collection::vec(any::<u8>(), 0..3000), meta(file_modes())).prop_map(|(c, m)| Node::File(c, m));
    let link = (target(), meta(&[0o777])).prop_map(|(t, m)| Node::Symlink(t, m));
    let leaf = prop_oneof![3 => file, 1 => link];
    let dir = leaf.prop_recursive(4, 48, 6, |inner| {
        (prop::collection::btree_map(name(), inner, 0..6), meta(dir_modes()))
            .prop_map(|(c, m)| Node::Dir(c, m))
    });
    (prop::collection::btree_map(name(), dir, 0..7), meta(dir_modes())).prop_map(|(mut children, m)| {
        children.insert("fixed".into(), long_chain());
        Node::Dir(children, m)
    })
}

/// Always present: a path well over 255 bytes and a link target over 100 bytes.
fn long_chain() -> Node {
    let owner = if is_root() {
        (0, 0)
    } else {
        (rustix::process::getuid().as_raw(), rustix::process::getgid().as_raw())
    };
    let m = |mode| Meta { mode, mtime: 1_700_000_000, owner };
    let leaf = BTreeMap::from([
        ("f".repeat(150), Node::File(b"deep".to_vec(), m(0o640))),
        ("l".repeat(120), Node::Symlink("t".repeat(180), m(0o777))),
        ("empty".into(), Node::Dir(BTreeMap::new(), m(0o700))),
    ]);
    let middle = BTreeMap::from([("m".repeat(140), Node::Dir(leaf, m(0o755)))]);
    Node::Dir(BTreeMap::from([("d".repeat(130), Node::Dir(middle, m(0o755)))]), m(0o755))
}

fn create(path: &Path, node: &Node) {
    let meta = match node {
        Node::File(content, meta) => {
            fs::write(path, content).unwrap();
            meta
        }
        Node::Symlink(target, meta) => {
            std::os::unix::fs::symlink(target, path).unwrap();
            meta
        }
        Node::Dir(children, meta) => {
            fs::create_dir(path).unwrap_or_else(|e| assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists));
            for (name, child) in children {
                create(&path.join(name), child);
            }
            meta
        }
    };
    // Owner before mode (chown clears setuid/setgid), times last (after the children).
    if is_root() {
        lchown(path, Some(meta.owner.0), Some(meta.owner.1)).unwrap();
    }
    if !matches!(node, Node::Symlink(..)) {
        fs::set_permissions(path, fs::Permissions::from_mode(meta.mode)).unwrap();
    }
    let time = Timespec { tv_sec: meta.mtime, tv_nsec: 0 };
    let times = Timestamps { last_access: time, last_modification: time };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

/// The entries a correct scan of `node` must produce, in walk order.
fn expected_entries(path: String, node: &Node, out: &mut Vec<EntryMeta>) {
    let (kind, size, target, meta, children) = match node {
        Node::File(c, m) => (EntryKind::File, c.len() as u64, None, m, None),
        Node::Symlink(t, m) => (EntryKind::Symlink, 0, Some(t.clone()), m, None),
        Node::Dir(c, m) => (EntryKind::Dir, 0, None, m, Some(c)),
    };
    out.push(EntryMeta {
        path: path.clone(),
        kind,
        size,
        mode: meta.mode,
        uid: u64::from(meta.owner.0),
        gid: u64::from(meta.owner.1),
        mtime: meta.mtime,
        link_target: target,
    });
    for (name, child) in children.into_iter().flatten() {
        expected_entries(format!("{path}/{name}"), child, out);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_trees_round_trip_through_gnu_tar(root in tree()) {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        create(&src, &root);
        let prefix = "volumes/data";
        let mut expected = Vec::new();
        expected_entries(prefix.to_owned(), &root, &mut expected);
        for compression in ALL {
            let out = tmp.path().join(format!("backup.{}", compression.extension()));
            let (scanned, summary) = archive_tree(prefix, &src, &out, &opts(compression));
            prop_assert_eq!(&scanned.entries, &expected);
            let report = check(&out).unwrap();
            prop_assert_eq!(report.archive_sha256, summary.archive_sha256);
            prop_assert_eq!(report.content_bytes, scanned.size);
            prop_assert_eq!(report.entries, expected.len() as u64);
            let dest = tmp.path().join(format!("out-{compression}"));
            fs::create_dir(&dest).unwrap();
            gnu_extract(&out, &dest);
            assert_same_tree(prefix, &src, &scanned, &dest.join(prefix));
        }
    }
}
