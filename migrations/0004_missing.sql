-- A backup whose archive is gone from the storage directory (found by `catalog rebuild` or
-- `doctor`): kept in the catalog, shown as `missing`, never offered for a rollback.
ALTER TABLE backups ADD COLUMN missing_at TEXT;
