//! The container engine behind a narrow trait of our own, so flows run against the real Docker
//! engine (bollard, [`docker`]) and against a [`fake`] in unit tests with the same code.

pub mod compose;
pub mod compose_cli;
pub mod docker;
pub mod fake;
mod image_ref;
pub mod order;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::pin::Pin;

use async_trait::async_trait;

pub use docker::DockerEngine;
pub use image_ref::ImageRef;

/// Label compose puts on every container and volume of a project.
pub const LABEL_PROJECT: &str = "com.docker.compose.project";
pub const LABEL_SERVICE: &str = "com.docker.compose.service";
/// Compose v2 only: `db:service_healthy:false,cache:service_started:true`.
pub const LABEL_DEPENDS_ON: &str = "com.docker.compose.depends_on";
pub const LABEL_VOLUME: &str = "com.docker.compose.volume";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error("cannot reach the Docker engine at {host}: {detail}")]
    Unreachable { host: String, detail: String },
    #[error("{op} {target}: {detail}")]
    Api { op: &'static str, target: String, detail: String },
    #[error("{target}: not found")]
    NotFound { target: String },
}

pub type Result<T> = std::result::Result<T, EngineError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Starting,
    Healthy,
    Unhealthy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountType {
    Volume,
    Bind,
    Other,
}

#[derive(Debug, Clone)]
pub struct Mount {
    pub kind: MountType,
    /// Volume name (volumes only).
    pub name: Option<String>,
    /// Host path: the bind source, or the volume's mountpoint as the engine reports it.
    pub source: PathBuf,
    pub destination: String,
}

/// One container of the project, as the engine reports it.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub service: String,
    pub state: State,
    pub health: Option<Health>,
    /// Whether the container defines a healthcheck at all.
    pub has_healthcheck: bool,
    /// The image reference it was created from (`Config.Image`).
    pub image: String,
    /// The image id it runs (`sha256:...`).
    pub image_id: String,
    pub mounts: Vec<Mount>,
    /// From compose v2's depends_on label.
    pub depends_on: BTreeSet<String>,
    /// Seconds, from `Config.StopTimeout` (compose's `stop_grace_period`).
    pub stop_timeout: Option<u64>,
    pub restart_count: i64,
    /// IP addresses on the container's networks (what probes of a service connect to).
    pub ips: Vec<String>,
    /// The exit code of its last run, once it has exited.
    pub exit_code: Option<i64>,
    /// `no`, `always`, `unless-stopped`, `on-failure` (from its host config).
    pub restart_policy: Option<String>,
    /// The process it runs: entrypoint and command as the engine resolved them (`Path` + `Args`).
    pub command: Vec<String>,
    /// The names of its environment variables (never their values: they hold passwords).
    pub env_names: BTreeSet<String>,
    /// Its labels (compose's and the operator's, e.g. `nuwax.backup`).
    pub labels: BTreeMap<String, String>,
}

impl Container {
    pub fn is_running(&self) -> bool {
        matches!(self.state, State::Running | State::Restarting)
    }

    /// Running, and healthy where it has a healthcheck.
    pub fn is_ready(&self) -> bool {
        self.state == State::Running && (!self.has_healthcheck || self.health == Some(Health::Healthy))
    }
}

/// Idempotent outcomes: stopping a stopped container is not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    AlreadyInState,
}

#[derive(Debug, Clone)]
pub struct EngineInfo {
    pub host: String,
    pub version: String,
    pub api_version: String,
}

/// What it takes to create a volume again as it is: the engine's own description.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VolumeSpec {
    pub name: String,
    pub driver: String,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
}

/// What a command run in a container ([`Engine::exec`]) left.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExecOutput {
    pub exit_code: i64,
    /// stdout and stderr, interleaved as they came.
    pub output: String,
}

/// A tar stream of a path inside a container (the engine's archive API).
pub type TarStream = Pin<Box<dyn tokio::io::AsyncRead + Send>>;

/// How a command run by [`Engine::exec_stream`] ended.
#[derive(Debug, Clone)]
pub struct ExecEnd {
    pub exit_code: i64,
    /// The end of its stderr (at most [`STDERR_KEPT`] bytes), for the error message.
    pub stderr: String,
}

/// How much of a streamed command's stderr is kept.
pub const STDERR_KEPT: usize = 16 * 1024;

/// A command running in a container: its stdout, read as it comes (the command waits while
/// nobody reads: the engine's connection carries the backpressure), then how it ended.
pub struct ExecStream {
    pub stdout: TarStream,
    /// Resolves once stdout is done: the exit code and the end of stderr.
    pub ended: Pin<Box<dyn std::future::Future<Output = Result<ExecEnd>> + Send>>,
}

#[async_trait]
pub trait Engine: Send + Sync {
    async fn info(&self) -> Result<EngineInfo>;
    /// Every container (running or not) labelled with the project.
    async fn project_containers(&self, project: &str) -> Result<Vec<Container>>;
    async fn inspect(&self, id: &str) -> Result<Container>;
    /// Volume names labelled with the project.
    async fn project_volumes(&self, project: &str) -> Result<Vec<String>>;
    async fn volume_mountpoint(&self, name: &str) -> Result<PathBuf>;
    async fn stop(&self, id: &str, timeout_secs: u64) -> Result<Outcome>;
    /// Freezes every process of a running container (the cgroup freezer): nothing runs, and
    /// nothing restarts either.
    async fn pause(&self, id: &str) -> Result<Outcome>;
    /// Runs the container: starts a stopped one, unpauses a paused one.
    async fn start(&self, id: &str) -> Result<Outcome>;
    /// `GET /containers/{id}/archive?path=...`: entries are named `<basename of path>/...`.
    async fn export_path(&self, id: &str, path: &str) -> Result<TarStream>;
    /// The image id a reference (name:tag or id) resolves to, `None` when absent.
    async fn image_id(&self, reference: &str) -> Result<Option<String>>;
    /// Points `repo:tag` at `image` (an id or reference).
    async fn tag_image(&self, image: &str, repo: &str, tag: &str) -> Result<()>;
    /// Removes one tag (never the image's layers while other tags or containers use them).
    async fn untag_image(&self, reference: &str) -> Result<Outcome>;
    /// `docker save` of the given images (ids or references), as a tar stream.
    async fn save_images(&self, images: &[String]) -> Result<TarStream>;
    /// `docker load` of a file written by [`Engine::save_images`].
    async fn load_images(&self, path: &Path) -> Result<()>;
    /// The volume's driver, labels and options; `None` when it does not exist.
    async fn volume_spec(&self, name: &str) -> Result<Option<VolumeSpec>>;
    async fn create_volume(&self, spec: &VolumeSpec) -> Result<()>;
    /// Removes a volume no container refers to any more.
    async fn remove_volume(&self, name: &str) -> Result<Outcome>;
    /// Removes a stopped container (never its volumes).
    async fn remove_container(&self, id: &str) -> Result<Outcome>;
    /// Creates, and never starts, a container named `name` from `image` with `volume` mounted
    /// at `path` (no copy of the image's content into it): the target of [`Engine::upload`].
    async fn create_carrier(&self, name: &str, image: &str, volume: &str, path: &str) -> Result<String>;
    /// `PUT /containers/{id}/archive?path=...` of the tar file `tar`: works on stopped
    /// containers and writes through their volumes, keeping the tar's owners and modes.
    async fn upload(&self, id: &str, path: &str, tar: &Path) -> Result<()>;
    /// Runs `cmd` in the running container `id` and waits for it to end.
    async fn exec(&self, id: &str, cmd: &[String], user: Option<&str>) -> Result<ExecOutput>;
    /// Starts `cmd` in the running container `id` and hands over its stdout as a stream.
    async fn exec_stream(&self, id: &str, cmd: &[String], user: Option<&str>) -> Result<ExecStream>;
    /// Runs `cmd` in the running container `id` with `input` as its stdin (closed at the
    /// input's end), and waits for it to end. The output keeps its last [`STDERR_KEPT`] bytes.
    async fn exec_stdin(
        &self,
        id: &str,
        cmd: &[String],
        user: Option<&str>,
        input: TarStream,
    ) -> Result<ExecOutput>;
}

/// The tag nuwax puts on each service's image when a backup is made, so that pruning cannot
/// remove what a rollback to that backup needs: `nuwax-keep/<project>-<service>:backup-<id>`.
pub fn keep_tag(project: &str, service: &str, backup_id: i64) -> (String, String) {
    let clean = |s: &str| -> String {
        s.to_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '-' })
            .collect()
    };
    (format!("nuwax-keep/{}-{}", clean(project), clean(service)), format!("backup-{backup_id}"))
}
