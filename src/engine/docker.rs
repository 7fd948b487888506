//! The real engine: Docker through bollard, API version negotiated.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, ExecConfig, HealthStatusEnum, HostConfig,
    Mount as ApiMount, MountType as ApiMountType, MountVolumeOptions, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, DownloadFromContainerOptions, InspectContainerOptions, ListContainersOptions,
    ListVolumesOptions, RemoveContainerOptions, RemoveImageOptions, RemoveVolumeOptions,
    StartContainerOptions, StopContainerOptions, TagImageOptions, UploadToContainerOptions,
};
use futures_util::{StreamExt, TryStreamExt};

use super::*;

/// What an attached exec outputs.
type ExecOutputStream = std::pin::Pin<
    Box<
        dyn futures_util::Stream<Item = std::result::Result<bollard::container::LogOutput, BollardError>>
            + Send,
    >,
>;

pub struct DockerEngine {
    docker: Docker,
    host: String,
}

impl DockerEngine {
    /// Creates and starts `cmd` in container `id`, attached: its exec id, a name for errors,
    /// its output (stdout and stderr) and its stdin (open when `stdin`).
    async fn attach(
        &self,
        id: &str,
        cmd: &[String],
        user: Option<&str>,
        stdin: bool,
    ) -> Result<(String, String, ExecOutputStream, std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>)>
    {
        let config = ExecConfig {
            attach_stdin: Some(stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(cmd.to_vec()),
            user: user.map(str::to_string),
            ..Default::default()
        };
        let target = format!("{id}: {}", cmd.first().map(String::as_str).unwrap_or_default());
        let created = self.docker.create_exec(id, config).await.map_err(api("exec", &target))?;
        let started = self
            .docker
            .start_exec(&created.id, Some(StartExecOptions { detach: false, ..Default::default() }))
            .await
            .map_err(api("exec", &target))?;
        match started {
            StartExecResults::Attached { output, input } => Ok((created.id, target, output, input)),
            StartExecResults::Detached => {
                Err(EngineError::Api { op: "exec", target, detail: "the engine did not attach".into() })
            }
        }
    }

    /// Connect through `DOCKER_HOST` or the default socket and negotiate the API version.
    /// Fails with [`EngineError::Unreachable`] when nothing answers.
    pub async fn connect() -> Result<Self> {
        let host = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
        let unreachable =
            |e: BollardError| EngineError::Unreachable { host: host.clone(), detail: e.to_string() };
        let docker = Docker::connect_with_defaults().map_err(unreachable)?;
        let docker = docker.negotiate_version().await.map_err(unreachable)?;
        docker.ping().await.map_err(unreachable)?;
        Ok(Self { docker, host })
    }
}

fn api<'a>(op: &'static str, target: &'a str) -> impl Fn(BollardError) -> EngineError + 'a {
    move |e| match e {
        BollardError::DockerResponseServerError { status_code: 404, .. } => {
            EngineError::NotFound { target: target.to_string() }
        }
        other => EngineError::Api { op, target: target.to_string(), detail: other.to_string() },
    }
}

fn label_filter(key: &str, value: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), vec![format!("{key}={value}")])])
}

#[async_trait]
impl Engine for DockerEngine {
    async fn info(&self) -> Result<EngineInfo> {
        let v = self.docker.version().await.map_err(api("version", "engine"))?;
        Ok(EngineInfo {
            host: self.host.clone(),
            version: v.version.unwrap_or_default(),
            api_version: v.api_version.unwrap_or_default(),
        })
    }

    async fn project_containers(&self, project: &str) -> Result<Vec<Container>> {
        let opts = ListContainersOptions {
            all: true,
            filters: Some(label_filter(LABEL_PROJECT, project)),
            ..Default::default()
        };
        let list = self.docker.list_containers(Some(opts)).await.map_err(api("list containers", project))?;
        let mut out = Vec::with_capacity(list.len());
        for c in list {
            let Some(id) = c.id else { continue };
            match self.inspect(&id).await {
                Ok(c) => out.push(c),
                // Removed between list and inspect: not ours to care about any more.
                Err(EngineError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| (&a.service, &a.name).cmp(&(&b.service, &b.name)));
        Ok(out)
    }

    async fn inspect(&self, id: &str) -> Result<Container> {
        let r = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(api("inspect container", id))?;
        let config = r.config.unwrap_or_default();
        let labels = config.labels.clone().unwrap_or_default();
        let command: Vec<String> =
            r.path.clone().into_iter().chain(r.args.clone().unwrap_or_default()).collect();
        let env_names: BTreeSet<String> = config
            .env
            .iter()
            .flatten()
            .map(|kv| kv.split_once('=').map_or(kv.as_str(), |(k, _)| k).to_string())
            .collect();
        let st = r.state.unwrap_or_default();
        let exit_code = st.exit_code;
        let state = match st.status {
            Some(ContainerStateStatusEnum::CREATED) => State::Created,
            Some(ContainerStateStatusEnum::RUNNING) => State::Running,
            Some(ContainerStateStatusEnum::PAUSED) => State::Paused,
            Some(ContainerStateStatusEnum::RESTARTING) => State::Restarting,
            Some(ContainerStateStatusEnum::REMOVING) => State::Removing,
            Some(ContainerStateStatusEnum::EXITED) => State::Exited,
            Some(ContainerStateStatusEnum::DEAD) => State::Dead,
            _ => State::Unknown,
        };
        let health = st.health.and_then(|h| match h.status {
            Some(HealthStatusEnum::STARTING) => Some(Health::Starting),
            Some(HealthStatusEnum::HEALTHY) => Some(Health::Healthy),
            Some(HealthStatusEnum::UNHEALTHY) => Some(Health::Unhealthy),
            _ => None,
        });
        let has_healthcheck =
            config.healthcheck.and_then(|h| h.test).is_some_and(|t| !t.is_empty() && t[0] != "NONE");
        let mounts = r
            .mounts
            .unwrap_or_default()
            .into_iter()
            .map(|m| Mount {
                kind: match m.typ.as_deref() {
                    Some("volume") => MountType::Volume,
                    Some("bind") => MountType::Bind,
                    _ => MountType::Other,
                },
                name: m.name,
                source: PathBuf::from(m.source.unwrap_or_default()),
                destination: m.destination.unwrap_or_default(),
            })
            .collect();
        let depends_on: BTreeSet<String> = labels
            .get(LABEL_DEPENDS_ON)
            .map(|v| {
                v.split(',')
                    .filter_map(|d| d.split(':').next())
                    .filter(|d| !d.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Container {
            id: r.id.unwrap_or_else(|| id.to_string()),
            name: r.name.unwrap_or_default().trim_start_matches('/').to_string(),
            service: labels.get(LABEL_SERVICE).cloned().unwrap_or_default(),
            state,
            health,
            has_healthcheck,
            image: config.image.unwrap_or_default(),
            image_id: r.image.unwrap_or_default(),
            mounts,
            depends_on,
            command,
            env_names,
            labels: labels.clone().into_iter().collect(),
            stop_timeout: config.stop_timeout.and_then(|t| u64::try_from(t).ok()),
            restart_count: r.restart_count.unwrap_or(0),
            exit_code,
            restart_policy: r
                .host_config
                .and_then(|h| h.restart_policy)
                .and_then(|p| p.name)
                .map(|n| n.to_string()),
            ips: r
                .network_settings
                .and_then(|n| n.networks)
                .into_iter()
                .flatten()
                .filter_map(|(_, n)| n.ip_address.filter(|ip| !ip.is_empty()))
                .collect(),
        })
    }

    async fn project_volumes(&self, project: &str) -> Result<Vec<String>> {
        let opts = ListVolumesOptions { filters: Some(label_filter(LABEL_PROJECT, project)) };
        let r = self.docker.list_volumes(Some(opts)).await.map_err(api("list volumes", project))?;
        let mut names: Vec<String> = r.volumes.unwrap_or_default().into_iter().map(|v| v.name).collect();
        names.sort();
        Ok(names)
    }

    async fn volume_mountpoint(&self, name: &str) -> Result<PathBuf> {
        let v = self.docker.inspect_volume(name).await.map_err(api("inspect volume", name))?;
        Ok(PathBuf::from(v.mountpoint))
    }

    async fn stop(&self, id: &str, timeout_secs: u64) -> Result<Outcome> {
        let opts = StopContainerOptions { t: Some(timeout_secs.min(i32::MAX as u64) as i32), signal: None };
        // The engine answers 304 for an already stopped container, which bollard reports as
        // success; ask first so callers can tell the two apart.
        if !self.inspect(id).await?.is_running() {
            return Ok(Outcome::AlreadyInState);
        }
        self.docker.stop_container(id, Some(opts)).await.map_err(api("stop container", id))?;
        Ok(Outcome::Done)
    }

    async fn pause(&self, id: &str) -> Result<Outcome> {
        if self.inspect(id).await?.state != State::Running {
            return Ok(Outcome::AlreadyInState);
        }
        self.docker.pause_container(id).await.map_err(api("pause container", id))?;
        Ok(Outcome::Done)
    }

    async fn start(&self, id: &str) -> Result<Outcome> {
        match self.inspect(id).await?.state {
            State::Running => return Ok(Outcome::AlreadyInState),
            State::Paused => {
                self.docker.unpause_container(id).await.map_err(api("unpause container", id))?;
                return Ok(Outcome::Done);
            }
            _ => {}
        }
        self.docker
            .start_container(id, None::<StartContainerOptions>)
            .await
            .map_err(api("start container", id))?;
        Ok(Outcome::Done)
    }

    async fn export_path(&self, id: &str, path: &str) -> Result<TarStream> {
        let opts = DownloadFromContainerOptions { path: path.to_string() };
        let stream = self.docker.download_from_container(id, Some(opts)).map_err(std::io::Error::other);
        Ok(Box::pin(tokio_util::io::StreamReader::new(stream)))
    }

    async fn image_id(&self, reference: &str) -> Result<Option<String>> {
        match self.docker.inspect_image(reference).await {
            Ok(i) => Ok(i.id),
            Err(BollardError::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
            Err(e) => Err(api("inspect image", reference)(e)),
        }
    }

    async fn tag_image(&self, image: &str, repo: &str, tag: &str) -> Result<()> {
        let opts = TagImageOptions { repo: Some(repo.to_string()), tag: Some(tag.to_string()) };
        self.docker.tag_image(image, Some(opts)).await.map_err(api("tag image", image))
    }

    async fn untag_image(&self, reference: &str) -> Result<Outcome> {
        let opts = RemoveImageOptions { force: false, noprune: true, platforms: None };
        match self.docker.remove_image(reference, Some(opts), None).await {
            Ok(_) => Ok(Outcome::Done),
            Err(BollardError::DockerResponseServerError { status_code: 404, .. }) => {
                Ok(Outcome::AlreadyInState)
            }
            Err(e) => Err(api("remove image tag", reference)(e)),
        }
    }

    async fn save_images(&self, images: &[String]) -> Result<TarStream> {
        let refs: Vec<&str> = images.iter().map(String::as_str).collect();
        let stream = self.docker.export_images(&refs).map_err(std::io::Error::other);
        Ok(Box::pin(tokio_util::io::StreamReader::new(stream)))
    }

    async fn load_images(&self, path: &Path) -> Result<()> {
        let target = path.display().to_string();
        let file = tokio::fs::File::open(path).await.map_err(|e| EngineError::Api {
            op: "load images",
            target: target.clone(),
            detail: e.to_string(),
        })?;
        let body = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
        let opts = bollard::query_parameters::ImportImageOptions { quiet: true, platform: None };
        let mut progress = self.docker.import_image_stream(opts, body, None);
        while let Some(item) = progress.next().await {
            item.map_err(api("load images", &target))?;
        }
        Ok(())
    }

    async fn volume_spec(&self, name: &str) -> Result<Option<VolumeSpec>> {
        match self.docker.inspect_volume(name).await {
            Ok(v) => Ok(Some(VolumeSpec {
                name: v.name,
                driver: v.driver,
                labels: v.labels.into_iter().collect(),
                options: v.options.into_iter().collect(),
            })),
            Err(BollardError::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
            Err(e) => Err(api("inspect volume", name)(e)),
        }
    }

    async fn create_volume(&self, spec: &VolumeSpec) -> Result<()> {
        let req = VolumeCreateRequest {
            name: Some(spec.name.clone()),
            driver: Some(spec.driver.clone()).filter(|d| !d.is_empty()),
            driver_opts: Some(spec.options.clone().into_iter().collect()),
            labels: Some(spec.labels.clone().into_iter().collect()),
            ..Default::default()
        };
        self.docker.create_volume(req).await.map_err(api("create volume", &spec.name))?;
        Ok(())
    }

    async fn remove_volume(&self, name: &str) -> Result<Outcome> {
        match self.docker.remove_volume(name, Some(RemoveVolumeOptions { force: false })).await {
            Ok(()) => Ok(Outcome::Done),
            Err(BollardError::DockerResponseServerError { status_code: 404, .. }) => {
                Ok(Outcome::AlreadyInState)
            }
            Err(e) => Err(api("remove volume", name)(e)),
        }
    }

    async fn remove_container(&self, id: &str) -> Result<Outcome> {
        let opts = RemoveContainerOptions { v: false, force: false, link: false };
        match self.docker.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(Outcome::Done),
            Err(BollardError::DockerResponseServerError { status_code: 404, .. }) => {
                Ok(Outcome::AlreadyInState)
            }
            Err(e) => Err(api("remove container", id)(e)),
        }
    }

    async fn create_carrier(&self, name: &str, image: &str, volume: &str, path: &str) -> Result<String> {
        let mount = ApiMount {
            target: Some(path.to_string()),
            source: Some(volume.to_string()),
            typ: Some(ApiMountType::VOLUME),
            volume_options: Some(MountVolumeOptions { no_copy: Some(true), ..Default::default() }),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            // Never started: the command only has to be syntactically present.
            cmd: Some(vec!["/nuwax-carrier-is-never-started".to_string()]),
            entrypoint: Some(vec![]),
            network_disabled: Some(true),
            labels: Some(HashMap::from([("nuwax.carrier".to_string(), volume.to_string())])),
            host_config: Some(HostConfig { mounts: Some(vec![mount]), ..Default::default() }),
            ..Default::default()
        };
        let opts = CreateContainerOptions { name: Some(name.to_string()), ..Default::default() };
        let r =
            self.docker.create_container(Some(opts), body).await.map_err(api("create container", name))?;
        Ok(r.id)
    }

    async fn upload(&self, id: &str, path: &str, tar: &Path) -> Result<()> {
        let target = format!("{id}:{path}");
        let file = tokio::fs::File::open(tar).await.map_err(|e| EngineError::Api {
            op: "upload",
            target: target.clone(),
            detail: format!("{}: {e}", tar.display()),
        })?;
        let body = bollard::body_try_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
        let opts = UploadToContainerOptions { path: path.to_string(), ..Default::default() };
        self.docker.upload_to_container(id, Some(opts), body).await.map_err(api("upload", &target))
    }

    async fn exec(&self, id: &str, cmd: &[String], user: Option<&str>) -> Result<ExecOutput> {
        let config = ExecConfig {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(cmd.to_vec()),
            user: user.map(str::to_string),
            ..Default::default()
        };
        let created = self.docker.create_exec(id, config).await.map_err(api("exec", id))?;
        let mut output = String::new();
        let started = self
            .docker
            .start_exec(&created.id, Some(StartExecOptions { detach: false, ..Default::default() }))
            .await
            .map_err(api("exec", id))?;
        if let StartExecResults::Attached { output: mut stream, .. } = started {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(api("exec", id))?;
                output.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            }
        }
        let inspected = self.docker.inspect_exec(&created.id).await.map_err(api("exec", id))?;
        Ok(ExecOutput { exit_code: inspected.exit_code.unwrap_or(-1), output })
    }

    async fn exec_stream(&self, id: &str, cmd: &[String], user: Option<&str>) -> Result<ExecStream> {
        let (exec_id, target, mut stream, _) = self.attach(id, cmd, user, false).await?;
        // A few chunks in flight: when nobody reads, the pump stops polling the engine, whose
        // connection then fills and the command blocks on its stdout.
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Result<ExecEnd>>();
        let docker = self.docker.clone();
        tokio::spawn(async move {
            let mut stderr: Vec<u8> = Vec::new();
            let mut failed: Option<EngineError> = None;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(bollard::container::LogOutput::StdOut { message }) => {
                        if tx.send(Ok(message)).await.is_err() {
                            // The reader gave up: stop pumping; the command gets EPIPE.
                            break;
                        }
                    }
                    Ok(bollard::container::LogOutput::StdErr { message }) => {
                        stderr.extend_from_slice(&message);
                        if stderr.len() > 2 * STDERR_KEPT {
                            stderr.drain(..stderr.len() - STDERR_KEPT);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                        failed = Some(EngineError::Api {
                            op: "exec",
                            target: target.clone(),
                            detail: e.to_string(),
                        });
                        break;
                    }
                }
            }
            drop(tx);
            let end = match failed {
                Some(e) => Err(e),
                None => docker.inspect_exec(&exec_id).await.map_err(api("exec", &target)).map(|i| {
                    let from = stderr.len().saturating_sub(STDERR_KEPT);
                    ExecEnd {
                        exit_code: i.exit_code.unwrap_or(-1),
                        stderr: String::from_utf8_lossy(&stderr[from..]).into_owned(),
                    }
                }),
            };
            let _ = done_tx.send(end);
        });
        let stdout =
            tokio_util::io::StreamReader::new(futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|chunk| (chunk, rx))
            }));
        let ended = Box::pin(async move {
            done_rx.await.unwrap_or_else(|_| {
                Err(EngineError::Api {
                    op: "exec",
                    target: "stream".into(),
                    detail: "the exec pump ended early".into(),
                })
            })
        });
        Ok(ExecStream { stdout: Box::pin(stdout), ended })
    }

    async fn exec_stdin(
        &self,
        id: &str,
        cmd: &[String],
        user: Option<&str>,
        mut input: TarStream,
    ) -> Result<ExecOutput> {
        use tokio::io::AsyncWriteExt;
        let (exec_id, target, mut stream, mut stdin) = self.attach(id, cmd, user, true).await?;
        // Feed stdin while the output is read: a command that writes a lot before it reads all
        // its input must not block on a full pipe.
        let feed = async {
            let copied = tokio::io::copy(&mut input, &mut stdin).await;
            // Half-close: the command sees the end of its input.
            let closed = stdin.shutdown().await;
            copied.and(closed)
        };
        let collect = async {
            let mut output: Vec<u8> = Vec::new();
            while let Some(chunk) = stream.next().await {
                output.extend_from_slice(&chunk.map_err(api("exec", &target))?.into_bytes());
                if output.len() > 2 * STDERR_KEPT {
                    output.drain(..output.len() - STDERR_KEPT);
                }
            }
            Ok::<_, EngineError>(output)
        };
        let (fed, output) = tokio::join!(feed, collect);
        let output = output?;
        let from = output.len().saturating_sub(STDERR_KEPT);
        let output = String::from_utf8_lossy(&output[from..]).into_owned();
        let inspected = self.docker.inspect_exec(&exec_id).await.map_err(api("exec", &target))?;
        let exit_code = inspected.exit_code.unwrap_or(-1);
        if let Err(e) = fed {
            // A command that stopped reading early says why in its output and exit code.
            if exit_code == 0 {
                return Err(EngineError::Api { op: "exec", target, detail: format!("feeding stdin: {e}") });
            }
        }
        Ok(ExecOutput { exit_code, output })
    }
}
