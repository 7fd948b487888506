//! The case tables of the parent module.
use chrono::TimeZone as _;

use super::*;

fn local(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Local> {
    Local.with_ymd_and_hms(y, mo, d, h, mi, s).single().expect("unambiguous January time")
}

#[test]
fn parses_valid_expressions() {
    for expr in [
        DEFAULT_CRON,
        "*/5 * * * * *",
        "@daily",
        "@hourly",
        "@weekly",
        "@monthly",
        "0 3 * * MON-FRI",
        "  0 3 * * *  ",
    ] {
        let s = Schedule::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        assert_eq!(s.expr(), expr.trim());
    }
}

#[test]
fn rejects_invalid_expressions_naming_them() {
    for expr in [
        "",
        "not a cron",
        "61 * * * *",
        "0 25 * * *",
        "* * * *",
        "0 0 3 * * * 2030",
        "@reboot",
        "*/0 * * * *",
    ] {
        let err = Schedule::parse(expr).expect_err(expr);
        assert!(err.contains(&format!("{:?}", expr.trim())), "{err}");
    }
}

#[test]
fn next_after_is_strictly_later_in_local_time() {
    let cases = [
        (DEFAULT_CRON, local(2026, 1, 10, 2, 59, 59), local(2026, 1, 10, 3, 0, 0)),
        (DEFAULT_CRON, local(2026, 1, 10, 3, 0, 0), local(2026, 1, 11, 3, 0, 0)),
        ("*/15 * * * *", local(2026, 1, 10, 12, 7, 0), local(2026, 1, 10, 12, 15, 0)),
        ("*/5 * * * * *", local(2026, 1, 10, 12, 0, 4), local(2026, 1, 10, 12, 0, 5)),
        ("*/5 * * * * *", local(2026, 1, 10, 12, 0, 5), local(2026, 1, 10, 12, 0, 10)),
        // 2026-01-10 is a Saturday.
        ("0 3 * * 1-5", local(2026, 1, 10, 12, 0, 0), local(2026, 1, 12, 3, 0, 0)),
        ("30 2 1 * *", local(2026, 1, 10, 0, 0, 0), local(2026, 2, 1, 2, 30, 0)),
        ("@hourly", local(2026, 1, 10, 12, 0, 0), local(2026, 1, 10, 13, 0, 0)),
        ("@weekly", local(2026, 1, 10, 12, 0, 0), local(2026, 1, 11, 0, 0, 0)),
        ("@monthly", local(2026, 1, 10, 12, 0, 0), local(2026, 2, 1, 0, 0, 0)),
    ];
    for (expr, after, want) in cases {
        let got = Schedule::parse(expr).unwrap().next_after(after);
        assert_eq!(got, Some(want), "{expr} after {after}");
    }
}

#[test]
fn next_after_is_none_for_a_date_that_never_comes() {
    let never = Schedule::parse("0 0 30 2 *").unwrap();
    assert_eq!(never.next_after(local(2026, 1, 10, 0, 0, 0)), None);
}

#[test]
fn next_after_ignores_fractions_of_a_second() {
    let after = local(2026, 1, 10, 2, 59, 59) + chrono::Duration::milliseconds(500);
    let next = Schedule::parse(DEFAULT_CRON).unwrap().next_after(after);
    assert_eq!(next, Some(local(2026, 1, 10, 3, 0, 0)));
}

#[test]
fn on_calendar_table() {
    let cases = [
        ("0 3 * * *", Some("*-*-* 03:00:00")),
        ("*/15 * * * *", Some("*-*-* *:00/15:00")),
        ("0 3 * * 1-5", Some("Mon..Fri *-*-* 03:00:00")),
        ("30 2 1 * *", Some("*-*-01 02:30:00")),
        ("*/5 * * * * *", Some("*-*-* *:*:00/5")),
        ("10 0 3 * * *", Some("*-*-* 03:00:10")),
        ("0,30 1-5 * * *", Some("*-*-* 01..05:00,30:00")),
        ("0 0-12/6 * * *", Some("*-*-* 00,06,12:00:00")),
        ("0 4 * */3 *", Some("*-01/3-* 04:00:00")),
        ("0 4 * 1,7 *", Some("*-01,07-* 04:00:00")),
        ("0 3 * * 0", Some("Sun *-*-* 03:00:00")),
        ("0 3 * * 7", Some("Sun *-*-* 03:00:00")),
        ("0 3 * * 0,6", Some("Sat,Sun *-*-* 03:00:00")),
        ("0 3 * * 0-3", Some("Mon..Wed,Sun *-*-* 03:00:00")),
        ("0 3 * * MON-FRI", Some("Mon..Fri *-*-* 03:00:00")),
        ("0 3 * * 1,3,5", Some("Mon,Wed,Fri *-*-* 03:00:00")),
        ("@daily", Some("*-*-* 00:00:00")),
        ("@hourly", Some("*-*-* *:00:00")),
        ("@weekly", Some("Sun *-*-* 00:00:00")),
        ("@monthly", Some("*-*-01 00:00:00")),
        // cron ORs day of month and day of week; OnCalendar= ANDs them.
        ("0 3 1 * 1", None),
        ("0 3 L * *", None),
        ("0 3 * * 5#2", None),
        ("0 3 15W * *", None),
    ];
    for (expr, want) in cases {
        let got = Schedule::parse(expr).unwrap_or_else(|e| panic!("{e}")).on_calendar();
        assert_eq!(got.as_deref(), want, "{expr}");
    }
}

#[test]
fn units_hold_the_expected_lines() {
    let s = Schedule::parse(DEFAULT_CRON).unwrap();
    let u = systemd_units(Path::new("/usr/local/bin/nuwax"), Path::new("/srv/my app"), "my.app", &s).unwrap();
    assert_eq!(u.service_name, "nuwax-backup-my-app.service");
    assert_eq!(u.timer_name, "nuwax-backup-my-app.timer");
    let service: Vec<&str> = u.service.lines().collect();
    for line in [
        "[Service]",
        "Type=oneshot",
        "Description=nuwax scheduled backup of my.app",
        "WorkingDirectory=/srv/my app",
        "ExecStart=/usr/local/bin/nuwax --project-dir \"/srv/my app\" backup --kind scheduled",
        "ExecStart=/usr/local/bin/nuwax --project-dir \"/srv/my app\" prune",
    ] {
        assert!(service.contains(&line), "missing {line:?} in\n{}", u.service);
    }
    let backup = service.iter().position(|l| l.ends_with("backup --kind scheduled"));
    let prune = service.iter().position(|l| l.ends_with(" prune"));
    assert!(backup < prune, "backup runs before prune");
    let timer: Vec<&str> = u.timer.lines().collect();
    for line in [
        "[Timer]",
        "OnCalendar=*-*-* 03:00:00",
        "Persistent=true",
        "Unit=nuwax-backup-my-app.service",
        "[Install]",
        "WantedBy=timers.target",
    ] {
        assert!(timer.contains(&line), "missing {line:?} in\n{}", u.timer);
    }
}

#[test]
fn units_escape_specifiers_and_variables() {
    let s = Schedule::parse(DEFAULT_CRON).unwrap();
    let u = systemd_units(Path::new("/opt/nu$wax/nuwax"), Path::new("/srv/50%"), "app", &s).unwrap();
    assert!(u.service.contains("WorkingDirectory=/srv/50%%\n"), "{}", u.service);
    assert!(
        u.service.contains("ExecStart=/opt/nu$$wax/nuwax --project-dir /srv/50%% prune\n"),
        "{}",
        u.service
    );
}

#[test]
fn units_refuse_what_systemd_cannot_express() {
    let nuwax = Path::new("/usr/bin/nuwax");
    let either = Schedule::parse("0 3 1 * 1").unwrap();
    let err = systemd_units(nuwax, Path::new("/srv/app"), "app", &either).unwrap_err();
    assert!(err.contains("nuwax schedule run") && err.contains("0 3 1 * 1"), "{err}");
    let daily = Schedule::parse(DEFAULT_CRON).unwrap();
    assert!(systemd_units(nuwax, Path::new("relative/dir"), "app", &daily).unwrap_err().contains("absolute"));
    assert!(systemd_units(nuwax, Path::new("/srv/a\nb"), "app", &daily).is_err());
    assert!(systemd_units(nuwax, Path::new("/srv/app"), "", &daily).is_err());
}

#[test]
fn write_units_writes_both_files_with_mode_0644() {
    let dir = tempfile::tempdir().unwrap();
    let s = Schedule::parse("@daily").unwrap();
    let u = systemd_units(Path::new("/usr/bin/nuwax"), Path::new("/srv/app"), "app", &s).unwrap();
    let paths = write_units(&u, dir.path()).unwrap();
    assert_eq!(paths, vec![dir.path().join(&u.service_name), dir.path().join(&u.timer_name)]);
    assert_eq!(fs::read_to_string(&paths[0]).unwrap(), u.service);
    assert_eq!(fs::read_to_string(&paths[1]).unwrap(), u.timer);
    for p in &paths {
        assert_eq!(fs::metadata(p).unwrap().permissions().mode() & 0o777, 0o644, "{}", p.display());
    }
    // Rewriting replaces the files and leaves no temporary files behind.
    write_units(&u, dir.path()).unwrap();
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    let err = write_units(&u, &dir.path().join("missing")).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}
