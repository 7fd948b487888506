-- What an operation was doing, as JSON, so a crashed rollback can be finished or undone.
ALTER TABLE operations ADD COLUMN detail TEXT;
