use super::*;

fn count(kind: Kind, format: &str, dump: &str, chunk: usize) -> Option<BTreeMap<String, u64>> {
    let mut c = Counter::new(kind, format, Some("site")).unwrap();
    for piece in dump.as_bytes().chunks(chunk) {
        c.feed(piece);
    }
    c.finish()
}

fn map(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| ((*k).to_string(), *v)).collect()
}

const PG: &str = "--\n-- PostgreSQL database dump\n--\n\
    CREATE TABLE public.ticks (n integer);\n\
    COPY public.ticks (n) FROM stdin;\n1\n2\n3\n\\.\n\
    COPY public.\"we ird\" (\"a b\", c) FROM stdin;\nx\\n\\.y\t\\N\n\\.\n\
    COPY public.empty  FROM stdin;\n\\.\n\
    SELECT pg_catalog.setval('public.s', 3, true);\n";

#[test]
fn postgres_rows_are_the_lines_of_each_copy_whatever_the_chunks() {
    let want = map(&[("public.ticks", 3), ("public.\"we ird\"", 1), ("public.empty", 0)]);
    for chunk in [1, 2, 3, 7, 64, 4096] {
        assert_eq!(count(Kind::Postgres, PG_PLAIN, PG, chunk), Some(want.clone()), "chunk {chunk}");
    }
}

#[test]
fn a_dump_that_does_not_read_as_expected_has_no_counts() {
    // Cut inside a COPY: no `\.`.
    let cut = &PG[..PG.find("3\n").unwrap()];
    assert_eq!(count(Kind::Postgres, PG_PLAIN, cut, 5), None);
    // A COPY line of another shape.
    assert_eq!(count(Kind::Postgres, PG_PLAIN, "COPY t FROM '/tmp/x';\n", 5), None);
    // Globals and the custom format are not counted.
    assert!(Counter::new(Kind::Postgres, "sql", None).is_none());
    assert!(Counter::new(Kind::Postgres, "pg_dump-custom", Some("site")).is_none());
    assert!(Counter::new(Kind::Sqlite, "sqlite3-file", Some("/data/x.db")).is_none());
}

/// As `mariadb-dump` 10.11 writes it (a row a line), and older versions (a statement a line).
const MARIA: &str = "-- MariaDB dump\n\
    -- Current Database: `mysql`\nUSE `mysql`;\n\
    LOCK TABLES `global_priv` WRITE;\nINSERT INTO `global_priv` VALUES\n('localhost','root','{}');\nUNLOCK TABLES;\n\
    -- Current Database: `shop`\nUSE `shop`;\n\
    LOCK TABLES `empty` WRITE;\n/*!40000 ALTER TABLE `empty` DISABLE KEYS */;\nUNLOCK TABLES;\n\
    LOCK TABLES `o` WRITE;\n/*!40000 ALTER TABLE `o` DISABLE KEYS */;\n\
    INSERT INTO `o` VALUES\n(1,'a(b),c\\'d\\\\',NULL),\n(2,'x\\ny);(',0x2829);\n\
    INSERT INTO `o` VALUES (3,'''',b'1'),(4,'',NULL);\n\
    UNLOCK TABLES;\n\
    DELIMITER ;;\n/*!50003 TRIGGER shop.tr AFTER INSERT ON shop.o FOR EACH ROW INSERT INTO shop.empty VALUES (NEW.n) \n*/;;\n\
    LOCK TABLES `we``ird` WRITE;\nINSERT INTO `we``ird` VALUES\n(5);\nUNLOCK TABLES;\n\
    -- Dump completed\n";

#[test]
fn mariadb_rows_are_the_tuples_of_each_locked_table_outside_the_system_databases() {
    let want = map(&[("`shop`.`empty`", 0), ("`shop`.`o`", 4), ("`shop`.`we``ird`", 1)]);
    for chunk in [1, 2, 5, 13, 4096] {
        assert_eq!(count(Kind::Mariadb, "sql", MARIA, chunk), Some(want.clone()), "chunk {chunk}");
    }
}

#[test]
fn an_insert_into_another_table_than_the_locked_one_turns_counting_off() {
    let odd = "USE `shop`;\nLOCK TABLES `o` WRITE;\nINSERT INTO `p` VALUES (1);\nUNLOCK TABLES;\n";
    assert_eq!(count(Kind::Mariadb, "sql", odd, 3), None);
}

#[test]
fn the_check_selects_only_tables_that_differ_and_says_when_it_is_done() {
    // In name order: `public."b"` is the first.
    let rows = map(&[("public.a", 3), ("public.\"b\"", 0)]);
    let dump = DumpRecord {
        name: "databases/db/site.sql".into(),
        service: "db".into(),
        server: "postgres".into(),
        database: Some("site".into()),
        format: PG_PLAIN.into(),
        tool_version: String::new(),
        server_version: String::new(),
    };
    let (cmd, script) = check(&dump, &rows).unwrap();
    assert!(cmd[2].contains("-d 'site'"), "{}", cmd[2]);
    assert!(script.contains("FROM ONLY public.a) AS c WHERE n <> 3;"), "{script}");
    assert!(script.ends_with("SELECT 'nuwax-rows-done';\n"), "{script}");
    assert_eq!(mismatches(&rows, "nuwax-rows-done\n"), Ok(vec![]));
    assert_eq!(
        mismatches(&rows, "NOTICE: x\nnuwax-rows 0 7\nnuwax-rows-done\n"),
        Ok(vec![("public.\"b\"".to_string(), 0, 7)])
    );
    assert!(mismatches(&rows, "ERROR: relation does not exist\n").is_err());
    assert!(mismatches(&rows, "nuwax-rows 9 7\nnuwax-rows-done\n").is_err());
}
