//! The chaos trial: randomized kill points for nuwax's operations against the real engine.
//!
//! Each run, from its seed: a fresh copy of compose/demo (its own project name, image tag and
//! upgrade repository) with random data, the operation's preconditions, the state before, then
//! the operation (backup, rollback, upgrade or prune) in its own process group, hit after a
//! random delay by a random signal (or none), then the next command (`nuwax list`, which
//! recovers), then the invariants (see checks.rs), then the teardown. Run it with
//! `scripts/chaos`, which builds nuwax and this example first.

mod checks;
mod data;
mod images;
mod plan;
mod project;
mod report;
mod rng;
mod run;
mod sh;
mod state;

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use clap::Parser;

use crate::plan::{Op, Plan};
use crate::project::Ctx;

#[derive(Parser)]
#[command(about = "Randomized kill-point trial of nuwax's backup, rollback, upgrade and prune")]
struct Args {
    /// The first run's seed; run k has seed S+k, so `--seed S --runs 1` replays run S
    /// (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// How many runs.
    #[arg(long, default_value_t = 20)]
    runs: u64,
    /// Runs at the same time (each with its own project).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=2))]
    parallel: u64,
    /// The operations to pick from (default: all).
    #[arg(long, value_delimiter = ',', value_name = "OP,...")]
    ops: Vec<String>,
    /// Leave the project of a run with a violation as it is, for inspection.
    #[arg(long)]
    keep_failed: bool,
    /// The most extra data a run puts into its volumes and bind mount, in MiB.
    #[arg(long, default_value_t = 50, value_name = "MIB")]
    max_mb: u64,
    /// The nuwax binary (a debug build, or a release build with `--features fault-injection`,
    /// so that NUWAX_RATE_LIMIT works).
    #[arg(long)]
    nuwax: PathBuf,
    /// The compose CLI: v2 (`docker compose`) or v1 (`docker-compose`).
    #[arg(long, default_value = "v2", value_parser = ["v2", "v1"])]
    compose: String,
    /// Where runs and logs go (default: a new directory under $TMPDIR).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match trial(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chaos: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn trial(args: &Args) -> Result<ExitCode> {
    let ops: Vec<Op> = if args.ops.is_empty() {
        Op::ALL.to_vec()
    } else {
        args.ops.iter().map(|o| Op::parse(o.trim())).collect::<Result<_, _>>().map_err(anyhow::Error::msg)?
    };
    let seed = args.seed.unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        (t.as_secs() ^ u64::from(t.subsec_nanos())) % 1_000_000_000
    });
    let nuwax = std::fs::canonicalize(&args.nuwax)
        .with_context(|| format!("nuwax binary {}", args.nuwax.display()))?;
    let (compose, choice) = match args.compose.as_str() {
        "v1" => (vec!["docker-compose".to_string()], "v1"),
        _ => (vec!["docker".to_string(), "compose".to_string()], "v2"),
    };
    let probe = Command::new(&compose[0]).args(&compose[1..]).arg("version").output();
    if !probe.is_ok_and(|o| o.status.success()) {
        bail!("`{} version` fails: the chosen compose CLI is not installed", compose.join(" "));
    }
    if !Command::new("docker").arg("info").output().is_ok_and(|o| o.status.success()) {
        bail!("no Docker engine answers (`docker info` fails)");
    }
    let work = match &args.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => tempfile::Builder::new().prefix("nuwax-chaos-").tempdir()?.keep(),
    };
    std::fs::create_dir_all(work.join("logs"))?;
    std::fs::create_dir_all(work.join("runs"))?;
    println!("chaos: {} run(s) from seed {seed}, ops {}, parallel {}", args.runs, names(&ops), args.parallel);
    println!("chaos: logs in {}", work.join("logs").display());
    watch_signals();

    let log = sh::Log::create(work.join("logs/harness.log"))?;
    let mut versions = vec![1];
    if ops.contains(&Op::Upgrade) {
        versions.extend([2, 3]);
    }
    let id = format!("nxc{}", std::process::id());
    let images = images::Images::build(&project::repo(), &id, &versions, &log)?;
    let ctx = Ctx {
        repo: project::repo(),
        nuwax,
        compose,
        compose_choice: choice,
        work: work.clone(),
        id,
        images,
        keep_failed: args.keep_failed,
    };

    let next = AtomicU64::new(0);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..args.parallel {
            s.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::SeqCst);
                    if k >= args.runs || sh::stopping() {
                        break;
                    }
                    let plan = Plan::new(seed + k, &ops, args.max_mb);
                    println!("[{}/{}] seed {}: {plan}", k + 1, args.runs, plan.seed);
                    let r = run::run(&ctx, plan);
                    println!("[{}/{}] {}", k + 1, args.runs, report::line(&r));
                    results.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                }
            });
        }
    });
    ctx.images.remove_all(&log);

    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|r| r.plan.seed);
    let ops_arg = (!args.ops.is_empty()).then(|| args.ops.join(","));
    println!("\n{}", report::summary(&results, ops_arg.as_deref()));
    println!("chaos: logs in {}", work.join("logs").display());
    let bad = results.iter().filter(|r| !r.violations.is_empty()).count();
    // Empty unless --keep-failed kept a project.
    let _ = std::fs::remove_dir(work.join("runs"));
    if sh::stopping() {
        println!("chaos: interrupted; {} run(s) finished", results.iter().filter(|r| !r.aborted).count());
        return Ok(ExitCode::from(130));
    }
    if bad > 0 {
        println!("chaos: {bad} of {} run(s) violated an invariant", results.len());
        return Ok(ExitCode::from(1));
    }
    println!("chaos: {} run(s), no violation", results.len());
    Ok(ExitCode::SUCCESS)
}

fn names(ops: &[Op]) -> String {
    ops.iter().map(|o| o.name()).collect::<Vec<_>>().join(",")
}

/// The first SIGINT/SIGTERM stops new runs and lets the current ones tear down; a second one
/// exits at once.
fn watch_signals() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) =
                (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
            else {
                return;
            };
            loop {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                if sh::STOP.swap(true, Ordering::SeqCst) {
                    eprintln!("chaos: interrupted again: exiting without cleaning up");
                    std::process::exit(130);
                }
                eprintln!("chaos: interrupted: tearing the current runs down (again to exit at once)");
            }
        });
    });
}
