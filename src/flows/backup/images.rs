//! A backup's images: tags that keep each service's image for a rollback, and the services'
//! images saved into the archive (`backup --with-images`).

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::archive::manifest::ServiceRecord;
use crate::engine::{Container, Engine, keep_tag};
use crate::flows::sources::{self, Origin, Source};
use crate::fsutil;

/// The directory `docker save` output is spooled into; removed when the backup ends.
pub(super) struct ImageSpool(pub PathBuf);

impl ImageSpool {
    /// Images do not change while the services run: saved before anything stops, into a spool
    /// file in the storage dir that the archive then takes in like any other file.
    pub async fn save(&self, engine: &dyn Engine, containers: &[Container]) -> Result<Source> {
        let mut ids: Vec<String> =
            containers.iter().map(|c| c.image_id.clone()).filter(|i| !i.is_empty()).collect();
        ids.sort();
        ids.dedup();
        let _ = std::fs::remove_dir_all(&self.0);
        fsutil::create_private_dir(&self.0)?;
        let file = self.0.join("images.tar");
        let mut out =
            tokio::fs::File::create(&file).await.with_context(|| format!("creating {}", file.display()))?;
        let mut stream = engine.save_images(&ids).await?;
        tokio::io::copy(&mut stream, &mut out).await.context("saving the services' images")?;
        out.sync_all().await?;
        Ok(Source {
            prefix: "images/images.tar".into(),
            origin: Origin::Host(file),
            role: sources::Role::Images,
        })
    }
}

impl Drop for ImageSpool {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Tags each service's image with [`keep_tag`] so a rollback to this backup finds it. A failure
/// is a warning: the backup itself is still good, only the image may be pruned later.
pub(super) async fn keep_images(engine: &dyn Engine, project: &str, id: i64, services: &mut [ServiceRecord]) {
    for s in services.iter_mut().filter(|s| !s.image_id.is_empty()) {
        let (repo, tag) = keep_tag(project, &s.service, id);
        match engine.tag_image(&s.image_id, &repo, &tag).await {
            Ok(()) => s.keep_tag = Some(format!("{repo}:{tag}")),
            Err(e) => tracing::warn!("could not tag the image of {} to keep it for rollback: {e}", s.service),
        }
    }
}

/// Removes the tags [`keep_images`] made for backup `id`.
pub async fn release_images<'a>(
    engine: &dyn Engine,
    project: &str,
    id: i64,
    services: impl IntoIterator<Item = &'a str>,
) {
    let services: std::collections::BTreeSet<&str> = services.into_iter().collect();
    for service in services {
        let (repo, tag) = keep_tag(project, service, id);
        if let Err(e) = engine.untag_image(&format!("{repo}:{tag}")).await {
            tracing::warn!("could not remove the image tag {repo}:{tag}: {e}");
        }
    }
}
