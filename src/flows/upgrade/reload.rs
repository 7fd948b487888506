//! The databases a major-version upgrade reloads: the pre-upgrade backup dumps each server
//! while it still runs (its dependents stopped) and is sealed inside the stop; the old server
//! then stops, its data left exactly as it was; the new version's server starts alone on new,
//! empty data (initialized by its own image) and the dumps are loaded into it from the sealed
//! archive, before any hook or dependent starts. A rollback keeps the old data and removes the
//! new volumes.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::{Journal, Plan, Reload};
use crate::archive::manifest::{DumpDigest, DumpRecord};
use crate::engine::Engine;
use crate::faults::{self, Crash};
use crate::flows::backup::InScope;
use crate::flows::rollback;
use crate::runner::{Operation, Scope};

/// The sealed pre-upgrade archive and the dumps in it.
pub(super) struct Source {
    archive: PathBuf,
    dumps: Vec<DumpRecord>,
    /// As the seal's verifying pass read them, in the same order.
    digests: Vec<DumpDigest>,
}

/// Where the reloaded databases come from: the pre-upgrade backup, which must be sealed by now.
pub(super) fn source(held: &Mutex<Option<InScope<'_>>>, reload: &[Reload]) -> Result<Option<Source>> {
    if reload.is_empty() {
        return Ok(None);
    }
    let held = held.lock().unwrap_or_else(|e| e.into_inner());
    let Some(InScope::Done(b)) = held.as_ref() else {
        bail!(
            "the pre-upgrade backup was not sealed inside the stop: there is nothing to reload the databases from"
        );
    };
    let manifest = crate::archive::read_manifest(&b.path)?;
    for r in reload {
        if !manifest.dumps.iter().any(|d| d.service == r.service) {
            bail!("the pre-upgrade backup {} holds no dump of {} {}", b.id, r.server, r.service);
        }
    }
    Ok(Some(Source { archive: b.path.clone(), dumps: manifest.dumps, digests: b.dumps.clone() }))
}

/// Stops the old servers, whose dumps the sealed backup holds: from here their data is only
/// kept, never written.
pub(super) async fn stop_old(scope: &mut Scope<'_>, plan: &Plan) -> Result<()> {
    let old: Vec<_> = scope
        .before()
        .iter()
        .filter(|c| plan.reload.iter().any(|r| r.service == c.service))
        .cloned()
        .collect();
    scope.stop(&old).await
}

/// Starts each reloaded service's new server alone (created by compose on its new, empty data)
/// and loads its dumps into it.
pub(super) async fn load(
    op: &Operation<'_, Journal>,
    scope: &Scope<'_>,
    plan: &Plan,
    from: &Source,
) -> Result<()> {
    let ctx = op.ctx();
    for r in &plan.reload {
        scope
            .start_these_now(std::slice::from_ref(&r.service))
            .await
            .with_context(|| format!("starting the new {} {} on empty data", r.server, r.service))?;
        faults::crash(Crash::UpgradeWhileLoading);
        let (dumps, digests): (Vec<DumpRecord>, Vec<DumpDigest>) = from
            .dumps
            .iter()
            .zip(&from.digests)
            .filter(|(d, _)| d.service == r.service)
            .map(|(d, g)| (d.clone(), g.clone()))
            .unzip();
        let t = Instant::now();
        rollback::feed(ctx, &from.archive, &r.service, &dumps, &digests)
            .await
            .with_context(|| format!("loading the databases of {} into its new server", r.service))?;
        tracing::warn!(
            "{} {}: {} dumps loaded into the new server in {} ms (the old data, {}, is untouched)",
            r.server,
            r.service,
            dumps.len(),
            t.elapsed().as_millis(),
            r.data_before
        );
    }
    Ok(())
}

/// After a rollback of the upgrade: the volumes it created for the new servers go (the old
/// data was never touched). One that will not go is named, not fatal.
pub(super) async fn remove_fresh(engine: &dyn Engine, j: &Journal) {
    for v in &j.fresh_volumes {
        match engine.remove_volume(v).await {
            Ok(_) => tracing::warn!("removed volume {v}, which the upgrade had made for its new server"),
            Err(e) => tracing::warn!("volume {v}, made by the upgrade for its new server, was left: {e:#}"),
        }
    }
}
