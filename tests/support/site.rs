//! The site stack (`compose/site`: PostgreSQL, MariaDB, two apps writing to them and a SQLite
//! app) under its own compose project name and temp dir, torn down (`down -v`, nuwax's keep
//! tags) even when the test fails. Its database images are built once per machine by `compose/images/build` and
//! reused by tag; tests never remove them.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{ComposeCli, ImageLock, copy_dir, repo, unique};

/// Builds (or finds up to date) the bookworm database images, once per test process, under the
/// image lock. Panics with the script's output when it fails.
pub fn database_images() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    build_images(&BUILT, &[]);
}

/// The Debian 13 (trixie) PostgreSQL image, `nuwax-postgres:17`, for major-version upgrades:
/// built (or found up to date) once per test process.
pub fn newer_postgres_image() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    build_images(&BUILT, &["--suite", "trixie", "postgres"]);
}

fn build_images(built: &OnceLock<Result<(), String>>, args: &[&str]) {
    let r = built.get_or_init(|| {
        let _lock = ImageLock::acquire();
        let out = Command::new(repo().join("compose/images/build"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
        }
    });
    if let Err(e) = r {
        panic!("compose/images/build {args:?} failed:\n{e}");
    }
}

/// Every service of the site.
pub const SERVICES: [&str; 5] = ["db", "app", "maria", "shop", "notes"];

pub struct Site {
    pub name: String,
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
    pub compose: ComposeCli,
}

impl Site {
    pub fn new(compose: ComposeCli) -> Site {
        database_images();
        let name = unique("nxs");
        let tmp = tempfile::Builder::new().prefix("nuwax-test-").tempdir().unwrap();
        let dir = tmp.path().join(&name);
        copy_dir(&repo().join("compose/site"), &dir);
        for junk in ["backups", ".nuwax", "uploads/last-tick"] {
            let _ = std::fs::remove_dir_all(dir.join(junk));
            let _ = std::fs::remove_file(dir.join(junk));
        }
        Site { name, dir, _tmp: tmp, compose }
    }

    pub fn compose(&self, args: &[&str]) -> Output {
        self.compose.command(&self.dir, &self.name, &[], args).output().unwrap()
    }

    /// `up -d` and wait until every service is healthy.
    pub fn up(&self) {
        let out = self.compose(&["up", "-d"]);
        assert!(out.status.success(), "compose up: {}", String::from_utf8_lossy(&out.stderr));
        self.wait_healthy(&SERVICES);
    }

    pub fn wait_healthy(&self, services: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let states = super::states(&self.name);
            if services.iter().all(|s| states.iter().any(|(svc, st)| svc == s && st == "running/healthy")) {
                return;
            }
            assert!(Instant::now() < deadline, "site services not healthy in time: {states:?}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// `psql -At` in the db container; the output, trimmed.
    pub fn psql(&self, sql: &str) -> String {
        self.exec("db", &["psql", "-U", "postgres", "-d", "site", "-qAtX", "-c", sql])
    }

    /// `mariadb -N` in the maria container; the output, trimmed.
    pub fn mariadb(&self, sql: &str) -> String {
        self.exec("maria", &["mariadb", "-N", "shop", "-e", sql])
    }

    pub fn exec(&self, service: &str, cmd: &[&str]) -> String {
        let out = self.compose(&[&["exec", "-T", service][..], cmd].concat());
        assert!(out.status.success(), "exec {cmd:?} in {service}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `sqlite3` on the notes app's database, in its container; the output, trimmed.
    pub fn notes(&self, sql: &str) -> String {
        self.exec("notes", &["sqlite3", "-cmd", ".timeout 5000", "/data/notes.db", sql])
    }

    /// When the service's container last started, as the engine says.
    pub fn started_at(&self, service: &str) -> String {
        let id = self.container_id(service);
        let out =
            Command::new("docker").args(["inspect", "-f", "{{.State.StartedAt}}", &id]).output().unwrap();
        assert!(out.status.success(), "inspect {service}: {}", String::from_utf8_lossy(&out.stderr));
        format!("{id} {}", String::from_utf8_lossy(&out.stdout).trim())
    }

    /// Whether the service's container is paused now.
    pub fn is_paused(&self, service: &str) -> bool {
        let id = self.container_id(service);
        let out = Command::new("docker").args(["inspect", "-f", "{{.State.Paused}}", &id]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "true"
    }

    /// `nuwax ARGS` held at the fault point `pause` (`NUWAX_TEST_PAUSE`): returns once nuwax is
    /// there, with its process and the file whose removal lets it go on.
    pub fn held_at(&self, pause: &str, args: &[&str]) -> (std::process::Child, PathBuf) {
        let file = self.dir.join("pause");
        let mut cmd = self.nuwax();
        cmd.args(args).stdout(Stdio::null()).stderr(Stdio::null());
        (super::held_at(cmd, pause, &file), file)
    }

    /// The catalog holds one backup, failed, and the storage dir no archive or partial file.
    pub fn assert_one_failed_backup_and_no_file(&self) {
        let out = self.run(&["--json", "list"]);
        assert!(out.status.success(), "list: {}", String::from_utf8_lossy(&out.stderr));
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let statuses: Vec<&str> =
            list.as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect();
        assert_eq!(statuses, ["failed"]);
        let leftovers: Vec<_> = std::fs::read_dir(self.dir.join("backups"))
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("backup_") || n.starts_with(".nuwax-partial"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    /// The id of the service's container.
    pub fn container_id(&self, service: &str) -> String {
        let out = self.compose(&["ps", "-q", service]);
        assert!(out.status.success(), "ps -q {service}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The project's volumes, by compose's label.
    pub fn volumes(&self) -> Vec<String> {
        let label = format!("label=com.docker.compose.project={}", self.name);
        let out = Command::new("docker").args(["volume", "ls", "-q", "--filter", &label]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
    }

    /// The `nuwax` binary pointed at this project.
    pub fn nuwax(&self) -> Command {
        let mut c = super::nuwax_at(&self.dir, &self.compose);
        c.env("COMPOSE_PROJECT_NAME", &self.name);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.nuwax().args(args).output().unwrap()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-v", "--remove-orphans", "--timeout", "5"]);
        // `down -v` removes the volumes the compose files name now; an upgrade may have left
        // others of the project (the old server's data after a major-version upgrade).
        for v in self.volumes() {
            let _ = Command::new("docker").args(["volume", "rm", "-f", &v]).output();
        }
        super::remove_keep_tags(&self.name);
    }
}
