-- examwatch schema (PostgreSQL). Times are unix milliseconds (BIGINT) and JSON is
-- TEXT, so the same queries run unchanged on SQLite and PostgreSQL.

CREATE TABLE exams (
    id            TEXT PRIMARY KEY,
    title         TEXT NOT NULL,
    phase         TEXT NOT NULL DEFAULT 'scheduled',
    starts_at     BIGINT,
    duration_secs BIGINT,
    settings      TEXT NOT NULL DEFAULT '{}',
    created_by    TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);

CREATE TABLE roster (
    exam_id    TEXT NOT NULL REFERENCES exams(id) ON DELETE CASCADE,
    student_id TEXT NOT NULL,
    name       TEXT NOT NULL,
    allowed    BIGINT NOT NULL DEFAULT 1,
    PRIMARY KEY (exam_id, student_id)
);

CREATE TABLE sessions (
    id              TEXT PRIMARY KEY,
    exam_id         TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    role            TEXT NOT NULL,
    connected_at    BIGINT NOT NULL,
    disconnected_at BIGINT,
    ip              TEXT,
    user_agent      TEXT,
    close_code      BIGINT,
    close_reason    TEXT,
    instance_id     TEXT NOT NULL
);
CREATE INDEX sessions_exam_user ON sessions (exam_id, user_id, connected_at);

-- Append-only: the same events, with the same seq, that teachers receive.
CREATE TABLE events (
    exam_id    TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    at         BIGINT NOT NULL,
    student_id TEXT,
    kind       TEXT NOT NULL,
    payload    TEXT NOT NULL,
    PRIMARY KEY (exam_id, seq)
);
CREATE INDEX events_exam_student ON events (exam_id, student_id, seq);

CREATE TABLE answers (
    exam_id    TEXT NOT NULL,
    student_id TEXT NOT NULL,
    answer_id  TEXT NOT NULL,
    question   TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (exam_id, student_id, answer_id)
);

CREATE TABLE submissions (
    exam_id      TEXT NOT NULL,
    student_id   TEXT NOT NULL,
    submitted_at BIGINT NOT NULL,
    PRIMARY KEY (exam_id, student_id)
);

CREATE TABLE teacher_actions (
    id       BIGSERIAL PRIMARY KEY,
    exam_id  TEXT NOT NULL,
    actor_id TEXT NOT NULL,
    action   TEXT NOT NULL,
    payload  TEXT NOT NULL,
    at       BIGINT NOT NULL
);
CREATE INDEX teacher_actions_exam ON teacher_actions (exam_id, at);
