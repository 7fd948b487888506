//! `remote add` / `remote remove`: the `[[remotes]]` tables of nuwax.toml edited in place (its
//! comments and the rest kept), written atomically with its mode and owner.

use std::path::Path;

use anyhow::{Context, Result};
use toml_edit::{Array, ArrayOfTables, DocumentMut, Item, Table, value};

use super::RemoteSettings;

fn load(path: &Path) -> Result<DocumentMut> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
    };
    text.parse::<DocumentMut>().with_context(|| format!("{} is not valid TOML", path.display()))
}

fn save(path: &Path, doc: &DocumentMut) -> Result<()> {
    crate::fsutil::write_atomically(path, doc.to_string().as_bytes(), 0o600)
}

/// Appends `r` as a `[[remotes]]` table; a name already there is refused.
pub fn add(path: &Path, r: &RemoteSettings) -> Result<()> {
    let mut doc = load(path)?;
    let remotes = doc.entry("remotes").or_insert(Item::ArrayOfTables(ArrayOfTables::new()));
    let Some(list) = remotes.as_array_of_tables_mut() else {
        anyhow::bail!(crate::Error::Config(format!(
            "{}: `remotes` is not a list of [[remotes]] tables",
            path.display()
        )));
    };
    if list.iter().any(|t| t.get("name").and_then(Item::as_str) == Some(r.name.as_str())) {
        anyhow::bail!(crate::Error::Config(format!(
            "there is a remote {:?} already (nuwax remote remove {0} first)",
            r.name
        )));
    }
    let mut t = Table::new();
    t["name"] = value(&r.name);
    t["url"] = value(&r.url);
    if let Some(e) = &r.endpoint {
        t["endpoint"] = value(e);
    }
    if let Some(e) = &r.region {
        t["region"] = value(e);
    }
    if let Some(f) = &r.credentials_file {
        t["credentials_file"] = value(f.to_string_lossy().as_ref());
    }
    let copy =
        serde_json::to_value(r.copy).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    t["copy"] = value(copy);
    if !r.kinds.is_empty() {
        t["kinds"] = value(r.kinds.iter().collect::<Array>());
    }
    list.push(t);
    save(path, &doc)
}

/// Removes the `[[remotes]]` table named `name`; returns whether there was one.
pub fn remove(path: &Path, name: &str) -> Result<bool> {
    let mut doc = load(path)?;
    let Some(list) = doc.get_mut("remotes").and_then(Item::as_array_of_tables_mut) else { return Ok(false) };
    let before = list.len();
    list.retain(|t| t.get("name").and_then(Item::as_str) != Some(name));
    if list.len() == before {
        return Ok(false);
    }
    if list.is_empty() {
        doc.remove("remotes");
    }
    save(path, &doc)?;
    Ok(true)
}

/// The settings that belong to this host, not to a backup: where copies go and how archives
/// are encrypted and opened. A rollback keeps them as they are now.
pub const LOCAL_KEYS: [&str; 3] = ["remotes", "encrypt_to", "identity_file"];

/// Makes [`LOCAL_KEYS`] in the restored nuwax.toml at `staged` what they are in `current`;
/// returns the keys it changed.
pub fn keep_local(staged: &Path, current: &Path) -> Result<Vec<&'static str>> {
    let now = load(current)?;
    let mut doc = load(staged)?;
    let mut changed = Vec::new();
    for key in LOCAL_KEYS {
        let (mine, theirs) = (now.get(key), doc.get(key));
        if mine.map(ToString::to_string) == theirs.map(ToString::to_string) {
            continue;
        }
        match mine {
            Some(item) => {
                doc.insert(key, item.clone());
            }
            None => {
                doc.remove(key);
            }
        }
        changed.push(key);
    }
    if !changed.is_empty() {
        toml::from_str::<crate::project::Settings>(&doc.to_string())
            .map_err(|e| crate::Error::Config(format!("{}: {e}", staged.display())))?;
        crate::fsutil::replace_file(staged, doc.to_string().as_bytes())?;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remotes_are_added_and_removed_keeping_the_rest_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nuwax.toml");
        std::fs::write(&path, "# my settings\nservice_version = \"3\"\n\n[retention]\nkeep_last = 5\n")
            .unwrap();
        let r = RemoteSettings {
            name: "offsite".into(),
            url: "s3://bk/site".into(),
            endpoint: Some("http://127.0.0.1:9000".into()),
            region: None,
            credentials_file: Some("/etc/nuwax/offsite.env".into()),
            copy: super::super::CopyPolicy::Kinds,
            kinds: vec!["manual".into(), "scheduled".into()],
            retention: None,
        };
        add(&path, &r).unwrap();
        assert!(add(&path, &r).unwrap_err().to_string().contains("already"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# my settings\n"), "{text}");
        let parsed: crate::project::Settings = toml::from_str(&text).unwrap();
        assert_eq!(parsed.remotes, vec![r]);
        assert_eq!(parsed.service_version.as_deref(), Some("3"));
        assert!(remove(&path, "offsite").unwrap());
        assert!(!remove(&path, "offsite").unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("remotes") && text.contains("keep_last = 5"), "{text}");
    }

    #[test]
    fn a_restored_nuwax_toml_keeps_this_hosts_remotes_and_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (now, old) = (dir.path().join("now.toml"), dir.path().join("old.toml"));
        std::fs::write(
            &now,
            "service_version = \"2\"\nencrypt_to = [\"age1x\"]\n\n[[remotes]]\nname = \"a\"\nurl = \"/m\"\n",
        )
        .unwrap();
        std::fs::write(&old, "service_version = \"1\"\nidentity_file = \"k.txt\"\n").unwrap();
        let changed = keep_local(&old, &now).unwrap();
        assert_eq!(changed, ["remotes", "encrypt_to", "identity_file"]);
        let s: crate::project::Settings = toml::from_str(&std::fs::read_to_string(&old).unwrap()).unwrap();
        assert_eq!((s.service_version.as_deref(), s.encrypt_to.len(), s.remotes.len()), (Some("1"), 1, 1));
        assert!(s.identity_file.is_none());
        assert!(keep_local(&old, &now).unwrap().is_empty());
    }
}
