//! The two phases of a backup's copy: into the snapshot while the services run ([`precopy`]),
//! then, while they are stopped, only what changed since ([`delta`]). The archive is then
//! written from the snapshot with the services running again. Whenever the snapshot cannot be
//! used, the backup says why and copies in one phase while stopped, as before.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;

use super::plan::Room;
use super::windows::WindowPass;
use super::write::Sources;
use crate::archive::{self, ScanResult};
use crate::engine::Container;
use crate::flows::Ctx;
use crate::flows::sources::{Origin, Role, Source};
use crate::fsutil;
use crate::snapshot::{self, Index, Pass, PassKind, PassReport, Snapshot};

/// Whether a backup copies while running, set by nuwax.toml (`snapshot = false`) or the command
/// line (`--no-snapshot`): off also removes the snapshot, for operators short of space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotUse {
    On,
    Off(&'static str),
}

/// How a backup copies.
pub(super) enum Phases {
    Two(Snapshot),
    /// One phase while stopped, and why.
    One(String),
}

/// The copy made while running, ready for the delta.
pub(super) struct Precopied {
    pub snap: Snapshot,
    pub index: Index,
    pub ms: u64,
}

/// What the stop froze: per source of the plan, the scan made while stopped and the mirror the
/// archive reads it from (`None`: read from the source itself, e.g. the image spool).
pub(super) struct Frozen {
    pub snap: Snapshot,
    pub reads: Vec<Option<(ScanResult, PathBuf)>>,
    pub index: Index,
    pub report: PassReport,
}

/// The sources the snapshot holds: every host tree but the image spool (written before the
/// stop, never changed) and the mounts read live (`live`: their services keep running).
pub(super) fn mirrored(s: &Source, live: &BTreeSet<String>) -> bool {
    matches!(s.origin, Origin::Host(_)) && !matches!(s.role, Role::Images) && !live.contains(&s.prefix)
}

/// One phase or two, decided before anything is copied, from the preflight's `room`.
pub(super) fn decide(
    ctx: &Ctx,
    snapshot: SnapshotUse,
    sources: &Sources,
    containers: &[Container],
    room: &Room,
) -> Phases {
    let (storage, project) = (&ctx.project.storage_dir, &ctx.project.name);
    if let Some(one) = one_phase(ctx, snapshot, sources, containers, room) {
        // Off, or no room to bring it up to date: the snapshot only takes the archive's room.
        if one.removes_snapshot {
            match Snapshot::remove(storage, project) {
                Ok(true) => tracing::info!("snapshot removed ({})", one.why),
                Ok(false) => {}
                Err(e) => tracing::warn!("removing the snapshot: {e}"),
            }
        }
        return Phases::One(one.why);
    }
    match Snapshot::open(storage, project) {
        Ok(snap) => Phases::Two(snap),
        Err(e) => Phases::One(format!("the snapshot cannot be created: {e}")),
    }
}

/// Why a backup copies in one phase while stopped, and whether the snapshot goes.
pub(super) struct OnePhase {
    pub why: String,
    pub removes_snapshot: bool,
}

/// Why the backup would copy in one phase; `None`: two (nothing is changed here, so
/// `backup --dry-run` says the same).
pub(super) fn one_phase(
    ctx: &Ctx,
    snapshot: SnapshotUse,
    sources: &Sources,
    containers: &[Container],
    room: &Room,
) -> Option<OnePhase> {
    let (storage, project) = (&ctx.project.storage_dir, &ctx.project.name);
    let one = |why: String, removes_snapshot| Some(OnePhase { why, removes_snapshot });
    if let SnapshotUse::Off(why) = snapshot {
        return one(why.to_string(), true);
    }
    if !containers.iter().any(Container::is_running) {
        return one("no service runs: nothing to stop".into(), false);
    }
    if let Some(s) = sources.plan.iter().find(|s| matches!(s.origin, Origin::Engine { .. })) {
        return one(format!("{} is read through the engine, which needs the stop", s.prefix), false);
    }
    let free = fsutil::free_space(storage).unwrap_or(u64::MAX);
    // Only when room is short is it worth walking the snapshot for what it already holds.
    let mut needed = room.data.saturating_add(room.archive);
    if free < needed {
        let held = Snapshot::usage(storage, project).map_or(0, |u| u.bytes);
        needed = room.data.saturating_sub(held).saturating_add(room.archive);
        if free < needed {
            let why = format!(
                "not enough room in {} for the snapshot and the archive ({} needed, {} free)",
                storage.display(),
                fsutil::human_bytes(needed),
                fsutil::human_bytes(free)
            );
            return one(why, held > 0);
        }
    }
    None
}

/// The copy while the services run. `Ok(Err(why))`: it did not work out (a full disk removes
/// the snapshot), and the backup copies in one phase; a signal is an error.
pub(super) async fn precopy(
    ctx: &Ctx,
    snap: Snapshot,
    sources: &Sources,
) -> Result<Result<Precopied, String>> {
    let started = Instant::now();
    let s = snap.clone();
    let live = sources.live.clone();
    let work = pass_over(ctx, sources, move |sources, excludes, skip_dirs, cancel, rate| {
        let old = s.take_index()?;
        let mut pass = Pass::new(&s, &old, PassKind::Running, cancel, rate);
        for src in &sources {
            if let Origin::Host(root) = &src.origin
                && mirrored(src, &live)
            {
                pass.source(&src.prefix, root, &excludes, &skip_dirs)?;
            }
        }
        Ok(pass.finish()?.0)
    });
    match signalled(ctx, work.await) {
        Ok(index) => Ok(Ok(Precopied { snap, index, ms: started.elapsed().as_millis() as u64 })),
        // A signal (the pass returns it as the signal's error): the backup stops, no fallback.
        Err(e) if is_cancelled(&e) || ctx.interrupt.check().is_err() => Err(e),
        Err(e) if snapshot::is_no_space(e.as_ref()) => {
            let _ = Snapshot::remove(&ctx.project.storage_dir, &ctx.project.name);
            Ok(Err(format!("the snapshot did not fit ({e:#}); it was removed")))
        }
        Err(e) => Ok(Err(format!("the copy while running failed ({e:#})"))),
    }
}

/// Inside the stop: the snapshot brought up to date with what changed since [`precopy`] (one
/// window holding every source).
pub(super) async fn delta(ctx: &Ctx, pre: &Precopied, sources: &Sources) -> Result<Frozen> {
    WindowPass::start(ctx, pre, sources).finish(ctx).await
}

/// The archive was written from the snapshot: it is on disk and the next backup may trust it.
pub(super) async fn commit(snap: Snapshot, index: Index) {
    match tokio::task::spawn_blocking(move || snap.commit(&index)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let e = anyhow::Error::from(e);
            tracing::warn!("saving the snapshot's index: {e:#}; the next backup compares it by content")
        }
        Err(e) => tracing::warn!("saving the snapshot's index: {e}"),
    }
}

/// Runs `work` on the blocking pool with the plan's sources and what a pass needs.
async fn pass_over<T: Send + 'static>(
    ctx: &Ctx,
    sources: &Sources,
    work: impl FnOnce(Vec<Source>, globset::GlobSet, Vec<PathBuf>, archive::Cancel, Option<u64>) -> Result<T>
    + Send
    + 'static,
) -> Result<T> {
    let plan = sources.plan.clone();
    let (excludes, skip_dirs) = (sources.excludes.clone(), sources.skip_dirs.clone());
    let (cancel, rate) = (ctx.interrupt.cancel().clone(), crate::faults::rate_limit());
    tokio::task::spawn_blocking(move || work(plan, excludes, skip_dirs, cancel, rate))
        .await
        .map_err(|e| anyhow::anyhow!("the snapshot pass panicked: {e}"))?
}

fn is_cancelled(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<archive::Error>(), Some(archive::Error::Cancelled))
}

/// A pass cancelled by a signal fails with the signal's error (exit code and message).
pub(super) fn signalled<T>(ctx: &Ctx, r: Result<T>) -> Result<T> {
    match r {
        Err(e) if is_cancelled(&e) => {
            ctx.interrupt.check()?;
            Err(e)
        }
        other => other,
    }
}
