//! `nuwax rollback <ID>`: make the project what backup `<ID>` holds — configs, volumes, bind
//! mounts and the images the services ran — or change nothing.
//!
//! plan (verify the archive, check every target, image and byte of room; nothing touched) →
//! stage (the backup's trees extracted beside their targets, services running) →
//! [stop] → [`restore`]: safety backup → swap (journaled) → create with compose →
//! [start: the scope brings the services back, through compose where their configs, images or
//! volumes changed]. A failure before the swap changes nothing; after it, the way back is
//! journaled and taken. A crash is undone (before the swap) or finished (from it on) by the
//! next command. An upgrade's automatic rollback runs [`restore`] inside the upgrade's scope.

pub mod engine;
mod load;
mod plan;
mod sqlite;
mod steps;
pub mod swap;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::Ctx;
use crate::archive::Progress;
use crate::engine::Container;
use crate::runner::{self, Operation, OperationKind};
use engine::EngineSlot;
pub(crate) use load::feed;
pub use plan::{ImageStep, Item, Load, Plan, RollbackOptions, plan};
pub use steps::{cleanup, load_images, restore};
use swap::Slot;

#[derive(Debug, Clone, Serialize)]
pub struct RollbackOutcome {
    pub backup_id: i64,
    pub safety_backup_id: i64,
    pub safety_backup_path: PathBuf,
    /// The safety backup's copy while the services ran (its archive was written after they
    /// started again); `null` when it was made in one phase inside the stop.
    pub safety_precopy_ms: Option<u64>,
    /// Why the safety backup was made in one phase inside the stop, when it was.
    pub safety_single_phase: Option<String>,
    pub restored: Vec<Item>,
    pub images_retagged: Vec<ImageStep>,
    pub services_started: Vec<String>,
    pub duration_ms: u64,
    pub downtime_ms: Option<u64>,
}

/// Where a rollback is; what recovery does from there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Safety backup and staging: nothing replaced yet. Recovery removes the staging.
    #[default]
    Staging,
    /// Targets being replaced. Recovery finishes the swap.
    Swapping,
    /// Everything replaced. Recovery finishes what follows (compose creates the services).
    Swapped,
    /// A failure after the swap began, being put back. Recovery puts it back again.
    Undoing,
    /// Put back: the project is as before the rollback.
    Undone,
}

/// What a rollback has left to do, written to the operations journal before each phase: enough
/// for the next nuwax to finish it (from the swap on) or undo it (before) after a crash.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Journal {
    pub phase: Phase,
    pub backup_id: i64,
    /// The version of the backup's configs: the project's once they are back (`None` when the
    /// rollback leaves the configs as they are).
    #[serde(default)]
    pub version: Option<String>,
    pub safety_backup_id: Option<i64>,
    /// Host targets: volumes reachable here, bind mounts, configs.
    #[serde(default)]
    pub slots: Vec<Slot>,
    /// Volumes restored through the engine.
    #[serde(default)]
    pub engine: Vec<EngineSlot>,
    /// Image references to point back at the backup's ids.
    #[serde(default)]
    pub retag: Vec<ImageStep>,
    /// Services that come back through compose: their configs, image or volume changed.
    #[serde(default)]
    pub recreate: Vec<String>,
    /// Services compose creates and leaves stopped (they were not running before).
    #[serde(default)]
    pub create_only: Vec<String>,
    /// No containers existed: compose creates every service.
    #[serde(default)]
    pub start_all: bool,
    /// Configs were restored: compose creates every service of the restored files (removing
    /// containers of services they do not define).
    #[serde(default)]
    pub remove_orphans: bool,
    /// The services that ran when the backup was made: with its configs back (or on a project
    /// with no containers), they are the ones that run afterwards.
    #[serde(default)]
    pub backup_running: Vec<String>,
    /// While undoing a failed rollback: how many engine volumes and image tags the failed run
    /// had replaced, so recovery can undo exactly those.
    #[serde(default)]
    pub engine_touched: usize,
    #[serde(default)]
    pub retagged: usize,
    /// The backup's trees were extracted beside their targets before the stop.
    #[serde(default)]
    pub staged: bool,
    /// Database servers started on fresh data to load their dumps: a crash before the load is
    /// done puts the swap back (recovery undoes the rollback).
    #[serde(default)]
    pub loading: Vec<String>,
    /// The version before the rollback, set back when a failed load is undone.
    #[serde(default)]
    pub version_before: Option<String>,
}

impl runner::Journal for Journal {
    const KIND: OperationKind = OperationKind::Rollback;
}

impl Journal {
    pub fn new(ctx: &Ctx, plan: &Plan) -> Journal {
        let storage = &ctx.project.storage_dir;
        let slots = plan.items.iter().filter(|i| !i.via_engine).map(|i| Slot::new(&i.dest, plan.backup_id));
        let engine = plan.items.iter().filter(|i| i.via_engine).map(|i| {
            let volume = i.volume.clone().unwrap_or_default();
            let image = plan.carrier_image.clone().unwrap_or_default();
            let mut s = EngineSlot::new(&volume, &ctx.project.name, storage, plan.backup_id, &image);
            s.existed = !i.create;
            s
        });
        let running: Vec<String> = services(plan.containers.iter().filter(|c| c.is_running()));
        let users = |running: bool| -> Vec<String> {
            services(plan.containers.iter().filter(|c| {
                c.is_running() == running
                    && c.mounts.iter().any(|m| {
                        plan.items.iter().any(|i| i.via_engine && i.volume.is_some() && m.name == i.volume)
                    })
            }))
        };
        let stale = plan.images.iter().any(|i| {
            plan.containers
                .iter()
                .any(|c| c.service == i.service && c.image_id != i.image_id && c.is_running())
        });
        let configs = plan.items.iter().any(|i| i.kind == "config");
        let mut backup_running = plan.backup_running.clone();
        backup_running.sort();
        backup_running.dedup();
        // With the configs back (or nothing there yet), the services are those of the backup,
        // running as they ran then.
        let recreate = if plan.start_all || configs {
            backup_running.clone()
        } else if stale {
            running
        } else {
            users(true)
        };
        Journal {
            phase: Phase::Staging,
            backup_id: plan.backup_id,
            version: configs.then(|| plan.service_version.clone()),
            safety_backup_id: None,
            slots: slots.collect(),
            engine: engine.collect(),
            retag: plan
                .images
                .iter()
                .filter(|i| i.current_id.as_deref() != Some(&i.image_id))
                .cloned()
                .collect(),
            recreate,
            create_only: if configs { Vec::new() } else { users(false) },
            start_all: plan.start_all,
            remove_orphans: configs && !plan.start_all,
            backup_running,
            engine_touched: 0,
            retagged: 0,
            staged: false,
            loading: Vec::new(),
            version_before: None,
        }
    }

    /// The services run as the backup ran them (configs restored, or nothing there before).
    fn runs_as_backup(&self) -> bool {
        self.start_all || self.remove_orphans
    }
}

fn services<'a>(containers: impl Iterator<Item = &'a Container>) -> Vec<String> {
    let mut s: Vec<String> = containers.map(|c| c.service.clone()).collect();
    s.sort();
    s.dedup();
    s
}

/// `nuwax rollback`: executes `plan` in a stop scope of its own. If anything fails after the
/// first stop, the previous state is put back and the services are started again; the error
/// says what state things are in.
pub async fn rollback(
    ctx: &Ctx,
    opts: &RollbackOptions,
    plan: Plan,
    progress: Arc<dyn Progress>,
) -> Result<RollbackOutcome> {
    let started = Instant::now();
    ctx.engine()?;
    ctx.interrupt.check()?;
    // Images the backup ran that this host lacks come out of the archive (services untouched).
    if let Some(prefix) = &plan.load_images {
        load_images(ctx, &plan, prefix).await?;
    }
    let mut op = Operation::begin(ctx, Journal::new(ctx, &plan)).await?;
    // While the services run: the backup's trees extracted, then the safety backup's copy.
    let before_stop = match steps::prestage(&mut op, opts, &plan, progress.clone()).await {
        Ok(()) => steps::prepare_safety(ctx, opts, &plan, &op.journal).await,
        Err(e) => Err(e),
    };
    let prepared = match before_stop {
        Ok(p) => p,
        Err(e) => {
            // Left open when the staging cannot go: the next command clears it.
            if let Err(u) = steps::unstage(&op.journal).await {
                return Err(
                    e.context(format!("and clearing the staging failed ({u:#}); the next command does"))
                );
            }
            op.close(Some("failed")).await?;
            return Err(e.context(format!(
                "rollback to backup {} failed before anything was stopped; nothing was changed",
                plan.backup_id
            )));
        }
    };
    crate::faults::pause(crate::faults::Pause::RollbackBeforeStop).await;
    let safety = std::sync::Mutex::new(None);
    let (result, started_again) = op
        .with_stopped_apart(&plan.containers, |op, scope| {
            Box::pin(restore(op, scope, opts, &plan, Some(prepared), &safety, progress.clone()))
        })
        .await;
    let report = op.scope().cloned().unwrap_or_default();
    let phase = op.journal.phase;
    let retagged = op.journal.retag.clone();
    // With the services running again: the safety backup's archive, from the snapshot, before
    // the replaced trees go (while it is written they still hold the state before). Unless
    // nothing was replaced, it is finished whatever signal comes, like the rollback.
    let calm = Ctx { interrupt: crate::interrupt::Interrupt::none(), ..ctx.clone() };
    let nothing_replaced = matches!(phase, Phase::Staging | Phase::Undone);
    let safety = safety.lock().unwrap_or_else(|e| e.into_inner()).take();
    if safety.is_some() {
        crate::faults::pause(crate::faults::Pause::RollbackSafetyArchive).await;
    }
    let safety = match safety {
        Some(s) => Some(s.complete(if nothing_replaced { ctx } else { &calm }, progress).await),
        None => None,
    };
    let safety_kept = matches!(safety, Some(Ok(_)));
    // Without a safety backup the replaced trees are all that holds the state before: kept.
    let kept = steps::replaced(&op.journal);
    if phase == Phase::Swapped && safety_kept {
        steps::cleanup(&op.journal).await;
    }
    close(&mut op, &result).await?;
    let id = plan.backup_id;
    let failed_safety = |e: anyhow::Error| {
        e.context(format!(
            "the rollback to backup {id} is done (its data is in place, the services run), \
             but the safety backup failed; the state before the rollback is kept in {}",
            kept.join(", ")
        ))
    };
    let safety_id = match &safety {
        Some(Ok(s)) => s.id.to_string(),
        _ => "<id>".into(),
    };
    let restored = match (result, started_again) {
        (Ok(r), Ok(())) => r,
        (Err(e), Ok(())) if phase == Phase::Undone => {
            return Err(e.context(format!(
                "rollback to backup {id} failed; the project is as it was before the rollback, services running"
            )));
        }
        (Err(e), Err(s)) if phase == Phase::Undone => {
            return Err(s.context(format!(
                "rollback to backup {id} failed ({e:#}); the data is as it was before, but services did not all start"
            )));
        }
        (Err(e), Ok(())) if matches!(phase, Phase::Staging | Phase::Undoing) => {
            return Err(e.context(format!("rollback to backup {id} failed")));
        }
        (Err(e), Err(s)) if matches!(phase, Phase::Staging | Phase::Undoing) => {
            return Err(s.context(format!(
                "rollback to backup {id} failed ({e:#}); and then starting the services again failed"
            )));
        }
        // From the swap on: the backup's data is in place.
        (r, s) => {
            let e = match (r, s) {
                (Err(e), Ok(())) => e,
                (Ok(_), Err(s)) => s,
                (Err(e), Err(s)) => s.context(format!("{e:#}")),
                (Ok(_), Ok(())) => unreachable!(),
            };
            return Err(e.context(format!(
                "the data of backup {id} is in place, but starting the services failed; \
                 `nuwax recover` tries again, `nuwax rollback {safety_id}` goes back to the state before"
            )));
        }
    };
    let safety = match safety {
        Some(Ok(s)) => s,
        Some(Err(e)) => return Err(failed_safety(e)),
        None => return Err(failed_safety(anyhow::anyhow!("it was not made"))),
    };
    if let Some(signal) = ctx.interrupt.received() {
        // From the swap on a rollback is finished, never left half done: say so, as interrupted.
        return Err(anyhow::Error::new(crate::Error::Interrupted { signal }).context(format!(
            "the rollback to backup {} had replaced the data when the signal came, so it was finished: \
             the backup's data, configs and images are in place and the services run; \
             `nuwax rollback {}` goes back to the state before",
            plan.backup_id, safety.id
        )));
    }
    Ok(RollbackOutcome {
        backup_id: plan.backup_id,
        safety_backup_id: safety.id,
        safety_backup_path: safety.path,
        safety_precopy_ms: safety.precopy_ms,
        safety_single_phase: safety.single_phase,
        restored: plan.items,
        images_retagged: retagged,
        services_started: restored.services,
        duration_ms: started.elapsed().as_millis() as u64,
        downtime_ms: report.downtime_ms,
    })
}

/// What [`restore`] leaves.
pub struct Restored {
    /// The services the scope keeps running from now on.
    pub services: Vec<String>,
}

/// Closes a rollback's operation as `result` left it; an undo that did not finish stays open,
/// so that the next command puts things back.
pub async fn close(op: &mut Operation<'_, Journal>, result: &Result<Restored>) -> Result<()> {
    match op.journal.phase {
        Phase::Undoing => Ok(()),
        _ => op.close(result.as_ref().err().map(|_| "failed")).await,
    }
}

/// Recovery of a rollback a dead nuwax left. Before the swap: its staging goes and the project
/// is as before. From the swap on: the swap is finished, image references point at the
/// backup's ids, the version is the backup's, and compose creates what the rollback would have;
/// starting the services is the scope's (journaled with the handover to compose before the
/// swap). While undoing: undone again.
pub async fn recover(ctx: &Ctx, j: &Journal) -> Result<String> {
    match j.phase {
        Phase::Undone => Ok("the failed rollback had been undone: the project is as before it".into()),
        Phase::Undoing => {
            let safety = match j.safety_backup_id {
                Some(id) => ctx.catalog.get(id).await?.and_then(|r| r.path).map(PathBuf::from),
                None => None,
            };
            load::undo(ctx, j, safety.as_deref()).await?;
            Ok("the failed rollback was undone: the project is as before it".into())
        }
        Phase::Staging => {
            steps::unstage(j).await?;
            Ok("the rollback had not replaced anything: the project is as before it".into())
        }
        Phase::Swapping | Phase::Swapped if !j.loading.is_empty() => {
            let safety = match j.safety_backup_id {
                Some(id) => ctx.catalog.get(id).await?.and_then(|r| r.path).map(PathBuf::from),
                None => None,
            };
            load::undo(ctx, j, safety.as_deref()).await?;
            Ok(format!(
                "the rollback to backup {} was loading the dumps of {} when nuwax ended: it was undone, \
                 the project is as before it",
                j.backup_id,
                j.loading.join(", ")
            ))
        }
        Phase::Swapping | Phase::Swapped => {
            // The replaced trees go only once the safety backup holds them (its own recovery,
            // which ran first, wrote it when the stop had frozen it).
            let safe = match j.safety_backup_id {
                Some(id) => ctx.catalog.get(id).await?.is_some_and(|r| r.is_complete()),
                None => false,
            };
            steps::finish_swap(ctx, j, !safe).await?;
            steps::create(ctx, j).await?;
            let kept = steps::replaced(j);
            let kept = match kept.is_empty() {
                true => String::new(),
                false => format!(
                    "; the safety backup was not made, so the state before the rollback is kept in {}",
                    kept.join(", ")
                ),
            };
            Ok(format!(
                "the rollback to backup {} was finished: the project holds the backup's data{kept}",
                j.backup_id
            ))
        }
    }
}

/// The phase recorded in a rollback journal, for callers that check how a nested rollback
/// ended ([`crate::flows::upgrade`]'s recovery).
pub fn phase_of(detail: &serde_json::Value) -> Option<Phase> {
    serde_json::from_value::<Journal>(detail.clone()).ok().map(|j| j.phase)
}

#[cfg(test)]
mod tests {
    use crate::engine::ImageRef;

    #[test]
    fn references_split_into_repo_and_tag() {
        let r = |s: &str| {
            let r = ImageRef::parse(s);
            (r.repository().to_string(), r.tag().to_string())
        };
        assert_eq!(r("nuwax-demo:1"), ("nuwax-demo".into(), "1".into()));
        assert_eq!(r("registry:5000/app"), ("registry:5000/app".into(), "latest".into()));
        assert_eq!(r("registry:5000/app:2"), ("registry:5000/app".into(), "2".into()));
    }

    #[test]
    fn an_old_journal_with_string_phases_still_reads() {
        let j: super::Journal =
            serde_json::from_value(serde_json::json!({"phase": "swapping", "backup_id": 3})).unwrap();
        assert_eq!(j.phase, super::Phase::Swapping);
    }
}
