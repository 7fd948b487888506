//! Which backups a retention policy keeps: a pure function of (records, policy, now).
//!
//! The semantics follow restic's `forget`: `keep_daily = N` walks a series newest → oldest and
//! keeps the newest backup of each calendar day until N distinct days are kept, so days without
//! backups do not use up the count. Weeks are ISO weeks (year + week), months are calendar
//! months. Every period is taken in UTC, never local time, so the outcome does not depend on
//! the machine's time zone or on DST changes.
//!
//! Each backup kind is its own series: a burst of manual backups never pushes scheduled ones out
//! of `keep_last`. A series whose rules keep nothing (all unset or 0) is kept whole: an empty
//! policy never deletes complete backups; deleting needs at least one rule that keeps something.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Duration, Utc};
use serde::{Deserialize, Serialize};

/// The backup kinds a policy may name under `[kinds.*]`.
pub const KINDS: [&str; 4] = ["manual", "scheduled", "pre-upgrade", "pre-rollback"];

/// One rule set. `None` or 0 means that rule keeps nothing by itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// The N newest backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// The newest backup of each of the N most recent UTC days that have backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<u32>,
    /// The newest backup of each of the N most recent ISO weeks that have backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<u32>,
    /// The newest backup of each of the N most recent months that have backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<u32>,
    /// Everything newer than `now - duration`; see [`parse_duration`] for the format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_within: Option<String>,
}

impl Rules {
    /// True when no rule can keep anything: every count unset or 0, `keep_within` unset or zero.
    /// An unparsable `keep_within` is not empty: [`Policy::validate`] reports it instead.
    pub fn is_empty(&self) -> bool {
        let counts = [self.keep_last, self.keep_daily, self.keep_weekly, self.keep_monthly];
        let within_empty = match &self.keep_within {
            None => true,
            Some(s) => parse_duration(s).is_ok_and(|d| d.is_zero()),
        };
        counts.iter().all(|n| n.unwrap_or(0) == 0) && within_empty
    }
}

/// The policy: default rules, and rules per backup kind that replace the default for that kind.
///
/// ```toml
/// keep_last = 3
/// keep_daily = 7
/// [kinds.manual]
/// keep_last = 10
/// ```
// serde's `deny_unknown_fields` does not work together with `flatten`, so deserialising goes
// through `PolicyToml`, which spells the keys out and rejects misspelled ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(from = "PolicyToml")]
pub struct Policy {
    #[serde(flatten)]
    pub default: Rules,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kinds: BTreeMap<String, Rules>,
}

/// The on-disk shape of [`Policy`], spelled out so unknown keys are rejected.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyToml {
    keep_last: Option<u32>,
    keep_daily: Option<u32>,
    keep_weekly: Option<u32>,
    keep_monthly: Option<u32>,
    keep_within: Option<String>,
    #[serde(default)]
    kinds: BTreeMap<String, Rules>,
}

impl From<PolicyToml> for Policy {
    fn from(p: PolicyToml) -> Self {
        let default = Rules {
            keep_last: p.keep_last,
            keep_daily: p.keep_daily,
            keep_weekly: p.keep_weekly,
            keep_monthly: p.keep_monthly,
            keep_within: p.keep_within,
        };
        Policy { default, kinds: p.kinds }
    }
}

impl Policy {
    /// All problems, joined by "; ": kind names outside [`KINDS`] and unparsable `keep_within`.
    /// A policy that keeps nothing is not an error (see [`Policy::is_empty`]).
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        let mut check_within = |rules: &Rules, at: &str| {
            if let Some(s) = &rules.keep_within
                && let Err(e) = parse_duration(s)
            {
                problems.push(format!("{at}keep_within: {e}"));
            }
        };
        check_within(&self.default, "");
        for (kind, rules) in &self.kinds {
            check_within(rules, &format!("kinds.{kind}."));
        }
        for kind in self.kinds.keys().filter(|k| !KINDS.contains(&k.as_str())) {
            problems.push(format!("unknown backup kind {kind:?} in [kinds] (known: {})", KINDS.join(", ")));
        }
        if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
    }

    /// True when no series has a rule that keeps anything, so [`decide`] removes nothing complete.
    pub fn is_empty(&self) -> bool {
        self.default.is_empty() && self.kinds.values().all(Rules::is_empty)
    }

    /// The rules for one kind's series: its own `[kinds.<kind>]` table, else the default.
    pub fn rules_for(&self, kind: &str) -> &Rules {
        self.kinds.get(kind).unwrap_or(&self.default)
    }
}

/// Parses a `keep_within` duration: one or more `<number><unit>` parts, such as "7d", "36h" or
/// "1d12h". Units: `y` (365 days), `m` (30 days), `w` (7 days), `d` (day), `h` (hour); each at
/// most once. Calendar lengths are fixed so the result does not depend on `now`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err("empty duration (expected e.g. \"7d\", \"36h\", \"1d12h\")".into());
    }
    let mut hours: i64 = 0;
    let mut seen = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let mut chars = tail.chars();
        let unit = chars.next();
        let per_unit: i64 = match unit {
            Some('y') => 365 * 24,
            Some('m') => 30 * 24,
            Some('w') => 7 * 24,
            Some('d') => 24,
            Some('h') => 1,
            _ => {
                return Err(format!(
                    "invalid duration {s:?}: expected <number><unit> parts with units y, m (30 days), w, d, h, e.g. \"1d12h\""
                ));
            }
        };
        if number.is_empty() {
            return Err(format!("invalid duration {s:?}: unit '{}' without a number", unit.unwrap_or('?')));
        }
        if seen.contains(&unit) {
            return Err(format!("invalid duration {s:?}: unit '{}' given twice", unit.unwrap_or('?')));
        }
        seen.push(unit);
        hours = number
            .parse::<i64>()
            .ok()
            .and_then(|n| n.checked_mul(per_unit))
            .and_then(|h| h.checked_add(hours))
            .ok_or_else(|| format!("duration {s:?} is too large"))?;
        rest = chars.as_str();
    }
    Duration::try_hours(hours).ok_or_else(|| format!("duration {s:?} is too large"))
}

/// What retention needs to know about one backup (the caller maps catalog rows to this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: i64,
    pub kind: String,
    /// `complete`, `failed`, `pending` or `missing` (archive file gone).
    pub status: String,
    pub created_at: DateTime<Utc>,
}

/// Whether one backup stays, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub id: i64,
    pub keep: bool,
    /// Every reason that applies, e.g. `["last 3", "daily 2026-11-20", "within 7d",
    /// "newest complete backup"]`, or for a removal `["not kept by any rule"]`.
    pub reasons: Vec<String>,
}

/// Decides every candidate, newest first (by `created_at`, then `id`).
///
/// - `complete` backups are grouped by kind; each group is one series, judged by the rules for
///   its kind ([`Policy::rules_for`]). A series whose rules are empty ([`Rules::is_empty`]) is
///   kept whole ("no retention rules"), so an empty policy never removes a complete backup.
/// - `failed` backups are removed ("failed backup"), `missing` ones too ("archive missing"),
///   `pending` ones are kept ("in progress"); rules never count them. An unknown status is kept.
/// - `protected` ids (with their reason) are always kept, whatever their status.
///
/// Call [`Policy::validate`] first: an unparsable `keep_within` keeps its whole series here.
pub fn decide(
    candidates: &[Candidate],
    policy: &Policy,
    protected: &[(i64, String)],
    now: DateTime<Utc>,
) -> Vec<Decision> {
    let mut order: Vec<&Candidate> = candidates.iter().collect();
    order.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));

    let mut series: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, c) in order.iter().enumerate().filter(|(_, c)| c.status == "complete") {
        series.entry(c.kind.as_str()).or_default().push(i);
    }
    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); order.len()];
    for (kind, members) in &series {
        apply_rules(&order, members, policy.rules_for(kind), now, &mut reasons);
    }

    order
        .iter()
        .zip(reasons)
        .map(|(c, mut why)| {
            let guarded: Vec<String> =
                protected.iter().filter(|(id, _)| *id == c.id).map(|(_, r)| r.clone()).collect();
            let keep = match c.status.as_str() {
                "complete" => !why.is_empty() || !guarded.is_empty(),
                "failed" | "missing" => !guarded.is_empty(),
                "pending" => {
                    why.push("in progress".into());
                    true
                }
                other => {
                    why.push(format!("unknown status {other:?}"));
                    true
                }
            };
            why.extend(guarded);
            if !keep {
                why.push(
                    match c.status.as_str() {
                        "failed" => "failed backup",
                        "missing" => "archive missing",
                        _ => "not kept by any rule",
                    }
                    .into(),
                );
            }
            Decision { id: c.id, keep, reasons: why }
        })
        .collect()
}

/// Names the UTC period a backup falls in; the name doubles as the reason text.
type PeriodLabel = fn(&DateTime<Utc>) -> String;

/// Adds each rule's reasons to the members of one series (indices into `order`, newest first).
fn apply_rules(
    order: &[&Candidate],
    members: &[usize],
    rules: &Rules,
    now: DateTime<Utc>,
    reasons: &mut [Vec<String>],
) {
    if rules.is_empty() {
        for &i in members {
            reasons[i].push("no retention rules".into());
        }
        return;
    }
    if let Some(n) = rules.keep_last {
        for &i in members.iter().take(n as usize) {
            reasons[i].push(format!("last {n}"));
        }
    }
    let periods: [(Option<u32>, PeriodLabel); 3] = [
        (rules.keep_daily, |t| format!("daily {}", t.date_naive())),
        (rules.keep_weekly, |t| {
            let w = t.iso_week();
            format!("weekly {}-W{:02}", w.year(), w.week())
        }),
        (rules.keep_monthly, |t| format!("monthly {}", t.format("%Y-%m"))),
    ];
    for (count, label) in periods {
        let mut left = count.unwrap_or(0);
        let mut last_period: Option<String> = None;
        for &i in members {
            if left == 0 {
                break;
            }
            // The label names the period, so a new label means the newest backup of a new period.
            let period = label(&order[i].created_at);
            if last_period.as_ref() != Some(&period) {
                reasons[i].push(period.clone());
                last_period = Some(period);
                left -= 1;
            }
        }
    }
    if let Some(text) = &rules.keep_within {
        match parse_duration(text) {
            Ok(d) => {
                // An absurd duration reaches before the earliest representable time: keep all.
                let cutoff = now.checked_sub_signed(d);
                for &i in members {
                    if cutoff.is_none_or(|c| order[i].created_at > c) {
                        reasons[i].push(format!("within {}", text.trim()));
                    }
                }
            }
            Err(e) => {
                for &i in members {
                    reasons[i].push(format!("kept: {e}"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
