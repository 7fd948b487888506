//! A remote's URL: `s3://bucket/prefix`, `sftp://user@host:port/path`, or a directory.

use std::path::PathBuf;

/// Where a remote is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    S3 {
        bucket: String,
        root: String,
    },
    /// `endpoint`: `ssh://user@host:port` as OpenDAL's SFTP service takes it.
    Sftp {
        endpoint: String,
        root: String,
    },
    Dir(PathBuf),
}

pub fn parse_url(url: &str) -> anyhow::Result<Location> {
    let bad = |why: &str| {
        anyhow::Error::new(crate::Error::Config(format!(
            "remote URL {url:?}: {why} (s3://bucket/prefix, sftp://user@host:port/path, or an absolute directory)"
        )))
    };
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket"));
        }
        return Ok(Location::S3 {
            bucket: bucket.to_string(),
            root: format!("/{}", prefix.trim_matches('/')),
        });
    }
    if let Some(rest) = url.strip_prefix("sftp://") {
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        if host.is_empty() || host.ends_with('@') {
            return Err(bad("no host"));
        }
        if path.is_empty() {
            return Err(bad("no directory on the server"));
        }
        return Ok(Location::Sftp {
            endpoint: format!("ssh://{host}"),
            root: format!("/{}", path.trim_end_matches('/')),
        });
    }
    let dir = url.strip_prefix("file://").unwrap_or(url);
    if dir.starts_with('/') {
        return Ok(Location::Dir(PathBuf::from(dir)));
    }
    Err(bad("unknown kind"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_urls_name_their_kind_and_place() {
        let s3 = |b: &str, r: &str| Location::S3 { bucket: b.into(), root: r.into() };
        assert_eq!(parse_url("s3://bk").unwrap(), s3("bk", "/"));
        assert_eq!(parse_url("s3://bk/a/b/").unwrap(), s3("bk", "/a/b"));
        assert_eq!(
            parse_url("sftp://backup@host.example:2222/srv/nuwax/").unwrap(),
            Location::Sftp { endpoint: "ssh://backup@host.example:2222".into(), root: "/srv/nuwax".into() }
        );
        assert_eq!(parse_url("/mnt/nas/b").unwrap(), Location::Dir("/mnt/nas/b".into()));
        assert_eq!(parse_url("file:///mnt/nas").unwrap(), Location::Dir("/mnt/nas".into()));
        for bad in ["s3://", "sftp://host", "sftp:///x", "relative/dir", "http://x/y"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
