//! Test environments: a private copy of the demo stack under its own compose project name, its
//! own image tag and temp dirs, torn down (`down -v`, image removed) even when the test fails.
//!
//! Each Docker test picks its compose CLI: v2 (`docker compose`) unless it asks for v1
//! (`require_docker!(V1)`, the `..._compose_v1` smoke tests). The demo's own compose calls and
//! every nuwax it runs (through `NUWAX_COMPOSE`) use that CLI.

#![allow(dead_code)]

pub mod browser;
pub mod remote;
pub mod site;
pub mod tree;

use std::io::Write;

use nuwax::archive::Compression;
use nuwax::archive::manifest::{ChecksumInfo, EntryMeta, FORMAT_VERSION, Manifest};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use nuwax::engine::compose_cli::{ComposeChoice, ComposeCli, Want};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `Some(compose)` when a Docker engine answers and the compose CLI `want` (v2 or v1) is
/// there. Otherwise prints a loud SKIPPED (straight to the terminal, past the test harness's
/// capture) and returns `None` — or panics when NUWAX_REQUIRE_DOCKER=1, as CI sets it.
pub fn docker(test: &str, want: Want) -> Option<ComposeCli> {
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let compose =
        if ok { ComposeChoice::forced(want).select().map_err(|e| e.to_string()) } else { Err(String::new()) };
    let why = match &compose {
        Ok(c) => return Some(c.clone()),
        Err(_) if !ok => "no Docker engine".to_string(),
        Err(e) => format!("no compose {}: {e}", want.as_str()),
    };
    if std::env::var("NUWAX_REQUIRE_DOCKER").is_ok_and(|v| v == "1") {
        panic!("{test}: {why}, and NUWAX_REQUIRE_DOCKER=1");
    }
    let _ = writeln!(std::io::stderr(), "\n*** {test}: SKIPPED ({why}) ***\n");
    None
}

/// Runs the test body only with a Docker engine and the compose CLI asked for (default v2,
/// `require_docker!(V1)` for v1); see [`docker`].
#[macro_export]
macro_rules! require_docker {
    () => {
        $crate::require_docker!(V2)
    };
    ($want:ident) => {
        match $crate::support::docker(module_path!(), $crate::support::Want::$want) {
            Some(c) => c,
            None => return,
        }
    };
}

/// Held while images are built or removed. Removing a test's tag also removes the untagged
/// parent images under it, which are the legacy builder's cache: another test's build that is
/// reusing them then fails (`No such image: sha256:...` at a `RUN`). A file lock, so that test
/// runners that put each test in its own process are serialized too.
pub struct ImageLock(std::fs::File);

impl ImageLock {
    pub fn acquire() -> ImageLock {
        let path = std::env::temp_dir().join("nuwax-test-images.lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        f.lock().unwrap_or_else(|e| panic!("locking {}: {e}", path.display()));
        ImageLock(f)
    }
}

/// Builds the demo image as `tag` (of `version`, default 1), under the [`ImageLock`].
pub fn build_image(dir: &Path, tag: &str, version: Option<&str>) {
    let _lock = ImageLock::acquire();
    let out = Command::new(dir.join("build-images")).arg(tag).args(version).output().unwrap();
    assert!(out.status.success(), "build-images {tag}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The `nuwax` binary pointed at the project in `dir`, with the environment of a clean shell
/// (no storage or state dir overrides, no stdin) and the compose CLI `compose`: never a
/// fallback to the other one.
pub fn nuwax_at(dir: &Path, compose: &ComposeCli) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nuwax"));
    c.arg("--project-dir")
        .arg(dir)
        .env_remove("NUWAX_STORAGE_DIR")
        .env_remove("NUWAX_STATE_DIR")
        .env("NUWAX_LOG", "nuwax=info")
        .env("NUWAX_COMPOSE", if compose.major == 1 { "v1" } else { "v2" })
        .stdin(Stdio::null());
    c
}

/// Removes the tags nuwax put on project `project`'s images for its backups' rollbacks.
pub fn remove_keep_tags(project: &str) {
    let kept = Command::new("docker")
        .args(["images", "--format", "{{.Repository}}:{{.Tag}}", &format!("nuwax-keep/{project}-*")])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    remove_images(&kept.split_whitespace().collect::<Vec<_>>(), false);
}

/// `docker image rm [-f] TAG...` under the [`ImageLock`], each tag on its own (one missing tag
/// must not keep the others); returns whether each went.
pub fn remove_images(tags: &[&str], force: bool) -> Vec<bool> {
    let _lock = ImageLock::acquire();
    tags.iter()
        .map(|t| {
            let mut c = Command::new("docker");
            c.args(["image", "rm"]);
            if force {
                c.arg("-f");
            }
            c.arg(t).output().is_ok_and(|o| o.status.success())
        })
        .collect()
}

/// (service, "state/health") for each container of compose project `project`.
pub fn states(project: &str) -> Vec<(String, String)> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=com.docker.compose.project={project}")])
        .output()
        .unwrap();
    let ids: Vec<String> =
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect();
    if ids.is_empty() {
        return Vec::new();
    }
    let out = Command::new("docker")
        .arg("inspect")
        .arg("--format")
        .arg(r#"{{index .Config.Labels "com.docker.compose.service"}} {{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}"#)
        .args(&ids)
        .output()
        .unwrap();
    let mut v: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
        .collect();
    v.sort();
    v
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique, compose-valid name for this test.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}{}x{n}x{:x}", std::process::id(), t % 0xfffff)
}

/// A copy of `compose/demo` in a temp dir named after its unique project, with its own image tag.
pub struct Demo {
    pub name: String,
    pub image: String,
    /// The repository of the test's upgrade images (`<repo>:2`, `<repo>:3`).
    pub repo: String,
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
    pub compose: ComposeCli,
}

impl Demo {
    pub fn new(compose: ComposeCli) -> Demo {
        let name = unique("nxt");
        let tmp = tempfile::Builder::new().prefix("nuwax-test-").tempdir().unwrap();
        let dir = tmp.path().join(&name);
        copy_dir(&repo().join("compose/demo"), &dir);
        for junk in ["backups", ".nuwax"] {
            let _ = std::fs::remove_dir_all(dir.join(junk));
        }
        let image = format!("nuwax-demo:{name}");
        let repo = format!("nuwax-demo-{name}");
        let demo = Demo { name, image, repo, dir, _tmp: tmp, compose };
        build_image(&demo.dir, &demo.image, None);
        demo
    }

    /// `compose ARGS` for this project.
    pub fn compose(&self, args: &[&str]) -> Output {
        let mut c = self.compose.command(&self.dir, &self.name, &[], args);
        c.env("NUWAX_DEMO_IMAGE", &self.image).env("NUWAX_DEMO_REPO", &self.repo);
        c.output().unwrap()
    }

    /// `up -d` and wait until every service is healthy.
    pub fn up(&self) {
        let out = self.compose(&["up", "-d", "--no-build"]);
        assert!(out.status.success(), "compose up: {}", String::from_utf8_lossy(&out.stderr));
        self.wait_healthy(&["db", "app", "worker"]);
    }

    pub fn wait_healthy(&self, services: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let states = self.states();
            let ok =
                services.iter().all(|s| states.iter().any(|(svc, st)| svc == s && st == "running/healthy"));
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "services not healthy in time: {states:?}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// (service, "state/health") for each container of the project.
    pub fn states(&self) -> Vec<(String, String)> {
        states(&self.name)
    }

    /// Each service's container id and when it last started: unchanged means never stopped.
    pub fn started_at(&self) -> Vec<String> {
        ["db", "app", "worker"]
            .iter()
            .map(|s| {
                let id = String::from_utf8_lossy(&self.compose(&["ps", "-q", s]).stdout).trim().to_string();
                let out = Command::new("docker")
                    .args(["inspect", "--format", "{{.Id}} {{.State.StartedAt}}", &id])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            })
            .collect()
    }

    pub fn state_of(&self, service: &str) -> String {
        self.states().into_iter().find(|(s, _)| s == service).map(|(_, st)| st).unwrap_or_default()
    }

    /// The `nuwax` binary pointed at this project.
    pub fn nuwax(&self) -> Command {
        let mut c = nuwax_at(&self.dir, &self.compose);
        c.env_remove("COMPOSE_PROJECT_NAME")
            // What the operator's shell would hold for the compose file's ${NUWAX_DEMO_IMAGE}.
            .env("NUWAX_DEMO_IMAGE", &self.image)
            .env("NUWAX_DEMO_REPO", &self.repo);
        c
    }

    /// `v2` or `v1`: the `NUWAX_COMPOSE` that makes nuwax run this test's compose CLI.
    pub fn compose_choice(&self) -> &'static str {
        if self.compose.major == 1 { "v1" } else { "v2" }
    }

    /// Runs nuwax with `args`; returns the output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.nuwax().args(args).output().unwrap()
    }

    pub fn volume(&self, name: &str) -> String {
        format!("{}_{name}", self.name)
    }

    /// Host path of a named volume of this project.
    pub fn volume_path(&self, name: &str) -> PathBuf {
        let out = Command::new("docker")
            .args(["volume", "inspect", "--format", "{{.Mountpoint}}", &self.volume(name)])
            .output()
            .unwrap();
        assert!(out.status.success(), "volume inspect {name}: {}", String::from_utf8_lossy(&out.stderr));
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    }

    pub fn storage(&self) -> PathBuf {
        self.dir.join("backups")
    }

    /// Files in the storage dir (hidden temp files included).
    pub fn storage_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.storage())
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// `nuwax --json list`.
    pub fn list(&self) -> Vec<serde_json::Value> {
        let out = self.run(&["--json", "list"]);
        assert!(out.status.success(), "list: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-v", "--remove-orphans", "--timeout", "2"]);
        // The tags nuwax kept for rollback, then the test's own images.
        remove_keep_tags(&self.name);
        let upgrades = [format!("{}:2", self.repo), format!("{}:3", self.repo)];
        remove_images(&[self.image.as_str(), &upgrades[0], &upgrades[1]], true);
        // Whatever a test chmod-ed away, the temp dir must still go.
        let _ = Command::new("chmod").args(["-R", "u+rwX"]).arg(&self.dir).output();
    }
}

impl Demo {
    /// A copy of the demo package `compose/demo/packages/v<version>` next to the project, with
    /// its image built under this test's repository, saved into the package and removed from
    /// the host again, so the upgrade must load it.
    pub fn package(&self, version: &str) -> PathBuf {
        let n = version.split('-').next().unwrap();
        let dir = self.dir.parent().unwrap().join(format!("package-v{version}"));
        copy_dir(&repo().join(format!("compose/demo/packages/v{version}")), &dir);
        std::fs::create_dir_all(dir.join("images")).unwrap();
        let tag = format!("{}:{n}", self.repo);
        build_image(&self.dir, &tag, Some(n));
        let tar = dir.join(format!("images/nuwax-demo-{n}.tar"));
        let out = Command::new("docker").arg("save").arg("-o").arg(&tar).arg(&tag).output().unwrap();
        assert!(out.status.success(), "docker save: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(remove_images(&[&tag], false), [true], "docker image rm {tag}");
        dir
    }

    /// The image id the running container of `service` was created from.
    pub fn image_of(&self, service: &str) -> String {
        let id = self.compose(&["ps", "-q", service]);
        let id = String::from_utf8_lossy(&id.stdout).trim().to_string();
        let out = Command::new("docker").args(["inspect", "--format", "{{.Image}}", &id]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// Fills a volume of `demo` with `mb` MiB of incompressible data so archiving takes a while.
pub fn add_bulk(demo: &Demo, volume: &str, mb: usize) {
    let mut data = vec![0u8; mb << 20];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for chunk in data.chunks_mut(8) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(demo.volume_path(volume).join("bulk.bin"), data).unwrap();
}

/// `cp -a`: keeps modes, symlinks and times.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    let st = Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(st.success());
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Parses the one JSON document `--json` prints on stdout.
pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", stdout(o), stderr(o)))
}

/// Extracts an archive with GNU tar (numeric owners, modes) into a new temp dir.
pub fn gnu_untar(archive: &Path) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    let mut c = Command::new("tar");
    c.arg("--numeric-owner").arg("-xpf").arg(archive).arg("-C").arg(out.path());
    match archive.extension().and_then(|e| e.to_str()) {
        Some("zst") => {
            c.arg("--zstd");
        }
        Some("gz") => {
            c.arg("-z");
        }
        _ => {}
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "GNU tar failed: {}", stderr(&o));
    out
}

/// Whether we are root (some fault tests need to drop capabilities to make "unreadable" real).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Whether `test` can mount a small tmpfs (root only); says SKIPPED when it cannot.
pub fn can_mount_tmpfs(test: &str) -> bool {
    if !is_root() {
        eprintln!("SKIPPED {test}: mounting a small tmpfs needs root");
    }
    is_root()
}

/// Wraps `cmd` so that, as root, it runs without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH: file
/// permissions then apply to it as to any user.
pub fn without_dac_override(cmd: Command) -> Command {
    if !is_root() {
        return cmd;
    }
    let mut c = Command::new("setpriv");
    c.args([
        "--inh-caps=-dac_override,-dac_read_search",
        "--bounding-set=-dac_override,-dac_read_search",
        "--",
    ]);
    c.arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.stdin(Stdio::null());
    c
}

/// A manifest for hand-made archives: no services, mounts or configs, just `entries`.
pub fn manifest(backup_id: i64, entries: Vec<EntryMeta>, compression: Compression) -> Manifest {
    Manifest {
        project_dir: None,
        images_archive: None,
        format_version: FORMAT_VERSION,
        nuwax_version: "test".into(),
        backup_id,
        kind: "manual".into(),
        project: "demo".into(),
        service_version: None,
        created_at: "2024-05-01T12:00:00Z".into(),
        compression: compression.as_str().into(),
        services_stopped: true,
        live: false,
        stop_killed: vec![],
        services: vec![],
        mounts: vec![],
        configs: vec![],
        skipped: vec![],
        entries,
        index: None,
        dumps: Vec::new(),
        dump_part_bytes: None,
        dumped_mounts: Vec::new(),
        checksums: ChecksumInfo::default(),
    }
}

/// A tmpfs of `size` mounted at `dir` for the test (another, small filesystem), unmounted when
/// dropped.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn new(dir: PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount: {}", String::from_utf8_lossy(&out.stderr));
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

/// Spawns `cmd` held at the fault point `point` (`NUWAX_TEST_PAUSE`, its pid in `pause`);
/// returns once nuwax is there.
pub fn held_at(mut cmd: Command, point: &str, pause: &Path) -> std::process::Child {
    let child = cmd.env("NUWAX_TEST_PAUSE", point).env("NUWAX_TEST_PAUSE_FILE", pause).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !pause.exists() {
        assert!(Instant::now() < deadline, "nuwax never reached {point}");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Kills nuwax where it is held and lets the pause go.
pub fn kill_held(mut child: std::process::Child, pause: &Path) {
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_file(pause);
}
