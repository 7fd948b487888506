//! Uploads (archives to import, upgrade packages): streamed to a file of the state dir as they
//! arrive, never held in memory, cut off at the size limit, hashed on the way.

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::ApiError;

/// The header that names an uploaded file.
pub const NAME_HEADER: &str = "x-nuwax-filename";

pub struct Upload {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
}

/// The file name the client gave (its last component, safe characters only), else `default`.
pub fn file_name(headers: &HeaderMap, default: &str) -> String {
    let given = headers.get(NAME_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let base = given.rsplit(['/', '\\']).next().unwrap_or_default();
    let clean: String =
        base.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    match clean.trim_start_matches('.') {
        "" => default.to_string(),
        s => s.to_string(),
    }
}

/// Streams `body` into `<state_dir>/<sub>/<random>.part` (owner-only); over `limit` bytes, or a
/// body that breaks off, removes it and refuses.
pub async fn receive(
    state_dir: &Path,
    sub: &str,
    name: &str,
    body: Body,
    limit: u64,
) -> Result<Upload, ApiError> {
    let dir = state_dir.join(sub);
    crate::fsutil::create_private_dir(&dir)?;
    let path = dir.join(format!("{}.{}.part", super::auth::random_hex()?.get(..16).unwrap_or("x"), name));
    let got = write(&path, body, limit).await;
    if got.is_err() {
        let _ = std::fs::remove_file(&path);
    }
    let (bytes, sha256) = got?;
    Ok(Upload { path, bytes, sha256 })
}

async fn write(path: &Path, body: Body, limit: u64) -> Result<(u64, String), ApiError> {
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", path.display()))?;
    let (mut bytes, mut hash) = (0u64, Sha256::new());
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, format!("the upload broke off: {e}"), None)
        })?;
        bytes += chunk.len() as u64;
        if bytes > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the upload is larger than the limit of {}", crate::fsutil::human_bytes(limit)),
                Some(
                    "start nuwax serve with a larger --max-upload, or use `nuwax import` on the host".into(),
                ),
            ));
        }
        hash.update(&chunk);
        file.write_all(&chunk).await.map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    }
    file.sync_all().await.map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok((bytes, crate::archive::hex(&hash.finalize())))
}

/// Removes what uploads a dead server left half written.
pub fn sweep(state_dir: &Path) {
    for sub in ["uploads", "packages"] {
        let dir = state_dir.join(sub);
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().ends_with(".part") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}
