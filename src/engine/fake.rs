//! An in-memory engine for unit tests of the flows. It models only what the flows rely on
//! (state changes, call order, injected failures); behaviour of Docker itself is tested against
//! the real engine in `tests/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;

use super::*;

#[derive(Default)]
pub struct FakeEngine {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    containers: Vec<Container>,
    volumes: BTreeMap<String, PathBuf>,
    calls: Vec<String>,
    fail_start: BTreeSet<String>,
    exec_exit: BTreeMap<String, i64>,
    exec_stdout: BTreeMap<String, Vec<u8>>,
    exec_input: Vec<Vec<u8>>,
    tags: BTreeMap<String, String>,
}

impl FakeEngine {
    pub fn new() -> Self {
        Self::default()
    }

    /// A running container of `service` with no mounts, as the fake reports them.
    pub fn container(service: &str) -> Container {
        Container {
            id: format!("id-{service}"),
            name: format!("fake-{service}-1"),
            service: service.to_string(),
            state: State::Running,
            health: None,
            has_healthcheck: false,
            image: format!("{service}:latest"),
            image_id: format!("sha256:{service}"),
            mounts: Vec::new(),
            depends_on: BTreeSet::new(),
            stop_timeout: None,
            restart_count: 0,
            ips: Vec::new(),
            exit_code: None,
            restart_policy: None,
            command: vec![service.to_string()],
            env_names: BTreeSet::new(),
            labels: BTreeMap::new(),
        }
    }

    /// Adds a container of service `service`, running or not, with the given mounts.
    pub fn add(&self, service: &str, running: bool, depends_on: &[&str], mounts: Vec<Mount>) {
        let mut inner = self.inner.lock().unwrap();
        let n = inner.containers.len();
        inner.containers.push(Container {
            id: format!("id-{service}-{n}"),
            state: if running { State::Running } else { State::Exited },
            mounts,
            depends_on: depends_on.iter().map(|s| s.to_string()).collect(),
            ..Self::container(service)
        });
    }

    pub fn add_volume(&self, name: &str, mountpoint: PathBuf) {
        self.inner.lock().unwrap().volumes.insert(name.to_string(), mountpoint);
    }

    /// Changes the service's containers as `f` says (state, health, exit code, ...).
    pub fn update(&self, service: &str, f: impl Fn(&mut Container)) {
        self.inner.lock().unwrap().containers.iter_mut().filter(|c| c.service == service).for_each(f);
    }

    /// Makes `exec` in the service's containers end with `code`.
    /// What each `exec_stdin` was given, in order.
    pub fn exec_input(&self) -> Vec<Vec<u8>> {
        self.inner.lock().unwrap().exec_input.clone()
    }

    /// What a streamed exec in `service` writes to stdout.
    pub fn set_exec_stdout(&self, service: &str, bytes: &[u8]) {
        self.inner.lock().unwrap().exec_stdout.insert(service.to_string(), bytes.to_vec());
    }

    pub fn exec_exit(&self, service: &str, code: i64) {
        self.inner.lock().unwrap().exec_exit.insert(service.to_string(), code);
    }

    /// Makes `start` of the service's containers fail.
    pub fn fail_start(&self, service: &str) {
        self.inner.lock().unwrap().fail_start.insert(service.to_string());
    }

    /// Tag → image id, for the tags made through the engine.
    pub fn tags(&self) -> BTreeMap<String, String> {
        self.inner.lock().unwrap().tags.clone()
    }

    /// `stop db`, `start app`, ... in call order.
    pub fn calls(&self) -> Vec<String> {
        self.inner.lock().unwrap().calls.clone()
    }

    pub fn running(&self) -> Vec<String> {
        let inner = self.inner.lock().unwrap();
        inner.containers.iter().filter(|c| c.is_running()).map(|c| c.service.clone()).collect()
    }

    fn with<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Container, &mut Vec<String>, &BTreeSet<String>) -> T,
    ) -> Result<T> {
        let mut inner = self.inner.lock().unwrap();
        let Inner { containers, calls, fail_start, .. } = &mut *inner;
        let c = containers
            .iter_mut()
            .find(|c| c.id == id)
            .ok_or_else(|| EngineError::NotFound { target: id.to_string() })?;
        Ok(f(c, calls, fail_start))
    }
}

#[async_trait]
impl Engine for FakeEngine {
    async fn info(&self) -> Result<EngineInfo> {
        Ok(EngineInfo { host: "fake".into(), version: "0".into(), api_version: "0".into() })
    }

    async fn project_containers(&self, _project: &str) -> Result<Vec<Container>> {
        Ok(self.inner.lock().unwrap().containers.clone())
    }

    async fn inspect(&self, id: &str) -> Result<Container> {
        self.with(id, |c, _, _| c.clone())
    }

    async fn project_volumes(&self, _project: &str) -> Result<Vec<String>> {
        Ok(self.inner.lock().unwrap().volumes.keys().cloned().collect())
    }

    async fn volume_mountpoint(&self, name: &str) -> Result<PathBuf> {
        self.inner
            .lock()
            .unwrap()
            .volumes
            .get(name)
            .cloned()
            .ok_or_else(|| EngineError::NotFound { target: name.to_string() })
    }

    async fn stop(&self, id: &str, _timeout_secs: u64) -> Result<Outcome> {
        self.with(id, |c, calls, _| {
            calls.push(format!("stop {}", c.service));
            if c.is_running() {
                c.state = State::Exited;
                Outcome::Done
            } else {
                Outcome::AlreadyInState
            }
        })
    }

    async fn pause(&self, id: &str) -> Result<Outcome> {
        self.with(id, |c, calls, _| {
            calls.push(format!("pause {}", c.service));
            if c.is_running() {
                c.state = State::Paused;
                Outcome::Done
            } else {
                Outcome::AlreadyInState
            }
        })
    }

    async fn start(&self, id: &str) -> Result<Outcome> {
        self.with(id, |c, calls, fail| {
            calls.push(format!("start {}", c.service));
            if fail.contains(&c.service) {
                return Err(EngineError::Api {
                    op: "start container",
                    target: c.name.clone(),
                    detail: "injected failure".into(),
                });
            }
            if c.is_running() {
                return Ok(Outcome::AlreadyInState);
            }
            c.state = State::Running;
            Ok(Outcome::Done)
        })?
    }

    async fn export_path(&self, id: &str, _path: &str) -> Result<TarStream> {
        Err(EngineError::Api {
            op: "export",
            target: id.to_string(),
            detail: "not supported by the fake engine".into(),
        })
    }

    async fn image_id(&self, reference: &str) -> Result<Option<String>> {
        let inner = self.inner.lock().unwrap();
        Ok(inner.tags.get(reference).cloned().or_else(|| {
            inner
                .containers
                .iter()
                .find(|c| c.image == reference || c.image_id == reference)
                .map(|c| c.image_id.clone())
        }))
    }

    async fn tag_image(&self, image: &str, repo: &str, tag: &str) -> Result<()> {
        let id =
            self.image_id(image).await?.ok_or_else(|| EngineError::NotFound { target: image.to_string() })?;
        let mut inner = self.inner.lock().unwrap();
        inner.calls.push(format!("tag {repo}:{tag}"));
        inner.tags.insert(format!("{repo}:{tag}"), id);
        Ok(())
    }

    async fn untag_image(&self, reference: &str) -> Result<Outcome> {
        let mut inner = self.inner.lock().unwrap();
        inner.calls.push(format!("untag {reference}"));
        Ok(if inner.tags.remove(reference).is_some() { Outcome::Done } else { Outcome::AlreadyInState })
    }

    async fn save_images(&self, _images: &[String]) -> Result<TarStream> {
        Err(EngineError::Api {
            op: "save images",
            target: "fake".into(),
            detail: "not supported by the fake engine".into(),
        })
    }

    async fn load_images(&self, path: &Path) -> Result<()> {
        Err(EngineError::Api {
            op: "load images",
            target: path.display().to_string(),
            detail: "not supported by the fake engine".into(),
        })
    }

    async fn volume_spec(&self, name: &str) -> Result<Option<VolumeSpec>> {
        let known = self.inner.lock().unwrap().volumes.contains_key(name);
        Ok(known.then(|| VolumeSpec {
            name: name.to_string(),
            driver: "local".into(),
            labels: BTreeMap::new(),
            options: BTreeMap::new(),
        }))
    }

    async fn create_volume(&self, spec: &VolumeSpec) -> Result<()> {
        let mut inner = self.inner.lock().unwrap();
        inner.calls.push(format!("create volume {}", spec.name));
        inner.volumes.insert(spec.name.clone(), PathBuf::from("/nonexistent").join(&spec.name));
        Ok(())
    }

    async fn remove_volume(&self, name: &str) -> Result<Outcome> {
        let mut inner = self.inner.lock().unwrap();
        inner.calls.push(format!("remove volume {name}"));
        Ok(if inner.volumes.remove(name).is_some() { Outcome::Done } else { Outcome::AlreadyInState })
    }

    async fn remove_container(&self, id: &str) -> Result<Outcome> {
        let mut inner = self.inner.lock().unwrap();
        let before = inner.containers.len();
        inner.containers.retain(|c| c.id != id);
        inner.calls.push(format!("remove {id}"));
        Ok(if inner.containers.len() < before { Outcome::Done } else { Outcome::AlreadyInState })
    }

    async fn create_carrier(&self, name: &str, _image: &str, volume: &str, _path: &str) -> Result<String> {
        self.inner.lock().unwrap().calls.push(format!("carrier {volume}"));
        Ok(format!("carrier-{name}"))
    }

    async fn upload(&self, id: &str, path: &str, _tar: &Path) -> Result<()> {
        self.inner.lock().unwrap().calls.push(format!("upload {id}:{path}"));
        Ok(())
    }

    async fn exec(&self, id: &str, cmd: &[String], _user: Option<&str>) -> Result<ExecOutput> {
        let service = self.with(id, |c, calls, _| {
            calls.push(format!("exec {} {}", c.service, cmd.join(" ")));
            c.service.clone()
        })?;
        let exit_code = self.inner.lock().unwrap().exec_exit.get(&service).copied().unwrap_or(0);
        Ok(ExecOutput { exit_code, output: String::new() })
    }

    /// Streams what [`FakeEngine::set_exec_stdout`] set for the service (else nothing), and
    /// ends with the exit code `exec` would.
    async fn exec_stream(&self, id: &str, cmd: &[String], _user: Option<&str>) -> Result<ExecStream> {
        let service = self.with(id, |c, calls, _| {
            calls.push(format!("exec {} {}", c.service, cmd.join(" ")));
            c.service.clone()
        })?;
        let inner = self.inner.lock().unwrap();
        let exit_code = inner.exec_exit.get(&service).copied().unwrap_or(0);
        let stdout = inner.exec_stdout.get(&service).cloned().unwrap_or_default();
        Ok(ExecStream {
            stdout: Box::pin(std::io::Cursor::new(stdout)),
            ended: Box::pin(async move { Ok(ExecEnd { exit_code, stderr: String::new() }) }),
        })
    }

    /// Reads the input to its end (kept for [`FakeEngine::exec_input`]) and answers like `exec`.
    async fn exec_stdin(
        &self,
        id: &str,
        cmd: &[String],
        user: Option<&str>,
        mut input: TarStream,
    ) -> Result<ExecOutput> {
        use tokio::io::AsyncReadExt;
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes).await.map_err(|e| EngineError::Api {
            op: "exec",
            target: id.into(),
            detail: e.to_string(),
        })?;
        let out = self.exec(id, cmd, user).await?;
        self.inner.lock().unwrap().exec_input.push(bytes);
        Ok(out)
    }
}

/// Compose over the fake engine: `up` replaces a service's containers with new ones (a new id,
/// as compose recreating them), created or running; `run` answers like `exec`.
pub struct FakeCompose {
    engine: std::sync::Arc<FakeEngine>,
}

impl FakeCompose {
    pub fn new(engine: std::sync::Arc<FakeEngine>) -> Self {
        FakeCompose { engine }
    }

    fn recreate(&self, service: &str, running: bool) {
        let mut inner = self.engine.inner.lock().unwrap();
        let n = inner.containers.len();
        let old = inner.containers.iter().find(|c| c.service == service).cloned();
        inner.containers.retain(|c| c.service != service);
        inner.calls.push(format!("compose {} {service}", if running { "up" } else { "create" }));
        let c = old.unwrap_or_else(|| FakeEngine::container(service));
        inner.containers.push(Container {
            id: format!("id-{service}-{n}-new"),
            state: if running { State::Running } else { State::Created },
            ..c
        });
    }
}

#[async_trait]
impl super::compose::Compose for FakeCompose {
    fn describe(&self) -> String {
        "fake compose".into()
    }

    async fn up(
        &self,
        project: &crate::project::Project,
        mode: super::compose::Up,
        services: &[String],
    ) -> std::result::Result<(), super::compose::ComposeError> {
        use super::compose::Up;
        let all: Vec<String> = project.services.keys().cloned().collect();
        match mode {
            Up::CreateAll => all.iter().for_each(|s| self.recreate(s, false)),
            Up::Create => services.iter().for_each(|s| self.recreate(s, false)),
            Up::Start => services.iter().for_each(|s| self.recreate(s, true)),
        }
        Ok(())
    }

    async fn run(
        &self,
        _project: &crate::project::Project,
        service: &str,
        cmd: &[String],
        _user: Option<&str>,
        _timeout: std::time::Duration,
    ) -> std::result::Result<ExecOutput, super::compose::ComposeError> {
        let mut inner = self.engine.inner.lock().unwrap();
        inner.calls.push(format!("compose run {service} {}", cmd.join(" ")));
        let exit_code = inner.exec_exit.get(service).copied().unwrap_or(0);
        Ok(ExecOutput { exit_code, output: String::new() })
    }
}

/// A project in `dir` with `compose_yaml`, its catalog, and a fake engine and compose holding
/// `services` (name, running, what it depends on): the context unit tests run flows in.
#[cfg(test)]
pub async fn fake_ctx(
    dir: &Path,
    compose_yaml: &str,
    services: &[(&str, bool, &[&str])],
) -> (crate::flows::Ctx, std::sync::Arc<FakeEngine>) {
    std::fs::write(dir.join("compose.yaml"), compose_yaml).unwrap();
    let project = crate::project::Project::discover(dir).unwrap();
    let catalog = crate::catalog::Catalog::open(&project.state_dir).await.unwrap();
    let engine = std::sync::Arc::new(FakeEngine::new());
    for (service, running, depends_on) in services {
        engine.add(service, *running, depends_on, vec![]);
    }
    let compose: std::sync::Arc<dyn super::compose::Compose> =
        std::sync::Arc::new(FakeCompose::new(engine.clone()));
    let ctx = crate::flows::Ctx {
        project,
        catalog,
        engine: Some(engine.clone()),
        compose: Some(compose),
        interrupt: crate::interrupt::Interrupt::none(),
    };
    (ctx, engine)
}
