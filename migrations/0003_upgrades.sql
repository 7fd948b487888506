-- Upgrades: one row per `nuwax upgrade`, tied to its pre-upgrade backup.
CREATE TABLE upgrades (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project TEXT NOT NULL,
    package_name TEXT NOT NULL,
    package_source TEXT NOT NULL,
    package_sha256 TEXT,
    from_version TEXT NOT NULL,
    to_version TEXT NOT NULL,
    -- The pre-upgrade backup; set as soon as it is complete, never guessed afterwards.
    backup_id INTEGER,
    status TEXT NOT NULL CHECK (status IN ('running', 'upgraded', 'rolled_back', 'rollback_failed', 'failed')),
    cause TEXT,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    duration_ms INTEGER,
    downtime_ms INTEGER,
    -- The rollback that undid it (its safety backup id), when it was rolled back.
    rollback_safety_backup_id INTEGER
);
CREATE INDEX upgrades_project ON upgrades (project, id);

-- The version each project runs, as upgrades and rollbacks leave it.
CREATE TABLE project_versions (
    project TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    -- What set it: `upgrade <id>` or `rollback to backup <id>`.
    reason TEXT NOT NULL
);
