//! Remotes: where copies of the archives go (`[[remotes]]` in nuwax.toml). S3-compatible
//! object storage, SFTP and plain directories (a NAS mount), all through Apache OpenDAL. An
//! archive goes up as it is on disk (encrypted when the project encrypts), streamed in parts;
//! an object is only ever taken for a copy once it is whole: S3 shows a multipart upload only
//! when it is completed (a failed one is aborted), SFTP and directories are written under a
//! `.partial` name and renamed. Each object is `<root>/<project>/<archive file name>`.

pub mod settings_file;
mod url;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::AsyncReadExt as _;
use opendal::Operator;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt};

pub use url::{Location, parse_url};

/// Parts of an upload (S3's minimum is 5 MiB).
const PART: usize = 8 << 20;
/// Parts in flight at once.
const CONCURRENT: usize = 4;
/// How long one request may take before the remote counts as unreachable.
const TIMEOUT: Duration = Duration::from_secs(60);
/// How long one chunk's I/O may stall.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// `[[remotes]]` in nuwax.toml.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RemoteSettings {
    pub name: String,
    /// `s3://bucket/prefix`, `sftp://user@host:port/path`, or a directory (`/mnt/nas/backups`).
    pub url: String,
    /// S3: the endpoint (`https://s3.example.com`; AWS's own when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// S3: the region (`us-east-1` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// A file of `KEY=VALUE` lines with the credentials: `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY` (S3), `SSH_KEY=/path/to/key` (SFTP). Without it, the environment:
    /// `NUWAX_REMOTE_<NAME>_<KEY>`, then `<KEY>`. Never on the command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// Which backups are copied there: `all` (default), `kinds` (those of `kinds`), `scheduled`.
    #[serde(default)]
    pub copy: CopyPolicy,
    /// With `copy = "kinds"`: `manual`, `scheduled`, `pre-upgrade`, `pre-rollback`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    /// What `prune` keeps there (its own policy; without one, the project's `[retention]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<crate::retention::Policy>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyPolicy {
    #[default]
    All,
    Kinds,
    Scheduled,
}

impl RemoteSettings {
    /// Whether a backup of `kind` is copied to this remote.
    pub fn wants(&self, kind: &str) -> bool {
        match self.copy {
            CopyPolicy::All => true,
            CopyPolicy::Scheduled => kind == "scheduled",
            CopyPolicy::Kinds => self.kinds.iter().any(|k| k == kind),
        }
    }

    /// A credential: the credentials file's, else `NUWAX_REMOTE_<NAME>_<KEY>`, else `<KEY>`.
    fn credential(&self, key: &str) -> Result<Option<String>> {
        if let Some(file) = &self.credentials_file {
            let text = std::fs::read_to_string(file).with_context(|| {
                format!("remote {}: reading credentials_file {}", self.name, file.display())
            })?;
            return Ok(text
                .lines()
                .map(str::trim)
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.split_once('='))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().trim_matches('"').to_string()));
        }
        let scoped = format!(
            "NUWAX_REMOTE_{}_{key}",
            self.name
                .to_uppercase()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect::<String>()
        );
        Ok(std::env::var(scoped).ok().or_else(|| std::env::var(key).ok()).filter(|v| !v.is_empty()))
    }
}

/// What went wrong talking to a remote.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// Not reachable now (refused, timed out, DNS): worth trying again later.
    #[error("remote {remote} is unreachable: {detail}")]
    Unreachable { remote: String, detail: String },
    #[error("remote {remote}: {detail}")]
    Failed { remote: String, detail: String },
    #[error("remote {remote} holds no {name}")]
    NotFound { remote: String, name: String },
}

impl RemoteError {
    pub fn is_unreachable(&self) -> bool {
        matches!(self, RemoteError::Unreachable { .. })
    }
}

/// One remote, open.
pub struct Remote {
    pub name: String,
    op: Operator,
    /// Objects are written under a `.partial` name and renamed (SFTP, directories), rather than
    /// shown only when complete (S3's multipart).
    rename: bool,
    /// `<project>/`: where this project's archives are.
    dir: String,
}

/// What `remote test` found.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub remote: String,
    pub ok: bool,
    pub detail: String,
    pub ms: u64,
}

/// An archive a remote holds.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Held {
    pub name: String,
    pub size_bytes: u64,
}

fn install_transport() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // One TLS provider for the process (ring, as ureq already uses), then OpenDAL's HTTP
        // client on it: without these the first request fails or panics.
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
        opendal_http_transport_reqwest::install_default();
    });
}

impl Remote {
    /// `settings` for `project`: the URL parsed, the credentials read; nothing is contacted.
    pub fn open(settings: &RemoteSettings, project: &str) -> Result<Remote> {
        install_transport();
        let name = settings.name.clone();
        let (op, rename) = match parse_url(&settings.url).with_context(|| format!("remote {name}"))? {
            Location::S3 { bucket, root } => {
                let key = settings.credential("AWS_ACCESS_KEY_ID")?;
                let secret = settings.credential("AWS_SECRET_ACCESS_KEY")?;
                let (Some(key), Some(secret)) = (key, secret) else {
                    anyhow::bail!(crate::Error::Config(format!(
                        "remote {name}: no credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in its \
                         credentials_file, or NUWAX_REMOTE_{}_AWS_ACCESS_KEY_ID/... in the environment",
                        name.to_uppercase()
                    )));
                };
                let mut b = opendal::services::S3::default()
                    .bucket(&bucket)
                    .root(&root)
                    .region(settings.region.as_deref().unwrap_or("us-east-1"))
                    .access_key_id(&key)
                    .secret_access_key(&secret)
                    // Only what nuwax.toml and the credentials say: no ~/.aws, no EC2 metadata.
                    .disable_config_load()
                    .disable_ec2_metadata();
                if let Some(e) = &settings.endpoint {
                    b = b.endpoint(e);
                }
                (Operator::new(b)?, false)
            }
            Location::Sftp { endpoint, root } => {
                let mut b = opendal::services::Sftp::default().endpoint(&endpoint).root(&root);
                if let Some(key) = settings.credential("SSH_KEY")? {
                    b = b.key(&key);
                }
                (Operator::new(b)?, true)
            }
            Location::Dir(root) => {
                (Operator::new(opendal::services::Fs::default().root(&root.to_string_lossy()))?, true)
            }
        };
        let op =
            op.layer(opendal::layers::TimeoutLayer::new().with_timeout(TIMEOUT).with_io_timeout(IO_TIMEOUT));
        Ok(Remote { name, op, rename, dir: format!("{project}/") })
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.dir)
    }

    fn error(&self, e: opendal::Error) -> RemoteError {
        classify(&self.name, e)
    }

    /// Uploads `local` as `name`, streamed in parts; returns the bytes sent. On any failure the
    /// object is not there (an S3 upload is aborted; a `.partial` is removed where it can be).
    pub async fn put(
        &self,
        local: &Path,
        name: &str,
        progress: &dyn crate::archive::Progress,
    ) -> Result<u64> {
        let key = self.key(name);
        let target = if self.rename { format!("{key}.partial") } else { key.clone() };
        let mut file =
            tokio::fs::File::open(local).await.with_context(|| format!("opening {}", local.display()))?;
        progress.set_total(file.metadata().await.map(|m| m.len()).unwrap_or(0));
        let mut w = self
            .op
            .writer_with(&target)
            .chunk(PART)
            .concurrent(CONCURRENT)
            .await
            .map_err(|e| self.error(e))?;
        let mut sent = 0u64;
        // The test hook that slows copies down (NUWAX_RATE_LIMIT), so a test can cut an upload.
        let rate = crate::faults::rate_limit();
        let started = std::time::Instant::now();
        let mut buf =
            vec![0u8; rate.map_or(PART, |r| usize::try_from(r / 4).unwrap_or(PART).clamp(4096, PART))];
        let outcome: Result<()> = async {
            loop {
                let n = file.read(&mut buf).await.with_context(|| format!("reading {}", local.display()))?;
                if n == 0 {
                    break;
                }
                w.write(buf[..n].to_vec()).await.map_err(|e| self.error(e))?;
                sent += n as u64;
                progress.inc(n as u64);
                if let Some(rate) = rate {
                    let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
            w.close().await.map_err(|e| self.error(e))?;
            Ok(())
        }
        .await;
        if let Err(e) = outcome {
            let _ = w.abort().await;
            if self.rename {
                let _ = self.op.delete(&target).await;
            }
            return Err(e);
        }
        if self.rename {
            self.op.rename(&target, &key).await.map_err(|e| self.error(e))?;
        }
        Ok(sent)
    }

    /// The sha256 and size of object `name`, read back whole.
    pub async fn digest(&self, name: &str) -> Result<(String, u64)> {
        self.read_out(name, None, &crate::archive::NoProgress).await
    }

    /// Reads object `name` whole: its sha256 and size, its bytes written to `out` if given.
    async fn read_out(
        &self,
        name: &str,
        mut out: Option<(&mut tokio::fs::File, &Path)>,
        progress: &dyn crate::archive::Progress,
    ) -> Result<(String, u64)> {
        let mut r = self.reader(name).await?;
        let (mut hasher, mut bytes, mut buf) = (Sha256::new(), 0u64, vec![0u8; 1 << 20]);
        loop {
            let n = r.read(&mut buf).await.map_err(|e| self.io_error(e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            if let Some((f, path)) = &mut out {
                f.write_all(&buf[..n]).await.with_context(|| format!("writing {}", path.display()))?;
            }
            bytes += n as u64;
            progress.inc(n as u64);
        }
        Ok((crate::archive::hex(&hasher.finalize()), bytes))
    }

    async fn reader(&self, name: &str) -> Result<opendal::FuturesAsyncReader> {
        let key = self.key(name);
        let meta = self.op.stat(&key).await.map_err(|e| match e.kind() {
            opendal::ErrorKind::NotFound => {
                RemoteError::NotFound { remote: self.name.clone(), name: name.into() }
            }
            _ => self.error(e),
        })?;
        let r =
            self.op.reader_with(&key).chunk(PART).concurrent(CONCURRENT).await.map_err(|e| self.error(e))?;
        Ok(r.into_futures_async_read(0..meta.content_length()).await.map_err(|e| self.error(e))?)
    }

    fn io_error(&self, e: std::io::Error) -> RemoteError {
        match e.get_ref().and_then(|i| i.downcast_ref::<opendal::Error>()) {
            Some(_) => {
                let e = e.into_inner().and_then(|i| i.downcast::<opendal::Error>().ok());
                match e {
                    Some(e) => self.error(*e),
                    None => RemoteError::Failed { remote: self.name.clone(), detail: "read failed".into() },
                }
            }
            None => RemoteError::Failed { remote: self.name.clone(), detail: e.to_string() },
        }
    }

    /// Downloads object `name` to `dest` (written as `dest` + `.partial`, synced, renamed);
    /// returns its sha256 and size. On failure nothing is left at `dest`.
    pub async fn get(
        &self,
        name: &str,
        dest: &Path,
        progress: &dyn crate::archive::Progress,
    ) -> Result<(String, u64)> {
        let partial = PathBuf::from(format!("{}.partial", dest.display()));
        let outcome: Result<(String, u64)> = async {
            let mut out = tokio::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&partial)
                .await
                .with_context(|| format!("creating {}", partial.display()))?;
            let done = self.read_out(name, Some((&mut out, &partial)), progress).await?;
            out.sync_all().await?;
            Ok(done)
        }
        .await;
        match outcome {
            Ok(done) => {
                tokio::fs::rename(&partial, dest)
                    .await
                    .with_context(|| format!("renaming to {}", dest.display()))?;
                Ok(done)
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&partial).await;
                Err(e)
            }
        }
    }

    /// The archives (`backup_*`) this remote holds for the project, by name.
    pub async fn list(&self) -> Result<Vec<Held>> {
        let entries = match self.op.list(&self.dir).await {
            Ok(e) => e,
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(self.error(e).into()),
        };
        let mut out: Vec<Held> = entries
            .into_iter()
            .filter_map(|e| {
                let name = e.name().to_string();
                let is_archive =
                    name.starts_with("backup_") && !name.ends_with(".partial") && !name.ends_with('/');
                is_archive.then(|| Held { name, size_bytes: e.metadata().content_length() })
            })
            .collect();
        // Listings leave sizes out on some services: ask.
        for h in out.iter_mut().filter(|h| h.size_bytes == 0) {
            if let Ok(m) = self.op.stat(&self.key(&h.name)).await {
                h.size_bytes = m.content_length();
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes object `name` (gone already is fine).
    pub async fn delete(&self, name: &str) -> Result<()> {
        self.op.delete(&self.key(name)).await.map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Writes, reads back and removes a small object: the remote takes copies.
    pub async fn probe(&self) -> Probe {
        let t = std::time::Instant::now();
        let key = self.key(&format!(".nuwax-probe-{}", std::process::id()));
        let body = format!("nuwax remote test {}", chrono::Utc::now().to_rfc3339());
        let r: Result<()> = async {
            self.op.write(&key, body.clone().into_bytes()).await.map_err(|e| self.error(e))?;
            let back = self.op.read(&key).await.map_err(|e| self.error(e))?.to_vec();
            self.op.delete(&key).await.map_err(|e| self.error(e))?;
            anyhow::ensure!(
                back == body.as_bytes(),
                "read back {} bytes that differ from what was written",
                back.len()
            );
            Ok(())
        }
        .await;
        let ms = t.elapsed().as_millis() as u64;
        match r {
            Ok(()) => Probe {
                remote: self.name.clone(),
                ok: true,
                detail: "wrote, read back and removed a test object".into(),
                ms,
            },
            Err(e) => Probe { remote: self.name.clone(), ok: false, detail: format!("{e:#}"), ms },
        }
    }
}

/// Unreachable (worth a retry later) or failed, from OpenDAL's kind and the I/O error under it.
fn classify(remote: &str, e: opendal::Error) -> RemoteError {
    let mut io = None;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    while let Some(s) = cur {
        if let Some(i) = s.downcast_ref::<std::io::Error>() {
            io = Some(i.kind());
        }
        cur = s.source();
    }
    use std::io::ErrorKind as K;
    let down = matches!(
        io,
        Some(
            K::ConnectionRefused
                | K::ConnectionReset
                | K::TimedOut
                | K::NotConnected
                | K::HostUnreachable
                | K::NetworkUnreachable
        )
    ) || (e.kind() == opendal::ErrorKind::Unexpected && e.is_temporary())
        || e.to_string().contains("timeout reached");
    // OpenDAL's message carries its whole context (URL, service, path): the first part and
    // the I/O error under it say what an operator needs.
    let full = format!("{e}");
    let head = full.split(", context:").next().unwrap_or(&full).trim().to_string();
    let detail = match io {
        Some(k) => format!("{head} ({})", std::io::Error::from(k)),
        None => head,
    };
    match down {
        true => RemoteError::Unreachable { remote: remote.to_string(), detail },
        false => RemoteError::Failed { remote: remote.to_string(), detail },
    }
}
