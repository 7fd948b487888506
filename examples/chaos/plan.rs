//! What one run does, decided from its seed alone: the operation, its preconditions, the
//! signal and when it comes.

use std::fmt;

use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    Backup,
    Rollback,
    Upgrade,
    Prune,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Backup, Op::Rollback, Op::Upgrade, Op::Prune];

    pub fn name(self) -> &'static str {
        match self {
            Op::Backup => "backup",
            Op::Rollback => "rollback",
            Op::Upgrade => "upgrade",
            Op::Prune => "prune",
        }
    }

    pub fn parse(s: &str) -> Result<Op, String> {
        Op::ALL
            .into_iter()
            .find(|o| o.name() == s)
            .ok_or_else(|| format!("unknown op {s:?} (backup, rollback, upgrade, prune)"))
    }
}

/// What the harness does to the running operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Signal {
    /// No signal: the control run.
    None,
    /// SIGKILL to nuwax only (its children, in their own groups, live on).
    KillNuwax,
    /// SIGKILL to nuwax's process group.
    KillGroup,
    /// SIGINT to nuwax's process group: a terminal's Ctrl-C.
    IntGroup,
    /// SIGTERM to nuwax: systemd, `kill`.
    TermNuwax,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::None => "none",
            Signal::KillNuwax => "KILL nuwax",
            Signal::KillGroup => "KILL group",
            Signal::IntGroup => "INT group",
            Signal::TermNuwax => "TERM nuwax",
        }
    }
}

/// The upgrade's package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Package {
    /// v1 -> v2, which succeeds.
    V2,
    /// v2 -> v3-broken (after an upgrade to v2 first), whose health gate fails: the automatic
    /// rollback runs.
    V3Broken,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub seed: u64,
    pub op: Op,
    pub signal: Signal,
    /// When the signal comes, as a fraction of the operation's expected duration (above 1:
    /// usually after it ended, which must be fine too).
    pub frac: f64,
    /// `NUWAX_RATE_LIMIT` (bytes/s) for the operation, to widen its windows.
    pub rate_limit: Option<u64>,
    /// Extra data, in bytes, spread over the volumes and the bind mount.
    pub data_bytes: u64,
    /// Backups made before the operation (rollback targets, prune candidates).
    pub backups: usize,
    /// After backup i: change the data (so the backups and "before" differ).
    pub change_after: Vec<bool>,
    /// Rollback: the backup (index into the ones made first) to go back to.
    pub target: usize,
    /// Upgrade: which package, and whether it is given as a built file instead of a directory.
    pub package: Package,
    pub package_file: bool,
    /// Prune: `--keep-last N`.
    pub keep_last: u32,
}

impl Plan {
    pub fn new(seed: u64, ops: &[Op], max_mb: u64) -> Plan {
        let op = *Rng::new(seed, "op").pick(ops);
        let mut r = Rng::new(seed, "plan");
        let signal = match r.below(14) {
            0 | 1 => Signal::None,
            2..=4 => Signal::KillNuwax,
            5..=7 => Signal::KillGroup,
            8..=10 => Signal::IntGroup,
            _ => Signal::TermNuwax,
        };
        let frac = r.unit() * 1.15;
        let rate_limit = r.chance(0.25).then(|| *r.pick(&[4u64, 8, 16]) << 20);
        // Log-uniform between 2 MiB and max_mb MiB: many small runs, some big ones.
        let (lo, hi) = (2f64.ln(), (max_mb.max(3) as f64).ln());
        let data_bytes = ((lo + r.unit() * (hi - lo)).exp() * f64::from(1 << 20)) as u64;
        let backups = match op {
            Op::Backup => r.below(2) as usize,
            Op::Rollback => r.range(1, 2) as usize,
            Op::Upgrade => 0,
            Op::Prune => r.range(2, 4) as usize,
        };
        let change_after = (0..backups).map(|_| r.chance(0.7)).collect();
        let target = r.below(backups.max(1) as u64) as usize;
        let package = if r.chance(0.35) { Package::V3Broken } else { Package::V2 };
        let package_file = r.chance(0.5);
        // Always fewer than the backups made, so that the prune has something to remove.
        let keep_last = r.range(1, backups.saturating_sub(1).max(1) as u64) as u32;
        Plan {
            seed,
            op,
            signal,
            frac,
            rate_limit,
            data_bytes,
            backups,
            change_after,
            target,
            package,
            package_file,
            keep_last,
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.op.name())?;
        match self.op {
            Op::Backup => write!(f, "(after {} backup(s))", self.backups)?,
            Op::Rollback => write!(
                f,
                "to backup #{} of {} (changes after each: {:?})",
                self.target + 1,
                self.backups,
                self.change_after
            )?,
            Op::Upgrade => write!(
                f,
                "{} as a {}",
                if self.package == Package::V2 { "1 -> 2" } else { "2 -> 3-broken" },
                if self.package_file { "file" } else { "directory" }
            )?,
            Op::Prune => write!(f, "--keep-last {} of {} backups", self.keep_last, self.backups)?,
        }
        write!(
            f,
            ", signal {} at {:.0}% of its expected duration, {:.1} MiB of data",
            self.signal.name(),
            self.frac * 100.0,
            self.data_bytes as f64 / f64::from(1 << 20)
        )?;
        if let Some(r) = self.rate_limit {
            write!(f, ", NUWAX_RATE_LIMIT {} MiB/s", r >> 20)?;
        }
        Ok(())
    }
}
