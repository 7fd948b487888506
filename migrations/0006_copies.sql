-- Copies of the archives on remotes ([[remotes]] in nuwax.toml), one row per backup and remote.
-- `pending`: wanted there, not (yet) whole there: an upload failed or was cut, or the remote was
-- unreachable; `nuwax sync` retries it. `copied`: the object is whole, its sha256 as read back
-- equals the archive's. A backup whose local archive was pruned keeps its row (path NULL) while
-- a copy holds it.
CREATE TABLE copies (
    backup_id   INTEGER NOT NULL,
    remote      TEXT NOT NULL,
    name        TEXT NOT NULL,
    status      TEXT NOT NULL,
    size_bytes  INTEGER,
    sha256      TEXT,
    copied_at   TEXT,
    verified_at TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    error       TEXT,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (backup_id, remote)
);
