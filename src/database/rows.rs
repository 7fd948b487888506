//! Row counts: what each table of a dump holds, counted from the dump's own bytes as they stream
//! into the archive, and the check after a load that the server holds exactly that.
//!
//! A loader's exit status says the script ran; the counts say the data arrived (a table the
//! script skipped, a `COPY` cut short by something the loader tolerated). They are counted from
//! the dump rather than asked of the server: the dump is the moment the backup holds, and the
//! server has moved on by the time a query could run.
//!
//! - PostgreSQL's plain scripts: a table's rows are the lines between its `COPY name (...) FROM
//!   stdin;` and the `\.` that ends them (a row is one line: the text format escapes newlines).
//! - `mariadb-dump`: a table's rows are the tuples of the `INSERT INTO ... VALUES` statements
//!   between its `LOCK TABLES name WRITE;` and `UNLOCK TABLES;` (`--add-locks`, on by default),
//!   counted with quotes and escapes followed. The server's own databases (`mysql`: statistics
//!   the server rewrites as it loads) are not counted.
//!
//! Whatever does not read as expected turns the count off for that dump (no counts, no check):
//! a count must never fail a restore that loaded well.

use std::collections::BTreeMap;

use super::Kind;
use super::dump::{PG_PLAIN, PG_USER, quote};
use crate::archive::manifest::DumpRecord;

/// A line longer than this is kept only in part: no statement the counters read is that long.
const LINE_KEPT: usize = 4096;

/// Databases of a MariaDB/MySQL server that the server writes on its own.
const SYSTEM_DATABASES: [&str; 4] = ["mysql", "sys", "performance_schema", "information_schema"];

/// Counts the rows of one dump, fed its bytes in order.
pub struct Counter {
    syntax: Syntax,
    state: State,
    /// The start of the current line (outside a data section).
    line: Vec<u8>,
    line_len: usize,
    rows: BTreeMap<String, u64>,
    /// The table whose rows are being counted (its key in `rows`).
    table: Option<String>,
    /// MariaDB: the current database (`USE`), and whether its tables are counted.
    database: Option<String>,
    broken: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Syntax {
    PgCopy,
    MariaDb,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading statements line by line.
    Lines,
    /// PostgreSQL: inside a `COPY` block, at the start of a row when `line_len` is 0.
    Copy,
    /// MariaDB: inside an `INSERT`'s values.
    Values { depth: u32, string: bool, escape: bool },
}

impl Counter {
    /// A counter for a dump of this server and format; `None` when nuwax does not count it.
    pub fn new(kind: Kind, format: &str, database: Option<&str>) -> Option<Self> {
        let syntax = match (kind, format) {
            (Kind::Postgres, PG_PLAIN) if database.is_some() => Syntax::PgCopy,
            (Kind::Mariadb | Kind::Mysql, "sql") => Syntax::MariaDb,
            _ => return None,
        };
        Some(Self {
            syntax,
            state: State::Lines,
            line: Vec::new(),
            line_len: 0,
            rows: BTreeMap::new(),
            table: None,
            database: None,
            broken: false,
        })
    }

    /// The counts, by table name as the dump writes it (PostgreSQL `schema.table`, MariaDB
    /// `` `db`.`table` ``); `None` when the dump did not read as expected.
    pub fn finish(self) -> Option<BTreeMap<String, u64>> {
        let ended = self.state == State::Lines && self.line_len == 0;
        (!self.broken && ended).then_some(self.rows)
    }

    pub fn feed(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() && !self.broken {
            let used = match self.state {
                State::Lines => self.lines(buf),
                State::Copy => self.copy(buf),
                State::Values { .. } => self.values(buf),
            };
            buf = &buf[used..];
        }
    }

    /// Line mode: keeps the line's start; at its end, acts on it. Returns the bytes used.
    fn lines(&mut self, buf: &[u8]) -> usize {
        let (take, ends) = match memchr::memchr(b'\n', buf) {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let body = &buf[..if ends { take - 1 } else { take }];
        let room = LINE_KEPT.saturating_sub(self.line.len());
        let before = self.line.len();
        self.line.extend_from_slice(&body[..body.len().min(room)]);
        self.line_len += body.len();
        if self.syntax == Syntax::MariaDb && self.table.is_some() {
            // The values may follow on the same line: switch as soon as `VALUES` is read.
            if let Some(at) = values_start(&self.line, before) {
                // `at` is past this chunk's first kept byte: `VALUES` was not complete before it.
                let used_from_body = at - before;
                if self.insert_into_locked() {
                    self.state = State::Values { depth: 0, string: false, escape: false };
                } else {
                    self.broken = true;
                }
                self.line.clear();
                self.line_len = 0;
                return used_from_body;
            }
        }
        if ends {
            // A line kept only in part is none of the statements read here.
            if self.line_len == self.line.len() {
                self.on_line();
            }
            self.line.clear();
            self.line_len = 0;
        }
        take
    }

    fn on_line(&mut self) {
        let line = String::from_utf8_lossy(&self.line).into_owned();
        match self.syntax {
            Syntax::PgCopy => {
                if let Some(rest) = line.strip_prefix("COPY ") {
                    match copy_table(rest) {
                        Some(table) => {
                            self.rows.insert(table.clone(), 0);
                            self.table = Some(table);
                            self.state = State::Copy;
                        }
                        None => self.broken = true,
                    }
                }
            }
            Syntax::MariaDb => {
                if let Some(db) = line.strip_prefix("USE ").and_then(|r| r.strip_suffix(';')) {
                    self.database = backquoted(db).map(|(name, _)| name).filter(|_| self.table.is_none());
                    self.broken |= self.database.is_none();
                } else if let Some(rest) = line.strip_prefix("LOCK TABLES ") {
                    let table = backquoted(rest).filter(|(_, after)| *after == " WRITE;");
                    match (table, &self.database) {
                        (Some((t, _)), Some(db)) if self.table.is_none() => {
                            let key = format!("{}.{}", backquote(db), backquote(&t));
                            if !SYSTEM_DATABASES.contains(&db.as_str()) {
                                self.rows.insert(key.clone(), 0);
                            }
                            self.table = Some(key);
                        }
                        _ => self.broken = true,
                    }
                } else if line == "UNLOCK TABLES;" {
                    self.table = None;
                }
            }
        }
    }

    /// Whether the `INSERT INTO` on the current line names the locked table.
    fn insert_into_locked(&self) -> bool {
        let line = String::from_utf8_lossy(&self.line);
        let Some(rest) = line.strip_prefix("INSERT INTO ") else { return false };
        let (Some((t, _)), Some(db), Some(locked)) = (backquoted(rest), &self.database, &self.table) else {
            return false;
        };
        *locked == format!("{}.{}", backquote(db), backquote(&t))
    }

    /// A `COPY` block: a row per line, to the line `\.`.
    fn copy(&mut self, buf: &[u8]) -> usize {
        let (take, ends) = match memchr::memchr(b'\n', buf) {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let body = &buf[..if ends { take - 1 } else { take }];
        // Only whether the line is exactly `\.` matters: keep its first three bytes.
        let room = 3usize.saturating_sub(self.line.len());
        self.line.extend_from_slice(&body[..body.len().min(room)]);
        self.line_len += body.len();
        if ends {
            if self.line_len == 2 && self.line == b"\\." {
                self.state = State::Lines;
                self.table = None;
            } else if let Some(t) = &self.table {
                *self.rows.entry(t.clone()).or_default() += 1;
            }
            self.line.clear();
            self.line_len = 0;
        }
        take
    }

    /// An `INSERT`'s values: a row per `(` at depth 0 outside strings, to the `;` that ends it.
    fn values(&mut self, buf: &[u8]) -> usize {
        let State::Values { mut depth, mut string, mut escape } = self.state else { return 0 };
        let mut rows = 0u64;
        let mut i = 0;
        while i < buf.len() {
            if string {
                if escape {
                    escape = false;
                    i += 1;
                    continue;
                }
                match memchr::memchr2(b'\\', b'\'', &buf[i..]) {
                    Some(at) => {
                        if buf[i + at] == b'\\' {
                            escape = true;
                        } else {
                            string = false;
                        }
                        i += at + 1;
                    }
                    None => i = buf.len(),
                }
                continue;
            }
            match buf[i] {
                b'\'' => string = true,
                b'(' => {
                    if depth == 0 {
                        rows += 1;
                    }
                    depth += 1;
                }
                b')' => match depth.checked_sub(1) {
                    Some(d) => depth = d,
                    None => {
                        self.broken = true;
                        return buf.len();
                    }
                },
                b';' if depth == 0 => {
                    self.add_rows(rows);
                    self.state = State::Lines;
                    return i + 1;
                }
                _ => {}
            }
            i += 1;
        }
        self.add_rows(rows);
        self.state = State::Values { depth, string, escape };
        buf.len()
    }

    fn add_rows(&mut self, n: u64) {
        if let Some(count) = self.table.as_ref().and_then(|t| self.rows.get_mut(t)) {
            *count += n;
        }
    }
}

/// A reader that feeds what passes through it to a [`Counter`].
pub struct Counted<R> {
    inner: R,
    counter: Option<Counter>,
}

impl<R> Counted<R> {
    pub fn new(inner: R, counter: Option<Counter>) -> Self {
        Self { inner, counter }
    }

    /// The counts, when the dump was counted and read as expected.
    pub fn finish(self) -> Option<BTreeMap<String, u64>> {
        self.counter.and_then(Counter::finish)
    }
}

impl<R: std::io::Read> std::io::Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(c) = &mut self.counter {
            c.feed(&buf[..n]);
        }
        Ok(n)
    }
}

/// Where the values of `INSERT INTO name VALUES` start in `line` (after `VALUES`), when the
/// bytes from `from` on completed that keyword.
fn values_start(line: &[u8], from: usize) -> Option<usize> {
    if !line.starts_with(b"INSERT INTO ") {
        return None;
    }
    const KEY: &[u8] = b" VALUES";
    let search_from = from.saturating_sub(KEY.len() - 1);
    memchr::memmem::find(&line[search_from..], KEY).map(|at| search_from + at + KEY.len())
}

/// The table of a `COPY` line (after `COPY `): the qualified name as written, up to the first
/// space outside double quotes; the line must end `FROM stdin;`.
fn copy_table(rest: &str) -> Option<String> {
    if !rest.ends_with(" FROM stdin;") {
        return None;
    }
    let mut quoted = false;
    for (i, c) in rest.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => return (i > 0).then(|| rest[..i].to_string()),
            _ => {}
        }
    }
    None
}

/// A backquoted identifier at the start of `s` (`` `a``b` `` is ``a`b``) and what follows it.
fn backquoted(s: &str) -> Option<(String, &str)> {
    let mut rest = s.strip_prefix('`')?;
    let mut name = String::new();
    loop {
        let at = rest.find('`')?;
        name.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        match rest.strip_prefix('`') {
            Some(more) => {
                name.push('`');
                rest = more;
            }
            None => return Some((name, rest)),
        }
    }
}

fn backquote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// The line the check prints for a table whose count differs: `nuwax-rows <index> <count>`.
const MISMATCH: &str = "nuwax-rows";
/// The line the check prints once every table was counted.
const DONE: &str = "nuwax-rows-done";

/// The command and script that check a loaded server against `rows` (the script goes to the
/// command's stdin); `None` for a dump nuwax does not count.
pub fn check(dump: &DumpRecord, rows: &BTreeMap<String, u64>) -> Option<(Vec<String>, String)> {
    let mut script = String::new();
    let (shell, select) = match (dump.server.as_str(), dump.format.as_str(), dump.database.as_deref()) {
        ("postgres", PG_PLAIN, Some(db)) => (
            format!("exec psql -U {PG_USER} -d {} -X -q -A -t -F ' ' -v ON_ERROR_STOP=1", quote(db)),
            "FROM ONLY",
        ),
        ("mariadb" | "mysql", "sql", None) => (
            "if command -v mariadb >/dev/null; then c=mariadb; else c=mysql; fi; exec \"$c\" -N -B"
                .to_string(),
            "FROM",
        ),
        _ => return None,
    };
    for (i, (table, count)) in rows.iter().enumerate() {
        script.push_str(&format!(
            "SELECT '{MISMATCH}', {i}, n FROM (SELECT count(*) AS n {select} {table}) AS c WHERE n <> {count};\n"
        ));
    }
    script.push_str(&format!("SELECT '{DONE}';\n"));
    Some((vec!["sh".into(), "-c".into(), shell], script))
}

/// The tables whose counts differ, as (table, dumped, loaded), from the check's output; an error
/// when the check did not run to its end.
pub fn mismatches(rows: &BTreeMap<String, u64>, output: &str) -> Result<Vec<(String, u64, u64)>, String> {
    let names: Vec<(&String, &u64)> = rows.iter().collect();
    let mut found = Vec::new();
    let mut done = false;
    for line in output.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some(DONE), None, None) => done = true,
            (Some(MISMATCH), Some(i), Some(n)) => {
                let entry = i.parse::<usize>().ok().and_then(|i| names.get(i));
                match (entry, n.parse::<u64>()) {
                    (Some((table, want)), Ok(n)) => found.push(((*table).clone(), **want, n)),
                    _ => return Err(format!("unexpected line from the row check: {line}")),
                }
            }
            _ => {}
        }
    }
    if !done {
        return Err(format!("the row check did not finish: {}", output.trim()));
    }
    Ok(found)
}

#[cfg(test)]
#[path = "rows_tests.rs"]
mod tests;
