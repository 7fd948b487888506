//! The command line without Docker: project discovery, init, exit codes, JSON.

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
