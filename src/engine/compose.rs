//! What only compose can do, behind a narrow trait of our own: create containers from the
//! compose files as they are now (`up`) and run a one-off container of a service (`run`).
//! [`ComposeCliRunner`] drives the detected compose CLI, v1 or v2, each child in its own
//! process group so that a terminal's Ctrl-C reaches nuwax alone and never aborts a compose
//! half way; [`super::fake::FakeCompose`] stands in for it in flow unit tests.

use std::time::Duration;

use async_trait::async_trait;

use super::ExecOutput;
use super::compose_cli::ComposeCli;
use crate::project::Project;

/// What `up` is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Up {
    /// `up --no-start --remove-orphans`: every service of the compose files created (changed
    /// ones recreated), none started; containers of services the files no longer define go.
    CreateAll,
    /// `up --no-start --no-deps SERVICES`: created (or recreated), left stopped.
    Create,
    /// `up -d --no-deps SERVICES`: created where missing or changed, and started.
    Start,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ComposeError {
    #[error("services must be created with the compose CLI, and {detail}")]
    Missing { detail: String },
    #[error("running {command}: {detail}")]
    Spawn { command: String, detail: String },
    #[error("{command} failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("{command} did not finish within {secs} s")]
    Timeout { command: String, secs: u64 },
}

#[async_trait]
pub trait Compose: Send + Sync {
    /// `docker compose (v2.26.1)`, for logs and `status`.
    fn describe(&self) -> String;
    /// Runs `up` in the project directory, with the project's compose files. Returns once
    /// compose is done; waiting for health is the caller's.
    async fn up(&self, project: &Project, mode: Up, services: &[String]) -> Result<(), ComposeError>;
    /// `run --rm -T SERVICE CMD...`: a one-off container of the service's image with
    /// its volumes, env and networks (compose starts what it depends on first). The container
    /// is removed when it ends, fails or times out.
    async fn run(
        &self,
        project: &Project,
        service: &str,
        cmd: &[String],
        user: Option<&str>,
        timeout: Duration,
    ) -> Result<ExecOutput, ComposeError>;
}

/// The compose CLI, detected once per command.
pub struct ComposeCliRunner {
    pub cli: ComposeCli,
    /// Where each running compose child leaves a pid file (`<state>/children`): a compose that
    /// outlives a killed nuwax (it is in a group of its own) is waited for by recovery.
    pub children: Option<std::path::PathBuf>,
}

/// A pid file for one running child, removed when it ends (or by [`wait_for_orphans`]).
struct ChildFile(Option<std::path::PathBuf>);

impl ChildFile {
    fn new(dir: Option<&std::path::Path>, pid: Option<u32>) -> ChildFile {
        let (Some(dir), Some(pid)) = (dir, pid) else { return ChildFile(None) };
        let path = dir.join(pid.to_string());
        let written = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, pid.to_string()));
        ChildFile(written.ok().map(|()| path))
    }
}

impl Drop for ChildFile {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Whether a `/proc/PID/cmdline` is compose's: `docker-compose ...` (v2's plugin, or v1 run by
/// its interpreter) or `docker compose ...`.
fn is_compose(cmdline: &[u8]) -> bool {
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| {
            let a = String::from_utf8_lossy(a);
            a.rsplit('/').next().unwrap_or_default().to_string()
        })
        .collect();
    args.iter().take(2).any(|a| a == "docker-compose")
        || (args.first().is_some_and(|a| a == "docker") && args.get(1).is_some_and(|a| a == "compose"))
}

/// Waits (up to `timeout`) for compose children a dead nuwax left running, so recovery does
/// not run compose on the same project at the same time. Returns those still running.
pub async fn wait_for_orphans(dir: &std::path::Path, timeout: Duration) -> Vec<u32> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let alive: Vec<u32> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
                // Still a compose process (not a pid reused by something else)?
                let compose = is_compose(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default());
                if !compose {
                    let _ = std::fs::remove_file(e.path());
                }
                compose.then_some(pid)
            })
            .collect();
        if alive.is_empty() || std::time::Instant::now() >= deadline {
            return alive;
        }
        tracing::warn!("waiting for compose (pid {alive:?}), which a nuwax that died had started");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

impl ComposeCliRunner {
    fn command(&self, project: &Project, args: &[&str]) -> (tokio::process::Command, String) {
        let mut std_cmd = self.cli.command(&project.dir, &project.name, &project.compose_files, args);
        // Our own process group: the terminal's SIGINT goes to nuwax, which decides.
        std::os::unix::process::CommandExt::process_group(&mut std_cmd, 0);
        std_cmd.stdin(std::process::Stdio::null());
        let shown = format!("{} {}", self.cli.command.join(" "), args.join(" "));
        (tokio::process::Command::from(std_cmd), shown)
    }
}

#[async_trait]
impl Compose for ComposeCliRunner {
    fn describe(&self) -> String {
        self.cli.display()
    }

    async fn up(&self, project: &Project, mode: Up, services: &[String]) -> Result<(), ComposeError> {
        let mut args = match mode {
            Up::CreateAll => vec!["up", "--no-start", "--no-build", "--remove-orphans"],
            Up::Create => vec!["up", "--no-start", "--no-build", "--no-deps"],
            Up::Start => vec!["up", "-d", "--no-build", "--no-deps"],
        };
        if mode != Up::CreateAll {
            if services.is_empty() {
                return Ok(());
            }
            args.extend(services.iter().map(String::as_str));
        }
        let (mut cmd, shown) = self.command(project, &args);
        tracing::info!("running {shown}");
        let spawn_err =
            |e: std::io::Error| ComposeError::Spawn { command: shown.clone(), detail: e.to_string() };
        let child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        let _file = ChildFile::new(self.children.as_deref(), child.id());
        let out = child.wait_with_output().await.map_err(spawn_err)?;
        if !out.status.success() {
            return Err(ComposeError::Failed {
                command: shown,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    async fn run(
        &self,
        project: &Project,
        service: &str,
        cmd: &[String],
        user: Option<&str>,
        timeout: Duration,
    ) -> Result<ExecOutput, ComposeError> {
        let name = run_container_name(&project.name, service);
        let mut args = vec!["run", "--rm", "-T", "--name", &name];
        if let Some(u) = user {
            args.extend(["--user", u]);
        }
        args.push(service);
        args.extend(cmd.iter().map(String::as_str));
        let (mut c, shown) = self.command(project, &args);
        tracing::info!("running {shown}");
        c.kill_on_drop(true);
        let child = c
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| ComposeError::Spawn { command: shown.clone(), detail: e.to_string() })?;
        let _file = ChildFile::new(self.children.as_deref(), child.id());
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(Ok(out)) => {
                let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
                output.push_str(&String::from_utf8_lossy(&out.stderr));
                Ok(ExecOutput { exit_code: out.status.code().map(i64::from).unwrap_or(-1), output })
            }
            Ok(Err(e)) => Err(ComposeError::Spawn { command: shown, detail: e.to_string() }),
            // The child was killed on drop; the one-off container may still run: the caller
            // removes it by name through the engine.
            Err(_) => Err(ComposeError::Timeout { command: shown, secs: timeout.as_secs() }),
        }
    }
}

/// The name [`ComposeCliRunner::run`] gives the one-off container of `service`.
pub fn run_container_name(project: &str, service: &str) -> String {
    format!("{project}-{service}-nuwax-hook-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn recovery_waits_for_a_compose_a_dead_nuwax_left_and_ignores_reused_pids() {
        let dir = tempfile::tempdir().unwrap();
        // A "compose" that runs a second, and a pid file whose process is something else.
        let mut child = std::process::Command::new("bash")
            .args(["-c", "exec -a docker-compose sleep 1"])
            .spawn()
            .unwrap();
        std::fs::write(dir.path().join(child.id().to_string()), "").unwrap();
        std::fs::write(dir.path().join(std::process::id().to_string()), "").unwrap();
        // Until bash has exec'd, the child is not "compose" yet.
        while !is_compose(&std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap_or_default()) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let started = std::time::Instant::now();
        let reaper = std::thread::spawn(move || child.wait());
        assert!(wait_for_orphans(dir.path(), Duration::from_secs(10)).await.is_empty());
        assert!(started.elapsed() >= Duration::from_millis(500), "did not wait for it");
        reaper.join().unwrap().unwrap();
        assert!(!dir.path().join(std::process::id().to_string()).exists());
    }

    #[test]
    fn compose_is_told_from_other_processes_by_its_program() {
        assert!(is_compose(b"/usr/local/lib/docker/cli-plugins/docker-compose\0compose\0up\0"));
        assert!(is_compose(b"/usr/bin/python3\0/usr/bin/docker-compose\0-p\0x\0up\0"));
        assert!(is_compose(b"docker\0compose\0up\0"));
        assert!(!is_compose(b"/target/debug/deps/nuwax-1234\0compose\0"));
        assert!(!is_compose(b""));
    }
}
