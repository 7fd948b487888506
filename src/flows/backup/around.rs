//! A backup made under another operation's stop (a rollback's safety backup, the pre-upgrade
//! backup), split around that stop: [`prepare`] copies into the snapshot while the services
//! still run; [`Prepared::freeze`], inside the stop, records the backup and copies only what
//! changed since; [`InScope::complete`] writes the archive from the snapshot once the services
//! run again. In one phase, `freeze` writes and seals the whole archive inside the stop, as
//! [`super::backup_in`] always does.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;

use super::images::ImageSpool;
use super::plan::Room;
use super::resume;
use super::twophase::{self, Precopied};
use super::write::{Moment, Sources, write};
use super::{
    BackupOptions, BackupOutcome, Journal, Pending, PhaseReport, begin, finish, service_records, write_frozen,
};
use crate::archive::Progress;
use crate::archive::manifest::ServiceRecord;
use crate::engine::Container;
use crate::flows::Ctx;
use crate::runner::{Operation, Scope, ScopeReport};

/// What was done before the stop: the sources found and, in two phases, the copy while running.
pub struct Prepared {
    sources: Sources,
    /// The servers dumped inside the stop (their data mounts are not among the sources).
    dumps: super::dumps::DumpPlan,
    /// Kept until the archive is written: it holds the images the archive takes in.
    spool: Option<ImageSpool>,
    pre: Option<Precopied>,
    phases: PhaseReport,
    started: Instant,
}

/// Before the stop: finds what the backup reads and, unless `one_phase` says why not (or the
/// snapshot cannot be used), copies it into the snapshot while the services run. The caller
/// checked the room before, for `data` bytes when it says (else they are counted here); a copy
/// that does not fit falls back to one phase. The database servers of `dump` are dumped inside
/// the stop, which must leave them running, and the archive is then sealed inside it: the
/// caller loads a database from it before the stop ends.
pub async fn prepare(
    ctx: &Ctx,
    opts: &BackupOptions,
    containers: &[Container],
    one_phase: Option<&str>,
    data: Option<u64>,
    dump: &[String],
) -> Result<Prepared> {
    let started = Instant::now();
    let dumps = super::dumps::plan_for(ctx, containers, dump).await?;
    let (sources, spool) = super::find_sources(ctx, opts, containers, &dumps).await?;
    let (pre, phases) = match one_phase {
        Some(why) => (None, PhaseReport { single_phase: Some(why.to_string()), ..Default::default() }),
        None => {
            let room = match data {
                Some(data) => Room::for_data(data),
                None => {
                    let (plan, excludes, skip) =
                        (sources.plan.clone(), sources.excludes.clone(), sources.skip_dirs.clone());
                    tokio::task::spawn_blocking(move || super::plan::room(&plan, &excludes, &skip)).await?
                }
            };
            super::copy_while_running(ctx, opts.snapshot, &sources, containers, &room).await?
        }
    };
    if let Some(pre) = &pre {
        // `freeze` syncs the snapshot inside the stop (the saved state must not point at lost
        // bytes): flushed now, only the changes are left to flush then.
        let snap = pre.snap.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || snap.sync()).await? {
            tracing::warn!("syncing the snapshot: {e}");
        }
    }
    ctx.interrupt.check()?;
    Ok(Prepared { sources, dumps, spool, pre, phases, started })
}

/// A backup recorded inside a stop: sealed already (one phase), or frozen in the snapshot and
/// waiting for [`InScope::complete`] once the services run again.
pub enum InScope<'c> {
    Done(Box<BackupOutcome>),
    Held(Box<Held<'c>>),
}

/// A backup whose data the stop froze in the snapshot; its operation is open until it is
/// written (a crash before that abandons it, like any unfinished backup).
pub struct Held<'c> {
    op: Operation<'c, Journal>,
    pending: Pending,
    opts: BackupOptions,
    prepared: Prepared,
    services: Vec<ServiceRecord>,
    moment: Moment,
    frozen: twophase::Frozen,
}

impl Prepared {
    /// Inside the caller's stop: records the backup, then either copies what changed into the
    /// snapshot (two phases) or writes and seals the whole archive (one).
    pub async fn freeze<'c>(
        mut self,
        ctx: &'c Ctx,
        opts: &BackupOptions,
        scope: &Scope<'_>,
        progress: Arc<dyn Progress>,
    ) -> Result<InScope<'c>> {
        ctx.interrupt.check()?;
        let containers = ctx.engine()?.project_containers(&ctx.project.name).await?;
        // A server dumped inside the stop runs through it.
        let services =
            service_records(&containers, |c| scope.keeps_running(&c.service) || self.dumps.serves(c));
        let (mut op, pending, services) = begin(ctx, opts, services).await?;
        let killed = scope.killed().to_vec();
        let Some(pre) = self.pre.take() else {
            let written = match self.moment(ctx, killed).await {
                Ok(moment) => {
                    write(ctx, opts, &pending, &self.sources, services, moment, progress, Vec::new()).await
                }
                Err(e) => Err(e),
            };
            let report = ScopeReport::default();
            let made = finish(ctx, op, &pending, written, report, self.phases, self.started).await?;
            return Ok(InScope::Done(Box::new(made)));
        };
        let frozen = match twophase::delta(ctx, &pre, &self.sources).await {
            Ok(f) => f,
            Err(e) => {
                // Abandoned: `finish` marks it failed and returns the error.
                let report = ScopeReport::default();
                let made = finish(ctx, op, &pending, Err(e), report, self.phases, self.started).await;
                return made.map(|b| InScope::Done(Box::new(b)));
            }
        };
        self.phases.delta_bytes = Some(frozen.report.bytes_written);
        if !self.dumps.servers.is_empty() {
            // The caller loads a database from this backup before its stop ends: the dumps are
            // read while their servers still run, and the archive sealed, here.
            let written = match self.moment(ctx, killed).await {
                Ok(moment) => {
                    write_frozen(ctx, opts, &pending, &self.sources, services, moment, progress, frozen).await
                }
                Err(e) => Err(e),
            };
            let report = ScopeReport::default();
            let made = finish(ctx, op, &pending, written, report, self.phases, self.started).await;
            return made.map(|b| InScope::Done(Box::new(b)));
        }
        let moment =
            Moment { stopped: true, live: false, killed, dumps: Default::default(), ran: Vec::new() };
        // The caller's way back from here on: a crash must not lose it.
        if let Err(e) = self.keep(&mut op, opts, &pending, &services, &moment, &frozen).await {
            let report = ScopeReport::default();
            let made = finish(ctx, op, &pending, Err(e), report, self.phases, self.started).await;
            return made.map(|b| InScope::Done(Box::new(b)));
        }
        let opts = opts.clone();
        let held = Held { op, pending, opts, prepared: self, services, moment, frozen };
        Ok(InScope::Held(Box::new(held)))
    }

    /// The moment inside the stop: the dumps (if any) started now, each holding it.
    async fn moment(&self, ctx: &Ctx, killed: Vec<String>) -> Result<Moment> {
        let started = super::start_dumps(ctx, &self.dumps).await?;
        let dumps = super::write::Dumps { records: self.dumps.records(), started: started.into() };
        Ok(Moment { stopped: true, live: false, killed, dumps, ran: Vec::new() })
    }

    /// Saves what the archive will be written from, so that recovery can write it.
    async fn keep(
        &self,
        op: &mut Operation<'_, Journal>,
        opts: &BackupOptions,
        pending: &Pending,
        services: &[ServiceRecord],
        moment: &Moment,
        frozen: &twophase::Frozen,
    ) -> Result<()> {
        let sources = &self.sources;
        let saved = resume::Saved {
            pending: Cow::Borrowed(pending),
            kind: opts.kind,
            compression: opts.compression.as_str().to_string(),
            level: opts.level,
            plan: Cow::Borrowed(&sources.plan),
            skipped: Cow::Borrowed(&sources.skipped),
            skip_dirs: Cow::Borrowed(&sources.skip_dirs),
            services: Cow::Borrowed(services),
            killed: Cow::Borrowed(&moment.killed),
            reads: Cow::Borrowed(&frozen.reads),
            snapshot: Cow::Borrowed(&frozen.snap),
            index: Cow::Borrowed(&frozen.index),
        };
        let ctx = op.ctx();
        let path = resume::path(&ctx.project.storage_dir, pending.id);
        resume::save(path.clone(), &saved).await?;
        op.advance(|j| j.frozen = Some(path)).await
    }
}

impl InScope<'_> {
    pub fn id(&self) -> i64 {
        match self {
            InScope::Done(b) => b.id,
            InScope::Held(h) => h.pending.id,
        }
    }

    /// The archive, once it is on disk: only a sealed backup has one yet.
    pub fn archive(&self) -> Option<&Path> {
        match self {
            InScope::Done(b) => Some(&b.path),
            InScope::Held(_) => None,
        }
    }

    /// With the services running again: writes the archive from the snapshot, verifies and
    /// seals it (a sealed backup is returned as it is). `ctx` decides which signals stop it.
    pub async fn complete(self, ctx: &Ctx, progress: Arc<dyn Progress>) -> Result<BackupOutcome> {
        let h = match self {
            InScope::Done(b) => return Ok(*b),
            InScope::Held(h) => *h,
        };
        let Held { op, pending, opts, prepared, services, moment, frozen } = h;
        let sources = &prepared.sources;
        let written = write_frozen(ctx, &opts, &pending, sources, services, moment, progress, frozen).await;
        let report = ScopeReport::default();
        let made = finish(ctx, op, &pending, written, report, prepared.phases, prepared.started).await;
        drop(prepared.spool);
        made
    }
}
