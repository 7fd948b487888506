//! The summary: op x signal -> runs, runs the signal hit while nuwax ran, violations; then each
//! violation with its seed, its invariant and its log.

use std::collections::BTreeMap;

use crate::plan::{Op, Signal};
use crate::run::RunResult;

/// One line per run, printed as it ends.
pub fn line(r: &RunResult) -> String {
    let sig = match (r.plan.signal, r.delay) {
        (Signal::None, _) => "no signal".to_string(),
        (s, Some(d)) => {
            format!("{} @{:.2}s{}", s.name(), d.as_secs_f64(), if r.hit { "" } else { " (ended first)" })
        }
        (s, None) => s.name().to_string(),
    };
    let exit = r.exit.map(|e| e.to_string()).unwrap_or_else(|| "-".into());
    let verdict = if r.aborted {
        "aborted".to_string()
    } else if r.violations.is_empty() {
        "ok".to_string()
    } else {
        let names: Vec<&str> = r.violations.iter().map(|v| v.invariant).collect();
        format!("VIOLATION: {}", names.join("; "))
    };
    let op = r.op_secs.map(|s| format!(", op {s:.1} s")).unwrap_or_default();
    format!("seed {} {}: {sig}, {exit} -> {verdict} ({:.0} s{op})", r.plan.seed, r.plan.op.name(), r.secs)
}

pub fn summary(results: &[RunResult], ops_arg: Option<&str>) -> String {
    let mut cells: BTreeMap<(Op, Signal), (usize, usize, usize)> = BTreeMap::new();
    for r in results.iter().filter(|r| !r.aborted) {
        let c = cells.entry((r.plan.op, r.plan.signal)).or_default();
        c.0 += 1;
        c.1 += usize::from(r.hit);
        c.2 += usize::from(!r.violations.is_empty());
    }
    let mut s = String::new();
    s.push_str(&format!("{:<10} {:<12} {:>5} {:>5} {:>11}\n", "op", "signal", "runs", "hit", "violations"));
    for ((op, sig), (runs, hit, bad)) in &cells {
        s.push_str(&format!("{:<10} {:<12} {:>5} {:>5} {:>11}\n", op.name(), sig.name(), runs, hit, bad));
    }
    let total: usize = cells.values().map(|c| c.0).sum();
    let bad: usize = cells.values().map(|c| c.2).sum();
    s.push_str(&format!("{:<10} {:<12} {:>5} {:>5} {:>11}\n", "all", "", total, "", bad));
    let mut durations: BTreeMap<Op, Vec<f64>> = BTreeMap::new();
    for r in results.iter().filter(|r| !r.aborted) {
        durations.entry(r.plan.op).or_default().push(r.secs);
    }
    let avg: Vec<String> = durations
        .iter()
        .map(|(op, d)| format!("{} {:.0} s", op.name(), d.iter().sum::<f64>() / d.len() as f64))
        .collect();
    if !avg.is_empty() {
        s.push_str(&format!("mean run time: {}\n", avg.join(", ")));
    }
    let ops = ops_arg.map(|o| format!(" --ops {o}")).unwrap_or_default();
    for r in results.iter().filter(|r| !r.violations.is_empty()) {
        s.push_str(&format!(
            "\nseed {} ({}, signal {}{}, {}): replay with scripts/chaos --seed {} --runs 1{ops}\n  log: {}\n",
            r.plan.seed,
            r.plan.op.name(),
            r.plan.signal.name(),
            r.delay
                .filter(|_| r.plan.signal != Signal::None)
                .map(|d| format!(" @{:.2}s", d.as_secs_f64()))
                .unwrap_or_default(),
            r.exit.map(|e| e.to_string()).unwrap_or_else(|| "-".into()),
            r.plan.seed,
            r.log.display()
        ));
        for v in &r.violations {
            s.push_str(&format!("  - {}: {}\n", v.invariant, v.detail));
        }
        if let Some(k) = &r.kept {
            s.push_str(&format!("  kept; clean up with: {k}\n"));
        }
    }
    s
}
