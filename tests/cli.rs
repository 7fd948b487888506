//! The command line without Docker: project discovery, init, exit codes, JSON.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::{json, stderr, stdout};

fn nuwax(dir: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nuwax"));
    c.arg("--project-dir")
        .arg(dir)
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .env_remove("COMPOSE_PROJECT_NAME")
        .env_remove("NUWAX_STORAGE_DIR")
        .env_remove("NUWAX_STATE_DIR")
        .env_remove("NUWAX_COMPOSE")
        .stdin(Stdio::null());
    c
}

#[test]
fn no_compose_file_is_a_project_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = nuwax(dir.path()).arg("init").output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("no compose file in"), "{}", stderr(&out));
    assert!(!dir.path().join("nuwax.toml").exists());
}

#[test]
fn init_writes_a_config_that_parses_and_status_works_without_an_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("My Shop");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("docker-compose.yml"), "services:\n  web:\n    image: x\n").unwrap();
    let out = nuwax(&dir).arg("init").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.join("nuwax.toml").is_file() && dir.join("backups").is_dir() && dir.join(".nuwax").is_dir());
    // Every key in the template is commented out: uncommenting them must still parse.
    let template = std::fs::read_to_string(dir.join("nuwax.toml")).unwrap();
    let uncommented: String = template
        .lines()
        .map(|l| if l.starts_with("# ") && (l.contains(" = ") || l.starts_with("# [")) { &l[2..] } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(
        dir.join("nuwax.toml"),
        uncommented.replace("mysite", "shop").replace("\"compose.yaml\"", "\"docker-compose.yml\""),
    )
    .unwrap();
    let out = nuwax(&dir).args(["--json", "status"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["project"], "shop");
    assert!(v["engine_error"].as_str().unwrap().contains("cannot reach the Docker engine"));
    assert_eq!(v["compose_choice"], serde_json::json!({"want": "auto", "from": "nuwax.toml"}));

    // Without the config, the name is the directory's, normalised as compose does.
    std::fs::remove_file(dir.join("nuwax.toml")).unwrap();
    let out = nuwax(&dir).args(["status"]).output().unwrap();
    assert!(stdout(&out).contains("project   myshop"), "{}", stdout(&out));
    let out = nuwax(&dir).args(["--json", "list"]).output().unwrap();
    assert_eq!(json(&out), serde_json::json!([]));
    let out = nuwax(&dir).args(["show", "42"]).output().unwrap();
    assert_eq!(out.status.code(), Some(9));
}

#[test]
fn a_chosen_compose_cli_that_is_missing_is_an_error_not_a_fallback() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shop");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("compose.yaml"), "services: {app: {image: x}}\n").unwrap();
    // No compose CLI on this PATH at all.
    let empty = tmp.path().join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut c = nuwax(&dir);
        c.env("PATH", &empty).args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };

    let v = json(&run(&[("NUWAX_COMPOSE", "v1")], &["--json", "status"]));
    assert_eq!(v["compose_choice"], serde_json::json!({"want": "v1", "from": "NUWAX_COMPOSE"}));
    assert_eq!(v["compose_cli"], serde_json::Value::Null);
    let err = v["compose_error"].as_str().unwrap();
    assert!(
        err.starts_with("NUWAX_COMPOSE=v1 asks for compose v1, and `docker-compose` cannot be run"),
        "{err}"
    );
    let text = stdout(&run(&[("NUWAX_COMPOSE", "v1")], &["status"]));
    assert!(text.contains("compose   not usable: NUWAX_COMPOSE=v1 asks for compose v1"), "{text}");

    // nuwax.toml chooses too; the environment wins over it.
    std::fs::write(dir.join("nuwax.toml"), "compose_cli = \"v2\"\n").unwrap();
    let out = run(&[], &["--json", "doctor"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let compose = json(&out).as_array().unwrap().iter().find(|f| f["check"] == "compose").cloned().unwrap();
    assert_eq!(compose["ok"], false);
    let detail = compose["detail"].as_str().unwrap();
    assert!(detail.starts_with("compose_cli = \"v2\" in nuwax.toml asks for compose v2"), "{detail}");
    let v = json(&run(&[("NUWAX_COMPOSE", "auto")], &["--json", "status"]));
    assert_eq!(v["compose_choice"]["want"], "auto");
    assert!(v["compose_error"].as_str().unwrap().starts_with("neither `docker compose`"), "{v}");

    // A value that names no compose CLI is a project error.
    let out = run(&[("NUWAX_COMPOSE", "docker-compose")], &["status"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("use auto, v2 or v1"), "{}", stderr(&out));
}

#[test]
fn schedule_install_writes_a_systemd_service_and_timer_for_the_project() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shop");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("compose.yaml"), "services: {app: {image: x}}\n").unwrap();
    std::fs::write(dir.join("nuwax.toml"), "schedule = \"30 2 * * 1-5\"\n").unwrap();
    let out = nuwax(&dir).args(["schedule", "install", "--print"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("OnCalendar=Mon..Fri *-*-* 02:30:00"), "{text}");
    assert!(text.contains("backup --kind scheduled") && text.contains(" prune"), "{text}");
    let units = tmp.path().join("units");
    std::fs::create_dir_all(&units).unwrap();
    let out = nuwax(&dir).args(["schedule", "install", "--dir"]).arg(&units).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        units.join("nuwax-backup-shop.timer").is_file() && units.join("nuwax-backup-shop.service").is_file()
    );
    // A schedule systemd cannot express is refused with a pointer to `schedule run`.
    let out = nuwax(&dir).args(["schedule", "install", "--print", "--cron", "0 3 1 * 1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("schedule run"), "{}", stderr(&out));
}

/// A compose project named `name` in `parent`, with `backups` file-only backups (no engine).
fn project_with_backups(parent: &Path, name: &str, backups: usize) -> PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("compose.yaml"), "services:\n  web:\n    image: x\n").unwrap();
    for _ in 0..backups {
        let out = nuwax(&dir).args(["-q", "backup", "--no-docker"]).output().unwrap();
        assert!(out.status.success(), "backup: {}", stderr(&out));
    }
    dir
}

/// The archive of this project's only backup.
fn only_archive(dir: &Path) -> PathBuf {
    let mut archives: Vec<PathBuf> =
        std::fs::read_dir(dir.join("backups")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(archives.len(), 1, "{archives:?}");
    archives.pop().unwrap()
}

#[test]
fn verify_import_and_catalog_rebuild_refuse_bytes_appended_to_an_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let site = project_with_backups(tmp.path(), "shop", 1);
    let archive = only_archive(&site);
    // A zstd skippable frame: zstd decoders read past it without a word.
    let mut bytes = std::fs::read(&archive).unwrap();
    bytes.extend_from_slice(&0x184D_2A50_u32.to_le_bytes());
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(b"hey");
    std::fs::write(&archive, &bytes).unwrap();
    let named = "a zstd skippable frame (11 bytes) after the end of the compressed stream";

    let other = project_with_backups(tmp.path(), "other", 0);
    let out = nuwax(&other).arg("import").arg(&archive).output().unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains(named), "{}", stderr(&out));
    let out = nuwax(&other).args(["--json", "list"]).output().unwrap();
    assert_eq!(json(&out), serde_json::json!([]));

    // The catalog's digest of the file differs too, but the error names what was added.
    let out = nuwax(&site).args(["verify", "1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains(named), "{}", stderr(&out));

    // The catalog lost, rebuilt from the archives alone: the tampered one is left out.
    std::fs::remove_dir_all(site.join(".nuwax")).unwrap();
    let out = nuwax(&site).args(["catalog", "rebuild"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(named), "{}", stdout(&out));
    let out = nuwax(&site).args(["--json", "list"]).output().unwrap();
    assert_eq!(json(&out), serde_json::json!([]));
}

#[test]
fn importing_a_truncated_archive_names_the_file_not_a_backup_id() {
    let tmp = tempfile::tempdir().unwrap();
    let site = project_with_backups(tmp.path(), "shop", 1);
    let bytes = std::fs::read(only_archive(&site)).unwrap();
    let cut = tmp.path().join("cut.tar.zst");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let other = project_with_backups(tmp.path(), "other", 0);
    let out = nuwax(&other).arg("import").arg(&cut).output().unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let err = stderr(&out);
    let named = format!("{} failed verification", std::fs::canonicalize(&cut).unwrap().display());
    assert!(err.contains(&named), "wants {named:?}: {err}");
    assert!(!err.contains("backup 0"), "{err}");
}

/// `nuwax list | head`: the reader is gone before nuwax writes. The command ends as it would
/// have (with its own exit code), quietly: no panic, no "internal error", no recovery pass.
#[test]
fn a_closed_stdout_ends_the_command_quietly_with_its_own_exit_code() {
    let tmp = tempfile::tempdir().unwrap();
    let site = project_with_backups(tmp.path(), "shop", 3);
    let cases: [(&[&str], i32); 6] = [
        (&["list"], 0),
        (&["--json", "list"], 0),
        (&["show", "1"], 0),
        (&["status"], 0),
        (&["verify", "--all"], 0),
        (&["--json", "show", "42"], 9),
    ];
    for (args, code) in cases {
        let mut child =
            nuwax(&site).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        for noise in ["panicked", "internal error", "Broken pipe", "recover"] {
            assert!(!err.contains(noise), "{args:?}: {err}");
        }
    }
}

/// Output that cannot be written for another reason than a closed pipe is an error, said once.
#[test]
fn a_full_stdout_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let site = project_with_backups(tmp.path(), "shop", 1);
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = nuwax(&site).arg("list").stdout(full).output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot write to stdout: No space left on device"), "{err}");
    assert!(!err.contains("panicked") && !err.contains("internal error"), "{err}");
}
