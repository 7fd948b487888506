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
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn policy(toml_text: &str) -> Policy {
        toml::from_str(toml_text).unwrap_or_else(|e| panic!("policy {toml_text:?}: {e}"))
    }

    /// (id, kind, status, created_at)
    type Row = (i64, &'static str, &'static str, &'static str);

    struct Case {
        name: &'static str,
        policy: &'static str,
        backups: &'static [Row],
        protected: &'static [(i64, &'static str)],
        now: &'static str,
        keep: &'static [i64],
        /// Exact reasons for some ids.
        reasons: &'static [(i64, &'static [&'static str])],
    }

    const NOW: &str = "2026-11-20T12:00:00Z";

    const CASES: &[Case] = &[
        Case {
            name: "keep_last keeps the N newest",
            policy: "keep_last = 3",
            backups: &[
                (1, "scheduled", "complete", "2026-11-16T03:00:00Z"),
                (2, "scheduled", "complete", "2026-11-17T03:00:00Z"),
                (3, "scheduled", "complete", "2026-11-18T03:00:00Z"),
                (4, "scheduled", "complete", "2026-11-19T03:00:00Z"),
                (5, "scheduled", "complete", "2026-11-20T03:00:00Z"),
            ],
            protected: &[],
            now: NOW,
            keep: &[5, 4, 3],
            reasons: &[(5, &["last 3"]), (3, &["last 3"]), (2, &["not kept by any rule"])],
        },
        Case {
            name: "keep_last ties on created_at are broken by id",
            policy: "keep_last = 1",
            backups: &[
                (7, "scheduled", "complete", "2026-11-20T03:00:00Z"),
                (8, "scheduled", "complete", "2026-11-20T03:00:00Z"),
            ],
            protected: &[],
            now: NOW,
            keep: &[8],
            reasons: &[],
        },
        Case {
            name: "daily keeps the newest of each day, several per day",
            policy: "keep_daily = 2",
            backups: &[
                (1, "scheduled", "complete", "2026-11-18T09:00:00Z"),
                (2, "scheduled", "complete", "2026-11-18T21:00:00Z"),
                (3, "scheduled", "complete", "2026-11-19T08:00:00Z"),
                (4, "scheduled", "complete", "2026-11-19T23:59:59Z"),
                (5, "scheduled", "complete", "2026-11-20T00:00:00Z"),
                (6, "scheduled", "complete", "2026-11-20T11:00:00Z"),
            ],
            protected: &[],
            now: NOW,
            keep: &[6, 4],
            reasons: &[(6, &["daily 2026-11-20"]), (4, &["daily 2026-11-19"])],
        },
        Case {
            name: "daily counts days that have backups, not calendar days",
            policy: "keep_daily = 2",
            backups: &[
                (1, "scheduled", "complete", "2026-11-01T09:00:00Z"),
                (2, "scheduled", "complete", "2026-11-10T09:00:00Z"),
                (3, "scheduled", "complete", "2026-11-20T09:00:00Z"),
            ],
            protected: &[],
            now: NOW,
            keep: &[3, 2],
            reasons: &[(2, &["daily 2026-11-10"])],
        },
        Case {
            name: "daily buckets by UTC date, not the offset the time was written in",
            policy: "keep_daily = 1",
            backups: &[
                (1, "scheduled", "complete", "2026-11-20T01:00:00+00:00"),
                // 2026-11-20T03:00Z: the same UTC day, although the local date is the 19th.
                (2, "scheduled", "complete", "2026-11-19T22:00:00-05:00"),
            ],
            protected: &[],
            now: NOW,
            keep: &[2],
            reasons: &[(2, &["daily 2026-11-20"])],
        },
        Case {
            name: "weekly uses ISO weeks across the year boundary",
            policy: "keep_weekly = 3",
            backups: &[
                (1, "scheduled", "complete", "2026-12-24T10:00:00Z"), // 2026-W52
                (2, "scheduled", "complete", "2026-12-31T10:00:00Z"), // 2026-W53
                (3, "scheduled", "complete", "2027-01-01T10:00:00Z"), // 2026-W53 as well
                (4, "scheduled", "complete", "2027-01-04T10:00:00Z"), // 2027-W01
            ],
            protected: &[],
            now: "2027-01-05T00:00:00Z",
            keep: &[4, 3, 1],
            reasons: &[
                (4, &["weekly 2027-W01"]),
                (3, &["weekly 2026-W53"]),
                (2, &["not kept by any rule"]),
                (1, &["weekly 2026-W52"]),
            ],
        },
        Case {
            name: "monthly keeps the newest of each month",
            policy: "keep_monthly = 2",
            backups: &[
                (1, "scheduled", "complete", "2026-09-15T10:00:00Z"),
                (2, "scheduled", "complete", "2026-10-01T10:00:00Z"),
                (3, "scheduled", "complete", "2026-10-31T23:00:00Z"),
                (4, "scheduled", "complete", "2026-11-02T10:00:00Z"),
            ],
            protected: &[],
            now: NOW,
            keep: &[4, 3],
            reasons: &[(4, &["monthly 2026-11"]), (3, &["monthly 2026-10"])],
        },
        Case {
            name: "keep_within with a combined duration; the cutoff itself is outside",
            policy: "keep_within = \"1d12h\"",
            backups: &[
                (1, "scheduled", "complete", "2026-11-19T00:00:00Z"),
                (2, "scheduled", "complete", "2026-11-19T00:01:00Z"),
                (3, "scheduled", "complete", "2026-11-20T11:00:00Z"),
            ],
            protected: &[],
            now: NOW,
            keep: &[3, 2],
            reasons: &[(2, &["within 1d12h"]), (1, &["not kept by any rule"])],
        },
        Case {
            name: "keep_within in weeks",
            policy: "keep_within = \"2w\"",
            backups: &[
                (1, "scheduled", "complete", "2026-11-06T11:00:00Z"),
                (2, "scheduled", "complete", "2026-11-06T13:00:00Z"),
            ],
            protected: &[],
            now: NOW,
            keep: &[2],
            reasons: &[],
        },
        Case {
            name: "a backup kept by several rules lists every reason",
            policy: "keep_last = 1\nkeep_daily = 1\nkeep_weekly = 1\nkeep_monthly = 1\nkeep_within = \"7d\"",
            backups: &[
                (1, "scheduled", "complete", "2026-11-19T10:00:00Z"),
                (2, "scheduled", "complete", "2026-11-20T10:00:00Z"),
            ],
            protected: &[],
            now: NOW,
            keep: &[2, 1],
            reasons: &[
                (2, &["last 1", "daily 2026-11-20", "weekly 2026-W47", "monthly 2026-11", "within 7d"]),
                (1, &["within 7d"]),
            ],
        },
        Case {
            name: "protected ids stay with their reason",
            policy: "keep_last = 1",
            backups: &[
                (1, "pre-upgrade", "complete", "2026-10-01T10:00:00Z"),
                (2, "pre-upgrade", "complete", "2026-10-02T10:00:00Z"),
                (3, "pre-upgrade", "complete", "2026-10-03T10:00:00Z"),
            ],
            protected: &[(3, "newest complete backup"), (1, "backup of the latest successful upgrade")],
            now: NOW,
            keep: &[3, 1],
            reasons: &[
                (3, &["last 1", "newest complete backup"]),
                (2, &["not kept by any rule"]),
                (1, &["backup of the latest successful upgrade"]),
            ],
        },
        Case {
            name: "failed and missing are removed, pending kept, none count for the rules",
            policy: "keep_last = 1",
            backups: &[
                (1, "scheduled", "complete", "2026-11-10T10:00:00Z"),
                (2, "scheduled", "failed", "2026-11-11T10:00:00Z"),
                (3, "scheduled", "pending", "2026-11-20T10:00:00Z"),
                (4, "scheduled", "missing", "2026-11-12T10:00:00Z"),
            ],
            protected: &[],
            now: NOW,
            keep: &[3, 1],
            reasons: &[
                (3, &["in progress"]),
                (4, &["archive missing"]),
                (2, &["failed backup"]),
                (1, &["last 1"]),
            ],
        },
        Case {
            name: "an unknown status is kept",
            policy: "keep_last = 1",
            backups: &[
                (1, "scheduled", "complete", "2026-11-19T10:00:00Z"),
                (2, "scheduled", "verifying", "2026-11-10T10:00:00Z"),
            ],
            protected: &[],
            now: NOW,
            keep: &[1, 2],
            reasons: &[(2, &["unknown status \"verifying\""])],
        },
        Case {
            name: "each kind is its own series under the default rules",
            policy: "keep_last = 1",
            backups: &[
                (1, "scheduled", "complete", "2026-11-17T10:00:00Z"),
                (2, "scheduled", "complete", "2026-11-18T10:00:00Z"),
                (3, "manual", "complete", "2026-11-19T10:00:00Z"),
                (4, "manual", "complete", "2026-11-20T10:00:00Z"),
            ],
            protected: &[],
            now: NOW,
            keep: &[4, 2],
            reasons: &[],
        },
        Case {
            name: "kind rules replace the default for that kind only",
            policy: "keep_last = 1\n[kinds.manual]\nkeep_within = \"30d\"",
            backups: &[
                (1, "scheduled", "complete", "2026-11-18T10:00:00Z"),
                (2, "scheduled", "complete", "2026-11-19T10:00:00Z"),
                (3, "manual", "complete", "2026-10-01T10:00:00Z"), // 50 days old
                (4, "manual", "complete", "2026-11-01T10:00:00Z"),
                (5, "manual", "complete", "2026-11-20T10:00:00Z"),
            ],
            protected: &[],
            now: NOW,
            keep: &[5, 2, 4],
            reasons: &[(5, &["within 30d"]), (4, &["within 30d"]), (2, &["last 1"])],
        },
        Case {
            name: "an empty policy keeps every complete backup",
            policy: "",
            backups: &[
                (1, "scheduled", "complete", "2020-01-01T10:00:00Z"),
                (2, "manual", "complete", "2026-11-19T10:00:00Z"),
                (3, "scheduled", "failed", "2026-11-19T11:00:00Z"),
            ],
            protected: &[],
            now: NOW,
            keep: &[2, 1],
            reasons: &[(1, &["no retention rules"]), (3, &["failed backup"])],
        },
        Case {
            name: "rules of 0 keep nothing, so they count as empty and keep the series",
            policy: "keep_last = 0\nkeep_within = \"0d\"",
            backups: &[(1, "scheduled", "complete", "2026-11-19T10:00:00Z")],
            protected: &[],
            now: NOW,
            keep: &[1],
            reasons: &[(1, &["no retention rules"])],
        },
        Case {
            name: "an empty [kinds.*] table keeps that whole kind",
            policy: "keep_last = 1\n[kinds.pre-upgrade]",
            backups: &[
                (1, "pre-upgrade", "complete", "2025-01-01T10:00:00Z"),
                (2, "pre-upgrade", "complete", "2025-02-01T10:00:00Z"),
                (3, "scheduled", "complete", "2026-11-18T10:00:00Z"),
                (4, "scheduled", "complete", "2026-11-19T10:00:00Z"),
            ],
            protected: &[],
            now: NOW,
            keep: &[4, 2, 1],
            reasons: &[],
        },
    ];

    #[test]
    fn decide_case_table() {
        for case in CASES {
            let candidates: Vec<Candidate> = case
                .backups
                .iter()
                .map(|&(id, kind, status, t)| Candidate {
                    id,
                    kind: kind.into(),
                    status: status.into(),
                    created_at: at(t),
                })
                .collect();
            let protected: Vec<(i64, String)> =
                case.protected.iter().map(|&(id, why)| (id, why.to_string())).collect();
            let decisions = decide(&candidates, &policy(case.policy), &protected, at(case.now));

            assert_eq!(decisions.len(), candidates.len(), "{}: one decision per candidate", case.name);
            let kept: Vec<i64> = decisions.iter().filter(|d| d.keep).map(|d| d.id).collect();
            assert_eq!(kept, case.keep, "{}: kept ids, newest first", case.name);
            for d in &decisions {
                assert!(!d.reasons.is_empty(), "{}: id {} has no reason", case.name, d.id);
            }
            for (id, want) in case.reasons {
                let got = &decisions.iter().find(|d| d.id == *id).unwrap().reasons;
                assert_eq!(got, want, "{}: reasons of id {id}", case.name);
            }
        }
    }

    #[test]
    fn output_is_newest_first_by_time_then_id() {
        let c = |id, t| Candidate { id, kind: "manual".into(), status: "complete".into(), created_at: at(t) };
        let input = [
            c(2, "2026-11-18T10:00:00Z"),
            c(9, "2026-11-20T10:00:00Z"),
            c(1, "2026-11-19T10:00:00Z"),
            c(4, "2026-11-19T10:00:00Z"),
            c(3, "2026-11-17T10:00:00Z"),
        ];
        let ids: Vec<i64> = decide(&input, &Policy::default(), &[], at(NOW)).iter().map(|d| d.id).collect();
        assert_eq!(ids, [9, 4, 1, 2, 3]);
        assert!(decide(&[], &policy("keep_last = 1"), &[], at(NOW)).is_empty());
    }

    #[test]
    fn parse_duration_cases() {
        let hours = |h: i64| Ok(Duration::hours(h));
        let cases: &[(&str, Result<Duration, ()>)] = &[
            ("7d", Ok(Duration::days(7))),
            ("36h", Ok(Duration::hours(36))),
            ("2w", Ok(Duration::days(14))),
            ("1m", Ok(Duration::days(30))),
            ("1y", Ok(Duration::days(365))),
            ("1d12h", Ok(Duration::hours(36))),
            ("12h1d", Ok(Duration::hours(36))),
            ("1y2m3w4d5h", Ok(Duration::hours((365 + 60 + 21 + 4) * 24 + 5))),
            (" 7d ", Ok(Duration::days(7))),
            ("0d", Ok(Duration::zero())),
            ("", Err(())),
            ("   ", Err(())),
            ("7", Err(())),
            ("d", Err(())),
            ("7x", Err(())),
            ("7D", Err(())),
            ("1.5d", Err(())),
            ("-1d", Err(())),
            ("1d 12h", Err(())),
            ("1d1d", Err(())),
            ("99999999999999999999d", Err(())),
            ("9999999999999999y", Err(())),
        ];
        for (text, want) in cases {
            let got = parse_duration(text).map_err(|_| ());
            assert_eq!(&got, want, "parse_duration({text:?})");
        }
        assert_eq!(parse_duration("5h"), hours(5));
        let err = parse_duration("7x").unwrap_err();
        assert!(err.contains("\"7x\"") && err.contains("units"), "{err}");
    }

    #[test]
    fn policy_from_toml() {
        let p = policy("keep_last = 3\nkeep_daily = 7\n[kinds.manual]\nkeep_last = 10\n");
        let want = Policy {
            default: Rules { keep_last: Some(3), keep_daily: Some(7), ..Rules::default() },
            kinds: BTreeMap::from([(
                "manual".to_string(),
                Rules { keep_last: Some(10), ..Rules::default() },
            )]),
        };
        assert_eq!(p, want);
        assert_eq!(p.rules_for("manual").keep_last, Some(10));
        assert_eq!(p.rules_for("scheduled").keep_last, Some(3));

        let text = toml::to_string(&p).unwrap();
        assert_eq!(policy(&text), p, "round trip through {text:?}");

        let rejected = [
            ("keep_lats = 3", "keep_lats"),
            ("keep_last = 3\n[kinds.manual]\nkeep_dialy = 1", "keep_dialy"),
            ("keep_last = -1", ""),
            ("keep_within = 7", ""),
        ];
        for (text, word) in rejected {
            let err = toml::from_str::<Policy>(text).expect_err(text).to_string();
            assert!(err.contains(word), "{text:?}: {err}");
        }
    }

    #[test]
    fn validate_and_is_empty() {
        // (policy, Ok or the words the error must contain, is_empty)
        type Want = Result<(), &'static [&'static str]>;
        let cases: &[(&str, Want, bool)] = &[
            ("", Ok(()), true),
            ("keep_last = 0", Ok(()), true),
            ("[kinds.manual]", Ok(()), true),
            ("keep_within = \"0h\"", Ok(()), true),
            ("keep_last = 3\n[kinds.manual]\nkeep_last = 10", Ok(()), false),
            ("[kinds.pre-rollback]\nkeep_daily = 1", Ok(()), false),
            ("[kinds.nightly]\nkeep_last = 1", Err(&["unknown backup kind \"nightly\""]), false),
            ("keep_within = \"soon\"", Err(&["keep_within", "\"soon\""]), false),
            (
                "keep_within = \"1d\"\n[kinds.manual]\nkeep_within = \"1q\"\n[kinds.daily]",
                Err(&["kinds.manual.keep_within", "unknown backup kind \"daily\""]),
                false,
            ),
        ];
        for (text, want, empty) in cases {
            let p = policy(text);
            assert_eq!(p.is_empty(), *empty, "is_empty of {text:?}");
            match (p.validate(), want) {
                (Ok(()), Ok(())) => {}
                (Err(got), Err(words)) => {
                    for w in *words {
                        assert!(got.contains(w), "{text:?}: {got:?} lacks {w:?}");
                    }
                }
                (got, _) => panic!("{text:?}: validate gave {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn invalid_keep_within_keeps_its_series() {
        let p = Policy {
            default: Rules { keep_within: Some("soon".into()), ..Rules::default() },
            ..Policy::default()
        };
        let c = Candidate {
            id: 1,
            kind: "manual".into(),
            status: "complete".into(),
            created_at: at("2020-01-01T00:00:00Z"),
        };
        let d = decide(&[c], &p, &[], at(NOW));
        assert!(d[0].keep, "{d:?}");
    }
}
