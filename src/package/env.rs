//! Edits `.env` text the way a person would: changed keys are replaced in place, new keys go at
//! the end, removed keys disappear, and comments, blank lines and order stay as they were.

use std::collections::BTreeSet;

use super::EnvChanges;

/// `existing` with `changes` applied. Lines are `KEY=value` (an `export ` prefix is kept);
/// values are written as given, unquoted. A key set more than once keeps its first line and
/// loses the later ones, so the file ends up with one definition of it.
pub fn apply_env(existing: &str, changes: &EnvChanges) -> String {
    let mut out = String::with_capacity(existing.len() + 64);
    let mut written = BTreeSet::new();
    for line in existing.split_inclusive('\n') {
        let Some((export, key)) = line_key(line) else {
            out.push_str(line);
            continue;
        };
        if changes.unset.iter().any(|k| k == key) {
            continue;
        }
        match changes.set.get(key) {
            Some(_) if written.contains(key) => {}
            Some(value) => {
                let ending = if line.ends_with("\r\n") {
                    "\r\n"
                } else if line.ends_with('\n') {
                    "\n"
                } else {
                    ""
                };
                out.push_str(export);
                out.push_str(key);
                out.push('=');
                out.push_str(value);
                out.push_str(ending);
                written.insert(key);
            }
            None => out.push_str(line),
        }
    }
    let mut missing = changes.set.iter().filter(|(k, _)| !written.contains(k.as_str())).peekable();
    if missing.peek().is_some() && !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    for (key, value) in missing {
        out.push_str(key);
        out.push('=');
        out.push_str(value);
        out.push('\n');
    }
    out
}

/// The `export ` prefix (or "") and key of a `KEY=value` line; `None` for comments, blank lines
/// and anything else.
fn line_key(line: &str) -> Option<(&str, &str)> {
    // A replaced line loses any indentation; untouched lines keep their exact text.
    let trimmed = line.trim_start();
    let (export, rest) = match trimmed.strip_prefix("export ") {
        Some(rest) => ("export ", rest.trim_start()),
        None => ("", trimmed),
    };
    let (key, _) = rest.split_once('=')?;
    let key = key.trim_end();
    super::manifest::is_env_key(key).then_some((export, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(set: &[(&str, &str)], unset: &[&str]) -> EnvChanges {
        EnvChanges {
            set: set.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            unset: unset.iter().map(|k| (*k).to_owned()).collect(),
            ..EnvChanges::default()
        }
    }

    #[test]
    fn no_trailing_newline_and_crlf() {
        assert_eq!(apply_env("A=1", &changes(&[("B", "2")], &[])), "A=1\nB=2\n");
        assert_eq!(apply_env("A=1\r\nC=3\r\n", &changes(&[("A", "2")], &[])), "A=2\r\nC=3\r\n");
        assert_eq!(apply_env("", &changes(&[("A", "1")], &[])), "A=1\n");
    }

    #[test]
    fn export_prefix_and_duplicates() {
        let out = apply_env("export A=1\nA=0\n  B = x\n", &changes(&[("A", "2"), ("B", "y")], &[]));
        assert_eq!(out, "export A=2\nB=y\n");
    }
}
