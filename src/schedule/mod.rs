//! Backup schedules: cron expressions for `nuwax schedule run`, and the systemd service and
//! timer that `nuwax schedule install` writes for hosts that prefer a timer to a daemon.
//!
//! Expressions are evaluated in the host's local time zone ([`chrono::Local`]), as with cron
//! itself and with systemd's `OnCalendar=`: "0 3 * * *" means 03:00 on the wall clock, which
//! moves with daylight saving time. A local time that a DST change skips moves the run to the
//! next matching time; one it repeats runs a fixed-time schedule once.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Local};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// Daily at 03:00 local time.
pub const DEFAULT_CRON: &str = "0 3 * * *";

/// A parsed cron expression: 5 fields (`min hour dom month dow`), 6 fields with a leading
/// seconds field, or a nickname (`@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`).
#[derive(Debug, Clone)]
pub struct Schedule {
    expr: String,
    cron: Cron,
}

impl Schedule {
    /// Parses `expr`; the error names the expression and says what is wrong with it.
    pub fn parse(expr: &str) -> Result<Schedule, String> {
        let expr = expr.trim();
        // Seven fields would be croner's year extension, which neither cron nor systemd
        // users expect; refuse it rather than silently reading the fields differently.
        let parser = CronParser::builder().seconds(Seconds::Optional).year(Year::Disallowed).build();
        let cron = parser.parse(expr).map_err(|e| {
            format!(
                "invalid schedule {expr:?}: {e} (expected 5 cron fields \"min hour day month weekday\" \
                 such as {DEFAULT_CRON:?}, 6 with leading seconds, or @hourly/@daily/@weekly/@monthly)"
            )
        })?;
        Ok(Schedule { expr: expr.to_owned(), cron })
    }

    /// The expression as given (trimmed).
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The next time strictly after `after`, in local time; `None` when the expression never
    /// matches (such as "0 0 30 2 *").
    pub fn next_after(&self, after: DateTime<Local>) -> Option<DateTime<Local>> {
        self.cron.find_next_occurrence(&after, false).ok()
    }

    /// The systemd `OnCalendar=` value that fires at the same times, when one exists.
    ///
    /// Each field must be `*`, a number, a range `1-5`, a step `*/15` or `1-10/3`, or a list of
    /// these (weekday and month names are fine too). `None` for cron extensions (`L`, `W`, `#`)
    /// and for expressions restricting both day of month and day of week: cron runs when
    /// *either* matches, `OnCalendar=` only when both do.
    pub fn on_calendar(&self) -> Option<String> {
        let fields = expand_nickname(&self.expr);
        let fields: Vec<&str> = fields.split_whitespace().collect();
        let (sec, rest) = match fields.len() {
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            _ => return None,
        };
        let [min, hour, dom, month, dow] = rest else { return None };
        let is_star = |f: &str| f == "*" || f == "?";
        if !is_star(dom) && !is_star(dow) {
            return None;
        }
        let sec = component(sec, 0, 59, &[])?;
        let min = component(min, 0, 59, &[])?;
        let hour = component(hour, 0, 23, &[])?;
        let dom = component(dom, 1, 31, &[])?;
        let month = component(month, 1, 12, &MONTHS)?;
        let date_time = format!("*-{month}-{dom} {hour}:{min}:{sec}");
        if is_star(dow) {
            return Some(date_time);
        }
        Some(format!("{} {date_time}", weekdays(dow)?))
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.expr)
    }
}

const MONTHS: [&str; 12] =
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
/// Cron numbering: 0 (and 7) is Sunday.
const CRON_DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
/// systemd order: weeks start on Monday.
const SYSTEMD_DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

fn expand_nickname(expr: &str) -> String {
    match expr.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => expr,
    }
    .to_owned()
}

/// A number in `lo..=hi`, or a name from `names` (numbered from `lo`).
fn value(s: &str, lo: u32, hi: u32, names: &[&str]) -> Option<u32> {
    let v = match s.parse::<u32>() {
        Ok(v) => v,
        Err(_) => lo + u32::try_from(names.iter().position(|n| n.eq_ignore_ascii_case(s))?).ok()?,
    };
    (lo..=hi).contains(&v).then_some(v)
}

/// One `a`, `a-b`, `*/n` or `a-b/n` item of a field as the values it stands for (`*` included).
fn item_values(item: &str, lo: u32, hi: u32, names: &[&str]) -> Option<Vec<u32>> {
    let (range, step) = match item.split_once('/') {
        Some((range, step)) => (range, step.parse::<u32>().ok().filter(|s| *s > 0)?),
        None => (item, 1),
    };
    let (a, b) = match range {
        "*" => (lo, hi),
        _ => match range.split_once('-') {
            Some((a, b)) => (value(a, lo, hi, names)?, value(b, lo, hi, names)?),
            None if step == 1 => (value(range, lo, hi, names)?, value(range, lo, hi, names)?),
            // `5/10` is a vixie-cron oddity croner refuses too.
            None => return None,
        },
    };
    (a <= b).then(|| (a..=b).step_by(step as usize).collect())
}

/// A cron field as an `OnCalendar=` component: `*`, `03`, `01..05`, `00/15`, `00,30`.
fn component(field: &str, lo: u32, hi: u32, names: &[&str]) -> Option<String> {
    if field == "*" || field == "?" {
        return Some("*".to_owned());
    }
    let mut parts = Vec::new();
    for item in field.split(',') {
        if let Some(step) = item.strip_prefix("*/") {
            let step = step.parse::<u32>().ok().filter(|s| *s > 0)?;
            parts.push(format!("{lo:02}/{step}"));
        } else if item.contains('/') {
            // systemd has no ranged repetition; list the values instead.
            parts.extend(item_values(item, lo, hi, names)?.iter().map(|v| format!("{v:02}")));
        } else if let Some((a, b)) = item.split_once('-') {
            let (a, b) = (value(a, lo, hi, names)?, value(b, lo, hi, names)?);
            if a > b {
                return None;
            }
            parts.push(format!("{a:02}..{b:02}"));
        } else {
            parts.push(format!("{:02}", value(item, lo, hi, names)?));
        }
    }
    Some(parts.join(","))
}

/// A cron day-of-week field as systemd weekdays: `Mon..Fri`, `Sat,Sun`, `Mon,Wed..Fri`.
fn weekdays(field: &str) -> Option<String> {
    // Indexed in systemd order, Monday first, so that runs never wrap around the week.
    let mut days = [false; 7];
    for item in field.split(',') {
        for v in item_values(item, 0, 7, &CRON_DAYS)? {
            days[(v as usize + 6) % 7] = true;
        }
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < 7 {
        if !days[i] {
            i += 1;
            continue;
        }
        let start = i;
        while i + 1 < 7 && days[i + 1] {
            i += 1;
        }
        match i - start {
            0 => out.push(SYSTEMD_DAYS[start].to_owned()),
            1 => out.push(format!("{},{}", SYSTEMD_DAYS[start], SYSTEMD_DAYS[i])),
            _ => out.push(format!("{}..{}", SYSTEMD_DAYS[start], SYSTEMD_DAYS[i])),
        }
        i += 1;
    }
    Some(out.join(","))
}

/// A systemd service and timer that run a scheduled backup followed by a prune.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Units {
    /// `nuwax-backup-<project>.service`
    pub service_name: String,
    /// The service unit file's text.
    pub service: String,
    /// `nuwax-backup-<project>.timer`
    pub timer_name: String,
    /// The timer unit file's text.
    pub timer: String,
}

/// The service and timer units for `project_dir`.
///
/// `nuwax` is the absolute path of the nuwax binary and `project_dir` the absolute project
/// directory; `project_name` names the units (`nuwax-backup-<name>.service` and `.timer`),
/// with anything outside `[a-zA-Z0-9_-]` replaced by `-`. Fails when the schedule has no
/// `OnCalendar=` equivalent, or a path cannot be written into a unit file.
pub fn systemd_units(
    nuwax: &Path,
    project_dir: &Path,
    project_name: &str,
    schedule: &Schedule,
) -> Result<Units, String> {
    let calendar = schedule.on_calendar().ok_or_else(|| {
        format!(
            "schedule {:?} has no systemd OnCalendar= equivalent; run `nuwax schedule run` \
             (under a process supervisor) instead of installing a timer",
            schedule.expr()
        )
    })?;
    let name: String = project_name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '-' })
        .collect();
    if name.is_empty() {
        return Err("the project name is empty; it is needed to name the systemd units".to_owned());
    }
    let nuwax_arg = exec_arg(nuwax, "nuwax binary")?;
    let dir_arg = exec_arg(project_dir, "project directory")?;
    let dir = unit_path(project_dir, "project directory")?;
    let service_name = format!("nuwax-backup-{name}.service");
    let timer_name = format!("nuwax-backup-{name}.timer");
    // A line break would end the setting and start a new one.
    let shown: String = project_name.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let description = specifier_escape(&format!("nuwax scheduled backup of {shown}"));

    let mut service = String::new();
    let _ = write!(
        service,
        "[Unit]\n\
         Description={description}\n\
         After=docker.service\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         WorkingDirectory={dir}\n\
         ExecStart={nuwax_arg} --project-dir {dir_arg} backup --kind scheduled\n\
         ExecStart={nuwax_arg} --project-dir {dir_arg} prune\n"
    );
    let mut timer = String::new();
    let _ = write!(
        timer,
        "[Unit]\n\
         Description={description} ({})\n\
         \n\
         [Timer]\n\
         OnCalendar={calendar}\n\
         Persistent=true\n\
         Unit={service_name}\n\
         \n\
         [Install]\n\
         WantedBy=timers.target\n",
        specifier_escape(schedule.expr())
    );
    Ok(Units { service_name, service, timer_name, timer })
}

/// `%` starts a specifier in almost every unit setting.
fn specifier_escape(s: &str) -> String {
    s.replace('%', "%%")
}

/// An absolute path as the value of a path setting such as `WorkingDirectory=`.
fn unit_path(path: &Path, what: &str) -> Result<String, String> {
    let s = path.to_str().ok_or_else(|| format!("the {what} {} is not valid UTF-8", path.display()))?;
    if !path.is_absolute() {
        return Err(format!("the {what} {s:?} must be an absolute path for a systemd unit"));
    }
    if s.contains(['\n', '\r']) {
        return Err(format!("the {what} {s:?} contains a line break, which a unit file cannot hold"));
    }
    Ok(specifier_escape(s))
}

/// An absolute path as one `ExecStart=` word: double-quoted when it holds blanks or quotes,
/// with `$` (variable expansion) and `%` (specifiers) escaped.
fn exec_arg(path: &Path, what: &str) -> Result<String, String> {
    let s = unit_path(path, what)?.replace('$', "$$");
    if !s.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '\\') {
        return Ok(s);
    }
    Ok(format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
}

/// Writes the service and timer into `dir` (callers pass `/etc/systemd/system` by default),
/// each through a temporary file renamed into place, with mode 0644. Returns the paths written.
pub fn write_units(units: &Units, dir: &Path) -> io::Result<Vec<PathBuf>> {
    let with_path =
        |path: &Path, e: io::Error| io::Error::new(e.kind(), format!("writing {}: {e}", path.display()));
    let mut written = Vec::new();
    for (name, text) in [(&units.service_name, &units.service), (&units.timer_name, &units.timer)] {
        let path = dir.join(name);
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .tempfile_in(dir)
            .map_err(|e| with_path(&path, e))?;
        tmp.write_all(text.as_bytes()).map_err(|e| with_path(&path, e))?;
        tmp.as_file().set_permissions(fs::Permissions::from_mode(0o644)).map_err(|e| with_path(&path, e))?;
        tmp.as_file().sync_all().map_err(|e| with_path(&path, e))?;
        tmp.persist(&path).map_err(|e| with_path(&path, e.error))?;
        written.push(path);
    }
    crate::fsutil::fsync_dir(dir).map_err(|e| with_path(dir, e))?;
    Ok(written)
}

#[cfg(test)]
mod tests;
