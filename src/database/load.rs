//! Loading dumps back through the database server: the commands per server and format, run in
//! the server's container with the dump as their stdin (streamed from the archive: no temp
//! file, no client on the host).
//!
//! The server starts on a fresh data directory (its entrypoint initializes it), so loading
//! recreates each database the dump holds:
//! - PostgreSQL: the globals (roles) through `psql` (a role the fresh server already has, such
//!   as its superuser, is reported and kept), then each database with `pg_restore
//!   --exit-on-error`: `postgres` into itself (`--clean --if-exists`), any other dropped first
//!   (the entrypoint may have made it) and recreated from the dump (`--create`).
//! - MariaDB / MySQL: the whole-server SQL through `mariadb` (`mysql`), then `FLUSH
//!   PRIVILEGES` (the users came back with the `mysql` database).

use super::dump::{PG_USER, quote};
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
        assert!(cmd(dump("postgres", "pg_dump-custom", Some("postgres"))).unwrap().contains("--clean"));
        let site = cmd(dump("postgres", "pg_dump-custom", Some("it's \"x\""))).unwrap();
        assert!(site.contains(r#"'DROP DATABASE IF EXISTS "it'\''s ""x"""'"#), "{site}");
        assert!(site.contains("--create"));
        assert!(cmd(dump("mariadb", "sql", None)).unwrap().contains("FLUSH PRIVILEGES"));
        assert_eq!(cmd(dump("redis", "rdb", None)), None);
    }
}
