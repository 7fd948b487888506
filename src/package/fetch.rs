//! Downloads of `http(s)://` packages into `<work_dir>/downloads/`, resumable: a cut download
//! leaves a `.part` file that the next attempt continues with `Range: bytes=N-`.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{Error, OpenOptions, Result, check_cancel};
use crate::archive::hex;

const CHUNK: usize = 1 << 20;

/// A finished download whose sha256 matched the published one, if any was published.
pub(crate) struct Fetched {
    pub path: PathBuf,
    pub sha256: String,
}

pub(crate) fn is_url(source: &str) -> bool {
    let lower = source.get(..8).unwrap_or(source).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .user_agent(format!("nuwax/{}", crate::VERSION))
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        // A stalled transfer fails instead of hanging; the .part lets the next run resume.
        .timeout_per_read(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn download_error(url: &str, detail: impl Into<String>) -> Error {
    Error::Download { url: url.to_owned(), detail: detail.into() }
}

/// Downloads `url` (or reuses an earlier download of it whose checksum still matches) and
/// checks it against `given` (a normalised `--sha256`), else against `<url>.sha256`.
pub(crate) fn fetch(url: &str, given: Option<String>, opts: &OpenOptions<'_>) -> Result<Fetched> {
    let agent = agent();
    let expected = match given {
        Some(given) => Some(given),
        None => published_sha256(&agent, url)?,
    };
    let dir = opts.work_dir.join("downloads");
    fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
    let key = hex(&Sha256::digest(url.as_bytes()));
    let part = dir.join(format!("{key}.part"));
    let done = dir.join(format!("{}-{}", &key[..16], file_name(url)));

    if let (Some(expected), true) = (&expected, done.is_file()) {
        let actual = super::open::file_sha256(&done, opts)?;
        if &actual == expected {
            tracing::info!("reusing the earlier download {}", done.display());
            return Ok(Fetched { path: done, sha256: actual });
        }
    }

    let actual = download(&agent, url, &part, opts)?;
    if let Some(expected) = &expected
        && &actual != expected
    {
        let _ = fs::remove_file(&part);
        return Err(Error::Checksum { source_name: url.to_owned(), expected: expected.clone(), actual });
    }
    fs::rename(&part, &done).map_err(Error::io(&done))?;
    if expected.is_none() {
        tracing::warn!("no sha256 was published for {url} (no {url}.sha256, no --sha256): not verified");
    }
    Ok(Fetched { path: done, sha256: actual })
}

/// The last path segment of `url` without query or fragment, made safe for a file name.
fn file_name(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let after_host = path.splitn(4, '/').nth(3).unwrap_or("");
    let last = after_host.rsplit('/').next().unwrap_or("");
    let safe: String =
        last.chars().map(|c| if c.is_ascii_alphanumeric() || "._-+".contains(c) { c } else { '_' }).collect();
    if safe.trim_matches('.').is_empty() { "package".into() } else { safe }
}

/// The checksum at `<url>.sha256`: `None` when the server has none (any 4xx).
fn published_sha256(agent: &ureq::Agent, url: &str) -> Result<Option<String>> {
    let sidecar = sidecar_url(url);
    let mut resp = agent.get(&sidecar).call().map_err(|e| download_error(&sidecar, e.to_string()))?;
    let status = resp.status().as_u16();
    if (400..500).contains(&status) {
        tracing::debug!("{sidecar}: HTTP {status}, no checksum published");
        return Ok(None);
    }
    if status != 200 {
        return Err(download_error(&sidecar, format!("HTTP {status}")));
    }
    let text = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_string()
        .map_err(|e| download_error(&sidecar, e.to_string()))?;
    match super::open::parse_sidecar(&text, &file_name(url)) {
        Some(sha) => Ok(Some(sha)),
        None => Err(download_error(&sidecar, "not in sha256sum format (`<64 hex digits>  <file name>`)")),
    }
}

fn sidecar_url(url: &str) -> String {
    match url.find(['?', '#']) {
        Some(i) => format!("{}.sha256{}", &url[..i], &url[i..]),
        None => format!("{url}.sha256"),
    }
}

/// Downloads into `part`, continuing what is already there; returns the sha256 of the whole.
fn download(agent: &ureq::Agent, url: &str, part: &Path, opts: &OpenOptions<'_>) -> Result<String> {
    let have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let mut request = agent.get(url);
    if have > 0 {
        request = request.header("Range", format!("bytes={have}-"));
    }
    let resp = request.call().map_err(|e| download_error(url, e.to_string()))?;
    let status = resp.status().as_u16();
    let resumed = match status {
        206 if content_range_start(&resp) == Some(have) => true,
        206 if have == 0 => {
            return Err(download_error(url, "the server sent part of the file unasked (HTTP 206)"));
        }
        200 => false,
        // A range the server does not honour as asked, or a .part that already holds the whole
        // file (or more): start over rather than guess.
        206 | 416 if have > 0 => {
            drop(resp);
            fs::remove_file(part).map_err(Error::io(part))?;
            return download(agent, url, part, opts);
        }
        404 => return Err(download_error(url, "not found (HTTP 404): check the URL")),
        s => return Err(download_error(url, format!("HTTP {s}"))),
    };
    let body = resp.into_body();
    let length = body.content_length();

    let mut hasher = Sha256::new();
    let mut file = fs::OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(!resumed)
        .open(part)
        .map_err(Error::io(part))?;
    let mut done = 0;
    if resumed {
        done = hash_prefix(&mut file, part, have, &mut hasher, opts)?;
        tracing::info!("resuming the download of {url} at byte {have}");
    }
    if let Some(length) = length {
        opts.progress.set_total(done + length);
    }
    opts.progress.inc(done);

    let mut reader = body.into_reader();
    let mut buf = vec![0u8; CHUNK];
    let mut received = 0u64;
    loop {
        check_cancel(opts.cancel)?;
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = file.sync_data();
                return Err(download_error(
                    url,
                    format!(
                        "the transfer broke after {} bytes ({e}); run the command again to resume",
                        done + received
                    ),
                ));
            }
        };
        file.write_all(&buf[..n]).map_err(Error::io(part))?;
        hasher.update(&buf[..n]);
        received += n as u64;
        opts.progress.inc(n as u64);
    }
    if let Some(length) = length
        && received != length
    {
        return Err(download_error(
            url,
            format!("the server sent {received} of {length} bytes; run the command again to resume"),
        ));
    }
    file.sync_all().map_err(Error::io(part))?;
    Ok(hex(&hasher.finalize()))
}

/// Feeds the first `len` bytes of the partial file to `hasher` and leaves the cursor at its end.
fn hash_prefix(
    file: &mut File,
    part: &Path,
    len: u64,
    hasher: &mut Sha256,
    opts: &OpenOptions<'_>,
) -> Result<u64> {
    file.seek(SeekFrom::Start(0)).map_err(Error::io(part))?;
    let mut take = (&mut *file).take(len);
    let mut buf = vec![0u8; CHUNK];
    loop {
        check_cancel(opts.cancel)?;
        match take.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(part)(e)),
        }
    }
    file.seek(SeekFrom::Start(len)).map_err(Error::io(part))?;
    file.set_len(len).map_err(Error::io(part))?;
    Ok(len)
}

/// The first byte position of a 206 response's `Content-Range: bytes A-B/T`.
fn content_range_start(resp: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    let value = resp.headers().get("content-range")?.to_str().ok()?;
    let range = value.trim().strip_prefix("bytes")?.trim_start();
    range.split('-').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_urls() {
        assert_eq!(file_name("https://h.example/a/b/pkg-2.tar.zst?x=1"), "pkg-2.tar.zst");
        assert_eq!(file_name("http://h.example/"), "package");
        assert_eq!(file_name("http://h.example"), "package");
        assert_eq!(file_name("http://h/x%20y.zip"), "x_20y.zip");
        assert_eq!(sidecar_url("http://h/p.zip?sig=1"), "http://h/p.zip.sha256?sig=1");
        assert!(is_url("HTTPS://x") && !is_url("ftp://x") && !is_url("./http:"));
    }
}
