//! Loading dumps back through the database server: the commands per server and format, run in
//! the server's container with the dump as their stdin (streamed from the archive: no temp
//! file, no client on the host).
//!
//! The server starts on a fresh data directory (its entrypoint initializes it), so loading
//! recreates each database the dump holds:
//! - PostgreSQL: the globals (roles) through `psql` (a role the fresh server already has, such
//!   as its superuser, is reported and kept), then each database's plain script through `psql
//!   -v ON_ERROR_STOP=1`, connected to `template1`: the script drops its database if the
//!   entrypoint made it (`postgres`, `POSTGRES_DB`), creates it from `template0` and `\connect`s
//!   to it, so the session starts in a database no script drops. Archives made before took the
//!   custom format: `pg_restore --exit-on-error`, `postgres` into itself (`--clean
//!   --if-exists`), any other dropped first and recreated from the dump (`--create`).
//! - MariaDB / MySQL: the whole-server SQL through `mariadb` (`mysql`), then `FLUSH
//!   PRIVILEGES` (the users came back with the `mysql` database).

use super::dump::{PG_PLAIN, PG_USER, quote};
use crate::archive::manifest::DumpRecord;

/// `"name"` as an SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The command that loads `dump` from its stdin, as `sh -c` words; `None` for a server or
/// format nuwax does not load.
pub fn command(dump: &DumpRecord) -> Option<Vec<String>> {
    let script = match (dump.server.as_str(), dump.format.as_str(), dump.database.as_deref()) {
        ("postgres", "sql", None) => format!("exec psql -U {PG_USER} -d postgres -X -q"),
        ("postgres", PG_PLAIN, Some(_)) => {
            // `-o /dev/null`: the script's `SELECT`s (`set_config`, `setval`) print results;
            // what the loader says is its notices and errors.
            format!("exec psql -U {PG_USER} -d template1 -X -q -v ON_ERROR_STOP=1 -o /dev/null")
        }
        ("postgres", "pg_dump-custom", Some("postgres")) => {
            format!("exec pg_restore -U {PG_USER} -d postgres --clean --if-exists --exit-on-error")
        }
        ("postgres", "pg_dump-custom", Some(db)) => format!(
            "psql -U {PG_USER} -d postgres -X -q -v ON_ERROR_STOP=1 -c {} && \
             exec pg_restore -U {PG_USER} -d postgres --create --exit-on-error",
            quote(&format!("DROP DATABASE IF EXISTS {}", ident(db)))
        ),
        ("mariadb" | "mysql", "sql", None) => {
            "if command -v mariadb >/dev/null; then c=mariadb; else c=mysql; fi; \
             \"$c\" && exec \"$c\" -e 'FLUSH PRIVILEGES'"
                .to_string()
        }
        _ => return None,
    };
    Some(vec!["sh".into(), "-c".into(), script])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump(server: &str, format: &str, database: Option<&str>) -> DumpRecord {
        DumpRecord {
            name: "databases/db/x".into(),
            service: "db".into(),
            server: server.into(),
            database: database.map(str::to_string),
            format: format.into(),
            tool_version: String::new(),
            server_version: String::new(),
        }
    }

    #[test]
    fn each_dump_has_its_loader() {
        let cmd = |d: DumpRecord| command(&d).map(|c| c[2].clone());
        assert!(cmd(dump("postgres", "sql", None)).unwrap().starts_with("exec psql"));
        // A plain script drops and recreates its database: from a session in `template1`.
        let plain = cmd(dump("postgres", "pg_dump-plain", Some("postgres"))).unwrap();
        assert!(plain.contains("-d template1") && plain.contains("ON_ERROR_STOP=1"), "{plain}");
        assert_eq!(cmd(dump("postgres", "pg_dump-plain", Some("site"))).unwrap(), plain);
        assert_eq!(cmd(dump("postgres", "pg_dump-plain", None)), None);
        assert!(cmd(dump("postgres", "pg_dump-custom", Some("postgres"))).unwrap().contains("--clean"));
        let site = cmd(dump("postgres", "pg_dump-custom", Some("it's \"x\""))).unwrap();
        assert!(site.contains(r#"'DROP DATABASE IF EXISTS "it'\''s ""x"""'"#), "{site}");
        assert!(site.contains("--create"));
        assert!(cmd(dump("mariadb", "sql", None)).unwrap().contains("FLUSH PRIVILEGES"));
        assert_eq!(cmd(dump("redis", "rdb", None)), None);
    }
}
