//! Offsite copies on real servers started by the tests (an S3-compatible server, OpenSSH's
//! SFTP) and encryption at rest: what an operator relies on when the host is lost.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::require_docker;
use crate::support::remote::{S3Server, Sshd, s3_credentials, sshd_available};
use crate::support::{Demo, json, nuwax_at, stderr, stdout};

/// `remote add offsite` for `server`, through the CLI as an operator would.
fn add_s3(demo: &Demo, server: &S3Server, tmp: &Path) {
    let creds = s3_credentials(tmp);
    let out = demo.run(&[
        "remote",
        "add",
        "offsite",
        "s3://nuwax/sites",
        "--endpoint",
        &server.endpoint(),
        "--credentials-file",
        creds.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "remote add: {}", stderr(&out));
}

fn backup(demo: &Demo) -> serde_json::Value {
    let out = demo.run(&["--json", "backup"]);
    assert!(out.status.success(), "backup: {}", stderr(&out));
    json(&out)
}

fn copy_status(b: &serde_json::Value, remote: &str) -> String {
    b["copies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["remote"] == remote)
        .map_or("none".into(), |c| c["status"].as_str().unwrap().to_string())
}

fn record(demo: &Demo, id: &serde_json::Value) -> serde_json::Value {
    demo.list().into_iter().find(|r| r["id"] == *id).unwrap_or_else(|| panic!("no backup {id}"))
}

fn contains(file: &Path, needle: &[u8]) -> bool {
    std::fs::read(file).unwrap().windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_backup_copied_to_s3_comes_back_from_there_when_the_local_archive_is_lost() {
    let demo = Demo::new(require_docker!());
    demo.up();
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start(&tmp.path().join("s3"), "127.0.0.1:0");
    add_s3(&demo, &server, tmp.path());
    let out = demo.run(&["remote", "test", "offsite"]);
    assert!(out.status.success() && stdout(&out).contains("ok"), "{}{}", stdout(&out), stderr(&out));

    let uploads = demo.dir.join("uploads");
    std::fs::write(uploads.join("kept.txt"), "as backed up").unwrap();
    let b = backup(&demo);
    assert_eq!(copy_status(&b, "offsite"), "copied", "{}", b["copies"]);
    let name = Path::new(b["path"].as_str().unwrap()).file_name().unwrap().to_str().unwrap().to_string();
    let object = server.root.join(format!("nuwax/sites/{}/{name}", demo.name));
    assert_eq!(std::fs::read(&object).unwrap(), std::fs::read(b["path"].as_str().unwrap()).unwrap());

    // The host loses the archive; the data changes; the rollback fetches it back and restores.
    std::fs::remove_file(b["path"].as_str().unwrap()).unwrap();
    std::fs::write(uploads.join("kept.txt"), "changed").unwrap();
    std::fs::write(uploads.join("new.txt"), "made after").unwrap();
    let out = demo.run(&["rollback", &b["id"].to_string(), "--yes"]);
    assert!(out.status.success(), "rollback from the remote: {}", stderr(&out));
    assert_eq!(std::fs::read_to_string(uploads.join("kept.txt")).unwrap(), "as backed up");
    assert!(!uploads.join("new.txt").exists());
    demo.wait_healthy(&["db", "app", "worker"]);
    let r = record(&demo, &b["id"]);
    assert!(Path::new(r["path"].as_str().unwrap()).is_file(), "the archive is here again: {r}");
    let out = demo.run(&["verify", "--remote"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));

    // Pruned here while the remote keeps it: the row stays, restorable from there.
    let out = demo.run(&["--json", "delete", &b["id"].to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = record(&demo, &b["id"]);
    assert!(r["path"].is_null() && r["status"] == "complete", "{r}");
    assert!(stdout(&demo.run(&["list"])).contains("offsite"));
}

#[test]
fn an_unreachable_remote_leaves_the_copy_pending_and_a_cut_upload_is_never_a_copy() {
    let demo = Demo::new(require_docker!());
    demo.up();
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start(&tmp.path().join("s3"), "127.0.0.1:0");
    let addr = server.addr.clone();
    add_s3(&demo, &server, tmp.path());
    let root = server.kill();

    // The remote is down: the backup completes here, the services run, the copy waits.
    crate::support::add_bulk(&demo, "dbdata", 24);
    let b = backup(&demo);
    assert_eq!(b["status"], "complete");
    assert_eq!(copy_status(&b, "offsite"), "pending", "{}", b["copies"]);
    assert!(b["copies"][0]["detail"].as_str().unwrap().contains("unreachable"), "{}", b["copies"]);
    demo.wait_healthy(&["db", "app", "worker"]);
    let out = demo.run(&["sync"]);
    assert!(!out.status.success(), "sync says the copy is still pending: {}", stdout(&out));

    // Back, but cut midway through the upload (slowed down so the cut lands in it).
    let server = S3Server::start(&root, &addr);
    let mut slow = demo.nuwax();
    slow.args(["sync"]).env("NUWAX_RATE_LIMIT", "4000000");
    let child = slow.spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let root = server.kill();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "a cut upload fails the sync");
    let r = record(&demo, &b["id"]);
    assert_eq!(r["copies"][0]["status"], "pending", "never a partial object recorded as a copy: {r}");
    let key = root.join(format!("nuwax/sites/{}", demo.name));
    let whole: Vec<PathBuf> = walkdir::WalkDir::new(&key)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().to_path_buf())
        .collect();
    assert!(whole.is_empty(), "a cut multipart upload is no object: {whole:?}");

    // Back for good: sync redoes it, and it reads back whole.
    let _server = S3Server::start(&root, &addr);
    let out = demo.run(&["sync"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let r = record(&demo, &b["id"]);
    assert_eq!(r["copies"][0]["status"], "copied", "{r}");
    let out = demo.run(&["verify", "--remote"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
}

fn keypair(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("operator.key");
    #[allow(deprecated)]
    let id = age::x25519::Identity::generate();
    use age::secrecy::ExposeSecret;
    std::fs::write(
        &key,
        format!("# the operator's key, kept off the host\n{}\n", id.to_string().expose_secret()),
    )
    .unwrap();
    (key, id.to_public().to_string())
}

#[test]
fn encrypted_backups_hold_no_plaintext_here_or_offsite_and_need_the_identity_to_restore() {
    let demo = Demo::new(require_docker!());
    demo.up();
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start(&tmp.path().join("s3"), "127.0.0.1:0");
    add_s3(&demo, &server, tmp.path());
    let (key, recipient) = keypair(tmp.path());
    let toml = demo.dir.join("nuwax.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, format!("encrypt_to = [\"{recipient}\"]\n{text}")).unwrap();
    let marker = b"NUWAX-KNOWN-PLAINTEXT-MARKER";
    let uploads = demo.dir.join("uploads");
    std::fs::write(uploads.join("secret.txt"), marker).unwrap();

    let b = backup(&demo);
    let local = PathBuf::from(b["path"].as_str().unwrap());
    assert!(local.to_str().unwrap().ends_with(".age"), "{}", local.display());
    assert_eq!(copy_status(&b, "offsite"), "copied");
    let objects = server.objects("sites");
    assert_eq!(objects.len(), 1, "{objects:?}");
    for f in [&local, &objects[0]] {
        assert!(!contains(f, marker), "plaintext in {}", f.display());
        assert!(!contains(f, b"manifest.json"), "the manifest is readable in {}", f.display());
    }

    // Without the identity: refused, and nothing touched.
    std::fs::write(uploads.join("secret.txt"), "changed").unwrap();
    let started = demo.started_at();
    let out = demo.run(&["rollback", &b["id"].to_string(), "--yes"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("encrypted") && stderr(&out).contains("identity"), "{}", stderr(&out));
    assert_eq!(demo.started_at(), started, "nothing was stopped");
    assert_eq!(std::fs::read_to_string(uploads.join("secret.txt")).unwrap(), "changed");

    // With it: restored.
    let out = demo.run(&["--identity", key.to_str().unwrap(), "rollback", &b["id"].to_string(), "--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(uploads.join("secret.txt")).unwrap(), marker);
    demo.wait_healthy(&["db", "app", "worker"]);
}

fn run_in(dir: &Path, demo: &Demo, env: &[(String, String)], args: &[&str]) -> Output {
    let mut c = nuwax_at(dir, &demo.compose);
    c.env_remove("COMPOSE_PROJECT_NAME")
        .env("NUWAX_DEMO_IMAGE", &demo.image)
        .env("NUWAX_DEMO_REPO", &demo.repo)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args(args);
    c.output().unwrap()
}

#[test]
fn a_fresh_directory_and_the_sftp_remote_bring_the_site_back() {
    if !sshd_available(module_path!()) {
        return;
    }
    let demo = Demo::new(require_docker!());
    demo.up();
    let tmp = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(&tmp.path().join("sshd"));
    let env = sshd.env();
    let offsite = tmp.path().join("sftp-root");
    std::fs::create_dir_all(&offsite).unwrap();
    let creds = sshd.credentials();
    let out = run_in(
        &demo.dir,
        &demo,
        &env,
        &["remote", "add", "vault", &sshd.url(&offsite), "--credentials-file", creds.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run_in(&demo.dir, &demo, &env, &["remote", "test", "vault"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    std::fs::write(demo.dir.join("uploads/site.txt"), "the site's own file").unwrap();
    std::fs::write(demo.volume_path("dbdata").join("rows.db"), "rows").unwrap();
    let out = run_in(&demo.dir, &demo, &env, &["--json", "backup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let b = json(&out);
    assert_eq!(copy_status(&b, "vault"), "copied", "{}", b["copies"]);
    assert!(
        !std::fs::read_dir(offsite.join(&demo.name))
            .unwrap()
            .any(|e| { e.unwrap().file_name().to_string_lossy().ends_with(".partial") })
    );

    // The machine is lost: containers, volumes, the project directory with its backups and
    // catalog. A fresh directory holds only the compose files and nuwax.toml (with the remote).
    let out = demo.compose(&["down", "-v", "--timeout", "2"]);
    assert!(out.status.success());
    let lost = demo.dir.with_extension("lost");
    std::fs::rename(&demo.dir, &lost).unwrap();
    std::fs::create_dir_all(&demo.dir).unwrap();
    for f in ["compose.yaml", ".env", "nuwax.toml"].iter().filter(|f| lost.join(f).exists()) {
        std::fs::copy(lost.join(f), demo.dir.join(f)).unwrap();
    }
    crate::support::copy_dir(&lost.join("image"), &demo.dir.join("image"));

    let out = run_in(&demo.dir, &demo, &env, &["import", "--from", "vault"]);
    assert!(out.status.success(), "import --from: {}{}", stdout(&out), stderr(&out));
    let list = json(&run_in(&demo.dir, &demo, &env, &["--json", "list"]));
    let id = list.as_array().unwrap().iter().find(|r| r["status"] == "complete").unwrap()["id"].to_string();
    let out = run_in(&demo.dir, &demo, &env, &["rollback", &id, "--yes"]);
    assert!(out.status.success(), "rollback on the fresh directory: {}", stderr(&out));
    demo.wait_healthy(&["db", "app", "worker"]);
    assert_eq!(std::fs::read_to_string(demo.dir.join("uploads/site.txt")).unwrap(), "the site's own file");
    assert_eq!(std::fs::read_to_string(demo.volume_path("dbdata").join("rows.db")).unwrap(), "rows");
    let _ = std::fs::remove_dir_all(&lost);
}

#[test]
fn each_remote_keeps_what_its_own_policy_says_and_a_lost_catalog_is_rebuilt_from_it() {
    let demo = Demo::new(require_docker!());
    demo.up();
    let tmp = tempfile::tempdir().unwrap();
    let nas = tmp.path().join("nas");
    let out = demo.run(&["remote", "add", "nas", nas.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Offsite keeps the two newest; here only the newest stays.
    let toml = demo.dir.join("nuwax.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, format!("{text}\n[remotes.retention]\nkeep_last = 2\n")).unwrap();
    let ids: Vec<serde_json::Value> = (0..3).map(|_| backup(&demo)["id"].clone()).collect();
    let out = demo.run(&["--json", "prune", "--keep-last", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let p = json(&out);
    assert_eq!(p["remotes"][0]["removed"], serde_json::json!([ids[0]]), "{p}");
    let list = demo.list();
    let by_id = |id: &serde_json::Value| list.iter().find(|r| r["id"] == *id).cloned();
    assert!(by_id(&ids[0]).is_none(), "gone here and there: no row");
    let middle = by_id(&ids[1]).unwrap();
    assert!(
        middle["path"].is_null() && middle["copies"][0]["status"] == "copied",
        "kept offsite only: {middle}"
    );
    assert!(by_id(&ids[2]).unwrap()["path"].is_string());
    let held: Vec<String> = std::fs::read_dir(nas.join(&demo.name))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(held.len(), 2, "{held:?}");

    // The catalog is lost (and the archives here with it): rebuilt from the remote, same ids.
    std::fs::remove_dir_all(demo.dir.join(".nuwax")).unwrap();
    std::fs::remove_dir_all(demo.dir.join("backups")).unwrap();
    let out = demo.run(&["catalog", "rebuild", "--from", "nas"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let rebuilt: Vec<serde_json::Value> = demo.list().into_iter().map(|r| r["id"].clone()).collect();
    assert_eq!(rebuilt, ids[1..], "rebuilt with their own ids");
    assert!(demo.list().iter().all(|r| r["copies"][0]["status"] == "copied"));
    let out = demo.run(&["verify", "--all"]);
    assert!(out.status.success(), "{}", stderr(&out));
}
