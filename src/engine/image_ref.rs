//! One parser for image references, so every flow agrees on what the repository and the tag of
//! `registry:5000/app` are (the repository is all of it; the tag is `latest`).

/// `[registry[:port]/]path[:tag][@digest]`, as Docker reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl ImageRef {
    pub fn parse(reference: &str) -> ImageRef {
        let (name, digest) = match reference.split_once('@') {
            Some((n, d)) => (n, Some(d.to_string())),
            None => (reference, None),
        };
        // A tag is after the last `:` that comes after the last `/`: a registry's port is not.
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (&name[..last_slash + i], Some(name[last_slash + i + 1..].to_string())),
            None => (name, None),
        };
        ImageRef { repository: repository.to_string(), tag, digest }
    }

    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, `latest` when the reference names none.
    pub fn tag(&self) -> &str {
        self.tag.as_deref().unwrap_or("latest")
    }

    /// The reference as `docker save` lists it: `repo:tag` (the tag filled in), or
    /// `repo@digest` for a digest reference.
    pub fn normalized(&self) -> String {
        match &self.digest {
            Some(d) => format!("{}@{d}", self.repository),
            None => format!("{}:{}", self.repository, self.tag()),
        }
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.normalized())
    }
}

#[cfg(test)]
mod tests {
    use super::ImageRef;

    #[test]
    fn registry_ports_are_not_tags() {
        for (r, repo, tag, norm) in [
            ("nuwax-demo", "nuwax-demo", "latest", "nuwax-demo:latest"),
            ("nuwax-demo:1", "nuwax-demo", "1", "nuwax-demo:1"),
            ("registry:5000/app", "registry:5000/app", "latest", "registry:5000/app:latest"),
            ("registry:5000/app:2", "registry:5000/app", "2", "registry:5000/app:2"),
            ("localhost:5000/a/b:v1.2", "localhost:5000/a/b", "v1.2", "localhost:5000/a/b:v1.2"),
            ("app@sha256:abc", "app", "latest", "app@sha256:abc"),
        ] {
            let p = ImageRef::parse(r);
            assert_eq!((p.repository(), p.tag(), p.normalized().as_str()), (repo, tag, norm), "{r}");
        }
    }
}
