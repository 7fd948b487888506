//! Upgrade packages: versions, manifest validation, `.env` edits, build → open round trips in
//! every format, checksums, hostile archives and resumable downloads from a local HTTP server.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use nuwax::archive::{Cancel, NoProgress};
use nuwax::package::{self, EnvChanges, Error, OpenOptions, Package, Version};

fn open(source: &str, work: &Path, sha256: Option<&str>) -> Result<Package, Error> {
    let cancel = Cancel::new();
    let opts = OpenOptions {
        sha256: sha256.map(str::to_owned),
        work_dir: work.to_owned(),
        progress: &NoProgress,
        cancel: &cancel,
    };
    package::open(source, &opts)
}

/// Names of the unpack directories left in `work`.
fn leftovers(work: &Path) -> Vec<String> {
    let Ok(dir) = fs::read_dir(work) else { return vec![] };
    dir.filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(package::UNPACK_PREFIX))
        .collect()
}

/// A minimal `docker save` archive naming `tag`.
fn docker_save_tar(tag: &str) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let manifest = format!(r#"[{{"Config":"c.json","RepoTags":["{tag}"],"Layers":[]}}]"#);
    append(&mut tar, "c.json", b"{}");
    append(&mut tar, "manifest.json", manifest.as_bytes());
    tar.into_inner().unwrap()
}

fn append(tar: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    tar.append_data(&mut h, path, data).unwrap();
}

/// Incompressible bytes, so a download of them is big enough to cut in the middle.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

const MANIFEST: &str = r#"
name = "demo"
version = "2.1"
min_from = "1"
description = "test package"
images = ["images/demo.tar"]

[[files]]
src = "compose.yaml"
dest = "compose.yaml"

[[files]]
src = "scripts/migrate.sh"
dest = "scripts/migrate.sh"

[env]
set = { APP_VERSION = "2.1" }
unset = ["OLD"]

[[hooks]]
name = "migrate"
service = "db"
command = ["sh", "-c", "echo done"]

[[probes]]
name = "version"
url = "http://app:8080/version"
expect_body = "2.1"
"#;

/// A valid package directory; `extra` bytes of noise make it as big as needed.
fn package_dir(dir: &Path, extra: usize) {
    fs::create_dir_all(dir.join("scripts")).unwrap();
    fs::create_dir_all(dir.join("images")).unwrap();
    fs::write(dir.join("nuwax-package.toml"), MANIFEST).unwrap();
    fs::write(dir.join("compose.yaml"), "services:\n  app:\n    image: demo:2\n").unwrap();
    fs::write(dir.join("scripts/migrate.sh"), "#!/bin/sh\necho migrate\n").unwrap();
    fs::set_permissions(dir.join("scripts/migrate.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    let mut image = docker_save_tar("demo:2");
    if extra > 0 {
        image.truncate(image.len() - 1024); // drop the end-of-archive blocks, append noise
        let mut tar = tar::Builder::new(Vec::new());
        append(&mut tar, "noise.bin", &noise(extra));
        image.extend(tar.into_inner().unwrap());
    }
    fs::write(dir.join("images/demo.tar"), image).unwrap();
    fs::write(dir.join("README.md"), "not packaged\n").unwrap();
}

/// The files of an opened package that the manifest names, with their content.
fn named_files(pkg: &Package) -> Vec<(String, Vec<u8>)> {
    let m = &pkg.manifest;
    let names = ["nuwax-package.toml"].into_iter().map(str::to_owned);
    let names = names.chain(m.files.iter().map(|f| f.src.clone())).chain(m.images.iter().cloned());
    names.map(|n| (n.clone(), fs::read(pkg.path(&n)).unwrap())).collect()
}

#[test]
fn version_ordering() {
    let v = |s: &str| s.parse::<Version>().unwrap();
    let less = [
        ("1", "2"),
        ("1.9", "1.10"),
        ("1.2", "1.2.1"),
        ("2.0-rc1", "2.0"),
        ("2.0-rc1", "2.0-rc2"),
        ("2.0-beta", "2.0-rc1"),
        ("v0.9.9", "1"),
        ("1.10.3", "1.10.10"),
    ];
    for (a, b) in less {
        assert!(v(a) < v(b), "{a} < {b}");
        assert!(v(b) > v(a), "{b} > {a}");
    }
    for (a, b) in [("v1.2", "1.2.0"), ("1", "1.0.0"), ("V3", "3"), ("01.2", "1.2")] {
        assert_eq!(v(a), v(b), "{a} == {b}");
    }
    assert_eq!(v("v1.2").to_string(), "v1.2");
    assert_eq!(serde_json::to_string(&v("v1.2")).unwrap(), "\"v1.2\"");
    for bad in ["", "x", "1.", "1..2", "1.2-", "latest"] {
        assert!(bad.parse::<Version>().is_err(), "{bad:?}");
    }
}

#[test]
fn validation_reports_every_problem_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pkg");
    fs::create_dir(&dir).unwrap();
    fs::write(tmp.path().join("secret"), "outside").unwrap();
    std::os::unix::fs::symlink("../secret", dir.join("escape")).unwrap();
    fs::create_dir(dir.join("adir")).unwrap();
    fs::write(
        dir.join("nuwax-package.toml"),
        r#"
version = "two"
min_from = "1.x"
images = ["missing.tar", "adir"]
[[files]]
src = "escape"
dest = "../compose.yaml"
[[files]]
src = "/etc/passwd"
dest = "/abs"
[env]
set = { "BAD KEY" = "1" }
[[hooks]]
name = "h"
service = "db"
command = []
[[probes]]
name = "p"
url = "https://app/"
"#,
    )
    .unwrap();
    let err = open(dir.to_str().unwrap(), tmp.path(), None).unwrap_err();
    let Error::Invalid { path, problems } = &err else { panic!("{err:?}") };
    assert_eq!(path, &dir);
    let expect = [
        "`name` is required",
        "`version`",
        "`min_from`",
        "images[0] \"missing.tar\" does not exist",
        "images[1] \"adir\" is not a regular file",
        "files[0].src \"escape\" is a symlink leading outside",
        "files[0].dest \"../compose.yaml\"",
        "files[1].src \"/etc/passwd\" is an absolute path",
        "files[1].dest \"/abs\" is an absolute path",
        "env.set key \"BAD KEY\"",
        "hooks[0].command",
        "probes[0].url \"https://app/\" uses https",
    ];
    for e in expect {
        assert!(problems.iter().any(|p| p.contains(e)), "no problem {e:?} in {problems:#?}");
    }
    assert_eq!(problems.len(), expect.len(), "{problems:#?}");
    let shown = err.to_string();
    assert!(shown.contains(&dir.display().to_string()) && shown.contains("hooks[0].command"), "{shown}");
}

#[test]
fn unknown_manifest_keys_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("nuwax-package.toml"), "name = \"x\"\nversion = \"1\"\nimagez = []\n").unwrap();
    let err = open(tmp.path().to_str().unwrap(), tmp.path(), None).unwrap_err();
    assert!(matches!(&err, Error::Invalid { problems, .. } if problems[0].contains("imagez")), "{err}");
}

#[test]
fn apply_env_keeps_comments_and_order() {
    let existing = "# demo settings\nAPP_VERSION=1\n\nAPP_TITLE=nuwax demo # title\nOLD=x\n# end\n";
    let changes = EnvChanges {
        file: ".env".into(),
        set: [("APP_VERSION", "2"), ("NEW_KEY", "n"), ("A_FIRST", "a")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        unset: vec!["OLD".into(), "ABSENT".into()],
    };
    let out = package::apply_env(existing, &changes);
    assert_eq!(
        out,
        "# demo settings\nAPP_VERSION=2\n\nAPP_TITLE=nuwax demo # title\n# end\nA_FIRST=a\nNEW_KEY=n\n"
    );
    assert_eq!(package::apply_env(&out, &changes), out, "applying twice changes nothing");
}

#[test]
fn build_then_open_in_every_format() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    package_dir(&src, 0);
    let work = tmp.path().join("work");

    let from_dir = open(src.to_str().unwrap(), &work, None).unwrap();
    assert_eq!(from_dir.root, src);
    assert_eq!(from_dir.sha256, None);
    assert_eq!(from_dir.version(), "2.1.0".parse().unwrap());
    assert_eq!(from_dir.manifest.hooks[0].timeout, 300);
    let expected = named_files(&from_dir);

    let mut opened = vec![];
    for ext in ["tar.zst", "tar.gz"] {
        let out = tmp.path().join(format!("demo-2.1.{ext}"));
        let built = package::build(&src, &out).unwrap();
        assert_eq!(built.path, out);
        assert_eq!(built.size, fs::metadata(&out).unwrap().len());
        let sidecar = fs::read_to_string(format!("{}.sha256", out.display())).unwrap();
        assert_eq!(sidecar, format!("{}  demo-2.1.{ext}\n", built.sha256));
        let pkg = open(out.to_str().unwrap(), &work, None).unwrap();
        assert_eq!(pkg.sha256.as_deref(), Some(built.sha256.as_str()));
        assert!(pkg.root.ends_with("demo-2.1"), "{}", pkg.root.display());
        assert!(!pkg.root.join("README.md").exists(), "only named files are packaged");
        let mode = fs::metadata(pkg.path("scripts/migrate.sh")).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "executable bit kept");
        opened.push(pkg);
    }

    // A zip made by another tool, with the manifest at the archive root.
    let zip_path = tmp.path().join("demo.zip");
    let mut zip = zip::ZipWriter::new(fs::File::create(&zip_path).unwrap());
    let options = zip::write::SimpleFileOptions::default();
    for (name, data) in &expected {
        zip.start_file(name.as_str(), options).unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap();
    let pkg = open(zip_path.to_str().unwrap(), &work, None).unwrap();
    assert_eq!(pkg.sha256, Some(nuwax::archive::file_sha256(&zip_path).unwrap()));
    opened.push(pkg);

    for pkg in &opened {
        assert_eq!(pkg.manifest, from_dir.manifest, "{}", pkg.source);
        assert_eq!(named_files(pkg), expected, "{}", pkg.source);
        assert_eq!(pkg.image_archives(), vec![pkg.root.join("images/demo.tar")]);
        assert_eq!(package::image_refs(&pkg.image_archives()[0]).unwrap(), vec!["demo:2"]);
    }
    assert_eq!(leftovers(&work).len(), 3);
    drop(opened);
    assert!(leftovers(&work).is_empty(), "unpacked copies go with the package");
}

#[test]
fn build_refuses_invalid_dirs_and_unknown_extensions() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    package_dir(&src, 0);
    let err = package::build(&src, &tmp.path().join("p.rar")).unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    fs::remove_file(src.join("images/demo.tar")).unwrap();
    let out = tmp.path().join("p.tar.zst");
    let err = package::build(&src, &out).unwrap_err();
    assert!(err.to_string().contains("images[0]"), "{err}");
    assert!(!out.exists());
}

#[test]
fn checksum_mismatch_unpacks_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    package_dir(&src, 0);
    let out = tmp.path().join("p.tar.zst");
    let built = package::build(&src, &out).unwrap();
    let work = tmp.path().join("work");
    let wrong = "0".repeat(64);

    let err = open(out.to_str().unwrap(), &work, Some(&wrong)).unwrap_err();
    assert!(
        matches!(&err, Error::Checksum { expected, actual, .. } if *expected == wrong && *actual == built.sha256),
        "{err:?}"
    );
    assert!(leftovers(&work).is_empty());

    // The given checksum wins over the sidecar, in any case.
    open(out.to_str().unwrap(), &work, Some(&built.sha256.to_uppercase())).unwrap();

    fs::write(format!("{}.sha256", out.display()), format!("{wrong}  p.tar.zst\n")).unwrap();
    let err = open(out.to_str().unwrap(), &work, None).unwrap_err();
    assert!(matches!(err, Error::Checksum { .. }), "{err:?}");
    assert!(err.to_string().contains("p.tar.zst"), "{err}");
    assert!(leftovers(&work).is_empty());

    let err = open(out.to_str().unwrap(), &work, Some("abc")).unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err:?}");
    let err = open(src.to_str().unwrap(), &work, Some(&built.sha256)).unwrap_err();
    assert!(err.to_string().contains("directory package has none"), "{err}");
}

/// A tar.gz holding a valid package plus one entry written by `hostile`.
fn hostile_tar(path: &Path, hostile: impl FnOnce(&mut tar::Builder<Vec<u8>>)) {
    let mut tar = tar::Builder::new(Vec::new());
    append(&mut tar, "nuwax-package.toml", b"name = \"x\"\nversion = \"1\"\n");
    hostile(&mut tar);
    let mut gz = flate2::write::GzEncoder::new(fs::File::create(path).unwrap(), Default::default());
    gz.write_all(&tar.into_inner().unwrap()).unwrap();
    gz.finish().unwrap();
}

/// Appends an entry with a raw name the tar crate's own checks would refuse to write.
fn raw_entry(tar: &mut tar::Builder<Vec<u8>>, name: &str, kind: tar::EntryType, data: &[u8]) {
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append(&h, data).unwrap();
}

#[test]
fn hostile_archives_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    type Case = (&'static str, &'static str, Box<dyn FnOnce(&mut tar::Builder<Vec<u8>>)>);
    let cases: Vec<Case> = vec![
        ("dotdot", "../x", Box::new(|t| raw_entry(t, "../x", tar::EntryType::Regular, b"boom"))),
        ("deep", "a/../../x", Box::new(|t| raw_entry(t, "a/../../x", tar::EntryType::Regular, b"boom"))),
        ("absolute", "/tmp/x", Box::new(|t| raw_entry(t, "/tmp/x", tar::EntryType::Regular, b"boom"))),
        (
            "symlink",
            "link",
            Box::new(|t| {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                t.append_link(&mut h, "link", "/etc").unwrap();
            }),
        ),
        ("hardlink", "hard", Box::new(|t| raw_entry(t, "hard", tar::EntryType::Link, b""))),
        ("fifo", "fifo", Box::new(|t| raw_entry(t, "fifo", tar::EntryType::Fifo, b""))),
        ("device", "dev", Box::new(|t| raw_entry(t, "dev", tar::EntryType::Char, b""))),
    ];
    for (case, entry, hostile) in cases {
        let path = tmp.path().join(format!("{case}.tar.gz"));
        hostile_tar(&path, hostile);
        let err = open(path.to_str().unwrap(), &work, None).unwrap_err();
        assert!(matches!(&err, Error::Unsafe { entry: e, .. } if e == entry), "{case}: {err:?}");
        assert!(err.to_string().contains(entry), "{case}: {err}");
        assert!(leftovers(&work).is_empty(), "{case}");
    }
    assert!(!tmp.path().join("x").exists() && !work.join("x").exists());
    assert!(!Path::new("/tmp/x").exists() || fs::read("/tmp/x").unwrap() != b"boom");

    // Zip: refused from the central directory, before anything is written.
    let zip_path = tmp.path().join("evil.zip");
    let mut zip = zip::ZipWriter::new(fs::File::create(&zip_path).unwrap());
    let options = zip::write::SimpleFileOptions::default();
    zip.start_file("nuwax-package.toml", options).unwrap();
    zip.write_all(b"name = \"x\"\nversion = \"1\"\n").unwrap();
    zip.add_symlink("link", "/etc/passwd", options).unwrap();
    zip.finish().unwrap();
    let err = open(zip_path.to_str().unwrap(), &work, None).unwrap_err();
    assert!(matches!(&err, Error::Unsafe { entry, .. } if entry == "link"), "{err:?}");
    assert!(leftovers(&work).is_empty());
}

#[test]
fn manifest_inside_one_top_level_dir_or_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let two = tmp.path().join("two.tar.gz");
    hostile_tar(&two, |t| append(t, "other/file", b"x"));
    // The manifest at the root wins even with other directories next to it.
    assert!(open(two.to_str().unwrap(), &work, None).is_ok());

    let none = tmp.path().join("none.tar.gz");
    let mut tar = tar::Builder::new(Vec::new());
    append(&mut tar, "a/readme", b"x");
    append(&mut tar, "b/nuwax-package.toml", b"name = \"x\"\nversion = \"1\"\n");
    let mut gz = flate2::write::GzEncoder::new(fs::File::create(&none).unwrap(), Default::default());
    gz.write_all(&tar.into_inner().unwrap()).unwrap();
    gz.finish().unwrap();
    let err = open(none.to_str().unwrap(), &work, None).unwrap_err();
    assert!(err.to_string().contains("single top-level directory"), "{err}");
    assert!(leftovers(&work).is_empty());

    let junk = tmp.path().join("junk.bin");
    fs::write(&junk, b"not an archive").unwrap();
    assert!(matches!(open(junk.to_str().unwrap(), &work, None), Err(Error::Unsupported { .. })));
    assert!(matches!(open("ftp://host/p.zip", &work, None), Err(Error::Unsupported { .. })));
}

/// A request the test server saw: path and the start of its `Range`, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    path: String,
    range: Option<u64>,
}

/// A tiny HTTP/1.1 server: serves `files`, honours `Range: bytes=N-`, and when `cut` is set
/// sends only half of the next full (200) response body before closing the connection.
struct Server {
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    cut: Arc<AtomicBool>,
    /// Answer every request with the whole file, as servers without range support do.
    no_ranges: Arc<AtomicBool>,
}

impl Server {
    fn start(files: HashMap<String, Vec<u8>>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let cut = Arc::new(AtomicBool::new(false));
        let no_ranges = Arc::new(AtomicBool::new(false));
        let (seen2, cut2, no_ranges2) = (seen.clone(), cut.clone(), no_ranges.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let ranges = !no_ranges2.load(Ordering::SeqCst);
                let _ = serve_one(stream, &files, &seen2, &cut2, ranges);
            }
        });
        Server { base, seen, cut, no_ranges }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve_one(
    mut stream: TcpStream,
    files: &HashMap<String, Vec<u8>>,
    seen: &Mutex<Vec<Seen>>,
    cut: &AtomicBool,
    ranges: bool,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("range")
        {
            let value = value.trim().strip_prefix("bytes=").unwrap_or("");
            range = value.trim_end_matches('-').parse::<u64>().ok();
        }
    }
    seen.lock().unwrap().push(Seen { path: path.clone(), range });
    let Some(body) = files.get(&path) else {
        return stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    };
    let len = body.len() as u64;
    match range {
        Some(start) if ranges && start < len => {
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{len}\r\n\
                 Connection: close\r\n\r\n",
                len - start,
                len - 1
            );
            stream.write_all(head.as_bytes())?;
            stream.write_all(&body[usize::try_from(start).unwrap()..])?;
        }
        _ => {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
            stream.write_all(head.as_bytes())?;
            if !path.ends_with(".sha256") && cut.swap(false, Ordering::SeqCst) {
                stream.write_all(&body[..body.len() / 2])?;
                stream.flush()?;
                return stream.shutdown(Shutdown::Both);
            }
            stream.write_all(body)?;
        }
    }
    stream.flush()
}

fn downloads(work: &Path) -> Vec<PathBuf> {
    let Ok(dir) = fs::read_dir(work.join("downloads")) else { return vec![] };
    dir.map(|e| e.unwrap().path()).collect()
}

#[test]
fn download_resumes_after_a_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    package_dir(&src, 3 << 20);
    let out = tmp.path().join("demo-2.tar.zst");
    let built = package::build(&src, &out).unwrap();
    let mut files = HashMap::new();
    files.insert("/dl/demo-2.tar.zst".to_owned(), fs::read(&out).unwrap());
    files.insert(
        "/dl/demo-2.tar.zst.sha256".to_owned(),
        fs::read(format!("{}.sha256", out.display())).unwrap(),
    );
    let server = Server::start(files);
    let url = format!("{}/dl/demo-2.tar.zst", server.base);
    let work = tmp.path().join("work");

    server.cut.store(true, Ordering::SeqCst);
    let err = open(&url, &work, None).unwrap_err();
    assert!(matches!(&err, Error::Download { url: u, .. } if *u == url), "{err:?}");
    let part = downloads(&work);
    assert_eq!(part.len(), 1, "{part:?}");
    assert!(part[0].extension().is_some_and(|e| e == "part"), "{part:?}");
    let have = fs::metadata(&part[0]).unwrap().len();
    assert!(have > 0 && have < built.size, "{have} of {}", built.size);
    assert!(leftovers(&work).is_empty());

    let pkg = open(&url, &work, None).unwrap();
    assert_eq!(pkg.sha256.as_deref(), Some(built.sha256.as_str()));
    assert_eq!(pkg.source, url);
    assert_eq!(pkg.manifest.name, "demo");
    let seen = server.seen();
    assert!(seen.contains(&Seen { path: "/dl/demo-2.tar.zst".into(), range: Some(have) }), "{seen:?}");
    assert!(seen.iter().any(|s| s.path == "/dl/demo-2.tar.zst.sha256"), "{seen:?}");
    let files = downloads(&work);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].to_string_lossy().ends_with("-demo-2.tar.zst"), "{files:?}");
    drop(pkg);

    // A verified earlier download is reused without fetching the package again.
    let before = server.seen().len();
    open(&url, &work, None).unwrap();
    let after = server.seen();
    assert!(after[before..].iter().all(|s| s.path.ends_with(".sha256")), "{after:?}");
}

#[test]
fn download_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    package_dir(&src, 0);
    let out = tmp.path().join("p.tar.gz");
    let built = package::build(&src, &out).unwrap();
    let mut files = HashMap::new();
    files.insert("/p.tar.gz".to_owned(), fs::read(&out).unwrap());
    let server = Server::start(files);
    let work = tmp.path().join("work");

    let missing = format!("{}/missing.tar.gz", server.base);
    let err = open(&missing, &work, None).unwrap_err();
    assert!(
        matches!(&err, Error::Download { url, detail } if *url == missing && detail.contains("404")),
        "{err:?}"
    );

    // No sidecar published: opens, unverified.
    let url = format!("{}/p.tar.gz", server.base);
    let pkg = open(&url, &work, None).unwrap();
    assert_eq!(pkg.sha256.as_deref(), Some(built.sha256.as_str()));
    drop(pkg);

    let wrong = "f".repeat(64);
    let err = open(&url, &work, Some(&wrong)).unwrap_err();
    assert!(matches!(&err, Error::Checksum { actual, .. } if *actual == built.sha256), "{err:?}");
    assert!(downloads(&work).iter().all(|p| p.extension().is_none_or(|e| e != "part")));
    assert!(leftovers(&work).is_empty());
}

#[test]
fn demo_packages_are_valid() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (dir, version, min_from) in [("v2", "2", "1"), ("v3-broken", "3", "2")] {
        let tmp = tempfile::tempdir().unwrap();
        let pkg_dir = tmp.path().join(dir);
        let src = repo.join("compose/demo/packages").join(dir);
        fs::create_dir_all(pkg_dir.join("images")).unwrap();
        for f in ["nuwax-package.toml", "compose.yaml"] {
            fs::copy(src.join(f), pkg_dir.join(f)).unwrap();
        }
        // build-package makes the real one with `docker save`.
        let image = pkg_dir.join(format!("images/nuwax-demo-{version}.tar"));
        fs::write(&image, docker_save_tar(&format!("nuwax-demo:{version}"))).unwrap();
        let pkg = open(pkg_dir.to_str().unwrap(), tmp.path(), None).unwrap();
        let m = &pkg.manifest;
        assert_eq!((m.name.as_str(), m.version.as_str()), ("nuwax-demo", version), "{dir}");
        assert_eq!(m.min_from.as_deref(), Some(min_from), "{dir}");
        assert_eq!(m.env.as_ref().unwrap().set["APP_VERSION"], version, "{dir}");
        assert_eq!(pkg.image_archives(), vec![image], "{dir}");
        assert_eq!(m.probes[0].url, "http://app:8080/version", "{dir}");
        let compose = fs::read_to_string(pkg.path("compose.yaml")).unwrap();
        let tag = format!("image: ${{NUWAX_DEMO_REPO:-nuwax-demo}}:{version}");
        assert_eq!(compose.matches(&tag).count(), compose.matches("image:").count(), "{dir}");
    }
}

#[test]
fn download_starts_over_without_range_support() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    package_dir(&src, 1 << 20);
    let out = tmp.path().join("p.tar.zst");
    let built = package::build(&src, &out).unwrap();
    let server = Server::start(HashMap::from([("/p.tar.zst".to_owned(), fs::read(&out).unwrap())]));
    let url = format!("{}/p.tar.zst", server.base);
    let work = tmp.path().join("work");

    server.cut.store(true, Ordering::SeqCst);
    assert!(matches!(open(&url, &work, Some(&built.sha256)), Err(Error::Download { .. })));
    server.no_ranges.store(true, Ordering::SeqCst);
    let pkg = open(&url, &work, Some(&built.sha256)).unwrap();
    assert_eq!(pkg.sha256.as_deref(), Some(built.sha256.as_str()));
    assert!(server.seen().iter().any(|s| s.range.is_some()), "a resume was tried");
}
