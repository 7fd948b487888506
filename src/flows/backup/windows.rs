//! `stop = "each"` in nuwax.toml: instead of one stop of the whole project, a two-phase
//! backup stops one group of services at a time (those linked by `depends_on`, either way, or
//! mounting the same source), copies what changed in their data, and starts them again before
//! the next group stops. One snapshot pass spans the windows, so the index covers them all.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::Result;

use super::twophase::{Frozen, Precopied, mirrored, signalled};
use super::write::Sources;
use crate::archive::{self, ScanResult};
use crate::engine::Container;
use crate::flows::Ctx;
use crate::flows::sources::{Origin, Role, Source};
use crate::snapshot::{Pass, PassKind};

/// `stop = "each"`: the stops of the windows, in turn. Services linked by `depends_on` (either
/// way) or mounting the same source stop together; each window holds the running containers of
/// one such group and the sources they mount.
pub(super) struct Window {
    pub containers: Vec<Container>,
    pub sources: Vec<usize>,
}

/// The windows of a backup, in a stable order (by their first service's name). Sources no
/// running service mounts (configs, stopped services' data) are in none: nothing writes them.
pub(super) fn windows(ctx: &Ctx, containers: &[Container], sources: &Sources) -> Vec<Window> {
    let running: Vec<&Container> = containers.iter().filter(|c| c.is_running()).collect();
    // Each running service starts as a group of its own; links merge groups.
    let mut groups: Vec<BTreeSet<String>> = running
        .iter()
        .map(|c| BTreeSet::from([c.service.clone()]))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut link = |a: &str, b: &str| {
        let find = |s: &str| groups.iter().position(|g| g.contains(s));
        if let (Some(i), Some(j)) = (find(a), find(b))
            && i != j
        {
            let merged = groups.remove(i.max(j));
            groups[i.min(j)].extend(merged);
        }
    };
    let owners = |s: &Source| -> Vec<String> {
        match &s.role {
            Role::Mount { destinations, .. } => {
                destinations.iter().filter_map(|d| d.split(':').next().map(str::to_string)).collect()
            }
            _ => Vec::new(),
        }
    };
    for (service, deps) in crate::runner::dependencies(ctx, containers) {
        for d in deps {
            link(&service, &d);
        }
    }
    for s in &sources.plan {
        for pair in owners(s).windows(2) {
            link(&pair[0], &pair[1]);
        }
    }
    groups
        .iter()
        .map(|g| Window {
            containers: running.iter().filter(|c| g.contains(&c.service)).map(|c| (*c).clone()).collect(),
            sources: (sources.plan.iter().enumerate())
                .filter(|(_, s)| mirrored(s, &sources.live) && owners(s).iter().any(|o| g.contains(o)))
                .map(|(i, _)| i)
                .collect(),
        })
        .collect()
}

/// What the pass of the windows is told.
enum Step {
    /// Copy what changed in these sources (a window's services are stopped), then reply.
    Window(Vec<usize>, tokio::sync::oneshot::Sender<Result<()>>),
    /// Every window is done: the remaining sources, then the index.
    Rest,
}

/// One snapshot pass over several stops (`stop = "each"`): it runs on a blocking thread and
/// copies each window's sources when told, so the index covers all of them in the end.
pub(super) struct WindowPass {
    steps: std::sync::mpsc::Sender<Step>,
    pass: tokio::task::JoinHandle<Result<Frozen>>,
}

impl WindowPass {
    pub fn start(ctx: &Ctx, pre: &Precopied, sources: &Sources) -> WindowPass {
        let (snap, old) = (pre.snap.clone(), pre.index.clone());
        let (tx, rx) = std::sync::mpsc::channel::<Step>();
        let plan = sources.plan.clone();
        let (excludes, skip_dirs) = (sources.excludes.clone(), sources.skip_dirs.clone());
        let (cancel, rate) = (ctx.interrupt.cancel().clone(), crate::faults::rate_limit());
        let live = sources.live.clone();
        let pass = tokio::task::spawn_blocking(move || {
            let mut pass = Pass::new(&snap, &old, PassKind::Stopped, cancel, rate);
            let mut reads: Vec<Option<(ScanResult, PathBuf)>> = plan.iter().map(|_| None).collect();
            let mut copy = |pass: &mut Pass<'_>, i: usize| -> Result<()> {
                let src = &plan[i];
                if let Origin::Host(root) = &src.origin
                    && mirrored(src, &live)
                    && reads[i].is_none()
                {
                    let scan = pass.source(&src.prefix, root, &excludes, &skip_dirs)?;
                    reads[i] = Some((scan, snap.data(&src.prefix)));
                }
                Ok(())
            };
            loop {
                match rx.recv() {
                    Ok(Step::Window(group, reply)) => {
                        let done = group.iter().try_for_each(|&i| copy(&mut pass, i));
                        let failed = done.is_err();
                        let _ = reply.send(done);
                        if failed {
                            anyhow::bail!("a window's copy failed");
                        }
                    }
                    Ok(Step::Rest) => break,
                    // The backup gave up between windows.
                    Err(_) => return Err(archive::Error::Cancelled.into()),
                }
            }
            for i in 0..plan.len() {
                copy(&mut pass, i)?;
            }
            let (index, report) = pass.finish()?;
            Ok(Frozen { snap, reads, index, report })
        });
        WindowPass { steps: tx, pass }
    }

    /// What a window's stop uses to have its sources copied.
    pub fn window(&self, sources: Vec<usize>) -> WindowCopy {
        WindowCopy { steps: self.steps.clone(), sources }
    }

    /// After the last window: the sources no window held, and the new index.
    pub async fn finish(self, ctx: &Ctx) -> Result<Frozen> {
        let _ = self.steps.send(Step::Rest);
        let frozen = self.pass.await.map_err(|e| anyhow::anyhow!("the snapshot pass panicked: {e}"))?;
        signalled(ctx, frozen)
    }
}

/// One window's share of a [`WindowPass`].
pub(super) struct WindowCopy {
    steps: std::sync::mpsc::Sender<Step>,
    sources: Vec<usize>,
}

impl WindowCopy {
    /// Inside the window's stop: its sources brought up to date.
    pub async fn run(self, ctx: &Ctx) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let ended = || anyhow::anyhow!("the snapshot pass ended");
        self.steps.send(Step::Window(self.sources, tx)).map_err(|_| ended())?;
        signalled(ctx, rx.await.map_err(|_| ended())?)
    }
}
