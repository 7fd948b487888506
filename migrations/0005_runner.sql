-- The operation runner's stop scope, as JSON: the containers it stopped, the services it leaves
-- running, which of them come back through compose, and whether the operation's own work had
-- ended. Written before the first stop, so a crash at any point is recovered from it.
ALTER TABLE operations ADD COLUMN scope TEXT;

-- Services the engine SIGKILLed because they did not stop within their stop timeout (JSON
-- array; NULL when none): their data was copied after an unclean shutdown.
ALTER TABLE backups ADD COLUMN stop_killed TEXT;

-- 1 when the data was copied while services ran (`backup --no-stop`, `--no-docker`): not one
-- point in time. A rollback to such a backup needs `--accept-live`.
ALTER TABLE backups ADD COLUMN live INTEGER NOT NULL DEFAULT 0;
