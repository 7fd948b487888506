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
use nuwax::archive::manifest::{EntryKind, EntryMeta, FORMAT_VERSION, Manifest};
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
    crate::support::manifest(7, entries, compression)
}

fn opts(compression: Compression) -> WriteOptions {
    WriteOptions {
        compression,
        level: compression.default_level(),
        threads: 2,
        rate_limit: None,
        hash_output: true,
        spill_dir: None,
        recipients: Vec::new(),
    }
}

fn scan(prefix: &str, root: &Path) -> ScanResult {
    scan_host(prefix, root, &GlobSet::empty(), &[]).unwrap()
}

/// Scans `root` under `prefix` and archives it into `out`.
fn archive_tree(prefix: &str, root: &Path, out: &Path, opts: &WriteOptions) -> (ScanResult, WriteSummary) {
    let scanned = scan(prefix, root);
    let summary =
        write_archive(out, opts, &list(&scanned), |w| w.append_host(prefix, root, &scanned.entries)).unwrap();
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
    writer.write_manifest(&manifest(vec![], opts.compression), &entries.to_vec())?;
    body(&mut writer)?;
    writer.finish()
}

/// A scan's entries, in memory.
fn list(scanned: &ScanResult) -> Vec<EntryMeta> {
    scanned.entries.to_vec().unwrap()
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

fn zstd_cli() -> bool {
    static FOUND: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FOUND.get_or_init(|| Command::new("zstd").arg("--version").output().is_ok_and(|o| o.status.success()))
}

/// Extracts with GNU tar, decompressing with `tar --zstd` / `--gzip` (or, without the zstd
/// CLI, feeding tar the stream decompressed here).
fn gnu_extract(archive: &Path, dest: &Path) {
    let bytes = fs::read(archive).unwrap();
    let compression = detect_compression(&bytes);
    let mut tar = Command::new("tar");
    tar.args(["--numeric-owner", "-C"]).arg(dest).env("LC_ALL", "C").stderr(Stdio::piped());
    let out = if compression == Compression::Zstd && !zstd_cli() {
        let mut child = tar.args(["-xpf", "-"]).stdin(Stdio::piped()).spawn().expect("GNU tar is installed");
        child.stdin.take().unwrap().write_all(&decompress(&bytes)).unwrap();
        child.wait_with_output().unwrap()
    } else {
        let flag = match compression {
            Compression::Zstd => "--zstd",
            Compression::Gzip => "--gzip",
            Compression::None => "--no-auto-compress",
        };
        tar.arg(flag).arg("-xpf").arg(archive).output().expect("GNU tar is installed")
    };
    assert!(out.status.success(), "tar -x failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Same entries (path, kind, size, mode, owner, mtime, target) and the same file bytes.
fn assert_same_tree(prefix: &str, original: &Path, original_scan: &ScanResult, extracted: &Path) {
    let again = scan(prefix, extracted);
    assert_eq!(list(&again), list(original_scan));
    for entry in list(original_scan).iter().filter(|e| e.kind == EntryKind::File) {
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
            prop_assert_eq!(&list(&scanned), &expected);
            let report = check(&out).unwrap();
            prop_assert_eq!(Some(report.archive_sha256), summary.archive_sha256);
            prop_assert_eq!(report.content_bytes, scanned.size);
            prop_assert_eq!(report.entries, expected.len() as u64);
            let dest = tmp.path().join(format!("out-{compression}"));
            fs::create_dir(&dest).unwrap();
            gnu_extract(&out, &dest);
            assert_same_tree(prefix, &src, &scanned, &dest.join(prefix));
        }
    }
}

// ---- fixtures -----------------------------------------------------------------------------

/// Deterministic incompressible bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[3]
        })
        .collect()
}

/// A small tree: `a.txt`, a 256 KiB random `big.bin`, `sub/b.txt`, `link -> a.txt`, `empty/`.
fn small_tree(dir: &Path) -> PathBuf {
    let root = dir.join("src");
    fs::create_dir_all(root.join("sub")).unwrap();
    fs::create_dir(root.join("empty")).unwrap();
    fs::write(root.join("a.txt"), b"alpha alpha alpha UNIQUE-MARKER alpha\n").unwrap();
    fs::write(root.join("big.bin"), noise(256 << 10, 42)).unwrap();
    fs::write(root.join("sub/b.txt"), b"bravo\n").unwrap();
    std::os::unix::fs::symlink("a.txt", root.join("link")).unwrap();
    root
}

/// Archives [`small_tree`] under `vol`; returns the archive path.
fn small_archive(dir: &Path, compression: Compression) -> PathBuf {
    let root = small_tree(dir);
    let out = dir.join(format!("small.{}", compression.extension()));
    archive_tree("vol", &root, &out, &opts(compression));
    out
}

type Member = (String, tar::Header, Vec<u8>);

/// Rebuilds an uncompressed archive member by member through `edit`, which returns the
/// members to write in place of the one it is given.
fn repack(src: &[u8], mut edit: impl FnMut(Member) -> Vec<Member>) -> Vec<u8> {
    let mut out = tar::Builder::new(Vec::new());
    let mut archive = tar::Archive::new(src);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
        let header = entry.header().clone();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        for (path, mut header, data) in edit((path, header, data)) {
            header.set_size(data.len() as u64);
            out.append_data(&mut header, path, data.as_slice()).unwrap();
        }
    }
    out.into_inner().unwrap()
}

fn file_member(path: &str, data: &[u8]) -> Member {
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    (path.to_owned(), header, data.to_vec())
}

fn damaged(dir: &Path, bytes: &[u8]) -> nuwax::archive::Result<nuwax::archive::VerifyReport> {
    let path = dir.join("damaged.tar");
    fs::write(&path, bytes).unwrap();
    check(&path)
}

// ---- verify -------------------------------------------------------------------------------

#[test]
fn verify_accepts_what_was_written_and_checks_the_expected_digest() {
    let tmp = tempfile::tempdir().unwrap();
    for compression in ALL {
        let out = small_archive(&tempfile::tempdir_in(tmp.path()).unwrap().keep(), compression);
        let sha = file_sha256(&out).unwrap();
        let report = verify(&out, Some(&sha.to_uppercase()), &Cancel::default(), &NoProgress).unwrap();
        assert_eq!(report.archive_sha256, sha);
        assert_eq!(report.archive_bytes, fs::metadata(&out).unwrap().len());
        assert_eq!(report.manifest, read_manifest(&out).unwrap());
        assert_eq!(report.entries, 7);
        let wrong = "0".repeat(64);
        let err = verify(&out, Some(&wrong), &Cancel::default(), &NoProgress).unwrap_err();
        assert!(
            matches!(&err, Error::ChecksumMismatch { expected, actual } if *expected == wrong && *actual == sha),
            "{err:?}"
        );
    }
}

#[test]
fn verify_rejects_truncated_archives() {
    let tmp = tempfile::tempdir().unwrap();
    for compression in ALL {
        let dir = tempfile::tempdir_in(tmp.path()).unwrap();
        let bytes = fs::read(small_archive(dir.path(), compression)).unwrap();
        for cut in [bytes.len() / 2, bytes.len() - 1, bytes.len() - 512, 1000] {
            let err = damaged(dir.path(), &bytes[..cut]).unwrap_err();
            assert!(
                matches!(err, Error::Corrupt { .. } | Error::MissingEntries { .. }),
                "{compression} cut at {cut}: {err:?}"
            );
        }
    }
}

#[test]
fn verify_rejects_a_flipped_byte() {
    let tmp = tempfile::tempdir().unwrap();
    // Uncompressed: the flip lands in a file's content, which only the digests can catch (they
    // are compared as one stream, so the error names their list, not the file).
    let bytes = fs::read(small_archive(tmp.path(), Compression::None)).unwrap();
    let at = bytes.windows(13).position(|w| w == b"UNIQUE-MARKER").unwrap();
    let mut flipped = bytes.clone();
    flipped[at] ^= 0x01;
    let err = damaged(tmp.path(), &flipped).unwrap_err();
    assert!(matches!(&err, Error::Mismatch { path, .. } if path == "checksums.jsonl"), "{err:?}");
    for compression in [Compression::Zstd, Compression::Gzip] {
        let dir = tempfile::tempdir_in(tmp.path()).unwrap();
        let bytes = fs::read(small_archive(dir.path(), compression)).unwrap();
        for at in [bytes.len() / 3, bytes.len() / 2] {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x40;
            let err = damaged(dir.path(), &flipped).unwrap_err();
            assert!(
                matches!(err, Error::Corrupt { .. } | Error::Mismatch { .. }),
                "{compression} at {at}: {err:?}"
            );
        }
    }
}

#[test]
fn verify_rejects_an_undeclared_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = fs::read(small_archive(tmp.path(), Compression::None)).unwrap();
    let inserted = repack(&bytes, |m| {
        if m.0 == "checksums.json" { vec![file_member("vol/evil", b"boo"), m] } else { vec![m] }
    });
    let err = damaged(tmp.path(), &inserted).unwrap_err();
    assert!(matches!(&err, Error::Undeclared { path } if path == "vol/evil"), "{err:?}");
    let appended = repack(&bytes, |m| {
        if m.0 == "checksums.json" { vec![m, file_member("vol/evil", b"boo")] } else { vec![m] }
    });
    let err = damaged(tmp.path(), &appended).unwrap_err();
    assert!(matches!(&err, Error::Undeclared { path } if path == "vol/evil"), "{err:?}");
}

#[test]
fn verify_rejects_a_file_larger_or_smaller_than_declared() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = fs::read(small_archive(tmp.path(), Compression::None)).unwrap();
    for data in [&b"bravo and then some\n"[..], b"br"] {
        let resized = repack(&bytes, |(path, header, old)| {
            let new = if path == "vol/sub/b.txt" { data.to_vec() } else { old };
            vec![(path, header, new)]
        });
        let err = damaged(tmp.path(), &resized).unwrap_err();
        assert!(matches!(&err, Error::Mismatch { path, .. } if path == "vol/sub/b.txt"), "{err:?}");
    }
}

#[test]
fn verify_rejects_missing_entries_and_a_missing_trailer() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = fs::read(small_archive(tmp.path(), Compression::None)).unwrap();
    let no_trailer = repack(&bytes, |m| if m.0 == "checksums.json" { vec![] } else { vec![m] });
    let err = damaged(tmp.path(), &no_trailer).unwrap_err();
    assert!(
        matches!(&err, Error::MissingEntries { count: 1, first } if first == "checksums.json"),
        "{err:?}"
    );
    // The last declared entry (`vol/sub/b.txt`) dropped: the trailer comes too early.
    let dropped = repack(&bytes, |m| if m.0 == "vol/sub/b.txt" { vec![] } else { vec![m] });
    let err = damaged(tmp.path(), &dropped).unwrap_err();
    assert!(matches!(&err, Error::MissingEntries { count: 1, first } if first == "vol/sub/b.txt"), "{err:?}");
    // A middle entry dropped: the next one is out of place.
    let dropped = repack(&bytes, |m| if m.0 == "vol/a.txt" { vec![] } else { vec![m] });
    assert!(matches!(damaged(tmp.path(), &dropped).unwrap_err(), Error::Undeclared { .. }));
}

#[test]
fn verify_rejects_a_tampered_trailer_or_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = fs::read(small_archive(tmp.path(), Compression::None)).unwrap();
    // A file's digest changed in the list, or the list's own digest in the trailer.
    let a_txt = regex_lite_digest_of(&bytes, "vol/a.txt");
    let tampered = repack(&bytes, |(path, header, data)| {
        let data = if path == "checksums.jsonl" {
            String::from_utf8(data).unwrap().replace(&a_txt, &"0".repeat(64)).into_bytes()
        } else {
            data
        };
        vec![(path, header, data)]
    });
    let err = damaged(tmp.path(), &tampered).unwrap_err();
    assert!(matches!(&err, Error::Mismatch { path, .. } if path == "checksums.jsonl"), "{err:?}");
    let tampered = repack(&bytes, |(path, header, data)| {
        let data = if path == "checksums.json" {
            let mut sums: nuwax::archive::Checksums = serde_json::from_slice(&data).unwrap();
            sums.digests.as_mut().unwrap().sha256 = "0".repeat(64);
            serde_json::to_vec(&sums).unwrap()
        } else {
            data
        };
        vec![(path, header, data)]
    });
    let err = damaged(tmp.path(), &tampered).unwrap_err();
    assert!(matches!(&err, Error::Mismatch { path, .. } if path == "checksums.jsonl"), "{err:?}");
    let reformatted = repack(&bytes, |(path, header, data)| {
        let data = if path == "manifest.json" {
            serde_json::to_vec(&serde_json::from_slice::<Manifest>(&data).unwrap()).unwrap()
        } else {
            data
        };
        vec![(path, header, data)]
    });
    let err = damaged(tmp.path(), &reformatted).unwrap_err();
    assert!(matches!(&err, Error::Mismatch { path, .. } if path == "manifest.json"), "{err:?}");
}

/// The digest `checksums.jsonl` lists for `file`, from an uncompressed archive's bytes.
fn regex_lite_digest_of(archive: &[u8], file: &str) -> String {
    let text = String::from_utf8_lossy(archive);
    let key = format!("{{\"path\":\"{file}\",\"sha256\":\"");
    let at = text.find(&key).expect("the file is listed") + key.len();
    text[at..at + 64].to_owned()
}

/// A zstd skippable frame (magic 0x184D2A50..5F, a length, that many bytes): decoders skip it.
fn skippable_frame(data: &[u8]) -> Vec<u8> {
    let mut frame = 0x184D_2A53_u32.to_le_bytes().to_vec();
    frame.extend_from_slice(&u32::try_from(data.len()).unwrap().to_le_bytes());
    frame.extend_from_slice(data);
    frame
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// The same tar stream with `extra` bytes appended before compressing it again, in one frame or
/// member: the compressed stream is well formed, the tar inside is longer than nuwax writes it.
fn recompressed_with(bytes: &[u8], extra: &[u8]) -> Vec<u8> {
    let mut tar = decompress(bytes);
    tar.extend_from_slice(extra);
    match detect_compression(bytes) {
        Compression::Zstd => zstd::encode_all(tar.as_slice(), 1).unwrap(),
        Compression::Gzip => gzip(&tar),
        Compression::None => tar,
    }
}

#[test]
fn verify_rejects_bytes_after_the_end_of_the_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let zero_blocks = [0u8; 1024];
    for compression in ALL {
        let dir = tempfile::tempdir_in(tmp.path()).unwrap();
        let archive = small_archive(dir.path(), compression);
        let bytes = fs::read(&archive).unwrap();
        let appended = |extra: &[u8]| [bytes.as_slice(), extra].concat();
        let cases: Vec<(&str, Vec<u8>, String)> = match compression {
            Compression::Zstd => vec![
                (
                    "skippable frame",
                    appended(&skippable_frame(b"hidden")),
                    "a zstd skippable frame (14 bytes)".into(),
                ),
                (
                    "frame of zero blocks",
                    appended(&zstd::encode_all(&zero_blocks[..], 1).unwrap()),
                    "a second zstd frame".into(),
                ),
                ("garbage", appended(b"hello"), "5 bytes after the end of the compressed stream".into()),
                (
                    "zero blocks in the frame",
                    recompressed_with(&bytes, &zero_blocks),
                    "1024 bytes after the end of the archive".into(),
                ),
            ],
            Compression::Gzip => vec![
                ("member of zero blocks", appended(&gzip(&zero_blocks)), "a second gzip member".into()),
                ("garbage", appended(b"hello"), "5 bytes after the end of the compressed stream".into()),
                (
                    "zero blocks in the member",
                    recompressed_with(&bytes, &zero_blocks),
                    "1024 bytes after the end of the archive".into(),
                ),
            ],
            Compression::None => vec![
                ("zero blocks", appended(&zero_blocks), "1024 bytes after the end of the archive".into()),
                ("a zero byte", appended(&[0]), "1 byte after the end of the archive".into()),
                ("garbage", appended(b"hello"), "5 bytes after the end of the archive".into()),
            ],
        };
        for (what, damaged_bytes, names) in cases {
            let err = damaged(dir.path(), &damaged_bytes).unwrap_err();
            assert!(
                matches!(&err, Error::Corrupt { detail } if detail.contains(&names)),
                "{compression}, {what}: want an error naming {names:?}, got {err:?}"
            );
            // Extraction reads the same pass: it refuses too, and leaves nothing behind.
            let path = dir.path().join("damaged.tar");
            let dest = dir.path().join("restored");
            let targets = [nuwax::archive::Target { prefix: "vol".into(), dest: dest.clone() }];
            let err = nuwax::archive::extract(&path, &targets, &Cancel::default(), &NoProgress).unwrap_err();
            assert!(matches!(&err, Error::Corrupt { .. }), "{compression}, {what}, extract: {err:?}");
            assert!(!dest.exists(), "{compression}, {what}: extract left {}", dest.display());
        }
        // What was written still verifies.
        check(&archive).unwrap();
    }
}

/// zstd with many workers and more data than one job: the writer must still produce one frame,
/// which the reader accepts.
#[test]
fn a_large_archive_compressed_by_many_zstd_workers_is_one_frame_and_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("src");
    fs::create_dir(&root).unwrap();
    fs::write(root.join("noise.bin"), noise(12 << 20, 7)).unwrap();
    fs::write(root.join("zeros.bin"), vec![0u8; 8 << 20]).unwrap();
    let out = tmp.path().join("large.tar.zst");
    let opts = WriteOptions { threads: 8, ..opts(Compression::Zstd) };
    archive_tree("vol", &root, &out, &opts);
    let bytes = fs::read(&out).unwrap();
    let first_frame = zstd::zstd_safe::find_frame_compressed_size(&bytes).unwrap();
    assert_eq!(first_frame, bytes.len(), "the writer emitted more than one zstd frame");
    let report = check(&out).unwrap();
    assert_eq!(report.content_bytes, 20 << 20);
}

#[test]
fn read_manifest_rejects_foreign_files_and_newer_formats() {
    let tmp = tempfile::tempdir().unwrap();
    let foreign = tmp.path().join("foreign.tar");
    fs::write(&foreign, repack(&[0; 1024], |m| vec![m])).unwrap();
    assert!(matches!(read_manifest(&foreign).unwrap_err(), Error::Corrupt { .. }));
    let mut builder = tar::Builder::new(Vec::new());
    let (path, mut header, data) = file_member("hello.txt", b"hi");
    builder.append_data(&mut header, path, data.as_slice()).unwrap();
    fs::write(&foreign, builder.into_inner().unwrap()).unwrap();
    assert!(matches!(read_manifest(&foreign).unwrap_err(), Error::Corrupt { .. }));
    fs::write(&foreign, b"").unwrap();
    assert!(matches!(check(&foreign).unwrap_err(), Error::Corrupt { .. }));
    assert!(matches!(read_manifest(&tmp.path().join("nope")).unwrap_err(), Error::Io { .. }));

    let newer = tmp.path().join("newer.tar.zst");
    let mut m = manifest(vec![], Compression::Zstd);
    m.format_version = FORMAT_VERSION + 1;
    let mut writer = ArchiveWriter::new(
        fs::File::create(&newer).unwrap(),
        &opts(Compression::Zstd),
        Cancel::default(),
        Arc::new(NoProgress),
    )
    .unwrap();
    writer.write_manifest(&m, &Vec::<EntryMeta>::new()).unwrap();
    writer.finish().unwrap();
    let err = read_manifest(&newer).unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedFormat { found, supported } if found == FORMAT_VERSION + 1 && supported == FORMAT_VERSION)
    );
}

#[test]
fn gnu_tools_read_the_compressed_archives_directly() {
    let tmp = tempfile::tempdir().unwrap();
    for (compression, flag) in [
        (Compression::Zstd, "--zstd"),
        (Compression::Gzip, "--gzip"),
        (Compression::None, "--no-auto-compress"),
    ] {
        if compression == Compression::Zstd && !zstd_cli() {
            eprintln!("zstd CLI not installed; skipping tar --zstd");
            continue;
        }
        let out = small_archive(&tempfile::tempdir_in(tmp.path()).unwrap().keep(), compression);
        let listing = Command::new("tar").arg(flag).arg("-tvf").arg(&out).output().unwrap();
        assert!(listing.status.success(), "{}", String::from_utf8_lossy(&listing.stderr));
        let names: Vec<String> = String::from_utf8(listing.stdout)
            .unwrap()
            .lines()
            .map(|l| l.split_whitespace().nth(5).unwrap().to_owned())
            .collect();
        let expected = [
            "manifest.json",
            "index.jsonl",
            "vol/",
            "vol/a.txt",
            "vol/big.bin",
            "vol/empty/",
            "vol/link",
            "vol/sub/",
            "vol/sub/b.txt",
            "checksums.jsonl",
            "checksums.json",
        ];
        assert_eq!(names, expected, "{compression}");
    }
}

// ---- scanning -----------------------------------------------------------------------------

#[test]
fn special_files_are_skipped_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let root = small_tree(tmp.path());
    rustix::fs::mknodat(
        CWD,
        root.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
    let out = tmp.path().join("special.tar.zst");
    let (scanned, _) = archive_tree("vol", &root, &out, &opts(Compression::Zstd));
    let skipped: Vec<(&str, &str)> =
        scanned.skipped.iter().map(|s| (s.path.as_str(), s.reason.as_str())).collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(skipped[0].0 == "vol/fifo" && skipped[0].1.contains("FIFO"), "{skipped:?}");
    assert!(skipped[1].0 == "vol/sock" && skipped[1].1.contains("socket"), "{skipped:?}");
    assert!(list(&scanned).iter().all(|e| !e.path.ends_with("fifo") && !e.path.ends_with("sock")));
    check(&out).unwrap();
    // A FIFO as the root yields nothing to archive, only a report.
    let alone = scan("lonely", &root.join("fifo"));
    assert!(alone.entries.is_empty() && alone.skipped.len() == 1);
}

#[test]
fn scan_honours_excludes_skip_dirs_and_single_roots() {
    let tmp = tempfile::tempdir().unwrap();
    let root = small_tree(tmp.path());
    fs::create_dir_all(root.join("cache/deep")).unwrap();
    fs::write(root.join("cache/deep/x"), b"x").unwrap();
    fs::write(root.join("sub/debug.log"), b"log").unwrap();
    fs::create_dir(root.join("storage")).unwrap();
    fs::write(root.join("storage/old.tar.zst"), b"old").unwrap();
    let mut globs = GlobSetBuilder::new();
    globs.add(Glob::new("cache").unwrap());
    globs.add(Glob::new("**/*.log").unwrap());
    let globs = globs.build().unwrap();
    // Spelled through a symlink: skip dirs are recognised by identity, not by spelling.
    std::os::unix::fs::symlink(root.join("storage"), tmp.path().join("alias")).unwrap();
    let scanned = scan_host("p", &root, &globs, &[tmp.path().join("alias")]).unwrap();
    let entries = list(&scanned);
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["p", "p/a.txt", "p/big.bin", "p/empty", "p/link", "p/sub", "p/sub/b.txt"]);
    assert_eq!(scanned.skipped.len(), 1);
    assert_eq!(scanned.skipped[0].path, "p/storage");
    assert_eq!(scanned.file_count, 3);
    assert_eq!(scanned.size, fs::metadata(root.join("a.txt")).unwrap().len() + (256 << 10) + 6);

    let file = scan("cfg/a.txt", &root.join("a.txt"));
    assert_eq!(file.entries.len(), 1);
    let file_list = list(&file);
    assert_eq!((file_list[0].path.as_str(), file_list[0].kind), ("cfg/a.txt", EntryKind::File));
    let link = scan("cfg/link", &root.join("link"));
    let link_list = list(&link);
    assert_eq!(link_list[0].kind, EntryKind::Symlink);
    assert_eq!(link_list[0].link_target.as_deref(), Some("a.txt"));
    // Single-file and symlink roots archive and extract like any entry.
    let out = tmp.path().join("single.tar");
    let entries: Vec<EntryMeta> = file_list.iter().chain(&link_list).cloned().collect();
    write_archive(&out, &opts(Compression::None), &entries, |w| {
        w.append_host("cfg/a.txt", &root.join("a.txt"), &file.entries)?;
        w.append_host("cfg/link", &root.join("link"), &link.entries)
    })
    .unwrap();
    check(&out).unwrap();
    let dest = tmp.path().join("single-out");
    fs::create_dir(&dest).unwrap();
    gnu_extract(&out, &dest);
    assert_eq!(fs::read(dest.join("cfg/a.txt")).unwrap(), fs::read(root.join("a.txt")).unwrap());
    assert_eq!(fs::read_link(dest.join("cfg/link")).unwrap(), Path::new("a.txt"));
}

#[test]
fn unreadable_directories_fail_the_scan() {
    if is_root() {
        eprintln!("running as root: permissions do not stop reads; skipping");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = small_tree(tmp.path());
    fs::set_permissions(root.join("sub"), fs::Permissions::from_mode(0o000)).unwrap();
    let err = scan_host("vol", &root, &GlobSet::empty(), &[]).unwrap_err();
    fs::set_permissions(root.join("sub"), fs::Permissions::from_mode(0o755)).unwrap();
    assert!(matches!(&err, Error::Io { path, .. } if path.ends_with("sub")), "{err:?}");
}

// ---- changes between scan and write, cancellation -----------------------------------------

/// Scans [`small_tree`], lets `change` alter it, then archives the scan.
fn archive_after(change: impl FnOnce(&Path)) -> Error {
    let tmp = tempfile::tempdir().unwrap();
    let root = small_tree(tmp.path());
    let scanned = scan("vol", &root);
    change(&root);
    let out = tmp.path().join("changed.tar");
    write_archive(&out, &opts(Compression::None), &list(&scanned), |w| {
        w.append_host("vol", &root, &scanned.entries)
    })
    .unwrap_err()
}

/// A file name and what happens to the tree between the scan and the write.
type Change<'a> = (&'a str, &'a dyn Fn(&Path));

#[test]
fn changes_after_the_scan_are_refused() {
    let grow = |root: &Path| {
        fs::OpenOptions::new().append(true).open(root.join("a.txt")).unwrap().write_all(b"more").unwrap()
    };
    let shrink = |root: &Path| fs::write(root.join("big.bin"), b"tiny").unwrap();
    let vanish = |root: &Path| fs::remove_file(root.join("sub/b.txt")).unwrap();
    let to_dir = |root: &Path| {
        fs::remove_file(root.join("a.txt")).unwrap();
        fs::create_dir(root.join("a.txt")).unwrap();
    };
    let to_fifo = |root: &Path| {
        fs::remove_file(root.join("a.txt")).unwrap();
        rustix::fs::mknodat(
            CWD,
            root.join("a.txt"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
    };
    let retarget = |root: &Path| {
        fs::remove_file(root.join("link")).unwrap();
        std::os::unix::fs::symlink("elsewhere", root.join("link")).unwrap();
    };
    // `sub` swapped for a symlink to a look-alike directory outside the tree: never followed.
    let escape = |root: &Path| {
        let outside = root.parent().unwrap().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("b.txt"), b"SECRET").unwrap();
        fs::rename(root.join("sub"), root.parent().unwrap().join("moved")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("sub")).unwrap();
    };
    let cases: [Change<'_>; 7] = [
        ("a.txt", &grow),
        ("big.bin", &shrink),
        ("sub/b.txt", &vanish),
        ("a.txt", &to_dir),
        ("a.txt", &to_fifo),
        ("link", &retarget),
        ("sub", &escape),
    ];
    for (name, change) in cases {
        let err = archive_after(change);
        assert!(matches!(&err, Error::Changed { path, .. } if path.ends_with(name)), "{name}: {err:?}");
    }
}

#[test]
fn entries_must_follow_the_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let root = small_tree(tmp.path());
    let scanned = scan("vol", &root);
    let out = tmp.path().join("x.tar");
    // Declared entries never appended.
    let err = write_archive(&out, &opts(Compression::None), &list(&scanned), |w| {
        w.append_host("vol", &root, &list(&scanned)[..3].to_vec())
    })
    .unwrap_err();
    assert!(matches!(err, Error::MissingEntries { count: 4, .. }), "{err:?}");
    // Entries the manifest does not declare.
    let err = write_archive(&out, &opts(Compression::None), &list(&scanned)[1..], |w| {
        w.append_host("vol", &root, &scanned.entries)
    })
    .unwrap_err();
    assert!(matches!(err, Error::Undeclared { .. }), "{err:?}");
    let bad = WriteOptions { level: 42, ..opts(Compression::Zstd) };
    assert!(ArchiveWriter::new(Vec::new(), &bad, Cancel::default(), Arc::new(NoProgress)).is_err());
}

#[test]
fn cancel_stops_writing_promptly() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("src");
    fs::create_dir(&root).unwrap();
    fs::write(root.join("big"), noise(8 << 20, 1)).unwrap();
    let scanned = scan("vol", &root);
    let cancel = Cancel::default();
    // 1 MiB/s: the 8 MiB file would take 8 s.
    let slow = WriteOptions { rate_limit: Some(1 << 20), ..opts(Compression::Zstd) };
    let mut writer = ArchiveWriter::new(Vec::new(), &slow, cancel.clone(), Arc::new(NoProgress)).unwrap();
    writer.write_manifest(&manifest(vec![], Compression::Zstd), &list(&scanned)).unwrap();
    let canceller = {
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            cancel.cancel();
            Instant::now()
        })
    };
    let err = writer.append_host("vol", &root, &scanned.entries).unwrap_err();
    let stopped = Instant::now();
    let cancelled_at = canceller.join().unwrap();
    assert!(matches!(err, Error::Cancelled), "{err:?}");
    assert!(stopped.duration_since(cancelled_at) < Duration::from_millis(500));
    // Verification observes the same flag.
    let out = small_archive(tmp.path(), Compression::Gzip);
    assert!(matches!(verify(&out, None, &cancel, &NoProgress), Err(Error::Cancelled)));
}

#[test]
fn progress_sees_every_content_byte() {
    #[derive(Default)]
    struct Count(std::sync::atomic::AtomicU64, std::sync::atomic::AtomicU64);
    impl nuwax::archive::Progress for Count {
        fn set_total(&self, bytes: u64) {
            self.0.store(bytes, std::sync::atomic::Ordering::Relaxed);
        }
        fn inc(&self, bytes: u64) {
            self.1.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = small_tree(tmp.path());
    let scanned = scan("vol", &root);
    let count = Arc::new(Count::default());
    let mut writer =
        ArchiveWriter::new(Vec::new(), &opts(Compression::Gzip), Cancel::default(), count.clone()).unwrap();
    writer.write_manifest(&manifest(vec![], Compression::Gzip), &list(&scanned)).unwrap();
    writer.append_host("vol", &root, &scanned.entries).unwrap();
    let summary = writer.finish().unwrap();
    assert_eq!(summary.content_bytes, scanned.size);
    assert_eq!(count.0.load(std::sync::atomic::Ordering::Relaxed), scanned.size);
    assert_eq!(count.1.load(std::sync::atomic::Ordering::Relaxed), scanned.size);
}

// ---- engine tar streams -------------------------------------------------------------------

/// A stream shaped like `GET /containers/{id}/archive?path=/var/lib/data`: entries under
/// `data/`, USTAR headers, a PAX record for a long name, a FIFO and a hard link.
fn engine_stream(a_content: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(999);
        h.set_gid(999);
        h.set_mtime(1_600_000_000);
        h.set_size(size);
        h
    };
    b.append_data(&mut header(tar::EntryType::Directory, 0o700, 0), "data/", &[][..]).unwrap();
    b.append_data(&mut header(tar::EntryType::Regular, 0o600, a_content.len() as u64), "data/a", a_content)
        .unwrap();
    b.append_data(&mut header(tar::EntryType::Fifo, 0o644, 0), "data/fifo", &[][..]).unwrap();
    let mut hard = header(tar::EntryType::Link, 0o600, 0);
    hard.set_link_name("data/a").unwrap();
    b.append_data(&mut hard, "data/hard", &[][..]).unwrap();
    let long = format!("data/{}", "p".repeat(150));
    let record = pax_record("path", &long);
    b.append_data(
        &mut header(tar::EntryType::XHeader, 0o644, record.len() as u64),
        "data/PaxHeaders/long",
        record.as_slice(),
    )
    .unwrap();
    b.append_data(&mut header(tar::EntryType::Regular, 0o644, 5), "data/placeholder", &b"pax!\n"[..])
        .unwrap();
    let mut link = header(tar::EntryType::Symlink, 0o777, 0);
    link.set_link_name("/var/lib/data/a").unwrap();
    b.append_data(&mut link, "data/link", &[][..]).unwrap();
    b.append_data(&mut header(tar::EntryType::Directory, 0o755, 0), "data/sub/", &[][..]).unwrap();
    b.append_data(&mut header(tar::EntryType::Regular, 0o644, 3), "data/sub/b", &b"bbb"[..]).unwrap();
    b.into_inner().unwrap()
}

fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while format!("{len}").len() + body.len() != len {
        len += 1;
    }
    format!("{len}{body}").into_bytes()
}

#[test]
fn engine_tar_streams_scan_and_archive() {
    let stream = engine_stream(b"alpha\n");
    let scanned = scan_tar_stream("volumes/db", stream.as_slice()).unwrap();
    let entries = list(&scanned);
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    let long = format!("volumes/db/{}", "p".repeat(150));
    assert_eq!(
        paths,
        ["volumes/db", "volumes/db/a", &long, "volumes/db/link", "volumes/db/sub", "volumes/db/sub/b"]
    );
    let root = &entries[0];
    assert_eq!(
        (root.kind, root.mode, root.uid, root.gid, root.mtime),
        (EntryKind::Dir, 0o700, 999, 999, 1_600_000_000)
    );
    assert_eq!(entries[3].link_target.as_deref(), Some("/var/lib/data/a"));
    let skipped: Vec<&str> = scanned.skipped.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(skipped, ["volumes/db/fifo", "volumes/db/hard"]);
    assert_eq!((scanned.file_count, scanned.size), (3, 6 + 5 + 3));

    let tmp = tempfile::tempdir().unwrap();
    for compression in ALL {
        let out = tmp.path().join(format!("engine.{}", compression.extension()));
        write_archive(&out, &opts(compression), &entries, |w| {
            w.append_tar_stream("volumes/db", stream.as_slice(), &scanned.entries)
        })
        .unwrap();
        check(&out).unwrap();
        let dest = tmp.path().join(format!("engine-{compression}"));
        fs::create_dir(&dest).unwrap();
        gnu_extract(&out, &dest);
        assert_eq!(fs::read(dest.join("volumes/db/a")).unwrap(), b"alpha\n");
        assert_eq!(fs::read(dest.join(&long)).unwrap(), b"pax!\n");
        assert_eq!(fs::read(dest.join("volumes/db/sub/b")).unwrap(), b"bbb");
        if is_root() {
            // Same entries; the engine's order need not be the order a host scan sorts into.
            let mut again = list(&scan("volumes/db", &dest.join("volumes/db")));
            let mut expected = entries.clone();
            again.sort_by(|a, b| a.path.cmp(&b.path));
            expected.sort_by(|a, b| a.path.cmp(&b.path));
            assert_eq!(again, expected);
        }
    }

    // The second fetch differs from the scanned one.
    let out = tmp.path().join("changed.tar");
    let changed = engine_stream(b"alpha, longer now\n");
    let err = write_archive(&out, &opts(Compression::None), &list(&scanned), |w| {
        w.append_tar_stream("volumes/db", changed.as_slice(), &scanned.entries)
    })
    .unwrap_err();
    assert!(matches!(&err, Error::Changed { path, .. } if path.ends_with("volumes/db/a")), "{err:?}");
    let truncated = &stream[..stream.len() - 2048];
    let err = write_archive(&out, &opts(Compression::None), &list(&scanned), |w| {
        w.append_tar_stream("volumes/db", truncated, &scanned.entries)
    })
    .unwrap_err();
    assert!(matches!(err, Error::Changed { .. } | Error::Io { .. }), "{err:?}");
}

#[test]
fn engine_streams_outside_one_directory_are_refused() {
    let mut b = tar::Builder::new(Vec::new());
    for name in ["data/", "other/x"] {
        let (_, mut header, data) = file_member(name, b"");
        header.set_size(0);
        b.append_data(&mut header, name, data.as_slice()).unwrap();
    }
    let stream = b.into_inner().unwrap();
    let result = scan_tar_stream("v", stream.as_slice());
    assert!(matches!(result, Err(Error::Corrupt { .. })), "{result:?}");
}

// ---- small things -------------------------------------------------------------------------

#[test]
fn compression_names_and_magic() {
    for compression in ALL {
        assert_eq!(compression.as_str().parse::<Compression>().unwrap(), compression);
        assert!(compression.level_range().contains(&compression.default_level()));
    }
    assert_eq!("zst".parse::<Compression>().unwrap(), Compression::Zstd);
    assert_eq!("GZ".parse::<Compression>().unwrap(), Compression::Gzip);
    assert!("bzip2".parse::<Compression>().is_err());
    assert_eq!(Compression::Zstd.extension(), "tar.zst");
    assert_eq!(detect_compression(&[0x28, 0xB5, 0x2F, 0xFD, 0]), Compression::Zstd);
    assert_eq!(detect_compression(&[0x1F, 0x8B, 8]), Compression::Gzip);
    assert_eq!(detect_compression(b"manifest.json"), Compression::None);
    assert_eq!(detect_compression(&[]), Compression::None);
}

// ---- many entries -------------------------------------------------------------------------

#[test]
fn a_listing_too_long_for_memory_spills_and_archives_verifies_and_extracts_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, spill) = (tmp.path().join("tree"), tmp.path().join("spill"));
    fs::create_dir(&spill).unwrap();
    for d in 0..50 {
        let dir = root.join(format!("d{d:02}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            fs::write(dir.join(format!("f{f:03}")), format!("file {f} of {d}\n")).unwrap();
        }
    }
    let spilled = nuwax::archive::ScanOpts { spill_dir: Some(&spill), ..Default::default() };
    let scanned = nuwax::archive::scan_host_with("vol", &root, &GlobSet::empty(), &[], spilled).unwrap();
    assert!(scanned.entries.is_spilled() && scanned.entries.len() > nuwax::archive::SPILL_AFTER as u64);
    assert_eq!(fs::read_dir(&spill).unwrap().count(), 1);
    let out = tmp.path().join("many.tar.zst");
    let opts = WriteOptions { spill_dir: Some(spill.clone()), ..opts(Compression::Zstd) };
    let mut writer =
        ArchiveWriter::new(fs::File::create(&out).unwrap(), &opts, Cancel::default(), Arc::new(NoProgress))
            .unwrap();
    writer.write_manifest(&manifest(vec![], Compression::Zstd), &vec![scanned.entries.clone()]).unwrap();
    writer.append_host("vol", &root, &scanned.entries).unwrap();
    writer.finish().unwrap();
    let report = check(&out).unwrap();
    assert_eq!(report.entries, 5051);
    assert_eq!(report.manifest.file_count(), 5000);
    let mut listed = 0;
    nuwax::archive::read_entries(&out, |_| {
        listed += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(listed, 5051);
    let dest = tmp.path().join("out");
    let target = nuwax::archive::Target { prefix: "vol".into(), dest: dest.clone() };
    nuwax::archive::extract(&out, &[target], &Cancel::default(), &NoProgress).unwrap();
    assert_same_tree("vol", &root, &scanned, &dest);
    // The last listing gone, its file goes.
    drop(scanned);
    assert_eq!(fs::read_dir(&spill).unwrap().count(), 0);
}

// ---- database dumps ---------------------------------------------------------------------

fn dump_record(name: &str) -> nuwax::archive::manifest::DumpRecord {
    nuwax::archive::manifest::DumpRecord {
        name: name.into(),
        service: "db".into(),
        server: "postgres".into(),
        database: Some("site".into()),
        format: "sql".into(),
        tool_version: "pg_dump (PostgreSQL) 15.13".into(),
        server_version: "15.13".into(),
    }
}

/// Writes `small_tree` under `vol` after two dumps (`a`: 2,500 bytes, `b`: exactly two parts
/// of 1,000), with 1,000-byte parts.
fn archive_with_dumps(dir: &Path, compression: Compression) -> (PathBuf, Vec<u8>, Vec<u8>) {
    let root = small_tree(dir);
    let scanned = scan("vol", &root);
    let out = dir.join(format!("dumps.{}", compression.extension()));
    let (a, b) = (noise(2500, 7), noise(2000, 8));
    let mut m = manifest(vec![], compression);
    m.dumps = vec![dump_record("databases/db/a.sql"), dump_record("databases/db/b.sql")];
    m.dump_part_bytes = Some(1000);
    let mut w = ArchiveWriter::new(
        fs::File::create(&out).unwrap(),
        &opts(compression),
        Cancel::default(),
        Arc::new(NoProgress),
    )
    .unwrap();
    w.write_manifest(&m, &list(&scanned)).unwrap();
    let da = w.append_dump("databases/db/a.sql", &a[..]).unwrap();
    assert_eq!((da.bytes, da.parts), (2500, 3));
    let db = w.append_dump("databases/db/b.sql", &b[..]).unwrap();
    assert_eq!((db.bytes, db.parts), (2000, 3), "an exact multiple ends with an empty part");
    w.append_host("vol", &root, &scanned.entries).unwrap();
    w.finish().unwrap();
    (out, a, b)
}

#[test]
fn dumps_are_archived_in_parts_verified_and_read_back_alone() {
    for compression in [Compression::Zstd, Compression::Gzip, Compression::None] {
        let dir = tempfile::tempdir().unwrap();
        let (out, a, b) = archive_with_dumps(dir.path(), compression);
        let report = check(&out).unwrap();
        let sums: Vec<(String, u64, u64)> =
            report.dumps.iter().map(|d| (d.name.clone(), d.bytes, d.parts)).collect();
        assert_eq!(
            sums,
            vec![("databases/db/a.sql".into(), 2500, 3), ("databases/db/b.sql".into(), 2000, 3)]
        );
        for (name, want) in [("databases/db/a.sql", &a), ("databases/db/b.sql", &b)] {
            let mut got = Vec::new();
            let digest = nuwax::archive::read_dump(&out, name, &mut got, &Cancel::default()).unwrap();
            assert_eq!(&got, want);
            assert!(report.dumps.contains(&digest), "read_dump's digest is the trailer's");
        }
        let err =
            nuwax::archive::read_dump(&out, "databases/db/nope.sql", &mut Vec::new(), &Cancel::default());
        assert!(matches!(err, Err(Error::MissingEntries { .. })), "{err:?}");
        // The files extract as before; the dumps are not files of any target.
        let dest = dir.path().join("restore");
        let targets = vec![nuwax::archive::Target { prefix: "vol".into(), dest: dest.clone() }];
        nuwax::archive::extract(&out, &targets, &Cancel::default(), &NoProgress).unwrap();
        let src = dir.path().join("src");
        assert_same_tree("vol", &src, &scan("vol", &src), &dest);
    }
}

/// SQL-like text as a dump's `COPY` holds it: a row number and words from a vocabulary of a
/// few thousand, the kind of repetition a stronger level finds more of.
fn sql_rows(rows: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let words: Vec<String> = (0..4000).map(|_| format!("{:012x}", next() & 0xffff_ffff_ffff)).collect();
    let mut out = Vec::new();
    for n in 0..rows {
        let r = next();
        let pick = |i: u32| words[((r >> (i * 12)) % 4000) as usize].as_str();
        out.extend_from_slice(format!("{n}\t{} {} {}\n", pick(0), pick(1), pick(2)).as_bytes());
    }
    out
}

#[test]
fn dumps_are_compressed_at_least_at_level_3_and_carry_their_row_counts() {
    let dir = tempfile::tempdir().unwrap();
    let dump = sql_rows(150_000, 3);
    let at = |level| zstd::bulk::compress(&dump, level).unwrap().len();
    let (one, three) = (at(1), at(3));
    assert!(three * 10 < one * 9, "the data must tell the levels apart: {one} at 1, {three} at 3");
    let out = dir.path().join("dump.tar.zst");
    let mut m = manifest(vec![], Compression::Zstd);
    m.dumps = vec![dump_record("databases/db/site.sql")];
    m.dump_part_bytes = Some(8 << 20);
    let o = opts(Compression::Zstd);
    assert_eq!(o.level, 1, "archives default to level 1");
    let mut w =
        ArchiveWriter::new(fs::File::create(&out).unwrap(), &o, Cancel::default(), Arc::new(NoProgress))
            .unwrap();
    w.write_manifest(&m, &Vec::<EntryMeta>::new()).unwrap();
    w.append_dump("databases/db/site.sql", &dump[..]).unwrap();
    let rows: std::collections::BTreeMap<String, u64> = [("public.t".to_string(), 150_000)].into();
    w.set_dump_rows("databases/db/site.sql", rows.clone()).unwrap();
    assert!(w.set_dump_rows("databases/db/other.sql", rows.clone()).is_err());
    w.finish().unwrap();
    let size = fs::metadata(&out).unwrap().len() as usize;
    assert!(size < (one + three) / 2, "archive {size} bytes: the dump at level 1 is {one}, at 3 {three}");
    let report = check(&out).unwrap();
    assert_eq!(report.dumps[0].rows.as_ref(), Some(&rows), "the trailer carries the counts");
    let mut got = Vec::new();
    let read =
        nuwax::archive::read_dump(&out, "databases/db/site.sql", &mut got, &Cancel::default()).unwrap();
    assert_eq!(got, dump);
    assert!(read.same_bytes(&report.dumps[0]) && read.rows.is_none(), "{read:?}");
}

#[test]
fn a_damaged_or_missing_dump_part_fails_verification() {
    let dir = tempfile::tempdir().unwrap();
    let (out, _, _) = archive_with_dumps(dir.path(), Compression::None);
    let bytes = fs::read(&out).unwrap();
    // A flipped byte in a part: the dump's digest differs from the trailer's.
    let flipped = repack(&bytes, |(name, h, mut data)| {
        if name == "databases/db/a.sql.000001" {
            data[10] ^= 1;
        }
        vec![(name, h, data)]
    });
    let err = damaged(dir.path(), &flipped).unwrap_err().to_string();
    assert!(err.contains("databases/db/a.sql") && err.contains("differs"), "{err}");
    // A part left out.
    let cut = repack(&bytes, |m| if m.0 == "databases/db/b.sql.000001" { vec![] } else { vec![m] });
    let err = damaged(dir.path(), &cut).unwrap_err().to_string();
    assert!(err.contains("databases/db/b.sql.000001"), "{err}");
}

#[test]
fn the_writer_holds_dumps_to_their_declaration() {
    let dir = tempfile::tempdir().unwrap();
    let root = small_tree(dir.path());
    let scanned = scan("vol", &root);
    let o = opts(Compression::None);
    let new = || ArchiveWriter::new(Vec::new(), &o, Cancel::default(), Arc::new(NoProgress)).unwrap();
    let mut m = manifest(vec![], Compression::None);
    m.dumps = vec![dump_record("databases/db/a.sql")];
    m.dump_part_bytes = Some(1000);
    // Out of order / undeclared.
    let mut w = new();
    w.write_manifest(&m, &list(&scanned)).unwrap();
    assert!(matches!(w.append_dump("databases/db/b.sql", &b""[..]), Err(Error::Undeclared { .. })));
    // Entries before the dumps.
    let err = w.append_host("vol", &root, &scanned.entries).unwrap_err();
    assert!(
        matches!(err, Error::MissingEntries { ref first, .. } if first == "databases/db/a.sql"),
        "{err:?}"
    );
    // Finished without its dump.
    let mut w = new();
    w.write_manifest(&m, &Vec::<EntryMeta>::new()).unwrap();
    assert!(matches!(w.finish(), Err(Error::MissingEntries { .. })));
    // Entries may not live under databases/, and dump names must.
    let entry = EntryMeta {
        path: "databases/x".into(),
        kind: EntryKind::File,
        size: 0,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 0,
        link_target: None,
    };
    assert!(matches!(new().write_manifest(&m, &vec![entry]), Err(Error::Usage(_))));
    let mut bad = m.clone();
    bad.dumps[0].name = "volumes/x.sql".into();
    assert!(matches!(new().write_manifest(&bad, &Vec::<EntryMeta>::new()), Err(Error::Usage(_))));
}

/// An archive written for an age recipient holds no plaintext (the manifest neither), verifies
/// and extracts exactly in this process (which made it), and any damage fails verification.
#[test]
fn encrypted_archives_hold_no_plaintext_and_verify_and_extract_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/marker.txt"), "NUWAX-PLAINTEXT-MARKER ".repeat(2000)).unwrap();
    let key = tmp.path().join("key.txt");
    #[allow(deprecated)]
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    {
        use age::secrecy::ExposeSecret;
        fs::write(&key, format!("{}\n", identity.to_string().expose_secret())).unwrap();
    }
    for compression in ALL {
        let mut o = opts(compression);
        o.recipients = nuwax::archive::seal::parse_recipients(std::slice::from_ref(&recipient)).unwrap();
        let path = tmp.path().join(format!("enc.{}", compression.extension()));
        let (scanned, summary) = archive_tree("data", &src, &path, &o);
        let bytes = fs::read(&path).unwrap();
        assert!(nuwax::archive::seal::is_encrypted(&bytes), "{compression}");
        for needle in [&b"NUWAX-PLAINTEXT-MARKER"[..], b"manifest.json", b"marker.txt"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{compression}: plaintext in the file"
            );
        }
        let report =
            verify(&path, summary.archive_sha256.as_deref(), &Cancel::default(), &NoProgress).unwrap();
        assert_eq!(report.entries, scanned.entries.len());
        let dest = tmp.path().join(format!("out-{compression}"));
        nuwax::archive::extract(
            &path,
            &[nuwax::archive::Target { prefix: "data".into(), dest: dest.clone() }],
            &Cancel::default(),
            &NoProgress,
        )
        .unwrap();
        assert_same_tree("data", &src, &scanned, &dest);
        // A flipped byte in the middle fails, as for any archive.
        let mut bad = bytes.clone();
        let at = bad.len() / 2;
        bad[at] ^= 0x40;
        let damaged = tmp.path().join("damaged");
        fs::write(&damaged, &bad).unwrap();
        assert!(check(&damaged).is_err(), "{compression}: a flipped byte verified");
    }
    // The CLI's age opens it with the operator's identity, and it is a nuwax archive inside.
    if Command::new("age").arg("--version").output().is_ok_and(|o| o.status.success()) {
        let path = tmp.path().join(format!("enc.{}", Compression::None.extension()));
        let out = Command::new("age").arg("-d").arg("-i").arg(&key).arg(&path).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout.windows(13).any(|w| w == b"manifest.json"));
    }
}
