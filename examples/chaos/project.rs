//! One run's copy of the demo stack: its own compose project name, image tag, upgrade image
//! repository and directory, torn down (`down -v`, tags, directory) when dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::sh::{self, Log, Out};

/// Generous: a debug build of nuwax on a busy two-core machine.
pub const TIMEOUT: Duration = Duration::from_secs(300);

/// The services of the demo stack.
pub const SERVICES: [&str; 3] = ["db", "app", "worker"];

/// What every run shares: the binaries, the compose CLI, the images built once.
pub struct Ctx {
    pub repo: PathBuf,
    pub nuwax: PathBuf,
    /// `["docker", "compose"]` or `["docker-compose"]`.
    pub compose: Vec<String>,
    /// `v2` or `v1`, for NUWAX_COMPOSE.
    pub compose_choice: &'static str,
    /// Where runs and logs go.
    pub work: PathBuf,
    /// A prefix unique to this harness invocation (for names and tags).
    pub id: String,
    pub images: crate::images::Images,
    pub keep_failed: bool,
}

impl Ctx {
    pub fn logs(&self) -> PathBuf {
        self.work.join("logs")
    }
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A container of the project, as the engine reports it.
#[derive(Debug, Clone)]
pub struct Container {
    pub service: String,
    pub name: String,
    /// `running`, `exited`, ...
    pub state: String,
    /// `healthy`, `starting`, `none` (no healthcheck), ...
    pub health: String,
    pub image: String,
}

pub struct Project<'a> {
    pub ctx: &'a Ctx,
    pub name: String,
    /// The compose project directory (named after the project).
    pub dir: PathBuf,
    /// Its parent: packages and built files go here.
    pub run_dir: PathBuf,
    /// The v1 image tag (`NUWAX_DEMO_IMAGE`).
    pub image: String,
    /// The repository of the upgrade images (`NUWAX_DEMO_REPO`).
    pub repo: String,
    pub log: &'a Log,
    /// Left as it is at the end (`--keep-failed` and a violation).
    pub keep: bool,
}

impl<'a> Project<'a> {
    pub fn create(ctx: &'a Ctx, seed: u64, log: &'a Log) -> Result<Project<'a>> {
        let name = format!("{}s{seed}", ctx.id);
        let run_dir = ctx.work.join("runs").join(&name);
        let dir = run_dir.join(&name);
        std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
        let p = Project {
            ctx,
            image: format!("nuwax-chaos:{name}"),
            repo: format!("nuwax-chaos-{name}"),
            name,
            dir,
            run_dir,
            log,
            keep: false,
        };
        let out = sh::run(
            Command::new("cp").arg("-a").arg(ctx.repo.join("compose/demo")).arg(&p.dir),
            log,
            TIMEOUT,
        );
        ensure!(out.ok(), "copying the demo stack: {}", out.brief());
        for junk in ["backups", ".nuwax"] {
            let _ = std::fs::remove_dir_all(p.dir.join(junk));
        }
        ctx.images.tag(1, &p.image, log)?;
        Ok(p)
    }

    /// `compose ARGS` for this project, from its directory.
    pub fn compose(&self, args: &[&str]) -> Out {
        let mut c = Command::new(&self.ctx.compose[0]);
        c.args(&self.ctx.compose[1..])
            .arg("-p")
            .arg(&self.name)
            .args(args)
            .current_dir(&self.dir)
            .env_remove("COMPOSE_PROJECT_NAME")
            .env("NUWAX_DEMO_IMAGE", &self.image)
            .env("NUWAX_DEMO_REPO", &self.repo);
        sh::run(&mut c, self.log, TIMEOUT)
    }

    /// The `nuwax` binary pointed at this project, with the environment an operator's shell
    /// would hold for it.
    pub fn nuwax_cmd(&self) -> Command {
        let mut c = Command::new(&self.ctx.nuwax);
        c.arg("--project-dir")
            .arg(&self.dir)
            .current_dir(&self.run_dir)
            .env_remove("NUWAX_STORAGE_DIR")
            .env_remove("NUWAX_STATE_DIR")
            .env_remove("NUWAX_PROJECT_DIR")
            .env_remove("COMPOSE_PROJECT_NAME")
            .env_remove("NUWAX_TEST_CRASH")
            .env_remove("NUWAX_TEST_FAIL")
            .env_remove("NUWAX_TEST_SIGINT")
            .env_remove("NUWAX_RATE_LIMIT")
            .env("NUWAX_LOG", "nuwax=info")
            .env("NUWAX_COMPOSE", self.ctx.compose_choice)
            .env("NUWAX_DEMO_IMAGE", &self.image)
            .env("NUWAX_DEMO_REPO", &self.repo);
        c
    }

    pub fn nuwax(&self, args: &[&str]) -> Out {
        sh::run(self.nuwax_cmd().args(args), self.log, TIMEOUT)
    }

    /// `nuwax --json ARGS`, parsed; an error names the command and what it printed.
    pub fn nuwax_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.nuwax(&all);
        ensure!(out.ok(), "nuwax {}: {}", args.join(" "), out.brief());
        serde_json::from_str(&out.stdout)
            .with_context(|| format!("nuwax --json {}: not JSON", args.join(" ")))
    }

    /// `up -d` and every service healthy.
    pub fn up(&self) -> Result<()> {
        let out = self.compose(&["up", "-d", "--no-build"]);
        ensure!(out.ok(), "compose up: {}", out.brief());
        self.wait_healthy(&SERVICES, Duration::from_secs(90)).map_err(anyhow::Error::msg)
    }

    /// Every container of the project (by compose's label), stopped ones too.
    pub fn containers(&self) -> Vec<Container> {
        let label = format!("label=com.docker.compose.project={}", self.name);
        let ids = quiet(Command::new("docker").args(["ps", "-aq", "--filter", &label]));
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.is_empty() {
            return Vec::new();
        }
        let format = r#"{{index .Config.Labels "com.docker.compose.service"}} {{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.Image}}"#;
        let text = quiet(Command::new("docker").args(["inspect", "--format", format]).args(&ids));
        let mut v: Vec<Container> = text
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 5).then(|| Container {
                    service: f[0].into(),
                    name: f[1].trim_start_matches('/').into(),
                    state: f[2].into(),
                    health: f[3].into(),
                    image: f[4].into(),
                })
            })
            .collect();
        v.sort_by(|a, b| (&a.service, &a.name).cmp(&(&b.service, &b.name)));
        v
    }

    /// Waits until each of `services` has a running container that is healthy (or has no
    /// healthcheck); the error lists the containers as they were at the end.
    pub fn wait_healthy(&self, services: &[&str], timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let cs = self.containers();
            let ready = |s: &&str| {
                cs.iter().any(|c| {
                    c.service == *s && c.state == "running" && matches!(c.health.as_str(), "healthy" | "none")
                })
            };
            if services.iter().all(ready) {
                return Ok(());
            }
            if Instant::now() >= deadline || sh::stopping() {
                let states: Vec<String> =
                    cs.iter().map(|c| format!("{} {}/{}", c.service, c.state, c.health)).collect();
                return Err(format!("not healthy after {} s: [{}]", timeout.as_secs(), states.join(", ")));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Service -> image id of its running container.
    pub fn images(&self) -> BTreeMap<String, String> {
        self.containers().into_iter().filter(|c| c.state == "running").map(|c| (c.service, c.image)).collect()
    }

    pub fn volume(&self, key: &str) -> String {
        format!("{}_{key}", self.name)
    }

    /// The host path of a named volume of this project.
    pub fn volume_path(&self, key: &str) -> Result<PathBuf> {
        let out = quiet_out(
            Command::new("docker")
                .args(["volume", "inspect", "--format", "{{.Mountpoint}}"])
                .arg(self.volume(key)),
        );
        ensure!(out.0, "docker volume inspect {}: {}", self.volume(key), out.1);
        Ok(PathBuf::from(out.1.trim()))
    }

    pub fn storage(&self) -> PathBuf {
        self.dir.join("backups")
    }

    /// A copy of the demo package `packages/v<version>` with its image saved into it (as
    /// tests/support's `Demo::package` makes it): a directory, or with `file` the package file
    /// `nuwax package build` makes of it (with its `.sha256`).
    pub fn package(&self, version: &str, file: bool) -> Result<PathBuf> {
        let n: u32 = version.split('-').next().unwrap_or_default().parse()?;
        let dir = self.run_dir.join(format!("package-v{version}"));
        let src = self.ctx.repo.join(format!("compose/demo/packages/v{version}"));
        let out = sh::run(Command::new("cp").arg("-a").arg(&src).arg(&dir), self.log, TIMEOUT);
        ensure!(out.ok(), "copying {}: {}", src.display(), out.brief());
        std::fs::create_dir_all(dir.join("images"))?;
        let tag = format!("{}:{n}", self.repo);
        self.ctx.images.tag(n, &tag, self.log)?;
        let tar = dir.join(format!("images/nuwax-demo-{n}.tar"));
        let out =
            sh::run(Command::new("docker").arg("save").arg("-o").arg(&tar).arg(&tag), self.log, TIMEOUT);
        ensure!(out.ok(), "docker save {tag}: {}", out.brief());
        // The upgrade must load it, as on a host that never had it.
        crate::images::remove(&[tag], self.log);
        if !file {
            return Ok(dir);
        }
        let built = self.run_dir.join(format!("nuwax-demo-{version}.tar.zst"));
        let (d, b) = (dir.to_string_lossy().into_owned(), built.to_string_lossy().into_owned());
        let out = self.nuwax(&["package", "build", &d, "-o", &b]);
        ensure!(out.ok(), "nuwax package build: {}", out.brief());
        Ok(built)
    }

    /// Removes what the run made: containers, volumes, network, image tags, its directory.
    fn teardown(&self) {
        self.log.note("teardown");
        let _ = self.compose(&["down", "-v", "--remove-orphans", "--timeout", "2"]);
        // Whatever compose did not know about any more (an orphan of another version, a
        // volume or container nuwax made).
        let label = format!("label=com.docker.compose.project={}", self.name);
        let ids = quiet(Command::new("docker").args(["ps", "-aq", "--filter", &label]));
        let carriers = quiet(Command::new("docker").args([
            "ps",
            "-aq",
            "--filter",
            &format!("name=nuwax-restore-{}_", self.name),
        ]));
        let ids: Vec<&str> = ids.split_whitespace().chain(carriers.split_whitespace()).collect();
        if !ids.is_empty() {
            let _ = sh::run(Command::new("docker").args(["rm", "-f"]).args(&ids), self.log, TIMEOUT);
        }
        let vols = quiet(Command::new("docker").args(["volume", "ls", "-q", "--filter", &label]));
        let mut vols: Vec<String> = vols.split_whitespace().map(String::from).collect();
        for key in ["dbdata", "cache"] {
            if !vols.contains(&self.volume(key)) {
                vols.push(self.volume(key));
            }
        }
        let _ = sh::run(Command::new("docker").args(["volume", "rm", "-f"]).args(&vols), self.log, TIMEOUT);
        let _ = quiet(Command::new("docker").args(["network", "rm", &format!("{}_default", self.name)]));
        let keep = quiet(Command::new("docker").args([
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}}",
            &format!("nuwax-keep/{}-*", self.name),
        ]));
        let mut tags: Vec<String> = keep.split_whitespace().map(String::from).collect();
        tags.push(self.image.clone());
        for n in [2, 3] {
            tags.push(format!("{}:{n}", self.repo));
        }
        crate::images::remove(&tags, self.log);
        // Anything a run chmod-ed away must still go.
        let _ = Command::new("chmod").args(["-R", "u+rwX"]).arg(&self.run_dir).output();
        if let Err(e) = std::fs::remove_dir_all(&self.run_dir) {
            self.log.note(&format!("removing {}: {e}", self.run_dir.display()));
        }
    }

    /// How to clean up a project left for inspection.
    pub fn cleanup_hint(&self) -> String {
        format!(
            "cd {} && NUWAX_DEMO_IMAGE={} NUWAX_DEMO_REPO={} {} -p {} down -v --remove-orphans; \
             docker images 'nuwax-keep/{}-*'; docker image rm {}; rm -rf {}",
            self.dir.display(),
            self.image,
            self.repo,
            self.ctx.compose.join(" "),
            self.name,
            self.name,
            self.image,
            self.run_dir.display()
        )
    }
}

impl Drop for Project<'_> {
    fn drop(&mut self) {
        if self.keep {
            self.log.note(&format!("kept for inspection; clean up with: {}", self.cleanup_hint()));
            return;
        }
        self.teardown();
    }
}

/// Stdout of a command that is not worth logging (queries), empty when it fails.
pub fn quiet(cmd: &mut Command) -> String {
    match quiet_out(cmd) {
        (true, out) => out,
        (false, _) => String::new(),
    }
}

fn quiet_out(cmd: &mut Command) -> (bool, String) {
    match sh::detach(cmd).output() {
        Ok(o) if o.status.success() => (true, String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => (false, String::from_utf8_lossy(&o.stderr).into_owned()),
        Err(e) => (false, e.to_string()),
    }
}

/// `path` relative to `root`, for messages.
pub fn rel(root: &Path, path: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).display().to_string()
}

pub fn bail_if_stopping() -> Result<()> {
    if sh::stopping() {
        bail!("aborted (the harness was interrupted)");
    }
    Ok(())
}
