-- The backup catalog and the operations journal.

CREATE TABLE backups (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    kind            TEXT    NOT NULL CHECK (kind IN ('manual', 'pre-upgrade', 'pre-rollback', 'scheduled')),
    status          TEXT    NOT NULL CHECK (status IN ('pending', 'complete', 'failed')),
    project         TEXT    NOT NULL,
    service_version TEXT    NOT NULL,
    path            TEXT,
    size_bytes      INTEGER,
    checksum        TEXT,
    compression     TEXT    NOT NULL,
    file_count      INTEGER,
    created_at      TEXT    NOT NULL,
    finished_at     TEXT,
    duration_ms     INTEGER,
    downtime_ms     INTEGER,
    note            TEXT,
    error           TEXT
);

CREATE INDEX backups_project_status ON backups (project, status, id);

-- One row per operation that may stop services. Written before the first stop, so that after a
-- crash the next nuwax run knows which services to start again and which temp file to remove.
CREATE TABLE operations (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    kind             TEXT    NOT NULL,
    project          TEXT    NOT NULL,
    pid              INTEGER NOT NULL,
    backup_id        INTEGER REFERENCES backups (id),
    state            TEXT    NOT NULL CHECK (state IN ('running', 'done', 'recovered')),
    -- JSON array of {"service": "...", "id": "..."} in stop order.
    stopped_services TEXT    NOT NULL DEFAULT '[]',
    temp_path        TEXT,
    started_at       TEXT    NOT NULL,
    finished_at      TEXT,
    note             TEXT
);

CREATE INDEX operations_state ON operations (state);
