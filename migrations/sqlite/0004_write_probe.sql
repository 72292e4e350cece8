-- One row per instance, rewritten at start-up: the proof that the database
-- accepts writes before the server reports ready (a read-only file or
-- folder, or a read-only replica, would otherwise only show as every exam
-- connection failing).
CREATE TABLE write_probe (
    instance_id TEXT PRIMARY KEY,
    at BIGINT NOT NULL
);
