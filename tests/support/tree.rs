//! Comparing file trees the way a user would: kind, bytes, mode, owner, symlink target, mtime.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// File content digest or symlink target.
    pub content: String,
    /// Files only (directory mtimes move when their content is touched during extraction).
    pub mtime: Option<i64>,
}

/// Relative path → node, for everything under `root` (not following symlinks).
pub fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).follow_links(false).min_depth(1) {
        let e = e.unwrap();
        let md = e.path().symlink_metadata().unwrap();
        let rel = e.path().strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let ft = md.file_type();
        let (kind, content, mtime) = if ft.is_symlink() {
            ("symlink", std::fs::read_link(e.path()).unwrap().to_string_lossy().into_owned(), None)
        } else if ft.is_dir() {
            ("dir", String::new(), None)
        } else {
            let bytes = std::fs::read(e.path()).unwrap();
            use sha2::Digest;
            ("file", format!("{:x}", sha2::Sha256::digest(&bytes)), Some(md.mtime()))
        };
        out.insert(
            rel,
            Node { kind, mode: md.mode() & 0o7777, uid: md.uid(), gid: md.gid(), content, mtime },
        );
    }
    out
}

/// Panics with the first differences when the trees differ (`ignore`: relative paths to skip).
pub fn assert_same(expected: &Path, actual: &Path, ignore: &[&str]) {
    let mut a = snapshot(expected);
    let mut b = snapshot(actual);
    for i in ignore {
        a.remove(*i);
        b.remove(*i);
    }
    if a == b {
        return;
    }
    let mut diffs = Vec::new();
    for (k, v) in &a {
        match b.get(k) {
            None => diffs.push(format!("missing in {}: {k}", actual.display())),
            Some(w) if w != v => diffs.push(format!("{k}: expected {v:?}, got {w:?}")),
            _ => {}
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        diffs.push(format!("unexpected in {}: {k}", actual.display()));
    }
    panic!(
        "trees differ ({} differences):\n{}",
        diffs.len(),
        diffs.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}
