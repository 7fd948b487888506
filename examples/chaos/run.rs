//! One run: a fresh project with random data, the operation's preconditions, the state before,
//! the operation with its signal, the next command, the checks, the teardown.

use std::collections::BTreeMap;
use std::io::{Read, Seek};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use rustix::process::Signal as Sig;

use crate::checks::{self, Facts, Violation};
use crate::data;
use crate::plan::{Op, Package, Plan, Signal};
use crate::project::{Ctx, Project, SERVICES, TIMEOUT, bail_if_stopping};
use crate::sh::{self, Exit, Log};
use crate::state::{self, State, Tree};

pub struct RunResult {
    pub plan: Plan,
    /// When the signal was to come.
    pub delay: Option<Duration>,
    /// Whether the signal reached a nuwax that was still running.
    pub hit: bool,
    pub exit: Option<Exit>,
    pub op_secs: Option<f64>,
    pub secs: f64,
    pub violations: Vec<Violation>,
    pub log: PathBuf,
    /// The harness was interrupted during this run.
    pub aborted: bool,
    /// `--keep-failed`: how to clean up the project left behind.
    pub kept: Option<String>,
}

/// A backup made as a precondition: its id and the trees it holds.
struct Made {
    id: i64,
    trees: BTreeMap<String, Tree>,
}

pub fn run(ctx: &Ctx, plan: Plan) -> RunResult {
    let started = Instant::now();
    let log_path = ctx.logs().join(format!("seed-{}-{}.log", plan.seed, plan.op.name()));
    let mut res = RunResult {
        plan: plan.clone(),
        delay: None,
        hit: false,
        exit: None,
        op_secs: None,
        secs: 0.0,
        violations: Vec::new(),
        log: log_path.clone(),
        aborted: false,
        kept: None,
    };
    let log = match Log::create(log_path) {
        Ok(l) => l,
        Err(e) => {
            res.violations.push(Violation::new("setup", format!("cannot create the log: {e}")));
            return res;
        }
    };
    log.note(&format!("seed {}: {plan}", plan.seed));
    let outcome = Project::create(ctx, plan.seed, &log).and_then(|mut p| {
        let r = body(&p, &plan, &log, &mut res);
        if (r.is_err() || !res.violations.is_empty()) && ctx.keep_failed && !sh::stopping() {
            p.keep = true;
            res.kept = Some(p.cleanup_hint());
        }
        r
    });
    if let Err(e) = outcome {
        if sh::stopping() {
            res.aborted = true;
        } else {
            res.violations.push(Violation::new("setup", format!("{e:#}")));
        }
    }
    for v in &res.violations {
        log.note(&format!("VIOLATION {}: {}", v.invariant, v.detail));
    }
    res.secs = started.elapsed().as_secs_f64();
    log.note(&format!("run took {:.1} s", res.secs));
    res
}

fn body(p: &Project, plan: &Plan, log: &Log, res: &mut RunResult) -> Result<()> {
    p.up()?;
    bail_if_stopping()?;
    log.note(&format!("data: {}", data::generate(p, plan.seed, plan.data_bytes)?));

    // Preconditions.
    let mut backup_secs = None;
    if plan.op == Op::Upgrade && plan.package == Package::V3Broken {
        let pkg = p.package("2", false)?;
        let out = p.nuwax(&["upgrade", "--package", &pkg.to_string_lossy()]);
        ensure!(out.ok(), "upgrade to 2 before the one to 3-broken: {}", out.brief());
        p.wait_healthy(&SERVICES, Duration::from_secs(90)).map_err(anyhow::Error::msg)?;
    }
    let mut made = Vec::new();
    for i in 0..plan.backups {
        bail_if_stopping()?;
        let trees = state::trees(p)?;
        let out = p.nuwax(&["--json", "backup"]);
        ensure!(out.ok(), "backup {} of {} before the operation: {}", i + 1, plan.backups, out.brief());
        let v: serde_json::Value = serde_json::from_str(&out.stdout).context("backup --json")?;
        made.push(Made { id: v["id"].as_i64().context("backup --json without an id")?, trees });
        backup_secs = Some(out.secs);
        if plan.change_after[i] {
            log.note(&format!("changed: {}", data::mutate(p, plan.seed, i)?));
        }
    }
    let package = match (plan.op, plan.package) {
        (Op::Upgrade, Package::V2) => Some(p.package("2", plan.package_file)?),
        (Op::Upgrade, Package::V3Broken) => Some(p.package("3-broken", plan.package_file)?),
        _ => None,
    };
    p.wait_healthy(&SERVICES, Duration::from_secs(90)).map_err(anyhow::Error::msg)?;
    bail_if_stopping()?;

    let before = State::capture(p)?;
    let target = (plan.op == Op::Rollback).then(|| &made[plan.target]);
    let args: Vec<String> = match plan.op {
        Op::Backup => vec!["backup".into()],
        Op::Rollback => vec!["rollback".into(), made[plan.target].id.to_string(), "--yes".into()],
        Op::Upgrade => {
            let pkg = package.as_ref().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
            vec!["upgrade".into(), "--package".into(), pkg, "--health-timeout".into(), "30".into()]
        }
        Op::Prune => vec!["prune".into(), "--keep-last".into(), plan.keep_last.to_string()],
    };
    let expected = estimate(plan, backup_secs);
    let delay = Duration::from_secs_f64(plan.frac * expected);
    res.delay = Some(delay);
    log.note(&format!(
        "the operation: expected ~{expected:.1} s; signal {} at {:.2} s",
        plan.signal.name(),
        delay.as_secs_f64()
    ));
    let ran = operation(p, plan, &args, delay, log)?;
    res.exit = Some(ran.exit);
    res.hit = ran.hit;
    res.op_secs = Some(ran.secs);

    // The next command finishes whatever the operation left.
    let next = p.nuwax(&["list"]);
    if !next.ok() {
        res.violations.push(Violation::new("next command", format!("nuwax list: {}", next.brief())));
    }
    bail_if_stopping()?;
    let facts = Facts {
        p,
        plan,
        before: &before,
        target: target.map(|m| (m.id, &m.trees)),
        exit: ran.exit,
        hit: ran.hit,
        silent: ran.silent,
        images: &p.ctx.images,
    };
    res.violations.extend(checks::check(&facts));
    Ok(())
}

/// How the operation went.
struct Ran {
    exit: Exit,
    /// The signal reached it while it ran.
    hit: bool,
    /// It printed nothing at all (a signal came before it did anything).
    silent: bool,
    secs: f64,
}

/// Runs the operation in its own process group, its output into the log; after `delay`, if it
/// still runs, delivers the plan's signal.
fn operation(p: &Project, plan: &Plan, args: &[String], delay: Duration, log: &Log) -> Result<Ran> {
    let mut cmd = p.nuwax_cmd();
    cmd.args(args);
    if let Some(r) = plan.rate_limit {
        cmd.env("NUWAX_RATE_LIMIT", r.to_string());
    }
    log.note(&format!("$ {}", sh::shown(&cmd)));
    // Its own file, copied into the log at the end: whether it printed anything is a fact.
    let out = tempfile::tempfile().context("a temp file for nuwax's output")?;
    let f = out.try_clone()?;
    let started = Instant::now();
    let mut child =
        sh::detach(&mut cmd).stdout(f.try_clone()?).stderr(f).spawn().context("starting nuwax")?;
    let mut exit = None;
    while started.elapsed() < delay {
        if let Some(s) = child.try_wait()? {
            exit = Some(Exit::of(s));
            break;
        }
        if sh::stopping() {
            sh::kill_group(&child);
            let _ = child.wait();
            bail!("aborted (the harness was interrupted)");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let hit = exit.is_none() && plan.signal != Signal::None;
    if hit {
        let pid = sh::pid(&child).context("nuwax's pid")?;
        let sent = match plan.signal {
            Signal::KillNuwax => rustix::process::kill_process(pid, Sig::KILL),
            Signal::KillGroup => rustix::process::kill_process_group(pid, Sig::KILL),
            Signal::IntGroup => rustix::process::kill_process_group(pid, Sig::INT),
            Signal::TermNuwax => rustix::process::kill_process(pid, Sig::TERM),
            Signal::None => Ok(()),
        };
        log.note(&format!(
            "sent {} at {:.2} s ({sent:?})",
            plan.signal.name(),
            started.elapsed().as_secs_f64()
        ));
    } else if exit.is_some() {
        log.note(&format!("it ended at {:.2} s, before the signal", started.elapsed().as_secs_f64()));
    }
    let exit = match exit {
        Some(e) => e,
        None => match sh::wait(&mut child, TIMEOUT, sh::stopping) {
            Some(e) => e,
            None if sh::stopping() => bail!("aborted (the harness was interrupted)"),
            None => Exit::TimedOut,
        },
    };
    let secs = started.elapsed().as_secs_f64();
    let mut text = String::new();
    let mut out = out;
    out.seek(std::io::SeekFrom::Start(0))?;
    out.read_to_string(&mut text)?;
    log.raw(&text);
    log.note(&format!("the operation: {exit} after {secs:.2} s"));
    Ok(Ran { exit, hit, silent: text.is_empty(), secs })
}

/// How long the operation should take, from the last precondition backup's duration when
/// there was one (else a guess from the data size), and the rate limit.
fn estimate(plan: &Plan, backup_secs: Option<f64>) -> f64 {
    let mb = plan.data_bytes as f64 / f64::from(1 << 20);
    let backup = backup_secs.unwrap_or(4.0 + mb / 40.0);
    let slow = plan.rate_limit.map_or(0.0, |r| plan.data_bytes as f64 / r as f64);
    match (plan.op, plan.package) {
        (Op::Backup, _) => backup + slow,
        // The safety backup, then extraction and the services created again.
        (Op::Rollback, _) => backup + 1.0 + 2.0 * slow,
        (Op::Upgrade, Package::V2) => backup + 2.0 + slow,
        (Op::Upgrade, Package::V3Broken) => 2.0 * backup + 8.0 + 2.0 * slow,
        // Mostly verifying the newest backup, then the deletions.
        (Op::Prune, _) => 0.2 + mb / 22.0,
    }
}

/// Used by the checks: `docker images` of a reference pattern.
pub fn image_tags(pattern: &str) -> Vec<String> {
    crate::project::quiet(Command::new("docker").args([
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        pattern,
    ]))
    .split_whitespace()
    .map(String::from)
    .collect()
}
