//! The SQLite dumps a rollback writes back. Each goes into the staged tree of the mount that
//! held the file, before the swap: the swap (journaled, finished or undone after a crash like
//! every target's) then puts the database in place together with its mount, before the service
//! starts, and a failure or crash before it clears the staging with the rest. Only a host path
//! can take it: a volume this host cannot reach is refused by the plan.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::Item;
use crate::archive::manifest::{DumpDigest, Manifest};
use crate::archive::{self, Cancel};
use crate::database::{self, dump};

/// One SQLite database a rollback writes back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Place {
    pub service: String,
    /// The file inside the container.
    pub path: String,
    /// The dump's archive name.
    pub dump: String,
    /// The archive prefix of the mount (the item whose staged tree takes it) and the file's
    /// path inside it.
    pub prefix: String,
    pub rel: String,
    /// Where it ends up on this host.
    pub dest: PathBuf,
    /// Its size and digest, as the verifying pass read them.
    pub digest: DumpDigest,
}

/// Where each SQLite dump of the backup goes: the restored mount that held the file, by the
/// backup's own record of where each service mounted what.
pub(super) fn places(manifest: &Manifest, digests: &[DumpDigest], items: &[Item]) -> Result<Vec<Place>> {
    let mut out = Vec::new();
    for (d, digest) in manifest.dumps.iter().zip(digests).filter(|(d, _)| d.server == "sqlite") {
        let path = d.database.as_deref().unwrap_or_default();
        let service = &d.service;
        let held = manifest.mounts.iter().find_map(|m| {
            let dests = m.destinations.iter().filter_map(|x| x.strip_prefix(&format!("{service}:")));
            database::mount_holding(dests, path).map(|(_, rel)| (m, rel))
        });
        let Some((mount, rel)) = held else {
            bail!(
                "the backup holds a dump of SQLite database {path} of {service}, but not the mount \
                 that held it: there is nowhere to write it back"
            );
        };
        let Some(item) = items.iter().find(|i| i.kind != "config" && i.prefix == mount.archive_path) else {
            bail!("SQLite database {path} of {service}: its mount {} is not restored", mount.name);
        };
        if item.via_engine {
            bail!(crate::Error::Config(format!(
                "SQLite database {path} of {service} is in volume {}, which this host cannot reach{}: \
                 nuwax writes the database's dump into the volume's files, so run the rollback where \
                 the volume's mountpoint is readable (as root, volume_access = auto or host)",
                item.volume.as_deref().unwrap_or(&item.name),
                if item.create { " (it does not exist yet)" } else { "" }
            )));
        }
        out.push(Place {
            service: service.clone(),
            path: path.to_string(),
            dump: d.name.clone(),
            prefix: item.prefix.clone(),
            dest: item.dest.join(&rel),
            rel,
            digest: digest.clone(),
        });
    }
    Ok(out)
}

/// Writes `place`'s dump from `archive` into the staged tree `staged` (the mount's staging).
pub(super) fn write(archive: &Path, place: &Place, staged: &Path, cancel: &Cancel) -> Result<()> {
    let file = staged.join(&place.rel);
    install(&file, &place.digest, |out| Ok(archive::read_dump(archive, &place.dump, out, cancel)?))
        .with_context(|| {
            format!("writing the dump of {} ({}) into {}", place.path, place.service, file.display())
        })
}

/// `file` made of what `fill` writes: into a temp file beside it, held to `want` (the digest
/// the verifying pass read) and to SQLite's header, synced, renamed over `file`; then the
/// companions a database of another moment left beside it go. The temp file goes on any
/// failure. Owned like its directory (the archive does not hold the file's own metadata) and
/// moded 0644, as SQLite creates a database.
fn install(
    file: &Path,
    want: &DumpDigest,
    fill: impl FnOnce(&mut dyn Write) -> Result<DumpDigest>,
) -> Result<()> {
    let dir = file.parent().context("a database file has a directory")?;
    let name = file.file_name().context("a database file has a name")?.to_string_lossy();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{name}.nuwax-sqlite"));
    let done = (|| -> Result<()> {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, &f);
        let got = fill(&mut w)?;
        w.flush().with_context(|| format!("writing {}", tmp.display()))?;
        drop(w);
        if got.bytes != want.bytes || got.sha256 != want.sha256 {
            bail!(
                "{} read back ({} bytes, sha256 {}) differs from what the archive's verification read \
                 ({} bytes, sha256 {})",
                want.name,
                got.bytes,
                got.sha256,
                want.bytes,
                want.sha256
            );
        }
        // An empty file is an empty database to SQLite; anything else starts with its header.
        let mut head = [0u8; 16];
        let n = crate::fsutil::read_full(&mut std::fs::File::open(&tmp)?, &mut head)?;
        if n > 0 && head != *dump::SQLITE_HEADER {
            bail!("{} is not a SQLite database (its first bytes are not SQLite's header)", want.name);
        }
        f.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
        let owner = std::fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
        std::os::unix::fs::chown(&tmp, Some(owner.uid()), Some(owner.gid()))
            .with_context(|| format!("owning {}", tmp.display()))?;
        std::fs::rename(&tmp, file).with_context(|| format!("renaming {} into place", tmp.display()))?;
        for suffix in database::SQLITE_COMPANIONS {
            let stale = dir.join(format!("{name}{suffix}"));
            match std::fs::remove_file(&stale) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", stale.display()));
                }
                _ => {}
            }
        }
        crate::fsutil::fsync_dir(dir).with_context(|| format!("syncing {}", dir.display()))?;
        Ok(())
    })();
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digest of `bytes`, as the archive's reader reports one.
    fn digest_of(name: &str, bytes: &[u8]) -> DumpDigest {
        use sha2::Digest;
        let sha256 = crate::archive::hex(&sha2::Sha256::digest(bytes));
        DumpDigest { name: name.into(), bytes: bytes.len() as u64, parts: 1, sha256, rows: None }
    }

    fn db(rows: &[u8]) -> Vec<u8> {
        [&dump::SQLITE_HEADER[..], rows].concat()
    }

    fn fill(bytes: Vec<u8>) -> impl FnOnce(&mut dyn Write) -> Result<DumpDigest> {
        move |out| {
            std::io::copy(&mut &bytes[..], out)?;
            Ok(digest_of("databases/notes/x", &bytes))
        }
    }

    #[test]
    fn a_dump_replaces_the_file_and_its_stale_companions() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("data/notes.db");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        for (n, c) in [("notes.db", "old"), ("notes.db-wal", "w"), ("notes.db-shm", "s"), ("other", "o")] {
            std::fs::write(t.path().join("data").join(n), c).unwrap();
        }
        let bytes = db(b"rows");
        install(&file, &digest_of("databases/notes/x", &bytes), fill(bytes.clone())).unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), bytes);
        let mut left: Vec<String> = std::fs::read_dir(t.path().join("data"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["notes.db", "other"], "companions and the temp file are gone");
    }

    #[test]
    fn a_wrong_digest_or_header_leaves_the_old_file_and_no_temp_file() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("notes.db");
        std::fs::write(&file, "old").unwrap();
        std::fs::write(t.path().join("notes.db-wal"), "w").unwrap();
        let bytes = db(b"rows");
        let other = digest_of("databases/notes/x", b"something else");
        let err = install(&file, &other, fill(bytes)).unwrap_err().to_string();
        assert!(err.contains("differs"), "{err}");
        let text = b"CREATE TABLE notes (n);".to_vec();
        let err = install(&file, &digest_of("databases/notes/x", &text), fill(text)).unwrap_err().to_string();
        assert!(err.contains("not a SQLite database"), "{err}");
        let failing = |_: &mut dyn Write| -> Result<DumpDigest> { bail!("the archive ended") };
        assert!(install(&file, &other, failing).is_err());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "old");
        let n = std::fs::read_dir(t.path()).unwrap().count();
        assert_eq!(n, 2, "the old file and its companion, no temp file");
    }

    #[test]
    fn an_empty_dump_is_an_empty_database() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("empty.db");
        install(&file, &digest_of("databases/x/empty", b""), fill(Vec::new())).unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 0);
    }

    fn manifest_with(dests: &[&str]) -> Manifest {
        let mut m: Manifest = serde_json::from_value(serde_json::json!({
            "format_version": 2, "nuwax_version": "t", "backup_id": 1, "kind": "manual",
            "project": "site", "service_version": "1", "created_at": "2024-01-01T00:00:00Z",
            "compression": "zstd", "services_stopped": true, "services": [], "mounts": [],
            "configs": [], "skipped": [],
            "checksums": {"algorithm": "sha256", "trailer": "checksums.json"}
        }))
        .unwrap();
        m.mounts.push(crate::archive::manifest::MountRecord {
            kind: crate::archive::manifest::MountKind::Volume,
            name: "site_notes".into(),
            source: "/v/site_notes/_data".into(),
            destinations: dests.iter().map(|d| d.to_string()).collect(),
            archive_path: "volumes/site_notes".into(),
            access: crate::archive::manifest::Access::Host,
            size: 0,
            file_count: 0,
            running: vec!["notes".into()],
        });
        m.dumps.push(crate::archive::manifest::DumpRecord {
            name: "databases/notes/data%2Fdb%2Fnotes.db".into(),
            service: "notes".into(),
            server: "sqlite".into(),
            database: Some("/data/db/notes.db".into()),
            format: dump::SQLITE_FORMAT.into(),
            tool_version: "3.40.1".into(),
            server_version: "3.40.1".into(),
        });
        m
    }

    fn item(via_engine: bool) -> Item {
        Item {
            kind: "volume",
            name: "site_notes".into(),
            prefix: "volumes/site_notes".into(),
            dest: PathBuf::from("/v/site_notes/_data"),
            size: 0,
            file_count: 0,
            volume: Some("site_notes".into()),
            via_engine,
            create: false,
            empty: false,
        }
    }

    #[test]
    fn each_sqlite_dump_goes_into_the_restored_mount_that_held_it() {
        let m = manifest_with(&["notes:/data", "web:/srv/db"]);
        let d = digest_of("databases/notes/data%2Fdb%2Fnotes.db", b"");
        let places = places(&m, std::slice::from_ref(&d), &[item(false)]).unwrap();
        assert_eq!(places.len(), 1);
        assert_eq!(
            (places[0].rel.as_str(), places[0].prefix.as_str()),
            ("db/notes.db", "volumes/site_notes")
        );
        assert_eq!(places[0].dest, PathBuf::from("/v/site_notes/_data/db/notes.db"));

        let err = super::places(&m, std::slice::from_ref(&d), &[item(true)]).unwrap_err().to_string();
        assert!(err.contains("cannot reach") && err.contains("site_notes"), "{err}");
        // Another service mounting the volume does not place notes' file.
        let elsewhere = manifest_with(&["web:/data"]);
        let err = super::places(&elsewhere, &[d], &[item(false)]).unwrap_err().to_string();
        assert!(err.contains("not the mount"), "{err}");
    }
}
