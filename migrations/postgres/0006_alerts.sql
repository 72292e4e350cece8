-- Every alert watchers were sent (automatic ones and proctors' reports),
-- so any instance can list and resolve them, and they survive a restart.
-- `seq` is the alert's event in the exam's stream (NULL for a report until
-- its event is numbered). Times are unix milliseconds.
CREATE TABLE alerts (
    exam_id       TEXT NOT NULL,
    alert_id      TEXT NOT NULL,
    seq           BIGINT,
    student_id    TEXT,
    kind          TEXT NOT NULL,
    category      TEXT NOT NULL,
    count         BIGINT NOT NULL DEFAULT 1,
    students      BIGINT,
    text          TEXT,
    created_by    TEXT,
    created_at    BIGINT NOT NULL,
    state         TEXT NOT NULL DEFAULT 'open',
    resolved_by   TEXT,
    resolved_at   BIGINT,
    resolved_note TEXT,
    PRIMARY KEY (exam_id, alert_id)
);
CREATE INDEX alerts_exam_created ON alerts (exam_id, created_at);
