-- Token revocations (POST /v1/revocations): a token whose `jti`, or whose
-- `sub` (issued up to `created_at`'s second), an entry names is refused
-- until `expires_at` (the API's `until`); every instance loads the live entries at start-up
-- (src/revocations.rs). Expired rows are pruned as new ones are stored.
-- Times are unix milliseconds; at least one of `sub` and `jti` is set.
CREATE TABLE revocations (
    id         TEXT PRIMARY KEY,
    sub        TEXT,
    jti        TEXT,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    CHECK (sub IS NOT NULL OR jti IS NOT NULL)
);
CREATE INDEX revocations_expires ON revocations (expires_at);
