//! The case tables of the parent module.
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
        kinds: BTreeMap::from([("manual".to_string(), Rules { keep_last: Some(10), ..Rules::default() })]),
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
