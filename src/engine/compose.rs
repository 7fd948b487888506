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
        let out = cmd
            .output()
            .await
            .map_err(|e| ComposeError::Spawn { command: shown.clone(), detail: e.to_string() })?;
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
