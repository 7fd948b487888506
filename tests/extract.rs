//! Safe extraction: round trips of host trees (owners, odd modes, symlinks, mtimes of every
//! kind), hostile archives crafted entry by entry, and cancellation. Every refusal must name
//! the entry, leave nothing outside the dests, and remove the dests themselves.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use globset::GlobSet;
use nuwax::archive::manifest::{EntryKind, EntryMeta, FORMAT_VERSION, Manifest};
use nuwax::archive::{
    ArchiveWriter, Cancel, Checksums, Compression, Error, ExtractReport, NoProgress, Progress, ScanResult,
    Target, WriteOptions, check_extractable, extract, scan_host,
};
use rustix::fs::{AtFlags, CWD, Timespec, Timestamps};
use sha2::{Digest, Sha256};

use crate::support::is_root;

const ALL: [Compression; 3] = [Compression::Zstd, Compression::Gzip, Compression::None];
const MTIME: i64 = 1_700_000_000;

fn manifest(entries: Vec<EntryMeta>, compression: Compression) -> Manifest {
    crate::support::manifest(1, entries, compression)
}

fn scan(prefix: &str, root: &Path) -> ScanResult {
    scan_host(prefix, root, &GlobSet::empty(), &[]).unwrap()
}

/// Counts the content bytes reported.
#[derive(Default)]
struct Count(AtomicU64);

impl Progress for Count {
    fn inc(&self, bytes: u64) {
        self.0.fetch_add(bytes, Ordering::Relaxed);
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

fn set_meta(path: &Path, owner: Option<(u32, u32)>, mode: Option<u32>, mtime: i64) {
    if let Some((uid, gid)) = owner.filter(|_| is_root()) {
        lchown(path, Some(uid), Some(gid)).unwrap();
    }
    if let Some(mode) = mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }
    let time = Timespec { tv_sec: mtime, tv_nsec: 0 };
    let times = Timestamps { last_access: time, last_modification: time };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

/// A volume-like tree: nested and empty dirs, symlinks (relative inside, absolute, dangling),
/// odd modes, other owners when root, long unicode names; every mtime distinct.
fn volume_tree(root: &Path) {
    let long_dir = format!("ünïcödé-{}", "日本語".repeat(12));
    let long_file = "é".repeat(80);
    for dir in ["nested/deep/deeper", "empty", "sticky/inner-empty", &long_dir] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::write(root.join("a.txt"), b"alpha\n").unwrap();
    fs::write(root.join("zero-mode"), b"nobody reads me").unwrap();
    // Not root, the comparison could not read a 0o000 file back.
    let zero_mode = if is_root() { 0o000 } else { 0o400 };
    fs::write(root.join("suid"), b"#!/bin/sh\n").unwrap();
    fs::write(root.join("nested/deep/deeper/f.bin"), vec![7u8; 300_000]).unwrap();
    fs::write(root.join(&long_dir).join(&long_file), b"long").unwrap();
    symlink("a.txt", root.join("rel")).unwrap();
    symlink("../a.txt", root.join("nested/up")).unwrap();
    symlink("/var/lib/db/current", root.join("abs")).unwrap();
    symlink("missing/nowhere", root.join("dangling")).unwrap();

    let mut t = MTIME;
    let mut next = || {
        t += 1000;
        t
    };
    set_meta(&root.join("a.txt"), Some((1000, 1000)), Some(0o640), next());
    set_meta(&root.join("zero-mode"), None, Some(zero_mode), next());
    set_meta(&root.join("suid"), Some((123_456, 7)), Some(0o4755), next());
    set_meta(&root.join("nested/deep/deeper/f.bin"), None, Some(0o600), next());
    set_meta(&root.join(&long_dir).join(&long_file), Some((1000, 1000)), Some(0o644), next());
    for link in ["rel", "nested/up", "abs", "dangling"] {
        set_meta(&root.join(link), Some((1000, 1001)), None, next());
    }
    // Directories last, children first, so their mtimes stay.
    let dirs = ["nested/deep/deeper", "nested/deep", "nested", "empty", "sticky/inner-empty", "sticky"];
    for dir in dirs {
        set_meta(&root.join(dir), Some((1000, 1000)), Some(0o755), next());
    }
    set_meta(&root.join("sticky"), None, Some(0o1777), next());
    set_meta(&root.join(&long_dir), None, Some(0o2750), next());
    set_meta(root, Some((999, 999)), Some(0o700), next());
}

/// Writes one archive holding each `(prefix, root)` in turn.
fn archive_roots(out: &Path, compression: Compression, roots: &[(&str, &Path)]) -> Vec<ScanResult> {
    let scans: Vec<ScanResult> = roots.iter().map(|(prefix, root)| scan(prefix, root)).collect();
    let entries: Vec<nuwax::archive::Listing> = scans.iter().map(|s| s.entries.clone()).collect();
    let opts = WriteOptions {
        compression,
        level: compression.default_level(),
        threads: 2,
        rate_limit: None,
        hash_output: true,
        spill_dir: None,
        recipients: Vec::new(),
    };
    let file = fs::File::create(out).unwrap();
    let mut writer = ArchiveWriter::new(file, &opts, Cancel::new(), Arc::new(NoProgress)).unwrap();
    writer.write_manifest(&manifest(vec![], compression), &entries).unwrap();
    for ((prefix, root), scanned) in roots.iter().zip(&scans) {
        writer.append_host(prefix, root, &scanned.entries).unwrap();
    }
    writer.finish().unwrap();
    scans
}

/// Same entries (path, kind, size, mode, owner, mtime, link target) and the same bytes.
fn assert_same_tree(prefix: &str, original: &Path, scanned: &ScanResult, extracted: &Path) {
    let entries = scanned.entries.to_vec().unwrap();
    assert_eq!(scan(prefix, extracted).entries.to_vec().unwrap(), entries);
    for entry in entries.iter().filter(|e| e.kind == EntryKind::File) {
        let rel = entry.path.strip_prefix(prefix).unwrap().trim_start_matches('/');
        let (a, b) = if rel.is_empty() {
            (original.to_path_buf(), extracted.to_path_buf())
        } else {
            (original.join(rel), extracted.join(rel))
        };
        assert!(fs::read(&a).unwrap() == fs::read(&b).unwrap(), "content of {} differs", entry.path);
    }
}

#[test]
fn round_trip_restores_everything_under_the_targets_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, other, compose) =
        (tmp.path().join("data"), tmp.path().join("other"), tmp.path().join("compose.yaml"));
    fs::create_dir(&other).unwrap();
    fs::write(other.join("not-wanted"), b"stays in the archive").unwrap();
    fs::write(&compose, b"services: {}\n").unwrap();
    set_meta(&compose, Some((1000, 1000)), Some(0o600), MTIME);
    volume_tree(&data);

    for compression in ALL {
        let archive = tmp.path().join(format!("backup.{}", compression.extension()));
        let roots = [
            ("volumes/demo_data", data.as_path()),
            ("volumes/other", other.as_path()),
            ("config/compose.yaml", compose.as_path()),
        ];
        let scans = archive_roots(&archive, compression, &roots);
        let stage = tmp.path().join(format!("stage-{compression}"));
        fs::create_dir(&stage).unwrap();
        let targets = [
            Target { prefix: "volumes/demo_data".into(), dest: stage.join("data") },
            Target { prefix: "config/compose.yaml".into(), dest: stage.join("compose.yaml") },
        ];
        let expected = ExtractReport {
            entries: (scans[0].entries.len() + scans[2].entries.len()) as u64,
            bytes: scans[0].size + scans[2].size,
        };

        assert_eq!(check_extractable(&archive, &targets, &Cancel::new()).unwrap(), expected);
        assert!(names(&stage).is_empty(), "check_extractable wrote something");

        let progress = Count::default();
        let report = extract(&archive, &targets, &Cancel::new(), &progress).unwrap();
        assert_eq!(report, expected);
        assert_eq!(progress.0.load(Ordering::Relaxed), scans.iter().map(|s| s.size).sum::<u64>());
        assert_same_tree("volumes/demo_data", &data, &scans[0], &stage.join("data"));
        assert_same_tree("config/compose.yaml", &compose, &scans[2], &stage.join("compose.yaml"));
        assert_eq!(names(&stage), ["compose.yaml", "data"]);

        // Fresh dests only.
        let err = extract(&archive, &targets, &Cancel::new(), &NoProgress).unwrap_err();
        assert!(matches!(err, Error::Usage(_)), "{err:?}");
        fs::remove_dir_all(&stage).unwrap();
    }
    let mut top = names(tmp.path());
    top.retain(|n| !n.starts_with("backup."));
    assert_eq!(top, ["compose.yaml", "data", "other"]);
}

#[test]
fn targets_must_be_in_the_archive_disjoint_and_new() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    let archive = tmp.path().join("a.tar");
    archive_roots(&archive, Compression::None, &[("vol", &src)]);
    let target = |prefix: &str, dest: &str| Target { prefix: prefix.into(), dest: tmp.path().join(dest) };
    let cases = [
        vec![target("missing", "out")],
        vec![target("vol", "a"), target("vol/sub", "b")],
        vec![target("vol", "src")],
        vec![target("../vol", "out")],
    ];
    for targets in cases {
        let err = extract(&archive, &targets, &Cancel::new(), &NoProgress).unwrap_err();
        assert!(matches!(err, Error::Usage(_)), "{targets:?}: {err:?}");
    }
    assert_eq!(names(tmp.path()), ["a.tar", "src"]);
}

// ---- crafted archives ---------------------------------------------------------------------

fn uid_gid() -> (u64, u64) {
    (u64::from(rustix::process::getuid().as_raw()), u64::from(rustix::process::getgid().as_raw()))
}

pub(crate) fn meta(path: &str, kind: EntryKind, size: u64, link: Option<&str>) -> EntryMeta {
    let (uid, gid) = uid_gid();
    let mode = match kind {
        EntryKind::File => 0o644,
        EntryKind::Dir => 0o755,
        EntryKind::Symlink => 0o777,
    };
    EntryMeta {
        path: path.into(),
        kind,
        size,
        mode,
        uid,
        gid,
        mtime: MTIME,
        link_target: link.map(Into::into),
    }
}

/// A GNU header for `meta` with its name and link target written byte for byte (the `tar`
/// crate's own setters refuse hostile names), of type `kind` and claiming `size` bytes.
pub(crate) fn header(meta: &EntryMeta, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    let name = meta.path.as_bytes();
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    if let Some(link) = &meta.link_target {
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    header.set_entry_type(kind);
    header.set_mode(meta.mode);
    header.set_uid(meta.uid);
    header.set_gid(meta.gid);
    header.set_mtime(u64::try_from(meta.mtime).unwrap());
    header.set_size(size);
    header.set_cksum();
    header
}

pub(crate) type Member = (tar::Header, Vec<u8>);

/// The member a correct archive holds for `meta` (files full of `x`).
pub(crate) fn member(meta: &EntryMeta) -> Member {
    let (kind, size) = match meta.kind {
        EntryKind::File => (tar::EntryType::Regular, meta.size),
        EntryKind::Dir => (tar::EntryType::Directory, 0),
        EntryKind::Symlink => (tar::EntryType::Symlink, 0),
    };
    (header(meta, kind, size), vec![b'x'; usize::try_from(size).unwrap()])
}

fn encoder(path: &Path, compression: Compression) -> Box<dyn Write> {
    let file = fs::File::create(path).unwrap();
    match compression {
        Compression::Zstd => Box::new(zstd::stream::write::Encoder::new(file, 1).unwrap().auto_finish()),
        Compression::Gzip => Box::new(flate2::write::GzEncoder::new(file, flate2::Compression::fast())),
        Compression::None => Box::new(file),
    }
}

/// Member content: bytes (whose digest goes into the trailer) or a stream too big to hash.
pub(crate) enum Data {
    Bytes(Vec<u8>),
    Stream(Box<dyn Read>),
}

/// Writes `manifest.json` declaring `declared`, then `members` as they are, then a trailer
/// with the digests of the members given as bytes that are regular files, then the end marker.
fn craft(path: &Path, compression: Compression, declared: Vec<EntryMeta>, members: Vec<(tar::Header, Data)>) {
    craft_manifest(path, compression, &manifest(declared, compression), members);
}

/// [`craft`] in format 2: `index.jsonl` declaring `declared` after the manifest, the members,
/// `checksums.jsonl` with the digests of the members given as bytes, the trailer.
fn craft_v2(path: &Path, compression: Compression, declared: Vec<EntryMeta>, members: Vec<Member>) {
    use nuwax::archive::manifest::{DigestsInfo, IndexInfo};
    let hex = |bytes: &[u8]| format!("{:x}", Sha256::digest(bytes));
    let mut index = Vec::new();
    for decl in &declared {
        serde_json::to_writer(&mut index, decl).unwrap();
        index.push(b'\n');
    }
    let files = declared.iter().filter(|e| e.kind == EntryKind::File);
    let info = IndexInfo {
        entries: declared.len() as u64,
        files: files.clone().count() as u64,
        content_bytes: files.map(|e| e.size).sum(),
        bytes: index.len() as u64,
        sha256: hex(&index),
    };
    let m = Manifest { index: Some(info), ..manifest(vec![], compression) };
    let manifest = serde_json::to_vec_pretty(&m).unwrap();
    let mut builder = tar::Builder::new(encoder(path, compression));
    json_member(&mut builder, "manifest.json", &manifest);
    json_member(&mut builder, "index.jsonl", &index);
    let (mut digests, mut count, mut total) = (Vec::new(), 0, 0);
    for (header, bytes) in members {
        if header.entry_type().is_file() {
            let name = String::from_utf8(header.path_bytes().into_owned()).unwrap();
            let line = serde_json::json!({ "path": name, "sha256": hex(&bytes) });
            digests.extend(format!("{line}\n").into_bytes());
            count += 1;
            total += bytes.len() as u64;
        }
        builder.append(&header, bytes.as_slice()).unwrap();
    }
    json_member(&mut builder, "checksums.jsonl", &digests);
    let sums = Checksums {
        algorithm: "sha256".into(),
        manifest: hex(&manifest),
        total_bytes: total,
        digests: Some(DigestsInfo { files: count, bytes: digests.len() as u64, sha256: hex(&digests) }),
        ..Checksums::default()
    };
    json_member(&mut builder, "checksums.json", &serde_json::to_vec(&sums).unwrap());
    builder.into_inner().unwrap().flush().unwrap();
}

/// A nuwax member (manifest, index, digests, trailer): a plain file holding `bytes`.
fn json_member(builder: &mut tar::Builder<Box<dyn Write>>, name: &str, bytes: &[u8]) {
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o644);
    header.set_size(bytes.len() as u64);
    builder.append_data(&mut header, name, bytes).unwrap();
}

/// [`craft`] with a manifest of the caller's.
pub(crate) fn craft_manifest(
    path: &Path,
    compression: Compression,
    m: &Manifest,
    members: Vec<(tar::Header, Data)>,
) {
    let mut builder = tar::Builder::new(encoder(path, compression));
    let manifest = serde_json::to_vec_pretty(m).unwrap();
    let mut sums = Checksums {
        algorithm: "sha256".into(),
        manifest: format!("{:x}", Sha256::digest(&manifest)),
        ..Checksums::default()
    };
    json_member(&mut builder, "manifest.json", &manifest);
    for (header, data) in members {
        match data {
            Data::Bytes(bytes) => {
                if header.entry_type().is_file() {
                    let name = String::from_utf8(header.path_bytes().into_owned()).unwrap();
                    sums.files.insert(name, format!("{:x}", Sha256::digest(&bytes)));
                    sums.total_bytes += bytes.len() as u64;
                }
                builder.append(&header, bytes.as_slice()).unwrap();
            }
            Data::Stream(stream) => builder.append(&header, stream).unwrap(),
        }
    }
    json_member(&mut builder, "checksums.json", &serde_json::to_vec(&sums).unwrap());
    builder.into_inner().unwrap().flush().unwrap();
}

pub(crate) fn bytes(members: Vec<Member>) -> Vec<(tar::Header, Data)> {
    members.into_iter().map(|(header, data)| (header, Data::Bytes(data))).collect()
}

/// tmp/{stage,sentinel}: the dest is `stage/vol`; nothing may ever appear in either dir.
struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("stage")).unwrap();
        fs::create_dir(tmp.path().join("sentinel")).unwrap();
        Self { tmp }
    }

    fn sentinel(&self) -> PathBuf {
        self.tmp.path().join("sentinel")
    }

    fn archive(&self) -> PathBuf {
        self.tmp.path().join("crafted")
    }

    fn targets(&self) -> Vec<Target> {
        vec![Target { prefix: "vol".into(), dest: self.tmp.path().join("stage/vol") }]
    }

    /// Both entry points fail with an error `expected` accepts, and nothing was left behind.
    fn assert_refused(&self, case: &str, expected: impl Fn(&Error) -> bool) {
        let err = check_extractable(&self.archive(), &self.targets(), &Cancel::new()).unwrap_err();
        assert!(expected(&err), "{case}: check_extractable: {err:?}");
        let err = extract(&self.archive(), &self.targets(), &Cancel::new(), &NoProgress).unwrap_err();
        assert!(expected(&err), "{case}: extract: {err:?}");
        assert!(names(&self.tmp.path().join("stage")).is_empty(), "{case}: the dest was not removed");
        assert!(names(&self.sentinel()).is_empty(), "{case}: wrote outside the dest");
        let mut top = names(self.tmp.path());
        top.retain(|n| n != "crafted");
        assert_eq!(top, ["sentinel", "stage"], "{case}: wrote next to the dest");
    }
}

fn refused(path: &str, reason: &str) -> impl Fn(&Error) -> bool + use<> {
    let (path, reason) = (path.to_owned(), reason.to_owned());
    move |err| matches!(err, Error::Refused { path: p, reason: r } if *p == path && r.contains(&reason))
}

#[test]
fn hostile_archives_are_refused_and_leave_nothing_behind() {
    let env = Env::new();
    let outside = env.sentinel();
    let outside = outside.to_str().unwrap();
    let abs = format!("{outside}/abs");
    let file = |path: &str, size| meta(path, EntryKind::File, size, None);
    let base = vec![meta("vol", EntryKind::Dir, 0, None), file("vol/ok.txt", 5)];
    let special = |kind: tar::EntryType, path: &str, link: Option<&str>| {
        let decl = meta(path, EntryKind::File, 0, link);
        (Some(decl.clone()), header(&decl, kind, 0))
    };
    let plain = |decl: EntryMeta| (Some(decl.clone()), member(&decl).0);
    let undeclared = |decl: EntryMeta| (None, member(&decl).0);
    let escape = "vol/../../sentinel/escape";
    // (case, extra entries, expected error)
    type Extra = (Option<EntryMeta>, tar::Header); // declared (or not), then archived as
    type Check = Box<dyn Fn(&Error) -> bool>;
    let cases: Vec<(&str, Vec<Extra>, Check)> = vec![
        ("../ declared", vec![plain(file("../escape", 3))], Box::new(refused("../escape", "`..`"))),
        ("vol/../ declared", vec![plain(file(escape, 3))], Box::new(refused(escape, "`..`"))),
        ("vol/../ undeclared", vec![undeclared(file(escape, 3))], Box::new(refused(escape, "`..`"))),
        ("absolute declared", vec![plain(file(&abs, 3))], Box::new(refused(&abs, "absolute"))),
        ("absolute undeclared", vec![undeclared(file(&abs, 3))], Box::new(refused(&abs, "absolute"))),
        ("empty component", vec![plain(file("vol//x", 3))], Box::new(refused("vol//x", "empty"))),
        (
            "symlink out of the dest",
            vec![
                plain(meta("vol/sub", EntryKind::Dir, 0, None)),
                plain(meta("vol/sub/link", EntryKind::Symlink, 0, Some("../../outside"))),
            ],
            Box::new(refused("vol/sub/link", "outside its destination")),
        ),
        (
            "hard link",
            vec![special(tar::EntryType::Link, "vol/passwd", Some("/etc/passwd"))],
            Box::new(refused("vol/passwd", "hard link to /etc/passwd")),
        ),
        (
            "char device",
            vec![special(tar::EntryType::Char, "vol/null", None)],
            Box::new(refused("vol/null", "character device")),
        ),
        (
            "block device",
            vec![special(tar::EntryType::Block, "vol/sda", None)],
            Box::new(refused("vol/sda", "block device")),
        ),
        (
            "fifo",
            vec![special(tar::EntryType::Fifo, "vol/fifo", None)],
            Box::new(refused("vol/fifo", "FIFO")),
        ),
        (
            "undeclared",
            vec![undeclared(file("vol/evil", 3))],
            Box::new(|e: &Error| matches!(e, Error::Undeclared { path } if path == "vol/evil")),
        ),
        (
            "larger than declared",
            vec![(Some(file("vol/big", 3)), member(&file("vol/big", 10)).0)],
            Box::new(|e: &Error| matches!(e, Error::Mismatch { path, .. } if path == "vol/big")),
        ),
        (
            "smaller than declared",
            vec![(Some(file("vol/small", 10)), member(&file("vol/small", 3)).0)],
            Box::new(|e: &Error| matches!(e, Error::Mismatch { path, .. } if path == "vol/small")),
        ),
        (
            "write through a symlink",
            vec![
                plain(meta("vol/link", EntryKind::Symlink, 0, Some(outside))),
                plain(file("vol/link/evil", 3)),
            ],
            Box::new(refused("vol/link/evil", "parent is not a directory")),
        ),
        (
            "a directory that is a symlink",
            vec![
                (Some(meta("vol/link", EntryKind::Dir, 0, None)), {
                    member(&meta("vol/link", EntryKind::Symlink, 0, Some(outside))).0
                }),
                plain(file("vol/link/evil", 3)),
            ],
            Box::new(|e: &Error| matches!(e, Error::Mismatch { path, .. } if path == "vol/link")),
        ),
    ];
    for (i, (case, extra, expected)) in cases.into_iter().enumerate() {
        let mut declared = base.clone();
        let mut members: Vec<Member> = base.iter().map(member).collect();
        for (decl, header) in extra {
            declared.extend(decl);
            let size = usize::try_from(header.entry_size().unwrap()).unwrap();
            members.push((header, vec![b'x'; size]));
        }
        craft(&env.archive(), ALL[i % ALL.len()], declared.clone(), bytes(members.clone()));
        env.assert_refused(case, &expected);
        // The same in format 2, whose declarations are read as a stream.
        craft_v2(&env.archive(), ALL[(i + 1) % ALL.len()], declared, members);
        env.assert_refused(&format!("{case} (format 2)"), &expected);
    }
}

#[test]
fn a_size_bomb_is_refused_before_its_data_is_read() {
    let env = Env::new();
    let huge = 100 << 20;
    let decl = meta("vol/bomb", EntryKind::File, 10, None);
    let declared = vec![meta("vol", EntryKind::Dir, 0, None), decl.clone()];
    let mut members = bytes(vec![member(&declared[0])]);
    members.push((
        header(&decl, tar::EntryType::Regular, huge),
        Data::Stream(Box::new(io::repeat(0).take(huge))),
    ));
    craft(&env.archive(), Compression::Zstd, declared, members);
    assert!(fs::metadata(env.archive()).unwrap().len() < 1 << 20, "zeros compress well");

    let progress = Count::default();
    let start = Instant::now();
    let err = extract(&env.archive(), &env.targets(), &Cancel::new(), &progress).unwrap_err();
    assert!(matches!(&err, Error::Mismatch { path, .. } if path == "vol/bomb"), "{err:?}");
    assert_eq!(progress.0.load(Ordering::Relaxed), 0, "content of the bomb was read");
    assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
    env.assert_refused("bomb", |e| matches!(e, Error::Mismatch { path, .. } if path == "vol/bomb"));
}

#[test]
fn newer_formats_are_refused() {
    let env = Env::new();
    let mut m = manifest(vec![meta("vol", EntryKind::Dir, 0, None)], Compression::None);
    m.format_version = FORMAT_VERSION + 1;
    let mut builder = tar::Builder::new(Vec::new());
    let bytes = serde_json::to_vec(&m).unwrap();
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    builder.append_data(&mut header, "manifest.json", bytes.as_slice()).unwrap();
    fs::write(env.archive(), builder.into_inner().unwrap()).unwrap();
    env.assert_refused("newer format", |e| matches!(e, Error::UnsupportedFormat { .. }));
}

/// Cancels as soon as any content has been read.
struct CancelOnFirstByte(Cancel);

impl Progress for CancelOnFirstByte {
    fn inc(&self, _bytes: u64) {
        self.0.cancel();
    }
}

#[test]
fn cancel_stops_extraction_and_removes_the_dests() {
    let env = Env::new();
    let declared = vec![
        meta("vol", EntryKind::Dir, 0, None),
        meta("vol/ok.txt", EntryKind::File, 5, None),
        meta("vol/big", EntryKind::File, 8 << 20, None),
    ];
    craft(&env.archive(), Compression::Zstd, declared.clone(), bytes(declared.iter().map(member).collect()));
    let cancel = Cancel::new();
    let err =
        extract(&env.archive(), &env.targets(), &cancel, &CancelOnFirstByte(cancel.clone())).unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err:?}");
    assert!(names(&env.tmp.path().join("stage")).is_empty(), "the dest was not removed");

    let cancelled = Cancel::new();
    cancelled.cancel();
    let err = check_extractable(&env.archive(), &env.targets(), &cancelled).unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err:?}");

    // The same archive, not cancelled, extracts.
    let report = extract(&env.archive(), &env.targets(), &Cancel::new(), &NoProgress).unwrap();
    assert_eq!(report, ExtractReport { entries: 3, bytes: 5 + (8 << 20) });
}

#[test]
fn relative_symlinks_must_stay_inside_their_dest() {
    let dir = |path: &str| meta(path, EntryKind::Dir, 0, None);
    // (link, target, allowed): resolved lexically from the link's directory, never above the dest.
    let cases = [
        ("vol/l", ".", true),
        ("vol/l", "..", false),
        ("vol/l", "d/../d/x", true),
        ("vol/l", "d/../../x", false),
        ("vol/d/l", "..", true),
        ("vol/d/l", "../..", false),
        ("vol/d/l", "./../x/../../y", false),
        ("vol/d/l", "../d/./l", true),
        ("vol/d/l", "/etc/passwd", true),
        // The dest itself: a relative target names something beside it, outside.
        ("vol", "compose.prod.yaml", false),
        ("vol", "/srv/config/compose.yaml", true),
    ];
    for (path, target, allowed) in cases {
        let env = Env::new();
        let link = meta(path, EntryKind::Symlink, 0, Some(target));
        let declared = if path == "vol" { vec![link] } else { vec![dir("vol"), dir("vol/d"), link] };
        craft(
            &env.archive(),
            Compression::None,
            declared.clone(),
            bytes(declared.iter().map(member).collect()),
        );
        let case = format!("{path} -> {target}");
        if allowed {
            let report = extract(&env.archive(), &env.targets(), &Cancel::new(), &NoProgress).unwrap();
            assert_eq!(report.entries, declared.len() as u64, "{case}");
            let written = env.tmp.path().join("stage").join(path);
            assert_eq!(fs::read_link(written).unwrap(), Path::new(target), "{case}");
        } else {
            env.assert_refused(&case, refused(path, "outside its destination"));
        }
    }
}

const UNPRIVILEGED_DIR: &str = "NUWAX_TEST_UNPRIVILEGED_DIR";

/// As root, reruns itself as `nobody` (through `setpriv`) so the unprivileged path is exercised.
#[test]
fn without_privileges_owners_are_skipped_and_setuid_dropped() {
    if let Some(dir) = std::env::var_os(UNPRIVILEGED_DIR) {
        return unprivileged_extraction(Path::new(&dir));
    }
    let tmp = tempfile::tempdir().unwrap();
    if !is_root() {
        return unprivileged_extraction(tmp.path());
    }
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let status = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "extract::without_privileges_owners_are_skipped_and_setuid_dropped", "--quiet"])
        .env(UNPRIVILEGED_DIR, tmp.path())
        .status();
    match status {
        Ok(status) => assert!(status.success(), "the unprivileged run failed"),
        Err(err) => eprintln!("\n*** unprivileged extraction: SKIPPED (setpriv: {err}) ***\n"),
    }
}

fn unprivileged_extraction(dir: &Path) {
    assert!(!is_root());
    let owned_by_other = |mut meta: EntryMeta, mode: u32| {
        (meta.uid, meta.gid, meta.mode) = (1000, 1000, mode);
        meta
    };
    let declared = vec![
        owned_by_other(meta("vol", EntryKind::Dir, 0, None), 0o750),
        owned_by_other(meta("vol/suid", EntryKind::File, 4, None), 0o6755),
        owned_by_other(meta("vol/link", EntryKind::Symlink, 0, Some("suid")), 0o777),
        // Read-only: its content is written before its mode is applied.
        owned_by_other(meta("vol/ro", EntryKind::Dir, 0, None), 0o555),
        owned_by_other(meta("vol/ro/f", EntryKind::File, 2, None), 0o444),
    ];
    let archive = dir.join("crafted.tar.zst");
    craft(&archive, Compression::Zstd, declared.clone(), bytes(declared.iter().map(member).collect()));
    let dest = dir.join("vol");
    let targets = [Target { prefix: "vol".into(), dest: dest.clone() }];
    extract(&archive, &targets, &Cancel::new(), &NoProgress).unwrap();

    let expected = |rel: &str, mode: u32| {
        let meta = fs::symlink_metadata(dest.join(rel)).unwrap();
        assert_eq!(
            (meta.mode() & 0o7777, meta.uid(), meta.mtime()),
            (mode, rustix::process::getuid().as_raw(), MTIME),
            "{rel}"
        );
    };
    expected("", 0o750);
    expected("suid", 0o755);
    expected("link", 0o777);
    expected("ro", 0o555);
    expected("ro/f", 0o444);
}
